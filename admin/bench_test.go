package admin

import (
	"context"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"gorm.io/gorm"

	"github.com/fhirsync/fhirsync/logs"
	"github.com/fhirsync/fhirsync/storage"
	"github.com/fhirsync/fhirsync/storage/storagetest"
)

// The log explorer benchmark's data: benchRows decisions, one a second
// from benchStart, over benchPatients records in both directions.
const (
	benchRows     = 1_000_000
	benchPatients = 100_000
	benchStart    = 1_700_000_000
	// benchVersion names the cached databases; raise it when the seed changes.
	benchVersion = 1
)

// BenchmarkLogExplorer measures the server time of one page (50
// decisions) of the log explorer, rendered to HTML, with 1,000,000
// decisions stored: the newest page, a filtered page, a record's
// timeline and a page deep inside a filtered listing. The seeded
// databases are kept between runs outside the repository (a SQLite file in
// the system temporary directory, and a PostgreSQL database named
// fhirsync_bench_admin_1m_vN beside the test database).
func BenchmarkLogExplorer(b *testing.B) {
	for _, d := range storagetest.Dialects {
		b.Run(string(d), func(b *testing.B) {
			db := benchDB(b, d)
			h, cookie := benchApp(b, db)
			store, err := logs.New(db, logs.Config{}, nil)
			if err != nil {
				b.Fatal(err)
			}
			// A cursor in the middle of the failed patient-contact listing.
			mid := time.Unix(benchStart+benchRows/2, 0).UTC()
			deep, err := store.Search(context.Background(), logs.Filter{Outcome: logs.OutcomeFailed, EntityMap: "patient-contact", To: mid}, "", 1)
			if err != nil || deep.Next == "" {
				b.Fatalf("finding a deep cursor: %v", err)
			}
			rng := rand.New(rand.NewPCG(1, 2))
			cases := []struct {
				name  string
				query func() string
			}{
				{"newest_page", func() string { return "" }},
				{"filtered", func() string { return "outcome=failed&map=patient-contact&direction=fhir_to_crm" }},
				{"record_timeline", func() string { return fmt.Sprint("record=p", rng.IntN(benchPatients)) }},
				{"deep_page", func() string { return "outcome=failed&map=patient-contact&after=" + url.QueryEscape(deep.Next) }},
			}
			for _, c := range cases {
				b.Run(c.name, func(b *testing.B) {
					rows := 0
					for b.Loop() {
						req := httptest.NewRequest(http.MethodGet, "/logs?"+c.query(), nil)
						req.AddCookie(cookie)
						rec := httptest.NewRecorder()
						h.ServeHTTP(rec, req)
						if rec.Code != http.StatusOK {
							b.Fatalf("GET /logs?%s = %d", c.query(), rec.Code)
						}
						rows += strings.Count(rec.Body.String(), "<tr data-id=")
					}
					b.ReportMetric(b.Elapsed().Seconds()*1000/float64(b.N), "ms/page")
					b.ReportMetric(float64(rows)/float64(b.N), "rows/page")
				})
			}
		})
	}
}

// benchApp mounts the app on db and signs in an auditor.
func benchApp(b *testing.B, db *gorm.DB) (http.Handler, *http.Cookie) {
	b.Helper()
	s := &Server{deps: Deps{DB: db, Registry: prometheus.NewRegistry(), Logger: slog.New(slog.DiscardHandler)}, mux: http.NewServeMux()}
	a, err := s.mount(AppConfig{}, time.Now)
	if err != nil {
		b.Fatal(err)
	}
	a.users.argon = testArgon
	u, err := a.users.Create(context.Background(), "bench", NewUser{Email: fmt.Sprintf("bench-%d@example.org", time.Now().UnixNano()),
		Role: RoleAuditor, Password: testPassword})
	if err != nil {
		b.Fatal(err)
	}
	rec := httptest.NewRecorder()
	if err := a.sessions.start(context.Background(), rec, httptest.NewRequest("GET", "/", nil), u.ID); err != nil {
		b.Fatal(err)
	}
	return s.Handler(), rec.Result().Cookies()[0]
}

// benchDB opens, creating and seeding on first use, a migrated database of
// dialect d holding benchRows decisions.
func benchDB(b *testing.B, d storage.Dialect) *gorm.DB {
	b.Helper()
	ctx := context.Background()
	db := storagetest.Persistent(b, d, fmt.Sprintf("admin_1m_v%d", benchVersion))
	var n int64
	if err := db.Raw("SELECT COUNT(*) FROM sync_decisions").Scan(&n).Error; err != nil {
		b.Fatal(err)
	}
	if n == benchRows {
		return db
	}
	if n != 0 {
		b.Fatalf("the %s benchmark database holds %d decisions, not %d; delete it to reseed", d, n, benchRows)
	}
	start := time.Now()
	if err := benchSeed(ctx, db, d); err != nil {
		b.Fatalf("seeding: %v", err)
	}
	b.Logf("seeded %d decisions on %s in %s", benchRows, d, time.Since(start).Round(time.Second))
	return db
}

// benchSeed generates the decisions inside the database with one
// INSERT … SELECT over a generated series: 60% sent, 30% skipped, 10%
// failed; a seventh of them CRM → FHIR.
func benchSeed(ctx context.Context, db *gorm.DB, d storage.Dialect) error {
	series := fmt.Sprintf(`WITH RECURSIVE s(i) AS (SELECT 0 UNION ALL SELECT i + 1 FROM s WHERE i + 1 < %d) `, benchRows)
	at := fmt.Sprintf(`strftime('%%Y-%%m-%%d %%H:%%M:%%S', %d + i, 'unixepoch') || '+00:00'`, benchStart)
	from := `FROM s`
	if d == storage.Postgres {
		series = ""
		at = fmt.Sprintf(`to_timestamp(%d + i)`, benchStart)
		from = fmt.Sprintf(`FROM generate_series(0, %d) AS g(i)`, benchRows-1)
	}
	p := fmt.Sprintf(`(i %% %d)`, benchPatients)
	insert := series + `INSERT INTO sync_decisions (decided_at, correlation_id, message_id, direction, entity_map,
		map_version, source_type, source_id, source_version, target_type, target_id, target_version,
		outcome, reason, message, changed_fields, attempts, duration_us)
	SELECT ` + at + `, 'corr-' || i, 'msg-' || i,
		CASE WHEN i % 7 = 0 THEN 'crm_to_fhir' ELSE 'fhir_to_crm' END,
		CASE WHEN i % 3 = 0 THEN 'patient-account' ELSE 'patient-contact' END, 1 + i % 4,
		CASE WHEN i % 7 = 0 THEN 'contact' ELSE 'Patient' END,
		CASE WHEN i % 7 = 0 THEN 'c' || ` + p + ` ELSE 'p' || ` + p + ` END, '1',
		CASE WHEN i % 7 = 0 THEN 'Patient' ELSE 'contact' END,
		CASE WHEN i % 7 = 0 THEN 'p' || ` + p + ` ELSE 'c' || ` + p + ` END, '',
		CASE WHEN i % 10 < 6 THEN 'sent' WHEN i % 10 < 9 THEN 'skipped' ELSE 'failed' END,
		CASE WHEN i % 10 < 6 THEN 'updated' WHEN i % 10 < 9 THEN 'unchanged' ELSE 'throttled' END,
		'Updated contact.', '["firstname"]', '[]', 1000 + i % 5000 ` + from
	if err := db.WithContext(ctx).Exec(insert).Error; err != nil {
		return fmt.Errorf("inserting decisions: %w", err)
	}
	return db.WithContext(ctx).Exec(`ANALYZE`).Error
}
