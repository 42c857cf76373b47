package servicebus_test

import (
	"context"
	"testing"

	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"
	"go.opentelemetry.io/otel/trace"

	"github.com/fhirsync/fhirsync/queues"
	"github.com/fhirsync/fhirsync/queues/servicebus"
	"github.com/fhirsync/fhirsync/queues/servicebus/sbtest"
)

// TestTraceContextInApplicationProperties: over AMQP to the fake Service
// Bus, the notice span's context travels as the traceparent and
// Diagnostic-Id application properties and comes back on receipt.
func TestTraceContextInApplicationProperties(t *testing.T) {
	t.Parallel()
	srv := sbtest.Start(t, sbtest.QueueConfig{Name: "t", Sessions: true})
	rec := tracetest.NewSpanRecorder()
	tp := sdktrace.NewTracerProvider(sdktrace.WithSpanProcessor(rec))
	q := newQueue(t, servicebus.Config{ConnectionString: srv.ConnectionString(), Sessions: true, Tracer: tp}, "t")
	sent := []queues.Message{{ID: "t1", SessionKey: "fhir:Patient/1", Body: []byte("{}"), Properties: map[string]string{"side": "fhir"}}}
	if err := q.Send(t.Context(), sent...); err != nil {
		t.Fatal(err)
	}
	if len(sent[0].Properties) != 1 {
		t.Errorf("Send changed the caller's message: %v", sent[0].Properties)
	}
	m := receiveOne(t, q)
	ended := rec.Ended()
	if len(ended) != 1 || ended[0].Name() != "notice" {
		t.Fatalf("ended spans %v, want one notice", ended)
	}
	want := ended[0].SpanContext()
	sc := trace.SpanContextFromContext(queues.TraceContext(context.Background(), m.Properties))
	if sc.TraceID() != want.TraceID() || sc.SpanID() != want.SpanID() {
		t.Errorf("received trace context %v, want %v", sc, want)
	}
	if m.Properties[queues.PropDiagnosticID] != m.Properties[queues.PropTraceParent] || m.Properties["side"] != "fhir" {
		t.Errorf("application properties %v", m.Properties)
	}
	if err := q.Complete(t.Context(), m); err != nil {
		t.Fatal(err)
	}
}
