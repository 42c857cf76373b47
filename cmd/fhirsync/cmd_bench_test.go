package main

import (
	"bytes"
	"context"
	"encoding/json"
	"os"
	"regexp"
	"strings"
	"testing"

	"github.com/fhirsync/fhirsync/storage"
	"github.com/fhirsync/fhirsync/storage/storagetest"
)

// tinyBench is a run small enough for a test: it checks the harness and
// the table, not the machine's speed. The sandboxes run inline: the test
// binary cannot be started again as `fhirsync bench --serve-sandboxes`
// (agentbench's tests cover the sandbox process).
var tinyBench = []string{"bench", "--quiet", "--records", "40", "--offered-rate", "20", "--duration", "1s",
	"--limit-window", "1s", "--limit-windows", "2", "--crm-users", "1", "--limit-costs", "1", "--sandboxes", "inline"}

func TestBenchPrintsEveryRowWithNumbers(t *testing.T) {
	t.Parallel()
	for _, d := range storagetest.Dialects {
		t.Run(string(d), func(t *testing.T) {
			t.Parallel()
			args := tinyBench
			if d == storage.Postgres {
				args = append(append([]string{}, tinyBench...), "--database-url", storagetest.URL(t, d))
			}
			var stdout, stderr bytes.Buffer
			if code := exitCode(run(context.Background(), args, func(string) string { return "" }, &stdout, &stderr), &stderr); code != 0 {
				t.Fatalf("bench exited %d\n%s%s", code, stdout.String(), stderr.String())
			}
			out := stdout.String()
			if !strings.Contains(out, string(d)+" database, embedded queue, sandbox endpoints in-process") {
				t.Errorf("the header does not name the %s database:\n%s", d, out)
			}
			rows := []string{
				"backfill of 40 patients (FHIR→CRM)",
				"backfill: CRM requests per record",
				"backfill: CRM execution time per record",
				"FHIR→CRM sustained (40 records, no CRM limits)",
				"FHIR→CRM sustained: CRM requests per record",
				"FHIR→CRM sustained: CRM execution time per record",
				"CRM→FHIR sustained (40 records, no CRM limits)",
				"CRM→FHIR sustained: CRM requests per record",
				"FHIR→CRM latency p50 at 20 records/s",
				"FHIR→CRM latency p99 at 20 records/s",
				"FHIR→CRM live stream at 20 records/s: CRM requests per record",
				"CRM→FHIR latency p50 at 20 records/s",
				"CRM→FHIR latency p99 at 20 records/s",
				"CRM→FHIR live stream at 20 records/s: CRM requests per record",
				"FHIR→CRM with CRM limits, 1 user, 1x cost (",
				"FHIR→CRM with CRM limits, 1 user, 1x cost: CRM requests per record",
				"FHIR→CRM with CRM limits, 1 user, 1x cost: budget used",
				"FHIR→CRM with CRM limits, 1 user, 1x cost: records lost",
				"CRM→FHIR with CRM limits, 1 user, 1x cost (",
				"CRM→FHIR with CRM limits, 1 user, 1x cost: records lost",
				"peak RSS",
			}
			number := regexp.MustCompile(`^\s+[0-9]+(\.[0-9]+)?( (records/s|ms|%|MB))?(\s|$)`)
			lines := strings.Split(out, "\n")
			for _, want := range rows {
				found := false
				for _, l := range lines {
					if rest, ok := strings.CutPrefix(l, want); ok {
						found = true
						// The value follows the metric's own words.
						if _, after, ok := strings.Cut(rest, "  "); !ok || !number.MatchString("  "+strings.TrimLeft(after, " ")) {
							t.Errorf("row %q has no number: %q", want, l)
						}
					}
				}
				if !found {
					t.Errorf("no row %q in:\n%s", want, out)
				}
			}
			for _, l := range lines {
				if strings.Contains(l, ": records lost") && !regexp.MustCompile(`: records lost\s+0\s`).MatchString(l) {
					t.Errorf("records were lost under the CRM's limits: %q", l)
				}
			}
		})
	}
}

