package logs

import (
	"context"
	"fmt"
	"math/rand/v2"
	"strings"
	"testing"
	"time"

	"gorm.io/gorm"

	"github.com/fhirsync/fhirsync/internal/proccpu"
	"github.com/fhirsync/fhirsync/storage"
	"github.com/fhirsync/fhirsync/storage/storagetest"
)

// benchConfig is the store configuration of every benchmark.
var benchConfig = Config{KeySecret: "YmVuY2htYXJrLWtleS1zZWNyZXQtMzI=", Holder: "bench"}

// BenchmarkWriteBatch measures decisions written per second into a fresh
// database, in batches of 500, each with a business key, as the agent
// writes them.
func BenchmarkWriteBatch(b *testing.B) {
	for _, d := range storagetest.Dialects {
		b.Run(string(d), func(b *testing.B) {
			s, err := New(storagetest.Open(b, d), benchConfig, nil)
			if err != nil {
				b.Fatal(err)
			}
			writeBatches(b, s)
		})
	}
}

// writeBatches is the loop of the write benchmarks.
func writeBatches(b *testing.B, s *Store) {
	const batch = 500
	ctx := context.Background()
	n := 0
	start, startCPU := time.Now(), proccpu.Used()
	for b.Loop() {
		ds := make([]*Decision, batch)
		for i := range ds {
			n++
			ds[i] = &Decision{
				Time: time.Now(), MessageID: fmt.Sprint("m", n), CorrelationID: fmt.Sprint("c", n),
				Direction: FHIRToCRM, EntityMap: "patient-contact", MapVersion: 1,
				Source:       Ref{Type: "Patient", ID: fmt.Sprint("p", n%10000), Version: "1"},
				Target:       Ref{Type: "contact", ID: fmt.Sprint("c", n%10000)},
				BusinessKeys: []BusinessKey{{Name: "mrn", Value: fmt.Sprint("MRN", n%10000)}},
				Outcome:      OutcomeSent, Reason: ReasonUpdated, Message: "Patient updated contact.",
				ChangedFields: []string{"firstname", "lastname"}, Duration: time.Millisecond,
				Attempts: []Attempt{{At: time.Now()}},
			}
		}
		if err := s.WriteBatch(ctx, ds); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportMetric(float64(n)/time.Since(start).Seconds(), "decisions/s")
	// On a shared machine wall time includes waiting for a core; this is
	// the rate per second of this process's own CPU (for SQLite, the
	// whole cost; for PostgreSQL, the client side only).
	if cpu := proccpu.Used() - startCPU; cpu > 0 {
		b.ReportMetric(float64(n)/cpu.Seconds(), "decisions/cpu-s")
	}
}

const (
	seedRows     = 1_000_000
	seedPatients = 100_000
	// seedVersion names the seeded databases; bump it when the seed or the
	// schema of migration 0004 changes.
	seedVersion = 1
	// seedStart is the Unix time of the first seeded decision; one follows
	// each second.
	seedStart = 1767225600
)

// BenchmarkAt1M measures, with 1,000,000 decisions stored (100,000
// patients, about ten decisions each, in both directions), one page (50)
// of a record's timeline by record id and by business key, and batched
// writes into the full tables (removed again afterwards). The seeded
// databases are kept outside the repository between runs: a SQLite file in
// the system temporary directory and a PostgreSQL database named
// fhirsync_bench_logs_1m_vN beside the test database.
func BenchmarkAt1M(b *testing.B) {
	for _, d := range storagetest.Dialects {
		b.Run(string(d), func(b *testing.B) {
			db := seededDB(b, d)
			s, err := New(db, benchConfig, nil)
			if err != nil {
				b.Fatal(err)
			}
			ctx := context.Background()
			rng := rand.New(rand.NewPCG(1, 2))
			// record_linked is the admin app's exact timeline (the record and
			// the records linked to it); record_prefix its default search, a
			// case-insensitive prefix, which no index serves.
			for _, kind := range []string{"record", "record_linked", "record_prefix", "business_key"} {
				b.Run("timeline_"+kind, func(b *testing.B) {
					rows := 0
					for b.Loop() {
						n := rng.IntN(seedPatients)
						f := Filter{Record: fmt.Sprint("p", n)}
						switch kind {
						case "record_linked":
							f.Linked = true
						case "record_prefix":
							f = Filter{Record: fmt.Sprint("P", n), RecordPrefix: true, Linked: true}
						case "business_key":
							f = Filter{BusinessKey: BusinessKey{Name: "mrn", Value: fmt.Sprint("MRN", n)}}
						}
						page, err := s.Search(ctx, f, "", 50)
						if err != nil {
							b.Fatal(err)
						}
						if len(page.Decisions) == 0 {
							b.Fatalf("empty timeline for patient %d", n)
						}
						rows += len(page.Decisions)
					}
					b.ReportMetric(float64(rows)/float64(b.N), "rows/op")
				})
			}
			// A page deep inside a filtered listing costs what the first
			// page does: the cursor is an index position, not an offset.
			b.Run("search_deep_page", func(b *testing.B) {
				rows := 0
				for b.Loop() {
					at := time.Unix(seedStart+rng.Int64N(seedRows), 0).UTC()
					after := cursor{at: at, id: seedRows + 1}.encode()
					page, err := s.Search(ctx, Filter{Outcome: OutcomeFailed, EntityMap: "patient-contact"}, after, 50)
					if err != nil {
						b.Fatal(err)
					}
					rows += len(page.Decisions)
				}
				b.ReportMetric(float64(rows)/float64(b.N), "rows/op")
			})
			b.Run("write_batch", func(b *testing.B) {
				b.Cleanup(func() {
					if err := db.Exec("DELETE FROM sync_decisions WHERE id > (SELECT MIN(id) FROM sync_decisions) + ?", seedRows-1).Error; err != nil {
						b.Errorf("removing benchmark writes: %v", err)
					}
				})
				writeBatches(b, s)
			})
		})
	}
}

// seededDB opens (creating and seeding on first use) a migrated database
// of dialect d holding seedRows decisions.
func seededDB(b *testing.B, d storage.Dialect) *gorm.DB {
	b.Helper()
	ctx := context.Background()
	db := storagetest.Persistent(b, d, fmt.Sprintf("logs_1m_v%d", seedVersion))
	var n int64
	if err := db.Raw("SELECT COUNT(*) FROM sync_decisions").Scan(&n).Error; err != nil {
		b.Fatal(err)
	}
	if n == seedRows {
		return db
	}
	if n != 0 {
		b.Fatalf("the %s benchmark database holds %d decisions, not %d; delete it to reseed", d, n, seedRows)
	}
	start := time.Now()
	if err := seed(ctx, db, d); err != nil {
		b.Fatalf("seeding: %v", err)
	}
	b.Logf("seeded %d decisions on %s in %s", seedRows, d, time.Since(start).Round(time.Second))
	return db
}

// seed generates the decisions inside the database (one INSERT … SELECT
// over a generated series) and the business key hashes from a 100,000-row
// lookup table written with multi-row INSERTs.
func seed(ctx context.Context, db *gorm.DB, d storage.Dialect) error {
	series := fmt.Sprintf(`WITH RECURSIVE s(i) AS (SELECT 0 UNION ALL SELECT i + 1 FROM s WHERE i + 1 < %d) `, seedRows)
	at := fmt.Sprintf(`strftime('%%Y-%%m-%%d %%H:%%M:%%S', %d + i, 'unixepoch') || '+00:00'`, seedStart)
	from := `FROM s`
	cat := `||`
	if d == storage.Postgres {
		series = ""
		at = fmt.Sprintf(`to_timestamp(%d + i)`, seedStart)
		from = fmt.Sprintf(`FROM generate_series(0, %d) AS g(i)`, seedRows-1)
	}
	p := `(i % ` + fmt.Sprint(seedPatients) + `)`
	insert := series + `INSERT INTO sync_decisions (decided_at, correlation_id, message_id, direction, entity_map,
		map_version, source_type, source_id, source_version, target_type, target_id, target_version,
		outcome, reason, message, changed_fields, attempts, duration_us)
	SELECT ` + at + `, 'corr-' ` + cat + ` i, 'msg-' ` + cat + ` i,
		CASE WHEN i % 7 = 0 THEN 'crm_to_fhir' ELSE 'fhir_to_crm' END,
		CASE WHEN i % 3 = 0 THEN 'patient-account' ELSE 'patient-contact' END, 1 + i % 4,
		CASE WHEN i % 7 = 0 THEN 'contact' ELSE 'Patient' END,
		CASE WHEN i % 7 = 0 THEN 'c' ` + cat + ` ` + p + ` ELSE 'p' ` + cat + ` ` + p + ` END, '' ` + cat + ` (i / 100000),
		CASE WHEN i % 7 = 0 THEN 'Patient' ELSE 'contact' END,
		CASE WHEN i % 7 = 0 THEN 'p' ` + cat + ` ` + p + ` ELSE 'c' ` + cat + ` ` + p + ` END, '',
		CASE WHEN i % 10 < 6 THEN 'sent' WHEN i % 10 < 9 THEN 'skipped' ELSE 'failed' END,
		CASE WHEN i % 10 < 6 THEN 'updated' WHEN i % 10 < 9 THEN 'unchanged' ELSE 'throttled' END,
		'Patient updated contact.', '["firstname"]', '[]', 1000 + i % 5000 ` + from
	s, err := New(db, benchConfig, nil)
	if err != nil {
		return err
	}
	err = db.WithContext(ctx).Transaction(func(tx *gorm.DB) error {
		if err := tx.Exec(insert).Error; err != nil {
			return fmt.Errorf("inserting decisions: %w", err)
		}
		if err := tx.Exec(`CREATE TEMPORARY TABLE bench_keys (n BIGINT PRIMARY KEY, hash TEXT NOT NULL)`).Error; err != nil {
			return err
		}
		const chunk = 1000
		for lo := 0; lo < seedPatients; lo += chunk {
			var sb strings.Builder
			sb.WriteString("INSERT INTO bench_keys (n, hash) VALUES ")
			for n := lo; n < lo+chunk; n++ {
				if n > lo {
					sb.WriteString(",")
				}
				fmt.Fprintf(&sb, "(%d,'%s')", n, s.keyHash("mrn", fmt.Sprint("MRN", n)))
			}
			if err := tx.Exec(sb.String()).Error; err != nil {
				return fmt.Errorf("inserting key lookup: %w", err)
			}
		}
		if err := tx.Exec(`INSERT INTO sync_decision_keys (decision_id, name, hash)
			SELECT d.id, 'mrn', k.hash FROM sync_decisions d JOIN bench_keys k ON k.n = (d.id - 1) % ` +
			fmt.Sprint(seedPatients)).Error; err != nil {
			return fmt.Errorf("inserting key hashes: %w", err)
		}
		return tx.Exec(`DROP TABLE bench_keys`).Error
	})
	if err != nil {
		return err
	}
	return db.WithContext(ctx).Exec(`ANALYZE`).Error
}

// BenchmarkWriteBatchSmall measures decisions written in batches of 25, the
// size of the agent's group commits under load, into a log that already
// holds 50,000, with source, target and message ids spread over the
// indexes as real ones are. cpu-µs/decision is this process's CPU time
// per decision (on SQLite, the whole cost).
func BenchmarkWriteBatchSmall(b *testing.B) {
	for _, d := range storagetest.Dialects {
		b.Run(string(d), func(b *testing.B) {
			s, err := New(storagetest.Open(b, d), benchConfig, nil)
			if err != nil {
				b.Fatal(err)
			}
			ctx := context.Background()
			n := 0
			batch := func(size int) []*Decision {
				ds := make([]*Decision, size)
				for i := range ds {
					n++
					ds[i] = &Decision{
						Time: time.Now(), MessageID: fmt.Sprintf("m%x", n*2654435761%1000003), CorrelationID: fmt.Sprint("c", n),
						Direction: FHIRToCRM, EntityMap: "patient-contact", MapVersion: 1,
						Source:       Ref{Type: "Patient", ID: fmt.Sprintf("p%x", n*40503%65521), Version: "1"},
						Target:       Ref{Type: "contact", ID: fmt.Sprintf("c%x", n*7919%65519)},
						BusinessKeys: []BusinessKey{{Name: "mrn", Value: fmt.Sprint("MRN", n)}},
						Outcome:      OutcomeSent, Reason: ReasonUpdated, Message: "Patient updated contact.",
						ChangedFields: []string{"firstname", "lastname"}, Duration: time.Millisecond,
						Attempts: []Attempt{{At: time.Now()}},
					}
				}
				return ds
			}
			for range 100 {
				if err := s.WriteBatch(ctx, batch(500)); err != nil {
					b.Fatal(err)
				}
			}
			const size = 25
			start := proccpu.Used()
			written := 0
			for b.Loop() {
				if err := s.WriteBatch(ctx, batch(size)); err != nil {
					b.Fatal(err)
				}
				written += size
			}
			if cpu := proccpu.Used() - start; cpu > 0 {
				b.ReportMetric(float64(cpu.Microseconds())/float64(written), "cpu-µs/decision")
			}
		})
	}
}
