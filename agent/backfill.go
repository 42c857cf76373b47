package agent

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/url"
	"os"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/robfig/cron/v3"
	"gorm.io/gorm"

	"github.com/fhirsync/fhirsync/agent/crm"
	"github.com/fhirsync/fhirsync/agent/fhir"
	"github.com/fhirsync/fhirsync/maps"
	"github.com/fhirsync/fhirsync/queues"
	"github.com/fhirsync/fhirsync/storage"
)

// SideBoth asks a backfill to walk both sides of an entity map.
const SideBoth queues.Side = "both"

// Notice origins of the notices this package enqueues itself.
const (
	OriginBackfill  = "backfill"
	OriginReconcile = "reconcile"
	OriginReplay    = "replay"
)

// ErrMapUnavailable means a backfill names an entity map that is not in the
// published set, is disabled, or has the requested direction switched off:
// every notice it enqueued would only be skipped.
var ErrMapUnavailable = errors.New("entity map unavailable for backfill")

// sender puts messages on a queue.
type sender interface {
	Send(ctx context.Context, msgs ...queues.Message) error
}

// currentMaps returns the published map set.
type currentMaps interface {
	Current(ctx context.Context) (*maps.Set, error)
}

// fhirLister walks FHIR search results page by page.
type fhirLister interface {
	Search(ctx context.Context, typ string, q url.Values) (*fhir.Page, error)
	NextPage(ctx context.Context, p *fhir.Page) (*fhir.Page, error)
}

// crmLister walks the rows of a CRM entity set.
type crmLister interface {
	RetrieveMultiple(ctx context.Context, set string, q crm.Query, fn func(crm.Record) error) error
}

// BackfillDeps are what a backfill or a reconcile reads and writes. FHIR and
// CRM may be nil when no side needing them is walked.
type BackfillDeps struct {
	Maps        currentMaps
	FHIR        fhirLister
	CRM         crmLister
	FHIRChanges sender // notices of FHIR records
	CRMChanges  sender // notices of CRM records
	// DB holds the reconcile lease; only NewReconciler needs it.
	DB     *gorm.DB
	Logger *slog.Logger
}

// BackfillOptions says what to walk.
type BackfillOptions struct {
	// Map is the entity map's name. Required.
	Map string
	// Side is queues.SideFHIR, queues.SideCRM or SideBoth (also the zero
	// value). With SideBoth, only the sides whose direction is on are
	// walked; a side named explicitly must have its direction on.
	Side queues.Side
	// DryRun walks the records and reports them without sending anything.
	DryRun bool
	// Origin is recorded on the notices; default OriginBackfill.
	Origin string
	// BatchSize is how many notices are sent at once (default 200); it is
	// also the FHIR search page size (_count).
	BatchSize int
	// OnNotice, when set, is called for every notice, sent or (in a dry
	// run) not. It receives ids only, never record content.
	OnNotice func(queues.Notice)
	// MaxQueued bounds the unprocessed notices (active and scheduled) the
	// walk lets stand on the queue: before each send it waits until the
	// queue has room. Zero means DefaultBackfillMaxQueued, negative no
	// bound. Queues that cannot report their depth are not bounded.
	MaxQueued int
	// Fresh starts every side's walk from the first record even when an
	// unfinished run of it (interrupted, or of a process that died) is
	// stored; that run is marked abandoned. Without Fresh such a run is
	// resumed from its checkpoint.
	Fresh bool
	// OnProgress, when set, receives the progress of the side being
	// walked at every checkpoint and while the walk waits. Counts only.
	OnProgress func(BackfillProgress)
	// Holder names this process in the walk's lease (default host:pid).
	Holder string
	// LeaseTTL is how long the lease outlives a process that died (default
	// 15s); a restarted backfill waits up to twice that for it to lapse.
	LeaseTTL time.Duration
}

