package admin

import (
	"bytes"
	"context"
	"encoding/csv"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"slices"
	"strings"
	"testing"
	"time"

	"gorm.io/gorm"

	"github.com/fhirsync/fhirsync/logs"
	"github.com/fhirsync/fhirsync/maps"
	"github.com/fhirsync/fhirsync/maps/starter"
	"github.com/fhirsync/fhirsync/queues"
	"github.com/fhirsync/fhirsync/queues/embedded"
	"github.com/fhirsync/fhirsync/storage/storagetest"
)

// page fetches path with c and returns the status and body.
func (e *testEnv) page(c *http.Client, method, path, ctype, body string) (int, string) {
	e.t.Helper()
	req, _ := http.NewRequest(method, e.url+path, strings.NewReader(body))
	if ctype != "" {
		req.Header.Set("Content-Type", ctype)
	}
	resp, err := c.Do(req)
	if err != nil {
		e.t.Fatalf("%s %s: %v", method, path, err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

// as returns a client signed in as u.
func (e *testEnv) as(u User) *http.Client {
	c := e.client()
	c.Jar.SetCookies(mustURL(e.url), []*http.Cookie{e.sessionCookie(u)})
	return c
}

const formType = "application/x-www-form-urlencoded"

// importStarter imports the starter map set as draft 1 through the page.
func (e *testEnv) importStarter(c *http.Client) {
	e.t.Helper()
	code, _ := e.page(c, "POST", "/maps/import", formType, url.Values{"yaml": {string(starter.YAML())}}.Encode())
	if code != http.StatusSeeOther {
		e.t.Fatalf("importing the starter maps = %d", code)
	}
}

func TestMapsEditPublishRollback(t *testing.T) {
	storagetest.Each(t, func(t *testing.T, db *gorm.DB) {
		e := newTestEnv(t, db, AppConfig{})
		editor := e.as(e.user("editor@example.org", RoleEditor, false))
		auditor := e.as(e.user("auditor@example.org", RoleAuditor, false))

		e.importStarter(editor)
		code, body := e.page(editor, "GET", "/maps", "", "")
		if code != 200 || !strings.Contains(body, `data-map="patient-contact"`) || !strings.Contains(body, "status-draft") {
			t.Fatalf("maps list = %d, want patient-contact as a draft", code)
		}

		edit := func(c *http.Client, fhirPath string) (int, string) {
			return e.page(c, "POST", "/maps/versions/1/attribute", formType, url.Values{"map": {"patient-contact"},
				"attr": {"first-name"}, "fhirPath": {fhirPath}, "crmAttribute": {"firstname"}, "crmType": {"string"},
				"direction": {""}, "enabled": {"on"}}.Encode())
		}
		tests := []struct {
			name     string
			client   *http.Client
			fhirPath string
			want     int
			wantText string
		}{
			{"invalid path is refused with its location", editor, "name.where(use = 'official').givn[0]", 422, `attribute map &#34;first-name&#34; / fhirPath`},
			{"auditor may not edit", auditor, "name.given[0]", 403, "does not allow"},
			{"valid edit is saved", editor, "name.where(use = 'usual').given[0]", 303, ""},
		}
		for _, tt := range tests {
			t.Run(tt.name, func(t *testing.T) {
				code, body := edit(tt.client, tt.fhirPath)
				if code != tt.want || !strings.Contains(body, tt.wantText) {
					t.Errorf("= %d, want %d containing %q:\n%.2000s", code, tt.want, tt.wantText, body)
				}
			})
		}
		doc, _, err := e.app.data.maps.Version(t.Context(), 1)
		if err != nil {
			t.Fatal(err)
		}
		if _, am := findAttribute(doc, "patient-contact", "first-name"); am == nil || am.FHIRPath != "name.where(use = 'usual').given[0]" {
			t.Fatalf("the saved draft holds %+v", am)
		}

		// The auditor sees the version without edit controls.
		code, body = e.page(auditor, "GET", "/maps/versions/1?map=patient-contact&attr=first-name", "", "")
		if code != 200 || strings.Contains(body, `id="attr-form"`) || strings.Contains(body, `id="yaml-form"`) || strings.Contains(body, `id="publish"`) {
			t.Errorf("auditor's version page = %d with edit controls", code)
		}

		if code, _ := e.page(editor, "POST", "/maps/versions/1/publish", formType, "note=first&override_reason=the+usual+name+is+wanted"); code != 303 { // the edit breaks a starter sample
			t.Fatalf("publish = %d", code)
		}
		if code, _ := e.page(editor, "POST", "/maps/versions/1/attribute", formType, url.Values{"map": {"patient-contact"},
			"attr": {"first-name"}, "fhirPath": {"name.given[0]"}, "crmAttribute": {"firstname"}, "crmType": {"string"}, "enabled": {"on"}}.Encode()); code != 409 {
			t.Errorf("editing a published version = %d, want 409", code)
		}
		if code, _ := e.page(editor, "POST", "/maps/versions/1/draft", formType, ""); code != 303 {
			t.Fatalf("draft from version 1 = %d", code)
		}
		// Disable an attribute map in draft 2 through the YAML editor.
		y := strings.Replace(mustExport(t, e, 1), "      - name: middle-name\n", "      - name: middle-name\n        enabled: false\n", 1)
		if code, body := e.page(editor, "POST", "/maps/versions/2", formType, url.Values{"yaml": {y}}.Encode()); code != 303 {
			t.Fatalf("saving YAML = %d\n%.2000s", code, body)
		}
		if code, _ := e.page(editor, "POST", "/maps/versions/2/rollback", formType, ""); code != 409 {
			t.Errorf("rolling back to a draft = %d, want 409", code)
		}
		if code, _ := e.page(editor, "POST", "/maps/versions/2/publish", formType, "override_reason=same+edit"); code != 303 {
			t.Fatalf("publishing 2 = %d", code)
		}
		code, body = e.page(auditor, "GET", "/maps/diff?a=1&b=2", "", "")
		if code != 200 || !strings.Contains(body, "&#43;         enabled: false") || !strings.Contains(body, "1 changed line(s)") {
			t.Errorf("diff = %d:\n%.3000s", code, body)
		}
		if code, _ := e.page(editor, "POST", "/maps/versions/1/rollback", formType, "note=oops"); code != 303 {
			t.Fatalf("rollback = %d", code)
		}
		set, err := e.app.data.maps.Current(t.Context())
		if err != nil || set.Version() != 1 {
			t.Fatalf("after rollback the current version is %v (%v), want 1", set, err)
		}
		code, exported := e.page(auditor, "GET", "/maps/versions/1/export", "", "")
		if code != 200 || exported != mustExport(t, e, 1) {
			t.Errorf("export = %d, not the canonical YAML of version 1", code)
		}
		actions := strings.Join(e.auditActions(), "\n")
		for _, want := range []string{"editor@example.org map.import", "editor@example.org map.edit", "editor@example.org map.publish",
			"editor@example.org map.draft", "editor@example.org map.rollback"} {
			if !strings.Contains(actions, want) {
				t.Errorf("audit trail lacks %q:\n%s", want, actions)
			}
		}
	})
}

func mustExport(t *testing.T, e *testEnv, n int) string {
	t.Helper()
	doc, _, err := e.app.data.maps.Version(t.Context(), n)
	if err != nil {
		t.Fatal(err)
	}
	b, err := maps.Export(doc)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// apiCall sends a JSON request and decodes the JSON answer.
func (e *testEnv) apiCall(c *http.Client, method, path, body string) (int, map[string]any) {
	e.t.Helper()
	code, text := e.page(c, method, path, "application/json", body)
	var out map[string]any
	if err := json.Unmarshal([]byte(text), &out); err != nil {
		e.t.Fatalf("%s %s = %d, not JSON: %.500s", method, path, code, text)
	}
	return code, out
}

func TestMapsAPI(t *testing.T) {
	storagetest.Each(t, func(t *testing.T, db *gorm.DB) {
		e := newTestEnv(t, db, AppConfig{})
		editor := e.as(e.user("editor@example.org", RoleEditor, false))
		viewer := e.as(e.user("viewer@example.org", RoleViewer, false))
		body, _ := json.Marshal(map[string]string{"yaml": string(starter.YAML())})
		if code, out := e.apiCall(editor, "POST", "/api/v1/maps/import", string(body)); code != 201 || out["number"] != float64(1) {
			t.Fatalf("import = %d %v", code, out)
		}

		validate := []struct {
			name      string
			body      string
			wantValid bool
			wantField string // a problem must name this field of first-name
		}{
			{"valid change", `{"version":1,"map":"patient-contact","attribute":"first-name","change":{"fhirPath":"name.given[0]","crmAttribute":"firstname","crmType":"string","enabled":true}}`, true, ""},
			{"unknown element", `{"version":1,"map":"patient-contact","attribute":"first-name","change":{"fhirPath":"name.givn[0]","crmAttribute":"firstname","crmType":"string","enabled":true}}`, false, "fhirPath"},
			{"unknown type", `{"version":1,"map":"patient-contact","attribute":"first-name","change":{"fhirPath":"name.given[0]","crmAttribute":"firstname","crmType":"text","enabled":true}}`, false, "crmType"},
			{"broken yaml", `{"yaml":"format: 1\nentityMaps: [\n"}`, false, ""},
		}
		for _, tt := range validate {
			t.Run(tt.name, func(t *testing.T) {
				code, out := e.apiCall(viewer, "POST", "/api/v1/maps/validate", tt.body)
				if code != 200 || out["valid"] != tt.wantValid {
					t.Fatalf("= %d %v, want valid %t", code, out, tt.wantValid)
				}
				if tt.wantField == "" {
					return
				}
				found := false
				for _, p := range out["problems"].([]any) {
					p := p.(map[string]any)
					if p["map"] == "patient-contact" && p["attribute"] == "first-name" && p["field"] == tt.wantField && p["location"] != "" {
						found = true
					}
				}
				if !found {
					t.Errorf("no problem at first-name / %s: %v", tt.wantField, out["problems"])
				}
			})
		}

		preview := []struct {
			name        string
			req         map[string]any
			want        int
			wantOutcome string
			wantChanged []string
		}{
			{"new record is created", map[string]any{"map": "patient-contact", "direction": "fhir-to-crm",
				"input": `{"resourceType":"Patient","id":"p1","name":[{"use":"official","family":"Lovelace","given":["Ada"]}]}`},
				200, "sent/created", nil},
			{"diff against the current state", map[string]any{"map": "patient-contact", "direction": "fhir-to-crm",
				"input":   `{"resourceType":"Patient","id":"p1","name":[{"use":"official","family":"Lovelace","given":["Ada"]}]}`,
				"current": `{"record":{"firstname":"Ada","lastname":"Byron","msemr_contacttype":935000000,"msemr_azurefhirid":"p1"}}`},
				200, "sent/updated", []string{"lastname"}},
			{"not JSON", map[string]any{"map": "patient-contact", "direction": "fhir-to-crm", "input": `{"resourceType":`}, 200, "", nil},
			{"unknown map", map[string]any{"map": "nope", "direction": "fhir-to-crm", "input": `{}`}, 404, "", nil},
			{"logged record needs PHI", map[string]any{"map": "patient-contact", "direction": "fhir-to-crm", "decision_id": 1}, 403, "", nil},
		}
		for _, tt := range preview {
			t.Run("preview "+tt.name, func(t *testing.T) {
				b, _ := json.Marshal(tt.req)
				code, out := e.apiCall(viewer, "POST", "/api/v1/maps/versions/1/preview", string(b))
				if code != tt.want {
					t.Fatalf("= %d %v, want %d", code, out, tt.want)
				}
				if tt.want != 200 {
					return
				}
				got := fmt.Sprint(out["outcome"], "/", out["reason"])
				if tt.wantOutcome == "" {
					if out["input_error"] == nil {
						t.Errorf("malformed input gave no input error: %v", out)
					}
					return
				}
				if got != tt.wantOutcome || !strings.Contains(fmt.Sprint(out["output"]), `"lastname": "Lovelace"`) {
					t.Errorf("= %s, output %v; want %s", got, out["output"], tt.wantOutcome)
				}
				for _, f := range tt.wantChanged {
					if !slices.Contains(out["changed"].([]any), any(f)) {
						t.Errorf("changed %v lacks %s", out["changed"], f)
					}
				}
				if tt.wantChanged != nil && slices.Contains(out["changed"].([]any), any("firstname")) {
					t.Errorf("changed %v names firstname, which is the same", out["changed"])
				}
				if tt.wantChanged != nil {
					diff, _ := json.Marshal(out["diff"])
					if !strings.Contains(string(diff), `{"after":"\"Lovelace\"","before":"\"Byron\"","field":"lastname"}`) {
						t.Errorf("diff %s lacks lastname Byron → Lovelace", diff)
					}
				}
			})
		}

		if code, out := e.apiCall(viewer, "POST", "/api/v1/maps/versions/1/publish", `{}`); code != 403 {
			t.Errorf("viewer publish = %d %v", code, out)
		}
		if code, out := e.apiCall(editor, "POST", "/api/v1/maps/versions/1/publish", `{"note":"go"}`); code != 200 || out["current"] != true {
			t.Errorf("publish = %d %v", code, out)
		}
		code, out := e.apiCall(viewer, "GET", "/api/v1/maps", "")
		if code != 200 || len(out["versions"].([]any)) != 1 || len(out["publications"].([]any)) != 1 {
			t.Errorf("maps = %d %v", code, out)
		}
	})
}

// writeDecisions records n decisions for record p1/c1 alternating outcome.
func writeDecisions(t testing.TB, s *logs.Store, start time.Time, n int) {
	t.Helper()
	for i := range n {
		d := &logs.Decision{Time: start.Add(time.Duration(i) * time.Second), MessageID: fmt.Sprint("m", i),
			Direction: logs.FHIRToCRM, EntityMap: "patient-contact", MapVersion: 1,
			Source: logs.Ref{Type: "Patient", ID: fmt.Sprint("p", i%3)}, Target: logs.Ref{Type: "contact", ID: fmt.Sprint("c", i%3)},
			Outcome: logs.OutcomeSent, Reason: logs.ReasonUpdated, Message: "Updated contact.", ChangedFields: []string{"firstname"}}
		if i%4 == 3 {
			d.Outcome, d.Reason, d.Message, d.ChangedFields = logs.OutcomeFailed, logs.ReasonThrottled, "The CRM asked to slow down.", nil
		}
		if err := s.Write(context.Background(), d); err != nil {
			t.Fatal(err)
		}
	}
}

func TestLogExplorer(t *testing.T) {
	storagetest.Each(t, func(t *testing.T, db *gorm.DB) {
		e := newTestEnv(t, db, AppConfig{})
		viewer := e.as(e.user("viewer@example.org", RoleViewer, false))
		auditor := e.as(e.user("auditor@example.org", RoleAuditor, false))
		start := e.clock.now().Add(-time.Hour)
		writeDecisions(t, e.app.data.logs, start, 120)

		code, body := e.page(viewer, "GET", "/logs", "", "")
		if code != 200 || strings.Count(body, "<tr data-id=") != logsPageSize || !strings.Contains(body, `id="next-page"`) ||
			!strings.Contains(body, `id="retention"`) || !strings.Contains(body, "kept for 90 days") {
			t.Fatalf("first page = %d, %d rows", code, strings.Count(body, "<tr data-id="))
		}
		// Walk every page by its cursor: 120 decisions, newest first, none twice.
		seen := map[string]bool{}
		path := "/api/v1/logs?limit=50"
		for pages := 0; path != ""; pages++ {
			code, out := e.apiCall(viewer, "GET", path, "")
			if code != 200 || pages > 3 {
				t.Fatalf("page %d = %d", pages, code)
			}
			for _, d := range out["decisions"].([]any) {
				id := fmt.Sprint(d.(map[string]any)["id"])
				if seen[id] {
					t.Fatalf("decision %s on two pages", id)
				}
				seen[id] = true
			}
			path = ""
			if next, _ := out["next"].(string); next != "" {
				path = "/api/v1/logs?limit=50&after=" + url.QueryEscape(next)
			}
		}
		if len(seen) != 120 {
			t.Errorf("pages held %d decisions, want 120", len(seen))
		}

		filters := []struct {
			name  string
			query string
			want  int
		}{
			{"outcome", "outcome=failed", 30},
			{"reason", "reason=throttled", 30},
			{"record timeline", "record=p1", 40},
			{"record and outcome", "record=c1&outcome=failed", 10},
			{"time window", "from=" + start.Format("2006-01-02T15:04:05") + "&to=" + start.Add(10*time.Second).Format("2006-01-02T15:04:05"), 10},
			{"direction", "direction=crm_to_fhir", 0},
		}
		for _, tt := range filters {
			t.Run(tt.name, func(t *testing.T) {
				code, out := e.apiCall(viewer, "GET", "/api/v1/logs?limit=1000&"+tt.query, "")
				if code != 200 || len(out["decisions"].([]any)) != tt.want {
					t.Errorf("= %d, %d decisions, want %d", code, len(out["decisions"].([]any)), tt.want)
				}
			})
		}
		if code, _ := e.page(viewer, "GET", "/logs?outcome=maybe", "", ""); code != 400 {
			t.Errorf("bad outcome = %d, want 400", code)
		}
		if code, _ := e.page(viewer, "GET", "/logs?key_value=MRN1", "", ""); code != 400 {
			t.Errorf("business key search without a key secret = %d, want 400", code)
		}

		// Decision detail explains the reason.
		page, err := e.app.data.logs.Search(t.Context(), logs.Filter{Reason: logs.ReasonThrottled}, "", 1)
		if err != nil || len(page.Decisions) != 1 {
			t.Fatal(err)
		}
		d := page.Decisions[0]
		reason, _ := logs.LookupReason(logs.ReasonThrottled)
		code, body = e.page(viewer, "GET", fmt.Sprint("/logs/", d.ID), "", "")
		if code != 200 || !strings.Contains(body, reason.Meaning) || !strings.Contains(body, reason.Action) || !strings.Contains(body, "Not captured") {
			t.Errorf("decision page = %d, lacks the reason's meaning and action:\n%.3000s", code, body)
		}
		code, out := e.apiCall(viewer, "GET", fmt.Sprint("/api/v1/logs/", d.ID), "")
		if code != 200 || out["suggested_action"] != reason.Action || out["reason"] != "throttled" {
			t.Errorf("decision API = %d %v", code, out)
		}

		// Export: the auditor gets every match; the viewer may not.
		if code, _ := e.page(viewer, "GET", "/logs/export?outcome=failed", "", ""); code != 403 {
			t.Errorf("viewer export = %d, want 403", code)
		}
		code, text := e.page(auditor, "GET", "/logs/export?format=csv&outcome=failed", "", "")
		rows, err := csv.NewReader(strings.NewReader(text)).ReadAll()
		if code != 200 || err != nil || len(rows) != 31 {
			t.Errorf("CSV export = %d, %d rows (%v), want header + 30", code, len(rows), err)
		}
		code, text = e.page(auditor, "GET", "/api/v1/logs/export?format=ndjson&record=p2", "", "")
		if code != 200 || strings.Count(text, "\n") != 40 {
			t.Errorf("NDJSON export = %d, %d lines, want 40", code, strings.Count(text, "\n"))
		}
		if !slices.Contains(e.auditActions(), "auditor@example.org logs.export") {
			t.Errorf("the export is not in the audit trail: %v", e.auditActions())
		}
	})
}

// captureKey is a test AES-256 key, base64.
const captureKey = "MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY="

func TestCapturedPayloadNeedsPHI(t *testing.T) {
	storagetest.Each(t, func(t *testing.T, db *gorm.DB) {
		store, err := logs.New(db, logs.Config{Capture: logs.CaptureConfig{Enabled: true, KeyID: "k1", Key: captureKey}}, nil)
		if err != nil {
			t.Fatal(err)
		}
		e := newTestEnv(t, db, AppConfig{}, withLogs(store))
		editor := e.as(e.user("editor@example.org", RoleEditor, false))
		phi := e.as(e.user("phi@example.org", RoleEditor, true))
		e.importStarter(editor)
		d := &logs.Decision{Direction: logs.FHIRToCRM, EntityMap: "patient-contact", Source: logs.Ref{Type: "Patient", ID: "p9"},
			Target: logs.Ref{Type: "contact", ID: "c9"}, Outcome: logs.OutcomeSent, Reason: logs.ReasonCreated,
			Snapshots: &logs.Snapshots{Source: []byte(`{"resourceType":"Patient","id":"p9","name":[{"use":"official","family":"Hopper","given":["Grace"]}]}`)}}
		if err := store.Write(t.Context(), d); err != nil {
			t.Fatal(err)
		}
		code, body := e.page(editor, "GET", fmt.Sprint("/logs/", d.ID), "", "")
		if code != 200 || !strings.Contains(body, "hidden: viewing it needs the PHI permission") || strings.Contains(body, "Hopper") {
			t.Errorf("detail without PHI = %d:\n%.2000s", code, body)
		}
		if code, _ := e.page(editor, "GET", fmt.Sprint("/logs/", d.ID, "/capture"), "", ""); code != 403 {
			t.Errorf("capture without PHI = %d, want 403", code)
		}
		code, body = e.page(phi, "GET", fmt.Sprint("/logs/", d.ID, "/capture"), "", "")
		if code != 200 || !strings.Contains(body, "Hopper") {
			t.Errorf("capture with PHI = %d", code)
		}
		// Preview against the logged record.
		form := url.Values{"map": {"patient-contact"}, "direction": {"fhir-to-crm"}, "decision_id": {fmt.Sprint(d.ID)}}.Encode()
		code, body = e.page(phi, "POST", "/maps/versions/1/preview", formType, form)
		if code != 200 || !strings.Contains(body, "captured payload of decision") || !strings.Contains(body, "Hopper") {
			t.Errorf("preview of a logged record = %d:\n%.3000s", code, body)
		}
		code, body = e.page(editor, "POST", "/maps/versions/1/preview", formType, form)
		if code != 403 || !strings.Contains(body, "needs the PHI permission") {
			t.Errorf("preview of a logged record without PHI = %d", code)
		}
		actions := e.auditActions()
		if !slices.Contains(actions, "phi@example.org "+logs.AuditViewCapture) {
			t.Errorf("the PHI views are not in the audit trail: %v", actions)
		}
	})
}

// embedded opens the embedded queue name on the test database: the same
// queue the app reads by default.
func (e *testEnv) embedded(name string) *embedded.Queue {
	e.t.Helper()
	q, err := embedded.New(e.db, name, embedded.Options{})
	if err != nil {
		e.t.Fatal(err)
	}
	return q
}

// withLogs passes a configured sync log to the app.
func withLogs(s *logs.Store) envOption {
	return func(e *testEnv, _ *AppConfig) { e.logs = s }
}

// deadLetter sends one notice to q and dead-letters it.
func deadLetter(t testing.TB, q interface {
	Send(context.Context, ...queues.Message) error
	Receive(context.Context, int, time.Duration) ([]*queues.Received, error)
	DeadLetter(context.Context, *queues.Received, string, string) error
}, id string) {
	t.Helper()
	ctx := context.Background()
	m, err := queues.Notice{V: queues.NoticeVersion, Side: queues.SideFHIR, Type: "Patient", ID: id, Version: "1",
		Event: queues.EventUpdated, Origin: "history-poll"}.Message()
	if err != nil {
		t.Fatal(err)
	}
	if err := q.Send(ctx, m); err != nil {
		t.Fatal(err)
	}
	got, err := q.Receive(ctx, 1, 5*time.Second)
	if err != nil || len(got) != 1 {
		t.Fatalf("receiving: %v (%d)", err, len(got))
	}
	if err := q.DeadLetter(ctx, got[0], "target_rejected", "The CRM refused the write (400)."); err != nil {
		t.Fatal(err)
	}
}

func TestDeadLettersRedrive(t *testing.T) {
	storagetest.Each(t, func(t *testing.T, db *gorm.DB) {
		e := newTestEnv(t, db, AppConfig{})
		q := e.embedded("fhir-changes")
		deadLetter(t, q, "p1")
		deadLetter(t, q, "p2")
		viewer := e.as(e.user("viewer@example.org", RoleViewer, false))
		operator := e.as(e.user("operator@example.org", RoleOperator, true))

		code, body := e.page(viewer, "GET", "/deadletters", "", "")
		if code != 200 || !strings.Contains(body, `data-reason="target_rejected"`) || strings.Count(body, "<tr data-key=") != 2 ||
			strings.Contains(body, `name="sel"`) {
			t.Fatalf("viewer's list = %d:\n%.3000s", code, body)
		}
		dls, err := q.PeekDeadLetters(t.Context(), 0, 10)
		if err != nil || len(dls) != 2 {
			t.Fatal(err)
		}
		one := fmt.Sprintf("/deadletters/fhir-changes/%d", dls[0].SequenceNumber)
		code, body = e.page(viewer, "GET", one, "", "")
		if code != 200 || !strings.Contains(body, `id="dl-body-hidden"`) || strings.Contains(body, `"Patient"`) {
			t.Errorf("viewer's inspect = %d, want the body hidden", code)
		}
		code, body = e.page(operator, "GET", one, "", "")
		if code != 200 || !strings.Contains(body, "&#34;Patient&#34;") {
			t.Errorf("PHI operator's inspect = %d, want the body", code)
		}
		code, out := e.apiCall(viewer, "GET", "/api/v1"+one, "")
		if code != 200 || out["body_shown"] != false || out["dead_letter"].(map[string]any)["body"] != nil {
			t.Errorf("viewer's API inspect = %d %v", code, out)
		}

		sel := url.Values{"sel": {fmt.Sprintf("fhir-changes:%d", dls[0].SequenceNumber), fmt.Sprintf("fhir-changes:%d", dls[1].SequenceNumber)}}
		if code, _ := e.page(viewer, "POST", "/deadletters/confirm", formType, sel.Encode()); code != 403 {
			t.Errorf("viewer confirm = %d, want 403", code)
		}
		code, body = e.page(operator, "POST", "/deadletters/confirm", formType, sel.Encode())
		if code != 200 || !strings.Contains(body, "Send <strong>2</strong> dead letter(s)") {
			t.Fatalf("confirm = %d:\n%.2000s", code, body)
		}
		if d, _ := q.Depth(t.Context()); d.DeadLetter != 2 {
			t.Fatalf("the confirmation page changed something: %+v", d)
		}
		if code, _ := e.page(operator, "POST", "/deadletters/redrive", formType, sel.Encode()); code != 400 {
			t.Errorf("redrive without confirmation = %d, want 400", code)
		}
		sel.Set("confirm", "yes")
		req, _ := http.NewRequest("POST", e.url+"/deadletters/redrive", strings.NewReader(sel.Encode()))
		req.Header.Set("Content-Type", formType)
		resp, err := operator.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if loc := resp.Header.Get("Location"); resp.StatusCode != 303 || !strings.Contains(loc, "n=2") {
			t.Fatalf("redrive = %d → %s", resp.StatusCode, loc)
		}
		if d, _ := q.Depth(t.Context()); d.DeadLetter != 0 || d.Active != 2 {
			t.Errorf("after the redrive the queue holds %+v, want 2 active and no dead letters", d)
		}
		actions := e.auditActions()
		for _, want := range []string{"operator@example.org deadletter.view", "operator@example.org deadletter.redrive"} {
			if !slices.Contains(actions, want) {
				t.Errorf("audit trail lacks %q: %v", want, actions)
			}
		}
		if slices.Contains(actions, "viewer@example.org deadletter.view") {
			t.Errorf("a hidden body was recorded as viewed")
		}

		deadLetter(t, q, "p3")
		dls, _ = q.PeekDeadLetters(t.Context(), 0, 10)
		body2, _ := json.Marshal(map[string]any{"queue": "fhir-changes", "sequence_numbers": []int64{dls[0].SequenceNumber}})
		if code, out := e.apiCall(operator, "POST", "/api/v1/deadletters/redrive", string(body2)); code != 200 || out["redriven"] != float64(1) {
			t.Errorf("API redrive = %d %v", code, out)
		}
	})
}

func TestDashboardStats(t *testing.T) {
	storagetest.Each(t, func(t *testing.T, db *gorm.DB) {
		e := newTestEnv(t, db, AppConfig{})
		viewer := e.as(e.user("viewer@example.org", RoleViewer, false))
		writeDecisions(t, e.app.data.logs, e.clock.now().Add(-30*time.Minute), 40)
		deadLetter(t, e.embedded("crm-changes"), "c1")
		polled := e.clock.now().Add(-90 * time.Second)
		if err := db.Exec("INSERT INTO feed_checkpoints (feed, position, updated_at) VALUES (?, ?, ?)", "fhir:Patient", "x", polled).Error; err != nil {
			t.Fatal(err)
		}
		code, out := e.apiCall(viewer, "GET", "/api/v1/dashboard?range=1h", "")
		if code != 200 {
			t.Fatalf("dashboard = %d %v", code, out)
		}
		b, _ := json.Marshal(out)
		for _, want := range []string{`"decisions":40`, `"errors":10`, `"error_rate":0.25`, `"range":"1h"`, `"bucket_ns":60000000000`,
			`{"count":30,"reason":"updated"}`, `"dead_letter":1`, `"feed":"fhir:Patient"`, `"age_seconds":90`, `"map":"patient-contact"`} {
			if !bytes.Contains(b, []byte(want)) {
				t.Errorf("dashboard lacks %s:\n%s", want, b)
			}
		}
		if n := len(out["series"].(map[string]any)["buckets"].([]any)); n != 60 && n != 61 {
			t.Errorf("1 h in %d buckets, want 60 (61 when not aligned to the minute)", n)
		}
		code, body := e.page(viewer, "GET", "/", "", "")
		if code != 200 || !strings.Contains(body, `id="stat-total">40<`) || !strings.Contains(body, "/static/dashboard.js") ||
			!strings.Contains(body, `id="throughput-table"`) || !strings.Contains(body, `<th scope="row"><a href="/logs?map=patient-contact">patient-contact</a></th><td>40</td>`) {
			t.Errorf("dashboard page = %d", code)
		}
		if code, body := e.page(viewer, "GET", "/?range=custom&from=2026-03-02T00:00&to=2026-03-01T00:00", "", ""); code != 400 ||
			!strings.Contains(body, "ends before it starts") || !strings.Contains(body, `id="stat-total">40<`) {
			t.Errorf("a backwards custom range = %d, want 400 with the problem and the last 24 hours", code)
		}
		if code, _ := e.apiCall(viewer, "GET", "/api/v1/dashboard?range=2y", ""); code != 400 {
			t.Errorf("range=2y = %d, want 400", code)
		}
	})
}

func TestParseRange(t *testing.T) {
	t.Parallel()
	now := time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)
	tests := []struct {
		name       string
		query      string
		wantKey    string
		wantBucket time.Duration
		wantSpan   time.Duration
		wantErr    bool
	}{
		{"default", "", "24h", 15 * time.Minute, 24 * time.Hour, false},
		{"hour", "range=1h", "1h", time.Minute, time.Hour, false},
		{"day", "range=24h", "24h", 15 * time.Minute, 24 * time.Hour, false},
		{"week", "range=7d", "7d", 2 * time.Hour, 7 * 24 * time.Hour, false},
		{"custom 3h", "range=custom&from=2026-02-01T00:00&to=2026-02-01T03:00", "custom", 5 * time.Minute, 3 * time.Hour, false},
		{"custom 30d", "range=custom&from=2026-01-01&to=2026-01-31", "custom", 6 * time.Hour, 30 * 24 * time.Hour, false},
		{"custom too long", "range=custom&from=2025-01-01&to=2026-01-31", "24h", 15 * time.Minute, 24 * time.Hour, true},
		{"custom bad date", "range=custom&from=yesterday&to=2026-01-31", "24h", 15 * time.Minute, 24 * time.Hour, true},
		{"unknown", "range=2y", "24h", 15 * time.Minute, 24 * time.Hour, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			q, _ := url.ParseQuery(tt.query)
			r, problem := parseRange(q, now)
			if r.Key != tt.wantKey || r.Bucket != tt.wantBucket || r.To.Sub(r.From) != tt.wantSpan || (problem != "") != tt.wantErr {
				t.Errorf("parseRange(%s) = %+v, %q", tt.query, r, problem)
			}
			if n := r.To.Sub(r.From) / r.Bucket; n > maxBuckets {
				t.Errorf("%d buckets, at most %d", n, maxBuckets)
			}
		})
	}
}

func TestLineDiff(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name string
		x, y string
		want string
	}{
		{"same", "a\nb", "a\nb", ""},
		{"changed line", "a\nb\nc", "a\nB\nc", " a|-b|+B| c"},
		{"added at end", "a", "a\nb", " a|+b"},
		{"folded context", "1\n2\n3\n4\n5\n6\n7\n8\n9", "1\n2\n3\n4\n5\n6\n7\n8\nX", "(5)  6| 7| 8|-9|+X"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var parts []string
			for _, l := range lineDiff(tt.x, tt.y) {
				s := l.Op + l.Text
				if l.Skipped > 0 {
					s = fmt.Sprintf("(%d) %s", l.Skipped, s)
				}
				parts = append(parts, s)
			}
			if got := strings.Join(parts, "|"); got != tt.want {
				t.Errorf("= %q, want %q", got, tt.want)
			}
		})
	}
}

