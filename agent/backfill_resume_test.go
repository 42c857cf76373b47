package agent_test

import (
	"context"
	"errors"
	"os"
	"os/exec"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"gorm.io/gorm"

	"github.com/fhirsync/fhirsync/agent"
	"github.com/fhirsync/fhirsync/queues"
	"github.com/fhirsync/fhirsync/sandbox/fhirserver"
	"github.com/fhirsync/fhirsync/storage"
	"github.com/fhirsync/fhirsync/storage/storagetest"
)

// errCrash stands for a process dying: the walk stops where it is.
var errCrash = errors.New("process died")

// crashingQueue passes sends to q until the limit-th, which it delivers
// and then fails, like a process killed after the queue stored a page's
// notices and before the walk saved its position.
type crashingQueue struct {
	queues.Queue
	limit int
	sends atomic.Int32
}

func (c *crashingQueue) Send(ctx context.Context, msgs ...queues.Message) error {
	if err := c.Queue.Send(ctx, msgs...); err != nil {
		return err
	}
	if int(c.sends.Add(1)) == c.limit {
		return errCrash
	}
	return nil
}

func bfRuns(t *testing.T, db *gorm.DB) []agent.BackfillRun {
	t.Helper()
	runs, err := agent.BackfillRuns(context.Background(), db, 50)
	if err != nil {
		t.Fatal(err)
	}
	return runs
}

// TestBackfillResumesFromCheckpoint stops a walk of each side right after
// a send whose position was not saved; the next Backfill resumes from the
// last checkpoint, re-sends that one batch under the same message ids
// (dropped by the queue as duplicates), and every record ends up with
// exactly one notice.
func TestBackfillResumesFromCheckpoint(t *testing.T) {
	t.Parallel()
	storagetest.Each(t, func(t *testing.T, db *gorm.DB) {
		e := newBackfillEnv(t, db, fhirserver.Options{Seed: bfSeed, Patients: bfPatients})
		ctx := context.Background()
		tests := []struct {
			side  queues.Side
			batch int
			q     func() *crashingQueue
			want  []string
			typ   string
		}{
			{side: queues.SideFHIR, batch: 5, typ: "Patient", want: bfPatientIDs(bfPatients)},
			{side: queues.SideCRM, batch: 3, typ: "contact", want: slices.Sorted(slices.Values(e.contactIDs))},
		}
		for _, tt := range tests {
			t.Run(string(tt.side), func(t *testing.T) {
				deps := e.deps
				real := e.fhirQ
				if tt.side == queues.SideCRM {
					real = e.crmQ
				}
				crash := &crashingQueue{Queue: real, limit: 3}
				deps.FHIRChanges, deps.CRMChanges = crash, crash
				var seen []agent.BackfillProgress
				opts := agent.BackfillOptions{Map: "patient-contact", Side: tt.side, BatchSize: tt.batch,
					OnProgress: func(p agent.BackfillProgress) { seen = append(seen, p) }}
				res, err := agent.Backfill(ctx, opts, deps)
				if !errors.Is(err, errCrash) {
					t.Fatalf("first walk = %+v, %v; want it stopped by the crash", res, err)
				}
				var run agent.BackfillRun
				for _, r := range bfRuns(t, db) {
					if r.Side == string(tt.side) {
						run = r
						break
					}
				}
				// Two batches were checkpointed; the third was sent but not.
				if run.State != agent.BackfillInterrupted || run.Done != int64(2*tt.batch) {
					t.Fatalf("stored run after the crash = %+v, want interrupted with %d done", run, 2*tt.batch)
				}
				if tt.side == queues.SideFHIR && run.Total != bfPatients {
					t.Errorf("stored total = %d, want the search's %d", run.Total, bfPatients)
				}
				if len(seen) == 0 || seen[len(seen)-1].State != agent.BackfillInterrupted {
					t.Errorf("progress reports %+v, want the last one interrupted", seen)
				}

				// The restarted process resumes.
				deps.FHIRChanges, deps.CRMChanges = e.fhirQ, e.crmQ
				seen = nil
				res, err = agent.Backfill(ctx, opts, deps)
				if err != nil {
					t.Fatal(err)
				}
				if !res.Resumed {
					t.Error("the second Backfill did not resume the stored run")
				}
				if got := res.FHIR + res.CRM; got != len(tt.want) {
					t.Errorf("the resumed run counts %d records, want %d", got, len(tt.want))
				}
				last := seen[len(seen)-1]
				if last.State != agent.BackfillDone || last.Done != int64(len(tt.want)) || !last.Resumed || last.RunID != run.ID {
					t.Errorf("last progress = %+v, want run %s done with %d", last, run.ID, len(tt.want))
				}
				if tt.side == queues.SideFHIR && (last.Total != bfPatients || last.Percent() != 100) {
					t.Errorf("last progress total %d (%.0f%%), want %d (100%%)", last.Total, last.Percent(), bfPatients)
				}
				if got := bfActive(t, real); got != int64(len(tt.want)) {
					t.Errorf("the queue holds %d notices after the resume, want one per record (%d)", got, len(tt.want))
				}
				ns := bfDrain(t, real)
				if got := bfIDs(ns, tt.side, tt.typ); !slices.Equal(got, tt.want) {
					t.Errorf("notices name %v, want every record once: %v", got, tt.want)
				}
				// A further Backfill is a new run from the first record.
				res, err = agent.Backfill(ctx, agent.BackfillOptions{Map: "patient-contact", Side: tt.side, BatchSize: tt.batch}, e.deps)
				if err != nil || res.Resumed || res.FHIR+res.CRM != len(tt.want) {
					t.Fatalf("Backfill after a finished run = %+v, %v; want a new full walk", res, err)
				}
				bfDrain(t, real)
			})
		}
	})
}

