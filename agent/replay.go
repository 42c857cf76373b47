package agent

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/fhirsync/fhirsync/logs"
	"github.com/fhirsync/fhirsync/maps"
	"github.com/fhirsync/fhirsync/queues"
)

// Replay kinds, the label of fhirsync_replays_total.
const (
	ReplayRecord     = "record"      // notices for records named one by one
	ReplayLogQuery   = "log_query"   // notices for the source records of logged decisions
	ReplayDeadLetter = "dead_letter" // dead letters redriven to their queue
)

// Audit actions of replays.
const (
	AuditReplayRecords     = "replay.records"
	AuditReplayDeadLetters = "replay.deadletters"
	// AuditReplayDryRun records a dry run: what was asked and how many
	// records it found. Nothing was sent.
	AuditReplayDryRun = "replay.dry_run"
)

// DefaultMaxRedrives is how many times a dead letter may be redriven before
// it is held back as a loop.
const DefaultMaxRedrives = 3

// ErrBadRecordRef means a record reference is not side:Type/id.
var ErrBadRecordRef = errors.New("invalid record reference")

// decisionSearcher pages through the sync log.
type decisionSearcher interface {
	Search(ctx context.Context, f logs.Filter, after string, limit int) (logs.Page, error)
}

// auditor records who replayed what.
type auditor interface {
	AppendAudit(ctx context.Context, e logs.AuditEntry) error
}

// deadLetters lists and redrives a queue's dead letters.
type deadLetters interface {
	PeekDeadLetters(ctx context.Context, after int64, max int) ([]queues.DeadLetter, error)
	Redrive(ctx context.Context, seqs []int64, maxRedrives int) (int, error)
}

// mapSource gives the published map set a dry run predicts with.
type mapSource interface {
	Current(ctx context.Context) (*maps.Set, error)
}

// replayQueue is a change queue as replay uses it.
type replayQueue interface {
	sender
	deadLetters
}

// ReplayDeps are what a Replayer reads and writes.
type ReplayDeps struct {
	Logs        decisionSearcher
	Audit       auditor
	FHIRChanges replayQueue
	CRMChanges  replayQueue
	// Maps, when set, lets a dry run say which entity maps would handle
	// each record and the decision their gates give (see ReplayPlan).
	Maps mapSource
	// Registry, when set, receives fhirsync_replays_total.
	Registry prometheus.Registerer
	Logger   *slog.Logger
}

// Replayer re-sends changes on operator request: records by reference, the
// source records of logged decisions, or dead letters. Every replay that
// sends something is counted and written to the audit trail.
type Replayer struct {
	deps    ReplayDeps
	replays *prometheus.CounterVec
	log     *slog.Logger
	now     func() time.Time
}

// NewReplayer wires a replayer. Logs is needed for log queries, Audit and
// both queues always.
func NewReplayer(deps ReplayDeps) (*Replayer, error) {
	if deps.Audit == nil || deps.FHIRChanges == nil || deps.CRMChanges == nil {
		return nil, errors.New("replayer: Audit, FHIRChanges and CRMChanges are required")
	}
	r := &Replayer{deps: deps, log: deps.Logger, now: time.Now}
	if r.log == nil {
		r.log = slog.New(slog.DiscardHandler)
	}
	r.replays = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "fhirsync_replays_total",
		Help: "Records and dead letters sent again by operators, by kind (record, log_query, dead_letter).",
	}, []string{"kind"})
	if deps.Registry != nil {
		if err := deps.Registry.Register(r.replays); err != nil {
			var are prometheus.AlreadyRegisteredError
			if !errors.As(err, &are) {
				return nil, fmt.Errorf("replayer: registering metrics: %w", err)
			}
			existing, ok := are.ExistingCollector.(*prometheus.CounterVec)
			if !ok {
				return nil, fmt.Errorf("replayer: registering metrics: %w", err)
			}
			r.replays = existing
		}
	}
	return r, nil
}

