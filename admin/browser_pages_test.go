package admin

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/chromedp/cdproto/runtime"
	"github.com/chromedp/chromedp"

	"github.com/fhirsync/fhirsync/admin/browsertest"
	"github.com/fhirsync/fhirsync/logs"
	"github.com/fhirsync/fhirsync/maps"
	"github.com/fhirsync/fhirsync/maps/starter"
	"github.com/fhirsync/fhirsync/storage/storagetest"
)

// signIn signs in through the sign-in page and waits for the dashboard.
func signIn(url, email string) chromedp.Tasks {
	return chromedp.Tasks{
		chromedp.Navigate(url + "/login"),
		chromedp.WaitVisible("#login-form", chromedp.ByID),
		chromedp.SendKeys("#email", email, chromedp.ByID),
		chromedp.SendKeys("#password", testPassword, chromedp.ByID),
		chromedp.Click("#sign-in", chromedp.ByID),
		chromedp.WaitVisible("#sections", chromedp.ByID),
	}
}

// setField sets a form field's value by id, as pasting would.
func setField(id, value string) chromedp.Action {
	return chromedp.Evaluate(fmt.Sprintf(`document.getElementById(%q).value = %q`, id, value), nil)
}

// clearField empties a form field by id, before typing into it.
func clearField(id string) chromedp.Action { return setField(id, "") }

// awaitPromise makes Evaluate wait for a promise's value.
func awaitPromise(p *runtime.EvaluateParams) *runtime.EvaluateParams { return p.WithAwaitPromise(true) }

// starterDraft stores the starter map set as a draft and returns its number.
func starterDraft(t *testing.T, e *testEnv) int {
	t.Helper()
	doc, err := maps.Parse(starter.YAML())
	if err != nil {
		t.Fatal(err)
	}
	info, err := e.app.data.maps.CreateDraft(t.Context(), doc, "test", "starter")
	if err != nil {
		t.Fatal(err)
	}
	return info.Number
}

