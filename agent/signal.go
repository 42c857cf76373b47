package agent

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strconv"

	"github.com/fhirsync/fhirsync/agent/crm"
	"github.com/fhirsync/fhirsync/logs"
	"github.com/fhirsync/fhirsync/maps"
	"github.com/fhirsync/fhirsync/queues"
)

// Signals to care coordinators (docs/signals.md). A change to a FHIR
// resource whose entity map has a signal section opens, updates or closes
// one CRM activity per resource:
//
//   - raised, no activity: the entity map's attribute maps give the
//     activity's columns; it is created open (task: statecode 0,
//     statuscode 2) by the correlation alternate key, which holds
//     "Type/id", with its owner bound (signal_opened). Two replicas or a
//     redelivery creating it at once meet at the key: the loser's
//     create-only write is refused (412) and it updates instead.
//   - raised, open activity: its mapped columns are updated when they
//     differ (signal_updated), else unchanged. The owner is set only on
//     create, so a coordinator's reassignment stands.
//   - raised, closed activity: reopened with its mapped columns when the
//     signal says reopen (signal_opened), else left closed (unchanged).
//   - lowered (or the resource deleted), open activity: closed (task:
//     statecode 1 Completed, statuscode 5) — signal_closed.
//   - lowered, no open activity: below_signal_threshold.
//
// Decisions carry no values of the record: their messages name what
// decided (the signal's condition, its end, its threshold from the map).

// signalMap is the signal map of a FHIR change, if its one open map has
// a signal section (validation keeps a signal map alone for its type).
func signalMap(open []*maps.Mapping, n queues.Notice) *maps.Mapping {
	if n.Side != queues.SideFHIR || len(open) != 1 || open[0].Def().Signal == nil {
		return nil
	}
	return open[0]
}

// activity is a signal's CRM activity as read.
type activity struct {
	rec  record
	open bool
}

// signalStep decides a change to a signal map's resource.
func (p *pipeline) signalStep(ctx context.Context, f *flow, mp *maps.Mapping, n queues.Notice, src record, readErr error, u *unit) *step {
	d := u.d
	em := mp.Def()
	cs, ok := f.target.(crmSide)
	if !ok {
		return &step{outcome: logs.OutcomeDeadLettered, reason: "invalid_message", message: "A signal map writes CRM activities; this flow's target is not the CRM.", err: Permanent(errors.New("signal target is not the CRM"))}
	}
	gone := errors.Is(readErr, errGone)
	if readErr != nil && !gone {
		return p.failure("reading the source record", readErr)
	}
	if !gone {
		d.Source.Version = src.Version
		d.BusinessKeys = src.Keys
	}
	key := maps.SignalKey(em.FHIRType, n.ID)
	// One message at a time per resource in this process; replicas meet
	// at the alternate key.
	unlock, _ := p.pairs.lock([]string{"signal|" + em.Name + "|" + n.ID})
	u.unlock = unlock

	var st maps.SignalState
	if gone || n.Event == queues.EventDeleted {
		st.Why = "the resource was deleted"
	} else {
		var err error
		if st, _, err = mp.Signal(src.Data, p.now()); err != nil {
			return &step{outcome: logs.OutcomeDeadLettered, reason: "mapping_error", subject: "signal",
				message: "The map's signal section could not be evaluated on the record.", err: Permanent(err)}
		}
	}
	for try := 1; ; try++ {
		cached := p.cachedLink(ctx, f, em, n.ID)
		cur, err := p.findActivity(ctx, cs, mp, key, cached)
		if err != nil && !errors.Is(err, errGone) {
			return p.failure("reading the signal's activity", err)
		}
		var curp *activity
		if err == nil {
			curp = &cur
			d.Target = logs.Ref{Type: em.CRMEntity, ID: cur.rec.ID, Version: cur.rec.Version}
		}
		s, raced := p.signalOnce(ctx, f, cs, mp, n, src, st, key, curp, cached, u)
		if !raced || try > max(p.staleRetries, 2) {
			return s
		}
		d.Attempts = append(d.Attempts, logs.Attempt{At: p.now().UTC(), ErrorClass: errorClass(s.err), Retryable: true})
	}
}

