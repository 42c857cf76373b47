// Package medplum starts an independent FHIR R4 server for tests:
// @medplum/fhir-router 4.5.2 with its in-memory repository behind the small
// node:http wrapper in server.js (this directory). It owns nothing else.
//
// The Node packages are installed with `npm ci --no-audit --no-fund` in this
// directory. When node or the packages are missing, Start skips the test
// with a message saying so, or fails it when FHIRSYNC_CI is set.
package medplum

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"
)

// Dir returns the directory holding server.js: $FHIRSYNC_MEDPLUM_DIR, or
// this source file's directory.
func Dir() string {
	if d := os.Getenv("FHIRSYNC_MEDPLUM_DIR"); d != "" {
		return d
	}
	_, file, _, _ := runtime.Caller(0)
	return filepath.Dir(file)
}

// Start runs the server on a free loopback port for the duration of t and
// returns its base URL. The process is killed when t ends.
func Start(t testing.TB) string {
	t.Helper()
	dir := Dir()
	missing := ""
	node, err := exec.LookPath("node")
	switch {
	case err != nil:
		missing = "node is not on PATH (install Node.js 20)"
	default:
		if _, err := os.Stat(filepath.Join(dir, "node_modules", "@medplum", "fhir-router", "package.json")); err != nil {
			missing = "@medplum/fhir-router is not installed (run `npm ci --no-audit --no-fund` in sandbox/medplum)"
		}
	}
	if missing != "" {
		if os.Getenv("FHIRSYNC_CI") != "" {
			t.Fatalf("Medplum FHIR server is required (FHIRSYNC_CI is set) but %s", missing)
		}
		t.Skipf("SKIPPING Medplum target: %s", missing)
	}
	ctx, cancel := context.WithCancel(context.Background())
	cmd := exec.CommandContext(ctx, node, "server.js", "--port", "0", "--host", "127.0.0.1")
	cmd.Dir = dir
	cmd.Stderr = &tail{max: 4096}
	cmd.Cancel = func() error { return cmd.Process.Kill() }
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		cancel()
		t.Fatalf("starting the Medplum FHIR server: %v", err)
	}
	if err := cmd.Start(); err != nil {
		cancel()
		t.Fatalf("starting the Medplum FHIR server: %v", err)
	}
	t.Cleanup(func() {
		cancel()
		_ = cmd.Wait()
	})
	lines := make(chan string, 1)
	go func() {
		sc := bufio.NewScanner(stdout)
		found := false
		for sc.Scan() {
			if l := sc.Text(); strings.HasPrefix(l, "listening on ") {
				lines <- strings.TrimPrefix(l, "listening on ")
				found = true
				break
			}
		}
		if !found {
			lines <- "" // the process exited without listening
		}
		_, _ = io.Copy(io.Discard, stdout)
	}()
	select {
	case u := <-lines:
		if u == "" {
			t.Fatalf("the Medplum FHIR server exited before listening; stderr: %s", cmd.Stderr)
		}
		return u
	case <-time.After(60 * time.Second):
		t.Fatalf("the Medplum FHIR server did not start within 60s; stderr: %s", cmd.Stderr)
	}
	return ""
}

// tail keeps the last max bytes written, for error messages.
type tail struct {
	max int
	mu  sync.Mutex
	b   []byte
}

func (w *tail) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.b = append(w.b, p...)
	if len(w.b) > w.max {
		w.b = w.b[len(w.b)-w.max:]
	}
	return len(p), nil
}

func (w *tail) String() string {
	w.mu.Lock()
	defer w.mu.Unlock()
	return fmt.Sprintf("%q", w.b)
}
