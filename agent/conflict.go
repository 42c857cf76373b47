package agent

// The pipeline's use of the field-level merge (merge.go): for a message
// whose target record exists, compare each mapped attribute on both sides
// with the pair's base state, decide per attribute what this message may
// write, and record conflicts, held conflicts and the base that results.
//
// A message travels one way, from the side that changed to the other, and
// never writes its own source. An attribute whose new value belongs to the
// source's side (changed on the target only, or a conflict the target
// wins) is left out of the write; the target's own change notice carries
// it the other way and names, in its decision, the value it replaces. The
// base of an attribute left out stays as it was, so that the difference
// is still seen when that notice comes.

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"time"

	"gorm.io/gorm"

	"github.com/fhirsync/fhirsync/agent/fhir"
	"github.com/fhirsync/fhirsync/logs"
	"github.com/fhirsync/fhirsync/maps"
	"github.com/fhirsync/fhirsync/queues"
)

// conflictStore keeps the conflicts held for a person (logs.Store).
type conflictStore interface {
	HoldTx(tx *gorm.DB, c logs.HeldConflict, fhirValue, crmValue any) error
	ConflictsFor(ctx context.Context, entityMap, fhirID string) ([]logs.HeldConflict, error)
	SettleConflictTx(tx *gorm.DB, id int64, status string) error
	ResolvedConflicts(ctx context.Context, limit int) ([]logs.HeldConflict, error)
}

// Held-conflict states the agent moves a row to.
const (
	conflictApplied    = "applied"
	conflictSuperseded = "superseded"
	conflictResolved   = "resolved"
)

// pairMerge is the merge of one message's linked pair.
type pairMerge struct {
	// skip names the attributes this message leaves out of its write.
	skip maps.Except
	// keep names the attributes whose base stays as it was.
	keep map[string]bool
	// old is the base before this message (nil: none); now the hashes of
	// both sides as read.
	old, now *linkBase
	// read is the values and hashes that gave now, for the base after the
	// write (baseHasher.of); the pipeline hands it back to the hasher once
	// the message is done with it.
	read []attrValues
	// conflicts are the attributes changed on both sides, as settled.
	conflicts []logs.Conflict
	held      []heldAttr
	// applied are held conflicts a person resolved whose value this
	// message writes.
	applied  []int64
	deferred int
	// backward counts the attributes whose value is to travel from the
	// target to the source: the target's own change notice carries them.
	backward int
	// fhirAt and crmAt are when each side was last edited by someone
	// other than fhirsync (zero: not known).
	fhirAt, crmAt time.Time
}

// heldAttr is an attribute held for a person in this message.
type heldAttr struct {
	attr                    string
	fhirHash, crmHash       [baseHashSize]byte
	fhirChanged, crmChanged bool
	fhirValue, crmValue     any
}

// pairOf is the link of src and its target record cur.
func pairOf(f *flow, em *maps.EntityMap, src, cur record) link {
	l := link{EntityMap: em.Name, FHIRType: em.FHIRType, CRMEntity: em.CRMEntity}
	if f.side == queues.SideFHIR {
		l.FHIRID, l.CRMID = src.ID, cur.ID
	} else {
		l.FHIRID, l.CRMID = cur.ID, src.ID
	}
	return l
}

// sidesOf returns the FHIR resource, the CRM record and its child rows of
// a pair.
func sidesOf(f *flow, src, cur record) (res, rec map[string]any, kids map[string][]map[string]any) {
	if f.side == queues.SideFHIR {
		rec, kids = crmParts(&cur)
		return src.Data, rec, kids
	}
	rec, kids = crmParts(&src)
	return cur.Data, rec, kids
}

// mergeOptions is the agent's last-writer-wins configuration.
func (p *pipeline) mergeOptions() mergeOptions {
	o := p.mergeOpts
	o.Now = p.now()
	return o
}

// baseOf is the base state of l: pb's when pb was read for l, else read.
func (p *pipeline) baseOf(ctx context.Context, l link, pb *baseRead) (*linkBase, error) {
	b, err := pb.of(l)
	if errors.Is(err, errBaseNotRead) {
		return p.links.base(ctx, l)
	}
	return b, err
}

