package agent_test

// The conflict matrix of docs/conflicts.md, end to end: for every row (what
// the two sides did) and every conflict policy, a person edits a synced
// pair on both sides before the agent sees either change, and the test
// checks both records afterwards, the decisions, and that every value a
// policy replaced is named in a decision.
//
// How "before the agent sees either change" is arranged: the FHIR history
// is polled only when the test says so (no poller running), and the CRM's
// service endpoint posts through a gate the test closes while the people
// edit. Releasing both at once lets the agent handle the two notices
// concurrently, as it would in production.
//
// Last-writer-wins needs a known order: both sandboxes run on a test clock
// an hour behind real time (so no modified time is ever ahead of the
// agent's clock), and the clock is moved on between the two edits by more
// than the agent's 2 s clock-skew allowance.

import (
	"context"
	"encoding/base64"
	"errors"
	"fmt"
	"net/http/httptest"
	"net/url"
	"slices"
	"strings"
	"sync"
	"testing"
	"text/tabwriter"
	"time"

	"github.com/fhirsync/fhirsync/agent"
	"github.com/fhirsync/fhirsync/agent/crm"
	"github.com/fhirsync/fhirsync/agent/fhir"
	"github.com/fhirsync/fhirsync/logs"
	"github.com/fhirsync/fhirsync/maps"
	"github.com/fhirsync/fhirsync/queues"
	"github.com/fhirsync/fhirsync/sandbox/crmserver"
	"github.com/fhirsync/fhirsync/sandbox/fhirserver"
	"github.com/fhirsync/fhirsync/storage"
	"github.com/fhirsync/fhirsync/storage/storagetest"
)

const (
	// matrixGap is how far the sandboxes' clock moves between the first and
	// the second edit of a cell: more than the 2 s clock-skew allowance,
	// so last-writer-wins knows the order (CRM modifiedon has whole
	// seconds, so at least 4 s remain).
	matrixGap = 5 * time.Second
	// matrixMRNSystem is the business key's FHIR identifier system; the
	// CRM holds the same value in msemr_medicalrecordnumber.
	matrixMRNSystem = "urn:fhirsync:test:mrn"
	matrixMRNAttr   = "msemr_medicalrecordnumber"
	matrixMap       = "patient-contact"
	// matrixKeySecret is the sync log key secret startEnv configures; the
	// base state is hashed under it.
	matrixKeySecret = "ZTJlLXRlc3Qta2V5LXNlY3JldA=="
)

var matrixPolicies = []maps.ConflictPolicy{maps.ConflictFHIRWins, maps.ConflictCRMWins, maps.ConflictLastWriter, maps.ConflictHold}

// TestConflictMatrix runs every cell of the conflict matrix on SQLite and
// PostgreSQL, one agent per database and policy (the policy is the entity
// map's), the rows one after another on distinct patients.
func TestConflictMatrix(t *testing.T) {
	t.Parallel()
	res := &matrixResults{cells: map[string]string{}}
	t.Cleanup(func() {
		t.Logf("conflict matrix (each cell: %s):\n%s", strings.Join(dialectNames(), " / "), res.table())
	})
	for _, d := range storagetest.Dialects {
		t.Run(string(d), func(t *testing.T) {
			t.Parallel()
			for _, policy := range matrixPolicies {
				t.Run(string(policy), func(t *testing.T) {
					t.Parallel()
					c := startMatrixEnv(t, d, policy)
					pairs := c.linkPairs(t)
					for i, row := range matrixRows {
						t.Run(row.name, func(t *testing.T) {
							defer res.record(t, d, policy, row.name)
							c.runCell(t, row, pairs[i])
						})
					}
				})
			}
		})
	}
}

// matrixEnv is one agent between the two sandboxes, with one conflict
// policy on the patient-contact map, and the people who edit by hand.
type matrixEnv struct {
	*env
	policy     maps.ConflictPolicy
	clock      *matrixClock
	gate       *noticeGate
	fhirPerson *fhir.Client // a care coordinator in FHIR
	crmPerson  *crm.Client  // the same coordinator in the CRM
	key        []byte       // the base state's key
}

