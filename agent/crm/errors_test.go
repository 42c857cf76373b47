package crm

import (
	"errors"
	"net/http"
	"strings"
	"testing"
	"time"
)

func TestParseRetryAfter(t *testing.T) {
	t.Parallel()
	now := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	tests := []struct {
		in   string
		want time.Duration
	}{
		{"", 0},
		{"5", 5 * time.Second},
		{"0.5", 500 * time.Millisecond},
		{"-3", 0},
		{"soon", 0},
		{now.Add(90 * time.Second).Format(http.TimeFormat), 90 * time.Second},
		{now.Add(-time.Hour).Format(http.TimeFormat), 0},
	}
	for _, tt := range tests {
		if got := parseRetryAfter(tt.in, now); got != tt.want {
			t.Errorf("parseRetryAfter(%q) = %s, want %s", tt.in, got, tt.want)
		}
	}
}

func TestErrorTextElidesQuotedValues(t *testing.T) {
	t.Parallel()
	h := http.Header{"Content-Type": {"application/json"}}
	e := errorFromResponse("upserting contacts(msemr_azurefhirid=…)", 400, h,
		[]byte(`{"error":{"code":"0x80044331","message":"The value 'Jónsdóttir' of 'lastname' is invalid."}}`))
	s := e.Error()
	if strings.Contains(s, "Jónsdóttir") || !strings.Contains(s, "0x80044331") || !strings.Contains(s, "rejected") {
		t.Fatalf("error text = %s", s)
	}
	if e.Message == "" || !strings.Contains(e.Message, "Jónsdóttir") {
		t.Fatal("the raw message should stay available as detail")
	}
	if ByKey("contacts", "msemr_azurefhirid", "pat-secret").String() != "contacts(msemr_azurefhirid=…)" {
		t.Fatal("target names its key value")
	}
}

func TestErrorSentinels(t *testing.T) {
	t.Parallel()
	nf := &Error{Class: ClassNotFound}
	exp := &Error{Class: ClassRejected, Code: CodeExpiredVersionStamp}
	if !errors.Is(nf, ErrNotFound) || errors.Is(nf, ErrDeltaExpired) || !errors.Is(exp, ErrDeltaExpired) || errors.Is(exp, ErrNotFound) {
		t.Fatal("sentinel matching is wrong")
	}
}

func TestAzureCredentialModes(t *testing.T) {
	t.Parallel()
	for _, cfg := range []Config{
		{URL: "https://org.crm.dynamics.com", Auth: AuthClientSecret, TenantID: "00000000-0000-0000-0000-000000000001", ClientID: "00000000-0000-0000-0000-000000000002", ClientSecret: "s"},
		{URL: "https://org.crm.dynamics.com", Auth: AuthManagedIdentity},
		{URL: "https://org.crm.dynamics.com", Auth: AuthManagedIdentity, ClientID: "00000000-0000-0000-0000-000000000002"},
	} {
		c, err := New(cfg)
		if err != nil {
			t.Fatalf("%s: %v", cfg.Auth, err)
		}
		if c.cred == nil || c.scope != "https://org.crm.dynamics.com/.default" {
			t.Fatalf("%s: credential %v scope %s", cfg.Auth, c.cred, c.scope)
		}
	}
}
