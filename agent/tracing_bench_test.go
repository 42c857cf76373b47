package agent

import (
	"context"
	"fmt"
	"testing"

	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"

	"github.com/fhirsync/fhirsync/queues"
	"github.com/fhirsync/fhirsync/storage"
	"github.com/fhirsync/fhirsync/storage/storagetest"
)

// BenchmarkTracingPerMessage compares one message through the pipeline
// (an update read, mapped, written and decided on SQLite, against
// in-memory sides) with tracing off — the no-op tracer, no exporter — and
// on: a notice span sent with it, the process, read, read target, map,
// write and decision spans, batched to an exporter that drops them.
func BenchmarkTracingPerMessage(b *testing.B) {
	for _, on := range []bool{false, true} {
		name := "off"
		if on {
			name = "on"
		}
		b.Run(name, func(b *testing.B) {
			h := newHarness(b, storagetest.Open(b, storage.SQLite))
			var tp *sdktrace.TracerProvider
			if on {
				tp = sdktrace.NewTracerProvider(sdktrace.WithBatcher(tracetest.NewNoopExporter()))
				b.Cleanup(func() { _ = tp.Shutdown(context.Background()) })
				h.p.tracer = tracerOf(tp)
				traceFlows(h.p.flows, h.p.tracer)
			}
			ctx := context.Background()
			const records = 64
			for i := range records {
				id := fmt.Sprintf("p%d", i)
				h.fhir.put(id, "v0")
				h.p.handle(ctx, notice(b, queues.SideFHIR, "Patient", id, "", queues.EventCreated, 1))
			}
			b.ReportAllocs()
			b.ResetTimer()
			for i := range b.N {
				id := fmt.Sprintf("p%d", i%records)
				h.fhir.put(id, fmt.Sprint("v", i+1))
				m := notice(b, queues.SideFHIR, "Patient", id, "", queues.EventUpdated, 1)
				if on {
					msgs := []queues.Message{m.Message}
					queues.TraceSend(ctx, tp, "bench", "fhir-changes", msgs)(nil)
					m.Message = msgs[0]
				}
				if s := h.p.handle(ctx, m); s.kind != settleComplete {
					b.Fatalf("message %d settled %v, want complete", i, s.kind)
				}
			}
		})
	}
}
