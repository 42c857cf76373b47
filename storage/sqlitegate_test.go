package storage

import (
	"context"
	"errors"
	"fmt"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"gorm.io/gorm"
)

func openSQLite(t *testing.T, busy time.Duration) *gorm.DB {
	t.Helper()
	db, err := Open(context.Background(), "sqlite:"+filepath.Join(t.TempDir(), "gate.db"), Options{BusyTimeout: busy})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = Close(db) })
	return db
}

// writeConcurrently runs writers goroutines of perWriter writes each,
// alternating a transaction of several statements with a plain insert, and
// returns every error met. Each transaction adds two rows to gate_rows and
// one to gate_counter.n; each plain insert adds one row.
func writeConcurrently(db *gorm.DB, writers, perWriter int) []error {
	var (
		mu   sync.Mutex
		errs []error
		wg   sync.WaitGroup
	)
	for w := range writers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range perWriter {
				var err error
				if i%2 == 0 {
					err = db.Transaction(func(tx *gorm.DB) error {
						var n int64
						if err := tx.Raw(`SELECT COUNT(*) FROM gate_rows WHERE writer = ?`, w).Scan(&n).Error; err != nil {
							return fmt.Errorf("counting: %w", err)
						}
						if err := tx.Exec(`INSERT INTO gate_rows (writer, n) VALUES (?, ?)`, w, i).Error; err != nil {
							return fmt.Errorf("first insert: %w", err)
						}
						if err := tx.Exec(`UPDATE gate_counter SET n = n + 1 WHERE id = 1`).Error; err != nil {
							return fmt.Errorf("update: %w", err)
						}
						if err := tx.Exec(`INSERT INTO gate_rows (writer, n) VALUES (?, ?)`, w, -i).Error; err != nil {
							return fmt.Errorf("second insert: %w", err)
						}
						return nil
					})
				} else {
					err = db.Exec(`INSERT INTO gate_rows (writer, n) VALUES (?, ?)`, w, i).Error
				}
				if err != nil {
					mu.Lock()
					errs = append(errs, fmt.Errorf("writer %d, write %d: %w", w, i, err))
					mu.Unlock()
				}
			}
		}()
	}
	wg.Wait()
	return errs
}

func createGateTables(t *testing.T, db *gorm.DB) {
	t.Helper()
	for _, stmt := range []string{
		`CREATE TABLE gate_rows (id INTEGER PRIMARY KEY, writer INTEGER NOT NULL, n INTEGER NOT NULL)`,
		`CREATE TABLE gate_counter (id INTEGER PRIMARY KEY, n INTEGER NOT NULL)`,
		`INSERT INTO gate_counter (id, n) VALUES (1, 0)`,
	} {
		if err := db.Exec(stmt).Error; err != nil {
			t.Fatal(err)
		}
	}
}

// Many goroutines writing at once must all succeed within a short busy
// timeout: the gate hands the write lock over in Go, so no writer sleeps
// in SQLite's busy handler until it gives up with "database is locked".
//
// The timeout is short on purpose. Without the gate, writers that sleep in
// the busy handler (up to 100 ms a try) lose the lock to the others and
// some give up within 150 ms; with it, writers queue for the gate (for up
// to minGateWait, however short the busy timeout) and never meet the lock
// in SQLite.
func TestSQLiteWritersDoNotWaitInBusyHandler(t *testing.T) {
	t.Parallel()
	const writers, perWriter = 32, 50
	db := openSQLite(t, 150*time.Millisecond)
	createGateTables(t, db)

	if errs := writeConcurrently(db, writers, perWriter); len(errs) > 0 {
		t.Fatalf("%d of %d writes failed; first: %v", len(errs), writers*perWriter, errs[0])
	}

	txs := writers * perWriter / 2
	plain := writers*perWriter - txs
	var rows, counter int64
	if err := db.Raw(`SELECT COUNT(*) FROM gate_rows`).Scan(&rows).Error; err != nil {
		t.Fatal(err)
	}
	if err := db.Raw(`SELECT n FROM gate_counter WHERE id = 1`).Scan(&counter).Error; err != nil {
		t.Fatal(err)
	}
	if want := int64(2*txs + plain); rows != want {
		t.Errorf("gate_rows has %d rows, want %d", rows, want)
	}
	if counter != int64(txs) {
		t.Errorf("gate_counter = %d, want %d committed transactions", counter, txs)
	}
}

