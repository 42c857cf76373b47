package agentbench

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math"
	"slices"
	"sync"
	"time"

	"gorm.io/gorm"

	"github.com/fhirsync/fhirsync/agent/crm"
	"github.com/fhirsync/fhirsync/agent/fhir"
	"github.com/fhirsync/fhirsync/logs"
	"github.com/fhirsync/fhirsync/queues"
	"github.com/fhirsync/fhirsync/sandbox/crmserver"
	"github.com/fhirsync/fhirsync/sandbox/synth"
)

// Targets are the goals the results are compared with.
const (
	TargetRecordsPerSecond = 1000.0
	TargetP99              = time.Second
	TargetPeakRSSBytes     = 200 << 20
	TargetBudgetUsed       = 0.90
)

// Config sets the size of a run. Zero values take the defaults noted.
type Config struct {
	// DB is a migrated project database; the queues, decisions, links and
	// maps of the run live in it.
	DB *gorm.DB
	// TempDir holds the sandbox FHIR server's SQLite file; "" keeps it in
	// memory.
	TempDir string
	// Records is how many records each throughput run syncs (50,000).
	Records int
	// OfferedRate is the source writes per second of the latency runs
	// (200), kept up for Duration (15s) in each direction.
	OfferedRate float64
	Duration    time.Duration
	// Workers is the agent's workers per queue (the agent's default).
	Workers int
	// SandboxCommand, when set, runs the sandboxes in a process of their
	// own: the command (argv) is `fhirsync bench --serve-sandboxes`, which
	// calls ServeSandboxes. Empty serves them from this process.
	SandboxCommand []string
	// Limits are the CRM's service-protection limits for the throttled
	// run (600 requests per 10s window, 6 concurrent). Requests < 0 skips
	// the throttled run.
	Limits crmserver.Limits
	// LimitedWindows sizes the throttled run: enough records for this many
	// full windows of requests (3).
	LimitedWindows int
	// StallTimeout aborts a run when no decision is made for this long
	// (2m).
	StallTimeout time.Duration
	// BaseStateOff runs the agent without the base state of linked pairs,
	// for measuring what the base state costs; it is on otherwise, as in
	// production.
	BaseStateOff bool
	// Logger receives the agent's process logs (discarded by default);
	// Progress, when set, receives one line as each step starts.
	Logger   *slog.Logger
	Progress io.Writer
}

func (c Config) withDefaults() Config {
	if c.Records <= 0 {
		c.Records = 50000
	}
	if c.OfferedRate <= 0 {
		c.OfferedRate = 200
	}
	if c.Duration <= 0 {
		c.Duration = 15 * time.Second
	}
	if c.Limits.Requests == 0 && c.Limits.Window == 0 && c.Limits.Concurrent == 0 && c.Limits.ExecutionTime == 0 {
		c.Limits = crmserver.Limits{Requests: 600, Window: 10 * time.Second, Concurrent: 6}
	}
	if c.LimitedWindows <= 0 {
		c.LimitedWindows = 3
	}
	if c.StallTimeout <= 0 {
		c.StallTimeout = 2 * time.Minute
	}
	if c.Logger == nil {
		c.Logger = discardLogger()
	}
	return c
}

// Throughput is one direction's sustained rate.
type Throughput struct {
	Direction logs.Direction `json:"direction"`
	Records   int            `json:"records"`
	// Seconds runs from the first change notice (or CRM write) to the last
	// terminal decision.
	Seconds          float64 `json:"seconds"`
	RecordsPerSecond float64 `json:"records_per_second"`
	// Sent, Skipped and DeadLettered count the terminal decisions;
	// Retries the failed (will retry) ones on the way.
	Sent         int `json:"sent"`
	Skipped      int `json:"skipped"`
	DeadLettered int `json:"dead_lettered"`
	Retries      int `json:"retries"`
	// TargetRequests is the HTTP requests the agent's side of the target
	// received per record (CRM target only; 0 when not measured).
	TargetRequestsPerRecord float64 `json:"target_requests_per_record,omitempty"`
	// DrainSeconds is how long the queues took to empty after the last
	// decision counted (echoes of the agent's own writes still queued).
	DrainSeconds float64 `json:"drain_seconds"`
	// AgentCPUSeconds and SandboxCPUSeconds are the CPU time (user and
	// system) the bench's process (the agent and the bench's driver) and
	// the sandbox process used over the same interval, from the first
	// notice to the queues' being empty. With the sandboxes inline all of
	// it is AgentCPUSeconds.
	AgentCPUSeconds   float64 `json:"agent_cpu_seconds"`
	SandboxCPUSeconds float64 `json:"sandbox_cpu_seconds"`
	// StealPercent is the share of the machine's CPU time its host took
	// (steal, from /proc/stat) over the same interval; -1 where unknown.
	// On a shared virtual machine it explains runs far below the others.
	StealPercent float64 `json:"cpu_steal_percent"`

	end, idle time.Time
}

