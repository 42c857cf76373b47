package agent

import (
	"crypto/sha256"
	"encoding/json"
	"flag"
	"fmt"
	"math/rand/v2"
	"reflect"
	"testing"
	"time"

	"github.com/fhirsync/fhirsync/maps"
	"github.com/fhirsync/fhirsync/queues"
)

var (
	mergeCases = flag.Int("merge.cases", 1000, "number of random cases the merge model test checks")
	mergeSeed  = flag.Uint64("merge.seed", 0, "seed of the merge model test (0: from the clock; a failure prints its seed)")
)

// noBase stands for "never synced" in merge test cases.
type noBaseT struct{}

var noBase = noBaseT{}

// mergeTestHash stands in for the base's keyed hash: a hash of the side,
// the attribute and the value, so the two sides' hashes of one value
// differ, as the base's do.
func mergeTestHash(side queues.Side, attr string, v any) mergeHash {
	if mergeEmpty(v) {
		v = nil
	}
	j, err := json.Marshal(v)
	if err != nil {
		panic(err)
	}
	sum := sha256.Sum256(fmt.Appendf(nil, "%s\x00%s\x00%s", side, attr, j))
	var h mergeHash
	copy(h[:], sum[:])
	return h
}

func mergeTestSame(a, b any) bool {
	if mergeEmpty(a) || mergeEmpty(b) {
		return mergeEmpty(a) && mergeEmpty(b)
	}
	return reflect.DeepEqual(a, b)
}

// mergeCase is a merge input in terms of values.
type mergeCase struct {
	attr       string
	policy     maps.ConflictPolicy
	dir        maps.Direction
	base       any // noBase, or the value last synced (nil: synced empty)
	fhir, crm  any
	fhirAt     time.Time
	crmAt      time.Time
	opts       mergeOptions
	wantPolicy maps.ConflictPolicy
}

func (c mergeCase) input() mergeInput {
	attr := c.attr
	if attr == "" {
		attr = "telephone1"
	}
	in := mergeInput{Attribute: attr, Policy: c.policy, Direction: c.dir,
		FHIR: mergeSide{Value: c.fhir, Hash: mergeTestHash(queues.SideFHIR, attr, c.fhir), Modified: c.fhirAt},
		CRM:  mergeSide{Value: c.crm, Hash: mergeTestHash(queues.SideCRM, attr, c.crm), Modified: c.crmAt},
		Same: mergeTestSame(c.fhir, c.crm)}
	if c.base != noBase {
		in.Base = mergeBase{State: baseSynced, FHIR: mergeTestHash(queues.SideFHIR, attr, c.base), CRM: mergeTestHash(queues.SideCRM, attr, c.base)}
	}
	return in
}

// mergeWant is the expected answer; toFHIR/toCRM are the written values,
// noWrite when the side is left alone.
type mergeWant struct {
	rule        mergeRule
	conflict    bool
	held        bool
	tie         bool
	decidedBy   maps.ConflictPolicy
	toFHIR      any
	toCRM       any
	baseMoves   bool
	overwritten []queues.Side
}

type noWriteT struct{}

var noWrite = noWriteT{}

func writeValue(w *mergeWrite) any {
	if w == nil {
		return noWrite
	}
	return w.Value
}

func checkMerge(t *testing.T, c mergeCase, want mergeWant) {
	t.Helper()
	in := c.input()
	got := mergeAttribute(in, c.opts)
	if got.Rule != want.rule || got.Conflict != want.conflict || got.Held != want.held || got.Tie != want.tie ||
		got.DecidedBy != want.decidedBy || got.BaseMoves != want.baseMoves {
		t.Errorf("rule %s conflict %v held %v tie %v decidedBy %q baseMoves %v; want %s %v %v %v %q %v",
			got.Rule, got.Conflict, got.Held, got.Tie, got.DecidedBy, got.BaseMoves,
			want.rule, want.conflict, want.held, want.tie, want.decidedBy, want.baseMoves)
	}
	if w := writeValue(got.ToFHIR); !reflect.DeepEqual(w, want.toFHIR) {
		t.Errorf("to FHIR: %v, want %v", w, want.toFHIR)
	}
	if w := writeValue(got.ToCRM); !reflect.DeepEqual(w, want.toCRM) {
		t.Errorf("to CRM: %v, want %v", w, want.toCRM)
	}
	var sides []queues.Side
	for _, o := range got.Overwritten {
		sides = append(sides, o.Side)
		if o.Attribute != in.Attribute || o.Policy != got.DecidedBy {
			t.Errorf("overwrite %+v does not name the attribute %q and the deciding policy %q", o, in.Attribute, got.DecidedBy)
		}
	}
	if !reflect.DeepEqual(sides, want.overwritten) {
		t.Errorf("overwritten sides %v, want %v", sides, want.overwritten)
	}
	if c.wantPolicy != "" && got.Policy != c.wantPolicy {
		t.Errorf("policy %q, want %q", got.Policy, c.wantPolicy)
	}
}

