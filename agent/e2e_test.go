package agent_test

import (
	"context"
	"fmt"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"testing"
	"time"

	"go.opentelemetry.io/otel/trace"
	"gorm.io/gorm"

	"github.com/fhirsync/fhirsync/agent"
	"github.com/fhirsync/fhirsync/agent/crm"
	"github.com/fhirsync/fhirsync/agent/fhir"
	"github.com/fhirsync/fhirsync/logs"
	"github.com/fhirsync/fhirsync/maps"
	"github.com/fhirsync/fhirsync/maps/starter"
	"github.com/fhirsync/fhirsync/queues"
	"github.com/fhirsync/fhirsync/queues/embedded"
	"github.com/fhirsync/fhirsync/sandbox/crmserver"
	"github.com/fhirsync/fhirsync/sandbox/fhirserver"
	"github.com/fhirsync/fhirsync/sandbox/synth"
	"github.com/fhirsync/fhirsync/storage/storagetest"
)

const (
	agentUser = "00000000-0000-0000-0000-0000000a6e17"
	humanUser = "00000000-0000-0000-0000-00000000beef"
)

// env is a running agent between the sandbox FHIR server and the sandbox
// CRM, on the embedded queue.
type env struct {
	db       *gorm.DB
	fhirSrv  *fhirserver.Server
	crmSrv   *crmserver.Server
	crmURL   string       // the sandbox CRM's address, for another replica
	fhir     *fhir.Client // as a clinician editing FHIR
	crmHuman *crm.Client  // as a care coordinator editing the CRM
	logs     *logs.Store
	poller   *fhir.Poller
	fhirQ    queues.Queue
	crmQ     queues.Queue
	stop     func()
}

// envOptions vary the environment per test.
type envOptions struct {
	// tweak changes the starter map set before it is published.
	tweak func(doc *maps.Document)
	// crmRetries is the agent's CRM client MaxRetries (0: the default).
	crmRetries int
	// noPoller leaves the history poller off; the test sends notices.
	noPoller bool
	// fhirURL, when set, is an external FHIR server used instead of the
	// sandbox (fhirSrv is nil then).
	fhirURL string
	// queue, when set, opens the named queue instead of the embedded one.
	queue func(t *testing.T, name string) queues.Queue
	// crmTransport, when set, wraps the transport of the agent's CRM
	// client (to act between the agent's requests).
	crmTransport func(http.RoundTripper) http.RoundTripper
	// crmOptions, when set, changes the sandbox CRM's options before it
	// starts (e.g. to post through a webhook instead of the queue).
	crmOptions func(*crmserver.Options)
	// bypassOwnSteps has the agent's CRM client name the sandbox
	// endpoint's steps in BypassBusinessLogicExecutionStepIds
	// (crm.bypass_own_steps).
	bypassOwnSteps bool
	// tracer, when set, traces the embedded queues' sends and the agent.
	tracer trace.TracerProvider
}

// eachEchoMode runs fn once per dialect and per way the agent's own CRM
// writes are treated: posted back by the sandbox endpoint and recognised
// as echoes (bypass false), and written naming the endpoint's steps so
// none is posted (crm.bypass_own_steps, bypass true). Each run has a
// fresh migrated database.
func eachEchoMode(t *testing.T, fn func(t *testing.T, db *gorm.DB, bypass bool)) {
	t.Helper()
	for _, d := range storagetest.Dialects {
		for _, bypass := range []bool{false, true} {
			name := string(d) + "/echoed"
			if bypass {
				name = string(d) + "/bypassed"
			}
			t.Run(name, func(t *testing.T) {
				fn(t, storagetest.Open(t, d), bypass)
			})
		}
	}
}

// checkBypassed fails t unless the sandbox endpoint bypassed the agent's
// writes (they name its steps) and posted exactly posted changes: the edits
// of people, none of the agent's.
func (e *env) checkBypassed(t *testing.T, posted int64) {
	t.Helper()
	if st := e.crmSrv.Stats(); st.EndpointBypassed == 0 || st.EndpointSent != posted {
		t.Errorf("sandbox endpoint: %d changes bypassed, %d posted; want the agent's writes bypassed and %d posted", st.EndpointBypassed, st.EndpointSent, posted)
	}
}

