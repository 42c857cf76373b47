package agentbench

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math"
	"slices"
	"strings"
	"sync"
	"time"

	"gorm.io/gorm"

	"github.com/fhirsync/fhirsync/agent"
	"github.com/fhirsync/fhirsync/agent/crm"
	"github.com/fhirsync/fhirsync/agent/fhir"
	"github.com/fhirsync/fhirsync/logs"
	"github.com/fhirsync/fhirsync/queues"
	"github.com/fhirsync/fhirsync/sandbox/crmserver"
	"github.com/fhirsync/fhirsync/sandbox/synth"
)

// Targets are the goals the results are compared with (issue 16: within
// Dataverse's real limits).
const (
	// TargetRecordsPerSecond is each direction's sustained rate without
	// limits.
	TargetRecordsPerSecond = 3000.0
	// TargetLimitedRecordsPerSecond is each direction's rate under the
	// documented limits with TargetLimitedUsers application users.
	TargetLimitedRecordsPerSecond = 1000.0
	TargetLimitedUsers            = 3
	// TargetAgentCPUPerRecord is the agent process's CPU time per record,
	// each direction.
	TargetAgentCPUPerRecord = 350 * time.Microsecond
	TargetP99               = time.Second
	TargetPeakRSSBytes      = 150 << 20
	// TargetBackfillRequestsPerRecord and TargetLiveRequestsPerRecord are
	// the CRM requests per record of a backfill and of the live stream at
	// the offered rate.
	TargetBackfillRequestsPerRecord = 0.02
	TargetLiveRequestsPerRecord     = 0.25
)

// Config sets the size of a run. Zero values take the defaults noted.
type Config struct {
	// DB is a migrated project database; the queues, decisions, links and
	// maps of the run live in it.
	DB *gorm.DB
	// TempDir holds the sandbox FHIR server's SQLite file; "" keeps it in
	// memory.
	TempDir string
	// Records is how many records each throughput run and the backfill
	// sync (50,000).
	Records int
	// Repeats is how many times the sustained runs (FHIR→CRM, then
	// CRM→FHIR, each of Records new records) are made one after another
	// (1): CPU time on a shared machine moves by tens of per cent from run
	// to run, and the rows then give the medians beside each run.
	Repeats int
	// OfferedRate is the source writes per second of the latency runs
	// (200), kept up for Duration (15s) in each direction.
	OfferedRate float64
	Duration    time.Duration
	// Workers is the agent's workers per queue (the agent's default).
	Workers int
	// CRMUsers is how many application users the agent signs in to the
	// CRM as in the runs without limits (1).
	CRMUsers int
	// CRMDOPHint is the x-ms-dop-hint the sandbox CRM answers with (0: its
	// default, crmserver.DataverseDOPHint).
	CRMDOPHint int
	// CRMBatchMax and CRMBatchWait are the agent's agent.Config
	// CRMBatchMax and CRMBatchWait (0: the agent's defaults).
	CRMBatchMax  int
	CRMBatchWait time.Duration
	// SandboxCommand, when set, runs the sandboxes in a process of their
	// own: the command (argv) is `fhirsync bench --serve-sandboxes`, which
	// calls ServeSandboxes. Empty serves them from this process.
	SandboxCommand []string
	// Limits are the CRM's service-protection limits of the throttled runs
	// (Dataverse's documented rates over a 10 s window:
	// crmserver.DataverseLimitsOver). Requests < 0 skips them.
	Limits crmserver.Limits
	// LimitedUsers are the numbers of application users of the throttled
	// runs (1 and 3), LimitedCosts the execution-cost multipliers (1 and
	// 2); each pair is a run in each direction.
	LimitedUsers []int
	LimitedCosts []float64
	// LimitedWindows sizes each throttled run: enough records for this many
	// windows of the users' budget after the first, as the run without
	// limits used it (2).
	LimitedWindows int
	// StallTimeout aborts a run when no decision is made for this long
	// (2m).
	StallTimeout time.Duration
	// BaseStateOff runs the agent without the base state of linked pairs,
	// for measuring what the base state costs; it is on otherwise, as in
	// production.
	BaseStateOff bool
	// BypassOwnSteps has the agent's CRM writes name the steps of the
	// sandbox CRM's service endpoint in BypassBusinessLogicExecutionStepIds
	// (crm.bypass_own_steps), so the CRM posts no echo of them.
	BypassOwnSteps bool
	// SQLiteSynchronous is the synchronous setting the caller opened the
	// database with (storage.SyncNormal or SyncFull; empty for PostgreSQL),
	// reported in the result.
	SQLiteSynchronous string
	// Logger receives the agent's process logs (discarded by default);
	// Progress, when set, receives one line as each step starts.
	Logger   *slog.Logger
	Progress io.Writer
	// Phase, when set, is called as each sustained run starts
	// ("fhir-to-crm", "crm-to-fhir"); the function it returns is called
	// when the run's queues are empty (for profiling one run).
	Phase func(name string) (end func())
}

