package storage

import (
	"context"
	"database/sql"
	"database/sql/driver"
	"errors"
	"strconv"
	"strings"
	"sync"
	"time"

	"gorm.io/gorm"
)

// writeGate is the connection pool gorm uses for SQLite. It does two
// things the driver does not.
//
// It serialises one process's writers in Go. SQLite admits one writer at a
// time. Without the gate, writers on the pool's other connections meet
// SQLITE_BUSY and wait in SQLite's busy handler, which sleeps 1, 2, 5, 10 …
// 100 ms between tries: under load a few microseconds of waiting turn into
// tens of milliseconds, and a process that writes from many goroutines (the
// agent's workers, the embedded queue, the decision log) spends most of its
// time asleep. The gate hands the write lock over at once instead, in
// arrival order. Every transaction is gated, because the SQLite DSN begins
// them all IMMEDIATE (they take the write lock at BEGIN); statements
// outside a transaction are gated unless they are plain reads. Readers
// never wait: WAL lets them run beside the writer. The gate only orders this
// process's writers; other processes on the same file still meet SQLite's
// busy handler. A writer that cannot get the gate within the busy timeout
// (at least minGateWait) goes ahead without it, so a caller that writes
// through the pool while holding a transaction fails as it would without
// the gate (SQLite's busy timeout decides) instead of deadlocking.
//
// It runs every gated transaction on one connection, the writer. SQLite
// empties a connection's page cache whenever another connection has
// changed the database since that connection's last transaction: with
// writes spread over the pool, every write transaction started cold and
// read the upper levels of each B-tree it touched again. The writer's own
// commits leave its cache warm. Reads still use the whole pool.
//
// And it keeps statements prepared. Preparing is a large part of a short
// statement's cost on SQLite, and the mattn driver prepares every statement
// it runs. The gate prepares each statement text once on the pool and runs
// it on whichever connection (or transaction) needs it; database/sql keeps
// one prepared copy per connection. gorm's own statement cache cannot be
// used for this: a statement it first meets inside a transaction is
// prepared on that transaction and again in every later one.
type writeGate struct {
	db   *sql.DB
	sem  chan struct{}
	wait time.Duration

	mu    sync.RWMutex
	stmts map[string]*sql.Stmt

	// writer is the connection gated transactions run on, opened at first
	// use; only the gate's holder touches it.
	writer *sql.Conn

	// schema is held by Migrate while it changes the schema, and read-held
	// by the checkpointer around each checkpoint. maxIdle is the pool's
	// idle connection limit, restored after Migrate drops idle connections.
	schema  sync.RWMutex
	maxIdle int
}

// forgetSchemas is called by Migrate after it changed the schema. A
// connection keeps the schema it last read until a statement of its own
// notices the change, and SQLite prepares "SELECT *" from that copy: the
// driver then reports the columns as they were and drops those added
// since (a checkpoint on another connection during the migrations, or a
// read before them, leaves such a copy). The pool's idle connections are
// closed, so that each statement after the migrations runs on a
// connection that reads the schema afresh.
func (g *writeGate) forgetSchemas() {
	g.db.SetMaxIdleConns(0)
	g.db.SetMaxIdleConns(g.maxIdle)
}

// minGateWait is the shortest time a writer waits for the gate before it
// goes ahead without it. A short busy timeout must not send writers past
// the gate merely because many are queued before them.
const minGateWait = 5 * time.Second

// maxStmts bounds the statements kept prepared. Statement texts that vary
// with their data (IN lists, multi-row inserts) would fill any cache; past
// the bound a statement is prepared for its one run, as without a cache.
const maxStmts = 1024

// maxStmtParams is the most parameters a statement kept prepared has,
// unless its text was registered with KeepPrepared.
const maxStmtParams = 64

// keptPrepared holds the statement texts registered with KeepPrepared.
var keptPrepared sync.Map

// KeepPrepared marks query as a statement the SQLite pool keeps prepared
// whatever its number of parameters, and returns it. It is for the few
// fixed multi-row statements a hot path runs again and again (a batch
// written in chunks of fixed sizes), which would otherwise be prepared
// again at every run.
func KeepPrepared(query string) string {
	keptPrepared.Store(query, struct{}{})
	return query
}

func newWriteGate(db *sql.DB, wait time.Duration) *writeGate {
	return &writeGate{db: db, sem: make(chan struct{}, 1), wait: wait, stmts: map[string]*sql.Stmt{}}
}

// acquire takes the gate and returns its release; release is a no-op when
// the wait ran out and the caller goes ahead ungated.
func (g *writeGate) acquire(ctx context.Context) (func(), error) {
	release, _, err := g.take(ctx)
	return release, err
}