func startEnv(t *testing.T, db *gorm.DB, cfg agent.Config, opts ...envOptions) *env {
	t.Helper()
	var o envOptions
	if len(opts) > 0 {
		o = opts[0]
	}
	ctx := context.Background()
	e := &env{db: db}
	var err error
	if o.queue != nil {
		e.fhirQ, e.crmQ = o.queue(t, "fhir-changes"), o.queue(t, "crm-changes")
	} else {
		if e.fhirQ, err = embedded.New(db, "fhir-changes", embedded.Options{LockDuration: 30 * time.Second, MaxDeliveryCount: 50, Tracer: o.tracer}); err != nil {
			t.Fatal(err)
		}
		if e.crmQ, err = embedded.New(db, "crm-changes", embedded.Options{LockDuration: 30 * time.Second, MaxDeliveryCount: 50, Tracer: o.tracer}); err != nil {
			t.Fatal(err)
		}
	}
	fhirURL := o.fhirURL
	if fhirURL == "" {
		if e.fhirSrv, err = fhirserver.New(fhirserver.Options{Seed: 7, Patients: 3}); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { e.fhirSrv.Close() })
		fhirHTTP := httptest.NewServer(e.fhirSrv)
		t.Cleanup(fhirHTTP.Close)
		fhirURL = fhirHTTP.URL
	}
	crmOpts := crmserver.Options{
		Tokens:   map[string]string{"agent-token": agentUser, "human-token": humanUser},
		Endpoint: e.crmQ,
	}
	if o.crmOptions != nil {
		o.crmOptions(&crmOpts)
	}
	if e.crmSrv, err = crmserver.New(crmOpts); err != nil {
		t.Fatal(err)
	}
	crmHTTP := httptest.NewServer(e.crmSrv)
	t.Cleanup(crmHTTP.Close)
	e.crmURL = crmHTTP.URL

	if e.fhir, err = fhir.New(fhir.Config{BaseURL: fhirURL}); err != nil {
		t.Fatal(err)
	}
	var crmHC *http.Client
	if o.crmTransport != nil {
		crmHC = &http.Client{Transport: o.crmTransport(http.DefaultTransport)}
	}
	crmAgent, err := crm.New(crm.Config{URL: crmHTTP.URL, Auth: crm.AuthBearer, Token: "agent-token", MaxRetries: o.crmRetries, HTTPClient: crmHC})
	if err != nil {
		t.Fatal(err)
	}
	if o.bypassOwnSteps {
		eps, err := crmAgent.ServiceEndpoints(context.Background())
		if err != nil || len(eps) == 0 {
			t.Fatalf("service endpoints %v: %v", eps, err)
		}
		steps, err := crmAgent.EndpointSteps(context.Background(), eps[0].ID)
		if err != nil {
			t.Fatal(err)
		}
		if err := crmAgent.BypassSteps(context.Background(), steps, 0, nil); err != nil {
			t.Fatal(err)
		}
	}
	if e.crmHuman, err = crm.New(crm.Config{URL: crmHTTP.URL, Auth: crm.AuthBearer, Token: "human-token"}); err != nil {
		t.Fatal(err)
	}
	if e.logs, err = logs.New(db, logs.Config{KeySecret: "ZTJlLXRlc3Qta2V5LXNlY3JldA=="}, nil); err != nil {
		t.Fatal(err)
	}
	ms, err := maps.New(db, maps.Options{PollInterval: 200 * time.Millisecond, Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatal(err)
	}
	publishStarter(t, ms, o.tweak)
	if e.poller, err = fhir.NewPoller(fhir.PollerConfig{Client: e.fhir, DB: db, Queue: e.fhirQ, Types: []string{"Organization", "Practitioner", "Patient"},
		Schedule: "@every 1s", Overlap: 5 * time.Second}); err != nil {
		t.Fatal(err)
	}
	cfg.CRMUserID = agentUser
	// The agent writes FHIR as in production: through a Batcher.
	fw, err := fhir.NewBatcher(e.fhir, fhir.BatchConfig{})
	if err != nil {
		t.Fatal(err)
	}
	a, err := agent.New(cfg, agent.Deps{DB: db, Maps: ms, FHIR: fw, CRM: crmAgent, Logs: e.logs,
		FHIRChanges: e.fhirQ, CRMChanges: e.crmQ, Tracer: o.tracer})
	if err != nil {
		t.Fatal(err)
	}
	runCtx, cancel := context.WithCancel(ctx)
	done := make(chan error, 2)
	running := 1
	go func() { done <- a.Run(runCtx) }()
	if !o.noPoller {
		running++
		go func() { done <- e.poller.Run(runCtx) }()
	}
	<-a.Ready()
	e.stop = func() {
		cancel()
		for range running {
			if err := <-done; err != nil && err != context.Canceled {
				t.Errorf("stopping: %v", err)
			}
		}
	}
	t.Cleanup(func() {
		if e.stop != nil {
			e.stop()
		}
	})
	return e
}

