package agentbench

import (
	"context"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"reflect"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/fhirsync/fhirsync/logs"
	"github.com/fhirsync/fhirsync/sandbox/crmserver"
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
	limited := func(users int, cost, rate float64, lost int) Result {
		return Result{Limited: []Limited{{Direction: logs.FHIRToCRM, Users: users, CostMultiplier: cost, Requests: 200, ExecutionSeconds: 40,
			WindowSeconds: 10, Concurrent: 52, Records: 100, Steady: true, MeasuredRecords: 80, RecordsPerSecond: rate, Lost: lost}}}
	}
	tests := []struct {
		name    string
		res     Result
		metric  string
		wantMet string
	}{
		{name: "fast enough", res: Result{Throughput: []Throughput{{Direction: logs.FHIRToCRM, Records: 10, Sent: 10, RecordsPerSecond: 3100}}},
			metric: "FHIR→CRM sustained (", wantMet: "yes"},
		{name: "too slow", res: Result{Throughput: []Throughput{{Direction: logs.CRMToFHIR, Records: 10, Sent: 10, RecordsPerSecond: 2999}}},
			metric: "CRM→FHIR sustained (", wantMet: "no"},
		{name: "fast but not all sent", res: Result{Throughput: []Throughput{{Direction: logs.FHIRToCRM, Records: 10, Sent: 9, RecordsPerSecond: 5000}}},
			metric: "FHIR→CRM sustained (", wantMet: "no"},
		{name: "agent CPU within target", res: Result{Throughput: []Throughput{{Direction: logs.FHIRToCRM, Records: 1000, AgentCPUSeconds: .3}}},
			metric: "FHIR→CRM CPU per record, agent process", wantMet: "yes"},
		{name: "agent CPU over target", res: Result{Throughput: []Throughput{{Direction: logs.FHIRToCRM, Records: 1000, AgentCPUSeconds: .4}}},
			metric: "FHIR→CRM CPU per record, agent process", wantMet: "no"},
		{name: "p99 within a second", res: Result{Latency: []Latency{{Direction: logs.FHIRToCRM, OfferedRate: 200, Offered: 5, Written: 5, P99: .9}}},
			metric: "FHIR→CRM latency p99", wantMet: "yes"},
		{name: "p99 over a second", res: Result{Latency: []Latency{{Direction: logs.FHIRToCRM, OfferedRate: 200, Offered: 5, Written: 5, P99: 1.2}}},
			metric: "FHIR→CRM latency p99", wantMet: "no"},
		{name: "a write never reached the target", res: Result{Latency: []Latency{{Direction: logs.CRMToFHIR, OfferedRate: 200, Offered: 5, Written: 4, P99: .1}}},
			metric: "CRM→FHIR latency p99", wantMet: "no"},
		{name: "live stream within its requests", res: Result{Latency: []Latency{{Direction: logs.FHIRToCRM, OfferedRate: 200, CRM: CRMUse{RequestsPerRecord: .2}}}},
			metric: "FHIR→CRM live stream at 200 records/s: CRM requests per record", wantMet: "yes"},
		{name: "live stream over its requests", res: Result{Latency: []Latency{{Direction: logs.FHIRToCRM, OfferedRate: 200, CRM: CRMUse{RequestsPerRecord: .3}}}},
			metric: "FHIR→CRM live stream at 200 records/s: CRM requests per record", wantMet: "no"},
		{name: "backfill within its requests", res: Result{Backfill: &Backfill{Records: 10, CRM: CRMUse{RequestsPerRecord: .02}}},
			metric: "backfill: CRM requests per record", wantMet: "yes"},
		{name: "backfill over its requests", res: Result{Backfill: &Backfill{Records: 10, CRM: CRMUse{RequestsPerRecord: .021}}},
			metric: "backfill: CRM requests per record", wantMet: "no"},
		{name: "three users fast enough under limits", res: limited(3, 1, 1000, 0), metric: "FHIR→CRM with CRM limits, ", wantMet: "yes"},
		{name: "three users too slow under limits", res: limited(3, 1, 900, 0), metric: "FHIR→CRM with CRM limits, ", wantMet: "no"},
		{name: "fast enough but a record lost", res: limited(3, 1, 2000, 1), metric: "FHIR→CRM with CRM limits, ", wantMet: "no"},
		{name: "a run shorter than a window is no evidence", res: Result{Limited: []Limited{{Direction: logs.FHIRToCRM, Users: 3, CostMultiplier: 1,
			Records: 100, MeasuredRecords: 100, RecordsPerSecond: 5000}}}, metric: "FHIR→CRM with CRM limits, ", wantMet: "no"},
		{name: "one user has no target", res: limited(1, 1, 10, 0), metric: "FHIR→CRM with CRM limits, ", wantMet: ""},
		{name: "twice the cost has no target", res: limited(3, 2, 10, 0), metric: "FHIR→CRM with CRM limits, ", wantMet: ""},
		{name: "a record lost to 429", res: limited(1, 1, 10, 1), metric: "FHIR→CRM with CRM limits, 1 user, 1x cost: records lost", wantMet: "no"},
		{name: "small enough", res: Result{PeakRSSBytes: 150 << 20}, metric: "peak RSS", wantMet: "yes"},
		{name: "too big", res: Result{PeakRSSBytes: 151 << 20}, metric: "peak RSS", wantMet: "no"},
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

func TestCRMUsePerRecord(t *testing.T) {
	t.Parallel()
	before := crmserver.Account{Requests: 10, Operations: 100, ExecutionTime: time.Second, Throttled: 1}
	after := crmserver.Account{Requests: 30, Operations: 1100, ExecutionTime: 41 * time.Second, Throttled: 4}
	got := crmUse(before, after, 1000)
	want := CRMUse{RequestsPerRecord: .02, OperationsPerRecord: 1, ExecutionMsPerRecord: 40, Throttled: 3}
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("crmUse = %+v, want %+v", got, want)
	}
}

func TestKindCounterBreaksRequestsDown(t *testing.T) {
	t.Parallel()
	k := newKindCounter(roundTripFunc(func(*http.Request) (*http.Response, error) {
		return &http.Response{StatusCode: http.StatusOK, Body: io.NopCloser(strings.NewReader("")), Header: http.Header{}}, nil
	}))
	root := "http://crm/api/data/v9.2/"
	batch := "--b\r\nContent-Type: application/http\r\n\r\n" +
		"GET " + root + "contacts?$filter=Microsoft.Dynamics.CRM.In(PropertyName='msemr_contact',PropertyValues=['x']) HTTP/1.1\r\n\r\n" +
		"--b\r\nContent-Type: application/http\r\n\r\nPATCH " + root + "contacts(msemr_azurefhirid='p1') HTTP/1.1\r\n\r\n--b--\r\n"
	reqs := []*http.Request{
		httptest.NewRequest(http.MethodGet, root+"contacts(00000000-0000-0000-0000-000000000001)", nil),
		httptest.NewRequest(http.MethodGet, root+"contacts(msemr_azurefhirid='p1')", nil),
		httptest.NewRequest(http.MethodPost, root+"$batch", strings.NewReader(batch)),
	}
	for _, r := range reqs {
		if _, err := k.RoundTrip(r); err != nil {
			t.Fatal(err)
		}
	}
	got := kindsPerRecord(nil, k.snapshot(), 2)
	want := map[string]float64{
		"request: read by primary id, contacts": .5, "op: read by primary id, contacts": .5,
		"request: read by alternate key, contacts": .5, "op: read by alternate key, contacts": .5,
		"request: $batch": .5, "op: In query, contacts": .5, "op: upsert or update, contacts": .5,
	}
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("kinds = %v, want %v", got, want)
	}
}

