package agentbench

import (
	"fmt"
	"slices"
	"time"

	"github.com/fhirsync/fhirsync/logs"
)

// Row is one line of the results table.
type Row struct {
	Metric string `json:"metric"`
	Value  string `json:"value"`
	Target string `json:"target"`
	// Met is "yes", "no" or "" (no target).
	Met string `json:"met"`
}

func arrow(d logs.Direction) string {
	if d == logs.CRMToFHIR {
		return "CRM→FHIR"
	}
	return "FHIR→CRM"
}

func met(ok bool) string {
	if ok {
		return "yes"
	}
	return "no"
}

func ms(s float64) string {
	return fmt.Sprintf("%.0f ms", s*1000)
}

// crmRows are the CRM requests and execution time per record of a run
// named what, the requests compared with target when it is above zero.
func crmRows(what string, u CRMUse, target float64) []Row {
	req := Row{Metric: what + ": CRM requests per record", Value: fmt.Sprintf("%.3f", u.RequestsPerRecord)}
	if target > 0 {
		req.Target, req.Met = fmt.Sprintf("<= %g", target), met(u.RequestsPerRecord <= target)
	}
	return []Row{req, {Metric: what + ": CRM execution time per record", Value: fmt.Sprintf("%.1f ms", u.ExecutionMsPerRecord)}}
}

