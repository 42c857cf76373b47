package main

import (
	"context"
	"fmt"
	"io"
	"os/user"
	"sync"
	"time"

	"github.com/fhirsync/fhirsync/agent"
	"github.com/fhirsync/fhirsync/logs"
	"github.com/fhirsync/fhirsync/queues"
)

func runBackfill(ctx context.Context, e *env, args []string) error {
	fs := e.newFlagSet("backfill", "backfill --map NAME [--side fhir|crm|both] [--dry-run] [--fresh] [--max-queued N] | backfill --status", `
Walk every record of one entity map and enqueue a change notice for each, so
the agent re-reads and syncs it: FHIR resources of the map's type on the
fhir-changes queue, CRM rows of its entity set on the crm-changes queue. With
--side both (the default) each side whose direction is on is walked.
--dry-run lists the records (by id) without sending anything. A running
fhirsync serve processes the notices.

The walk saves its position in the database after each page. If the process
dies (a crash, kill -9, a reboot), running the same command again resumes
that walk from its last checkpoint: at most one page is enqueued twice, and
the agent's correlation keeps each record to one target row. --fresh starts
from the first record instead (the unfinished walk is marked abandoned).
Only one process walks a map's side at a time. A restarted backfill takes the
walk over at once from a process of this host that has exited, and waits up
to about 30 seconds for the lease of one elsewhere to lapse.

The walk waits whenever --max-queued notices stand unprocessed on the queue,
so a long backfill never fills the queue: when the agent slows (the CRM
answers 429, an endpoint is down) the walk slows with it. Progress (records
enqueued, of how many, rate, time left; counts only) goes to stderr every
--progress interval and to the database, where the admin app's Backfills page
and backfill --status show it. Processed is what the agent has taken off the
queue (enqueued less the notices waiting there); the rate is that pace over
the last minute, and the time left is until the agent has processed the last
record.`)
	mapName := fs.String("map", "", "entity map `name` (required)")
	side := fs.String("side", "both", "which records to walk: fhir, crm or both")
	dryRun := fs.Bool("dry-run", false, "list what would be enqueued and send nothing")
	batch := fs.Int("batch", 200, "notices per send, and the FHIR search page size")
	fresh := fs.Bool("fresh", false, "start from the first record even if an unfinished walk of the map is stored")
	maxQueued := fs.Int("max-queued", agent.DefaultBackfillMaxQueued, "wait while this many notices stand unprocessed on the queue (0: no bound)")
	every := fs.Duration("progress", 10*time.Second, "how often to print progress to stderr (0: never)")
	status := fs.Bool("status", false, "list the stored backfill runs and their progress, and walk nothing")
	if done, err := parseFlags(fs, args); done {
		return err
	}
	if fs.NArg() > 0 {
		return usageErrorf("backfill takes no arguments")
	}
	if *status {
		return backfillStatus(ctx, e)
	}
	if *mapName == "" {
		return usageErrorf("backfill needs --map NAME")
	}
	var s queues.Side
	switch *side {
	case "fhir":
		s = queues.SideFHIR
	case "crm":
		s = queues.SideCRM
	case "both":
		s = agent.SideBoth
	default:
		return usageErrorf("--side %q is not fhir, crm or both", *side)
	}
	if *batch <= 0 || *batch > 1000 {
		return usageErrorf("--batch must be between 1 and 1000")
	}
	if *maxQueued < 0 {
		return usageErrorf("--max-queued must be 0 (no bound) or more")
	}
	if *maxQueued > 0 && *maxQueued < *batch {
		return usageErrorf("--max-queued must be at least --batch, or 0")
	}
	cfg, err := e.config()
	if err != nil {
		return err
	}
	defer e.close()
	db, err := e.openDB(ctx)
	if err != nil {
		return err
	}
	svc, err := buildServices(ctx, cfg, db, nil, e.logger())
	if err != nil {
		return err
	}
	defer svc.closeQueues(ctx)
	mq := *maxQueued
	if mq == 0 {
		mq = -1 // the option's zero is the default bound
	}
	opts := agent.BackfillOptions{Map: *mapName, Side: s, DryRun: *dryRun, BatchSize: *batch, Fresh: *fresh, MaxQueued: mq}
	if *dryRun {
		opts.OnNotice = func(n queues.Notice) { fmt.Fprintf(e.stdout, "would enqueue %s\n", n.Ref()) }
	}
	var pr *progressPrinter
	if !*dryRun && *every > 0 {
		pr = newProgressPrinter(e.stderr, *every)
		opts.OnProgress = pr.update
		defer pr.stop()
	}
	res, err := agent.Backfill(ctx, opts, svc.backfillDeps())
	if pr != nil {
		pr.stop()
	}
	verb := "enqueued"
	if *dryRun {
		verb = "would be enqueued (dry run, nothing sent)"
	}
	if res.Resumed {
		verb += ", resumed from a checkpoint"
	}
	for _, side := range res.NotWalked {
		verb += fmt.Sprintf("; the %s side had finished and was not walked again (--fresh walks it)", side)
	}
	fmt.Fprintf(e.stdout, "backfill of %s: %d FHIR notices (%s), %d CRM notices (%s) %s\n",
		*mapName, res.FHIR, cfg.Queue.FHIRChanges, res.CRM, cfg.Queue.CRMChanges, verb)
	if !*dryRun && res.Total() > 0 {
		if aerr := svc.logs.AppendAudit(context.WithoutCancel(ctx), logs.AuditEntry{Actor: cliActor(e), Action: "backfill.map",
			ObjectType: "entity_map", ObjectID: *mapName, Before: "side " + *side,
			After: fmt.Sprintf("%d FHIR and %d CRM notices enqueued", res.FHIR, res.CRM)}); aerr != nil {
			e.logger().Error("recording the backfill in the audit trail failed", "map_id", *mapName, "error", aerr)
		}
	}
	return err
}