var mergePolicies = []maps.ConflictPolicy{maps.ConflictFHIRWins, maps.ConflictCRMWins, maps.ConflictLastWriter, maps.ConflictHold}

// TestMergeMatrix: every cell of {one side edits, both edit alike, both
// edit differently, no base, empty values} × every policy.
func TestMergeMatrix(t *testing.T) {
	t.Parallel()
	t0 := time.Date(2026, 3, 1, 9, 0, 0, 0, time.UTC)
	later := t0.Add(10 * time.Second)
	crmSide, fhirSide := []queues.Side{queues.SideCRM}, []queues.Side{queues.SideFHIR}
	// conflictWant is what each policy does with a conflict whose later
	// edit is on the side lastWins names.
	conflictWant := func(p maps.ConflictPolicy, fhir, crm any, lastWins queues.Side) mergeWant {
		w := mergeWant{rule: rulePolicy, conflict: true, decidedBy: p, toFHIR: noWrite, toCRM: noWrite, baseMoves: true}
		winner := lastWins
		switch p {
		case maps.ConflictFHIRWins:
			winner = queues.SideFHIR
		case maps.ConflictCRMWins:
			winner = queues.SideCRM
		case maps.ConflictHold:
			return mergeWant{rule: ruleHeld, conflict: true, held: true, decidedBy: maps.ConflictHold, toFHIR: noWrite, toCRM: noWrite}
		}
		if winner == queues.SideFHIR {
			w.toCRM, w.overwritten = fhir, crmSide
		} else {
			w.toFHIR, w.overwritten = crm, fhirSide
		}
		return w
	}
	type cell struct {
		name string
		c    mergeCase
		want func(p maps.ConflictPolicy) mergeWant
	}
	same := func(w mergeWant) func(maps.ConflictPolicy) mergeWant {
		return func(maps.ConflictPolicy) mergeWant { return w }
	}
	cells := []cell{
		{"nothing changed", mergeCase{base: "555-0100", fhir: "555-0100", crm: "555-0100", fhirAt: t0, crmAt: t0},
			same(mergeWant{rule: ruleUnchanged, toFHIR: noWrite, toCRM: noWrite, baseMoves: true})},
		{"FHIR edits", mergeCase{base: "555-0100", fhir: "555-0199", crm: "555-0100", fhirAt: later, crmAt: t0},
			same(mergeWant{rule: ruleOneSide, toFHIR: noWrite, toCRM: "555-0199", baseMoves: true})},
		{"CRM edits", mergeCase{base: "555-0100", fhir: "555-0100", crm: "555-0177", fhirAt: t0, crmAt: later},
			same(mergeWant{rule: ruleOneSide, toFHIR: "555-0177", toCRM: noWrite, baseMoves: true})},
		{"CRM edits, FHIR modified later on another attribute", mergeCase{base: "555-0100", fhir: "555-0100", crm: "555-0177", fhirAt: later, crmAt: t0},
			same(mergeWant{rule: ruleOneSide, toFHIR: "555-0177", toCRM: noWrite, baseMoves: true})},
		{"both edit to the same value", mergeCase{base: "555-0100", fhir: "555-0123", crm: "555-0123", fhirAt: t0, crmAt: later},
			same(mergeWant{rule: ruleConverged, toFHIR: noWrite, toCRM: noWrite, baseMoves: true})},
		{"both edit differently, FHIR later", mergeCase{base: "555-0100", fhir: "555-0199", crm: "555-0177", fhirAt: later, crmAt: t0},
			func(p maps.ConflictPolicy) mergeWant { return conflictWant(p, "555-0199", "555-0177", queues.SideFHIR) }},
		{"both edit differently, CRM later", mergeCase{base: "555-0100", fhir: "555-0199", crm: "555-0177", fhirAt: t0, crmAt: later},
			func(p maps.ConflictPolicy) mergeWant { return conflictWant(p, "555-0199", "555-0177", queues.SideCRM) }},
		{"FHIR clears", mergeCase{base: "555-0100", fhir: nil, crm: "555-0100", fhirAt: later, crmAt: t0},
			same(mergeWant{rule: ruleOneSide, toFHIR: noWrite, toCRM: nil, baseMoves: true})},
		{"CRM clears (empty string)", mergeCase{base: "555-0100", fhir: "555-0100", crm: "", fhirAt: t0, crmAt: later},
			same(mergeWant{rule: ruleOneSide, toFHIR: "", toCRM: noWrite, baseMoves: true})},
		{"FHIR clears while CRM edits, CRM later", mergeCase{base: "555-0100", fhir: nil, crm: "555-0177", fhirAt: t0, crmAt: later},
			func(p maps.ConflictPolicy) mergeWant { return conflictWant(p, nil, "555-0177", queues.SideCRM) }},
		{"synced empty, FHIR gains a value", mergeCase{base: nil, fhir: "555-0199", crm: nil, fhirAt: later, crmAt: t0},
			same(mergeWant{rule: ruleOneSide, toFHIR: noWrite, toCRM: "555-0199", baseMoves: true})},
		{"synced empty, both gain values, FHIR later", mergeCase{base: nil, fhir: "555-0199", crm: "555-0177", fhirAt: later, crmAt: t0},
			func(p maps.ConflictPolicy) mergeWant { return conflictWant(p, "555-0199", "555-0177", queues.SideFHIR) }},
		{"synced empty, empty string and null are the same", mergeCase{base: nil, fhir: nil, crm: "", fhirAt: t0, crmAt: t0},
			same(mergeWant{rule: ruleUnchanged, toFHIR: noWrite, toCRM: noWrite, baseMoves: true})},
		{"no base, equal values", mergeCase{base: noBase, fhir: "555-0100", crm: "555-0100", fhirAt: t0, crmAt: later},
			same(mergeWant{rule: ruleConverged, toFHIR: noWrite, toCRM: noWrite, baseMoves: true})},
		{"no base, FHIR empty", mergeCase{base: noBase, fhir: nil, crm: "555-0177", fhirAt: later, crmAt: t0},
			same(mergeWant{rule: ruleOneSide, toFHIR: "555-0177", toCRM: noWrite, baseMoves: true})},
		{"no base, CRM empty", mergeCase{base: noBase, fhir: "555-0199", crm: "", fhirAt: t0, crmAt: later},
			same(mergeWant{rule: ruleOneSide, toFHIR: noWrite, toCRM: "555-0199", baseMoves: true})},
		{"no base, both empty", mergeCase{base: noBase, fhir: nil, crm: nil},
			same(mergeWant{rule: ruleConverged, toFHIR: noWrite, toCRM: noWrite, baseMoves: true})},
		{"no base, different values, CRM later", mergeCase{base: noBase, fhir: "555-0199", crm: "555-0177", fhirAt: t0, crmAt: later},
			func(p maps.ConflictPolicy) mergeWant { return conflictWant(p, "555-0199", "555-0177", queues.SideCRM) }},
	}
	for _, p := range mergePolicies {
		for _, cl := range cells {
			t.Run(string(p)+"/"+cl.name, func(t *testing.T) {
				c := cl.c
				c.policy, c.wantPolicy = p, p
				checkMerge(t, c, cl.want(p))
			})
		}
	}
}

