package storage

import (
	"context"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"syscall"
	"testing"
)

// With glibc's default trim threshold, reads whose page caches a writer
// keeps emptying hand memory back to the system and fault it in again;
// with trimThreshold they reuse it. Counted in minor page faults of the
// same workload under both settings.
func TestSQLiteReadsReuseFreedMemory(t *testing.T) {
	if !setTrimThreshold(trimThreshold) {
		t.Skip("this C library has no trim threshold setting")
	}
	defer setTrimThreshold(trimThreshold)
	db, err := Open(context.Background(), "sqlite:"+filepath.Join(t.TempDir(), "malloc.db"), Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer Close(db)
	if err := db.Exec(`CREATE TABLE r (id INTEGER PRIMARY KEY, b TEXT NOT NULL)`).Error; err != nil {
		t.Fatal(err)
	}
	if err := db.Exec(`WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 20000)
		INSERT INTO r (b) SELECT hex(randomblob(150)) FROM n`).Error; err != nil {
		t.Fatal(err)
	}
	workload := func() int64 {
		var before, after syscall.Rusage
		_ = syscall.Getrusage(syscall.RUSAGE_SELF, &before)
		for i := range 150 {
			if err := db.Exec(`UPDATE r SET b = hex(randomblob(150)) WHERE id = ?`, i*97%20000+1).Error; err != nil {
				t.Fatal(err)
			}
			var wg sync.WaitGroup
			for w := range 4 {
				wg.Go(func() {
					var n int64
					if err := db.Raw(`SELECT SUM(LENGTH(b)) FROM r WHERE id BETWEEN ? AND ?`, w*5000, w*5000+2000).Scan(&n).Error; err != nil {
						t.Error(err)
					}
				})
			}
			wg.Wait()
		}
		_ = syscall.Getrusage(syscall.RUSAGE_SELF, &after)
		return after.Minflt - before.Minflt
	}
	workload() // warm: connections opened, statements prepared
	setTrimThreshold(128 << 10)
	glibcDefault := workload()
	setTrimThreshold(trimThreshold)
	kept := workload()
	t.Logf("minor page faults: %d with glibc's 128 KiB trim threshold, %d with %d MiB", glibcDefault, kept, trimThreshold>>20)
	if kept*2 > glibcDefault {
		t.Errorf("keeping freed memory did not halve the page faults: %d against %d", kept, glibcDefault)
	}
}

// SQLite called from many threads at once leaves the C allocator with at
// most arenaMax arenas, where glibc would make one per thread that found
// the others busy (up to eight per core).
func TestSQLiteCallersShareFewArenas(t *testing.T) {
	if os.Getenv("MALLOC_ARENA_MAX") != "" || strings.Contains(os.Getenv("GLIBC_TUNABLES"), "arena_max") {
		t.Skip("the environment sets the arena count")
	}
	if arenas() < 0 {
		t.Skip("this C library does not report its arenas")
	}
	db, err := Open(context.Background(), "sqlite:"+filepath.Join(t.TempDir(), "arenas.db"), Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer Close(db)
	if err := db.Exec(`CREATE TABLE r (id INTEGER PRIMARY KEY, b TEXT NOT NULL)`).Error; err != nil {
		t.Fatal(err)
	}
	if err := db.Exec(`WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 5000)
		INSERT INTO r (b) SELECT hex(randomblob(150)) FROM n`).Error; err != nil {
		t.Fatal(err)
	}
	// Each reader holds a thread of its own while it reads.
	var wg sync.WaitGroup
	for w := range 16 {
		wg.Go(func() {
			runtime.LockOSThread()
			defer runtime.UnlockOSThread()
			for i := range 50 {
				var n int64
				if err := db.Raw(`SELECT SUM(LENGTH(b)) FROM r WHERE id BETWEEN ? AND ?`, (w*50+i)%4000, (w*50+i)%4000+1000).Scan(&n).Error; err != nil {
					t.Error(err)
					return
				}
			}
		})
	}
	wg.Wait()
	if n := arenas(); n > arenaMax {
		t.Errorf("the C allocator has %d arenas after 16 threads read at once, want at most %d", n, arenaMax)
	}
}
