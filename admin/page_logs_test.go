package admin

import (
	"encoding/csv"
	"html"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/fhirsync/fhirsync/logs"
	"github.com/fhirsync/fhirsync/storage/storagetest"
)

// hrefOf returns the unescaped href of the element with id in body.
func hrefOf(t *testing.T, body, id string) string {
	t.Helper()
	m := regexp.MustCompile(`id="` + regexp.QuoteMeta(id) + `" href="([^"]*)"|href="([^"]*)" id="` + regexp.QuoteMeta(id) + `"`).FindStringSubmatch(body)
	if m == nil {
		t.Fatalf("no link #%s on the page", id)
	}
	return html.UnescapeString(m[1] + m[2])
}

// TestLogExplorerLinksKeepTheFilter follows the export and paging links
// the explorer renders, as a browser would, and checks each keeps the
// filter: an export of one record's failures holds only those rows.
func TestLogExplorerLinksKeepTheFilter(t *testing.T) {
	e := newTestEnv(t, storagetest.Open(t, "sqlite"), AppConfig{})
	auditor := e.as(e.user("auditor@example.org", RoleAuditor, false))
	// 1200 decisions: p0..p2 / c0..c2, every fourth failed; p1 has 100
	// failed, two pages.
	writeDecisions(t, e.app.data.logs, e.clock.now().Add(-2*time.Hour), 1200)

	code, body := e.page(auditor, "GET", "/logs?record=Patient/P1&outcome=failed", "", "")
	if code != 200 {
		t.Fatalf("filtered explorer = %d", code)
	}
	if n := strings.Count(body, "<tr data-id="); n != logsPageSize {
		t.Fatalf("first page has %d rows, want %d", n, logsPageSize)
	}
	for _, format := range []string{"csv", "ndjson"} {
		code, text := e.page(auditor, "GET", hrefOf(t, body, "export-"+format), "", "")
		if code != 200 {
			t.Fatalf("%s export through the page's link = %d", format, code)
		}
		var n int
		if format == "csv" {
			rows, err := csv.NewReader(strings.NewReader(text)).ReadAll()
			if err != nil {
				t.Fatal(err)
			}
			for _, r := range rows[1:] { // source_id, target_id, outcome
				if r[8] != "p1" || r[11] != "c1" || r[14] != "failed" {
					t.Errorf("exported row %v is not a failed decision of p1", r)
				}
			}
			n = len(rows) - 1
		} else {
			n = strings.Count(text, "\n")
			if strings.Count(text, `"outcome":"failed"`) != n {
				t.Errorf("the NDJSON export holds decisions that did not fail")
			}
		}
		if n != 100 {
			t.Errorf("%s export holds %d decisions, want the 100 matching ones", format, n)
		}
	}
	// Paging keeps the filter: every page shows only matching rows, until
	// the last, and "Newest" returns to the filtered first page.
	next, total := hrefOf(t, body, "next-page"), logsPageSize
	if !strings.Contains(next, "outcome=failed") || !strings.Contains(next, "record=Patient%2FP1") {
		t.Fatalf("Older decisions link %q drops the filter", next)
	}
	code, body = e.page(auditor, "GET", next, "", "")
	if n := strings.Count(body, "<tr data-id="); code != 200 || n != logsPageSize {
		t.Fatalf("second page = %d with %d rows", code, n)
	}
	total += strings.Count(body, "<tr data-id=")
	for strings.Contains(body, `id="next-page"`) {
		code, body = e.page(auditor, "GET", hrefOf(t, body, "next-page"), "", "")
		if code != 200 {
			t.Fatalf("next page = %d", code)
		}
		total += strings.Count(body, "<tr data-id=")
	}
	if total != 100 {
		t.Errorf("paging through the filter showed %d decisions, want 100", total)
	}
	if first := hrefOf(t, body, "first-page"); first != "/logs?outcome=failed&record=Patient%2FP1" {
		t.Errorf("Newest link = %q", first)
	}
	if strings.Count(body, `status-failed`) != strings.Count(body, "<tr data-id=") {
		t.Errorf("a later page shows decisions that did not fail")
	}
}