// take is acquire that also reports whether the caller holds the gate.
func (g *writeGate) take(ctx context.Context) (release func(), gated bool, err error) {
	select {
	case g.sem <- struct{}{}:
		return g.release, true, nil
	default:
	}
	t := time.NewTimer(g.wait)
	defer t.Stop()
	select {
	case g.sem <- struct{}{}:
		return g.release, true, nil
	case <-t.C:
		return func() {}, false, nil
	case <-ctx.Done():
		return nil, false, ctx.Err()
	}
}

func (g *writeGate) release() { <-g.sem }

// stmt returns the pool-level prepared statement for query, or nil when
// query is not kept prepared: the cache is full, query is a script or
// schema change, or it cannot be prepared outside the caller's
// transaction (a table that transaction created). The caller then runs
// query directly, which also reports any error in it.
func (g *writeGate) stmt(ctx context.Context, query string) *sql.Stmt {
	g.mu.RLock()
	st, ok := g.stmts[query]
	full := len(g.stmts) >= maxStmts
	g.mu.RUnlock()
	if ok {
		return st
	}
	_, kept := keptPrepared.Load(query)
	if full || multiStatement(query) || isDDL(query) || (!kept && strings.Count(query, "?") > maxStmtParams) {
		// A prepared statement is the first statement only; the driver
		// runs every statement of a script itself. A statement with many
		// parameters is a multi-row insert or a long IN list whose text
		// varies with its data: kept prepared on every connection, such
		// statements would hold megabytes each and rarely run again.
		return nil
	}
	g.mu.Lock()
	defer g.mu.Unlock()
	if st, ok := g.stmts[query]; ok {
		return st
	}
	st, err := g.db.PrepareContext(ctx, query)
	if err != nil {
		return nil
	}
	g.stmts[query] = st
	return st
}

// GetDBConn lets gorm's DB() find the underlying pool.
func (g *writeGate) GetDBConn() (*sql.DB, error) { return g.db, nil }

// PrepareContext implements gorm.ConnPool.
func (g *writeGate) PrepareContext(ctx context.Context, query string) (*sql.Stmt, error) {
	return g.db.PrepareContext(ctx, query)
}

// BeginTx implements gorm.ConnPoolBeginner.
func (g *writeGate) BeginTx(ctx context.Context, opts *sql.TxOptions) (gorm.ConnPool, error) {
	release, gated, err := g.take(ctx)
	if err != nil {
		return nil, err
	}
	if gated && g.canPin() {
		tx, err := g.beginOnWriter(ctx, opts)
		if err == nil {
			return &gatedTx{tx: tx, g: g, release: release}, nil
		}
		if !errors.Is(err, sql.ErrConnDone) && !errors.Is(err, driver.ErrBadConn) {
			release()
			return nil, err
		}
		// The writer is gone; the pool opens a good connection.
	}
	tx, err := g.db.BeginTx(ctx, opts)
	if err != nil {
		release()
		return nil, err
	}
	return &gatedTx{tx: tx, g: g, release: release}, nil
}

// canPin reports whether the pool can spare a connection for the writer:
// a pool of one would leave nothing for reads outside the writer's
// transactions.
func (g *writeGate) canPin() bool {
	n := g.db.Stats().MaxOpenConnections
	return n == 0 || n >= 2
}

// beginOnWriter begins a transaction on the writer, opening it if needed.
// The caller holds the gate. A writer that fails as a connection is
// dropped, so the next transaction opens a new one.
func (g *writeGate) beginOnWriter(ctx context.Context, opts *sql.TxOptions) (*sql.Tx, error) {
	if g.writer == nil {
		c, err := g.db.Conn(ctx)
		if err != nil {
			return nil, err
		}
		if _, err := c.ExecContext(ctx, "PRAGMA cache_size="+strconv.Itoa(writerCacheKiB)); err != nil {
			_ = c.Raw(func(any) error { return driver.ErrBadConn })
			_ = c.Close()
			return nil, err
		}
		g.writer = c
	}
	tx, err := g.writer.BeginTx(ctx, opts)
	if err != nil && (errors.Is(err, sql.ErrConnDone) || errors.Is(err, driver.ErrBadConn)) {
		_ = g.writer.Close()
		g.writer = nil
	}
	return tx, err
}

// closeWriter gives the writer back once the pool is closed (the
// checkpointer calls it), waiting for the gate so no transaction is using
// it; after the gate's wait it closes it regardless.
func (g *writeGate) closeWriter() {
	release, _, _ := g.take(context.Background())
	defer release()
	if g.writer != nil {
		_ = g.writer.Close()
		g.writer = nil
	}
}