// mergePair merges src with its target record cur, whose mapping (with no
// attribute left out) is out. pb, when not nil, is the base read with the
// link; it serves when it is this pair's.
func (p *pipeline) mergePair(ctx context.Context, f *flow, mp *maps.Mapping, src, cur record, srcOwn, linked bool, pb *baseRead, out mapped) (*pairMerge, error) {
	em := mp.Def()
	l := pairOf(f, em, src, cur)
	res, rec, kids := sidesOf(f, src, cur)
	mg := &pairMerge{skip: maps.Except{}, keep: map[string]bool{}}
	old, err := p.baseOf(ctx, l, pb)
	switch {
	case errors.Is(err, errNoBase):
	case err != nil:
		return nil, err
	default:
		mg.old = old
	}
	vals := p.base.read(mp, l, res, rec, kids)
	mg.read = vals
	mg.now = &linkBase{EntityMap: em.Name, FHIRID: l.FHIRID, CRMID: l.CRMID, MapVersion: mp.Version(), Attrs: make(map[string]attrHash, len(vals))}
	changed := make(map[string]bool, len(out.ChangedAttrs))
	for _, a := range out.ChangedAttrs {
		changed[a] = true
	}
	target := queues.SideCRM
	if f.side == queues.SideCRM {
		target = queues.SideFHIR
	}
	// A change travels back only when the other direction updates.
	back := flowOf(em, target).Allows(maps.OpUpdate)
	var curOwn bool
	if mg.fhirAt, mg.crmAt, curOwn, err = p.editTimes(ctx, f, src, &cur, srcOwn, mg.old); err != nil {
		return nil, err
	}
	if curOwn && mg.old == nil && !linked && p.now().Sub(modifiedOf(f, cur)) < pairBusyWindow {
		// fhirsync has just written the target and the message that wrote
		// it has not committed the pair's link and base yet: wait for it
		// rather than merge without knowing when the target was edited.
		return nil, errPairBusy
	}
	fAt, cAt := mg.fhirAt, mg.crmAt
	opts := p.mergeOptions()
	// With no base, a CRM record that fhirsync created for this very
	// resource (it holds the resource's id) and that nobody but fhirsync's
	// own user has changed since holds nothing of anyone else's: a write
	// whose decision was lost (a crash between the write and its commit)
	// or a pair synced before the base was kept. Its values are taken as
	// the base, so the resource's values flow instead of being weighed
	// against a write of fhirsync's own.
	trusted := mg.old == nil && f.side == queues.SideFHIR && rec != nil &&
		strings.EqualFold(fmt.Sprint(rec[em.Correlation.CRMAttribute]), src.ID) &&
		p.crmUsers.has(fmt.Sprint(rec["_modifiedby_value"]))
	var resolutions []logs.HeldConflict
	var loaded bool
	for _, v := range vals {
		mg.now.Attrs[v.name] = v.h
		a := mp.AttributeNamed(v.name)
		dir := maps.Both
		if a != nil && a.Direction != "" {
			dir = a.Direction
		} else if x := mp.ExpansionMapNamed(v.name); a == nil && x != nil && x.Direction != "" {
			dir = x.Direction
		}
		if !mergeTravels(dir, target) {
			// Not mapped this way: its change is the other direction's.
			mg.keep[v.name] = true
			continue
		}
		if !back {
			if f.side == queues.SideFHIR {
				dir = maps.FHIRToCRM
			} else {
				dir = maps.CRMToFHIR
			}
		}
		in := mergeInput{Attribute: v.name, Direction: dir, Same: !changed[v.name],
			FHIR: mergeSide{Value: v.fhir, Hash: v.h.FHIR, Modified: fAt},
			CRM:  mergeSide{Value: v.crm, Hash: v.h.CRM, Modified: cAt}}
		if a != nil {
			in.Policy = a.Policy(em)
		} else {
			in.Policy = em.ConflictPolicy
		}
		if mg.old != nil {
			if b, ok := mg.old.Attrs[v.name]; ok {
				// A side whose hash is not known (child rows just written)
				// counts as unchanged, and its hash is learned now.
				if b.FHIR == unknownHash {
					b.FHIR = v.h.FHIR
				}
				if b.CRM == unknownHash {
					b.CRM = v.h.CRM
				}
				in.Base = mergeBase{State: baseSynced, FHIR: b.FHIR, CRM: b.CRM}
			}
		} else if trusted {
			in.Base = mergeBase{State: baseSynced, FHIR: unknownHash, CRM: v.h.CRM}
		}
		r := mergeAttribute(in, opts)
		toTarget, toSource := r.ToCRM, r.ToFHIR
		if target == queues.SideFHIR {
			toTarget, toSource = r.ToFHIR, r.ToCRM
		}
		c := logs.Conflict{Attribute: v.name, Policy: string(r.DecidedBy), Tie: r.Tie}
		if r.Held {
			if !loaded && p.conflicts != nil {
				if resolutions, err = p.conflicts.ConflictsFor(ctx, em.Name, l.FHIRID); err != nil {
					return nil, fmt.Errorf("reading the held conflicts of %s %s: %w", em.Name, l.FHIRID, err)
				}
				loaded = true
			}
			if hc, ok := resolvedFor(resolutions, v.name, v.h); ok {
				c = logs.Conflict{Attribute: v.name, Policy: "person"}
				if hc.Resolution == string(f.side) {
					toTarget = &mergeWrite{From: f.side}
					mg.applied = append(mg.applied, hc.ID)
				} else {
					toTarget, toSource = nil, &mergeWrite{From: target}
				}
			}
		}
		switch {
		case toTarget != nil:
			if r.Conflict {
				c.Overwritten = string(target)
				mg.conflicts = append(mg.conflicts, c)
			}
		case toSource != nil:
			mg.skip[v.name], mg.keep[v.name] = true, true
			mg.backward++
			if r.Conflict {
				c.Deferred = true
				mg.conflicts = append(mg.conflicts, c)
				mg.deferred++
			}
		case r.Held:
			mg.skip[v.name], mg.keep[v.name] = true, true
			c.Held = true
			mg.conflicts = append(mg.conflicts, c)
			var fb, cb [baseHashSize]byte
			if mg.old != nil {
				if b, ok := mg.old.Attrs[v.name]; ok {
					fb, cb = b.FHIR, b.CRM
				}
			}
			mg.held = append(mg.held, heldAttr{attr: v.name, fhirHash: v.h.FHIR, crmHash: v.h.CRM,
				fhirChanged: in.Base.State != baseSynced || fb != v.h.FHIR, crmChanged: in.Base.State != baseSynced || cb != v.h.CRM,
				fhirValue: v.fhir, crmValue: v.crm})
		case r.BaseMoves:
			// Unchanged or converged: nothing to write, the base moves.
		default:
			// Blocked by a direction: nothing moves.
			mg.skip[v.name], mg.keep[v.name] = true, true
		}
	}
	return mg, nil
}

