package storage

import (
	"context"
	"embed"
	"errors"
	"fmt"
	"io/fs"
	"path"
	"sort"
	"strconv"
	"strings"
	"time"

	"gorm.io/gorm"
)

//go:embed migrations/*.sql
var migrationFiles embed.FS

// ErrSchemaTooNew means the database was migrated by a newer binary; running
// an older binary against it could corrupt data, so it is refused.
var ErrSchemaTooNew = errors.New("database schema is newer than this binary")

// ErrSchemaBehind means migrations are pending; readiness fails until
// `fhirsync migrate` (or serve's start-up) applies them.
var ErrSchemaBehind = errors.New("database schema has pending migrations")

// Migration is one numbered schema step.
type Migration struct {
	Version int
	Name    string
	sql     map[Dialect]string
}

// Migrations lists the embedded migrations in order.
func Migrations() ([]Migration, error) {
	entries, err := fs.ReadDir(migrationFiles, "migrations")
	if err != nil {
		return nil, err
	}
	byVersion := map[int]*Migration{}
	for _, e := range entries {
		name := e.Name()
		base := strings.TrimSuffix(name, ".sql")
		dialects := []Dialect{SQLite, Postgres}
		switch {
		case strings.HasSuffix(base, ".sqlite"):
			base, dialects = strings.TrimSuffix(base, ".sqlite"), []Dialect{SQLite}
		case strings.HasSuffix(base, ".postgres"):
			base, dialects = strings.TrimSuffix(base, ".postgres"), []Dialect{Postgres}
		}
		num, label, ok := strings.Cut(base, "_")
		v, err := strconv.Atoi(num)
		if !ok || err != nil || v <= 0 {
			return nil, fmt.Errorf("migration file %s: name must be NNNN_name.sql", name)
		}
		body, err := migrationFiles.ReadFile(path.Join("migrations", name))
		if err != nil {
			return nil, err
		}
		m := byVersion[v]
		if m == nil {
			m = &Migration{Version: v, Name: label, sql: map[Dialect]string{}}
			byVersion[v] = m
		} else if m.Name != label {
			return nil, fmt.Errorf("migration %d has two names: %s and %s", v, m.Name, label)
		}
		for _, d := range dialects {
			if _, dup := m.sql[d]; dup && len(dialects) == 2 {
				return nil, fmt.Errorf("migration %d defined twice for %s", v, d)
			}
			// A dialect-specific file wins over a shared one.
			if _, set := m.sql[d]; !set || len(dialects) == 1 {
				m.sql[d] = string(body)
			}
		}
	}
	out := make([]Migration, 0, len(byVersion))
	for _, m := range byVersion {
		out = append(out, *m)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Version < out[j].Version })
	return out, nil
}

// LatestVersion is the highest migration this binary knows.
func LatestVersion() int {
	ms, err := Migrations()
	if err != nil || len(ms) == 0 {
		return 0
	}
	return ms[len(ms)-1].Version
}

const createVersionTable = `CREATE TABLE IF NOT EXISTS schema_migrations (
	version    INTEGER PRIMARY KEY,
	name       TEXT NOT NULL,
	applied_at TIMESTAMP NOT NULL
)`

// CurrentVersion reports the highest migration applied to db (0 if none).
func CurrentVersion(ctx context.Context, db *gorm.DB) (int, error) {
	if err := db.WithContext(ctx).Exec(createVersionTable).Error; err != nil {
		return 0, fmt.Errorf("creating schema_migrations: %w", err)
	}
	var v *int
	if err := db.WithContext(ctx).Raw(`SELECT MAX(version) FROM schema_migrations`).Scan(&v).Error; err != nil {
		return 0, fmt.Errorf("reading schema version: %w", err)
	}
	if v == nil {
		return 0, nil
	}
	return *v, nil
}