// boundCheckQueue fails the test when a send would take the queue past max
// unprocessed notices.
type boundCheckQueue struct {
	queues.Queue
	t    *testing.T
	max  int64
	peak atomic.Int64
}

func (b *boundCheckQueue) Send(ctx context.Context, msgs ...queues.Message) error {
	d, err := b.Depth(ctx)
	if err != nil {
		return err
	}
	after := d.Active + d.Scheduled + int64(len(msgs))
	if after > b.max {
		b.t.Errorf("a send of %d took the queue to %d notices, over the bound %d", len(msgs), after, b.max)
	}
	if after > b.peak.Load() {
		b.peak.Store(after)
	}
	return b.Queue.Send(ctx, msgs...)
}

// TestBackfillKeepsTheQueueShort walks with a bound of ten waiting
// notices while a slow consumer drains the queue: no send passes the
// bound, the walk reports that it waited, and every record is enqueued.
func TestBackfillKeepsTheQueueShort(t *testing.T) {
	t.Parallel()
	db := storagetest.Open(t, storage.SQLite)
	e := newBackfillEnv(t, db, fhirserver.Options{Seed: bfSeed, Patients: bfPatients})
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var consumed []queues.Notice
	var mu sync.Mutex
	done := make(chan struct{})
	go func() {
		defer close(done)
		for ctx.Err() == nil {
			msgs, err := e.fhirQ.Receive(ctx, 1, 20*time.Millisecond)
			if err != nil {
				return
			}
			for _, m := range msgs {
				time.Sleep(15 * time.Millisecond) // a slow agent
				n, err := queues.DecodeNotice(m.Body)
				if err != nil {
					t.Error(err)
				}
				mu.Lock()
				consumed = append(consumed, n)
				mu.Unlock()
				if err := e.fhirQ.Complete(ctx, m); err != nil {
					t.Error(err)
				}
			}
		}
	}()
	q := &boundCheckQueue{Queue: e.fhirQ, t: t, max: 10}
	deps := e.deps
	deps.FHIRChanges = q
	var waited bool
	res, err := agent.Backfill(ctx, agent.BackfillOptions{Map: "patient-contact", Side: queues.SideFHIR, BatchSize: 5, MaxQueued: 10,
		OnProgress: func(p agent.BackfillProgress) { waited = waited || p.Waiting }}, deps)
	if err != nil || res.FHIR != bfPatients {
		t.Fatalf("Backfill = %+v, %v", res, err)
	}
	if !waited {
		t.Error("the walk never reported waiting for the queue, though the consumer is slower than the walk")
	}
	if q.peak.Load() > 10 {
		t.Errorf("peak queue depth %d, over the bound", q.peak.Load())
	}
	deadline := time.Now().Add(30 * time.Second)
	for bfActive(t, e.fhirQ) > 0 && time.Now().Before(deadline) {
		time.Sleep(20 * time.Millisecond)
	}
	cancel()
	<-done
	mu.Lock()
	defer mu.Unlock()
	if got := bfIDs(consumed, queues.SideFHIR, "Patient"); !slices.Equal(got, bfPatientIDs(bfPatients)) {
		t.Errorf("consumed %v, want every patient once", got)
	}
	runs := bfRuns(t, db)
	if len(runs) != 1 || runs[0].State != agent.BackfillDone || runs[0].Throttled <= 0 {
		t.Errorf("stored runs = %+v, want one done run that spent time waiting", runs)
	}
}

