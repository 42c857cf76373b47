package agent

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"time"
	"unicode/utf8"

	"go.opentelemetry.io/otel/trace"
	"gorm.io/gorm"

	"github.com/fhirsync/fhirsync/agent/crm"
	"github.com/fhirsync/fhirsync/logs"
	"github.com/fhirsync/fhirsync/maps"
	"github.com/fhirsync/fhirsync/queues"
)

// errGone means the record no longer exists at the source or target (404,
// 410, or a delete already applied).
var errGone = errors.New("record gone")

// record is one side's current state of a record as the pipeline sees it.
type record struct {
	Type    string
	ID      string
	Version string         // FHIR versionId or CRM ETag / versionnumber
	Data    map[string]any // generic JSON; never logged
	// Keys are business keys for the sync log (hashed there), e.g. MRN.
	Keys []logs.BusinessKey
}

// mapped is what a mapping step produced for the target.
type mapped struct {
	// Filtered names the filter that excluded the record; nothing else is
	// set then.
	Filtered string
	// Gated names the per-record gate that is off for this record.
	Gated   string
	Data    any      // the target-shaped output, opaque to the pipeline
	Changed []string // target field names whose values differ; empty = unchanged
	// ChangedAttrs names the attribute maps whose mapped value differs at
	// the target: what the field-level merge compares.
	ChangedAttrs []string
	// Rounded names the target fields whose mapped value the target
	// holds rounded to its precision (compared at that precision).
	Rounded []string
	// Declared says, per target field, how the map's round declaration
	// rounded the mapped value ("msemr_valuequantity rounded to 10
	// decimal places"): the target holds it rounded and it is compared
	// rounded.
	Declared []string
}

// written is the result of a target write.
type written struct {
	ID      string
	Version string
	Created bool
}

// sourceSide reads the current state of the record a notice names.
type sourceSide interface {
	// read returns errGone when the record does not exist.
	read(ctx context.Context, m *maps.Mapping, id string) (record, error)
}

// targetSide finds, writes and deletes the correlated target record.
type targetSide interface {
	// find returns the correlated target record, or errGone if none.
	find(ctx context.Context, m *maps.Mapping, src record, cached *link) (record, error)
	// write creates or updates the target (cur is nil to create).
	write(ctx context.Context, m *maps.Mapping, src record, cur *record, out mapped) (written, error)
	// remove deletes the target record.
	remove(ctx context.Context, m *maps.Mapping, cur record) error
	// deactivate marks the target record inactive (CRM statecode, FHIR
	// active false) instead of deleting it.
	deactivate(ctx context.Context, m *maps.Mapping, cur record) (written, error)
}

// flow is one direction of the pipeline.
type flow struct {
	dir      logs.Direction
	side     queues.Side // where changes come from
	targetOf string      // "crm" or "fhir", for own-write records
	source   sourceSide
	target   targetSide
	// mapFor maps src onto the target, given its current state (nil: none),
	// evaluating the map's filter and per-record gate on the way.
	mapFor func(ctx context.Context, m *maps.Mapping, src record, cur *record) (mapped, error)
	// mapExcept maps as mapFor does, leaving out the attribute maps named
	// in skip (the target keeps its values for them). Nil: no field-level
	// merge in this flow.
	mapExcept func(ctx context.Context, m *maps.Mapping, src record, cur *record, skip maps.Except) (mapped, error)
	// filtered is the first check of mapFor alone: the name of the entity
	// map's filter when it excludes src, "" when the map takes src; an
	// error when mapFor would fail before mapping. It chooses among the
	// maps of one type or table.
	filtered func(m *maps.Mapping, src record) (string, error)
	// isEcho reports whether the change is the echo of an own write: the
	// version the notice names, or src, is one the agent wrote, or src's
	// values equal what it wrote (see ownWrites.echo).
	isEcho func(ctx context.Context, n queues.Notice, src record) (bool, error)
	// ownNotice, when set, reports whether the notice names the agent as
	// the change's author (a RemoteExecutionContext's initiating user).
	// That is only a hint: the same application user may be signed in by
	// another integration. It lets a notice whose version the agent wrote
	// be decided before the source is read.
	ownNotice func(n queues.Notice) bool
}

// mapSet is the published map set the pipeline needs.
type mapSet interface {
	Version() int
	// candidates lists the entity maps covering a change on side of type
	// typ, in document order. Several maps may share a CRM entity (patient
	// and practitioner contacts); their filters tell them apart.
	candidates(side queues.Side, typ string) []*maps.Mapping
}

// decisionLog writes and reads decisions.
type decisionLog interface {
	Write(ctx context.Context, d *logs.Decision) error
	Search(ctx context.Context, f logs.Filter, after string, limit int) (logs.Page, error)
}

