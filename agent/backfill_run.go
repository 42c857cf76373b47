package agent

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"runtime"
	"strconv"
	"strings"
	"syscall"
	"time"

	"gorm.io/gorm"

	"github.com/fhirsync/fhirsync/agent/crm"
	"github.com/fhirsync/fhirsync/agent/fhir"
	"github.com/fhirsync/fhirsync/queues"
	"github.com/fhirsync/fhirsync/storage"
)

// Backfill run states, as stored in backfill_runs.state.
const (
	// BackfillRunning: a process is walking the side, or was when it
	// died (its updated_at then stops moving). Resumable.
	BackfillRunning = "running"
	// BackfillInterrupted: the walk stopped on an error or was cancelled.
	// Resumable.
	BackfillInterrupted = "interrupted"
	// BackfillDone: every record of the side was enqueued.
	BackfillDone = "done"
	// BackfillAbandoned: an operator started the walk afresh instead.
	BackfillAbandoned = "abandoned"
)

// DefaultBackfillMaxQueued is how many unprocessed notices a backfill lets
// stand on a queue before it waits for the agent to catch up.
const DefaultBackfillMaxQueued = 5000

// BackfillProgress is where the walk of one side stands. It holds counts
// and times only, never record content.
type BackfillProgress struct {
	RunID string
	Map   string
	Side  queues.Side
	// Done counts the records enqueued so far by this run, including
	// those of the processes before a resume.
	Done int64
	// Total is the number of records the source reported (FHIR
	// Bundle.total), or -1 when it did not say.
	Total int64
	// Processed estimates the records of the run the agent has taken off
	// the queue: Done less the notices still waiting on it (Queued, which
	// counts notices of any origin, so the estimate errs low). Done when
	// the queue cannot tell its depth.
	Processed int64
	// Rate is records per second processed over the last minute (the
	// walk's own rate while it is shorter), measured in this process.
	// Once the queue holds its bound, the walk enqueues only as fast as
	// the agent processes, so this is the backfill's pace; the enqueue
	// rate would run ahead by the queue's bound at first.
	Rate float64
	// Left is the estimated time until the agent has processed every
	// record (Total less Processed, at Rate), or -1 when unknown.
	Left time.Duration
	// Queued is the queue's depth (active and scheduled notices) when
	// last read; 0 when the queue cannot tell or the walk is unbounded.
	Queued int64
	// Waiting is true while the walk waits for the queue to drain below
	// its bound, or for the source after a throttled or failed read.
	Waiting bool
	// Throttled is the time this run spent waiting so far, in every
	// process that walked it.
	Throttled time.Duration
	// Resumed says the run continued from a checkpoint of an earlier
	// process.
	Resumed bool
	// State is one of the Backfill* states.
	State string
}

// Percent is Done as a share of Total, or -1 when the total is unknown.
func (p BackfillProgress) Percent() float64 {
	if p.Total <= 0 {
		return -1
	}
	return 100 * float64(min(p.Done, p.Total)) / float64(p.Total)
}

// backfillRunRow is one row of backfill_runs.
type backfillRunRow struct {
	ID          string `gorm:"primaryKey"`
	MapName     string
	Side        string
	Origin      string
	State       string
	Position    string
	Done        int64
	Total       int64
	Rate        float64
	Queued      int64
	ThrottledMS int64 `gorm:"column:throttled_ms"`
	Resumes     int
	Holder      string
	Error       string
	ChangedAt   time.Time
	StartedAt   time.Time
	UpdatedAt   time.Time
	FinishedAt  *time.Time
}

func (backfillRunRow) TableName() string { return "backfill_runs" }

// backfillRun is the checkpoint of one side's walk, held by the process
// walking it. All its methods are called from the walking goroutine.
type backfillRun struct {
	db        *gorm.DB
	row       backfillRunRow
	resumed   bool
	started   time.Time // when this process took the run over
	throttled time.Duration
	queued    int64
	waiting   bool
	lastSave  time.Time
	// samples are the processed counts of the last minute, oldest first,
	// for the rate.
	samples []progressSample
	// onProgress, when set, receives the progress at every save.
	onProgress func(BackfillProgress)
}