// Latency is source-write-to-target-write time at a fixed offered rate,
// from the start of the source write request to the target's answer to
// the agent's write.
type Latency struct {
	Direction   logs.Direction `json:"direction"`
	OfferedRate float64        `json:"offered_rate"`
	// Offered is how many source writes were made; Written how many
	// reached the target.
	Offered int     `json:"offered"`
	Written int     `json:"written"`
	P50     float64 `json:"p50_seconds"`
	P99     float64 `json:"p99_seconds"`
	Max     float64 `json:"max_seconds"`
}

// Limited is the throttled run: FHIR→CRM with the CRM's limits on.
type Limited struct {
	Requests      int     `json:"limit_requests"`
	WindowSeconds float64 `json:"limit_window_seconds"`
	Concurrent    int     `json:"limit_concurrent"`
	Records       int     `json:"records"`
	Seconds       float64 `json:"seconds"`
	// FullWindows is how many whole windows passed before the last
	// decision; Allowed the requests they allowed and Used the requests
	// the CRM admitted in them.
	FullWindows int     `json:"full_windows"`
	Allowed     int     `json:"allowed_requests"`
	Used        int64   `json:"used_requests"`
	BudgetUsed  float64 `json:"budget_used"`
	// Throttled is the 429 answers over the whole run.
	Throttled int64 `json:"throttled_answers"`
	Sent      int   `json:"sent"`
	// Lost is the records that did not end sent (dead-lettered or never
	// decided).
	Lost int `json:"lost"`
}

// Result is a whole run.
type Result struct {
	Started    time.Time    `json:"started"`
	Workers    int          `json:"workers"`
	Throughput []Throughput `json:"throughput"`
	Latency    []Latency    `json:"latency"`
	Limited    *Limited     `json:"limited,omitempty"`
	// PeakRSSBytes is this process's peak resident set: the agent, the
	// embedded queue and the bench's driver, and the sandboxes too when
	// they run inline (SandboxesInline).
	PeakRSSBytes    int64 `json:"peak_rss_bytes"`
	SandboxesInline bool  `json:"sandboxes_inline"`
	// SandboxPeakRSSBytes is the sandbox process's peak resident set when
	// the sandboxes run in a process of their own.
	SandboxPeakRSSBytes int64 `json:"sandbox_peak_rss_bytes,omitempty"`
	// BaseState is what the base state of linked pairs holds at the end
	// of the run; nil when it was off.
	BaseState *BaseState `json:"base_state,omitempty"`
}

// Run starts the agent between the two sandboxes and measures it.
func Run(ctx context.Context, cfg Config) (*Result, error) {
	cfg = cfg.withDefaults()
	if cfg.DB == nil {
		return nil, errors.New("agentbench: DB is required")
	}
	e, err := start(ctx, cfg)
	if err != nil {
		return nil, err
	}
	res := &Result{Started: time.Now().UTC(), Workers: cfg.Workers, SandboxesInline: len(cfg.SandboxCommand) == 0}
	err = e.measure(ctx, res)
	res.SandboxPeakRSSBytes = e.sb.peakRSS(context.WithoutCancel(ctx))
	if serr := e.stop(); err == nil && serr != nil {
		err = fmt.Errorf("stopping the agent: %w", serr)
	}
	res.PeakRSSBytes = peakRSS()
	if err != nil {
		return res, err
	}
	if !cfg.BaseStateOff {
		if res.BaseState, err = measureBaseState(context.WithoutCancel(ctx), cfg.DB); err != nil {
			return res, err
		}
	}
	return res, nil
}

func (e *env) progress(format string, args ...any) {
	if e.cfg.Progress != nil {
		fmt.Fprintf(e.cfg.Progress, format+"\n", args...)
	}
}

