//go:build unix

package storage_test

import (
	"context"
	"os"
	"path/filepath"
	"syscall"
	"testing"

	"github.com/fhirsync/fhirsync/storage"
)

// TestSQLiteFilesArePrivate: the database and its WAL and shared-memory
// files are created readable by their owner only, even under a permissive
// umask.
func TestSQLiteFilesArePrivate(t *testing.T) {
	old := syscall.Umask(0o022)
	defer syscall.Umask(old)
	dir := t.TempDir()
	db, err := storage.Open(context.Background(), "", storage.Options{DataDir: filepath.Join(dir, "data")})
	if err != nil {
		t.Fatal(err)
	}
	defer storage.Close(db)
	if _, err := storage.Migrate(context.Background(), db); err != nil {
		t.Fatal(err)
	}
	base := filepath.Join(dir, "data", storage.DefaultSQLiteFile)
	for _, p := range []string{base, base + "-wal", base + "-shm"} {
		fi, err := os.Stat(p)
		if err != nil {
			t.Errorf("%s: %v", filepath.Base(p), err)
			continue
		}
		if m := fi.Mode().Perm(); m != 0o600 {
			t.Errorf("%s has mode %o, want 600", filepath.Base(p), m)
		}
	}
	if fi, err := os.Stat(filepath.Join(dir, "data")); err != nil || fi.Mode().Perm() != 0o700 {
		t.Errorf("data directory mode = %v, %v; want 700", fi.Mode().Perm(), err)
	}
}
