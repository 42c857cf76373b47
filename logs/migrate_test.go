package logs_test

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"testing"
	"time"

	"gorm.io/gorm"

	"github.com/fhirsync/fhirsync/logs"
	"github.com/fhirsync/fhirsync/storage"
	"github.com/fhirsync/fhirsync/storage/storagetest"
)

// migrateUpTo applies the repository's migration files up to version
// last, the way storage.Migrate would, and records them as applied, so
// that storage.Migrate afterwards applies only the later ones.
func migrateUpTo(t *testing.T, db *gorm.DB, last int) {
	t.Helper()
	dir := filepath.Join("..", "storage", "migrations")
	entries, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	d := storage.DialectOf(db)
	files := map[int]string{}
	for _, e := range entries {
		name := e.Name()
		num, _, _ := strings.Cut(name, "_")
		v, err := strconv.Atoi(num)
		if err != nil || v > last {
			continue
		}
		specific := strings.HasSuffix(name, "."+string(d)+".sql")
		shared := !strings.HasSuffix(name, ".sqlite.sql") && !strings.HasSuffix(name, ".postgres.sql")
		if specific || (shared && files[v] == "") {
			files[v] = name
		}
	}
	var versions []int
	for v := range files {
		versions = append(versions, v)
	}
	sort.Ints(versions)
	if err := db.Exec(`CREATE TABLE schema_migrations (version INTEGER PRIMARY KEY, name TEXT NOT NULL, applied_at TIMESTAMP NOT NULL)`).Error; err != nil {
		t.Fatal(err)
	}
	for _, v := range versions {
		body, err := os.ReadFile(filepath.Join(dir, files[v]))
		if err != nil {
			t.Fatal(err)
		}
		if err := db.Exec(string(body)).Error; err != nil {
			t.Fatalf("applying %s: %v", files[v], err)
		}
		if err := db.Exec(`INSERT INTO schema_migrations (version, name, applied_at) VALUES (?, ?, ?)`, v, files[v], t0).Error; err != nil {
			t.Fatal(err)
		}
	}
	if versions[len(versions)-1] != last {
		t.Fatalf("migrations found up to %d, want %d", versions[len(versions)-1], last)
	}
}

