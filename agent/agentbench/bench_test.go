package agentbench

import (
	"context"
	"net/http"
	"net/http/httptest"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/fhirsync/fhirsync/logs"
)

func TestQuantiles(t *testing.T) {
	t.Parallel()
	ms := func(xs ...int) []time.Duration {
		out := make([]time.Duration, len(xs))
		for i, x := range xs {
			out[i] = time.Duration(x) * time.Millisecond
		}
		return out
	}
	hundred := make([]int, 100)
	for i := range hundred {
		hundred[i] = 100 - i // 100..1 ms, unsorted
	}
	tests := []struct {
		name          string
		lat           []time.Duration
		p50, p99, max float64
	}{
		{name: "none written", lat: nil},
		{name: "one", lat: ms(7), p50: .007, p99: .007, max: .007},
		{name: "hundred, nearest rank", lat: ms(hundred...), p50: .050, p99: .099, max: .100},
		{name: "an outlier only moves p99 and max", lat: ms(10, 10, 10, 10, 2000), p50: .010, p99: 2, max: 2},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			l := quantiles(logs.FHIRToCRM, 200, 100, tt.lat)
			if l.Written != len(tt.lat) || l.Offered != 100 {
				t.Errorf("written %d offered %d", l.Written, l.Offered)
			}
			if l.P50 != tt.p50 || l.P99 != tt.p99 || l.Max != tt.max {
				t.Errorf("p50 %v p99 %v max %v, want %v %v %v", l.P50, l.P99, l.Max, tt.p50, tt.p99, tt.max)
			}
		})
	}
}

func TestRowsCompareWithTargets(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name    string
		res     Result
		metric  string
		wantMet string
	}{
		{name: "fast enough", res: Result{Throughput: []Throughput{{Direction: logs.FHIRToCRM, Records: 10, Sent: 10, RecordsPerSecond: 1500}}},
			metric: "FHIR→CRM sustained", wantMet: "yes"},
		{name: "too slow", res: Result{Throughput: []Throughput{{Direction: logs.CRMToFHIR, Records: 10, Sent: 10, RecordsPerSecond: 999}}},
			metric: "CRM→FHIR sustained", wantMet: "no"},
		{name: "fast but not all sent", res: Result{Throughput: []Throughput{{Direction: logs.FHIRToCRM, Records: 10, Sent: 9, RecordsPerSecond: 5000}}},
			metric: "FHIR→CRM sustained", wantMet: "no"},
		{name: "p99 within a second", res: Result{Latency: []Latency{{Direction: logs.FHIRToCRM, OfferedRate: 200, Offered: 5, Written: 5, P99: .9}}},
			metric: "FHIR→CRM latency p99", wantMet: "yes"},
		{name: "p99 over a second", res: Result{Latency: []Latency{{Direction: logs.FHIRToCRM, OfferedRate: 200, Offered: 5, Written: 5, P99: 1.2}}},
			metric: "FHIR→CRM latency p99", wantMet: "no"},
		{name: "a write never reached the target", res: Result{Latency: []Latency{{Direction: logs.CRMToFHIR, OfferedRate: 200, Offered: 5, Written: 4, P99: .1}}},
			metric: "CRM→FHIR latency p99", wantMet: "no"},
		{name: "budget used", res: Result{Limited: &Limited{Requests: 600, WindowSeconds: 10, FullWindows: 3, BudgetUsed: .93}},
			metric: "CRM budget used", wantMet: "yes"},
		{name: "budget unused", res: Result{Limited: &Limited{Requests: 600, WindowSeconds: 10, FullWindows: 3, BudgetUsed: .5}},
			metric: "CRM budget used", wantMet: "no"},
		{name: "no full window is no evidence", res: Result{Limited: &Limited{Requests: 600, WindowSeconds: 10, BudgetUsed: 1}},
			metric: "CRM budget used", wantMet: "no"},
		{name: "a record lost", res: Result{Limited: &Limited{Lost: 1}}, metric: "records lost to 429", wantMet: "no"},
		{name: "small enough", res: Result{PeakRSSBytes: 150 << 20}, metric: "peak RSS", wantMet: "yes"},
		{name: "too big", res: Result{PeakRSSBytes: 201 << 20}, metric: "peak RSS", wantMet: "no"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			for _, r := range tt.res.Rows() {
				if strings.HasPrefix(r.Metric, tt.metric) {
					if r.Met != tt.wantMet {
						t.Errorf("%s: met = %q, want %q (value %s)", r.Metric, r.Met, tt.wantMet, r.Value)
					}
					return
				}
			}
			t.Errorf("no row %q in %+v", tt.metric, tt.res.Rows())
		})
	}
}