func TestLogRecordSearch(t *testing.T) {
	e := newTestEnv(t, storagetest.Open(t, "sqlite"), AppConfig{})
	viewer := e.as(e.user("viewer@example.org", RoleViewer, false))
	at := e.clock.now().Add(-time.Hour)
	write := func(src, tgt logs.Ref, dir logs.Direction) {
		t.Helper()
		err := e.app.data.logs.Write(t.Context(), &logs.Decision{Time: at, Direction: dir, EntityMap: "patient-contact",
			Source: src, Target: tgt, Outcome: logs.OutcomeSent, Reason: logs.ReasonUpdated})
		if err != nil {
			t.Fatal(err)
		}
		at = at.Add(time.Second)
	}
	guid := "6f1c2d3e-0000-4000-8000-00000000abcd"
	write(logs.Ref{Type: "Patient", ID: "123"}, logs.Ref{Type: "contact", ID: guid}, logs.FHIRToCRM)
	write(logs.Ref{Type: "contact", ID: guid}, logs.Ref{Type: "Patient", ID: "123"}, logs.CRMToFHIR)
	write(logs.Ref{Type: "Patient", ID: "1234"}, logs.Ref{Type: "contact", ID: "other"}, logs.FHIRToCRM)
	write(logs.Ref{Type: "Observation", ID: "123"}, logs.Ref{}, logs.FHIRToCRM)
	// Each side has a decision that does not name the other: the linked
	// record's timeline takes it in.
	write(logs.Ref{Type: "contact", ID: guid}, logs.Ref{}, logs.CRMToFHIR)
	write(logs.Ref{Type: "Patient", ID: "123"}, logs.Ref{}, logs.FHIRToCRM)

	tests := []struct {
		name, query string
		want        int
	}{
		{"Type/id with the linked contact", "record=Patient/123&match=exact", 4},
		{"Type/id ignores the type's case", "record=patient/123&match=exact", 4},
		{"FHIR URL with history", "record=" + "https://fhir.example.org/Patient/123/_history/7&match=exact", 4},
		{"prefix takes longer ids", "record=Patient/12", 4},
		{"prefix ignores case", "record=" + strings.ToUpper(guid[:8]), 3},
		{"the whole GUID in upper case with its linked Patient", "record=contact/" + strings.ToUpper(guid), 4},
		{"the contact's timeline with its linked Patient", "record=" + guid + "&match=exact", 4},
		{"an exact match is exact", "record=" + strings.ToUpper(guid) + "&match=exact", 0},
		{"an id alone spans types", "record=123&match=exact", 5},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			code, body := e.page(viewer, "GET", "/logs?"+strings.ReplaceAll(tt.query, "/", "%2F"), "", "")
			if n := strings.Count(body, "<tr data-id="); code != 200 || n != tt.want {
				t.Errorf("%s = %d with %d rows, want %d", tt.query, code, n, tt.want)
			}
		})
	}

	t.Run("a bad date is a form error on the page", func(t *testing.T) {
		code, body := e.page(viewer, "GET", "/logs?record=p1&from=yesterday&to=2026-13-40", "", "")
		if code != 400 {
			t.Errorf("bad date = %d, want 400", code)
		}
		for _, want := range []string{`id="log-filters"`, `id="filter-errors"`, `aria-invalid="true" aria-describedby="f-from-error"`,
			`id="f-to-error"`, "&#34;yesterday&#34; is not a date and time", `value="p1"`, `<a href="#f-from">From (UTC)</a>`} {
			if !strings.Contains(body, want) {
				t.Errorf("the page lacks %s", want)
			}
		}
		if strings.Contains(body, `id="decisions"`) {
			t.Error("the page shows results for a filter it could not read")
		}
		code, body = e.page(viewer, "GET", "/logs?from=2026-01-02&to=2026-01-01", "", "")
		if code != 400 || !strings.Contains(body, "must be later than From") {
			t.Errorf("a reversed range = %d without the problem named", code)
		}
	})
}

func TestNotFoundPage(t *testing.T) {
	e := newTestEnv(t, storagetest.Open(t, "sqlite"), AppConfig{})
	viewer := e.as(e.user("viewer@example.org", RoleViewer, false))
	code, body := e.page(viewer, "GET", "/no/such/page", "", "")
	if code != 404 || !strings.Contains(body, `id="error-message"`) || !strings.Contains(body, `aria-label="Main"`) ||
		!strings.Contains(body, "Skip to content") {
		t.Errorf("unknown page = %d, want the app's 404 page with the navigation:\n%.2000s", code, body)
	}
	if code, body := e.page(e.client(), "POST", "/no/such/page", formType, ""); code != 404 || !strings.Contains(body, `id="error-message"`) {
		t.Errorf("POST to an unknown page = %d", code)
	}
	code, out := e.apiCall(viewer, "GET", "/api/v1/nothing", "")
	if code != 404 || out["error"] == nil {
		t.Errorf("unknown API path = %d %v, want a JSON 404", code, out)
	}
	resp := e.get(e.client(), "/favicon.ico")
	resp.Body.Close()
	if resp.StatusCode != 301 || resp.Header.Get("Location") != "/static/favicon.svg" {
		t.Errorf("/favicon.ico = %d to %q, want a redirect to the SVG icon", resp.StatusCode, resp.Header.Get("Location"))
	}
	resp = e.get(e.client(), "/static/favicon.svg")
	resp.Body.Close()
	if resp.StatusCode != 200 || resp.Header.Get("Content-Type") != "image/svg+xml" {
		t.Errorf("favicon = %d %s, want the SVG icon", resp.StatusCode, resp.Header.Get("Content-Type"))
	}
}
