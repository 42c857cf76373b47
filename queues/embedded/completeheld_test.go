package embedded_test

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"testing"
	"time"

	"gorm.io/gorm"

	"github.com/fhirsync/fhirsync/queues"
	"github.com/fhirsync/fhirsync/queues/embedded"
	"github.com/fhirsync/fhirsync/storage"
	"github.com/fhirsync/fhirsync/storage/storagetest"
)

// heldAndExpired sends three messages to queue name and receives them: the
// first two through a value with a long lock (held), the third through a
// value with a short lock, returned once that lock has expired. q is the
// long-lock value.
func heldAndExpired(t *testing.T, db *gorm.DB, name string) (q *embedded.Queue, held []*queues.Received, expired *queues.Received) {
	t.Helper()
	ctx := context.Background()
	q = open(t, db, name, embedded.Options{LockDuration: time.Hour})
	short := open(t, db, name, embedded.Options{LockDuration: 200 * time.Millisecond})
	if err := q.Send(ctx, keyed(name+"-1", ""), keyed(name+"-2", ""), keyed(name+"-3", "")); err != nil {
		t.Fatal(err)
	}
	held, err := q.Receive(ctx, 2, time.Second)
	if err != nil || len(held) != 2 {
		t.Fatalf("Receive with the long lock = %d messages, %v; want 2", len(held), err)
	}
	ms, err := short.Receive(ctx, 10, time.Second)
	if err != nil || len(ms) != 1 {
		t.Fatalf("Receive with the short lock = %d messages, %v; want the third", len(ms), err)
	}
	expired = ms[0]
	for time.Now().Before(expired.LockedUntil.Add(10 * time.Millisecond)) {
		time.Sleep(10 * time.Millisecond)
	}
	return q, held, expired
}

func seqs(ms []*queues.Received) []int64 {
	out := make([]int64, len(ms))
	for i, m := range ms {
		out[i] = m.SequenceNumber
	}
	slices.Sort(out)
	return out
}

func TestCompleteHeldSkipsExpiredLocksInTheCallersTransaction(t *testing.T) {
	t.Parallel()
	storagetest.Each(t, func(t *testing.T, db *gorm.DB) {
		if err := db.Exec(`CREATE TABLE held_work (id TEXT NOT NULL)`).Error; err != nil {
			t.Fatal(err)
		}
		workRows := func(t *testing.T, prefix string) int64 {
			t.Helper()
			var n int64
			if err := db.Raw(`SELECT COUNT(*) FROM held_work WHERE id LIKE ?`, prefix+"%").Scan(&n).Error; err != nil {
				t.Fatal(err)
			}
			return n
		}

		t.Run("commit", func(t *testing.T) {
			ctx := context.Background()
			q, held, expired := heldAndExpired(t, db, "held-commit")
			if !storage.SameDatabase(q.Database(), db) {
				t.Fatalf("Database() is not the database the queue was opened on")
			}
			all := append(slices.Clone(held), expired)
			var lost []int64
			err := q.Database().Transaction(func(tx *gorm.DB) error {
				if err := tx.Exec(`INSERT INTO held_work (id) VALUES (?)`, "held-commit").Error; err != nil {
					return err
				}
				var err error
				lost, err = q.CompleteHeld(tx, all...)
				return err
			})
			if err != nil {
				t.Fatalf("committing work and completions: %v", err)
			}
			if !slices.Equal(lost, []int64{expired.SequenceNumber}) {
				t.Fatalf("CompleteHeld lost = %v, want only the expired message %d", lost, expired.SequenceNumber)
			}
			if n := workRows(t, "held-commit"); n != 1 {
				t.Fatalf("after commit %d work rows, want 1", n)
			}
			if d, err := q.Depth(ctx); err != nil || d != (queues.Depth{Active: 1}) {
				t.Fatalf("after commit Depth = %+v, %v; want only the expired message", d, err)
			}
			again, err := q.Receive(ctx, 10, time.Second)
			if err != nil {
				t.Fatal(err)
			}
			if got := seqs(again); !slices.Equal(got, []int64{expired.SequenceNumber}) {
				t.Fatalf("received again %v, want only the expired message %d", got, expired.SequenceNumber)
			}
			if again[0].DeliveryCount != 2 {
				t.Errorf("expired message delivered again with count %d, want 2", again[0].DeliveryCount)
			}
		})

		t.Run("rollback", func(t *testing.T) {
			ctx := context.Background()
			q, held, expired := heldAndExpired(t, db, "held-rollback")
			all := append(slices.Clone(held), expired)
			errWork := errors.New("work failed")
			var lost []int64
			err := q.Database().Transaction(func(tx *gorm.DB) error {
				if err := tx.Exec(`INSERT INTO held_work (id) VALUES (?)`, "held-rollback").Error; err != nil {
					return err
				}
				var err error
				if lost, err = q.CompleteHeld(tx, all...); err != nil {
					return fmt.Errorf("CompleteHeld: %w", err)
				}
				return errWork
			})
			if !errors.Is(err, errWork) {
				t.Fatalf("transaction err = %v, want the work's error", err)
			}
			if !slices.Equal(lost, []int64{expired.SequenceNumber}) {
				t.Fatalf("CompleteHeld lost = %v, want only the expired message %d", lost, expired.SequenceNumber)
			}
			if n := workRows(t, "held-rollback"); n != 0 {
				t.Fatalf("after rollback %d work rows, want 0", n)
			}
			if d, err := q.Depth(ctx); err != nil || d != (queues.Depth{Active: 3}) {
				t.Fatalf("after rollback Depth = %+v, %v; want all 3 messages", d, err)
			}
			// The held messages keep their locks: completing them now works.
			if err := q.CompleteMany(ctx, held); err != nil {
				t.Fatalf("completing the held messages after the rollback: %v", err)
			}
			again, err := q.Receive(ctx, 10, time.Second)
			if err != nil {
				t.Fatal(err)
			}
			if got := seqs(again); !slices.Equal(got, []int64{expired.SequenceNumber}) {
				t.Fatalf("received again %v, want only the expired message %d", got, expired.SequenceNumber)
			}
		})
	})
}

