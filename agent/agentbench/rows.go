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

// Rows renders r as the results table, one row per measured figure.
func (r *Result) Rows() []Row {
	var rows []Row
	for _, t := range r.Throughput {
		rows = append(rows, Row{
			Metric: fmt.Sprintf("%s sustained (%d records)", arrow(t.Direction), t.Records),
			Value:  fmt.Sprintf("%.0f records/s", t.RecordsPerSecond),
			Target: fmt.Sprintf(">= %.0f records/s", TargetRecordsPerSecond),
			Met:    met(t.RecordsPerSecond >= TargetRecordsPerSecond && t.Sent == t.Records),
		}, Row{
			Metric: fmt.Sprintf("%s queues empty after the last decision", arrow(t.Direction)),
			Value:  fmt.Sprintf("%.1f s", t.DrainSeconds),
		})
		if t.StealPercent >= 0 && t.AgentCPUSeconds > 0 {
			rows = append(rows, Row{Metric: fmt.Sprintf("%s CPU time taken by the host (steal, whole machine)", arrow(t.Direction)),
				Value: fmt.Sprintf("%.0f %%", t.StealPercent)})
		}
		if t.Records > 0 && t.AgentCPUSeconds > 0 {
			perRecord := func(s float64) string { return fmt.Sprintf("%.2f ms", s*1000/float64(t.Records)) }
			if r.SandboxesInline {
				rows = append(rows, Row{Metric: fmt.Sprintf("%s CPU per record (agent and sandboxes)", arrow(t.Direction)), Value: perRecord(t.AgentCPUSeconds)})
			} else {
				rows = append(rows,
					Row{Metric: fmt.Sprintf("%s CPU per record, agent process", arrow(t.Direction)), Value: perRecord(t.AgentCPUSeconds)},
					Row{Metric: fmt.Sprintf("%s CPU per record, sandbox process", arrow(t.Direction)), Value: perRecord(t.SandboxCPUSeconds)})
			}
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
	}
	if l := r.Limited; l != nil {
		rows = append(rows,
			Row{Metric: fmt.Sprintf("CRM budget used (%d requests/%s, %d concurrent, %d full windows)", l.Requests,
				time.Duration(l.WindowSeconds*float64(time.Second)), l.Concurrent, l.FullWindows),
				Value: fmt.Sprintf("%.1f %%", l.BudgetUsed*100), Target: fmt.Sprintf(">= %.0f %%", TargetBudgetUsed*100),
				Met: met(l.FullWindows > 0 && l.BudgetUsed >= TargetBudgetUsed)},
			Row{Metric: fmt.Sprintf("CRM 429 answers (throttled run, %d records)", l.Records), Value: fmt.Sprintf("%d", l.Throttled)},
			Row{Metric: "records lost to 429", Value: fmt.Sprintf("%d", l.Lost), Target: "0", Met: met(l.Lost == 0)},
		)
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
		rows = append(rows, Row{Metric: "peak RSS (agent and sandboxes, one process)", Value: mb(r.PeakRSSBytes),
			Target: fmt.Sprintf("<= %d MB", TargetPeakRSSBytes>>20), Met: met(r.PeakRSSBytes > 0 && r.PeakRSSBytes <= TargetPeakRSSBytes)})
		return rows
	}
	rows = append(rows, Row{Metric: "peak RSS (agent process)", Value: mb(r.PeakRSSBytes),
		Target: fmt.Sprintf("<= %d MB", TargetPeakRSSBytes>>20), Met: met(r.PeakRSSBytes > 0 && r.PeakRSSBytes <= TargetPeakRSSBytes)})
	if r.SandboxPeakRSSBytes > 0 {
		rows = append(rows, Row{Metric: "peak RSS (sandbox process, for reference)", Value: mb(r.SandboxPeakRSSBytes)})
	}
	return rows
}
