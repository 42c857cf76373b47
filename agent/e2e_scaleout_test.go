package agent_test

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/fhirsync/fhirsync/agent/fhir"
	"github.com/fhirsync/fhirsync/agent/internal/agenttest"
	"github.com/fhirsync/fhirsync/storage"
	"gorm.io/gorm"
)

// historyCall is one type-level _history request (a poll, or a page of
// one) the FHIR server answered. Other requests — reads, instance
// history, searches such as the device streams' _id search — are not
// polls and are not recorded.
type historyCall struct {
	proc       int // which fhirsync process asked
	typ        string
	start, end time.Time
	// holder is the feed's lease holder when the request arrived ("" when
	// nobody held a live lease); abandoned is set when nobody held it and
	// the asking process had given the request up (it was stopping), so
	// that it may have released the lease after asking.
	holder    string
	abandoned bool
}

// historyLog records the _history requests of the processes, each of which
// reaches the FHIR server through its own listener, with the lease holder
// of the feed read from the database as each request arrives.
type historyLog struct {
	db    *gorm.DB
	mu    sync.Mutex
	calls []historyCall
}

func (h *historyLog) handler(proc int, next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		typ, rest, _ := strings.Cut(strings.TrimPrefix(r.URL.Path, "/"), "/")
		if rest != "_history" || r.Method != http.MethodGet {
			next.ServeHTTP(w, r)
			return
		}
		c := historyCall{proc: proc, typ: typ, start: time.Now()}
		// The poller takes the lease before each request and gives it up
		// only after the poll returns, so the asking process holds it now.
		var row struct{ Holder string }
		if err := h.db.Table("leases").Select("holder").
			Where("name = ? AND expires_at > ?", fhir.FeedName(typ), time.Now().UTC()).Take(&row).Error; err != nil && !errors.Is(err, gorm.ErrRecordNotFound) {
			c.holder = "lookup failed: " + err.Error()
		} else {
			c.holder = row.Holder
		}
		next.ServeHTTP(w, r)
		c.end = time.Now()
		if c.holder == "" {
			// A stopping process cancels its open request, returns from
			// the poll and releases the lease, possibly before the lookup
			// above; then the server sees the connection close.
			select {
			case <-r.Context().Done():
				c.abandoned = true
			case <-time.After(2 * time.Second):
			}
		}
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
	hist := historyLog{db: f.db}
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
	// From here the processes stop one by one; each lease they release may
	// pass to one still running for a last poll.
	shutdownAt := time.Now()
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
			// Until the shutdown: the stopped process, then one other.
			var running []int
			for _, c := range calls {
				if c.start.Before(shutdownAt) && (len(running) == 0 || running[len(running)-1] != c.proc) {
					running = append(running, c.proc)
				}
			}
			if len(running) != 2 || running[0] != stopped {
				t.Errorf("Patient history pollers before the shutdown %v, want process %d then one other after it stopped", running, stopped)
			} else if after := calls[len(calls)-1]; after.proc == stopped || after.start.Before(stoppedAt) {
				t.Errorf("the Patient feed was not taken over after process %d stopped", stopped)
			}
		}
	}
	// The leases agree: one holder per feed in each sample, and it is the
	// process the FHIR server saw polling.
	procOf := func(holder string) int {
		for suffix, i := range holders {
			if strings.HasSuffix(holder, suffix) {
				return i
			}
		}
		return -1
	}
	changes := map[string][]int{}
	for _, s := range samples {
		for name, holder := range s {
			if holder == "" {
				continue // released by a process that stopped
			}
			proc := procOf(holder)
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
	// Every poll was made by the lease's holder at the time: the sampled
	// holders alone cannot tell, as a process may take a lease over, poll
	// and stop between two samples (when the last processes stop).
	for _, typ := range types {
		unsampled := map[int]bool{}
		for _, c := range hist.byType()[typ] {
			if c.abandoned {
				continue
			}
			if p := procOf(c.holder); p != c.proc {
				t.Errorf("%s history: process %d polled at %s while the lease was held by %q (process %d)",
					typ, c.proc, c.start.Format("15:04:05.000"), c.holder, p)
				continue
			}
			if !slices.Contains(changes[fhir.FeedName(typ)], c.proc) {
				unsampled[c.proc] = true
			}
		}
		for p := range unsampled {
			t.Logf("lease %s: process %d polled holding it, for less than a sampling interval (sampled holders %v)",
				fhir.FeedName(typ), p, changes[fhir.FeedName(typ)])
		}
	}

	f.checkContacts(t)
	f.checkDecisions(t)
}
