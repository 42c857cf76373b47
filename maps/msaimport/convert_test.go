package msaimport

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"strconv"
	"strings"
	"testing"

	"github.com/fhirsync/fhirsync/maps"
	"github.com/fhirsync/fhirsync/sandbox/crmserver"
)

// sandboxMetadata is the sandbox CRM's EntityDefinitions answer.
func sandboxMetadata(t *testing.T) *maps.CRMMetadata {
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
		t.Fatalf("EntityDefinitions: %d %v", res.StatusCode, err)
	}
	md, err := maps.ParseCRMMetadata(body)
	if err != nil {
		t.Fatal(err)
	}
	return md
}

func readFixtures(t testing.TB) ([]EntityMapRow, []AttributeMapRow) {
	t.Helper()
	e, err := os.ReadFile("testdata/msa/entity-maps.csv")
	if err != nil {
		t.Fatal(err)
	}
	a, err := os.ReadFile("testdata/msa/attribute-maps.csv")
	if err != nil {
		t.Fatal(err)
	}
	ents, err := ReadEntityMaps(e)
	if err != nil {
		t.Fatal(err)
	}
	attrs, err := ReadAttributeMaps(a)
	if err != nil {
		t.Fatal(err)
	}
	return ents, attrs
}

// item finds the report's item of an attribute map.
func item(t *testing.T, rep *Report, mapName, expansion, attr string) Item {
	t.Helper()
	for _, it := range rep.Items {
		if it.EntityMap == mapName && it.Expansion == expansion && it.Attribute == attr {
			return it
		}
	}
	t.Fatalf("the report has no item %s / %s / %s", mapName, expansion, attr)
	return Item{}
}

