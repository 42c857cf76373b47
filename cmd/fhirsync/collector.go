package main

import "runtime/debug"

// Collector settings for the processes that run the agent (serve, demo,
// bench), unless the environment sets GOGC or GOMEMLIMIT, which Go then
// applies as usual.
//
// The agent's live heap is small (tens of megabytes) while it allocates
// quickly: every message decodes and encodes JSON several times. At Go's
// default GOGC of 100 it collects after every few megabytes of allocation;
// in `fhirsync bench` the agent process then spends about a quarter more CPU
// per record (2.7–2.9 ms instead of 2.0–2.2 at 5,000 records). At 400 it
// collects a quarter as often for a heap a few times larger, and the soft
// limit keeps that heap in bounds: near it the collector runs as often as
// it must. The limit counts Go's memory only; SQLite's page caches and the
// C allocator's free memory (storage/malloc.go) come on top. In `fhirsync
// bench --records 5000` the agent's peak RSS was 146 MB at 100 MiB against
// 170 MB at 150 MiB, for the same CPU per record; with SQLite's temporary
// files in memory 148–154 MB at 100 MiB and 144–145 MB at 90 MiB. Since
// resources and CRM rows are decoded by the map engine's decoder and the
// rows the agent created are remembered as hashes, the live heap at the
// peak of `fhirsync bench --records 50000` is 40 MB instead of 54 (heap
// profiles, --memprofile); the limit follows it down to 80 MiB, which
// leaves the collector as much room above the live heap as before: peak
// RSS 147–148 MB in two runs, against 146–153 MB at 90 MiB. With 256
// workers per queue (agent.DefaultWorkers) the live heap at the peak of
// `fhirsync bench --records 10000` is about 28 MiB, and peak RSS (as the
// bench gives it) was 129–142 MB at 80 MiB in nineteen runs and 123–128
// MB at 72 MiB in seventeen, for 2 % more CPU per CRM→FHIR record by the
// medians of ten alternating pairs (docs/benchmarks.md, twelfth round).
const (
	agentGCPercent   = 400
	agentMemoryLimit = 72 << 20
	// sandboxMemoryLimit is the soft limit of a bench process that holds
	// the sandboxes, whose CRM keeps every row in memory.
	sandboxMemoryLimit = 3 << 30
)

func tuneCollector(getenv func(string) string) { tune(getenv, agentMemoryLimit) }

// tuneSandboxCollector is tuneCollector for a bench process that holds the
// sandboxes: the sandbox CRM keeps every row in memory, a large live heap
// that the collector would mark over and over under the agent's limit,
// taking CPU the agent's run needs.
func tuneSandboxCollector(getenv func(string) string) { tune(getenv, sandboxMemoryLimit) }

func tune(getenv func(string) string, limit int64) {
	if getenv("GOGC") == "" {
		debug.SetGCPercent(agentGCPercent)
	}
	if getenv("GOMEMLIMIT") == "" {
		debug.SetMemoryLimit(limit)
	}
}