// TestMergeLastWriterClockSkew: the edges of the skew allowance, missing
// and future times, and the tie-breaker.
func TestMergeLastWriterClockSkew(t *testing.T) {
	t.Parallel()
	t0 := time.Date(2026, 3, 1, 9, 0, 0, 0, time.UTC)
	held := mergeWant{rule: ruleHeld, conflict: true, held: true, tie: true, decidedBy: maps.ConflictHold, toFHIR: noWrite, toCRM: noWrite}
	fhirWon := mergeWant{rule: rulePolicy, conflict: true, decidedBy: maps.ConflictLastWriter, toFHIR: noWrite, toCRM: "F", baseMoves: true, overwritten: []queues.Side{queues.SideCRM}}
	crmWon := mergeWant{rule: rulePolicy, conflict: true, decidedBy: maps.ConflictLastWriter, toFHIR: "C", toCRM: noWrite, baseMoves: true, overwritten: []queues.Side{queues.SideFHIR}}
	tests := []struct {
		name          string
		fhirAt, crmAt time.Time
		opts          mergeOptions
		want          mergeWant
	}{
		{name: "same instant: held", fhirAt: t0, crmAt: t0, want: held},
		{name: "FHIR later by exactly the default allowance: held", fhirAt: t0.Add(defaultMergeSkew), crmAt: t0, want: held},
		{name: "CRM later by exactly the default allowance: held", fhirAt: t0, crmAt: t0.Add(defaultMergeSkew), want: held},
		{name: "FHIR later by just over the allowance: FHIR wins", fhirAt: t0.Add(defaultMergeSkew + time.Millisecond), crmAt: t0, want: fhirWon},
		{name: "CRM later by just over the allowance: CRM wins", fhirAt: t0, crmAt: t0.Add(defaultMergeSkew + time.Millisecond), want: crmWon},
		{name: "a wider allowance holds more", fhirAt: t0.Add(4 * time.Second), crmAt: t0, opts: mergeOptions{Skew: 5 * time.Second}, want: held},
		{name: "no allowance: a millisecond orders", fhirAt: t0, crmAt: t0.Add(time.Millisecond), opts: mergeOptions{Skew: -1}, want: crmWon},
		{name: "no allowance: the same instant is still a tie", fhirAt: t0, crmAt: t0, opts: mergeOptions{Skew: -1}, want: held},
		{name: "FHIR time missing: held", crmAt: t0, want: held},
		{name: "CRM time missing: held", fhirAt: t0, want: held},
		{name: "FHIR clock ahead of the agent's: not trusted", fhirAt: t0.Add(time.Hour), crmAt: t0,
			opts: mergeOptions{Now: t0.Add(time.Minute)}, want: held},
		{name: "FHIR later, within the agent's clock and allowance: trusted", fhirAt: t0.Add(time.Minute + defaultMergeSkew), crmAt: t0,
			opts: mergeOptions{Now: t0.Add(time.Minute)}, want: fhirWon},
		{name: "tie broken for FHIR", fhirAt: t0, crmAt: t0.Add(time.Second), opts: mergeOptions{Tie: maps.ConflictFHIRWins},
			want: mergeWant{rule: rulePolicy, conflict: true, tie: true, decidedBy: maps.ConflictFHIRWins, toFHIR: noWrite, toCRM: "F", baseMoves: true, overwritten: []queues.Side{queues.SideCRM}}},
		{name: "tie broken for the CRM", fhirAt: t0.Add(time.Second), crmAt: t0, opts: mergeOptions{Tie: maps.ConflictCRMWins},
			want: mergeWant{rule: rulePolicy, conflict: true, tie: true, decidedBy: maps.ConflictCRMWins, toFHIR: "C", toCRM: noWrite, baseMoves: true, overwritten: []queues.Side{queues.SideFHIR}}},
		{name: "an unknown tie-breaker holds", fhirAt: t0, crmAt: t0, opts: mergeOptions{Tie: "coin-toss"}, want: held},
		{name: "the tie-breaker does not touch ordered times", fhirAt: t0.Add(time.Minute), crmAt: t0, opts: mergeOptions{Tie: maps.ConflictCRMWins}, want: fhirWon},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			checkMerge(t, mergeCase{policy: maps.ConflictLastWriter, base: "B", fhir: "F", crm: "C", fhirAt: tt.fhirAt, crmAt: tt.crmAt, opts: tt.opts}, tt.want)
		})
	}
}