// pipeline turns one message into one decision and one settlement.
type pipeline struct {
	flows map[queues.Side]*flow
	maps  func(ctx context.Context) (mapSet, error)
	log   decisionLog
	// batch, when set, group-commits each message's unit; otherwise the
	// unit's parts are written one after the other.
	batch  *batchWriter
	links  links
	writes ownWrites
	// lookups remembers resolved references; a notice naming a record
	// makes it forget that record's pair.
	lookups *lookupCache
	base    *baseHasher // hashes each sent pair's base state; nil: kept off
	// parking, when set, parks the notices of rows this process created
	// while their versions are read together (echo_park.go).
	parking *echoParking
	// conflicts keeps conflicts held for a person; nil: none are kept
	// (a held attribute is still left alone and named in the decision).
	conflicts conflictStore
	// mergeOpts is last-writer-wins' clock-skew allowance and tie-breaker.
	mergeOpts mergeOptions
	// crmUsers are fhirsync's own application users in the CRM (none
	// when not known).
	crmUsers crmUsers
	// pairs serialises the messages of one linked pair in this process.
	pairs pairLocks
	// staleRetries is how many times a write that lost a race (HTTP 412)
	// is re-read, merged and tried again within one delivery.
	staleRetries int
	maxAttempts  int
	backoff      Backoff
	metrics      *metrics
	plog         *slog.Logger
	now          func() time.Time
	// fhirAccount names the FHIR service whose events are taken; empty
	// refuses every AHDS event (see decodeMessage).
	fhirAccount string
	// requeue sends the extra notices of a multi-event message back to
	// the queues, each to get its own decision.
	requeue func(ctx context.Context, ns []queues.Notice) error
	// capture returns payload snapshots to attach when capture is on.
	capture func(src, out any) *logs.Snapshots
	// crmBatch is the coalescer the CRM requests go through (nil: none);
	// the workers of each queue, workers of them, are one crm.Callers
	// set of it, so that a batch goes at once when all of them wait.
	crmBatch *crm.Coalescer
	workers  int

	// streams keeps the windows of stream maps (stream.go).
	streams *streamer

	// lags records the age of each change received, for the lag of a
	// queue whose waiting messages cannot be read (lag_estimate.go).
	lags lagEstimator

	// tracer starts the spans of each message (tracing.go); nil: none.
	tracer trace.Tracer
}

// echoWait bounds how long a change by the agent's own user waits for
// the agent's writes in progress to learn their versions.
const echoWait = 5 * time.Second

// step is the early result of a stage: a decision to record now.
type step struct {
	outcome logs.Outcome
	reason  logs.ReasonCode
	subject string
	message string
	err     error // the error behind a failure, classified
	// reading, when set, is a device reading for the streamer: no
	// decision of its own; the message is settled once the reading is
	// part of its window (stream.go).
	reading *streamReading
}

func stop(o logs.Outcome, r logs.ReasonCode, msg string) *step {
	return &step{outcome: o, reason: r, message: msg}
}

// handle is the pool's handler for a queue the pipeline cannot settle
// itself: every path returns through finish.
func (p *pipeline) handle(ctx context.Context, m *queues.Received) settlement {
	return p.handleOn(nil)(ctx, m)
}

// handleOn is the handler for messages of q. When q is not nil (a queue in
// the agent's own database) a completed message is settled in the
// transaction that records its decision.
func (p *pipeline) handleOn(q txQueue) handler {
	callers := p.crmBatch.Callers(p.workers)
	return func(ctx context.Context, m *queues.Received) settlement {
		ctx = callers.Context(ctx)
		start := p.now()
		u := &unit{d: &logs.Decision{MessageID: m.ID, Direction: logs.FHIRToCRM}}
		ctx, span := p.startProcess(ctx, m, u.d)
		return p.parkable(ctx, q, m, func(ctx context.Context) settlement {
			defer endProcess(span, u.d)
			st := p.run(ctx, m, u)
			if st.reading != nil {
				return p.settleReading(ctx, m, *st.reading, q)
			}
			return p.finish(ctx, m, u, q, st, start)
		})
	}
}

