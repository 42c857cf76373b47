package maps_test

import (
	"bytes"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/fhirsync/fhirsync/maps"
	"github.com/fhirsync/fhirsync/maps/starter"
)

// base is a small valid map set; each bad-map case edits it.
const base = `format: 1
valueMaps:
  - name: gender
    system: http://hl7.org/fhir/administrative-gender
    entries:
      - {crm: 1, fhir: male}
      - {crm: 2, fhir: female}
      - {crm: 3, fhir: other}
      - {crm: 4, fhir: unknown}
entityMaps:
  - name: patient
    crmEntity: contact
    crmEntitySet: contacts
    fhirType: Patient
    fhirToCRM: {enabled: true, operations: [create, update]}
    crmToFHIR: {enabled: true, operations: [update]}
    correlation: {crmAttribute: msemr_azurefhirid, fhirIdentifierSystem: "urn:crm"}
    attributes:
      - name: last-name
        crmAttribute: lastname
        crmType: string
        fhirPath: name.where(use='official').family
      - name: gender
        crmAttribute: gendercode
        crmType: option-set
        fhirPath: gender
        action: valueMap
        valueMap: gender
      - name: practitioner
        crmAttribute: msemr_gp
        crmType: lookup
        fhirPath: generalPractitioner[0].reference
        action: lookup
        lookup: {entityMap: practitioner}
  - name: practitioner
    crmEntity: contact
    crmEntitySet: contacts
    fhirType: Practitioner
    fhirToCRM: {enabled: true, operations: [create]}
    crmToFHIR: {enabled: false, operations: []}
    correlation: {crmAttribute: msemr_azurefhirid, fhirIdentifierSystem: "urn:crm"}
    attributes:
      - name: last-name
        crmAttribute: lastname
        crmType: string
        fhirPath: name[0].family
`

func TestValidMapSet(t *testing.T) {
	t.Parallel()
	if _, _, err := maps.Import([]byte(base), maps.CompileOptions{}); err != nil {
		t.Fatal(err)
	}
}

