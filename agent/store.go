package agent

import (
	"context"
	"errors"
	"fmt"
	"time"

	"gorm.io/gorm"
	"gorm.io/gorm/clause"

	"github.com/fhirsync/fhirsync/storage"
)

// link pairs a FHIR resource with a CRM record under one entity map.
type link struct {
	EntityMap   string `gorm:"primaryKey"`
	FHIRType    string `gorm:"column:fhir_type"`
	FHIRID      string `gorm:"column:fhir_id;primaryKey"`
	CRMEntity   string `gorm:"column:crm_entity"`
	CRMID       string `gorm:"column:crm_id"`
	FHIRVersion string `gorm:"column:fhir_version"`
	CRMVersion  string `gorm:"column:crm_version"`
	UpdatedAt   time.Time
}

func (link) TableName() string { return "agent_links" }

// errNoLink means no cached pairing exists; callers fall back to the
// correlation keys on the records.
var errNoLink = errors.New("no link")

// links is the correlation cache.
type links struct{ db *gorm.DB }

func (s links) byFHIR(ctx context.Context, entityMap, fhirID string) (link, error) {
	var l link
	err := s.db.WithContext(ctx).Where("entity_map = ? AND fhir_id = ?", entityMap, fhirID).Take(&l).Error
	if errors.Is(err, gorm.ErrRecordNotFound) {
		return l, errNoLink
	}
	return l, err
}

func (s links) byCRM(ctx context.Context, entityMap, crmID string) (link, error) {
	var l link
	err := s.db.WithContext(ctx).Where("entity_map = ? AND crm_id = ?", entityMap, crmID).Take(&l).Error
	if errors.Is(err, gorm.ErrRecordNotFound) {
		return l, errNoLink
	}
	return l, err
}

// save records or refreshes a pairing. A CRM id paired before with another
// FHIR id (a record re-created on one side) is re-pointed.
func (s links) save(ctx context.Context, l link) error {
	l.UpdatedAt = time.Now().UTC()
	return s.db.WithContext(ctx).Transaction(func(tx *gorm.DB) error {
		if err := tx.Where("entity_map = ? AND crm_id = ? AND fhir_id <> ?", l.EntityMap, l.CRMID, l.FHIRID).Delete(&link{}).Error; err != nil {
			return err
		}
		return tx.Clauses(clause.OnConflict{
			Columns:   []clause.Column{{Name: "entity_map"}, {Name: "fhir_id"}},
			DoUpdates: clause.AssignmentColumns([]string{"fhir_type", "crm_entity", "crm_id", "fhir_version", "crm_version", "updated_at"}),
		}).Create(&l).Error
	})
}

func (s links) remove(ctx context.Context, entityMap, fhirID string) error {
	return s.db.WithContext(ctx).Where("entity_map = ? AND fhir_id = ?", entityMap, fhirID).Delete(&link{}).Error
}

// ownWrite is one version the agent produced.
type ownWrite struct {
	Side      string `gorm:"primaryKey"`
	RType     string `gorm:"column:rtype;primaryKey"`
	RID       string `gorm:"column:rid;primaryKey"`
	Version   string `gorm:"primaryKey"`
	WrittenAt time.Time
}

func (ownWrite) TableName() string { return "agent_own_writes" }

// ownWrites remembers the versions the agent wrote, for loop prevention.
type ownWrites struct{ db *gorm.DB }

func (s ownWrites) remember(ctx context.Context, side, rtype, rid, version string) error {
	if version == "" {
		return nil
	}
	w := ownWrite{Side: side, RType: rtype, RID: rid, Version: version, WrittenAt: time.Now().UTC()}
	err := s.db.WithContext(ctx).Clauses(clause.OnConflict{DoNothing: true}).Create(&w).Error
	if err != nil {
		return fmt.Errorf("remembering own write %s:%s/%s: %w", side, rtype, rid, err)
	}
	return nil
}

func (s ownWrites) isOwn(ctx context.Context, side, rtype, rid, version string) (bool, error) {
	if version == "" {
		return false, nil
	}
	var n int64
	err := s.db.WithContext(ctx).Model(&ownWrite{}).
		Where("side = ? AND rtype = ? AND rid = ? AND version = ?", side, rtype, rid, version).Count(&n).Error
	return n > 0, err
}

// prune forgets own writes older than age, in bounded batches.
func (s ownWrites) prune(ctx context.Context, age time.Duration) (int64, error) {
	cut := time.Now().UTC().Add(-age)
	rowID := "rowid"
	if storage.DialectOf(s.db) == storage.Postgres {
		rowID = "ctid"
	}
	q := `DELETE FROM agent_own_writes WHERE ` + rowID + ` IN (SELECT ` + rowID + ` FROM agent_own_writes WHERE written_at < ? LIMIT 5000)`
	var total int64
	for {
		res := s.db.WithContext(ctx).Exec(q, cut)
		if res.Error != nil {
			return total, res.Error
		}
		total += res.RowsAffected
		if res.RowsAffected < 5000 {
			return total, nil
		}
	}
}
