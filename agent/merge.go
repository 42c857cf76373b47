package agent

// The field-level three-way merge: for every mapped attribute of a linked
// pair of records, compare each side's current value with the base — what
// fhirsync last synced there — and decide what to write to each side,
// whether it is a conflict, which policy settled it, which values were
// overwritten and whether the base moves.
//
// It is a pure function of its inputs: no I/O, no clock, no database. The
// pipeline is to read both sides, load the base, hash each side's current
// values as the base does, ask the mapping engine whether the two sides
// hold the same value, call mergeRecord, write what it says (with
// If-Match), and record the new base — for the attributes whose base moves
// — in the same transaction as the decision that names every overwritten
// value. That wiring is not in this file.

import (
	"time"

	"github.com/fhirsync/fhirsync/maps"
	"github.com/fhirsync/fhirsync/queues"
)

// mergeHash is a keyed hash of one side's value of an attribute, in that
// side's own form, as the base state keeps it (16 bytes of HMAC-SHA256;
// see base.go). The merge only compares hashes of the same side.
type mergeHash = [16]byte

// mergeEmpty reports whether v counts as "no value" for the merge: nil, "",
// or an empty list. To the CRM a cleared field and a never-set one are the
// same.
func mergeEmpty(v any) bool {
	switch x := v.(type) {
	case nil:
		return true
	case string:
		return x == ""
	case []any:
		return len(x) == 0
	case []string:
		return len(x) == 0
	}
	return false
}

// mergeBaseState says whether an attribute has a base.
type mergeBaseState uint8

const (
	// baseUnknown: never synced (the first sync of a linked pair, or a
	// record created on both sides and linked by business key) or the base
	// was lost. Both sides count as changed.
	baseUnknown mergeBaseState = iota
	// baseSynced: the attribute was synced; FHIR and CRM are the hashes of
	// what each side held then. "Synced empty" is a synced base whose
	// hashes are those of no value, so a side that gains a value differs
	// from it like any other edit.
	baseSynced
)

// mergeBase is one attribute's common ancestor.
type mergeBase struct {
	State     mergeBaseState
	FHIR, CRM mergeHash
}

// mergeSide is one side's current value of an attribute.
type mergeSide struct {
	// Value is the value in the attribute's common form (as the mapping
	// engine compares the two sides); nil, "" or an empty list is empty.
	// The merge copies it into a write and never logs it.
	Value any
	// Hash is the keyed hash of this side's value in this side's form: the
	// hash the base keeps for this side.
	Hash mergeHash
	// Modified is when the record last changed on this side (FHIR
	// meta.lastUpdated, CRM modifiedon); zero when unknown.
	Modified time.Time
}

// mergeInput is one mapped attribute of a linked pair.
type mergeInput struct {
	Attribute string
	// Policy is the attribute's conflict policy (maps.AttributeMap.Policy);
	// empty means last-writer-wins.
	Policy maps.ConflictPolicy
	// Direction is the attribute map's direction; empty means both. A
	// one-way attribute has one source, which wins every conflict whatever
	// Policy says, and changes on its target side never travel back.
	Direction maps.Direction
	Base      mergeBase
	FHIR, CRM mergeSide
	// Same says the two sides hold the same value in the common form (the
	// mapping engine's diff finds nothing to write). The two hashes cannot
	// say it: each is of its own side's form.
	Same bool
}

// defaultMergeSkew is the clock-skew allowance of last-writer-wins when
// mergeOptions.Skew is zero. The two modified times come from two machines
// (the FHIR server's clock and the CRM's), neither of them fhirsync's, and
// may carry whole seconds only; two seconds covers a well-synchronised pair
// of clocks at that precision and is short next to how long a person takes
// to edit a record.
const defaultMergeSkew = 2 * time.Second

// mergeOptions tunes last-writer-wins.
type mergeOptions struct {
	// Skew is the clock-skew allowance: two modified times no more than
	// Skew apart count as simultaneous, because which came first is not
	// known. Zero means defaultMergeSkew; negative means none.
	Skew time.Duration
	// Tie settles a last-writer-wins conflict whose order is not known
	// (times within Skew, a time missing, or a time ahead of Now by more
	// than Skew): hold (the default), fhir-wins or crm-wins. Hold is the
	// default because any automatic choice there is a guess that overwrites
	// an edit which may well be the later one; a person decides instead.
	Tie maps.ConflictPolicy
	// Now, when set, is the agent's clock. A modified time more than Skew
	// after it comes from a clock running ahead and would win every
	// conflict until real time caught up, so it is not trusted.
	Now time.Time
}