// resolvedFor finds a person's resolution of attr that still applies: the
// held conflict was resolved and neither side changed since.
func resolvedFor(hcs []logs.HeldConflict, attr string, h attrHash) (logs.HeldConflict, bool) {
	for _, hc := range hcs {
		if hc.Attribute == attr && hc.Status == conflictResolved &&
			string(hc.FHIRHash) == string(h.FHIR[:]) && string(hc.CRMHash) == string(h.CRM[:]) {
			return hc, true
		}
	}
	return logs.HeldConflict{}, false
}

// baseWith is b with the attributes in keep set back to their entries in
// old (or dropped, when old has none): the base a message leaves.
func (mg *pairMerge) baseWith(b *linkBase) *linkBase {
	if b == nil {
		return nil
	}
	for name := range mg.keep {
		if mg.old != nil {
			if h, ok := mg.old.Attrs[name]; ok {
				b.Attrs[name] = h
				continue
			}
		}
		delete(b.Attrs, name)
	}
	return b
}

// unchangedBase is the base after a message that writes nothing; nil
// when it equals the old one.
func (mg *pairMerge) unchangedBase() *linkBase {
	b := &linkBase{EntityMap: mg.now.EntityMap, FHIRID: mg.now.FHIRID, CRMID: mg.now.CRMID, MapVersion: mg.now.MapVersion, Attrs: make(map[string]attrHash, len(mg.now.Attrs))}
	for k, v := range mg.now.Attrs {
		b.Attrs[k] = v
	}
	b = mg.baseWith(b)
	if mg.old != nil && len(mg.old.Attrs) == len(b.Attrs) {
		same := true
		for k, v := range b.Attrs {
			if o, ok := mg.old.Attrs[k]; !ok || o != v {
				same = false
				break
			}
		}
		if same {
			return nil
		}
	}
	return b
}

