package agentbench

import (
	"bytes"
	"context"
	crand "crypto/rand"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	stdmaps "maps"
	"net/http"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
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
)

// Sandbox CRM identities: the agent's application users and a person
// editing contacts.
const (
	humanToken = "bench-coordinator"
	humanUser  = "00000000-0000-0000-0000-0000000be7c2"
	// maxAgentUsers is how many application users the sandbox CRM knows
	// for the agent (--crm-users at most).
	maxAgentUsers = 8
)

// coordinator is a CRM client signed in as the person editing contacts,
// for the sandbox CRM at url.
func coordinator(url string) (*crm.Client, error) {
	return crm.New(crm.Config{URL: url, Auth: crm.AuthBearer, Token: humanToken})
}

// agentToken is the bearer token of the agent's application user i (from
// 0), agentUser its systemuserid.
func agentToken(i int) string {
	if i == 0 {
		return "bench-agent"
	}
	return fmt.Sprintf("bench-agent-%d", i+1)
}

func agentUser(i int) string {
	if i == 0 {
		return "00000000-0000-0000-0000-0000000be7c1"
	}
	return fmt.Sprintf("00000000-0000-0000-0000-0000000be8%02d", i)
}

// isAgentUser reports whether id is one of the agent's application users.
func isAgentUser(id string) bool {
	for i := range maxAgentUsers {
		if agentUser(i) == id {
			return true
		}
	}
	return false
}

// env is one running agent between the two sandboxes.
type env struct {
	cfg   Config
	runID string
	db    *gorm.DB
	sb    sandboxes
	fhirQ *embedded.Queue
	crmQ  *embedded.Queue
	fhir  *fhir.Client // a clinician writing FHIR
	crm   *crm.Client  // a care coordinator writing the CRM
	reg   *prometheus.Registry
	logs  *logs.Store
	maps  *maps.Store
	// users is how many application users the running agent signs in as,
	// agentReg the registry of its metrics.
	users    int
	agentReg *prometheus.Registry
	// kinds counts the agent's CRM requests by kind, across agents.
	kinds     *kindCounter
	stopAgent func() error
	// prior are the decisions of the agents stopped before the running
	// one.
	prior   counts
	closers []func()
}

// start assembles the sandboxes and queues and starts the agent the way
// `fhirsync serve` does, with the sandboxes served over loopback HTTP.
func start(ctx context.Context, cfg Config) (*env, error) {
	var rid [4]byte
	_, _ = crand.Read(rid[:])
	e := &env{cfg: cfg, db: cfg.DB, runID: "bench-" + hex.EncodeToString(rid[:]), reg: prometheus.NewRegistry()}
	fail := func(err error) (*env, error) {
		e.closeAll()
		return nil, err
	}
	var err error
	// Queue names are unique per run so a reused database cannot feed
	// this run messages from an earlier one.
	qopts := embedded.Options{MaxDeliveryCount: 50}
	if e.fhirQ, err = embedded.New(e.db, e.runID+"-fhir-changes", qopts); err != nil {
		return fail(err)
	}
	e.closers = append(e.closers, func() { _ = e.fhirQ.Close(context.Background()) })
	if e.crmQ, err = embedded.New(e.db, e.runID+"-crm-changes", qopts); err != nil {
		return fail(err)
	}
	e.closers = append(e.closers, func() { _ = e.crmQ.Close(context.Background()) })
	if len(cfg.SandboxCommand) > 0 {
		e.sb, err = startRemote(ctx, cfg.SandboxCommand, cfg.TempDir, e.crmQ)
	} else {
		e.sb, err = startLocal(cfg.TempDir, e.runID, e.crmQ)
	}
	if err != nil {
		return fail(err)
	}
	// The sandboxes close before the queues: the CRM posts what is pending
	// to crm-changes.
	e.closers = append(e.closers, func() { _ = e.sb.close() })
	if cfg.CRMDOPHint != 0 {
		if err := e.sb.setDOPHint(ctx, cfg.CRMDOPHint); err != nil {
			return fail(err)
		}
	}
	if e.fhir, err = fhir.New(fhir.Config{BaseURL: e.sb.fhirURL()}); err != nil {
		return fail(err)
	}
	if e.crm, err = coordinator(e.sb.crmURL()); err != nil {
		return fail(err)
	}
	var secret [24]byte
	_, _ = crand.Read(secret[:])
	if e.logs, err = logs.New(e.db, logs.Config{KeySecret: base64.StdEncoding.EncodeToString(secret[:]), Logger: cfg.Logger}, e.reg); err != nil {
		return fail(err)
	}
	if e.maps, err = maps.New(e.db, maps.Options{Logger: cfg.Logger}); err != nil {
		return fail(err)
	}
	if err := publishStarter(ctx, e.maps); err != nil {
		return fail(err)
	}
	if err := e.startAgent(ctx, cfg.CRMUsers); err != nil {
		return fail(err)
	}
	return e, nil
}

