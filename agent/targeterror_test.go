package agent

import (
	"fmt"
	"strings"
	"testing"

	"github.com/fhirsync/fhirsync/agent/crm"
	"github.com/fhirsync/fhirsync/agent/fhir"
	"github.com/fhirsync/fhirsync/maps"
)

func TestTargetErrorKeepsTheCodeAndRedactsValues(t *testing.T) {
	t.Parallel()
	names := schemaNames(&maps.EntityMap{Name: "patient-contact", CRMEntity: "contact", CRMEntitySet: "contacts", FHIRType: "Patient",
		Attributes: []maps.AttributeMap{{Name: "family", CRMAttribute: "lastname", FHIRPath: "name.where(use='official').family"},
			{Name: "birthdate", CRMAttribute: "birthdate", FHIRPath: "birthDate"}}})
	cases := []struct {
		name     string
		err      error
		wantCode string
		wantIn   []string // in the redacted message
		wantOut  []string // values: never in the redacted message
	}{
		{name: "Dataverse plug-in message quoting values",
			err: fmt.Errorf("upserting: %w", &crm.Error{Status: 400, Class: crm.ClassRejected, Code: "0x80040265",
				Message: "Contact 'Annabelle Canary' born '1987-04-02' (MRN 448-21-9970, anna@example.org) already exists as 3f2a7c1e-0b6d-4e8a-9c61-2f1d8e7a4b10."}),
			wantCode: "0x80040265", wantIn: []string{"Contact '…' born '…'", "3f2a7c1e-0b6d-4e8a-9c61-2f1d8e7a4b10"},
			wantOut: []string{"Annabelle", "Canary", "1987", "448-21", "anna@"}},
		{name: "Dataverse column too long keeps the attribute and the size",
			err: &crm.Error{Status: 400, Class: crm.ClassRejected, Code: "0x80044331",
				Message: "A validation error occurred.  The length of the 'lastname' attribute of the 'contact' entity exceeded the maximum allowed length of '50'."},
			wantCode: "0x80044331", wantIn: []string{"'lastname' attribute of the 'contact' entity", "length of '50'"}},
		{name: "Dataverse value out of range",
			err: &crm.Error{Status: 400, Class: crm.ClassRejected, Code: "0x8004431A",
				Message: "A validation error occurred. The value 7 of 'gendercode' on record of type 'contact' is outside the valid range."},
			wantCode: "0x8004431A", wantIn: []string{"The value … of '…'"}, wantOut: []string{" 7 "}},
		{name: "FHIR OperationOutcome",
			err: &fhir.Error{Op: "update Patient/p1", Status: 422, Class: fhir.ClassRejected,
				Outcome: "error invalid: Invalid date 'Nineteen-eighty' in 'Patient.birthDate'; warning informational: see 'Smith'"},
			wantCode: "invalid", wantIn: []string{"error invalid", "in 'Patient.birthDate'", "'…'"}, wantOut: []string{"Nineteen", "Smith"}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			te, full := targetErrorOf(tc.err, names)
			if te == nil {
				t.Fatal("no target error")
			}
			if te.Code != tc.wantCode {
				t.Errorf("code = %q, want %q", te.Code, tc.wantCode)
			}
			for _, s := range tc.wantIn {
				if !strings.Contains(te.Message, s) {
					t.Errorf("redacted %q lacks %q", te.Message, s)
				}
			}
			for _, s := range tc.wantOut {
				if strings.Contains(te.Message, s) {
					t.Errorf("redacted %q carries %q", te.Message, s)
				}
				if !strings.Contains(full, s) {
					t.Errorf("full message %q lacks %q", full, s)
				}
			}
		})
	}
	if te, _ := targetErrorOf(&endpointError{class: classUnavailable, err: fmt.Errorf("dial tcp: refused")}, names); te != nil {
		t.Errorf("a network error has a target error: %+v", te)
	}
}

func TestMissingReferenceAtTheTarget(t *testing.T) {
	t.Parallel()
	gone := &crm.Error{Status: 404, Class: crm.ClassNotFound, Code: "0x80040217",
		Message: "account With Id = 00000000-0000-0000-0000-000000000001 Does Not Exist"}
	st := missingReference(Permanent(fmt.Errorf("upserting contact: %w", gone)), "contact")
	if st == nil {
		t.Fatal("a write binding a missing account is not missing_reference")
	}
	if st.reason != "missing_reference" || st.subject != "account" || IsPermanent(st.err) || errorClass(st.err) != "http_404" {
		t.Errorf("step = %+v (permanent %v, class %s), want a retryable missing_reference naming account", st, IsPermanent(st.err), errorClass(st.err))
	}
	if te, _ := targetErrorOf(st.err, nil); te == nil || te.Code != "0x80040217" {
		t.Errorf("target error = %+v, want the CRM's 0x80040217", te)
	}
	// The row written itself missing is not a missing reference.
	self := &crm.Error{Status: 404, Class: crm.ClassNotFound, Code: "0x80040217", Message: "contact With Id = 00000000-0000-0000-0000-000000000002 Does Not Exist"}
	if st := missingReference(self, "contact"); st != nil {
		t.Errorf("the target row missing = %+v, want nil", st)
	}
	if st := missingReference(&crm.Error{Status: 400, Code: "0x80040265", Message: "x"}, "contact"); st != nil {
		t.Errorf("another error = %+v, want nil", st)
	}
}

// TestTargetErrorKeepsNestedExpansionNames: a CRM message about a nested
// expansion's table and column (a participant role's display too long)
// keeps them, as for a top-level expansion's.
func TestTargetErrorKeepsNestedExpansionNames(t *testing.T) {
	t.Parallel()
	names := schemaNames(&maps.EntityMap{Name: "care-team", CRMEntity: "msemr_careteam", CRMEntitySet: "msemr_careteams", FHIRType: "CareTeam",
		Expansions: []maps.ExpansionMap{{Name: "participants", CRMEntity: "msemr_careteamparticipant", FHIRPath: "participant",
			Expansions: []maps.ExpansionMap{{Name: "participant-roles", CRMEntity: "msemr_careteamparticipantrole", FHIRPath: "role",
				Attributes: []maps.AttributeMap{{Name: "display", CRMAttribute: "msemr_display", FHIRPath: "coding[0].display"}}}}}}})
	te, _ := targetErrorOf(&crm.Error{Status: 400, Class: crm.ClassRejected, Code: "0x80044331",
		Message: "A validation error occurred.  The length of the 'msemr_display' attribute of the 'msemr_careteamparticipantrole' entity exceeded the maximum allowed length of '100'."}, names)
	if te == nil || !strings.Contains(te.Message, "'msemr_display' attribute of the 'msemr_careteamparticipantrole' entity") {
		t.Errorf("redacted message %+v: want the nested table and column kept", te)
	}
}
