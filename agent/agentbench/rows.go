package agentbench

import (
	"fmt"
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
		rows = append(rows, Row{
			Metric: fmt.Sprintf("%s sustained (%d records, no CRM limits)", arrow(t.Direction), t.Records),
			Value:  fmt.Sprintf("%.0f records/s", t.RecordsPerSecond),
			Target: fmt.Sprintf(">= %.0f records/s", TargetRecordsPerSecond),
			Met:    met(t.RecordsPerSecond >= TargetRecordsPerSecond && t.Sent == t.Records),
		})
		rows = append(rows, crmRows(arrow(t.Direction)+" sustained", t.CRM, 0)...)
		rows = append(rows, Row{
			Metric: fmt.Sprintf("%s queues empty after the last decision", arrow(t.Direction)),
			Value:  fmt.Sprintf("%.1f s", t.DrainSeconds),
		})
		if t.StealPercent >= 0 && t.AgentCPUSeconds > 0 {
			rows = append(rows, Row{Metric: fmt.Sprintf("%s CPU time taken by the host (steal, whole machine)", arrow(t.Direction)),
				Value: fmt.Sprintf("%.0f %%", t.StealPercent)})
		}
		if t.Records > 0 && t.AgentCPUSeconds > 0 {
			per := func(s float64) float64 { return s / float64(t.Records) }
			perRecord := func(s float64) string { return fmt.Sprintf("%.2f ms", per(s)*1000) }
			if r.SandboxesInline {
				rows = append(rows, Row{Metric: fmt.Sprintf("%s CPU per record (agent and sandboxes)", arrow(t.Direction)), Value: perRecord(t.AgentCPUSeconds)})
			} else {
				rows = append(rows,
					Row{Metric: fmt.Sprintf("%s CPU per record, agent process", arrow(t.Direction)), Value: perRecord(t.AgentCPUSeconds),
						Target: fmt.Sprintf("<= %.2f ms", TargetAgentCPUPerRecord.Seconds()*1000),
						Met:    met(per(t.AgentCPUSeconds) <= TargetAgentCPUPerRecord.Seconds())},
					Row{Metric: fmt.Sprintf("%s CPU per record, sandbox process", arrow(t.Direction)), Value: perRecord(t.SandboxCPUSeconds)})
			}
		}
		if io := t.AgentIO; io != nil {
			rows = append(rows, Row{Metric: fmt.Sprintf("%s read and write calls per record, bench process (database and HTTP)", arrow(t.Direction)),
				Value: fmt.Sprintf("%.1f KiB in %.1f reads, %.1f KiB in %.1f writes", io.ReadKiBPerRecord, io.ReadCallsPerRecord, io.WriteKiBPerRecord, io.WriteCallsPerRecord)})
		}
		if h := t.AgentHeap; h.AllocKiBPerRecord > 0 {
			rows = append(rows, Row{Metric: fmt.Sprintf("%s Go heap allocated per record, bench process", arrow(t.Direction)),
				Value: fmt.Sprintf("%.1f KiB, %.1f collections per 1,000 records", h.AllocKiBPerRecord, h.CollectionsPerThousand)})
		}
		if t.DecisionsPerCommit > 0 {
			rows = append(rows, Row{Metric: fmt.Sprintf("%s decisions per group commit (mean)", arrow(t.Direction)),
				Value: fmt.Sprintf("%.1f", t.DecisionsPerCommit)})
		}
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