// closeAll closes what start opened, last first.
func (e *env) closeAll() {
	for i := len(e.closers) - 1; i >= 0; i-- {
		e.closers[i]()
	}
	e.closers = nil
}

// stop stops the agent, then the sandboxes and the queues.
func (e *env) stop() error {
	var err error
	if e.stopAgent != nil {
		err = e.stopAgent()
		e.stopAgent = nil
	}
	e.closeAll()
	return err
}

// startAgent starts an agent signing in to the CRM as users application
// users, stopping the running one first. Agents started one after another
// share the queues, the database and the decision counters, as a restarted
// process does.
func (e *env) startAgent(ctx context.Context, users int) error {
	if e.stopAgent != nil {
		// The decisions so far carry over to the next agent's counts.
		c, err := e.decisions()
		if err != nil {
			return err
		}
		if err := e.stopAgent(); err != nil {
			return fmt.Errorf("stopping the agent: %w", err)
		}
		e.stopAgent, e.prior = nil, c
	}
	users = max(users, 1)
	fc, err := fhir.New(fhir.Config{BaseURL: e.sb.fhirURL()})
	if err != nil {
		return err
	}
	// As serve does: the agent's FHIR writes go through a Batcher (batch
	// Bundles where the CapabilityStatement lists batch).
	agentFHIR, err := fhir.NewBatcher(fc, fhir.BatchConfig{Logger: e.cfg.Logger})
	if err != nil {
		return err
	}
	ccfg, acfg, err := agentCRMUsers(e.sb.crmURL(), users)
	if err != nil {
		return err
	}
	if e.kinds == nil {
		t := http.DefaultTransport.(*http.Transport).Clone()
		t.MaxIdleConnsPerHost = crm.MaxConcurrency * maxAgentUsers
		e.kinds = newKindCounter(t)
	}
	ccfg.HTTPClient = &http.Client{Transport: e.kinds}
	agentCRM, err := crm.New(ccfg)
	if err != nil {
		return err
	}
	if e.cfg.BypassOwnSteps {
		if err := bypassEndpointSteps(ctx, agentCRM); err != nil {
			return err
		}
	}
	baseKey := make([]byte, 24)
	_, _ = crand.Read(baseKey)
	if e.cfg.BaseStateOff {
		baseKey = nil
	}
	// Queue depth is sampled at the agent's default (Config.DepthEvery), as
	// in production: nothing here reads the depth metric, and each count
	// of a backlog is the measured process's work (up to 7 ms a count in
	// a run of 10,000 records).
	acfg.Workers, acfg.LockRenewEvery, acfg.BaseKey = e.cfg.Workers, 20*time.Second, baseKey
	acfg.CRMBatchMax, acfg.CRMBatchWait = e.cfg.CRMBatchMax, e.cfg.CRMBatchWait
	// Each agent registers its metrics in a registry of its own.
	reg := prometheus.NewRegistry()
	a, err := agent.New(acfg,
		agent.Deps{DB: e.db, Maps: e.maps, FHIR: agentFHIR, CRM: agentCRM, Logs: e.logs, FHIRChanges: e.fhirQ, CRMChanges: e.crmQ,
			Registry: reg, Logger: e.cfg.Logger})
	if err != nil {
		return err
	}
	runCtx, cancel := context.WithCancel(context.WithoutCancel(ctx))
	done := make(chan error, 1)
	go func() { done <- a.Run(runCtx) }()
	select {
	case <-a.Ready():
	case err := <-done:
		cancel()
		return fmt.Errorf("starting the agent: %w", err)
	}
	e.users, e.agentReg = users, reg
	e.stopAgent = func() error {
		cancel()
		err := <-done
		if errors.Is(err, context.Canceled) {
			return nil
		}
		return err
	}
	return nil
}

