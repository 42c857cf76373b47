package admin

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/chromedp/chromedp"

	"github.com/fhirsync/fhirsync/admin/browsertest"
	"github.com/fhirsync/fhirsync/logs"
	"github.com/fhirsync/fhirsync/queues"
	"github.com/fhirsync/fhirsync/queues/embedded"
	"github.com/fhirsync/fhirsync/storage/storagetest"
)

// clicks counts the clicks a flow takes, so a test can hold the UI to
// "a few clicks".
type clicks int

func (c *clicks) click(sel string) chromedp.Action {
	*c++
	return chromedp.Click(sel, chromedp.ByQuery)
}

// TestBrowserReplayByFilter: an operator replays the records whose last
// day's decisions failed, in chromium. The dry run lists exactly those
// records with the map that takes them and their last decision, and
// sends nothing; confirming sends one notice per record; the audit trail
// names the operator for both.
func TestBrowserReplayByFilter(t *testing.T) {
	browser := browsertest.Start(t)
	axe := browsertest.LoadAxe(t)
	e := newTestEnv(t, storagetest.Open(t, "sqlite"), AppConfig{})
	e.user("operator@example.org", RoleOperator, false)
	e.user("admin@example.org", RoleAdmin, false)
	if _, err := e.app.data.maps.Publish(t.Context(), starterDraft(t, e), "test", "starter"); err != nil {
		t.Fatal(err)
	}
	now := time.Now().UTC()
	var ds []*logs.Decision
	failed := func(id string, at time.Time) *logs.Decision {
		return &logs.Decision{Time: at, Direction: logs.FHIRToCRM, EntityMap: "patient-contact", Source: logs.Ref{Type: "Patient", ID: id},
			Outcome: logs.OutcomeFailed, Reason: logs.ReasonTargetRejected, Message: "The CRM refused the write."}
	}
	for i, id := range []string{"p1", "p2", "p3"} {
		ds = append(ds, failed(id, now.Add(-time.Duration(i+1)*time.Hour)))
	}
	ds = append(ds, failed("p2", now.Add(-5*time.Hour)), // twice: replayed once
		failed("p-old", now.Add(-72*time.Hour)), // outside the range
		&logs.Decision{Time: now.Add(-time.Hour), Direction: logs.FHIRToCRM, EntityMap: "patient-contact", Source: logs.Ref{Type: "Patient", ID: "p-ok"},
			Outcome: logs.OutcomeSent, Reason: "updated", Message: "Updated."})
	if err := e.app.data.logs.WriteBatch(t.Context(), ds); err != nil {
		t.Fatal(err)
	}
	q := e.embedded("fhir-changes")

	ctx := browser.Session(t, 90*time.Second)
	var c clicks
	from := now.Add(-24 * time.Hour).Format("2006-01-02T15:04")
	var summary, plan string
	var rows int
	err := chromedp.Run(ctx,
		signIn(e.url, "operator@example.org"),
		chromedp.Navigate(e.url+"/"),
		chromedp.WaitVisible("nav", chromedp.ByQuery),
		c.click(`nav a[href="/replay"]`),
		chromedp.WaitVisible("#replay-form", chromedp.ByID),
		c.click("#mode-filter"),
		chromedp.SetValue("#f-outcome", "failed", chromedp.ByID),
		chromedp.SendKeys("#f-from", from, chromedp.ByID),
		c.click("#dry-run"),
		chromedp.WaitVisible("#plan", chromedp.ByID),
		chromedp.Text("#plan-summary", &summary, chromedp.ByID),
		chromedp.Text("#plan", &plan, chromedp.ByID),
		chromedp.Evaluate(`document.querySelectorAll('#plan tbody tr').length`, &rows),
	)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(summary, "3 record(s) would be sent") || rows != 3 {
		t.Fatalf("dry run says %q with %d rows; want the 3 records that failed in the last day", summary, rows)
	}
	for _, want := range []string{"fhir:Patient/p1", "fhir:Patient/p2", "fhir:Patient/p3", "patient-contact", "failed target_rejected", "Re-read from the FHIR server"} {
		if !strings.Contains(plan, want) {
			t.Errorf("dry run table lacks %q:\n%s", want, plan)
		}
	}
	if strings.Contains(plan, "p-old") || strings.Contains(plan, "p-ok") {
		t.Errorf("dry run takes records outside the filter:\n%s", plan)
	}
	if d, _ := q.Depth(t.Context()); d.Active != 0 {
		t.Fatalf("the dry run sent %d notices", d.Active)
	}
	accessible(t, ctx, axe, "the replay's dry run")

	var notice string
	err = chromedp.Run(ctx,
		c.click("#send-replay"),
		chromedp.WaitVisible("#notice", chromedp.ByID),
		chromedp.Text("#notice", &notice, chromedp.ByID),
	)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(notice, "3 record(s) sent") {
		t.Errorf("after sending, the page says %q", notice)
	}
	got := receiveNotices(t, q, 3)
	if strings.Join(got, " ") != "fhir:Patient/p1 fhir:Patient/p2 fhir:Patient/p3" {
		t.Fatalf("the queue got %v, want p1, p2 and p3 once each", got)
	}
	if c > 5 {
		t.Errorf("the replay took %d clicks", c)
	}

	// The same replay reached from the log explorer: its filter carries
	// over to the form, and the dry run finds the same records.
	err = chromedp.Run(ctx,
		chromedp.Navigate(e.url+"/logs?outcome=failed&from="+from),
		chromedp.WaitVisible("#replay-these", chromedp.ByID),
		chromedp.Click("#replay-these", chromedp.ByID),
		chromedp.WaitVisible("#replay-form", chromedp.ByID),
		chromedp.Click("#dry-run", chromedp.ByID),
		chromedp.WaitVisible("#plan", chromedp.ByID),
		chromedp.Text("#plan-summary", &summary, chromedp.ByID),
		chromedp.Evaluate(`document.querySelectorAll('#plan tbody tr').length`, &rows),
	)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(summary, "3 record(s) would be sent") || rows != 3 {
		t.Errorf("from the log explorer the dry run says %q with %d rows; want the same 3 records", summary, rows)
	}

	// The audit trail, as the admin reads it, has the dry run and the
	// replay, by the operator.
	actx := browser.Session(t, 60*time.Second)
	var audit string
	err = chromedp.Run(actx,
		signIn(e.url, "admin@example.org"),
		chromedp.Navigate(e.url+"/audit?actor=operator@example.org"),
		chromedp.WaitVisible("#audit", chromedp.ByID),
		chromedp.Text("#audit", &audit, chromedp.ByID),
	)
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"replay.dry_run", "replay.records", "outcome=failed", "3 notices sent"} {
		if !strings.Contains(audit, want) {
			t.Errorf("audit page lacks %q:\n%s", want, audit)
		}
	}
}

