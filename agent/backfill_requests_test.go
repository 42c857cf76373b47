package agent_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"gorm.io/gorm"

	"github.com/fhirsync/fhirsync/agent"
	"github.com/fhirsync/fhirsync/agent/crm"
	"github.com/fhirsync/fhirsync/logs"
	"github.com/fhirsync/fhirsync/queues"
	"github.com/fhirsync/fhirsync/sandbox/crmserver"
	"github.com/fhirsync/fhirsync/sandbox/fhirserver"
	"github.com/fhirsync/fhirsync/storage/storagetest"
)

// requestKinds counts the CRM requests an agent makes by kind — a $batch
// by what it holds, a query by its entity set — so that a figure of
// requests per record can be taken apart.
type requestKinds struct {
	next http.RoundTripper
	mu   sync.Mutex
	n    map[string]int
	ops  map[string]int
}

// batchOpLine is the request line of one operation inside a $batch body.
var batchOpLine = regexp.MustCompile(`(?m)^(GET|POST|PATCH|PUT|DELETE) (\S+) HTTP/1\.1`)

func (k *requestKinds) RoundTrip(r *http.Request) (*http.Response, error) {
	kind := r.Method + " " + setOf(r.URL.Path)
	if strings.HasSuffix(r.URL.Path, "$batch") && r.Body != nil {
		body, err := io.ReadAll(r.Body)
		if err != nil {
			return nil, err
		}
		r.Body = io.NopCloser(bytes.NewReader(body))
		var inside []string
		for _, m := range batchOpLine.FindAllStringSubmatch(string(body), -1) {
			path, _, _ := strings.Cut(m[2], "?")
			inside = append(inside, m[1]+" "+setOf(path))
		}
		slices.Sort(inside)
		kind = "$batch of " + strings.Join(slices.Compact(slices.Clone(inside)), ", ")
		k.mu.Lock()
		for _, op := range inside {
			k.ops[op]++
		}
		k.mu.Unlock()
	} else if strings.Contains(r.URL.RawQuery, "Microsoft.Dynamics.CRM.In") {
		kind += " (In query)"
	}
	k.mu.Lock()
	k.n[kind]++
	k.mu.Unlock()
	return k.next.RoundTrip(r)
}

// setOf is the entity set (or action) a Web API path names.
func setOf(path string) string {
	i := strings.LastIndexByte(path, '/')
	s := path[i+1:]
	if j := strings.IndexByte(s, '('); j >= 0 {
		s = s[:j]
	}
	return s
}

func (k *requestKinds) reset() {
	k.mu.Lock()
	defer k.mu.Unlock()
	k.n, k.ops = map[string]int{}, map[string]int{}
}

// report lists the kinds, most requests first, per record.
func (k *requestKinds) report(records int) (total int, lines []string) {
	k.mu.Lock()
	defer k.mu.Unlock()
	type kv struct {
		k string
		n int
	}
	var all []kv
	for name, n := range k.n {
		all = append(all, kv{name, n})
		total += n
	}
	slices.SortFunc(all, func(a, b kv) int { return b.n - a.n })
	for _, x := range all {
		lines = append(lines, fmt.Sprintf("%6d  %.4f/record  %s", x.n, float64(x.n)/float64(records), x.k))
	}
	var ops []string
	for name, n := range k.ops {
		ops = append(ops, fmt.Sprintf("%s %d", name, n))
	}
	slices.Sort(ops)
	lines = append(lines, "operations inside $batch requests: "+strings.Join(ops, ", "))
	return total, lines
}

