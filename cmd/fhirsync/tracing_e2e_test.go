package main

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/fhirsync/fhirsync/agent/fhir"
	"github.com/fhirsync/fhirsync/internal/tracing/tracingtest"
	"github.com/fhirsync/fhirsync/logs"
	"github.com/fhirsync/fhirsync/storage"
)

// TestServeExportsTraces runs serve with tracing.enabled pointed at a
// loopback OTLP/HTTP receiver and admin.trace_url set, syncs one patient,
// and checks that the decision's trace reached the receiver (flushed at
// shutdown at the latest) with the notice and the agent's spans, and that
// the decision page links the trace.
func TestServeExportsTraces(t *testing.T) {
	t.Parallel()
	s := newSyncSetup(t, storage.SQLite, 0, 0)
	rcv := tracingtest.Start(t)
	ctx := context.Background()
	addr := freePort(t)
	extra := map[string]string{
		"FHIRSYNC_LISTEN":                      addr,
		"FHIRSYNC_TRACING_ENABLED":             "true",
		"FHIRSYNC_TRACING_ENDPOINT":            rcv.URL(),
		"FHIRSYNC_ADMIN_TRACE_URL":             "https://grafana.example/explore?traceId={trace_id}",
		"FHIRSYNC_FEEDS_FHIR_HISTORY_TYPES":    "Patient",
		"FHIRSYNC_FEEDS_FHIR_HISTORY_SCHEDULE": "@every 1s",
	}
	getenv := func(k string) string {
		if v, ok := extra[k]; ok {
			return v
		}
		return s.getenv(k)
	}
	pwFile := filepath.Join(t.TempDir(), "pw")
	const password = "correct horse battery staple 42"
	if err := os.WriteFile(pwFile, []byte(password+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	var out, errb bytes.Buffer
	if code := exitCode(run(ctx, []string{"users", "create", "--email", "auditor@example.org", "--role", "auditor", "--password-file", pwFile}, getenv, &out, &errb), &errb); code != 0 {
		t.Fatalf("users create: exit %d: %s", code, errb.String())
	}

	sctx, cancel := context.WithCancel(ctx)
	var stderr syncBuffer
	done := make(chan error, 1)
	go func() { done <- run(sctx, []string{"serve"}, getenv, io.Discard, &stderr) }()
	stopped := false
	stop := func() {
		if stopped {
			return
		}
		stopped = true
		cancel()
		select {
		case <-done:
		case <-time.After(30 * time.Second):
			t.Error("serve did not stop within 30s")
		}
	}
	t.Cleanup(stop)
	base := "http://" + addr
	waitFor(t, base+"/healthz", done, &stderr)

	fc, err := fhir.New(fhir.Config{BaseURL: getenv("FHIRSYNC_FHIR_BASE_URL")})
	if err != nil {
		t.Fatal(err)
	}
	p, err := fc.Create(ctx, fhir.Resource{"resourceType": "Patient", "gender": "female", "birthDate": "1958-11-02",
		"name": []any{map[string]any{"use": "official", "family": "Tracewell", "given": []any{"Odile"}}}})
	if err != nil {
		t.Fatal(err)
	}
	store, err := logs.New(s.db, logs.Config{}, nil)
	if err != nil {
		t.Fatal(err)
	}
	var d logs.Decision
	for deadline := time.Now().Add(60 * time.Second); ; {
		page, err := store.Search(ctx, logs.Filter{Record: p.ID(), Outcome: logs.OutcomeSent}, "", 10)
		if err != nil {
			t.Fatal(err)
		}
		if len(page.Decisions) > 0 {
			d = page.Decisions[0]
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("no sent decision for Patient/%s within 60s\n%s", p.ID(), stderr.String())
		}
		time.Sleep(200 * time.Millisecond)
	}
	if len(d.TraceID) != 32 {
		t.Fatalf("decision %d has trace id %q with tracing on", d.ID, d.TraceID)
	}

	auditor := signIn(t, base, "auditor@example.org", password)
	code, body := getWith(t, auditor, fmt.Sprintf("%s/logs/%d", base, d.ID))
	if want := `href="https://grafana.example/explore?traceId=` + d.TraceID + `"`; code != 200 || !strings.Contains(body, want) {
		t.Errorf("decision page = %d, want a link %s", code, want)
	}

	stop() // flushes the spans still buffered
	got := map[string]bool{}
	for _, sp := range rcv.Trace(d.TraceID) {
		got[sp.Name] = true
		if sp.Resource["service.name"] != "fhirsync" {
			t.Errorf("span %s from service %q", sp.Name, sp.Resource["service.name"])
		}
	}
	for _, name := range []string{"notice", "process", "read", "map", "write", "decision"} {
		if !got[name] {
			t.Errorf("the trace of decision %d lacks its %q span (has %v)", d.ID, name, got)
		}
	}
}