// TestMergeOneWayAttributes: a one-way attribute's source wins its
// conflicts whatever the policy, and its target's edits never travel back.
func TestMergeOneWayAttributes(t *testing.T) {
	t.Parallel()
	t0 := time.Date(2026, 3, 1, 9, 0, 0, 0, time.UTC)
	later := t0.Add(time.Minute)
	tests := []struct {
		name string
		c    mergeCase
		want mergeWant
	}{
		{name: "fhir-to-crm, CRM edits: blocked, base kept",
			c:    mergeCase{dir: maps.FHIRToCRM, policy: maps.ConflictCRMWins, base: "B", fhir: "B", crm: "C", crmAt: later, wantPolicy: maps.ConflictFHIRWins},
			want: mergeWant{rule: ruleBlocked, toFHIR: noWrite, toCRM: noWrite}},
		{name: "fhir-to-crm, both edit, CRM later: FHIR still wins",
			c:    mergeCase{dir: maps.FHIRToCRM, policy: maps.ConflictLastWriter, base: "B", fhir: "F", crm: "C", fhirAt: t0, crmAt: later, wantPolicy: maps.ConflictFHIRWins},
			want: mergeWant{rule: rulePolicy, conflict: true, decidedBy: maps.ConflictFHIRWins, toFHIR: noWrite, toCRM: "F", baseMoves: true, overwritten: []queues.Side{queues.SideCRM}}},
		{name: "crm-to-fhir, hold on the entity, both edit: CRM wins",
			c:    mergeCase{dir: maps.CRMToFHIR, policy: maps.ConflictHold, base: "B", fhir: "F", crm: "C", wantPolicy: maps.ConflictCRMWins},
			want: mergeWant{rule: rulePolicy, conflict: true, decidedBy: maps.ConflictCRMWins, toFHIR: "C", toCRM: noWrite, baseMoves: true, overwritten: []queues.Side{queues.SideFHIR}}},
		{name: "crm-to-fhir, no base, CRM empty: the FHIR value cannot travel",
			c:    mergeCase{dir: maps.CRMToFHIR, base: noBase, fhir: "F", crm: nil},
			want: mergeWant{rule: ruleBlocked, toFHIR: noWrite, toCRM: noWrite}},
		{name: "crm-to-fhir, FHIR edits: blocked",
			c:    mergeCase{dir: maps.CRMToFHIR, base: "B", fhir: "F", crm: "B"},
			want: mergeWant{rule: ruleBlocked, toFHIR: noWrite, toCRM: noWrite}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			checkMerge(t, tt.c, tt.want)
		})
	}
}

