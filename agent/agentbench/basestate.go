package agentbench

import (
	"context"
	"fmt"

	"gorm.io/gorm"

	"github.com/fhirsync/fhirsync/storage"
)

// BaseState is the size of the base state the agent keeps for linked
// pairs (what was last synced per attribute on each side, as keyed
// hashes).
type BaseState struct {
	// Links is the number of pairs with a base.
	Links int64 `json:"links"`
	// AttributesPerLink is the mean number of attributes in a base.
	AttributesPerLink float64 `json:"attributes_per_link"`
	// BytesPerLink is the mean size of a row's values: its key columns,
	// map version, time and the packed hashes.
	BytesPerLink float64 `json:"bytes_per_link"`
	// StoredBytes is what the table and its indexes take in the database
	// (pages on SQLite, relation size on PostgreSQL); 0 when the database
	// does not say.
	StoredBytes int64 `json:"stored_bytes"`
}

// measureBaseState reads the size of the base state in db.
func measureBaseState(ctx context.Context, db *gorm.DB) (*BaseState, error) {
	var row struct {
		Links   int64
		Payload float64
	}
	// length() of a blob or bytea is its bytes; 8 bytes each for the map
	// version and the time.
	err := db.WithContext(ctx).Raw(`SELECT COUNT(*) AS links,
		COALESCE(SUM(length(entity_map) + length(fhir_id) + length(crm_id) + length(hashes) + 16), 0) AS payload
		FROM agent_link_base`).Scan(&row).Error
	if err != nil {
		return nil, fmt.Errorf("measuring the base state: %w", err)
	}
	b := &BaseState{Links: row.Links}
	if row.Links == 0 {
		return b, nil
	}
	b.BytesPerLink = row.Payload / float64(row.Links)
	b.StoredBytes = storedBytes(ctx, db)
	b.AttributesPerLink = attributesPerLink(ctx, db)
	return b, nil
}

// attributesPerLink counts the entries of one base (the bench syncs one
// entity map, so every base has the same attribute maps); 0 when unread.
func attributesPerLink(ctx context.Context, db *gorm.DB) float64 {
	var enc []byte
	if err := db.WithContext(ctx).Raw(`SELECT hashes FROM agent_link_base LIMIT 1`).Row().Scan(&enc); err != nil || len(enc) == 0 {
		return 0
	}
	n := 0
	for b := enc[1:]; len(b) > 0; n++ {
		// Each entry: the name's length (one varint byte for the names
		// here, all shorter than 128 bytes), the name, two 16-byte hashes.
		l := int(b[0])
		if b[0] >= 0x80 || 1+l+32 > len(b) {
			break
		}
		b = b[1+l+32:]
	}
	return float64(n)
}

// storedBytes is what the base-state table and its indexes take on disk.
func storedBytes(ctx context.Context, db *gorm.DB) int64 {
	var n int64
	var err error
	if storage.DialectOf(db) == storage.Postgres {
		err = db.WithContext(ctx).Raw(`SELECT pg_total_relation_size('agent_link_base')`).Scan(&n).Error
	} else {
		// The dbstat table exists only when SQLite was built with it.
		err = db.WithContext(ctx).Raw(`SELECT COALESCE(SUM(pgsize), 0) FROM dbstat WHERE name IN ('agent_link_base', 'agent_link_base_crm', 'sqlite_autoindex_agent_link_base_1')`).Scan(&n).Error
	}
	if err != nil {
		return 0
	}
	return n
}
