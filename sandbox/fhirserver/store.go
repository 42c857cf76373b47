package fhirserver

import (
	"context"
	"crypto/rand"
	"database/sql"
	"encoding/hex"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	_ "github.com/mattn/go-sqlite3" // registers the sqlite3 driver

	"github.com/fhirsync/fhirsync/storage"
)

// tsLayout stores instants as fixed-width UTC text so that string order is
// time order. Millisecond precision, like meta.lastUpdated on the wire.
const tsLayout = "2006-01-02T15:04:05.000Z"

const schema = `
CREATE TABLE IF NOT EXISTS versions (
	seq          INTEGER PRIMARY KEY AUTOINCREMENT,
	type         TEXT NOT NULL,
	id           TEXT NOT NULL,
	version      INTEGER NOT NULL,
	last_updated TEXT NOT NULL,
	method       TEXT NOT NULL CHECK (method IN ('POST', 'PUT', 'DELETE')),
	body         BLOB,
	UNIQUE (type, id, version)
);
CREATE INDEX IF NOT EXISTS versions_type_seq ON versions (type, seq);
CREATE TABLE IF NOT EXISTS current (
	type         TEXT NOT NULL,
	id           TEXT NOT NULL,
	version      INTEGER NOT NULL,
	last_updated TEXT NOT NULL,
	deleted      INTEGER NOT NULL CHECK (deleted IN (0, 1)),
	body         BLOB,
	PRIMARY KEY (type, id)
);
CREATE INDEX IF NOT EXISTS current_type_updated ON current (type, deleted, last_updated, id);
CREATE TABLE IF NOT EXISTS identifiers (
	type   TEXT NOT NULL,
	id     TEXT NOT NULL,
	system TEXT NOT NULL,
	value  TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS identifiers_value ON identifiers (type, value, system);
CREATE INDEX IF NOT EXISTS identifiers_resource ON identifiers (type, id);
`

// store keeps every version of every resource in SQLite. One connection
// serialises access; a mutex around writes keeps version numbers and
// lastUpdated monotonic without relying on SQLite's locking.
//
// Writes that arrive while another group is committing commit together
// (group commit): each runs in a savepoint of one transaction, so a write
// that fails is undone alone, and none returns before the transaction has
// committed. One commit per write was most of a write's cost.
type store struct {
	db  *sql.DB
	now func() time.Time

	mu   sync.Mutex // held by the writer committing a group
	last time.Time  // newest lastUpdated handed out

	qmu     sync.Mutex  // guards pending
	pending []*writeReq // writes waiting for the next group

	stmts map[string]*sql.Stmt // prepared writer statements, read-only after open
}

// writeReq is one write waiting to be committed with its group.
type writeReq struct {
	ctx  context.Context
	fn   func(w *writer) error
	done chan error
}

// Statements run on every read and write, prepared once when the store
// opens (the store has one connection, which a transaction holds, so they
// cannot be prepared later from inside one). Keeping them prepared saves
// SQLite's parse and plan on every request.
const (
	sqlCurrent       = `SELECT version, last_updated, deleted, body FROM current WHERE type = ? AND id = ?`
	sqlInsertVersion = `INSERT INTO versions (type, id, version, last_updated, method, body) VALUES (?, ?, ?, ?, ?, ?)`
	sqlUpsertCurrent = `INSERT INTO current (type, id, version, last_updated, deleted, body) VALUES (?, ?, ?, ?, 0, ?)
		ON CONFLICT (type, id) DO UPDATE SET version = excluded.version, last_updated = excluded.last_updated, deleted = 0, body = excluded.body`
	sqlDeleteIdents = `DELETE FROM identifiers WHERE type = ? AND id = ?`
	sqlInsertIdent  = `INSERT INTO identifiers (type, id, system, value) VALUES (?, ?, ?, ?)`
	sqlIdents       = `SELECT system, value FROM identifiers WHERE type = ? AND id = ?`
	sqlSavepoint    = `SAVEPOINT write`
	sqlRollbackTo   = `ROLLBACK TO write`
	sqlRelease      = `RELEASE write`
)

