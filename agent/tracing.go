package agent

import (
	"context"
	"errors"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/trace"
	"go.opentelemetry.io/otel/trace/noop"

	"github.com/fhirsync/fhirsync/logs"
	"github.com/fhirsync/fhirsync/maps"
	"github.com/fhirsync/fhirsync/queues"
)

// Tracing (OpenTelemetry, off unless Deps.Tracer is set). A message's trace
// starts with its "notice" span where it was sent (queues.TraceSend); the
// worker continues it from the message's properties with a "process" span,
// under which "read", "read target", "map", "write" (or "delete",
// "deactivate") and "decision" record the stages.
//
// Span attributes follow the rule of process logs: record references (type
// and id), map names, reason codes, error classes and counts — never a
// field value, a business key or an endpoint's error text, which may quote
// values.

// tracerName is the instrumentation scope of the agent's spans.
const tracerName = "github.com/fhirsync/fhirsync/agent"

// tracerOf is the agent's tracer: a no-op one when tracing is off.
func tracerOf(tp trace.TracerProvider) trace.Tracer {
	if tp == nil {
		return noop.NewTracerProvider().Tracer(tracerName)
	}
	return tp.Tracer(tracerName)
}

// startProcess starts the span of processing m, continuing the trace its
// properties carry, and notes the trace id in the decision when the trace
// is sampled (kept by the backend).
func (p *pipeline) startProcess(ctx context.Context, m *queues.Received, d *logs.Decision) (context.Context, trace.Span) {
	tr := p.tracer
	if tr == nil {
		tr = tracerOf(nil)
	}
	ctx, span := tr.Start(queues.TraceContext(ctx, m.Properties), "process",
		trace.WithSpanKind(trace.SpanKindConsumer),
		trace.WithAttributes(
			attribute.String("messaging.operation.type", "process"),
			attribute.String("messaging.message.id", m.ID),
			attribute.Int("fhirsync.delivery_count", m.DeliveryCount)))
	if sc := span.SpanContext(); sc.IsSampled() {
		d.TraceID = sc.TraceID().String()
	}
	return ctx, span
}

// endProcess records what the message ended in on its span.
func endProcess(span trace.Span, d *logs.Decision) {
	if !span.IsRecording() {
		span.End()
		return
	}
	attrs := []attribute.KeyValue{
		attribute.String("fhirsync.direction", string(d.Direction)),
		attribute.String("fhirsync.outcome", string(d.Outcome)),
		attribute.String("fhirsync.reason", string(d.Reason)),
		attribute.Int("fhirsync.changed_fields", len(d.ChangedFields)),
	}
	if d.EntityMap != "" {
		attrs = append(attrs, attribute.String("fhirsync.entity_map", d.EntityMap), attribute.Int("fhirsync.map_version", d.MapVersion))
	}
	if d.Source.ID != "" {
		attrs = append(attrs, attribute.String("fhirsync.source", d.Source.String()))
	}
	if d.Target.ID != "" {
		attrs = append(attrs, attribute.String("fhirsync.target", d.Target.String()))
	}
	if d.ID != 0 {
		attrs = append(attrs, attribute.Int64("fhirsync.decision_id", d.ID))
	}
	span.SetAttributes(attrs...)
	if d.Outcome == logs.OutcomeFailed || d.Outcome == logs.OutcomeDeadLettered {
		span.SetStatus(codes.Error, string(d.Reason))
	}
	span.End()
}

// endStage ends a stage's span, marking a failure by its class alone.
func endStage(span trace.Span, err error) {
	if err != nil && !errors.Is(err, errGone) {
		span.SetStatus(codes.Error, errorClass(err))
	} else if err != nil {
		span.SetAttributes(attribute.Bool("fhirsync.gone", true))
	}
	span.End()
}

// traceFlows wraps each flow's source, target and mapping in spans.
func traceFlows(flows map[queues.Side]*flow, tr trace.Tracer) {
	for _, f := range flows {
		side, target := string(f.side), f.targetOf
		f.source = tracedSource{next: f.source, tr: tr, side: side}
		f.target = tracedTarget{next: f.target, tr: tr, side: target}
		if next := f.mapFor; next != nil {
			f.mapFor = func(ctx context.Context, m *maps.Mapping, src record, cur *record) (mapped, error) {
				ctx, span := tr.Start(ctx, "map", trace.WithAttributes(mapAttrs(m, cur)...))
				out, err := next(ctx, m, src, cur)
				mapEnd(span, out, err)
				return out, err
			}
		}
		if next := f.mapExcept; next != nil {
			f.mapExcept = func(ctx context.Context, m *maps.Mapping, src record, cur *record, skip maps.Except) (mapped, error) {
				ctx, span := tr.Start(ctx, "map", trace.WithAttributes(append(mapAttrs(m, cur), attribute.Int("fhirsync.skipped_attributes", len(skip)))...))
				out, err := next(ctx, m, src, cur, skip)
				mapEnd(span, out, err)
				return out, err
			}
		}
	}
}