// run executes the stages; it fills u's decision as it learns, and the
// link and own write to record with it, and returns the step that ends the
// message.
func (p *pipeline) run(ctx context.Context, m *queues.Received, u *unit) (st *step) {
	d := u.d
	defer func() {
		if r := recover(); r != nil {
			p.plog.Error("panic in pipeline", "message_id", m.ID, "panic", fmt.Sprint(r))
			st = &step{outcome: logs.OutcomeDeadLettered, reason: logs.ReasonCode("mapping_error"), message: "Processing failed unexpectedly; see the process log.", err: Permanent(fmt.Errorf("panic: %v", r))}
		}
	}()

	ns, err := decodeMessage(m.Body, p.fhirAccount)
	if err != nil {
		return &step{outcome: logs.OutcomeDeadLettered, reason: "invalid_message", message: truncate(describeDecodeError(err), 900), err: Permanent(err)}
	}
	n := ns[0]
	p.lags.observe(n.Side, n.Origin, n.Type, n.ChangedAt, m.EnqueuedAt, p.now())
	for _, x := range ns {
		p.lookups.forget(string(x.Side), x.Type, x.ID)
	}
	if len(ns) > 1 {
		if p.requeue == nil {
			return &step{outcome: logs.OutcomeDeadLettered, reason: "invalid_message", message: fmt.Sprintf("The message carries %d events and this queue cannot split them.", len(ns)), err: Permanent(errors.New("event batch"))}
		}
		if err := p.requeue(ctx, ns[1:]); err != nil {
			return p.failure("re-queuing the other events of a batch", err)
		}
	}
	d.CorrelationID = n.CorrelationID
	if d.CorrelationID == "" {
		d.CorrelationID = n.MessageID()
	}
	d.Source = logs.Ref{Type: n.Type, ID: n.ID, Version: n.Version}
	f := p.flows[n.Side]
	if f == nil {
		return &step{outcome: logs.OutcomeDeadLettered, reason: "invalid_message", message: fmt.Sprintf("No flow handles changes from side %q.", n.Side), err: Permanent(errors.New("unknown side"))}
	}
	d.Direction = f.dir

	set, err := p.maps(ctx)
	if err != nil {
		return &step{outcome: logs.OutcomeFailed, reason: "unavailable", message: "The published map set could not be loaded.", err: err}
	}
	d.MapVersion = set.Version()
	cands := set.candidates(n.Side, n.Type)
	if len(cands) == 0 {
		if st, parent := childRow(set, n); st != nil {
			d.EntityMap = parent
			return st
		}
		return stop(logs.OutcomeSkipped, "no_entity_map", fmt.Sprintf("No published entity map covers %s %s.", n.Side, n.Type))
	}
	open, closed, closedMap := gates(cands, n.Side, f.dir)
	if len(open) == 0 {
		d.EntityMap = closedMap
		return closed
	}
	d.EntityMap = open[0].Name()

	if n.Version != "" && f.ownNotice != nil && f.ownNotice(n) {
		// The echo of a write still waiting for its answer (its version
		// not yet known) is told once the write ends, before the source
		// is read: an echo costs no read.
		writing := p.writes.flights.inFlight(string(f.side), n.Type)
		own, err := p.writes.isOwn(ctx, string(f.side), n.Type, n.ID, n.Version)
		if err == nil && !own && wait(ctx, writing, echoWait) {
			own, err = p.writes.isOwn(ctx, string(f.side), n.Type, n.ID, n.Version)
		}
		if err != nil {
			return p.failure("checking for an own write", err)
		} else if own {
			return stop(logs.OutcomeSkipped, "own_write_echo", "This version was written by fhirsync itself; its echo is not synced back.")
		}
	}
	if st := p.createEcho(ctx, f, open[0], n, len(ns)); st != nil {
		return st
	}

	if sm := p.streamMap(open, n); sm != nil {
		src, err := p.streams.readReading(ctx, f, sm, n.ID)
		if err != nil && !errors.Is(err, errGone) {
			return p.failure("reading the source record", err)
		}
		return p.readingStep(sm, n, src, err != nil)
	}
	since := p.pairs.stamp()
	src, err := f.source.read(ctx, open[0], n.ID)
	if sg := signalMap(open, n); sg != nil {
		return p.signalStep(ctx, f, sg, n, src, err, u)
	}
	// pre is the link of open[0] that naming the pair read, and preBase
	// the base read with it, when nothing can have changed them since:
	// reused as the cached link and the merge's base below.
	var pre *link
	var preBase *baseRead
	preOK := false
	if p.base != nil && (err == nil || errors.Is(err, errGone)) {
		// One message at a time per pair in this process: the merge reads
		// the target and the base, and must see the last message's writes
		// and base. A message that waited, or whose pair another message
		// held and let go of since its source was read, reads its source
		// again, which the other message may have written.
		who := src
		if err != nil {
			who = record{Type: n.Type, ID: n.ID} // deleted: its id is all there is
		}
		keys, l, b, looked := p.pairKeys(ctx, f, open[0], who)
		unlock, waited := p.pairs.lock(keys)
		u.unlock = unlock
		if waited || p.pairs.releasedSince(keys, since) {
			src, err = f.source.read(ctx, open[0], n.ID)
		} else {
			pre, preBase, preOK = l, b, looked
		}
	}
	gone := errors.Is(err, errGone)
	if err != nil && !gone {
		return p.failure("reading the source record", err)
	}
	if !gone {
		d.Source.Version = src.Version
		d.BusinessKeys = src.Keys
	}
	if gone || n.Event == queues.EventDeleted {
		return p.deleteTarget(ctx, f, open[0], n, u, gone)
	}

	// A change by the agent's own user may be a write of the agent's still
	// waiting for its answer: those in progress now are waited for if the
	// version read is not known as the agent's.
	var writing []chan struct{}
	hinted := f.ownNotice != nil && f.ownNotice(n)
	if hinted {
		writing = p.writes.flights.inFlight(string(f.side), src.Type)
	}
	echo, err := f.isEcho(ctx, n, src)
	if err == nil && !echo && wait(ctx, writing, echoWait) {
		echo, err = f.isEcho(ctx, n, src)
	}
	if err != nil {
		return p.failure("checking for an own write", err)
	} else if echo && p.base == nil {
		return stop(logs.OutcomeSkipped, "own_write_echo", "This version was written by fhirsync itself; its echo is not synced back.")
	}

	// Choose the map whose filter admits the record.
	mp := open[0]
	if len(open) > 1 {
		var names []string
		mp = nil
		for _, c := range open {
			filtered, err := f.filtered(c, src)
			// A closed gate still means this is the record's map: the
			// gate is decided below, as record_gate_off.
			// A mapping error also means the filter admitted the record (the
			// engine checks the filter first): the error is decided below.
			if err != nil || filtered == "" {
				mp = c
				break
			}
			names = append(names, c.Name())
		}
		if mp == nil {
			st := stop(logs.OutcomeSkipped, "filtered", fmt.Sprintf("No entity map's filter admitted the record (tried %s).", strings.Join(names, ", ")))
			st.subject = strings.Join(names, ",")
			return st
		}
	}
	em := mp.Def()
	d.EntityMap = em.Name
	// The correlation link is read once per message and serves the stale
	// check, the target lookup and the link update below.
	cached := pre
	if !preOK || mp != open[0] {
		cached, preBase = p.cachedLink(ctx, f, em, src.ID), nil
	}
	if st := staleCheck(f, n, src, cached); st != nil {
		return st
	}
	// A version fhirsync wrote is an echo only if it holds nothing else: a
	// write merged onto the record as read carries along any edit made on
	// that side since the last sync, and that edit has still to travel.
	if echo {
		changed, err := p.changedSinceBase(ctx, f, mp, src, cached, preBase)
		if err != nil {
			return p.failure("comparing the record with the base state", err)
		}
		if !changed {
			return stop(logs.OutcomeSkipped, "own_write_echo", "This version was written by fhirsync itself; its echo is not synced back.")
		}
	}
	for try := 1; ; try++ {
		st, raced := p.sync(ctx, f, mp, n, src, echo, cached, preBase, u)
		if !raced || try > p.staleRetries {
			return st
		}
		// Another process may have written the pair and its base.
		preBase = nil
		// The target changed between the read and the write (412 on
		// If-Match), or another message is syncing the pair: read both
		// sides again and merge again, after a short pause.
		select {
		case <-ctx.Done():
			return st
		case <-time.After(time.Duration(try) * 20 * time.Millisecond):
		}
		d.Attempts = append(d.Attempts, logs.Attempt{At: p.now().UTC(), ErrorClass: errorClass(st.err), Retryable: true})
		var err error
		if src, err = f.source.read(ctx, mp, n.ID); err != nil {
			if errors.Is(err, errGone) {
				return p.deleteTarget(ctx, f, mp, n, u, true)
			}
			return p.failure("reading the source record again", err)
		}
		d.Source.Version = src.Version
	}
}