func (s *store) prepare() error {
	s.stmts = map[string]*sql.Stmt{}
	for _, q := range []string{sqlCurrent, sqlInsertVersion, sqlUpsertCurrent, sqlDeleteIdents, sqlInsertIdent, sqlIdents, sqlSavepoint, sqlRollbackTo, sqlRelease} {
		st, err := s.db.Prepare(q)
		if err != nil {
			return err
		}
		s.stmts[q] = st
	}
	return nil
}

func openStore(path string, now func() time.Time) (*store, error) {
	var dsn string
	if path == "" {
		var b [8]byte
		_, _ = rand.Read(b[:])
		dsn = "file:fhirserver-" + hex.EncodeToString(b[:]) + "?mode=memory&cache=shared&_busy_timeout=5000"
	} else {
		// The project's VFS: the WAL's writes gathered into calls of up
		// to 124 KiB (storage/walvfs.go).
		vfs, err := storage.WALVFS()
		if err != nil {
			return nil, fmt.Errorf("opening the sandbox FHIR database: %w", err)
		}
		dsn = "file:" + path + "?_journal_mode=WAL&_synchronous=NORMAL&_busy_timeout=5000&vfs=" + vfs
	}
	db, err := sql.Open("sqlite3", dsn)
	if err != nil {
		return nil, fmt.Errorf("opening the sandbox FHIR database: %w", err)
	}
	db.SetMaxOpenConns(1)
	db.SetConnMaxLifetime(0)
	db.SetConnMaxIdleTime(0)
	if _, err := db.Exec(schema); err != nil {
		db.Close()
		return nil, fmt.Errorf("creating the sandbox FHIR schema: %w", err)
	}
	s := &store{db: db, now: now}
	if err := s.prepare(); err != nil {
		db.Close()
		return nil, fmt.Errorf("preparing the sandbox FHIR statements: %w", err)
	}
	var lastText sql.NullString
	if err := db.QueryRow(`SELECT MAX(last_updated) FROM versions`).Scan(&lastText); err != nil {
		db.Close()
		return nil, fmt.Errorf("reading the sandbox FHIR database: %w", err)
	}
	if lastText.Valid {
		s.last, _ = time.Parse(tsLayout, lastText.String)
	}
	return s, nil
}

func (s *store) close() error { return s.db.Close() }

// record is one stored version.
type record struct {
	seq         int64
	typ, id     string
	version     int64
	lastUpdated time.Time
	method      string // POST, PUT, DELETE
	deleted     bool
	body        []byte // nil for a deletion
}

func (r record) etag() string { return `W/"` + strconv.FormatInt(r.version, 10) + `"` }

func (r record) versionRef() string {
	return r.typ + "/" + r.id + "/_history/" + strconv.FormatInt(r.version, 10)
}

// current returns the newest version of typ/id, deleted or not;
// errNoRecord when it never existed.
func current(ctx context.Context, q querier, typ, id string) (record, error) {
	r := record{typ: typ, id: id}
	var lu string
	err := q.QueryRowContext(ctx, sqlCurrent, typ, id).
		Scan(&r.version, &lu, &r.deleted, &r.body)
	if errors.Is(err, sql.ErrNoRows) {
		return r, errNoRecord
	}
	if err != nil {
		return r, err
	}
	r.lastUpdated, _ = time.Parse(tsLayout, lu)
	return r, nil
}

var errNoRecord = errors.New("no such resource")

type querier interface {
	QueryRowContext(ctx context.Context, query string, args ...any) *sql.Row
	QueryContext(ctx context.Context, query string, args ...any) (*sql.Rows, error)
	ExecContext(ctx context.Context, query string, args ...any) (sql.Result, error)
}

