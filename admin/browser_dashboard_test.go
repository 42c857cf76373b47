package admin

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/chromedp/chromedp"

	"github.com/fhirsync/fhirsync/admin/browsertest"
	"github.com/fhirsync/fhirsync/storage/storagetest"
)

// TestBrowserDashboardRanges: in chromium, the range links and the custom
// range change what the dashboard counts and how finely; the chart's
// figures open as a real table that survives the live refresh.
func TestBrowserDashboardRanges(t *testing.T) {
	browser := browsertest.Start(t)
	e := newTestEnv(t, storagetest.Open(t, "sqlite"), AppConfig{})
	e.user("viewer@example.org", RoleViewer, false)
	now := e.clock.now()
	// Eight decisions a second apart, all in one minute of the last hour.
	writeDecisions(t, e.app.data.logs, now.Add(-30*time.Minute).Truncate(time.Minute), 8)
	writeDecisions(t, e.app.data.logs, now.Add(-3*24*time.Hour), 12) // only in the last 7 days
	writeDecisions(t, e.app.data.logs, now.Add(-5*time.Hour), 4)     // in the last 24 hours
	ctx := browser.Session(t, 90*time.Second)

	read := func(want string) (total, heading, current string, rows int) {
		t.Helper()
		err := chromedp.Run(ctx,
			chromedp.WaitVisible(`#ranges a[aria-current="page"]`+want, chromedp.ByQuery),
			chromedp.Text("#stat-total", &total, chromedp.ByID),
			chromedp.Text("#live-heading", &heading, chromedp.ByID),
			chromedp.Text(`#ranges [aria-current="page"]`, &current, chromedp.ByQuery),
			chromedp.Evaluate(`document.querySelectorAll("#throughput-table tbody tr").length`, &rows),
		)
		if err != nil {
			t.Fatal(err)
		}
		return
	}

	if err := chromedp.Run(ctx, signIn(e.url, "viewer@example.org")); err != nil {
		t.Fatal(err)
	}
	total, heading, current, rows := read(`[href="/?range=24h"]`)
	if total != "12" || !strings.HasPrefix(heading, "Last 24 hours") || current != "Last 24 hours" || rows < 96 || rows > 97 {
		t.Errorf("default: total %q, heading %q, current %q, %d rows; want 12 in the last 24 hours in 96 buckets of 15 min", total, heading, current, rows)
	}
	if err := chromedp.Run(ctx, chromedp.Click(`#ranges a[href="/?range=7d"]`, chromedp.ByQuery)); err != nil {
		t.Fatal(err)
	}
	if total, heading, _, rows = read(`[href="/?range=7d"]`); total != "24" || !strings.Contains(heading, "one bar per 2h") || rows < 84 || rows > 85 {
		t.Errorf("7 days: total %q, heading %q, %d rows; want 24 in 84 buckets of 2 h", total, heading, rows)
	}
	if err := chromedp.Run(ctx, chromedp.Click(`#ranges a[href="/?range=1h"]`, chromedp.ByQuery)); err != nil {
		t.Fatal(err)
	}
	if total, heading, _, rows = read(`[href="/?range=1h"]`); total != "8" || !strings.Contains(heading, "one bar per 1m") || rows < 60 || rows > 61 {
		t.Errorf("1 hour: total %q, heading %q, %d rows; want 8 in 60 buckets of 1 min", total, heading, rows)
	}

	// The chart is hidden from assistive technology; its figures are a
	// table behind a summary, with a caption and headers.
	var hidden, summary, caption, tableText string
	var visibleBefore, visibleAfter bool
	err := chromedp.Run(ctx,
		chromedp.AttributeValue("#throughput svg", "aria-hidden", &hidden, nil, chromedp.ByQuery),
		chromedp.Text("#throughput-summary", &summary, chromedp.ByID),
		chromedp.Evaluate(`document.getElementById("throughput-table").checkVisibility()`, &visibleBefore),
		chromedp.Click("#throughput-data summary", chromedp.ByQuery),
		chromedp.WaitVisible("#throughput-table", chromedp.ByID),
		chromedp.Evaluate(`document.getElementById("throughput-table").checkVisibility()`, &visibleAfter),
		chromedp.Text("#throughput-table caption", &caption, chromedp.ByQuery),
		chromedp.Text("#throughput-table", &tableText, chromedp.ByID),
	)
	if err != nil {
		t.Fatal(err)
	}
	if hidden != "true" || !strings.Contains(summary, "8 decisions in") || !strings.Contains(summary, "2 failed") {
		t.Errorf("chart aria-hidden %q, summary %q", hidden, summary)
	}
	if visibleBefore || !visibleAfter || !strings.Contains(caption, "Decisions per 1m by outcome") ||
		!strings.Contains(tableText, "Bucket start") || !strings.Contains(tableText, "dead_lettered") {
		t.Errorf("table visible before %t after %t, caption %q, text %q", visibleBefore, visibleAfter, caption, tableText)
	}
	// The row of the bucket with the decisions reads 8 decisions, 6 sent,
	// 2 failed.
	var cells []string
	bucket := now.Add(-30 * time.Minute).Truncate(time.Minute).Format("2006-01-02 15:04")
	if err := chromedp.Run(ctx, chromedp.Evaluate(fmt.Sprintf(`Array.from(document.querySelectorAll("#throughput-table tbody tr"))
		.filter(tr => tr.querySelector("th").textContent === %q)
		.flatMap(tr => Array.from(tr.children).map(c => c.textContent))`, bucket), &cells)); err != nil {
		t.Fatal(err)
	}
	if strings.Join(cells, "|") != bucket+"|8|6|0|0|2|0|25.0%" {
		t.Errorf("bucket %s row = %q", bucket, cells)
	}

	// New decisions arrive without a reload; the open table stays open.
	writeDecisions(t, e.app.data.logs, now.Add(-time.Minute), 4)
	var after string
	var open bool
	if err := chromedp.Run(ctx,
		chromedp.WaitVisible(`#live[data-refreshed="2"]`, chromedp.ByQuery),
		chromedp.Text("#stat-total", &after, chromedp.ByID),
		chromedp.Evaluate(`document.getElementById("throughput-data").open`, &open),
	); err != nil {
		t.Fatal(err)
	}
	if after != "12" || !open {
		t.Errorf("after the refresh: total %q, table open %t; want 12 and open", after, open)
	}

	// A custom range of three hours five days ago: 5-minute buckets.
	from := now.Add(-3*24*time.Hour - time.Hour).Truncate(time.Minute)
	to := from.Add(3 * time.Hour)
	err = chromedp.Run(ctx,
		setField("r-from", from.Format("2006-01-02T15:04")),
		setField("r-to", to.Format("2006-01-02T15:04")),
		chromedp.Click(`#custom-range button[type="submit"]`, chromedp.ByQuery),
		chromedp.WaitVisible(`#ranges strong[aria-current="page"]`, chromedp.ByQuery),
		chromedp.Text("#stat-total", &total, chromedp.ByID),
		chromedp.Text("#live-heading", &heading, chromedp.ByID),
		chromedp.Evaluate(`document.querySelectorAll("#throughput-table tbody tr").length`, &rows),
	)
	if err != nil {
		t.Fatal(err)
	}
	if total != "12" || !strings.Contains(heading, "one bar per 5m") || rows < 36 || rows > 37 {
		t.Errorf("custom: total %q, heading %q, %d rows; want 12 in 36 buckets of 5 min", total, heading, rows)
	}
}