// Rows renders r as the results table, one row per measured figure.
func (r *Result) Rows() []Row {
	var rows []Row
	if b := r.Backfill; b != nil {
		rows = append(rows, Row{Metric: fmt.Sprintf("backfill of %d patients (FHIR→CRM)", b.Records),
			Value: fmt.Sprintf("%.0f records/s", b.RecordsPerSecond)})
		rows = append(rows, crmRows("backfill", b.CRM, TargetBackfillRequestsPerRecord)...)
	}
	for _, t := range r.Throughput {
		a := arrow(t.Direction)
		if t.Run > 0 {
			a = fmt.Sprintf("%s (run %d)", a, t.Run)
		}
		rows = append(rows, Row{
			Metric: fmt.Sprintf("%s sustained (%d records, no CRM limits)", a, t.Records),
			Value:  fmt.Sprintf("%.0f records/s", t.RecordsPerSecond),
			Target: fmt.Sprintf(">= %.0f records/s", TargetRecordsPerSecond),
			Met:    met(t.RecordsPerSecond >= TargetRecordsPerSecond && t.Sent == t.Records),
		})
		rows = append(rows, crmRows(a+" sustained", t.CRM, 0)...)
		rows = append(rows, Row{
			Metric: fmt.Sprintf("%s queues empty after the last decision", a),
			Value:  fmt.Sprintf("%.1f s", t.DrainSeconds),
		})
		if t.StealPercent >= 0 && t.AgentCPUSeconds > 0 {
			rows = append(rows, Row{Metric: fmt.Sprintf("%s CPU time taken by the host (steal, whole machine)", a),
				Value: fmt.Sprintf("%.0f %%", t.StealPercent)})
		}
		if t.Records > 0 && t.AgentCPUSeconds > 0 {
			per := func(s float64) float64 { return s / float64(t.Records) }
			perRecord := func(s float64) string { return fmt.Sprintf("%.2f ms", per(s)*1000) }
			if r.SandboxesInline {
				rows = append(rows, Row{Metric: fmt.Sprintf("%s CPU per record (agent and sandboxes)", a), Value: perRecord(t.AgentCPUSeconds)})
			} else {
				rows = append(rows,
					Row{Metric: fmt.Sprintf("%s CPU per record, agent process", a), Value: perRecord(t.AgentCPUSeconds),
						Target: fmt.Sprintf("<= %.2f ms", TargetAgentCPUPerRecord.Seconds()*1000),
						Met:    met(per(t.AgentCPUSeconds) <= TargetAgentCPUPerRecord.Seconds())},
					Row{Metric: fmt.Sprintf("%s CPU per record, sandbox process", a), Value: perRecord(t.SandboxCPUSeconds)})
			}
		}
		if io := t.AgentIO; io != nil {
			rows = append(rows, Row{Metric: fmt.Sprintf("%s read and write calls per record, bench process (database and HTTP)", a),
				Value: fmt.Sprintf("%.1f KiB in %.1f reads, %.1f KiB in %.1f writes", io.ReadKiBPerRecord, io.ReadCallsPerRecord, io.WriteKiBPerRecord, io.WriteCallsPerRecord)})
		}
		if h := t.AgentHeap; h.AllocKiBPerRecord > 0 {
			rows = append(rows, Row{Metric: fmt.Sprintf("%s Go heap allocated per record, bench process", a),
				Value: fmt.Sprintf("%.1f KiB, %.1f collections per 1,000 records", h.AllocKiBPerRecord, h.CollectionsPerThousand)})
		}
		if t.DecisionsPerCommit > 0 {
			rows = append(rows, Row{Metric: fmt.Sprintf("%s decisions per group commit (mean)", a),
				Value: fmt.Sprintf("%.1f", t.DecisionsPerCommit)})
		}
	}
	if r.Repeats > 1 {
		rows = append(rows, r.medianRows()...)
	}
	for _, l := range r.Latency {
		all := l.Written == l.Offered
		rows = append(rows,
			Row{Metric: fmt.Sprintf("%s latency p50 at %.0f records/s", arrow(l.Direction), l.OfferedRate), Value: ms(l.P50)},
			Row{Metric: fmt.Sprintf("%s latency p99 at %.0f records/s", arrow(l.Direction), l.OfferedRate), Value: ms(l.P99),
				Target: "<= " + TargetP99.String(), Met: met(all && l.P99 <= TargetP99.Seconds())},
		)
		if !all {
			rows = append(rows, Row{Metric: fmt.Sprintf("%s latency: writes that reached the target", arrow(l.Direction)),
				Value: fmt.Sprintf("%d of %d", l.Written, l.Offered), Target: "all", Met: "no"})
		}
		rows = append(rows, crmRows(fmt.Sprintf("%s live stream at %.0f records/s", arrow(l.Direction), l.OfferedRate), l.CRM, TargetLiveRequestsPerRecord)...)
	}
	for i, l := range r.Limited {
		if i == 0 {
			rows = append(rows, Row{Metric: "CRM limits of the runs below (Dataverse's documented rates, per user)",
				Value: fmt.Sprintf("%d requests and %.0f s execution time per %s, %d concurrent", l.Requests, l.ExecutionSeconds,
					time.Duration(l.WindowSeconds*float64(time.Second)), l.Concurrent)})
		}
		what := fmt.Sprintf("%s with CRM limits, %d user%s, %gx cost", arrow(l.Direction), l.Users, plural(l.Users), l.CostMultiplier)
		span := "whole run"
		if l.Steady {
			span = "after the first window"
		}
		rate := Row{Metric: fmt.Sprintf("%s (%d records, %d measured %s)", what, l.Records, l.MeasuredRecords, span),
			Value: fmt.Sprintf("%.0f records/s", l.RecordsPerSecond)}
		if l.Users == TargetLimitedUsers && l.CostMultiplier == 1 {
			rate.Target = fmt.Sprintf(">= %.0f records/s", TargetLimitedRecordsPerSecond)
			rate.Met = met(l.Steady && l.RecordsPerSecond >= TargetLimitedRecordsPerSecond && l.Lost == 0)
		}
		rows = append(rows, rate)
		rows = append(rows, crmRows(what, l.CRM, 0)...)
		rows = append(rows,
			Row{Metric: what + ": budget used", Value: fmt.Sprintf("%.0f %%", l.BudgetUsed*100)},
			Row{Metric: what + ": 429 answers", Value: fmt.Sprintf("%d", l.CRM.Throttled)},
			Row{Metric: what + ": records lost", Value: fmt.Sprintf("%d", l.Lost), Target: "0", Met: met(l.Lost == 0)})
	}
	if b := r.BaseState; b != nil && b.Links > 0 {
		rows = append(rows, Row{Metric: fmt.Sprintf("base state stored per linked pair (%d pairs, %.1f attributes each)", b.Links, b.AttributesPerLink),
			Value: fmt.Sprintf("%.0f bytes", b.BytesPerLink)})
		if b.StoredBytes > 0 {
			rows = append(rows, Row{Metric: "base state on disk per linked pair (table and indexes)", Value: fmt.Sprintf("%.0f bytes", float64(b.StoredBytes)/float64(b.Links))})
		}
	}
	mb := func(b int64) string { return fmt.Sprintf("%.0f MB", float64(b)/(1<<20)) }
	if r.SandboxesInline {
		rows = append(rows, Row{Metric: "peak RSS (agent and sandboxes, one process)", Value: mb(r.PeakRSSBytes)})
		return rows
	}
	rows = append(rows, Row{Metric: "peak RSS (agent process)", Value: mb(r.PeakRSSBytes),
		Target: fmt.Sprintf("<= %d MB", TargetPeakRSSBytes>>20), Met: met(r.PeakRSSBytes > 0 && r.PeakRSSBytes <= TargetPeakRSSBytes)})
	if r.SandboxPeakRSSBytes > 0 {
		rows = append(rows, Row{Metric: "peak RSS (sandbox process, for reference)", Value: mb(r.SandboxPeakRSSBytes)})
	}
	return rows
}

