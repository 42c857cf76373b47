package agent

// The world the conflict model test drives: the sandbox FHIR server and
// the sandbox CRM over HTTP, one clock that both of them and the agent
// read, the agent's real pipeline on its own SQLite database, and the
// change notices both servers produce held back in an outbox, so that the
// test chooses when and in what order each is delivered.

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"gorm.io/gorm"

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
	modelAgentUser  = "00000000-0000-0000-0000-0000000a6e17"
	modelPersonUser = "00000000-0000-0000-0000-00000000beef"
	modelKeySecret  = "bW9kZWwtdGVzdC1rZXktc2VjcmV0" // base64 of the sync log's key secret
)

// modelAttr is one attribute map of the model map: its name, its CRM
// attribute and type and its FHIR path (modelFHIRValue and
// modelSetFHIRValue read and set it as a person would).
type modelAttr struct {
	name, crmAttr, fhirPath string
	crmType                 maps.CRMType
	date                    bool // values are dates (yyyy-mm-dd)
}

// modelAttrs are the four two-way attributes of the model map.
var modelAttrs = []modelAttr{
	{name: "last-name", crmAttr: "lastname", fhirPath: "name[0].family", crmType: maps.TypeString},
	{name: "first-name", crmAttr: "firstname", fhirPath: "name[0].given[0]", crmType: maps.TypeString},
	{name: "birth-date", crmAttr: "birthdate", fhirPath: "birthDate", crmType: maps.TypeDateOnly, date: true},
	{name: "email", crmAttr: "emailaddress1", fhirPath: "telecom.where(system = 'email').value", crmType: maps.TypeString},
}

const modelMap = "patient-contact"

// compileModelMap compiles the Patient ↔ contact map of the model test
// under one entity-level conflict policy.
func compileModelMap(t testing.TB, policy maps.ConflictPolicy) *maps.Set {
	t.Helper()
	set, err := modelMapSet(policy, nil)
	if err != nil {
		t.Fatalf("compiling the model map (%s): %v", policy, err)
	}
	return set
}

// modelMapSet compiles the model map with an entity-level conflict policy
// and, when perAttr is set, each attribute's own ("" inherits).
func modelMapSet(policy maps.ConflictPolicy, perAttr []maps.ConflictPolicy) (*maps.Set, error) {
	ops := []maps.Operation{maps.OpCreate, maps.OpUpdate}
	em := maps.EntityMap{Name: modelMap, FHIRType: "Patient", CRMEntity: "contact", CRMEntitySet: "contacts",
		FHIRToCRM: maps.Flow{Enabled: true, Operations: ops}, CRMToFHIR: maps.Flow{Enabled: true, Operations: ops},
		Correlation:    maps.Correlation{CRMAttribute: "msemr_azurefhirid", FHIRIdentifierSystem: "urn:fhirsync:crm:contactid"},
		ConflictPolicy: policy}
	for i, a := range modelAttrs {
		am := maps.AttributeMap{Name: a.name, CRMAttribute: a.crmAttr, CRMType: a.crmType, FHIRPath: a.fhirPath}
		if perAttr != nil {
			am.ConflictPolicy = perAttr[i]
		}
		em.Attributes = append(em.Attributes, am)
	}
	return maps.Compile(&maps.Document{Format: 1, EntityMaps: []maps.EntityMap{em}}, maps.CompileOptions{})
}

// modelClock is the one clock of a world, moved only by the test: the
// FHIR server's meta.lastUpdated, the CRM's modifiedon and the agent's
// now all read it. It moves in whole seconds, the CRM's precision.
type modelClock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *modelClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

func (c *modelClock) advance(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.t = c.t.Add(d)
}

// modelNotice is a change notice a server produced, waiting to be delivered.
type modelNotice struct {
	msg     queues.Message
	side    queues.Side
	id      string // the changed record
	version string
	byAgent bool // the change is one of the agent's own writes
	// requeued: the agent sent this notice to its queues itself (the
	// other events of a message, or a change it leaves to the other
	// direction); it names no write of its own.
	requeued   bool
	deliveries int // how often it was delivered so far
}

// modelQueue stands for the agent's change queues: the only thing the
// pipeline does with them is send notices back (requeue), which join the
// world's outbox.
type modelQueue struct {
	queues.Queue
	w *modelWorld
}

func (q modelQueue) Send(_ context.Context, msgs ...queues.Message) error {
	for _, m := range msgs {
		ns, err := decodeMessage(m.Body, "")
		if err != nil || len(ns) != 1 {
			return fmt.Errorf("the agent re-queued a message it cannot read: %v", err)
		}
		q.w.post(&modelNotice{msg: m, side: ns[0].Side, id: ns[0].ID, version: ns[0].Version, requeued: true})
	}
	return nil
}

