package admin

import (
	"context"
	"crypto/sha256"
	"encoding/base64"
	"fmt"
	"sync"
	"time"

	"gorm.io/gorm"
	"gorm.io/gorm/clause"

	"github.com/fhirsync/fhirsync/storage"
)

// throttleRow counts recent sign-in attempts of one key.
type throttleRow struct {
	ThrottleKey   string `gorm:"primaryKey"`
	Failures      int
	LastFailureAt time.Time
	LockedUntil   time.Time
}

func (throttleRow) TableName() string { return "admin_login_throttle" }

// throttle slows down password guessing per account and client address
// together: from the lockAfter-th attempt on, each attempt locks the key
// for base·2ⁿ (n = attempts − lockAfter), up to max; a key with no attempt
// for forget starts over. A successful sign-in forgets the key.
//
// Keying on the pair means failures from one address never lock the
// account for someone signing in from another, and a shared address (a
// proxy not listed in admin.trusted_proxies) never locks other accounts.
//
// An attempt is reserved — counted, and refused when the key is locked —
// in one step before the password is verified, so parallel guesses cannot
// all slip past the check. The counts live in the database so every
// replica sees them; within a process a per-key mutex keeps concurrent
// reservations from contending for the same row.
type throttle struct {
	db     *gorm.DB
	now    func() time.Time
	base   time.Duration
	max    time.Duration
	forget time.Duration
	keys   keyedMutex

	pruneMu    sync.Mutex
	lastPruned time.Time
}

// accountLockAfter is the number of attempts an account gets from one
// address before the lock starts.
const accountLockAfter = 5

// loginKey is the throttle key of an account (the typed email) and a
// client address. It is hashed so the table holds neither typed emails
// nor addresses.
func loginKey(email, addr string) string {
	sum := sha256.Sum256([]byte(email + "\x00" + addr))
	return "login:" + base64.RawURLEncoding.EncodeToString(sum[:])
}

// reserve counts one attempt against key unless the key is locked. It
// returns the end of the lock when it is (and counts nothing), or the zero
// time when the attempt may go ahead.
func (t *throttle) reserve(ctx context.Context, key string, lockAfter int) (time.Time, error) {
	t.pruneNow(ctx)
	unlock := t.keys.lock(key)
	defer unlock()
	var until time.Time
	err := t.db.WithContext(ctx).Transaction(func(tx *gorm.DB) error {
		// Make sure the row exists so it can be locked; a concurrent
		// first attempt from another replica is then not an error.
		if err := tx.Clauses(clause.OnConflict{DoNothing: true}).Create(&throttleRow{ThrottleKey: key}).Error; err != nil {
			return err
		}
		q := tx.Where("throttle_key = ?", key)
		if storage.DialectOf(tx) == storage.Postgres {
			// Concurrent attempts on other replicas wait here, so each
			// sees the count of the one before. (SQLite transactions are
			// already serialised: _txlock=immediate.)
			q = q.Clauses(clause.Locking{Strength: "UPDATE"})
		}
		var r throttleRow
		if err := q.First(&r).Error; err != nil {
			return err
		}
		now := t.now()
		if r.LockedUntil.After(now) {
			until = r.LockedUntil
			return nil
		}
		if now.Sub(r.LastFailureAt) >= t.forget {
			r.Failures = 0
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
		return tx.Model(&throttleRow{}).Where("throttle_key = ?", key).Updates(map[string]any{
			"failures": r.Failures, "last_failure_at": r.LastFailureAt, "locked_until": r.LockedUntil}).Error
	})
	if err != nil {
		return time.Time{}, fmt.Errorf("reserving a sign-in attempt: %w", err)
	}
	return until, nil
}

// pruneNow deletes, at most once per forget period per process, the rows
// no attempt has touched for forget and whose lock has ended: they would
// start over anyway, and an attacker cycling through emails must not grow
// the table without bound. A failure is logged by nobody: the next period
// tries again.
func (t *throttle) pruneNow(ctx context.Context) {
	t.pruneMu.Lock()
	now := t.now()
	due := now.Sub(t.lastPruned) >= t.forget
	if due {
		t.lastPruned = now
	}
	t.pruneMu.Unlock()
	if !due {
		return
	}
	cutoff := stamp(now.Add(-t.forget))
	_ = t.db.WithContext(ctx).Where("last_failure_at < ? AND locked_until < ?", cutoff, cutoff).Delete(&throttleRow{}).Error
}

// reset forgets the attempts of key after a successful sign-in.
func (t *throttle) reset(ctx context.Context, key string) error {
	return t.db.WithContext(ctx).Where("throttle_key = ?", key).Delete(&throttleRow{}).Error
}

// keyedMutex hands out one mutex per key, dropped when nobody holds or
// waits for it, so the map does not grow with every typed email.
type keyedMutex struct {
	mu sync.Mutex
	m  map[string]*keyedEntry
}

type keyedEntry struct {
	mu   sync.Mutex
	refs int
}

// lock locks key and returns its unlock function.
func (k *keyedMutex) lock(key string) func() {
	k.mu.Lock()
	if k.m == nil {
		k.m = map[string]*keyedEntry{}
	}
	e := k.m[key]
	if e == nil {
		e = &keyedEntry{}
		k.m[key] = e
	}
	e.refs++
	k.mu.Unlock()
	e.mu.Lock()
	return func() {
		e.mu.Unlock()
		k.mu.Lock()
		if e.refs--; e.refs == 0 {
			delete(k.m, key)
		}
		k.mu.Unlock()
	}
}