func TestBadMapsNameTheirLocation(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name    string
		edit    func(string) string
		want    maps.Problem // location fields that must match
		wantMsg string
	}{
		{
			name: "malformed YAML",
			edit: func(s string) string {
				return strings.Replace(s, "    crmEntitySet: contacts\n", "    crmEntitySet: [contacts\n", 1)
			},
			want:    maps.Problem{Line: 13},
			wantMsg: "malformed YAML",
		},
		{
			name: "unknown field",
			edit: func(s string) string {
				return strings.Replace(s, "    fhirType: Patient\n", "    fhirType: Patient\n    fhirTipe: x\n", 1)
			},
			want:    maps.Problem{Line: 15},
			wantMsg: "fhirTipe",
		},
		{
			name:    "unknown resource type",
			edit:    func(s string) string { return strings.Replace(s, "fhirType: Patient", "fhirType: Patinet", 1) },
			want:    maps.Problem{Map: "patient", Field: "fhirType"},
			wantMsg: `unknown FHIR R4 resource type "Patinet"`,
		},
		{
			name: "path to no element",
			edit: func(s string) string {
				return strings.Replace(s, "name.where(use='official').family", "name.where(use='official').surname", 1)
			},
			want:    maps.Problem{Map: "patient", Attribute: "last-name", Field: "fhirPath"},
			wantMsg: `HumanName has no element "surname"`,
		},
		{
			name: "path syntax error",
			edit: func(s string) string {
				return strings.Replace(s, "name.where(use='official').family", "name.where(use='official'.family", 1)
			},
			want:    maps.Problem{Map: "patient", Attribute: "last-name", Field: "fhirPath"},
			wantMsg: "column",
		},
		{
			name:    "index on a single element",
			edit:    func(s string) string { return strings.Replace(s, "fhirPath: gender", "fhirPath: gender[1]", 1) },
			want:    maps.Problem{Map: "patient", Attribute: "gender", Field: "fhirPath"},
			wantMsg: "does not repeat",
		},
		{
			name: "type mismatch",
			edit: func(s string) string {
				return strings.Replace(s, "crmType: string\n        fhirPath: name.where", "crmType: date-only\n        fhirPath: name.where", 1)
			},
			want:    maps.Problem{Map: "patient", Attribute: "last-name", Field: "crmType"},
			wantMsg: "type mismatch: CRM date-only cannot carry FHIR string",
		},
		{
			name:    "value map gap in a required binding",
			edit:    func(s string) string { return strings.Replace(s, "      - {crm: 4, fhir: unknown}\n", "", 1) },
			want:    maps.Problem{Map: "patient", Attribute: "gender", Field: "valueMap"},
			wantMsg: "does not cover the required binding of gender: missing unknown",
		},
		{
			name: "value map code outside the binding",
			edit: func(s string) string {
				return strings.Replace(s, "{crm: 4, fhir: unknown}", "{crm: 4, fhir: unknown}\n      - {crm: 5, fhir: robot}", 1)
			},
			want:    maps.Problem{Map: "patient", Attribute: "gender", Field: "valueMap"},
			wantMsg: `produces code "robot"`,
		},
		{
			name: "lookup cycle",
			edit: func(s string) string {
				return s + `      - name: patient
        crmAttribute: msemr_patient
        crmType: lookup
        fhirPath: identifier[0].assigner.reference
        action: lookup
        lookup: {entityMap: patient}
`
			},
			want:    maps.Problem{Map: "practitioner", Field: "lookup"},
			wantMsg: "lookup cycle: ",
		},
		{
			name:    "unknown value map",
			edit:    func(s string) string { return strings.Replace(s, "valueMap: gender", "valueMap: sex", 1) },
			want:    maps.Problem{Map: "patient", Attribute: "gender", Field: "valueMap"},
			wantMsg: `unknown value map "sex"`,
		},
		{
			name: "unknown lookup target",
			edit: func(s string) string {
				return strings.Replace(s, "lookup: {entityMap: practitioner}", "lookup: {entityMap: doctor}", 1)
			},
			want:    maps.Problem{Map: "patient", Attribute: "practitioner", Field: "lookup.entityMap"},
			wantMsg: `unknown entity map "doctor"`,
		},
		{
			name: "duplicate CRM target",
			edit: func(s string) string {
				return strings.Replace(s, "      - name: gender\n", "      - name: family-again\n        crmAttribute: lastname\n        crmType: string\n        fhirPath: name[1].family\n      - name: gender\n", 1)
			},
			want:    maps.Problem{Map: "patient", Attribute: "family-again", Field: "crmAttribute"},
			wantMsg: "duplicate target: CRM attribute lastname",
		},
		{
			name: "computed in both directions",
			edit: func(s string) string {
				return strings.Replace(s, "        fhirPath: name[0].family\n", "        action: computed\n        expression: name.first().family\n", 1)
			},
			want:    maps.Problem{Map: "practitioner", Attribute: "last-name", Field: "direction"},
			wantMsg: "direction conflict",
		},
		{
			name: "bad FHIRPath filter",
			edit: func(s string) string {
				return strings.Replace(s, "    attributes:\n      - name: last-name\n        crmAttribute: lastname\n        crmType: string\n        fhirPath: name[0]", "    fhirFilter: {name: f, expression: \"active = = true\"}\n    attributes:\n      - name: last-name\n        crmAttribute: lastname\n        crmType: string\n        fhirPath: name[0]", 1)
			},
			want:    maps.Problem{Map: "practitioner", Field: "fhirFilter.expression"},
			wantMsg: "FHIRPath",
		},
		{
			name: "bad enum",
			edit: func(s string) string {
				return strings.Replace(s, "operations: [create]}", "operations: [create, upsert]}", 1)
			},
			want:    maps.Problem{Map: "practitioner", Field: "fhirToCRM.operations"},
			wantMsg: `unknown operation "upsert"`,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			src := tt.edit(base)
			if src == base {
				t.Fatal("the edit did not apply")
			}
			_, _, err := maps.Import([]byte(src), maps.CompileOptions{})
			var ve *maps.ValidationError
			if !errors.As(err, &ve) {
				t.Fatalf("Import = %v, want a *ValidationError", err)
			}
			for _, p := range ve.Problems {
				loc := p
				loc.Message, loc.Fix = "", ""
				// YAML parsers place some errors on the line before.
				if tt.want.Line != 0 && (loc.Line < tt.want.Line-1 || loc.Line > tt.want.Line) {
					continue
				}
				if tt.want.Line == 0 && loc != tt.want {
					continue
				}
				if strings.Contains(p.Message, tt.wantMsg) {
					return
				}
			}
			t.Fatalf("no problem at %s containing %q; got:\n%v", tt.want.Location(), tt.wantMsg, err)
		})
	}
}

