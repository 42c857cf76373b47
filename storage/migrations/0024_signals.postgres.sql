-- Signals to care coordinators (docs/signals.md): an entity map's signal
-- section, and the reason codes signal_opened, signal_updated,
-- signal_closed and below_signal_threshold in the CHECK that repeats the
-- registry in logs/reasons.go (a test keeps them in step).

-- An entity map's signal section (maps.Signal, JSON); NULL: not a
-- signal map.
ALTER TABLE map_entity_maps ADD COLUMN signal TEXT;

ALTER TABLE sync_decisions DROP CONSTRAINT sync_decisions_reason_check;
ALTER TABLE sync_decisions ADD CONSTRAINT sync_decisions_reason_check CHECK (
	(outcome = 'sent' AND reason IN ('created', 'updated', 'deleted', 'conflict_resolved', 'deactivated', 'signal_opened', 'signal_updated', 'signal_closed'))
	OR (outcome = 'skipped' AND reason IN ('no_entity_map', 'map_disabled', 'direction_off', 'operation_off', 'record_gate_off', 'filtered', 'own_write_echo', 'stale_version', 'unchanged', 'source_gone', 'conflict_deferred', 'delete_ignored', 'delete_overruled', 'child_row', 'aggregated', 'within_range', 'duplicate_reading', 'rate_limited', 'below_signal_threshold'))
	OR (outcome = 'held' AND reason IN ('conflict_held', 'delete_held'))
	OR (outcome IN ('failed', 'dead_lettered') AND reason IN ('invalid_message', 'mapping_error', 'missing_reference', 'target_rejected', 'target_conflict', 'unauthorized', 'throttled', 'unavailable'))
	OR (outcome = 'dead_lettered' AND reason = 'attempts_exhausted')
);