// holdEffects returns the transaction work that records mg's held
// conflicts and settles the resolutions it applied.
func (p *pipeline) holdEffects(mg *pairMerge, l link, messageID string, at time.Time) []func(tx *gorm.DB) error {
	if p.conflicts == nil {
		return nil
	}
	var out []func(tx *gorm.DB) error
	for _, h := range mg.held {
		hc := logs.HeldConflict{EntityMap: l.EntityMap, FHIRType: l.FHIRType, FHIRID: l.FHIRID, CRMEntity: l.CRMEntity, CRMID: l.CRMID,
			Attribute: h.attr, MessageID: messageID, FHIRHash: append([]byte(nil), h.fhirHash[:]...), CRMHash: append([]byte(nil), h.crmHash[:]...),
			FHIRChanged: h.fhirChanged, CRMChanged: h.crmChanged, HeldAt: at}
		fv, cv := h.fhirValue, h.crmValue
		out = append(out, func(tx *gorm.DB) error { return p.conflicts.HoldTx(tx, hc, fv, cv) })
	}
	for _, id := range mg.applied {
		out = append(out, func(tx *gorm.DB) error { return p.conflicts.SettleConflictTx(tx, id, conflictApplied) })
	}
	return out
}

// heldNames lists the held attributes.
func (mg *pairMerge) heldNames() string {
	names := make([]string, len(mg.held))
	for i, h := range mg.held {
		names[i] = h.attr
	}
	return strings.Join(names, ", ")
}

// crmModified is a CRM record's modifiedon; zero when absent.
func crmModified(rec map[string]any) time.Time {
	s, _ := rec["modifiedon"].(string)
	t, err := time.Parse(time.RFC3339Nano, s)
	if err != nil {
		return time.Time{}
	}
	return t
}

// resolutionResend is how long a resolution sent to be written waits
// before it is sent again (its message may have been lost, or failed).
const resolutionResend = 5 * time.Minute

// sendResolutions sends a change notice for each held conflict a person
// resolved, so the pipeline writes the chosen value: a notice of the chosen
// side's record for an attribute, a delete notice of the deleted side's
// record for a delete that met an edit. The pipeline finds the resolution
// when it merges the pair again, writes it and marks it applied.
func (a *Agent) sendResolutions(ctx context.Context) {
	t := time.NewTicker(a.cfg.ResolveEvery)
	defer t.Stop()
	sent := map[int64]time.Time{}
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		hcs, err := a.pipe.conflicts.ResolvedConflicts(ctx, 100)
		if err != nil {
			a.log.Warn("reading resolved conflicts failed", "error", err)
			continue
		}
		now := time.Now()
		live := make(map[int64]time.Time, len(hcs))
		for _, hc := range hcs {
			if at, ok := sent[hc.ID]; ok && now.Sub(at) < resolutionResend {
				live[hc.ID] = at
				continue
			}
			n := resolutionNotice(hc, now)
			msg, err := n.Message()
			if err != nil {
				a.log.Warn("a resolved conflict cannot be sent", "conflict", hc.ID, "error", err)
				continue
			}
			q := a.deps.FHIRChanges
			if n.Side == queues.SideCRM {
				q = a.deps.CRMChanges
			}
			if err := q.Send(ctx, msg); err != nil {
				a.log.Warn("sending a resolved conflict failed; it is tried again", "conflict", hc.ID, "error", err)
				continue
			}
			live[hc.ID] = now
		}
		sent = live
	}
}

// resolutionNotice is the change notice that carries hc's resolution.
func resolutionNotice(hc logs.HeldConflict, at time.Time) queues.Notice {
	n := queues.Notice{V: queues.NoticeVersion, Event: queues.EventUpdated, Origin: "resolution", ChangedAt: at.UTC()}
	side := hc.Resolution
	if hc.Attribute == "" {
		side, n.Event = hc.DeletedSide, queues.EventDeleted
	}
	if side == string(queues.SideCRM) {
		n.Side, n.Type, n.ID = queues.SideCRM, hc.CRMEntity, hc.CRMID
	} else {
		n.Side, n.Type, n.ID = queues.SideFHIR, hc.FHIRType, hc.FHIRID
	}
	return n
}

