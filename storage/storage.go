package storage

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"time"

	"gorm.io/driver/postgres"
	"gorm.io/driver/sqlite"
	"gorm.io/gorm"
	"gorm.io/gorm/logger"
)

// Dialect names a supported database engine.
type Dialect string

const (
	// SQLite is the embedded default: one file in the data directory.
	SQLite Dialect = "sqlite"
	// Postgres is PostgreSQL, used when several processes share one database.
	Postgres Dialect = "postgres"
)

// ErrUnreachable wraps failures to connect, so callers can print one clear
// line naming the host instead of a driver's stack of messages.
var ErrUnreachable = errors.New("database unreachable")

// Options tunes Open. The zero value is usable.
type Options struct {
	// DataDir holds the SQLite file when URL is empty.
	DataDir string
	// MaxOpenConns caps the pool; zero picks a default per dialect.
	MaxOpenConns int
	// BusyTimeout is how long SQLite waits on a locked database.
	BusyTimeout time.Duration
	// MustExist refuses to create a SQLite file (or its directory) that
	// is not there yet, for commands that work on an existing database.
	MustExist bool
	// SQLiteSynchronous is SQLite's synchronous setting, SyncFull (the
	// default when empty) or SyncNormal.
	SQLiteSynchronous string
}

// SQLite synchronous settings (PRAGMA synchronous). In WAL mode NORMAL
// syncs the WAL only when a checkpoint copies it into the database (every
// checkpointEvery(SyncNormal) under writes): a killed process loses
// nothing, a power cut or an operating-system crash can take back the
// commits since the last checkpoint. FULL syncs the WAL at every commit,
// in the committing thread, before the commit returns (docs/benchmarks.md
// measures both).
const (
	SyncNormal = "normal"
	SyncFull   = "full"
)

// ErrNoDatabase means Options.MustExist was set and the SQLite file does
// not exist.
var ErrNoDatabase = errors.New("no database")

// DefaultSQLiteFile is the file name used inside the data directory.
const DefaultSQLiteFile = "fhirsync.db"

// Open connects to the database named by rawURL and pings it.
//
// Accepted forms: "" (SQLite file in opts.DataDir), "sqlite:PATH" or
// "file:PATH", and "postgres://…" / "postgresql://…".
func Open(ctx context.Context, rawURL string, opts Options) (*gorm.DB, error) {
	d, dsn, host, err := parseURL(rawURL, opts)
	if err != nil {
		return nil, err
	}
	cfg := &gorm.Config{
		Logger:                                   logger.Discard,
		DisableForeignKeyConstraintWhenMigrating: true,
		TranslateError:                           true,
	}
	var db *gorm.DB
	var gate *writeGate
	switch d {
	case SQLite:
		var raw *sql.DB
		registerSQLiteDriver()
		if err = registerWALVFS(); err == nil {
			raw, err = sql.Open(sqliteDriver, dsn)
		}
		if err == nil {
			gate = newWriteGate(raw, max(sqliteBusy(opts), minGateWait))
			db, err = gorm.Open(sqlite.New(sqlite.Config{DSN: dsn, Conn: gate}), cfg)
			if err != nil {
				_ = raw.Close()
			}
		}
	case Postgres:
		db, err = gorm.Open(postgres.Open(dsn), cfg)
	}
	if err != nil {
		return nil, fmt.Errorf("opening %s database at %s: %w: %s", d, host, ErrUnreachable, shortErr(err))
	}
	sqlDB, err := db.DB()
	if err != nil {
		return nil, fmt.Errorf("opening %s database at %s: %w", d, host, err)
	}
	maxOpen := opts.MaxOpenConns
	if maxOpen == 0 {
		maxOpen = 16
	}
	sqlDB.SetMaxOpenConns(maxOpen)
	sqlDB.SetMaxIdleConns(maxOpen)
	sqlDB.SetConnMaxIdleTime(5 * time.Minute)
	pingCtx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	if err := sqlDB.PingContext(pingCtx); err != nil {
		_ = sqlDB.Close()
		return nil, fmt.Errorf("connecting to %s database at %s: %w: %s", d, host, ErrUnreachable, shortErr(err))
	}
	if d == SQLite {
		gate.maxIdle = maxOpen
		go checkpoint(sqlDB, gate, checkpointEvery(sqliteSync(opts)))
	}
	return db, nil
}

