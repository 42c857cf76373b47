package main

import (
	"bytes"
	"context"
	"log/slog"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"gorm.io/gorm"

	"github.com/fhirsync/fhirsync/agent"
	"github.com/fhirsync/fhirsync/logs"
	"github.com/fhirsync/fhirsync/queues"
	"github.com/fhirsync/fhirsync/queues/embedded"
	"github.com/fhirsync/fhirsync/sandbox/crmserver"
	"github.com/fhirsync/fhirsync/sandbox/fhirserver"
	"github.com/fhirsync/fhirsync/sandbox/synth"
	"github.com/fhirsync/fhirsync/storage"
	"github.com/fhirsync/fhirsync/storage/storagetest"
)

// syncSetup is a migrated database with the starter maps published and
// the sandbox endpoints serving synthetic records, as a command sees them
// through its environment.
type syncSetup struct {
	db     *gorm.DB
	getenv func(string) string
}

func newSyncSetup(t *testing.T, d storage.Dialect, patients, contacts int) *syncSetup {
	t.Helper()
	url := storagetest.URL(t, d)
	db := openStarterDB(t, url)
	fs, err := fhirserver.New(fhirserver.Options{Seed: 1, Patients: patients})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { fs.Close() })
	fhirHTTP := httptest.NewServer(fs)
	t.Cleanup(fhirHTTP.Close)
	cs, err := crmserver.New(crmserver.Options{})
	if err != nil {
		t.Fatal(err)
	}
	if err := cs.SeedSynth(synth.New(1), contacts, 1); err != nil {
		t.Fatal(err)
	}
	crmHTTP := httptest.NewServer(cs)
	t.Cleanup(crmHTTP.Close)
	return &syncSetup{db: db, getenv: envFrom(map[string]string{
		"FHIRSYNC_DATA_DIR":          t.TempDir(),
		"FHIRSYNC_DATABASE_URL":      url,
		"FHIRSYNC_FHIR_BASE_URL":     fhirHTTP.URL,
		"FHIRSYNC_CRM_BASE_URL":      crmHTTP.URL,
		"FHIRSYNC_AGENT_CRM_USER_ID": "any",
		"FHIRSYNC_LOG_LEVEL":         "warn",
	})}
}

func (s *syncSetup) run(t *testing.T, args ...string) (stdout, stderr string, code int) {
	t.Helper()
	var out, errb bytes.Buffer
	err := run(context.Background(), args, s.getenv, &out, &errb)
	code = exitCode(err, &errb)
	return out.String(), errb.String(), code
}