// sync maps src onto its target record, merges the two field by field
// when the pair has been synced before, and writes what the merge lets
// this direction write. raced reports a write refused because the target
// changed since it was read (HTTP 412).
//
// pb, when not nil, is the pair's base as read with the cached link.
func (p *pipeline) sync(ctx context.Context, f *flow, mp *maps.Mapping, n queues.Notice, src record, srcOwn bool, cached *link, pb *baseRead, u *unit) (st *step, raced bool) {
	d := u.d
	em := mp.Def()
	fl := flowOf(em, n.Side)
	u.effects, u.after = nil, nil
	d.Conflicts = nil
	cur, err := f.target.find(ctx, mp, src, cached)
	var curp *record
	var sre *sharedRowError
	switch {
	case errors.Is(err, errGone):
		if st := p.linkedTargetGone(ctx, f, em, cached, d); st != nil {
			return st, false
		}
	case errors.As(err, &sre):
		// Neither update another record's row nor create a second row
		// beside it: an admin has to tell the two records apart.
		st := &step{outcome: logs.OutcomeDeadLettered, reason: "mapping_error", subject: cmp.Or(sre.ownerMap, sre.filter),
			message: fmt.Sprintf("Entity map %s did not write the %s: %s, and a second row would break the alternate key on %s (FHIR ids are unique per resource type only).",
				em.Name, em.FHIRType, sre.whose(), sre.column), err: Permanent(err)}
		return st, false
	case err != nil:
		return p.failure("reading the target record", err), false
	default:
		curp = &cur
		d.Target = logs.Ref{Type: cur.Type, ID: cur.ID, Version: cur.Version}
	}
	op := maps.OpUpdate
	if curp == nil {
		op = maps.OpCreate
	}
	if !fl.Allows(op) {
		return stop(logs.OutcomeSkipped, "operation_off", fmt.Sprintf("Entity map %s does not allow %s in this direction.", em.Name, op)), false
	}

	out, err := f.mapFor(ctx, mp, src, curp)
	if err != nil {
		return p.mappingFailure(err), false
	}
	if out.Gated != "" {
		st := stop(logs.OutcomeSkipped, "record_gate_off", fmt.Sprintf("The record's sync gate %s is off.", out.Gated))
		st.subject = out.Gated
		return st, false
	}
	if out.Filtered != "" {
		st := stop(logs.OutcomeSkipped, "filtered", fmt.Sprintf("Filter %s excluded the record.", out.Filtered))
		st.subject = out.Filtered
		return st, false
	}
	var mg *pairMerge
	if curp != nil && p.base != nil && f.mapExcept != nil {
		if mg, err = p.mergePair(ctx, f, mp, src, *curp, srcOwn, cached != nil, pb, out); err != nil {
			if errors.Is(err, errPairBusy) {
				return &step{outcome: logs.OutcomeFailed, reason: "target_conflict", message: "Another message was syncing the same pair; tried again.",
					err: &endpointError{class: classConflict, err: err}}, true
			}
			return p.failure("merging with the base state", err), false
		}
		defer p.base.done(mg.read)
		d.Conflicts = mg.conflicts
		if len(mg.skip) > 0 {
			if out, err = f.mapExcept(ctx, mp, src, curp, mg.skip); err != nil {
				return p.mappingFailure(err), false
			}
		}
		l := pairOf(f, em, src, *curp)
		u.effects = p.holdEffects(mg, l, d.MessageID, p.now().UTC())
		if n.Origin == "resolution" {
			if err := p.supersedeResolutions(ctx, mg, l, u); err != nil {
				return p.failure("reading the held conflicts", err), false
			}
		}
		if mg.backward > 0 && p.requeue != nil {
			u.after = []queues.Notice{backwardNotice(f, *curp, p.now())}
		}
	}
	d.ChangedFields = out.Changed
	if curp != nil && len(out.Changed) == 0 {
		u.link = linkFor(f, em, src, *curp, cached)
		if mg == nil {
			return stop(logs.OutcomeSkipped, "unchanged", "No mapped value differs at the target."+roundedNote(out.Rounded, out.Declared)), false
		}
		u.base = stampTimes(mg.unchangedBase(), mg.fhirAt, mg.crmAt)
		switch {
		case len(mg.held) > 0:
			return stop(logs.OutcomeHeld, logs.ReasonConflictHeld, fmt.Sprintf("Held for a person: %s changed on both sides; nothing else to write.", mg.heldNames())), false
		case mg.deferred > 0:
			return stop(logs.OutcomeSkipped, logs.ReasonConflictDeferred, fmt.Sprintf("%d attribute(s) changed on both sides; the policy keeps the %s value, which its own change carries over.", mg.deferred, otherSide(f))), false
		}
		return stop(logs.OutcomeSkipped, "unchanged", "No mapped value differs at the target, or only the target changed."+roundedNote(out.Rounded, out.Declared)), false
	}
	if p.capture != nil {
		d.Snapshots = p.capture(src.Data, out.Data)
	}
	landed := p.writes.flights.begin(f.targetOf, targetType(em, f))
	w, err := f.target.write(ctx, mp, src, curp, out)
	if err != nil {
		landed()
		if isStale(err) {
			return p.failure("writing the target record", err), true
		}
		if st := rejection(err); st != nil {
			return st, false
		}
		if st := missingReference(err, targetType(em, f)); st != nil {
			return st, false
		}
		return p.failure("writing the target record", err), false
	}
	if w.Version != "" {
		u.own = &ownWrite{Side: f.targetOf, RType: targetType(em, f), RID: w.ID, Version: w.Version, WrittenAt: p.now().UTC(), Created: w.Created}
		u.own.ValueHash, u.own.ValueFields = valueDigest(p.writes.key, f.targetOf, out.Data, em)
		// Known as the agent's from now; commit forgets it from memory
		// once it is in the table.
		p.writes.note(*u.own)
	}
	landed()
	d.Target = logs.Ref{Type: targetType(em, f), ID: w.ID, Version: w.Version}
	u.link = linkFor(f, em, src, record{ID: w.ID, Version: w.Version}, cached)
	u.base = p.baseAfter(f, mp, src, curp, out, w, mg)
	if mg != nil {
		u.base = stampTimes(mg.baseWith(u.base), mg.fhirAt, mg.crmAt)
	} else if u.base != nil {
		// Created: the source's edit is the only one.
		fAt, cAt, _, err := p.editTimes(ctx, f, src, nil, srcOwn, nil)
		if err == nil {
			u.base = stampTimes(u.base, fAt, cAt)
		}
	}
	p.metrics.observeLatency(f.dir, n.ChangedAt)
	if !n.ChangedAt.IsZero() {
		d.Latency = max(p.now().Sub(n.ChangedAt), 0)
	}
	if w.Created {
		return stop(logs.OutcomeSent, "created", fmt.Sprintf("Created %s %s.", targetType(em, f), w.ID)+roundedNote(out.Rounded, out.Declared)), false
	}
	msg := fmt.Sprintf("Updated %d field(s) of %s %s.", len(out.Changed), targetType(em, f), w.ID) + roundedNote(out.Rounded, out.Declared)
	switch {
	case mg != nil && len(mg.held) > 0:
		return stop(logs.OutcomeHeld, logs.ReasonConflictHeld, msg+fmt.Sprintf(" Held for a person: %s changed on both sides.", mg.heldNames())), false
	case mg != nil && len(mg.applied) > 0:
		return stop(logs.OutcomeSent, logs.ReasonConflictResolved, msg+" A person's resolution of a held conflict was written."), false
	case mg != nil && len(mg.conflicts) > 0:
		msg += fmt.Sprintf(" %d attribute(s) changed on both sides were settled by their conflict policy.", len(mg.conflicts))
	}
	return stop(logs.OutcomeSent, "updated", msg), false
}