// backfillLeaseName is the lease held while a side of a map is walked, so
// that two processes never walk it at once.
func backfillLeaseName(mapName string, side queues.Side) string {
	return "backfill:" + mapName + ":" + string(side)
}

// openBackfillRun takes over the newest unfinished run of the map's side
// (unless fresh, which abandons it) or starts a new one.
func openBackfillRun(ctx context.Context, db *gorm.DB, mapName string, side queues.Side, origin, holder string, fresh bool) (*backfillRun, error) {
	now := time.Now().UTC()
	r := &backfillRun{db: db, started: time.Now()}
	err := db.WithContext(ctx).Transaction(func(tx *gorm.DB) error {
		var rows []backfillRunRow
		if err := tx.Where("map_name = ? AND side = ? AND origin = ? AND state IN ?", mapName, string(side), origin,
			[]string{BackfillRunning, BackfillInterrupted}).Order("started_at DESC").Find(&rows).Error; err != nil {
			return err
		}
		if len(rows) > 0 && !fresh {
			r.row = rows[0]
			r.resumed = true
			rows = rows[1:]
		}
		for _, old := range rows {
			if err := tx.Model(&backfillRunRow{}).Where("id = ?", old.ID).
				Updates(map[string]any{"state": BackfillAbandoned, "updated_at": now}).Error; err != nil {
				return err
			}
		}
		if r.resumed {
			r.row.State, r.row.Holder, r.row.Error, r.row.UpdatedAt = BackfillRunning, holder, "", now
			r.row.Resumes++
			return tx.Model(&backfillRunRow{}).Where("id = ?", r.row.ID).Updates(map[string]any{
				"state": r.row.State, "holder": holder, "error": "", "updated_at": now, "resumes": r.row.Resumes}).Error
		}
		id, err := newRunID()
		if err != nil {
			return err
		}
		// Notice ids carry ChangedAt at millisecond precision; the stored
		// time must give the same ids after a resume.
		at := now.Truncate(time.Millisecond)
		r.row = backfillRunRow{ID: id, MapName: mapName, Side: string(side), Origin: origin, State: BackfillRunning,
			Total: -1, Holder: holder, ChangedAt: at, StartedAt: now, UpdatedAt: now}
		return tx.Create(&r.row).Error
	})
	if err != nil {
		return nil, fmt.Errorf("opening the backfill checkpoint of %s (%s): %w", mapName, side, err)
	}
	r.row.ChangedAt = r.row.ChangedAt.UTC()
	r.throttled = time.Duration(r.row.ThrottledMS) * time.Millisecond
	return r, nil
}

// unfinishedSides reports which sides of the map have a run to resume.
func unfinishedSides(ctx context.Context, db *gorm.DB, mapName, origin string) (map[queues.Side]bool, error) {
	var sides []string
	if err := db.WithContext(ctx).Model(&backfillRunRow{}).Where("map_name = ? AND origin = ? AND state IN ?", mapName, origin,
		[]string{BackfillRunning, BackfillInterrupted}).Distinct().Pluck("side", &sides).Error; err != nil {
		return nil, fmt.Errorf("reading unfinished backfill runs: %w", err)
	}
	out := map[queues.Side]bool{}
	for _, s := range sides {
		out[queues.Side(s)] = true
	}
	return out, nil
}

func newRunID() (string, error) {
	var b [8]byte
	if _, err := rand.Read(b[:]); err != nil {
		return "", err
	}
	return hex.EncodeToString(b[:]), nil
}

// checkpoint records that every record before position is enqueued.
func (r *backfillRun) checkpoint(ctx context.Context, position string) error {
	r.row.Position = position
	return r.save(ctx)
}

// setTotal records the source's count of records.
func (r *backfillRun) setTotal(total int64) {
	if total >= 0 {
		r.row.Total = total
	}
}

// finish records the run's end: done, or interrupted with the error.
func (r *backfillRun) finish(ctx context.Context, werr error) error {
	now := time.Now().UTC()
	if werr == nil {
		r.row.State, r.row.Position, r.row.FinishedAt = BackfillDone, "", &now
	} else {
		r.row.State = BackfillInterrupted
		r.row.Error = truncate(werr.Error(), 500)
	}
	r.waiting = false
	// The run's end is recorded even when ctx was cancelled.
	sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 10*time.Second)
	defer cancel()
	return r.save(sctx)
}

