package agent

import (
	"errors"
	"strings"
	"testing"

	"github.com/fhirsync/fhirsync/agent/crm"
	"github.com/fhirsync/fhirsync/logs"
)

func TestRejectionNamesTheAttributeWithoutTheValue(t *testing.T) {
	t.Parallel()
	cases := []struct {
		name        string
		err         *crm.Error
		wantSubject string // "" = not a value rejection
		wantIn      []string
		wantOut     []string
	}{
		{name: "string too long",
			err: &crm.Error{Status: 400, Class: crm.ClassRejected, Code: "0x80044331",
				Message: "A validation error occurred. The length of the 'firstname' attribute of the 'contact' entity exceeded the maximum allowed length of '50'."},
			wantSubject: "firstname", wantIn: []string{"0x80044331", "maximum allowed length of '50'"}},
		{name: "number out of range keeps no value",
			err: &crm.Error{Status: 400, Class: crm.ClassRejected, Code: "0x80044330",
				Message: "A validation error occurred for msemr_observation.msemr_valuequantity. The value 123456789012 of type System.Decimal is outside the valid range(-100000000000 to 100000000000)."},
			wantSubject: "msemr_valuequantity", wantIn: []string{"0x80044330", "The value … of type System.Decimal"}, wantOut: []string{"123456789012"}},
		{name: "choice out of range, upper-case code",
			err: &crm.Error{Status: 400, Class: crm.ClassRejected, Code: "0x8004431A",
				Message: "A validation error occurred. The value 7 of 'gendercode' on record of type 'contact' is outside the valid range. Accepted Values: 1,2"},
			wantSubject: "gendercode", wantOut: []string{"value 7 "}},
		{name: "another 400 is left to the general rule",
			err: &crm.Error{Status: 400, Class: crm.ClassRejected, Code: "0x80048d19", Message: "Error identified in Payload"}},
		{name: "a conflict is not a value rejection",
			err: &crm.Error{Status: 412, Class: crm.ClassConflict, Code: "0x80044331", Message: "The length of the 'x' attribute"}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			st := rejection(classify(tc.err))
			if tc.wantSubject == "" {
				if st != nil {
					t.Fatalf("got %+v, want nil", st)
				}
				return
			}
			if st == nil {
				t.Fatal("got nil")
			}
			if st.outcome != logs.OutcomeDeadLettered || st.reason != "target_rejected" || st.subject != tc.wantSubject || !IsPermanent(st.err) {
				t.Errorf("got %s/%s subject %q permanent %v", st.outcome, st.reason, st.subject, IsPermanent(st.err))
			}
			if !errors.Is(st.err, tc.err) && !strings.Contains(st.err.Error(), tc.err.Code) {
				t.Errorf("the CRM error is lost: %v", st.err)
			}
			for _, s := range tc.wantIn {
				if !strings.Contains(st.message, s) {
					t.Errorf("message %q lacks %q", st.message, s)
				}
			}
			for _, s := range tc.wantOut {
				if strings.Contains(st.message, s) {
					t.Errorf("message %q carries %q", st.message, s)
				}
			}
		})
	}
}
