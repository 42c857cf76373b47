package agent_test

import (
	"context"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"net/http/httptest"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"gorm.io/gorm"

	"github.com/fhirsync/fhirsync/agent/crm"
	"github.com/fhirsync/fhirsync/agent/fhir"
	"github.com/fhirsync/fhirsync/agent/internal/agenttest"
	"github.com/fhirsync/fhirsync/logs"
	"github.com/fhirsync/fhirsync/maps"
	"github.com/fhirsync/fhirsync/queues/embedded"
	"github.com/fhirsync/fhirsync/sandbox/crmserver"
	"github.com/fhirsync/fhirsync/sandbox/fhirserver"
	"github.com/fhirsync/fhirsync/sandbox/synth"
	"github.com/fhirsync/fhirsync/storage"
	"github.com/fhirsync/fhirsync/storage/storagetest"
)

// logsKeySecret is the sync log's key secret, shared by the test and the
// fhirsync processes it starts.
const logsKeySecret = "ZTJlLXRlc3Qta2V5LXNlY3JldA=="

// fleet is a database, the sandbox FHIR server and the sandbox CRM held by
// the test process, so they outlive the `fhirsync serve` children the test
// starts, kills and restarts against them.
type fleet struct {
	url      string
	db       *gorm.DB
	fhirSrv  *fhirserver.Server
	fhirURL  string
	crmSrv   *crmserver.Server
	crmURL   string
	crmHuman *crm.Client
	fhir     *fhir.Client
	logs     *logs.Store
	fhirQ    *embedded.Queue
	bin      string
	patients int // seeded patients
	// lateIDs are patients registered in FHIR during the test; they must
	// reach the CRM too.
	lateIDs []string
}

func newFleet(t *testing.T, dialect storage.Dialect, patients int) *fleet {
	t.Helper()
	return newFleetWith(t, dialect, patients, fleetOptions{})
}

// fleetOptions change how newFleetWith builds the fleet.
type fleetOptions struct {
	// fhirOnDisk keeps the sandbox FHIR server's store in a SQLite file in
	// a temporary directory (fhirserver.Options.Path) instead of in memory,
	// for runs too large to hold every version of every resource in the
	// test process.
	fhirOnDisk bool
}

func newFleetWith(t *testing.T, dialect storage.Dialect, patients int, o fleetOptions) *fleet {
	t.Helper()
	ctx := context.Background()
	f := &fleet{url: storagetest.URL(t, dialect), patients: patients}
	var err error
	if f.db, err = storage.Open(ctx, f.url, storage.Options{}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = storage.Close(f.db) })
	if _, err := storage.Migrate(ctx, f.db); err != nil {
		t.Fatal(err)
	}
	// The same queue the children open (cmd/fhirsync: embedded, this name).
	if f.fhirQ, err = embedded.New(f.db, "fhir-changes", embedded.Options{MaxDeliveryCount: 50}); err != nil {
		t.Fatal(err)
	}
	fo := fhirserver.Options{Seed: 11, Patients: patients}
	if o.fhirOnDisk {
		fo.Path = filepath.Join(t.TempDir(), "fhirserver.db")
	}
	if f.fhirSrv, err = fhirserver.New(fo); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.fhirSrv.Close() })
	fhirHTTP := httptest.NewServer(f.fhirSrv)
	t.Cleanup(fhirHTTP.Close)
	f.fhirURL = fhirHTTP.URL
	if f.crmSrv, err = crmserver.New(crmserver.Options{Tokens: map[string]string{"agent-token": agentUser, "human-token": humanUser,
		// Further application users of the agent, for runs with several.
		"agent-token-2": agentUser2, "agent-token-3": agentUser3}}); err != nil {
		t.Fatal(err)
	}
	crmHTTP := httptest.NewServer(f.crmSrv)
	t.Cleanup(crmHTTP.Close)
	f.crmURL = crmHTTP.URL
	if f.crmHuman, err = crm.New(crm.Config{URL: crmHTTP.URL, Auth: crm.AuthBearer, Token: "human-token"}); err != nil {
		t.Fatal(err)
	}
	if f.fhir, err = fhir.New(fhir.Config{BaseURL: fhirHTTP.URL}); err != nil {
		t.Fatal(err)
	}
	if f.logs, err = logs.New(f.db, logs.Config{KeySecret: logsKeySecret}, nil); err != nil {
		t.Fatal(err)
	}
	ms, err := maps.New(f.db, maps.Options{Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatal(err)
	}
	publishStarter(t, ms, nil)
	f.bin = agenttest.Build(t, t.TempDir())
	return f
}

