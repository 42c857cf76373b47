package admin

import (
	"encoding/json"
	"fmt"
	"net/http"
	"net/url"
	"slices"
	"strings"
	"testing"

	"github.com/fhirsync/fhirsync/logs"
	"github.com/fhirsync/fhirsync/maps"
	"github.com/fhirsync/fhirsync/storage/storagetest"
)

// TestEditorFHIRElementsAndEvaluate: the editor's completion lists the R4
// children of the element typed so far, and an expression is evaluated on
// the entity map's sample (stored, or sent) by the maps' FHIRPath engine.
func TestEditorFHIRElementsAndEvaluate(t *testing.T) {
	t.Parallel()
	e := newTestEnv(t, storagetest.Open(t, "sqlite"), AppConfig{})
	c := e.as(e.user("viewer@example.org", RoleViewer, false))
	n := starterDraft(t, e)

	code, out := e.apiCall(c, "GET", "/api/v1/maps/fhir-elements?type=Patient&path="+url.QueryEscape("name.where(use = 'official')"), "")
	if code != 200 || out["elementType"] != "HumanName" || !hasElement(out, "given", "string") || !hasElement(out, "family", "string") {
		t.Errorf("elements of Patient.name = %d %v", code, out)
	}
	code, out = e.apiCall(c, "GET", "/api/v1/maps/fhir-elements?type=Patient&within=identifier&path=type", "")
	if code != 200 || !hasElement(out, "coding", "Coding") {
		t.Errorf("elements of an identifier's type = %d %v", code, out)
	}
	if code, out = e.apiCall(c, "GET", "/api/v1/maps/fhir-elements?type=Patient&path=nmae", ""); code != 422 || !strings.Contains(fmt.Sprint(out["error"]), `no element "nmae"`) {
		t.Errorf("elements of a misspelt path = %d %v", code, out)
	}

	eval := func(body map[string]any) map[string]any {
		t.Helper()
		body["version"], body["map"] = n, "patient-contact"
		b, _ := json.Marshal(body)
		code, out := e.apiCall(c, "POST", "/api/v1/maps/evaluate", string(b))
		if code != 200 {
			t.Fatalf("evaluate %v = %d %v", body, code, out)
		}
		return out
	}
	out = eval(map[string]any{"expression": "name.where(use = 'official').given"})
	if fmt.Sprint(out["values"]) != "[Þórunn Anna]" || out["sample"] != "patient to contact" || out["count"] != float64(2) {
		t.Errorf("official given names of the sample = %v", out)
	}
	out = eval(map[string]any{"expression": "system", "within": "identifier"})
	if fmt.Sprint(out["values"]) != "[urn:oid:2.16.840.1.113883.19.5.99999.1]" {
		t.Errorf("identifier systems of the sample = %v", out)
	}
	out = eval(map[string]any{"expression": "birthDate", "resource": `{"resourceType":"Patient","birthDate":"2001-02-03"}`})
	if fmt.Sprint(out["values"]) != "[2001-02-03]" || out["sample"] != "" {
		t.Errorf("birthDate of a sent resource = %v", out)
	}
	out = eval(map[string]any{"expression": "name.where(use = "})
	if out["error"] == nil || fmt.Sprint(out["values"]) != "[]" {
		t.Errorf("an expression that does not parse = %v, want its error", out)
	}
	if code, _ := e.apiCall(c, "POST", "/api/v1/maps/evaluate", fmt.Sprintf(`{"expression":"id","version":%d,"map":"no-such-map"}`, n)); code != 404 {
		t.Errorf("evaluating on a map without samples = %d, want 404", code)
	}
}

func hasElement(out map[string]any, name, typ string) bool {
	els, _ := out["elements"].([]any)
	for _, x := range els {
		m, _ := x.(map[string]any)
		if m["name"] == name && m["type"] == typ {
			return true
		}
	}
	return false
}

