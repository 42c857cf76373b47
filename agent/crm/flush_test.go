package crm

import (
	"context"
	"fmt"
	"sync"
	"testing"
	"time"
)

// seedContacts creates n contacts p-0 … p-(n-1), not through k.
func seedContacts(t *testing.T, k *Coalescer, n int) {
	t.Helper()
	for i := range n {
		fid := fmt.Sprintf("p-%d", i)
		if _, err := k.c.Upsert(context.Background(), ByKey("contacts", "msemr_azurefhirid", fid),
			Record{"lastname": "L", "msemr_azurefhirid": fid}, UpsertOptions{Mode: CreateOnly}); err != nil {
			t.Fatal(err)
		}
	}
}

func (b *batchTap) batches() int {
	b.mu.Lock()
	defer b.mu.Unlock()
	return len(b.sizes)
}

// readSpaced reads contacts p-0 … p-(n-1) by key, one caller after
// another gap apart (an open loop), each with ctxOf's context, and waits
// for every answer.
func readSpaced(t *testing.T, k *Coalescer, n int, gap time.Duration, ctxOf func() context.Context) {
	t.Helper()
	var wg sync.WaitGroup
	for i := range n {
		if i > 0 {
			time.Sleep(gap)
		}
		wg.Go(func() {
			rec, err := k.Retrieve(ctxOf(), ByKey("contacts", "msemr_azurefhirid", fmt.Sprintf("p-%d", i)), "msemr_azurefhirid")
			if err != nil || rec.String("msemr_azurefhirid") != fmt.Sprintf("p-%d", i) {
				t.Errorf("reading p-%d: %v, %v", i, rec, err)
			}
		})
	}
	wg.Wait()
}

// TestFlushOpenLoopWaitsForMaxWait sends reads 80 ms apart, more than the
// quiet gap (a tenth of MaxWait): callers of a pool, most of whose workers
// are idle, share one batch sent MaxWait after the first read; callers of
// no set keep the quiet gap and get a batch each.
func TestFlushOpenLoopWaitsForMaxWait(t *testing.T) {
	t.Parallel()
	const n, gap = 4, 80 * time.Millisecond
	tests := []struct {
		name        string
		pool        bool
		wantBatches int
	}{
		{name: "pool of 64 workers", pool: true, wantBatches: 1},
		{name: "callers of no set", pool: false, wantBatches: n},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			_, tap, k := coalescerOn(t, CoalesceConfig{MaxWait: 500 * time.Millisecond})
			seedContacts(t, k, n)
			before := tap.batches()
			pool := k.Callers(64)
			ctxOf := func() context.Context { return context.Background() }
			if tt.pool {
				ctxOf = func() context.Context { return pool.Context(context.Background()) }
			}
			readSpaced(t, k, n, gap, ctxOf)
			if got := tap.batches() - before; got != tt.wantBatches {
				t.Fatalf("%d batches for %d reads %s apart, want %d", got, n, gap, tt.wantBatches)
			}
		})
	}
}

// TestFlushWhenEveryWorkerWaits: a pool whose workers all wait on the
// coalescer sends the batch at once, though MaxWait is a minute; while
// most workers are busy elsewhere the others' operations wait for them.
func TestFlushWhenEveryWorkerWaits(t *testing.T) {
	t.Parallel()
	_, tap, k := coalescerOn(t, CoalesceConfig{MaxWait: time.Minute})
	const workers = 5
	seedContacts(t, k, workers)
	before := tap.batches()
	pool := k.Callers(workers)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	var wg sync.WaitGroup
	errs := make(chan error, workers)
	read := func(i int) {
		defer wg.Done()
		fid := fmt.Sprintf("p-%d", i)
		rec, err := k.Retrieve(pool.Context(ctx), ByKey("contacts", "msemr_azurefhirid", fid), "msemr_azurefhirid")
		if err == nil && rec.String("msemr_azurefhirid") != fid {
			err = fmt.Errorf("%s: got %v", fid, rec)
		}
		errs <- err
	}
	// Two of five ask; the others are busy elsewhere: nothing goes.
	wg.Add(2)
	for i := range 2 {
		go read(i)
	}
	time.Sleep(200 * time.Millisecond)
	if got := tap.batches() - before; got != 0 {
		t.Fatalf("%d batches sent while most workers had yet to ask", got)
	}
	// The rest ask: all wait, the batch goes at once (the quiet gap of
	// half the pool is 6 s, MaxWait a minute).
	wg.Add(workers - 2)
	for i := 2; i < workers; i++ {
		go read(i)
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Fatal(err) // a batch held for MaxWait ends in the deadline
		}
	}
	if got := tap.batches() - before; got != 1 {
		t.Fatalf("%d batches, want 1", got)
	}
	// The workers no longer wait: the count went back down, and the next
	// round goes at once again.
	wg.Add(workers)
	errs = make(chan error, workers)
	for i := range workers {
		go read(i)
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Fatal(err)
		}
	}
	if got := tap.batches() - before; got != 2 {
		t.Fatalf("%d batches after two rounds, want 2", got)
	}
}

// TestFlushCallerOfNoSetBringsTheQuietGap: a batch held for a pool's idle
// workers goes after the quiet gap once a caller of no set joins it.
func TestFlushCallerOfNoSetBringsTheQuietGap(t *testing.T) {
	t.Parallel()
	_, tap, k := coalescerOn(t, CoalesceConfig{MaxWait: 20 * time.Second})
	seedContacts(t, k, 2)
	before := tap.batches()
	pool := k.Callers(64)
	// Held for MaxWait, the reads would end in the deadline.
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	var wg sync.WaitGroup
	for i, c := range []context.Context{pool.Context(ctx), ctx} {
		wg.Go(func() {
			if _, err := k.Retrieve(c, ByKey("contacts", "msemr_azurefhirid", fmt.Sprintf("p-%d", i))); err != nil {
				t.Error(err)
			}
		})
		time.Sleep(20 * time.Millisecond)
	}
	wg.Wait()
	if got := tap.batches() - before; got != 1 {
		t.Fatalf("%d batches, want 1", got)
	}
}

// TestFlushWhenHalfThePoolWaits: a batch holding the operations of half a
// pool goes after the quiet gap (a tenth of MaxWait); one holding fewer
// waits for MaxWait.
func TestFlushWhenHalfThePoolWaits(t *testing.T) {
	t.Parallel()
	const workers = 4
	tests := []struct {
		name     string
		callers  int
		wantSent bool // within half of MaxWait
	}{
		{name: "half the pool", callers: workers / 2, wantSent: true},
		{name: "a quarter of the pool", callers: workers / 4, wantSent: false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			_, tap, k := coalescerOn(t, CoalesceConfig{MaxWait: 4 * time.Second})
			seedContacts(t, k, tt.callers)
			before := tap.batches()
			pool := k.Callers(workers)
			ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
			defer cancel()
			var wg sync.WaitGroup
			errs := make(chan error, tt.callers)
			for i := range tt.callers {
				wg.Go(func() {
					_, err := k.Retrieve(pool.Context(ctx), ByKey("contacts", "msemr_azurefhirid", fmt.Sprintf("p-%d", i)))
					errs <- err
				})
			}
			wg.Wait()
			close(errs)
			for err := range errs {
				if sent := err == nil; sent != tt.wantSent {
					t.Fatalf("answered within 2 s: %v (%v), want %v", sent, err, tt.wantSent)
				}
			}
			if tt.wantSent {
				if got := tap.batches() - before; got != 1 {
					t.Fatalf("%d batches, want 1", got)
				}
			}
		})
	}
}