// signalOnce is one attempt at the signal's write; raced reports a write
// refused because the activity was created or changed meanwhile (412).
func (p *pipeline) signalOnce(ctx context.Context, f *flow, cs crmSide, mp *maps.Mapping, n queues.Notice, src record,
	st maps.SignalState, key string, cur *activity, cached *link, u *unit) (*step, bool) {
	d := u.d
	em := mp.Def()
	sig := em.Signal
	entity := em.CRMEntity
	if !st.Raised {
		if cur == nil || !cur.open {
			what := "there is no activity to close"
			if cur != nil {
				what = "its activity is already closed"
			}
			return stop(logs.OutcomeSkipped, logs.ReasonBelowSignalThreshold, fmt.Sprintf("The signal of entity map %s is not raised (%s); %s.", em.Name, st.Why, what)), false
		}
		cl := sig.CloseState()
		w, err := p.writeActivity(ctx, f, cs, em, crm.ByID(em.CRMEntitySet, cur.rec.ID),
			crm.Record{"statecode": cl.State, "statuscode": cl.Status}, crm.UpsertOptions{Mode: crm.UpdateOnly, IfMatch: cur.rec.Version}, u)
		if err != nil {
			return p.activityFailure(err)
		}
		d.Target = logs.Ref{Type: entity, ID: w.ID, Version: w.Version}
		d.ChangedFields = []string{"statecode", "statuscode"}
		u.link = p.signalLink(f, em, src, n.ID, w, cached)
		p.signalLatency(d, n)
		return stop(logs.OutcomeSent, logs.ReasonSignalClosed, fmt.Sprintf("Closed %s %s: the signal is lowered (%s).", entity, w.ID, st.Why)), false
	}

	var curRec *record
	if cur != nil {
		curRec = &cur.rec
	}
	out, err := f.mapFor(ctx, mp, src, curRec)
	if err != nil {
		return p.mappingFailure(err), false
	}
	if out.Filtered != "" {
		s := stop(logs.OutcomeSkipped, "filtered", fmt.Sprintf("Filter %s excluded the record.", out.Filtered))
		s.subject = out.Filtered
		return s, false
	}
	res, ok := out.Data.(*maps.CRMResult)
	if !ok {
		return p.failure("mapping the record", Permanent(fmt.Errorf("mapping produced %T, not a CRM record", out.Data))), false
	}
	rec := crm.Record{}
	for k, v := range res.Record {
		rec[k] = v
	}
	// The engine correlates by the bare FHIR id; a signal's activity is
	// keyed by Type_id.
	corr := em.Correlation.CRMAttribute
	rec[corr] = key
	out.Changed = slices.DeleteFunc(slices.Clone(out.Changed), func(f string) bool { return f == corr })
	switch {
	case cur == nil:
		open := sig.OpenState()
		rec["statecode"], rec["statuscode"] = open.State, open.Status
		owner, err := p.signalOwner(ctx, cs, sig, st.Patient)
		if err != nil {
			return p.failure("finding the activity's owner", err), false
		}
		if owner != "" {
			rec["ownerid@odata.bind"] = owner
		}
		w, err := p.writeActivity(ctx, f, cs, em, crm.ByKey(em.CRMEntitySet, em.Correlation.CRMAttribute, key), rec, crm.UpsertOptions{Mode: crm.CreateOnly}, u)
		if err != nil {
			if isStale(err) {
				// Created meanwhile by another delivery or replica.
				return p.failure("creating the signal's activity", err), true
			}
			return p.activityFailure(err)
		}
		d.Target = logs.Ref{Type: entity, ID: w.ID, Version: w.Version}
		d.ChangedFields = out.Changed
		u.link = p.signalLink(f, em, src, n.ID, w, cached)
		p.signalLatency(d, n)
		return stop(logs.OutcomeSent, logs.ReasonSignalOpened, fmt.Sprintf("Opened %s %s for care coordinators (entity map %s).", entity, w.ID, em.Name)), false
	case !cur.open && !sig.Reopen:
		return stop(logs.OutcomeSkipped, "unchanged", fmt.Sprintf("The signal is raised but %s %s is closed, and entity map %s does not reopen activities.", entity, cur.rec.ID, em.Name)), false
	case !cur.open:
		open := sig.OpenState()
		rec["statecode"], rec["statuscode"] = open.State, open.Status
		w, err := p.writeActivity(ctx, f, cs, em, crm.ByID(em.CRMEntitySet, cur.rec.ID), rec, crm.UpsertOptions{Mode: crm.UpdateOnly, IfMatch: cur.rec.Version}, u)
		if err != nil {
			return p.activityFailure(err)
		}
		d.Target = logs.Ref{Type: entity, ID: w.ID, Version: w.Version}
		d.ChangedFields = append(slices.Clone(out.Changed), "statecode", "statuscode")
		u.link = p.signalLink(f, em, src, n.ID, w, cached)
		p.signalLatency(d, n)
		return stop(logs.OutcomeSent, logs.ReasonSignalOpened, fmt.Sprintf("Reopened %s %s: the signal is raised again.", entity, w.ID)), false
	case len(out.Changed) == 0:
		u.link = p.signalLink(f, em, src, n.ID, written{ID: cur.rec.ID, Version: cur.rec.Version}, cached)
		return stop(logs.OutcomeSkipped, "unchanged", fmt.Sprintf("The signal is raised and %s %s is open with the mapped values.", entity, cur.rec.ID)), false
	default:
		w, err := p.writeActivity(ctx, f, cs, em, crm.ByID(em.CRMEntitySet, cur.rec.ID), rec, crm.UpsertOptions{Mode: crm.UpdateOnly, IfMatch: cur.rec.Version}, u)
		if err != nil {
			return p.activityFailure(err)
		}
		d.Target = logs.Ref{Type: entity, ID: w.ID, Version: w.Version}
		d.ChangedFields = out.Changed
		u.link = p.signalLink(f, em, src, n.ID, w, cached)
		p.signalLatency(d, n)
		return stop(logs.OutcomeSent, logs.ReasonSignalUpdated, fmt.Sprintf("Updated %d field(s) of %s %s.", len(out.Changed), entity, w.ID)), false
	}
}