func mapAttrs(m *maps.Mapping, cur *record) []attribute.KeyValue {
	return []attribute.KeyValue{attribute.String("fhirsync.entity_map", m.Name()), attribute.Bool("fhirsync.target_exists", cur != nil)}
}

func mapEnd(span trace.Span, out mapped, err error) {
	if span.IsRecording() {
		span.SetAttributes(attribute.Int("fhirsync.changed_fields", len(out.Changed)))
		if out.Filtered != "" {
			span.SetAttributes(attribute.String("fhirsync.filtered_by", out.Filtered))
		}
		if out.Gated != "" {
			span.SetAttributes(attribute.String("fhirsync.gated_by", out.Gated))
		}
	}
	var me *mappingError
	if errors.As(err, &me) {
		// The attribute map's name says where; the error text may quote
		// the value.
		span.SetAttributes(attribute.String("fhirsync.attribute_map", me.attribute))
	}
	endStage(span, err)
}

// tracedSource records each read of the source in a "read" span.
type tracedSource struct {
	next sourceSide
	tr   trace.Tracer
	side string
}

func (s tracedSource) read(ctx context.Context, m *maps.Mapping, id string) (record, error) {
	ctx, span := s.tr.Start(ctx, "read", trace.WithSpanKind(trace.SpanKindClient), trace.WithAttributes(
		attribute.String("fhirsync.side", s.side), attribute.String("fhirsync.entity_map", m.Name()), attribute.String("fhirsync.record_id", id)))
	r, err := s.next.read(ctx, m, id)
	if err == nil && span.IsRecording() {
		span.SetAttributes(attribute.String("fhirsync.record", refOf(r)))
	}
	endStage(span, err)
	return r, err
}

// tracedTarget records the target's lookups and writes.
type tracedTarget struct {
	next targetSide
	tr   trace.Tracer
	side string
}

func (t tracedTarget) start(ctx context.Context, name string, m *maps.Mapping, attrs ...attribute.KeyValue) (context.Context, trace.Span) {
	return t.tr.Start(ctx, name, trace.WithSpanKind(trace.SpanKindClient), trace.WithAttributes(append([]attribute.KeyValue{
		attribute.String("fhirsync.side", t.side), attribute.String("fhirsync.entity_map", m.Name())}, attrs...)...))
}

func (t tracedTarget) find(ctx context.Context, m *maps.Mapping, src record, cached *link) (record, error) {
	ctx, span := t.start(ctx, "read target", m, attribute.Bool("fhirsync.linked", cached != nil))
	r, err := t.next.find(ctx, m, src, cached)
	if err == nil && span.IsRecording() {
		span.SetAttributes(attribute.String("fhirsync.record", refOf(r)))
	}
	endStage(span, err)
	return r, err
}

func (t tracedTarget) write(ctx context.Context, m *maps.Mapping, src record, cur *record, out mapped) (written, error) {
	op := "update"
	if cur == nil {
		op = "create"
	}
	ctx, span := t.start(ctx, "write", m, attribute.String("fhirsync.operation", op), attribute.Int("fhirsync.changed_fields", len(out.Changed)))
	w, err := t.next.write(ctx, m, src, cur, out)
	if err == nil && span.IsRecording() {
		span.SetAttributes(attribute.String("fhirsync.record", w.ID), attribute.Bool("fhirsync.created", w.Created))
	}
	endStage(span, err)
	return w, err
}

func (t tracedTarget) remove(ctx context.Context, m *maps.Mapping, cur record) error {
	ctx, span := t.start(ctx, "delete", m, attribute.String("fhirsync.record", refOf(cur)))
	err := t.next.remove(ctx, m, cur)
	endStage(span, err)
	return err
}

func (t tracedTarget) deactivate(ctx context.Context, m *maps.Mapping, cur record) (written, error) {
	ctx, span := t.start(ctx, "deactivate", m, attribute.String("fhirsync.record", refOf(cur)))
	w, err := t.next.deactivate(ctx, m, cur)
	endStage(span, err)
	return w, err
}

// refOf is a record's reference for a span: type/id, with the version.
func refOf(r record) string {
	return logs.Ref{Type: r.Type, ID: r.ID, Version: r.Version}.String()
}

// commitTraced records u under a "decision" span.
func (p *pipeline) commitTraced(ctx context.Context, u *unit) error {
	if p.tracer == nil {
		return p.commit(ctx, u)
	}
	ctx, span := p.tracer.Start(ctx, "decision", trace.WithAttributes(
		attribute.String("fhirsync.outcome", string(u.d.Outcome)), attribute.String("fhirsync.reason", string(u.d.Reason))))
	err := p.commit(ctx, u)
	if err == nil && u.d.ID != 0 {
		span.SetAttributes(attribute.Int64("fhirsync.decision_id", u.d.ID))
	}
	endStage(span, err)
	return err
}
