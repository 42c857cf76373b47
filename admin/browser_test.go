package admin

import (
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/chromedp/chromedp"

	"github.com/fhirsync/fhirsync/admin/browsertest"
	"github.com/fhirsync/fhirsync/logs"
	"github.com/fhirsync/fhirsync/storage/storagetest"
)

// TestBrowserSignInAndRoles drives the app in a real chromium: an admin
// signs in, sees the dashboard and the users page, and signs out; an
// auditor signs in and is refused the users page.
func TestBrowserSignInAndRoles(t *testing.T) {
	browser := browsertest.Start(t)
	e := newTestEnv(t, storagetest.Open(t, "sqlite"), AppConfig{})
	e.user("admin@example.org", RoleAdmin, false)
	e.user("auditor@example.org", RoleAuditor, false)

	t.Run("admin", func(t *testing.T) {
		ctx := browser.Session(t, 60*time.Second)
		var who, usersTable, nav, brandColor string
		err := chromedp.Run(ctx,
			chromedp.Navigate(e.url+"/users"),
			chromedp.WaitVisible("#login-form", chromedp.ByID),
			chromedp.SendKeys("#email", "admin@example.org", chromedp.ByID),
			chromedp.SendKeys("#password", testPassword, chromedp.ByID),
			chromedp.Click("#sign-in", chromedp.ByID),
			// The sign-in returns to the page first asked for.
			chromedp.WaitVisible("#users", chromedp.ByID),
			chromedp.Text("#users", &usersTable, chromedp.ByID),
			chromedp.Navigate(e.url+"/"),
			chromedp.WaitVisible("#sections", chromedp.ByID),
			chromedp.Text("#whoami", &who, chromedp.ByID),
			chromedp.Text("nav", &nav, chromedp.ByQuery),
			chromedp.Evaluate(`getComputedStyle(document.querySelector('.brand')).color`, &brandColor),
		)
		if err != nil {
			t.Fatal(err)
		}
		// The stylesheet loads under the CSP.
		if brandColor != "rgb(11, 92, 173)" {
			t.Errorf("brand color %q: the stylesheet did not apply", brandColor)
		}
		if !strings.Contains(who, "admin@example.org") || !strings.Contains(usersTable, "auditor@example.org") {
			t.Errorf("dashboard shows %q, users table %q", who, usersTable)
		}
		for _, want := range []string{"Dashboard", "Users", "Audit trail"} {
			if !strings.Contains(nav, want) {
				t.Errorf("admin navigation %q lacks %q", nav, want)
			}
		}
		// FHIRSYNC_SCREENSHOTS keeps the screenshot, e.g. for docs/.
		dir := os.Getenv("FHIRSYNC_SCREENSHOTS")
		if dir == "" {
			dir = t.TempDir()
		}
		if err := chromedp.Run(ctx, chromedp.Navigate(e.url+"/users"), chromedp.WaitVisible("#users", chromedp.ByID)); err != nil {
			t.Fatal(err)
		}
		shot := filepath.Join(dir, "users.png")
		if err := browsertest.Screenshot(ctx, shot); err != nil {
			t.Fatal(err)
		}
		png, err := os.ReadFile(shot)
		if err != nil || !bytes.HasPrefix(png, []byte("\x89PNG\r\n\x1a\n")) || len(png) < 2000 {
			t.Errorf("screenshot is not a PNG of a page (%d bytes, %v)", len(png), err)
		}

		// A browser form POST carries this origin and passes the
		// cross-origin check; signing out ends the session.
		var path string
		err = chromedp.Run(ctx,
			chromedp.Click(".signout button", chromedp.ByQuery),
			chromedp.WaitVisible("#login-form", chromedp.ByID),
			chromedp.Navigate(e.url+"/users"),
			chromedp.WaitVisible("#login-form", chromedp.ByID),
			chromedp.Evaluate(`location.pathname`, &path),
		)
		if err != nil || path != "/login" {
			t.Errorf("after signing out /users shows %s (%v), want the sign-in page", path, err)
		}
	})

	t.Run("auditor cannot manage users", func(t *testing.T) {
		ctx := browser.Session(t, 60*time.Second)
		var nav, msg string
		err := chromedp.Run(ctx,
			chromedp.Navigate(e.url+"/login"),
			chromedp.WaitVisible("#login-form", chromedp.ByID),
			chromedp.SendKeys("#email", "auditor@example.org", chromedp.ByID),
			chromedp.SendKeys("#password", testPassword, chromedp.ByID),
			chromedp.Click("#sign-in", chromedp.ByID),
			chromedp.WaitVisible("#sections", chromedp.ByID),
			chromedp.Text("nav", &nav, chromedp.ByQuery),
		)
		if err != nil {
			t.Fatal(err)
		}
		if strings.Contains(nav, "Users") || !strings.Contains(nav, "Audit trail") {
			t.Errorf("auditor navigation %q: want Audit trail and no Users", nav)
		}
		resp, err := chromedp.RunResponse(ctx, chromedp.Navigate(e.url+"/users"))
		if err != nil {
			t.Fatal(err)
		}
		if err := chromedp.Run(ctx, chromedp.Text("#error-message", &msg, chromedp.ByID)); err != nil {
			t.Fatal(err)
		}
		if resp.Status != 403 || !strings.Contains(msg, "does not allow") {
			t.Errorf("auditor opening /users got %d %q, want 403 and the refusal", resp.Status, msg)
		}
	})
}

