package agent

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/fhirsync/fhirsync/agent/alerts"
	"github.com/fhirsync/fhirsync/queues"
)

// lagEstimator estimates each feed's lag — the age of its oldest
// unprocessed change — for queues whose waiting messages cannot be read
// (Service Bus: the queues are session-enabled, and a plain receiver may
// not peek them). alerts.Lags reads the embedded queue's table instead.
//
// As each message is received the agent records, per feed (the notice's
// side, origin and type), the change's age: receive time - ChangedAt, or
// - EnqueuedAt when the notice does not say when the source changed. Per
// feed it keeps the oldest age among the messages received in the current
// and in the previous window (the alert evaluation interval). The queue's
// depth says whether anything waits: nothing waiting, no lag; otherwise the
// lag is the oldest recent age plus the time since that message was
// received (which is now - that change's time).
//
// This is an estimate. It is valid because Service Bus delivers each
// session in order, so the messages received are the heads of their
// sessions and the changes still waiting are newer than them; it
// overstates the lag by at most the window (the oldest age may have been
// received at its start). What it cannot see:
//   - changes never received by this process: another replica's receives,
//     and a queue this process has not received from since it started
//     (no row until the first receive);
//   - which feed the waiting messages belong to: while the queue receives,
//     a feed with no receipt in the window is taken as caught up;
//   - a stopped or stuck agent receives nothing: while the queue is not
//     empty the estimate then grows with the time since the last receive,
//     for every feed the queue carried — which is what an operator needs
//     to see.
//
// The zero value is ready; observe is called once per received message and
// takes a read lock and the feed's own lock, allocating only for a feed's
// first message.
type lagEstimator struct {
	// width is the window in nanoseconds; zero means defaultLagWindow.
	width atomic.Int64
	mu    sync.RWMutex
	feeds map[lagFeedKey]*lagFeed
}

// defaultLagWindow is the window until an estimate names another.
const defaultLagWindow = time.Minute

// maxLagFeeds bounds the feeds tracked: origin and type come from the
// messages, and a queue carrying arbitrary ones must not grow the map
// without end.
const maxLagFeeds = 1024

type lagFeedKey struct {
	side        queues.Side
	origin, typ string
}

type lagFeed struct {
	mu   sync.Mutex
	win  int64     // window index of cur
	cur  lagSample // oldest age received in window win
	prev lagSample // oldest age received in window win-1
}

// lagSample is one received change: its age when received, and when.
type lagSample struct {
	age time.Duration
	at  time.Time // zero: no sample
}

func (s lagSample) estimate(now time.Time) time.Duration {
	return s.age + now.Sub(s.at)
}

// observe records that a notice of side/origin/type, changed at changedAt
// (zero: unknown) and enqueued at enqueuedAt, was received at recv.
func (e *lagEstimator) observe(side queues.Side, origin, typ string, changedAt, enqueuedAt, recv time.Time) {
	at := changedAt
	if at.IsZero() {
		at = enqueuedAt
	}
	if at.IsZero() {
		return
	}
	age := max(recv.Sub(at), 0)
	k := lagFeedKey{side, origin, typ}
	e.mu.RLock()
	f := e.feeds[k]
	e.mu.RUnlock()
	if f == nil {
		if f = e.add(k); f == nil {
			return
		}
	}
	w := recv.UnixNano() / e.window().Nanoseconds()
	f.mu.Lock()
	if w > f.win {
		if w == f.win+1 {
			f.prev = f.cur
		} else {
			f.prev = lagSample{}
		}
		f.cur, f.win = lagSample{}, w
	}
	if f.cur.at.IsZero() || age > f.cur.age {
		f.cur = lagSample{age: age, at: recv}
	}
	f.mu.Unlock()
}

func (e *lagEstimator) add(k lagFeedKey) *lagFeed {
	e.mu.Lock()
	defer e.mu.Unlock()
	if f := e.feeds[k]; f != nil {
		return f
	}
	if len(e.feeds) >= maxLagFeeds {
		return nil
	}
	if e.feeds == nil {
		e.feeds = map[lagFeedKey]*lagFeed{}
	}
	f := &lagFeed{}
	e.feeds[k] = f
	return f
}

