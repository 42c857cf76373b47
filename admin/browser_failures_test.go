package admin

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/chromedp/chromedp"
	"gorm.io/gorm"

	"github.com/fhirsync/fhirsync/admin/browsertest"
	"github.com/fhirsync/fhirsync/logs"
	"github.com/fhirsync/fhirsync/storage/storagetest"
)

// seedFailures writes what the failures page groups: two patients the
// CRM's plug-in refused (its message quoting the name, kept whole only in
// the capture), one encounter waiting for its patient, and a patient that
// failed and then went through.
func seedFailures(t *testing.T, store *logs.Store) {
	t.Helper()
	at := time.Date(2026, 12, 1, 9, 0, 0, 0, time.UTC)
	var n int
	dec := func(src string, o logs.Outcome, r logs.ReasonCode, m string, te *logs.TargetError, full string) *logs.Decision {
		n++
		at = at.Add(time.Minute)
		d := &logs.Decision{Time: at, MessageID: fmt.Sprint("msg-", n), Direction: logs.FHIRToCRM, EntityMap: m,
			Source: logs.Ref{Type: "Patient", ID: src}, Outcome: o, Reason: r, Message: "Failed writing the target record.",
			Attempts: []logs.Attempt{{At: at.Add(-time.Minute), ErrorClass: "http_400", TargetError: te}, {At: at, ErrorClass: "http_400", TargetError: te}}}
		if m == "encounter" {
			d.Source.Type = "Encounter"
		}
		if full != "" {
			d.Snapshots = &logs.Snapshots{Error: []byte(full)}
		}
		return d
	}
	plugin := func(name string) (*logs.TargetError, string) {
		return &logs.TargetError{Status: 400, Code: "0x80040265", Message: "Contact '…' (MRN …) is a duplicate of an existing patient; merge them first."},
			"Contact '" + name + "' (MRN 55501234) is a duplicate of an existing patient; merge them first."
	}
	te1, full1 := plugin("Annabelle Canary")
	te2, full2 := plugin("Bertram Quill")
	ds := []*logs.Decision{
		dec("p1", logs.OutcomeDeadLettered, logs.ReasonTargetRejected, "patient-contact", te1, full1),
		dec("p2", logs.OutcomeDeadLettered, logs.ReasonTargetRejected, "patient-contact", te2, full2),
		dec("e1", logs.OutcomeFailed, logs.ReasonMissingReference, "encounter", nil, ""),
		dec("p3", logs.OutcomeFailed, logs.ReasonTargetRejected, "patient-contact", te1, full1),
	}
	sent := dec("p3", logs.OutcomeSent, logs.ReasonUpdated, "patient-contact", nil, "")
	sent.Attempts = nil
	ds = append(ds, sent)
	for _, d := range ds {
		if err := store.Write(t.Context(), d); err != nil {
			t.Fatal(err)
		}
	}
}