// version returns one stored version.
func (s *store) version(ctx context.Context, typ, id string, v int64) (record, error) {
	r := record{typ: typ, id: id, version: v}
	var lu string
	err := s.db.QueryRowContext(ctx, `SELECT seq, last_updated, method, body FROM versions WHERE type = ? AND id = ? AND version = ?`,
		typ, id, v).Scan(&r.seq, &lu, &r.method, &r.body)
	if errors.Is(err, sql.ErrNoRows) {
		return r, errNoRecord
	}
	if err != nil {
		return r, err
	}
	r.deleted = r.method == "DELETE"
	r.lastUpdated, _ = time.Parse(tsLayout, lu)
	return r, nil
}

// write runs fn in a transaction and returns once that has committed, or
// with fn's error once fn's changes are undone. Writes that arrive while
// a group commits wait and commit together; they run in arrival order.
func (s *store) write(ctx context.Context, fn func(w *writer) error) error {
	return s.writeEach(ctx, []func(w *writer) error{fn})[0]
}

// writeEach runs each of fns as its own write (a savepoint), all in one
// group commit, in order, and returns their errors: a batch Bundle's
// entries commit together but fail alone.
func (s *store) writeEach(ctx context.Context, fns []func(w *writer) error) []error {
	if len(fns) == 0 {
		return nil
	}
	reqs := make([]*writeReq, len(fns))
	for i, fn := range fns {
		reqs[i] = &writeReq{ctx: ctx, fn: fn, done: make(chan error, 1)}
	}
	s.qmu.Lock()
	s.pending = append(s.pending, reqs...)
	s.qmu.Unlock()
	s.mu.Lock()
	// A group commit answers all its writes before it lets go of s.mu, so
	// reqs, queued together, are either all answered or all pending.
	if len(reqs[0].done) == 0 {
		s.qmu.Lock()
		group := s.pending
		s.pending = nil
		s.qmu.Unlock()
		s.commitGroup(group)
	}
	s.mu.Unlock()
	errs := make([]error, len(reqs))
	for i, r := range reqs {
		errs[i] = <-r.done
	}
	return errs
}

// commitGroup runs each write of group in a savepoint of one transaction
// and commits it, then answers every write. The caller holds s.mu.
func (s *store) commitGroup(group []*writeReq) {
	errs := make([]error, len(group))
	answer := func() {
		for i, r := range group {
			r.done <- errs[i]
		}
	}
	fail := func(err error) {
		for i := range errs {
			if errs[i] == nil {
				errs[i] = err
			}
		}
		answer()
	}
	// The transaction is not cancelled with any one request: an
	// interrupted statement would take the whole group's transaction down.
	ctx := context.Background()
	tx, err := s.db.BeginTx(ctx, nil)
	if err != nil {
		fail(err)
		return
	}
	abort := func(err error) {
		_ = tx.Rollback()
		fail(err)
	}
	last := s.last
	q := txQuerier{tx: tx, s: s}
	// A write alone needs no savepoint: the transaction is its own.
	alone := len(group) == 1
	for i, r := range group {
		if err := r.ctx.Err(); err != nil {
			errs[i] = err
			continue
		}
		if !alone {
			if _, err := q.ExecContext(ctx, sqlSavepoint); err != nil {
				abort(err)
				return
			}
		}
		w := &writer{tx: q, s: s, last: last}
		errs[i] = r.fn(w)
		if errs[i] == nil {
			last = w.last
		}
		if alone {
			continue
		}
		if errs[i] != nil {
			if _, err := q.ExecContext(ctx, sqlRollbackTo); err != nil {
				abort(err)
				return
			}
		}
		if _, err := q.ExecContext(ctx, sqlRelease); err != nil {
			abort(err)
			return
		}
	}
	if alone && errs[0] != nil {
		_ = tx.Rollback()
		answer()
		return
	}
	if err := tx.Commit(); err != nil {
		fail(err)
		return
	}
	s.last = last
	answer()
}

// txQuerier runs a writer's statements in its transaction, prepared. The
// statements ignore the request's cancellation (see commitGroup).
type txQuerier struct {
	tx *sql.Tx
	s  *store
}