func (c Config) withDefaults() Config {
	if c.Records <= 0 {
		c.Records = 50000
	}
	if c.Repeats <= 0 {
		c.Repeats = 1
	}
	if c.OfferedRate <= 0 {
		c.OfferedRate = 200
	}
	if c.Duration <= 0 {
		c.Duration = 15 * time.Second
	}
	if c.CRMUsers <= 0 {
		c.CRMUsers = 1
	}
	if c.Limits.Requests == 0 && c.Limits.ExecutionTime == 0 && c.Limits.Concurrent == 0 {
		c.Limits = crmserver.DataverseLimitsOver(10 * time.Second)
	}
	if len(c.LimitedUsers) == 0 {
		c.LimitedUsers = []int{1, TargetLimitedUsers}
	}
	if len(c.LimitedCosts) == 0 {
		c.LimitedCosts = []float64{1, 2}
	}
	if c.LimitedWindows <= 0 {
		c.LimitedWindows = 2
	}
	if c.StallTimeout <= 0 {
		c.StallTimeout = 2 * time.Minute
	}
	if c.Logger == nil {
		c.Logger = discardLogger()
	}
	return c
}

// CRMUse is what the agent's application users used of the sandbox CRM
// over a run, by the sandbox's accounting, per record.
type CRMUse struct {
	RequestsPerRecord float64 `json:"crm_requests_per_record"`
	// ExecutionMsPerRecord is the execution time charged, in milliseconds.
	ExecutionMsPerRecord float64 `json:"crm_execution_ms_per_record"`
	// OperationsPerRecord counts each request alone, each request inside
	// a $batch and each record of a bulk message.
	OperationsPerRecord float64 `json:"crm_operations_per_record"`
	// Throttled is the 429 answers the agent's users got.
	Throttled int64 `json:"crm_throttled"`
	// Kinds breaks RequestsPerRecord and OperationsPerRecord down by
	// what they did, as the agent sent them: "request: $batch", "request:
	// read by primary id" (a request of its own), "op: In query: child
	// rows" (an operation, alone or inside a $batch), and so on.
	Kinds map[string]float64 `json:"crm_kinds_per_record,omitempty"`
}

// account is what the agent's users used of the CRM so far: the
// sandbox's accounting and the agent's requests by kind.
type account struct {
	crmserver.Account
	kinds map[string]int64
}

// crmUseOf is crmUse with the requests and operations by kind.
func crmUseOf(before, after account, records int) CRMUse {
	u := crmUse(before.Account, after.Account, records)
	u.Kinds = kindsPerRecord(before.kinds, after.kinds, records)
	return u
}

func crmUse(before, after crmserver.Account, records int) CRMUse {
	n := float64(max(records, 1))
	return CRMUse{RequestsPerRecord: float64(after.Requests-before.Requests) / n,
		OperationsPerRecord:  float64(after.Operations-before.Operations) / n,
		ExecutionMsPerRecord: float64((after.ExecutionTime - before.ExecutionTime).Microseconds()) / 1000 / n,
		Throttled:            after.Throttled - before.Throttled}
}

// Throughput is one direction's sustained rate.
type Throughput struct {
	Direction logs.Direction `json:"direction"`
	// Run is which of Config.Repeats sustained runs this is, from 1; 0
	// when there was one.
	Run     int `json:"run,omitempty"`
	Records int `json:"records"`
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
	// CRM is what the agent used of the CRM, from the first notice to the
	// queues' being empty.
	CRM CRMUse `json:"crm"`
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
	// AgentIO is the bench's process's read and write calls per record
	// over the same interval; nil where /proc/self/io is not there.
	AgentIO *IOUse `json:"agent_io,omitempty"`
	// AgentHeap is what the bench's process allocated on Go's heap per
	// record over the same interval, and how often it collected.
	AgentHeap HeapUse `json:"agent_heap"`
	// DecisionsPerCommit is the mean number of decisions per transaction
	// of the sync log over the same interval
	// (fhirsync_group_commit_decisions); 0 when none committed.
	DecisionsPerCommit float64 `json:"decisions_per_commit"`

	end, idle time.Time
}

