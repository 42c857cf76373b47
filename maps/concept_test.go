package maps_test

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"strings"
	"testing"

	"github.com/fhirsync/fhirsync/maps"
)

// conceptDoc is a Condition map whose code and categories are concept
// lookups: the code both ways, the categories as child rows.
const conceptDoc = `format: 1
entityMaps:
  - name: patient
    crmEntity: contact
    crmEntitySet: contacts
    fhirType: Patient
    fhirToCRM: {enabled: true, operations: [create, update]}
    crmToFHIR: {enabled: true, operations: [create, update]}
    correlation: {crmAttribute: msemr_azurefhirid, fhirIdentifierSystem: "urn:x:contact"}
    attributes:
      - {name: family, crmAttribute: lastname, crmType: string, fhirPath: "name[0].family"}
  - name: condition
    crmEntity: msemr_condition
    crmEntitySet: msemr_conditions
    fhirType: Condition
    fhirToCRM: {enabled: true, operations: [create, update]}
    crmToFHIR: {enabled: true, operations: [create, update]}
    correlation: {crmAttribute: msemr_azurefhirid, fhirIdentifierSystem: "urn:x:condition"}
    attributes:
      - {name: code, crmAttribute: msemr_conditioncode, crmType: lookup, fhirPath: code, action: lookup, concept: {type: 935000023, systems: ["http://snomed.info/sct", "http://hl7.org/fhir/sid/icd-10"], create: true}}
      - {name: severity, crmAttribute: msemr_severity, crmType: lookup, fhirPath: severity, action: lookup, concept: {type: 935000025, systems: ["http://snomed.info/sct"]}}
    expansions:
      - name: categories
        fhirPath: category
        crmEntity: msemr_conditioncategory
        crmEntitySet: msemr_conditioncategories
        parentLookup: msemr_condition
        matchKey: [name]
        onRemove: delete
        attributes:
          - {name: name, crmAttribute: msemr_name, crmType: string, fhirPath: "coding[0].code"}
          - {name: category, crmAttribute: msemr_category, crmType: lookup, fhirPath: coding, action: lookup, concept: {type: 935000022, systems: ["http://terminology.hl7.org/CodeSystem/condition-category"], create: true}}
`

func conceptJSON(t *testing.T, s string) map[string]any {
	t.Helper()
	v, err := maps.DecodeJSON([]byte(s))
	if err != nil {
		t.Fatal(err)
	}
	return v
}

func conceptSet(t *testing.T) *maps.Set {
	t.Helper()
	_, set, err := maps.Import([]byte(conceptDoc), maps.CompileOptions{})
	if err != nil {
		t.Fatal(err)
	}
	return set
}

// conceptResolver answers lookups with nothing and concepts from memory.
type conceptResolver struct{ *maps.MemoryConcepts }

func (conceptResolver) CRMID(context.Context, string, string) (string, bool, error) {
	return "", false, nil
}
func (conceptResolver) FHIRRef(context.Context, string, string) (string, bool, error) {
	return "", false, nil
}

func conditionWith(t *testing.T, code string) map[string]any {
	return conceptJSON(t, `{"resourceType":"Condition","id":"c1",
		"code":{"coding":[{"system":"http://hl7.org/fhir/sid/icd-10","code":"T69.9"},{"system":"http://snomed.info/sct","code":"`+code+`","display":"Burnt Ear"}],"text":"Burnt ear"},
		"category":[{"coding":[{"system":"http://terminology.hl7.org/CodeSystem/condition-category","code":"encounter-diagnosis"}]}]}`)
}

