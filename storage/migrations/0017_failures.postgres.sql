-- Failures (docs/sync-log.md), owned by package logs: the reason codes
-- missing_reference (a lookup names a record not synced yet) and
-- child_row (a change to a child row an expansion map writes with its
-- parent); and the endpoint's full error message, which may quote record
-- values, sealed with the payload capture (error_sealed) so that it
-- follows the capture's retention and PHI rules. The redacted message
-- and the endpoint's code travel in the attempts column. The reason CHECK
-- repeats the registry in logs/reasons.go (a test keeps them in step).
ALTER TABLE sync_decision_captures ADD COLUMN error_sealed BYTEA;

ALTER TABLE sync_decisions DROP CONSTRAINT sync_decisions_reason_check;
ALTER TABLE sync_decisions ADD CONSTRAINT sync_decisions_reason_check CHECK (
	(outcome = 'sent' AND reason IN ('created', 'updated', 'deleted', 'conflict_resolved', 'deactivated'))
	OR (outcome = 'skipped' AND reason IN ('no_entity_map', 'map_disabled', 'direction_off', 'operation_off', 'record_gate_off', 'filtered', 'own_write_echo', 'stale_version', 'unchanged', 'source_gone', 'conflict_deferred', 'delete_ignored', 'delete_overruled', 'child_row'))
	OR (outcome = 'held' AND reason IN ('conflict_held', 'delete_held'))
	OR (outcome IN ('failed', 'dead_lettered') AND reason IN ('invalid_message', 'mapping_error', 'missing_reference', 'target_rejected', 'target_conflict', 'unauthorized', 'throttled', 'unavailable'))
	OR (outcome = 'dead_lettered' AND reason = 'attempts_exhausted')
);