// BackfillResult counts the notices of one backfill.
type BackfillResult struct {
	Map string
	// FHIR and CRM count the notices enqueued (or, in a dry run, that
	// would have been) for each side.
	FHIR, CRM int
	DryRun    bool
	// Resumed says at least one side continued from a stored checkpoint;
	// the counts then include the records enqueued before it.
	Resumed bool
	// NotWalked are the requested sides left out because the backfill
	// resumed another side's unfinished walk and theirs had finished.
	NotWalked []queues.Side
}

// Total is FHIR + CRM.
func (r BackfillResult) Total() int { return r.FHIR + r.CRM }

// Backfill walks every record of one entity map and enqueues a "changed"
// notice for each, so the agent re-reads and syncs it. FHIR resources are
// found with a type search paged by link[next]; CRM rows with a query of the
// entity set selecting only the primary id, ordered by it. Notices of one
// run share one ChangedAt, so a record met twice in a run is enqueued once
// by the queue's duplicate detection.
//
// With deps.DB set (and not a dry run), each side's walk is a stored run:
// after the notices of a FHIR page (or of a batch of CRM rows) are sent,
// its position — the page's next link, or the last CRM id — is saved, and
// a Backfill of the same map and side started after a crash resumes from
// there with the run's ChangedAt, so it re-sends at most one page, under
// the same message ids. A lease keeps two processes off the same side.
// The walk keeps at most MaxQueued notices waiting on the queue.
func Backfill(ctx context.Context, opts BackfillOptions, deps BackfillDeps) (BackfillResult, error) {
	res := BackfillResult{Map: opts.Map, DryRun: opts.DryRun}
	if opts.Map == "" {
		return res, errors.New("backfill: the entity map name is required")
	}
	if deps.Maps == nil {
		return res, errors.New("backfill: Maps is required")
	}
	set, err := deps.Maps.Current(ctx)
	if err != nil {
		return res, fmt.Errorf("backfill of %s: reading the published maps: %w", opts.Map, err)
	}
	m, ok := set.Map(opts.Map)
	if !ok {
		return res, fmt.Errorf("backfill of %s: %w: no such map in published version %d", opts.Map, ErrMapUnavailable, set.Version())
	}
	sides, err := backfillSides(m.Def(), opts.Side)
	if err != nil {
		return res, fmt.Errorf("backfill of %s: %w", opts.Map, err)
	}
	if opts.MaxQueued == 0 {
		opts.MaxQueued = DefaultBackfillMaxQueued
	}
	if deps.DB != nil && !opts.DryRun && !opts.Fresh {
		// Resuming: only the sides left unfinished are walked, so that a
		// crash during the CRM side of a walk of both does not walk the
		// finished FHIR side again.
		origin := opts.Origin
		if origin == "" {
			origin = OriginBackfill
		}
		open, err := unfinishedSides(ctx, deps.DB, opts.Map, origin)
		if err != nil {
			return res, fmt.Errorf("backfill of %s: %w", opts.Map, err)
		}
		var keep []queues.Side
		for _, side := range sides {
			if open[side] {
				keep = append(keep, side)
			} else {
				res.NotWalked = append(res.NotWalked, side)
			}
		}
		if len(keep) > 0 {
			sides = keep
		} else {
			res.NotWalked = nil
		}
	}
	w := newWalker(opts, deps)
	for _, side := range sides {
		var n int
		if deps.DB != nil && !opts.DryRun {
			var resumed bool
			n, resumed, err = w.walkRun(ctx, m.Def(), side)
			res.Resumed = res.Resumed || resumed
		} else {
			n, err = w.walk(ctx, m.Def(), side)
		}
		if side == queues.SideFHIR {
			res.FHIR = n
		} else {
			res.CRM = n
		}
		if err != nil {
			return res, fmt.Errorf("backfill of %s: %w", opts.Map, err)
		}
	}
	return res, nil
}