func (q txQuerier) ExecContext(ctx context.Context, query string, args ...any) (sql.Result, error) {
	ctx = context.WithoutCancel(ctx)
	if st, ok := q.s.stmts[query]; ok {
		return q.tx.StmtContext(ctx, st).ExecContext(ctx, args...)
	}
	return q.tx.ExecContext(ctx, query, args...)
}

func (q txQuerier) QueryContext(ctx context.Context, query string, args ...any) (*sql.Rows, error) {
	ctx = context.WithoutCancel(ctx)
	if st, ok := q.s.stmts[query]; ok {
		return q.tx.StmtContext(ctx, st).QueryContext(ctx, args...)
	}
	return q.tx.QueryContext(ctx, query, args...)
}

func (q txQuerier) QueryRowContext(ctx context.Context, query string, args ...any) *sql.Row {
	ctx = context.WithoutCancel(ctx)
	if st, ok := q.s.stmts[query]; ok {
		return q.tx.StmtContext(ctx, st).QueryRowContext(ctx, args...)
	}
	return q.tx.QueryRowContext(ctx, query, args...)
}

// reader runs reads outside a transaction, prepared where the statement is.
func (s *store) reader() dbQuerier { return dbQuerier{s} }

type dbQuerier struct{ s *store }

func (q dbQuerier) ExecContext(ctx context.Context, query string, args ...any) (sql.Result, error) {
	if st, ok := q.s.stmts[query]; ok {
		return st.ExecContext(ctx, args...)
	}
	return q.s.db.ExecContext(ctx, query, args...)
}

func (q dbQuerier) QueryContext(ctx context.Context, query string, args ...any) (*sql.Rows, error) {
	return q.s.db.QueryContext(ctx, query, args...)
}

func (q dbQuerier) QueryRowContext(ctx context.Context, query string, args ...any) *sql.Row {
	if st, ok := q.s.stmts[query]; ok {
		return st.QueryRowContext(ctx, args...)
	}
	return q.s.db.QueryRowContext(ctx, query, args...)
}

// writer stores versions inside one transaction.
type writer struct {
	tx   txQuerier
	s    *store
	last time.Time
}

// stamp hands out the next lastUpdated: now, but never before the last one.
func (w *writer) stamp() time.Time {
	t := w.s.now().UTC().Truncate(time.Millisecond)
	if t.Before(w.last) {
		t = w.last
	}
	w.last = t
	return t
}

// put stores a new version of res (already validated, with its id set)
// and returns the record. method is POST for creates, PUT for updates.
func (w *writer) put(ctx context.Context, res map[string]any, method string, prev int64) (record, error) {
	typ, id := res["resourceType"].(string), res["id"].(string)
	r := record{typ: typ, id: id, version: prev + 1, lastUpdated: w.stamp(), method: method}
	meta, _ := res["meta"].(map[string]any)
	if meta == nil {
		meta = map[string]any{}
	}
	meta["versionId"] = strconv.FormatInt(r.version, 10)
	meta["lastUpdated"] = r.lastUpdated.Format(tsLayout)
	res["meta"] = meta
	body, err := encodeJSON(res)
	if err != nil {
		return r, err
	}
	r.body = body
	lu := r.lastUpdated.Format(tsLayout)
	res2, err := w.tx.ExecContext(ctx, sqlInsertVersion,
		typ, id, r.version, lu, method, body)
	if err != nil {
		return r, err
	}
	r.seq, _ = res2.LastInsertId()
	if _, err := w.tx.ExecContext(ctx, sqlUpsertCurrent,
		typ, id, r.version, lu, body); err != nil {
		return r, err
	}
	idents := identifiersOf(res)
	if prev > 0 {
		same, err := w.sameIdentifiers(ctx, typ, id, idents)
		if err != nil || same {
			return r, err
		}
	}
	// A first version has no identifiers stored yet.
	if prev > 0 {
		if _, err := w.tx.ExecContext(ctx, sqlDeleteIdents, typ, id); err != nil {
			return r, err
		}
	}
	for _, ident := range idents {
		if _, err := w.tx.ExecContext(ctx, sqlInsertIdent,
			typ, id, ident[0], ident[1]); err != nil {
			return r, err
		}
	}
	return r, nil
}

