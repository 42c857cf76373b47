package agentbench

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"slices"
	"strings"
	"testing"
	"time"

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
	res, err := Run(ctx, Config{DB: db, TempDir: t.TempDir(), Records: 30, OfferedRate: 10, Duration: time.Second,
		Limits: crmserver.Limits{Requests: -1}, SandboxCommand: []string{envPath, helperEnv + "=1", os.Args[0]}})
	if err != nil {
		t.Fatal(err)
	}
	if res.SandboxesInline || res.SandboxPeakRSSBytes <= 0 || res.PeakRSSBytes <= 0 {
		t.Fatalf("inline %v, agent RSS %d, sandbox RSS %d: want both processes measured", res.SandboxesInline, res.PeakRSSBytes, res.SandboxPeakRSSBytes)
	}
	for _, tp := range res.Throughput {
		if tp.Sent != 30 {
			t.Errorf("%s: %d of 30 sent", tp.Direction, tp.Sent)
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
	if !slices.Contains(names, "peak RSS (agent process)") || !slices.ContainsFunc(names, func(n string) bool { return strings.HasPrefix(n, "peak RSS (sandbox process") }) {
		t.Errorf("rows %q do not report the two processes apart", names)
	}
}
