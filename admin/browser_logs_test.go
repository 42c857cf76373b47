package admin

import (
	"encoding/csv"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/chromedp/chromedp"
	"github.com/chromedp/chromedp/kb"

	"github.com/fhirsync/fhirsync/admin/browsertest"
	"github.com/fhirsync/fhirsync/storage/storagetest"
)

// rowsShown reads the source, target and outcome of the decisions the
// explorer shows.
func rowsShown(rows *[][]string) chromedp.Action {
	return chromedp.Evaluate(`Array.from(document.querySelectorAll("#decisions tr[data-id]"),
		tr => [tr.cells[3].textContent.trim(), tr.cells[4].textContent.trim(), tr.cells[5].textContent.trim()])`, rows)
}

// TestBrowserLogExplorer searches the sync log in chromium as an auditor
// would: a record typed as Type/id in another case, one outcome; the CSV
// export reached by clicking the page's own link holds only the matching
// rows; "Older decisions" keeps the filter; a bad date is a form error.
func TestBrowserLogExplorer(t *testing.T) {
	browser := browsertest.Start(t)
	e := newTestEnv(t, storagetest.Open(t, "sqlite"), AppConfig{})
	e.user("auditor@example.org", RoleAuditor, false)
	// 1200 decisions over p0..p2 / c0..c2, every fourth failed: 100 failed
	// decisions of Patient/p1 and contact c1, two pages.
	writeDecisions(t, e.app.data.logs, e.clock.now().Add(-2*time.Hour), 1200)
	ctx := browser.Session(t, 2*time.Minute)

	var rows [][]string
	err := chromedp.Run(ctx,
		signIn(e.url, "auditor@example.org"),
		chromedp.Navigate(e.url+"/logs"),
		chromedp.WaitVisible("#log-filters", chromedp.ByID),
		chromedp.SendKeys("#f-record", "patient/P1", chromedp.ByID),
		chromedp.SetValue("#f-outcome", "failed", chromedp.ByID),
		chromedp.Click("#search", chromedp.ByID),
		chromedp.WaitVisible("#timeline-note", chromedp.ByID),
		rowsShown(&rows),
	)
	if err != nil {
		t.Fatal(err)
	}
	if len(rows) != logsPageSize {
		t.Fatalf("the search shows %d decisions, want a full page of %d", len(rows), logsPageSize)
	}
	for _, r := range rows {
		if r[0] != "Patient/p1" || r[1] != "contact/c1" || r[2] != "failed" {
			t.Fatalf("the search shows %v, not a failed decision of Patient/p1", r)
		}
	}

	t.Run("export through the page's link", func(t *testing.T) {
		path, err := browsertest.Download(ctx, t.TempDir(), chromedp.Click("#export-csv", chromedp.ByID))
		if err != nil {
			t.Fatal(err)
		}
		f, err := os.Open(path)
		if err != nil {
			t.Fatal(err)
		}
		defer f.Close()
		recs, err := csv.NewReader(f).ReadAll()
		if err != nil {
			t.Fatal(err)
		}
		if len(recs) != 1+100 {
			t.Errorf("the export holds %d decisions, want the 100 that match", len(recs)-1)
		}
		for _, r := range recs[1:] { // source_type, source_id, outcome
			if r[7] != "Patient" || r[8] != "p1" || r[14] != "failed" {
				t.Fatalf("the export holds %v, not a failed decision of Patient/p1", r)
			}
		}
	})

	t.Run("paging keeps the filter", func(t *testing.T) {
		var search, record, outcome string
		var older bool
		err := chromedp.Run(ctx,
			chromedp.Click("#next-page", chromedp.ByID),
			chromedp.WaitVisible("#first-page", chromedp.ByID),
			chromedp.Evaluate(`location.search`, &search),
			chromedp.Value("#f-record", &record, chromedp.ByID),
			chromedp.Value("#f-outcome", &outcome, chromedp.ByID),
			chromedp.Evaluate(`!!document.getElementById("next-page")`, &older),
			rowsShown(&rows),
		)
		if err != nil {
			t.Fatal(err)
		}
		if !strings.Contains(search, "outcome=failed") || record != "patient/P1" || outcome != "failed" {
			t.Errorf("the second page is at %q with record %q, outcome %q", search, record, outcome)
		}
		if len(rows) != 100-logsPageSize || older {
			t.Errorf("the second page shows %d decisions (more: %t), want the last %d", len(rows), older, 100-logsPageSize)
		}
		for _, r := range rows {
			if r[0] != "Patient/p1" || r[2] != "failed" {
				t.Fatalf("the second page shows %v", r)
			}
		}
	})

	t.Run("a record link opens its timeline with the linked record", func(t *testing.T) {
		var note string
		err := chromedp.Run(ctx,
			chromedp.Click(`#decisions tr[data-id] a.record`, chromedp.ByQuery),
			chromedp.WaitVisible("#timeline-note", chromedp.ByID),
			chromedp.Text("#timeline-note", &note, chromedp.ByID),
			rowsShown(&rows),
		)
		if err != nil {
			t.Fatal(err)
		}
		if !strings.Contains(note, "Patient/p1") || len(rows) != logsPageSize {
			t.Errorf("timeline note %q with %d rows", note, len(rows))
		}
	})

	t.Run("a bad date is a form error", func(t *testing.T) {
		var summary, problem, invalid, value string
		err := chromedp.Run(ctx,
			chromedp.Navigate(e.url+"/logs?record=p1"),
			chromedp.WaitVisible("#f-from", chromedp.ByID),
			chromedp.SendKeys("#f-from", "31/12/2026", chromedp.ByID),
			chromedp.Click("#search", chromedp.ByID),
			chromedp.WaitVisible("#filter-errors", chromedp.ByID),
			chromedp.Text("#filter-errors", &summary, chromedp.ByID),
			chromedp.Text("#f-from-error", &problem, chromedp.ByID),
			chromedp.AttributeValue("#f-from", "aria-invalid", &invalid, nil, chromedp.ByID),
			chromedp.Value("#f-record", &value, chromedp.ByID),
			// The summary's link takes the keyboard to the field.
			chromedp.Click("#filter-errors a", chromedp.ByQuery),
		)
		if err != nil {
			t.Fatal(err)
		}
		if !strings.Contains(summary, "From (UTC)") || !strings.Contains(problem, `"31/12/2026" is not a date`) ||
			invalid != "true" || value != "p1" {
			t.Errorf("form error: summary %q, problem %q, aria-invalid %q, record kept %q", summary, problem, invalid, value)
		}
	})
}

