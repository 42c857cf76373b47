package admin

import (
	"strings"
	"testing"
)

func TestPasswordPolicy(t *testing.T) {
	t.Parallel()
	tests := []struct {
		pw      string
		wantErr error
	}{
		{"short", errPasswordLength},
		{strings.Repeat("x", maxPasswordLen+1), errPasswordLength},
		{"password1234", errPasswordCommon},
		{"PASSWORD1234", errPasswordCommon},
		{"Welcome2024!!", errPasswordCommon},
		{"qwertyuiop123", errPasswordCommon},
		{"aaaaaaaaaaaaaa", errPasswordCommon},
		{"abcabcabcabc", errPasswordCommon},
		{"123456789012", errPasswordCommon},
		{"zyxwvutsrqpo", errPasswordCommon},
		{testPassword, nil},
		{"plum tractor nine lanterns", nil},
		{"Welcome to the jungle 7", nil},
	}
	for _, tt := range tests {
		if err := checkPasswordPolicy(tt.pw); err != tt.wantErr {
			t.Errorf("checkPasswordPolicy(%q) = %v, want %v", tt.pw, err, tt.wantErr)
		}
	}
}
