package storage

import (
	"context"
	"database/sql/driver"
	"path/filepath"
	"testing"
)

// TestForgetSchemasDropsStaleColumns shows why Migrate closes the pool's
// idle connections after changing the schema: a connection that read the
// schema before a column was added prepares "SELECT *" from its old copy,
// and the driver reports the columns as they were. After forgetSchemas the
// next statement runs on a connection that reads the schema afresh.
func TestForgetSchemasDropsStaleColumns(t *testing.T) {
	ctx := context.Background()
	db, err := Open(ctx, "sqlite:"+filepath.Join(t.TempDir(), "t.db"), Options{MaxOpenConns: 4})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = Close(db) })
	g := db.ConnPool.(*writeGate)
	sqlDB := g.db
	if _, err := sqlDB.ExecContext(ctx, `CREATE TABLE t (a INTEGER)`); err != nil {
		t.Fatal(err)
	}
	if _, err := sqlDB.ExecContext(ctx, `INSERT INTO t (a) VALUES (1)`); err != nil {
		t.Fatal(err)
	}
	// stale reads the schema on one connection, changes it on another and
	// leaves only the first in the pool, idle.
	stale := func(column string) {
		t.Helper()
		reader, err := sqlDB.Conn(ctx)
		if err != nil {
			t.Fatal(err)
		}
		changer, err := sqlDB.Conn(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := reader.ExecContext(ctx, `SELECT * FROM t`); err != nil {
			t.Fatal(err)
		}
		if _, err := changer.ExecContext(ctx, `ALTER TABLE t ADD COLUMN `+column+` INTEGER`); err != nil {
			t.Fatal(err)
		}
		_ = changer.Raw(func(any) error { return driver.ErrBadConn }) // not back to the pool
		changer.Close()
		reader.Close()
	}
	selectAll := func() []string {
		t.Helper()
		rows, err := sqlDB.QueryContext(ctx, `SELECT * FROM t`)
		if err != nil {
			t.Fatal(err)
		}
		defer rows.Close()
		cols, err := rows.Columns()
		if err != nil {
			t.Fatal(err)
		}
		return cols
	}

	sqlDB.SetMaxIdleConns(0) // start from no idle connection
	sqlDB.SetMaxIdleConns(4)
	stale("b")
	if got := selectAll(); len(got) != 1 {
		// The premise: without forgetSchemas the column is missing.
		t.Fatalf("columns %q on the connection that read the schema first; want the stale [a] this test guards against", got)
	}
	stale("c")
	g.forgetSchemas()
	if got := selectAll(); len(got) != 3 {
		t.Fatalf("columns after forgetSchemas = %q, want [a b c]", got)
	}
}
