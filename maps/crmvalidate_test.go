package maps_test

import (
	"encoding/json"
	"errors"
	"io"
	maps0 "maps"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/fhirsync/fhirsync/maps"
	"github.com/fhirsync/fhirsync/maps/starter"
	"github.com/fhirsync/fhirsync/sandbox/crmserver"
)

// sandboxMetadata reads the sandbox CRM's EntityDefinitions over HTTP.
func sandboxMetadata(t *testing.T) *maps.CRMMetadata {
	t.Helper()
	md, err := maps.ParseCRMMetadata(sandboxMetadataJSON(t))
	if err != nil {
		t.Fatal(err)
	}
	return md
}

// columnChange sets properties of one attribute in an EntityDefinitions
// answer, as an administrator changing the column in the CRM would.
type columnChange struct {
	entity, attribute string
	set               map[string]any
}

// sandboxMetadataWith is the sandbox CRM's metadata with the columns
// changed as given.
func sandboxMetadataWith(t *testing.T, changes ...columnChange) *maps.CRMMetadata {
	t.Helper()
	var doc struct {
		Value []map[string]any `json:"value"`
	}
	if err := json.Unmarshal(sandboxMetadataJSON(t), &doc); err != nil {
		t.Fatal(err)
	}
	for _, c := range changes {
		found := false
		for _, e := range doc.Value {
			if e["LogicalName"] != c.entity {
				continue
			}
			attrs, _ := e["Attributes"].([]any)
			for _, a := range attrs {
				if am, ok := a.(map[string]any); ok && am["LogicalName"] == c.attribute {
					maps0.Copy(am, c.set)
					found = true
				}
			}
		}
		if !found {
			t.Fatalf("the sandbox CRM has no column %s.%s", c.entity, c.attribute)
		}
	}
	b, err := json.Marshal(doc)
	if err != nil {
		t.Fatal(err)
	}
	md, err := maps.ParseCRMMetadata(b)
	if err != nil {
		t.Fatal(err)
	}
	return md
}

// sandboxMetadataJSON is the sandbox CRM's EntityDefinitions answer.
func sandboxMetadataJSON(t *testing.T) []byte {
	t.Helper()
	s, err := crmserver.New(crmserver.Options{})
	if err != nil {
		t.Fatal(err)
	}
	hs := httptest.NewServer(s)
	t.Cleanup(hs.Close)
	res, err := http.Get(hs.URL + crmserver.APIPath + "EntityDefinitions?$expand=Attributes,Keys")
	if err != nil {
		t.Fatal(err)
	}
	defer res.Body.Close()
	body, err := io.ReadAll(res.Body)
	if err != nil || res.StatusCode != http.StatusOK {
		t.Fatalf("EntityDefinitions: %d %v %.200s", res.StatusCode, err, body)
	}
	return body
}

// attributeMap finds attribute map attr of entity map m in doc.
func attributeMap(t *testing.T, doc *maps.Document, m, attr string) *maps.AttributeMap {
	t.Helper()
	for i := range doc.EntityMaps {
		if doc.EntityMaps[i].Name != m {
			continue
		}
		for j := range doc.EntityMaps[i].Attributes {
			if a := &doc.EntityMaps[i].Attributes[j]; a.Name == attr {
				return a
			}
		}
	}
	t.Fatalf("starter maps have no attribute map %s/%s", m, attr)
	return nil
}