// backfillSides picks the sides to walk for em.
func backfillSides(em *maps.EntityMap, want queues.Side) ([]queues.Side, error) {
	if !em.IsEnabled() {
		return nil, fmt.Errorf("%w: the map is disabled", ErrMapUnavailable)
	}
	switch want {
	case queues.SideFHIR:
		if !em.FHIRToCRM.Enabled {
			return nil, fmt.Errorf("%w: its FHIR to CRM direction is off", ErrMapUnavailable)
		}
		return []queues.Side{queues.SideFHIR}, nil
	case queues.SideCRM:
		if !em.CRMToFHIR.Enabled {
			return nil, fmt.Errorf("%w: its CRM to FHIR direction is off", ErrMapUnavailable)
		}
		return []queues.Side{queues.SideCRM}, nil
	case SideBoth, "":
		var out []queues.Side
		if em.FHIRToCRM.Enabled {
			out = append(out, queues.SideFHIR)
		}
		if em.CRMToFHIR.Enabled {
			out = append(out, queues.SideCRM)
		}
		if len(out) == 0 {
			return nil, fmt.Errorf("%w: both directions are off", ErrMapUnavailable)
		}
		return out, nil
	}
	return nil, fmt.Errorf("unknown side %q (want fhir, crm or both)", want)
}

// walker enqueues notices for the records of one or more entity maps,
// batching sends.
type walker struct {
	opts      BackfillOptions
	deps      BackfillDeps
	changedAt time.Time
	batch     int
	// run is the stored checkpoint of the side being walked; nil when the
	// walk is not checkpointed (reconcile, dry run, no database).
	run     *backfillRun
	mapName string
}

func newWalker(opts BackfillOptions, deps BackfillDeps) *walker {
	if opts.Origin == "" {
		opts.Origin = OriginBackfill
	}
	if opts.BatchSize <= 0 {
		opts.BatchSize = 200
	}
	if deps.Logger == nil {
		deps.Logger = slog.New(slog.DiscardHandler)
	}
	return &walker{opts: opts, deps: deps, changedAt: time.Now().UTC(), batch: opts.BatchSize}
}

// walkRun walks one side as a stored run: it takes the side's lease,
// resumes the newest unfinished run or starts one, walks, and records the
// end. It returns the records enqueued by the run in all (including those
// of earlier processes) and whether it resumed.
func (w *walker) walkRun(ctx context.Context, em *maps.EntityMap, side queues.Side) (int, bool, error) {
	holder := w.opts.Holder
	if holder == "" {
		holder = defaultHolder()
	}
	ttl := w.opts.LeaseTTL
	if ttl <= 0 {
		ttl = 15 * time.Second
	}
	runCtx, stop, err := holdLease(ctx, w.deps.DB, backfillLeaseName(em.Name, side), holder, ttl, 2*ttl+time.Second, w.deps.Logger)
	if err != nil {
		return 0, false, err
	}
	defer stop()
	run, err := openBackfillRun(runCtx, w.deps.DB, em.Name, side, w.opts.Origin, holder, w.opts.Fresh)
	if err != nil {
		return 0, false, err
	}
	run.onProgress = w.opts.OnProgress
	if run.resumed {
		w.deps.Logger.Info("backfill resumes from its checkpoint", "map_id", em.Name, "side", string(side),
			"run_id", run.row.ID, "done", run.row.Done, "resumes", run.row.Resumes)
	}
	w.run, w.changedAt = run, run.row.ChangedAt
	defer func() { w.run = nil }()
	_, werr := w.walk(runCtx, em, side)
	if cause := context.Cause(runCtx); werr != nil && cause != nil && !errors.Is(cause, context.Canceled) {
		werr = fmt.Errorf("%w: %w", werr, cause)
	}
	if err := run.finish(ctx, werr); err != nil && werr == nil {
		werr = err
	}
	return int(run.row.Done), run.resumed, werr
}