// modelWorld is one set of servers, one agent and one clock; runs share
// a world one after the other, each with records of its own.
type modelWorld struct {
	clock   *modelClock
	db      *gorm.DB
	fhirSrv *fhirserver.Server
	crmSrv  *crmserver.Server
	person  *fhir.Client // a clinician editing FHIR
	coord   *crm.Client  // a care coordinator editing the CRM
	agent   *Agent
	p       *pipeline
	tap     *modelDecisionTap
	sets    map[maps.ConflictPolicy]*maps.Set

	mu      sync.Mutex
	outbox  []*modelNotice
	agentOn bool // the agent is handling a message: writes now are its own
	// crmAhead is how far the CRM's clock runs ahead of the others.
	crmAhead time.Duration
	// inject, when set, is a person's edit made just before the agent's
	// next conditional write to that side, so that the write meets a
	// changed record (HTTP 412); injected reports that it was made.
	inject   *modelInjection
	injected bool
}

// modelInjection is a person's edit to make during the agent's write.
type modelInjection struct {
	side  int // mFHIR or mCRM: the side whose write it precedes
	id    string
	edits map[int]string
	err   error
}

// crmNow is the CRM's clock.
func (w *modelWorld) crmNow() time.Time {
	w.mu.Lock()
	ahead := w.crmAhead
	w.mu.Unlock()
	return w.clock.Now().Add(ahead)
}

// racing is the agent's transport to one side: before its conditional
// update (If-Match) of a record, the injected edit of that side, if any,
// is made through the person's own client.
type racing struct {
	w    *modelWorld
	side int
	next http.RoundTripper
}

func (r racing) RoundTrip(req *http.Request) (*http.Response, error) {
	if (req.Method == http.MethodPatch || req.Method == http.MethodPut) && req.Header.Get("If-Match") != "" && req.Header.Get("If-Match") != "*" {
		r.w.mu.Lock()
		in := r.w.inject
		if in != nil && in.side == r.side && strings.Contains(req.URL.Path, in.id) {
			r.w.inject, r.w.injected = nil, true
			// The edit is a person's, not the agent's.
			r.w.agentOn = false
		} else {
			in = nil
		}
		r.w.mu.Unlock()
		if in != nil {
			if r.side == mFHIR {
				in.err = r.w.editFHIR(req.Context(), in.id, in.edits)
			} else {
				in.err = r.w.editCRM(req.Context(), in.id, in.edits)
			}
			r.w.mu.Lock()
			r.w.agentOn = true
			r.w.mu.Unlock()
		}
	}
	return r.next.RoundTrip(req)
}

// Send receives the CRM's RemoteExecutionContext messages (the CRM's
// service endpoint).
func (w *modelWorld) Send(_ context.Context, msgs ...queues.Message) error {
	for _, m := range msgs {
		ns, err := decodeMessage(m.Body, "")
		if err != nil || len(ns) != 1 {
			return fmt.Errorf("the CRM posted a message the agent cannot read: %v", err)
		}
		w.post(&modelNotice{msg: m, side: queues.SideCRM, id: ns[0].ID, version: ns[0].Version})
	}
	return nil
}

func (w *modelWorld) post(n *modelNotice) {
	w.mu.Lock()
	defer w.mu.Unlock()
	n.byAgent = w.agentOn && !n.requeued
	w.outbox = append(w.outbox, n)
}

// take removes and returns the notices produced since the last take.
func (w *modelWorld) take() []*modelNotice {
	w.mu.Lock()
	defer w.mu.Unlock()
	out := w.outbox
	w.outbox = nil
	return out
}

// fhirNotices wraps the FHIR server: every Patient created or updated
// produces a notice naming the new version, as the history feed does.
func (w *modelWorld) fhirNotices(next http.Handler) http.Handler {
	return http.HandlerFunc(func(rw http.ResponseWriter, r *http.Request) {
		if r.Method != http.MethodPut && r.Method != http.MethodPost {
			next.ServeHTTP(rw, r)
			return
		}
		rec := httptest.NewRecorder()
		next.ServeHTTP(rec, r)
		for k, v := range rec.Header() {
			rw.Header()[k] = v
		}
		rw.WriteHeader(rec.Code)
		body := rec.Body.Bytes()
		_, _ = rw.Write(body)
		if rec.Code != http.StatusOK && rec.Code != http.StatusCreated {
			return
		}
		var res fhir.Resource
		if json.Unmarshal(body, &res) != nil || res.Type() != "Patient" || res.ID() == "" {
			return
		}
		ev := queues.EventUpdated
		if rec.Code == http.StatusCreated {
			ev = queues.EventCreated
		}
		n := queues.Notice{V: 1, Side: queues.SideFHIR, Type: "Patient", ID: res.ID(), Version: res.VersionID(), Event: ev, Origin: "model-test"}
		msg, err := n.Message()
		if err != nil {
			panic(err)
		}
		w.post(&modelNotice{msg: msg, side: queues.SideFHIR, id: res.ID(), version: res.VersionID()})
	})
}

