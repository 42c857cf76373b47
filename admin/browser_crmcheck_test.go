package admin

import (
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/chromedp/chromedp"

	"github.com/fhirsync/fhirsync/admin/browsertest"
	"github.com/fhirsync/fhirsync/storage/storagetest"
)

// TestBrowserNonexistentCRMAttributeRefused: in Chromium, typing a CRM
// attribute the sandbox CRM does not have shows the problem and its
// suggested fix beside the field; saving anyway is refused, and the page
// lists the problem with its location; the draft keeps the old attribute.
func TestBrowserNonexistentCRMAttributeRefused(t *testing.T) {
	browser := browsertest.Start(t)
	e := newTestEnv(t, storagetest.Open(t, "sqlite"), AppConfig{})
	withSandboxCRM(t, e)
	e.user("editor@example.org", RoleEditor, false)
	n := starterDraft(t, e)
	edit := fmt.Sprintf("%s/maps/versions/%d?map=patient-contact&attr=birth-date", e.url, n)

	var beside, listed, flash string
	ctx := browser.Session(t, 90*time.Second)
	err := chromedp.Run(ctx,
		signIn(e.url, "editor@example.org"),
		chromedp.Navigate(edit),
		chromedp.WaitVisible("#attr-form", chromedp.ByID),
		chromedp.WaitVisible("#attr-status:not(:empty)", chromedp.ByQuery),
		clearField("attr-crmAttribute"),
		chromedp.SendKeys("#attr-crmAttribute", "birthdat", chromedp.ByID),
		chromedp.WaitVisible("#problem-crmAttribute", chromedp.ByID),
		poll(`document.getElementById("problem-crmAttribute").textContent.includes("birthdat\"")`),
		chromedp.Text("#problem-crmAttribute", &beside, chromedp.ByID),
		chromedp.Click("#save-attr", chromedp.ByID),
		chromedp.WaitVisible("#problems", chromedp.ByID),
		chromedp.Text("#problems", &listed, chromedp.ByID),
		chromedp.Text("#version-error", &flash, chromedp.ByID),
	)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(beside, `did you mean "birthdate"?`) {
		t.Errorf("beside the field: %q, want the problem with its suggested fix", beside)
	}
	for _, want := range []string{`entity map "patient-contact" / attribute map "birth-date" / crmAttribute`, `has no attribute "birthdat"`, `Suggested fix: did you mean "birthdate"?`} {
		if !strings.Contains(listed, want) {
			t.Errorf("the refused save lists %q, want it to contain %q", listed, want)
		}
	}
	if !strings.Contains(flash, "Not saved") {
		t.Errorf("the page says %q, want Not saved", flash)
	}
	doc, _, err := e.app.data.maps.Version(t.Context(), n)
	if err != nil {
		t.Fatal(err)
	}
	if _, am := findAttribute(doc, "patient-contact", "birth-date"); am.CRMAttribute != "birthdate" {
		t.Errorf("the refused edit was stored: %q", am.CRMAttribute)
	}
}
