package agent_test

import (
	"context"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/fhirsync/fhirsync/agent/fhir"
	"github.com/fhirsync/fhirsync/agent/internal/agenttest"
	"github.com/fhirsync/fhirsync/storage"
)

// historyCall is one _history request the FHIR server answered.
type historyCall struct {
	proc       int // which fhirsync process asked
	typ        string
	start, end time.Time
}

// historyLog records the _history requests of the processes, each of which
// reaches the FHIR server through its own listener.
type historyLog struct {
	mu    sync.Mutex
	calls []historyCall
}

func (h *historyLog) handler(proc int, next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		typ, rest, _ := strings.Cut(strings.TrimPrefix(r.URL.Path, "/"), "/")
		if rest != "_history" {
			next.ServeHTTP(w, r)
			return
		}
		c := historyCall{proc: proc, typ: typ, start: time.Now()}
		next.ServeHTTP(w, r)
		c.end = time.Now()
		h.mu.Lock()
		h.calls = append(h.calls, c)
		h.mu.Unlock()
	})
}

// byType returns each feed's calls in the order they started.
func (h *historyLog) byType() map[string][]historyCall {
	h.mu.Lock()
	defer h.mu.Unlock()
	out := map[string][]historyCall{}
	for _, c := range h.calls {
		out[c.typ] = append(out[c.typ], c)
	}
	for _, cs := range out {
		slicesSortByStart(cs)
	}
	return out
}

func slicesSortByStart(cs []historyCall) {
	for i := 1; i < len(cs); i++ {
		for j := i; j > 0 && cs[j].start.Before(cs[j-1].start); j-- {
			cs[j], cs[j-1] = cs[j-1], cs[j]
		}
	}
}

// scaleOutPatients is the size of the scale-out sync.
const scaleOutPatients = 3000