func TestAllProblemsReportedAtOnce(t *testing.T) {
	t.Parallel()
	src := strings.Replace(base, "fhirType: Patient", "fhirType: Patinet", 1)
	src = strings.Replace(src, "fhirPath: name[0].family", "fhirPath: name[0].surname", 1)
	src = strings.Replace(src, "valueMap: gender", "valueMap: sex", 1)
	_, _, err := maps.Import([]byte(src), maps.CompileOptions{})
	var ve *maps.ValidationError
	if !errors.As(err, &ve) || len(ve.Problems) < 3 {
		t.Fatalf("want at least 3 problems at once, got %v", err)
	}
}

func TestCRMMetadataChecks(t *testing.T) {
	t.Parallel()
	md, err := maps.ParseCRMMetadata([]byte(`{"value": [
	  {"LogicalName": "contact", "EntitySetName": "contacts", "PrimaryIdAttribute": "contactid", "Attributes": [
	    {"LogicalName": "lastname", "AttributeType": "String", "MaxLength": 5},
	    {"LogicalName": "gendercode", "AttributeType": "Picklist", "OptionSet": {"Options": [{"Value": 1}, {"Value": 2}, {"Value": 3}]}},
	    {"LogicalName": "msemr_gp", "AttributeType": "Lookup", "Targets": ["account"]},
	    {"LogicalName": "msemr_azurefhirid", "AttributeType": "String"}
	  ]}]}`))
	if err != nil {
		t.Fatal(err)
	}
	_, _, err = maps.Import([]byte(base), maps.CompileOptions{CRM: md})
	var ve *maps.ValidationError
	if !errors.As(err, &ve) {
		t.Fatalf("want problems, got %v", err)
	}
	text := err.Error()
	for _, want := range []string{
		`value map "gender" uses option value 4, which contact.gendercode does not define`,
		`lookup contact.msemr_gp targets account, not contact`,
	} {
		if !strings.Contains(text, want) {
			t.Errorf("missing problem %q in:\n%s", want, text)
		}
	}
	src0 := strings.Replace(base, "fhirPath: name.where(use='official').family", "fhirPath: name.where(use='official').family\n        maxLength: 50", 1)
	_, _, err = maps.Import([]byte(src0), maps.CompileOptions{CRM: md})
	for _, want := range []string{"maxLength 50 exceeds the CRM attribute's limit of 5"} {
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("missing problem %q in: %v", want, err)
		}
	}
	src := strings.Replace(base, "crmAttribute: lastname\n        crmType: string\n        fhirPath: name.where", "crmAttribute: lastnam\n        crmType: string\n        fhirPath: name.where", 1)
	_, _, err = maps.Import([]byte(src), maps.CompileOptions{CRM: md})
	if err == nil || !strings.Contains(err.Error(), `CRM entity contact has no attribute "lastnam"`) {
		t.Fatalf("unknown attribute not reported: %v", err)
	}
}

// TestExportImportExportIsByteIdentical checks the canonical YAML form.
func TestExportImportExportIsByteIdentical(t *testing.T) {
	t.Parallel()
	for name, src := range map[string][]byte{"starter": starter.YAML(), "base": []byte(base)} {
		doc, err := maps.Parse(src)
		if err != nil {
			t.Fatal(err)
		}
		first, err := maps.Export(doc)
		if err != nil {
			t.Fatal(err)
		}
		doc2, _, err := maps.Import(first, maps.CompileOptions{})
		if err != nil {
			t.Fatalf("%s: exported YAML does not import: %v", name, err)
		}
		second, err := maps.Export(doc2)
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(first, second) {
			t.Fatalf("%s: export → import → export differs:\n%s", name, firstDiff(second, first))
		}
	}
}

// FuzzImportYAML feeds arbitrary bytes to the YAML import: it must never
// panic, and whatever imports must export and re-import to the same bytes.
func FuzzImportYAML(f *testing.F) {
	f.Add([]byte(base))
	f.Add(starter.YAML())
	seeds, _ := filepath.Glob(filepath.Join("testdata", "*.yaml"))
	for _, s := range seeds {
		if raw, err := os.ReadFile(s); err == nil {
			f.Add(raw)
		}
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		doc, _, err := maps.Import(data, maps.CompileOptions{})
		if err != nil {
			var ve *maps.ValidationError
			if doc == nil && !errors.As(err, &ve) {
				t.Fatalf("parse error is not a ValidationError: %v", err)
			}
			return
		}
		first, err := maps.Export(doc)
		if err != nil {
			t.Fatal(err)
		}
		doc2, _, err := maps.Import(first, maps.CompileOptions{})
		if err != nil {
			t.Fatalf("exported set does not import: %v", err)
		}
		second, _ := maps.Export(doc2)
		if !bytes.Equal(first, second) {
			t.Fatalf("export is not stable")
		}
	})
}
