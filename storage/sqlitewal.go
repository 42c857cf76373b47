package storage

import (
	"context"
	"database/sql"
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
const sqliteDriver = "sqlite3_fhirsync"

var registerDriver sync.Once

func registerSQLiteDriver() {
	registerDriver.Do(func() {
		sql.Register(sqliteDriver, &sqlite3.SQLiteDriver{ConnectHook: func(c *sqlite3.SQLiteConn) error {
			_, err := c.Exec("PRAGMA wal_autocheckpoint=0", nil)
			return err
		}})
	})
}

// checkpointEvery is how often the checkpointer copies the WAL into the
// database file.
const checkpointEvery = 250 * time.Millisecond

// checkpoint runs PASSIVE checkpoints on db until db is closed, then calls
// closed. PASSIVE
// never waits for readers or writers: it copies what it can, and SQLite
// starts the WAL over from its beginning once a checkpoint has copied it
// all.
func checkpoint(db *sql.DB, closed func()) {
	t := time.NewTicker(checkpointEvery)
	defer t.Stop()
	for range t.C {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		_, err := db.ExecContext(ctx, "PRAGMA wal_checkpoint(PASSIVE)")
		cancel()
		if err != nil && strings.Contains(err.Error(), "database is closed") {
			closed()
			return
		}
	}
}