// deleteVersusEdit decides a delete on f's side when the target record
// (cur) changed since the pair's base: nil when it did not (or no base is
// kept), else the step that ends the message — held, overruled — or, when
// the delete wins, apply true with the edits it removes named in d.
func (p *pipeline) deleteVersusEdit(ctx context.Context, f *flow, m *maps.Mapping, n queues.Notice, cur record, cached *link, u *unit) (st *step, apply bool, err error) {
	if p.base == nil || cached == nil {
		return nil, true, nil
	}
	em := m.Def()
	l := *cached
	old, err := p.links.base(ctx, l)
	if errors.Is(err, errNoBase) {
		return nil, true, nil
	}
	if err != nil {
		return nil, false, err
	}
	// Only the target's side (the one that may have been edited) is read.
	var res, rec map[string]any
	var kids map[string][]map[string]any
	var editAt time.Time
	if f.side == queues.SideFHIR {
		rec, kids = crmParts(&cur)
		editAt = crmModified(rec)
	} else {
		res = cur.Data
		editAt = fhir.Resource(res).LastUpdated()
	}
	var edited []string
	vals := p.base.read(m, l, res, rec, kids)
	defer p.base.done(vals)
	for _, v := range vals {
		b, ok := old.Attrs[v.name]
		if !ok {
			continue
		}
		if (f.side == queues.SideFHIR && b.CRM != v.h.CRM && b.CRM != unknownHash) || (f.side == queues.SideCRM && b.FHIR != v.h.FHIR && b.FHIR != unknownHash) {
			edited = append(edited, v.name)
		}
	}
	if len(edited) == 0 {
		return nil, true, nil
	}
	d := u.d
	target := otherSideOf(f.side)
	// A person's resolution decides first.
	if p.conflicts != nil {
		hcs, err := p.conflicts.ConflictsFor(ctx, em.Name, l.FHIRID)
		if err != nil {
			return nil, false, fmt.Errorf("reading the held conflicts of %s %s: %w", em.Name, l.FHIRID, err)
		}
		for _, hc := range hcs {
			if hc.Attribute != "" || hc.Status != conflictResolved || hc.DeletedSide != string(f.side) {
				continue
			}
			id := hc.ID
			u.effects = append(u.effects, func(tx *gorm.DB) error { return p.conflicts.SettleConflictTx(tx, id, conflictApplied) })
			if hc.Resolution == string(f.side) {
				for _, a := range edited {
					d.Conflicts = append(d.Conflicts, logs.Conflict{Attribute: a, Policy: "person", Overwritten: string(target)})
				}
				return nil, true, nil
			}
			d.Conflicts = []logs.Conflict{{Policy: "person", Deferred: true}}
			return stop(logs.OutcomeSkipped, logs.ReasonDeleteOverruled, fmt.Sprintf("A person kept the %s record that was edited after the delete; the delete is not applied.", otherSide(f))), false, nil
		}
	}
	policy := em.ConflictPolicy.OrDefault()
	decided, tie := policy, false
	var winner queues.Side
	switch policy {
	case maps.ConflictFHIRWins:
		winner = queues.SideFHIR
	case maps.ConflictCRMWins:
		winner = queues.SideCRM
	case maps.ConflictLastWriter:
		fAt, cAt := n.ChangedAt, editAt
		if f.side == queues.SideCRM {
			fAt, cAt = editAt, n.ChangedAt
		}
		opts := p.mergeOptions()
		var ok bool
		if winner, ok = opts.lastWriter(fAt, cAt); !ok {
			tie, decided = true, opts.tie()
			switch decided {
			case maps.ConflictFHIRWins:
				winner = queues.SideFHIR
			case maps.ConflictCRMWins:
				winner = queues.SideCRM
			}
		}
	}
	switch {
	case winner == "":
		d.Conflicts = []logs.Conflict{{Policy: string(maps.ConflictHold), Tie: tie, Held: true}}
		if p.conflicts != nil {
			hc := logs.HeldConflict{EntityMap: em.Name, FHIRType: em.FHIRType, FHIRID: l.FHIRID, CRMEntity: em.CRMEntity, CRMID: l.CRMID,
				DeletedSide: string(f.side), MessageID: d.MessageID, FHIRChanged: f.side == queues.SideCRM, CRMChanged: f.side == queues.SideFHIR, HeldAt: p.now().UTC()}
			u.effects = append(u.effects, func(tx *gorm.DB) error { return p.conflicts.HoldTx(tx, hc, nil, nil) })
		}
		return stop(logs.OutcomeHeld, logs.ReasonDeleteHeld, fmt.Sprintf("Held for a person: deleted in %s while %s was edited on the other side.", sideName(f.side), strings.Join(edited, ", "))), false, nil
	case winner != f.side:
		d.Conflicts = []logs.Conflict{{Policy: string(decided), Tie: tie, Deferred: true}}
		return stop(logs.OutcomeSkipped, logs.ReasonDeleteOverruled, fmt.Sprintf("Deleted in %s while %s was edited in %s; %s keeps the edited record.", sideName(f.side), strings.Join(edited, ", "), otherSide(f), decided)), false, nil
	}
	for _, a := range edited {
		d.Conflicts = append(d.Conflicts, logs.Conflict{Attribute: a, Policy: string(decided), Tie: tie, Overwritten: string(target)})
	}
	return nil, true, nil
}