// ParseRecordRef reads a record reference such as fhir:Patient/123 or
// crm:contact/<guid> into a replay notice.
func ParseRecordRef(s string) (queues.Notice, error) {
	side, rest, ok := strings.Cut(s, ":")
	typ, id, ok2 := strings.Cut(rest, "/")
	if !ok || !ok2 {
		return queues.Notice{}, fmt.Errorf("%w %q: want fhir:Type/id or crm:entity/id", ErrBadRecordRef, clip(s, 80))
	}
	n := queues.Notice{V: queues.NoticeVersion, Side: queues.Side(side), Type: typ, ID: id,
		Event: queues.EventChanged, Origin: OriginReplay}
	if err := n.Validate(); err != nil {
		return queues.Notice{}, fmt.Errorf("%w %q: %v", ErrBadRecordRef, clip(s, 80), err)
	}
	return n, nil
}

// clip shortens s to n bytes for messages and summaries.
func clip(s string, n int) string {
	if len(s) > n {
		return strings.ToValidUTF8(s[:n], "") + "…"
	}
	return s
}

// ReplayOptions apply to every replay.
type ReplayOptions struct {
	// Actor is who asked, for the audit trail (e.g. cli:alice). Required
	// unless DryRun.
	Actor string
	// DryRun finds what would be sent and sends nothing.
	DryRun bool
}

// ReplayResult reports a replay of records.
type ReplayResult struct {
	// Refs are the records (side:Type/id), in the order found.
	Refs []string
	// Sent is how many notices were enqueued (0 in a dry run).
	Sent int
	// Truncated is true when a log query matched more records than its
	// limit.
	Truncated bool
	DryRun    bool
	// Plans say, in a dry run with ReplayDeps.Maps set, what each record
	// of Refs would meet (in the same order).
	Plans []ReplayPlan
}

// ReplayPlan is a dry run's account of one record: which entity maps would
// take it and the decision it would get, as far as that is known without
// reading the record.
type ReplayPlan struct {
	Ref string `json:"ref"`
	// Maps are the published entity maps whose gates are open for the
	// record's type and side, or, when none is, the map whose gate closed.
	Maps []string `json:"maps"`
	// MapVersion is the published map set's version.
	MapVersion int `json:"map_version"`
	// Outcome and Reason are the decision the map gates give (no map,
	// map disabled, direction off): what the agent will record. Both are
	// empty when the gates are open and the record's content decides.
	Outcome logs.Outcome    `json:"outcome,omitempty"`
	Reason  logs.ReasonCode `json:"reason,omitempty"`
	// Message says the decision in a sentence, or what the agent will do
	// when the record decides.
	Message string `json:"message"`
	// Last is the record's latest logged decision (for a log query: the
	// latest one matching it), when there is one.
	Last *ReplayLast `json:"last,omitempty"`
}

// ReplayLast is the decision a record last got: no values, ids and codes.
type ReplayLast struct {
	ID        int64           `json:"id"`
	Time      time.Time       `json:"time"`
	EntityMap string          `json:"entity_map,omitempty"`
	Outcome   logs.Outcome    `json:"outcome"`
	Reason    logs.ReasonCode `json:"reason"`
}

// maxLastLookups bounds the log lookups of a dry run by record.
const maxLastLookups = 500