// TestBackfillCRMRequestsPerRecord backfills patients into an empty CRM
// through an agent running with its defaults and counts its CRM requests
// by kind: a backfill reads and writes many records per request, at most
// agentbench.TargetBackfillRequestsPerRecord (0.02) requests per record.
// FHIRSYNC_BACKFILL_REQUESTS_RECORDS sizes it (default 2,000).
func TestBackfillCRMRequestsPerRecord(t *testing.T) {
	if testing.Short() {
		t.Skip("syncs 2,000 records; skipped with -short")
	}
	t.Parallel()
	records := 2000
	if v := os.Getenv("FHIRSYNC_BACKFILL_REQUESTS_RECORDS"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < 100 {
			t.Fatalf("FHIRSYNC_BACKFILL_REQUESTS_RECORDS=%q: want a number of at least 100", v)
		}
		records = n
	}
	storagetest.Each(t, func(t *testing.T, db *gorm.DB) {
		ctx := context.Background()
		e := newBackfillEnv(t, db, fhirserver.Options{Seed: bfSeed, Patients: records})
		kinds := &requestKinds{next: http.DefaultTransport}
		kinds.reset()
		agentCRM, err := crm.New(crm.Config{URL: e.crmAddr, HTTPClient: &http.Client{Transport: kinds}})
		if err != nil {
			t.Fatal(err)
		}
		ls, err := logs.New(db, logs.Config{}, nil)
		if err != nil {
			t.Fatal(err)
		}
		a, err := agent.New(agent.Config{RetryBase: 100 * time.Millisecond, RetryMax: time.Second},
			agent.Deps{DB: db, Maps: e.maps, FHIR: e.fhir, CRM: agentCRM, Logs: ls, FHIRChanges: e.fhirQ, CRMChanges: e.crmQ})
		if err != nil {
			t.Fatal(err)
		}
		runCtx, cancel := context.WithCancel(ctx)
		done := make(chan error, 1)
		go func() { done <- a.Run(runCtx) }()
		defer func() {
			cancel()
			if err := <-done; err != nil && !errors.Is(err, context.Canceled) {
				t.Errorf("agent: %v", err)
			}
		}()
		// decided waits until want records were sent to the CRM: a
		// record whose write failed on the way (and is retried) has a
		// decision of its own before the one that sends it.
		decided := func(want int64) {
			t.Helper()
			deadline := time.Now().Add(10 * time.Minute)
			for {
				c, err := ls.Counts(ctx, logs.Filter{Direction: logs.FHIRToCRM}, 0)
				if err != nil {
					t.Fatal(err)
				}
				if c.ByOutcome[logs.OutcomeSent] >= want {
					return
				}
				if time.Now().After(deadline) {
					t.Fatalf("FHIR to CRM decisions %v, reasons %v; want %d sent", c.ByOutcome, c.ByReason, want)
				}
				time.Sleep(100 * time.Millisecond)
			}
		}
		// The organizations and practitioners first, so that the
		// patients' references resolve; they are not counted.
		var before int64
		for _, m := range []string{"organization-account", "practitioner-contact"} {
			res, err := agent.Backfill(ctx, agent.BackfillOptions{Map: m, Side: queues.SideFHIR, Fresh: true}, e.deps)
			if err != nil {
				t.Fatal(err)
			}
			before += int64(res.Total())
		}
		decided(before)
		kinds.reset()
		acc0 := accounts(e.crmSrv, []string{crmserver.DefaultUserID})
		start := time.Now()
		res, err := agent.Backfill(ctx, agent.BackfillOptions{Map: "patient-contact", Side: queues.SideFHIR, Fresh: true}, e.deps)
		if err != nil {
			t.Fatal(err)
		}
		if res.FHIR != records {
			t.Fatalf("the backfill enqueued %d notices, want %d", res.FHIR, records)
		}
		decided(before + int64(records))
		took := time.Since(start)
		c, err := ls.Counts(ctx, logs.Filter{Direction: logs.FHIRToCRM}, 0)
		if err != nil {
			t.Fatal(err)
		}
		if n := e.crmSrv.Count("contact"); n < records {
			t.Errorf("the CRM holds %d contacts after %d patients were backfilled", n, records)
		}
		t.Logf("FHIR to CRM decisions by outcome %v, by reason %v", c.ByOutcome, c.ByReason)
		total, lines := kinds.report(records)
		perRecord := float64(total) / float64(records)
		acc1 := accounts(e.crmSrv, []string{crmserver.DefaultUserID})
		t.Logf("%d patients backfilled in %s (%.0f records/s): %d CRM requests, %.4f per record; by the sandbox's accounting %d requests, %d operations, %.1f ms execution time per record\n%s",
			records, took.Round(time.Millisecond), float64(records)/took.Seconds(), total, perRecord,
			acc1.Requests-acc0.Requests, acc1.Operations-acc0.Operations,
			float64((acc1.ExecutionTime-acc0.ExecutionTime).Microseconds())/1000/float64(records), strings.Join(lines, "\n"))
		if perRecord > 0.02 {
			t.Errorf("the backfill made %.4f CRM requests per record, want at most 0.02", perRecord)
		}
	})
}
