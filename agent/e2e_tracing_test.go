package agent_test

import (
	"context"
	"slices"
	"strings"
	"testing"
	"time"

	"gorm.io/gorm"

	"github.com/fhirsync/fhirsync/agent"
	"github.com/fhirsync/fhirsync/agent/fhir"
	"github.com/fhirsync/fhirsync/internal/tracing"
	"github.com/fhirsync/fhirsync/internal/tracing/tracingtest"
	"github.com/fhirsync/fhirsync/logs"
	"github.com/fhirsync/fhirsync/queues"
	"github.com/fhirsync/fhirsync/queues/servicebus"
	"github.com/fhirsync/fhirsync/queues/servicebus/sbtest"
	"github.com/fhirsync/fhirsync/storage"
	"github.com/fhirsync/fhirsync/storage/storagetest"
)

// The patient of the tracing tests: none of these values may reach a span.
var tracedPatient = struct{ family, given, mrn, birthDate, email string }{
	"Quennevilleau", "Ysoldine", "MRN-TR-447193", "1961-07-23", "ysoldine.q@example.org"}

// TestTracingOneTracePerMessage: with tracing on, a patient created in
// FHIR is synced to the CRM in one trace — the history poller's notice
// span, then across the embedded queue the worker's process span with
// its read, map, write and decision spans — exported over OTLP/HTTP to a
// loopback receiver; the decision keeps the trace id, and no span carries
// the patient's name, MRN, birth date or email.
func TestTracingOneTracePerMessage(t *testing.T) {
	t.Parallel()
	storagetest.Each(t, func(t *testing.T, db *gorm.DB) {
		traceOneSync(t, db, nil)
	})
}

// TestTracingAcrossServiceBus is the same over the real azservicebus
// client and the fake Service Bus: the trace context travels in the
// messages' application properties.
func TestTracingAcrossServiceBus(t *testing.T) {
	t.Parallel()
	sb := sbtest.Start(t,
		sbtest.QueueConfig{Name: "fhir-changes", Sessions: true, LockDuration: 30 * time.Second, MaxDeliveryCount: 20},
		sbtest.QueueConfig{Name: "crm-changes", Sessions: true, LockDuration: 30 * time.Second, MaxDeliveryCount: 20})
	traceOneSync(t, storagetest.Open(t, storage.SQLite), func(t *testing.T, name string, tr *tracing.Tracing) queues.Queue {
		q, err := servicebus.New(servicebus.Config{ConnectionString: sb.ConnectionString(), Sessions: true, Tracer: tr.Provider()}, name)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = q.Close(context.Background()) })
		return q
	})
}