// TestBrowserFailingNow opens the failures page in chromium as a viewer
// and as a user with the PHI permission: groups by reason and map with
// their counts, the CRM's own code, the message's values hidden without
// the PHI permission and shown, audited, with it.
func TestBrowserFailingNow(t *testing.T) {
	browser := browsertest.Start(t)
	db := storagetest.Open(t, "sqlite")
	store, err := logs.New(db, logs.Config{Capture: logs.CaptureConfig{Enabled: true, KeyID: "k1", Key: captureKey}}, nil)
	if err != nil {
		t.Fatal(err)
	}
	e := newTestEnv(t, db, AppConfig{}, withLogs(store))
	e.user("viewer@example.org", RoleViewer, false)
	e.user("phi@example.org", RoleOperator, true)
	seedFailures(t, store)

	type group struct{ Reason, Map, Records, Dead string }
	read := func(t *testing.T, email string) (nav, summary string, groups []group, codes, messages, notes []string) {
		ctx := browser.Session(t, 60*time.Second)
		err := chromedp.Run(ctx, signIn(e.url, email),
			chromedp.Text("nav", &nav, chromedp.ByQuery),
			// The page is reached through the navigation.
			chromedp.Click(`nav a[href="/failures"]`, chromedp.ByQuery),
			chromedp.WaitVisible("#failure-groups", chromedp.ByID),
			chromedp.Text("#failures-summary", &summary, chromedp.ByID),
			chromedp.Evaluate(`[...document.querySelectorAll('#failure-groups tbody tr')].map(r => ({
				Reason: r.cells[0].innerText.trim(), Map: r.cells[1].innerText.trim(),
				Records: r.cells[3].innerText.trim(), Dead: r.cells[4].innerText.trim()}))`, &groups),
			chromedp.Evaluate(`[...document.querySelectorAll('.failure-detail[data-reason="target_rejected"] .target-code')].map(e => e.innerText)`, &codes),
			chromedp.Evaluate(`[...document.querySelectorAll('.failure-detail[data-reason="target_rejected"] .target-message')].map(e => e.className + ': ' + e.innerText)`, &messages),
			chromedp.Evaluate(`[...document.querySelectorAll('.failure-detail .phi-note')].map(e => e.innerText)`, &notes),
		)
		if err != nil {
			t.Fatal(err)
		}
		return
	}

	t.Run("viewer without the PHI permission", func(t *testing.T) {
		nav, summary, groups, codes, messages, notes := read(t, "viewer@example.org")
		if !strings.Contains(nav, "Failing now") {
			t.Errorf("navigation %q lacks Failing now", nav)
		}
		if !strings.Contains(summary, "3 records failing now, in 2 groups") {
			t.Errorf("summary = %q, want 3 records in 2 groups (p3 was sent after it failed)", summary)
		}
		want := []group{{"target_rejected", "patient-contact", "2", "2"}, {"missing_reference", "encounter", "1", "0"}}
		if !slices.Equal(groups, want) {
			t.Errorf("groups = %+v, want %+v", groups, want)
		}
		if !slices.Equal(codes, []string{"0x80040265"}) {
			t.Errorf("codes shown = %q, want the CRM's 0x80040265", codes)
		}
		if len(messages) != 1 || !strings.HasPrefix(messages[0], "target-message redacted: Contact '…' (MRN …) is a duplicate") {
			t.Errorf("messages = %q, want the redacted CRM message", messages)
		}
		var html string
		if err := chromedp.Run(browser.Session(t, 30*time.Second), signIn(e.url, "viewer@example.org"),
			chromedp.Navigate(e.url+"/failures"), chromedp.OuterHTML("html", &html, chromedp.ByQuery)); err != nil {
			t.Fatal(err)
		}
		for _, v := range []string{"Annabelle", "Bertram", "55501234"} {
			if strings.Contains(html, v) {
				t.Errorf("the page shows %q to a user without the PHI permission", v)
			}
		}
		if len(notes) == 0 || !strings.Contains(notes[0], "needs the PHI permission") {
			t.Errorf("notes = %q, want one saying the values need the PHI permission", notes)
		}
		// At desktop and phone width (FHIRSYNC_SCREENSHOTS keeps the
		// pictures, e.g. for docs/screenshots): on a phone the page does
		// not scroll sideways.
		dir := os.Getenv("FHIRSYNC_SCREENSHOTS")
		if dir == "" {
			dir = t.TempDir()
		}
		shots := browser.Session(t, 60*time.Second)
		if err := chromedp.Run(shots, signIn(e.url, "viewer@example.org"), chromedp.Navigate(e.url+"/failures"),
			chromedp.WaitVisible("#failure-groups", chromedp.ByID)); err != nil {
			t.Fatal(err)
		}
		if err := browsertest.Screenshot(shots, filepath.Join(dir, "failures.png")); err != nil {
			t.Fatal(err)
		}
		if err := chromedp.Run(shots, browsertest.Viewport(browsertest.PhoneWidth, 800, true), chromedp.Reload(),
			chromedp.WaitVisible("#failure-groups", chromedp.ByID)); err != nil {
			t.Fatal(err)
		}
		if w, err := browsertest.ScrollWidth(shots); err != nil || w > browsertest.PhoneWidth {
			t.Errorf("/failures at %d px is %d px wide (%v): it scrolls sideways", browsertest.PhoneWidth, w, err)
		}
		if err := browsertest.ViewportScreenshot(shots, filepath.Join(dir, "failures-phone.png")); err != nil {
			t.Fatal(err)
		}

		// The decision behind the code shows the CRM's answer too.
		var answer, attempts string
		ctx := browser.Session(t, 60*time.Second)
		if err := chromedp.Run(ctx, signIn(e.url, "viewer@example.org"), chromedp.Navigate(e.url+"/failures"),
			chromedp.WaitVisible(".target-error a", chromedp.ByQuery)); err != nil {
			t.Fatal(err)
		}
		if _, err := chromedp.RunResponse(ctx, chromedp.Click(".failure-detail[data-reason=target_rejected] .target-error a", chromedp.ByQuery)); err != nil {
			t.Fatal(err)
		}
		if err := chromedp.Run(ctx, chromedp.Text("#target-error", &answer, chromedp.ByID),
			chromedp.Text("#decision-detail", &attempts, chromedp.ByID)); err != nil {
			t.Fatal(err)
		}
		if !strings.Contains(answer, "0x80040265 (HTTP 400) Contact '…' (MRN …) is a duplicate") || strings.Contains(attempts, "Bertram") {
			t.Errorf("decision page: target's answer %q", answer)
		}
		if strings.Count(attempts, "http_400 0x80040265") != 2 {
			t.Errorf("decision page attempts do not show the CRM's code on each: %q", attempts)
		}
	})

	t.Run("operator with the PHI permission", func(t *testing.T) {
		_, _, groups, codes, messages, _ := read(t, "phi@example.org")
		if len(groups) != 2 || !slices.Equal(codes, []string{"0x80040265"}) {
			t.Errorf("groups %+v, codes %q", groups, codes)
		}
		// p3 was sent after its refusal, so p2's is the newest failing one.
		if len(messages) != 1 || messages[0] != "target-message full: Contact 'Bertram Quill' (MRN 55501234) is a duplicate of an existing patient; merge them first." {
			t.Errorf("messages = %q, want the CRM's whole message", messages)
		}
		// The decision's captured payload holds the whole message.
		var whole string
		ctx := browser.Session(t, 60*time.Second)
		if err := chromedp.Run(ctx, signIn(e.url, "phi@example.org"), chromedp.Navigate(e.url+"/failures"),
			chromedp.WaitVisible(".target-error a", chromedp.ByQuery)); err != nil {
			t.Fatal(err)
		}
		if _, err := chromedp.RunResponse(ctx, chromedp.Click(".failure-detail[data-reason=target_rejected] .target-error a", chromedp.ByQuery)); err != nil {
			t.Fatal(err)
		}
		if _, err := chromedp.RunResponse(ctx, chromedp.Click("#show-capture", chromedp.ByID)); err != nil {
			t.Fatal(err)
		}
		if err := chromedp.Run(ctx, chromedp.Text("#capture-error", &whole, chromedp.ByID)); err != nil {
			t.Fatal(err)
		}
		if !strings.Contains(whole, "Contact 'Bertram Quill' (MRN 55501234)") {
			t.Errorf("captured payload page shows the error as %q", whole)
		}
		if !slices.Contains(e.auditActions(), "phi@example.org "+logs.AuditViewCapture) {
			t.Errorf("opening the whole message was not audited: %q", e.auditActions())
		}
	})

	t.Run("filter by reason", func(t *testing.T) {
		ctx := browser.Session(t, 60*time.Second)
		var rows int
		var path string
		err := chromedp.Run(ctx, signIn(e.url, "viewer@example.org"),
			chromedp.Navigate(e.url+"/failures"),
			chromedp.WaitVisible("#failure-filters", chromedp.ByID),
			chromedp.SetValue(`#failure-filters select[name="reason"]`, "missing_reference", chromedp.ByQuery),
		)
		if err != nil {
			t.Fatal(err)
		}
		// The form's GET loads the filtered page.
		if _, err := chromedp.RunResponse(ctx, chromedp.Click("#filter-failures", chromedp.ByID)); err != nil {
			t.Fatal(err)
		}
		err = chromedp.Run(ctx,
			chromedp.WaitVisible(`#failure-groups`, chromedp.ByID),
			chromedp.Evaluate(`location.search`, &path),
			chromedp.Evaluate(`document.querySelectorAll('#failure-groups tbody tr').length`, &rows),
		)
		if err != nil {
			t.Fatal(err)
		}
		if rows != 1 || !strings.Contains(path, "reason=missing_reference") {
			t.Errorf("filtered to missing_reference: %d groups at %q, want 1", rows, path)
		}
	})
}