// defaultHolder names this process in a lease.
func defaultHolder() string {
	h, _ := os.Hostname()
	return h + ":" + strconv.Itoa(os.Getpid())
}

// walk enqueues a notice for every record of em on side and returns how
// many it enqueued. With w.run set it starts from the run's position and
// saves its position after every page (FHIR) or send (CRM).
func (w *walker) walk(ctx context.Context, em *maps.EntityMap, side queues.Side) (int, error) {
	q := w.deps.FHIRChanges
	if side == queues.SideCRM {
		q = w.deps.CRMChanges
	}
	if q == nil && !w.opts.DryRun {
		return 0, fmt.Errorf("no queue for %s notices", side)
	}
	w.mapName = em.Name
	var pending []queues.Message
	var pendingLast string // id of the last pending notice
	sent := 0
	flush := func() error {
		if len(pending) == 0 {
			return nil
		}
		if !w.opts.DryRun {
			if err := w.waitForRoom(ctx, q, len(pending)); err != nil {
				return fmt.Errorf("waiting for room on the %s queue: %w", side, err)
			}
			if err := q.Send(ctx, pending...); err != nil {
				return fmt.Errorf("enqueuing %d %s notices: %w", len(pending), side, err)
			}
		}
		sent += len(pending)
		if w.run != nil {
			w.run.row.Done += int64(len(pending))
		}
		pending = nil // a transport may keep the slice it was given
		if w.run != nil && side == queues.SideCRM {
			return w.run.checkpoint(ctx, pendingLast)
		}
		return nil
	}
	add := func(typ, id string) error {
		n := queues.Notice{V: queues.NoticeVersion, Side: side, Type: typ, ID: id, Event: queues.EventChanged,
			Origin: w.opts.Origin, ChangedAt: w.changedAt}
		msg, err := n.Message()
		if err != nil {
			// An id the notice format cannot carry: skipped with a warning
			// (which names the map, not the id) rather than stopping the walk.
			w.deps.Logger.Warn("backfill skipped a record whose id is not a valid notice id",
				"map_id", em.Name, "side", string(side), "record_type", typ, "error", err)
			return nil
		}
		if w.opts.OnNotice != nil {
			w.opts.OnNotice(n)
		}
		pending = append(pending, msg)
		pendingLast = id
		if len(pending) >= w.batch {
			return flush()
		}
		return nil
	}
	// pageDone sends the page's notices, then saves the position of the
	// next page: a crash before the save re-sends this page only.
	pageDone := func(next string) error {
		if err := flush(); err != nil {
			return err
		}
		if w.run != nil && next != "" {
			return w.run.checkpoint(ctx, next)
		}
		return nil
	}
	var err error
	if side == queues.SideFHIR {
		err = w.walkFHIR(ctx, em, add, pageDone)
	} else {
		err = w.walkCRM(ctx, em, add)
	}
	if err == nil {
		err = flush()
	}
	if err != nil {
		return sent, err
	}
	w.deps.Logger.Info("backfill walked an entity map", "map_id", em.Name, "side", string(side),
		"origin", w.opts.Origin, "notices", sent, "dry_run", w.opts.DryRun)
	return sent, nil
}