// plan predicts what the replay notices ns would meet. last holds the
// latest decision known per ref; refs without one are looked up in the
// log (at most maxLastLookups).
func (r *Replayer) plan(ctx context.Context, ns []queues.Notice, last map[string]*ReplayLast) ([]ReplayPlan, error) {
	if r.deps.Maps == nil {
		return nil, nil
	}
	set, err := r.deps.Maps.Current(ctx)
	if err != nil && !errors.Is(err, maps.ErrNotFound) {
		return nil, fmt.Errorf("reading the published maps: %w", err)
	}
	lookups := 0
	plans := make([]ReplayPlan, 0, len(ns))
	for _, n := range ns {
		p := ReplayPlan{Ref: n.Ref(), Last: last[n.Ref()]}
		dir := logs.FHIRToCRM
		if n.Side == queues.SideCRM {
			dir = logs.CRMToFHIR
		}
		var cands []*maps.Mapping
		if set != nil {
			p.MapVersion = set.Version()
			cands = setView{set}.candidates(n.Side, n.Type)
		}
		open, closed, closedMap := gates(cands, n.Side, dir)
		switch {
		case len(cands) == 0:
			p.Outcome, p.Reason = logs.OutcomeSkipped, "no_entity_map"
			p.Message = fmt.Sprintf("No published entity map covers %s %s.", n.Side, n.Type)
		case len(open) == 0:
			p.Maps = []string{closedMap}
			p.Outcome, p.Reason, p.Message = closed.outcome, closed.reason, closed.message
		default:
			for _, m := range open {
				p.Maps = append(p.Maps, m.Name())
			}
			from, to := "the FHIR server", "the CRM"
			if n.Side == queues.SideCRM {
				from, to = "the CRM", "the FHIR server"
			}
			p.Message = fmt.Sprintf("Re-read from %s and mapped by %s: sent to %s when a mapped value differs there, "+
				"skipped as unchanged when none does, skipped as source_gone or deleted when the record is gone.",
				from, strings.Join(p.Maps, ", "), to)
		}
		if p.Last == nil && r.deps.Logs != nil && lookups < maxLastLookups {
			lookups++
			page, err := r.deps.Logs.Search(ctx, logs.Filter{Record: n.ID, RecordType: n.Type, Direction: dir}, "", 1)
			if err != nil {
				return nil, fmt.Errorf("reading the last decision of %s: %w", n.Ref(), err)
			}
			if len(page.Decisions) > 0 {
				p.Last = lastOf(page.Decisions[0])
			}
		}
		plans = append(plans, p)
	}
	return plans, nil
}

func lastOf(d logs.Decision) *ReplayLast {
	return &ReplayLast{ID: d.ID, Time: d.Time, EntityMap: d.EntityMap, Outcome: d.Outcome, Reason: d.Reason}
}

// Records enqueues a replay notice for each record reference.
func (r *Replayer) Records(ctx context.Context, refs []string, opts ReplayOptions) (ReplayResult, error) {
	var ns []queues.Notice
	for _, s := range refs {
		n, err := ParseRecordRef(s)
		if err != nil {
			return ReplayResult{DryRun: opts.DryRun}, err
		}
		ns = append(ns, n)
	}
	return r.send(ctx, ReplayRecord, ns, nil, false, opts, "records "+strings.Join(refs, ", "))
}

// LogQuery says which decisions' source records to replay.
type LogQuery struct {
	Filter logs.Filter
	// Limit bounds the number of distinct records (default 10,000); the
	// rest are left out and the result says so.
	Limit int
}

// FromLog enqueues one replay notice per distinct source record of the
// decisions matching q.
func (r *Replayer) FromLog(ctx context.Context, q LogQuery, opts ReplayOptions) (ReplayResult, error) {
	if r.deps.Logs == nil {
		return ReplayResult{DryRun: opts.DryRun}, errors.New("replay from the log: no sync log")
	}
	if q.Limit <= 0 {
		q.Limit = 10000
	}
	seen := map[string]bool{}
	last := map[string]*ReplayLast{}
	var ns []queues.Notice
	truncated := false
	after := ""
walk:
	for {
		page, err := r.deps.Logs.Search(ctx, q.Filter, after, logs.MaxPageSize)
		if err != nil {
			return ReplayResult{DryRun: opts.DryRun}, fmt.Errorf("searching the sync log: %w", err)
		}
		for _, d := range page.Decisions {
			n, ok := sourceNotice(d)
			if !ok || seen[n.Ref()] {
				continue
			}
			if len(ns) == q.Limit {
				truncated = true
				break walk
			}
			seen[n.Ref()] = true
			last[n.Ref()] = lastOf(d)
			ns = append(ns, n)
		}
		if page.Next == "" {
			break
		}
		after = page.Next
	}
	return r.send(ctx, ReplayLogQuery, ns, last, truncated, opts, describeFilter(q.Filter))
}

// sourceNotice is the replay notice for a decision's source record; false
// when the decision names none (an undecodable message).
func sourceNotice(d logs.Decision) (queues.Notice, bool) {
	side := queues.SideFHIR
	if d.Direction == logs.CRMToFHIR {
		side = queues.SideCRM
	}
	n := queues.Notice{V: queues.NoticeVersion, Side: side, Type: d.Source.Type, ID: d.Source.ID,
		Event: queues.EventChanged, Origin: OriginReplay}
	if n.Validate() != nil {
		return queues.Notice{}, false
	}
	return n, true
}

