package agent

import (
	"context"
	"time"

	"github.com/fhirsync/fhirsync/logs"
)

// batchWriter is the decision log the pipeline's workers share: it gathers
// the decisions of concurrent messages for a moment and writes them in one
// transaction (group commit), because one transaction per decision is the
// agent's largest cost on SQLite. Write still returns only once the
// decision is durable, so a message is never settled before its decision
// is recorded.
type batchWriter struct {
	store batchStore
	reqs  chan batchReq
	max   int
	wait  time.Duration
}

// batchStore writes decisions singly or all-or-nothing in a batch.
type batchStore interface {
	decisionLog
	WriteBatch(ctx context.Context, ds []*logs.Decision) error
}

type batchReq struct {
	d    *logs.Decision
	done chan error
}

func newBatchWriter(store batchStore, max int, wait time.Duration) *batchWriter {
	return &batchWriter{store: store, reqs: make(chan batchReq), max: max, wait: wait}
}

// run writes batches until ctx ends.
func (b *batchWriter) run(ctx context.Context) {
	for {
		var first batchReq
		select {
		case <-ctx.Done():
			return
		case first = <-b.reqs:
		}
		batch := []batchReq{first}
		timer := time.NewTimer(b.wait)
	gather:
		for len(batch) < b.max {
			select {
			case r := <-b.reqs:
				batch = append(batch, r)
			case <-timer.C:
				break gather
			}
		}
		timer.Stop()
		b.flush(context.WithoutCancel(ctx), batch)
	}
}

func (b *batchWriter) flush(ctx context.Context, batch []batchReq) {
	if len(batch) == 1 {
		batch[0].done <- b.store.Write(ctx, batch[0].d)
		return
	}
	ds := make([]*logs.Decision, len(batch))
	for i, r := range batch {
		ds[i] = r.d
	}
	if err := b.store.WriteBatch(ctx, ds); err == nil {
		for _, r := range batch {
			r.done <- nil
		}
		return
	}
	// One bad decision must not fail the others: write them one by one.
	for _, r := range batch {
		r.done <- b.store.Write(ctx, r.d)
	}
}

// Write queues d for the next batch and waits until it is written.
func (b *batchWriter) Write(ctx context.Context, d *logs.Decision) error {
	r := batchReq{d: d, done: make(chan error, 1)}
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

// Search reads through to the store.
func (b *batchWriter) Search(ctx context.Context, f logs.Filter, after string, limit int) (logs.Page, error) {
	return b.store.Search(ctx, f, after, limit)
}