// TestValidateAgainstSandboxCRM changes one thing in the starter maps at a
// time and checks the problem found against the sandbox CRM's metadata:
// where it is and what fix it suggests.
func TestValidateAgainstSandboxCRM(t *testing.T) {
	t.Parallel()
	md := sandboxMetadata(t)
	tests := []struct {
		name   string
		change func(t *testing.T, doc *maps.Document)
		// want is the problem's location; nil wants none.
		want    *maps.Problem
		message string // a part of the message
		fix     string // a part of the suggested fix
	}{
		{name: "starter maps fit", change: func(*testing.T, *maps.Document) {}},
		{name: "starter signal maps enabled fit", change: func(t *testing.T, doc *maps.Document) {
			n := 0
			for i := range doc.EntityMaps {
				if em := &doc.EntityMaps[i]; em.Name == "risk-signal" || em.Name == "flag-signal" {
					em.Enabled = nil
					n++
				}
			}
			if n != 2 {
				t.Fatalf("%d starter signal maps, want risk-signal and flag-signal", n)
			}
		}},
		{
			name: "nonexistent attribute",
			change: func(t *testing.T, doc *maps.Document) {
				attributeMap(t, doc, "patient-contact", "birth-date").CRMAttribute = "birthdat"
			},
			want:    &maps.Problem{Map: "patient-contact", Attribute: "birth-date", Field: "crmAttribute"},
			message: `has no attribute "birthdat"`, fix: `did you mean "birthdate"?`,
		},
		{
			name: "wrong type",
			change: func(t *testing.T, doc *maps.Document) {
				attributeMap(t, doc, "patient-contact", "first-name").CRMType = maps.TypeMemo
			},
			want:    &maps.Problem{Map: "patient-contact", Attribute: "first-name", Field: "crmType"},
			message: "contact.firstname is String, the map says memo", fix: "set crmType to string",
		},
		{
			name: "maxLength above the CRM's limit",
			change: func(t *testing.T, doc *maps.Document) {
				attributeMap(t, doc, "patient-contact", "first-name").MaxLength = 500
			},
			want:    &maps.Problem{Map: "patient-contact", Attribute: "first-name", Field: "maxLength"},
			message: "exceeds the CRM attribute's limit of 50", fix: "set maxLength to 50 or less",
		},
		{
			name: "FHIR string longer than the CRM column, nothing declared",
			change: func(t *testing.T, doc *maps.Document) {
				a := attributeMap(t, doc, "patient-contact", "first-name")
				a.MaxLength, a.LengthPolicy = 0, ""
			},
			want:    &maps.Problem{Map: "patient-contact", Attribute: "first-name", Field: "maxLength"},
			message: "can hold any length; CRM attribute contact.firstname holds 50", fix: "declare maxLength: 50 with lengthPolicy: truncate",
		},
		{
			name: "option value the CRM does not define",
			change: func(t *testing.T, doc *maps.Document) {
				doc.ValueMaps[0].Entries[0].CRM = 999
			},
			want:    &maps.Problem{Map: "patient-contact", Attribute: "gender", Field: "valueMap"},
			message: "uses option value 999, which contact.gendercode does not define", fix: "use one of the option values 1, 2",
		},
		{
			name: "lookup to a table its attribute does not target",
			change: func(t *testing.T, doc *maps.Document) {
				attributeMap(t, doc, "patient-contact", "general-practitioner").Lookup.EntityMap = "organization-account"
			},
			want:    &maps.Problem{Map: "patient-contact", Attribute: "general-practitioner", Field: "crmAttribute"},
			message: "targets contact, not account", fix: "point the lookup at an entity map of contact",
		},
		{
			name: "lookup to an unmapped table",
			change: func(t *testing.T, doc *maps.Document) {
				attributeMap(t, doc, "patient-contact", "general-practitioner").Lookup.EntityMap = "practitioner-contacts"
			},
			want:    &maps.Problem{Map: "patient-contact", Attribute: "general-practitioner", Field: "lookup.entityMap"},
			message: `unknown entity map "practitioner-contacts"`, fix: `did you mean "practitioner-contact"?`,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			doc, err := maps.Parse(starter.YAML())
			if err != nil {
				t.Fatal(err)
			}
			tt.change(t, doc)
			err = maps.Validate(doc, maps.CompileOptions{CRM: md})
			if tt.want == nil {
				if err != nil {
					t.Fatalf("want no problems, got %v", err)
				}
				return
			}
			var ve *maps.ValidationError
			if !errors.As(err, &ve) {
				t.Fatalf("want a validation error, got %v", err)
			}
			for _, p := range ve.Problems {
				if p.Map == tt.want.Map && p.Expansion == "" && p.Attribute == tt.want.Attribute && p.Field == tt.want.Field &&
					strings.Contains(p.Message, tt.message) {
					if !strings.Contains(p.Fix, tt.fix) {
						t.Fatalf("%s: fix %q, want it to contain %q", p.Location(), p.Fix, tt.fix)
					}
					return
				}
			}
			t.Fatalf("no problem at %s containing %q; got:\n%v", tt.want.Location(), tt.message, err)
		})
	}
}

