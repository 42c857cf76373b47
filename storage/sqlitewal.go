package storage

import (
	"context"
	"database/sql"
	"database/sql/driver"
	"strconv"
	"strings"
	"sync"
	"time"

	sqlite3 "github.com/mattn/go-sqlite3"
)

// sqliteDriver is the mattn driver with automatic WAL checkpoints off on
// every connection. By default the connection whose commit pushes the WAL
// past 1000 pages copies the WAL into the database file and syncs it, as
// part of that commit: the process's one writer (see writeGate) then holds
// the write lock through a disk sync, and every other writer waits. The
// pool's checkpointer does that work instead, beside the writers.
//
// journal_size_limit cuts a WAL that once grew large (a long read held it)
// back to walSizeLimit when it next starts over.
const sqliteDriver = "sqlite3_fhirsync"

// walSizeLimit is the size a WAL file is cut back to when it starts over.
const walSizeLimit = 64 << 20

// Page cache sizes, as PRAGMA cache_size takes them (negative: KiB). A
// connection's cache is emptied whenever another connection has committed,
// which under steady writes is many times a second, so a reader's cache
// holds little more than the pages of its current query: SQLite's default
// of 2 MiB on each of the pool's connections was memory held for nothing.
// The writer (see writeGate) is the one connection whose cache survives
// its own commits; it keeps a larger one.
const (
	readerCacheKiB = -512
	writerCacheKiB = -8192
)

var registerDriver sync.Once

func registerSQLiteDriver() {
	registerDriver.Do(func() {
		sql.Register(sqliteDriver, &sqlite3.SQLiteDriver{ConnectHook: func(c *sqlite3.SQLiteConn) error {
			if _, err := c.Exec("PRAGMA wal_autocheckpoint=0", nil); err != nil {
				return err
			}
			if _, err := c.Exec("PRAGMA cache_size="+strconv.Itoa(readerCacheKiB), nil); err != nil {
				return err
			}
			// Statement journals and other temporary files in memory: a
			// multi-row statement inside a group commit otherwise writes
			// the pages it changes to a temporary file, one call per page.
			// In the decision log's benchmark of batches of 25
			// (BenchmarkWriteBatchSmall) this cut CPU per decision by about a
			// quarter.
			if _, err := c.Exec("PRAGMA temp_store=MEMORY", nil); err != nil {
				return err
			}
			_, err := c.Exec("PRAGMA journal_size_limit="+strconv.Itoa(walSizeLimit), nil)
			return err
		}})
	})
}

// checkpointEvery is how often the checkpointer copies the WAL into the
// database file under synchronous setting sync (SyncNormal or SyncFull).
// With NORMAL the WAL is synced only when a checkpoint copies it, so the
// interval is also the span of commits a power cut can take back: it
// stays short. With FULL every commit is synced when it returns, and the
// interval only sets how often the pages commits changed are copied: a
// page changed by many commits (an index's, the queue's) is copied once
// per interval, so checkpoints two seconds apart read about half and write
// about a fifth less per record than every 250 ms, for the same CPU
// (docs/benchmarks.md, ninth round). The WAL holds up to an interval's
// commits before it starts over.
func checkpointEvery(sync string) time.Duration {
	if sync == SyncNormal {
		return 250 * time.Millisecond
	}
	return 2 * time.Second
}

// restartFrames is the WAL length (in pages) past which the checkpointer
// makes the WAL start over from its beginning.
//
// A PASSIVE checkpoint copies the WAL into the database but never starts
// the WAL over: SQLite does that only at the first write after a checkpoint
// that copied everything, and only when no reader still reads from the
// WAL. Under steady load some reader always does (the agent's workers read
// all the time), so the WAL grew without end, by every page of every
// commit — gigabytes in a few minutes of syncing — and each commit
// appended to an ever larger file: new file blocks for the file system to
// allocate, a larger WAL index for every reader to search. A RESTART
// checkpoint holds writers off, copies what is left and waits for the
// readers of the WAL to finish; the next commit then writes from the
// WAL's beginning again, over blocks the file already has.
var restartFrames int64 = 4096

