package admin

import (
	"encoding/json"
	"fmt"
	"strings"
	"testing"

	"github.com/fhirsync/fhirsync/maps"
	"github.com/fhirsync/fhirsync/maps/starter"
	"github.com/fhirsync/fhirsync/storage/storagetest"
)

// TestEditorDocumentKeepsLookupByType: the structured editor's document
// carries a lookup by type (the starter Schedule's actor) whole, turns
// back into the same canonical YAML, and an edit that points one of its
// types at an entity map of another type comes back with that problem.
func TestEditorDocumentKeepsLookupByType(t *testing.T) {
	t.Parallel()
	e := newTestEnv(t, storagetest.Open(t, "sqlite"), AppConfig{})
	withSandboxCRM(t, e)
	c := e.as(e.user("viewer@example.org", RoleViewer, false))
	doc, err := maps.Parse(starter.YAML())
	if err != nil {
		t.Fatal(err)
	}
	canonical, _ := maps.Export(doc)

	b, _ := json.Marshal(map[string]string{"yaml": string(canonical)})
	code, out := e.apiCall(c, "POST", "/api/v1/maps/document", string(b))
	if code != 200 || out["valid"] != true {
		t.Fatalf("yaml → document = %d valid=%v problems=%v", code, out["valid"], out["problems"])
	}
	document := out["document"].(map[string]any)
	actor := scheduleActor(t, document)
	lookup, _ := actor["lookup"].(map[string]any)
	byType, _ := lookup["byType"].([]any)
	if len(byType) != 6 || lookup["otherTypes"] != "skip" {
		t.Fatalf("the schedule's actor lookup in the document = %v, want six types and otherTypes skip", lookup)
	}
	if first, _ := byType[0].(map[string]any); first["type"] != "Patient" || first["entityMap"] != "patient-contact" || first["crmAttribute"] != "msemr_actorpatient" {
		t.Errorf("the first type = %v", first)
	}

	b, _ = json.Marshal(map[string]any{"document": document})
	code, back := e.apiCall(c, "POST", "/api/v1/maps/document", string(b))
	if code != 200 || back["yaml"] != string(canonical) {
		t.Fatalf("document → yaml = %d, differs from the canonical YAML", code)
	}
	if !strings.Contains(back["yaml"].(string), "typeAttribute: msemr_participantactortype") {
		t.Error("the YAML lost the appointment participants' type column")
	}

	byType[1].(map[string]any)["entityMap"] = "patient-contact" // the Practitioner column through the Patient map
	b, _ = json.Marshal(map[string]any{"document": document})
	code, edited := e.apiCall(c, "POST", "/api/v1/maps/document", string(b))
	if code != 200 || edited["valid"] != false {
		t.Fatalf("document with a wrong entity map = %d valid=%v", code, edited["valid"])
	}
	ps, _ := json.Marshal(edited["problems"])
	if !strings.Contains(string(ps), `lookup.byType[1].entityMap`) || !strings.Contains(string(ps), `syncs Patient, not Practitioner`) {
		t.Errorf("problems of the edited lookup: %s", ps)
	}
}

func scheduleActor(t *testing.T, document map[string]any) map[string]any {
	t.Helper()
	for _, em := range document["entityMaps"].([]any) {
		m := em.(map[string]any)
		if m["name"] != "schedule" {
			continue
		}
		for _, a := range m["attributes"].([]any) {
			if am := a.(map[string]any); am["name"] == "actor" {
				return am
			}
		}
	}
	t.Fatal(fmt.Sprintf("no schedule actor attribute map in the document"))
	return nil
}