func (e *env) measure(ctx context.Context, res *Result) error {
	n := e.cfg.Records
	e.progress("seeding %d patients in the sandbox FHIR server", n)
	pats, err := e.seedPatients(ctx, "t", n)
	if err != nil {
		return err
	}
	e.progress("FHIR→CRM: %d event notices", n)
	cpu, err := e.cpuMark(ctx)
	if err != nil {
		return err
	}
	t1, err := e.fhirToCRM(ctx, pats)
	if err != nil {
		return err
	}
	if t1.idle, err = e.waitIdle(ctx); err != nil {
		return err
	}
	t1.DrainSeconds = t1.idle.Sub(t1.end).Seconds()
	if t1.AgentCPUSeconds, t1.SandboxCPUSeconds, t1.StealPercent, err = cpu(); err != nil {
		return err
	}
	res.Throughput = append(res.Throughput, t1)

	contacts, err := e.contacts(ctx)
	if err != nil {
		return err
	}
	e.progress("CRM→FHIR: %d contact updates", len(contacts))
	if cpu, err = e.cpuMark(ctx); err != nil {
		return err
	}
	t2, err := e.crmToFHIR(ctx, contacts)
	if err != nil {
		return err
	}
	if t2.idle, err = e.waitIdle(ctx); err != nil {
		return err
	}
	t2.DrainSeconds = t2.idle.Sub(t2.end).Seconds()
	if t2.AgentCPUSeconds, t2.SandboxCPUSeconds, t2.StealPercent, err = cpu(); err != nil {
		return err
	}
	res.Throughput = append(res.Throughput, t2)

	e.progress("latency FHIR→CRM at %.0f records/s for %s", e.cfg.OfferedRate, e.cfg.Duration)
	l1, err := e.latencyFHIRToCRM(ctx)
	if err != nil {
		return err
	}
	res.Latency = append(res.Latency, l1)
	if _, err := e.waitIdle(ctx); err != nil {
		return err
	}
	e.progress("latency CRM→FHIR at %.0f records/s for %s", e.cfg.OfferedRate, e.cfg.Duration)
	l2, err := e.latencyCRMToFHIR(ctx, contacts)
	if err != nil {
		return err
	}
	res.Latency = append(res.Latency, l2)
	if _, err := e.waitIdle(ctx); err != nil {
		return err
	}

	if e.cfg.Limits.Requests >= 0 {
		perRecord := t1.TargetRequestsPerRecord
		if perRecord <= 0 {
			perRecord = 1
		}
		m := int(math.Ceil(float64(e.cfg.LimitedWindows*e.cfg.Limits.Requests) / perRecord))
		e.progress("FHIR→CRM with CRM limits (%d requests per %s, %d concurrent): %d records", e.cfg.Limits.Requests,
			e.cfg.Limits.Window, e.cfg.Limits.Concurrent, m)
		lim, err := e.limited(ctx, m)
		if err != nil {
			return err
		}
		res.Limited = lim
	}
	return nil
}

// cpuMark notes both processes' CPU time and the machine's; the returned
// function gives what each process used since and the share the host
// stole (-1 when unknown).
func (e *env) cpuMark(ctx context.Context) (func() (agent, sandboxes, steal float64, err error), error) {
	a0 := cpuSeconds()
	st0, tot0, ok0 := machineCPU()
	s0, err := e.sb.cpuSeconds(ctx)
	if err != nil {
		return nil, err
	}
	return func() (float64, float64, float64, error) {
		s1, err := e.sb.cpuSeconds(ctx)
		steal := -1.0
		if st1, tot1, ok1 := machineCPU(); ok0 && ok1 && tot1 > tot0 {
			steal = 100 * float64(st1-st0) / float64(tot1-tot0)
		}
		return cpuSeconds() - a0, s1 - s0, steal, err
	}, nil
}

// patient is a seeded FHIR record.
type patient struct {
	id, version string
	written     time.Time
}