func plural(n int) string {
	if n == 1 {
		return ""
	}
	return "s"
}

// medianRows are the medians (and ranges) of the repeated sustained runs
// of each direction: records/s and, with the sandboxes in their own
// process, the agent's CPU per record, each checked against its target,
// and the heap allocated per record.
func (r *Result) medianRows() []Row {
	var rows []Row
	for _, dir := range []logs.Direction{logs.FHIRToCRM, logs.CRMToFHIR} {
		var rate, cpu, heap []float64
		all := true
		for _, t := range r.Throughput {
			if t.Direction != dir || t.Records == 0 {
				continue
			}
			all = all && t.Sent == t.Records
			rate = append(rate, t.RecordsPerSecond)
			cpu = append(cpu, t.AgentCPUSeconds/float64(t.Records))
			heap = append(heap, t.AgentHeap.AllocKiBPerRecord)
		}
		if len(rate) == 0 {
			continue
		}
		what := fmt.Sprintf("%s sustained, median of %d runs", arrow(dir), len(rate))
		m, lo, hi := medianRange(rate)
		rows = append(rows, Row{Metric: what, Value: fmt.Sprintf("%.0f records/s (%.0f–%.0f)", m, lo, hi),
			Target: fmt.Sprintf(">= %.0f records/s", TargetRecordsPerSecond), Met: met(all && m >= TargetRecordsPerSecond)})
		if !r.SandboxesInline && slices.Max(cpu) > 0 {
			m, lo, hi := medianRange(cpu)
			rows = append(rows, Row{Metric: what + ": CPU per record, agent process", Value: fmt.Sprintf("%.2f ms (%.2f–%.2f)", m*1000, lo*1000, hi*1000),
				Target: fmt.Sprintf("<= %.2f ms", TargetAgentCPUPerRecord.Seconds()*1000), Met: met(m <= TargetAgentCPUPerRecord.Seconds())})
		}
		if slices.Max(heap) > 0 {
			m, lo, hi := medianRange(heap)
			rows = append(rows, Row{Metric: what + ": Go heap allocated per record", Value: fmt.Sprintf("%.1f KiB (%.1f–%.1f)", m, lo, hi)})
		}
	}
	return rows
}

// medianRange is the median of xs (the mean of the middle two for an even
// count), its least and its greatest.
func medianRange(xs []float64) (median, lo, hi float64) {
	s := slices.Clone(xs)
	slices.Sort(s)
	n := len(s)
	if n%2 == 1 {
		return s[n/2], s[0], s[n-1]
	}
	return (s[n/2-1] + s[n/2]) / 2, s[0], s[n-1]
}