// activityFailure is the step of a refused activity write other than a
// lost race.
func (p *pipeline) activityFailure(err error) (*step, bool) {
	if isStale(err) {
		return p.failure("writing the signal's activity", err), true
	}
	if st := rejection(err); st != nil {
		return st, false
	}
	return p.failure("writing the signal's activity", err), false
}

// writeActivity writes the activity and remembers the write as the
// agent's own, so its echo from the CRM's change feed is known.
func (p *pipeline) writeActivity(ctx context.Context, f *flow, cs crmSide, em *maps.EntityMap, t crm.Target, rec crm.Record, o crm.UpsertOptions, u *unit) (written, error) {
	landed := p.writes.flights.begin(f.targetOf, em.CRMEntity)
	defer landed()
	r, err := cs.api.Upsert(ctx, t, rec, o)
	if err != nil {
		return written{}, classify(err)
	}
	w := written{ID: r.ID, Version: r.ETag, Created: r.Created}
	if w.Version != "" {
		u.own = &ownWrite{Side: f.targetOf, RType: em.CRMEntity, RID: w.ID, Version: w.Version, WrittenAt: p.now().UTC()}
		p.writes.note(*u.own)
	}
	return w, nil
}

func (p *pipeline) signalLatency(d *logs.Decision, n queues.Notice) {
	p.metrics.observeLatency(d.Direction, n.ChangedAt)
	if !n.ChangedAt.IsZero() {
		d.Latency = max(p.now().Sub(n.ChangedAt), 0)
	}
}

