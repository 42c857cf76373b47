package admin

import (
	"context"
	"errors"
	"net/http"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"testing"

	"gorm.io/gorm"

	"github.com/fhirsync/fhirsync/logs"
	"github.com/fhirsync/fhirsync/maps"
	"github.com/fhirsync/fhirsync/maps/starter"
	"github.com/fhirsync/fhirsync/storage/storagetest"
)

func starterDoc(t *testing.T) *maps.Document {
	t.Helper()
	doc, err := maps.Parse(starter.YAML())
	if err != nil {
		t.Fatal(err)
	}
	return doc
}

func TestSemanticDiff(t *testing.T) {
	from, to := starterDoc(t), starterDoc(t)
	if got := semanticDiff(from, to); len(got) != 0 {
		t.Fatalf("a map set against itself = %+v, want no changes", got)
	}
	pc := func(d *maps.Document) *maps.EntityMap {
		for i := range d.EntityMaps {
			if d.EntityMaps[i].Name == "patient-contact" {
				return &d.EntityMaps[i]
			}
		}
		t.Fatal("no patient-contact")
		return nil
	}
	em := pc(to)
	_, first := findAttribute(to, "patient-contact", "first-name")
	first.FHIRPath, first.CRMAttribute = "name.where(use = 'usual').given[0]", "nickname"
	removed := em.Attributes[len(em.Attributes)-1].Name
	em.Attributes = em.Attributes[:len(em.Attributes)-1]
	em.Attributes = append(em.Attributes, maps.AttributeMap{Name: "nick-name", FHIRPath: "name.given[2]", CRMAttribute: "nickname", CRMType: maps.TypeString})
	em.ConflictPolicy = maps.ConflictHold
	em.CRMFilter = &maps.CRMFilter{}
	// A round declared or changed is a change of the attribute map.
	_, lat := findAttribute(to, "location", "latitude")
	lat.Round = new(7)
	to.ValueMaps[0].Entries = to.ValueMaps[0].Entries[1:]
	to.ValueMaps = append(to.ValueMaps, maps.ValueMap{Name: "new-codes"})
	removedMap := to.EntityMaps[len(to.EntityMaps)-1].Name
	to.EntityMaps = to.EntityMaps[:len(to.EntityMaps)-1]

	got := map[string]semChange{}
	for _, c := range semanticDiff(from, to) {
		got[c.What] = c
	}
	want := []semChange{
		{"changed", "value map administrative-gender", []string{"entries"}},
		{"added", "value map new-codes", nil},
		{"changed", "entity map patient-contact", []string{"conflictPolicy", "crmFilter"}},
		{"changed", "attribute map patient-contact / first-name", []string{"crmAttribute", "fhirPath"}},
		{"changed", "attribute map location / latitude", []string{"round"}},
		{"removed", "attribute map patient-contact / " + removed, nil},
		{"added", "attribute map patient-contact / nick-name", nil},
		{"removed", "entity map " + removedMap, nil},
	}
	for _, w := range want {
		g, ok := got[w.What]
		if !ok || g.Kind != w.Kind || !slices.Equal(g.Fields, w.Fields) {
			t.Errorf("%s: got %+v, want %+v", w.What, g, w)
		}
	}
	if len(got) != len(want) {
		t.Errorf("got %d changes, want %d: %+v", len(got), len(want), got)
	}
	// Against nothing published, every element is added.
	for _, c := range semanticDiff(nil, from) {
		if c.Kind != "added" {
			t.Errorf("against no publication: %+v", c)
		}
	}
}

// breakSample edits draft 1 so that one of the starter samples fails.
func breakSample(t *testing.T, e *testEnv, c *http.Client) {
	t.Helper()
	code, body := e.page(c, "POST", "/maps/versions/1/attribute", formType, url.Values{"map": {"patient-contact"},
		"attr": {"first-name"}, "fhirPath": {"name.where(use = 'usual').given[0]"}, "crmAttribute": {"firstname"},
		"crmType": {"string"}, "direction": {""}, "enabled": {"on"}}.Encode())
	if code != http.StatusSeeOther {
		t.Fatalf("editing first-name = %d:\n%.2000s", code, body)
	}
}