func startMatrixEnv(t *testing.T, d storage.Dialect, policy maps.ConflictPolicy) *matrixEnv {
	t.Helper()
	key, err := base64.StdEncoding.DecodeString(matrixKeySecret)
	if err != nil {
		t.Fatal(err)
	}
	db := storagetest.Open(t, d)
	clock := &matrixClock{offset: -time.Hour}
	fsrv, err := fhirserver.New(fhirserver.Options{Now: clock.Now, Clients: fhirserver.SandboxClients()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { fsrv.Close() })
	fhirHTTP := httptest.NewServer(fsrv)
	t.Cleanup(fhirHTTP.Close)
	gate := &noticeGate{}
	e := startEnv(t, db, agent.Config{Workers: 4, RetryBase: 100 * time.Millisecond, RetryMax: 500 * time.Millisecond, BaseKey: key},
		envOptions{
			noPoller: true,
			fhirURL:  fhirHTTP.URL,
			tweak:    func(doc *maps.Document) { matrixMaps(t, doc, policy) },
			crmOptions: func(o *crmserver.Options) {
				o.Now = clock.Now
				o.Tokens[crmserver.CoordinatorToken] = crmserver.CoordinatorUserID
				o.Entities = matrixEntities(t)
				// As the demo registers the step: with images, so each
				// notice names the row version it reports.
				o.EndpointImages = true
				gate.next = o.Endpoint
				o.Endpoint = gate
			},
		})
	c := &matrixEnv{env: e, policy: policy, clock: clock, gate: gate, key: key}
	if c.fhirPerson, err = fhir.New(fhir.Config{BaseURL: fhirHTTP.URL, BearerToken: fhirserver.CoordinatorToken}); err != nil {
		t.Fatal(err)
	}
	crmHTTP := httptest.NewServer(e.crmSrv)
	t.Cleanup(crmHTTP.Close)
	if c.crmPerson, err = crm.New(crm.Config{URL: crmHTTP.URL, Auth: crm.AuthBearer, Token: crmserver.CoordinatorToken}); err != nil {
		t.Fatal(err)
	}
	return c
}

// matrixMaps sets the column's policy on the patient-contact map, lets
// deletes travel both ways (propagate, the default delete policy) and
// declares the medical record number the business key.
func matrixMaps(t *testing.T, doc *maps.Document, policy maps.ConflictPolicy) {
	for i := range doc.EntityMaps {
		m := &doc.EntityMaps[i]
		if m.Name != matrixMap {
			continue
		}
		m.ConflictPolicy = policy
		if !slices.Contains(m.CRMToFHIR.Operations, maps.OpDelete) {
			m.CRMToFHIR.Operations = append(m.CRMToFHIR.Operations, maps.OpDelete)
		}
		if !slices.Contains(m.FHIRToCRM.Operations, maps.OpDelete) {
			m.FHIRToCRM.Operations = append(m.FHIRToCRM.Operations, maps.OpDelete)
		}
		m.Correlation.BusinessKey = &maps.BusinessKey{FHIRIdentifierSystem: matrixMRNSystem, CRMAttribute: matrixMRNAttr}
		return
	}
	t.Fatalf("the starter maps have no %s map", matrixMap)
}

// matrixEntities are the sandbox CRM's entities with the medical record
// number an alternate key of contact, as the business key requires.
func matrixEntities(t *testing.T) []*crmserver.Entity {
	ents := crmserver.DefaultEntities()
	for _, e := range ents {
		if e.LogicalName == "contact" {
			e.Keys = append(e.Keys, crmserver.Key{LogicalName: matrixMRNAttr + "_key", Attributes: []string{matrixMRNAttr}})
			return ents
		}
	}
	t.Fatal("the sandbox CRM has no contact entity")
	return nil
}

// matrixClock is the sandboxes' clock: real time shifted by an offset the
// test moves on.
type matrixClock struct {
	mu     sync.Mutex
	offset time.Duration
}

func (c *matrixClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return time.Now().Add(c.offset)
}

func (c *matrixClock) advance(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.offset += d
}

// noticeGate stands between the sandbox CRM's service endpoint and the
// agent's queue: closed, it keeps the messages the CRM posts; opened, it
// sends them on, in order.
type noticeGate struct {
	mu   sync.Mutex
	next interface {
		Send(context.Context, ...queues.Message) error
	}
	closed bool
	held   []queues.Message
}

func (g *noticeGate) Send(ctx context.Context, msgs ...queues.Message) error {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.closed {
		g.held = append(g.held, msgs...)
		return nil
	}
	return g.next.Send(ctx, msgs...)
}

func (g *noticeGate) close() {
	g.mu.Lock()
	defer g.mu.Unlock()
	g.closed = true
}

// open sends what was kept and lets later messages through.
func (g *noticeGate) open(ctx context.Context) error {
	g.mu.Lock()
	defer g.mu.Unlock()
	g.closed = false
	held := g.held
	g.held = nil
	if len(held) == 0 {
		return nil
	}
	return g.next.Send(ctx, held...)
}

// count is how many messages the gate keeps.
func (g *noticeGate) count() int {
	g.mu.Lock()
	defer g.mu.Unlock()
	return len(g.held)
}

// matrixPair is a Patient and its contact.
type matrixPair struct {
	n       int
	patient string
	contact string
}

// linkPairs creates a patient in FHIR for each row that starts from a
// linked pair, and waits until each has its contact, the echoes are
// settled and the queues are quiet.
func (c *matrixEnv) linkPairs(t *testing.T) []*matrixPair {
	t.Helper()
	ctx := context.Background()
	pairs := make([]*matrixPair, len(matrixRows))
	for i, row := range matrixRows {
		pairs[i] = &matrixPair{n: i}
		if row.ownRecords {
			continue
		}
		created, err := c.fhirPerson.Create(ctx, matrixPatient(i, ""))
		if err != nil {
			t.Fatal(err)
		}
		pairs[i].patient = created.ID()
	}
	c.settle(t)
	for _, p := range pairs {
		if p.patient == "" {
			continue
		}
		c.waitDecision(t, p.patient, logs.FHIRToCRM, "created")
		p.contact = contactOf(t, c.env, p.patient)
	}
	c.settle(t)
	// The Patient learns its contact's id (the correlation identifier) the
	// first time a CRM change travels back; a change of an attribute no
	// map carries makes that happen now, so that no cell sees it.
	for _, p := range pairs {
		if p.contact != "" {
			c.editCRM(t, p.contact, crm.Record{"jobtitle": "Linked"})
		}
	}
	c.settle(t)
	for _, p := range pairs {
		if p.patient == "" {
			continue
		}
		r, err := c.fhirPerson.Read(ctx, "Patient", p.patient)
		if err != nil {
			t.Fatal(err)
		}
		if !hasIdentifier(r, "urn:fhirsync:crm:contactid", p.contact) {
			t.Fatalf("Patient/%s does not carry its contact's id after the set-up", p.patient)
		}
	}
	return pairs
}

func hasIdentifier(r fhir.Resource, system, value string) bool {
	ids, _ := r["identifier"].([]any)
	for _, x := range ids {
		if m, _ := x.(map[string]any); m["system"] == system && m["value"] == value {
			return true
		}
	}
	return false
}

// matrixPatient is the FHIR Patient of row i: a synthetic name, a birth
// date and an email; mrn, when set, is its medical record number.
func matrixPatient(i int, mrn string) fhir.Resource {
	p := fhir.Resource{
		"resourceType": "Patient",
		"name":         []any{map[string]any{"use": "official", "family": fmt.Sprintf("Matrixrow%02d", i), "given": []any{"Cell"}}},
		"birthDate":    "1970-01-01",
		"telecom":      []any{map[string]any{"system": "email", "value": fmt.Sprintf("start.%02d@example.org", i)}},
	}
	if mrn != "" {
		p["identifier"] = []any{map[string]any{"system": matrixMRNSystem, "value": mrn}}
	}
	return p
}

// settle lets the agent finish: it polls the FHIR history (which also
// feeds the agent's own FHIR writes back to it, as echoes) until a poll
// finds nothing new and both queues are empty.
func (c *matrixEnv) settle(t *testing.T) {
	t.Helper()
	ctx := context.Background()
	for range 8 {
		c.quiet(t)
		res, err := c.poller.Poll(ctx, "Patient")
		if err != nil {
			t.Fatalf("polling the FHIR history: %v", err)
		}
		if !res.Polled {
			t.Fatal("the FHIR history poll did not get its lease")
		}
		if res.Sent == 0 {
			c.quiet(t)
			return
		}
	}
	t.Fatal("the FHIR history kept producing changes after 8 polls")
}

// release hands both sides' changes to the agent at once: the CRM's kept
// notices and a poll of the FHIR history.
func (c *matrixEnv) release(t *testing.T) {
	t.Helper()
	ctx := context.Background()
	var wg sync.WaitGroup
	var pollErr error
	wg.Add(1)
	go func() {
		defer wg.Done()
		_, pollErr = c.poller.Poll(ctx, "Patient")
	}()
	gateErr := c.gate.open(ctx)
	wg.Wait()
	if err := errors.Join(pollErr, gateErr); err != nil {
		t.Fatalf("releasing the changes: %v", err)
	}
}

// A person's edits, in FHIR and in the CRM.

func (c *matrixEnv) editFHIR(t *testing.T, id string, change func(fhir.Resource)) fhir.Resource {
	t.Helper()
	ctx := context.Background()
	r, err := c.fhirPerson.Read(ctx, "Patient", id)
	if err != nil {
		t.Fatalf("reading Patient/%s: %v", id, err)
	}
	change(r)
	out, err := c.fhirPerson.Update(ctx, r, r.VersionID())
	if err != nil {
		t.Fatalf("updating Patient/%s: %v", id, err)
	}
	return out
}

func (c *matrixEnv) editCRM(t *testing.T, id string, rec crm.Record) {
	t.Helper()
	if _, err := c.crmPerson.Upsert(context.Background(), crm.ByID("contacts", id), rec, crm.UpsertOptions{Mode: crm.UpdateOnly}); err != nil {
		t.Fatalf("updating contact %s: %v", id, err)
	}
}

func (c *matrixEnv) deleteFHIR(t *testing.T, id string) {
	t.Helper()
	if err := c.fhirPerson.Delete(context.Background(), "Patient", id); err != nil {
		t.Fatalf("deleting Patient/%s: %v", id, err)
	}
}

func (c *matrixEnv) deleteCRM(t *testing.T, id string) {
	t.Helper()
	if err := c.crmPerson.Delete(context.Background(), crm.ByID("contacts", id), ""); err != nil {
		t.Fatalf("deleting contact %s: %v", id, err)
	}
}

func setEmail(v string) func(fhir.Resource) {
	return func(r fhir.Resource) { setTelecom(r, "email", "", v) }
}

func setTelecom(r fhir.Resource, system, use, value string) {
	tel, _ := r["telecom"].([]any)
	for _, x := range tel {
		m, _ := x.(map[string]any)
		if m["system"] == system && (use == "" || m["use"] == use) {
			m["value"] = value
			return
		}
	}
	entry := map[string]any{"system": system, "value": value}
	if use != "" {
		entry["use"] = use
	}
	r["telecom"] = append(tel, entry)
}

func setFamily(v string) func(fhir.Resource) {
	return func(r fhir.Resource) {
		names, _ := r["name"].([]any)
		for _, n := range names {
			if m, _ := n.(map[string]any); m["use"] == "official" {
				m["family"] = v
			}
		}
	}
}

// The attributes the matrix edits, read on each side.

var matrixAttrs = []string{"email", "last-name", "mobile-phone"}

var matrixCRMAttr = map[string]string{"email": "emailaddress1", "last-name": "lastname", "mobile-phone": "mobilephone"}

func fhirValue(r fhir.Resource, attr string) string {
	switch attr {
	case "last-name":
		return firstOfficialFamily(r)
	case "email", "mobile-phone":
		system, use := "email", ""
		if attr == "mobile-phone" {
			system, use = "phone", "mobile"
		}
		tel, _ := r["telecom"].([]any)
		for _, x := range tel {
			m, _ := x.(map[string]any)
			if m["system"] == system && (use == "" || m["use"] == use) {
				s, _ := m["value"].(string)
				return s
			}
		}
	}
	return ""
}

// fhirState reads a Patient's matrix attributes; gone when it is deleted.
func (c *matrixEnv) fhirState(t *testing.T, id string) (vals map[string]string, gone bool) {
	t.Helper()
	r, err := c.fhirPerson.Read(context.Background(), "Patient", id)
	if errors.Is(err, fhir.ErrGone) || errors.Is(err, fhir.ErrNotFound) {
		return nil, true
	}
	if err != nil {
		t.Fatalf("reading Patient/%s: %v", id, err)
	}
	vals = map[string]string{}
	for _, a := range matrixAttrs {
		vals[a] = fhirValue(r, a)
	}
	return vals, false
}

// crmState reads a contact's matrix attributes; gone when it is deleted.
func (c *matrixEnv) crmState(t *testing.T, id string) (vals map[string]string, gone bool) {
	t.Helper()
	rec, err := c.crmPerson.Retrieve(context.Background(), crm.ByID("contacts", id))
	if errors.Is(err, crm.ErrNotFound) {
		return nil, true
	}
	if err != nil {
		t.Fatalf("reading contact %s: %v", id, err)
	}
	vals = map[string]string{}
	for _, a := range matrixAttrs {
		vals[a] = rec.String(matrixCRMAttr[a])
	}
	return vals, false
}

// matrixState is what both records should hold: the listed attributes'
// values, or the record deleted.
type matrixState struct {
	fhir, crm         map[string]string
	fhirGone, crmGone bool
}

func (c *matrixEnv) checkState(t *testing.T, p *matrixPair, want matrixState, when string) {
	t.Helper()
	fv, fgone := c.fhirState(t, p.patient)
	cv, cgone := c.crmState(t, p.contact)
	check := func(side string, got map[string]string, gone bool, want map[string]string, wantGone bool) {
		switch {
		case gone && !wantGone:
			t.Errorf("%s: the %s record was deleted, want it kept", when, side)
		case !gone && wantGone:
			t.Errorf("%s: the %s record still exists, want it deleted", when, side)
		case !gone:
			for a, v := range want {
				if got[a] != v {
					t.Errorf("%s: %s %s = %q, want %q", when, side, a, got[a], v)
				}
			}
		}
	}
	check("FHIR", fv, fgone, want.fhir, want.fhirGone)
	check("CRM", cv, cgone, want.crm, want.crmGone)
}

// matrixEdit is a value a person entered on one side, concurrently with
// the other side's change.
type matrixEdit struct {
	side  string // logs.SideFHIR or logs.SideCRM
	attr  string
	value string
}

// matrixDecision matches decisions: a zero field matches anything.
type matrixDecision struct {
	dir     logs.Direction
	outcome logs.Outcome
	reason  logs.ReasonCode
}

func (m matrixDecision) matches(d logs.Decision) bool {
	return (m.dir == "" || d.Direction == m.dir) && (m.outcome == "" || d.Outcome == m.outcome) && (m.reason == "" || d.Reason == m.reason)
}

func (m matrixDecision) String() string {
	s := func(v string) string {
		if v == "" {
			return "*"
		}
		return v
	}
	return s(string(m.dir)) + " " + s(string(m.outcome)) + "/" + s(string(m.reason))
}

// matrixConflict is a Conflicts entry some decision must carry: the
// attribute, and the side overwritten, or held, or deferred.
type matrixConflict struct {
	dir         logs.Direction // "" for either direction
	attr        string
	overwritten string
	held        bool
	deferred    bool
}

func (m matrixConflict) String() string {
	how := "overwritten " + m.overwritten
	switch {
	case m.held:
		how = "held"
	case m.deferred:
		how = "deferred"
	}
	return fmt.Sprintf("{%s %q %s}", m.dir, m.attr, how)
}

// matrixHold is what a held cell expects of the held conflict, of the
// person's resolution and of the agent's write of it.
type matrixHold struct {
	attr        string // "" for a delete met by an edit
	deletedSide string // for a delete met by an edit
	take        string // the side the person takes
	dir         logs.Direction
	after       matrixState
}

// matrixWant is what a cell expects.
type matrixWant struct {
	state     matrixState
	must      []matrixDecision // each matched by some decision of the cell
	mustNot   []matrixDecision // matched by none
	conflicts []matrixConflict // each named by some decision (policy: the column's)
	// noConflict: no decision names a conflict.
	noConflict bool
	hold       *matrixHold
}

// matrixRow is one row of the matrix: what the people do (act, which ends
// by handing the changes to the agent) and what each policy makes of it.
type matrixRow struct {
	name string
	// ownRecords: the row creates its own records instead of starting
	// from a linked pair.
	ownRecords bool
	// act makes the people's edits and releases them; it returns the edits
	// made concurrently on the two sides (each must survive or be named as
	// overwritten).
	act  func(t *testing.T, c *matrixEnv, p *matrixPair) []matrixEdit
	want func(c *matrixEnv, p *matrixPair) matrixWant
	// extra, when set, checks more after the cell settles.
	extra func(t *testing.T, c *matrixEnv, p *matrixPair)
}

const toCRM, toFHIR = logs.FHIRToCRM, logs.CRMToFHIR

// sentUpdated matches an update written in direction dir.
func sentUpdated(dir logs.Direction) matrixDecision {
	return matrixDecision{dir: dir, outcome: logs.OutcomeSent, reason: "updated"}
}

// anySent matches any write in direction dir.
func anySent(dir logs.Direction) matrixDecision {
	return matrixDecision{dir: dir, outcome: logs.OutcomeSent}
}

var (
	// Dead-lettered decisions are wrong in every cell.
	deadLettered = matrixDecision{outcome: logs.OutcomeDeadLettered}
	// A record created where a linked one exists is a duplicate.
	duplicateMaker = matrixDecision{outcome: logs.OutcomeSent, reason: "created"}
	// Held decisions belong to the hold column only.
	anyHeld = matrixDecision{outcome: logs.OutcomeHeld}
)

func overwrittenBy(dir logs.Direction, attr, side string) matrixConflict {
	return matrixConflict{dir: dir, attr: attr, overwritten: side}
}

func emailBoth(v string) matrixState { return emailEach(v, v) }

func emailEach(f, c string) matrixState {
	return matrixState{fhir: map[string]string{"email": f}, crm: map[string]string{"email": c}}
}

// The values a cell's people enter, distinct per row.

func cellEmail(p *matrixPair, who string) string { return fmt.Sprintf("%s.%02d@example.org", who, p.n) }
func cellFamily(p *matrixPair) string            { return fmt.Sprintf("Renamedrow%02d", p.n) }
func cellMRN(p *matrixPair) string               { return fmt.Sprintf("MRN-%02d", p.n) }
func cellMobile(p *matrixPair) string            { return fmt.Sprintf("555-01%02d", p.n) }

// matrixRows are the rows of docs/conflicts.md's matrix. In every row
// where order matters, the edit that last-writer-wins should prefer is
// made second, matrixGap later by the sandboxes' clock.
var matrixRows = []matrixRow{
	{
		name: "fhir-edits",
		act: func(t *testing.T, c *matrixEnv, p *matrixPair) []matrixEdit {
			c.editFHIR(t, p.patient, setEmail(cellEmail(p, "fhir")))
			c.release(t)
			return []matrixEdit{{logs.SideFHIR, "email", cellEmail(p, "fhir")}}
		},
		want: func(c *matrixEnv, p *matrixPair) matrixWant {
			return matrixWant{state: emailBoth(cellEmail(p, "fhir")), must: []matrixDecision{sentUpdated(toCRM)},
				mustNot: []matrixDecision{anySent(toFHIR)}, noConflict: true}
		},
	},
	{
		name: "crm-edits",
		act: func(t *testing.T, c *matrixEnv, p *matrixPair) []matrixEdit {
			c.editCRM(t, p.contact, crm.Record{"emailaddress1": cellEmail(p, "crm")})
			c.release(t)
			return []matrixEdit{{logs.SideCRM, "email", cellEmail(p, "crm")}}
		},
		want: func(c *matrixEnv, p *matrixPair) matrixWant {
			return matrixWant{state: emailBoth(cellEmail(p, "crm")), must: []matrixDecision{sentUpdated(toFHIR)},
				mustNot: []matrixDecision{anySent(toCRM)}, noConflict: true}
		},
	},
	{
		// FHIR first, the CRM matrixGap later: last-writer-wins takes the CRM.
		name: "both-edit-same-attribute",
		act: func(t *testing.T, c *matrixEnv, p *matrixPair) []matrixEdit {
			c.editFHIR(t, p.patient, setEmail(cellEmail(p, "fhir")))
			c.clock.advance(matrixGap)
			c.editCRM(t, p.contact, crm.Record{"emailaddress1": cellEmail(p, "crm")})
			c.release(t)
			return []matrixEdit{{logs.SideFHIR, "email", cellEmail(p, "fhir")}, {logs.SideCRM, "email", cellEmail(p, "crm")}}
		},
		want: func(c *matrixEnv, p *matrixPair) matrixWant {
			f, r := cellEmail(p, "fhir"), cellEmail(p, "crm")
			switch {
			case c.policy == maps.ConflictFHIRWins:
				return matrixWant{state: emailBoth(f), must: []matrixDecision{sentUpdated(toCRM)}, mustNot: []matrixDecision{anySent(toFHIR)},
					conflicts: []matrixConflict{overwrittenBy(toCRM, "email", logs.SideCRM)}}
			case c.policy == maps.ConflictHold:
				return matrixWant{state: emailEach(f, r), must: []matrixDecision{{outcome: logs.OutcomeHeld, reason: "conflict_held"}},
					mustNot:   []matrixDecision{anySent(toCRM), anySent(toFHIR)},
					conflicts: []matrixConflict{{attr: "email", held: true}},
					hold:      &matrixHold{attr: "email", take: logs.SideCRM, dir: toFHIR, after: emailBoth(r)}}
			default: // crm-wins, and last-writer-wins with the CRM edit later
				return matrixWant{state: emailBoth(r), must: []matrixDecision{sentUpdated(toFHIR)}, mustNot: []matrixDecision{anySent(toCRM)},
					conflicts: []matrixConflict{overwrittenBy(toFHIR, "email", logs.SideFHIR)}}
			}
		},
	},
	{
		name: "both-edit-same-value",
		act: func(t *testing.T, c *matrixEnv, p *matrixPair) []matrixEdit {
			c.editFHIR(t, p.patient, setEmail(cellEmail(p, "same")))
			c.clock.advance(matrixGap)
			c.editCRM(t, p.contact, crm.Record{"emailaddress1": cellEmail(p, "same")})
			c.release(t)
			return []matrixEdit{{logs.SideFHIR, "email", cellEmail(p, "same")}, {logs.SideCRM, "email", cellEmail(p, "same")}}
		},
		want: func(c *matrixEnv, p *matrixPair) matrixWant {
			return matrixWant{state: emailBoth(cellEmail(p, "same")), mustNot: []matrixDecision{anySent(toCRM), anySent(toFHIR), {outcome: logs.OutcomeHeld}},
				noConflict: true}
		},
		// Not a conflict, and the base moves to the common value.
		extra: func(t *testing.T, c *matrixEnv, p *matrixPair) {
			base, _, err := agent.BaseHashes(context.Background(), c.db, matrixMap, p.patient, p.contact)
			if err != nil {
				t.Fatalf("no base state for the pair: %v", err)
			}
			v := cellEmail(p, "same")
			got := base["email"]
			if got[0] != agent.BaseHash(c.key, matrixMap, p.patient, "email", "fhir", []any{v}) ||
				got[1] != agent.BaseHash(c.key, matrixMap, p.patient, "email", "crm", v) {
				t.Error("the base of email did not move to the value both sides set")
			}
		},
	},
	{
		name: "both-edit-different-attributes",
		act: func(t *testing.T, c *matrixEnv, p *matrixPair) []matrixEdit {
			c.editFHIR(t, p.patient, setFamily(cellFamily(p)))
			c.clock.advance(matrixGap)
			c.editCRM(t, p.contact, crm.Record{"emailaddress1": cellEmail(p, "crm")})
			c.release(t)
			return []matrixEdit{{logs.SideFHIR, "last-name", cellFamily(p)}, {logs.SideCRM, "email", cellEmail(p, "crm")}}
		},
		want: func(c *matrixEnv, p *matrixPair) matrixWant {
			both := map[string]string{"email": cellEmail(p, "crm"), "last-name": cellFamily(p)}
			return matrixWant{state: matrixState{fhir: both, crm: both}, must: []matrixDecision{sentUpdated(toCRM), sentUpdated(toFHIR)},
				noConflict: true}
		},
	},
	{
		// The CRM edit first, the FHIR delete matrixGap later:
		// last-writer-wins takes the delete.
		name: "fhir-deletes-crm-edits",
		act: func(t *testing.T, c *matrixEnv, p *matrixPair) []matrixEdit {
			c.editCRM(t, p.contact, crm.Record{"emailaddress1": cellEmail(p, "crm")})
			c.clock.advance(matrixGap)
			c.deleteFHIR(t, p.patient)
			c.release(t)
			return []matrixEdit{{logs.SideCRM, "email", cellEmail(p, "crm")}}
		},
		want: func(c *matrixEnv, p *matrixPair) matrixWant {
			kept := matrixState{fhirGone: true, crm: map[string]string{"email": cellEmail(p, "crm")}}
			switch {
			case c.policy == maps.ConflictCRMWins:
				return matrixWant{state: kept, must: []matrixDecision{{toCRM, logs.OutcomeSkipped, "delete_overruled"}},
					mustNot: []matrixDecision{anySent(toCRM), anySent(toFHIR)}}
			case c.policy == maps.ConflictHold:
				return matrixWant{state: kept, must: []matrixDecision{{outcome: logs.OutcomeHeld, reason: "delete_held"}},
					mustNot: []matrixDecision{anySent(toCRM), anySent(toFHIR)},
					hold:    &matrixHold{deletedSide: logs.SideFHIR, take: logs.SideFHIR, dir: toCRM, after: matrixState{fhirGone: true, crmGone: true}}}
			default: // fhir-wins, and last-writer-wins with the delete later
				return matrixWant{state: matrixState{fhirGone: true, crmGone: true}, must: []matrixDecision{{toCRM, logs.OutcomeSent, "deleted"}},
					mustNot:   []matrixDecision{anySent(toFHIR)},
					conflicts: []matrixConflict{overwrittenBy(toCRM, "email", logs.SideCRM)}}
			}
		},
	},
	{
		// The CRM delete first, the FHIR edit matrixGap later:
		// last-writer-wins keeps the edit.
		name: "crm-deletes-fhir-edits",
		act: func(t *testing.T, c *matrixEnv, p *matrixPair) []matrixEdit {
			c.deleteCRM(t, p.contact)
			c.clock.advance(matrixGap)
			c.editFHIR(t, p.patient, setEmail(cellEmail(p, "fhir")))
			c.release(t)
			return []matrixEdit{{logs.SideFHIR, "email", cellEmail(p, "fhir")}}
		},
		want: func(c *matrixEnv, p *matrixPair) matrixWant {
			kept := matrixState{crmGone: true, fhir: map[string]string{"email": cellEmail(p, "fhir")}}
			switch {
			case c.policy == maps.ConflictCRMWins:
				return matrixWant{state: matrixState{fhirGone: true, crmGone: true}, must: []matrixDecision{{toFHIR, logs.OutcomeSent, "deleted"}},
					mustNot:   []matrixDecision{anySent(toCRM)},
					conflicts: []matrixConflict{overwrittenBy(toFHIR, "email", logs.SideFHIR)}}
			case c.policy == maps.ConflictHold:
				return matrixWant{state: kept, must: []matrixDecision{{outcome: logs.OutcomeHeld, reason: "delete_held"}},
					mustNot: []matrixDecision{anySent(toCRM), anySent(toFHIR)},
					hold:    &matrixHold{deletedSide: logs.SideCRM, take: logs.SideCRM, dir: toFHIR, after: matrixState{fhirGone: true, crmGone: true}}}
			default: // fhir-wins, and last-writer-wins with the edit later
				return matrixWant{state: kept, must: []matrixDecision{{toFHIR, logs.OutcomeSkipped, "delete_overruled"}},
					mustNot: []matrixDecision{anySent(toCRM), anySent(toFHIR)}}
			}
		},
	},
	{
		// A patient registered in both systems with the same medical record
		// number before either was synced: the CRM first, FHIR matrixGap
		// later, so last-writer-wins takes FHIR's email. The names and
		// birth date agree; the mobile phone is only in the CRM.
		name:       "created-on-both-sides",
		ownRecords: true,
		act: func(t *testing.T, c *matrixEnv, p *matrixPair) []matrixEdit {
			ctx := context.Background()
			id, err := c.crmPerson.Create(ctx, "contacts", crm.Record{
				matrixMRNAttr: cellMRN(p), "msemr_contacttype": 935000000, "firstname": "Twin", "lastname": fmt.Sprintf("Twinrow%02d", p.n),
				"birthdate": "1970-01-01", "emailaddress1": cellEmail(p, "crm"), "mobilephone": cellMobile(p)})
			if err != nil {
				t.Fatalf("creating the contact: %v", err)
			}
			p.contact = id
			c.clock.advance(matrixGap)
			pat := matrixPatient(p.n, cellMRN(p))
			pat["name"] = []any{map[string]any{"use": "official", "family": fmt.Sprintf("Twinrow%02d", p.n), "given": []any{"Twin"}}}
			setEmail(cellEmail(p, "fhir"))(pat)
			created, err := c.fhirPerson.Create(ctx, pat)
			if err != nil {
				t.Fatalf("creating the Patient: %v", err)
			}
			p.patient = created.ID()
			c.release(t)
			return []matrixEdit{{logs.SideFHIR, "email", cellEmail(p, "fhir")}, {logs.SideCRM, "email", cellEmail(p, "crm")},
				{logs.SideCRM, "mobile-phone", cellMobile(p)}}
		},
		want: func(c *matrixEnv, p *matrixPair) matrixWant {
			f, r, m := cellEmail(p, "fhir"), cellEmail(p, "crm"), cellMobile(p)
			state := func(fe, ce string) matrixState {
				return matrixState{fhir: map[string]string{"email": fe, "mobile-phone": m}, crm: map[string]string{"email": ce, "mobile-phone": m}}
			}
			switch {
			case c.policy == maps.ConflictCRMWins:
				return matrixWant{state: state(r, r), conflicts: []matrixConflict{overwrittenBy(toFHIR, "email", logs.SideFHIR)}}
			case c.policy == maps.ConflictHold:
				return matrixWant{state: state(f, r), must: []matrixDecision{{outcome: logs.OutcomeHeld, reason: "conflict_held"}},
					conflicts: []matrixConflict{{attr: "email", held: true}},
					hold:      &matrixHold{attr: "email", take: logs.SideFHIR, dir: toCRM, after: state(f, f)}}
			default: // fhir-wins, and last-writer-wins with FHIR created later
				return matrixWant{state: state(f, f), conflicts: []matrixConflict{overwrittenBy(toCRM, "email", logs.SideCRM)}}
			}
		},
		// Linked, never duplicated: one record with the key on each side,
		// and the contact is the Patient's.
		extra: func(t *testing.T, c *matrixEnv, p *matrixPair) {
			ctx := context.Background()
			var contacts []string
			if err := c.crmPerson.RetrieveMultiple(ctx, "contacts", crm.Query{Select: []string{"contactid"}, Filter: fmt.Sprintf("%s eq '%s'", matrixMRNAttr, cellMRN(p))},
				func(r crm.Record) error { contacts = append(contacts, r.String("contactid")); return nil }); err != nil {
				t.Fatal(err)
			}
			if len(contacts) != 1 {
				t.Errorf("%d contacts hold the medical record number, want 1", len(contacts))
			}
			page, err := c.fhirPerson.Search(ctx, "Patient", url.Values{"identifier": {matrixMRNSystem + "|" + cellMRN(p)}})
			if err != nil {
				t.Fatal(err)
			}
			if n := len(page.Entries); n != 1 {
				t.Errorf("an identifier search for the medical record number (the business key) finds %d Patients, want 1", n)
				if r, err := c.fhirPerson.Read(ctx, "Patient", p.patient); err == nil {
					var systems []string
					ids, _ := r["identifier"].([]any)
					for _, x := range ids {
						m, _ := x.(map[string]any)
						systems = append(systems, fmt.Sprint(m["system"]))
					}
					t.Logf("the Patient's identifier systems: %v", systems)
				}
			}
			if got := contactOf(t, c.env, p.patient); got != p.contact {
				t.Errorf("the Patient is linked to contact %s, want the coordinator's %s", got, p.contact)
			}
		},
	},
	{
		// fhirsync writes a FHIR edit to the CRM; the coordinator changes
		// the same email before the CRM's notice of fhirsync's write (its
		// echo) reaches the agent. The coordinator's change is an edit.
		name: "edit-between-write-and-echo",
		act: func(t *testing.T, c *matrixEnv, p *matrixPair) []matrixEdit {
			since := time.Now()
			c.editFHIR(t, p.patient, setEmail(cellEmail(p, "fhir")))
			if _, err := c.poller.Poll(context.Background(), "Patient"); err != nil {
				t.Fatal(err)
			}
			deadline := time.Now().Add(60 * time.Second)
			for c.gate.count() == 0 && time.Now().Before(deadline) {
				time.Sleep(20 * time.Millisecond)
			}
			if c.gate.count() == 0 {
				t.Fatalf("fhirsync did not write the FHIR edit to the CRM; decisions: %v", reasons(c.cellDecisions(t, p, since)))
			}
			c.quiet(t)
			c.clock.advance(matrixGap)
			c.editCRM(t, p.contact, crm.Record{"emailaddress1": cellEmail(p, "crm")})
			c.release(t)
			return []matrixEdit{{logs.SideCRM, "email", cellEmail(p, "crm")}}
		},
		want: func(c *matrixEnv, p *matrixPair) matrixWant {
			return matrixWant{state: emailBoth(cellEmail(p, "crm")),
				must:       []matrixDecision{sentUpdated(toCRM), {toFHIR, logs.OutcomeSkipped, "own_write_echo"}, sentUpdated(toFHIR)},
				noConflict: true}
		},
	},
}

// runCell runs one row for the column's policy on pair p.
func (c *matrixEnv) runCell(t *testing.T, row matrixRow, p *matrixPair) {
	ctx := context.Background()
	defer func() {
		// A failed cell must not keep the next one's notices back.
		if err := c.gate.open(ctx); err != nil {
			t.Errorf("opening the gate: %v", err)
		}
	}()
	c.settle(t)
	start := time.Now()
	c.gate.close()
	edits := row.act(t, c, p)
	c.settle(t)
	want := row.want(c, p)
	c.checkState(t, p, want.state, "after the sync")
	ds := c.cellDecisions(t, p, start)
	c.checkDecisions(t, ds, want)
	if row.extra != nil {
		row.extra(t, c, p)
	}
	if want.hold != nil {
		c.resolveHeld(t, p, *want.hold)
		ds = c.cellDecisions(t, p, start)
		c.checkState(t, p, want.hold.after, "after the resolution")
	}
	c.checkNothingLost(t, p, edits, ds)
	if t.Failed() {
		t.Logf("decisions of the cell:\n%s", describeDecisions(ds))
	}
}

// cellDecisions returns the decisions about the pair's records since
// start, oldest first.
func (c *matrixEnv) cellDecisions(t *testing.T, p *matrixPair, since time.Time) []logs.Decision {
	t.Helper()
	seen := map[int64]bool{}
	var out []logs.Decision
	for _, id := range []string{p.patient, p.contact} {
		if id == "" {
			continue
		}
		page, err := c.logs.Search(context.Background(), logs.Filter{Record: id, From: since}, "", logs.MaxPageSize)
		if err != nil {
			t.Fatal(err)
		}
		for _, d := range page.Decisions {
			if !seen[d.ID] {
				seen[d.ID] = true
				out = append(out, d)
			}
		}
	}
	slices.SortFunc(out, func(a, b logs.Decision) int { return int(a.ID - b.ID) })
	return out
}

func (c *matrixEnv) checkDecisions(t *testing.T, ds []logs.Decision, want matrixWant) {
	t.Helper()
	for _, m := range want.must {
		if !slices.ContainsFunc(ds, m.matches) {
			t.Errorf("no %s decision", m)
		}
	}
	never := append([]matrixDecision{deadLettered, duplicateMaker}, want.mustNot...)
	if c.policy != maps.ConflictHold {
		never = append(never, anyHeld)
	}
	for _, d := range ds {
		if slices.ContainsFunc(never, func(m matrixDecision) bool { return m.matches(d) }) {
			t.Errorf("unexpected %s %s/%s decision (%s)", d.Direction, d.Outcome, d.Reason, d.Message)
		}
	}
	for _, w := range want.conflicts {
		policy := string(c.policy)
		if !slices.ContainsFunc(ds, func(d logs.Decision) bool {
			return (w.dir == "" || d.Direction == w.dir) && slices.ContainsFunc(d.Conflicts, func(x logs.Conflict) bool {
				return x.Attribute == w.attr && x.Policy == policy && x.Overwritten == w.overwritten && x.Held == w.held && x.Deferred == w.deferred
			})
		}) {
			t.Errorf("no decision names the conflict %s under %s", w, policy)
		}
	}
	if want.noConflict {
		for _, d := range ds {
			if len(d.Conflicts) > 0 {
				t.Errorf("%s %s/%s decision names conflicts %+v; none was expected", d.Direction, d.Outcome, d.Reason, d.Conflicts)
			}
		}
	}
}

// resolveHeld finds the held conflict, has a person take one side, and
// waits for the agent to write it.
func (c *matrixEnv) resolveHeld(t *testing.T, p *matrixPair, h matrixHold) {
	t.Helper()
	ctx := context.Background()
	held, err := c.logs.ConflictsFor(ctx, matrixMap, p.patient)
	if err != nil {
		t.Fatal(err)
	}
	i := slices.IndexFunc(held, func(x logs.HeldConflict) bool { return x.Attribute == h.attr && x.Status == logs.ConflictOpen })
	if i < 0 {
		t.Fatalf("no open held conflict for attribute %q of the pair; held: %+v", h.attr, held)
	}
	hc := held[i]
	if hc.CRMID != p.contact || hc.DeletedSide != h.deletedSide {
		t.Errorf("held conflict names contact %s and deleted side %q, want %s and %q", hc.CRMID, hc.DeletedSide, p.contact, h.deletedSide)
	}
	since := time.Now()
	if err := c.logs.ResolveConflict(ctx, hc.ID, h.take, "coordinator@example.org"); err != nil {
		t.Fatalf("resolving the held conflict: %v", err)
	}
	// The agent looks for resolutions every 2 s.
	var resolved logs.Decision
	deadline := time.Now().Add(30 * time.Second)
	for resolved.ID == 0 && time.Now().Before(deadline) {
		for _, d := range c.cellDecisions(t, p, since) {
			if d.Reason == "conflict_resolved" {
				resolved = d
			}
		}
		time.Sleep(50 * time.Millisecond)
	}
	if resolved.ID == 0 {
		now, err := c.logs.Conflict(ctx, hc.ID)
		t.Fatalf("the agent wrote no conflict_resolved decision within 30s (the held conflict is now %s, %v); decisions since:\n%s",
			now.Status, err, describeDecisions(c.cellDecisions(t, p, since)))
	}
	c.settle(t)
	if resolved.Outcome != logs.OutcomeSent || resolved.Direction != h.dir {
		t.Errorf("resolution decision %s %s/%s, want %s sent/conflict_resolved", resolved.Direction, resolved.Outcome, resolved.Reason, h.dir)
	}
	other := logs.SideCRM
	if h.take == logs.SideCRM {
		other = logs.SideFHIR
	}
	if h.attr != "" && !slices.ContainsFunc(resolved.Conflicts, func(x logs.Conflict) bool {
		return x.Attribute == h.attr && x.Policy == logs.PolicyPerson && x.Overwritten == other
	}) {
		t.Errorf("the resolution decision names %+v, want {%s person overwritten %s}", resolved.Conflicts, h.attr, other)
	}
	after, err := c.logs.Conflict(ctx, hc.ID)
	if err != nil {
		t.Fatal(err)
	}
	if after.Status != logs.ConflictApplied || after.Resolution != h.take {
		t.Errorf("held conflict after the write: status %s resolution %q, want applied %q", after.Status, after.Resolution, h.take)
	}
}

// checkNothingLost: every value a person entered concurrently either is
// still on its side at the end or is named, attribute and side, in a
// decision's Conflicts under the column's policy (or a person's
// resolution). A deleted record loses the values entered on it.
func (c *matrixEnv) checkNothingLost(t *testing.T, p *matrixPair, edits []matrixEdit, ds []logs.Decision) {
	t.Helper()
	fv, fgone := c.fhirState(t, p.patient)
	cv, cgone := c.crmState(t, p.contact)
	for _, ed := range edits {
		vals, gone := fv, fgone
		if ed.side == logs.SideCRM {
			vals, gone = cv, cgone
		}
		if !gone && vals[ed.attr] == ed.value {
			continue
		}
		named := slices.ContainsFunc(ds, func(d logs.Decision) bool {
			return slices.ContainsFunc(d.Conflicts, func(x logs.Conflict) bool {
				return x.Attribute == ed.attr && x.Overwritten == ed.side &&
					(x.Policy == string(c.policy) || x.Policy == logs.PolicyPerson)
			})
		})
		if !named {
			t.Errorf("the %s value a person entered for %s was replaced and no decision names it as overwritten", ed.side, ed.attr)
		}
	}
}

func describeDecisions(ds []logs.Decision) string {
	var b strings.Builder
	for _, d := range ds {
		fmt.Fprintf(&b, "  %s %s %s/%s source %s target %s changed %v conflicts %+v (%s)\n", d.Time.Format("15:04:05.000"), d.Direction,
			d.Outcome, d.Reason, d.Source, d.Target, d.ChangedFields, d.Conflicts, d.Message)
	}
	return b.String()
}

// matrixResults collects pass or FAIL per cell and database for the
// closing table.
type matrixResults struct {
	mu    sync.Mutex
	cells map[string]string // dialect/policy/row → result
}

func (r *matrixResults) record(t *testing.T, d storage.Dialect, policy maps.ConflictPolicy, row string) {
	res := "pass"
	switch {
	case t.Failed():
		res = "FAIL"
	case t.Skipped():
		res = "skip"
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	r.cells[string(d)+"/"+string(policy)+"/"+row] = res
}

func (r *matrixResults) table() string {
	r.mu.Lock()
	defer r.mu.Unlock()
	var b strings.Builder
	w := tabwriter.NewWriter(&b, 0, 0, 2, ' ', 0)
	fmt.Fprint(w, "row")
	for _, p := range matrixPolicies {
		fmt.Fprintf(w, "\t%s", p)
	}
	fmt.Fprintln(w)
	for _, row := range matrixRows {
		fmt.Fprint(w, row.name)
		for _, p := range matrixPolicies {
			var per []string
			for _, d := range storagetest.Dialects {
				res, ok := r.cells[string(d)+"/"+string(p)+"/"+row.name]
				if !ok {
					res = "-"
				}
				per = append(per, res)
			}
			fmt.Fprintf(w, "\t%s", strings.Join(per, " / "))
		}
		fmt.Fprintln(w)
	}
	_ = w.Flush()
	return b.String()
}

func dialectNames() []string {
	var out []string
	for _, d := range storagetest.Dialects {
		out = append(out, string(d))
	}
	return out
}
