package maps_test

import (
	"context"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"testing"

	"gorm.io/gorm"

	"github.com/fhirsync/fhirsync/maps"
	"github.com/fhirsync/fhirsync/storage"
	"github.com/fhirsync/fhirsync/storage/storagetest"
)

// migrateSQLiteTo applies the SQLite migrations before version upTo, read
// from their files, as an older binary would have left the database.
func migrateSQLiteTo(t *testing.T, db *gorm.DB, upTo int) {
	t.Helper()
	ctx := context.Background()
	if _, err := storage.CurrentVersion(ctx, db); err != nil { // creates schema_migrations
		t.Fatal(err)
	}
	files, err := filepath.Glob(filepath.Join("..", "storage", "migrations", "*.sql"))
	if err != nil {
		t.Fatal(err)
	}
	byVersion := map[int]string{}
	for _, f := range files {
		name := filepath.Base(f)
		if strings.HasSuffix(name, ".postgres.sql") {
			continue
		}
		num, _, _ := strings.Cut(name, "_")
		v, err := strconv.Atoi(num)
		if err != nil {
			t.Fatalf("migration file %s: %v", name, err)
		}
		if _, seen := byVersion[v]; !seen || strings.HasSuffix(name, ".sqlite.sql") {
			byVersion[v] = f
		}
	}
	var versions []int
	for v := range byVersion {
		if v < upTo {
			versions = append(versions, v)
		}
	}
	sort.Ints(versions)
	for _, v := range versions {
		body, err := os.ReadFile(byVersion[v])
		if err != nil {
			t.Fatal(err)
		}
		if err := db.Exec(string(body)).Error; err != nil {
			t.Fatalf("applying %s: %v", byVersion[v], err)
		}
		if err := db.Exec(`INSERT INTO schema_migrations (version, name, applied_at) VALUES (?, 'old', CURRENT_TIMESTAMP)`, v).Error; err != nil {
			t.Fatal(err)
		}
	}
}