// TestBrowserResolveConflict: an operator with the PHI permission follows
// the dashboard's open-conflict count to the conflicts, sees both sides'
// values, takes the FHIR value, and sees the resolution recorded.
func TestBrowserResolveConflict(t *testing.T) {
	browser := browsertest.Start(t)
	db := storagetest.Open(t, "sqlite")
	store, err := logs.New(db, logs.Config{Capture: logs.CaptureConfig{KeyID: "k1", Key: captureKey}}, nil)
	if err != nil {
		t.Fatal(err)
	}
	e := newTestEnv(t, db, AppConfig{}, withLogs(store))
	e.user("operator@example.org", RoleOperator, true)
	attrID, _ := holdConflicts(t, store)

	ctx := browser.Session(t, 60*time.Second)
	var count, list, fhirValue, crmValue, flash, status string
	err = chromedp.Run(ctx,
		signIn(e.url, "operator@example.org"),
		chromedp.Text("#stat-open-conflicts", &count, chromedp.ByID),
		chromedp.Click("#stat-open-conflicts", chromedp.ByID),
		chromedp.WaitVisible("#conflicts", chromedp.ByID),
		chromedp.Text("#conflicts", &list, chromedp.ByID),
		chromedp.Click(fmt.Sprintf(`#conflicts tr[data-id="%d"] a`, attrID), chromedp.ByQuery),
		chromedp.WaitVisible("#conflict-sides", chromedp.ByID),
		chromedp.Text("#fhir-value", &fhirValue, chromedp.ByID),
		chromedp.Text("#crm-value", &crmValue, chromedp.ByID),
		chromedp.Click("#take-fhir", chromedp.ByID),
		chromedp.WaitVisible(".flash", chromedp.ByQuery),
		chromedp.Text(".flash", &flash, chromedp.ByQuery),
		chromedp.Text("#conflict-status", &status, chromedp.ByID),
	)
	if err != nil {
		t.Fatal(err)
	}
	if count != "2" || !strings.Contains(list, "birthDate") || !strings.Contains(list, "whole record (deleted in CRM)") {
		t.Errorf("dashboard count %q, list %q", count, list)
	}
	if fhirValue != fhirBirthDate || crmValue != crmBirthDate {
		t.Errorf("values shown: FHIR %q, CRM %q", fhirValue, crmValue)
	}
	if !strings.Contains(flash, "Resolution recorded") || !strings.Contains(status, "operator@example.org chose to take the FHIR value") {
		t.Errorf("after taking the FHIR value: flash %q, status %q", flash, status)
	}
	c, err := store.Conflict(t.Context(), attrID)
	if err != nil || c.Status != logs.ConflictResolved || c.Resolution != logs.SideFHIR || c.ResolvedBy != "operator@example.org" {
		t.Errorf("conflict after the browser resolved it = %+v, %v", c, err)
	}
	var buttons int
	if err := chromedp.Run(ctx, chromedp.Evaluate(`document.querySelectorAll("#take-fhir, #take-crm").length`, &buttons)); err != nil || buttons != 0 {
		t.Errorf("a resolved conflict still offers %d resolution buttons (%v)", buttons, err)
	}
}
