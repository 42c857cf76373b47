package admin

import (
	"regexp"
	"strings"
	"testing"
	"time"

	"gorm.io/gorm"

	"github.com/fhirsync/fhirsync/storage/storagetest"
)

// TestBackfillsPage shows the backfill runs another process stored: the
// progress of a running walk with its estimate, a walk whose process went
// silent flagged as such, and a finished one; every role that reads the
// dashboard sees the page.
func TestBackfillsPage(t *testing.T) {
	storagetest.Each(t, func(t *testing.T, db *gorm.DB) {
		e := newTestEnv(t, db, AppConfig{})
		now := e.clock.now()
		insert := func(id, mapName, state string, done, total int64, rate float64, updated time.Time) {
			t.Helper()
			err := db.Exec(`INSERT INTO backfill_runs (id, map_name, side, origin, state, done, total, rate, queued, throttled_ms,
				changed_at, started_at, updated_at) VALUES (?, ?, 'fhir', 'backfill', ?, ?, ?, ?, 1200, 65000, ?, ?, ?)`,
				id, mapName, state, done, total, rate, now, updated.Add(-time.Hour), updated).Error
			if err != nil {
				t.Fatal(err)
			}
		}
		insert("run-live", "patient-contact", "running", 250000, 1000000, 500, now.Add(-5*time.Second))
		insert("run-dead", "encounter", "running", 10, -1, 3, now.Add(-10*time.Minute))
		insert("run-done", "practitioner-contact", "done", 40, 40, 20, now.Add(-2*time.Hour))

		for _, role := range Roles {
			code, body := e.page(e.as(e.user(string(role)+"@example.org", role, false)), "GET", "/backfills", "", "")
			if code != 200 {
				t.Fatalf("/backfills as %s = %d", role, code)
			}
			if role != RoleViewer {
				continue
			}
			row := func(id string) string {
				m := regexp.MustCompile(`(?s)<tr data-id="` + id + `">.*?</tr>`).FindString(body)
				if m == "" {
					t.Fatalf("no row for %s:\n%s", id, body)
				}
				return m
			}
			live := row("run-live")
			// 250,000 enqueued, 1,200 of them still queued: 248,800
			// processed, 751,200 to go at 500 records/s: 25m2s.
			for _, want := range []string{"patient-contact", "<td>250000</td>", "<td>1000000</td>", "25.0 %", "<td>248800</td>", "<td>500</td>", "25m2s", "<td>1200</td>", "1m5s"} {
				if !strings.Contains(live, want) {
					t.Errorf("the running walk's row lacks %q:\n%s", want, live)
				}
			}
			if strings.Contains(live, "data-stale") {
				t.Errorf("a walk saved 5s ago is flagged as stopped:\n%s", live)
			}
			dead := row("run-dead")
			if !strings.Contains(dead, "data-stale") || !strings.Contains(dead, "unknown") {
				t.Errorf("a running walk silent for 10 minutes, total unknown:\n%s", dead)
			}
			if done := row("run-done"); !strings.Contains(done, "status-backfill-done") || !strings.Contains(done, "100.0 %") || strings.Contains(done, "data-stale") {
				t.Errorf("the finished walk's row:\n%s", done)
			}
			if !strings.Contains(body, `href="/backfills"`) {
				t.Error("the navigation has no link to the backfills page")
			}
		}
	})
}