// backfillDeps hands the configured endpoints and queues to a backfill or a
// reconcile. An endpoint that is not configured stays a nil interface.
func (s *services) backfillDeps() agent.BackfillDeps {
	d := agent.BackfillDeps{DB: s.db, Maps: s.maps, FHIRChanges: s.fhirQ, CRMChanges: s.crmQ, Logger: s.log}
	if s.fhir != nil {
		d.FHIR = s.fhir
	}
	if s.crm != nil {
		d.CRM = s.crm
	}
	return d
}

// closeQueues releases the queues a one-shot command opened.
func (s *services) closeQueues(ctx context.Context) {
	for _, q := range []queues.Queue{s.fhirQ, s.crmQ} {
		if q != nil {
			_ = q.Close(context.WithoutCancel(ctx))
		}
	}
	s.flushTraces(ctx) // the notices' spans
}

// newReconciler builds the scheduled reconcile of every enabled entity map
// (off when schedule is empty). serve runs it beside the agent.
func (s *services) newReconciler(schedule string) (*agent.Reconciler, error) {
	return agent.NewReconciler(agent.ReconcilerConfig{Schedule: schedule, Holder: holder()}, s.backfillDeps())
}

// cliActor names the operator of a command in the audit trail.
func cliActor(e *env) string {
	name := ""
	if u, err := user.Current(); err == nil {
		name = u.Username
	}
	if name == "" {
		name = e.getenv("USER")
	}
	if name == "" {
		name = "unknown"
	}
	return "cli:" + name
}

// progressPrinter prints a backfill's progress to w every interval, and a
// last line when it stops. Lines hold counts and times only, never record
// content.
type progressPrinter struct {
	w     io.Writer
	mu    sync.Mutex
	last  agent.BackfillProgress
	have  bool
	shown agent.BackfillProgress
	done  chan struct{}
	once  sync.Once
	wg    sync.WaitGroup
}

func newProgressPrinter(w io.Writer, every time.Duration) *progressPrinter {
	p := &progressPrinter{w: w, done: make(chan struct{})}
	p.wg.Add(1)
	go func() {
		defer p.wg.Done()
		t := time.NewTicker(every)
		defer t.Stop()
		for {
			select {
			case <-p.done:
				return
			case <-t.C:
				p.print()
			}
		}
	}()
	return p
}

// update records the newest progress; a new side or the end of one is
// printed at once.
func (p *progressPrinter) update(pr agent.BackfillProgress) {
	p.mu.Lock()
	prev, had := p.last, p.have
	p.last, p.have = pr, true
	p.mu.Unlock()
	if !had || prev.Side != pr.Side || prev.RunID != pr.RunID || (pr.State != agent.BackfillRunning && prev.State == agent.BackfillRunning) {
		p.print()
	}
}

func (p *progressPrinter) print() {
	p.mu.Lock()
	defer p.mu.Unlock()
	if !p.have || p.shown == p.last {
		return
	}
	p.shown = p.last
	fmt.Fprintln(p.w, formatProgress(p.last))
}

func (p *progressPrinter) stop() {
	p.once.Do(func() {
		close(p.done)
		p.wg.Wait()
		p.print()
	})
}

// formatProgress renders one progress line.
func formatProgress(p agent.BackfillProgress) string {
	var b []byte
	b = fmt.Appendf(b, "backfill %s %s: %d", p.Map, p.Side, p.Done)
	if p.Total >= 0 {
		b = fmt.Appendf(b, " of %d (%.1f%%)", p.Total, p.Percent())
	} else {
		b = fmt.Appendf(b, " of an unknown total")
	}
	b = fmt.Appendf(b, " enqueued, %d processed, %.0f records/s", p.Processed, p.Rate)
	switch {
	case p.State == agent.BackfillDone:
		b = fmt.Appendf(b, ", done")
	case p.State != agent.BackfillRunning:
		b = fmt.Appendf(b, ", %s", p.State)
	case p.Left >= 0:
		b = fmt.Appendf(b, ", about %s left", p.Left.Round(time.Second))
	}
	b = fmt.Appendf(b, "; %d waiting on the queue", p.Queued)
	if p.Waiting {
		b = fmt.Appendf(b, " (paused for the agent or the source)")
	}
	if p.Resumed {
		b = fmt.Appendf(b, "; resumed from a checkpoint")
	}
	return string(b)
}

// backfillStatus prints the stored backfill runs, newest first.
func backfillStatus(ctx context.Context, e *env) error {
	if _, err := e.config(); err != nil {
		return err
	}
	defer e.close()
	db, err := e.openDB(ctx)
	if err != nil {
		return err
	}
	runs, err := agent.BackfillRuns(ctx, db, 20)
	if err != nil {
		return err
	}
	if len(runs) == 0 {
		fmt.Fprintln(e.stdout, "no backfill runs")
		return nil
	}
	for _, r := range runs {
		total := "?"
		if r.Total >= 0 {
			total = fmt.Sprint(r.Total)
		}
		fmt.Fprintf(e.stdout, "%s  %-24s %-4s %-11s %d of %s  processed %d  %.0f/s  resumes %d  updated %s\n", r.ID, r.Map, r.Side, r.State,
			r.Done, total, max(r.Done-r.Queued, 0), r.Rate, r.Resumes, r.UpdatedAt.UTC().Format(time.RFC3339))
	}
	return nil
}