// TestAPIFailures: the JSON API gives the same groups, with the messages
// redacted whatever the caller's permissions.
func TestAPIFailures(t *testing.T) {
	storagetest.Each(t, func(t *testing.T, db *gorm.DB) {
		store, err := logs.New(db, logs.Config{Capture: logs.CaptureConfig{Enabled: true, KeyID: "k1", Key: captureKey}}, nil)
		if err != nil {
			t.Fatal(err)
		}
		e := newTestEnv(t, db, AppConfig{}, withLogs(store))
		phi := e.as(e.user("phi@example.org", RoleOperator, true))
		seedFailures(t, store)
		code, body := e.page(phi, "GET", "/api/v1/failures", "", "")
		var got logs.Failures
		if err := json.Unmarshal([]byte(body), &got); err != nil || code != 200 {
			t.Fatalf("GET /api/v1/failures = %d %v:\n%s", code, err, body)
		}
		if got.Records != 3 || len(got.Groups) != 2 || got.Groups[0].Errors[0].Code != "0x80040265" || got.Groups[0].Records != 2 {
			t.Errorf("failures = %+v", got)
		}
		for _, v := range []string{"Bertram", "Annabelle", "55501234"} {
			if strings.Contains(body, v) {
				t.Errorf("the API answer carries %q", v)
			}
		}
		if code, _ := e.page(phi, "GET", "/api/v1/failures?reason=nonsense", "", ""); code != 400 {
			t.Errorf("unknown reason = %d, want 400", code)
		}
		code, body = e.page(phi, "GET", "/api/v1/failures?reason=missing_reference", "", "")
		got = logs.Failures{}
		if err := json.Unmarshal([]byte(body), &got); err != nil || code != 200 || len(got.Groups) != 1 || got.Groups[0].EntityMap != "encounter" {
			t.Errorf("filtered = %d %v %s", code, err, body)
		}
	})
}
