package maps_test

import (
	"bytes"
	"context"
	"errors"
	"reflect"
	"strings"
	"testing"

	"gorm.io/gorm"

	"github.com/fhirsync/fhirsync/maps"
	"github.com/fhirsync/fhirsync/storage/storagetest"
)

// policySet uses every policy the map model has: hold on an entity map,
// per-attribute overrides (on an entity attribute and on an expansion
// attribute), each delete policy, and a business key.
const policySet = `format: 1
entityMaps:
  - name: patient
    crmEntity: contact
    crmEntitySet: contacts
    fhirType: Patient
    fhirToCRM: {enabled: true, operations: [create, update, delete]}
    crmToFHIR: {enabled: true, operations: [create, update, delete]}
    correlation:
      crmAttribute: msemr_azurefhirid
      fhirIdentifierSystem: "urn:crm"
      businessKey: {fhirIdentifierSystem: "urn:mrn", crmAttribute: msemr_medicalrecordnumber}
    conflictPolicy: hold
    deletePolicy: deactivate
    attributes:
      - name: last-name
        crmAttribute: lastname
        crmType: string
        fhirPath: name.where(use='official').family
        conflictPolicy: crm-wins
      - name: first-name
        crmAttribute: firstname
        crmType: string
        fhirPath: name.where(use='official').given[0]
    expansions:
      - name: identifiers
        fhirPath: identifier
        exclude:
          - {field: system, value: "urn:crm"}
        crmEntity: msemr_medicalidentifier
        crmEntitySet: msemr_medicalidentifiers
        parentLookup: msemr_contact
        matchKey: [system, value]
        onRemove: delete
        attributes:
          - name: system
            crmAttribute: msemr_identifiersystem
            crmType: string
            fhirPath: system
          - name: value
            crmAttribute: msemr_identifiervalue
            crmType: string
            fhirPath: value
            conflictPolicy: fhir-wins
  - name: organization
    crmEntity: account
    crmEntitySet: accounts
    fhirType: Organization
    fhirToCRM: {enabled: true, operations: [create, update, delete]}
    crmToFHIR: {enabled: true, operations: [update]}
    correlation: {crmAttribute: msemr_azurefhirid, fhirIdentifierSystem: "urn:crm"}
    conflictPolicy: fhir-wins
    deletePolicy: ignore
    attributes:
      - name: name
        crmAttribute: name
        crmType: string
        fhirPath: name
  - name: location
    crmEntity: msemr_location
    crmEntitySet: msemr_locations
    fhirType: Location
    fhirToCRM: {enabled: true, operations: [create, update]}
    crmToFHIR: {enabled: true, operations: [update]}
    correlation: {crmAttribute: msemr_azurefhirid, fhirIdentifierSystem: "urn:crm"}
    attributes:
      - name: name
        crmAttribute: msemr_name
        crmType: string
        fhirPath: name
`

// checkPolicies asserts the policies of policySet on doc, so a lost column
// or field is named rather than found by a byte diff alone.
func checkPolicies(t *testing.T, doc *maps.Document) {
	t.Helper()
	p, o, l := &doc.EntityMaps[0], &doc.EntityMaps[1], &doc.EntityMaps[2]
	if p.ConflictPolicy != maps.ConflictHold || p.DeletePolicy != maps.DeleteDeactivate {
		t.Errorf("patient: conflictPolicy %q, deletePolicy %q", p.ConflictPolicy, p.DeletePolicy)
	}
	want := &maps.BusinessKey{FHIRIdentifierSystem: "urn:mrn", CRMAttribute: "msemr_medicalrecordnumber"}
	if !reflect.DeepEqual(p.Correlation.BusinessKey, want) {
		t.Errorf("patient business key %+v, want %+v", p.Correlation.BusinessKey, want)
	}
	if got := p.Attributes[0].ConflictPolicy; got != maps.ConflictCRMWins {
		t.Errorf("last-name override %q", got)
	}
	if got := p.Attributes[1].Policy(p); got != maps.ConflictHold {
		t.Errorf("first-name policy %q, want the entity map's hold", got)
	}
	if got := p.Expansions[0].Attributes[1].ConflictPolicy; got != maps.ConflictFHIRWins {
		t.Errorf("expansion value override %q", got)
	}
	if got := p.Expansions[0].Attributes[0].ConflictPolicy; got != "" {
		t.Errorf("expansion system override %q, want none", got)
	}
	if o.DeletePolicy != maps.DeleteIgnore || o.Correlation.BusinessKey != nil {
		t.Errorf("organization: deletePolicy %q, business key %+v", o.DeletePolicy, o.Correlation.BusinessKey)
	}
	if l.DeletePolicy != "" || l.DeletePolicy.OrDefault() != maps.DeletePropagate {
		t.Errorf("location: deletePolicy %q, want it omitted (propagate)", l.DeletePolicy)
	}
}