func (s *syncSetup) depth(t *testing.T, name string) queues.Depth {
	t.Helper()
	q, err := embedded.New(s.db, name, embedded.Options{})
	if err != nil {
		t.Fatal(err)
	}
	d, err := q.Depth(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	return d
}

func (s *syncSetup) audit(t *testing.T, action string) []logs.AuditEntry {
	t.Helper()
	st, err := logs.New(s.db, logs.Config{}, nil)
	if err != nil {
		t.Fatal(err)
	}
	page, err := st.Audit(context.Background(), logs.AuditFilter{Action: action}, "", 100)
	if err != nil {
		t.Fatal(err)
	}
	return page.Entries
}

func TestBackfillCommand(t *testing.T) {
	t.Parallel()
	for _, d := range storagetest.Dialects {
		t.Run(string(d), func(t *testing.T) {
			t.Parallel()
			s := newSyncSetup(t, d, 7, 4)

			out, errOut, code := s.run(t, "backfill", "--map", "patient-contact", "--dry-run", "--batch", "3")
			if code != 0 {
				t.Fatalf("dry run exit %d: %s", code, errOut)
			}
			if !strings.Contains(out, "would enqueue fhir:Patient/"+synth.PatientID(6)) ||
				!strings.Contains(out, "would enqueue crm:contact/"+synth.New(1).ContactID(3)) ||
				!strings.Contains(out, "7 FHIR notices (fhir-changes), 4 CRM notices (crm-changes) would be enqueued") {
				t.Fatalf("dry run output:\n%s", out)
			}
			if n := s.depth(t, "fhir-changes").Active + s.depth(t, "crm-changes").Active; n != 0 {
				t.Fatalf("a dry run enqueued %d messages", n)
			}

			out, errOut, code = s.run(t, "backfill", "--map", "patient-contact")
			if code != 0 {
				t.Fatalf("exit %d: %s", code, errOut)
			}
			if !strings.Contains(out, "7 FHIR notices (fhir-changes), 4 CRM notices (crm-changes) enqueued") {
				t.Fatalf("output:\n%s", out)
			}
			if f, c := s.depth(t, "fhir-changes").Active, s.depth(t, "crm-changes").Active; f != 7 || c != 4 {
				t.Fatalf("queues hold %d and %d messages, want 7 and 4", f, c)
			}
			entries := s.audit(t, "backfill.map")
			if len(entries) != 1 || !strings.HasPrefix(entries[0].Actor, "cli:") || entries[0].ObjectID != "patient-contact" {
				t.Fatalf("audit = %+v", entries)
			}

			out, _, code = s.run(t, "backfill", "--map", "patient-contact", "--side", "crm")
			if code != 0 || !strings.Contains(out, "0 FHIR notices (fhir-changes), 4 CRM notices") {
				t.Fatalf("--side crm: exit %d\n%s", code, out)
			}

			// Every walk is a stored run; --status lists them, newest first.
			out, errOut, code = s.run(t, "backfill", "--status")
			if code != 0 {
				t.Fatalf("--status exit %d: %s", code, errOut)
			}
			lines := strings.Split(strings.TrimSpace(out), "\n")
			if len(lines) != 3 || !strings.Contains(lines[0], "patient-contact") || !strings.Contains(lines[0], " crm ") ||
				!strings.Contains(lines[0], "done") || !strings.Contains(lines[0], "4 of ?") || !strings.Contains(out, "7 of 7") {
				t.Fatalf("--status printed:\n%s", out)
			}
		})
	}
}

func TestBackfillCommandUsage(t *testing.T) {
	t.Parallel()
	s := newSyncSetup(t, storage.SQLite, 1, 1)
	tests := []struct {
		name       string
		args       []string
		wantCode   int
		wantStderr string
	}{
		{name: "no map", args: []string{"backfill"}, wantCode: 2, wantStderr: "--map"},
		{name: "bad side", args: []string{"backfill", "--map", "x", "--side", "up"}, wantCode: 2, wantStderr: "--side"},
		{name: "bad batch", args: []string{"backfill", "--map", "x", "--batch", "0"}, wantCode: 2, wantStderr: "--batch"},
		{name: "queue bound below a batch", args: []string{"backfill", "--map", "x", "--batch", "100", "--max-queued", "50"}, wantCode: 2, wantStderr: "--max-queued"},
		{name: "negative queue bound", args: []string{"backfill", "--map", "x", "--max-queued", "-1"}, wantCode: 2, wantStderr: "--max-queued"},
		{name: "stray argument", args: []string{"backfill", "--map", "x", "y"}, wantCode: 2, wantStderr: "no arguments"},
		{name: "unknown map", args: []string{"backfill", "--map", "no-such-map"}, wantCode: 1, wantStderr: "no-such-map"},
		{name: "direction off", args: []string{"backfill", "--map", "encounter", "--side", "crm"}, wantCode: 1, wantStderr: "direction is off"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, errOut, code := s.run(t, tt.args...)
			if code != tt.wantCode || !strings.Contains(errOut, tt.wantStderr) {
				t.Fatalf("exit %d, stderr %q; want %d and %q", code, errOut, tt.wantCode, tt.wantStderr)
			}
		})
	}
}

