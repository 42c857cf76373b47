package fhirserver

import (
	"context"
	"crypto/rand"
	"database/sql"
	"encoding/hex"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"sync"
	"time"

	_ "github.com/mattn/go-sqlite3" // registers the sqlite3 driver
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
type store struct {
	db  *sql.DB
	now func() time.Time

	mu   sync.Mutex // held by writers
	last time.Time  // newest lastUpdated handed out

	stmts map[string]*sql.Stmt // prepared writer statements, read-only after open
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
)

func (s *store) prepare() error {
	s.stmts = map[string]*sql.Stmt{}
	for _, q := range []string{sqlCurrent, sqlInsertVersion, sqlUpsertCurrent, sqlDeleteIdents, sqlInsertIdent} {
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
		dsn = "file:" + path + "?_journal_mode=WAL&_synchronous=NORMAL&_busy_timeout=5000"
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

// write runs fn in one transaction under the writer lock.
func (s *store) write(ctx context.Context, fn func(w *writer) error) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	tx, err := s.db.BeginTx(ctx, nil)
	if err != nil {
		return err
	}
	w := &writer{tx: txQuerier{tx: tx, s: s}, s: s, last: s.last}
	if err := fn(w); err != nil {
		_ = tx.Rollback()
		return err
	}
	if err := tx.Commit(); err != nil {
		return err
	}
	s.last = w.last
	return nil
}

// txQuerier runs a writer's statements in its transaction, prepared.
type txQuerier struct {
	tx *sql.Tx
	s  *store
}

func (q txQuerier) ExecContext(ctx context.Context, query string, args ...any) (sql.Result, error) {
	if st, ok := q.s.stmts[query]; ok {
		return q.tx.StmtContext(ctx, st).ExecContext(ctx, args...)
	}
	return q.tx.ExecContext(ctx, query, args...)
}

func (q txQuerier) QueryContext(ctx context.Context, query string, args ...any) (*sql.Rows, error) {
	return q.tx.QueryContext(ctx, query, args...)
}

func (q txQuerier) QueryRowContext(ctx context.Context, query string, args ...any) *sql.Row {
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
	if _, err := w.tx.ExecContext(ctx, sqlDeleteIdents, typ, id); err != nil {
		return r, err
	}
	for _, ident := range identifiersOf(res) {
		if _, err := w.tx.ExecContext(ctx, sqlInsertIdent,
			typ, id, ident[0], ident[1]); err != nil {
			return r, err
		}
	}
	return r, nil
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
