package main

import (
	"context"
	"fmt"

	"github.com/fhirsync/fhirsync/storage"
)

func runMigrate(ctx context.Context, e *env, args []string) error {
	fs := e.newFlagSet("migrate", "migrate [--status]", `
Apply every pending migration to the configured database and exit.
serve also migrates at start; run this first when several processes share a
PostgreSQL database. A database migrated by a newer fhirsync is refused.`)
	status := fs.Bool("status", false, "print the current and latest schema version without migrating")
	if done, err := parseFlags(fs, args); done {
		return err
	}
	defer e.close()
	if *status {
		db, err := e.openDBNoMigrate(ctx)
		if err != nil {
			return err
		}
		cur, err := storage.CurrentVersion(ctx, db)
		if err != nil {
			return err
		}
		fmt.Fprintf(e.stdout, "%s: schema version %d, this binary knows %d\n", e.describeDB(), cur, storage.LatestVersion())
		return nil
	}
	db, err := e.openDBNoMigrate(ctx)
	if err != nil {
		return err
	}
	applied, err := storage.Migrate(ctx, db)
	if err != nil {
		return fmt.Errorf("migrating %s: %w", e.describeDB(), err)
	}
	if len(applied) == 0 {
		fmt.Fprintf(e.stdout, "%s: schema is current (version %d)\n", e.describeDB(), storage.LatestVersion())
		return nil
	}
	fmt.Fprintf(e.stdout, "%s: applied migrations %v; schema version %d\n", e.describeDB(), applied, storage.LatestVersion())
	return nil
}