// TestConvertFixtures imports the maps reconstructed from Microsoft's
// documentation (testdata/msa) against the sandbox CRM's metadata: the map
// set validates, every attribute map of the export is accounted for once,
// and what converts and what does not is what the documentation's paths
// and the sandbox's tables allow.
func TestConvertFixtures(t *testing.T) {
	t.Parallel()
	ents, attrs := readFixtures(t)
	md := sandboxMetadata(t)
	doc, rep, err := Convert(ents, attrs, Options{CRM: md})
	if err != nil {
		t.Fatal(err)
	}
	// The exported YAML parses and validates against the same metadata.
	raw, err := maps.Export(doc)
	if err != nil {
		t.Fatal(err)
	}
	if _, _, err := maps.Import(raw, maps.CompileOptions{CRM: md}); err != nil {
		t.Fatalf("the imported map set does not validate: %v\n%s", err, raw)
	}
	tr, ro, nt := rep.Counts()
	if tr+ro+nt != len(attrs) {
		t.Errorf("the report accounts for %d attribute maps, the export has %d", tr+ro+nt, len(attrs))
	}
	t.Logf("attribute maps: %d translated, %d read-only, %d not translated", tr, ro, nt)

	tests := []struct {
		m, x, attr string
		status     Status
		fhirPath   string
		reason     string
	}{
		{m: "patient-contact", attr: "firstname", status: Translated, fhirPath: "name[0].given[0]"},
		{m: "patient-contact", attr: "telephone1", status: Translated, fhirPath: "telecom.where(system = 'phone' and use = 'home').value"},
		{m: "patient-contact", attr: "jobtitle", status: Translated, fhirPath: "extension('http://example.org/fhir/StructureDefinition/job-title').valueString"},
		{m: "patient-contact", attr: "address1_postalcode", status: Translated, fhirPath: "address[0].postalCode"},
		{m: "patient-contact", attr: "gendercode", status: Translated, fhirPath: "gender"},
		{m: "patient-contact", attr: "msemr_contacttype", status: Translated},
		{m: "patient-contact", attr: "msemr_generalpractitioner", status: Translated, fhirPath: "generalPractitioner[0].reference"},
		{m: "patient-contact", attr: "suffix", status: ReadOnly, fhirPath: "name[0].suffix.last()", reason: "last()"},
		{m: "patient-contact", attr: "msemr_preferredlanguage", status: ReadOnly, reason: "path language cannot write"},
		{m: "patient-contact", attr: "description", status: NotTranslated, reason: "recursive descent"},
		{m: "patient-contact", attr: "msemr_npi", status: NotTranslated, reason: "union"},
		{m: "patient-contact", attr: "familystatuscode", status: NotTranslated, reason: "without value map entries"},
		{m: "patient-contact", x: "medicalidentifier", attr: "msemr_identifiersystem", status: Translated, fhirPath: "system"},
		// $.coding[0].code is no element of an Identifier, whether or not
		// the CRM has the column.
		{m: "patient-contact", x: "medicalidentifier", attr: "msemr_type", status: NotTranslated},
		{m: "care-team", x: "careteamparticipant", attr: "msemr_description", status: NotTranslated, reason: "has no element \"note\""},
		{m: "care-team", x: "careteamparticipant", attr: "msemr_periodstart", status: Translated, fhirPath: "period.start"},
		// The five lookups on $.member.reference: four become one lookup
		// by type; msemr_memberrelatedperson targets contact, whose two
		// maps (Patient, Practitioner) the others already take.
		{m: "care-team", x: "careteamparticipant", attr: "msemr_memberpatient", status: Translated, fhirPath: "member.reference"},
		{m: "care-team", x: "careteamparticipant", attr: "msemr_memberpractioner", status: Translated, fhirPath: "member.reference"},
		{m: "care-team", x: "careteamparticipant", attr: "msemr_memberorganization", status: Translated, fhirPath: "member.reference"},
		{m: "care-team", x: "careteamparticipant", attr: "msemr_membercareteam", status: Translated, fhirPath: "member.reference"},
		{m: "care-team", x: "careteamparticipant", attr: "msemr_memberrelatedperson", status: NotTranslated, reason: "no imported entity map is left for the resource type it holds"},
		{m: "care-team", attr: "msemr_subjectpatient", status: Translated, fhirPath: "subject.reference"},
		// The participant role expansion nests in the participant one.
		{m: "care-team", x: "careteamparticipant/careteamparticipantrole", status: Translated},
		{m: "care-team", x: "careteamparticipant/careteamparticipantrole", attr: "msemr_display", status: Translated, fhirPath: "coding[0].display"},
	}
	// What depends on the sandbox's tables follows them.
	if !md.HasEntity("msemr_contactlink") {
		tests = append(tests, struct {
			m, x, attr string
			status     Status
			fhirPath   string
			reason     string
		}{m: "patient-contact", x: "contactlink", status: NotTranslated, reason: "table msemr_contactlink is not in the CRM metadata"})
	}
	if _, ok := md.AttributeType("msemr_careteamparticipant", "msemr_role"); !ok {
		tests = append(tests, struct {
			m, x, attr string
			status     Status
			fhirPath   string
			reason     string
		}{m: "care-team", x: "careteamparticipant", attr: "msemr_role", status: NotTranslated, reason: "not in the CRM metadata"})
	}
	for _, tc := range tests {
		it := item(t, rep, tc.m, tc.x, tc.attr)
		if it.Status != tc.status || it.FHIRPath != tc.fhirPath && tc.fhirPath != "" {
			t.Errorf("%s / %s / %s: %s %q (%q), want %s %q", tc.m, tc.x, tc.attr, it.Status, it.FHIRPath, it.Reasons, tc.status, tc.fhirPath)
		}
		if tc.reason != "" && !strings.Contains(strings.Join(it.Reasons, "; "), tc.reason) {
			t.Errorf("%s / %s / %s: reasons %q, want one mentioning %q", tc.m, tc.x, tc.attr, it.Reasons, tc.reason)
		}
	}
	// The member lookups are one lookup by type, each type to its column;
	// the participant roles are rows under each participant's row.
	var participants *maps.ExpansionMap
	for i := range doc.EntityMaps {
		if doc.EntityMaps[i].Name == "care-team" {
			for j := range doc.EntityMaps[i].Expansions {
				if x := &doc.EntityMaps[i].Expansions[j]; x.Name == "careteamparticipant" {
					participants = x
				}
			}
		}
	}
	if participants == nil {
		t.Fatal("no careteamparticipant expansion in care-team")
	}
	got := map[string]string{}
	for _, a := range participants.Attributes {
		if a.Name == "member" && a.Lookup.IsByType() {
			for _, bt := range a.Lookup.ByType {
				got[bt.Type] = bt.EntityMap + " " + bt.CRMAttribute
			}
			if a.Lookup.OtherTypes != maps.OtherTypesSkip {
				t.Errorf("member: otherTypes %q, want skip", a.Lookup.OtherTypes)
			}
		}
	}
	wantTypes := map[string]string{
		"Patient": "patient-contact msemr_memberpatient", "Practitioner": "practitioner-contact msemr_memberpractioner",
		"Organization": "organization-account msemr_memberorganization", "CareTeam": "care-team msemr_membercareteam",
	}
	if fmt.Sprint(got) != fmt.Sprint(wantTypes) {
		t.Errorf("member lookup by type = %v, want %v", got, wantTypes)
	}
	if len(participants.Expansions) != 1 || participants.Expansions[0].Name != "careteamparticipantrole" ||
		participants.Expansions[0].FHIRPath != "role" || participants.Expansions[0].ParentLookup != "msemr_careteamparticipant" {
		t.Errorf("the participant expansion holds %+v, want the role expansion on role under msemr_careteamparticipant", participants.Expansions)
	}
	// The report says what still does not convert, line by line.
	var b strings.Builder
	if err := rep.Write(&b); err != nil {
		t.Fatal(err)
	}
	for _, line := range []string{
		"not-translated: entity map care-team / expansion careteamparticipant / attribute msemr_memberrelatedperson (attribute maps line 38, $.member.reference)",
		`carried over as the lookup by type "member"`,
		"translated: entity map care-team / expansion careteamparticipant/careteamparticipantrole (entity maps",
	} {
		if !strings.Contains(b.String(), line) {
			t.Errorf("the report lacks %q:\n%s", line, b.String())
		}
	}
	if _, ok := md.AttributeType("msemr_careteamparticipantrole", "msemr_codeableconceptid"); !ok {
		if it := item(t, rep, "care-team", "careteamparticipant/careteamparticipantrole", "msemr_codeableconceptid"); it.Status != NotTranslated {
			t.Errorf("msemr_codeableconceptid, a column the sandbox lacks: %+v", it)
		}
	}
	// The generalPractitioner lookup goes to the Practitioner map, not the
	// Patient one, although both write contacts.
	for _, m := range doc.EntityMaps {
		for _, a := range m.Attributes {
			if a.Name == "msemr_generalpractitioner" && (a.Lookup == nil || a.Lookup.EntityMap != "practitioner-contact") {
				t.Errorf("msemr_generalpractitioner looks up %+v, want practitioner-contact", a.Lookup)
			}
		}
	}
}