// DialectOf reports which engine db talks to.
func DialectOf(db *gorm.DB) Dialect {
	if db.Dialector.Name() == "postgres" {
		return Postgres
	}
	return SQLite
}

// SameDatabase reports whether a and b use the same connection pool, so a
// transaction opened on one can hold statements meant for the other.
func SameDatabase(a, b *gorm.DB) bool {
	if a == nil || b == nil {
		return false
	}
	x, err1 := a.DB()
	y, err2 := b.DB()
	return err1 == nil && err2 == nil && x == y
}

// Close releases db's connections.
func Close(db *gorm.DB) error {
	sqlDB, err := db.DB()
	if err != nil {
		return err
	}
	return sqlDB.Close()
}

// Describe names the database for operators without revealing a password:
// the host and database for PostgreSQL, the file for SQLite.
func Describe(rawURL string, opts Options) string {
	d, _, host, err := parseURL(rawURL, opts)
	if err != nil {
		return "invalid database URL"
	}
	return string(d) + " " + host
}

// sqliteBusy is how long a SQLite writer waits for the write lock.
func sqliteBusy(opts Options) time.Duration {
	if opts.BusyTimeout == 0 {
		return 10 * time.Second
	}
	return opts.BusyTimeout
}

// sqliteSync is opts' synchronous setting, SyncFull when empty.
func sqliteSync(opts Options) string {
	if opts.SQLiteSynchronous == "" {
		return SyncFull
	}
	return opts.SQLiteSynchronous
}

func parseURL(rawURL string, opts Options) (Dialect, string, string, error) {
	busy := sqliteBusy(opts)
	sqliteDSN := func(path string) (Dialect, string, string, error) {
		sync := sqliteSync(opts)
		if sync != SyncNormal && sync != SyncFull {
			return "", "", "", fmt.Errorf("SQLite synchronous setting %q is not %s or %s", opts.SQLiteSynchronous, SyncNormal, SyncFull)
		}
		if opts.MustExist {
			if _, err := os.Stat(path); err != nil {
				return "", "", "", fmt.Errorf("%w at %s: %v", ErrNoDatabase, path, errors.Unwrap(err))
			}
		}
		if dir := filepath.Dir(path); dir != "" {
			if err := os.MkdirAll(dir, 0o700); err != nil {
				return "", "", "", fmt.Errorf("creating data directory %s: %w", dir, err)
			}
		}
		if err := createPrivate(path); err != nil {
			return "", "", "", fmt.Errorf("creating database file %s: %w", path, err)
		}
		q := url.Values{}
		q.Set("_journal_mode", "WAL")
		q.Set("_busy_timeout", fmt.Sprint(busy.Milliseconds()))
		q.Set("_foreign_keys", "1")
		q.Set("_txlock", "immediate")
		q.Set("_synchronous", strings.ToUpper(sync))
		q.Set("vfs", walVFS)
		return SQLite, "file:" + path + "?" + q.Encode(), path, nil
	}
	switch {
	case rawURL == "":
		dir := opts.DataDir
		if dir == "" {
			dir = "data"
		}
		return sqliteDSN(filepath.Join(dir, DefaultSQLiteFile))
	case strings.HasPrefix(rawURL, "sqlite:"):
		return sqliteDSN(strings.TrimPrefix(strings.TrimPrefix(rawURL, "sqlite:"), "//"))
	case strings.HasPrefix(rawURL, "file:"):
		return sqliteDSN(strings.SplitN(strings.TrimPrefix(rawURL, "file:"), "?", 2)[0])
	case strings.HasPrefix(rawURL, "postgres://"), strings.HasPrefix(rawURL, "postgresql://"):
		u, err := url.Parse(rawURL)
		if err != nil {
			return "", "", "", fmt.Errorf("parsing database URL: %v", redactErr(err))
		}
		host := u.Host
		if host == "" {
			host = "localhost"
		}
		if _, _, err := net.SplitHostPort(host); err != nil {
			host = net.JoinHostPort(host, "5432")
		}
		return Postgres, rawURL, host + u.Path, nil
	default:
		return "", "", "", fmt.Errorf("database URL must start with postgres://, sqlite: or file: (got scheme %q)", schemeOf(rawURL))
	}
}

func schemeOf(s string) string {
	if i := strings.Index(s, ":"); i > 0 {
		return s[:i]
	}
	return ""
}