// mappingFailure is the step for a mapping error.
func (p *pipeline) mappingFailure(err error) *step {
	var me *mappingError
	if !errors.As(err, &me) {
		return p.failure("mapping the record", err)
	}
	st := &step{outcome: logs.OutcomeDeadLettered, reason: "mapping_error", subject: me.attribute,
		message: fmt.Sprintf("Mapping failed at %s.", orUnknown(me.attribute)), err: Permanent(err)}
	// A reference of a type the lookup does not map: the message names the
	// types and the entity map (never the id), as the admin needs them to
	// fix the map or the data.
	var rte *maps.ReferenceTypeError
	if errors.As(err, &rte) {
		st.message = fmt.Sprintf("Mapping failed at %s: %s.", orUnknown(me.attribute), rte.Error())
	}
	// A concept code the CRM cannot hold beside one differing only in
	// case: the message names both codes (reference data, not patient
	// data), for the admin to find the row.
	var cce *maps.ConceptCaseError
	if errors.As(err, &cce) {
		st.message = fmt.Sprintf("Mapping failed at %s: %s.", orUnknown(me.attribute), cce.Detail())
	}
	// A lookup whose correlation column names a row of another type's
	// record (a table two entity maps share).
	var sre *sharedRowError
	if errors.As(err, &sre) {
		st.message = fmt.Sprintf("Mapping failed at %s: %s.", orUnknown(me.attribute), sre.whose())
	}
	if me.retryable {
		st.outcome, st.reason, st.err = logs.OutcomeFailed, logs.ReasonMissingReference, err
		st.message = fmt.Sprintf("Mapping is waiting at %s: the referenced record has not been synced yet.", orUnknown(me.attribute))
	}
	return st
}