func TestBenchJSON(t *testing.T) {
	t.Parallel()
	var stdout, stderr bytes.Buffer
	args := append(append([]string{}, tinyBench...), "--json", "--limits", "off", "--sqlite-synchronous", "full")
	if code := exitCode(run(context.Background(), args, func(string) string { return "" }, &stdout, &stderr), &stderr); code != 0 {
		t.Fatalf("bench --json exited %d\n%s%s", code, stdout.String(), stderr.String())
	}
	var got struct {
		Database string `json:"database"`
		Result   struct {
			SQLiteSynchronous string `json:"sqlite_synchronous"`
			Throughput        []struct {
				Records            int     `json:"records"`
				Sent               int     `json:"sent"`
				RecordsPerSecond   float64 `json:"records_per_second"`
				DecisionsPerCommit float64 `json:"decisions_per_commit"`
				AgentIO            *struct {
					WriteKiB   float64 `json:"write_kib_per_record"`
					WriteCalls float64 `json:"write_calls_per_record"`
				} `json:"agent_io"`
			} `json:"throughput"`
			Latency []struct {
				Offered int     `json:"offered"`
				Written int     `json:"written"`
				P99     float64 `json:"p99_seconds"`
			} `json:"latency"`
			Limited      []struct{} `json:"limited"`
			PeakRSSBytes int64      `json:"peak_rss_bytes"`
		} `json:"result"`
		Rows []struct{ Metric, Value string } `json:"rows"`
	}
	if err := json.Unmarshal(stdout.Bytes(), &got); err != nil {
		t.Fatalf("output is not JSON: %v\n%s", err, stdout.String())
	}
	r := got.Result
	if got.Database != "sqlite" || len(r.Throughput) != 2 || len(r.Latency) != 2 || r.PeakRSSBytes <= 0 || len(got.Rows) == 0 {
		t.Fatalf("result = %+v", got)
	}
	if len(r.Limited) != 0 {
		t.Errorf("--limits off still ran %d throttled runs", len(r.Limited))
	}
	if r.SQLiteSynchronous != "full" {
		t.Errorf("sqlite_synchronous = %q, want full", r.SQLiteSynchronous)
	}
	_, procIO := os.Stat("/proc/self/io")
	for _, tp := range r.Throughput {
		if tp.Records != 40 || tp.Sent != 40 || tp.RecordsPerSecond <= 0 {
			t.Errorf("throughput = %+v, want 40 records all sent", tp)
		}
		// Each record's decision commits in some transaction of the
		// agent's database, which writes to its WAL.
		if tp.DecisionsPerCommit < 1 {
			t.Errorf("decisions_per_commit = %v, want at least 1", tp.DecisionsPerCommit)
		}
		if procIO == nil && (tp.AgentIO == nil || tp.AgentIO.WriteKiB <= 0 || tp.AgentIO.WriteCalls <= 0) {
			t.Errorf("agent_io = %+v, want the writes counted", tp.AgentIO)
		}
	}
	for _, l := range r.Latency {
		if l.Offered != 20 || l.Written != 20 || l.P99 <= 0 {
			t.Errorf("latency = %+v, want 20 offered and written", l)
		}
	}
}

func TestBenchUsage(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name string
		args []string
	}{
		{name: "no records", args: []string{"bench", "--records", "0"}},
		{name: "negative rate", args: []string{"bench", "--offered-rate", "-1"}},
		{name: "less than one record offered", args: []string{"bench", "--offered-rate", "0.5", "--duration", "1s"}},
		{name: "negative workers", args: []string{"bench", "--workers", "-2"}},
		{name: "zero window with limits", args: []string{"bench", "--limit-window", "0s"}},
		{name: "stray argument", args: []string{"bench", "now"}},
		{name: "unknown flag", args: []string{"bench", "--fast"}},
		{name: "sandboxes nowhere", args: []string{"bench", "--sandboxes", "elsewhere"}},
		{name: "unknown SQLite synchronous setting", args: []string{"bench", "--sqlite-synchronous", "extra"}},
		{name: "sandbox process without an endpoint", args: []string{"bench", "--serve-sandboxes"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			var stdout, stderr bytes.Buffer
			if code := exitCode(run(context.Background(), tt.args, func(string) string { return "" }, &stdout, &stderr), &stderr); code != 2 {
				t.Errorf("exit %d, want 2\n%s%s", code, stdout.String(), stderr.String())
			}
		})
	}
}