func TestPublishSampleGateOverrideDiscardCompare(t *testing.T) {
	storagetest.Each(t, func(t *testing.T, db *gorm.DB) {
		e := newTestEnv(t, db, AppConfig{})
		editor := e.as(e.user("editor@example.org", RoleEditor, false))
		e.importStarter(editor)

		// The confirmation page of an intact draft: everything added, samples pass.
		code, body := e.page(editor, "GET", "/maps/versions/1/publish?note=hello", "", "")
		if code != 200 || !strings.Contains(body, `id="semantic-diff"`) || !strings.Contains(body, "entity map patient-contact") ||
			!strings.Contains(body, `id="samples-passing"`) || !strings.Contains(body, `value="hello"`) || strings.Contains(body, `id="override-reason"`) {
			t.Fatalf("confirmation page = %d:\n%.3000s", code, body)
		}

		breakSample(t, e, editor)
		code, body = e.page(editor, "GET", "/maps/versions/1/publish", "", "")
		if code != 200 || !strings.Contains(body, `id="failing-samples"`) || !strings.Contains(body, "patient-contact / ") || !strings.Contains(body, `id="override-reason"`) {
			t.Fatalf("confirmation page with a failing sample = %d:\n%.3000s", code, body)
		}
		// Refused without a reason, on the page and through the API.
		code, body = e.page(editor, "POST", "/maps/versions/1/publish", formType, "note=n&override_reason=+")
		if code != http.StatusUnprocessableEntity || !strings.Contains(body, "sample tests fail") || !strings.Contains(body, `id="failing-samples"`) {
			t.Fatalf("publishing with a failing sample = %d:\n%.3000s", code, body)
		}
		code, out := e.apiCall(editor, "POST", "/api/v1/maps/versions/1/publish", `{"note":"n"}`)
		if fs, _ := out["failing_samples"].([]any); code != http.StatusUnprocessableEntity || len(fs) == 0 {
			t.Fatalf("API publish with a failing sample = %d %v", code, out)
		}
		if vs, _ := e.app.data.maps.Versions(context.Background()); vs[0].Status != maps.StatusDraft {
			t.Fatalf("version 1 is %s after refusals", vs[0].Status)
		}
		// With a reason it is published, and the audit trail says why.
		code, body = e.page(editor, "POST", "/maps/versions/1/publish", formType, "note=first+release&override_reason=the+sample+is+out+of+date")
		if code != http.StatusSeeOther {
			t.Fatalf("publishing with an override = %d:\n%.2000s", code, body)
		}
		p, err := e.app.users.audit.Audit(context.Background(), logs.AuditFilter{Action: "map.publish_override"}, "", 10)
		if err != nil || len(p.Entries) != 1 || !strings.Contains(p.Entries[0].After, "the sample is out of date") ||
			!strings.Contains(p.Entries[0].Before, "patient-contact/") || p.Entries[0].Actor != "editor@example.org" {
			t.Fatalf("override audit = %+v, %v", p.Entries, err)
		}
		// The note is in the publication history.
		if code, body = e.page(editor, "GET", "/maps", "", ""); code != 200 || !strings.Contains(body, `<td class="pub-note">first release</td>`) {
			t.Errorf("maps page = %d without the note:\n%.3000s", code, body)
		}

		// Discard: a published version cannot go; a draft can, audited.
		if code, _ = e.page(editor, "POST", "/maps/versions/1/discard", formType, ""); code != http.StatusConflict {
			t.Errorf("discarding a published version = %d, want 409", code)
		}
		if code, _ = e.page(editor, "POST", "/maps/versions/1/draft", formType, ""); code != http.StatusSeeOther {
			t.Fatalf("new draft = %d", code)
		}
		auditor := e.as(e.user("auditor@example.org", RoleAuditor, false))
		if code, _ = e.page(auditor, "POST", "/maps/versions/2/discard", formType, ""); code != http.StatusForbidden {
			t.Errorf("auditor discarding = %d, want 403", code)
		}
		if code, _ = e.page(editor, "POST", "/maps/versions/2/discard", formType, ""); code != http.StatusSeeOther {
			t.Fatalf("discarding draft 2 = %d", code)
		}
		if _, _, err := e.app.data.maps.Version(context.Background(), 2); !errors.Is(err, maps.ErrNotFound) {
			t.Errorf("draft 2 after discarding: %v", err)
		}
		if acts := e.auditActions(); !slices.Contains(acts, "editor@example.org map.discard") {
			t.Errorf("audit = %v, want map.discard", acts)
		}

		// Compare: a version with itself is refused; two versions show the semantic diff.
		if code, body = e.page(editor, "GET", "/maps/diff?a=1&b=1", "", ""); code != http.StatusBadRequest || !strings.Contains(body, "compared with itself") {
			t.Errorf("comparing 1 with 1 = %d:\n%.2000s", code, body)
		}
		if code, _ = e.page(editor, "POST", "/maps/versions/1/draft", formType, ""); code != http.StatusSeeOther {
			t.Fatalf("new draft = %d", code)
		}
		vs, err := e.app.data.maps.Versions(context.Background())
		if err != nil || vs[0].Number == 1 {
			t.Fatalf("versions %+v, %v", vs, err)
		}
		breakSampleIn(t, e, editor, vs[0].Number)
		code, body = e.page(editor, "GET", "/maps/diff?a=1&b="+strconv.Itoa(vs[0].Number), "", "")
		if code != 200 || !strings.Contains(body, "attribute map patient-contact / first-name") || !strings.Contains(body, "<code>crmAttribute</code>") {
			t.Errorf("comparing 1 with the new draft = %d:\n%.3000s", code, body)
		}
	})
}

// breakSampleIn changes first-name's CRM attribute in draft n.
func breakSampleIn(t *testing.T, e *testEnv, c *http.Client, n int) {
	t.Helper()
	code, body := e.page(c, "POST", "/maps/versions/"+strconv.Itoa(n)+"/attribute", formType, url.Values{"map": {"patient-contact"},
		"attr": {"first-name"}, "fhirPath": {"name.where(use = 'usual').given[0]"}, "crmAttribute": {"nickname"},
		"crmType": {"string"}, "direction": {""}, "enabled": {"on"}}.Encode())
	if code != http.StatusSeeOther {
		t.Fatalf("editing draft %d = %d:\n%.2000s", n, code, body)
	}
}
