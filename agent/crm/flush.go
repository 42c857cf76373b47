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
//     a burst) sends nothing more once every worker waits for the batch:
//     then waiting longer only stalls them, and the batch goes at once.
//
// So callers that belong to a fixed set — a pool's workers — say so
// (Callers), and a batch goes as soon as every one of them waits on the
// coalescer. Callers that do not say so keep the earlier rule: the batch
// goes when no operation joined it for a tenth of MaxWait.

// Callers is a fixed number of callers sharing a Coalescer, each making
// one call at a time: the workers of a pool. When all of them wait on the
// coalescer no other operation can come from them, and the pending batch
// is sent without waiting longer.
type Callers struct {
	k    *Coalescer
	size int
	// waiting is how many of them wait for an answer (their operation
	// pending or in a batch under way); guarded by k.mu.
	waiting int
}

// Callers returns a set of n callers of k; Context marks a caller's
// calls as theirs.
func (k *Coalescer) Callers(n int) *Callers { return &Callers{k: k, size: max(n, 1)} }

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
// no set), waits; it reports whether the pending batch should go now
// because every caller of g waits. k.mu is held.
func (k *Coalescer) joined(e *entry, g *Callers) (now bool) {
	e.callers = g
	if g == nil || g.k != k {
		e.callers = nil
		k.ungrouped++
		return false
	}
	g.waiting++
	return g.waiting >= g.size
}

// answered notes that the caller of e no longer waits.
func (k *Coalescer) answered(e *entry) {
	if e.callers == nil {
		return
	}
	k.mu.Lock()
	e.callers.waiting--
	k.mu.Unlock()
}

// taken notes that the entries es left the pending batch. k.mu is held.
func (k *Coalescer) taken(es []*entry) {
	for _, e := range es {
		if e.callers == nil {
			k.ungrouped--
		}
	}
}

// due is when the pending batch goes unless it fills or every caller of a
// set waits first: MaxWait after its first operation, or, while a caller
// of no set waits in it, a quiet gap after its last. k.mu is held.
func (k *Coalescer) due() time.Time {
	at := k.first.Add(k.wait)
	if quiet := k.last.Add(k.quietGap()); k.ungrouped > 0 && quiet.Before(at) {
		at = quiet
	}
	return at
}
