package storage_test

import (
	"context"
	"errors"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/fhirsync/fhirsync/storage"
	"github.com/fhirsync/fhirsync/storage/storagetest"
	"gorm.io/gorm"
)

func TestMigrateIsIdempotentAndRecorded(t *testing.T) {
	t.Parallel()
	storagetest.Each(t, func(t *testing.T, db *gorm.DB) {
		ctx := context.Background()
		cur, err := storage.CurrentVersion(ctx, db)
		if err != nil {
			t.Fatal(err)
		}
		if cur != storage.LatestVersion() || cur == 0 {
			t.Fatalf("version = %d, want latest %d", cur, storage.LatestVersion())
		}
		applied, err := storage.Migrate(ctx, db)
		if err != nil {
			t.Fatal(err)
		}
		if len(applied) != 0 {
			t.Fatalf("second Migrate applied %v, want nothing", applied)
		}
		if err := storage.Check(ctx, db); err != nil {
			t.Fatalf("Check after migrate: %v", err)
		}
	})
}

func TestNewerSchemaIsRefused(t *testing.T) {
	t.Parallel()
	storagetest.Each(t, func(t *testing.T, db *gorm.DB) {
		ctx := context.Background()
		future := storage.LatestVersion() + 1
		if err := db.Exec(`INSERT INTO schema_migrations (version, name, applied_at) VALUES (?, 'future', ?)`, future, time.Now()).Error; err != nil {
			t.Fatal(err)
		}
		_, err := storage.Migrate(ctx, db)
		if !errors.Is(err, storage.ErrSchemaTooNew) {
			t.Fatalf("Migrate on newer schema: err = %v, want ErrSchemaTooNew", err)
		}
		if !strings.Contains(err.Error(), "upgrade fhirsync") {
			t.Errorf("error %q does not tell the operator what to do", err)
		}
		if err := storage.Check(ctx, db); !errors.Is(err, storage.ErrSchemaTooNew) {
			t.Fatalf("Check on newer schema: %v", err)
		}
	})
}

func TestCheckReportsPendingMigrations(t *testing.T) {
	t.Parallel()
	for _, d := range storagetest.Dialects {
		t.Run(string(d), func(t *testing.T) {
			u := storagetest.URL(t, d)
			db, err := storage.Open(context.Background(), u, storage.Options{})
			if err != nil {
				t.Fatal(err)
			}
			defer storage.Close(db)
			if err := storage.Check(context.Background(), db); !errors.Is(err, storage.ErrSchemaBehind) {
				t.Fatalf("Check on empty database: err = %v, want ErrSchemaBehind", err)
			}
		})
	}
}

func TestOpenUnreachableNamesHost(t *testing.T) {
	t.Parallel()
	_, err := storage.Open(context.Background(), "postgres://u:secretpw@127.0.0.1:1/nodb?sslmode=disable&connect_timeout=2", storage.Options{})
	if !errors.Is(err, storage.ErrUnreachable) {
		t.Fatalf("err = %v, want ErrUnreachable", err)
	}
	if !strings.Contains(err.Error(), "127.0.0.1:1") {
		t.Errorf("error %q does not name the host", err)
	}
	if strings.Contains(err.Error(), "secretpw") {
		t.Errorf("error %q leaks the password", err)
	}
	if strings.Count(err.Error(), "\n") > 0 {
		t.Errorf("error spans several lines: %q", err)
	}
}

func TestOpenRejectsUnknownScheme(t *testing.T) {
	t.Parallel()
	_, err := storage.Open(context.Background(), "mysql://x", storage.Options{})
	if err == nil || !strings.Contains(err.Error(), `"mysql"`) {
		t.Fatalf("err = %v, want a message naming the scheme", err)
	}
}

func TestLeaseIsExclusiveUntilExpiry(t *testing.T) {
	t.Parallel()
	storagetest.Each(t, func(t *testing.T, db *gorm.DB) {
		ctx := context.Background()
		a := storage.NewLease(db, "feed:Patient", "proc-a", 300*time.Millisecond)
		b := storage.NewLease(db, "feed:Patient", "proc-b", 300*time.Millisecond)
		if ok, err := a.Acquire(ctx); err != nil || !ok {
			t.Fatalf("a.Acquire = %v, %v; want true", ok, err)
		}
		if ok, err := b.Acquire(ctx); err != nil || ok {
			t.Fatalf("b.Acquire while a holds = %v, %v; want false", ok, err)
		}
		if ok, err := a.Acquire(ctx); err != nil || !ok {
			t.Fatalf("a renew = %v, %v; want true", ok, err)
		}
		time.Sleep(400 * time.Millisecond)
		if ok, err := b.Acquire(ctx); err != nil || !ok {
			t.Fatalf("b.Acquire after expiry = %v, %v; want true", ok, err)
		}
		if ok, _ := a.Acquire(ctx); ok {
			t.Fatal("a took the lease back while b holds it")
		}
	})
}

func TestLeaseRaceHasOneWinner(t *testing.T) {
	t.Parallel()
	storagetest.Each(t, func(t *testing.T, db *gorm.DB) {
		ctx := context.Background()
		var mu sync.Mutex
		winners := 0
		var wg sync.WaitGroup
		for i := range 8 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				l := storage.NewLease(db, "job:retention", "p"+string(rune('a'+i)), time.Minute)
				ok, err := l.Acquire(ctx)
				if err != nil {
					t.Errorf("Acquire: %v", err)
					return
				}
				if ok {
					mu.Lock()
					winners++
					mu.Unlock()
				}
			}()
		}
		wg.Wait()
		if winners != 1 {
			t.Fatalf("%d holders won the lease, want exactly 1", winners)
		}
	})
}

// TestDirectRunsStatementsToTheEnd checks Direct's contract on SQLite: a
// context that has already ended fails the statement at once, and one
// that ends while the statement runs does not interrupt it (the driver
// would otherwise watch the context on a goroutine per statement and row).
func TestDirectRunsStatementsToTheEnd(t *testing.T) {
	t.Parallel()
	db := storagetest.Open(t, storage.SQLite)

	ended, cancel := context.WithCancel(context.Background())
	cancel()
	var one int
	if err := storage.Direct(db.WithContext(ended)).QueryRow(`SELECT 1`).Scan(&one); !errors.Is(err, context.Canceled) {
		t.Errorf("QueryRow under an ended context: %v, want context.Canceled", err)
	}
	if _, err := storage.Direct(db.WithContext(ended)).Exec(`CREATE TEMP TABLE t (x)`); !errors.Is(err, context.Canceled) {
		t.Errorf("Exec under an ended context: %v, want context.Canceled", err)
	}
	if _, err := storage.Direct(db.WithContext(ended)).Query(`SELECT 1`); !errors.Is(err, context.Canceled) {
		t.Errorf("Query under an ended context: %v, want context.Canceled", err)
	}

	// A count that takes SQLite a while; the context ends meanwhile.
	const n = 3_000_000
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	timer := time.AfterFunc(20*time.Millisecond, cancel)
	defer timer.Stop()
	var got int
	err := storage.Direct(db.WithContext(ctx)).QueryRow(
		`WITH RECURSIVE c(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM c WHERE i < ?) SELECT count(*) FROM c`, n).Scan(&got)
	if err != nil || got != n {
		t.Fatalf("count = %d, %v; want %d with no error though the context ended while it ran", got, err, n)
	}
	if ctx.Err() == nil {
		t.Fatal("the context had not ended when the count finished: make the count longer")
	}
}
