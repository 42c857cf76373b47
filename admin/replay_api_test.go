package admin

import (
	"encoding/json"
	"net/url"
	"slices"
	"strings"
	"testing"

	"gorm.io/gorm"

	"github.com/fhirsync/fhirsync/logs"
	"github.com/fhirsync/fhirsync/queues"
	"github.com/fhirsync/fhirsync/storage/storagetest"
)

// TestReplayByRecords replays named records through the form and the
// API: the dry run names each record's map and sends nothing, a bad line
// is refused beside the field, the replay sends one notice per record,
// and only replay.send holders may.
func TestReplayByRecords(t *testing.T) {
	storagetest.Each(t, func(t *testing.T, db *gorm.DB) {
		e := newTestEnv(t, db, AppConfig{})
		if _, err := e.app.data.maps.Publish(t.Context(), starterDraft(t, e), "test", "starter"); err != nil {
			t.Fatal(err)
		}
		operator := e.as(e.user("operator@example.org", RoleOperator, false))
		auditor := e.as(e.user("auditor@example.org", RoleAuditor, false))
		fq, cq := e.embedded("fhir-changes"), e.embedded("crm-changes")

		// The log explorer links its filter to the replay form, for
		// those who may replay.
		if _, body := e.page(operator, "GET", "/logs?outcome=failed&reason=throttled", "", ""); !strings.Contains(body, `id="replay-these" href="/replay?mode=filter&amp;outcome=failed&amp;reason=throttled"`) {
			t.Errorf("the filtered log explorer has no replay link:\n%.3000s", body)
		}
		if _, body := e.page(auditor, "GET", "/logs?outcome=failed", "", ""); strings.Contains(body, `id="replay-these"`) {
			t.Error("an auditor gets a replay link")
		}
		// A link with a log filter fills the form.
		code, body := e.page(operator, "GET", "/replay?outcome=failed&reason=throttled&from=2026-12-01", "", "")
		if code != 200 || !strings.Contains(body, "<option selected>failed</option>") || !strings.Contains(body, "<option selected>throttled</option>") ||
			!strings.Contains(body, `value="2026-12-01"`) {
			t.Errorf("GET /replay with a filter = %d; the form is not filled:\n%.3000s", code, body)
		}

		form := url.Values{"mode": {"records"}, "records": {"Patient/p1\ncrm:contact/c1\nEncounter/e1"}}
		code, body = e.page(operator, "POST", "/replay/preview", formType, form.Encode())
		if code != 200 || !strings.Contains(body, "<strong>3</strong> record(s) would be sent") ||
			!strings.Contains(body, `data-ref="fhir:Patient/p1"`) || !strings.Contains(body, `data-ref="crm:contact/c1"`) ||
			!strings.Contains(body, "patient-contact, practitioner-contact") {
			t.Fatalf("dry run = %d:\n%.4000s", code, body)
		}
		if d, _ := fq.Depth(t.Context()); d.Active != 0 {
			t.Fatal("the dry run sent notices")
		}
		bad := url.Values{"mode": {"records"}, "records": {"Patient/p1\nnot a record"}}
		if code, body := e.page(operator, "POST", "/replay/preview", formType, bad.Encode()); code != 400 || !strings.Contains(body, "not a record") {
			t.Errorf("a bad line = %d, want 400 naming it:\n%.2000s", code, body)
		}
		if code, _ := e.page(operator, "POST", "/replay", formType, form.Encode()); code != 400 {
			t.Errorf("a replay without the dry run's confirmation = %d, want 400", code)
		}
		if code, _ := e.page(auditor, "POST", "/replay/preview", formType, form.Encode()); code != 403 {
			t.Errorf("an auditor's dry run = %d, want 403", code)
		}
		form.Set("confirm", "yes")
		if code, _ := e.page(operator, "POST", "/replay", formType, form.Encode()); code != 303 {
			t.Fatalf("replay = %d, want 303", code)
		}
		f, _ := fq.Depth(t.Context())
		c, _ := cq.Depth(t.Context())
		if f.Active != 2 || c.Active != 1 {
			t.Fatalf("after the replay: fhir %+v crm %+v; want 2 and 1", f, c)
		}

		// The API: a dry run with plans, then the real thing.
		code, out := e.apiCall(operator, "POST", "/api/v1/replay", `{"records":["Basic/b1"],"dry_run":true}`)
		plans, _ := out["plans"].([]any)
		if code != 200 || len(plans) != 1 || plans[0].(map[string]any)["reason"] != "no_entity_map" {
			t.Fatalf("API dry run = %d %v", code, out)
		}
		code, out = e.apiCall(operator, "POST", "/api/v1/replay", `{"filter":{"outcome":"nonsense"}}`)
		if code != 400 {
			t.Errorf("API replay with a bad filter = %d %v", code, out)
		}
		code, out = e.apiCall(operator, "POST", "/api/v1/replay", `{"records":["Patient/p9"]}`)
		if code != 200 || out["sent"] != float64(1) {
			t.Errorf("API replay = %d %v", code, out)
		}
		actions := e.auditActions()
		for _, want := range []string{"operator@example.org replay.dry_run", "operator@example.org replay.records"} {
			if !slices.Contains(actions, want) {
				t.Errorf("audit trail lacks %q: %v", want, actions)
			}
		}
	})
}