// TestMigration12KeepsDecisionsKeysAndCaptures applies migration 0012 to a
// database holding decisions, business key hashes and captures written
// before it. SQLite rebuilds sync_decisions to change its CHECKs: the
// rows of all three tables, the ids, the id counter, the indexes and the
// cascading references must all survive.
func TestMigration12KeepsDecisionsKeysAndCaptures(t *testing.T) {
	t.Parallel()
	for _, d := range storagetest.Dialects {
		t.Run(string(d), func(t *testing.T) {
			t.Parallel()
			ctx := context.Background()
			db, err := storage.Open(ctx, storagetest.URL(t, d), storage.Options{})
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { _ = storage.Close(db) })
			migrateUpTo(t, db, 11)

			exec := func(q string, args ...any) {
				t.Helper()
				if err := db.Exec(q, args...).Error; err != nil {
					t.Fatalf("%s: %v", q, err)
				}
			}
			for i := 1; i <= 5; i++ {
				exec(`INSERT INTO sync_decisions (id, decided_at, message_id, direction, entity_map, source_type, source_id,
					target_type, target_id, outcome, reason, changed_fields) VALUES (?, ?, ?, 'fhir_to_crm', 'patient-contact',
					'Patient', ?, 'contact', ?, 'sent', 'updated', '["firstname"]')`,
					i, t0.Add(time.Duration(i)*time.Minute), "m"+strconv.Itoa(i), "p"+strconv.Itoa(i), "c"+strconv.Itoa(i))
				exec(`INSERT INTO sync_decision_keys (decision_id, name, hash) VALUES (?, 'mrn', ?)`, i, "hash-"+strconv.Itoa(i))
				exec(`INSERT INTO sync_decision_captures (decision_id, captured_at, key_id, key_check, source_sealed, target_sealed)
					VALUES (?, ?, 'k1', 'check', ?, ?)`, i, t0, []byte{byte(i), 0, 1}, []byte{byte(i), 2, 3})
			}
			// A later decision retention removed: its id must not be reused.
			exec(`INSERT INTO sync_decisions (id, decided_at, direction, outcome, reason) VALUES (9, ?, 'crm_to_fhir', 'skipped', 'unchanged')`, t0)
			exec(`DELETE FROM sync_decisions WHERE id = 9`)
			if d == storage.Postgres {
				exec(`SELECT setval('sync_decisions_id_seq', 9)`)
			}

			applied, err := storage.Migrate(ctx, db)
			if err != nil {
				t.Fatalf("migrating to 12: %v", err)
			}
			if len(applied) == 0 || applied[0] != 12 {
				t.Fatalf("applied %v, want 12 first", applied)
			}
			if n := count(t, db, "sync_decisions"); n != 5 {
				t.Fatalf("%d decisions after the migration, want 5", n)
			}
			if n := count(t, db, "sync_decision_keys"); n != 5 {
				t.Fatalf("%d business key hashes after the migration, want 5", n)
			}
			if n := count(t, db, "sync_decision_captures"); n != 5 {
				t.Fatalf("%d captures after the migration, want 5", n)
			}
			var sealed []byte
			if err := db.Raw(`SELECT target_sealed FROM sync_decision_captures WHERE decision_id = 3`).Row().Scan(&sealed); err != nil || !bytes.Equal(sealed, []byte{3, 2, 3}) {
				t.Fatalf("capture of decision 3 = %v, %v", sealed, err)
			}

			s, _ := newStore(t, db, nil)
			got, err := s.Get(ctx, 2)
			if err != nil {
				t.Fatal(err)
			}
			if got.Source.ID != "p2" || got.MessageID != "m2" || len(got.BusinessKeys) != 1 || !got.Captured ||
				got.Conflicts != nil || len(got.ChangedFields) != 1 {
				t.Fatalf("decision 2 after the migration = %+v", got)
			}
			page, err := s.Search(ctx, logs.Filter{Record: "p4"}, "", 10)
			if err != nil || len(page.Decisions) != 1 || page.Decisions[0].ID != 4 {
				t.Fatalf("search by record after the migration = %+v, %v", page, err)
			}

			// New decisions use the new CHECKs and column, and continue the ids.
			held := decision(t0, func(d *logs.Decision) {
				d.Outcome, d.Reason = logs.OutcomeHeld, logs.ReasonConflictHeld
				d.Conflicts = []logs.Conflict{{Attribute: "birthDate", Policy: logs.PolicyHold, Held: true}}
			})
			write(t, s, held)
			if held.ID != 10 {
				t.Errorf("new decision id = %d, want 10 (ids are never reused)", held.ID)
			}

			// The references still cascade, to the rebuilt tables.
			exec(`DELETE FROM sync_decisions WHERE id = 1`)
			if n := count(t, db, "sync_decision_keys"); n != 4 {
				t.Errorf("%d key hashes after deleting a decision, want 4 (cascade)", n)
			}
			if n := count(t, db, "sync_decision_captures"); n != 4 {
				t.Errorf("%d captures after deleting a decision, want 4 (cascade)", n)
			}
			if err := db.Exec(`INSERT INTO sync_decision_keys (decision_id, name, hash) VALUES (999, 'mrn', 'x')`).Error; err == nil {
				t.Error("a key hash of a missing decision was accepted")
			}

			if d == storage.SQLite {
				var leftovers []string
				if err := db.Raw(`SELECT name FROM sqlite_master WHERE instr(sql, 'sync_decisions_new') > 0
					OR instr(sql, 'sync_decision_keys_new') > 0 OR instr(sql, 'sync_decision_captures_new') > 0 OR instr(name, '_new') > 0`).Scan(&leftovers).Error; err != nil || len(leftovers) > 0 {
					t.Errorf("schema objects still naming the build tables: %v, %v", leftovers, err)
				}
				var problems []map[string]any
				if err := db.Raw(`PRAGMA foreign_key_check`).Scan(&problems).Error; err != nil || len(problems) > 0 {
					t.Errorf("foreign_key_check = %v, %v", problems, err)
				}
			}
			var indexes []string
			q := `SELECT name FROM sqlite_master WHERE type = 'index' AND name LIKE 'sync_decision%'`
			if d == storage.Postgres {
				q = `SELECT indexname FROM pg_indexes WHERE indexname LIKE 'sync_decision%' AND indexname NOT LIKE '%pkey'`
			}
			if err := db.Raw(q).Scan(&indexes).Error; err != nil {
				t.Fatal(err)
			}
			sort.Strings(indexes)
			want := []string{"sync_decision_captures_time", "sync_decision_keys_hash", "sync_decisions_dashboard", "sync_decisions_map", "sync_decisions_message",
				"sync_decisions_outcome", "sync_decisions_reason", "sync_decisions_source", "sync_decisions_target", "sync_decisions_time"}
			if strings.Join(indexes, ",") != strings.Join(want, ",") {
				t.Errorf("indexes = %v, want %v", indexes, want)
			}
		})
	}
}