func TestLogSearchByBusinessKey(t *testing.T) {
	storagetest.Each(t, func(t *testing.T, db *gorm.DB) {
		store, err := logs.New(db, logs.Config{KeySecret: "c2VjcmV0LWZvci1idXNpbmVzcy1rZXlz"}, nil)
		if err != nil {
			t.Fatal(err)
		}
		e := newTestEnv(t, db, AppConfig{}, withLogs(store))
		viewer := e.as(e.user("viewer@example.org", RoleViewer, false))
		for i, mrn := range []string{"MRN-1", "MRN-2", "MRN-1"} {
			d := &logs.Decision{Direction: logs.FHIRToCRM, EntityMap: "patient-contact", Source: logs.Ref{Type: "Patient", ID: fmt.Sprint("p", i)},
				BusinessKeys: []logs.BusinessKey{{Name: "mrn", Value: mrn}}, Outcome: logs.OutcomeSkipped, Reason: logs.ReasonUnchanged}
			if err := store.Write(t.Context(), d); err != nil {
				t.Fatal(err)
			}
		}
		code, body := e.page(viewer, "GET", "/logs?key_name=mrn&key_value=MRN-1", "", "")
		if code != 200 || strings.Count(body, "<tr data-id=") != 2 || !strings.Contains(body, `id="timeline-note"`) ||
			!strings.Contains(body, "recorded as keyed hashes") {
			t.Errorf("business key search = %d, %d rows", code, strings.Count(body, "<tr data-id="))
		}
	})
}