// save writes the row's progress columns and reports the progress.
func (r *backfillRun) save(ctx context.Context) error {
	p := r.progressNow()
	r.row.Rate, r.row.Queued, r.row.ThrottledMS = p.Rate, r.queued, r.throttled.Milliseconds()
	r.row.UpdatedAt = time.Now().UTC()
	r.lastSave = time.Now()
	cols := map[string]any{"state": r.row.State, "position": r.row.Position, "done": r.row.Done, "total": r.row.Total,
		"rate": r.row.Rate, "queued": r.row.Queued, "throttled_ms": r.row.ThrottledMS, "error": r.row.Error,
		"updated_at": r.row.UpdatedAt, "finished_at": r.row.FinishedAt}
	if err := r.db.WithContext(ctx).Model(&backfillRunRow{}).Where("id = ?", r.row.ID).Updates(cols).Error; err != nil {
		return fmt.Errorf("saving the backfill checkpoint: %w", err)
	}
	if r.onProgress != nil {
		r.onProgress(p)
	}
	return nil
}

// progressSample is the processed count at a time.
type progressSample struct {
	at        time.Time
	processed int64
}

// rateWindow is how far back the rate looks.
const rateWindow = time.Minute

// progressNow is where the run stands now; it also keeps the sample the
// rate is measured from.
func (r *backfillRun) progressNow() BackfillProgress {
	return r.progressAt(time.Now())
}

func (r *backfillRun) progressAt(now time.Time) BackfillProgress {
	p := BackfillProgress{RunID: r.row.ID, Map: r.row.MapName, Side: queues.Side(r.row.Side), Done: r.row.Done,
		Total: r.row.Total, Left: -1, Queued: r.queued, Waiting: r.waiting, Throttled: r.throttled,
		Resumed: r.resumed, State: r.row.State}
	p.Processed = max(p.Done-p.Queued, 0)
	if p.State == BackfillDone && p.Queued == 0 {
		p.Processed = p.Done
	}
	// The rate runs from the oldest sample of the last minute: until this
	// process has seen two, it is unknown (0).
	r.samples = append(r.samples, progressSample{at: now, processed: p.Processed})
	for len(r.samples) > 2 && now.Sub(r.samples[1].at) >= rateWindow {
		r.samples = r.samples[1:]
	}
	from := r.samples[0]
	if el := now.Sub(from.at).Seconds(); el > 0 {
		p.Rate = max(float64(p.Processed-from.processed)/el, 0)
	}
	if p.Total >= 0 && p.Rate > 0 {
		p.Left = time.Duration(float64(max(p.Total-p.Processed, 0)) / p.Rate * float64(time.Second))
	}
	return p
}

// reportNow saves the run's progress (waiting or not) so that the admin
// app sees it; a failed save is logged, not fatal.
func (w *walker) reportNow(ctx context.Context) {
	if w.run == nil {
		return
	}
	if err := w.run.save(ctx); err != nil && ctx.Err() == nil {
		w.deps.Logger.Warn("saving backfill progress failed", "map_id", w.mapName, "error", err)
	}
}

// maybeReport saves the progress when the last save is more than two
// seconds old, so a long wait still shows.
func (w *walker) maybeReport(ctx context.Context) {
	if w.run != nil && time.Since(w.run.lastSave) >= 2*time.Second {
		w.reportNow(ctx)
	}
}

// depther is the part of a queue that reports its depth.
type depther interface {
	Depth(ctx context.Context) (queues.Depth, error)
}

// waitForRoom waits until q holds fewer than max-n unprocessed notices
// (active or scheduled), so that a long walk keeps the queue short: when
// the agent slows — the CRM answers 429, a side is down — notices stand
// longer and the walk waits with them. q that cannot report its depth,
// or max <= 0, never waits. The lease is renewed while waiting.
func (w *walker) waitForRoom(ctx context.Context, q sender, n int) error {
	d, ok := q.(depther)
	if !ok || w.opts.MaxQueued <= 0 {
		return nil
	}
	delay := 50 * time.Millisecond
	for {
		dep, err := d.Depth(ctx)
		if err != nil {
			return fmt.Errorf("reading the queue depth: %w", err)
		}
		queued := dep.Active + dep.Scheduled
		if w.run != nil {
			w.run.queued = queued
		}
		if queued+int64(n) <= int64(w.opts.MaxQueued) {
			if w.run != nil && w.run.waiting {
				w.run.waiting = false
			}
			return nil
		}
		if w.run != nil && !w.run.waiting {
			w.run.waiting = true
			w.reportNow(ctx)
		}
		if err := sleepCtx(ctx, delay); err != nil {
			return err
		}
		if w.run != nil {
			w.run.throttled += delay
			w.maybeReport(ctx)
		}
		delay = min(delay*2, 2*time.Second)
	}
}