// isStale reports a write refused because the record changed since it
// was read: HTTP 412 on If-Match.
func isStale(err error) bool {
	var ee *endpointError
	return errors.As(err, &ee) && ee.class == classConflict
}

// otherSide names the side a flow writes, for messages.
func otherSide(f *flow) string {
	if f.side == queues.SideFHIR {
		return "CRM"
	}
	return "FHIR"
}

// gates applies the gates that need no record, enabled and direction, to
// the candidate maps of a change from side: the maps that pass go on to
// the record's filters; when none does, closed is the decision and
// closedMap the map whose gate closed last. A replay's dry run predicts
// with the same gates.
func gates(cands []*maps.Mapping, side queues.Side, dir logs.Direction) (open []*maps.Mapping, closed *step, closedMap string) {
	for _, m := range cands {
		em := m.Def()
		fl := flowOf(em, side)
		switch {
		case !em.IsEnabled():
			closed = stop(logs.OutcomeSkipped, "map_disabled", fmt.Sprintf("Entity map %s is disabled.", em.Name))
		case !fl.Enabled:
			closed = stop(logs.OutcomeSkipped, "direction_off", fmt.Sprintf("Entity map %s does not sync %s.", em.Name, dir))
		default:
			open = append(open, m)
			continue
		}
		closedMap = em.Name
	}
	return open, closed, closedMap
}

func flowOf(em *maps.EntityMap, side queues.Side) maps.Flow {
	if side == queues.SideCRM {
		return em.CRMToFHIR
	}
	return em.FHIRToCRM
}

func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	for n > 0 && !utf8.RuneStart(s[n]) {
		n--
	}
	return s[:n] + "…"
}

func orUnknown(s string) string {
	if s == "" {
		return "an unnamed attribute map"
	}
	return "attribute map " + s
}

