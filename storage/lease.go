package storage

import (
	"context"
	"fmt"
	"time"

	"gorm.io/gorm"
	"gorm.io/gorm/clause"
)

// Lease is a named, time-limited claim held in the database so that, among
// several processes sharing it, only one runs a feed poller or a scheduled job
// at a time. A holder renews by calling Acquire again before the lease
// expires; a crashed holder's lease lapses on its own.
type Lease struct {
	db     *gorm.DB
	name   string
	holder string
	ttl    time.Duration
	now    func() time.Time
}

// NewLease prepares a lease named name for holder (a process identity).
func NewLease(db *gorm.DB, name, holder string, ttl time.Duration) *Lease {
	return &Lease{db: db, name: name, holder: holder, ttl: ttl, now: time.Now}
}

type leaseRow struct {
	Name      string `gorm:"primaryKey"`
	Holder    string
	ExpiresAt time.Time
	UpdatedAt time.Time
}

func (leaseRow) TableName() string { return "leases" }

// Acquire takes or renews the lease. It reports whether this holder now owns
// it; false with a nil error means another live holder has it.
func (l *Lease) Acquire(ctx context.Context) (bool, error) {
	now := l.now().UTC()
	row := leaseRow{Name: l.name, Holder: l.holder, ExpiresAt: now.Add(l.ttl), UpdatedAt: now}
	// Insert, or take over when we already hold it or it has lapsed; the
	// WHERE on the conflict update makes the takeover atomic.
	res := l.db.WithContext(ctx).Clauses(clause.OnConflict{
		Columns: []clause.Column{{Name: "name"}},
		DoUpdates: clause.Assignments(map[string]any{
			"holder": row.Holder, "expires_at": row.ExpiresAt, "updated_at": row.UpdatedAt,
		}),
		Where: clause.Where{Exprs: []clause.Expression{
			clause.Or(
				clause.Eq{Column: clause.Column{Table: "leases", Name: "holder"}, Value: l.holder},
				clause.Lt{Column: clause.Column{Table: "leases", Name: "expires_at"}, Value: now},
			),
		}},
	}).Create(&row)
	if res.Error != nil {
		return false, fmt.Errorf("acquiring lease %s: %w", l.name, res.Error)
	}
	return res.RowsAffected == 1, nil
}

// Release gives the lease up early if this holder owns it.
func (l *Lease) Release(ctx context.Context) error {
	err := l.db.WithContext(ctx).Where("name = ? AND holder = ?", l.name, l.holder).Delete(&leaseRow{}).Error
	if err != nil {
		return fmt.Errorf("releasing lease %s: %w", l.name, err)
	}
	return nil
}