func otherSideOf(s queues.Side) queues.Side {
	if s == queues.SideFHIR {
		return queues.SideCRM
	}
	return queues.SideFHIR
}

func sideName(s queues.Side) string {
	if s == queues.SideFHIR {
		return "FHIR"
	}
	return "the CRM"
}

// linkedTargetGone decides a change whose linked, synced counterpart is
// gone: the other side deleted it. That delete's own notice settles the
// delete against this change (deleteVersusEdit), so the record is not
// created again here; nil when the pair was never synced with a base.
func (p *pipeline) linkedTargetGone(ctx context.Context, f *flow, em *maps.EntityMap, cached *link, d *logs.Decision) *step {
	if p.base == nil || cached == nil {
		return nil
	}
	if _, err := p.links.base(ctx, *cached); err != nil {
		return nil
	}
	d.Conflicts = []logs.Conflict{{Policy: string(em.ConflictPolicy.OrDefault()), Deferred: true}}
	return stop(logs.OutcomeSkipped, logs.ReasonConflictDeferred, fmt.Sprintf("The linked %s record was deleted; the delete's own decision settles it against this change, so it is not created again.", otherSide(f)))
}

// resolvedByPerson reports whether d applies a person's resolution.
func resolvedByPerson(d *logs.Decision) bool {
	for _, c := range d.Conflicts {
		if c.Policy == logs.PolicyPerson {
			return true
		}
	}
	return false
}

// changedSinceBase reports whether src — a version fhirsync wrote — holds
// a value of an attribute that travels to the other side and differs from
// the pair's base: an edit the write carried along. Without a link or a
// base there is nothing to compare with, and the version is an echo.
func (p *pipeline) changedSinceBase(ctx context.Context, f *flow, mp *maps.Mapping, src record, cached *link, pb *baseRead) (bool, error) {
	if p.base == nil || cached == nil {
		return false, nil
	}
	old, err := p.baseOf(ctx, *cached, pb)
	if errors.Is(err, errNoBase) {
		return false, nil
	}
	if err != nil {
		return false, err
	}
	em := mp.Def()
	// Only the source's side is compared.
	var res, rec map[string]any
	var kids map[string][]map[string]any
	target := queues.SideCRM
	if f.side == queues.SideFHIR {
		res = src.Data
	} else {
		target = queues.SideFHIR
		rec, kids = crmParts(&src)
	}
	dirs := make(map[string]maps.Direction, len(em.Attributes))
	for _, a := range em.Attributes {
		dirs[a.Name] = a.Direction
	}
	for _, x := range em.Expansions {
		dirs[x.Name] = x.Direction
	}
	vals := p.base.read(mp, *cached, res, rec, kids)
	defer p.base.done(vals)
	for _, v := range vals {
		if !mergeTravels(dirs[v.name], target) {
			continue
		}
		b, ok := old.Attrs[v.name]
		if !ok {
			return true, nil // never settled (a held or first-linked value)
		}
		if (f.side == queues.SideFHIR && b.FHIR != v.h.FHIR && b.FHIR != unknownHash) || (f.side == queues.SideCRM && b.CRM != v.h.CRM && b.CRM != unknownHash) {
			return true, nil
		}
	}
	return false, nil
}

