package admin

import (
	"encoding/json"
	"fmt"
	"net/http"
	"net/url"
	"strings"
	"testing"

	"github.com/fhirsync/fhirsync/maps"
	"github.com/fhirsync/fhirsync/storage/storagetest"
)

// TestEditorDocumentKeepsNestedExpansions: the structured editor's round
// trip (YAML → document → a form edit → YAML) and the save from the
// editor keep an expansion nested in another (the care-team map's
// participant roles), though the forms do not show its fields.
func TestEditorDocumentKeepsNestedExpansions(t *testing.T) {
	t.Parallel()
	e := newTestEnv(t, storagetest.Open(t, "sqlite"), AppConfig{})
	editor := e.as(e.user("editor@example.org", RoleEditor, false))
	n := starterDraft(t, e)
	doc, _, err := e.app.data.maps.Version(t.Context(), n)
	if err != nil {
		t.Fatal(err)
	}
	canonical, _ := maps.Export(doc)
	b, _ := json.Marshal(map[string]string{"yaml": string(canonical)})
	code, out := e.apiCall(editor, "POST", "/api/v1/maps/document", string(b))
	if code != 200 {
		t.Fatalf("yaml → document = %d %v", code, out["problems"])
	}
	document := out["document"].(map[string]any)
	var participants map[string]any
	for _, em := range document["entityMaps"].([]any) {
		if em := em.(map[string]any); em["name"] == "care-team" {
			participants = em["expansions"].([]any)[0].(map[string]any)
		}
	}
	nested, _ := participants["expansions"].([]any)
	if len(nested) != 1 || nested[0].(map[string]any)["name"] != "participant-roles" {
		t.Fatalf("document's care-team participants carry expansions %v, want participant-roles", participants["expansions"])
	}
	// A form edit of the outer expansion, as editor.js makes it.
	participants["onRemove"] = "delete"
	b, _ = json.Marshal(map[string]any{"document": document})
	code, back := e.apiCall(editor, "POST", "/api/v1/maps/document", string(b))
	y, _ := back["yaml"].(string)
	if code != 200 || back["valid"] != true || !strings.Contains(y, "name: participant-roles") || !strings.Contains(y, "parentLookup: msemr_careteamparticipant\n") {
		t.Fatalf("document → yaml = %d valid=%v problems=%v; nested expansion kept: %v", code, back["valid"], back["problems"], strings.Contains(y, "participant-roles"))
	}
	page := fmt.Sprintf("/maps/versions/%d/edit", n)
	code, _ = e.page(editor, "POST", page, formType, url.Values{"yaml": {y}, "map": {"care-team"}}.Encode())
	if code != http.StatusSeeOther {
		t.Fatalf("saving from the editor = %d", code)
	}
	stored, _, err := e.app.data.maps.Version(t.Context(), n)
	if err != nil {
		t.Fatal(err)
	}
	for _, em := range stored.EntityMaps {
		if em.Name != "care-team" {
			continue
		}
		x := em.Expansions[0]
		if x.OnRemove != maps.RemoveDelete || len(x.Expansions) != 1 || x.Expansions[0].Name != "participant-roles" || len(x.Expansions[0].Attributes) != 3 {
			t.Errorf("stored participants: onRemove %s, nested %+v", x.OnRemove, x.Expansions)
		}
		return
	}
	t.Fatal("care-team map not stored")
}

// TestSemanticDiffNestedExpansion: the version diff names changes inside
// an expansion nested in another.
func TestSemanticDiffNestedExpansion(t *testing.T) {
	from, to := starterDoc(t), starterDoc(t)
	for i := range to.EntityMaps {
		if to.EntityMaps[i].Name == "care-team" {
			roles := &to.EntityMaps[i].Expansions[0].Expansions[0]
			roles.OnRemove = maps.RemoveDeactivate
			roles.Attributes[2].MaxLength = 50
		}
	}
	got := map[string][]string{}
	for _, c := range semanticDiff(from, to) {
		got[c.Kind+" "+c.What] = c.Fields
	}
	want := map[string][]string{
		"changed expansion map care-team / participants / participant-roles":           {"onRemove"},
		"changed attribute map care-team / participants / participant-roles / display": {"maxLength"},
	}
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Errorf("diff = %v, want %v", got, want)
	}
}