func TestPoliciesRoundTripThroughYAML(t *testing.T) {
	t.Parallel()
	doc, _, err := maps.Import([]byte(policySet), maps.CompileOptions{})
	if err != nil {
		t.Fatal(err)
	}
	checkPolicies(t, doc)
	out, err := maps.Export(doc)
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"deletePolicy: deactivate", "deletePolicy: ignore", "conflictPolicy: hold",
		"businessKey:\n        fhirIdentifierSystem: urn:mrn\n        crmAttribute: msemr_medicalrecordnumber\n"} {
		if !strings.Contains(string(out), want) {
			t.Errorf("export lacks %q:\n%s", want, out)
		}
	}
	if strings.Count(string(out), "deletePolicy:") != 2 {
		t.Errorf("an omitted deletePolicy was exported:\n%s", out)
	}
	back, _, err := maps.Import(out, maps.CompileOptions{})
	if err != nil {
		t.Fatalf("exported set does not import: %v", err)
	}
	checkPolicies(t, back)
	again, _ := maps.Export(back)
	if !bytes.Equal(again, out) {
		t.Fatalf("export is not stable:\n%s", firstDiff(again, out))
	}
}

func TestPoliciesRoundTripThroughStore(t *testing.T) {
	t.Parallel()
	storagetest.Each(t, func(t *testing.T, db *gorm.DB) {
		ctx := context.Background()
		st, err := maps.New(db, maps.Options{Logger: quiet})
		if err != nil {
			t.Fatal(err)
		}
		doc, err := maps.Parse([]byte(policySet))
		if err != nil {
			t.Fatal(err)
		}
		want, _ := maps.Export(doc)
		if _, err := st.CreateDraft(ctx, doc, "alice", ""); err != nil {
			t.Fatalf("CreateDraft: %v", err)
		}
		if _, err := st.Publish(ctx, 1, "bob", ""); err != nil {
			t.Fatal(err)
		}
		back, _, err := st.Version(ctx, 1)
		if err != nil {
			t.Fatal(err)
		}
		checkPolicies(t, back)
		if got, _ := maps.Export(back); !bytes.Equal(got, want) {
			t.Fatalf("stored version exports differently:\n%s", firstDiff(got, want))
		}
		set, err := st.Current(ctx)
		if err != nil {
			t.Fatal(err)
		}
		m, _ := set.Map("patient")
		res := map[string]any{"resourceType": "Patient", "identifier": []any{
			map[string]any{"system": "urn:crm", "value": "c-1"},
			map[string]any{"system": "urn:mrn", "value": "MRN-7"},
		}}
		if v, ok := m.BusinessKeyValue(res); !ok || v != "MRN-7" {
			t.Fatalf("BusinessKeyValue = %q, %v; want MRN-7", v, ok)
		}
		o, _ := set.Map("organization")
		if v, ok := o.BusinessKeyValue(res); ok {
			t.Fatalf("a map without a business key gave %q", v)
		}
	})
}

func TestDeletePolicyDefault(t *testing.T) {
	t.Parallel()
	for p, want := range map[maps.DeletePolicy]maps.DeletePolicy{
		"": maps.DeletePropagate, maps.DeletePropagate: maps.DeletePropagate,
		maps.DeleteDeactivate: maps.DeleteDeactivate, maps.DeleteIgnore: maps.DeleteIgnore,
	} {
		if got := p.OrDefault(); got != want {
			t.Errorf("%q.OrDefault() = %q, want %q", p, got, want)
		}
	}
}