// editTimes returns when each side of a pair was last edited by someone
// other than fhirsync: a side's modified time when its version was not
// written by fhirsync, else the time the base remembers. srcOwn says the
// source's version is one fhirsync wrote; cur is the target (nil: none).
func (p *pipeline) editTimes(ctx context.Context, f *flow, src record, cur *record, srcOwn bool, old *linkBase) (fhirAt, crmAt time.Time, curOwn bool, err error) {
	var oldF, oldC time.Time
	if old != nil {
		oldF, oldC = old.FHIREditedAt, old.CRMEditedAt
	}
	side := func(r record, own bool, isFHIR bool) time.Time {
		switch {
		case own && isFHIR:
			return oldF
		case own:
			return oldC
		case isFHIR:
			return fhir.Resource(r.Data).LastUpdated()
		}
		var rec map[string]any
		if st := crmState(&r); st != nil {
			rec = st.Record
		}
		return crmModified(rec)
	}
	if srcOwn {
		// The notice was judged an echo; what counts is whether the version
		// read — perhaps a person's edit made since — is fhirsync's.
		if srcOwn, err = p.writes.isOwn(ctx, string(f.side), src.Type, src.ID, src.Version); err != nil {
			return time.Time{}, time.Time{}, false, fmt.Errorf("checking the source's version: %w", err)
		}
	}
	srcAt := side(src, srcOwn, f.side == queues.SideFHIR)
	var curAt time.Time
	if cur != nil {
		curOwn, err = p.writes.isOwn(ctx, f.targetOf, cur.Type, cur.ID, cur.Version)
		if err != nil {
			return time.Time{}, time.Time{}, false, fmt.Errorf("checking the target's version: %w", err)
		}
		curAt = side(*cur, curOwn, f.side == queues.SideCRM)
	}
	if f.side == queues.SideFHIR {
		return srcAt, curAt, curOwn, nil
	}
	return curAt, srcAt, curOwn, nil
}

// errPairBusy means another message is syncing the pair right now.
var errPairBusy = errors.New("the pair is being synced by another message")

// pairBusyWindow is how recent fhirsync's own write to a target with no
// link and no base must be for the pair to count as busy.
const pairBusyWindow = time.Minute

// modifiedOf is the target record's modified time.
func modifiedOf(f *flow, cur record) time.Time {
	if f.side == queues.SideCRM {
		return fhir.Resource(cur.Data).LastUpdated()
	}
	var rec map[string]any
	if st := crmState(&cur); st != nil {
		rec = st.Record
	}
	return crmModified(rec)
}

// stampTimes records on b when each side was last edited by someone else.
func stampTimes(b *linkBase, fhirAt, crmAt time.Time) *linkBase {
	if b != nil {
		b.FHIREditedAt, b.CRMEditedAt = fhirAt, crmAt
	}
	return b
}

// pairLocks serialises, within one process, the messages that touch the
// same pair of records: one from each side may arrive at once.
//
// It also tells a message whether another one held a pair since a moment
// before it took the lock (releasedSince): a message names its pair by
// reading the link before it can lock it, and what it read then holds only
// if no message of the pair committed in between.
type pairLocks struct {
	mu   sync.Mutex
	held map[string]*pairLock
	// seq counts releases; released holds each key's last release, and
	// horizon the seq up to which entries were dropped (released keeps at
	// most maxReleased keys).
	seq, horizon uint64
	released     map[string]uint64
}

// maxReleased bounds pairLocks.released. Dropping it whole makes every
// stamp taken before then stale, which only costs the messages holding one
// a second read.
const maxReleased = 1 << 14

type pairLock struct {
	mu   sync.Mutex
	refs int
}

// lock takes the locks of keys, in order; waited reports that another
// message held one of them.
func (l *pairLocks) lock(keys []string) (unlock func(), waited bool) {
	slices.Sort(keys)
	keys = slices.Compact(keys)
	taken := make([]*pairLock, 0, len(keys))
	for _, k := range keys {
		l.mu.Lock()
		if l.held == nil {
			l.held = map[string]*pairLock{}
		}
		pl := l.held[k]
		if pl == nil {
			pl = &pairLock{}
			l.held[k] = pl
		}
		pl.refs++
		l.mu.Unlock()
		if !pl.mu.TryLock() {
			waited = true
			pl.mu.Lock()
		}
		taken = append(taken, pl)
	}
	var once sync.Once
	return func() {
		once.Do(func() {
			for i, pl := range taken {
				l.mu.Lock()
				l.seq++
				if len(l.released) >= maxReleased {
					l.released, l.horizon = nil, l.seq
				}
				if l.released == nil {
					l.released = map[string]uint64{}
				}
				l.released[keys[i]] = l.seq
				pl.mu.Unlock()
				if pl.refs--; pl.refs == 0 {
					delete(l.held, keys[i])
				}
				l.mu.Unlock()
			}
		})
	}, waited
}