func (w *walker) walkFHIR(ctx context.Context, em *maps.EntityMap, add func(typ, id string) error, pageDone func(next string) error) error {
	if w.deps.FHIR == nil {
		return errors.New("no FHIR server is configured")
	}
	var page *fhir.Page
	var err error
	pages := 1
	if w.run != nil && w.run.row.Position != "" {
		err = w.retrySource(ctx, func() (err error) {
			page, err = w.deps.FHIR.NextPage(ctx, &fhir.Page{Next: w.run.row.Position})
			return err
		})
		var fe *fhir.Error
		if err != nil && errors.As(err, &fe) && !fe.Retryable && fe.Class != fhir.ClassUnauthorized {
			// The server no longer serves the saved link (paging links
			// may expire): walk again from the first page. The re-sent
			// notices only re-sync records already synced.
			w.deps.Logger.Warn("backfill checkpoint link refused; walking from the first page again",
				"map_id", em.Name, "run_id", w.run.row.ID, "error", err)
			w.run.row.Done, w.run.row.Position = 0, ""
			page, err = nil, nil
		}
		if err != nil {
			return fmt.Errorf("resuming the %s walk at its checkpoint: %w", em.FHIRType, err)
		}
	}
	if page == nil {
		q := url.Values{"_count": {strconv.Itoa(w.batch)}}
		if err := w.retrySource(ctx, func() (err error) {
			page, err = w.deps.FHIR.Search(ctx, em.FHIRType, q)
			return err
		}); err != nil {
			return fmt.Errorf("searching %s: %w", em.FHIRType, err)
		}
	}
	for ; ; pages++ {
		if w.run != nil && page.Total >= 0 {
			w.run.setTotal(int64(page.Total))
		}
		for _, e := range page.Entries {
			if e.Resource == nil || (e.SearchMode != "" && e.SearchMode != "match") {
				continue
			}
			if e.Resource.Type() != em.FHIRType {
				continue
			}
			if err := add(em.FHIRType, e.Resource.ID()); err != nil {
				return err
			}
		}
		if err := pageDone(page.Next); err != nil {
			return err
		}
		if page.Next == "" {
			return nil
		}
		cur := page
		if err := w.retrySource(ctx, func() (err error) {
			page, err = w.deps.FHIR.NextPage(ctx, cur)
			return err
		}); err != nil {
			return fmt.Errorf("reading page %d of %s: %w", pages+1, em.FHIRType, err)
		}
	}
}

func (w *walker) walkCRM(ctx context.Context, em *maps.EntityMap, add func(typ, id string) error) error {
	if w.deps.CRM == nil {
		return errors.New("no CRM is configured")
	}
	idAttr := crmIDAttribute(em)
	if w.run == nil {
		err := w.deps.CRM.RetrieveMultiple(ctx, em.CRMEntitySet, crm.Query{Select: []string{idAttr}}, func(r crm.Record) error {
			id := r.String(idAttr)
			if id == "" {
				return nil
			}
			return add(em.CRMEntity, id)
		})
		if err != nil {
			return fmt.Errorf("querying %s: %w", em.CRMEntitySet, err)
		}
		return nil
	}
	// A checkpointed walk reads the rows in primary id order, so that it
	// (and a retry after a failed page) continues after the last id seen.
	last := w.run.row.Position
	err := w.retrySource(ctx, func() error {
		q := crm.Query{Select: []string{idAttr}, OrderBy: idAttr + " asc"}
		if last != "" {
			q.Filter = idAttr + " gt " + odataIDLiteral(last)
		}
		return w.deps.CRM.RetrieveMultiple(ctx, em.CRMEntitySet, q, func(r crm.Record) error {
			id := r.String(idAttr)
			if id == "" {
				return nil
			}
			if err := add(em.CRMEntity, id); err != nil {
				return err
			}
			last = id
			return nil
		})
	})
	if err != nil {
		return fmt.Errorf("querying %s: %w", em.CRMEntitySet, err)
	}
	return nil
}

// guidPattern matches a bare GUID, which OData writes unquoted.
var guidPattern = regexp.MustCompile(`^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$`)

// odataIDLiteral writes a primary id as an OData literal: a GUID bare,
// anything else as a quoted string.
func odataIDLiteral(id string) string {
	if guidPattern.MatchString(id) {
		return id
	}
	return "'" + strings.ReplaceAll(id, "'", "''") + "'"
}

// crmIDAttribute is the primary key attribute of the map's CRM entity.
func crmIDAttribute(em *maps.EntityMap) string {
	if em.CRMIDAttribute != "" {
		return em.CRMIDAttribute
	}
	return em.CRMEntity + "id"
}