// modelDecisionTap is the sync log, keeping each decision written so the test
// can read the one a message just ended in.
type modelDecisionTap struct {
	*logs.Store
	mu  sync.Mutex
	got []logs.Decision
}

func (d *modelDecisionTap) keep(ds ...*logs.Decision) {
	d.mu.Lock()
	defer d.mu.Unlock()
	for _, x := range ds {
		d.got = append(d.got, *x)
	}
}

func (d *modelDecisionTap) Write(ctx context.Context, x *logs.Decision) error {
	err := d.Store.Write(ctx, x)
	if err == nil {
		d.keep(x)
	}
	return err
}

func (d *modelDecisionTap) WriteBatchWith(ctx context.Context, ds []*logs.Decision, also func(tx *gorm.DB) error) error {
	err := d.Store.WriteBatchWith(ctx, ds, also)
	if err == nil {
		d.keep(ds...)
	}
	return err
}

// taken returns the decisions written since the last call.
func (d *modelDecisionTap) taken() []logs.Decision {
	d.mu.Lock()
	defer d.mu.Unlock()
	out := d.got
	d.got = nil
	return out
}

// modelNoWatch is a map store that never publishes: the test sets the map set.
type modelNoWatch struct{}

func (modelNoWatch) Watch(ctx context.Context) <-chan *maps.Set {
	ch := make(chan *maps.Set)
	close(ch)
	return ch
}

// newModelWorld starts the servers and the agent of one world.
func newModelWorld(t testing.TB) *modelWorld {
	t.Helper()
	w := &modelWorld{clock: &modelClock{t: time.Date(2026, 1, 5, 8, 0, 0, 0, time.UTC)}, sets: map[maps.ConflictPolicy]*maps.Set{}}
	for _, p := range []maps.ConflictPolicy{maps.ConflictFHIRWins, maps.ConflictCRMWins, maps.ConflictHold, maps.ConflictLastWriter} {
		w.sets[p] = compileModelMap(t, p)
	}
	var err error
	w.db = storagetest.Open(t, storage.SQLite)
	if w.fhirSrv, err = fhirserver.New(fhirserver.Options{Now: w.clock.Now}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = w.fhirSrv.Close() })
	fhirHTTP := httptest.NewServer(w.fhirNotices(w.fhirSrv))
	t.Cleanup(fhirHTTP.Close)
	if w.crmSrv, err = crmserver.New(crmserver.Options{Now: w.crmNow, Endpoint: w,
		Tokens: map[string]string{"agent-token": modelAgentUser, "person-token": modelPersonUser}}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = w.crmSrv.Close() })
	crmHTTP := httptest.NewServer(w.crmSrv)
	t.Cleanup(crmHTTP.Close)

	agentFHIR, err := fhir.New(fhir.Config{BaseURL: fhirHTTP.URL, HTTPClient: &http.Client{Transport: racing{w: w, side: mFHIR, next: http.DefaultTransport}}})
	if err != nil {
		t.Fatal(err)
	}
	if w.person, err = fhir.New(fhir.Config{BaseURL: fhirHTTP.URL}); err != nil {
		t.Fatal(err)
	}
	agentCRM, err := crm.New(crm.Config{URL: crmHTTP.URL, Auth: crm.AuthBearer, Token: "agent-token", MaxRetries: -1,
		HTTPClient: &http.Client{Transport: racing{w: w, side: mCRM, next: http.DefaultTransport}}})
	if err != nil {
		t.Fatal(err)
	}
	if w.coord, err = crm.New(crm.Config{URL: crmHTTP.URL, Auth: crm.AuthBearer, Token: "person-token", MaxRetries: -1}); err != nil {
		t.Fatal(err)
	}
	store, err := logs.New(w.db, logs.Config{KeySecret: modelKeySecret}, nil)
	if err != nil {
		t.Fatal(err)
	}
	w.tap = &modelDecisionTap{Store: store}
	key, err := base64.StdEncoding.DecodeString(modelKeySecret)
	if err != nil {
		t.Fatal(err)
	}
	q := modelQueue{w: w}
	if w.agent, err = New(Config{Workers: 1, MaxAttempts: 10, CRMUserID: modelAgentUser, BaseKey: key},
		Deps{DB: w.db, Maps: modelNoWatch{}, FHIR: agentFHIR, CRM: agentCRM, Logs: w.tap, FHIRChanges: q, CRMChanges: q}); err != nil {
		t.Fatal(err)
	}
	w.p = w.agent.pipe
	w.p.now = w.clock.Now
	if w.agent.batch != nil {
		// One message at a time: commit each unit at once rather than
		// waiting for company.
		w.agent.batch.max, w.agent.batch.wait = 1, 0
		ctx, cancel := context.WithCancel(context.Background())
		done := make(chan struct{})
		go func() { w.agent.batch.run(ctx); close(done) }()
		t.Cleanup(func() { cancel(); <-done })
	}
	return w
}