// TestBrowserAlertRule: in chromium an admin adds an alert rule through
// the form and sees it fire, then resolve, in the history.
func TestBrowserAlertRule(t *testing.T) {
	browser := browsertest.Start(t)
	db := storagetest.Open(t, "sqlite")
	e := newTestEnv(t, db, AppConfig{})
	e.user("admin@example.org", RoleAdmin, false)
	ctx := browser.Session(t, 60*time.Second)
	var rules, done string
	err := chromedp.Run(ctx,
		signIn(e.url, "admin@example.org"),
		chromedp.Click(`nav a[href="/alerts"]`, chromedp.ByQuery),
		chromedp.WaitVisible("#alert-rule-form", chromedp.ByID),
		chromedp.SendKeys("#a-name", "feed-stalled", chromedp.ByID),
		chromedp.SetValue("#a-kind", "feed_stopped", chromedp.ByID),
		setField("a-threshold", "600"),
		chromedp.Click(`#alert-rule-form button[type="submit"]`, chromedp.ByQuery),
		chromedp.WaitVisible("#alerts-done", chromedp.ByID),
		chromedp.Text("#alerts-done", &done, chromedp.ByID),
		chromedp.Text("#alert-rules", &rules, chromedp.ByID),
	)
	if err != nil {
		t.Fatal(err)
	}
	if done != "Alert rule saved." || !strings.Contains(rules, "feed-stalled") || !strings.Contains(rules, "feed stopped") ||
		!strings.Contains(rules, "600 seconds") || !strings.Contains(rules, "admin app by admin@example.org") {
		t.Errorf("after saving: %q, rules %q", done, rules)
	}

	evaluate := func(polled time.Time) string {
		t.Helper()
		if err := db.Exec(`INSERT INTO feed_checkpoints (feed, position, updated_at) VALUES ('fhir-history:Patient', '{}', ?)
			ON CONFLICT (feed) DO UPDATE SET updated_at = excluded.updated_at`, polled).Error; err != nil {
			t.Fatal(err)
		}
		if err := e.app.data.alerts.Evaluate(context.Background()); err != nil {
			t.Fatal(err)
		}
		var hist string
		if err := chromedp.Run(ctx, chromedp.Reload(), chromedp.WaitVisible("#alert-history", chromedp.ByID),
			chromedp.Text("#alert-history tbody", &hist, chromedp.ByQuery)); err != nil {
			t.Fatal(err)
		}
		return hist
	}
	hist := evaluate(time.Now().UTC().Add(-time.Hour))
	var state string
	if err := chromedp.Run(ctx, chromedp.Text(`#alert-rules tr[data-rule="feed-stalled"] td`, &state, chromedp.ByQuery)); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(hist, "firing") || !strings.Contains(hist, "feed fhir-history:Patient last polled 1h") || !strings.HasPrefix(state, "firing since") {
		t.Errorf("after an hour without a poll: history %q, state %q", hist, state)
	}
	hist = evaluate(time.Now().UTC())
	if err := chromedp.Run(ctx, chromedp.Text(`#alert-rules tr[data-rule="feed-stalled"] td`, &state, chromedp.ByQuery)); err != nil {
		t.Fatal(err)
	}
	lines := strings.Split(strings.TrimSpace(hist), "\n")
	if len(lines) != 2 || !strings.Contains(lines[0], "resolved") || !strings.Contains(lines[1], "firing") || state != "ok" {
		t.Errorf("after the poll: history %q, state %q; want resolved above firing, state ok", lines, state)
	}
}