// accessible runs axe-core on the page ctx shows, at desktop width and at
// a phone's: the states a form POST reaches (a dry run, a confirmation)
// are not in the accessibility walk over the GET pages.
func accessible(t *testing.T, ctx context.Context, axe *browsertest.Axe, what string) {
	t.Helper()
	for _, width := range []int64{1280, browsertest.PhoneWidth} {
		if err := chromedp.Run(ctx, browsertest.Viewport(width, 900, width == browsertest.PhoneWidth)); err != nil {
			t.Fatal(err)
		}
		vs, err := axe.Check(ctx)
		if err != nil {
			t.Fatal(err)
		}
		for _, v := range vs {
			if v.Severe() {
				t.Errorf("%s at %d px: %s", what, width, v)
			}
		}
		if width == browsertest.PhoneWidth {
			if w, err := browsertest.ScrollWidth(ctx); err != nil || w > browsertest.PhoneWidth {
				t.Errorf("%s at %d px is %d px wide (%v): it scrolls sideways", what, width, w, err)
			}
		}
	}
	if err := chromedp.Run(ctx, browsertest.Viewport(1280, 900, false)); err != nil {
		t.Fatal(err)
	}
}

// receiveNotices takes n messages off q and returns their record
// references, sorted.
func receiveNotices(t *testing.T, q *embedded.Queue, n int) []string {
	t.Helper()
	var refs []string
	deadline := time.Now().Add(10 * time.Second)
	for len(refs) < n && time.Now().Before(deadline) {
		ms, err := q.Receive(t.Context(), n, time.Second)
		if err != nil {
			t.Fatal(err)
		}
		for _, m := range ms {
			no, err := queues.DecodeNotice(m.Body)
			if err != nil {
				t.Fatal(err)
			}
			refs = append(refs, no.Ref())
			if err := q.Complete(t.Context(), m); err != nil {
				t.Fatal(err)
			}
		}
	}
	if ms, _ := q.Receive(t.Context(), 10, 200*time.Millisecond); len(ms) != 0 {
		t.Fatalf("%d more messages than the %d expected", len(ms), n)
	}
	slices.Sort(refs)
	return refs
}