// seedPatients writes n Patients (without references to other records)
// with transaction bundles of 500.
func (e *env) seedPatients(ctx context.Context, tag string, n int) ([]patient, error) {
	g := synth.New(11)
	out := make([]patient, 0, n)
	const batch = 500
	for i := 0; i < n; i += batch {
		var entries []any
		for j := i; j < min(i+batch, n); j++ {
			p := g.Patient(j)
			id := fmt.Sprintf("%s-%s-%06d", e.runID, tag, j)
			p["id"] = id
			delete(p, "generalPractitioner")
			delete(p, "managingOrganization")
			delete(p, "meta")
			entries = append(entries, map[string]any{"resource": p, "request": map[string]any{"method": "PUT", "url": "Patient/" + id}})
		}
		page, err := e.fhir.Transaction(ctx, fhir.Resource{"resourceType": "Bundle", "type": "transaction", "entry": entries})
		if err != nil {
			return nil, fmt.Errorf("seeding patients: %w", err)
		}
		for _, en := range page.Entries {
			_, id, v := en.Ref()
			out = append(out, patient{id: id, version: v, written: en.LastModified})
		}
	}
	if len(out) != n {
		return nil, fmt.Errorf("seeding patients: the server answered %d entries for %d", len(out), n)
	}
	return out, nil
}

func notice(p patient) queues.Notice {
	return queues.Notice{V: queues.NoticeVersion, Side: queues.SideFHIR, Type: "Patient", ID: p.id, Version: p.version,
		Event: queues.EventCreated, Origin: "ahds-event", ChangedAt: p.written}
}

func throughput(dir logs.Direction, records int, base, end counts, from, to time.Time) Throughput {
	d := func(o logs.Outcome) int { return end[dir][o] - base[dir][o] }
	secs := to.Sub(from).Seconds()
	return Throughput{Direction: dir, Records: records, Seconds: secs, RecordsPerSecond: float64(records) / secs, end: to,
		Sent: d(logs.OutcomeSent), Skipped: d(logs.OutcomeSkipped), DeadLettered: d(logs.OutcomeDeadLettered), Retries: d(logs.OutcomeFailed)}
}

// fhirToCRM sends one event notice per seeded patient and waits for every
// one to be decided.
func (e *env) fhirToCRM(ctx context.Context, pats []patient) (Throughput, error) {
	ns := make([]queues.Notice, len(pats))
	for i, p := range pats {
		ns[i] = notice(p)
	}
	base, err := e.decisions()
	if err != nil {
		return Throughput{}, err
	}
	st0, err := e.sb.crmStats(ctx)
	if err != nil {
		return Throughput{}, err
	}
	from := time.Now()
	if err := e.sendNotices(ctx, ns); err != nil {
		return Throughput{}, err
	}
	end, to, err := e.waitTerminal(ctx, base, logs.FHIRToCRM, len(pats))
	if err != nil {
		return Throughput{}, err
	}
	t := throughput(logs.FHIRToCRM, len(pats), base, end, from, to)
	st, err := e.sb.crmStats(ctx)
	if err != nil {
		return Throughput{}, err
	}
	t.TargetRequestsPerRecord = float64(st.Requests-st0.Requests) / float64(len(pats))
	return t, nil
}

// contact is a CRM contact paired with a Patient.
type contact struct{ id, fhirID string }