// sameIdentifiers reports whether typ/id's stored identifiers are idents
// (in any order), so an update that keeps them need not rewrite them.
func (w *writer) sameIdentifiers(ctx context.Context, typ, id string, idents [][2]string) (bool, error) {
	rows, err := w.tx.QueryContext(ctx, sqlIdents, typ, id)
	if err != nil {
		return false, err
	}
	defer rows.Close()
	var stored [][2]string
	for rows.Next() {
		var p [2]string
		if err := rows.Scan(&p[0], &p[1]); err != nil {
			return false, err
		}
		stored = append(stored, p)
	}
	if err := rows.Err(); err != nil {
		return false, err
	}
	if len(stored) != len(idents) {
		return false, nil
	}
	want := slices.Clone(idents)
	cmp := func(a, b [2]string) int {
		if c := strings.Compare(a[0], b[0]); c != 0 {
			return c
		}
		return strings.Compare(a[1], b[1])
	}
	slices.SortFunc(want, cmp)
	slices.SortFunc(stored, cmp)
	return slices.Equal(want, stored), nil
}

// remove records a deletion of typ/id at version prev+1.
func (w *writer) remove(ctx context.Context, typ, id string, prev int64) (record, error) {
	r := record{typ: typ, id: id, version: prev + 1, lastUpdated: w.stamp(), method: "DELETE", deleted: true}
	lu := r.lastUpdated.Format(tsLayout)
	res, err := w.tx.ExecContext(ctx, `INSERT INTO versions (type, id, version, last_updated, method, body) VALUES (?, ?, ?, ?, 'DELETE', NULL)`,
		typ, id, r.version, lu)
	if err != nil {
		return r, err
	}
	r.seq, _ = res.LastInsertId()
	if _, err := w.tx.ExecContext(ctx, `UPDATE current SET version = ?, last_updated = ?, deleted = 1, body = NULL WHERE type = ? AND id = ?`,
		r.version, lu, typ, id); err != nil {
		return r, err
	}
	if _, err := w.tx.ExecContext(ctx, sqlDeleteIdents, typ, id); err != nil {
		return r, err
	}
	return r, nil
}

// identifiersOf lists the (system, value) pairs of res.identifier.
func identifiersOf(res map[string]any) [][2]string {
	arr, _ := res["identifier"].([]any)
	var out [][2]string
	for _, it := range arr {
		m, _ := it.(map[string]any)
		v, _ := m["value"].(string)
		if v == "" {
			continue
		}
		sys, _ := m["system"].(string)
		out = append(out, [2]string{sys, v})
	}
	return out
}

// historyQuery selects versions newest first.
type historyQuery struct {
	typ, id string    // "" for all types / all ids
	since   time.Time // zero: no lower bound
	before  int64     // cursor: only seq < before (0: none)
	limit   int
}

func (s *store) history(ctx context.Context, hq historyQuery) ([]record, error) {
	var where []string
	var args []any
	if hq.typ != "" {
		where = append(where, "type = ?")
		args = append(args, hq.typ)
	}
	if hq.id != "" {
		where = append(where, "id = ?")
		args = append(args, hq.id)
	}
	if !hq.since.IsZero() {
		where = append(where, "last_updated >= ?")
		args = append(args, hq.since.UTC().Format(tsLayout))
	}
	if hq.before > 0 {
		where = append(where, "seq < ?")
		args = append(args, hq.before)
	}
	q := `SELECT seq, type, id, version, last_updated, method, body FROM versions`
	if len(where) > 0 {
		q += " WHERE " + strings.Join(where, " AND ")
	}
	q += " ORDER BY seq DESC LIMIT ?"
	args = append(args, hq.limit)
	rows, err := s.db.QueryContext(ctx, q, args...)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	var out []record
	for rows.Next() {
		var r record
		var lu string
		if err := rows.Scan(&r.seq, &r.typ, &r.id, &r.version, &lu, &r.method, &r.body); err != nil {
			return nil, err
		}
		r.deleted = r.method == "DELETE"
		r.lastUpdated, _ = time.Parse(tsLayout, lu)
		out = append(out, r)
	}
	return out, rows.Err()
}

