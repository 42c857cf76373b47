// Package storagetest gives tests fresh, migrated databases on every
// supported dialect: SQLite in a temporary directory, and a PostgreSQL
// database created for the test and dropped when it ends.
//
// PostgreSQL is found at FHIRSYNC_TEST_POSTGRES_URL, or at
// postgres://postgres@127.0.0.1:5432/test. When it cannot be reached the
// PostgreSQL half is skipped with a message, unless FHIRSYNC_CI is set (as
// .ci/run does), in which case the test fails.
package storagetest

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"net/url"
	"os"
	"path/filepath"
	"testing"
	"time"

	"gorm.io/gorm"

	"github.com/fhirsync/fhirsync/storage"
)

// DefaultPostgresURL is the administrative database used to create and
// drop per-test databases.
const DefaultPostgresURL = "postgres://postgres@127.0.0.1:5432/test?sslmode=disable"

// AdminURL returns the PostgreSQL URL tests use to create databases.
func AdminURL() string {
	if u := os.Getenv("FHIRSYNC_TEST_POSTGRES_URL"); u != "" {
		return u
	}
	return DefaultPostgresURL
}

// Dialects lists the dialects Each runs.
var Dialects = []storage.Dialect{storage.SQLite, storage.Postgres}

// Each runs fn as a subtest once per dialect, each with a fresh migrated
// database.
func Each(t *testing.T, fn func(t *testing.T, db *gorm.DB)) {
	t.Helper()
	for _, d := range Dialects {
		t.Run(string(d), func(t *testing.T) {
			fn(t, Open(t, d))
		})
	}
}

// Open returns a fresh migrated database of dialect d, closed and (for
// PostgreSQL) dropped when t ends.
func Open(t testing.TB, d storage.Dialect) *gorm.DB {
	t.Helper()
	u := URL(t, d)
	db, err := storage.Open(context.Background(), u, storage.Options{})
	if err != nil {
		t.Fatalf("opening %s test database: %v", d, err)
	}
	t.Cleanup(func() { _ = storage.Close(db) })
	if _, err := storage.Migrate(context.Background(), db); err != nil {
		t.Fatalf("migrating %s test database: %v", d, err)
	}
	return db
}

// URL creates an empty database of dialect d for t and returns its URL,
// without migrating it. Processes started by a test (a child agent, the
// fhirsync binary) can be pointed at it.
func URL(t testing.TB, d storage.Dialect) string {
	t.Helper()
	switch d {
	case storage.SQLite:
		return "sqlite:" + filepath.Join(t.TempDir(), "test.db")
	case storage.Postgres:
		return freshPostgres(t)
	}
	t.Fatalf("unknown dialect %q", d)
	return ""
}

func freshPostgres(t testing.TB) string {
	t.Helper()
	ctx := context.Background()
	admin, err := storage.Open(ctx, AdminURL(), storage.Options{MaxOpenConns: 2})
	if err != nil {
		if os.Getenv("FHIRSYNC_CI") != "" {
			t.Fatalf("PostgreSQL is required (FHIRSYNC_CI is set) but unreachable: %v", err)
		}
		t.Skipf("SKIPPING PostgreSQL half: %v (set FHIRSYNC_TEST_POSTGRES_URL, or run .ci/run)", err)
	}
	var b [6]byte
	_, _ = rand.Read(b[:])
	name := fmt.Sprintf("fhirsync_t_%s_%s", time.Now().UTC().Format("150405"), hex.EncodeToString(b[:]))
	if err := admin.Exec("CREATE DATABASE " + name).Error; err != nil {
		_ = storage.Close(admin)
		t.Fatalf("creating PostgreSQL test database: %v", err)
	}
	t.Cleanup(func() {
		defer storage.Close(admin) //nolint:errcheck
		if err := admin.Exec("DROP DATABASE IF EXISTS " + name + " WITH (FORCE)").Error; err != nil {
			t.Errorf("dropping PostgreSQL test database %s: %v", name, err)
		}
	})
	pu, err := url.Parse(AdminURL())
	if err != nil {
		t.Fatalf("parsing %s: %v", AdminURL(), err)
	}
	pu.Path = "/" + name
	return pu.String()
}

// Persistent opens, creating it on first use, a named and migrated
// database of dialect d that outlives the test run: for benchmarks whose
// seeding takes too long to repeat. It is a SQLite file under the
// temporary directory or a PostgreSQL database named fhirsync_bench_<name>;
// delete it to start over. It is closed when tb ends.
func Persistent(tb testing.TB, d storage.Dialect, name string) *gorm.DB {
	tb.Helper()
	ctx := context.Background()
	var u string
	switch d {
	case storage.SQLite:
		dir := filepath.Join(os.TempDir(), "fhirsync-bench-databases")
		if err := os.MkdirAll(dir, 0o700); err != nil {
			tb.Fatal(err)
		}
		u = "sqlite:" + filepath.Join(dir, name+".db")
	case storage.Postgres:
		admin, err := storage.Open(ctx, AdminURL(), storage.Options{MaxOpenConns: 1})
		if err != nil {
			if os.Getenv("FHIRSYNC_CI") != "" {
				tb.Fatalf("PostgreSQL is required (FHIRSYNC_CI is set) but unreachable: %v", err)
			}
			tb.Skipf("SKIPPING PostgreSQL half: %v (set FHIRSYNC_TEST_POSTGRES_URL, or run .ci/run)", err)
		}
		dbName := "fhirsync_bench_" + name
		var exists bool
		err = admin.Raw("SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = ?)", dbName).Scan(&exists).Error
		if err == nil && !exists {
			err = admin.Exec("CREATE DATABASE " + dbName).Error
		}
		_ = storage.Close(admin)
		if err != nil {
			tb.Fatalf("creating PostgreSQL database %s: %v", dbName, err)
		}
		pu, err := url.Parse(AdminURL())
		if err != nil {
			tb.Fatalf("parsing %s: %v", AdminURL(), err)
		}
		pu.Path = "/" + dbName
		u = pu.String()
	default:
		tb.Fatalf("unknown dialect %q", d)
	}
	db, err := storage.Open(ctx, u, storage.Options{})
	if err != nil {
		tb.Fatalf("opening %s: %v", storage.Describe(u, storage.Options{}), err)
	}
	tb.Cleanup(func() { _ = storage.Close(db) })
	if _, err := storage.Migrate(ctx, db); err != nil {
		tb.Fatalf("migrating %s: %v", storage.Describe(u, storage.Options{}), err)
	}
	return db
}