// sourceRetries is how often a failed read of the source is tried again
// before the walk stops (it can then be resumed).
const sourceRetries = 8

// retrySource runs read, trying again after a throttled or transient
// failure of the source (429, 5xx, network) with the server's Retry-After
// or an exponential wait.
func (w *walker) retrySource(ctx context.Context, read func() error) error {
	delay := time.Second
	for attempt := 1; ; attempt++ {
		err := read()
		if err == nil || attempt > sourceRetries || ctx.Err() != nil {
			return err
		}
		wait, ok := retryableSource(err)
		if !ok {
			return err
		}
		if wait <= 0 {
			wait = delay
			delay = min(delay*2, time.Minute)
		}
		w.deps.Logger.Warn("backfill read failed; trying again", "map_id", w.mapName, "attempt", attempt, "wait", wait.String(), "error", err)
		if w.run != nil {
			w.run.waiting = true
			w.reportNow(ctx)
		}
		if err := sleepCtx(ctx, wait); err != nil {
			return err
		}
		if w.run != nil {
			w.run.throttled += wait
			w.run.waiting = false
		}
	}
}

// retryableSource reports whether err from an endpoint client may pass on
// a second try, and the server's Retry-After if it gave one.
func retryableSource(err error) (time.Duration, bool) {
	var fe *fhir.Error
	if errors.As(err, &fe) {
		return fe.RetryAfter, fe.Retryable
	}
	var ce *crm.Error
	if errors.As(err, &ce) {
		return ce.RetryAfter, ce.Retryable
	}
	return 0, false
}

func sleepCtx(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-t.C:
		return nil
	}
}

// holdLease takes the side's lease, waiting up to wait for a holder that
// died to lose it, and keeps it renewed until the returned stop is
// called. The walk's context is cancelled if the lease is lost.
func holdLease(ctx context.Context, db *gorm.DB, name, holder string, ttl, wait time.Duration, log *slog.Logger) (context.Context, func(), error) {
	lease := storage.NewLease(db, name, holder, ttl)
	deadline := time.Now().Add(wait)
	logged := false
	for {
		ok, err := lease.Acquire(ctx)
		if err != nil {
			return ctx, nil, fmt.Errorf("taking the backfill lease %s: %w", name, err)
		}
		if ok {
			break
		}
		if took, err := takeOverExitedHolder(ctx, db, name); err != nil {
			return ctx, nil, err
		} else if took {
			log.Info("the process holding the backfill lease on this host has exited; taking the lease over", "lease", name)
			continue
		}
		if time.Now().After(deadline) {
			return ctx, nil, fmt.Errorf("%w: another process holds the lease %s", ErrBackfillBusy, name)
		}
		if !logged {
			log.Info("another process holds the backfill lease; waiting for it to end or lapse", "lease", name, "wait", wait.String())
			logged = true
		}
		if err := sleepCtx(ctx, time.Second); err != nil {
			return ctx, nil, err
		}
	}
	runCtx, stopRenewing := renewLease(ctx, lease, ttl, "backfill lease "+name)
	stop := func() {
		stopRenewing()
		rctx, rcancel := context.WithTimeout(context.WithoutCancel(ctx), 10*time.Second)
		defer rcancel()
		if err := lease.Release(rctx); err != nil {
			log.Warn("releasing the backfill lease failed", "lease", name, "error", err)
		}
	}
	return runCtx, stop, nil
}