func publishStarter(t *testing.T, ms *maps.Store, tweak func(*maps.Document)) {
	t.Helper()
	doc, _, err := maps.Import(starter.YAML(), maps.CompileOptions{})
	if err != nil {
		t.Fatalf("importing the starter maps: %v", err)
	}
	if tweak != nil {
		tweak(doc)
	}
	ctx := context.Background()
	v, err := ms.CreateDraft(ctx, doc, "test", "starter")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := ms.Publish(ctx, v.Number, "test", "starter"); err != nil {
		t.Fatal(err)
	}
}

// decisions returns the decisions for a record, newest first.
func (e *env) decisions(t *testing.T, id string) []logs.Decision {
	t.Helper()
	page, err := e.logs.Search(context.Background(), logs.Filter{Record: id}, "", 100)
	if err != nil {
		t.Fatal(err)
	}
	return page.Decisions
}

func (e *env) waitDecision(t *testing.T, id string, dir logs.Direction, reason logs.ReasonCode) logs.Decision {
	t.Helper()
	deadline := time.Now().Add(60 * time.Second)
	for time.Now().Before(deadline) {
		for _, d := range e.decisions(t, id) {
			if d.Direction == dir && d.Reason == reason {
				return d
			}
		}
		time.Sleep(100 * time.Millisecond)
	}
	var seen []string
	for _, d := range e.decisions(t, id) {
		seen = append(seen, fmt.Sprintf("%s/%s/%s(%s)", d.Direction, d.Outcome, d.Reason, d.Message))
	}
	all, _ := e.logs.Search(context.Background(), logs.Filter{}, "", 200)
	var other []string
	for _, d := range all.Decisions {
		other = append(other, fmt.Sprintf("%s %s/%s/%s(%s)", d.Source, d.Direction, d.Outcome, d.Reason, d.Message))
	}
	t.Fatalf("no %s %s decision for %s within 60s; saw %v\nall decisions:\n%s", dir, reason, id, seen, strings.Join(other, "\n"))
	return logs.Decision{}
}

func TestEndToEndEmbeddedQueueAndSandboxes(t *testing.T) {
	t.Parallel()
	storagetest.Each(t, func(t *testing.T, db *gorm.DB) {
		e := startEnv(t, db, agent.Config{Workers: 4, RetryBase: 200 * time.Millisecond, RetryMax: time.Second})
		ctx := context.Background()

		// The FHIR server holds three synthetic patients with their
		// practitioners and organizations; the history feed finds them all,
		// and patients whose practitioner is not synced yet wait for it.
		for i := range 3 {
			e.waitDecision(t, synth.PatientID(i), logs.FHIRToCRM, "created")
		}
		if n := e.crmSrv.Count("contact"); n < 3 {
			t.Fatalf("CRM holds %d contacts, want the 3 patients and their practitioners", n)
		}
		// The store also holds practitioners no patient refers to; they
		// may still be on their way when the patients are done, so count
		// only once both queues have drained.
		e.quiet(t)
		contactsBefore := e.crmSrv.Count("contact")

		// A clinician registers a new patient in FHIR.
		pat := synth.New(7).Patient(1)
		delete(pat, "id")
		delete(pat, "generalPractitioner")
		delete(pat, "managingOrganization")
		created, err := e.fhir.Create(ctx, fhir.Resource(pat))
		if err != nil {
			t.Fatal(err)
		}
		id := created.ID()
		e.poller.Trigger()
		d := e.waitDecision(t, id, logs.FHIRToCRM, "created")
		if d.Outcome != logs.OutcomeSent || d.EntityMap != "patient-contact" || d.Target.Type != "contact" || d.MapVersion == 0 {
			t.Fatalf("decision = %+v", d)
		}
		contact, err := e.crmHuman.Retrieve(ctx, crm.ByKey("contacts", "msemr_azurefhirid", id))
		if err != nil {
			t.Fatalf("the contact was not created: %v", err)
		}
		name := firstOfficialFamily(created)
		if contact.String("lastname") != name {
			t.Errorf("contact lastname = %q, want the patient's family name", contact.String("lastname"))
		}
		if n := e.crmSrv.Count("contact"); n != contactsBefore+1 {
			t.Errorf("CRM holds %d contacts, want %d", n, contactsBefore+1)
		}

		// The CRM's service endpoint reports the contact fhirsync wrote; the
		// agent recognises its own write instead of syncing it back.
		contactID := contact.String("contactid")
		echo := e.waitDecision(t, contactID, logs.CRMToFHIR, "own_write_echo")
		if echo.Outcome != logs.OutcomeSkipped {
			t.Errorf("echo decision = %+v", echo)
		}

		// A care coordinator changes the contact's email in the CRM; it is
		// written back to the Patient.
		if _, err := e.crmHuman.Upsert(ctx, crm.ByID("contacts", contactID), crm.Record{"emailaddress1": "coordinator-set@example.org"},
			crm.UpsertOptions{Mode: crm.UpdateOnly}); err != nil {
			t.Fatal(err)
		}
		up := e.waitDecision(t, contactID, logs.CRMToFHIR, "updated")
		if !slices.ContainsFunc(up.ChangedFields, func(f string) bool { return len(f) >= 7 && f[:7] == "telecom" }) {
			t.Errorf("changed fields = %v, want a telecom path", up.ChangedFields)
		}
		after, err := e.fhir.Read(ctx, "Patient", id)
		if err != nil {
			t.Fatal(err)
		}
		if !hasEmail(after, "coordinator-set@example.org") {
			t.Errorf("the Patient lacks the new email after write-back")
		}
		// The poller now sees the version fhirsync wrote: an echo, not a new
		// update of the contact.
		e.poller.Trigger()
		e.waitDecision(t, id, logs.FHIRToCRM, "own_write_echo")
		if n := e.crmSrv.Count("contact"); n != contactsBefore+1 {
			t.Errorf("CRM holds %d contacts after the round trip, want %d", n, contactsBefore+1)
		}
	})
}