func traceOneSync(t *testing.T, db *gorm.DB, open func(t *testing.T, name string, tr *tracing.Tracing) queues.Queue) {
	ctx := context.Background()
	rcv := tracingtest.Start(t)
	tr, err := tracing.New(ctx, tracing.Config{Enabled: true, Endpoint: rcv.URL()}, tracing.Deps{Version: "test"})
	if err != nil {
		t.Fatal(err)
	}
	opts := envOptions{tracer: tr.Provider()}
	if open != nil {
		opts.queue = func(t *testing.T, name string) queues.Queue { return open(t, name, tr) }
	}
	e := startEnv(t, db, agent.Config{Workers: 4, RetryBase: 200 * time.Millisecond, RetryMax: 2 * time.Second}, opts)

	p := tracedPatient
	created, err := e.fhir.Create(ctx, fhir.Resource{"resourceType": "Patient", "active": true, "gender": "female", "birthDate": p.birthDate,
		"name":    []any{map[string]any{"use": "official", "family": p.family, "given": []any{p.given}}},
		"telecom": []any{map[string]any{"system": "email", "value": p.email}},
		"identifier": []any{map[string]any{"use": "usual", "type": map[string]any{"coding": []any{map[string]any{"system": "http://terminology.hl7.org/CodeSystem/v2-0203", "code": "MR"}}},
			"system": "urn:oid:2.16.840.1.113883.19.5.99999.1", "value": p.mrn}}})
	if err != nil {
		t.Fatal(err)
	}
	e.poller.Trigger()
	d := e.waitDecision(t, created.ID(), logs.FHIRToCRM, "created")
	// Stop the agent and the poller, then flush the spans still buffered.
	e.stop()
	e.stop = nil
	if err := tr.Shutdown(ctx); err != nil {
		t.Fatalf("flushing the spans: %v", err)
	}

	if len(d.TraceID) != 32 {
		t.Fatalf("the decision's trace id is %q, want the message's trace", d.TraceID)
	}
	spans := rcv.Trace(d.TraceID)
	byName := map[string][]tracingtest.Span{}
	for _, s := range spans {
		byName[s.Name] = append(byName[s.Name], s)
	}
	for _, name := range []string{"notice", "process", "read", "read target", "map", "write", "decision"} {
		if len(byName[name]) == 0 {
			t.Errorf("trace %s has no %q span; it has %v", d.TraceID, name, names(spans))
		}
	}
	if t.Failed() {
		return
	}
	notice, process := byName["notice"][0], byName["process"][0]
	if len(byName["notice"]) != 1 || len(byName["process"]) != 1 {
		t.Errorf("trace %s has %d notice and %d process spans, want one message in it", d.TraceID, len(byName["notice"]), len(byName["process"]))
	}
	if notice.ParentSpanID != "" {
		t.Errorf("the notice span has parent %s; it starts the message's trace", notice.ParentSpanID)
	}
	// The queue hop: the worker's span is the notice's child.
	if process.ParentSpanID != notice.SpanID {
		t.Errorf("process span's parent %q, want the notice span %s across the queue", process.ParentSpanID, notice.SpanID)
	}
	for _, name := range []string{"read", "read target", "map", "write", "decision"} {
		for _, s := range byName[name] {
			if s.ParentSpanID != process.SpanID {
				t.Errorf("%s span's parent %q, want the process span %s", name, s.ParentSpanID, process.SpanID)
			}
		}
	}
	for _, s := range spans {
		if !slices.Contains([]string{"notice", "process", "read", "read target", "map", "write", "decision"}, s.Name) {
			t.Errorf("unexpected span %q in the message's trace", s.Name)
		}
	}
	if got := process.Attributes["fhirsync.reason"]; got != "created" {
		t.Errorf("process span reason %q, want created", got)
	}
	if got := process.Attributes["fhirsync.source"]; !strings.HasPrefix(got, "Patient/"+created.ID()) {
		t.Errorf("process span source %q, want the record reference", got)
	}
	if got := byName["decision"][0].Attributes["fhirsync.decision_id"]; got == "" {
		t.Error("the decision span does not name the decision")
	}

	// No span of any trace — the echo's included — carries the patient's
	// data.
	all := rcv.Spans()
	if len(all) <= len(spans) {
		t.Errorf("only the one trace was exported (%d spans); the poller's other notices and the echo are traced too", len(all))
	}
	for _, s := range all {
		for _, v := range []string{p.family, p.given, p.mrn, p.birthDate, p.email} {
			for _, text := range spanTexts(s) {
				if strings.Contains(strings.ToLower(text), strings.ToLower(v)) {
					t.Errorf("span %q carries patient data %q in %q", s.Name, v, text)
				}
			}
		}
	}
}

func names(spans []tracingtest.Span) []string {
	var out []string
	for _, s := range spans {
		out = append(out, s.Name)
	}
	return out
}

// spanTexts is everything a span says: name, attributes, events, links,
// status and resource.
func spanTexts(s tracingtest.Span) []string {
	out := []string{s.Name, s.Status}
	for _, m := range []map[string]string{s.Attributes, s.Resource} {
		for k, v := range m {
			out = append(out, k+"="+v)
		}
	}
	return append(append(out, s.Events...), s.Links...)
}