// TestMergeRecordHeldAttributeDoesNotStopTheOthers: one attribute held,
// the others flow; the overwritten list names only attributes and sides.
func TestMergeRecordHeldAttributeDoesNotStopTheOthers(t *testing.T) {
	t.Parallel()
	t0 := time.Date(2026, 3, 1, 9, 0, 0, 0, time.UTC)
	in := []mergeInput{
		mergeCase{attr: "lastname", policy: maps.ConflictHold, base: "Smith", fhir: "Smyth", crm: "Smithe", fhirAt: t0, crmAt: t0}.input(),
		mergeCase{attr: "telephone1", policy: maps.ConflictHold, base: "555-0100", fhir: "555-0100", crm: "555-0177", fhirAt: t0, crmAt: t0}.input(),
		mergeCase{attr: "birthdate", policy: maps.ConflictFHIRWins, base: "1970-01-01", fhir: "1970-01-02", crm: "1970-01-03", fhirAt: t0, crmAt: t0}.input(),
		mergeCase{attr: "emailaddress1", policy: maps.ConflictHold, base: nil, fhir: "a@example.org", crm: nil, fhirAt: t0, crmAt: t0}.input(),
	}
	r := mergeRecord(in, mergeOptions{})
	if got := r.Held(); !reflect.DeepEqual(got, []string{"lastname"}) {
		t.Fatalf("held %v, want [lastname]", got)
	}
	a := r.Attributes
	if a[0].ToFHIR != nil || a[0].ToCRM != nil || a[0].BaseMoves {
		t.Errorf("the held attribute moved: %+v", a[0])
	}
	if a[1].ToFHIR == nil || a[1].ToFHIR.Value != "555-0177" || a[1].ToFHIR.From != queues.SideCRM {
		t.Errorf("the CRM edit did not flow: %+v", a[1])
	}
	if a[2].ToCRM == nil || a[2].ToCRM.Value != "1970-01-02" {
		t.Errorf("fhir-wins did not write FHIR's value: %+v", a[2])
	}
	if a[3].ToCRM == nil || a[3].ToCRM.Value != "a@example.org" {
		t.Errorf("a value added in FHIR did not flow: %+v", a[3])
	}
	want := []mergeOverwrite{{Attribute: "birthdate", Side: queues.SideCRM, Policy: maps.ConflictFHIRWins}}
	if got := r.Overwritten(); !reflect.DeepEqual(got, want) {
		t.Errorf("overwritten %+v, want %+v", got, want)
	}
}

// The model test.