// TestMigration13KeepsMapRowsOnSQLite: 0013 rebuilds the SQLite map tables
// to relax a CHECK. Rows stored before it, of published and draft
// versions, must survive with their ids, references and immutability, and
// load through the store with the new fields at their defaults.
func TestMigration13KeepsMapRowsOnSQLite(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	db, err := storage.Open(ctx, storagetest.URL(t, storage.SQLite), storage.Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = storage.Close(db) })
	migrateSQLiteTo(t, db, 13)

	exec := func(q string, args ...any) {
		t.Helper()
		if err := db.Exec(q, args...).Error; err != nil {
			t.Fatalf("%s: %v", q, err)
		}
	}
	// Version 1 (to be published) and version 2 (a draft), each with an
	// entity map, an expansion map, an entity attribute and an expansion
	// attribute. A deleted extra entity map leaves the id counter above the
	// highest id.
	for v := 1; v <= 2; v++ {
		exec(`INSERT INTO map_versions (id, number, status, format, checksum, created_at, updated_at) VALUES (?, ?, 'draft', 1, 'x', CURRENT_TIMESTAMP, CURRENT_TIMESTAMP)`, v, v)
		exec(`INSERT INTO map_entity_maps (id, version_id, position, name, enabled, crm_entity, crm_entity_set, fhir_type,
			fhir_to_crm, fhir_to_crm_operations, crm_to_fhir, crm_to_fhir_operations, correlation_crm_attribute, correlation_fhir_system, conflict_policy)
			VALUES (?, ?, 0, 'patient', TRUE, 'contact', 'contacts', 'Patient', TRUE, '["create","update","delete"]', TRUE, '["update"]', 'msemr_azurefhirid', 'urn:crm', 'crm-wins')`, v, v)
		exec(`INSERT INTO map_expansion_maps (id, version_id, entity_map_id, position, name, enabled, fhir_path, crm_entity, crm_entity_set, parent_lookup, match_key, on_remove)
			VALUES (?, ?, ?, 0, 'identifiers', TRUE, 'identifier', 'msemr_medicalidentifier', 'msemr_medicalidentifiers', 'msemr_contact', '["value"]', 'delete')`, v, v, v)
		exec(`INSERT INTO map_attribute_maps (id, version_id, entity_map_id, expansion_map_id, position, name, enabled, crm_attribute, crm_type, fhir_path)
			VALUES (?, ?, ?, NULL, 0, 'last-name', TRUE, 'lastname', 'string', 'name[0].family')`, 2*v-1, v, v)
		exec(`INSERT INTO map_attribute_maps (id, version_id, entity_map_id, expansion_map_id, position, name, enabled, crm_attribute, crm_type, fhir_path, fallback_paths)
			VALUES (?, ?, ?, ?, 0, 'value', TRUE, 'msemr_identifiervalue', 'string', 'value', NULL)`, 2*v, v, v, v)
	}
	exec(`INSERT INTO map_entity_maps (id, version_id, position, name, enabled, crm_entity, crm_entity_set, fhir_type,
		fhir_to_crm, fhir_to_crm_operations, crm_to_fhir, crm_to_fhir_operations, correlation_crm_attribute, correlation_fhir_system)
		VALUES (9, 2, 1, 'gone', TRUE, 'account', 'accounts', 'Organization', TRUE, '[]', FALSE, '[]', 'msemr_azurefhirid', 'urn:crm')`)
	exec(`DELETE FROM map_entity_maps WHERE id = 9`)
	exec(`UPDATE map_versions SET status = 'published', published_at = CURRENT_TIMESTAMP WHERE id = 1`)
	exec(`INSERT INTO map_publications (version_id, published_at) VALUES (1, CURRENT_TIMESTAMP)`)

	count := func(table string) int {
		t.Helper()
		var n int
		if err := db.Raw(`SELECT COUNT(*) FROM ` + table).Scan(&n).Error; err != nil {
			t.Fatal(err)
		}
		return n
	}
	tables := []string{"map_entity_maps", "map_expansion_maps", "map_attribute_maps"}
	before := map[string]int{}
	for _, tb := range tables {
		before[tb] = count(tb)
	}

	applied, err := storage.Migrate(ctx, db)
	if err != nil {
		t.Fatalf("migrating: %v", err)
	}
	if len(applied) == 0 || applied[0] != 13 {
		t.Fatalf("applied %v, want 13 first", applied)
	}
	for _, tb := range tables {
		if got := count(tb); got != before[tb] {
			t.Errorf("%s: %d rows after the migration, %d before", tb, got, before[tb])
		}
	}
	var broken []map[string]any
	if err := db.Raw(`PRAGMA foreign_key_check`).Scan(&broken).Error; err != nil || len(broken) > 0 {
		t.Fatalf("foreign key check: %v %v", broken, err)
	}
	var leftovers int
	if err := db.Raw(`SELECT COUNT(*) FROM sqlite_master WHERE name GLOB '*_new' OR sql GLOB '*_new[^a-z]*'`).Scan(&leftovers).Error; err != nil || leftovers != 0 {
		t.Fatalf("%d schema entries still name a _new table (%v)", leftovers, err)
	}

	// The published version's rows are still immutable, and hold is now
	// allowed on drafts.
	if err := db.Exec(`UPDATE map_attribute_maps SET name = 'x' WHERE id = 1`).Error; err == nil || !strings.Contains(err.Error(), "immutable") {
		t.Fatalf("updating a published attribute map: %v, want refused", err)
	}
	if err := db.Exec(`DELETE FROM map_entity_maps WHERE id = 1`).Error; err == nil {
		t.Fatal("deleting a published entity map was allowed")
	}
	exec(`UPDATE map_entity_maps SET conflict_policy = 'hold', delete_policy = 'ignore' WHERE id = 2`)
	exec(`UPDATE map_attribute_maps SET conflict_policy = 'hold' WHERE id = 4`)
	if err := db.Exec(`UPDATE map_entity_maps SET delete_policy = 'archive' WHERE id = 2`).Error; err == nil {
		t.Fatal("an unknown delete policy passed the CHECK")
	}

	// The id counter survived: a new entity map does not reuse id 9.
	exec(`INSERT INTO map_entity_maps (version_id, position, name, enabled, crm_entity, crm_entity_set, fhir_type,
		fhir_to_crm, fhir_to_crm_operations, crm_to_fhir, crm_to_fhir_operations, correlation_crm_attribute, correlation_fhir_system)
		VALUES (2, 2, 'new', TRUE, 'account', 'accounts', 'Organization', TRUE, '[]', FALSE, '[]', 'msemr_azurefhirid', 'urn:crm')`)
	var newID int
	if err := db.Raw(`SELECT id FROM map_entity_maps WHERE name = 'new'`).Scan(&newID).Error; err != nil || newID != 10 {
		t.Fatalf("new entity map id %d (%v), want 10", newID, err)
	}
	exec(`DELETE FROM map_entity_maps WHERE name = 'new'`)

	// Deleting the draft version still cascades to its rows.
	st, err := maps.New(db, maps.Options{Logger: quiet})
	if err != nil {
		t.Fatal(err)
	}
	doc, _, err := st.Version(ctx, 1)
	if err != nil {
		t.Fatalf("loading the published version: %v", err)
	}
	m := &doc.EntityMaps[0]
	if m.ConflictPolicy != maps.ConflictCRMWins || m.DeletePolicy != "" || m.Correlation.BusinessKey != nil ||
		len(m.Attributes) != 1 || len(m.Expansions) != 1 || len(m.Expansions[0].Attributes) != 1 || m.Attributes[0].ConflictPolicy != "" {
		t.Fatalf("published version after the migration: %+v", m)
	}
	draft, _, err := st.Version(ctx, 2)
	if err != nil {
		t.Fatal(err)
	}
	if d := &draft.EntityMaps[0]; d.ConflictPolicy != maps.ConflictHold || d.DeletePolicy != maps.DeleteIgnore ||
		d.Expansions[0].Attributes[0].ConflictPolicy != maps.ConflictHold {
		t.Fatalf("draft after the migration: %+v", d)
	}
	exec(`DELETE FROM map_versions WHERE id = 2`)
	for tb, want := range map[string]int{"map_entity_maps": 1, "map_expansion_maps": 1, "map_attribute_maps": 2} {
		if got := count(tb); got != want {
			t.Errorf("%s: %d rows after deleting the draft, want %d", tb, got, want)
		}
	}
}
