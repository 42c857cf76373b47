package embedded_test

import (
	"context"
	"testing"
	"time"

	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"
	"go.opentelemetry.io/otel/trace"
	"gorm.io/gorm"

	"github.com/fhirsync/fhirsync/queues"
	"github.com/fhirsync/fhirsync/queues/embedded"
	"github.com/fhirsync/fhirsync/storage/storagetest"
)

// TestTraceContextCrossesTheQueue: a message sent with tracing on is
// received with the traceparent of its notice span in its properties, so
// the worker's spans continue the notice's trace.
func TestTraceContextCrossesTheQueue(t *testing.T) {
	t.Parallel()
	storagetest.Each(t, func(t *testing.T, db *gorm.DB) {
		rec := tracetest.NewSpanRecorder()
		tp := sdktrace.NewTracerProvider(sdktrace.WithSpanProcessor(rec))
		q := open(t, db, "traced", embedded.Options{Tracer: tp})
		ctx := context.Background()
		if err := q.Send(ctx, queues.Message{ID: "m1", Body: []byte("{}"), Properties: map[string]string{"side": "fhir"}}); err != nil {
			t.Fatal(err)
		}
		ms, err := q.Receive(ctx, 1, 5*time.Second)
		if err != nil || len(ms) != 1 {
			t.Fatalf("Receive = %d messages, %v", len(ms), err)
		}
		ended := rec.Ended()
		if len(ended) != 1 || ended[0].Name() != "notice" {
			t.Fatalf("ended spans %v, want one notice", ended)
		}
		sc := trace.SpanContextFromContext(queues.TraceContext(ctx, ms[0].Properties))
		if sc.TraceID() != ended[0].SpanContext().TraceID() || sc.SpanID() != ended[0].SpanContext().SpanID() {
			t.Errorf("received trace context %v, want the notice span %v", sc, ended[0].SpanContext())
		}
		if ms[0].Properties["side"] != "fhir" {
			t.Errorf("properties %v lost the message's own", ms[0].Properties)
		}
		_ = q.Complete(ctx, ms[0])

		// Tracing off: nothing is added.
		plain := open(t, db, "plain", embedded.Options{})
		if err := plain.Send(ctx, queues.Message{ID: "m2", Body: []byte("{}")}); err != nil {
			t.Fatal(err)
		}
		ms, err = plain.Receive(ctx, 1, 5*time.Second)
		if err != nil || len(ms) != 1 {
			t.Fatalf("Receive = %d messages, %v", len(ms), err)
		}
		if len(ms[0].Properties) != 0 {
			t.Errorf("tracing off, properties %v", ms[0].Properties)
		}
	})
}