// deleteTarget handles a source that is gone or a delete notice: the
// entity map's delete policy decides what happens to the target, and a
// delete that meets an edit of the target since the last sync is a
// conflict its conflict policy settles.
func (p *pipeline) deleteTarget(ctx context.Context, f *flow, m *maps.Mapping, n queues.Notice, u *unit, gone bool) *step {
	d := u.d
	em := m.Def()
	if !gone {
		// A delete notice for a record that still exists is out of date:
		// the record came back (or the notice is stale).
		return stop(logs.OutcomeSkipped, "stale_version", "A delete was announced but the record exists; the newer state wins.")
	}
	cached := p.cachedLink(ctx, f, em, n.ID)
	cur, err := f.target.find(ctx, m, record{Type: n.Type, ID: n.ID}, cached)
	if errors.Is(err, errGone) {
		return stop(logs.OutcomeSkipped, "source_gone", "The source record no longer exists and nothing is correlated at the target.")
	}
	// A row holding the id that is another record's is not this one's.
	var sre *sharedRowError
	if errors.As(err, &sre) {
		return stop(logs.OutcomeSkipped, "source_gone", fmt.Sprintf("The source record no longer exists and nothing is correlated at the target: %s, and is kept.", sre.whose()))
	}
	if err != nil {
		return p.failure("reading the target record", err)
	}
	d.Target = logs.Ref{Type: cur.Type, ID: cur.ID, Version: cur.Version}
	policy := em.DeletePolicy.OrDefault()
	if policy == maps.DeleteIgnore {
		return stop(logs.OutcomeSkipped, logs.ReasonDeleteIgnored, fmt.Sprintf("Entity map %s ignores deletes: %s %s is kept.", em.Name, cur.Type, cur.ID))
	}
	if !flowOf(em, n.Side).Allows(maps.OpDelete) {
		return stop(logs.OutcomeSkipped, "operation_off", fmt.Sprintf("Entity map %s does not propagate deletes in this direction.", em.Name))
	}
	st, apply, err := p.deleteVersusEdit(ctx, f, m, n, cur, cached, u)
	if err != nil {
		return p.failure("comparing the target with the base state", err)
	}
	if !apply {
		return st
	}
	if policy == maps.DeleteDeactivate {
		w, err := f.target.deactivate(ctx, m, cur)
		if err != nil && !errors.Is(err, errGone) {
			if st := rejection(err); st != nil {
				return st
			}
			return p.failure("deactivating the target record", err)
		}
		if w.Version != "" {
			u.own = &ownWrite{Side: f.targetOf, RType: targetType(em, f), RID: cur.ID, Version: w.Version, WrittenAt: p.now().UTC()}
			d.Target.Version = w.Version
		}
		if resolvedByPerson(d) {
			return stop(logs.OutcomeSent, logs.ReasonConflictResolved, fmt.Sprintf("Deactivated %s %s, as a person resolved the held delete.", cur.Type, cur.ID))
		}
		return stop(logs.OutcomeSent, logs.ReasonDeactivated, fmt.Sprintf("Deactivated %s %s (the entity map's delete policy).", cur.Type, cur.ID))
	}
	if err := f.target.remove(ctx, m, cur); err != nil && !errors.Is(err, errGone) {
		return p.failure("deleting the target record", err)
	}
	if f.side == queues.SideFHIR {
		_ = p.links.remove(ctx, em.Name, n.ID)
	} else if cached != nil {
		_ = p.links.remove(ctx, em.Name, cached.FHIRID)
	}
	if resolvedByPerson(d) {
		return stop(logs.OutcomeSent, logs.ReasonConflictResolved, fmt.Sprintf("Deleted %s %s, as a person resolved the held delete.", cur.Type, cur.ID))
	}
	return stop(logs.OutcomeSent, "deleted", fmt.Sprintf("Deleted %s %s.", cur.Type, cur.ID))
}

// staleCheck skips a notice about an older version when the record's
// current version was already synced: an out-of-order or duplicate notice.
func staleCheck(f *flow, n queues.Notice, src record, l *link) *step {
	if n.Version == "" || n.Version == src.Version || l == nil {
		return nil
	}
	synced := l.FHIRVersion
	if f.side == queues.SideCRM {
		synced = l.CRMVersion
	}
	if synced == src.Version {
		return stop(logs.OutcomeSkipped, "stale_version", "The notice names an older version; the current version was already synced.")
	}
	return nil
}

func (p *pipeline) cachedLink(ctx context.Context, f *flow, em *maps.EntityMap, srcID string) *link {
	var l link
	var err error
	if f.side == queues.SideFHIR {
		l, err = p.links.byFHIR(ctx, em.Name, srcID)
	} else {
		l, err = p.links.byCRM(ctx, em.Name, srcID)
	}
	if err != nil {
		return nil
	}
	return &l
}

// linkFor is the pairing of src and tgt to record, keeping the other
// direction's last synced version from old (the link read for this
// message); nil when there is nothing to pair or the link is unchanged.
func linkFor(f *flow, em *maps.EntityMap, src, tgt record, old *link) *link {
	l := link{EntityMap: em.Name, FHIRType: em.FHIRType, CRMEntity: em.CRMEntity}
	if f.side == queues.SideFHIR {
		l.FHIRID, l.FHIRVersion, l.CRMID = src.ID, src.Version, tgt.ID
		if old != nil {
			l.CRMVersion = old.CRMVersion
		}
	} else {
		l.CRMID, l.CRMVersion, l.FHIRID = src.ID, src.Version, tgt.ID
		if old != nil {
			l.FHIRVersion = old.FHIRVersion
		}
	}
	if l.FHIRID == "" || l.CRMID == "" {
		return nil
	}
	if old != nil {
		same := *old
		same.UpdatedAt = l.UpdatedAt
		if same == l {
			return nil
		}
	}
	return &l
}

func targetType(em *maps.EntityMap, f *flow) string {
	if f.targetOf == "crm" {
		return em.CRMEntity
	}
	return em.FHIRType
}

// failure classifies an endpoint error into a step: retryable errors
// become failed (retried), permanent ones dead-lettered.
func (p *pipeline) failure(doing string, err error) *step {
	reason := reasonForError(err)
	outcome := logs.OutcomeFailed
	if IsPermanent(err) {
		outcome = logs.OutcomeDeadLettered
	}
	return &step{outcome: outcome, reason: reason, message: "Failed " + doing + ": " + errorClass(err) + codeOf(err) + ".", err: err}
}