func (e *env) contacts(ctx context.Context) ([]contact, error) {
	var out []contact
	err := e.crm.RetrieveMultiple(ctx, "contacts", crm.Query{Select: []string{"contactid", "msemr_azurefhirid"}}, func(r crm.Record) error {
		if f := r.String("msemr_azurefhirid"); f != "" {
			out = append(out, contact{id: r.String("contactid"), fhirID: f})
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("listing contacts: %w", err)
	}
	slices.SortFunc(out, func(a, b contact) int {
		if a.fhirID < b.fhirID {
			return -1
		}
		return 1
	})
	return out, nil
}

// crmToFHIR has the coordinator update every contact's email (through
// $batch, as a bulk edit would) and waits for every change to be decided.
func (e *env) crmToFHIR(ctx context.Context, cs []contact) (Throughput, error) {
	base, err := e.decisions()
	if err != nil {
		return Throughput{}, err
	}
	from := time.Now()
	errc := make(chan error, 1)
	go func() {
		const batch = 1000
		for i := 0; i < len(cs); i += batch {
			items := make([]crm.UpsertItem, 0, batch)
			for j := i; j < min(i+batch, len(cs)); j++ {
				items = append(items, crm.UpsertItem{Target: crm.ByID("contacts", cs[j].id),
					Record: crm.Record{"emailaddress1": fmt.Sprintf("bulk.%d@example.org", j)}, Options: crm.UpsertOptions{Mode: crm.UpdateOnly}})
			}
			outs, err := e.crm.UpsertMany(ctx, items)
			if err == nil {
				for _, o := range outs {
					if o.Err != nil {
						err = o.Err
						break
					}
				}
			}
			if err != nil {
				errc <- fmt.Errorf("updating contacts: %w", err)
				return
			}
		}
		errc <- nil
	}()
	end, to, err := e.waitTerminal(ctx, base, logs.CRMToFHIR, len(cs))
	if werr := <-errc; werr != nil {
		return Throughput{}, werr
	}
	if err != nil {
		return Throughput{}, err
	}
	return throughput(logs.CRMToFHIR, len(cs), base, end, from, to), nil
}

// paced calls write(i) for i in [0, n) at rate per second, each in its own
// goroutine (an open loop: a slow write does not slow the offered rate).
func paced(ctx context.Context, n int, rate float64, write func(i int)) {
	var wg sync.WaitGroup
	start := time.Now()
	for i := range n {
		at := start.Add(time.Duration(float64(i) / rate * float64(time.Second)))
		if d := time.Until(at); d > 0 {
			select {
			case <-ctx.Done():
				wg.Wait()
				return
			case <-time.After(d):
			}
		}
		wg.Go(func() { write(i) })
	}
	wg.Wait()
}

func quantiles(dir logs.Direction, rate float64, offered int, lat []time.Duration) Latency {
	l := Latency{Direction: dir, OfferedRate: rate, Offered: offered, Written: len(lat)}
	if len(lat) == 0 {
		return l
	}
	slices.Sort(lat)
	q := func(p float64) float64 {
		i := int(math.Ceil(p*float64(len(lat)))) - 1
		return lat[max(i, 0)].Seconds()
	}
	l.P50, l.P99, l.Max = q(0.50), q(0.99), lat[len(lat)-1].Seconds()
	return l
}

// latencyFHIRToCRM creates Patients at the offered rate, each followed by
// its event notice, and times each from the start of its create to the
// CRM's answer to the agent's contact upsert.
func (e *env) latencyFHIRToCRM(ctx context.Context) (Latency, error) {
	n := int(e.cfg.OfferedRate * e.cfg.Duration.Seconds())
	if err := e.sb.resetWrites(ctx); err != nil {
		return Latency{}, err
	}
	base, err := e.decisions()
	if err != nil {
		return Latency{}, err
	}
	g := synth.New(12)
	starts := make([]time.Time, n)
	ids := make([]string, n)
	var mu sync.Mutex
	var firstErr error
	paced(ctx, n, e.cfg.OfferedRate, func(i int) {
		p := g.Patient(i)
		delete(p, "id")
		delete(p, "meta")
		delete(p, "generalPractitioner")
		delete(p, "managingOrganization")
		t0 := time.Now()
		got, err := e.fhir.Create(ctx, fhir.Resource(p))
		if err == nil {
			err = e.sendNotices(ctx, []queues.Notice{notice(patient{id: got.ID(), version: got.VersionID(), written: got.LastUpdated()})})
		}
		mu.Lock()
		defer mu.Unlock()
		if err != nil {
			firstErr = cmpErr(firstErr, fmt.Errorf("writing patient %d: %w", i, err))
			return
		}
		starts[i], ids[i] = t0, got.ID()
	})
	if firstErr != nil {
		return Latency{}, firstErr
	}
	if _, _, err := e.waitTerminal(ctx, base, logs.FHIRToCRM, n); err != nil {
		return Latency{}, err
	}
	_, crmWrites, err := e.sb.writes(ctx)
	if err != nil {
		return Latency{}, err
	}
	var lat []time.Duration
	for i, id := range ids {
		if t, ok := crmWrites[id]; ok {
			lat = append(lat, t.Sub(starts[i]))
		}
	}
	return quantiles(logs.FHIRToCRM, e.cfg.OfferedRate, n, lat), nil
}

// latencyCRMToFHIR updates contacts at the offered rate and times each
// from the start of its update to the FHIR server's answer to the agent's
// Patient update.
func (e *env) latencyCRMToFHIR(ctx context.Context, cs []contact) (Latency, error) {
	n := min(int(e.cfg.OfferedRate*e.cfg.Duration.Seconds()), len(cs))
	if err := e.sb.resetWrites(ctx); err != nil {
		return Latency{}, err
	}
	base, err := e.decisions()
	if err != nil {
		return Latency{}, err
	}
	starts := make([]time.Time, n)
	var mu sync.Mutex
	var firstErr error
	paced(ctx, n, e.cfg.OfferedRate, func(i int) {
		t0 := time.Now()
		_, err := e.crm.Upsert(ctx, crm.ByID("contacts", cs[i].id), crm.Record{"emailaddress1": fmt.Sprintf("paced.%d@example.org", i)},
			crm.UpsertOptions{Mode: crm.UpdateOnly})
		mu.Lock()
		defer mu.Unlock()
		if err != nil {
			firstErr = cmpErr(firstErr, fmt.Errorf("updating contact %s: %w", cs[i].id, err))
			return
		}
		starts[i] = t0
	})
	if firstErr != nil {
		return Latency{}, firstErr
	}
	if _, _, err := e.waitTerminal(ctx, base, logs.CRMToFHIR, n); err != nil {
		return Latency{}, err
	}
	fhirWrites, _, err := e.sb.writes(ctx)
	if err != nil {
		return Latency{}, err
	}
	var lat []time.Duration
	for i := range n {
		if t, ok := fhirWrites[cs[i].fhirID]; ok {
			lat = append(lat, t.Sub(starts[i]))
		}
	}
	return quantiles(logs.CRMToFHIR, e.cfg.OfferedRate, n, lat), nil
}

func cmpErr(first, err error) error {
	if first != nil {
		return first
	}
	return err
}

// limited runs FHIR→CRM for m records with the CRM's limits on and
// samples how many requests the CRM admitted in each whole window.
func (e *env) limited(ctx context.Context, m int) (*Limited, error) {
	pats, err := e.seedPatients(ctx, "l", m)
	if err != nil {
		return nil, err
	}
	ns := make([]queues.Notice, len(pats))
	for i, p := range pats {
		ns[i] = notice(p)
	}
	lim := e.cfg.Limits
	contactsBefore, err := e.sb.count(ctx, "contact")
	if err != nil {
		return nil, err
	}
	base, err := e.decisions()
	if err != nil {
		return nil, err
	}
	if err := e.sb.setLimits(ctx, lim); err != nil {
		return nil, err
	}
	defer e.sb.setLimits(context.WithoutCancel(ctx), crmserver.Limits{}) //nolint:errcheck
	st0, err := e.sb.crmStats(ctx)
	if err != nil {
		return nil, err
	}
	admitted := func(s crmserver.Stats) int64 {
		return (s.Requests - s.Throttled - s.Injected) - (st0.Requests - st0.Throttled - st0.Injected)
	}
	from := time.Now()
	// Sample admitted requests at each window boundary after the first
	// notice (the CRM starts the agent's first window at its first request).
	var samples []int64
	var samplingErr error
	stopSampling := make(chan struct{})
	sampled := make(chan struct{})
	go func() {
		defer close(sampled)
		for k := 1; ; k++ {
			select {
			case <-stopSampling:
				return
			case <-time.After(time.Until(from.Add(time.Duration(k) * lim.Window))):
				st, err := e.sb.crmStats(ctx)
				if err != nil {
					samplingErr = err
					return
				}
				samples = append(samples, admitted(st))
			}
		}
	}()
	if err := e.sendNotices(ctx, ns); err != nil {
		close(stopSampling)
		<-sampled
		return nil, err
	}
	end, to, err := e.waitTerminal(ctx, base, logs.FHIRToCRM, m)
	close(stopSampling)
	<-sampled
	if err == nil {
		err = samplingErr
	}
	if err != nil {
		return nil, err
	}
	st, err := e.sb.crmStats(ctx)
	if err != nil {
		return nil, err
	}
	out := &Limited{Requests: lim.Requests, WindowSeconds: lim.Window.Seconds(), Concurrent: lim.Concurrent, Records: m,
		Seconds: to.Sub(from).Seconds(), Throttled: st.Throttled - st0.Throttled,
		Sent: end[logs.FHIRToCRM][logs.OutcomeSent] - base[logs.FHIRToCRM][logs.OutcomeSent]}
	// Whole windows only: the last, partial one runs out of work, not
	// budget.
	out.FullWindows = len(samples)
	if out.FullWindows > 0 {
		out.Allowed = out.FullWindows * lim.Requests
		out.Used = samples[len(samples)-1]
		out.BudgetUsed = float64(out.Used) / float64(out.Allowed)
	}
	contactsAfter, err := e.sb.count(ctx, "contact")
	if err != nil {
		return nil, err
	}
	created := contactsAfter - contactsBefore
	out.Lost = m - min(out.Sent, created)
	return out, nil
}