// use publishes a map set to the agent.
func (w *modelWorld) use(set *maps.Set) {
	w.agent.current.Store(set)
}

// deliver hands n to the pipeline as a queue delivers it and returns the
// decisions the message ended in and the notices the agent's writes
// produced.
func (w *modelWorld) deliver(ctx context.Context, n *modelNotice) ([]logs.Decision, []*modelNotice, settlement) {
	n.deliveries++
	w.tap.taken()
	w.mu.Lock()
	w.agentOn = true
	w.mu.Unlock()
	s := w.p.handle(ctx, &queues.Received{Message: n.msg, DeliveryCount: n.deliveries, SequenceNumber: seq.Add(1)})
	w.mu.Lock()
	w.agentOn = false
	w.mu.Unlock()
	return w.tap.taken(), w.take(), s
}

// race arms in for the agent's next conditional write to its side.
func (w *modelWorld) race(in *modelInjection) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.inject, w.injected = in, false
}

// raced disarms the injection and reports whether it was made.
func (w *modelWorld) raced() bool {
	w.mu.Lock()
	defer w.mu.Unlock()
	fired := w.injected
	w.inject, w.injected = nil, false
	return fired
}

// modelSideState is one side's record as read back: each attribute's value
// ("" for none), its version and its modified time.
type modelSideState struct {
	vals     []string
	version  string
	modified time.Time
}

// readFHIR reads the Patient's mapped values.
func (w *modelWorld) readFHIR(ctx context.Context, id string) (modelSideState, fhir.Resource, error) {
	res, err := w.person.Read(ctx, "Patient", id)
	if err != nil {
		return modelSideState{}, nil, err
	}
	st := modelSideState{version: res.VersionID(), modified: res.LastUpdated()}
	for _, a := range modelAttrs {
		st.vals = append(st.vals, modelFHIRValue(res, a.name))
	}
	return st, res, nil
}

// readCRM reads the contact's mapped values.
func (w *modelWorld) readCRM(ctx context.Context, id string) (modelSideState, error) {
	sel := []string{"modifiedon", "versionnumber"}
	for _, a := range modelAttrs {
		sel = append(sel, a.crmAttr)
	}
	rec, err := w.coord.Retrieve(ctx, crm.ByID("contacts", id), sel...)
	if err != nil {
		return modelSideState{}, err
	}
	st := modelSideState{version: normVersion(rec.ETag())}
	st.modified, _ = time.Parse(time.RFC3339, rec.String("modifiedon"))
	for _, a := range modelAttrs {
		v := rec.String(a.crmAttr)
		if a.date && len(v) > 10 {
			v = v[:10]
		}
		st.vals = append(st.vals, v)
	}
	return st, nil
}

// modelFHIRValue reads one model attribute of a Patient as a person sees it.
func modelFHIRValue(res map[string]any, attr string) string {
	switch attr {
	case "last-name", "first-name":
		names, _ := res["name"].([]any)
		if len(names) == 0 {
			return ""
		}
		n, _ := names[0].(map[string]any)
		if attr == "last-name" {
			s, _ := n["family"].(string)
			return s
		}
		given, _ := n["given"].([]any)
		if len(given) == 0 {
			return ""
		}
		s, _ := given[0].(string)
		return s
	case "birth-date":
		s, _ := res["birthDate"].(string)
		return s
	case "email":
		tel, _ := res["telecom"].([]any)
		for _, x := range tel {
			cp, _ := x.(map[string]any)
			if cp["system"] == "email" {
				s, _ := cp["value"].(string)
				return s
			}
		}
	}
	return ""
}