// TestValidateWithoutCRMMetadata: the same nonexistent attribute passes
// when no CRM metadata is given, which is why save and publish must pass it.
func TestValidateWithoutCRMMetadata(t *testing.T) {
	t.Parallel()
	doc, err := maps.Parse(starter.YAML())
	if err != nil {
		t.Fatal(err)
	}
	attributeMap(t, doc, "patient-contact", "birth-date").CRMAttribute = "birthdat"
	if err := maps.Validate(doc, maps.CompileOptions{}); err != nil {
		t.Fatalf("without metadata the attribute cannot be checked, got %v", err)
	}
}

// TestValidateNumbersAgainstSandboxCRM checks integer attribute maps
// against the ranges of the CRM's columns. The sandbox CRM describes an
// Integer column with MinValue and MaxValue and a BigInt column as
// Microsoft documents them (IntegerAttributeMetadata,
// https://learn.microsoft.com/en-us/dotnet/api/microsoft.xrm.sdk.metadata.integerattributemetadata;
// BigIntAttributeMetadata,
// https://learn.microsoft.com/en-us/dotnet/api/microsoft.xrm.sdk.metadata.bigintattributemetadata);
// a case may narrow a column as an administrator can. FHIR's integer types
// are 32-bit, positiveInt from 1 and unsignedInt from 0
// (https://hl7.org/fhir/R4/datatypes.html#primitive).
func TestValidateNumbersAgainstSandboxCRM(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name    string
		columns []columnChange
		change  func(t *testing.T, doc *maps.Document)
		want    *maps.Problem // nil wants none
		message string
		fix     string
	}{
		{name: "default integer ranges hold every FHIR integer type", change: func(*testing.T, *maps.Document) {}},
		{
			name:    "a column narrower than positiveInt",
			columns: []columnChange{{"msemr_appointmentemr", "msemr_minutesduration", map[string]any{"MinValue": 0, "MaxValue": 1440}}},
			change:  func(*testing.T, *maps.Document) {},
			want:    &maps.Problem{Map: "appointment", Attribute: "minutes-duration", Field: "crmAttribute"},
			message: "FHIR positiveInt at minutesDuration can hold 1 to 2147483647; CRM attribute msemr_appointmentemr.msemr_minutesduration accepts 0 to 1440",
			fix:     "widen the column's range to at least 1 to 2147483647",
		},
		{
			name:    "a column whose minimum only is above unsignedInt's",
			columns: []columnChange{{"msemr_appointmentemr", "msemr_priority", map[string]any{"MinValue": 1}}},
			change:  func(*testing.T, *maps.Document) {},
			want:    &maps.Problem{Map: "appointment", Attribute: "priority", Field: "crmAttribute"},
			message: "FHIR unsignedInt at priority can hold 0 to 2147483647; CRM attribute msemr_appointmentemr.msemr_priority accepts 1 to 2147483647",
			fix:     "widen the column's range to at least 0 to 2147483647",
		},
		{
			name:    "a wider column is fine",
			columns: []columnChange{{"msemr_appointmentemr", "msemr_minutesduration", map[string]any{"MinValue": -2147483648, "MaxValue": 2147483647}}},
			change:  func(*testing.T, *maps.Document) {},
		},
		{
			name: "a BigInt column read into a FHIR integer",
			change: func(t *testing.T, doc *maps.Document) {
				em := &doc.EntityMaps[0]
				if em.Name != "patient-contact" {
					t.Fatalf("the first starter map is %s", em.Name)
				}
				em.Attributes = append(em.Attributes, maps.AttributeMap{Name: "birth-order", CRMAttribute: "versionnumber",
					CRMType: maps.TypeInt, FHIRPath: "multipleBirthInteger", Direction: maps.Both})
			},
			want:    &maps.Problem{Map: "patient-contact", Attribute: "birth-order", Field: "crmAttribute"},
			message: "CRM attribute contact.versionnumber is a 64-bit BigInt; FHIR integer at multipleBirthInteger holds 32 bits",
			fix:     "set direction: fhir-to-crm",
		},
		{
			name: "a BigInt column written from FHIR only",
			change: func(t *testing.T, doc *maps.Document) {
				em := &doc.EntityMaps[0]
				em.Attributes = append(em.Attributes, maps.AttributeMap{Name: "birth-order", CRMAttribute: "versionnumber",
					CRMType: maps.TypeInt, FHIRPath: "multipleBirthInteger", Direction: maps.FHIRToCRM})
			},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			doc, err := maps.Parse(starter.YAML())
			if err != nil {
				t.Fatal(err)
			}
			tt.change(t, doc)
			err = maps.Validate(doc, maps.CompileOptions{CRM: sandboxMetadataWith(t, tt.columns...)})
			if tt.want == nil {
				if err != nil {
					t.Fatalf("want no problems, got %v", err)
				}
				return
			}
			var ve *maps.ValidationError
			if !errors.As(err, &ve) {
				t.Fatalf("want a validation error, got %v", err)
			}
			for _, p := range ve.Problems {
				if p.Map == tt.want.Map && p.Attribute == tt.want.Attribute && p.Field == tt.want.Field && strings.Contains(p.Message, tt.message) {
					if !strings.Contains(p.Fix, tt.fix) {
						t.Fatalf("%s: fix %q, want it to contain %q", p.Location(), p.Fix, tt.fix)
					}
					if len(ve.Problems) != 1 {
						t.Errorf("want this one problem, got %v", err)
					}
					return
				}
			}
			t.Fatalf("no problem at %s containing %q; got:\n%v", tt.want.Location(), tt.message, err)
		})
	}
}