// restartWait bounds how long a RESTART checkpoint waits for readers
// (SQLite's busy handler on its connection); writers wait meanwhile, so
// it is short. A RESTART that runs out of time is tried again at the next
// tick with twice the wait, up to restartWaitMax, and the wait that
// sufficed is kept: on a machine short of
// CPU the readers of the moment may need longer than restartWait to
// finish, and a checkpointer that always gave up first let the WAL grow
// as if it did not restart at all.
const (
	restartWait    = 50 * time.Millisecond
	restartWaitMax = 800 * time.Millisecond
)

// checkpoint runs PASSIVE checkpoints on db every interval until db is
// closed, then gives the gate's writer connection back. PASSIVE never
// waits for readers or writers: it copies what it can. When the WAL is
// longer than restartFrames after one, a RESTART checkpoint, under the
// write gate, lets the WAL start over.
func checkpoint(db *sql.DB, g *writeGate, every time.Duration) {
	t := time.NewTicker(every)
	defer t.Stop()
	wait := restartWait
	for range t.C {
		if !checkpointOnce(db, g, &wait) {
			return
		}
	}
}

// checkpointOnce is one tick of checkpoint; false when db is closed. It
// holds g.schema for reading, so that no checkpoint reads the schema while
// Migrate changes it.
func checkpointOnce(db *sql.DB, g *writeGate, wait *time.Duration) bool {
	g.schema.RLock()
	defer g.schema.RUnlock()
	frames, _, err := walCheckpoint(context.Background(), db, "PASSIVE")
	if err != nil && strings.Contains(err.Error(), "database is closed") {
		g.closeWriter()
		return false
	}
	if err != nil || frames < restartFrames {
		return true
	}
	// The wait is kept once it suffices: the busy handler returns as soon
	// as the readers finish, so a longer bound costs writers nothing while
	// readers are quick.
	if busy, err := restartWAL(db, g, *wait); err != nil || busy {
		*wait = min(2**wait, restartWaitMax)
	}
	return true
}

// walCheckpoint runs one checkpoint in mode and returns the WAL's length in
// pages, as SQLite reports it, and whether the checkpoint was kept from
// finishing by a reader or writer (SQLITE_BUSY in the pragma's answer).
func walCheckpoint(ctx context.Context, q interface {
	QueryRowContext(context.Context, string, ...any) *sql.Row
}, mode string) (frames int64, busy bool, err error) {
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	var b, checkpointed int64
	err = q.QueryRowContext(ctx, "PRAGMA wal_checkpoint("+mode+")").Scan(&b, &frames, &checkpointed)
	return frames, b != 0, err
}

// restartWAL runs a RESTART checkpoint while holding g, so none of this
// process's writers is inside a transaction, on a connection whose busy
// handler gives up after wait. It reports whether readers kept the WAL
// from starting over.
func restartWAL(db *sql.DB, g *writeGate, wait time.Duration) (busy bool, err error) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	release, gated, err := g.take(ctx)
	if err != nil {
		return false, err
	}
	defer release()
	if !gated {
		return false, nil
	}
	c, err := db.Conn(ctx)
	if err != nil {
		return false, err
	}
	defer c.Close()
	var was int64
	if err := c.QueryRowContext(ctx, "PRAGMA busy_timeout").Scan(&was); err != nil {
		return false, err
	}
	if _, err := c.ExecContext(ctx, "PRAGMA busy_timeout="+strconv.FormatInt(wait.Milliseconds(), 10)); err != nil {
		return false, err
	}
	_, busy, cerr := walCheckpoint(ctx, c, "RESTART")
	if _, err := c.ExecContext(ctx, "PRAGMA busy_timeout="+strconv.FormatInt(was, 10)); err != nil {
		// A connection left with the short timeout must not go back to the pool.
		_ = c.Raw(func(any) error { return driver.ErrBadConn })
		return busy, err
	}
	return busy, cerr
}