type roundTripFunc func(*http.Request) (*http.Response, error)

func (f roundTripFunc) RoundTrip(r *http.Request) (*http.Response, error) { return f(r) }

func TestTargetWritesNoteOnlyTheAgentsSuccessfulWrites(t *testing.T) {
	t.Parallel()
	status := http.StatusOK
	answer := ""
	h := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.WriteHeader(status)
		_, _ = w.Write([]byte(answer))
	})
	w := newTargetWrites()
	w.reset()
	fhirSrv := httptest.NewServer(w.fhirHandler(h))
	defer fhirSrv.Close()
	do := func(method, url, body string) {
		t.Helper()
		req, err := http.NewRequestWithContext(context.Background(), method, url, strings.NewReader(body))
		if err != nil {
			t.Fatal(err)
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
	answer = `{"resourceType":"Bundle","type":"batch-response","entry":[{"response":{"status":"200 OK"}},{"response":{"status":"412 Precondition Failed"}},{"response":{"status":"201 Created"}}]}`
	do(http.MethodPost, fhirSrv.URL+"/", `{"resourceType":"Bundle","type":"batch","entry":[{"request":{"method":"PUT","url":"Patient/b1"}},{"request":{"method":"PUT","url":"Patient/b2"}},{"request":{"method":"POST","url":"Patient"}}]}`)
	w.crmWrite(crmserver.Write{Message: "Create", Entity: "contact", InitiatingUserID: agentUser(0), Attributes: map[string]any{"msemr_azurefhirid": "p1"}})
	w.crmWrite(crmserver.Write{Message: "Update", Entity: "contact", InitiatingUserID: agentUser(2), Attributes: map[string]any{"msemr_azurefhirid": "p5"}})
	w.crmWrite(crmserver.Write{Message: "Update", Entity: "contact", InitiatingUserID: humanUser, Attributes: map[string]any{"msemr_azurefhirid": "p3"}})
	w.crmWrite(crmserver.Write{Message: "Create", Entity: "account", InitiatingUserID: agentUser(0), Attributes: map[string]any{"msemr_azurefhirid": "o1"}})
	status = http.StatusTooManyRequests
	do(http.MethodPut, fhirSrv.URL+"/Patient/p4", "")
	do(http.MethodPost, fhirSrv.URL+"/", `{"resourceType":"Bundle","type":"batch","entry":[{"request":{"method":"PUT","url":"Patient/b4"}}]}`)

	tests := []struct {
		name     string
		fhirSide bool
		id       string
		want     bool
	}{
		{name: "agent's Patient update", fhirSide: true, id: "p1", want: true},
		{name: "a create is not an update", fhirSide: true, id: "", want: false},
		{name: "a nested path is not a Patient update", fhirSide: true, id: "p2", want: false},
		{name: "a Patient update in a batch Bundle", fhirSide: true, id: "b1", want: true},
		{name: "a failed entry of a batch Bundle", fhirSide: true, id: "b2", want: false},
		{name: "agent's contact write", id: "p1", want: true},
		{name: "a write by the agent's third user", id: "p5", want: true},
		{name: "a person's write is not the agent's", id: "p3", want: false},
		{name: "another table", id: "o1", want: false},
		{name: "a throttled FHIR write did not happen", fhirSide: true, id: "p4", want: false},
		{name: "a throttled Bundle did not happen", fhirSide: true, id: "b4", want: false},
	}
	fhirWrites, crmWrites := w.take()
	for _, tt := range tests {
		m := crmWrites
		if tt.fhirSide {
			m = fhirWrites
		}
		if _, got := m[tt.id]; got != tt.want {
			t.Errorf("%s: noted = %v, want %v", tt.name, got, tt.want)
		}
	}

	// After take nothing is noted until the next reset.
	status = http.StatusOK
	do(http.MethodPut, fhirSrv.URL+"/Patient/p6", "")
	w.crmWrite(crmserver.Write{Entity: "contact", Message: "Update", InitiatingUserID: agentUser(0), Attributes: map[string]any{"msemr_azurefhirid": "p7"}})
	if f, c := w.snapshot(); len(f) != len(fhirWrites) || len(c) != len(crmWrites) {
		t.Errorf("after take: %d FHIR and %d CRM marks, want the %d and %d taken", len(f), len(c), len(fhirWrites), len(crmWrites))
	}
	w.reset()
	do(http.MethodPut, fhirSrv.URL+"/Patient/p6", "")
	if f, _ := w.snapshot(); len(f) != 1 || f["p6"].IsZero() {
		t.Errorf("after reset: FHIR marks %v, want p6 alone", f)
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

func TestProcessIOReadsProcSelfIO(t *testing.T) {
	t.Parallel()
	const sample = "rchar: 228356027\nwchar: 363842190\nsyscr: 62676\nsyscw: 137670\nread_bytes: 0\nwrite_bytes: 1024\ncancelled_write_bytes: 0\n"
	c, ok := parseProcIO([]byte(sample), nil)
	if !ok || c != (ioCounts{rchar: 228356027, wchar: 363842190, syscr: 62676, syscw: 137670}) {
		t.Fatalf("parseProcIO = %+v, %v", c, ok)
	}
	for _, bad := range []string{"", "rchar: 1\nwchar: 2\nsyscr: 3\n", "rchar: x\nwchar: 2\nsyscr: 3\nsyscw: 4\n"} {
		if c, ok := parseProcIO([]byte(bad), nil); ok {
			t.Errorf("parseProcIO(%q) = %+v, want not ok", bad, c)
		}
	}
	if _, ok := parseProcIO(nil, os.ErrNotExist); ok {
		t.Error("parseProcIO of a missing file is ok")
	}
	if _, err := os.Stat("/proc/self/io"); err != nil {
		return
	}
	before, ok := processIO()
	if !ok {
		t.Fatal("processIO found no /proc/self/io")
	}
	f, err := os.CreateTemp(t.TempDir(), "io")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.Write(make([]byte, 64<<10)); err != nil {
		t.Fatal(err)
	}
	f.Close()
	after, _ := processIO()
	if after.wchar-before.wchar < 64<<10 || after.syscw <= before.syscw {
		t.Errorf("a 64 KiB write moved wchar by %d and syscw by %d", after.wchar-before.wchar, after.syscw-before.syscw)
	}
}

func TestRowsShowIOAndGroupCommits(t *testing.T) {
	t.Parallel()
	res := Result{Throughput: []Throughput{{Direction: logs.CRMToFHIR, Records: 10, AgentCPUSeconds: .01, DecisionsPerCommit: 35.25,
		AgentIO:   &IOUse{ReadKiBPerRecord: 53.4, ReadCallsPerRecord: 14.3, WriteKiBPerRecord: 59.04, WriteCallsPerRecord: 24.3},
		AgentHeap: HeapUse{AllocKiBPerRecord: 121.04, CollectionsPerThousand: 3.25}}}}
	want := map[string]string{
		"CRM→FHIR Go heap allocated per record, bench process":                        "121.0 KiB, 3.2 collections per 1,000 records",
		"CRM→FHIR read and write calls per record, bench process (database and HTTP)": "53.4 KiB in 14.3 reads, 59.0 KiB in 24.3 writes",
		"CRM→FHIR decisions per group commit (mean)":                                  "35.2",
	}
	for _, r := range res.Rows() {
		if v, ok := want[r.Metric]; ok {
			if r.Value != v {
				t.Errorf("%s = %q, want %q", r.Metric, r.Value, v)
			}
			delete(want, r.Metric)
		}
	}
	if len(want) > 0 {
		t.Errorf("rows missing: %v", want)
	}
	res.Throughput[0].AgentIO, res.Throughput[0].DecisionsPerCommit, res.Throughput[0].AgentHeap = nil, 0, HeapUse{}
	for _, r := range res.Rows() {
		if strings.Contains(r.Metric, "read and write calls") || strings.Contains(r.Metric, "group commit") || strings.Contains(r.Metric, "heap") {
			t.Errorf("row %q without the figures", r.Metric)
		}
	}
}

var sink [][]byte

func TestHeapCountsSeeAllocationsAndCollections(t *testing.T) {
	before := heapCounts()
	for range 64 {
		sink = append(sink, make([]byte, 16<<10))
	}
	sink = nil
	runtime.GC()
	after := heapCounts()
	if after.allocBytes-before.allocBytes < 1<<20 {
		t.Errorf("allocating 1 MiB moved the count by %d bytes", after.allocBytes-before.allocBytes)
	}
	if after.cycles <= before.cycles {
		t.Errorf("a collection moved the count from %d to %d", before.cycles, after.cycles)
	}
}

// TestRowsGiveMediansOfRepeatedRuns: with repeated sustained runs the rows
// give, per direction, the median and range of records/s, the agent's CPU
// per record and the heap allocated per record, the targets checked on
// the medians.
func TestRowsGiveMediansOfRepeatedRuns(t *testing.T) {
	t.Parallel()
	run := func(dir logs.Direction, n int, rate, cpuMs, kib float64) Throughput {
		return Throughput{Direction: dir, Run: n, Records: 1000, Sent: 1000, RecordsPerSecond: rate,
			AgentCPUSeconds: cpuMs, AgentHeap: HeapUse{AllocKiBPerRecord: kib}}
	}
	res := Result{Repeats: 4, Throughput: []Throughput{
		run(logs.FHIRToCRM, 1, 3100, 0.30, 100), run(logs.CRMToFHIR, 1, 1500, 0.70, 140),
		run(logs.FHIRToCRM, 2, 2900, 0.40, 102), run(logs.CRMToFHIR, 2, 1700, 0.50, 136),
		run(logs.FHIRToCRM, 3, 3300, 0.31, 101), run(logs.CRMToFHIR, 3, 1600, 0.60, 137),
		run(logs.FHIRToCRM, 4, 3000, 0.33, 103), run(logs.CRMToFHIR, 4, 1400, 0.90, 138),
	}}
	want := map[string][2]string{
		"FHIR→CRM sustained, median of 4 runs":                                {"3050 records/s (2900–3300)", "yes"},
		"FHIR→CRM sustained, median of 4 runs: CPU per record, agent process": {"0.32 ms (0.30–0.40)", "yes"},
		"FHIR→CRM sustained, median of 4 runs: Go heap allocated per record":  {"101.5 KiB (100.0–103.0)", ""},
		"CRM→FHIR sustained, median of 4 runs":                                {"1550 records/s (1400–1700)", "no"},
		"CRM→FHIR sustained, median of 4 runs: CPU per record, agent process": {"0.65 ms (0.50–0.90)", "no"},
		"FHIR→CRM (run 3) sustained (1000 records, no CRM limits)":            {"3300 records/s", "yes"},
	}
	for _, r := range res.Rows() {
		if w, ok := want[r.Metric]; ok {
			if r.Value != w[0] || r.Met != w[1] {
				t.Errorf("%s = %q (met %q), want %q (met %q)", r.Metric, r.Value, r.Met, w[0], w[1])
			}
			delete(want, r.Metric)
		}
	}
	if len(want) > 0 {
		t.Errorf("rows missing: %v", want)
	}
	res.Repeats = 1
	for _, r := range res.Rows() {
		if strings.Contains(r.Metric, "median") {
			t.Errorf("row %q for a single run", r.Metric)
		}
	}
}