// Migrate applies every pending migration, each in its own transaction, and
// returns the versions it applied. On PostgreSQL an advisory lock keeps two
// processes starting at once from applying the same step twice.
func Migrate(ctx context.Context, db *gorm.DB) ([]int, error) {
	ms, err := Migrations()
	if err != nil {
		return nil, err
	}
	d := DialectOf(db)
	var applied []int
	run := func(conn *gorm.DB) error {
		cur, err := CurrentVersion(ctx, conn)
		if err != nil {
			return err
		}
		if latest := LatestVersion(); cur > latest {
			return fmt.Errorf("%w: database is at version %d, this binary knows up to %d; upgrade fhirsync", ErrSchemaTooNew, cur, latest)
		}
		for _, m := range ms {
			if m.Version <= cur {
				continue
			}
			body, ok := m.sql[d]
			if !ok {
				return fmt.Errorf("migration %d_%s has no %s variant", m.Version, m.Name, d)
			}
			err := conn.WithContext(ctx).Transaction(func(tx *gorm.DB) error {
				for _, stmt := range splitStatements(body) {
					if err := tx.Exec(stmt).Error; err != nil {
						return fmt.Errorf("applying migration %d_%s: %w", m.Version, m.Name, err)
					}
				}
				return tx.Exec(`INSERT INTO schema_migrations (version, name, applied_at) VALUES (?, ?, ?)`,
					m.Version, m.Name, time.Now().UTC()).Error
			})
			if err != nil {
				return err
			}
			applied = append(applied, m.Version)
		}
		return nil
	}
	if d != Postgres {
		g, gated := db.ConnPool.(*writeGate)
		if gated {
			g.schema.Lock()
			defer g.schema.Unlock()
		}
		err := run(db)
		if gated && len(applied) > 0 {
			g.forgetSchemas()
		}
		return applied, err
	}
	sqlDB, err := db.DB()
	if err != nil {
		return nil, err
	}
	conn, err := sqlDB.Conn(ctx)
	if err != nil {
		return nil, fmt.Errorf("reserving a connection for migrations: %w", err)
	}
	defer conn.Close()
	const lockKey = 7418220001
	if _, err := conn.ExecContext(ctx, `SELECT pg_advisory_lock($1)`, lockKey); err != nil {
		return nil, fmt.Errorf("taking the migration lock: %w", err)
	}
	defer conn.ExecContext(context.WithoutCancel(ctx), `SELECT pg_advisory_unlock($1)`, lockKey) //nolint:errcheck
	return applied, run(db)
}

// Check is the readiness probe: the database answers and its schema is
// exactly the version this binary expects.
func Check(ctx context.Context, db *gorm.DB) error {
	sqlDB, err := db.DB()
	if err != nil {
		return err
	}
	if err := sqlDB.PingContext(ctx); err != nil {
		return fmt.Errorf("%w: %s", ErrUnreachable, shortErr(err))
	}
	var v *int
	if err := db.WithContext(ctx).Raw(`SELECT MAX(version) FROM schema_migrations`).Scan(&v).Error; err != nil {
		return fmt.Errorf("%w: no schema_migrations table", ErrSchemaBehind)
	}
	cur := 0
	if v != nil {
		cur = *v
	}
	latest := LatestVersion()
	switch {
	case cur < latest:
		return fmt.Errorf("%w: at version %d of %d", ErrSchemaBehind, cur, latest)
	case cur > latest:
		return fmt.Errorf("%w: at version %d, binary knows %d", ErrSchemaTooNew, cur, latest)
	}
	return nil
}

// splitStatements splits a migration on semicolons that end a line. Bodies
// of PostgreSQL functions are written with $$ quoting and kept whole.
func splitStatements(body string) []string {
	var out []string
	var cur strings.Builder
	inDollar := false
	for _, line := range strings.Split(body, "\n") {
		trimmed := strings.TrimSpace(line)
		if strings.HasPrefix(trimmed, "--") && cur.Len() == 0 {
			continue
		}
		if strings.Count(line, "$$")%2 == 1 {
			inDollar = !inDollar
		}
		cur.WriteString(line)
		cur.WriteString("\n")
		if !inDollar && strings.HasSuffix(trimmed, ";") {
			if s := strings.TrimSpace(cur.String()); s != ";" {
				out = append(out, s)
			}
			cur.Reset()
		}
	}
	if s := strings.TrimSpace(cur.String()); s != "" {
		out = append(out, s)
	}
	return out
}