// env is the configuration of a `fhirsync serve` child, plus extra
// variables as name, value pairs.
func (f *fleet) env(t *testing.T, extra ...string) map[string]string {
	m := map[string]string{
		"FHIRSYNC_DATA_DIR":           t.TempDir(),
		"FHIRSYNC_DATABASE_URL":       f.url,
		"FHIRSYNC_FHIR_BASE_URL":      f.fhirURL,
		"FHIRSYNC_CRM_BASE_URL":       f.crmURL,
		"FHIRSYNC_CRM_AUTH_METHOD":    "bearer",
		"FHIRSYNC_CRM_AUTH_TOKEN":     "agent-token",
		"FHIRSYNC_AGENT_CRM_USER_ID":  agentUser,
		"FHIRSYNC_LOGS_KEY_SECRET":    logsKeySecret,
		"FHIRSYNC_LOG_LEVEL":          "warn",
		"FHIRSYNC_SHUTDOWN_TIMEOUT":   "10s",
		"FHIRSYNC_AGENT_MAX_ATTEMPTS": "10",
	}
	for i := 0; i+1 < len(extra); i += 2 {
		m[extra[i]] = extra[i+1]
	}
	return m
}

// enqueueHistory reads the FHIR server's whole history of typ, as the
// history feed does, and puts a notice per change on the agent's queue.
func (f *fleet) enqueueHistory(t *testing.T, typ string) int {
	t.Helper()
	p, err := fhir.NewPoller(fhir.PollerConfig{Client: f.fhir, DB: f.db, Queue: f.fhirQ,
		Types: []string{typ}, Holder: "test-feed", PageSize: 500})
	if err != nil {
		t.Fatal(err)
	}
	res, err := p.Poll(context.Background(), typ)
	if err != nil || !res.Polled {
		t.Fatalf("polling %s history: %+v, %v", typ, res, err)
	}
	return res.Sent
}

// drained waits until the agent's queue holds nothing active or
// scheduled, or fails the test after d.
func (f *fleet) drained(t *testing.T, d time.Duration) {
	t.Helper()
	deadline := time.Now().Add(d)
	for {
		dep, err := f.fhirQ.Depth(context.Background())
		if err == nil && dep.Active == 0 && dep.Scheduled == 0 {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("the queue did not drain within %s: depth %+v, %v; CRM contacts %d; decisions:\n%s", d, dep, err, f.crmSrv.Count("contact"), f.summary(t))
		}
		time.Sleep(250 * time.Millisecond)
	}
}

// summary describes the decisions so far: counts by outcome and reason,
// with a few examples of each kind of failure.
func (f *fleet) summary(t *testing.T) string {
	t.Helper()
	counts := map[string]int{}
	examples := map[string][]string{}
	after := ""
	for {
		page, err := f.logs.Search(context.Background(), logs.Filter{}, after, logs.MaxPageSize)
		if err != nil {
			return err.Error()
		}
		for _, d := range page.Decisions {
			k := string(d.Direction) + " " + string(d.Outcome) + "/" + string(d.Reason)
			counts[k]++
			if d.Outcome != logs.OutcomeSent && d.Outcome != logs.OutcomeSkipped && len(examples[k]) < 3 {
				var classes []string
				for _, a := range d.Attempts {
					classes = append(classes, a.ErrorClass)
				}
				examples[k] = append(examples[k], fmt.Sprintf("%s: %s attempts %v", d.MessageID, d.Message, classes))
			}
		}
		if page.Next == "" {
			break
		}
		after = page.Next
	}
	var b strings.Builder
	for k, n := range counts {
		fmt.Fprintf(&b, "  %s: %d\n", k, n)
		for _, e := range examples[k] {
			fmt.Fprintf(&b, "    e.g. %s\n", e)
		}
	}
	return b.String()
}