// describeFilter summarises a log filter for the audit trail: ids and
// codes only (a business key value is never written).
func describeFilter(f logs.Filter) string {
	var parts []string
	add := func(k, v string) {
		if v != "" {
			parts = append(parts, k+"="+v)
		}
	}
	add("record", f.Record)
	add("record_type", f.RecordType)
	add("map", f.EntityMap)
	add("outcome", string(f.Outcome))
	add("reason", string(f.Reason))
	add("direction", string(f.Direction))
	add("message_id", f.MessageID)
	if f.BusinessKey.Name != "" {
		add("business_key", f.BusinessKey.Name)
	}
	if !f.From.IsZero() {
		add("from", f.From.UTC().Format(time.RFC3339))
	}
	if !f.To.IsZero() {
		add("to", f.To.UTC().Format(time.RFC3339))
	}
	return "log query " + strings.Join(parts, " ")
}

// send enqueues ns (one ChangedAt for all, so each is a new message that
// no earlier notice deduplicates), then counts and audits the replay.
func (r *Replayer) send(ctx context.Context, kind string, ns []queues.Notice, last map[string]*ReplayLast, truncated bool, opts ReplayOptions, what string) (ReplayResult, error) {
	res := ReplayResult{DryRun: opts.DryRun, Truncated: truncated}
	for _, n := range ns {
		res.Refs = append(res.Refs, n.Ref())
	}
	if opts.DryRun {
		plans, err := r.plan(ctx, ns, last)
		if err != nil {
			return res, err
		}
		res.Plans = plans
		if opts.Actor != "" {
			r.record(ctx, kind, AuditReplayDryRun, "queue", "", opts.Actor,
				fmt.Sprintf("%s (%d records)", clip(what, 1000), len(ns)), "dry run: nothing sent", 0)
		}
		return res, nil
	}
	if len(ns) == 0 {
		return res, nil
	}
	if opts.Actor == "" {
		return res, errors.New("replay: the actor is required for the audit trail")
	}
	at := r.now().UTC()
	bySide := map[queues.Side][]queues.Message{}
	for _, n := range ns {
		n.ChangedAt = at
		msg, err := n.Message()
		if err != nil {
			return res, fmt.Errorf("replaying %s: %w", n.Ref(), err)
		}
		bySide[n.Side] = append(bySide[n.Side], msg)
	}
	var sendErr error
	for _, side := range []queues.Side{queues.SideFHIR, queues.SideCRM} {
		q := r.deps.FHIRChanges
		if side == queues.SideCRM {
			q = r.deps.CRMChanges
		}
		for batch := range slices.Chunk(bySide[side], 200) {
			if err := q.Send(ctx, batch...); err != nil {
				sendErr = fmt.Errorf("enqueuing %d %s replay notices: %w", len(batch), side, err)
				break
			}
			res.Sent += len(batch)
		}
		if sendErr != nil {
			break
		}
	}
	r.record(ctx, kind, AuditReplayRecords, "queue", "", opts.Actor,
		fmt.Sprintf("%s (%d records)", clip(what, 1000), len(ns)),
		fmt.Sprintf("%d notices sent (%s)", res.Sent, kind), res.Sent)
	return res, sendErr
}

// record counts a replay and appends it to the audit trail. A failed audit
// append is logged: the messages are already on their way.
func (r *Replayer) record(ctx context.Context, kind, action, objType, objID, actor, before, after string, n int) {
	if n > 0 {
		r.replays.WithLabelValues(kind).Add(float64(n))
	}
	actx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 10*time.Second)
	defer cancel()
	err := r.deps.Audit.AppendAudit(actx, logs.AuditEntry{Actor: actor, Action: action, ObjectType: objType,
		ObjectID: objID, Before: before, After: after})
	if err != nil {
		r.log.Error("recording a replay in the audit trail failed", "action", action, "kind", kind, "count", n, "error", err)
	}
	r.log.Info("replay", "kind", kind, "actor", actor, "count", n)
}