// problemAt asserts that err holds a problem at want's location whose
// message contains msg.
func problemAt(t *testing.T, err error, want maps.Problem, msg string) {
	t.Helper()
	var ve *maps.ValidationError
	if !errors.As(err, &ve) {
		t.Fatalf("got %v, want a *ValidationError", err)
	}
	for _, p := range ve.Problems {
		loc := p
		loc.Message = ""
		if loc == want && strings.Contains(p.Message, msg) {
			return
		}
	}
	t.Fatalf("no problem at %s containing %q; got:\n%v", want.Location(), msg, err)
}

func TestBadDeletePolicies(t *testing.T) {
	t.Parallel()
	at := maps.Problem{Map: "patient", Field: "deletePolicy"}
	locAt := maps.Problem{Map: "location", Field: "deletePolicy"}
	tests := []struct {
		name string
		old  string
		new  string
		want maps.Problem
		msg  string
	}{
		{"unknown value", "deletePolicy: deactivate", "deletePolicy: archive", at, `got "archive"`},
		{"deactivate a type without active, deletes travelling to FHIR",
			"    crmToFHIR: {enabled: true, operations: [update]}\n    correlation: {crmAttribute: msemr_azurefhirid, fhirIdentifierSystem: \"urn:crm\"}\n    attributes:\n      - name: name\n        crmAttribute: msemr_name",
			"    crmToFHIR: {enabled: true, operations: [update, delete]}\n    correlation: {crmAttribute: msemr_azurefhirid, fhirIdentifierSystem: \"urn:crm\"}\n    deletePolicy: deactivate\n    attributes:\n      - name: name\n        crmAttribute: msemr_name",
			locAt, "Location has no active element"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			src := strings.Replace(policySet, tt.old, tt.new, 1)
			if src == policySet {
				t.Fatal("the edit did not apply")
			}
			_, _, err := maps.Import([]byte(src), maps.CompileOptions{})
			problemAt(t, err, tt.want, tt.msg)
		})
	}
	// Without delete in crmToFHIR, a Location map may deactivate (the CRM
	// side only): nothing is ever deactivated on the FHIR side.
	src := strings.Replace(policySet,
		"    correlation: {crmAttribute: msemr_azurefhirid, fhirIdentifierSystem: \"urn:crm\"}\n    attributes:\n      - name: name\n        crmAttribute: msemr_name",
		"    correlation: {crmAttribute: msemr_azurefhirid, fhirIdentifierSystem: \"urn:crm\"}\n    deletePolicy: deactivate\n    attributes:\n      - name: name\n        crmAttribute: msemr_name", 1)
	if src == policySet {
		t.Fatal("the edit did not apply")
	}
	if _, _, err := maps.Import([]byte(src), maps.CompileOptions{}); err != nil {
		t.Fatalf("deactivate on Location without CRM→FHIR deletes: %v", err)
	}
}

func TestBadBusinessKeys(t *testing.T) {
	t.Parallel()
	const key = `businessKey: {fhirIdentifierSystem: "urn:mrn", crmAttribute: msemr_medicalrecordnumber}`
	field := func(f string) maps.Problem {
		return maps.Problem{Map: "patient", Field: "correlation.businessKey." + f}
	}
	tests := []struct {
		name string
		key  string
		want maps.Problem
		msg  string
	}{
		{"no attribute", `businessKey: {fhirIdentifierSystem: "urn:mrn"}`, field("crmAttribute"), "required"},
		{"no system", `businessKey: {crmAttribute: msemr_medicalrecordnumber}`, field("fhirIdentifierSystem"), "required"},
		{"the correlation system", `businessKey: {fhirIdentifierSystem: "urn:crm", crmAttribute: msemr_medicalrecordnumber}`,
			field("fhirIdentifierSystem"), "must differ from correlation.fhirIdentifierSystem"},
		{"the correlation attribute", `businessKey: {fhirIdentifierSystem: "urn:mrn", crmAttribute: msemr_azurefhirid}`,
			field("crmAttribute"), "must differ from correlation.crmAttribute"},
		{"a system that needs escaping", `businessKey: {fhirIdentifierSystem: "urn:a|b", crmAttribute: msemr_medicalrecordnumber}`,
			field("fhirIdentifierSystem"), "must not contain"},
		{"unknown field", `businessKey: {fhirIdentifierSystem: "urn:mrn", crmAttribute: x, fhirPath: identifier}`,
			maps.Problem{Line: 12}, "fhirPath"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			src := strings.Replace(policySet, key, tt.key, 1)
			if src == policySet {
				t.Fatal("the edit did not apply")
			}
			_, _, err := maps.Import([]byte(src), maps.CompileOptions{})
			problemAt(t, err, tt.want, tt.msg)
		})
	}
}