// TestBackfillLeaseKeepsOneWalker refuses a second walk of a map's side
// while a live process holds it, and enqueues nothing.
func TestBackfillLeaseKeepsOneWalker(t *testing.T) {
	t.Parallel()
	db := storagetest.Open(t, storage.SQLite)
	e := newBackfillEnv(t, db, fhirserver.Options{Seed: bfSeed, Patients: 3})
	ctx := context.Background()
	other := storage.NewLease(db, "backfill:patient-contact:fhir", "other-process", time.Minute)
	if ok, err := other.Acquire(ctx); err != nil || !ok {
		t.Fatalf("taking the lease: %v %v", ok, err)
	}
	_, err := agent.Backfill(ctx, agent.BackfillOptions{Map: "patient-contact", Side: queues.SideFHIR, LeaseTTL: 300 * time.Millisecond}, e.deps)
	if !errors.Is(err, agent.ErrBackfillBusy) {
		t.Fatalf("Backfill while another process walks = %v, want ErrBackfillBusy", err)
	}
	if n := bfActive(t, e.fhirQ); n != 0 {
		t.Fatalf("%d notices enqueued without the lease", n)
	}
	// A holder on this host whose process has exited (killed with
	// SIGKILL, say) loses the lease at once, without waiting for it to
	// lapse.
	gone := exec.Command("true")
	if err := gone.Run(); err != nil {
		t.Fatal(err)
	}
	host, _ := os.Hostname()
	dead := storage.NewLease(db, "backfill:patient-contact:crm", host+":"+strconv.Itoa(gone.Process.Pid), time.Hour)
	if ok, err := dead.Acquire(ctx); err != nil || !ok {
		t.Fatalf("taking the lease: %v %v", ok, err)
	}
	start := time.Now()
	if res, err := agent.Backfill(ctx, agent.BackfillOptions{Map: "patient-contact", Side: queues.SideCRM}, e.deps); err != nil || res.CRM != bfContacts {
		t.Fatalf("Backfill after the holder exited = %+v, %v", res, err)
	}
	if d := time.Since(start); d > 10*time.Second {
		t.Errorf("the walk waited %s for the lease of an exited process", d)
	}
	// Once the other process is gone, the walk runs.
	if err := other.Release(ctx); err != nil {
		t.Fatal(err)
	}
	if res, err := agent.Backfill(ctx, agent.BackfillOptions{Map: "patient-contact", Side: queues.SideFHIR}, e.deps); err != nil || res.FHIR != 3 {
		t.Fatalf("Backfill after the lease ended = %+v, %v", res, err)
	}
}

// TestBackfillResumesOnlyTheUnfinishedSide crashes a walk of both sides
// during the CRM side: the resumed backfill walks the rest of the CRM side
// and leaves the finished FHIR side alone.
func TestBackfillResumesOnlyTheUnfinishedSide(t *testing.T) {
	t.Parallel()
	db := storagetest.Open(t, storage.SQLite)
	e := newBackfillEnv(t, db, fhirserver.Options{Seed: bfSeed, Patients: bfPatients})
	ctx := context.Background()
	deps := e.deps
	deps.CRMChanges = &crashingQueue{Queue: e.crmQ, limit: 2}
	opts := agent.BackfillOptions{Map: "patient-contact", BatchSize: 3}
	if res, err := agent.Backfill(ctx, opts, deps); !errors.Is(err, errCrash) || res.FHIR != bfPatients {
		t.Fatalf("first walk = %+v, %v; want the FHIR side done and the crash in the CRM side", res, err)
	}
	res, err := agent.Backfill(ctx, opts, e.deps)
	if err != nil {
		t.Fatal(err)
	}
	if !res.Resumed || res.CRM != bfContacts || res.FHIR != 0 || !slices.Equal(res.NotWalked, []queues.Side{queues.SideFHIR}) {
		t.Fatalf("resumed walk = %+v; want the CRM side resumed to %d and the FHIR side not walked", res, bfContacts)
	}
	if got := bfActive(t, e.fhirQ); got != bfPatients {
		t.Errorf("fhir-changes holds %d notices, want the first walk's %d", got, bfPatients)
	}
	if got := bfIDs(bfDrain(t, e.crmQ), queues.SideCRM, "contact"); !slices.Equal(got, slices.Sorted(slices.Values(e.contactIDs))) {
		t.Errorf("crm notices %v, want every contact once", got)
	}
	// With nothing unfinished, both sides are walked again.
	if res, err := agent.Backfill(ctx, opts, e.deps); err != nil || res.Resumed || res.FHIR != bfPatients || res.CRM != bfContacts {
		t.Fatalf("a backfill after both sides finished = %+v, %v", res, err)
	}
}
