package agent

import (
	"context"
	"errors"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"github.com/fhirsync/fhirsync/queues"
)

// settlement is how a processed message leaves the queue. The handler
// decides it; the pool carries it out, in exactly one place.
type settlement struct {
	kind        settleKind
	delay       time.Duration // abandon: visible again after delay
	reason      string        // dead-letter reason (a reason code)
	description string        // dead-letter description, no PHI
}

type settleKind int

const (
	settleComplete   settleKind = iota // done: remove the message
	settleAbandon                      // retry later: release the lock
	settleDeadLetter                   // give up: move to the dead-letter queue
	settleNone                         // already completed with its decision
)

// handler processes one message and says how to settle it. It must not
// settle the message itself.
type handler func(ctx context.Context, m *queues.Received) settlement

// pool runs workers that receive from one queue, process and settle.
type pool struct {
	name    string
	q       queues.Queue
	handle  handler
	workers int
	batch   int
	// bulkWorkers process the notices of a backfill or reconcile apart
	// from the others, in the bulk lane (backfill_lane.go); zero: none
	// apart.
	bulkWorkers int
	// lockRenewEvery renews a message's lock while it is processed; zero
	// disables renewal (a transport that renews on its own).
	lockRenewEvery time.Duration
	// drain bounds how long in-flight messages may finish after the pool
	// is asked to stop; the rest are abandoned.
	drain time.Duration
	log   *slog.Logger
	// onSettleError is told when a settlement fails (the message will be
	// redelivered; the decision already written stands).
	onSettleError func(error)
}

// run receives until ctx ends, then drains.
func (p *pool) run(ctx context.Context) error {
	if p.workers <= 0 {
		p.workers = 4
	}
	if p.batch <= 0 {
		p.batch = p.workers
	}
	// Work runs on its own context so a shutdown signal stops receiving at
	// once but gives in-flight messages the drain period.
	workCtx, cancelWork := context.WithCancel(context.WithoutCancel(ctx))
	defer cancelWork()
	jobs := make(chan *queues.Received)
	var wg sync.WaitGroup
	for range p.workers {
		wg.Go(func() { p.work(workCtx, jobs, &wg) })
	}
	var bulk chan *queues.Received
	if p.bulkWorkers > 0 {
		bulk = make(chan *queues.Received)
		bulkCtx := withBulkLane(workCtx)
		for range p.bulkWorkers {
			wg.Go(func() { p.work(bulkCtx, bulk, &wg) })
		}
	}
	// bulkSeen: the last receive held notices of the bulk lane, so the
	// next asks for enough to keep its workers busy too. Live traffic
	// alone is received as before, so that none of it waits locked
	// behind workers it cannot use.
	bulkSeen := false
	var recvErr error
	backoff := Backoff{Base: 200 * time.Millisecond, Max: 10 * time.Second}
	failures := 0
	for ctx.Err() == nil {
		n := p.batch
		if bulkSeen {
			n += p.bulkWorkers
		}
		msgs, err := p.q.Receive(ctx, n, time.Second)
		if err != nil {
			if ctx.Err() != nil {
				break
			}
			if errors.Is(err, queues.ErrClosed) {
				recvErr = err
				break
			}
			failures++
			d := backoff.Delay(failures, err)
			p.log.Warn("receive failed; retrying", "queue", p.name, "error", err, "retry_in", d.String())
			select {
			case <-ctx.Done():
			case <-time.After(d):
			}
			continue
		}
		failures = 0
		if p.bulkWorkers == 0 {
			p.dispatch(ctx, workCtx, jobs, msgs)
			continue
		}
		// Each lane is fed on its own, so that a live notice is not
		// held behind backfill notices waiting for a bulk worker.
		var live, bulkMsgs []*queues.Received
		for _, m := range msgs {
			if isBulkMessage(m) {
				bulkMsgs = append(bulkMsgs, m)
			} else {
				live = append(live, m)
			}
		}
		bulkSeen = len(bulkMsgs) > 0
		fed := make(chan struct{})
		go func() { defer close(fed); p.dispatch(ctx, workCtx, bulk, bulkMsgs) }()
		p.dispatch(ctx, workCtx, jobs, live)
		<-fed
	}
	close(jobs)
	if p.bulkWorkers > 0 {
		close(bulk)
	}
	done := make(chan struct{})
	go func() { wg.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(p.drain):
		p.log.Warn("drain period over; abandoning in-flight messages", "queue", p.name, "drain", p.drain.String())
		cancelWork()
		<-done
	}
	return recvErr
}

