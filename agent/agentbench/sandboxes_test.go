package agentbench

import (
	"context"
	"fmt"
	"net/http/httptest"
	"os"
	"os/exec"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/fhirsync/fhirsync/agent/crm"
	"github.com/fhirsync/fhirsync/queues"
	"github.com/fhirsync/fhirsync/sandbox/crmserver"
	"github.com/fhirsync/fhirsync/storage"
	"github.com/fhirsync/fhirsync/storage/storagetest"
)

// helperEnv makes the test binary serve the sandboxes, as
// `fhirsync bench --serve-sandboxes` does, instead of running tests.
const helperEnv = "FHIRSYNC_BENCH_SANDBOX_PROCESS"

func TestMain(m *testing.M) {
	if os.Getenv(helperEnv) == "1" {
		os.Exit(serveHelper(os.Args))
	}
	os.Exit(m.Run())
}

// serveHelper reads the --sandbox-dir and --endpoint the bench appends.
func serveHelper(args []string) int {
	flag := func(name string) string {
		if i := slices.Index(args, name); i >= 0 && i+1 < len(args) {
			return args[i+1]
		}
		return ""
	}
	if err := ServeSandboxes(context.Background(), flag("--sandbox-dir"), flag("--endpoint"), os.Stdin, os.Stdout); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	return 0
}

func TestSandboxesInAProcessOfTheirOwn(t *testing.T) {
	t.Parallel()
	envPath, err := exec.LookPath("env")
	if err != nil {
		t.Fatalf("env(1) is needed to start the sandbox process: %v", err)
	}
	db := storagetest.Open(t, storage.SQLite)
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	res, err := Run(ctx, Config{DB: db, TempDir: t.TempDir(), Records: 30, Repeats: 2, OfferedRate: 10, Duration: time.Second,
		Limits: crmserver.Limits{Requests: -1}, SandboxCommand: []string{envPath, helperEnv + "=1", os.Args[0]}})
	if err != nil {
		t.Fatal(err)
	}
	if res.SandboxesInline || res.SandboxPeakRSSBytes <= 0 || res.PeakRSSBytes <= 0 {
		t.Fatalf("inline %v, agent RSS %d, sandbox RSS %d: want both processes measured", res.SandboxesInline, res.PeakRSSBytes, res.SandboxPeakRSSBytes)
	}
	// Two sustained runs of each direction, each with its own records.
	if len(res.Throughput) != 4 || res.Repeats != 2 {
		t.Fatalf("%d sustained runs, repeats %d; want 4 and 2", len(res.Throughput), res.Repeats)
	}
	for i, tp := range res.Throughput {
		if tp.Sent != 30 || tp.Run != i/2+1 {
			t.Errorf("%s run %d: %d of 30 sent; want run %d", tp.Direction, tp.Run, tp.Sent, i/2+1)
		}
	}
	for _, l := range res.Latency {
		// The target writes are observed in the sandbox process and read
		// back through its control API.
		if l.Offered != 10 || l.Written != 10 {
			t.Errorf("%s latency: %d offered, %d written, want 10 and 10", l.Direction, l.Offered, l.Written)
		}
	}
	var names []string
	for _, r := range res.Rows() {
		names = append(names, r.Metric)
	}
	if !slices.Contains(names, "CRM→FHIR sustained, median of 2 runs: CPU per record, agent process") {
		t.Errorf("rows %q have no median of the two runs", names)
	}
	if !slices.Contains(names, "peak RSS (agent process)") || !slices.ContainsFunc(names, func(n string) bool { return strings.HasPrefix(n, "peak RSS (sandbox process") }) {
		t.Errorf("rows %q do not report the two processes apart", names)
	}
}

// nopSender drops the CRM's service-endpoint messages.
type nopSender struct{}

func (nopSender) Send(context.Context, ...queues.Message) error { return nil }

// The coordinator's edits reach the sandbox CRM the same way whether the
// bench makes them in its own process or asks a sandbox process through
// the control API.
func TestEditContactsThroughTheControlAPI(t *testing.T) {
	t.Parallel()
	l, err := startLocal("", "edits", nopSender{})
	if err != nil {
		t.Fatal(err)
	}
	defer l.close()
	ctl := httptest.NewServer(l.control())
	defer ctl.Close()
	r := &remote{addr: addresses{FHIR: l.fhirURL(), CRM: l.crmURL(), Control: ctl.URL}, client: ctl.Client()}
	ctx := context.Background()
	var ids []string
	for i := range 4 {
		id, err := l.human.Create(ctx, "contacts", crm.Record{"lastname": fmt.Sprintf("Edit%d", i)})
		if err != nil {
			t.Fatal(err)
		}
		ids = append(ids, id)
	}
	if err := l.editContacts(ctx, contactEdits{IDs: ids[:2], Tag: "local", From: 0}); err != nil {
		t.Fatal(err)
	}
	if err := r.editContacts(ctx, contactEdits{IDs: ids[2:], Tag: "ctl", From: 2}); err != nil {
		t.Fatal(err)
	}
	want := []string{"local.0@example.org", "local.1@example.org", "ctl.2@example.org", "ctl.3@example.org"}
	for i, id := range ids {
		rec, err := l.human.Retrieve(ctx, crm.ByID("contacts", id), "emailaddress1")
		if err != nil {
			t.Fatal(err)
		}
		if got := rec.String("emailaddress1"); got != want[i] {
			t.Errorf("contact %d: email %q, want %q", i, got, want[i])
		}
	}
	// A contact that is not there fails the batch, and the control API
	// says so.
	if err := r.editContacts(ctx, contactEdits{IDs: []string{"00000000-0000-0000-0000-00000000dead"}, Tag: "gone"}); err == nil {
		t.Error("editing a missing contact through the control API: no error")
	}
}