func publishStarter(ctx context.Context, ms *maps.Store) error {
	doc, _, err := maps.Import(starter.YAML(), maps.CompileOptions{})
	if err != nil {
		return fmt.Errorf("importing the starter maps: %w", err)
	}
	v, err := ms.CreateDraft(ctx, doc, "bench", "starter map set")
	if err != nil {
		return err
	}
	_, err = ms.Publish(ctx, v.Number, "bench", "starter map set")
	return err
}

// counts are the agent's decisions so far by direction and outcome.
type counts map[logs.Direction]map[logs.Outcome]int

func (c counts) terminal(d logs.Direction) int {
	m := c[d]
	return m[logs.OutcomeSent] + m[logs.OutcomeSkipped] + m[logs.OutcomeDeadLettered]
}

// decisions reads fhirsync_decisions_total from the running agent's
// registry, adding the decisions of the agents before it.
func (e *env) decisions() (counts, error) {
	mfs, err := e.agentReg.Gather()
	if err != nil {
		return nil, err
	}
	out := counts{}
	for dir, m := range e.prior {
		out[dir] = map[logs.Outcome]int{}
		for oc, n := range m {
			out[dir][oc] = n
		}
	}
	for _, mf := range mfs {
		if mf.GetName() != "fhirsync_decisions_total" {
			continue
		}
		for _, m := range mf.GetMetric() {
			dir, oc := logs.Direction(label(m, "direction")), logs.Outcome(label(m, "outcome"))
			if out[dir] == nil {
				out[dir] = map[logs.Outcome]int{}
			}
			out[dir][oc] += int(m.GetCounter().GetValue())
		}
	}
	return out, nil
}

// groupCommits reads fhirsync_group_commit_decisions from the running
// agent's registry: how many transactions of the sync log committed and
// the decisions they held.
func (e *env) groupCommits() (n uint64, decisions float64, err error) {
	mfs, err := e.agentReg.Gather()
	if err != nil {
		return 0, 0, err
	}
	for _, mf := range mfs {
		if mf.GetName() != "fhirsync_group_commit_decisions" {
			continue
		}
		for _, m := range mf.GetMetric() {
			n += m.GetHistogram().GetSampleCount()
			decisions += m.GetHistogram().GetSampleSum()
		}
	}
	return n, decisions, nil
}

func label(m *dto.Metric, name string) string {
	for _, l := range m.GetLabel() {
		if l.GetName() == name {
			return l.GetValue()
		}
	}
	return ""
}

// waitTerminal waits until dir has at least want more terminal decisions
// than base and returns when the last one was seen. It gives up when no
// decision at all is made for cfg.StallTimeout.
func (e *env) waitTerminal(ctx context.Context, base counts, dir logs.Direction, want int) (counts, time.Time, error) {
	last, lastN := time.Now(), -1
	for {
		c, err := e.decisions()
		if err != nil {
			return nil, time.Time{}, err
		}
		n := c.terminal(dir) - base.terminal(dir)
		if n >= want {
			return c, time.Now(), nil
		}
		if n != lastN {
			last, lastN = time.Now(), n
		} else if time.Since(last) > e.cfg.StallTimeout {
			return c, time.Time{}, fmt.Errorf("%s: %d of %d records reached a terminal decision; none for %s", dir, n, want, e.cfg.StallTimeout)
		}
		select {
		case <-ctx.Done():
			return nil, time.Time{}, ctx.Err()
		case <-time.After(20 * time.Millisecond):
		}
	}
}

