package main

import (
	"context"
	"log/slog"
	"testing"

	"gorm.io/gorm"

	"github.com/fhirsync/fhirsync/maps"
	"github.com/fhirsync/fhirsync/maps/starter"
	"github.com/fhirsync/fhirsync/storage"
)

// openStarterDB opens the database at url, migrates it and publishes the
// starter map as version 1. The database is closed when the test ends.
func openStarterDB(t *testing.T, url string) *gorm.DB {
	t.Helper()
	ctx := context.Background()
	db, err := storage.Open(ctx, url, storage.Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = storage.Close(db) })
	if _, err := storage.Migrate(ctx, db); err != nil {
		t.Fatal(err)
	}
	ms, err := maps.New(db, maps.Options{Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatal(err)
	}
	doc, _, err := maps.Import(starter.YAML(), maps.CompileOptions{})
	if err != nil {
		t.Fatal(err)
	}
	v, err := ms.CreateDraft(ctx, doc, "test", "starter")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := ms.Publish(ctx, v.Number, "test", "starter"); err != nil {
		t.Fatal(err)
	}
	return db
}