// DeadLetterQuery says which dead letters to redrive.
type DeadLetterQuery struct {
	// Side narrows to one queue: queues.SideFHIR (the FHIR changes queue)
	// or queues.SideCRM; empty means both.
	Side queues.Side
	// Reason, when set, matches the dead-letter reason exactly.
	Reason string
	// MaxRedrives holds back a message already redriven this many times
	// (default DefaultMaxRedrives).
	MaxRedrives int
}

// DeadLetterRef names one dead letter without its content.
type DeadLetterRef struct {
	Side     queues.Side // which queue
	Sequence int64
	// Record is the notice's record reference, or the message's session
	// key when the body is not a fhirsync notice.
	Record       string
	Reason       string
	RedriveCount int
}

// DeadLetterResult reports a redrive.
type DeadLetterResult struct {
	// Matched are the dead letters the query selected that may be
	// redriven; Held those already redriven MaxRedrives times.
	Matched, Held []DeadLetterRef
	// Redriven is how many went back to their queue (0 in a dry run).
	Redriven int
	DryRun   bool
}

// DeadLetters redrives the dead letters matching q, leaving those at the
// redrive limit in place. An error wrapping queues.ErrRedriveLimit means
// some were held back by the queue itself.
func (r *Replayer) DeadLetters(ctx context.Context, q DeadLetterQuery, opts ReplayOptions) (DeadLetterResult, error) {
	res := DeadLetterResult{DryRun: opts.DryRun}
	if q.MaxRedrives <= 0 {
		q.MaxRedrives = DefaultMaxRedrives
	}
	sides := []queues.Side{queues.SideFHIR, queues.SideCRM}
	switch q.Side {
	case "":
	case queues.SideFHIR, queues.SideCRM:
		sides = []queues.Side{q.Side}
	default:
		return res, fmt.Errorf("unknown side %q (want fhir or crm)", q.Side)
	}
	seqs := map[queues.Side][]int64{}
	for _, side := range sides {
		dl := r.queue(side)
		var after int64
		for {
			batch, err := dl.PeekDeadLetters(ctx, after, 500)
			if err != nil {
				return res, fmt.Errorf("listing %s dead letters: %w", side, err)
			}
			for _, d := range batch {
				after = max(after, d.SequenceNumber)
				if q.Reason != "" && d.Reason != q.Reason {
					continue
				}
				ref := DeadLetterRef{Side: side, Sequence: d.SequenceNumber, Record: deadLetterRecord(d),
					Reason: d.Reason, RedriveCount: d.RedriveCount}
				if d.RedriveCount >= q.MaxRedrives {
					res.Held = append(res.Held, ref)
					continue
				}
				res.Matched = append(res.Matched, ref)
				seqs[side] = append(seqs[side], d.SequenceNumber)
			}
			if len(batch) < 500 {
				break
			}
		}
	}
	if opts.DryRun || len(res.Matched) == 0 {
		return res, nil
	}
	if opts.Actor == "" {
		return res, errors.New("replay: the actor is required for the audit trail")
	}
	var errs []error
	for _, side := range sides {
		for chunk := range slices.Chunk(seqs[side], 500) {
			n, err := r.queue(side).Redrive(ctx, chunk, q.MaxRedrives)
			res.Redriven += n
			if err != nil {
				errs = append(errs, err)
			}
		}
	}
	what := "dead letters"
	if q.Side != "" {
		what += " of the " + string(q.Side) + " changes queue"
	}
	if q.Reason != "" {
		what += " with reason " + q.Reason
	}
	r.record(ctx, ReplayDeadLetter, AuditReplayDeadLetters, "queue", string(q.Side), opts.Actor,
		fmt.Sprintf("%s: %d matched, %d held at the redrive limit of %d", clip(what, 500), len(res.Matched), len(res.Held), q.MaxRedrives),
		fmt.Sprintf("%d redriven", res.Redriven), res.Redriven)
	return res, errors.Join(errs...)
}

func (r *Replayer) queue(side queues.Side) replayQueue {
	if side == queues.SideCRM {
		return r.deps.CRMChanges
	}
	return r.deps.FHIRChanges
}

// deadLetterRecord names a dead letter's record by id, never by content.
func deadLetterRecord(d queues.DeadLetter) string {
	if n, err := queues.DecodeNotice(d.Body); err == nil {
		return n.Ref()
	}
	return d.SessionKey
}
