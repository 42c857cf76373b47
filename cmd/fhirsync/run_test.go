package main

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/fhirsync/fhirsync/internal/freeport"
	"github.com/fhirsync/fhirsync/storage"
	"github.com/fhirsync/fhirsync/storage/storagetest"
)

// syncBuffer is a bytes.Buffer safe for a running command to write to
// while the test reads it.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// freePort returns a loopback address free now, for a command under test
// to listen on once it starts (see internal/freeport).
func freePort(t *testing.T) string {
	t.Helper()
	port, err := freeport.Loopback()
	if err != nil {
		t.Fatal(err)
	}
	return fmt.Sprintf("127.0.0.1:%d", port)
}

func TestServeOnEmbeddedDefaultsAndPostgres(t *testing.T) {
	t.Parallel()
	for _, d := range storagetest.Dialects {
		t.Run(string(d), func(t *testing.T) {
			t.Parallel()
			dataDir := t.TempDir()
			env := map[string]string{"FHIRSYNC_DATA_DIR": dataDir, "FHIRSYNC_LISTEN": freePort(t)}
			if d == storage.Postgres {
				env["FHIRSYNC_DATABASE_URL"] = storagetest.URL(t, d)
			}
			ctx, cancel := context.WithCancel(context.Background())
			var stderr syncBuffer
			done := make(chan error, 1)
			go func() { done <- run(ctx, []string{"serve"}, envFrom(env), io.Discard, &stderr) }()

			base := "http://" + env["FHIRSYNC_LISTEN"]
			waitFor(t, base+"/healthz", done, &stderr)
			for path, want := range map[string]string{"/healthz": "ok", "/readyz": "ready", "/metrics": "fhirsync_build_info"} {
				code, body := get(t, base+path)
				if code != http.StatusOK || !strings.Contains(body, want) {
					t.Errorf("GET %s = %d %q, want 200 containing %q", path, code, body, want)
				}
			}
			code, body := get(t, base+"/metrics")
			if code != 200 || !strings.Contains(body, "# TYPE go_goroutines gauge") {
				t.Errorf("/metrics is not Prometheus text: %.200q", body)
			}
			if d == storage.SQLite {
				if _, err := os.Stat(filepath.Join(dataDir, storage.DefaultSQLiteFile)); err != nil {
					t.Errorf("SQLite database not created in the data directory: %v", err)
				}
			}
			cancel()
			select {
			case err := <-done:
				if err != nil {
					t.Fatalf("serve returned %v after shutdown", err)
				}
			case <-time.After(30 * time.Second):
				t.Fatal("serve did not stop within 30s of cancellation")
			}
			if !strings.Contains(stderr.String(), "database migrated") || !strings.Contains(stderr.String(), "stopped") {
				t.Errorf("process log lacks migration or stop lines:\n%s", stderr.String())
			}
		})
	}
}

func TestExitCodes(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	bad := filepath.Join(dir, "bad.yaml")
	if err := os.WriteFile(bad, []byte("listen: nope\nlog:\n  format: xml\nqueue:\n  kind: kafka\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name       string
		args       []string
		env        map[string]string
		wantCode   int
		wantStderr []string
		notStderr  []string
		maxLines   int
	}{
		{name: "three config mistakes", args: []string{"serve", "--config", bad}, wantCode: 2,
			wantStderr: []string{"listen:", "log.format:", "queue.kind:"}},
		{name: "unreachable database is one line naming the host",
			args: []string{"migrate"}, env: map[string]string{"FHIRSYNC_DATABASE_URL": "postgres://u:hunter2@127.0.0.1:1/test?sslmode=disable&connect_timeout=3"},
			wantCode: 1, wantStderr: []string{"127.0.0.1:1", "unreachable"}, notStderr: []string{"hunter2", "goroutine"}, maxLines: 1},
		{name: "unknown command", args: []string{"frobnicate"}, wantCode: 2, wantStderr: []string{`unknown command "frobnicate"`}},
		{name: "no command", args: nil, wantCode: 2, wantStderr: []string{"no command given"}},
		{name: "bad flag", args: []string{"serve", "--nope"}, wantCode: 2, wantStderr: []string{"-nope", "serve --help"}},
		{name: "help", args: []string{"--help"}, wantCode: 0},
		{name: "subcommand help", args: []string{"migrate", "--help"}, wantCode: 0},
		{name: "version", args: []string{"version"}, wantCode: 0},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			env := map[string]string{"FHIRSYNC_DATA_DIR": t.TempDir()}
			for k, v := range tt.env {
				env[k] = v
			}
			var stdout, stderr bytes.Buffer
			err := run(context.Background(), tt.args, envFrom(env), &stdout, &stderr)
			code := exitCode(err, &stderr)
			if code != tt.wantCode {
				t.Fatalf("exit %d, want %d; stderr:\n%s", code, tt.wantCode, stderr.String())
			}
			for _, w := range tt.wantStderr {
				if !strings.Contains(stderr.String(), w) {
					t.Errorf("stderr lacks %q:\n%s", w, stderr.String())
				}
			}
			for _, w := range tt.notStderr {
				if strings.Contains(stderr.String(), w) {
					t.Errorf("stderr contains %q:\n%s", w, stderr.String())
				}
			}
			if tt.maxLines > 0 && strings.Count(strings.TrimSpace(stderr.String()), "\n")+1 > tt.maxLines {
				t.Errorf("stderr has more than %d line(s):\n%s", tt.maxLines, stderr.String())
			}
		})
	}
}

func TestEverySubcommandHasHelp(t *testing.T) {
	t.Parallel()
	for _, c := range commands() {
		t.Run(c.name, func(t *testing.T) {
			t.Parallel()
			var stdout, stderr bytes.Buffer
			err := run(context.Background(), []string{c.name, "--help"}, envFrom(nil), &stdout, &stderr)
			if err != nil {
				t.Fatalf("%s --help: %v", c.name, err)
			}
			if !strings.Contains(stdout.String(), "Usage: fhirsync "+c.name) {
				t.Errorf("%s --help output lacks a usage line:\n%s", c.name, stdout.String())
			}
		})
	}
}

func waitFor(t *testing.T, url string, done <-chan error, stderr fmt.Stringer) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for time.Now().Before(deadline) {
		select {
		case err := <-done:
			t.Fatalf("serve exited early: %v\n%s", err, stderr)
		default:
		}
		if resp, err := http.Get(url); err == nil {
			resp.Body.Close()
			return
		}
		time.Sleep(50 * time.Millisecond)
	}
	t.Fatalf("%s did not answer within 30s\n%s", url, stderr)
}

func get(t *testing.T, url string) (int, string) {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatalf("GET %s: %v", url, err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}