func (o mergeOptions) skew() time.Duration {
	switch {
	case o.Skew == 0:
		return defaultMergeSkew
	case o.Skew < 0:
		return 0
	}
	return o.Skew
}

func (o mergeOptions) tie() maps.ConflictPolicy {
	if o.Tie == maps.ConflictFHIRWins || o.Tie == maps.ConflictCRMWins {
		return o.Tie
	}
	return maps.ConflictHold
}

// lastWriter returns the side modified last, or ok false when the order is
// not known (see mergeOptions).
func (o mergeOptions) lastWriter(fhirAt, crmAt time.Time) (side queues.Side, ok bool) {
	skew := o.skew()
	if fhirAt.IsZero() || crmAt.IsZero() {
		return "", false
	}
	if !o.Now.IsZero() && (fhirAt.After(o.Now.Add(skew)) || crmAt.After(o.Now.Add(skew))) {
		return "", false
	}
	d := fhirAt.Sub(crmAt)
	if d <= skew && d >= -skew {
		return "", false
	}
	if d > 0 {
		return queues.SideFHIR, true
	}
	return queues.SideCRM, true
}

// mergeWrite is a value to write to one side: the other side's value.
type mergeWrite struct {
	From  queues.Side
	Value any
}

// mergeOverwrite names a value a decision replaced: which attribute, on
// which side, decided by which policy (attrMerge.DecidedBy: for a
// last-writer-wins tie, the tie-breaker). It never carries the value.
type mergeOverwrite struct {
	Attribute string
	Side      queues.Side
	Policy    maps.ConflictPolicy
}

// mergeRule says what decided an attribute.
type mergeRule string

const (
	ruleUnchanged mergeRule = "unchanged" // both sides equal the base: nothing to do
	ruleConverged mergeRule = "converged" // both sides hold the same value, new or with no base: the base moves
	ruleOneSide   mergeRule = "one-side"  // changed on one side only (or, with no base, the other side empty): it flows
	ruleBlocked   mergeRule = "direction" // the change would flow against the attribute's direction: nothing moves
	rulePolicy    mergeRule = "policy"    // a conflict settled by a policy: the loser is overwritten
	ruleHeld      mergeRule = "held"      // a conflict held for a person: nothing moves
)

// attrMerge is the merge's answer for one attribute.
type attrMerge struct {
	Attribute string
	Rule      mergeRule
	// Policy is the policy that applies to the attribute: its own or its
	// entity map's, or fhir-wins / crm-wins for a one-way attribute.
	Policy maps.ConflictPolicy
	// Conflict: both sides changed, to different values (with no base:
	// both hold values, and they differ).
	Conflict bool
	// DecidedBy is the policy that settled the conflict: Policy, or for a
	// last-writer-wins conflict whose order is not known, the tie-breaker
	// (mergeOptions.Tie), and Tie says so. Empty when not a conflict.
	DecidedBy maps.ConflictPolicy
	Tie       bool
	// Held: the conflict waits for a person; both sides stay as they are.
	Held bool
	// ToFHIR and ToCRM are what to write; nil leaves that side alone.
	ToFHIR, ToCRM *mergeWrite
	// BaseMoves says the base becomes what both sides hold once the writes
	// have succeeded (the hashes of each side as written). When false, the
	// base must stay exactly as it was — a held conflict or a blocked
	// change is still a difference from the base next time — even though
	// the rest of the record's base moves.
	BaseMoves bool
	// Overwritten names the value the decision replaced, if any.
	Overwritten []mergeOverwrite
}

// mergeResult is the merge of one linked pair of records.
type mergeResult struct {
	Attributes []attrMerge
}

// Overwritten lists every value the merge replaced, attribute by attribute.
func (r mergeResult) Overwritten() []mergeOverwrite {
	var out []mergeOverwrite
	for _, a := range r.Attributes {
		out = append(out, a.Overwritten...)
	}
	return out
}

// Held names the attributes held for a person.
func (r mergeResult) Held() []string {
	var out []string
	for _, a := range r.Attributes {
		if a.Held {
			out = append(out, a.Attribute)
		}
	}
	return out
}