// TestBrowserMapEditorAndDeadLetters drives the map editor, the preview,
// publishing and a redrive in chromium, and checks that an auditor gets
// no edit controls and a refused POST.
func TestBrowserMapEditorAndDeadLetters(t *testing.T) {
	browser := browsertest.Start(t)
	e := newTestEnv(t, storagetest.Open(t, "sqlite"), AppConfig{})
	e.user("editor@example.org", RoleEditor, false)
	e.user("auditor@example.org", RoleAuditor, false)
	e.user("operator@example.org", RoleOperator, false)
	n := starterDraft(t, e)
	edit := fmt.Sprintf("%s/maps/versions/%d?map=patient-contact&attr=first-name", e.url, n)

	t.Run("editor edits, previews and publishes", func(t *testing.T) {
		var problem, status, outcome, changed, versionStatus string
		ctx := browser.Session(t, 90*time.Second)
		err := chromedp.Run(ctx,
			signIn(e.url, "editor@example.org"),
			chromedp.Navigate(edit),
			chromedp.WaitVisible("#attr-form", chromedp.ByID),
			chromedp.WaitVisible("#attr-status:not(:empty)", chromedp.ByQuery), // the first validation answered
			chromedp.Text("#attr-status", &status, chromedp.ByID),
		)
		if err != nil {
			t.Fatal(err)
		}
		if status != "Valid." {
			t.Errorf("the starter map's first-name is reported as %q", status)
		}
		// Typing a path to an element Patient.name does not have shows the
		// problem beside the field, without saving.
		err = chromedp.Run(ctx,
			clearField("attr-fhirPath"),
			chromedp.SendKeys("#attr-fhirPath", "name.givn[0]", chromedp.ByID),
			chromedp.WaitVisible("#problem-fhirPath", chromedp.ByID),
			// Problems follow the keystrokes; wait for the one about the whole path.
			poll(`document.getElementById("problem-fhirPath").textContent.includes("givn")`),
			chromedp.Text("#problem-fhirPath", &problem, chromedp.ByID),
		)
		if err != nil {
			t.Fatal(err)
		}
		if !strings.Contains(problem, "givn") {
			t.Errorf("the problem beside fhirPath is %q, want one naming givn", problem)
		}
		// Fixing it clears the problem; saving keeps the change.
		err = chromedp.Run(ctx,
			clearField("attr-fhirPath"),
			chromedp.SendKeys("#attr-fhirPath", "name.given[0]", chromedp.ByID),
			chromedp.WaitNotVisible("#problem-fhirPath", chromedp.ByID),
			chromedp.Click("#save-attr", chromedp.ByID),
			chromedp.WaitVisible("#notice", chromedp.ByID),
		)
		if err != nil {
			t.Fatal(err)
		}
		doc, _, err := e.app.data.maps.Version(t.Context(), n)
		if err != nil {
			t.Fatal(err)
		}
		if _, am := findAttribute(doc, "patient-contact", "first-name"); am.FHIRPath != "name.given[0]" {
			t.Errorf("saved fhirPath = %q", am.FHIRPath)
		}

		// Preview a pasted Patient against a pasted current contact, on
		// the version's preview page.
		err = chromedp.Run(ctx,
			chromedp.Click("#open-preview", chromedp.ByID),
			chromedp.WaitVisible("#preview-form", chromedp.ByID),
			setField("preview-input", `{"resourceType":"Patient","id":"p1","name":[{"use":"official","family":"Lovelace","given":["Ada"]}]}`),
			setField("preview-current", `{"record":{"firstname":"Ada","lastname":"Byron"}}`),
			chromedp.Click("#preview", chromedp.ByID),
			chromedp.WaitVisible("#preview-result", chromedp.ByID),
			chromedp.Text("#preview-outcome", &outcome, chromedp.ByID),
			chromedp.Text("#preview-changed", &changed, chromedp.ByID),
		)
		if err != nil {
			t.Fatal(err)
		}
		if outcome != "sent / updated" || !strings.Contains(changed, "lastname") || strings.Contains(changed, "firstname") {
			t.Errorf("preview shows %q, changed %q; want sent / updated with lastname changed", outcome, changed)
		}
		var diff string
		if err := chromedp.Run(ctx, chromedp.Text("#preview-diff", &diff, chromedp.ByID)); err != nil {
			t.Fatal(err)
		}
		if !strings.Contains(diff, `"Byron"`) || !strings.Contains(diff, `"Lovelace"`) {
			t.Errorf("preview diff %q lacks lastname Byron → Lovelace", diff)
		}
		if err := chromedp.Run(ctx, chromedp.Navigate(edit), chromedp.WaitVisible("#yaml", chromedp.ByID)); err != nil {
			t.Fatal(err)
		}

		// The YAML editor validates as you type too.
		var yamlProblems string
		err = chromedp.Run(ctx,
			chromedp.Evaluate(`(() => { const a = document.getElementById("yaml"); a.value += "\nbogus: 1\n";
				a.dispatchEvent(new Event("input", {bubbles: true})); })()`, nil),
			chromedp.WaitVisible("#yaml-problems", chromedp.ByID),
			chromedp.Text("#yaml-problems", &yamlProblems, chromedp.ByID),
		)
		if err != nil {
			t.Fatal(err)
		}
		if !strings.Contains(yamlProblems, "line ") {
			t.Errorf("YAML problems %q do not name a line", yamlProblems)
		}

		err = chromedp.Run(ctx,
			chromedp.SendKeys("#publish-form input[name=note]", "first release", chromedp.ByQuery),
			chromedp.Click("#publish", chromedp.ByID),
			// The confirmation page: give a reason should a sample fail.
			chromedp.WaitVisible("#confirm-publish", chromedp.ByID),
			chromedp.Evaluate(`(() => { const o = document.getElementById("override-reason"); if (o) o.value = "edited in the test"; })()`, nil),
			chromedp.Click("#confirm-publish", chromedp.ByID),
			chromedp.WaitVisible("#notice", chromedp.ByID),
			chromedp.Text("#version-status", &versionStatus, chromedp.ByID),
		)
		if err != nil {
			t.Fatal(err)
		}
		set, err := e.app.data.maps.Current(t.Context())
		if versionStatus != "published" || err != nil || set.Version() != n {
			t.Errorf("after publishing the page says %q and the current set is %v (%v)", versionStatus, set, err)
		}
	})

	t.Run("auditor cannot edit a map", func(t *testing.T) {
		before := mustExport(t, e, n)
		ctx := browser.Session(t, 60*time.Second)
		var controls bool
		var status int
		err := chromedp.Run(ctx,
			signIn(e.url, "auditor@example.org"),
			chromedp.Navigate(edit),
			chromedp.WaitVisible("#attr-readonly", chromedp.ByID),
			chromedp.Evaluate(`!!(document.getElementById("attr-form") || document.getElementById("yaml-form") ||
				document.getElementById("publish") || document.getElementById("new-draft"))`, &controls),
			// The same POST the editor's form makes, sent from this page.
			chromedp.Evaluate(fmt.Sprintf(`fetch("/maps/versions/%d/attribute", {method: "POST",
				headers: {"Content-Type": "application/x-www-form-urlencoded"},
				body: "map=patient-contact&attr=first-name&fhirPath=name.given%%5B1%%5D&crmAttribute=firstname&crmType=string&enabled=on"}).then(r => r.status)`, n),
				&status, awaitPromise),
		)
		if err != nil {
			t.Fatal(err)
		}
		if controls || status != 403 {
			t.Errorf("auditor: edit controls shown %t, POST answered %d; want none and 403", controls, status)
		}
		after := mustExport(t, e, n)
		if after != before {
			t.Errorf("the refused POST changed the version")
		}
	})

	t.Run("dashboard refreshes live", func(t *testing.T) {
		ctx := browser.Session(t, 60*time.Second)
		var before, after string
		err := chromedp.Run(ctx,
			signIn(e.url, "operator@example.org"),
			chromedp.WaitVisible("#live[data-refreshed]", chromedp.ByQuery),
			chromedp.Text("#stat-total", &before, chromedp.ByID),
		)
		if err != nil {
			t.Fatal(err)
		}
		writeDecisions(t, e.app.data.logs, e.clock.now().Add(-time.Minute), 3)
		// The next poll (every 5 s) shows the new decisions without a reload.
		err = chromedp.Run(ctx,
			chromedp.WaitVisible(`#live[data-refreshed="2"]`, chromedp.ByQuery),
			chromedp.Text("#stat-total", &after, chromedp.ByID),
		)
		if err != nil {
			t.Fatal(err)
		}
		if before != "0" || after != "3" {
			t.Errorf("total went from %q to %q, want 0 to 3", before, after)
		}
	})

	t.Run("operator redrives a dead letter", func(t *testing.T) {
		q := e.embedded("fhir-changes")
		deadLetter(t, q, "p42")
		ctx := browser.Session(t, 60*time.Second)
		var count string
		err := chromedp.Run(ctx,
			signIn(e.url, "operator@example.org"),
			chromedp.Navigate(e.url+"/deadletters"),
			chromedp.WaitVisible("#redrive-form", chromedp.ByID),
			chromedp.Click(`#redrive-form input[name=sel]`, chromedp.ByQuery),
			chromedp.Click("#redrive-selected", chromedp.ByID),
			chromedp.WaitVisible("#confirm-count", chromedp.ByID),
			chromedp.Text("#confirm-count", &count, chromedp.ByID),
		)
		if err != nil {
			t.Fatal(err)
		}
		if d, _ := q.Depth(t.Context()); !strings.Contains(count, "Send 1 dead letter") || d.DeadLetter != 1 {
			t.Fatalf("confirmation says %q with %d dead letters left; want a count of 1 and nothing done yet", count, d.DeadLetter)
		}
		var notice string
		err = chromedp.Run(ctx,
			chromedp.Click("#confirm-redrive", chromedp.ByID),
			chromedp.WaitVisible("#notice", chromedp.ByID),
			chromedp.Text("#notice", &notice, chromedp.ByID),
		)
		if err != nil {
			t.Fatal(err)
		}
		if d, _ := q.Depth(t.Context()); d.DeadLetter != 0 || d.Active != 1 || !strings.Contains(notice, "1 message(s)") {
			t.Errorf("after the redrive: %+v, notice %q", d, notice)
		}
	})
}

