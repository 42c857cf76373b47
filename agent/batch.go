package agent

import (
	"context"
	"errors"
	"time"

	"gorm.io/gorm"

	"github.com/fhirsync/fhirsync/logs"
	"github.com/fhirsync/fhirsync/queues"
)

// unit is everything one message leaves in the agent's database: its
// decision and, with it, the correlation link and own-write record the
// processing produced and, when the queue lives in the same database, the
// message's completion. A unit commits in one transaction, so a process
// killed at any point leaves either all of it or none: the message comes
// back and is decided again, never lost and never decided twice.
type unit struct {
	d    *logs.Decision
	link *link     // pairing to save; nil: unchanged or none
	own  *ownWrite // version the agent wrote; nil: none
	// base is the pair's base state after a sent decision; nil: none.
	base *linkBase
	// effects are further writes for the decision's transaction: held
	// conflicts recorded, resolutions settled.
	effects []func(tx *gorm.DB) error
	// unlock releases the pair this message holds, once it has committed.
	unlock func()
	// after are notices to queue once the unit has committed.
	after []queues.Notice
	// complete is the message to complete in the same transaction, on q;
	// nil: the pool settles it.
	complete *queues.Received
	q        txQueue

	// Set by the writer.
	settled  bool // complete ran in the transaction that committed
	lockLost bool // complete found the lock expired (message comes back)
}

// txQueue completes messages inside a transaction on the agent's
// database (the embedded queue).
type txQueue interface {
	CompleteHeld(tx *gorm.DB, ms ...*queues.Received) (lost []int64, err error)
	Database() *gorm.DB
}

// batchWriter commits the units of concurrent messages together: it
// gathers them for a moment and writes them in one transaction (group
// commit), because one transaction per message is the agent's largest cost
// on SQLite. commit still returns only once the unit is durable, so a
// message is never settled before its decision is recorded.
type batchWriter struct {
	store batchStore
	reqs  chan batchReq
	max   int
	wait  time.Duration
	// effects applies the units' links, own writes and completions inside
	// the decisions' transaction.
	effects func(tx *gorm.DB, us []*unit) error
	// committed is told the size of each transaction that committed
	// (fhirsync_group_commit_decisions); by default it does nothing.
	committed func(n int)
}

// batchStore writes decisions, with the caller's rows in the same
// transaction.
type batchStore interface {
	decisionLog
	WriteBatchWith(ctx context.Context, ds []*logs.Decision, also func(tx *gorm.DB) error) error
}

type batchReq struct {
	u    *unit
	done chan error
}

func newBatchWriter(store batchStore, max int, wait time.Duration, effects func(tx *gorm.DB, us []*unit) error) *batchWriter {
	return &batchWriter{store: store, reqs: make(chan batchReq), max: max, wait: wait, effects: effects, committed: func(int) {}}
}

// run writes batches until ctx ends.
func (b *batchWriter) run(ctx context.Context) {
	for {
		batch, ok := gatherBatch(ctx, b.reqs, b.max, b.wait)
		if !ok {
			return
		}
		b.flush(context.WithoutCancel(ctx), batch)
	}
}

// gatherBatch waits for a first request, then gathers more until max are
// in hand or wait has passed since the first. It reports false, with no
// batch, when ctx ends before a first request arrives.
func gatherBatch[T any](ctx context.Context, reqs <-chan T, max int, wait time.Duration) ([]T, bool) {
	var first T
	select {
	case <-ctx.Done():
		return nil, false
	case first = <-reqs:
	}
	batch := []T{first}
	timer := time.NewTimer(wait)
	defer timer.Stop()
	for len(batch) < max {
		select {
		case r := <-reqs:
			batch = append(batch, r)
		case <-timer.C:
			return batch, true
		}
	}
	return batch, true
}

func (b *batchWriter) flush(ctx context.Context, batch []batchReq) {
	us := make([]*unit, len(batch))
	for i, r := range batch {
		us[i] = r.u
	}
	if err := b.write(ctx, us); err == nil || len(batch) == 1 {
		for _, r := range batch {
			r.done <- err
		}
		return
	}
	// One bad unit must not fail the others: write them one by one.
	for _, r := range batch {
		r.done <- b.write(ctx, []*unit{r.u})
	}
}

// write commits us in one transaction. When the extras fail on their own
// (a single unit), the decision is written without them: the decision must
// be recorded, the link is a cache and the pool then settles the message.
func (b *batchWriter) write(ctx context.Context, us []*unit) error {
	ds := make([]*logs.Decision, len(us))
	for i, u := range us {
		ds[i] = u.d
		u.settled, u.lockLost = false, false
	}
	err := b.store.WriteBatchWith(ctx, ds, func(tx *gorm.DB) error { return b.effects(tx, us) })
	if err == nil {
		b.committed(len(us))
		return nil
	}
	for _, u := range us {
		u.settled, u.lockLost = false, false
	}
	if len(us) > 1 || !errors.Is(err, errEffects) {
		return err
	}
	if err := b.store.Write(ctx, us[0].d); err != nil {
		return err
	}
	b.committed(1)
	return nil
}

// commit queues u for the next batch and waits until it is written.
func (b *batchWriter) commit(ctx context.Context, u *unit) error {
	r := batchReq{u: u, done: make(chan error, 1)}
	select {
	case b.reqs <- r:
	case <-ctx.Done():
		return ctx.Err()
	}
	select {
	case err := <-r.done:
		return err
	case <-ctx.Done():
		return ctx.Err()
	}
}

// errEffects marks a failure of a unit's extras (link, own write,
// completion) rather than of its decision.
var errEffects = errors.New("recording the message's effects")
