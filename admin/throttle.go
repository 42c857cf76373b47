package admin

import (
	"context"
	"fmt"
	"time"

	"gorm.io/gorm"
	"gorm.io/gorm/clause"

	"github.com/fhirsync/fhirsync/storage"
)

// throttleRow counts recent sign-in failures of one key.
type throttleRow struct {
	ThrottleKey   string `gorm:"primaryKey"`
	Failures      int
	LastFailureAt time.Time
	LockedUntil   time.Time
}

func (throttleRow) TableName() string { return "admin_login_throttle" }

// throttle slows down password guessing per account and per client
// address: from the lockAfter-th failure on, each failure locks the key for
// base·2ⁿ (n = failures − lockAfter), up to max; a key with no failure for
// forget starts over. The
// counts live in the database so every replica sees them.
type throttle struct {
	db     *gorm.DB
	now    func() time.Time
	base   time.Duration
	max    time.Duration
	forget time.Duration
}

// Failures that start a lockout.
const (
	accountLockAfter = 5
	ipLockAfter      = 20
)

func accountKey(email string) string { return "account:" + email }
func ipKey(ip string) string         { return "ip:" + ip }

// lockedUntil returns the latest lock among keys, or the zero time when
// none is locked now.
func (t *throttle) lockedUntil(ctx context.Context, keys ...string) (time.Time, error) {
	var rows []throttleRow
	if err := t.db.WithContext(ctx).Where("throttle_key IN ?", keys).Find(&rows).Error; err != nil {
		return time.Time{}, fmt.Errorf("reading sign-in throttle: %w", err)
	}
	var until time.Time
	now := t.now()
	for _, r := range rows {
		if r.LockedUntil.After(now) && r.LockedUntil.After(until) {
			until = r.LockedUntil
		}
	}
	return until, nil
}

// fail counts one failure against key.
func (t *throttle) fail(ctx context.Context, key string, lockAfter int) error {
	err := t.failOnce(ctx, key, lockAfter)
	if err != nil && isUniqueViolation(err) {
		// Another request counted the key's first failure at the same
		// moment; count this one on top of it.
		err = t.failOnce(ctx, key, lockAfter)
	}
	if err != nil {
		return fmt.Errorf("counting a failed sign-in: %w", err)
	}
	return nil
}

func (t *throttle) failOnce(ctx context.Context, key string, lockAfter int) error {
	return t.db.WithContext(ctx).Transaction(func(tx *gorm.DB) error {
		var rows []throttleRow
		q := tx.Where("throttle_key = ?", key)
		if storage.DialectOf(tx) == storage.Postgres {
			// Concurrent guesses must not overwrite each other's count.
			// (SQLite transactions are already serialised: _txlock=immediate.)
			q = q.Clauses(clause.Locking{Strength: "UPDATE"})
		}
		if err := q.Limit(1).Find(&rows).Error; err != nil {
			return err
		}
		now := t.now()
		r := throttleRow{ThrottleKey: key}
		if len(rows) == 1 && now.Sub(rows[0].LastFailureAt) < t.forget {
			r = rows[0]
		}
		r.Failures++
		r.LastFailureAt = stamp(now)
		r.LockedUntil = stamp(now)
		if over := r.Failures - lockAfter; over >= 0 {
			lock := t.max
			if over < 30 && t.base<<over < t.max {
				lock = t.base << over
			}
			// Round up so a stored whole-second time never ends the lock early.
			r.LockedUntil = stamp(now.Add(lock + time.Second - 1))
		}
		if len(rows) == 0 {
			return tx.Create(&r).Error
		}
		return tx.Model(&throttleRow{}).Where("throttle_key = ?", key).Updates(map[string]any{
			"failures": r.Failures, "last_failure_at": r.LastFailureAt, "locked_until": r.LockedUntil}).Error
	})
}

// reset forgets the failures of key after a successful sign-in.
func (t *throttle) reset(ctx context.Context, key string) error {
	return t.db.WithContext(ctx).Where("throttle_key = ?", key).Delete(&throttleRow{}).Error
}
