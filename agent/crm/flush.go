package crm

import (
	"context"
	"time"
)

// When a Coalescer sends a batch. Waiting longer puts more operations in
// one request — what Dataverse's number-of-requests limit counts — and
// adds to each record's latency. The right wait depends on where the
// operations come from:
//
//   - A steady stream of changes (an open loop: 200 records/s of device
//     data) sends more while the batch waits, so waiting pays: the batch
//     goes when MaxWait has passed since its first operation.
//   - A pool of workers going through a backlog (a closed loop: a backfill,
//     a burst) sends nothing more once every worker waits in the pending
//     batch: then waiting longer only stalls them, and it goes at once.
//     Workers busy elsewhere (reading the source, committing decisions)
//     would hold it back for MaxWait, so a batch that holds the
//     operations of at least half the pool goes after a quiet gap (a
//     tenth of MaxWait without a new operation): a batch of that size is
//     worth its request, and the rest of the pool joins the next one.
//
// So callers that belong to a fixed set — a pool's workers — say so
// (Callers). A stream too slow to keep half the pool waiting on one batch
// gets batches of MaxWait. Callers that do not say so keep the earlier
// rule: the batch goes when no operation joined it for the quiet gap.

// Callers is a fixed number of callers sharing a Coalescer, each making
// one call at a time: the workers of a pool. When all of them wait in the
// pending batch no other operation can come from them, and it is sent
// without waiting longer. (Workers waiting on a batch under way are not
// counted: they come back with their next operations when it returns,
// and the pending batch waits for them, within MaxWait.)
type Callers struct {
	k    *Coalescer
	size int
	// pending is how many of them wait in the pending batch; guarded by
	// k.mu.
	pending int
}

// half reports whether the pending batch holds the operations of at
// least half of c's callers. k.mu is held.
func (c *Callers) half() bool { return c.pending*2 >= c.size }

// Callers returns a set of n callers of k; Context marks a caller's
// calls as theirs. On a nil Coalescer it returns nil, whose Context
// changes nothing.
func (k *Coalescer) Callers(n int) *Callers {
	if k == nil {
		return nil
	}
	return &Callers{k: k, size: max(n, 1)}
}

type callersKey struct{}

// Context returns ctx carrying the caller set: operations submitted with
// it count as one of c's callers'.
func (c *Callers) Context(ctx context.Context) context.Context {
	if c == nil {
		return ctx
	}
	return context.WithValue(ctx, callersKey{}, c)
}

func callersOf(ctx context.Context) *Callers {
	c, _ := ctx.Value(callersKey{}).(*Callers)
	if c != nil && c.k == nil {
		return nil
	}
	return c
}

// joined notes that e, submitted by one of g's callers (nil: a caller of
// no set), waits in the pending batch; it reports whether the batch
// should go now because every caller of g waits in it. k.mu is held.
func (k *Coalescer) joined(e *entry, g *Callers) (now bool) {
	e.callers = g
	if g == nil || g.k != k {
		e.callers = nil
		k.ungrouped++
		return false
	}
	g.pending++
	if (g.pending-1)*2 < g.size && g.half() {
		// Half the pool is in: the batch may go after the quiet gap,
		// sooner than the timer set for MaxWait.
		k.stopTimer()
		k.timer = time.AfterFunc(time.Until(k.due()), k.expire)
	}
	return g.pending >= g.size
}

// taken notes that the entries es left the pending batch. k.mu is held.
func (k *Coalescer) taken(es []*entry) {
	for _, e := range es {
		if e.callers == nil {
			k.ungrouped--
		} else {
			e.callers.pending--
		}
	}
}

// due is when the pending batch goes unless it fills or every caller of a
// set waits first: MaxWait after its first operation, or a quiet gap
// after its last while a caller of no set waits in it or it holds the
// operations of half the callers of a set. k.mu is held.
func (k *Coalescer) due() time.Time {
	at := k.first.Add(k.wait)
	quiet := k.last.Add(k.quietGap())
	if !quiet.Before(at) {
		return at
	}
	if k.ungrouped > 0 {
		return quiet
	}
	for _, e := range k.pending {
		if e.callers != nil && e.callers.half() {
			return quiet
		}
	}
	return at
}