// checkContacts asserts the CRM holds exactly one contact per patient and
// per practitioner, and nothing else.
func (f *fleet) checkContacts(t *testing.T) {
	t.Helper()
	perFHIR := map[string]int{}
	total := 0
	err := f.crmHuman.RetrieveMultiple(context.Background(), "contacts",
		crm.Query{Select: []string{"contactid", "msemr_azurefhirid"}}, func(r crm.Record) error {
			total++
			perFHIR[r.String("msemr_azurefhirid")]++
			return nil
		})
	if err != nil {
		t.Fatalf("listing contacts: %v", err)
	}
	g := synth.New(11)
	ids := f.patientIDs()
	want := len(ids) + g.Practitioners
	if total != want {
		t.Errorf("the CRM holds %d contacts, want %d (%d patients + %d practitioners)", total, want, len(ids), g.Practitioners)
	}
	var missing, dup []string
	for _, id := range ids {
		switch n := perFHIR[id]; {
		case n == 0:
			missing = append(missing, id)
		case n > 1:
			dup = append(dup, id+"×"+strconv.Itoa(n))
		}
	}
	for i := range g.Practitioners {
		if n := perFHIR[synth.PractitionerID(i)]; n != 1 {
			dup = append(dup, synth.PractitionerID(i)+"×"+strconv.Itoa(n))
		}
	}
	if len(missing) > 0 || len(dup) > 0 {
		t.Errorf("%d patients without a contact (first: %v); records not held exactly once: %v", len(missing), head(missing, 5), head(dup, 10))
	}
	if n := f.crmSrv.Count("account"); n != g.Organizations {
		t.Errorf("the CRM holds %d accounts, want the %d organizations", n, g.Organizations)
	}
}

// checkDecisions asserts every message that got a decision ended in a
// terminal one (sent or skipped), none was dead-lettered, and every patient
// was synced. It returns the decisions per outcome.
func (f *fleet) checkDecisions(t *testing.T) map[logs.Outcome]int {
	t.Helper()
	ctx := context.Background()
	outcomes := map[logs.Outcome]int{}
	terminal := map[string]bool{}
	seen := map[string]bool{}
	synced := map[string]bool{}
	var dead []string
	after := ""
	for {
		page, err := f.logs.Search(ctx, logs.Filter{Direction: logs.FHIRToCRM}, after, logs.MaxPageSize)
		if err != nil {
			t.Fatal(err)
		}
		for _, d := range page.Decisions {
			outcomes[d.Outcome]++
			seen[d.MessageID] = true
			switch d.Outcome {
			case logs.OutcomeSent, logs.OutcomeSkipped:
				terminal[d.MessageID] = true
				if d.Source.Type == "Patient" && (d.Reason == "created" || d.Reason == "updated" || d.Reason == "unchanged") {
					synced[d.Source.ID] = true
				}
			case logs.OutcomeDeadLettered:
				dead = append(dead, d.MessageID+" "+string(d.Reason)+": "+d.Message)
			}
		}
		if page.Next == "" {
			break
		}
		after = page.Next
	}
	var open []string
	for id := range seen {
		if !terminal[id] {
			open = append(open, id)
		}
	}
	if len(open) > 0 {
		t.Errorf("%d messages have no terminal decision (first: %v)", len(open), head(open, 5))
	}
	if len(dead) > 0 {
		t.Errorf("%d dead-lettered decisions (first: %v)", len(dead), head(dead, 5))
	}
	var unsynced []string
	for _, id := range f.patientIDs() {
		if !synced[id] {
			unsynced = append(unsynced, id)
		}
	}
	if len(unsynced) > 0 {
		t.Errorf("%d patients without a created, updated or unchanged decision (first: %v)", len(unsynced), head(unsynced, 5))
	}
	if dep, err := f.fhirQ.Depth(ctx); err != nil || dep.DeadLetter != 0 {
		t.Errorf("dead-letter depth = %+v, %v; want 0", dep, err)
	}
	return outcomes
}