// TestThreeProcessesOnePostgres runs three `fhirsync serve` processes on
// one PostgreSQL database and the same embedded queues, each with the
// FHIR history feed on. The feeds are polled by one process at a time —
// seen from the FHIR server, where each process has its own listener,
// and from the leases table — also across a hand-over when the polling
// process shuts down; and the CRM holds every record exactly once.
func TestThreeProcessesOnePostgres(t *testing.T) {
	if testing.Short() {
		t.Skip("the scale-out test syncs thousands of records; skipped with -short")
	}
	t.Parallel()
	start := time.Now()
	f := newFleet(t, storage.Postgres, scaleOutPatients)
	var hist historyLog
	types := []string{"Organization", "Practitioner", "Patient"}
	holders := map[string]int{} // lease holder (host:pid) → process
	procs := make([]*agenttest.Process, 3)
	for i := range procs {
		srv := httptest.NewServer(hist.handler(i, f.fhirSrv))
		t.Cleanup(srv.Close)
		procs[i] = agenttest.Start(t, f.bin, f.env(t,
			"FHIRSYNC_FHIR_BASE_URL", srv.URL,
			"FHIRSYNC_AGENT_WORKERS", "4",
			"FHIRSYNC_FEEDS_FHIR_HISTORY_TYPES", strings.Join(types, ","),
			"FHIRSYNC_FEEDS_FHIR_HISTORY_SCHEDULE", "@every 1s"))
		holders[fmt.Sprintf(":%d", procs[i].Pid())] = i
	}

	// Sample the leases while the processes run.
	ctx, stopSampling := context.WithCancel(context.Background())
	var samples []map[string]string
	var sampling sync.WaitGroup
	sampling.Go(func() {
		for ctx.Err() == nil {
			var rows []struct{ Name, Holder string }
			if err := f.db.WithContext(ctx).Table("leases").Select("name, holder").Find(&rows).Error; err == nil {
				s := map[string]string{}
				for _, r := range rows {
					s[r.Name] = r.Holder
				}
				samples = append(samples, s)
			}
			select {
			case <-ctx.Done():
			case <-time.After(200 * time.Millisecond):
			}
		}
	})

	// Midway, the process polling the Patient feed shuts down: another
	// takes the feed over. New patients registered after that reach the
	// CRM through the new poller.
	deadline := time.Now().Add(4 * time.Minute)
	for f.crmSrv.Count("contact") < scaleOutPatients/3 {
		if time.Now().After(deadline) {
			t.Fatalf("the sync did not get going: %d contacts", f.crmSrv.Count("contact"))
		}
		time.Sleep(100 * time.Millisecond)
	}
	first := hist.byType()["Patient"]
	if len(first) == 0 {
		t.Fatal("nobody polled the Patient history")
	}
	stopped := first[0].proc
	if err := procs[stopped].Stop(30 * time.Second); err != nil {
		t.Errorf("stopping process %d: %v\n%s", stopped, err, procs[stopped].Output())
	}
	stoppedAt := time.Now()
	const late = 200
	for i := range late {
		p, err := f.fhir.Create(context.Background(), fhir.Resource{"resourceType": "Patient", "gender": "male",
			"identifier": []any{map[string]any{"system": "urn:fhirsync:test", "value": "late-" + strconv.Itoa(i)}},
			"name":       []any{map[string]any{"use": "official", "family": fmt.Sprintf("Late%03d", i)}}})
		if err != nil {
			t.Fatal(err)
		}
		f.lateIDs = append(f.lateIDs, p.ID())
	}

	deadline = time.Now().Add(6 * time.Minute)
	for f.crmSrv.Count("contact") < len(f.patientIDs())+50 {
		if time.Now().After(deadline) {
			t.Fatalf("the sync did not finish: %d contacts, want %d", f.crmSrv.Count("contact"), len(f.patientIDs())+50)
		}
		time.Sleep(250 * time.Millisecond)
	}
	f.drained(t, 3*time.Minute)
	for i, p := range procs {
		if i == stopped {
			continue
		}
		if ok, err := p.Exited(); ok {
			t.Errorf("process %d exited on its own: %v\n%s", i, err, p.Output())
		}
		if err := p.Stop(30 * time.Second); err != nil {
			t.Errorf("stopping process %d: %v\n%s", i, err, p.Output())
		}
	}
	// Sampling goes on until every process has stopped: a lease may still
	// change hands while the last processes shut down, and a poll made
	// then must be matched by a sampled holder.
	stopSampling()
	sampling.Wait()
	t.Logf("synced %d patients with three processes in %s", len(f.patientIDs()), time.Since(start).Round(time.Millisecond))

	// One poller at a time per feed: the processes' _history requests for
	// a type never interleave — each process's requests form one stretch,
	// and the next process starts after the previous one's last answer.
	for _, typ := range types {
		calls := hist.byType()[typ]
		if len(calls) < 3 {
			t.Errorf("%s history polled %d times, want repeated polls", typ, len(calls))
			continue
		}
		var order []int
		lastEnd := map[int]time.Time{}
		for _, c := range calls {
			if len(order) == 0 || order[len(order)-1] != c.proc {
				for _, p := range order {
					if p == c.proc {
						t.Errorf("%s history: process %d polled again after process %d had taken over (order %v)", typ, c.proc, order[len(order)-1], order)
					}
				}
				if len(order) > 0 && c.start.Before(lastEnd[order[len(order)-1]]) {
					t.Errorf("%s history: process %d polled while process %d's request was still open", typ, c.proc, order[len(order)-1])
				}
				order = append(order, c.proc)
			}
			if c.end.After(lastEnd[c.proc]) {
				lastEnd[c.proc] = c.end
			}
		}
		t.Logf("%s history: %d requests, pollers in turn %v", typ, len(calls), order)
		if typ == "Patient" {
			if len(order) != 2 || order[0] != stopped {
				t.Errorf("Patient history pollers %v, want process %d then one other after it stopped", order, stopped)
			} else if after := calls[len(calls)-1]; after.proc == stopped || after.start.Before(stoppedAt) {
				t.Errorf("the Patient feed was not taken over after process %d stopped", stopped)
			}
		}
	}
	// The leases agree: one holder per feed in each sample, and it is the
	// process the FHIR server saw polling.
	changes := map[string][]int{}
	for _, s := range samples {
		for name, holder := range s {
			if holder == "" {
				continue // released by a process that stopped
			}
			proc := -1
			for suffix, i := range holders {
				if strings.HasSuffix(holder, suffix) {
					proc = i
				}
			}
			if proc < 0 {
				t.Errorf("lease %s held by %q, none of the three processes", name, holder)
				continue
			}
			if h := changes[name]; len(h) == 0 || h[len(h)-1] != proc {
				changes[name] = append(changes[name], proc)
			}
		}
	}
	if len(samples) < 10 {
		t.Errorf("only %d lease samples", len(samples))
	}
	for _, typ := range types {
		seq := changes[fhir.FeedName(typ)]
		var order []int
		for _, c := range hist.byType()[typ] {
			if len(order) == 0 || order[len(order)-1] != c.proc {
				order = append(order, c.proc)
			}
		}
		// Every poller held the lease, in the order they polled. A holder
		// may appear that never polled: a process can take a lease and stop
		// (or lose it) before its first poll, and a holder of less than one
		// sampling interval may be missed only if it never polled either.
		if !subsequence(order, seq) {
			t.Errorf("lease %s holders over time %v, but the FHIR server saw polls from %v", fhir.FeedName(typ), seq, order)
		}
	}

	f.checkContacts(t)
	f.checkDecisions(t)
}

// subsequence reports whether every element of sub appears in seq in the
// same order.
func subsequence(sub, seq []int) bool {
	i := 0
	for _, v := range seq {
		if i < len(sub) && sub[i] == v {
			i++
		}
	}
	return i == len(sub)
}