// TestEditorDocumentRoundTrip: YAML becomes the document the forms edit,
// the document becomes the same canonical YAML, and an edit made to the
// document (an attribute map added) comes back as YAML with its problems
// checked against the CRM's metadata.
func TestEditorDocumentRoundTrip(t *testing.T) {
	t.Parallel()
	e := newTestEnv(t, storagetest.Open(t, "sqlite"), AppConfig{})
	withSandboxCRM(t, e)
	c := e.as(e.user("viewer@example.org", RoleViewer, false))
	n := starterDraft(t, e)
	doc, _, err := e.app.data.maps.Version(t.Context(), n)
	if err != nil {
		t.Fatal(err)
	}
	canonical, _ := maps.Export(doc)

	b, _ := json.Marshal(map[string]string{"yaml": string(canonical)})
	code, out := e.apiCall(c, "POST", "/api/v1/maps/document", string(b))
	if code != 200 || out["yaml"] != string(canonical) || out["valid"] != true {
		t.Fatalf("yaml → document = %d valid=%v problems=%v", code, out["valid"], out["problems"])
	}
	document := out["document"].(map[string]any)
	b, _ = json.Marshal(map[string]any{"document": document})
	code, back := e.apiCall(c, "POST", "/api/v1/maps/document", string(b))
	if code != 200 || back["yaml"] != string(canonical) {
		t.Fatalf("document → yaml = %d, differs from the canonical YAML:\n%v", code, back["yaml"])
	}

	em := document["entityMaps"].([]any)[0].(map[string]any)
	em["attributes"] = append(em["attributes"].([]any), map[string]any{"name": "nick", "crmAttribute": "nicknam", "crmType": "string",
		"fhirPath": "name.where(use = 'nickname').given[0]", "direction": "", "enabled": nil})
	b, _ = json.Marshal(map[string]any{"document": document})
	code, edited := e.apiCall(c, "POST", "/api/v1/maps/document", string(b))
	if code != 200 || edited["valid"] != false || !strings.Contains(edited["yaml"].(string), "crmAttribute: nicknam") {
		t.Fatalf("document with an attribute added = %d %v", code, edited["valid"])
	}
	ps, _ := json.Marshal(edited["problems"])
	if !strings.Contains(string(ps), `attribute map \"nick\" / crmAttribute`) || !strings.Contains(string(ps), `did you mean \"nickname\"?`) {
		t.Errorf("problems of the added attribute map: %s", ps)
	}

	code, bad := e.apiCall(c, "POST", "/api/v1/maps/document", `{"yaml":"format: 1\nentityMaps:\n  - name: x\n    bogus: 1\n"}`)
	if code != 422 || !strings.Contains(fmt.Sprint(bad["problems"]), "bogus") {
		t.Errorf("yaml with an unknown field = %d %v", code, bad)
	}
}

// TestEditorCRMAttributesAndRefresh: the attribute picker lists a CRM
// table's columns from its metadata, cached; the refresh reads the CRM
// again and is recorded in the audit trail; without a CRM both say so.
func TestEditorCRMAttributesAndRefresh(t *testing.T) {
	t.Parallel()
	e := newTestEnv(t, storagetest.Open(t, "sqlite"), AppConfig{})
	editor := e.as(e.user("editor@example.org", RoleEditor, false))
	viewer := e.as(e.user("viewer@example.org", RoleViewer, false))
	if code, _ := e.apiCall(viewer, "GET", "/api/v1/maps/crm-attributes?entity=contact", ""); code != 404 {
		t.Errorf("attributes without a CRM = %d, want 404", code)
	}
	crm := withSandboxCRM(t, e)

	code, out := e.apiCall(viewer, "GET", "/api/v1/maps/crm-attributes?entity=contact", "")
	if code != 200 || out["entitySet"] != "contacts" {
		t.Fatalf("contact's attributes = %d %v", code, out)
	}
	byName := map[string]map[string]any{}
	for _, x := range out["attributes"].([]any) {
		m := x.(map[string]any)
		byName[m["name"].(string)] = m
	}
	if a := byName["nickname"]; a["type"] != "String" || a["mapType"] != "string" || a["maxLength"] != float64(100) {
		t.Errorf("nickname = %v", a)
	}
	if a := byName["gendercode"]; a["mapType"] != "option-set" || !strings.Contains(fmt.Sprint(a["options"]), "label:Female value:2") {
		t.Errorf("gendercode = %v", a)
	}
	if a := byName["birthdate"]; a["mapType"] != "date-only" {
		t.Errorf("birthdate = %v", a)
	}
	if a := byName["msemr_generalpractitioner"]; a["mapType"] != "lookup" || fmt.Sprint(a["targets"]) != "[contact]" {
		t.Errorf("msemr_generalpractitioner = %v", a)
	}
	reads := crm.reads.Load()
	e.apiCall(viewer, "GET", "/api/v1/maps/crm-attributes?entity=contact", "")
	if crm.reads.Load() != reads {
		t.Errorf("the second listing read the CRM again (%d reads, then %d); the metadata is cached", reads, crm.reads.Load())
	}
	if code, _ := e.apiCall(viewer, "GET", "/api/v1/maps/crm-attributes?entity=nosuchtable", ""); code != 404 {
		t.Errorf("attributes of a table the CRM lacks = %d, want 404", code)
	}

	if code, _ := e.apiCall(viewer, "POST", "/api/v1/maps/crm-metadata/refresh", `{"entities":["contact"]}`); code != 403 {
		t.Errorf("a viewer refreshing = %d, want 403", code)
	}
	reads = crm.reads.Load()
	code, out = e.apiCall(editor, "POST", "/api/v1/maps/crm-metadata/refresh", `{"entities":["contact"]}`)
	if code != 200 || crm.reads.Load() != reads+1 || !strings.Contains(fmt.Sprint(out["refreshed"]), "entity:contact found:true") {
		t.Errorf("refresh = %d %v, CRM reads %d → %d", code, out, reads, crm.reads.Load())
	}
	if !slices.Contains(e.auditActions(), "editor@example.org map.crm_metadata_refresh") {
		t.Errorf("audit actions %v lack map.crm_metadata_refresh", e.auditActions())
	}
	crm.down.Store(true)
	if code, _ := e.apiCall(editor, "POST", "/api/v1/maps/crm-metadata/refresh", `{"entities":["contact"]}`); code != 503 {
		t.Errorf("refresh while the CRM is down = %d, want 503", code)
	}
	p, err := e.app.users.audit.Audit(t.Context(), logs.AuditFilter{Action: "map.crm_metadata_refresh"}, "", 10)
	if err != nil || len(p.Entries) != 2 || !strings.Contains(p.Entries[0].After+p.Entries[1].After, "failed") {
		t.Errorf("refresh audit = %+v, %v", p.Entries, err)
	}
}