// patientIDs lists every patient the CRM must hold.
func (f *fleet) patientIDs() []string {
	ids := make([]string, 0, f.patients+len(f.lateIDs))
	for i := range f.patients {
		ids = append(ids, synth.PatientID(i))
	}
	return append(ids, f.lateIDs...)
}

func head(s []string, n int) []string { return s[:min(n, len(s))] }

// crashPatients is the size of the crash test's sync (the number).
const crashPatients = 10000

// TestCrashRecovery kills `fhirsync serve` with SIGKILL twenty times at
// random moments of a sync of ten thousand patients, restarting it each
// time; at the end the CRM holds each record exactly once and every
// message ended in a terminal decision.
func TestCrashRecovery(t *testing.T) {
	if testing.Short() {
		t.Skip("the crash test syncs 10,000 records; skipped with -short")
	}
	t.Parallel()
	for _, d := range storagetest.Dialects {
		t.Run(string(d), func(t *testing.T) {
			t.Parallel()
			start := time.Now()
			f := newFleet(t, d, crashPatients)
			t.Logf("%s: sandboxes seeded with %d patients and the binary built in %s", d, crashPatients, time.Since(start).Round(time.Millisecond))
			env := f.env(t, "FHIRSYNC_AGENT_WORKERS", "8")
			p := agenttest.Start(t, f.bin, env)

			// The organizations and practitioners the patients refer to
			// come first, so patients do not wait for them.
			g := synth.New(11)
			for typ, want := range map[string]int{"Organization": g.Organizations, "Practitioner": g.Practitioners} {
				if n := f.enqueueHistory(t, typ); n != want {
					t.Fatalf("the %s history gave %d notices, want %d", typ, n, want)
				}
				f.drained(t, 3*time.Minute)
			}
			t.Logf("%s: reference data synced after %s", d, time.Since(start).Round(time.Millisecond))

			if n := f.enqueueHistory(t, "Patient"); n != crashPatients {
				t.Fatalf("the Patient history gave %d notices, want %d", n, crashPatients)
			}
			rng := rand.New(rand.NewPCG(uint64(time.Now().UnixNano()), 7))
			syncStart := time.Now()
			for kills := 0; kills < 20; kills++ {
				// A random moment: anywhere from just after start-up
				// (maps loading, first receive) to mid-stream.
				time.Sleep(time.Duration(100+rng.IntN(1900)) * time.Millisecond)
				if ok, err := p.Exited(); ok {
					t.Fatalf("fhirsync serve exited on its own (%v):\n%s", err, p.Output())
				}
				dep, err := f.fhirQ.Depth(context.Background())
				if err != nil {
					t.Fatal(err)
				}
				if dep.Active == 0 && dep.Scheduled == 0 {
					t.Fatalf("the sync finished after %d of 20 kills; the kills must fall during the sync", kills)
				}
				p.Kill()
				p = agenttest.Start(t, f.bin, env)
			}
			t.Logf("%s: 20 kills in %s, CRM contacts so far %d", d, time.Since(syncStart).Round(time.Millisecond), f.crmSrv.Count("contact"))
			// Messages locked by a killed process come back after the
			// queue's lock duration (60s).
			f.drained(t, 5*time.Minute)
			if ok, err := p.Exited(); ok {
				t.Fatalf("fhirsync serve exited on its own (%v):\n%s", err, p.Output())
			}
			if err := p.Stop(30 * time.Second); err != nil {
				t.Errorf("stopping: %v\n%s", err, p.Output())
			}
			t.Logf("%s: patients synced %s after the first kill cycle began", d, time.Since(syncStart).Round(time.Millisecond))
			f.checkContacts(t)
			out := f.checkDecisions(t)
			t.Logf("%s: decisions by outcome %v; total %s; by reason:\n%s", d, out, time.Since(start).Round(time.Millisecond), f.summary(t))
		})
	}
}