// signalLink pairs the resource with its activity, keeping the FHIR
// version for the stale check.
func (p *pipeline) signalLink(f *flow, em *maps.EntityMap, src record, id string, w written, old *link) *link {
	s := src
	if s.ID == "" {
		s = record{Type: em.FHIRType, ID: id}
	}
	return linkFor(f, em, s, record{ID: w.ID, Version: w.Version}, old)
}

// findActivity reads the signal's activity: through the link the agent
// keeps, else by the correlation alternate key ("Type/id").
func (p *pipeline) findActivity(ctx context.Context, cs crmSide, mp *maps.Mapping, key string, cached *link) (activity, error) {
	em := mp.Def()
	cols := append(crmColumns(mp), "statecode", "statuscode")
	var rec crm.Record
	var err error = errGone
	if cached != nil {
		rec, err = cs.api.Retrieve(ctx, crm.ByID(em.CRMEntitySet, cached.CRMID), cols...)
		if isMissing(err) {
			err = errGone
		}
	}
	if errors.Is(err, errGone) {
		rec, err = cs.api.Retrieve(ctx, crm.ByKey(em.CRMEntitySet, em.Correlation.CRMAttribute, key), cols...)
		if isMissing(err) {
			return activity{}, errGone
		}
	}
	if err != nil {
		return activity{}, classify(err)
	}
	r, err := cs.withChildren(ctx, mp, "", rec)
	if err != nil {
		return activity{}, err
	}
	state, _ := intValue(rec["statecode"])
	return activity{rec: r, open: state == 0}, nil
}

func intValue(v any) (int, bool) {
	switch x := v.(type) {
	case float64:
		return int(x), true
	case int:
		return x, true
	case interface{ String() string }:
		n, err := strconv.Atoi(x.String())
		return n, err == nil
	}
	return 0, false
}

// signalOwner is the owner bind of a new activity: the configured team or
// user, or the owner of the patient's contact (its owning user or team);
// empty when the contact has none known, so the CRM makes the agent's
// user the owner.
func (p *pipeline) signalOwner(ctx context.Context, cs crmSide, sig *maps.Signal, patient string) (string, error) {
	switch {
	case sig.Owner.Team != "":
		return crm.Bind("teams", sig.Owner.Team), nil
	case sig.Owner.User != "":
		return crm.Bind("systemusers", sig.Owner.User), nil
	case !sig.Owner.Patient || patient == "" || sig.PatientMap == "":
		return "", nil
	}
	set, err := p.maps(ctx)
	if err != nil {
		return "", err
	}
	pm := signalPatientMap(set, sig.PatientMap)
	if pm == nil {
		return "", nil
	}
	_, pid, ok := cutRef(patient)
	if !ok {
		return "", nil
	}
	var contactID string
	if l, err := p.links.byFHIR(ctx, pm.Name, pid); err == nil {
		contactID = l.CRMID
	}
	target := crm.ByKey(pm.CRMEntitySet, pm.Correlation.CRMAttribute, pid)
	if contactID != "" {
		target = crm.ByID(pm.CRMEntitySet, contactID)
	}
	rec, err := cs.api.Retrieve(ctx, target, "_owninguser_value", "_owningteam_value")
	if isMissing(err) {
		// The patient has not reached the CRM yet: wait for it, as a
		// lookup does.
		return "", &endpointError{class: classUnavailable, err: fmt.Errorf("the signal's patient has no contact yet")}
	}
	if err != nil {
		return "", classify(err)
	}
	if t := rec.String("_owningteam_value"); t != "" {
		return crm.Bind("teams", t), nil
	}
	if u := rec.String("_owninguser_value"); u != "" {
		return crm.Bind("systemusers", u), nil
	}
	return "", nil
}

func signalPatientMap(set mapSet, name string) *maps.EntityMap {
	for _, m := range set.candidates(queues.SideFHIR, "Patient") {
		if m.Name() == name {
			return m.Def()
		}
	}
	return nil
}

func cutRef(ref string) (typ, id string, ok bool) {
	for i := len(ref) - 1; i >= 0; i-- {
		if ref[i] == '/' {
			return ref[:i], ref[i+1:], ref[i+1:] != ""
		}
	}
	return "", "", false
}