// A goroutine that writes through the pool while it holds a transaction
// cannot get the gate (its own transaction has it). It must go ahead after
// the gate's wait and fail on SQLite's lock, not wait for itself forever.
func TestSQLiteWriteBesideOwnTransactionDoesNotDeadlock(t *testing.T) {
	t.Parallel()
	const busy = 300 * time.Millisecond
	db := openSQLite(t, busy)
	createGateTables(t, db)

	// A deadlock ends at the context's deadline instead of hanging the test.
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	var inner error
	var took time.Duration
	errBack := errors.New("roll back")
	err := db.WithContext(ctx).Transaction(func(tx *gorm.DB) error {
		if err := tx.Exec(`INSERT INTO gate_rows (writer, n) VALUES (1, 1)`).Error; err != nil {
			return err
		}
		start := time.Now()
		inner = db.WithContext(ctx).Exec(`INSERT INTO gate_rows (writer, n) VALUES (2, 2)`).Error
		took = time.Since(start)
		return errBack
	})
	if !errors.Is(err, errBack) {
		t.Fatalf("transaction err = %v, want the rollback sentinel", err)
	}
	if errors.Is(inner, context.DeadlineExceeded) || ctx.Err() != nil {
		t.Fatalf("write beside the transaction waited %v until the test's deadline: deadlock", took)
	}
	if inner == nil {
		t.Fatalf("write beside an open write transaction succeeded; want SQLite's lock error")
	}
	if took < busy {
		t.Errorf("write beside the transaction failed after %v, before the %v busy timeout: %v", took, busy, inner)
	}

	// The gate was released with the transaction, and the pool writes again.
	g, ok := db.ConnPool.(*writeGate)
	if !ok {
		t.Fatalf("the pool is a %T, not the write gate", db.ConnPool)
	}
	if len(g.sem) != 0 {
		t.Fatalf("the gate is still held after the transaction ended")
	}
	if err := db.WithContext(ctx).Exec(`INSERT INTO gate_rows (writer, n) VALUES (3, 3)`).Error; err != nil {
		t.Fatalf("write after the transaction ended: %v", err)
	}
	var rows int64
	if err := db.Raw(`SELECT COUNT(*) FROM gate_rows`).Scan(&rows).Error; err != nil {
		t.Fatal(err)
	}
	if rows != 1 {
		t.Fatalf("gate_rows has %d rows, want only the write made after the rollback", rows)
	}
}

func TestIsRead(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name  string
		query string
		want  bool
	}{
		{name: "select", query: `SELECT 1`, want: true},
		{name: "lower case", query: `select seq from queue_messages`, want: true},
		{name: "leading spaces", query: `   SELECT 1`, want: true},
		{name: "leading newline and tab", query: "\n\t\tSELECT COUNT(*) FROM t", want: true},
		{name: "parenthesised", query: `(SELECT 1) UNION (SELECT 2)`, want: true},
		{name: "explain", query: `EXPLAIN QUERY PLAN SELECT 1`, want: true},
		{name: "explain lower case", query: "explain\nselect 1", want: true},
		{name: "with is treated as a write", query: `WITH x AS (SELECT 1) SELECT * FROM x`},
		{name: "with before delete", query: `WITH old AS (SELECT id FROM t) DELETE FROM t WHERE id IN old`},
		{name: "insert", query: `INSERT INTO t (a) VALUES (1)`},
		{name: "insert returning", query: `INSERT INTO t (a) VALUES (1) RETURNING id`},
		{name: "update", query: `  UPDATE t SET a = 1`},
		{name: "delete", query: "\nDELETE FROM t"},
		{name: "pragma", query: `PRAGMA journal_mode`},
		{name: "begin", query: `BEGIN IMMEDIATE`},
		{name: "too short", query: `SELEC`},
		{name: "empty", query: ``},
		{name: "only blanks", query: " \n\t("},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			if got := isRead(tt.query); got != tt.want {
				t.Fatalf("isRead(%q) = %v, want %v", tt.query, got, tt.want)
			}
		})
	}
}