// TestServeReconcileAndReplayHooks checks the pieces serve wires: the
// scheduled reconcile over the configured endpoints and queues, and the
// replay counter on the process registry.
func TestServeReconcileAndReplayHooks(t *testing.T) {
	t.Parallel()
	s := newSyncSetup(t, storage.SQLite, 3, 2)
	ctx := context.Background()
	cfg, err := loadConfig("", s.getenv)
	if err != nil {
		t.Fatal(err)
	}
	reg := prometheus.NewRegistry()
	svc, err := buildServices(ctx, &cfg, s.db, reg, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	rec, err := svc.newReconciler("@daily")
	if err != nil {
		t.Fatal(err)
	}
	res, err := rec.RunOnce(ctx)
	if err != nil || !res.Ran {
		t.Fatalf("RunOnce = %+v, %v", res, err)
	}
	if f := s.depth(t, "fhir-changes").Active; f < 3 {
		t.Fatalf("the reconcile enqueued %d FHIR notices, want at least the 3 patients", f)
	}
	if c := s.depth(t, "crm-changes").Active; c != 2+1 {
		t.Fatalf("the reconcile enqueued %d CRM notices, want the 2 contacts and 1 account", c)
	}
	if _, err := svc.newReconciler("whenever"); err == nil {
		t.Fatal("a bad schedule was accepted")
	}

	r, err := svc.newReplayer(reg)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := r.Records(ctx, []string{"crm:contact/c9"}, agent.ReplayOptions{Actor: "admin:alice"}); err != nil {
		t.Fatal(err)
	}
	if got := replaysOfRecords(t, reg); got != 1 {
		t.Fatalf("fhirsync_replays_total{kind=record} = %v, want 1", got)
	}
}

// replaysOfRecords reads fhirsync_replays_total{kind="record"} from reg.
func replaysOfRecords(t *testing.T, reg *prometheus.Registry) float64 {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() != "fhirsync_replays_total" {
			continue
		}
		for _, m := range mf.GetMetric() {
			if len(m.GetLabel()) == 1 && m.GetLabel()[0].GetValue() == agent.ReplayRecord {
				return m.GetCounter().GetValue()
			}
		}
	}
	t.Fatal("fhirsync_replays_total{kind=record} is not on the registry")
	return 0
}

func TestFormatProgress(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name string
		p    agent.BackfillProgress
		want string
	}{
		{name: "running with a total",
			p:    agent.BackfillProgress{Map: "patient-contact", Side: queues.SideFHIR, Done: 250000, Processed: 245200, Total: 1000000, Rate: 812.4, Left: 923*time.Second + 300*time.Millisecond, Queued: 4800, State: agent.BackfillRunning},
			want: "backfill patient-contact fhir: 250000 of 1000000 (25.0%) enqueued, 245200 processed, 812 records/s, about 15m23s left; 4800 waiting on the queue"},
		{name: "waiting, total unknown, resumed",
			p:    agent.BackfillProgress{Map: "patient-contact", Side: queues.SideCRM, Done: 10, Total: -1, Left: -1, Queued: 5000, Waiting: true, Resumed: true, State: agent.BackfillRunning},
			want: "backfill patient-contact crm: 10 of an unknown total enqueued, 0 processed, 0 records/s; 5000 waiting on the queue (paused for the agent or the source); resumed from a checkpoint"},
		{name: "done",
			p:    agent.BackfillProgress{Map: "m", Side: queues.SideFHIR, Done: 7, Processed: 7, Total: 7, Rate: 7, State: agent.BackfillDone},
			want: "backfill m fhir: 7 of 7 (100.0%) enqueued, 7 processed, 7 records/s, done; 0 waiting on the queue"},
		{name: "interrupted",
			p:    agent.BackfillProgress{Map: "m", Side: queues.SideFHIR, Done: 3, Processed: 3, Total: 7, Left: time.Second, State: agent.BackfillInterrupted},
			want: "backfill m fhir: 3 of 7 (42.9%) enqueued, 3 processed, 0 records/s, interrupted; 0 waiting on the queue"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := formatProgress(tt.p); got != tt.want {
				t.Errorf("formatProgress =\n %q\nwant\n %q", got, tt.want)
			}
		})
	}
}

// TestBackfillLaneConfig reads the bulk lane's settings from the
// environment and refuses a batch larger than Dataverse's $batch allows.
func TestBackfillLaneConfig(t *testing.T) {
	t.Parallel()
	cfg, err := loadConfig("", envFrom(map[string]string{"FHIRSYNC_AGENT_BACKFILL_WORKERS": "-1",
		"FHIRSYNC_AGENT_BACKFILL_BATCH_MAX": "500", "FHIRSYNC_AGENT_BACKFILL_BATCH_WAIT": "3s"}))
	if err != nil {
		t.Fatal(err)
	}
	if a := cfg.Agent; a.BackfillWorkers != -1 || a.BackfillBatchMax != 500 || a.BackfillBatchWait != 3*time.Second {
		t.Fatalf("agent = %+v", a)
	}
	_, err = loadConfig("", envFrom(map[string]string{"FHIRSYNC_AGENT_BACKFILL_BATCH_MAX": "5000"}))
	if err == nil || !strings.Contains(err.Error(), "agent.backfill_batch_max") {
		t.Fatalf("backfill_batch_max 5000: %v", err)
	}
}
