package queues_test

import (
	"context"
	"testing"

	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"
	"go.opentelemetry.io/otel/trace"

	"github.com/fhirsync/fhirsync/queues"
)

func TestTraceSend(t *testing.T) {
	t.Parallel()
	rec := tracetest.NewSpanRecorder()
	tp := sdktrace.NewTracerProvider(sdktrace.WithSpanProcessor(rec))
	t.Cleanup(func() { _ = tp.Shutdown(context.Background()) })

	// A feed's poll is running: each notice it sends starts a trace of
	// its own, linked to the poll.
	ctx, poll := tp.Tracer("test").Start(context.Background(), "poll")
	mine := map[string]string{"side": "fhir", "type": "Patient", "event": "updated"}
	msgs := []queues.Message{
		{ID: "fhir:Patient/1|updated|1", Properties: mine},
		{ID: "fhir:Patient/2|updated|1"},
		{ID: "fhir:Patient/3|updated|1", Properties: map[string]string{queues.PropTraceParent: "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"}},
	}
	end := queues.TraceSend(ctx, tp, "fhirsync_embedded", "fhir-changes", msgs)
	end(nil)
	poll.End()

	if len(mine) != 3 {
		t.Errorf("the caller's property map was changed: %v", mine)
	}
	if got := msgs[2].Properties[queues.PropTraceParent]; got != "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01" {
		t.Errorf("a message sent again lost its trace context: %q", got)
	}
	var notices []sdktrace.ReadOnlySpan
	for _, s := range rec.Ended() {
		if s.Name() == "notice" {
			notices = append(notices, s)
		}
	}
	if len(notices) != 2 {
		t.Fatalf("%d notice spans, want 2 (the third message already had a trace)", len(notices))
	}
	seen := map[trace.TraceID]bool{}
	for i, s := range notices {
		m := msgs[i]
		if s.SpanKind() != trace.SpanKindProducer {
			t.Errorf("notice %d kind %v, want producer", i, s.SpanKind())
		}
		if s.Parent().IsValid() {
			t.Errorf("notice %d has a parent; each message starts its own trace", i)
		}
		if seen[s.SpanContext().TraceID()] || s.SpanContext().TraceID() == poll.SpanContext().TraceID() {
			t.Errorf("notice %d shares a trace", i)
		}
		seen[s.SpanContext().TraceID()] = true
		if len(s.Links()) != 1 || s.Links()[0].SpanContext.SpanID() != poll.SpanContext().SpanID() {
			t.Errorf("notice %d links %v, want the poll", i, s.Links())
		}
		tp := m.Properties[queues.PropTraceParent]
		want := "00-" + s.SpanContext().TraceID().String() + "-" + s.SpanContext().SpanID().String() + "-01"
		if tp != want || m.Properties[queues.PropDiagnosticID] != want {
			t.Errorf("message %d traceparent %q, Diagnostic-Id %q, want %q", i, tp, m.Properties[queues.PropDiagnosticID], want)
		}
		got := trace.SpanContextFromContext(queues.TraceContext(context.Background(), m.Properties))
		if !got.IsRemote() || got.TraceID() != s.SpanContext().TraceID() || got.SpanID() != s.SpanContext().SpanID() {
			t.Errorf("message %d: TraceContext gives %v, want the notice span", i, got)
		}
	}
	if msgs[0].Properties["side"] != "fhir" {
		t.Errorf("the notice's own properties were lost: %v", msgs[0].Properties)
	}
}

func TestTraceSendRecordsTheSendError(t *testing.T) {
	t.Parallel()
	rec := tracetest.NewSpanRecorder()
	tp := sdktrace.NewTracerProvider(sdktrace.WithSpanProcessor(rec))
	msgs := []queues.Message{{ID: "a"}}
	queues.TraceSend(context.Background(), tp, "servicebus", "q", msgs)(queues.ErrTooLarge)
	if got := rec.Ended(); len(got) != 1 || got[0].Status().Code.String() != "Error" {
		t.Fatalf("spans %v, want one notice span with an error status", got)
	}
}

func TestTraceOff(t *testing.T) {
	t.Parallel()
	msgs := []queues.Message{{ID: "a", Properties: map[string]string{"side": "crm"}}}
	queues.TraceSend(context.Background(), nil, "servicebus", "q", msgs)(nil)
	if len(msgs[0].Properties) != 1 {
		t.Errorf("tracing off added properties: %v", msgs[0].Properties)
	}
	ctx := context.Background()
	if queues.TraceContext(ctx, msgs[0].Properties) != ctx {
		t.Error("a message without trace context changed the context")
	}
}

func TestTraceContextReadsDiagnosticID(t *testing.T) {
	t.Parallel()
	const id = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
	for _, tc := range []struct {
		name  string
		props map[string]string
		want  string
	}{
		{"diagnostic id alone", map[string]string{queues.PropDiagnosticID: id}, "4bf92f3577b34da6a3ce929d0e0e4736"},
		{"traceparent first", map[string]string{queues.PropDiagnosticID: id, queues.PropTraceParent: "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"}, "0af7651916cd43dd8448eb211c80319c"},
		{"malformed", map[string]string{queues.PropTraceParent: "00-zz-b7ad6b7169203331-01"}, "00000000000000000000000000000000"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			sc := trace.SpanContextFromContext(queues.TraceContext(context.Background(), tc.props))
			if got := sc.TraceID().String(); got != tc.want {
				t.Errorf("trace id %s, want %s", got, tc.want)
			}
		})
	}
}