// TestDiscardAPI: discarding needs a reason, deletes only what it names,
// and is audited with the reason.
func TestDiscardAPI(t *testing.T) {
	e := newTestEnv(t, storagetest.Open(t, "sqlite"), AppConfig{})
	operator := e.as(e.user("operator@example.org", RoleOperator, false))
	viewer := e.as(e.user("viewer@example.org", RoleViewer, false))
	q := e.embedded("fhir-changes")
	deadLetterAs(t, q, queues.SideFHIR, "Patient", "p1", "target_rejected")
	deadLetterAs(t, q, queues.SideFHIR, "Patient", "p2", "target_rejected")
	dls, err := q.PeekDeadLetters(t.Context(), 0, 10)
	if err != nil || len(dls) != 2 {
		t.Fatal(err)
	}
	body, _ := json.Marshal(map[string]any{"queue": "fhir-changes", "sequence_numbers": []int64{dls[0].SequenceNumber}, "reason": "no"})
	if code, _ := e.apiCall(operator, "POST", "/api/v1/deadletters/discard", string(body)); code != 400 {
		t.Errorf("discard without a real reason = %d, want 400", code)
	}
	body, _ = json.Marshal(map[string]any{"queue": "fhir-changes", "sequence_numbers": []int64{dls[0].SequenceNumber}, "reason": "duplicate of a later message"})
	if code, _ := e.apiCall(viewer, "POST", "/api/v1/deadletters/discard", string(body)); code != 403 {
		t.Errorf("a viewer's discard = %d, want 403", code)
	}
	code, out := e.apiCall(operator, "POST", "/api/v1/deadletters/discard", string(body))
	if code != 200 || out["discarded"] != float64(1) {
		t.Fatalf("discard = %d %v", code, out)
	}
	left, _ := q.PeekDeadLetters(t.Context(), 0, 10)
	if len(left) != 1 || left[0].SequenceNumber != dls[1].SequenceNumber {
		t.Fatalf("after discarding one, %d dead letters are left", len(left))
	}
	p, err := e.app.data.logs.Audit(t.Context(), logs.AuditFilter{Action: "deadletter.discard"}, "", 10)
	if err != nil || len(p.Entries) != 1 || !strings.Contains(p.Entries[0].Before, "duplicate of a later message") || p.Entries[0].Actor != "operator@example.org" {
		t.Fatalf("audit of the discard = %+v, %v", p.Entries, err)
	}
}