// A FHIR decimal may carry any number of decimal places
// (https://hl7.org/fhir/R4/datatypes.html#decimal); a Dataverse Decimal,
// Double or Money column keeps its Precision, so writing one into the
// other needs a round no larger than that. A Money column's places come
// from its PrecisionSource
// (https://learn.microsoft.com/en-us/dotnet/api/microsoft.xrm.sdk.metadata.moneyattributemetadata.precisionsource):
// its own Precision (0), the organization's pricing precision (1) or the
// record currency's (2, also when left out), each at most 4.
func TestValidateDecimalPrecisionAgainstSandboxCRM(t *testing.T) {
	t.Parallel()
	const (
		entity = "msemr_location"
		column = "msemr_locationpositionlatitude"
		where  = "CRM attribute msemr_location.msemr_locationpositionlatitude"
	)
	col := func(set map[string]any) []columnChange { return []columnChange{{entity, column, set}} }
	money := func(set map[string]any) []columnChange {
		set["AttributeType"] = "Money"
		return col(set)
	}
	tests := []struct {
		name      string
		columns   []columnChange
		attribute string // the latitude attribute map's extra YAML keys
		crmType   string
		wantErr   bool
		message   string
		fix       string
	}{
		{name: "no round into 2 places", wantErr: true,
			message: "FHIR decimal at position.latitude can hold any number of decimal places; " + where + " keeps 2 decimal places (Precision)",
			fix:     "declare round: 2 or choose a column with more precision"},
		{name: "round to the column's places", attribute: "round: 2"},
		{name: "round to fewer places", attribute: "round: 0"},
		{name: "round to more places than the column keeps", attribute: "round: 3", wantErr: true,
			message: "round: 3 keeps more decimal places than " + where + " keeps (2 decimal places (Precision))",
			fix:     "declare round: 2 or choose a column with more precision"},
		{name: "no round into 10 places", columns: col(map[string]any{"Precision": 10}), wantErr: true,
			message: where + " keeps 10 decimal places", fix: "declare round: 10"},
		{name: "round 10 into 10 places", columns: col(map[string]any{"Precision": 10}), attribute: "round: 10"},
		{name: "read from the CRM only", attribute: "direction: crm-to-fhir"},
		{name: "metadata without Precision", columns: col(map[string]any{"Precision": nil})},
		{name: "Double column", columns: col(map[string]any{"AttributeType": "Double", "Precision": 5}), attribute: "round: 6", wantErr: true,
			message: "round: 6 keeps more decimal places than " + where + " keeps (5 decimal places (Precision))", fix: "declare round: 5"},
		{name: "Double column, round within", columns: col(map[string]any{"AttributeType": "Double", "Precision": 5}), attribute: "round: 5"},
		{name: "Money with its own Precision", columns: money(map[string]any{"Precision": 2, "PrecisionSource": 0}), crmType: "money", attribute: "round: 3", wantErr: true,
			message: "keeps (2 decimal places (Precision))", fix: "declare round: 2"},
		{name: "Money Precision above 4 keeps 4", columns: money(map[string]any{"Precision": 6, "PrecisionSource": 0}), crmType: "money", attribute: "round: 5", wantErr: true,
			message: "keeps (4 decimal places (Precision))", fix: "declare round: 4"},
		{name: "Money with the pricing precision, no round", columns: money(map[string]any{"Precision": 2, "PrecisionSource": 1}), crmType: "money", wantErr: true,
			message: "keeps the organization's pricing decimal precision, at most 4 decimal places", fix: "declare round: 4"},
		{name: "Money with the pricing precision, round 4", columns: money(map[string]any{"Precision": 2, "PrecisionSource": 1}), crmType: "money", attribute: "round: 4"},
		{name: "Money with the currency's precision", columns: money(map[string]any{"Precision": 2, "PrecisionSource": 2}), crmType: "money", attribute: "round: 5", wantErr: true,
			message: "keeps (its record currency's precision, at most 4 decimal places)", fix: "declare round: 4"},
		{name: "Money without PrecisionSource is the currency's", columns: money(map[string]any{"Precision": 2, "PrecisionSource": nil}), crmType: "money", wantErr: true,
			message: "keeps its record currency's precision", fix: "declare round: 4"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			typ := tt.crmType
			if typ == "" {
				typ = "decimal"
			}
			extra := ""
			if tt.attribute != "" {
				extra = ", " + tt.attribute
			}
			doc, err := maps.Parse([]byte(`format: 1
entityMaps:
  - name: location
    crmEntity: msemr_location
    crmEntitySet: msemr_locations
    fhirType: Location
    fhirToCRM: {enabled: true, operations: [create, update]}
    crmToFHIR: {enabled: true, operations: [create, update]}
    correlation: {crmAttribute: msemr_azurefhirid, fhirIdentifierSystem: "urn:fhirsync:crm:msemr_locationid"}
    attributes:
      - {name: latitude, crmAttribute: ` + column + `, crmType: ` + typ + `, fhirPath: position.latitude` + extra + `}
`))
			if err != nil {
				t.Fatal(err)
			}
			err = maps.Validate(doc, maps.CompileOptions{CRM: sandboxMetadataWith(t, tt.columns...)})
			if !tt.wantErr {
				if err != nil {
					t.Fatalf("want no problems, got %v", err)
				}
				return
			}
			var ve *maps.ValidationError
			if !errors.As(err, &ve) {
				t.Fatalf("want a validation error, got %v", err)
			}
			if len(ve.Problems) != 1 {
				t.Fatalf("want one problem, got %v", err)
			}
			p := ve.Problems[0]
			if p.Map != "location" || p.Attribute != "latitude" || p.Field != "round" {
				t.Fatalf("problem at %s, want location / latitude / round", p.Location())
			}
			if !strings.Contains(p.Message, tt.message) || !strings.Contains(p.Fix, tt.fix) {
				t.Fatalf("problem %q (fix %q), want it to contain %q (fix %q)", p.Message, p.Fix, tt.message, tt.fix)
			}
		})
	}
}
