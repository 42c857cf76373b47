package storage

import (
	"context"
	"math"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"gorm.io/gorm"
)

// TestWALStartsOverUnderSteadyReads writes 2,000 commits of about three
// pages each while eight goroutines read without pause, and watches the WAL
// file. With PASSIVE checkpoints alone the WAL seldom starts over (some
// reader nearly always reads from it) and grows with the commits; the RESTART
// checkpoint keeps it within a few ticks' worth of commits.
func TestWALStartsOverUnderSteadyReads(t *testing.T) {
	if testing.Short() {
		t.Skip("writes about 25 MB twice")
	}
	const commits = 2000
	run := func(t *testing.T, frames int64, rowPause time.Duration) (maxWAL int64) {
		old := restartFrames
		restartFrames = frames
		t.Cleanup(func() { restartFrames = old })
		path := filepath.Join(t.TempDir(), "wal.db")
		// NORMAL checkpoints every 250 ms: several ticks in the two
		// seconds of commits.
		db, err := Open(context.Background(), "sqlite:"+path, Options{SQLiteSynchronous: SyncNormal})
		if err != nil {
			t.Fatal(err)
		}
		defer Close(db)
		if err := db.Exec(`CREATE TABLE blobs (id INTEGER PRIMARY KEY, b BLOB NOT NULL)`).Error; err != nil {
			t.Fatal(err)
		}
		var (
			stop  atomic.Bool
			reads atomic.Int64
			wg    sync.WaitGroup
		)
		// Each reader walks the newest rows slowly, so its read
		// transaction (the statement's) lasts a few milliseconds; with
		// eight of them, started apart, one is nearly always inside the
		// WAL, on a busy machine too (short queries left moments with no
		// reader, in which even PASSIVE checkpoints let the WAL start over).
		for i := range 8 {
			wg.Go(func() {
				time.Sleep(time.Duration(i) * time.Millisecond)
				for !stop.Load() {
					rows, err := db.Raw(`SELECT id FROM blobs ORDER BY id DESC LIMIT 5`).Rows()
					if err != nil {
						t.Error(err)
						return
					}
					for rows.Next() {
						time.Sleep(rowPause)
					}
					if err := rows.Close(); err != nil {
						t.Error(err)
						return
					}
					reads.Add(1)
				}
			})
		}
		defer func() { stop.Store(true); wg.Wait() }()
		for i := range commits {
			if err := db.Exec(`INSERT INTO blobs (b) VALUES (randomblob(8192))`).Error; err != nil {
				t.Fatal(err)
			}
			if fi, err := os.Stat(path + "-wal"); err == nil {
				maxWAL = max(maxWAL, fi.Size())
			}
			if i%10 == 0 {
				time.Sleep(10 * time.Millisecond) // at most ~1,000 commits/s: several checkpoint ticks
			}
		}
		stop.Store(true)
		wg.Wait()
		if rowPause < time.Millisecond && reads.Load() < commits {
			t.Fatalf("only %d reads beside %d commits: the readers did not keep the WAL busy", reads.Load(), commits)
		}
		return maxWAL
	}
	const written = commits * 3 * 4096 // at least three pages a commit
	var restarted, passive, slow int64
	t.Run("restart", func(t *testing.T) { restarted = run(t, 256, 250*time.Microsecond) })
	t.Run("passive only", func(t *testing.T) { passive = run(t, math.MaxInt64, 250*time.Microsecond) })
	// Readers whose transactions (about 100 ms) outlast restartWait: the
	// first RESTARTs give up, the wait grows until it outlasts them, and
	// from then on the WAL starts over again (the file keeps the size it
	// reached while the wait grew).
	t.Run("slow readers", func(t *testing.T) { slow = run(t, 256, 20*time.Millisecond) })
	t.Logf("largest WAL: %d bytes with RESTART checkpoints, %d with PASSIVE alone, %d with RESTART beside slow readers (%d written)", restarted, passive, slow, written)
	if 2*slow > passive {
		t.Errorf("WAL reached %d bytes with RESTART checkpoints beside readers slower than %v, against %d with PASSIVE alone: it hardly started over", slow, restartWait, passive)
	}
	if restarted > written/4 {
		t.Errorf("WAL reached %d bytes with RESTART checkpoints past 256 pages; %d bytes were written in all", restarted, written)
	}
	if passive < 2*restarted {
		t.Errorf("WAL reached only %d bytes with PASSIVE checkpoints alone, against %d with RESTART: the readers did not keep it from starting over, so the test shows nothing", passive, restarted)
	}
}