// stamp marks the present, for releasedSince.
func (l *pairLocks) stamp() uint64 {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.seq
}

// releasedSince reports whether a lock of any of keys was released after
// stamp s, or may have been (the record of releases was dropped since).
// Called with the keys locked, false means no message of the pair
// committed since s: a message commits before it releases its pair.
func (l *pairLocks) releasedSince(keys []string, s uint64) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	if s < l.horizon {
		return true
	}
	for _, k := range keys {
		if l.released[k] > s {
			return true
		}
	}
	return false
}

// pairKeys names the pair a source record belongs to: its FHIR resource
// (the source itself, or for a CRM record the linked or correlated one)
// and its business key, which is all two records created on both sides
// share before they are linked. For a CRM record it reads the link, and
// returns it (nil: none) with looked true, and the pair's base read in the
// same statement, so the caller need not read either again.
func (p *pipeline) pairKeys(ctx context.Context, f *flow, m *maps.Mapping, src record) (keys []string, l *link, b *baseRead, looked bool) {
	em := m.Def()
	if f.side == queues.SideFHIR {
		keys = append(keys, "fhir:"+em.FHIRType+"/"+src.ID)
		if v, ok := m.BusinessKeyValue(src.Data); ok {
			keys = append(keys, "key:"+em.FHIRType+"/"+v)
		}
		return keys, nil, nil, false
	}
	if cl, cb, err := p.links.byCRMWithBase(ctx, em.Name, src.ID); err == nil {
		l, b = &cl, cb
		keys = append(keys, "fhir:"+em.FHIRType+"/"+cl.FHIRID)
	} else if st := crmState(&src); st != nil {
		if id, _ := st.Record[em.Correlation.CRMAttribute].(string); id != "" {
			keys = append(keys, "fhir:"+em.FHIRType+"/"+id)
		}
	}
	if v := crmBusinessKey(em, &src); v != "" {
		keys = append(keys, "key:"+em.FHIRType+"/"+v)
	}
	return keys, l, b, true
}

// backwardNotice is a change notice of the target record cur, for a merge
// that left a value on the target which is to travel the other way: the
// target's own notice may have been spent already (deferred or held
// then, one-sided now), so one is queued to carry it. Its decision is
// "unchanged" when the target's own notice got there first.
func backwardNotice(f *flow, cur record, at time.Time) queues.Notice {
	side := queues.SideCRM
	if f.side == queues.SideCRM {
		side = queues.SideFHIR
	}
	return queues.Notice{V: queues.NoticeVersion, Side: side, Type: cur.Type, ID: cur.ID, Event: queues.EventUpdated, Origin: "merge", ChangedAt: at.UTC()}
}

// supersedeResolutions settles, for the message that carries a person's
// resolution, the resolved attribute conflicts of the pair it did not
// apply: a side changed again since the conflict was held, so the choice
// no longer applies (the merge decided the attribute afresh), and it is
// not sent again.
func (p *pipeline) supersedeResolutions(ctx context.Context, mg *pairMerge, l link, u *unit) error {
	if p.conflicts == nil {
		return nil
	}
	hcs, err := p.conflicts.ConflictsFor(ctx, l.EntityMap, l.FHIRID)
	if err != nil {
		return err
	}
	for _, hc := range hcs {
		if hc.Attribute == "" || hc.Status != conflictResolved || slices.Contains(mg.applied, hc.ID) ||
			slices.ContainsFunc(mg.held, func(h heldAttr) bool { return h.attr == hc.Attribute }) {
			continue // applied, or held again (the row is held afresh)
		}
		id := hc.ID
		u.effects = append(u.effects, func(tx *gorm.DB) error { return p.conflicts.SettleConflictTx(tx, id, conflictSuperseded) })
	}
	return nil
}