// waitIdle waits until both queues are empty (echoes and retries
// settled) and returns when they were. It gives up when the number of
// waiting messages has not fallen for cfg.StallTimeout.
func (e *env) waitIdle(ctx context.Context) (time.Time, error) {
	best, since := int64(-1), time.Now()
	quiet := 0
	for {
		var waiting int64
		for _, q := range []*embedded.Queue{e.fhirQ, e.crmQ} {
			d, err := q.Depth(ctx)
			if err != nil {
				return time.Time{}, err
			}
			waiting += d.Active + d.Scheduled
		}
		switch {
		case waiting == 0:
			if quiet++; quiet >= 3 {
				return time.Now(), nil
			}
		case best < 0 || waiting < best:
			best, since, quiet = waiting, time.Now(), 0
		case time.Since(since) > e.cfg.StallTimeout:
			return time.Time{}, fmt.Errorf("%d messages still queued; none settled for %s", waiting, e.cfg.StallTimeout)
		default:
			quiet = 0
		}
		select {
		case <-ctx.Done():
			return time.Time{}, ctx.Err()
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// sendNotices enqueues FHIR event notices in batches, as an Event Grid
// subscription routed to Service Bus would deliver them.
func (e *env) sendNotices(ctx context.Context, ns []queues.Notice) error {
	const batch = 500
	for i := 0; i < len(ns); i += batch {
		msgs := make([]queues.Message, 0, batch)
		for _, n := range ns[i:min(i+batch, len(ns))] {
			m, err := n.Message()
			if err != nil {
				return err
			}
			msgs = append(msgs, m)
		}
		if err := e.fhirQ.Send(ctx, msgs...); err != nil {
			return fmt.Errorf("sending notices: %w", err)
		}
	}
	return nil
}

// targetWrites records when the agent's writes reached each sandbox: the
// moment a target answered a successful write, keyed by the FHIR id the
// write was for. It keeps marks only from reset to take: only the latency
// runs read them, and marking decodes every Bundle the FHIR server is
// posted and its answer, CPU the sandbox process would otherwise spend in
// the throughput runs too.
type targetWrites struct {
	on   atomic.Bool
	mu   sync.Mutex
	fhir map[string]time.Time // Patient id → agent's PUT answered
	crm  map[string]time.Time // FHIR id → agent's contact upsert answered
}

func newTargetWrites() *targetWrites {
	return &targetWrites{fhir: map[string]time.Time{}, crm: map[string]time.Time{}}
}

// reset forgets the marks so far and keeps marks from now on.
func (w *targetWrites) reset() {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.fhir, w.crm = map[string]time.Time{}, map[string]time.Time{}
	w.on.Store(true)
}

// snapshot copies the marks so far.
func (w *targetWrites) snapshot() (fhirSide, crmSide map[string]time.Time) {
	w.mu.Lock()
	defer w.mu.Unlock()
	return stdmaps.Clone(w.fhir), stdmaps.Clone(w.crm)
}

// take returns the marks since reset and stops keeping marks.
func (w *targetWrites) take() (fhirSide, crmSide map[string]time.Time) {
	w.on.Store(false)
	return w.snapshot()
}

func (w *targetWrites) mark(fhirSide bool, id string, t time.Time) {
	w.mu.Lock()
	defer w.mu.Unlock()
	m := w.crm
	if fhirSide {
		m = w.fhir
	}
	if _, seen := m[id]; !seen {
		m[id] = t
	}
}

type statusWriter struct {
	http.ResponseWriter
	status int
}

func (s *statusWriter) WriteHeader(code int) {
	if s.status == 0 {
		s.status = code
	}
	s.ResponseWriter.WriteHeader(code)
}

func (s *statusWriter) Write(b []byte) (int, error) {
	if s.status == 0 {
		s.status = http.StatusOK
	}
	return s.ResponseWriter.Write(b)
}

// fhirHandler notes the agent's successful Patient updates: PUT
// /Patient/{id}, alone or as an entry of a batch or transaction Bundle
// posted to the base (only the agent updates Patients while marks are
// kept).
func (w *targetWrites) fhirHandler(h http.Handler) http.Handler {
	return http.HandlerFunc(func(rw http.ResponseWriter, r *http.Request) {
		if !w.on.Load() {
			h.ServeHTTP(rw, r)
			return
		}
		if r.Method == http.MethodPost && (r.URL.Path == "/" || r.URL.Path == "") {
			w.serveBundle(h, rw, r)
			return
		}
		id, ok := strings.CutPrefix(r.URL.Path, "/Patient/")
		if r.Method != http.MethodPut || !ok || strings.Contains(id, "/") {
			h.ServeHTTP(rw, r)
			return
		}
		w.serveAndMark(h, rw, r, true, id)
	})
}

// bundle is the part of a batch or transaction Bundle and of its answer
// the marks need.
type bundle struct {
	Entry []struct {
		Request struct {
			Method string `json:"method"`
			URL    string `json:"url"`
		} `json:"request"`
		Response struct {
			Status string `json:"status"`
		} `json:"response"`
	} `json:"entry"`
}

// serveBundle serves a Bundle post and marks each PUT Patient/{id} entry
// its answer says succeeded (entries answer in the order they were sent).
func (w *targetWrites) serveBundle(h http.Handler, rw http.ResponseWriter, r *http.Request) {
	body, err := io.ReadAll(r.Body)
	if err != nil {
		http.Error(rw, err.Error(), http.StatusBadRequest)
		return
	}
	r.Body = io.NopCloser(bytes.NewReader(body))
	var req bundle
	var ids []string // "" where the entry is not a Patient update
	if json.Unmarshal(body, &req) == nil {
		for _, en := range req.Entry {
			id, ok := strings.CutPrefix(en.Request.URL, "Patient/")
			if en.Request.Method != http.MethodPut || !ok || strings.ContainsAny(id, "/?") {
				id = ""
			}
			ids = append(ids, id)
		}
	}
	if !slices.ContainsFunc(ids, func(s string) bool { return s != "" }) {
		h.ServeHTTP(rw, r)
		return
	}
	rec := &recordingWriter{ResponseWriter: rw}
	h.ServeHTTP(rec, r)
	var resp bundle
	if rec.status >= 300 || json.Unmarshal(rec.body.Bytes(), &resp) != nil || len(resp.Entry) != len(ids) {
		return
	}
	now := time.Now()
	for i, en := range resp.Entry {
		if ids[i] != "" && strings.HasPrefix(en.Response.Status, "2") {
			w.mark(true, ids[i], now)
		}
	}
}

// recordingWriter passes an answer through and keeps a copy of it.
type recordingWriter struct {
	http.ResponseWriter
	status int
	body   bytes.Buffer
}

func (r *recordingWriter) WriteHeader(code int) {
	if r.status == 0 {
		r.status = code
	}
	r.ResponseWriter.WriteHeader(code)
}

func (r *recordingWriter) Write(b []byte) (int, error) {
	if r.status == 0 {
		r.status = http.StatusOK
	}
	r.body.Write(b)
	return r.ResponseWriter.Write(b)
}

// crmWrite notes the agent's contact writes as the sandbox CRM commits
// them, by the FHIR id the contact carries, whatever request made them (a
// request on its own, a $batch, a bulk message).
func (w *targetWrites) crmWrite(cw crmserver.Write) {
	if !w.on.Load() {
		return
	}
	if cw.Entity == "task" && cw.Message == "Create" && isAgentUser(cw.InitiatingUserID) {
		// A signal's task (signals.go), by its source's key.
		if k, ok := cw.Attributes["fhirsync_signalsource"].(string); ok && k != "" {
			w.mark(false, taskMark(k), time.Now())
		}
		return
	}
	if cw.Entity != "contact" || cw.Message == "Delete" || !isAgentUser(cw.InitiatingUserID) {
		return
	}
	if id, ok := cw.Attributes["msemr_azurefhirid"].(string); ok && id != "" {
		w.mark(false, id, time.Now())
	}
}

// serveAndMark serves r and marks id on the FHIR or the CRM side if the
// answer was a success.
func (w *targetWrites) serveAndMark(h http.Handler, rw http.ResponseWriter, r *http.Request, fhirSide bool, id string) {
	sw := &statusWriter{ResponseWriter: rw}
	h.ServeHTTP(sw, r)
	if sw.status >= 200 && sw.status < 300 {
		w.mark(fhirSide, id, time.Now())
	}
}

// discardLogger is the default process logger: the bench prints a table.
func discardLogger() *slog.Logger { return slog.New(slog.DiscardHandler) }

// bypassEndpointSteps has c's writes bypass the steps of the sandbox CRM's
// service endpoint, as crm.bypass_own_steps does in serve.
func bypassEndpointSteps(ctx context.Context, c *crm.Client) error {
	eps, err := c.ServiceEndpoints(ctx)
	if err != nil {
		return err
	}
	for _, ep := range eps {
		if ep.Contract != crm.ContractQueue {
			continue
		}
		steps, err := c.EndpointSteps(ctx, ep.ID)
		if err != nil {
			return err
		}
		return c.BypassSteps(ctx, steps, 0, nil)
	}
	return errors.New("agentbench: the sandbox CRM has no Service Bus endpoint to bypass")
}
