package main

import (
	"context"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"
)

// TestFreshCloneStepsFromTheReadme follows the README's "From a fresh
// clone to your own services" as written: `fhirsync sandbox`, the section's
// fhirsync.yaml (with the sandbox's default ports swapped for free ones)
// and each `./fhirsync` command of its shell block. Every command must
// succeed, doctor must report no failure, and serve must become ready and
// write records to the sandbox CRM, which it does only when the example
// configures the feeds.
func TestFreshCloneStepsFromTheReadme(t *testing.T) {
	t.Parallel()
	raw, err := os.ReadFile("../../README.md")
	if err != nil {
		t.Fatal(err)
	}
	_, section, ok := strings.Cut(string(raw), "### From a fresh clone to your own services\n")
	if !ok {
		t.Fatal("the README has no section \"From a fresh clone to your own services\"")
	}
	if i := strings.Index(section, "\n## "); i >= 0 {
		section = section[:i]
	}
	blocks := yamlBlocks(section)
	if len(blocks) != 1 {
		t.Fatalf("the section has %d YAML blocks, want the one fhirsync.yaml", len(blocks))
	}
	var commands [][]string
	for _, part := range strings.Split(section, "```sh\n")[1:] {
		block, _, _ := strings.Cut(part, "```")
		for _, line := range strings.Split(block, "\n") {
			line, _, _ = strings.Cut(line, "#")
			if f := strings.Fields(line); len(f) > 0 && f[0] == "./fhirsync" {
				commands = append(commands, f[1:])
			}
		}
	}
	if len(commands) < 4 || strings.Join(commands[len(commands)-1], " ") != "--config fhirsync.yaml serve" {
		t.Fatalf("the section's commands end with %q, want the steps up to serve", commands)
	}

	dir := t.TempDir()
	fhirAddr, crmAddr := freePort(t), freePort(t)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	sandboxDone := make(chan error, 1)
	var sandboxOut syncBuffer
	go func() {
		sandboxDone <- run(ctx, []string{"sandbox", "--fhir", fhirAddr, "--crm", crmAddr}, envFrom(nil), &sandboxOut, io.Discard)
	}()
	waitFor(t, "http://"+fhirAddr+"/metadata", sandboxDone, &sandboxOut)

	cfg := strings.NewReplacer("127.0.0.1:8081", fhirAddr, "127.0.0.1:8082", crmAddr).Replace(blocks[0])
	if cfg == blocks[0] {
		t.Fatalf("the example fhirsync.yaml does not point at the sandbox's default ports:\n%s", blocks[0])
	}
	cfgFile := filepath.Join(dir, "fhirsync.yaml")
	if err := os.WriteFile(cfgFile, []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
	listen := freePort(t)
	env := envFrom(map[string]string{"FHIRSYNC_DATA_DIR": filepath.Join(dir, "data"), "FHIRSYNC_LISTEN": listen})
	args := func(c []string) []string {
		out := make([]string, len(c))
		for i, a := range c {
			switch {
			case a == "fhirsync.yaml":
				a = cfgFile
			case strings.HasPrefix(a, "maps/"):
				a = filepath.Join("..", "..", a) // the test runs in cmd/fhirsync
			}
			out[i] = a
		}
		return out
	}
	for _, c := range commands[:len(commands)-1] {
		var stdout, stderr syncBuffer
		err := run(ctx, args(c), env, &stdout, &stderr)
		if code := exitCode(err, &stderr); code != 0 {
			t.Fatalf("./fhirsync %s: exit %d\n%s%s", strings.Join(c, " "), code, stdout.String(), stderr.String())
		}
		if c[len(c)-1] == "doctor" && (strings.Contains(stdout.String(), "FAIL") || !strings.Contains(stdout.String(), "ok   fhir")) {
			t.Errorf("./fhirsync %s reports a failure:\n%s", strings.Join(c, " "), stdout.String())
		}
	}

	serveCtx, stopServe := context.WithCancel(ctx)
	defer stopServe()
	serveDone := make(chan error, 1)
	var serveErr syncBuffer
	go func() { serveDone <- run(serveCtx, args(commands[len(commands)-1]), env, io.Discard, &serveErr) }()
	base := "http://" + listen
	waitFor(t, base+"/readyz", serveDone, &serveErr)
	created := regexp.MustCompile(`(?m)^fhirsync_decisions_total\{direction="fhir_to_crm",outcome="sent",reason="created"\} (\d+)`)
	deadline := time.Now().Add(90 * time.Second)
	for {
		_, body := get(t, base+"/metrics")
		if m := created.FindStringSubmatch(body); m != nil {
			if n, _ := strconv.Atoi(m[1]); n > 0 {
				break
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("serve created no CRM record within 90s of starting on the README's configuration; decisions:\n%s",
				strings.Join(regexp.MustCompile(`(?m)^fhirsync_decisions_total.*$`).FindAllString(body, -1), "\n"))
		}
		time.Sleep(500 * time.Millisecond)
	}
	if code, body := get(t, base+"/readyz"); code != http.StatusOK {
		t.Errorf("/readyz = %d %q after syncing", code, body)
	}

	// serve first, while the sandboxes still answer its in-flight work;
	// its drain takes at most shutdown_timeout (30s).
	stopServe()
	for _, w := range []struct {
		name string
		stop context.CancelFunc
		done chan error
	}{{"serve", stopServe, serveDone}, {"sandbox", cancel, sandboxDone}} {
		w.stop()
		select {
		case err := <-w.done:
			if err != nil {
				t.Errorf("%s returned %v after shutdown", w.name, err)
			}
		case <-time.After(60 * time.Second):
			t.Fatalf("%s did not stop within 60s of cancellation", w.name)
		}
	}
}
