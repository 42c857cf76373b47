package main

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"gorm.io/gorm"

	"github.com/fhirsync/fhirsync/agent"
	"github.com/fhirsync/fhirsync/logs"
	"github.com/fhirsync/fhirsync/maps"
	"github.com/fhirsync/fhirsync/queues"
	"github.com/fhirsync/fhirsync/storage"
)

func runReplay(ctx context.Context, e *env, args []string) error {
	fs := e.newFlagSet("replay", "replay (--record REF ... | --outcome O --reason R --map NAME --since 24h ... | --dead-letters [--queue Q] [--reason R]) [--dry-run]", `
Send changes through the agent again, in one of three ways:

  --record fhir:Patient/123 or crm:contact/<guid> (repeatable): one notice per
      record, which the agent re-reads and syncs.
  a sync log query (--outcome, --reason, --map, --direction, --since): one
      notice per distinct source record of the matching decisions.
  --dead-letters: redrive dead letters (of --queue, with --reason) to their
      queue; a message already redriven --max-redrives times is held back.

--dry-run shows what would be sent (record ids only) and sends nothing. Every
replay is written to the audit trail with the operator's name.`)
	var records []string
	fs.Func("record", "record `ref` to replay, fhir:Type/id or crm:entity/id (repeatable)", func(s string) error {
		records = append(records, s)
		return nil
	})
	outcome := fs.String("outcome", "", "log query: decision outcome (sent, skipped, held, failed, dead_lettered)")
	reason := fs.String("reason", "", "log query: reason code; with --dead-letters: dead-letter reason")
	mapName := fs.String("map", "", "log query: entity map `name`")
	direction := fs.String("direction", "", "log query: fhir_to_crm or crm_to_fhir")
	since := fs.String("since", "", "log query: decisions newer than this `age` (e.g. 90m, 24h, 7d)")
	limit := fs.Int("limit", 10000, "log query: at most this many records")
	dead := fs.Bool("dead-letters", false, "redrive dead letters instead of sending notices")
	queue := fs.String("queue", "", "with --dead-letters: only this queue (fhir-changes or crm-changes)")
	maxRedrives := fs.Int("max-redrives", agent.DefaultMaxRedrives, "with --dead-letters: hold back messages redriven this many times")
	dryRun := fs.Bool("dry-run", false, "show what would be sent and send nothing")
	if done, err := parseFlags(fs, args); done {
		return err
	}
	if fs.NArg() > 0 {
		return usageErrorf("replay takes no arguments (records go in --record)")
	}
	query := *outcome != "" || *mapName != "" || *direction != "" || *since != "" || (*reason != "" && !*dead)
	modes := 0
	for _, on := range []bool{len(records) > 0, query, *dead} {
		if on {
			modes++
		}
	}
	switch {
	case modes == 0:
		return usageErrorf("replay needs --record, a log query (--outcome, --reason, --map, --direction, --since) or --dead-letters")
	case modes > 1:
		return usageErrorf("replay takes one of --record, a log query or --dead-letters, not several")
	case *queue != "" && !*dead:
		return usageErrorf("--queue applies only with --dead-letters")
	case *maxRedrives <= 0:
		return usageErrorf("--max-redrives must be positive")
	case *limit <= 0:
		return usageErrorf("--limit must be positive")
	}
	for _, r := range records {
		if _, err := agent.ParseRecordRef(r); err != nil {
			return usageErrorf("--record: %v", err)
		}
	}
	var filter logs.Filter
	if query {
		filter = logs.Filter{Outcome: logs.Outcome(*outcome), Reason: logs.ReasonCode(*reason), EntityMap: *mapName,
			Direction: logs.Direction(*direction)}
		if *since != "" {
			age, err := parseAge(*since)
			if err != nil {
				return usageErrorf("--since: %v", err)
			}
			filter.From = time.Now().Add(-age)
		}
	}

	cfg, err := e.config()
	if err != nil {
		return err
	}
	var side queues.Side
	switch *queue {
	case "":
	case cfg.Queue.FHIRChanges, "fhir":
		side = queues.SideFHIR
	case cfg.Queue.CRMChanges, "crm":
		side = queues.SideCRM
	default:
		return usageErrorf("--queue %q is not %s or %s", *queue, cfg.Queue.FHIRChanges, cfg.Queue.CRMChanges)
	}
	defer e.close()
	db, err := e.openExistingDB(ctx, cfg)
	if err != nil {
		return err
	}
	lc := cfg.Logs
	lc.Logger = e.logger()
	store, err := logs.New(db, lc, nil)
	if err != nil {
		return err
	}
	fq, err := openQueue(cfg, db, cfg.Queue.FHIRChanges)
	if err != nil {
		return err
	}
	defer fq.Close(context.WithoutCancel(ctx))
	cq, err := openQueue(cfg, db, cfg.Queue.CRMChanges)
	if err != nil {
		return err
	}
	defer cq.Close(context.WithoutCancel(ctx))
	ms, err := maps.New(db, maps.Options{Logger: e.logger()})
	if err != nil {
		return err
	}
	r, err := agent.NewReplayer(agent.ReplayDeps{Logs: store, Audit: store, FHIRChanges: fq, CRMChanges: cq, Maps: ms, Logger: e.logger()})
	if err != nil {
		return err
	}
	opts := agent.ReplayOptions{Actor: cliActor(e), DryRun: *dryRun}

	if *dead {
		res, err := r.DeadLetters(ctx, agent.DeadLetterQuery{Side: side, Reason: *reason, MaxRedrives: *maxRedrives}, opts)
		queueName := func(s queues.Side) string {
			if s == queues.SideCRM {
				return cfg.Queue.CRMChanges
			}
			return cfg.Queue.FHIRChanges
		}
		if *dryRun {
			fmt.Fprintf(e.stdout, "dry run: would redrive %d dead letters (nothing sent)\n", len(res.Matched))
		} else {
			fmt.Fprintf(e.stdout, "redrove %d of %d dead letters\n", res.Redriven, len(res.Matched))
		}
		for _, d := range res.Matched {
			fmt.Fprintf(e.stdout, "  %s seq %d %s reason %s, redriven %d times before\n", queueName(d.Side), d.Sequence, orDash(d.Record), orDash(d.Reason), d.RedriveCount)
		}
		if len(res.Held) > 0 {
			fmt.Fprintf(e.stdout, "held back %d dead letters already redriven %d times:\n", len(res.Held), *maxRedrives)
			for _, d := range res.Held {
				fmt.Fprintf(e.stdout, "  %s seq %d %s reason %s\n", queueName(d.Side), d.Sequence, orDash(d.Record), orDash(d.Reason))
			}
		}
		if errors.Is(err, queues.ErrRedriveLimit) && res.Redriven > 0 {
			fmt.Fprintf(e.stderr, "some dead letters reached the redrive limit meanwhile: %v\n", oneLine(err.Error()))
			return nil
		}
		return err
	}

	var res agent.ReplayResult
	if len(records) > 0 {
		res, err = r.Records(ctx, records, opts)
	} else {
		res, err = r.FromLog(ctx, agent.LogQuery{Filter: filter, Limit: *limit}, opts)
		if errors.Is(err, logs.ErrBadFilter) {
			return usageErrorf("%v", err)
		}
	}
	if *dryRun {
		fmt.Fprintf(e.stdout, "dry run: would replay %d records (nothing sent)\n", len(res.Refs))
	} else {
		fmt.Fprintf(e.stdout, "replayed %d of %d records\n", res.Sent, len(res.Refs))
	}
	if res.Plans != nil {
		for _, p := range res.Plans {
			fmt.Fprintf(e.stdout, "  %s\tmaps %s\t%s\n", p.Ref, orDash(strings.Join(p.Maps, ",")), planDecision(p))
		}
	} else {
		for _, ref := range res.Refs {
			fmt.Fprintf(e.stdout, "  %s\n", ref)
		}
	}
	if res.Truncated {
		fmt.Fprintf(e.stdout, "more records matched; only the first %d were taken (raise --limit)\n", *limit)
	}
	return err
}