// A group commit's batch of 45 messages, in which one message carries
// another's lock token and one was completed already: the other messages
// are deleted, those two are reported lost, and the message whose token
// was borrowed is deleted once.
func TestCompleteHeldMatchesEachSeqWithItsOwnToken(t *testing.T) {
	t.Parallel()
	storagetest.Each(t, func(t *testing.T, db *gorm.DB) {
		ctx := context.Background()
		q := open(t, db, "held-batches", embedded.Options{LockDuration: time.Hour})
		const n = 45
		for i := range n {
			if err := q.Send(ctx, keyed(fmt.Sprintf("held-batches-%02d", i), "")); err != nil {
				t.Fatal(err)
			}
		}
		var got []*queues.Received
		for len(got) < n {
			ms, err := q.Receive(ctx, n-len(got), time.Second)
			if err != nil || len(ms) == 0 {
				t.Fatalf("received %d of %d: %v", len(got), n, err)
			}
			got = append(got, ms...)
		}
		done := got[7]
		if err := q.Complete(ctx, done); err != nil {
			t.Fatal(err)
		}
		borrowed := *got[20]
		borrowed.LockToken = got[21].LockToken
		batch := slices.Clone(got)
		batch[20] = &borrowed
		var lost []int64
		if err := q.Database().Transaction(func(tx *gorm.DB) error {
			var err error
			lost, err = q.CompleteHeld(tx, batch...)
			return err
		}); err != nil {
			t.Fatal(err)
		}
		slices.Sort(lost)
		want := []int64{done.SequenceNumber, borrowed.SequenceNumber}
		slices.Sort(want)
		if !slices.Equal(lost, want) {
			t.Fatalf("lost %v, want %v (the completed message and the one with a borrowed token)", lost, want)
		}
		if d, err := q.Depth(ctx); err != nil || d != (queues.Depth{Active: 1}) {
			t.Fatalf("Depth = %+v, %v; want the message with the borrowed token only", d, err)
		}
	})
}
