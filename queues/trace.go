package queues

import (
	"context"
	"maps"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/propagation"
	"go.opentelemetry.io/otel/trace"
)

// Application properties that carry a message's trace context across the
// queue hop, in the W3C Trace Context format
// (https://www.w3.org/TR/trace-context/). Service Bus documents
// Diagnostic-Id, holding a traceparent value, as the property producers
// and consumers use ("Distributed tracing and correlation through Service
// Bus messaging", https://learn.microsoft.com/azure/service-bus-messaging/service-bus-end-to-end-tracing);
// the Azure SDKs write traceparent and tracestate beside it, and read
// traceparent first. Both transports carry all three unchanged.
const (
	PropTraceParent  = "traceparent"
	PropTraceState   = "tracestate"
	PropDiagnosticID = "Diagnostic-Id"
)

// tracerName is the instrumentation scope of the spans this package starts.
const tracerName = "github.com/fhirsync/fhirsync/queues"

// w3c reads and writes traceparent and tracestate; it holds no state.
var w3c propagation.TraceContext

// TraceSend starts the "notice" span of each message in msgs that carries no
// trace context yet, and writes the span's context into the message's
// properties (a copy of its map: the caller's map is not changed). Each
// notice starts a trace of its own — one trace per message — linked to the
// span in ctx, if any (a feed's poll, or the message that split into
// several). The returned function ends the spans with the send's error.
//
// With a nil tp it does nothing: tracing is off. system names the
// transport (messaging.system) and queue the destination.
func TraceSend(ctx context.Context, tp trace.TracerProvider, system, queue string, msgs []Message) (end func(error)) {
	if tp == nil || len(msgs) == 0 {
		return func(error) {}
	}
	tr := tp.Tracer(tracerName)
	var opts []trace.SpanStartOption
	if sc := trace.SpanContextFromContext(ctx); sc.IsValid() {
		opts = append(opts, trace.WithLinks(trace.Link{SpanContext: sc}))
	}
	opts = append(opts, trace.WithNewRoot(), trace.WithSpanKind(trace.SpanKindProducer))
	spans := make([]trace.Span, 0, len(msgs))
	for i := range msgs {
		m := &msgs[i]
		if m.Properties[PropTraceParent] != "" {
			continue // a message sent again keeps its trace
		}
		attrs := []attribute.KeyValue{
			attribute.String("messaging.system", system),
			attribute.String("messaging.operation.type", "send"),
			attribute.String("messaging.destination.name", queue),
			attribute.String("messaging.message.id", m.ID),
		}
		// The notice's own small properties (Notice.Message): which side,
		// record type and event. Never a field value.
		for _, k := range []string{"side", "type", "event"} {
			if v := m.Properties[k]; v != "" {
				attrs = append(attrs, attribute.String("fhirsync.notice."+k, v))
			}
		}
		_, span := tr.Start(ctx, "notice", append(opts, trace.WithAttributes(attrs...))...)
		if !span.SpanContext().IsValid() {
			span.End()
			continue
		}
		props := make(map[string]string, len(m.Properties)+3)
		maps.Copy(props, m.Properties)
		w3c.Inject(trace.ContextWithSpan(context.Background(), span), propagation.MapCarrier(props))
		props[PropDiagnosticID] = props[PropTraceParent]
		m.Properties = props
		spans = append(spans, span)
	}
	return func(err error) {
		for _, s := range spans {
			if err != nil {
				s.RecordError(err)
				s.SetStatus(codes.Error, "send failed")
			}
			s.End()
		}
	}
}

// TraceContext returns ctx carrying the remote span context a received
// message's properties hold: traceparent and tracestate, else
// Diagnostic-Id. Without one (a message from Event Grid or a Dataverse
// service endpoint, or sent with tracing off) ctx is returned unchanged.
func TraceContext(ctx context.Context, props map[string]string) context.Context {
	if props[PropTraceParent] != "" {
		return w3c.Extract(ctx, propagation.MapCarrier(props))
	}
	if id := props[PropDiagnosticID]; id != "" {
		return w3c.Extract(ctx, propagation.MapCarrier{PropTraceParent: id})
	}
	return ctx
}