// IOUse is what /proc/self/io counts of a process's read and write calls,
// per record: files, pipes and sockets alike (rchar, wchar, syscr, syscw),
// whether or not the kernel had to reach the disk. With SQLite the
// agent's database is in the bench's process, so its WAL writes,
// checkpoints and page reads are counted here beside the HTTP traffic;
// unlike CPU time these counts hardly move from run to run, which makes
// them the measure of a change to the storage layout on a busy machine.
type IOUse struct {
	ReadKiBPerRecord    float64 `json:"read_kib_per_record"`
	ReadCallsPerRecord  float64 `json:"read_calls_per_record"`
	WriteKiBPerRecord   float64 `json:"write_kib_per_record"`
	WriteCallsPerRecord float64 `json:"write_calls_per_record"`
}

// HeapUse is what a process allocated on Go's heap per record
// (/gc/heap/allocs:bytes of runtime/metrics) and the collections it ran
// per thousand records (/gc/cycles/total:gc-cycles). Like the I/O counts
// these move little from run to run, where CPU time on a shared machine
// moves by tens of per cent, and the collector's work grows with what is
// allocated: they tell apart changes that allocate less. C memory (SQLite's
// caches) is not counted.
type HeapUse struct {
	AllocKiBPerRecord      float64 `json:"alloc_kib_per_record"`
	CollectionsPerThousand float64 `json:"collections_per_1000_records"`
}

// Latency is source-write-to-target-write time at a fixed offered rate,
// from the start of the source write request to the target's answer to
// the agent's write (the CRM's commit of it, for the CRM).
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
	// CRM is what the agent used of the CRM per offered record.
	CRM CRMUse `json:"crm"`
}

// Backfill is a backfill of Patients already in the FHIR server, walked
// through agent.Backfill as `fhirsync backfill` walks them, timed from the
// start of the walk to the last record's decision.
type Backfill struct {
	Records          int     `json:"records"`
	Notices          int     `json:"notices"`
	Seconds          float64 `json:"seconds"`
	RecordsPerSecond float64 `json:"records_per_second"`
	Sent             int     `json:"sent"`
	Skipped          int     `json:"skipped"`
	DeadLettered     int     `json:"dead_lettered"`
	CRM              CRMUse  `json:"crm"`
}

// Limited is one throttled run: one direction with the CRM's limits on,
// the agent signing in as Users application users, the execution cost of
// every operation multiplied by CostMultiplier.
type Limited struct {
	Direction        logs.Direction `json:"direction"`
	Users            int            `json:"users"`
	CostMultiplier   float64        `json:"cost_multiplier"`
	Requests         int            `json:"limit_requests"`
	ExecutionSeconds float64        `json:"limit_execution_seconds"`
	WindowSeconds    float64        `json:"limit_window_seconds"`
	Concurrent       int            `json:"limit_concurrent"`
	Records          int            `json:"records"`
	// Steady says the figures below run from the end of the first window
	// to the last decision, over MeasuredRecords records (the first
	// window's burst left out); false, over the whole run.
	Steady          bool `json:"steady"`
	MeasuredRecords int  `json:"measured_records"`
	// Seconds, RecordsPerSecond and CRM (per record; its Throttled over
	// the whole run) are over the measured part.
	Seconds          float64 `json:"seconds"`
	RecordsPerSecond float64 `json:"records_per_second"`
	CRM              CRMUse  `json:"crm"`
	// BudgetUsed is the larger of the shares of the users' request and
	// execution-time budgets the measured part used.
	BudgetUsed float64 `json:"budget_used"`
	Sent       int     `json:"sent"`
	// Lost is the records that did not end sent (dead-lettered or never
	// decided).
	Lost int `json:"lost"`
}