// renewLease renews lease every ttl/3 while the returned context lives. A
// renewal that fails or finds the lease taken cancels that context, with a
// cause naming what was lost. stop ends the renewals and returns once they
// have stopped; releasing the lease is left to the caller.
func renewLease(ctx context.Context, lease *storage.Lease, ttl time.Duration, what string) (runCtx context.Context, stop func()) {
	runCtx, cancel := context.WithCancelCause(ctx)
	renewed := make(chan struct{})
	go func() {
		defer close(renewed)
		t := time.NewTicker(ttl / 3)
		defer t.Stop()
		for {
			select {
			case <-runCtx.Done():
				return
			case <-t.C:
				if ok, err := lease.Acquire(runCtx); err != nil || !ok {
					if runCtx.Err() == nil {
						cancel(fmt.Errorf("the %s was lost (renewal: ok=%v, error=%v)", what, ok, err))
					}
					return
				}
			}
		}
	}()
	return runCtx, func() { cancel(nil); <-renewed }
}

// takeOverExitedHolder ends the lease name when its holder is a process
// of this host (a holder named host:pid, as defaultHolder names them) that
// no longer exists, so that a backfill restarted after kill -9 continues
// at once instead of waiting for the lease to lapse. A holder on another
// host, or one whose process may still exist, keeps its lease.
func takeOverExitedHolder(ctx context.Context, db *gorm.DB, name string) (bool, error) {
	var rows []struct{ Holder string }
	if err := db.WithContext(ctx).Raw("SELECT holder FROM leases WHERE name = ?", name).Scan(&rows).Error; err != nil {
		return false, fmt.Errorf("reading the backfill lease %s: %w", name, err)
	}
	if len(rows) != 1 {
		return false, nil
	}
	holder := rows[0].Holder
	i := strings.LastIndexByte(holder, ':')
	host, _ := os.Hostname()
	if i < 0 || holder[:i] != host {
		return false, nil
	}
	pid, err := strconv.Atoi(holder[i+1:])
	if err != nil || pid <= 0 || pid == os.Getpid() || processExists(pid) {
		return false, nil
	}
	res := db.WithContext(ctx).Exec("DELETE FROM leases WHERE name = ? AND holder = ?", name, holder)
	if res.Error != nil {
		return false, fmt.Errorf("ending the backfill lease %s of an exited process: %w", name, res.Error)
	}
	return res.RowsAffected == 1, nil
}

// processExists reports whether a process with pid may exist on this host
// (signal 0 checks without sending anything). Where that cannot be asked,
// it answers true, so the lease is left to lapse.
func processExists(pid int) bool {
	if runtime.GOOS == "windows" {
		return true
	}
	p, err := os.FindProcess(pid)
	if err != nil {
		return false
	}
	err = p.Signal(syscall.Signal(0))
	return err == nil || errors.Is(err, syscall.EPERM)
}

// ErrBackfillBusy means another live process is walking the same side of
// the same map.
var ErrBackfillBusy = errors.New("backfill already running")

// BackfillRun is one stored backfill run, as `fhirsync backfill --status`
// and the admin app list them.
type BackfillRun struct {
	ID, Map, Side, Origin, State string
	Done, Total                  int64
	Rate                         float64
	Queued                       int64
	Throttled                    time.Duration
	Resumes                      int
	Error                        string
	StartedAt, UpdatedAt         time.Time
	FinishedAt                   *time.Time
}

// BackfillRuns lists the newest stored backfill runs, newest first.
func BackfillRuns(ctx context.Context, db *gorm.DB, limit int) ([]BackfillRun, error) {
	var rows []backfillRunRow
	if err := db.WithContext(ctx).Order("started_at DESC").Limit(limit).Find(&rows).Error; err != nil {
		return nil, fmt.Errorf("listing backfill runs: %w", err)
	}
	out := make([]BackfillRun, 0, len(rows))
	for _, r := range rows {
		out = append(out, BackfillRun{ID: r.ID, Map: r.MapName, Side: r.Side, Origin: r.Origin, State: r.State,
			Done: r.Done, Total: r.Total, Rate: r.Rate, Queued: r.Queued, Throttled: time.Duration(r.ThrottledMS) * time.Millisecond,
			Resumes: r.Resumes, Error: r.Error, StartedAt: r.StartedAt, UpdatedAt: r.UpdatedAt, FinishedAt: r.FinishedAt})
	}
	return out, nil
}
