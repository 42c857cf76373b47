package storage

import (
	"context"
	"database/sql"
	"fmt"
	"math/rand/v2"
	"path/filepath"
	"testing"

	_ "github.com/mattn/go-sqlite3" // the other pool's driver, "sqlite3"
	"gorm.io/gorm"
)

// TestWALWritesGathered: a transaction that dirties a few hundred pages
// reaches the WAL file in a few write calls, not two per page, and the
// database reads back whole.
func TestWALWritesGathered(t *testing.T) {
	db, _ := openKeyedTable(t, SyncFull)
	const rows = 3000
	writes0, calls0 := walWrites()
	tx := db.Begin()
	for i := range rows {
		// Keys at random places in the index: pages all over it.
		if err := tx.Exec(`INSERT INTO t (k, v) VALUES (?, ?)`, fmt.Sprintf("%016x", rand.Uint64()), fmt.Sprintf("value %d, padded to a hundred bytes or so so that rows fill pages quickly %d", i, i)).Error; err != nil {
			t.Fatal(err)
		}
	}
	if err := tx.Commit().Error; err != nil {
		t.Fatal(err)
	}
	writes, calls := walWrites()
	writes, calls = writes-writes0, calls-calls0
	// Two writes a page: a few hundred pages of rows and index.
	if writes < 200 {
		t.Fatalf("%d writes to the WAL for %d rows: the database is not using the VFS", writes, rows)
	}
	// Other tests of the package may write meanwhile; each of theirs is
	// at most one call per transaction.
	if calls*20 > writes {
		t.Errorf("%d writes to the WAL went out in %d calls; want them gathered (at most one call in 20)", writes, calls)
	}
	var n int64
	if err := db.Raw(`SELECT COUNT(*) FROM t`).Scan(&n).Error; err != nil || n != rows {
		t.Fatalf("read back %d rows (%v), want %d", n, err, rows)
	}
	var check string
	if err := db.Raw(`PRAGMA integrity_check`).Scan(&check).Error; err != nil || check != "ok" {
		t.Fatalf("integrity_check: %q, %v", check, err)
	}
}

// TestWALCommitsVisibleAtOnce: with synchronous=NORMAL SQLite does not sync
// the WAL at a commit, so nothing but the commit itself tells the VFS to
// write its gathered frames out. A connection of another pool, on SQLite's
// default VFS (as another process would be), must read every commit as
// soon as it returned: a frame published in the WAL index but not yet in
// the file would read as zeros or an old page.
func TestWALCommitsVisibleAtOnce(t *testing.T) {
	for _, sync := range []string{SyncNormal, SyncFull} {
		t.Run(sync, func(t *testing.T) {
			db, path := openKeyedTable(t, sync)
			other, err := sql.Open("sqlite3", "file:"+path+"?_busy_timeout=5000")
			if err != nil {
				t.Fatal(err)
			}
			defer other.Close()
			other.SetMaxOpenConns(1)
			for i := 1; i <= 300; i++ {
				tx := db.Begin()
				for j := range 5 {
					blob := make([]byte, 700)
					for b := range blob {
						blob[b] = byte(i + j + b)
					}
					if err := tx.Exec(`INSERT INTO t (id, k, v) VALUES (?, ?, ?)`, i*10+j, fmt.Sprintf("%016x", rand.Uint64()), blob).Error; err != nil {
						t.Fatal(err)
					}
				}
				if err := tx.Commit().Error; err != nil {
					t.Fatal(err)
				}
				var n, sum int64
				if err := other.QueryRow(`SELECT COUNT(*), SUM(length(v) + unicode(substr(v, 3, 1))) FROM t WHERE id BETWEEN ? AND ?`, i*10, i*10+4).Scan(&n, &sum); err != nil {
					t.Fatalf("commit %d, read by another connection: %v", i, err)
				}
				// unicode() of a blob's byte reads it as text: compare
				// with what the same query gives on the writer's side.
				var wn, wsum int64
				if err := db.Raw(`SELECT COUNT(*), SUM(length(v) + unicode(substr(v, 3, 1))) FROM t WHERE id BETWEEN ? AND ?`, i*10, i*10+4).Row().Scan(&wn, &wsum); err != nil {
					t.Fatal(err)
				}
				if n != 5 || n != wn || sum != wsum {
					t.Fatalf("commit %d: another connection read %d rows (sum %d), the writer's %d (sum %d)", i, n, sum, wn, wsum)
				}
			}
			var check string
			if err := other.QueryRow(`PRAGMA integrity_check`).Scan(&check); err != nil || check != "ok" {
				t.Fatalf("integrity_check: %q, %v", check, err)
			}
		})
	}
}

// openKeyedTable opens a new database with synchronous setting sync and
// creates table t (id, k, v) with an index on k, closed when t ends.
func openKeyedTable(t *testing.T, sync string) (*gorm.DB, string) {
	t.Helper()
	path := filepath.Join(t.TempDir(), "wal.db")
	db, err := Open(context.Background(), "sqlite:"+path, Options{SQLiteSynchronous: sync})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { Close(db) })
	for _, q := range []string{`CREATE TABLE t (id INTEGER PRIMARY KEY, k TEXT NOT NULL, v BLOB NOT NULL)`, `CREATE INDEX t_k ON t (k)`} {
		if err := db.Exec(q).Error; err != nil {
			t.Fatal(err)
		}
	}
	return db, path
}