// TestImportedPatientMapMapsASample runs HL7's R4 patient-example through
// the imported Patient map with the maps engine.
func TestImportedPatientMapMapsASample(t *testing.T) {
	t.Parallel()
	ents, attrs := readFixtures(t)
	doc, _, err := Convert(ents, attrs, Options{CRM: sandboxMetadata(t)})
	if err != nil {
		t.Fatal(err)
	}
	set, err := maps.Compile(doc, maps.CompileOptions{})
	if err != nil {
		t.Fatal(err)
	}
	m, ok := set.Map("patient-contact")
	if !ok {
		t.Fatal("no patient-contact map")
	}
	raw, err := os.ReadFile("../../testdata/conformance/fhir/r4/patient-example.json")
	if err != nil {
		t.Fatal(err)
	}
	res, err := maps.DecodeJSON(raw)
	if err != nil {
		t.Fatal(err)
	}
	out, err := m.ToCRM(context.Background(), res, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	want := map[string]any{
		"firstname": "Peter", "middlename": "James", "lastname": "Chalmers", "birthdate": "1974-12-25",
		"gendercode": json.Number("1"), "address1_city": "PleasantVille", "address1_postalcode": "3999",
		"address1_line1": "534 Erewhon St", "msemr_deceased": false, "msemr_contacttype": json.Number("935000000"),
	}
	for k, v := range want {
		got := out.Record[k]
		if n, ok := got.(int); ok {
			got = json.Number(strconv.Itoa(n))
		}
		if fmt.Sprint(got) != fmt.Sprint(v) {
			t.Errorf("record[%s] = %#v, want %#v", k, out.Record[k], v)
		}
	}
	// The identifiers become msemr_medicalidentifier rows (system only: the
	// documented msemr_value column is not in the sandbox CRM).
	rows := 0
	for _, ch := range out.Children {
		if ch.Expansion == "medicalidentifier" {
			rows++
		}
	}
	if rows != 1 {
		t.Errorf("%d medicalidentifier row changes, want 1 (the example has one identifier): %+v", rows, out.Children)
	}
}

// TestConvertInferencesAndDefaults covers what the import decides beyond
// the path: a parent link taken from the metadata when the export names
// none, Set Default Value as a constant (its JSON path noted and unused), a
// Mapped Value's entries, and a disabled attribute map kept disabled.
func TestConvertInferencesAndDefaults(t *testing.T) {
	t.Parallel()
	md := sandboxMetadata(t)
	ents := []EntityMapRow{
		{Line: 2, Name: "contact ↔ Patient", Entity: "contact", FHIRType: "Patient", WriteBack: true},
		{Line: 3, Name: "id", Entity: "msemr_medicalidentifier", FHIRType: "Patient", Expand: true, Element: "$.identifier"},
	}
	attrs := []AttributeMapRow{
		{Line: 2, EntityMap: "contact ↔ Patient", Attribute: "msemr_contacttype", Action: "Set Default Value", JSONPath: "$.extension[0].valueCode", Default: "935000000", WriteBack: true},
		{Line: 3, EntityMap: "contact ↔ Patient", Attribute: "gendercode", Action: "Mapped Value", JSONPath: "$.gender", ValueMap: "1=male;2=female;935000000=other;935000001=unknown", WriteBack: true},
		{Line: 4, EntityMap: "contact ↔ Patient", Attribute: "lastname", Action: "Copy Data", JSONPath: "$.name[0].family", Disabled: true, WriteBack: true},
		{Line: 5, EntityMap: "id", Attribute: "msemr_identifiervalue", Action: "Copy Data", JSONPath: "$.value", WriteBack: true},
		{Line: 6, EntityMap: "contact ↔ Patient", Attribute: "firstname", Action: "Transform", JSONPath: "$.name[0].given[0]", WriteBack: true},
	}
	doc, rep, err := Convert(ents, attrs, Options{CRM: md})
	if err != nil {
		t.Fatal(err)
	}
	if len(doc.EntityMaps) != 1 || len(doc.EntityMaps[0].Expansions) != 1 {
		var b strings.Builder
		rep.Write(&b)
		t.Fatalf("maps: %+v\n%s", doc.EntityMaps, b.String())
	}
	m := doc.EntityMaps[0]
	if x := m.Expansions[0]; x.ParentLookup != "msemr_contact" || x.FHIRPath != "identifier" || len(x.Attributes) != 1 {
		t.Errorf("expansion = %+v, want parent msemr_contact from the metadata, path identifier, one attribute", x)
	}
	if it := item(t, rep, "patient-contact", "medicalidentifier", ""); !strings.Contains(strings.Join(it.Notes, ";"), "taken from the CRM metadata") {
		t.Errorf("the expansion's notes %q do not say where the parent link came from", it.Notes)
	}
	byName := map[string]maps.AttributeMap{}
	for _, a := range m.Attributes {
		byName[a.Name] = a
	}
	if a := byName["msemr_contacttype"]; a.Action != maps.ActionDefault || a.FHIRPath != "" || a.Default != "935000000" || a.Direction != maps.FHIRToCRM {
		t.Errorf("Set Default Value = %+v, want a constant written FHIR → CRM", a)
	}
	if it := item(t, rep, "patient-contact", "", "msemr_contacttype"); !strings.Contains(strings.Join(it.Notes, ";"), "is not used") {
		t.Errorf("notes %q do not say the JSON path is unused", it.Notes)
	}
	if a := byName["gendercode"]; a.Action != maps.ActionValueMap || len(doc.ValueMaps) != 1 || len(doc.ValueMaps[0].Entries) != 4 || doc.ValueMaps[0].Name != a.ValueMap {
		t.Errorf("Mapped Value = %+v with value maps %+v", a, doc.ValueMaps)
	}
	if a := byName["lastname"]; a.IsEnabled() {
		t.Errorf("a disabled attribute map came out enabled: %+v", a)
	}
	if it := item(t, rep, "patient-contact", "", "firstname"); it.Status != NotTranslated || !strings.Contains(it.Reasons[0], "action type") {
		t.Errorf("an unknown action: %+v", it)
	}
}

// TestConvertNestedExpansionDepth imports an expansion map whose parent is
// an expansion map (the participant role under the participant) as a
// nested expansion, and refuses one more level (maps.MaxExpansionDepth),
// an expansion under that one, and a parent link cycle, listing each with
// its attribute maps.
func TestConvertNestedExpansionDepth(t *testing.T) {
	t.Parallel()
	ents := []EntityMapRow{
		{Line: 2, Name: "team", Entity: "msemr_careteam", FHIRType: "CareTeam"},
		{Line: 3, Name: "participant", Entity: "msemr_careteamparticipant", FHIRType: "CareTeam", Expand: true, ParentLink: "msemr_careteam", Element: "participant"},
		{Line: 4, Name: "role", Entity: "msemr_careteamparticipantrole", FHIRType: "Participant", Expand: true, ParentLink: "msemr_careteamparticipant", Element: "role"},
		{Line: 5, Name: "coding", Entity: "msemr_rolecoding", FHIRType: "Participant", Expand: true, ParentLink: "msemr_careteamparticipantrole", Element: "coding"},
		{Line: 6, Name: "below", Entity: "msemr_below", FHIRType: "Participant", Expand: true, ParentLink: "msemr_rolecoding", Element: "extension"},
		{Line: 7, Name: "a", Entity: "msemr_a", FHIRType: "Basic", Expand: true, ParentLink: "msemr_b", Element: "identifier"},
		{Line: 8, Name: "b", Entity: "msemr_b", FHIRType: "Basic", Expand: true, ParentLink: "msemr_a", Element: "identifier"},
	}
	attrs := []AttributeMapRow{
		{Line: 2, EntityMap: "team", Attribute: "msemr_name", Action: "Copy Data", JSONPath: "$.name", WriteBack: true},
		{Line: 3, EntityMap: "participant", Attribute: "msemr_description", Action: "Copy Data", JSONPath: "$.member.display", WriteBack: true},
		{Line: 4, EntityMap: "role", Attribute: "msemr_display", Action: "Copy Data", JSONPath: "$.coding[0].display", WriteBack: true},
		{Line: 5, EntityMap: "coding", Attribute: "msemr_code", Action: "Copy Data", JSONPath: "$.code", WriteBack: true},
		{Line: 6, EntityMap: "below", Attribute: "msemr_url", Action: "Copy Data", JSONPath: "$.url", WriteBack: true},
		{Line: 7, EntityMap: "a", Attribute: "msemr_value", Action: "Copy Data", JSONPath: "$.value", WriteBack: true},
	}
	doc, rep, err := Convert(ents, attrs, Options{})
	if err != nil {
		t.Fatal(err)
	}
	var b strings.Builder
	if err := rep.Write(&b); err != nil {
		t.Fatal(err)
	}
	if len(doc.EntityMaps) != 1 || len(doc.EntityMaps[0].Expansions) != 1 {
		t.Fatalf("maps: %+v\n%s", doc.EntityMaps, b.String())
	}
	p := doc.EntityMaps[0].Expansions[0]
	if p.Name != "careteamparticipant" || len(p.Expansions) != 1 {
		t.Fatalf("participant expansion = %+v\n%s", p, b.String())
	}
	if r := p.Expansions[0]; r.Name != "careteamparticipantrole" || r.FHIRPath != "role" || r.ParentLookup != "msemr_careteamparticipant" ||
		len(r.Attributes) != 1 || len(r.Expansions) != 0 {
		t.Errorf("role expansion = %+v, want role under msemr_careteamparticipant with msemr_display and nothing nested", r)
	}
	tests := []struct {
		x, attr string
		status  Status
		reason  string
	}{
		{x: "careteamparticipant/careteamparticipantrole", status: Translated},
		{x: "careteamparticipant/careteamparticipantrole", attr: "msemr_display", status: Translated},
		{x: "careteamparticipant/careteamparticipantrole/rolecoding", status: NotTranslated, reason: "nest at most 2 levels (maps.MaxExpansionDepth)"},
		{x: "careteamparticipant/careteamparticipantrole/rolecoding", attr: "msemr_code", status: NotTranslated, reason: "its expansion map is not imported"},
		{x: "careteamparticipant/careteamparticipantrole/rolecoding/below", status: NotTranslated, reason: "its parent expansion map careteamparticipant/careteamparticipantrole/rolecoding (msemr_rolecoding) is not imported"},
		{x: "careteamparticipant/careteamparticipantrole/rolecoding/below", attr: "msemr_url", status: NotTranslated, reason: "its expansion map is not imported"},
	}
	for _, tc := range tests {
		it := item(t, rep, "care-team", tc.x, tc.attr)
		if it.Status != tc.status || !strings.Contains(strings.Join(it.Reasons, "; "), tc.reason) {
			t.Errorf("%s / %s: %s %q, want %s mentioning %q", tc.x, tc.attr, it.Status, it.Reasons, tc.status, tc.reason)
		}
	}
	cycle := false
	for _, it := range rep.Items {
		if it.Attribute == "" && strings.Contains(strings.Join(it.Reasons, ";"), "a cycle") {
			cycle = true
		}
	}
	if it := item(t, rep, "Basic", "b/a", "msemr_value"); !cycle || it.Status != NotTranslated {
		t.Errorf("the parent link cycle a ↔ b: cycle listed %v, a's attribute %+v\n%s", cycle, it, b.String())
	}
	if tr, ro, nt := rep.Counts(); tr+ro+nt != len(attrs) || tr != 3 {
		t.Errorf("counts %d, %d, %d; want 3 translated of %d\n%s", tr, ro, nt, len(attrs), b.String())
	}
}

// TestConvertLookupByTypeColumn: lookups on one path whose export names a
// type attribute (Type Attribute, with each type's option value in its
// Value Map) set that column through an imported value map; without an
// option value for every type the column is left out and the report says
// why.
func TestConvertLookupByTypeColumn(t *testing.T) {
	t.Parallel()
	md := sandboxMetadata(t)
	ents := []EntityMapRow{
		{Line: 2, Name: "patient", Entity: "contact", FHIRType: "Patient"},
		{Line: 3, Name: "practitioner", Entity: "contact", FHIRType: "Practitioner"},
		{Line: 4, Name: "team", Entity: "msemr_careteam", FHIRType: "CareTeam"},
		{Line: 5, Name: "participant", Entity: "msemr_careteamparticipant", FHIRType: "CareTeam", Expand: true, ParentLink: "msemr_careteam", Element: "participant"},
	}
	rows := func(practitionerOption string) []AttributeMapRow {
		return []AttributeMapRow{
			{Line: 2, EntityMap: "team", Attribute: "msemr_name", Action: "Copy Data", JSONPath: "$.name", WriteBack: true},
			{Line: 3, EntityMap: "participant", Attribute: "msemr_periodstart", Action: "Copy Data", JSONPath: "$.period.start", WriteBack: true},
			{Line: 4, EntityMap: "participant", Attribute: "msemr_memberpatient", Action: "Lookup", JSONPath: "$.member.reference", TypeAttribute: "msemr_membertype", ValueMap: "935000002=Patient", WriteBack: true},
			{Line: 5, EntityMap: "participant", Attribute: "msemr_memberpractioner", Action: "Lookup", JSONPath: "$['member']['reference']", TypeAttribute: "msemr_membertype", ValueMap: practitionerOption, WriteBack: false},
		}
	}
	member := func(doc *maps.Document) maps.AttributeMap {
		t.Helper()
		for _, m := range doc.EntityMaps {
			for _, x := range m.Expansions {
				for _, a := range x.Attributes {
					if a.Name == "member" {
						return a
					}
				}
			}
		}
		t.Fatalf("no member lookup by type in %+v", doc.EntityMaps)
		return maps.AttributeMap{}
	}

	doc, rep, err := Convert(ents, rows("935000000=Practitioner"), Options{CRM: md})
	if err != nil {
		t.Fatal(err)
	}
	a := member(doc)
	if a.Lookup.TypeAttribute != "msemr_membertype" || a.Direction != maps.FHIRToCRM || len(a.Lookup.ByType) != 2 {
		t.Errorf("member = %+v (lookup %+v), want the type column and fhir-to-crm (one of the lookups is not written back)", a, a.Lookup)
	}
	var vm *maps.ValueMap
	for i := range doc.ValueMaps {
		if doc.ValueMaps[i].Name == a.Lookup.TypeValueMap {
			vm = &doc.ValueMaps[i]
		}
	}
	if vm == nil || fmt.Sprint(vm.Entries) != fmt.Sprint([]maps.ValueMapEntry{{CRM: 935000002, FHIR: "Patient"}, {CRM: 935000000, FHIR: "Practitioner"}}) {
		t.Errorf("type value map %q = %+v", a.Lookup.TypeValueMap, vm)
	}
	if it := item(t, rep, "care-team", "careteamparticipant", "msemr_memberpractioner"); it.Status != Translated ||
		!strings.Contains(strings.Join(it.Notes, ";"), "some of the lookups are written back") {
		t.Errorf("msemr_memberpractioner: %+v", it)
	}

	doc, rep, err = Convert(ents, rows(""), Options{CRM: md})
	if err != nil {
		t.Fatal(err)
	}
	if a := member(doc); a.Lookup.TypeAttribute != "" || a.Lookup.TypeValueMap != "" || len(doc.ValueMaps) != 0 {
		t.Errorf("without Practitioner's option value: lookup %+v, value maps %+v; want no type column", a.Lookup, doc.ValueMaps)
	}
	if it := item(t, rep, "care-team", "careteamparticipant", "msemr_memberpatient"); !strings.Contains(strings.Join(it.Notes, ";"), "no Value Map entry gives the option value of Practitioner") {
		t.Errorf("notes %q do not say why the type column is left out", it.Notes)
	}
}

// TestConvertTwoLookupsByTypeOfOneElementName: two groups of lookups on
// paths that end in the same element (a schedule's first and second
// actor) become two lookups by type with names of their own; each
// validates and the report tells the truth about both.
func TestConvertTwoLookupsByTypeOfOneElementName(t *testing.T) {
	t.Parallel()
	ents := []EntityMapRow{
		{Line: 2, Name: "patient", Entity: "contact", FHIRType: "Patient"},
		{Line: 3, Name: "location", Entity: "msemr_location", FHIRType: "Location"},
		{Line: 4, Name: "schedule", Entity: "msemr_schedule", FHIRType: "Schedule"},
	}
	attrs := []AttributeMapRow{
		{Line: 2, EntityMap: "schedule", Attribute: "msemr_actorpatient", Action: "Lookup", JSONPath: "$.actor[0].reference", LookupMap: "patient", WriteBack: true},
		{Line: 3, EntityMap: "schedule", Attribute: "msemr_actorlocation", Action: "Lookup", JSONPath: "$.actor[0].reference", LookupMap: "location", WriteBack: true},
		{Line: 4, EntityMap: "schedule", Attribute: "msemr_secondpatient", Action: "Lookup", JSONPath: "$.actor[1].reference", LookupMap: "patient", WriteBack: true},
		{Line: 5, EntityMap: "schedule", Attribute: "msemr_secondlocation", Action: "Lookup", JSONPath: "$.actor[1].reference", LookupMap: "location", WriteBack: true},
	}
	doc, rep, err := Convert(ents, attrs, Options{})
	if err != nil {
		t.Fatal(err)
	}
	var b strings.Builder
	if err := rep.Write(&b); err != nil {
		t.Fatal(err)
	}
	names := map[string]string{}
	for _, m := range doc.EntityMaps {
		for _, a := range m.Attributes {
			if a.Lookup.IsByType() {
				names[a.Name] = a.FHIRPath
			}
		}
	}
	if len(names) != 2 {
		t.Fatalf("lookups by type = %v, want two (actor[0] and actor[1])\n%s", names, b.String())
	}
	if tr, _, nt := rep.Counts(); tr != 4 || nt != 0 {
		t.Errorf("counts: %d translated, %d not; want 4, 0\n%s", tr, nt, b.String())
	}
}

// TestConvertNestedExpansionAmbiguousParent: an expansion map whose parent
// link points at a table two expansion maps expand is not made a
// top-level expansion of its resource; it is listed as not translated,
// naming both.
func TestConvertNestedExpansionAmbiguousParent(t *testing.T) {
	t.Parallel()
	ents := []EntityMapRow{
		{Line: 2, Name: "team", Entity: "msemr_careteam", FHIRType: "CareTeam"},
		{Line: 3, Name: "participant", Entity: "msemr_careteamparticipant", FHIRType: "CareTeam", Expand: true, ParentLink: "msemr_careteam", Element: "participant"},
		{Line: 4, Name: "participant-again", Entity: "msemr_careteamparticipant", FHIRType: "CareTeam", Expand: true, ParentLink: "msemr_careteam", Element: "participant"},
		{Line: 5, Name: "role", Entity: "msemr_careteamparticipantrole", FHIRType: "CareTeam", Expand: true, ParentLink: "msemr_careteamparticipant", Element: "note"},
	}
	attrs := []AttributeMapRow{
		{Line: 2, EntityMap: "team", Attribute: "msemr_name", Action: "Copy Data", JSONPath: "$.name", WriteBack: true},
		{Line: 3, EntityMap: "participant", Attribute: "msemr_description", Action: "Copy Data", JSONPath: "$.member.display", WriteBack: true},
		{Line: 4, EntityMap: "role", Attribute: "msemr_text", Action: "Copy Data", JSONPath: "$.text", WriteBack: true},
	}
	doc, rep, err := Convert(ents, attrs, Options{})
	if err != nil {
		t.Fatal(err)
	}
	var b strings.Builder
	if err := rep.Write(&b); err != nil {
		t.Fatal(err)
	}
	for _, m := range doc.EntityMaps {
		for _, x := range m.Expansions {
			if x.CRMEntity == "msemr_careteamparticipantrole" {
				t.Errorf("the role expansion became a top-level expansion of %s: %+v", m.Name, x)
			}
		}
	}
	found := false
	for _, it := range rep.Items {
		if it.Attribute == "" && strings.Contains(it.Expansion, "careteamparticipantrole") {
			found = true
			if it.Status != NotTranslated || !strings.Contains(strings.Join(it.Reasons, ";"), "several expansion maps (participant, participant-again)") {
				t.Errorf("role expansion: %+v", it)
			}
		}
	}
	if !found {
		t.Errorf("the role expansion is not listed\n%s", b.String())
	}
}

// TestConvertTwoAttributeMapsOfOneColumn: two attribute maps of the export
// on one column are both refused by validation (one name), and the report
// says so for each instead of listing the first as translated.
func TestConvertTwoAttributeMapsOfOneColumn(t *testing.T) {
	t.Parallel()
	ents := []EntityMapRow{{Line: 2, Name: "patient", Entity: "contact", FHIRType: "Patient"}}
	attrs := []AttributeMapRow{
		{Line: 2, EntityMap: "patient", Attribute: "lastname", Action: "Copy Data", JSONPath: "$.name[0].family", WriteBack: true},
		{Line: 3, EntityMap: "patient", Attribute: "lastname", Action: "Copy Data", JSONPath: "$.name[1].family", WriteBack: false},
		{Line: 4, EntityMap: "patient", Attribute: "firstname", Action: "Copy Data", JSONPath: "$.name[0].given[0]", WriteBack: true},
	}
	doc, rep, err := Convert(ents, attrs, Options{})
	if err != nil {
		t.Fatal(err)
	}
	var b strings.Builder
	if err := rep.Write(&b); err != nil {
		t.Fatal(err)
	}
	inDoc := map[string]bool{}
	for _, a := range doc.EntityMaps[0].Attributes {
		inDoc[a.Name] = true
	}
	for _, it := range rep.Items {
		if it.Attribute != "" && (it.Status == NotTranslated) == inDoc[it.Attribute] {
			t.Errorf("%s (%s): %s, but in the converted map: %v\n%s", it.Attribute, it.Source, it.Status, inDoc[it.Attribute], b.String())
		}
	}
}