// gateFor takes the gate for a statement outside a transaction unless it
// is a plain read.
func (g *writeGate) gateFor(ctx context.Context, query string) (func(), error) {
	if isRead(query) {
		return func() {}, nil
	}
	return g.acquire(ctx)
}

// ExecContext gates statements that may write.
func (g *writeGate) ExecContext(ctx context.Context, query string, args ...any) (sql.Result, error) {
	release, err := g.gateFor(ctx, query)
	if err != nil {
		return nil, err
	}
	defer release()
	st := g.stmt(ctx, query)
	if st == nil {
		return g.db.ExecContext(ctx, query, args...)
	}
	return st.ExecContext(ctx, args...)
}

// QueryContext gates writes that return rows (INSERT … RETURNING). The
// gate is released when the query returns; SQLite finishes such a
// statement on the first row, which the caller reads at once.
func (g *writeGate) QueryContext(ctx context.Context, query string, args ...any) (*sql.Rows, error) {
	release, err := g.gateFor(ctx, query)
	if err != nil {
		return nil, err
	}
	defer release()
	st := g.stmt(ctx, query)
	if st == nil {
		return g.db.QueryContext(ctx, query, args...)
	}
	return st.QueryContext(ctx, args...)
}

// QueryRowContext runs a read (gorm uses it for single-row reads).
func (g *writeGate) QueryRowContext(ctx context.Context, query string, args ...any) *sql.Row {
	st := g.stmt(ctx, query)
	if st == nil {
		return g.db.QueryRowContext(ctx, query, args...)
	}
	return st.QueryRowContext(ctx, args...)
}

// multiStatement reports whether query holds more than one statement
// (a migration script). A semicolon inside a string literal also counts;
// such a statement is then just not kept prepared.
func multiStatement(query string) bool {
	return strings.Contains(strings.TrimRight(query, " \t\r\n;"), ";")
}

// isDDL reports whether query changes the schema; those run once and are
// not kept prepared.
func isDDL(query string) bool {
	q := strings.TrimLeft(query, " \t\r\n")
	word, _, _ := strings.Cut(q[:min(len(q), 8)], " ")
	switch strings.ToLower(word) {
	case "create", "drop", "alter":
		return true
	}
	return false
}

// isRead reports whether query is a statement that cannot write: one that
// starts with SELECT (or EXPLAIN). Anything else is treated as a write.
func isRead(query string) bool {
	q := strings.TrimLeft(query, " \t\r\n(")
	if len(q) < 7 {
		return false
	}
	w := strings.ToLower(q[:7])
	return strings.HasPrefix(w, "select") || w == "explain"
}

// gatedTx is a transaction holding the gate until it ends. Its statements
// run through the gate's prepared statements.
type gatedTx struct {
	tx      *sql.Tx
	g       *writeGate
	release func()
	done    bool
}

func (t *gatedTx) GetDBConn() (*sql.DB, error) { return t.g.db, nil }

func (t *gatedTx) PrepareContext(ctx context.Context, query string) (*sql.Stmt, error) {
	return t.tx.PrepareContext(ctx, query)
}

// StmtContext implements gorm.Tx.
func (t *gatedTx) StmtContext(ctx context.Context, st *sql.Stmt) *sql.Stmt {
	return t.tx.StmtContext(ctx, st)
}

func (t *gatedTx) ExecContext(ctx context.Context, query string, args ...any) (sql.Result, error) {
	st := t.g.stmt(ctx, query)
	if st == nil {
		return t.tx.ExecContext(ctx, query, args...)
	}
	return t.tx.StmtContext(ctx, st).ExecContext(ctx, args...)
}

func (t *gatedTx) QueryContext(ctx context.Context, query string, args ...any) (*sql.Rows, error) {
	st := t.g.stmt(ctx, query)
	if st == nil {
		return t.tx.QueryContext(ctx, query, args...)
	}
	return t.tx.StmtContext(ctx, st).QueryContext(ctx, args...)
}

func (t *gatedTx) QueryRowContext(ctx context.Context, query string, args ...any) *sql.Row {
	st := t.g.stmt(ctx, query)
	if st == nil {
		return t.tx.QueryRowContext(ctx, query, args...)
	}
	return t.tx.StmtContext(ctx, st).QueryRowContext(ctx, args...)
}

func (t *gatedTx) Commit() error {
	err := t.tx.Commit()
	t.end()
	return err
}

func (t *gatedTx) Rollback() error {
	err := t.tx.Rollback()
	t.end()
	return err
}

func (t *gatedTx) end() {
	if !t.done {
		t.done = true
		t.release()
	}
}