// TestEditorSamplesAndSave: the samples of the edited (unsaved) map set
// run with their mismatches; the editor's save goes through the same
// validation as every save, refusing a nonexistent CRM attribute with its
// location, and stores a valid draft.
func TestEditorSamplesAndSave(t *testing.T) {
	t.Parallel()
	e := newTestEnv(t, storagetest.Open(t, "sqlite"), AppConfig{})
	withSandboxCRM(t, e)
	editor := e.as(e.user("editor@example.org", RoleEditor, false))
	n := starterDraft(t, e)
	doc, _, _ := e.app.data.maps.Version(t.Context(), n)
	doc.EntityMaps[0].Attributes = append(doc.EntityMaps[0].Attributes, maps.AttributeMap{Name: "nick", CRMAttribute: "nickname",
		CRMType: maps.TypeString, FHIRPath: "name.where(use = 'nickname').given[0]", Direction: maps.FHIRToCRM, MaxLength: 100})
	edited, _ := maps.Export(doc)

	b, _ := json.Marshal(map[string]string{"yaml": string(edited), "map": "patient-contact"})
	code, out := e.apiCall(editor, "POST", "/api/v1/maps/samples", string(b))
	if code != 200 {
		t.Fatalf("samples = %d %v", code, out)
	}
	results := out["results"].([]any)
	first := results[0].(map[string]any)
	if len(results) < 2 || first["sample"] != "patient to contact" || first["passed"] != false ||
		!strings.Contains(fmt.Sprint(first["mismatches"]), `record.nickname: unexpected "Tóta"`) {
		t.Errorf("first sample = %v", first)
	}
	for _, r := range results[1:] {
		if r.(map[string]any)["passed"] != true {
			t.Errorf("sample %v fails", r)
		}
	}

	page := fmt.Sprintf("/maps/versions/%d/edit", n)
	code, body := e.page(editor, "GET", page+"?map=patient-contact", "", "")
	if code != 200 || !strings.Contains(body, `id="editor"`) || !strings.Contains(body, `data-map="patient-contact"`) || !strings.Contains(body, `/static/editor.js`) {
		t.Fatalf("editor page = %d", code)
	}
	bad := strings.Replace(string(edited), "crmAttribute: nickname", "crmAttribute: nicknam", 1)
	code, body = e.page(editor, "POST", page, formType, url.Values{"yaml": {bad}, "map": {"patient-contact"}}.Encode())
	if code != http.StatusUnprocessableEntity || !strings.Contains(body, `entity map &#34;patient-contact&#34; / attribute map &#34;nick&#34; / crmAttribute`) ||
		!strings.Contains(body, `did you mean &#34;nickname&#34;?`) || !strings.Contains(body, "crmAttribute: nicknam") {
		t.Errorf("saving a nonexistent attribute = %d, want 422 with its location and the YAML as sent:\n%.2000s", code, body)
	}
	code, _ = e.page(editor, "POST", page, formType, url.Values{"yaml": {string(edited)}, "map": {"patient-contact"}}.Encode())
	stored, _, _ := e.app.data.maps.Version(t.Context(), n)
	if _, am := findAttribute(stored, "patient-contact", "nick"); code != http.StatusSeeOther || am == nil || am.CRMAttribute != "nickname" {
		t.Errorf("saving from the editor = %d, stored %+v", code, am)
	}
	if _, err := e.app.data.maps.Publish(t.Context(), n, "test", ""); err != nil {
		t.Fatal(err)
	}
	if code, _ := e.page(editor, "GET", page, "", ""); code != http.StatusConflict {
		t.Errorf("the editor of a published version = %d, want 409", code)
	}
}