// mergeRecord merges every mapped attribute of a linked pair. A held
// attribute does not stop the others: they flow as they would without it.
//
// Deletes are not merged here. When a side's record is gone, the entity
// map's delete policy (propagate, deactivate or ignore, and what a delete
// meets when the other side edited since the base) decides before any
// field is merged; only when both records exist does the pipeline call
// this. Records created on both sides are linked by business key first,
// and then merged with an unknown base.
func mergeRecord(in []mergeInput, opts mergeOptions) mergeResult {
	out := mergeResult{Attributes: make([]attrMerge, 0, len(in))}
	for _, a := range in {
		out.Attributes = append(out.Attributes, mergeAttribute(a, opts))
	}
	return out
}

// mergeAttribute decides one attribute:
//
//   - both sides hold the same value: nothing to write; the base moves;
//   - changed on one side only: it flows to the other side;
//   - no base and one side empty: the other side's value flows;
//   - otherwise (changed on both sides to different values, or no base and
//     two different values): a conflict, settled by the policy.
//
// A flow against a one-way attribute's direction writes nothing and keeps
// the base, so the change is still seen as a change next time.
func mergeAttribute(in mergeInput, opts mergeOptions) attrMerge {
	out := attrMerge{Attribute: in.Attribute, Policy: mergePolicy(in)}
	known := in.Base.State == baseSynced
	fChanged := !known || in.FHIR.Hash != in.Base.FHIR
	cChanged := !known || in.CRM.Hash != in.Base.CRM
	if in.Same {
		out.Rule, out.BaseMoves = ruleConverged, true
		if !fChanged && !cChanged {
			out.Rule = ruleUnchanged
		}
		return out
	}
	if !known {
		// No base: both count as changed, except that an empty side has
		// nothing to lose, so the other side flows.
		fChanged, cChanged = !mergeEmpty(in.FHIR.Value), !mergeEmpty(in.CRM.Value)
	}
	switch {
	case fChanged && !cChanged:
		return mergeFlow(out, in, queues.SideFHIR, ruleOneSide)
	case cChanged && !fChanged:
		return mergeFlow(out, in, queues.SideCRM, ruleOneSide)
	case !fChanged && !cChanged:
		// Different values, neither changed since the base: only possible
		// when the caller's hashes and Same disagree. Move nothing.
		out.Rule = ruleBlocked
		return out
	}
	out.Conflict = true
	out.DecidedBy = out.Policy
	if out.Policy == maps.ConflictLastWriter {
		if _, ok := opts.lastWriter(in.FHIR.Modified, in.CRM.Modified); !ok {
			out.Tie, out.DecidedBy = true, opts.tie()
		}
	}
	var winner queues.Side
	switch out.DecidedBy {
	case maps.ConflictFHIRWins:
		winner = queues.SideFHIR
	case maps.ConflictCRMWins:
		winner = queues.SideCRM
	case maps.ConflictLastWriter:
		winner, _ = opts.lastWriter(in.FHIR.Modified, in.CRM.Modified)
	}
	if winner == "" { // hold, a tie held, or a policy this code does not know
		out.Rule, out.Held, out.DecidedBy = ruleHeld, true, maps.ConflictHold
		return out
	}
	return mergeFlow(out, in, winner, rulePolicy)
}

// mergePolicy is the policy that settles the attribute's conflicts.
func mergePolicy(in mergeInput) maps.ConflictPolicy {
	switch in.Direction {
	case maps.FHIRToCRM:
		return maps.ConflictFHIRWins
	case maps.CRMToFHIR:
		return maps.ConflictCRMWins
	}
	return in.Policy.OrDefault()
}

// mergeFlow writes the from side's value to the other side. When a policy
// decided it, the replaced value is named with that policy.
func mergeFlow(out attrMerge, in mergeInput, from queues.Side, rule mergeRule) attrMerge {
	to, value := queues.SideCRM, in.FHIR.Value
	if from == queues.SideCRM {
		to, value = queues.SideFHIR, in.CRM.Value
	}
	if !mergeTravels(in.Direction, to) {
		out.Rule = ruleBlocked
		return out
	}
	out.Rule, out.BaseMoves = rule, true
	w := &mergeWrite{From: from, Value: value}
	if to == queues.SideCRM {
		out.ToCRM = w
	} else {
		out.ToFHIR = w
	}
	if rule == rulePolicy {
		out.Overwritten = append(out.Overwritten, mergeOverwrite{Attribute: in.Attribute, Side: to, Policy: out.DecidedBy})
	}
	return out
}

// mergeTravels reports whether direction d carries values to side to.
func mergeTravels(d maps.Direction, to queues.Side) bool {
	switch d {
	case maps.FHIRToCRM:
		return to == queues.SideCRM
	case maps.CRMToFHIR:
		return to == queues.SideFHIR
	}
	return true
}