// work is a worker: it processes the messages of jobs one at a time until
// jobs is closed. When a message's processing parks (parkable), a new
// worker takes this one's place at once, and this one ends with that
// message: the pool keeps its number of workers taking messages, and the
// parked processing goes on where it is, without a goroutine of its own
// for every message.
func (p *pool) work(ctx context.Context, jobs <-chan *queues.Received, wg *sync.WaitGroup) {
	// One handoff serves all of this worker's messages: once it is
	// replaced, the worker ends with the message that replaced it.
	h := &handoff{}
	h.replace = func() {
		h.replaced.Store(true)
		wg.Go(func() { p.work(ctx, jobs, wg) })
	}
	hctx := context.WithValue(ctx, handoffKey{}, h)
	for m := range jobs {
		p.process(hctx, m)
		if h.replaced.Load() {
			return
		}
	}
}

// handoff lets a message's processing give its worker's place to a new
// worker (see pool.work).
type handoff struct {
	replace  func()
	replaced atomic.Bool
}

type handoffKey struct{}

func handoffOf(ctx context.Context) *handoff {
	h, _ := ctx.Value(handoffKey{}).(*handoff)
	return h
}

// dispatch hands msgs to the workers reading to, one by one; when ctx
// ends first, the messages not yet started are abandoned at once.
func (p *pool) dispatch(ctx, workCtx context.Context, to chan<- *queues.Received, msgs []*queues.Received) {
	for i, m := range msgs {
		select {
		case to <- m:
		case <-ctx.Done():
			for _, rest := range msgs[i:] {
				p.settle(workCtx, rest, settlement{kind: settleAbandon})
			}
			return
		}
	}
}

// process handles one message with lock renewal and settles it.
func (p *pool) process(ctx context.Context, m *queues.Received) {
	hctx, cancel := context.WithCancel(ctx)
	defer cancel()
	if p.lockRenewEvery > 0 {
		go p.renew(hctx, m)
	}
	s := p.safeHandle(hctx, m)
	if ctx.Err() != nil && s.kind == settleAbandon {
		// Shutdown interrupted the work: release without delay so another
		// process picks it up.
		s.delay = 0
	}
	p.settle(context.WithoutCancel(ctx), m, s)
}

// safeHandle turns a panic in processing into a dead letter instead of a
// crashed agent; the stack goes to the process log (no payload values).
func (p *pool) safeHandle(ctx context.Context, m *queues.Received) (s settlement) {
	defer func() {
		if r := recover(); r != nil {
			p.log.Error("panic while processing a message", "queue", p.name, "message_id", m.ID, "panic", r)
			s = settlement{kind: settleDeadLetter, reason: "internal_error", description: "processing panicked; see the process log"}
		}
	}()
	return p.handle(ctx, m)
}

func (p *pool) renew(ctx context.Context, m *queues.Received) {
	t := time.NewTicker(p.lockRenewEvery)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			if _, err := p.q.RenewLock(ctx, m); err != nil && ctx.Err() == nil {
				p.log.Warn("renewing lock failed", "queue", p.name, "message_id", m.ID, "error", err)
				return
			}
		}
	}
}

func (p *pool) settle(ctx context.Context, m *queues.Received, s settlement) {
	var err error
	switch s.kind {
	case settleComplete:
		err = p.q.Complete(ctx, m)
	case settleAbandon:
		err = p.q.Abandon(ctx, m, s.delay)
	case settleDeadLetter:
		err = p.q.DeadLetter(ctx, m, s.reason, s.description)
	case settleNone:
	}
	if err != nil {
		p.log.Warn("settling message failed; it will be delivered again", "queue", p.name, "message_id", m.ID, "error", err)
		if p.onSettleError != nil {
			p.onSettleError(err)
		}
	}
}