// TestBrowserShell checks what every page shares: the Skip to content
// link, the 404 page, the favicon, and navigation that fits a phone.
func TestBrowserShell(t *testing.T) {
	browser := browsertest.Start(t)
	e := newTestEnv(t, storagetest.Open(t, "sqlite"), AppConfig{})
	e.user("admin@example.org", RoleAdmin, false)
	writeDecisions(t, e.app.data.logs, e.clock.now().Add(-time.Hour), 5)
	ctx := browser.Session(t, time.Minute)
	if err := chromedp.Run(ctx, signIn(e.url, "admin@example.org")); err != nil {
		t.Fatal(err)
	}

	t.Run("skip link", func(t *testing.T) {
		var first, visible, after string
		err := chromedp.Run(ctx,
			chromedp.Navigate(e.url+"/logs"),
			chromedp.WaitVisible("#decisions", chromedp.ByID),
			chromedp.KeyEvent(kb.Tab),
			chromedp.Evaluate(`document.activeElement.textContent`, &first),
			chromedp.Evaluate(`String(document.activeElement.getBoundingClientRect().top >= 0)`, &visible),
			chromedp.KeyEvent(kb.Enter),
			poll(`document.activeElement.id === "content"`),
			chromedp.Evaluate(`document.activeElement.id`, &after),
		)
		if err != nil {
			t.Fatal(err)
		}
		if first != "Skip to content" || visible != "true" || after != "content" {
			t.Errorf("first Tab reaches %q (on screen %s), Enter moves focus to #%s", first, visible, after)
		}
	})

	t.Run("unknown page", func(t *testing.T) {
		resp, err := chromedp.RunResponse(ctx, chromedp.Navigate(e.url+"/reports/none"))
		if err != nil {
			t.Fatal(err)
		}
		var msg, nav, color string
		err = chromedp.Run(ctx,
			chromedp.Text("#error-message", &msg, chromedp.ByID),
			chromedp.Text(`nav[aria-label="Main"]`, &nav, chromedp.ByQuery),
			chromedp.Evaluate(`getComputedStyle(document.querySelector('.brand')).color`, &color),
		)
		if err != nil {
			t.Fatal(err)
		}
		if resp.Status != 404 || !strings.Contains(msg, "no page at this address") || !strings.Contains(nav, "Sync logs") || color != "rgb(11, 92, 173)" {
			t.Errorf("unknown page: %d %q, nav %q, brand color %q; want the app's own 404 page", resp.Status, msg, nav, color)
		}
	})

	t.Run("favicon", func(t *testing.T) {
		var ok bool
		err := chromedp.Run(ctx, chromedp.Evaluate(`fetch(document.querySelector('link[rel=icon]').href)
			.then(r => r.ok && r.headers.get("Content-Type") === "image/svg+xml")`, &ok, awaitPromise))
		if err != nil || !ok {
			t.Errorf("the favicon does not load (%v)", err)
		}
	})

	t.Run("navigation on a phone", func(t *testing.T) {
		var overflow []string
		var width int64
		err := chromedp.Run(ctx,
			browsertest.Viewport(browsertest.PhoneWidth, 800, true),
			chromedp.Navigate(e.url+"/logs"),
			chromedp.WaitVisible("#decisions", chromedp.ByID),
			chromedp.Evaluate(`Array.from(document.querySelectorAll("header a, header button"))
				.filter(a => { const r = a.getBoundingClientRect(); return r.left < 0 || r.right > innerWidth || r.width === 0; })
				.map(a => a.textContent)`, &overflow),
			chromedp.Evaluate(`document.scrollingElement.scrollWidth`, &width),
		)
		if err != nil {
			t.Fatal(err)
		}
		if len(overflow) > 0 || width > browsertest.PhoneWidth {
			t.Errorf("at %d px the page is %d px wide and these header controls are off screen: %v", browsertest.PhoneWidth, width, overflow)
		}
		// The table scrolls in its own box, which the keyboard can reach.
		var tabindex string
		var ok bool
		if err := chromedp.Run(ctx, chromedp.AttributeValue(`.table-scroll`, "tabindex", &tabindex, &ok, chromedp.ByQuery)); err != nil {
			t.Fatal(err)
		}
		if !ok || tabindex != "0" {
			t.Errorf("the decisions table's scrolling box is not focusable at %d px", browsertest.PhoneWidth)
		}
	})
}
