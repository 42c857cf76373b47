package main

import (
	"bytes"
	"context"
	"fmt"
	"strings"
	"testing"

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
	getenv := s.getenvWith(extra)
	const password = "correct horse battery staple 42"
	pwFile := writePasswordFile(t, password)
	var out, errb bytes.Buffer
	if code := exitCode(run(ctx, []string{"users", "create", "--email", "auditor@example.org", "--role", "auditor", "--password-file", pwFile}, getenv, &out, &errb), &errb); code != 0 {
		t.Fatalf("users create: exit %d: %s", code, errb.String())
	}

	base, stop, stderr := startServe(t, ctx, getenv, addr)

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
	d := waitSentDecision(t, ctx, store, p.ID(), stderr)
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