// modelSetFHIRValue sets (or, with "", removes) one model attribute of a
// Patient as a person editing it would, leaving everything else alone.
func modelSetFHIRValue(res map[string]any, attr, v string) {
	switch attr {
	case "last-name", "first-name":
		names, _ := res["name"].([]any)
		var n map[string]any
		if len(names) > 0 {
			n, _ = names[0].(map[string]any)
		}
		if n == nil {
			n = map[string]any{}
		}
		key, val := "family", any(v)
		if attr == "first-name" {
			key, val = "given", []any{v}
		}
		if v == "" {
			delete(n, key)
		} else {
			n[key] = val
		}
		switch {
		case len(n) == 0 && len(names) > 1:
			res["name"] = names[1:]
		case len(n) == 0:
			delete(res, "name")
		case len(names) == 0:
			res["name"] = []any{n}
		default:
			names[0] = n
		}
	case "birth-date":
		if v == "" {
			delete(res, "birthDate")
		} else {
			res["birthDate"] = v
		}
	case "email":
		tel, _ := res["telecom"].([]any)
		tel = slices.DeleteFunc(slices.Clone(tel), func(x any) bool {
			cp, _ := x.(map[string]any)
			return cp["system"] == "email"
		})
		if v != "" {
			tel = append(tel, map[string]any{"system": "email", "value": v})
		}
		if len(tel) == 0 {
			delete(res, "telecom")
		} else {
			res["telecom"] = tel
		}
	}
}

// createPatient is a clinician registering a patient with vals.
func (w *modelWorld) createPatient(ctx context.Context, vals []string) (string, error) {
	res := fhir.Resource{"resourceType": "Patient"}
	for i, a := range modelAttrs {
		modelSetFHIRValue(res, a.name, vals[i])
	}
	got, err := w.person.Create(ctx, res)
	if err != nil {
		return "", err
	}
	return got.ID(), nil
}

// editFHIR is a clinician changing some attributes (index → value) of a
// Patient.
func (w *modelWorld) editFHIR(ctx context.Context, id string, edits map[int]string) error {
	res, err := w.person.Read(ctx, "Patient", id)
	if err != nil {
		return err
	}
	for i, v := range edits {
		modelSetFHIRValue(res, modelAttrs[i].name, v)
	}
	_, err = w.person.Update(ctx, res, "")
	return err
}

// editCRM is a care coordinator changing some attributes of a contact.
func (w *modelWorld) editCRM(ctx context.Context, id string, edits map[int]string) error {
	rec := crm.Record{}
	for i, v := range edits {
		if v == "" {
			rec[modelAttrs[i].crmAttr] = nil
		} else {
			rec[modelAttrs[i].crmAttr] = v
		}
	}
	_, err := w.coord.Upsert(ctx, crm.ByID("contacts", id), rec, crm.UpsertOptions{Mode: crm.UpdateOnly})
	return err
}

// identify adds the contact's id to the Patient under the map's
// correlation system.
func (w *modelWorld) identify(ctx context.Context, fhirID, crmID string) error {
	res, err := w.person.Read(ctx, "Patient", fhirID)
	if err != nil {
		return err
	}
	ids, _ := res["identifier"].([]any)
	res["identifier"] = append(ids, map[string]any{"system": "urn:fhirsync:crm:contactid", "value": crmID})
	_, err = w.person.Update(ctx, res, "")
	return err
}

// contactOf finds the contact the agent created for a Patient.
func (w *modelWorld) contactOf(ctx context.Context, fhirID string) (string, error) {
	rec, err := w.coord.Retrieve(ctx, crm.ByKey("contacts", "msemr_azurefhirid", fhirID), "contactid")
	if err != nil {
		return "", err
	}
	return rec.String("contactid"), nil
}

// mDescribeDecision is a decision in one line, for a failure's trace.
func mDescribeDecision(d logs.Decision) string {
	var b bytes.Buffer
	fmt.Fprintf(&b, "%s/%s", d.Outcome, d.Reason)
	if len(d.ChangedFields) > 0 {
		fmt.Fprintf(&b, " changed=%s", strings.Join(d.ChangedFields, ","))
	}
	for _, c := range d.Conflicts {
		fmt.Fprintf(&b, " {%s %s", c.Attribute, c.Policy)
		if c.Tie {
			b.WriteString(" tie")
		}
		switch {
		case c.Overwritten != "":
			fmt.Fprintf(&b, " overwritten=%s", c.Overwritten)
		case c.Held:
			b.WriteString(" held")
		case c.Deferred:
			b.WriteString(" deferred")
		}
		b.WriteString("}")
	}
	return b.String()
}