// TestConceptToCRMResolvesAndReuses: the coding of the first listed system
// is chosen (SNOMED before ICD-10 though ICD-10 comes first in the
// resource); its row is created once with code, display, text and type,
// and a second resource with the same code binds the same row.
func TestConceptToCRMResolvesAndReuses(t *testing.T) {
	t.Parallel()
	set := conceptSet(t)
	m, _ := set.Map("condition")
	r := conceptResolver{maps.NewMemoryConcepts()}
	ctx := context.Background()
	out, err := m.ToCRM(ctx, conditionWith(t, "39065001"), nil, r)
	if err != nil {
		t.Fatal(err)
	}
	typ := 935000023
	want := "/msemr_codeableconcepts(" + maps.MemoryConceptID(&typ, "39065001") + ")"
	if got := out.Record["msemr_conditioncode@odata.bind"]; got != want {
		t.Fatalf("code bind = %v, want %s", got, want)
	}
	row, found, _ := r.Concept(ctx, maps.MemoryConceptID(&typ, "39065001"))
	if !found || row.Code != "39065001" || row.Name != "Burnt Ear" || row.Text != "Burnt ear" || row.Type == nil || *row.Type != typ {
		t.Fatalf("created row = %+v (found %v)", row, found)
	}
	if out.Record["msemr_severity@odata.bind"] != nil {
		t.Errorf("severity absent from the resource, bind = %v, want null", out.Record["msemr_severity@odata.bind"])
	}
	if len(out.Children) != 1 || !strings.HasPrefix(out.Children[0].Record["msemr_category@odata.bind"].(string), "/msemr_codeableconcepts(") {
		t.Fatalf("category row = %+v", out.Children)
	}
	if !strings.Contains(strings.Join(out.Changed, ","), "msemr_conditioncode") {
		t.Errorf("changed = %v, want msemr_conditioncode", out.Changed)
	}
	if _, err := m.ToCRM(ctx, conditionWith(t, "39065001"), nil, r); err != nil {
		t.Fatal(err)
	}
	if r.Len() != 2 { // the code and the category, each once
		t.Errorf("concept rows after two resources with the same codes = %d, want 2", r.Len())
	}
	// Unchanged against a current record that binds the same row.
	cur := &maps.CRMState{Record: map[string]any{"_msemr_conditioncode_value": maps.MemoryConceptID(&typ, "39065001"), "msemr_azurefhirid": "c1"}}
	out, err = m.ToCRM(ctx, conditionWith(t, "39065001"), cur, r)
	if err != nil {
		t.Fatal(err)
	}
	if strings.Contains(strings.Join(out.Changed, ","), "msemr_conditioncode") {
		t.Errorf("same code against the current row: changed = %v", out.Changed)
	}
}

// TestConceptToCRMNoRowWithoutCreate: severity does not create rows, so an
// unknown code is a mapping error naming the attribute map; a text-only
// concept clears the lookup; no concept resolver is an error too.
func TestConceptToCRMNoRowWithoutCreate(t *testing.T) {
	t.Parallel()
	set := conceptSet(t)
	m, _ := set.Map("condition")
	ctx := context.Background()
	res := conceptJSON(t, `{"resourceType":"Condition","severity":{"coding":[{"system":"http://snomed.info/sct","code":"24484000"}]},"code":{"text":"only text"}}`)
	_, err := m.ToCRM(ctx, res, nil, conceptResolver{maps.NewMemoryConcepts()})
	var me *maps.MappingError
	if !errors.As(err, &me) || me.Attribute != "severity" || !errors.Is(err, maps.ErrUnknownConcept) {
		t.Fatalf("unknown severity without create: %v, want a mapping error of severity wrapping ErrUnknownConcept", err)
	}
	mc := maps.NewMemoryConcepts()
	sev := 935000025
	mc.Put(maps.ConceptRow{Code: "24484000", Name: "Severe", Type: &sev})
	out, err := m.ToCRM(ctx, res, nil, conceptResolver{mc})
	if err != nil {
		t.Fatal(err)
	}
	if out.Record["msemr_severity@odata.bind"] != "/msemr_codeableconcepts("+maps.MemoryConceptID(&sev, "24484000")+")" {
		t.Errorf("curated severity row bind = %v", out.Record["msemr_severity@odata.bind"])
	}
	if v, has := out.Record["msemr_conditioncode@odata.bind"]; !has || v != nil {
		t.Errorf("text-only code: bind = %v (present %v), want null", v, has)
	}
	_, err = m.ToCRM(ctx, conditionWith(t, "1"), nil, nil)
	if err == nil || !strings.Contains(err.Error(), "no concept resolver") {
		t.Errorf("without a resolver: %v", err)
	}
}