// redactErr drops the URL text from url.Error, which would echo a password.
func redactErr(err error) error {
	var ue *url.Error
	if errors.As(err, &ue) {
		return ue.Err
	}
	return err
}

// shortErr keeps the last, most specific clause of a driver error and
// drops connection strings.
func shortErr(err error) string {
	s := err.Error()
	if i := strings.LastIndex(s, ": "); i >= 0 && i+2 < len(s) {
		s = s[i+2:]
	}
	return s
}

// Direct runs statements under db — in db's transaction when it is in
// one, else on its pool — without gorm's statement building, reflection
// and callbacks. For the short statements the agent runs for every message
// gorm's own work cost more than SQLite's: about 8 % of the agent's CPU in
// a sync run. The text goes to the driver as written, so Direct is for
// SQLite's "?" placeholders; callers keep gorm for PostgreSQL. Errors are
// the driver's, not translated into gorm's.
//
// A statement run through Direct is not interrupted when its context ends
// while it runs or waits for the write gate; a context that has already
// ended fails it at once. For a context that can end, database/sql and the
// SQLite driver each start a goroutine per statement (and the driver one
// per row read) only to watch it, and the driver steps SQLite on that
// goroutine while the caller waits: for the short statements Direct is
// for, that cost more than the statement.
func Direct(db *gorm.DB) DirectConn {
	ctx := db.Statement.Context
	if ctx == nil {
		ctx = context.Background()
	}
	return DirectConn{pool: db.Statement.ConnPool, ctx: ctx}
}

// DirectConn is what Direct returns.
type DirectConn struct {
	pool gorm.ConnPool
	ctx  context.Context
}

// Exec runs a statement that returns no rows.
func (c DirectConn) Exec(query string, args ...any) (sql.Result, error) {
	return c.pool.ExecContext(c.runCtx(), query, args...)
}

// QueryRow runs a statement that returns at most one row. Outside a
// transaction it runs as a read, beside the write gate: writes that
// return rows belong in a transaction.
func (c DirectConn) QueryRow(query string, args ...any) *sql.Row {
	return c.pool.QueryRowContext(c.runCtx(), query, args...)
}

// Query runs a statement that returns rows. Outside a transaction a
// statement that may write takes the write gate (see writeGate.QueryContext).
func (c DirectConn) Query(query string, args ...any) (*sql.Rows, error) {
	return c.pool.QueryContext(c.runCtx(), query, args...)
}

// runCtx is the context a statement runs under: c's own once it has ended
// (the statement then fails with its error), else c's without its end.
func (c DirectConn) runCtx() context.Context {
	if c.ctx.Err() != nil {
		return c.ctx
	}
	return context.WithoutCancel(c.ctx)
}

// Exists reports whether query returns a row.
func (c DirectConn) Exists(query string, args ...any) (bool, error) {
	var one any
	err := c.QueryRow(query, args...).Scan(&one)
	if errors.Is(err, sql.ErrNoRows) {
		return false, nil
	}
	return err == nil, err
}

// Query runs a statement that returns rows under db: on SQLite through
// Direct, elsewhere through gorm, which rewrites the "?" placeholders for
// the dialect. The text must not rely on gorm's expansion of slice
// arguments, which Direct does not do.
func Query(db *gorm.DB, query string, args ...any) (*sql.Rows, error) {
	if DialectOf(db) == SQLite {
		return Direct(db).Query(query, args...)
	}
	return db.Raw(query, args...).Rows()
}

// Exec runs a statement that returns no rows under db, as Query does, and
// reports the rows it affected.
func Exec(db *gorm.DB, query string, args ...any) (int64, error) {
	if DialectOf(db) == SQLite {
		res, err := Direct(db).Exec(query, args...)
		if err != nil {
			return 0, err
		}
		return res.RowsAffected()
	}
	res := db.Exec(query, args...)
	return res.RowsAffected, res.Error
}

// createPrivate creates the SQLite file at path with mode 0600 when it does
// not exist yet, whatever the umask: it holds the sync log and sessions.
// SQLite gives its -wal and -shm files the database file's mode.
func createPrivate(path string) error {
	if path == "" || strings.HasPrefix(path, ":") {
		return nil // an in-memory database
	}
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE|os.O_EXCL, 0o600)
	if errors.Is(err, os.ErrExist) {
		return nil
	}
	if err != nil {
		return err
	}
	return f.Close()
}
