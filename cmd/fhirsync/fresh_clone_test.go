package main

import (
	"bytes"
	"context"
	"encoding/json"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/fhirsync/fhirsync/sandbox/crmserver"
)

// TestMapsExportOnNewDatabaseNamesTheImport checks that exporting from a
// database where nothing is published yet says which command imports the
// starter maps, and that the command it names works (from the repository
// root, where the README runs it).
func TestMapsExportOnNewDatabaseNamesTheImport(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	cfgFile := filepath.Join(dir, "fhirsync.yaml")
	if err := os.WriteFile(cfgFile, []byte("data_dir: "+dir+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	call := func(args ...string) (string, string, int) {
		t.Helper()
		var stdout, stderr bytes.Buffer
		err := run(context.Background(), args, envFrom(nil), &stdout, &stderr)
		code := exitCode(err, &stderr)
		return stdout.String(), stderr.String(), code
	}

	_, errOut, code := call("--config", cfgFile, "maps", "export")
	if code != 1 {
		t.Fatalf("maps export on a new database: exit %d, want 1\n%s", code, errOut)
	}
	m := regexp.MustCompile(`fhirsync (--config \S+ maps import --publish (\S+))`).FindStringSubmatch(errOut)
	if m == nil {
		t.Fatalf("maps export on a new database does not name the import command:\n%s", errOut)
	}
	if want := "fhirsync --config " + cfgFile + " maps import --publish maps/starter/starter.yaml"; !strings.Contains(errOut, want) {
		t.Fatalf("the error names %q, want %q", m[0], want)
	}
	args := strings.Fields(m[1])
	args[len(args)-1] = filepath.Join("..", "..", m[2]) // the test runs in cmd/fhirsync
	if out, errOut, code := call(args...); code != 0 || !strings.Contains(out, "published version 1") {
		t.Fatalf("the command the error names (%s): exit %d\n%s%s", m[1], code, out, errOut)
	}
	out, errOut, code := call("--config", cfgFile, "maps", "export")
	if code != 0 || !strings.Contains(out, "entityMaps:") {
		t.Fatalf("maps export after the import: exit %d\n%s%s", code, out, errOut)
	}
	// A version that does not exist is not "nothing published".
	if _, errOut, code := call("--config", cfgFile, "maps", "export", "--version", "9"); code == 0 || strings.Contains(errOut, "maps import") {
		t.Fatalf("maps export --version 9: exit %d, want a failure without the import hint\n%s", code, errOut)
	}
}

// TestDemoConfigFile checks what a demo --config file may change: it
// overlays the demo's own settings, and keys that would point the demo away
// from its sandboxes, unknown keys and invalid values are refused before
// anything starts.
func TestDemoConfigFile(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	write := func(name, body string) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(body), 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}

	good := write("good.yaml", "log:\n  level: debug\nagent:\n  workers: 3\n  conflict_tie: crm-wins\nfeeds:\n  fhir_history:\n    schedule: '@every 7s'\n")
	cfg, keys, err := demoConfig(good)
	if err != nil {
		t.Fatalf("demoConfig(%s): %v", good, err)
	}
	if cfg.Log.Level != "debug" || cfg.Agent.Workers != 3 || cfg.Agent.ConflictTie != "crm-wins" || cfg.Feeds.FHIRHistory.Schedule != "@every 7s" {
		t.Errorf("the file's values are not applied: log.level %q, agent.workers %d, agent.conflict_tie %q, feeds.fhir_history.schedule %q",
			cfg.Log.Level, cfg.Agent.Workers, cfg.Agent.ConflictTie, cfg.Feeds.FHIRHistory.Schedule)
	}
	if cfg.CRM.Auth.Token != crmserver.AgentToken || cfg.Agent.CRMUserID != crmserver.AgentUserID || cfg.Logs.KeySecret == "" ||
		len(cfg.Feeds.FHIRHistory.Types) == 0 {
		t.Errorf("the demo's own settings are lost under the file: crm.auth %+v, agent.crm_user_id %q, feeds.fhir_history.types %v",
			cfg.CRM.Auth, cfg.Agent.CRMUserID, cfg.Feeds.FHIRHistory.Types)
	}
	if !keys["agent.workers"] || !keys["feeds.fhir_history.schedule"] || keys["listen"] {
		t.Errorf("keys set by the file: %v", keys)
	}

	for _, tc := range []struct {
		name, body string
		want       []string
	}{
		{name: "crm endpoint", body: "crm:\n  base_url: https://org.crm.dynamics.com\n", want: []string{"crm.base_url is set by the demo"}},
		{name: "fhir auth and queue kind", body: "fhir:\n  auth:\n    method: default\nqueue:\n  kind: servicebus\n",
			want: []string{"fhir.auth is set by the demo", "queue.kind is set by the demo"}},
		{name: "unknown key", body: "agent:\n  wokers: 3\n", want: []string{"field wokers not found"}},
		{name: "invalid value", body: "log:\n  level: loud\n", want: []string{"log.level"}},
		{name: "missing file", want: []string{"reading config file"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			path := filepath.Join(dir, "missing.yaml")
			if tc.body != "" {
				path = write(strings.ReplaceAll(tc.name, " ", "-")+".yaml", tc.body)
			}
			var stdout, stderr bytes.Buffer
			err := run(context.Background(), []string{"demo", "--config", path, "--data-dir", filepath.Join(dir, "data-"+tc.name)},
				envFrom(nil), &stdout, &stderr)
			if code := exitCode(err, &stderr); code != 2 {
				t.Fatalf("exit %d, want 2 (invalid configuration)\n%s", code, stderr.String())
			}
			for _, w := range tc.want {
				if !strings.Contains(stderr.String(), w) {
					t.Errorf("the error does not say %q:\n%s", w, stderr.String())
				}
			}
		})
	}
}

// TestDemoHonoursConfigAndCreatesDataDir runs `fhirsync demo --config FILE
// --data-dir DIR` with DIR missing: the demo creates DIR (0700), serves on
// the file's listen address and logs in the file's format, and reads no
// FHIRSYNC_ variable (one pointing at an unreachable database is set).
func TestDemoHonoursConfigAndCreatesDataDir(t *testing.T) {
	t.Parallel()
	addr := freePort(t)
	base := t.TempDir()
	dataDir := filepath.Join(base, "not", "yet")
	cfgFile := filepath.Join(base, "demo.yaml")
	if err := os.WriteFile(cfgFile, []byte("listen: "+addr+"\nlog:\n  format: json\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	env := envFrom(map[string]string{"FHIRSYNC_DATABASE_URL": "postgres://fhirsync@127.0.0.1:1/none", "FHIRSYNC_LISTEN": "127.0.0.1:1"})
	ctx, cancel := context.WithCancel(context.Background())
	var stdout, stderr syncBuffer
	done := make(chan error, 1)
	go func() {
		done <- run(ctx, []string{"demo", "--config", cfgFile, "--data-dir", dataDir, "--patients", "2", "--edits-per-second", "0"},
			env, &stdout, &stderr)
	}()
	stopped := false
	stop := func() {
		if stopped {
			return
		}
		stopped = true
		cancel()
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("demo returned %v\n%s", err, stderr.String())
			}
		case <-time.After(60 * time.Second):
			t.Error("demo did not stop within 60s")
		}
	}
	t.Cleanup(stop)

	deadline := time.Now().Add(90 * time.Second)
	for !strings.Contains(stdout.String(), "Sign in") {
		if time.Now().After(deadline) {
			t.Fatalf("demo printed no banner within 90s\nstdout:\n%s\nstderr:\n%s", stdout.String(), stderr.String())
		}
		select {
		case err := <-done:
			stopped = true
			t.Fatalf("demo exited early: %v\n%s", err, stderr.String())
		case <-time.After(100 * time.Millisecond):
		}
	}
	if !strings.Contains(stdout.String(), "Admin app   http://"+addr) {
		t.Errorf("the banner does not show the file's listen address %s:\n%s", addr, stdout.String())
	}
	if got := field(stdout.String(), "Data"); got != dataDir {
		t.Errorf("the banner's data directory is %q, want %q", got, dataDir)
	}
	resp, err := http.Get("http://" + addr + "/healthz")
	if err != nil {
		t.Fatalf("the admin app is not on the file's listen address: %v", err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Errorf("GET /healthz: %s", resp.Status)
	}
	fi, err := os.Stat(dataDir)
	if err != nil {
		t.Fatalf("the data directory was not created: %v", err)
	}
	if !fi.IsDir() || fi.Mode().Perm() != 0o700 {
		t.Errorf("data directory mode %v, want a directory with 0700", fi.Mode())
	}
	if _, err := os.Stat(filepath.Join(dataDir, "sandbox-fhir.db")); err != nil {
		t.Errorf("the demo's files are not in the data directory: %v", err)
	}
	stop()
	lines := strings.Split(strings.TrimSpace(stderr.String()), "\n")
	for _, line := range lines {
		var v map[string]any
		if err := json.Unmarshal([]byte(line), &v); err != nil {
			t.Errorf("process log line is not JSON (log.format: json in the file): %s", line)
			break
		}
	}
	if _, err := os.Stat(dataDir); err != nil {
		t.Errorf("a data directory given with --data-dir is removed at exit: %v", err)
	}
}

// TestCommandsDocumented fails when the README's command table leaves out
// a command, or its flag tables leave out a flag that `--help` prints for
// demo, replay, backfill or bench.
func TestCommandsDocumented(t *testing.T) {
	t.Parallel()
	raw, err := os.ReadFile("../../README.md")
	if err != nil {
		t.Fatal(err)
	}
	readme := string(raw)
	for _, c := range commands() {
		if !strings.Contains(readme, "| `fhirsync "+c.name) {
			t.Errorf("the README's command table has no row for fhirsync %s", c.name)
		}
	}
	flagLine := regexp.MustCompile(`(?m)^  -([a-z][a-z0-9-]*)`)
	for _, name := range []string{"demo", "replay", "backfill", "bench"} {
		var stdout, stderr bytes.Buffer
		if err := run(context.Background(), []string{name, "--help"}, envFrom(nil), &stdout, &stderr); err != nil {
			t.Fatalf("%s --help: %v", name, err)
		}
		flags := flagLine.FindAllStringSubmatch(stdout.String(), -1)
		if len(flags) < 3 {
			t.Fatalf("%s --help lists %d flags:\n%s", name, len(flags), stdout.String())
		}
		// The command's own table: from its bold synopsis to the next one
		// or the next heading.
		_, section, ok := strings.Cut(readme, "**`fhirsync "+name+" ")
		if !ok {
			t.Errorf("the README has no flags of fhirsync %s (a line starting **`fhirsync %s …`**)", name, name)
			continue
		}
		if i := strings.Index(section, "\n**`fhirsync "); i >= 0 {
			section = section[:i]
		}
		if i := strings.Index(section, "\n#"); i >= 0 {
			section = section[:i]
		}
		for _, f := range flags {
			if f[1] == "config" || f[1] == "log-format" {
				continue
			}
			if !strings.Contains(section, "| `--"+f[1]+"`") && !strings.Contains(section, "| `--"+f[1]+" ") {
				t.Errorf("the README's flags of fhirsync %s have no row for --%s", name, f[1])
			}
		}
	}
}