func TestTargetWritesNoteOnlyTheAgentsSuccessfulWrites(t *testing.T) {
	t.Parallel()
	status := http.StatusOK
	h := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { w.WriteHeader(status) })
	w := newTargetWrites()
	fhirSrv := httptest.NewServer(w.fhirHandler(h))
	defer fhirSrv.Close()
	crmSrv := httptest.NewServer(w.crmHandler(h))
	defer crmSrv.Close()
	do := func(method, url, token string) {
		t.Helper()
		req, err := http.NewRequestWithContext(context.Background(), method, url, nil)
		if err != nil {
			t.Fatal(err)
		}
		if token != "" {
			req.Header.Set("Authorization", "Bearer "+token)
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
	}
	do(http.MethodPut, fhirSrv.URL+"/Patient/p1", "")
	do(http.MethodPost, fhirSrv.URL+"/Patient", "")
	do(http.MethodPut, fhirSrv.URL+"/Patient/p2/_history/1", "")
	do(http.MethodPatch, crmSrv.URL+"/api/data/v9.2/contacts(msemr_azurefhirid='p1')", agentToken)
	do(http.MethodPatch, crmSrv.URL+"/api/data/v9.2/contacts(msemr_azurefhirid='p3')", humanToken)
	status = http.StatusTooManyRequests
	do(http.MethodPut, fhirSrv.URL+"/Patient/p4", "")
	do(http.MethodPatch, crmSrv.URL+"/api/data/v9.2/contacts(msemr_azurefhirid='p4')", agentToken)

	tests := []struct {
		name     string
		fhirSide bool
		id       string
		want     bool
	}{
		{name: "agent's Patient update", fhirSide: true, id: "p1", want: true},
		{name: "a create is not an update", fhirSide: true, id: "", want: false},
		{name: "a nested path is not a Patient update", fhirSide: true, id: "p2", want: false},
		{name: "agent's contact upsert by FHIR id", id: "p1", want: true},
		{name: "a person's write is not the agent's", id: "p3", want: false},
		{name: "a throttled FHIR write did not happen", fhirSide: true, id: "p4", want: false},
		{name: "a throttled CRM write did not happen", id: "p4", want: false},
	}
	fhirWrites, crmWrites := w.snapshot()
	for _, tt := range tests {
		m := crmWrites
		if tt.fhirSide {
			m = fhirWrites
		}
		if _, got := m[tt.id]; got != tt.want {
			t.Errorf("%s: noted = %v, want %v", tt.name, got, tt.want)
		}
	}
}

func TestMachineCPUReadsStealFromProcStat(t *testing.T) {
	t.Parallel()
	if _, err := os.Stat("/proc/stat"); err != nil {
		if steal, total, ok := machineCPU(); ok || steal != 0 || total != 0 {
			t.Fatalf("without /proc/stat machineCPU = %d, %d, %v; want nothing", steal, total, ok)
		}
		return
	}
	steal, total, ok := machineCPU()
	if !ok || total == 0 || steal > total {
		t.Fatalf("machineCPU = steal %d, total %d, ok %v", steal, total, ok)
	}
	_, later, _ := machineCPU()
	if later < total {
		t.Fatalf("total CPU time went back from %d to %d", total, later)
	}
}
