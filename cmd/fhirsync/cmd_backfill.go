package main

import (
	"context"
	"fmt"
	"os/user"

	"github.com/fhirsync/fhirsync/agent"
	"github.com/fhirsync/fhirsync/logs"
	"github.com/fhirsync/fhirsync/queues"
)

func runBackfill(ctx context.Context, e *env, args []string) error {
	fs := e.newFlagSet("backfill", "backfill --map NAME [--side fhir|crm|both] [--dry-run]", `
Walk every record of one entity map and enqueue a change notice for each, so
the agent re-reads and syncs it: FHIR resources of the map's type on the
fhir-changes queue, CRM rows of its entity set on the crm-changes queue. With
--side both (the default) each side whose direction is on is walked.
--dry-run lists the records (by id) without sending anything. A running
fhirsync serve processes the notices.`)
	mapName := fs.String("map", "", "entity map `name` (required)")
	side := fs.String("side", "both", "which records to walk: fhir, crm or both")
	dryRun := fs.Bool("dry-run", false, "list what would be enqueued and send nothing")
	batch := fs.Int("batch", 200, "notices per send, and the FHIR search page size")
	if done, err := parseFlags(fs, args); done {
		return err
	}
	if fs.NArg() > 0 {
		return usageErrorf("backfill takes no arguments")
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
	opts := agent.BackfillOptions{Map: *mapName, Side: s, DryRun: *dryRun, BatchSize: *batch}
	if *dryRun {
		opts.OnNotice = func(n queues.Notice) { fmt.Fprintf(e.stdout, "would enqueue %s\n", n.Ref()) }
	}
	res, err := agent.Backfill(ctx, opts, svc.backfillDeps())
	verb := "enqueued"
	if *dryRun {
		verb = "would be enqueued (dry run, nothing sent)"
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