func firstOfficialFamily(res fhir.Resource) string {
	names, _ := res["name"].([]any)
	for _, n := range names {
		m, _ := n.(map[string]any)
		if m["use"] == "official" {
			s, _ := m["family"].(string)
			return s
		}
	}
	return ""
}

func hasEmail(res fhir.Resource, want string) bool {
	tel, _ := res["telecom"].([]any)
	for _, x := range tel {
		m, _ := x.(map[string]any)
		if m["system"] == "email" && m["value"] == want {
			return true
		}
	}
	return false
}

// notify puts a change notice on the agent's queue, as a feed would.
func (e *env) notify(t *testing.T, side queues.Side, typ, id, version string, ev queues.Event) string {
	t.Helper()
	n := queues.Notice{V: queues.NoticeVersion, Side: side, Type: typ, ID: id, Version: version, Event: ev,
		Origin: "test", ChangedAt: time.Now()}
	msg, err := n.Message()
	if err != nil {
		t.Fatal(err)
	}
	q := e.fhirQ
	if side == queues.SideCRM {
		q = e.crmQ
	}
	if err := q.Send(context.Background(), msg); err != nil {
		t.Fatal(err)
	}
	return msg.ID
}

// quiet waits until both queues hold no active messages, so an injected
// failure hits the request the test means.
func (e *env) quiet(t *testing.T) {
	t.Helper()
	deadline := time.Now().Add(60 * time.Second)
	for time.Now().Before(deadline) {
		a, err1 := e.fhirQ.Depth(context.Background())
		b, err2 := e.crmQ.Depth(context.Background())
		if err1 == nil && err2 == nil && a.Active == 0 && b.Active == 0 && a.Scheduled == 0 && b.Scheduled == 0 {
			return
		}
		time.Sleep(50 * time.Millisecond)
	}
	t.Fatal("queues did not drain within 60s")
}

// byMessage waits for the decision of one message.
func (e *env) byMessage(t *testing.T, id string, reason logs.ReasonCode) logs.Decision {
	t.Helper()
	deadline := time.Now().Add(60 * time.Second)
	var last []logs.Decision
	for time.Now().Before(deadline) {
		page, err := e.logs.Search(context.Background(), logs.Filter{MessageID: id}, "", 50)
		if err != nil {
			t.Fatal(err)
		}
		for _, d := range page.Decisions {
			if d.Reason == reason {
				return d
			}
		}
		last = page.Decisions
		time.Sleep(50 * time.Millisecond)
	}
	var seen []string
	for _, d := range last {
		seen = append(seen, fmt.Sprintf("%s/%s(%s)", d.Outcome, d.Reason, d.Message))
	}
	t.Fatalf("message %s: no %s decision within 60s; saw %v", id, reason, seen)
	return logs.Decision{}
}

// testBaseKey is an installation key for tests that keep the base state
// of linked pairs, as production does when logs.key_secret is set.
var testBaseKey = []byte("fhirsync test installation key")