// TestConceptToFHIRRebuildsCoding: write-back rebuilds the coding from the
// row (first listed system, name as display, text), keeps a concept that
// already resolves to the row as it is, removes one whose lookup was
// cleared, and rebuilds category items from their rows.
func TestConceptToFHIRRebuildsCoding(t *testing.T) {
	t.Parallel()
	set := conceptSet(t)
	m, _ := set.Map("condition")
	ctx := context.Background()
	mc := maps.NewMemoryConcepts()
	r := conceptResolver{mc}
	typ, cat := 935000023, 935000022
	id := mc.Put(maps.ConceptRow{Code: "39065001", Name: "Burnt Ear", Text: "Burnt ear", Type: &typ})
	catID := mc.Put(maps.ConceptRow{Code: "problem-list-item", Name: "Problem List Item", Type: &cat})
	src := maps.CRMState{
		Record: map[string]any{"msemr_conditionid": "r1", "msemr_azurefhirid": "c1", "_msemr_conditioncode_value": id},
		Children: map[string][]map[string]any{"categories": {
			{"msemr_conditioncategoryid": "k1", "msemr_name": "problem-list-item", "_msemr_category_value": catID},
		}},
	}
	out, err := m.ToFHIR(ctx, src, nil, r)
	if err != nil {
		t.Fatal(err)
	}
	got, _ := json.Marshal(out.Resource["code"])
	if want := `{"coding":[{"code":"39065001","display":"Burnt Ear","system":"http://snomed.info/sct"}],"text":"Burnt ear"}`; string(got) != want {
		t.Errorf("code rebuilt = %s, want %s", got, want)
	}
	cats, _ := json.Marshal(out.Resource["category"])
	if want := `[{"coding":[{"code":"problem-list-item","display":"Problem List Item","system":"http://terminology.hl7.org/CodeSystem/condition-category"}]}]`; string(cats) != want {
		t.Errorf("categories rebuilt = %s, want %s", cats, want)
	}

	// A resource that already codes the concept (with an ICD-10
	// translation and its own display) is left as it is.
	base := conditionWith(t, "39065001")
	delete(base, "category")
	before, _ := json.Marshal(base["code"])
	src.Children = nil
	out, err = m.ToFHIR(ctx, src, base, r)
	if err != nil {
		t.Fatal(err)
	}
	after, _ := json.Marshal(out.Resource["code"])
	if !bytes.Equal(before, after) || strings.Contains(strings.Join(out.Changed, ","), "code") {
		t.Errorf("same concept: code %s → %s, changed %v", before, after, out.Changed)
	}

	// The lookup cleared in the CRM: the concept goes; a text-only one stays.
	delete(src.Record, "_msemr_conditioncode_value")
	out, err = m.ToFHIR(ctx, src, conditionWith(t, "39065001"), r)
	if err != nil {
		t.Fatal(err)
	}
	if _, has := out.Resource["code"]; has {
		t.Errorf("cleared lookup kept code %v", out.Resource["code"])
	}
	textOnly := conceptJSON(t, `{"resourceType":"Condition","id":"c1","code":{"text":"only text"}}`)
	out, err = m.ToFHIR(ctx, src, textOnly, r)
	if err != nil {
		t.Fatal(err)
	}
	if c, _ := out.Resource["code"].(map[string]any); c["text"] != "only text" {
		t.Errorf("text-only concept with no lookup = %v, want it kept", out.Resource["code"])
	}
}

// TestConceptValidation: the concept section's problems are reported with
// clear messages.
func TestConceptValidation(t *testing.T) {
	t.Parallel()
	cases := []struct {
		name, attr, want string
	}{
		{"not a lookup type", `{name: code, crmAttribute: msemr_conditioncode, crmType: string, fhirPath: code, action: lookup, concept: {type: 1}}`,
			"action lookup needs crmType lookup, got string"},
		{"both entity map and concept", `{name: code, crmAttribute: msemr_conditioncode, crmType: lookup, fhirPath: code, action: lookup, lookup: {entityMap: condition}, concept: {type: 1}}`,
			"a lookup resolves through lookup.entityMap or through concept, not both"},
		{"not a CodeableConcept", `{name: code, crmAttribute: msemr_conditioncode, crmType: lookup, fhirPath: onsetString, action: lookup, concept: {type: 1}}`,
			"a concept lookup needs a path to a CodeableConcept (or coding inside an expansion of CodeableConcepts); onsetString reaches a string"},
		{"repeating", `{name: code, crmAttribute: msemr_category, crmType: lookup, fhirPath: category, action: lookup, concept: {type: 1}}`,
			"category repeats: name one CodeableConcept ([0]), or map the array with an expansion"},
		{"concept on copy", `{name: code, crmAttribute: msemr_name, crmType: string, fhirPath: code.text, concept: {type: 1}}`,
			"concept is only used by action lookup"},
		{"empty system", `{name: code, crmAttribute: msemr_conditioncode, crmType: lookup, fhirPath: code, action: lookup, concept: {systems: [""]}}`,
			"a code system must not be empty"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			doc := `format: 1
entityMaps:
  - name: condition
    crmEntity: msemr_condition
    crmEntitySet: msemr_conditions
    fhirType: Condition
    fhirToCRM: {enabled: true, operations: [create]}
    crmToFHIR: {enabled: false, operations: []}
    correlation: {crmAttribute: msemr_azurefhirid, fhirIdentifierSystem: "urn:x"}
    attributes:
      - ` + tc.attr + "\n"
			_, _, err := maps.Import([]byte(doc), maps.CompileOptions{})
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("problems = %v\nwant one saying %q", err, tc.want)
			}
		})
	}
}