// searchQuery selects current, undeleted resources of one type.
type searchQuery struct {
	typ         string
	ids         []string
	identifiers [][2]string // OR-ed; system "\x00" means any system
	lastUpdated []bound     // AND-ed
	count       int
	offset      int
}

type bound struct {
	op string // ">=" or "<"
	t  time.Time
}

func (sq searchQuery) where() (string, []any) {
	// With _id or identifier the match set is small: the unary + keeps
	// SQLite from walking the (type, deleted, last_updated) index in
	// ORDER BY order and probing every row of the type.
	selective := len(sq.ids) > 0 || len(sq.identifiers) > 0
	where := []string{"c.type = ?", "c.deleted = 0"}
	if selective {
		where = []string{"+c.type = ?", "+c.deleted = 0"}
	}
	args := []any{sq.typ}
	if len(sq.ids) > 0 {
		where = append(where, "(c.type, c.id) IN (VALUES "+strings.TrimSuffix(strings.Repeat("(?, ?),", len(sq.ids)), ",")+")")
		for _, id := range sq.ids {
			args = append(args, sq.typ, id)
		}
	}
	if len(sq.identifiers) > 0 {
		args = append(args, sq.typ)
		var ors []string
		for _, ident := range sq.identifiers {
			switch {
			case ident[0] == "\x00":
				ors = append(ors, "i.value = ?")
				args = append(args, ident[1])
			case ident[1] == "":
				ors = append(ors, "i.system = ?")
				args = append(args, ident[0])
			default:
				ors = append(ors, "(i.value = ? AND i.system = ?)")
				args = append(args, ident[1], ident[0])
			}
		}
		where = append(where, "(c.type, c.id) IN (SELECT i.type, i.id FROM identifiers i WHERE i.type = ? AND ("+strings.Join(ors, " OR ")+"))")
	}
	for _, b := range sq.lastUpdated {
		where = append(where, "c.last_updated "+b.op+" ?")
		args = append(args, b.t.UTC().Format(tsLayout))
	}
	return strings.Join(where, " AND "), args
}

func (s *store) search(ctx context.Context, q querier, sq searchQuery, withTotal bool) ([]record, int, error) {
	where, args := sq.where()
	total := -1
	if withTotal {
		if err := q.QueryRowContext(ctx, `SELECT COUNT(*) FROM current c WHERE `+where, args...).Scan(&total); err != nil {
			return nil, 0, err
		}
	}
	rows, err := q.QueryContext(ctx, `SELECT c.id, c.version, c.last_updated, c.body FROM current c WHERE `+where+
		` ORDER BY c.last_updated, c.id LIMIT ? OFFSET ?`, append(args, sq.count, sq.offset)...)
	if err != nil {
		return nil, 0, err
	}
	defer rows.Close()
	var out []record
	for rows.Next() {
		r := record{typ: sq.typ}
		var lu string
		if err := rows.Scan(&r.id, &r.version, &lu, &r.body); err != nil {
			return nil, 0, err
		}
		r.lastUpdated, _ = time.Parse(tsLayout, lu)
		out = append(out, r)
	}
	return out, total, rows.Err()
}

// count returns how many current resources exist.
func (s *store) count(ctx context.Context) (int, error) {
	var n int
	err := s.db.QueryRowContext(ctx, `SELECT COUNT(*) FROM current WHERE deleted = 0`).Scan(&n)
	return n, err
}
