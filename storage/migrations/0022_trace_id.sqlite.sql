-- The OpenTelemetry trace a decision's message was processed in, when
-- tracing was on and the trace sampled: 32 lowercase hex digits, or empty.
-- The admin app links it to the tracing backend. It names a trace, never a
-- record or a value.
ALTER TABLE sync_decisions ADD COLUMN trace_id TEXT NOT NULL DEFAULT ''
	CHECK (trace_id = '' OR (length(trace_id) = 32 AND trace_id NOT GLOB '*[^0-9a-f]*'));