// deadLetterAs sends a notice for side:typ/id to q and dead-letters it
// with reason.
func deadLetterAs(t *testing.T, q *embedded.Queue, side queues.Side, typ, id, reason string) {
	t.Helper()
	ctx := context.Background()
	m, err := queues.Notice{V: queues.NoticeVersion, Side: side, Type: typ, ID: id, Version: "1",
		Event: queues.EventUpdated, Origin: "history-poll"}.Message()
	if err != nil {
		t.Fatal(err)
	}
	if err := q.Send(ctx, m); err != nil {
		t.Fatal(err)
	}
	got, err := q.Receive(ctx, 1, 5*time.Second)
	if err != nil || len(got) != 1 {
		t.Fatalf("receiving %s to dead-letter: %v", id, err)
	}
	if err := q.DeadLetter(ctx, got[0], reason, "test"); err != nil {
		t.Fatal(err)
	}
}

// TestBrowserDeadLettersBulk: 39 dead letters of one reason are redriven
// in a few clicks by selecting all that the filter matches; two others are
// discarded with a written reason; a viewer gets neither control; the
// audit trail shows both actions and the reason.
func TestBrowserDeadLettersBulk(t *testing.T) {
	browser := browsertest.Start(t)
	axe := browsertest.LoadAxe(t)
	e := newTestEnv(t, storagetest.Open(t, "sqlite"), AppConfig{})
	e.user("operator@example.org", RoleOperator, false)
	e.user("admin@example.org", RoleAdmin, false)
	e.user("viewer@example.org", RoleViewer, false)
	fq, cq := e.embedded("fhir-changes"), e.embedded("crm-changes")
	for i := range 39 {
		deadLetterAs(t, fq, queues.SideFHIR, "Patient", fmt.Sprint("p", i), "target_rejected")
	}
	deadLetterAs(t, fq, queues.SideFHIR, "Patient", "p-throttled", "throttled")
	deadLetterAs(t, cq, queues.SideCRM, "contact", "c1", "invalid_message")
	deadLetterAs(t, cq, queues.SideCRM, "contact", "c2", "invalid_message")

	ctx := browser.Session(t, 90*time.Second)
	var c clicks
	var total, confirm, notice string
	err := chromedp.Run(ctx,
		signIn(e.url, "operator@example.org"),
		chromedp.Navigate(e.url+"/deadletters"),
		chromedp.WaitVisible("#dl-filter", chromedp.ByID),
		// The group's own link narrows the list to its reason.
		c.click(`section[data-reason="target_rejected"] h2 a`),
		// The unfiltered page has the same controls: wait for the filtered
		// one (only it has the Clear link).
		chromedp.WaitVisible("#dl-clear", chromedp.ByID),
		chromedp.WaitVisible("#select-all", chromedp.ByID),
		chromedp.Text("#dl-total", &total, chromedp.ByID),
		c.click("#select-all"),
		c.click("#redrive-selected"),
		chromedp.WaitVisible("#confirm-count", chromedp.ByID),
		chromedp.Text("#confirm-count", &confirm, chromedp.ByID),
	)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(total, "39 dead letter(s) match") || !strings.Contains(confirm, "Send 39 dead letter(s)") {
		t.Fatalf("list says %q, confirmation %q; want 39", total, confirm)
	}
	if d, _ := fq.Depth(t.Context()); d.DeadLetter != 40 || d.Active != 0 {
		t.Fatalf("the confirmation page changed the queue: %+v", d)
	}
	accessible(t, ctx, axe, "the redrive confirmation")
	err = chromedp.Run(ctx,
		c.click("#confirm-redrive"),
		chromedp.WaitVisible("#notice", chromedp.ByID),
		chromedp.Text("#notice", &notice, chromedp.ByID),
	)
	if err != nil {
		t.Fatal(err)
	}
	if d, _ := fq.Depth(t.Context()); d.DeadLetter != 1 || d.Active != 39 || !strings.Contains(notice, "39 message(s) sent back") {
		t.Fatalf("after the redrive: %+v, notice %q; want 39 active and the throttled one left", d, notice)
	}
	if c > 5 {
		t.Errorf("redriving 39 dead letters took %d clicks", c)
	}

	// Discard the CRM queue's two, with a reason.
	var problem string
	err = chromedp.Run(ctx,
		chromedp.Navigate(e.url+"/deadletters"),
		chromedp.WaitVisible("#dl-filter", chromedp.ByID),
		chromedp.SetValue("#dl-queue", "crm-changes", chromedp.ByID),
		chromedp.Click("#dl-apply", chromedp.ByID),
		chromedp.WaitVisible("#dl-clear", chromedp.ByID),
		chromedp.WaitVisible("#select-all", chromedp.ByID),
		chromedp.Click("#select-all", chromedp.ByID),
		chromedp.Click("#discard-selected", chromedp.ByID),
		chromedp.WaitVisible("#discard-reason", chromedp.ByID),
		chromedp.Text("#confirm-count", &confirm, chromedp.ByID),
		// Too short a reason is refused, by the browser and by the server.
		chromedp.Evaluate(`document.querySelector('#discard-reason').removeAttribute('minlength'); document.querySelector('#discard-reason').value = 'no'; document.querySelector('#confirm-form').submit()`, nil),
		chromedp.WaitVisible("#reason-problem", chromedp.ByID),
		chromedp.Text("#reason-problem", &problem, chromedp.ByID),
	)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(confirm, "Discard 2 dead letter(s)") || !strings.Contains(problem, "Say why") {
		t.Fatalf("discard confirmation %q, problem %q", confirm, problem)
	}
	if d, _ := cq.Depth(t.Context()); d.DeadLetter != 2 {
		t.Fatalf("a discard without a reason deleted something: %+v", d)
	}
	accessible(t, ctx, axe, "the discard confirmation with its problem")
	err = chromedp.Run(ctx,
		chromedp.SendKeys("#discard-reason", "test messages from the pilot, not real changes", chromedp.ByID),
		chromedp.Click("#confirm-discard", chromedp.ByID),
		chromedp.WaitVisible("#notice", chromedp.ByID),
		chromedp.Text("#notice", &notice, chromedp.ByID),
	)
	if err != nil {
		t.Fatal(err)
	}
	if d, _ := cq.Depth(t.Context()); d.DeadLetter != 0 || d.Active != 0 || !strings.Contains(notice, "2 message(s) discarded") {
		t.Fatalf("after the discard: %+v, notice %q", d, notice)
	}

	// A viewer sees the list without bulk controls and cannot replay.
	vctx := browser.Session(t, 60*time.Second)
	var controls int
	err = chromedp.Run(vctx,
		signIn(e.url, "viewer@example.org"),
		chromedp.Navigate(e.url+"/deadletters"),
		chromedp.WaitVisible("#dl-total", chromedp.ByID),
		chromedp.Evaluate(`document.querySelectorAll('#select-all, #redrive-selected, #discard-selected, input[name=sel]').length`, &controls),
	)
	if err != nil {
		t.Fatal(err)
	}
	if controls != 0 {
		t.Errorf("a viewer gets %d bulk controls", controls)
	}
	resp, err := chromedp.RunResponse(vctx, chromedp.Navigate(e.url+"/replay"))
	if err != nil {
		t.Fatal(err)
	}
	if resp.Status != 403 {
		t.Errorf("a viewer opening /replay got %d, want 403", resp.Status)
	}

	actx := browser.Session(t, 60*time.Second)
	var audit string
	err = chromedp.Run(actx,
		signIn(e.url, "admin@example.org"),
		chromedp.Navigate(e.url+"/audit?actor=operator@example.org"),
		chromedp.WaitVisible("#audit", chromedp.ByID),
		chromedp.Text("#audit", &audit, chromedp.ByID),
	)
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"deadletter.redrive", "39 redriven", "deadletter.discard", "test messages from the pilot", "2 discarded"} {
		if !strings.Contains(audit, want) {
			t.Errorf("audit page lacks %q:\n%s", want, audit)
		}
	}
}
