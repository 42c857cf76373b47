package admin

import (
	"context"
	"net/url"
	"strings"
	"testing"
	"time"

	"gorm.io/gorm"

	"github.com/fhirsync/fhirsync/logs"
	"github.com/fhirsync/fhirsync/storage/storagetest"
)

// TestAlertsPage: an admin adds a rule through the form (audited), a
// viewer sees it but may not change it, a bad rule is refused with its
// problem named, and the page shows the rule firing, then resolved.
func TestAlertsPage(t *testing.T) {
	storagetest.Each(t, func(t *testing.T, db *gorm.DB) {
		ctx := context.Background()
		e := newTestEnv(t, db, AppConfig{})
		admin := e.as(e.user("admin@example.org", RoleAdmin, false))
		viewer := e.as(e.user("viewer@example.org", RoleViewer, false))

		form := url.Values{"name": {"feed-stalled"}, "kind": {"feed_stopped"}, "threshold": {"600"}, "window": {"5m"}}
		if code, _ := e.page(viewer, "POST", "/alerts/rules", formType, form.Encode()); code != 403 {
			t.Errorf("viewer saving a rule = %d, want 403", code)
		}
		if code, _ := e.page(admin, "POST", "/alerts/rules", formType, form.Encode()); code != 303 {
			t.Fatalf("admin saving a rule = %d, want 303", code)
		}
		bad := url.Values{"name": {"bad name"}, "kind": {"cpu"}, "threshold": {"-1"}, "window": {"5m"}, "webhook": {"nowhere"}}
		code, body := e.page(admin, "POST", "/alerts/rules", formType, bad.Encode())
		if code != 400 || !strings.Contains(body, `id="alert-problem"`) || !strings.Contains(body, "kind &#34;cpu&#34;") ||
			!strings.Contains(body, "webhook &#34;nowhere&#34; is not configured") || !strings.Contains(body, `value="bad name"`) {
			t.Errorf("a bad rule = %d, want 400 naming its problems and keeping the form:\n%s", code, body)
		}
		page, err := e.app.data.logs.Audit(ctx, logs.AuditFilter{Action: "alert_rule.save"}, "", 10)
		if err != nil || len(page.Entries) != 1 || page.Entries[0].Actor != "admin@example.org" || page.Entries[0].ObjectID != "feed-stalled" {
			t.Errorf("audit = %+v, %v; want one alert_rule.save by the admin", page, err)
		}

		code, body = e.page(viewer, "GET", "/alerts", "", "")
		if code != 200 || !strings.Contains(body, `<tr data-rule="feed-stalled">`) || strings.Contains(body, `id="alert-rule-form"`) ||
			!strings.Contains(body, "No alert has fired yet.") {
			t.Errorf("viewer's alerts page = %d: want the rule, no form, no history", code)
		}

		// The feed last polled an hour ago: the rule fires; then it polls.
		if err := db.Exec("INSERT INTO feed_checkpoints (feed, position, updated_at) VALUES ('fhir-history:Patient', '{}', ?)",
			time.Now().UTC().Add(-time.Hour)).Error; err != nil {
			t.Fatal(err)
		}
		if err := e.app.data.alerts.Evaluate(ctx); err != nil {
			t.Fatal(err)
		}
		_, body = e.page(viewer, "GET", "/alerts", "", "")
		if !strings.Contains(body, `<tr data-rule="feed-stalled" data-state="firing">`) || !strings.Contains(body, "feed fhir-history:Patient last polled") {
			t.Errorf("after an hour without a poll the page does not show the rule firing:\n%s", body)
		}
		if err := db.Exec("UPDATE feed_checkpoints SET updated_at = ?", time.Now().UTC()).Error; err != nil {
			t.Fatal(err)
		}
		if err := e.app.data.alerts.Evaluate(ctx); err != nil {
			t.Fatal(err)
		}
		_, body = e.page(viewer, "GET", "/alerts", "", "")
		if strings.Count(body, `data-rule="feed-stalled" data-state=`) != 2 || !strings.Contains(body, `data-state="resolved"`) {
			t.Errorf("after the poll the history does not show firing then resolved:\n%s", body)
		}
		if code, out := e.apiCall(viewer, "GET", "/api/v1/alerts", ""); code != 200 || len(out["history"].([]any)) != 2 {
			t.Errorf("API = %d %v", code, out)
		}

		if code, _ := e.page(admin, "POST", "/alerts/rules/feed-stalled/delete", formType, ""); code != 303 {
			t.Errorf("deleting = %d, want 303", code)
		}
		if _, body := e.page(admin, "GET", "/alerts", "", ""); strings.Contains(body, `<tr data-rule="feed-stalled">`) {
			t.Errorf("the deleted rule is still listed")
		}
	})
}