// Result is a whole run.
type Result struct {
	Started    time.Time `json:"started"`
	Workers    int       `json:"workers"`
	CRMUsers   int       `json:"crm_users"`
	CRMDOPHint int       `json:"crm_dop_hint"`
	// CRMBatchMax is the agent's CRMBatchMax (0: its default).
	CRMBatchMax int `json:"crm_batch_max"`
	// BypassOwnSteps: the agent's CRM writes bypassed its endpoint's
	// steps (no echoes of them).
	BypassOwnSteps bool `json:"bypass_own_steps"`
	// SQLiteSynchronous is Config.SQLiteSynchronous.
	SQLiteSynchronous string `json:"sqlite_synchronous,omitempty"`
	// Repeats is Config.Repeats: Throughput holds that many runs of each
	// direction, in the order made.
	Repeats    int          `json:"repeats"`
	Backfill   *Backfill    `json:"backfill,omitempty"`
	Throughput []Throughput `json:"throughput"`
	Latency    []Latency    `json:"latency"`
	Limited    []Limited    `json:"limited,omitempty"`
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
	res := &Result{Started: time.Now().UTC(), Workers: cfg.Workers, CRMUsers: cfg.CRMUsers, CRMDOPHint: cfg.CRMDOPHint, CRMBatchMax: cfg.CRMBatchMax, BypassOwnSteps: cfg.BypassOwnSteps, SQLiteSynchronous: cfg.SQLiteSynchronous, Repeats: cfg.Repeats, SandboxesInline: len(cfg.SandboxCommand) == 0}
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

// agentAccount is the sum of the agent's application users' accounts.
func (e *env) agentAccount(ctx context.Context) (account, error) {
	all, err := e.sb.accounts(ctx)
	if err != nil {
		return account{}, err
	}
	var sum account
	if e.kinds != nil {
		sum.kinds = e.kinds.snapshot()
	}
	for id, a := range all {
		if isAgentUser(id) {
			sum.Requests += a.Requests
			sum.Operations += a.Operations
			sum.ExecutionTime += a.ExecutionTime
			sum.Throttled += a.Throttled
		}
	}
	return sum, nil
}

func (e *env) measure(ctx context.Context, res *Result) error {
	n := e.cfg.Records
	bf, err := e.backfill(ctx, n)
	if err != nil {
		return err
	}
	res.Backfill = bf
	if _, err := e.waitIdle(ctx); err != nil {
		return err
	}

	var t1, t2 Throughput
	var contacts []contact
	for run := 1; run <= e.cfg.Repeats; run++ {
		f, c, cs, err := e.sustained(ctx, run)
		if err != nil {
			return err
		}
		if e.cfg.Repeats > 1 {
			f.Run, c.Run = run, run
		}
		res.Throughput = append(res.Throughput, f, c)
		if run == 1 {
			t1, t2, contacts = f, c, cs
		}
	}
	acc2, err := e.agentAccount(ctx)
	if err != nil {
		return err
	}

	e.progress("latency FHIR→CRM at %.0f records/s for %s", e.cfg.OfferedRate, e.cfg.Duration)
	l1, err := e.latencyFHIRToCRM(ctx)
	if err != nil {
		return err
	}
	if _, err := e.waitIdle(ctx); err != nil {
		return err
	}
	acc3, err := e.agentAccount(ctx)
	if err != nil {
		return err
	}
	l1.CRM = crmUseOf(acc2, acc3, l1.Offered)
	res.Latency = append(res.Latency, l1)
	e.progress("latency CRM→FHIR at %.0f records/s for %s", e.cfg.OfferedRate, e.cfg.Duration)
	l2, err := e.latencyCRMToFHIR(ctx, contacts)
	if err != nil {
		return err
	}
	if _, err := e.waitIdle(ctx); err != nil {
		return err
	}
	acc4, err := e.agentAccount(ctx)
	if err != nil {
		return err
	}
	l2.CRM = crmUseOf(acc3, acc4, l2.Offered)
	res.Latency = append(res.Latency, l2)

	if e.cfg.Limits.Requests < 0 {
		return nil
	}
	for _, users := range e.cfg.LimitedUsers {
		if err := e.startAgent(ctx, users); err != nil {
			return fmt.Errorf("restarting the agent with %d CRM users: %w", users, err)
		}
		for _, cost := range e.cfg.LimitedCosts {
			runs, err := e.limited(ctx, users, cost, t1, t2, contacts)
			if err != nil {
				return err
			}
			res.Limited = append(res.Limited, runs...)
		}
	}
	return nil
}

// sustained seeds Patients and runs FHIR→CRM for them, then CRM→FHIR for
// their contacts: the run-th of Config.Repeats sustained runs. It returns
// both runs' figures and the contacts (linked to the run's Patients).
func (e *env) sustained(ctx context.Context, run int) (Throughput, Throughput, []contact, error) {
	n := e.cfg.Records
	tag := "t"
	if run > 1 {
		tag = fmt.Sprintf("t%d", run)
		e.progress("sustained runs, %d of %d", run, e.cfg.Repeats)
	}
	e.progress("seeding %d patients in the sandbox FHIR server", n)
	pats, err := e.seedPatients(ctx, tag, n)
	if err != nil {
		return Throughput{}, Throughput{}, nil, err
	}
	phase := e.phase
	if run > 1 {
		// A profile covers the first run only.
		phase = func(string) func() { return func() {} }
	}
	acc0, err := e.agentAccount(ctx)
	if err != nil {
		return Throughput{}, Throughput{}, nil, err
	}
	e.progress("FHIR→CRM: %d event notices", n)
	t1, acc1, err := e.timedRun(ctx, phase, "fhir-to-crm", acc0, func() (Throughput, error) { return e.fhirToCRM(ctx, pats) })
	if err != nil {
		return Throughput{}, Throughput{}, nil, err
	}
	contacts, err := e.contacts(ctx, e.runID+"-"+tag+"-")
	if err != nil {
		return Throughput{}, Throughput{}, nil, err
	}
	e.progress("CRM→FHIR: %d contact updates", len(contacts))
	t2, _, err := e.timedRun(ctx, phase, "crm-to-fhir", acc1, func() (Throughput, error) { return e.crmToFHIR(ctx, contacts) })
	if err != nil {
		return Throughput{}, Throughput{}, nil, err
	}
	return t1, t2, contacts, nil
}

// timedRun makes one sustained run with drive, under the profile phase
// name, and measures it from its start until the queues are empty: both
// processes' CPU time, the bench process's I/O and heap, the group
// commits, and the CRM use since the accounts acc0 (returning the
// accounts at its end).
func (e *env) timedRun(ctx context.Context, phase func(string) func(), name string, acc0 account, drive func() (Throughput, error)) (Throughput, account, error) {
	cpu, err := e.cpuMark(ctx)
	if err != nil {
		return Throughput{}, account{}, err
	}
	use, err := e.useMark()
	if err != nil {
		return Throughput{}, account{}, err
	}
	end := phase(name)
	t, err := drive()
	if err == nil {
		t.idle, err = e.waitIdle(ctx)
	}
	end()
	if err != nil {
		return Throughput{}, account{}, err
	}
	t.DrainSeconds = t.idle.Sub(t.end).Seconds()
	if t.AgentCPUSeconds, t.SandboxCPUSeconds, t.StealPercent, err = cpu(); err != nil {
		return Throughput{}, account{}, err
	}
	if t.AgentIO, t.AgentHeap, t.DecisionsPerCommit, err = use(t.Records); err != nil {
		return Throughput{}, account{}, err
	}
	acc1, err := e.agentAccount(ctx)
	if err != nil {
		return Throughput{}, account{}, err
	}
	t.CRM = crmUseOf(acc0, acc1, t.Records)
	return t, acc1, nil
}

// phase tells Config.Phase that the named run starts.
func (e *env) phase(name string) (end func()) {
	if e.cfg.Phase == nil {
		return func() {}
	}
	return e.cfg.Phase(name)
}

// backfill seeds n Patients and walks them as `fhirsync backfill
// patient-contact --side fhir` does, through agent.Backfill, then waits for
// each record's decision. It runs first, so the FHIR server holds only
// these Patients.
func (e *env) backfill(ctx context.Context, n int) (*Backfill, error) {
	e.progress("seeding %d patients for the backfill", n)
	if _, err := e.seedPatients(ctx, "b", n); err != nil {
		return nil, err
	}
	base, err := e.decisions()
	if err != nil {
		return nil, err
	}
	acc0, err := e.agentAccount(ctx)
	if err != nil {
		return nil, err
	}
	e.progress("backfill of %d patients", n)
	from := time.Now()
	br, err := agent.Backfill(ctx, agent.BackfillOptions{Map: "patient-contact", Side: queues.SideFHIR, BatchSize: 1000, Fresh: true,
		Holder: e.runID}, agent.BackfillDeps{Maps: e.maps, FHIR: e.fhir, FHIRChanges: e.fhirQ, DB: e.db, Logger: e.cfg.Logger})
	if err != nil {
		return nil, fmt.Errorf("backfill: %w", err)
	}
	end, to, err := e.waitTerminal(ctx, base, logs.FHIRToCRM, br.FHIR)
	if err != nil {
		return nil, err
	}
	if _, err := e.waitIdle(ctx); err != nil {
		return nil, err
	}
	acc1, err := e.agentAccount(ctx)
	if err != nil {
		return nil, err
	}
	d := func(o logs.Outcome) int { return end[logs.FHIRToCRM][o] - base[logs.FHIRToCRM][o] }
	secs := to.Sub(from).Seconds()
	return &Backfill{Records: n, Notices: br.FHIR, Seconds: secs, RecordsPerSecond: float64(n) / secs,
		Sent: d(logs.OutcomeSent), Skipped: d(logs.OutcomeSkipped), DeadLettered: d(logs.OutcomeDeadLettered),
		CRM: crmUseOf(acc0, acc1, n)}, nil
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

// useMark notes the bench process's I/O counts and the agent's group
// commits; the returned function gives, per record of the interval since,
// the I/O (nil without /proc/self/io) and the mean decisions per commit.
func (e *env) useMark() (func(records int) (*IOUse, HeapUse, float64, error), error) {
	io0, ok0 := processIO()
	h0 := heapCounts()
	n0, sum0, err := e.groupCommits()
	if err != nil {
		return nil, err
	}
	return func(records int) (*IOUse, HeapUse, float64, error) {
		h1 := heapCounts()
		n1, sum1, err := e.groupCommits()
		if err != nil {
			return nil, HeapUse{}, 0, err
		}
		var per float64
		if n1 > n0 {
			per = (sum1 - sum0) / float64(n1-n0)
		}
		if records <= 0 {
			return nil, HeapUse{}, per, nil
		}
		r := float64(records)
		heap := HeapUse{AllocKiBPerRecord: float64(h1.allocBytes-h0.allocBytes) / 1024 / r,
			CollectionsPerThousand: float64(h1.cycles-h0.cycles) * 1000 / r}
		io1, ok1 := processIO()
		if !ok0 || !ok1 {
			return nil, heap, per, nil
		}
		return &IOUse{
			ReadKiBPerRecord: float64(io1.rchar-io0.rchar) / 1024 / r, ReadCallsPerRecord: float64(io1.syscr-io0.syscr) / r,
			WriteKiBPerRecord: float64(io1.wchar-io0.wchar) / 1024 / r, WriteCallsPerRecord: float64(io1.syscw-io0.syscw) / r,
		}, heap, per, nil
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
	from := time.Now()
	if err := e.sendNotices(ctx, ns); err != nil {
		return Throughput{}, err
	}
	end, to, err := e.waitTerminal(ctx, base, logs.FHIRToCRM, len(pats))
	if err != nil {
		return Throughput{}, err
	}
	return throughput(logs.FHIRToCRM, len(pats), base, end, from, to), nil
}

// contact is a CRM contact paired with a Patient.
type contact struct{ id, fhirID string }

// contacts lists the contacts paired with a Patient whose id starts with
// prefix.
func (e *env) contacts(ctx context.Context, prefix string) ([]contact, error) {
	var out []contact
	err := e.crm.RetrieveMultiple(ctx, "contacts", crm.Query{Select: []string{"contactid", "msemr_azurefhirid"}}, func(r crm.Record) error {
		if f := r.String("msemr_azurefhirid"); strings.HasPrefix(f, prefix) {
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
	go func() { errc <- e.updateContacts(ctx, cs, "bulk") }()
	end, to, err := e.waitTerminal(ctx, base, logs.CRMToFHIR, len(cs))
	if werr := <-errc; werr != nil {
		return Throughput{}, werr
	}
	if err != nil {
		return Throughput{}, err
	}
	return throughput(logs.CRMToFHIR, len(cs), base, end, from, to), nil
}

// updateContacts has the coordinator update every contact's email through
// $batch, as a bulk edit would; tag goes into the addresses. The edits are
// made by the sandboxes' process when they run in one of their own (see
// sandboxes.editContacts), a batch at a time.
func (e *env) updateContacts(ctx context.Context, cs []contact, tag string) error {
	for i := 0; i < len(cs); i += editBatch {
		ids := make([]string, 0, editBatch)
		for _, c := range cs[i:min(i+editBatch, len(cs))] {
			ids = append(ids, c.id)
		}
		if err := e.sb.editContacts(ctx, contactEdits{IDs: ids, Tag: tag, From: i}); err != nil {
			return fmt.Errorf("updating contacts: %w", err)
		}
	}
	return nil
}

// editBatch is how many contacts the coordinator updates in one $batch.
const editBatch = 1000

// contactEdits are a batch of the coordinator's contact updates: contact
// IDs[k] gets the email tag.(From+k)@example.org.
type contactEdits struct {
	IDs  []string `json:"ids"`
	Tag  string   `json:"tag"`
	From int      `json:"from"`
}

// editContacts makes the edits as the coordinator, through c, in one $batch
// of updates.
func editContacts(ctx context.Context, c *crm.Client, ed contactEdits) error {
	items := make([]crm.UpsertItem, 0, len(ed.IDs))
	for k, id := range ed.IDs {
		items = append(items, crm.UpsertItem{Target: crm.ByID("contacts", id),
			Record: crm.Record{"emailaddress1": fmt.Sprintf("%s.%d@example.org", ed.Tag, ed.From+k)}, Options: crm.UpsertOptions{Mode: crm.UpdateOnly}})
	}
	outs, err := c.UpsertMany(ctx, items)
	if err != nil {
		return err
	}
	for _, o := range outs {
		if o.Err != nil {
			return o.Err
		}
	}
	return nil
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
	l.P50, l.P99, l.Max = percentile(lat, 0.50).Seconds(), percentile(lat, 0.99).Seconds(), lat[len(lat)-1].Seconds()
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

// limitedRecords sizes a throttled run: the records users application
// users' budgets allow in LimitedWindows windows, at the requests and
// execution time per record the run without limits used (execution time
// scaled by cost).
func (e *env) limitedRecords(users int, cost float64, use CRMUse) int {
	lim := e.cfg.Limits
	perWindow := math.Inf(1)
	if lim.Requests > 0 && use.RequestsPerRecord > 0 {
		perWindow = float64(lim.Requests) / use.RequestsPerRecord
	}
	if lim.ExecutionTime > 0 && use.ExecutionMsPerRecord > 0 {
		perWindow = min(perWindow, lim.ExecutionTime.Seconds()*1000/(use.ExecutionMsPerRecord*cost))
	}
	if math.IsInf(perWindow, 1) {
		perWindow = float64(e.cfg.Records)
	}
	// One window more than measured: the first window's budget, spent at
	// once, is left out of the rate (see limitedRun).
	m := int(math.Ceil(perWindow * float64(users*(e.cfg.LimitedWindows+1))))
	return min(max(m, 100), 1000000)
}

// limited runs each direction with the CRM's limits on, the agent signing
// in as users application users and every operation costing cost times
// its default: FHIR→CRM for new Patients, then CRM→FHIR for linked
// contacts (those of the sustained run, edited again). The person editing
// contacts is exempt from the limits.
func (e *env) limited(ctx context.Context, users int, cost float64, t1, t2 Throughput, linked []contact) ([]Limited, error) {
	lim := e.cfg.Limits
	lim.CostMultiplier = cost
	lim.Exempt = []string{humanUser}
	tag := fmt.Sprintf("l%dx%g", users, cost)
	m := e.limitedRecords(users, cost, t1.CRM)
	pats, err := e.seedPatients(ctx, tag, m)
	if err != nil {
		return nil, err
	}
	if err := e.sb.setLimits(ctx, lim); err != nil {
		return nil, err
	}
	defer e.sb.setLimits(context.WithoutCancel(ctx), crmserver.Limits{}) //nolint:errcheck
	e.progress("FHIR→CRM with the documented CRM limits (%d requests and %s per %s), %d users, %gx cost: %d records",
		lim.Requests, lim.ExecutionTime, lim.Window, users, cost, m)
	ns := make([]queues.Notice, len(pats))
	for i, p := range pats {
		ns[i] = notice(p)
	}
	contactsBefore, err := e.sb.count(ctx, "contact")
	if err != nil {
		return nil, err
	}
	first, err := e.limitedRun(ctx, logs.FHIRToCRM, m, lim, users, func() error { return e.sendNotices(ctx, ns) })
	if err != nil {
		return nil, err
	}
	contactsAfter, err := e.sb.count(ctx, "contact")
	if err != nil {
		return nil, err
	}
	first.Lost = m - min(first.Sent, contactsAfter-contactsBefore)
	if _, err := e.waitIdle(ctx); err != nil {
		return nil, err
	}

	contacts := linked[:min(len(linked), e.limitedRecords(users, cost, t2.CRM))]
	e.progress("CRM→FHIR with the documented CRM limits, %d users, %gx cost: %d contact updates", users, cost, len(contacts))
	errc := make(chan error, 1)
	second, err := e.limitedRun(ctx, logs.CRMToFHIR, len(contacts), lim, users, func() error {
		go func() { errc <- e.updateContacts(ctx, contacts, tag) }()
		return nil
	})
	if werr := <-errc; err == nil {
		err = werr
	}
	if err != nil {
		return nil, err
	}
	second.Lost = len(contacts) - second.Sent
	if _, err := e.waitIdle(ctx); err != nil {
		return nil, err
	}
	return []Limited{first, second}, nil
}

// limitedRun starts a throttled run with begin and waits for m terminal
// decisions in dir. A client starting on an idle user has a whole window's
// budget at once; what it sustains is what the window gives back as it
// slides. So the rate, the CRM use and the budget used are taken from the
// end of the first window to the last decision; a run over before the first
// window ends is measured whole (Steady false).
func (e *env) limitedRun(ctx context.Context, dir logs.Direction, m int, lim crmserver.Limits, users int, begin func() error) (Limited, error) {
	out := Limited{Direction: dir, Users: users, CostMultiplier: lim.CostMultiplier, Requests: lim.Requests,
		ExecutionSeconds: lim.ExecutionTime.Seconds(), WindowSeconds: lim.Window.Seconds(), Concurrent: lim.Concurrent, Records: m}
	base, err := e.decisions()
	if err != nil {
		return out, err
	}
	acc0, err := e.agentAccount(ctx)
	if err != nil {
		return out, err
	}
	from := time.Now()
	if err := begin(); err != nil {
		return out, err
	}
	// The mark at the end of the first window.
	type mark struct {
		at   time.Time
		done int
		acc  account
		err  error
	}
	marked := make(chan mark, 1)
	stopMark := make(chan struct{})
	go func() {
		select {
		case <-stopMark:
			marked <- mark{}
			return
		case <-time.After(time.Until(from.Add(lim.Window))):
		}
		c, err := e.decisions()
		if err != nil {
			marked <- mark{err: err}
			return
		}
		acc, err := e.agentAccount(ctx)
		marked <- mark{at: time.Now(), done: c.terminal(dir) - base.terminal(dir), acc: acc, err: err}
	}()
	end, to, err := e.waitTerminal(ctx, base, dir, m)
	close(stopMark)
	mk := <-marked
	if err == nil {
		err = mk.err
	}
	if err != nil {
		return out, err
	}
	acc1, err := e.agentAccount(ctx)
	if err != nil {
		return out, err
	}
	out.Sent = end[dir][logs.OutcomeSent] - base[dir][logs.OutcomeSent]
	start, startAcc, records := from, acc0, m
	if !mk.at.IsZero() && mk.done < m {
		out.Steady = true
		start, startAcc, records = mk.at, mk.acc, m-mk.done
	}
	out.MeasuredRecords = records
	out.Seconds = to.Sub(start).Seconds()
	out.RecordsPerSecond = float64(records) / out.Seconds
	out.CRM = crmUseOf(startAcc, acc1, records)
	out.CRM.Throttled = acc1.Throttled - acc0.Throttled
	capacity := out.Seconds / lim.Window.Seconds() * float64(users)
	if capacity > 0 {
		used := 0.0
		if lim.Requests > 0 {
			used = float64(acc1.Requests-startAcc.Requests) / (capacity * float64(lim.Requests))
		}
		if lim.ExecutionTime > 0 {
			used = math.Max(used, float64(acc1.ExecutionTime-startAcc.ExecutionTime)/(capacity*float64(lim.ExecutionTime)))
		}
		out.BudgetUsed = used
	}
	return out, nil
}