var mergeModelValues = []any{nil, "", "a", "b", "c"}

func randomMergeCase(rng *rand.Rand, t0 time.Time) mergeCase {
	pick := func() any { return mergeModelValues[rng.IntN(len(mergeModelValues))] }
	at := func() time.Time {
		if rng.IntN(10) == 0 {
			return time.Time{}
		}
		return t0.Add(time.Duration(rng.IntN(8000)-4000) * time.Millisecond)
	}
	c := mergeCase{attr: "a" + fmt.Sprint(rng.IntN(3)), base: pick(), fhir: pick(), crm: pick(), fhirAt: at(), crmAt: at()}
	if rng.IntN(4) == 0 {
		c.base = noBase
	}
	// Bias towards the interesting cells: one side unchanged.
	switch rng.IntN(4) {
	case 0:
		c.fhir = c.base
	case 1:
		c.crm = c.base
	}
	if c.fhir == noBase {
		c.fhir = pick()
	}
	if c.crm == noBase {
		c.crm = pick()
	}
	c.policy = []maps.ConflictPolicy{"", maps.ConflictFHIRWins, maps.ConflictCRMWins, maps.ConflictLastWriter, maps.ConflictHold}[rng.IntN(5)]
	c.dir = []maps.Direction{"", maps.Both, maps.Both, maps.FHIRToCRM, maps.CRMToFHIR}[rng.IntN(5)]
	c.opts.Skew = []time.Duration{0, -1, time.Second, 3 * time.Second}[rng.IntN(4)]
	c.opts.Tie = []maps.ConflictPolicy{"", maps.ConflictHold, maps.ConflictFHIRWins, maps.ConflictCRMWins}[rng.IntN(4)]
	if rng.IntN(3) == 0 {
		c.opts.Now = t0.Add(time.Second)
	}
	return c
}

func mirrorPolicy(p maps.ConflictPolicy) maps.ConflictPolicy {
	switch p {
	case maps.ConflictFHIRWins:
		return maps.ConflictCRMWins
	case maps.ConflictCRMWins:
		return maps.ConflictFHIRWins
	}
	return p
}

func mirrorSide(s queues.Side) queues.Side {
	if s == queues.SideFHIR {
		return queues.SideCRM
	}
	return queues.SideFHIR
}

// mirror swaps the two sides of a case.
func (c mergeCase) mirror() mergeCase {
	m := c
	m.fhir, m.crm, m.fhirAt, m.crmAt = c.crm, c.fhir, c.crmAt, c.fhirAt
	m.policy, m.opts.Tie = mirrorPolicy(c.policy), mirrorPolicy(c.opts.Tie)
	switch c.dir {
	case maps.FHIRToCRM:
		m.dir = maps.CRMToFHIR
	case maps.CRMToFHIR:
		m.dir = maps.FHIRToCRM
	}
	return m
}

// apply is the state after the merge's writes: the new values, and the
// new base when it moves.
func (c mergeCase) apply(r attrMerge) mergeCase {
	n := c
	if r.ToFHIR != nil {
		n.fhir = r.ToFHIR.Value
	}
	if r.ToCRM != nil {
		n.crm = r.ToCRM.Value
	}
	if r.BaseMoves {
		n.base = n.fhir
	}
	return n
}