// TestScreenshots renders the main pages into $FHIRSYNC_SCREENSHOTS (for
// docs/screenshots) from a seeded app. Without the variable it is skipped.
func TestScreenshots(t *testing.T) {
	dir := os.Getenv("FHIRSYNC_SCREENSHOTS")
	if dir == "" {
		t.Skip("set FHIRSYNC_SCREENSHOTS=docs/screenshots to render the page screenshots")
	}
	if !filepath.IsAbs(dir) {
		// go test runs in the package directory; the path is from the module root.
		dir = filepath.Join("..", dir)
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	browser := browsertest.Start(t)
	sc := newShowcase(t)
	e := sc.e
	withSandboxCRM(t, e) // the editor shows the CRM's metadata
	ctx := browser.Session(t, 3*time.Minute)
	if err := chromedp.Run(ctx, signIn(e.url, "admin@example.org")); err != nil {
		t.Fatal(err)
	}
	// Desktop shots at 1280 px, the whole page; the "-phone" ones at
	// 375×812 px, the first screen as a phone shows it.
	shots := []struct {
		file, path, wait string
		then             []chromedp.Action
	}{
		{"dashboard.png", "/", "#live[data-refreshed]", nil},
		{"maps.png", "/maps", "#versions", nil},
		{"map-edit.png", fmt.Sprintf("/maps/versions/%d?map=patient-contact&attr=first-name", sc.Draft), "#attr-status:not(:empty)", []chromedp.Action{
			clearField("attr-fhirPath"), chromedp.SendKeys("#attr-fhirPath", "name.givn[0]", chromedp.ByID),
			chromedp.WaitVisible("#problem-fhirPath", chromedp.ByID)}},
		{"map-editor.png", fmt.Sprintf("/maps/versions/%d/edit?map=patient-contact", sc.Draft), "#am-list", []chromedp.Action{
			press("#am-edit-1"),
			poll(`document.getElementById("am-1-fhirPath-result").textContent.includes("selects")`),
			chromedp.Evaluate(`document.getElementById("am-edit-1").closest("li").scrollIntoView({block: "start"})`, nil),
		}},
		{"logs.png", "/logs?record=Patient/p1", "#decisions", nil},
		{"decision.png", fmt.Sprint("/logs/", sc.Failed), "#reason", nil},
		{"deadletters.png", "/deadletters", "#redrive-form", nil},
		{"conflicts.png", "/conflicts", "#conflicts", nil},
		{"conflict.png", fmt.Sprint("/conflicts/", sc.Conflict), "#conflict-sides", nil},
		{"dashboard-phone.png", "/", "#live[data-refreshed]", []chromedp.Action{
			chromedp.Evaluate(`document.getElementById("live").scrollIntoView({block: "start"})`, nil)}},
		{"logs-phone.png", "/logs?record=Patient/p1", "#decisions", []chromedp.Action{chromedp.ScrollIntoView("#timeline-note", chromedp.ByID)}},
		{"decision-phone.png", fmt.Sprint("/logs/", sc.Failed), "#reason", nil},
		{"deadletters-phone.png", "/deadletters", "#redrive-form", nil},
	}
	for _, s := range shots {
		width := int64(1280)
		if strings.HasSuffix(s.file, "-phone.png") {
			width = browsertest.PhoneWidth
		}
		height := int64(900)
		if width == browsertest.PhoneWidth {
			height = 812
		}
		if err := chromedp.Run(ctx, browsertest.Viewport(width, height, width == browsertest.PhoneWidth),
			chromedp.Navigate(e.url+s.path), chromedp.WaitVisible(s.wait, chromedp.ByQuery)); err != nil {
			t.Fatalf("%s: %v", s.path, err)
		}
		if err := chromedp.Run(ctx, s.then...); err != nil {
			t.Fatalf("%s: %v", s.path, err)
		}
		shoot := browsertest.Screenshot
		// The editor's page is long: its shot is the screen at the attribute maps.
		if width == browsertest.PhoneWidth || s.file == "map-editor.png" {
			shoot = browsertest.ViewportScreenshot
		}
		if err := shoot(ctx, filepath.Join(dir, s.file)); err != nil {
			t.Fatal(err)
		}
	}
}

// seedDemoLog writes a day of varied decisions ending at now.
func seedDemoLog(t testing.TB, s *logs.Store, now time.Time) {
	t.Helper()
	kinds := []struct {
		outcome logs.Outcome
		reason  logs.ReasonCode
		weight  int
	}{
		{logs.OutcomeSent, logs.ReasonUpdated, 50}, {logs.OutcomeSent, logs.ReasonCreated, 12},
		{logs.OutcomeSkipped, logs.ReasonUnchanged, 20}, {logs.OutcomeSkipped, logs.ReasonOwnWriteEcho, 10},
		{logs.OutcomeSkipped, logs.ReasonFiltered, 4}, {logs.OutcomeFailed, logs.ReasonThrottled, 3},
		{logs.OutcomeDeadLettered, logs.ReasonTargetRejected, 1},
	}
	var ds []*logs.Decision
	for i := range 600 {
		w := (i * 37) % 100
		k := kinds[0]
		for _, kk := range kinds {
			if w < kk.weight {
				k = kk
				break
			}
			w -= kk.weight
		}
		dir, src, tgt := logs.FHIRToCRM, logs.Ref{Type: "Patient", ID: fmt.Sprint("p", i%40)}, logs.Ref{Type: "contact", ID: fmt.Sprint("c", i%40)}
		if i%5 == 0 {
			dir, src, tgt = logs.CRMToFHIR, tgt, src
		}
		d := &logs.Decision{Time: now.Add(-time.Duration(600-i) * 144 * time.Second), MessageID: fmt.Sprint("msg-", i),
			Direction: dir, EntityMap: "patient-contact", MapVersion: 1, Source: src, Target: tgt,
			Outcome: k.outcome, Reason: k.reason, Message: "Decision for " + src.String() + ".", Duration: 40 * time.Millisecond}
		if k.outcome == logs.OutcomeSent {
			d.ChangedFields = []string{"firstname", "birthdate"}
			// Source change to target write: mostly under a second, a slow
			// tail every few hours.
			d.Latency = time.Duration(200+(i*53)%700) * time.Millisecond
			if i%45 == 0 {
				d.Latency = time.Duration(3+i%7) * time.Second
			}
		}
		if k.reason == logs.ReasonFiltered {
			d.ReasonSubject = "patient-contacts"
		}
		if k.outcome == logs.OutcomeFailed || k.outcome == logs.OutcomeDeadLettered {
			d.Attempts = []logs.Attempt{{At: d.Time, ErrorClass: "http_429", Retryable: true}}
		}
		ds = append(ds, d)
	}
	if err := s.WriteBatch(context.Background(), ds); err != nil {
		t.Fatal(err)
	}
}