// Readers keep small page caches (every commit of another connection
// empties them); the writer, whose cache survives its own commits, a
// larger one.
func TestSQLiteCacheSizes(t *testing.T) {
	db, err := Open(context.Background(), "sqlite:"+filepath.Join(t.TempDir(), "cache.db"), Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer Close(db)
	var inTx int
	if err := db.Transaction(func(tx *gorm.DB) error {
		return tx.Raw("PRAGMA cache_size").Scan(&inTx).Error
	}); err != nil {
		t.Fatal(err)
	}
	if inTx != writerCacheKiB {
		t.Errorf("cache_size in a write transaction = %d, want %d", inTx, writerCacheKiB)
	}
	var reader int
	if err := db.Raw("PRAGMA cache_size").Scan(&reader).Error; err != nil {
		t.Fatal(err)
	}
	if reader != readerCacheKiB {
		t.Errorf("cache_size of a reader = %d, want %d", reader, readerCacheKiB)
	}
}

// Temporary files (statement journals, sorts) are kept in memory.
func TestSQLiteTempStoreInMemory(t *testing.T) {
	db, err := Open(context.Background(), "sqlite:"+filepath.Join(t.TempDir(), "temp.db"), Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer Close(db)
	var mode int
	if err := db.Raw("PRAGMA temp_store").Scan(&mode).Error; err != nil {
		t.Fatal(err)
	}
	if mode != 2 { // MEMORY
		t.Errorf("temp_store = %d, want 2 (MEMORY)", mode)
	}
}

// SQLite syncs the WAL at every commit by default and only at checkpoints
// with SyncNormal, on every connection of the pool, the writer's included;
// an unknown setting is refused before anything is opened.
func TestSQLiteSynchronous(t *testing.T) {
	for _, tt := range []struct {
		setting string
		want    int
	}{{"", 2}, {SyncNormal, 1}, {SyncFull, 2}} {
		db, err := Open(context.Background(), "sqlite:"+filepath.Join(t.TempDir(), "sync.db"), Options{SQLiteSynchronous: tt.setting})
		if err != nil {
			t.Fatal(err)
		}
		var inTx, reader int
		if err := db.Transaction(func(tx *gorm.DB) error {
			return tx.Raw("PRAGMA synchronous").Scan(&inTx).Error
		}); err != nil {
			t.Fatal(err)
		}
		if err := db.Raw("PRAGMA synchronous").Scan(&reader).Error; err != nil {
			t.Fatal(err)
		}
		Close(db)
		if inTx != tt.want || reader != tt.want {
			t.Errorf("setting %q: synchronous = %d in a write transaction, %d on a reader; want %d", tt.setting, inTx, reader, tt.want)
		}
	}
	dir := t.TempDir()
	_, err := Open(context.Background(), "sqlite:"+filepath.Join(dir, "sync.db"), Options{SQLiteSynchronous: "extra"})
	if err == nil || !strings.Contains(err.Error(), `"extra" is not normal or full`) {
		t.Errorf("unknown setting: err = %v", err)
	}
	if _, statErr := os.Stat(filepath.Join(dir, "sync.db")); statErr == nil {
		t.Error("an unknown setting created the database file")
	}
}