// finish records the decision and chooses the settlement — the one place
// both happen.
func (p *pipeline) finish(ctx context.Context, m *queues.Received, u *unit, q txQueue, st *step, start time.Time) settlement {
	d := u.d
	d.Outcome, d.Reason, d.ReasonSubject, d.Message = st.outcome, st.reason, st.subject, st.message
	attempt := logs.Attempt{At: p.now().UTC()}
	if st.err != nil {
		attempt.ErrorClass = errorClass(st.err)
		attempt.Retryable = !IsPermanent(st.err)
		attempt.TargetError = p.targetError(ctx, d, st.err)
	}
	var s settlement
	switch {
	case st.outcome == logs.OutcomeFailed && m.DeliveryCount >= p.maxAttempts:
		d.Outcome, d.Reason = logs.OutcomeDeadLettered, "attempts_exhausted"
		if st.reason == "target_conflict" || st.reason == logs.ReasonMissingReference {
			// Every attempt re-read the target and lost the race again:
			// the registry's "412 after retries".
			d.Reason = st.reason
		}
		d.Message = fmt.Sprintf("Gave up after %d attempts; the last one failed with %s (%s).", m.DeliveryCount, st.reason, attempt.ErrorClass)
		s = settlement{kind: settleDeadLetter, reason: string(d.Reason), description: d.Message}
	case st.outcome == logs.OutcomeFailed:
		s = settlement{kind: settleAbandon, delay: p.backoff.Delay(m.DeliveryCount, st.err)}
	case st.outcome == logs.OutcomeDeadLettered:
		s = settlement{kind: settleDeadLetter, reason: string(st.reason), description: d.Message}
	default:
		s = settlement{kind: settleComplete}
	}
	// Earlier deliveries' attempts, then this delivery's writes that lost
	// a race and were merged again, then this one.
	earlier, prev := p.previousAttempts(ctx, m)
	d.Attempts, d.Supersedes = append(append(earlier, d.Attempts...), attempt), prev
	d.Duration = p.now().Sub(start)
	if s.kind == settleComplete && q != nil {
		u.complete, u.q = m, q
	}
	err := p.commitTraced(ctx, u)
	if u.unlock != nil {
		u.unlock()
	}
	if err == nil && len(u.after) > 0 {
		if qerr := p.requeue(ctx, u.after); qerr != nil {
			// The target's own notice, if still to come, carries the value;
			// the next reconcile finds it otherwise.
			p.plog.Warn("queuing the target's notice failed", "message_id", m.ID, "error", qerr)
		}
	}
	if err != nil {
		// Without a decision the message must not leave the queue: retry.
		p.plog.Error("writing the decision failed; the message will be retried", "message_id", m.ID, "error", err)
		return settlement{kind: settleAbandon, delay: p.backoff.Delay(m.DeliveryCount, err)}
	}
	p.metrics.observe(d)
	if u.settled {
		if u.lockLost {
			p.plog.Warn("the message's lock expired before it was completed; it will be delivered again", "message_id", m.ID)
		}
		return settlement{kind: settleNone}
	}
	return s
}

// commit records u: in the group commit when there is one, else its own
// write and link (best effort: the link is a cache, the own write narrows
// loop prevention to the initiating user) and then its decision.
func (p *pipeline) commit(ctx context.Context, u *unit) error {
	if u.own != nil {
		// Until the unit commits, an echo of this write is recognised from
		// memory.
		defer p.writes.note(*u.own)()
	}
	if p.batch != nil {
		return p.batch.commit(ctx, u)
	}
	if u.own != nil {
		if err := p.writes.remember(ctx, u.own.Side, u.own.RType, u.own.RID, u.own.Version); err != nil {
			p.plog.Warn("own write not remembered; its echo may sync back once", "error", err)
		}
	}
	if u.link != nil {
		if err := p.links.save(ctx, *u.link); err != nil {
			p.plog.Warn("correlation link not saved; it will be rebuilt from the records' keys", "entity_map", u.link.EntityMap, "error", err)
		}
	}
	if len(u.effects) > 0 {
		if err := p.links.db.WithContext(ctx).Transaction(func(tx *gorm.DB) error { return runEffects(tx, u.effects) }); err != nil {
			return fmt.Errorf("recording held conflicts: %w", err)
		}
	}
	if u.base != nil {
		if err := p.links.db.WithContext(ctx).Transaction(func(tx *gorm.DB) error { return saveBasesTx(tx, []*linkBase{u.base}) }); err != nil {
			p.plog.Warn("base state not saved; the next change of the pair has no common ancestor", "entity_map", u.base.EntityMap, "error", err)
		}
	}
	return p.log.Write(ctx, u.d)
}

// previousAttempts collects the attempts recorded by earlier deliveries
// of the same message, so the final decision shows every try, and the id
// of the failed decision they were recorded in, which the new decision
// replaces: retries fold into one decision.
func (p *pipeline) previousAttempts(ctx context.Context, m *queues.Received) ([]logs.Attempt, int64) {
	if m.DeliveryCount <= 1 {
		return nil, 0
	}
	// Each failed decision carries every attempt before it, so the newest
	// one is the whole history.
	page, err := p.log.Search(ctx, logs.Filter{MessageID: m.ID, Outcome: logs.OutcomeFailed}, "", 1)
	if err != nil || len(page.Decisions) == 0 {
		return nil, 0
	}
	out := page.Decisions[0].Attempts
	if len(out) > 90 {
		out = out[len(out)-90:]
	}
	return out, page.Decisions[0].ID
}