// The gate must stay invisible to code that asks gorm for the pool:
// Close, pool settings and SameDatabase all go through db.DB().
func TestGatedDatabaseKeepsItsPool(t *testing.T) {
	t.Parallel()
	a := openSQLite(t, time.Second)
	b := openSQLite(t, time.Second)
	if _, ok := a.Config.ConnPool.(*writeGate); !ok {
		t.Fatalf("Open installed %T for SQLite, want *writeGate", a.Config.ConnPool)
	}
	pool, err := a.DB()
	if err != nil || pool == nil {
		t.Fatalf("DB() = %v, %v; want the pool", pool, err)
	}
	if got := pool.Stats().MaxOpenConnections; got != 16 {
		t.Errorf("pool MaxOpenConnections = %d, want Open's default 16 (settings reach the real pool)", got)
	}
	ctx := context.Background()
	if !SameDatabase(a, a.WithContext(ctx)) {
		t.Error("SameDatabase(db, db.WithContext(ctx)) = false, want true")
	}
	if SameDatabase(a, b) {
		t.Error("SameDatabase of two Opens = true, want false")
	}
	err = a.Transaction(func(tx *gorm.DB) error {
		txPool, err := tx.DB()
		if err != nil {
			return fmt.Errorf("DB() inside a transaction: %w", err)
		}
		if txPool != pool {
			return fmt.Errorf("DB() inside a transaction = %p, want the pool %p", txPool, pool)
		}
		if !SameDatabase(a, tx) || SameDatabase(b, tx) {
			return errors.New("SameDatabase does not place the transaction on its own database")
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}

// TestSQLiteWriteTransactionsShareOneConnection: every gated transaction
// runs on the writer connection, so its page cache stays warm. A TEMP table
// lives on one connection only: rows each transaction adds to it are all
// there in the last one, although reads in between rotate the pool.
func TestSQLiteWriteTransactionsShareOneConnection(t *testing.T) {
	db := openSQLite(t, time.Second)
	if err := db.Exec(`CREATE TABLE shared_rows (n INTEGER)`).Error; err != nil {
		t.Fatal(err)
	}
	const txs = 20
	for i := range txs {
		err := db.Transaction(func(tx *gorm.DB) error {
			if err := tx.Exec(`CREATE TEMP TABLE IF NOT EXISTS writer_probe (n INTEGER)`).Error; err != nil {
				return err
			}
			if err := tx.Exec(`INSERT INTO temp.writer_probe (n) VALUES (?)`, i).Error; err != nil {
				return err
			}
			return tx.Exec(`INSERT INTO shared_rows (n) VALUES (?)`, i).Error
		})
		if err != nil {
			t.Fatalf("transaction %d: %v", i, err)
		}
		// Reads outside a transaction hold several pool connections at
		// once, so the pool hands out different ones.
		var wg sync.WaitGroup
		for range 4 {
			wg.Go(func() {
				var n int64
				if err := db.Raw(`SELECT count(*) FROM shared_rows`).Scan(&n).Error; err != nil {
					t.Error(err)
				}
			})
		}
		wg.Wait()
	}
	var probe, shared int64
	err := db.Transaction(func(tx *gorm.DB) error {
		if err := tx.Raw(`SELECT count(*) FROM temp.writer_probe`).Scan(&probe).Error; err != nil {
			return err
		}
		return tx.Raw(`SELECT count(*) FROM shared_rows`).Scan(&shared).Error
	})
	if err != nil {
		t.Fatal(err)
	}
	if probe != txs || shared != txs {
		t.Fatalf("writer's TEMP table holds %d rows and the shared table %d, want %d each: write transactions ran on more than one connection", probe, shared, txs)
	}
}