// TestBusinessKeyAgainstCRMMetadata: with metadata, the business key
// attribute must exist, hold text, and be an alternate key of its own,
// when the metadata lists keys.
func TestBusinessKeyAgainstCRMMetadata(t *testing.T) {
	t.Parallel()
	const only = `businessKey: {fhirIdentifierSystem: "urn:mrn", crmAttribute: msemr_medicalrecordnumber}
    conflictPolicy: hold
    deletePolicy: deactivate
    attributes:
      - name: last-name
        crmAttribute: lastname
        crmType: string
        fhirPath: name.where(use='official').family
`
	// One entity map, without the expansion and the other maps, keeps the
	// metadata small.
	src := policySet[:strings.Index(policySet, `businessKey:`)] + only
	md := func(keys string, mrnType string) *maps.CRMMetadata {
		t.Helper()
		k := ""
		if keys != "" {
			k = `, "Keys": ` + keys
		}
		m, err := maps.ParseCRMMetadata([]byte(`{"value": [
		  {"LogicalName": "contact", "EntitySetName": "contacts", "PrimaryIdAttribute": "contactid", "Attributes": [
		    {"LogicalName": "lastname", "AttributeType": "String"},
		    {"LogicalName": "msemr_azurefhirid", "AttributeType": "String"},
		    {"LogicalName": "statecode", "AttributeType": "State"},
		    {"LogicalName": "statuscode", "AttributeType": "Status"},
		    {"LogicalName": "msemr_medicalrecordnumber", "AttributeType": "` + mrnType + `"}
		  ]` + k + `}]}`))
		if err != nil {
			t.Fatal(err)
		}
		return m
	}
	at := maps.Problem{Map: "patient", Field: "correlation.businessKey.crmAttribute"}
	mrnKey := `[{"LogicalName": "msemr_azurefhirid_key", "KeyAttributes": ["msemr_azurefhirid"]},
	            {"LogicalName": "mrn_key", "KeyAttributes": ["msemr_medicalrecordnumber"]}]`
	if _, _, err := maps.Import([]byte(src), maps.CompileOptions{CRM: md(mrnKey, "String")}); err != nil {
		t.Fatalf("business key on an alternate key: %v", err)
	}
	if _, _, err := maps.Import([]byte(src), maps.CompileOptions{CRM: md("", "String")}); err != nil {
		t.Fatalf("metadata without keys cannot refuse a key: %v", err)
	}
	_, _, err := maps.Import([]byte(src), maps.CompileOptions{CRM: md(`[{"LogicalName": "msemr_azurefhirid_key", "KeyAttributes": ["msemr_azurefhirid"]}]`, "String")})
	problemAt(t, err, at, "is not an alternate key of its own")
	_, _, err = maps.Import([]byte(src), maps.CompileOptions{CRM: md(`[{"LogicalName": "pair", "KeyAttributes": ["lastname", "msemr_medicalrecordnumber"]}]`, "String")})
	problemAt(t, err, at, "is not an alternate key of its own")
	_, _, err = maps.Import([]byte(src), maps.CompileOptions{CRM: md(mrnKey, "Integer")})
	problemAt(t, err, at, "as text")
	_, _, err = maps.Import([]byte(strings.Replace(src, "crmAttribute: msemr_medicalrecordnumber", "crmAttribute: msemr_mrn", 1)),
		maps.CompileOptions{CRM: md(mrnKey, "String")})
	problemAt(t, err, at, `no attribute "msemr_mrn"`)
}