func (e *lagEstimator) window() time.Duration {
	if w := time.Duration(e.width.Load()); w > 0 {
		return w
	}
	return defaultLagWindow
}

// lagQueue is one queue the estimate covers: its name, the side of the
// notices it carries, and its depth.
type lagQueue struct {
	name  string
	side  queues.Side
	depth func(context.Context) (queues.Depth, error)
}

// estimate returns the estimated lag of each waiting feed of qs at now,
// with window the interval the estimates are asked at (zero: unchanged).
// A queue whose depth cannot be read has no rows, and its error is
// returned beside the others' rows.
func (e *lagEstimator) estimate(ctx context.Context, now time.Time, window time.Duration, qs []lagQueue) ([]alerts.FeedLag, error) {
	if window > 0 {
		e.width.Store(int64(window))
	}
	width := e.window()
	wNow := now.UnixNano() / width.Nanoseconds()
	type snap struct {
		k              lagFeedKey
		recent, latest lagSample // oldest age of the last two windows; of the newest windows with receipts
	}
	var snaps []snap
	e.mu.RLock()
	for k, f := range e.feeds {
		f.mu.Lock()
		s := snap{k: k, latest: f.cur}
		if f.prev.age > f.cur.age && !f.prev.at.IsZero() {
			s.latest = f.prev
		}
		switch {
		case f.win >= wNow:
			s.recent = s.latest
		case f.win == wNow-1:
			s.recent = f.cur
		}
		f.mu.Unlock()
		snaps = append(snaps, s)
	}
	e.mu.RUnlock()

	var out []alerts.FeedLag
	var errs []error
	for _, q := range qs {
		d, err := q.depth(ctx)
		if err != nil {
			errs = append(errs, fmt.Errorf("estimating the lag of queue %s: %w", q.name, err))
			continue
		}
		waiting := d.Active + d.Scheduled
		if waiting == 0 {
			continue
		}
		receiving := false
		for _, s := range snaps {
			if s.k.side == q.side && !s.recent.at.IsZero() {
				receiving = true
			}
		}
		for _, s := range snaps {
			if s.k.side != q.side {
				continue
			}
			pick := s.recent
			if !receiving {
				pick = s.latest
			}
			if pick.at.IsZero() {
				continue
			}
			age := max(pick.estimate(now), 0)
			out = append(out, alerts.FeedLag{
				Feed: s.k.origin + "/" + s.k.typ, Queue: q.name, Pending: waiting,
				Oldest: now.Add(-age).UTC(), AgeSeconds: int64(age.Seconds()), Estimated: true,
			})
		}
	}
	slices.SortFunc(out, func(a, b alerts.FeedLag) int {
		if c := strings.Compare(a.Feed, b.Feed); c != 0 {
			return c
		}
		return strings.Compare(a.Queue, b.Queue)
	})
	return out, errors.Join(errs...)
}

// EstimatedLags estimates each feed's lag from the messages this agent
// received and its queues' depths (see lagEstimator): for a transport
// whose waiting messages alerts.Lags cannot read (Service Bus). window is
// the interval the estimates are asked at (the alert evaluation interval);
// names are the queues' names by the side of the changes they carry
// (unnamed: fhir-changes and crm-changes). A queue whose depth cannot be
// read has no rows; the error says which.
func (a *Agent) EstimatedLags(ctx context.Context, now time.Time, window time.Duration, names map[queues.Side]string) ([]alerts.FeedLag, error) {
	var qs []lagQueue
	for side, q := range map[queues.Side]queues.Queue{queues.SideFHIR: a.deps.FHIRChanges, queues.SideCRM: a.deps.CRMChanges} {
		if q == nil {
			continue
		}
		name := names[side]
		if name == "" {
			name = string(side) + "-changes"
		}
		qs = append(qs, lagQueue{name: name, side: side, depth: q.Depth})
	}
	return a.pipe.lags.estimate(ctx, now, window, qs)
}
