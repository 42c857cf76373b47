package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"runtime"
	"runtime/metrics"
	"runtime/pprof"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/fhirsync/fhirsync/agent/agentbench"
	"github.com/fhirsync/fhirsync/sandbox/crmserver"
	"github.com/fhirsync/fhirsync/storage"
)

func runBench(ctx context.Context, e *env, args []string) error {
	fs := e.newFlagSet("bench", "bench [--records N] [--offered-rate R] [--duration D] [--database-url URL] [--json]", `
Measure the sync agent on this machine: the agent and the embedded queue
run in this process, the sandbox FHIR server and CRM in a second one
(--sandboxes inline keeps them in this one). Prints sustained
records/s in each direction, a backfill of Patients already in the FHIR
server, source-write-to-target-write latency at a fixed offered rate, peak
resident memory, the CRM requests and execution time per record by the
sandbox CRM's accounting, and records/s in each direction with Dataverse's
documented service-protection limits on, for each number of application
users (--crm-users) and execution-cost multiplier (--limit-costs). The database is a temporary SQLite file unless --database-url
names one; use a scratch database, the run leaves its rows behind.`)
	records := fs.Int("records", 50000, "records synced in each direction for the throughput figures")
	repeats := fs.Int("repeat", 1, "make the sustained runs (no CRM limits) this many times, each with new records, and report each and their medians")
	rate := fs.Float64("offered-rate", 200, "source writes per second in the latency runs")
	duration := fs.Duration("duration", 15*time.Second, "length of each latency run")
	workers := fs.Int("workers", 0, "agent workers per queue (0: the agent's default)")
	dbURL := fs.String("database-url", "", "postgres://… or sqlite:PATH (default: SQLite in a temporary directory)")
	limitsOn := fs.String("limits", "documented", "CRM service-protection limits of the throttled runs: documented (Dataverse's rates over --limit-window) or off (skips them)")
	limitWindow := fs.Duration("limit-window", 10*time.Second, "CRM service-protection window of the throttled runs; the documented 6,000 requests and 1,200 s of execution time per 300 s are scaled to it")
	windows := fs.Int("limit-windows", 2, "size each throttled run to this many windows of its users' budget")
	crmUsers := fs.String("crm-users", "1,3", "comma-separated numbers of CRM application users of the throttled runs (the runs without limits use the first)")
	dopHint := fs.Int("crm-dop-hint", 0, "x-ms-dop-hint the sandbox CRM answers with (0: its default, 4)")
	batchMax := fs.Int("crm-batch-max", 0, "the agent's agent.crm_batch_max: CRM operations per shared $batch (0: the agent's default; 1: none)")
	batchWait := fs.Duration("crm-batch-wait", 0, "the agent's agent.crm_batch_wait (0: the agent's default)")
	costs := fs.String("limit-costs", "1,2", "comma-separated multipliers of the CRM's execution cost per operation in the throttled runs")
	bypass := fs.String("crm-bypass-own-steps", "off", "the agent's crm.bypass_own_steps: on (its CRM writes bypass the sandbox CRM's service-endpoint steps, so no echo comes back) or off")
	sqliteSyncFlag := fs.String("sqlite-synchronous", storage.SyncFull, "with SQLite: the agent's database.sqlite_synchronous, full (the WAL synced at every commit) or normal (at checkpoints)")
	baseState := fs.String("base-state", "on", "keep the base state of linked pairs: on (as in production) or off (to measure its cost)")
	asJSON := fs.Bool("json", false, "print the result as JSON")
	cpuProfile := fs.String("cpuprofile", "", "write a CPU profile to this `file`")
	profilePhase := fs.String("cpuprofile-phase", "", "with --cpuprofile: profile only this sustained run (fhir-to-crm or crm-to-fhir)")
	memProfile := fs.String("memprofile", "", "write a heap profile to this `file`, taken when the live heap was largest")
	sandboxProfile := fs.String("sandbox-cpuprofile", "", "write a CPU profile of the sandbox process to this `file` (with --sandboxes process)")
	quiet := fs.Bool("quiet", false, "do not print progress on stderr")
	where := fs.String("sandboxes", "process", "where the sandboxes run: process (a process of their own) or inline (this process)")
	serveSandboxes := fs.Bool("serve-sandboxes", false, "serve the sandboxes for another bench process and print their addresses (used by --sandboxes process)")
	sandboxDir := fs.String("sandbox-dir", "", "with --serve-sandboxes: directory for the sandbox FHIR server's file")
	endpoint := fs.String("endpoint", "", "with --serve-sandboxes: URL the sandbox CRM posts its service-endpoint messages to")
	stream := fs.Bool("stream", false, "run the device-stream bench instead (docs/device-streams.md): --stream-rate Observations/s for --stream-duration to a stream map")
	streamRate := fs.Float64("stream-rate", agentbench.TargetStreamReadingsPerSecond, "with --stream: device Observations per second offered to the FHIR feed")
	streamDuration := fs.Duration("stream-duration", time.Minute, "with --stream: how long the readings are offered")
	streamPatients := fs.Int("stream-patients", 1000, "with --stream: patients, one heart-rate stream each")
	streamWindow := fs.Duration("stream-window", 30*time.Second, "with --stream: the stream map's window")
	signalRate := fs.Float64("signal-rate", 1, "with --stream: RiskAssessments/Flags per second written alongside, each timed from FHIR write to CRM task (docs/signals.md); 0 leaves the signal leg out")
	if done, err := parseFlags(fs, args); done {
		return err
	}
	if fs.NArg() > 0 {
		return usageErrorf("bench takes no arguments")
	}
	if *serveSandboxes {
		if *endpoint == "" {
			return usageErrorf("bench: --serve-sandboxes needs --endpoint")
		}
		// The sandboxes stand in for servers on other machines.
		tuneSandboxCollector(e.getenv)
		if *cpuProfile != "" {
			stop, err := startCPUProfile(*cpuProfile)
			if err != nil {
				return err
			}
			defer stop()
		}
		return agentbench.ServeSandboxes(ctx, *sandboxDir, *endpoint, os.Stdin, e.stdout)
	}
	switch {
	case *baseState != "on" && *baseState != "off":
		return usageErrorf("bench: --base-state must be on or off")
	case *bypass != "on" && *bypass != "off":
		return usageErrorf("bench: --crm-bypass-own-steps must be on or off")
	case *sqliteSyncFlag != storage.SyncNormal && *sqliteSyncFlag != storage.SyncFull:
		return usageErrorf("bench: --sqlite-synchronous must be normal or full")
	case *where != "process" && *where != "inline":
		return usageErrorf("bench: --sandboxes must be process or inline")
	case *records < 1 || *records > 1000000:
		return usageErrorf("bench: --records must be 1..1000000")
	case *repeats < 1 || *repeats > 100:
		return usageErrorf("bench: --repeat must be 1..100")
	case *rate <= 0 || *duration <= 0 || *rate*duration.Seconds() < 1:
		return usageErrorf("bench: --offered-rate and --duration must be positive and offer at least one record")
	case *workers < 0 || *windows < 1:
		return usageErrorf("bench: --workers must not be negative, --limit-windows at least 1")
	case *limitsOn != "documented" && *limitsOn != "off":
		return usageErrorf("bench: --limits must be documented or off")
	case *batchMax < 0 || *batchMax > 1000 || *batchWait < 0:
		return usageErrorf("bench: --crm-batch-max must be 0 to 1000, --crm-batch-wait not negative")
	case *dopHint < 0 || *dopHint > 1000:
		return usageErrorf("bench: --crm-dop-hint must be 0 to 1000")
	case *limitWindow <= 0:
		return usageErrorf("bench: --limit-window must be positive")
	case *sandboxProfile != "" && *where != "process":
		return usageErrorf("bench: --sandbox-cpuprofile needs --sandboxes process")
	}
	if *where == "inline" {
		// The sandboxes' rows share this heap: under the agent's soft
		// limit alone the collector would run almost without pause (one
		// run: 268 CRM→FHIR records/s, 6.9 ms of CPU a record).
		tuneSandboxCollector(e.getenv)
	} else {
		tuneCollector(e.getenv)
	}

	dir, err := os.MkdirTemp("", "fhirsync-bench-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	url := *dbURL
	if url == "" {
		url = "sqlite:" + filepath.Join(dir, "bench.db")
	}
	db, err := storage.Open(ctx, url, storage.Options{SQLiteSynchronous: *sqliteSyncFlag})
	if err != nil {
		return err
	}
	defer storage.Close(db)
	if _, err := storage.Migrate(ctx, db); err != nil {
		return fmt.Errorf("migrating the bench database: %w", err)
	}

	var phase func(string) func()
	switch {
	case *profilePhase != "" && *cpuProfile == "":
		return usageErrorf("bench: --cpuprofile-phase needs --cpuprofile")
	case *cpuProfile != "" && *profilePhase != "":
		if *profilePhase != "fhir-to-crm" && *profilePhase != "crm-to-fhir" {
			return usageErrorf("bench: --cpuprofile-phase must be fhir-to-crm or crm-to-fhir")
		}
		phase = func(name string) func() {
			if name != *profilePhase {
				return func() {}
			}
			stop, err := startCPUProfile(*cpuProfile)
			if err != nil {
				fmt.Fprintf(e.stderr, "bench: %v\n", err)
				return func() {}
			}
			return stop
		}
	case *cpuProfile != "":
		stop, err := startCPUProfile(*cpuProfile)
		if err != nil {
			return err
		}
		defer stop()
	}
	if *memProfile != "" {
		stop, err := startHeapProfile(ctx, *memProfile)
		if err != nil {
			return err
		}
		defer stop()
	}
	users, err := positiveInts(*crmUsers, 8)
	if err != nil {
		return usageErrorf("bench: --crm-users: %v", err)
	}
	multipliers, err := positiveFloats(*costs)
	if err != nil {
		return usageErrorf("bench: --limit-costs: %v", err)
	}
	limits := crmserver.DataverseLimitsOver(*limitWindow)
	if *limitsOn == "off" {
		limits = crmserver.Limits{Requests: -1}
	}
	var progress io.Writer
	if !*quiet {
		progress = e.stderr
	}
	if *stream {
		if *streamRate <= 0 || *streamDuration <= 0 || *streamPatients < 1 || *streamWindow < time.Second {
			return usageErrorf("bench: --stream-rate, --stream-duration and --stream-patients must be positive, --stream-window at least 1s")
		}
		var signals *agentbench.SignalConfig
		if *signalRate > 0 {
			signals = &agentbench.SignalConfig{Rate: *signalRate}
		}
		res, err := agentbench.RunStream(ctx, agentbench.StreamConfig{DB: db, Rate: *streamRate, Duration: *streamDuration,
			Patients: *streamPatients, Window: *streamWindow, Workers: *workers, Progress: progress, Signals: signals})
		if err != nil {
			return fmt.Errorf("bench: %w", err)
		}
		if *asJSON {
			enc := json.NewEncoder(e.stdout)
			enc.SetIndent("", "  ")
			return enc.Encode(struct {
				Database string                   `json:"database"`
				CPUs     int                      `json:"cpus"`
				Result   *agentbench.StreamResult `json:"result"`
			}{string(storage.DialectOf(db)), runtime.NumCPU(), res})
		}
		fmt.Fprintf(e.stdout, "fhirsync bench --stream: %s database, embedded queue, sandbox endpoints in-process, %d CPUs, %s\n",
			storage.DialectOf(db), runtime.NumCPU(), runtime.Version())
		agentbench.WriteStream(e.stdout, res)
		return nil
	}
	var command []string
	if *where == "process" {
		exe, err := os.Executable()
		if err != nil {
			return fmt.Errorf("finding this program to run the sandboxes: %w", err)
		}
		command = []string{exe, "bench", "--serve-sandboxes"}
		if *sandboxProfile != "" {
			abs, err := filepath.Abs(*sandboxProfile)
			if err != nil {
				return err
			}
			command = append(command, "--cpuprofile", abs)
		}
	}
	sqliteSync := *sqliteSyncFlag
	if storage.DialectOf(db) != storage.SQLite {
		sqliteSync = ""
	}
	res, err := agentbench.Run(ctx, agentbench.Config{DB: db, TempDir: dir, Records: *records, Repeats: *repeats, OfferedRate: *rate, Duration: *duration,
		Workers: *workers, CRMUsers: users[0], CRMDOPHint: *dopHint, CRMBatchMax: *batchMax, CRMBatchWait: *batchWait, Limits: limits, LimitedUsers: users, LimitedCosts: multipliers, LimitedWindows: *windows, Progress: progress, SandboxCommand: command, BaseStateOff: *baseState == "off", BypassOwnSteps: *bypass == "on", Phase: phase,
		SQLiteSynchronous: sqliteSync})
	if err != nil {
		return fmt.Errorf("bench: %w", err)
	}
	database := string(storage.DialectOf(db))
	if *asJSON {
		enc := json.NewEncoder(e.stdout)
		enc.SetIndent("", "  ")
		return enc.Encode(struct {
			Database string             `json:"database"`
			CPUs     int                `json:"cpus"`
			Result   *agentbench.Result `json:"result"`
			Rows     []agentbench.Row   `json:"rows"`
		}{database, runtime.NumCPU(), res, res.Rows()})
	}
	placed := "in a second process"
	if *where == "inline" {
		placed = "in-process"
	}
	fmt.Fprintf(e.stdout, "fhirsync bench %s: %s database, embedded queue, sandbox endpoints %s, %d CPUs, %s %s/%s\n\n",
		res.Started.Format(time.RFC3339), database, placed, runtime.NumCPU(), runtime.Version(), runtime.GOOS, runtime.GOARCH)
	tw := tabwriter.NewWriter(e.stdout, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "METRIC\tVALUE\tTARGET\tMET")
	for _, r := range res.Rows() {
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\n", r.Metric, r.Value, benchCell(r.Target), benchCell(r.Met))
	}
	return tw.Flush()
}

// positiveInts parses a comma-separated list of integers from 1 to most.
func positiveInts(list string, most int) ([]int, error) {
	var out []int
	for _, f := range strings.Split(list, ",") {
		n, err := strconv.Atoi(strings.TrimSpace(f))
		if err != nil || n < 1 || n > most {
			return nil, fmt.Errorf("%q is not a number from 1 to %d", strings.TrimSpace(f), most)
		}
		out = append(out, n)
	}
	return out, nil
}

// positiveFloats parses a comma-separated list of positive numbers.
func positiveFloats(list string) ([]float64, error) {
	var out []float64
	for _, f := range strings.Split(list, ",") {
		x, err := strconv.ParseFloat(strings.TrimSpace(f), 64)
		if err != nil || x <= 0 || x > 100 {
			return nil, fmt.Errorf("%q is not a number above 0 and at most 100", strings.TrimSpace(f))
		}
		out = append(out, x)
	}
	return out, nil
}

// startCPUProfile writes a CPU profile to path until stop is called.
func startCPUProfile(path string) (stop func(), err error) {
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o600)
	if err != nil {
		return nil, err
	}
	if err := pprof.StartCPUProfile(f); err != nil {
		f.Close()
		return nil, err
	}
	return func() {
		pprof.StopCPUProfile()
		f.Close()
	}, nil
}

// startHeapProfile reads the live heap (as of the last collection) twice a
// second and writes a heap profile to path whenever it is 5 % larger than
// at the last profile,
// until stop is called: the profile shows what the heap held at its peak.
func startHeapProfile(ctx context.Context, path string) (stop func(), err error) {
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o600)
	if err != nil {
		return nil, err
	}
	f.Close()
	ctx, cancel := context.WithCancel(ctx)
	done := make(chan struct{})
	go func() {
		defer close(done)
		sample := []metrics.Sample{{Name: "/gc/heap/live:bytes"}}
		var peak uint64
		tick := time.NewTicker(500 * time.Millisecond)
		defer tick.Stop()
		for {
			select {
			case <-ctx.Done():
				return
			case <-tick.C:
			}
			metrics.Read(sample)
			if live := sample[0].Value.Uint64(); live > peak+peak/20 {
				peak = live
				if g, err := os.OpenFile(path, os.O_WRONLY|os.O_TRUNC, 0o600); err == nil {
					_ = pprof.Lookup("heap").WriteTo(g, 0)
					g.Close()
				}
			}
		}
	}()
	return func() { cancel(); <-done }, nil
}

func benchCell(s string) string {
	if s == "" {
		return "-"
	}
	return s
}
