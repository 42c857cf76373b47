package agentbench

import (
	"context"
	crand "crypto/rand"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	stdmaps "maps"
	"net/http"
	"strings"
	"sync"
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
)

// Sandbox CRM identities: the agent's application user and a person
// editing contacts.
const (
	agentToken = "bench-agent"
	agentUser  = "00000000-0000-0000-0000-0000000be7c1"
	humanToken = "bench-coordinator"
	humanUser  = "00000000-0000-0000-0000-0000000be7c2"
)

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
	stop  func() error
}

// start assembles and starts the agent the way `fhirsync serve` does, with
// the sandboxes served over loopback HTTP.
func start(ctx context.Context, cfg Config) (*env, error) {
	var rid [4]byte
	_, _ = crand.Read(rid[:])
	e := &env{cfg: cfg, db: cfg.DB, runID: "bench-" + hex.EncodeToString(rid[:]), reg: prometheus.NewRegistry()}
	var closers []func()
	fail := func(err error) (*env, error) {
		for i := len(closers) - 1; i >= 0; i-- {
			closers[i]()
		}
		return nil, err
	}
	var err error
	// Queue names are unique per run so a reused database cannot feed
	// this run messages from an earlier one.
	qopts := embedded.Options{MaxDeliveryCount: 50}
	if e.fhirQ, err = embedded.New(e.db, e.runID+"-fhir-changes", qopts); err != nil {
		return fail(err)
	}
	if e.crmQ, err = embedded.New(e.db, e.runID+"-crm-changes", qopts); err != nil {
		return fail(err)
	}
	if len(cfg.SandboxCommand) > 0 {
		e.sb, err = startRemote(ctx, cfg.SandboxCommand, cfg.TempDir, e.crmQ)
	} else {
		e.sb, err = startLocal(cfg.TempDir, e.runID, e.crmQ)
	}
	if err != nil {
		return fail(err)
	}
	closers = append(closers, func() { _ = e.sb.close() })
	agentFHIR, err := fhir.New(fhir.Config{BaseURL: e.sb.fhirURL()})
	if err != nil {
		return fail(err)
	}
	if e.fhir, err = fhir.New(fhir.Config{BaseURL: e.sb.fhirURL()}); err != nil {
		return fail(err)
	}
	agentCRM, err := crm.New(crm.Config{URL: e.sb.crmURL(), Auth: crm.AuthBearer, Token: agentToken})
	if err != nil {
		return fail(err)
	}
	if e.crm, err = crm.New(crm.Config{URL: e.sb.crmURL(), Auth: crm.AuthBearer, Token: humanToken}); err != nil {
		return fail(err)
	}
	var secret [24]byte
	_, _ = crand.Read(secret[:])
	ls, err := logs.New(e.db, logs.Config{KeySecret: base64.StdEncoding.EncodeToString(secret[:]), Logger: cfg.Logger}, e.reg)
	if err != nil {
		return fail(err)
	}
	ms, err := maps.New(e.db, maps.Options{Logger: cfg.Logger})
	if err != nil {
		return fail(err)
	}
	if err := publishStarter(ctx, ms); err != nil {
		return fail(err)
	}
	baseKey := secret[:]
	if cfg.BaseStateOff {
		baseKey = nil
	}
	a, err := agent.New(agent.Config{Workers: cfg.Workers, CRMUserID: agentUser, LockRenewEvery: 20 * time.Second, DepthEvery: time.Second,
		BaseKey: baseKey},
		agent.Deps{DB: e.db, Maps: ms, FHIR: agentFHIR, CRM: agentCRM, Logs: ls, FHIRChanges: e.fhirQ, CRMChanges: e.crmQ,
			Registry: e.reg, Logger: cfg.Logger})
	if err != nil {
		return fail(err)
	}
	runCtx, cancel := context.WithCancel(context.WithoutCancel(ctx))
	done := make(chan error, 1)
	go func() { done <- a.Run(runCtx) }()
	select {
	case <-a.Ready():
	case err := <-done:
		cancel()
		return fail(fmt.Errorf("starting the agent: %w", err))
	}
	e.stop = func() error {
		cancel()
		err := <-done
		// The sandboxes first: the CRM posts what is pending to crm-changes.
		for i := len(closers) - 1; i >= 0; i-- {
			closers[i]()
		}
		_ = e.fhirQ.Close(context.Background())
		_ = e.crmQ.Close(context.Background())
		if errors.Is(err, context.Canceled) {
			return nil
		}
		return err
	}
	return e, nil
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

// decisions reads fhirsync_decisions_total from the registry.
func (e *env) decisions() (counts, error) {
	mfs, err := e.reg.Gather()
	if err != nil {
		return nil, err
	}
	out := counts{}
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
// write was for.
type targetWrites struct {
	mu   sync.Mutex
	fhir map[string]time.Time // Patient id → agent's PUT answered
	crm  map[string]time.Time // FHIR id → agent's contact upsert answered
}

func newTargetWrites() *targetWrites {
	return &targetWrites{fhir: map[string]time.Time{}, crm: map[string]time.Time{}}
}

func (w *targetWrites) reset() {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.fhir, w.crm = map[string]time.Time{}, map[string]time.Time{}
}

// snapshot copies the marks so far.
func (w *targetWrites) snapshot() (fhirSide, crmSide map[string]time.Time) {
	w.mu.Lock()
	defer w.mu.Unlock()
	return stdmaps.Clone(w.fhir), stdmaps.Clone(w.crm)
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

// fhirHandler notes the agent's successful Patient updates (PUT
// /Patient/{id}: only the agent updates in these runs).
func (w *targetWrites) fhirHandler(h http.Handler) http.Handler {
	return http.HandlerFunc(func(rw http.ResponseWriter, r *http.Request) {
		id, ok := strings.CutPrefix(r.URL.Path, "/Patient/")
		if r.Method != http.MethodPut || !ok || strings.Contains(id, "/") {
			h.ServeHTTP(rw, r)
			return
		}
		w.serveAndMark(h, rw, r, true, id)
	})
}

// crmHandler notes the agent's successful contact creates, addressed by
// the FHIR id alternate key.
func (w *targetWrites) crmHandler(h http.Handler) http.Handler {
	const key = "contacts(msemr_azurefhirid='"
	return http.HandlerFunc(func(rw http.ResponseWriter, r *http.Request) {
		_, rest, ok := strings.Cut(r.URL.Path, key)
		id, _, closed := strings.Cut(rest, "'")
		if r.Method != http.MethodPatch || !ok || !closed || r.Header.Get("Authorization") != "Bearer "+agentToken {
			h.ServeHTTP(rw, r)
			return
		}
		w.serveAndMark(h, rw, r, false, id)
	})
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
