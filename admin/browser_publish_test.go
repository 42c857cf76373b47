package admin

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/chromedp/chromedp"

	"github.com/fhirsync/fhirsync/admin/browsertest"
	"github.com/fhirsync/fhirsync/logs"
	"github.com/fhirsync/fhirsync/maps"
	"github.com/fhirsync/fhirsync/storage/storagetest"
)

// TestBrowserPublishBlockedThenOverride: in Chromium, publishing a draft
// whose own sample fails goes through the confirmation page, which shows
// the semantic diff and the failing sample; confirming without a reason
// is refused and the draft stays a draft; with a reason it is published,
// the note shows in the history and the reason in the audit trail. The
// refused page passes axe-core (no serious or critical violation).
func TestBrowserPublishBlockedThenOverride(t *testing.T) {
	axe := browsertest.LoadAxe(t)
	browser := browsertest.Start(t)
	e := newTestEnv(t, storagetest.Open(t, "sqlite"), AppConfig{})
	e.user("editor@example.org", RoleEditor, false)
	n := starterDraft(t, e)
	doc, _, err := e.app.data.maps.Version(t.Context(), n)
	if err != nil {
		t.Fatal(err)
	}
	_, am := findAttribute(doc, "patient-contact", "first-name")
	am.FHIRPath = "name.where(use = 'usual').given[0]" // the starter samples use 'official'
	if _, err := e.app.data.maps.UpdateDraft(t.Context(), n, doc, "test", ""); err != nil {
		t.Fatal(err)
	}

	var diff, failing, refused, status, history string
	ctx := browser.Session(t, 90*time.Second)
	err = chromedp.Run(ctx,
		signIn(e.url, "editor@example.org"),
		chromedp.Navigate(fmt.Sprintf("%s/maps/versions/%d", e.url, n)),
		chromedp.SendKeys("#publish-form input[name=note]", "usual names", chromedp.ByQuery),
		chromedp.Click("#publish", chromedp.ByID),
		chromedp.WaitVisible("#confirm-publish-form", chromedp.ByID),
		chromedp.Text("#semantic-diff", &diff, chromedp.ByID),
		chromedp.Text("#failing-samples", &failing, chromedp.ByID),
		chromedp.Click("#confirm-publish", chromedp.ByID),
		chromedp.WaitVisible("#publish-error", chromedp.ByID),
		chromedp.Text("#publish-error", &refused, chromedp.ByID),
	)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(diff, "entity map patient-contact") {
		t.Errorf("semantic diff %q lacks the entity maps added", diff)
	}
	if !strings.Contains(failing, "patient-contact /") {
		t.Errorf("failing samples %q", failing)
	}
	if !strings.Contains(refused, "Not published") || !strings.Contains(refused, "sample tests fail") {
		t.Errorf("refusal says %q", refused)
	}
	if _, info, _ := e.app.data.maps.Version(t.Context(), n); info.Status != maps.StatusDraft {
		t.Fatalf("after the refusal version %d is %s", n, info.Status)
	}
	vs, err := axe.Check(ctx)
	if err != nil {
		t.Fatal(err)
	}
	for _, v := range vs {
		if v.Severe() {
			t.Errorf("refused confirmation page: %s", v)
		}
	}

	err = chromedp.Run(ctx,
		chromedp.SendKeys("#override-reason", "the samples predate the usual-name rule", chromedp.ByID),
		chromedp.Click("#confirm-publish", chromedp.ByID),
		chromedp.WaitVisible("#notice", chromedp.ByID),
		chromedp.Text("#version-status", &status, chromedp.ByID),
		chromedp.Navigate(e.url+"/maps"),
		chromedp.WaitVisible("#publications", chromedp.ByID),
		chromedp.Text("#publications", &history, chromedp.ByID),
	)
	if err != nil {
		t.Fatal(err)
	}
	if status != "published" || !strings.Contains(history, "usual names") {
		t.Errorf("after the override: status %q, history %q", status, history)
	}
	p, err := e.app.users.audit.Audit(context.Background(), logs.AuditFilter{Action: "map.publish_override"}, "", 10)
	if err != nil || len(p.Entries) != 1 || !strings.Contains(p.Entries[0].After, "the samples predate the usual-name rule") {
		t.Errorf("override audit = %+v, %v", p.Entries, err)
	}
}