// TestVersionPageDirectionsOnceAndEditorLink: the version page offers
// each direction once (both ways is the default, not a second "both"),
// shows each attribute map's arrow by its direction, and links a draft to
// the structured editor.
func TestVersionPageDirectionsOnceAndEditorLink(t *testing.T) {
	t.Parallel()
	e := newTestEnv(t, storagetest.Open(t, "sqlite"), AppConfig{})
	editor := e.as(e.user("editor@example.org", RoleEditor, false))
	n := starterDraft(t, e)
	code, body := e.page(editor, "GET", fmt.Sprintf("/maps/versions/%d?map=patient-contact&attr=first-name", n), "", "")
	if code != 200 {
		t.Fatalf("version page = %d", code)
	}
	sel := body[strings.Index(body, `id="attr-direction"`):]
	sel = sel[:strings.Index(sel, "</select>")]
	if got := strings.Count(sel, "<option"); got != 3 || strings.Count(strings.ToLower(sel), "both") != 1 ||
		!strings.Contains(sel, `<option value="" selected>Both ways (FHIR ↔ CRM)</option>`) {
		t.Errorf("direction choices: %s", sel)
	}
	for _, want := range []string{
		`first-name</a> <span class="muted attr-flow">name.where(use = &#39;official&#39;).given[0] <span aria-hidden="true">↔</span><span class="sr-only">(both ways)</span> firstname`,
		`contact-type</a> <span class="muted attr-flow"> <span aria-hidden="true">→</span><span class="sr-only">(FHIR to CRM only)</span> msemr_contacttype`,
		fmt.Sprintf(`href="/maps/versions/%d/edit?map=patient-contact" id="open-editor"`, n),
	} {
		if !strings.Contains(body, want) {
			t.Errorf("version page lacks %s", want)
		}
	}
	if _, err := e.app.data.maps.Publish(t.Context(), n, "test", ""); err != nil {
		t.Fatal(err)
	}
	if _, body = e.page(editor, "GET", fmt.Sprintf("/maps/versions/%d", n), "", ""); strings.Contains(body, `id="open-editor"`) {
		t.Error("a published version links to the editor")
	}
}

// TestMapsListLinksDraftsToEditor: on the maps list, an editor reaches a
// draft's entity maps in the structured editor; a viewer gets no link.
func TestMapsListLinksDraftsToEditor(t *testing.T) {
	t.Parallel()
	e := newTestEnv(t, storagetest.Open(t, "sqlite"), AppConfig{})
	editor := e.as(e.user("editor@example.org", RoleEditor, false))
	viewer := e.as(e.user("viewer@example.org", RoleViewer, false))
	n := starterDraft(t, e)
	link := fmt.Sprintf(`href="/maps/versions/%d/edit?map=patient-contact" class="edit-map"`, n)
	if _, body := e.page(editor, "GET", "/maps", "", ""); !strings.Contains(body, link) {
		t.Errorf("the maps list offers an editor no link to the structured editor")
	}
	if _, body := e.page(viewer, "GET", "/maps", "", ""); strings.Contains(body, "/edit?map=") {
		t.Errorf("the maps list offers a viewer the editor")
	}
}