// ReconcileLeaseName is the database lease a reconcile run holds, so that
// among several processes only one walks the maps per scheduled time.
const ReconcileLeaseName = "agent-reconcile"

// ReconcilerConfig schedules the reconcile.
type ReconcilerConfig struct {
	// Schedule is a cron specification (five fields, or a descriptor such
	// as @daily or @every 6h); empty turns the scheduled reconcile off.
	Schedule string
	// Holder identifies this process in the lease, e.g. host:pid.
	Holder string
	// LeaseTTL is how long the lease outlives a silent holder while a run
	// is in progress (default 5m); it is renewed at a third of that.
	LeaseTTL time.Duration
	// BatchSize is passed to the backfill of each map.
	BatchSize int
}

// Reconciler runs the backfill of every enabled entity map on a schedule,
// holding a database lease so that one process runs it at a time.
type Reconciler struct {
	cfg   ReconcilerConfig
	deps  BackfillDeps
	sched cron.Schedule // nil when the schedule is off
	log   *slog.Logger

	mu sync.Mutex
	// doneUntil is when the lease kept after this process's last
	// successful run ends; until then the scheduled time is served.
	doneUntil time.Time
}

// ReconcileResult reports one reconcile run.
type ReconcileResult struct {
	// Ran is false when another process held the lease.
	Ran bool
	// Maps has one entry per enabled entity map walked. A CRM entity set
	// or FHIR type shared by several maps is walked once, under the first.
	Maps []BackfillResult
}

// NewReconciler checks cfg and wires a reconciler. deps.DB and deps.Maps
// are required, and the endpoint clients and queues of the sides the maps
// switch on.
func NewReconciler(cfg ReconcilerConfig, deps BackfillDeps) (*Reconciler, error) {
	if deps.DB == nil || deps.Maps == nil || deps.FHIRChanges == nil || deps.CRMChanges == nil {
		return nil, errors.New("reconciler: DB, Maps, FHIRChanges and CRMChanges are required")
	}
	r := &Reconciler{cfg: cfg, deps: deps, log: deps.Logger}
	if r.log == nil {
		r.log = slog.New(slog.DiscardHandler)
	}
	if r.cfg.LeaseTTL <= 0 {
		r.cfg.LeaseTTL = 5 * time.Minute
	}
	if r.cfg.Holder == "" {
		return nil, errors.New("reconciler: Holder is required")
	}
	if cfg.Schedule != "" {
		s, err := cron.ParseStandard(cfg.Schedule)
		if err != nil {
			return nil, fmt.Errorf("reconciler: schedule %q: %w", cfg.Schedule, err)
		}
		r.sched = s
	}
	return r, nil
}

// Run runs the reconcile on its schedule until ctx ends. With no schedule
// it returns at once. A run still going when the next time comes is not
// started twice.
func (r *Reconciler) Run(ctx context.Context) error {
	if r.sched == nil {
		return nil
	}
	c := cron.New(cron.WithChain(cron.SkipIfStillRunning(cron.DiscardLogger)))
	c.Schedule(r.sched, cron.FuncJob(func() {
		res, err := r.RunOnce(ctx)
		switch {
		case err != nil && ctx.Err() == nil:
			r.log.Warn("reconcile failed", "error", err)
		case err == nil && !res.Ran:
			r.log.Debug("reconcile skipped: another process holds the lease", "lease", ReconcileLeaseName)
		}
	}))
	c.Start()
	<-ctx.Done()
	<-c.Stop().Done()
	return nil
}