func TestMergeModel(t *testing.T) {
	t.Parallel()
	seed := *mergeSeed
	if seed == 0 {
		seed = uint64(time.Now().UnixNano())
	}
	rng := rand.New(rand.NewPCG(seed, 15))
	t0 := time.Date(2026, 3, 1, 9, 0, 0, 0, time.UTC)
	counts := map[mergeRule]int{}
	for i := range *mergeCases {
		c := randomMergeCase(rng, t0)
		in := c.input()
		r := mergeAttribute(in, c.opts)
		counts[r.Rule]++
		fail := func(format string, args ...any) {
			t.Helper()
			t.Fatalf("seed %d case %d %+v → %+v: %s", seed, i, c, r, fmt.Sprintf(format, args...))
		}
		known := c.base != noBase
		fChanged := !known || in.FHIR.Hash != in.Base.FHIR
		cChanged := !known || in.CRM.Hash != in.Base.CRM

		// No value is overwritten without being named: a write replaces a
		// value that is the base, or an empty value with no base, or the
		// decision lists it.
		listed := map[queues.Side]bool{}
		for _, o := range r.Overwritten {
			if o.Attribute != in.Attribute || o.Policy == "" || o.Policy == maps.ConflictHold {
				fail("overwrite %+v does not name the attribute and a deciding policy", o)
			}
			listed[o.Side] = true
		}
		for side, w := range map[queues.Side]*mergeWrite{queues.SideFHIR: r.ToFHIR, queues.SideCRM: r.ToCRM} {
			cur, changed := c.fhir, fChanged
			if side == queues.SideCRM {
				cur, changed = c.crm, cChanged
			}
			if w == nil {
				if listed[side] {
					fail("%s listed as overwritten but not written", side)
				}
				continue
			}
			if mergeTestSame(cur, w.Value) {
				fail("write to %s of the value it already holds", side)
			}
			safe := (known && !changed) || (!known && mergeEmpty(cur))
			if !safe && !listed[side] {
				fail("%s overwritten without being listed", side)
			}
			if !mergeTravels(c.dir, side) {
				fail("write to %s against direction %q", side, c.dir)
			}
		}
		if r.ToFHIR != nil && r.ToCRM != nil {
			fail("both sides written")
		}

		// One-side changes always flow (where the direction allows).
		if known && !in.Same && fChanged != cChanged {
			to, w, v := queues.SideCRM, r.ToCRM, c.fhir
			if cChanged {
				to, w, v = queues.SideFHIR, r.ToFHIR, c.crm
			}
			if mergeTravels(c.dir, to) && (w == nil || !mergeTestSame(w.Value, v) || r.Conflict || len(r.Overwritten) > 0) {
				fail("a one-side change did not flow to %s cleanly", to)
			}
		}

		// A held attribute changes nothing on either side, nor the base.
		if r.Held && (r.ToFHIR != nil || r.ToCRM != nil || r.BaseMoves || !r.Conflict) {
			fail("held but moved")
		}
		if r.Held != (r.Rule == ruleHeld) || r.Conflict != (r.Rule == rulePolicy || r.Rule == ruleHeld) {
			fail("rule %s disagrees with the flags", r.Rule)
		}

		// The base moves only when both sides end equal.
		next := c.apply(r)
		if r.BaseMoves && !mergeTestSame(next.fhir, next.crm) {
			fail("base moves but the sides differ")
		}

		// Idempotent: merging the result against the new base changes nothing.
		r2 := mergeAttribute(next.input(), c.opts)
		if r2.ToFHIR != nil || r2.ToCRM != nil || len(r2.Overwritten) > 0 || r2.Held != r.Held {
			fail("merging again changed something: %+v", r2)
		}
		switch r2.Rule {
		case ruleUnchanged, ruleHeld, ruleBlocked:
		default:
			fail("merging again gave rule %s", r2.Rule)
		}

		// Symmetry: swapping the sides (and fhir-wins with crm-wins) mirrors
		// the answer.
		m := mergeAttribute(c.mirror().input(), c.mirror().opts)
		if m.Rule != r.Rule || m.Conflict != r.Conflict || m.Held != r.Held || m.Tie != r.Tie || m.BaseMoves != r.BaseMoves ||
			m.DecidedBy != mirrorPolicy(r.DecidedBy) || m.Policy != mirrorPolicy(r.Policy) ||
			!reflect.DeepEqual(writeValue(m.ToFHIR), writeValue(r.ToCRM)) || !reflect.DeepEqual(writeValue(m.ToCRM), writeValue(r.ToFHIR)) ||
			len(m.Overwritten) != len(r.Overwritten) {
			fail("mirror differs: %+v", m)
		}
		for j, o := range r.Overwritten {
			if mo := m.Overwritten[j]; mo.Side != mirrorSide(o.Side) || mo.Policy != mirrorPolicy(o.Policy) {
				fail("mirrored overwrite %+v, want the mirror of %+v", mo, o)
			}
		}
	}
	// The generator must reach every rule, or the invariants above were
	// checked on too little.
	for _, rule := range []mergeRule{ruleUnchanged, ruleConverged, ruleOneSide, ruleBlocked, rulePolicy, ruleHeld} {
		if *mergeCases >= 1000 && counts[rule] == 0 {
			t.Errorf("seed %d: no case reached rule %s in %d cases", seed, rule, *mergeCases)
		}
	}
	t.Logf("seed %d: %d cases: %v", seed, *mergeCases, counts)
}
