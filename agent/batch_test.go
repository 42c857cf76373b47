package agent

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"

	"gorm.io/gorm"

	"github.com/fhirsync/fhirsync/logs"
)

func noEffects(*gorm.DB, []*unit) error { return nil }

// countingStore records how decisions arrive: singly or in batches.
type countingStore struct {
	mu       sync.Mutex
	batches  [][]*logs.Decision
	singles  int
	failNext bool
}

func (c *countingStore) Write(_ context.Context, d *logs.Decision) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.singles++
	if d.Reason == "bad" {
		return errors.New("refused")
	}
	return nil
}

func (c *countingStore) WriteBatchWith(_ context.Context, ds []*logs.Decision, also func(*gorm.DB) error) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if len(ds) == 1 {
		c.singles++
		if ds[0].Reason == "bad" {
			return errors.New("refused")
		}
		return nil
	}
	for _, d := range ds {
		if d.Reason == "bad" {
			return errors.New("batch refused")
		}
	}
	c.batches = append(c.batches, ds)
	return nil
}

func (c *countingStore) Search(context.Context, logs.Filter, string, int) (logs.Page, error) {
	return logs.Page{}, nil
}

func TestBatchWriterGroupsConcurrentDecisions(t *testing.T) {
	t.Parallel()
	st := &countingStore{}
	b := newBatchWriter(st, 16, 50*time.Millisecond, noEffects)
	var sizesMu sync.Mutex
	var sizes []int
	b.committed = func(n int) {
		sizesMu.Lock()
		defer sizesMu.Unlock()
		sizes = append(sizes, n)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go b.run(ctx)

	var wg sync.WaitGroup
	errs := make([]error, 20)
	for i := range 20 {
		reason := logs.ReasonCode("created")
		if i == 7 {
			reason = "bad"
		}
		wg.Go(func() { errs[i] = b.commit(context.Background(), &unit{d: &logs.Decision{Reason: reason}}) })
	}
	wg.Wait()
	for i, err := range errs {
		if (i == 7) != (err != nil) {
			t.Errorf("decision %d: err = %v", i, err)
		}
	}
	written := st.singles
	for _, bt := range st.batches {
		written += len(bt)
	}
	if written < 20 {
		t.Errorf("%d decisions reached the store, want all 20 (the bad one refused singly)", written)
	}
	if len(st.batches) == 0 {
		t.Error("20 concurrent decisions were never batched")
	}
	// The group-commit metric counts the transactions that committed, each
	// with its decisions: every batch and every single but the refused one.
	total := 0
	for _, n := range sizes {
		total += n
	}
	if total != 19 || len(sizes) != len(st.batches)+st.singles-1 {
		t.Errorf("committed transactions %v (%d decisions); want %d transactions of 19 decisions", sizes, total, len(st.batches)+st.singles-1)
	}
}

func TestBatchWriterHonoursCancellation(t *testing.T) {
	t.Parallel()
	b := newBatchWriter(&countingStore{}, 4, time.Millisecond, noEffects) // not running
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	if err := b.commit(ctx, &unit{d: &logs.Decision{}}); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Write on a stopped writer = %v, want the context's error", err)
	}
}

// A message names its pair before it locks it; releasedSince tells it
// whether a message of the same pair let go of it in between, so that
// what it read before the lock is read again.
func TestPairLocksReportReleasesSinceAStamp(t *testing.T) {
	t.Parallel()
	var l pairLocks
	s0 := l.stamp()
	unlock, waited := l.lock([]string{"fhir:Patient/a", "key:Patient/1"})
	if waited {
		t.Fatal("waited for a free pair")
	}
	if l.releasedSince([]string{"fhir:Patient/a"}, s0) {
		t.Error("a lock still held counted as released")
	}
	unlock()
	unlock() // a second call does nothing
	if !l.releasedSince([]string{"fhir:Patient/a"}, s0) || !l.releasedSince([]string{"key:Patient/1", "fhir:Patient/z"}, s0) {
		t.Error("a release after the stamp was not reported")
	}
	if l.releasedSince([]string{"fhir:Patient/b"}, s0) {
		t.Error("another pair's release was reported")
	}
	s1 := l.stamp()
	if l.releasedSince([]string{"fhir:Patient/a"}, s1) {
		t.Error("a release before the stamp was reported")
	}
	// Past maxReleased keys the record is dropped: stamps from before
	// then are stale for every key, later ones are not.
	for i := range maxReleased {
		u, _ := l.lock([]string{fmt.Sprintf("fhir:Patient/%d", i)})
		u()
	}
	if !l.releasedSince([]string{"fhir:Patient/b"}, s1) {
		t.Error("a stamp from before the record was dropped counted as fresh")
	}
	s2 := l.stamp()
	if l.releasedSince([]string{"fhir:Patient/b"}, s2) {
		t.Error("a stamp from after the record was dropped counted as stale")
	}
	if n := len(l.released); n > maxReleased {
		t.Errorf("%d releases kept, more than %d", n, maxReleased)
	}
}