// TestConceptYAMLRoundTrip: the concept section survives export and
// import unchanged.
func TestConceptYAMLRoundTrip(t *testing.T) {
	t.Parallel()
	doc, err := maps.Parse([]byte(conceptDoc))
	if err != nil {
		t.Fatal(err)
	}
	out, err := maps.Export(doc)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Contains(out, []byte(`concept: {type: 935000023, systems: ["http://snomed.info/sct", "http://hl7.org/fhir/sid/icd-10"], create: true}`)) &&
		!bytes.Contains(out, []byte("concept:")) {
		t.Fatalf("export lost the concept section:\n%s", out)
	}
	back, err := maps.Parse(out)
	if err != nil {
		t.Fatal(err)
	}
	c := back.EntityMaps[1].Attributes[0].Concept
	if c == nil || c.Type == nil || *c.Type != 935000023 || len(c.Systems) != 2 || !c.Create {
		t.Fatalf("concept after export and import = %+v", c)
	}
	if x := back.EntityMaps[1].Expansions[0].Attributes[1].Concept; x == nil || *x.Type != 935000022 {
		t.Fatalf("expansion concept after export and import = %+v", x)
	}
}

// TestConceptQuery: the filter quotes the code as OData does and names
// the type (or its absence); of the rows Dataverse answers (without regard
// to case) the exact code with the smallest id is chosen.
func TestConceptQuery(t *testing.T) {
	t.Parallel()
	typ := 935000023
	if got, want := maps.ConceptFilter(maps.ConceptRow{Code: "O'Brien", Type: &typ}), "msemr_code eq 'O''Brien' and msemr_type eq 935000023"; got != want {
		t.Errorf("filter = %q, want %q", got, want)
	}
	if got, want := maps.ConceptFilter(maps.ConceptRow{Code: "x"}), "msemr_code eq 'x' and msemr_type eq null"; got != want {
		t.Errorf("filter without a type = %q, want %q", got, want)
	}
	rows := []maps.ConceptRow{
		maps.ConceptRowOf(map[string]any{"msemr_codeableconceptid": "B", "msemr_code": "abc", "msemr_type": json.Number("935000023")}),
		maps.ConceptRowOf(map[string]any{"msemr_codeableconceptid": "c", "msemr_code": "ABC", "msemr_type": json.Number("935000023")}),
		maps.ConceptRowOf(map[string]any{"msemr_codeableconceptid": "a", "msemr_code": "ABC", "msemr_type": json.Number("935000023")}),
	}
	row, ok := maps.ChooseConceptRow(rows, maps.ConceptRow{Code: "ABC", Type: &typ})
	if !ok || row.ID != "a" || row.Type == nil || *row.Type != typ {
		t.Errorf("chosen = %+v %v, want row a", row, ok)
	}
	if _, ok := maps.ChooseConceptRow(rows[:1], maps.ConceptRow{Code: "ABC", Type: &typ}); ok {
		t.Errorf("a row of another case was chosen")
	}
}

// TestConceptTypeAgainstCRMMetadata: with the CRM's metadata, a concept
// type that msemr_codeableconcept.msemr_type does not define is refused.
func TestConceptTypeAgainstCRMMetadata(t *testing.T) {
	t.Parallel()
	md := sandboxMetadata(t)
	doc := func(typ string) string {
		return `format: 1
entityMaps:
  - name: condition
    crmEntity: msemr_condition
    crmEntitySet: msemr_conditions
    fhirType: Condition
    fhirToCRM: {enabled: true, operations: [create]}
    crmToFHIR: {enabled: false, operations: []}
    correlation: {crmAttribute: msemr_azurefhirid, fhirIdentifierSystem: "urn:x"}
    attributes:
      - {name: code, crmAttribute: msemr_conditioncode, crmType: lookup, fhirPath: code, action: lookup, concept: {type: ` + typ + `, systems: ["http://snomed.info/sct"], create: true}}
`
	}
	if _, _, err := maps.Import([]byte(doc("935000023")), maps.CompileOptions{CRM: md}); err != nil {
		t.Fatalf("Condition Code (935000023): %v", err)
	}
	_, _, err := maps.Import([]byte(doc("93500023")), maps.CompileOptions{CRM: md})
	if err == nil || !strings.Contains(err.Error(), "concept.type: concept type 93500023 is not an option value of msemr_codeableconcept.msemr_type") {
		t.Errorf("a type the CRM does not define: %v", err)
	}
}