// RunOnce runs one reconcile now if this process can take the lease;
// Ran false means another process holds it. After a successful run the
// lease is kept until shortly before the next scheduled time, so that
// processes whose clocks fire a little later do not repeat the run.
func (r *Reconciler) RunOnce(ctx context.Context) (ReconcileResult, error) {
	var res ReconcileResult
	r.mu.Lock()
	served := time.Now().Before(r.doneUntil)
	r.mu.Unlock()
	if served {
		return res, nil
	}
	lease := storage.NewLease(r.deps.DB, ReconcileLeaseName, r.cfg.Holder, r.cfg.LeaseTTL)
	ok, err := lease.Acquire(ctx)
	if err != nil || !ok {
		return res, err
	}
	res.Ran = true
	runCtx, stopRenewing := renewLease(ctx, lease, r.cfg.LeaseTTL, "reconcile lease")
	defer stopRenewing()
	res.Maps, err = r.reconcile(runCtx)
	stopRenewing()
	if cause := context.Cause(runCtx); err != nil && cause != nil && !errors.Is(cause, context.Canceled) {
		err = fmt.Errorf("%w: %w", err, cause)
	}
	// Release with a context that outlives a cancelled run.
	relCtx, relCancel := context.WithTimeout(context.WithoutCancel(ctx), 10*time.Second)
	defer relCancel()
	if err != nil {
		if rerr := lease.Release(relCtx); rerr != nil {
			r.log.Warn("releasing the reconcile lease failed", "error", rerr)
		}
		return res, err
	}
	if hold := r.holdFor(time.Now()); hold > 0 {
		r.mu.Lock()
		r.doneUntil = time.Now().Add(hold)
		r.mu.Unlock()
		if _, herr := storage.NewLease(r.deps.DB, ReconcileLeaseName, r.cfg.Holder, hold).Acquire(relCtx); herr != nil {
			r.log.Warn("keeping the reconcile lease until the next run failed", "error", herr)
		}
	} else if rerr := lease.Release(relCtx); rerr != nil {
		r.log.Warn("releasing the reconcile lease failed", "error", rerr)
	}
	return res, nil
}

// holdFor is how long to keep the lease after a successful run at now:
// nine tenths of the time to the next scheduled run, or none without a
// schedule.
func (r *Reconciler) holdFor(now time.Time) time.Duration {
	if r.sched == nil {
		return 0
	}
	return r.sched.Next(now).Sub(now) * 9 / 10
}

// reconcile walks every enabled map, each side whose direction is on,
// walking a FHIR type or CRM entity set shared by several maps once.
func (r *Reconciler) reconcile(ctx context.Context) ([]BackfillResult, error) {
	set, err := r.deps.Maps.Current(ctx)
	if err != nil {
		return nil, fmt.Errorf("reconcile: reading the published maps: %w", err)
	}
	// Like a backfill, a reconcile keeps the queue short rather than
	// putting every record of every map on it at once.
	w := newWalker(BackfillOptions{Origin: OriginReconcile, BatchSize: r.cfg.BatchSize, MaxQueued: DefaultBackfillMaxQueued}, r.deps)
	walked := map[string]bool{}
	var out []BackfillResult
	for _, m := range set.Maps() {
		em := m.Def()
		if !em.IsEnabled() {
			continue
		}
		sides, err := backfillSides(em, SideBoth)
		if err != nil {
			continue // both directions off: nothing would travel
		}
		res := BackfillResult{Map: em.Name}
		for _, side := range sides {
			key := string(side) + ":" + em.FHIRType
			if side == queues.SideCRM {
				key = string(side) + ":" + em.CRMEntitySet
			}
			if walked[key] {
				continue
			}
			walked[key] = true
			n, err := w.walk(ctx, em, side)
			if side == queues.SideFHIR {
				res.FHIR = n
			} else {
				res.CRM = n
			}
			if err != nil {
				return append(out, res), fmt.Errorf("reconcile of %s: %w", em.Name, err)
			}
		}
		out = append(out, res)
	}
	total := 0
	for _, x := range out {
		total += x.Total()
	}
	r.log.Info("reconcile enqueued notices", "maps", len(out), "notices", total, "map_version", set.Version())
	return out, nil
}