// openExistingDB opens the configured database without creating or
// migrating it: a replay only makes sense on the database serve uses, so
// a missing SQLite file (a command run in another directory) or a schema
// that is not this binary's is an error that says what to configure.
func (e *env) openExistingDB(ctx context.Context, cfg *Config) (*gorm.DB, error) {
	db, err := storage.Open(ctx, cfg.Database.URL, storage.Options{DataDir: cfg.DataDir, MaxOpenConns: cfg.Database.MaxOpenConns, MustExist: true,
		SQLiteSynchronous: cfg.Database.SQLiteSynchronous})
	if errors.Is(err, storage.ErrNoDatabase) {
		where := "database.url is not set, so the SQLite file in data_dir " + strconv.Quote(cfg.DataDir)
		if cfg.Database.URL != "" {
			where = "database.url names a SQLite file"
		}
		return nil, fmt.Errorf("%w; %s is looked for relative to the current directory. "+
			"Point --config (or FHIRSYNC_CONFIG) at the configuration serve uses, or set FHIRSYNC_DATABASE_URL", err, where)
	}
	if err != nil {
		return nil, err
	}
	e.closer = append(e.closer, func() error { return storage.Close(db) })
	if err := storage.Check(ctx, db); err != nil {
		return nil, fmt.Errorf("the configured database is not ready for a replay (%w); run fhirsync migrate, or check database.url", err)
	}
	return db, nil
}

// planDecision says in a few words what a dry run predicts for a record.
func planDecision(p agent.ReplayPlan) string {
	s := "decided by the record (re-read, mapped, compared with the target)"
	if p.Outcome != "" {
		s = fmt.Sprintf("would be %s: %s", p.Outcome, p.Reason)
	}
	if p.Last != nil {
		s += fmt.Sprintf("; last %s %s at %s", p.Last.Outcome, p.Last.Reason, p.Last.Time.UTC().Format(time.RFC3339))
	}
	return s
}

// parseAge reads a Go duration, or a whole number of days such as 7d.
func parseAge(s string) (time.Duration, error) {
	if days, ok := strings.CutSuffix(s, "d"); ok {
		n, err := strconv.Atoi(days)
		if err != nil || n <= 0 {
			return 0, fmt.Errorf("%q is not a positive number of days", s)
		}
		return time.Duration(n) * 24 * time.Hour, nil
	}
	d, err := time.ParseDuration(s)
	if err != nil || d <= 0 {
		return 0, fmt.Errorf("%q is not a positive duration (use e.g. 90m, 24h, 7d)", s)
	}
	return d, nil
}

func orDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

// newReplayer builds the replayer of a serving process, its
// fhirsync_replays_total counter registered on reg.
func (s *services) newReplayer(reg prometheus.Registerer) (*agent.Replayer, error) {
	return agent.NewReplayer(agent.ReplayDeps{Logs: s.logs, Audit: s.logs, FHIRChanges: s.fhirQ, CRMChanges: s.crmQ,
		Maps: s.maps, Registry: reg, Logger: s.log})
}
