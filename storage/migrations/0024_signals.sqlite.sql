-- Signals to care coordinators (docs/signals.md), owned by package agent
-- and maps: an entity map's signal section, and the reason codes
-- signal_opened, signal_updated, signal_closed and
-- below_signal_threshold, which join the CHECK that repeats the registry
-- in logs/reasons.go. SQLite cannot change a CHECK constraint, so
-- sync_decisions and its two child tables are rebuilt as in
-- 0023_stream_windows.sqlite.sql.

-- An entity map's signal section (maps.Signal, JSON); NULL: not a
-- signal map.
ALTER TABLE map_entity_maps ADD COLUMN signal TEXT;

CREATE TABLE sync_decisions_new (
	id             INTEGER PRIMARY KEY AUTOINCREMENT,
	decided_at     TIMESTAMP NOT NULL,
	correlation_id TEXT NOT NULL DEFAULT '',
	message_id     TEXT NOT NULL DEFAULT '',
	direction      TEXT NOT NULL CHECK (direction IN ('fhir_to_crm', 'crm_to_fhir')),
	entity_map     TEXT NOT NULL DEFAULT '',
	map_version    INTEGER NOT NULL DEFAULT 0,
	source_type    TEXT NOT NULL DEFAULT '',
	source_id      TEXT NOT NULL DEFAULT '',
	source_version TEXT NOT NULL DEFAULT '',
	target_type    TEXT NOT NULL DEFAULT '',
	target_id      TEXT NOT NULL DEFAULT '',
	target_version TEXT NOT NULL DEFAULT '',
	outcome        TEXT NOT NULL CHECK (outcome IN ('sent', 'skipped', 'held', 'failed', 'dead_lettered')),
	reason         TEXT NOT NULL,
	reason_subject TEXT NOT NULL DEFAULT '',
	message        TEXT NOT NULL DEFAULT '',
	changed_fields TEXT NOT NULL DEFAULT '[]',
	attempts       TEXT NOT NULL DEFAULT '[]',
	duration_us    BIGINT NOT NULL DEFAULT 0 CHECK (duration_us >= 0),
	conflicts      TEXT NOT NULL DEFAULT '[]',
	latency_us     BIGINT CHECK (latency_us >= 0),
	trace_id       TEXT NOT NULL DEFAULT ''
		CHECK (trace_id = '' OR (length(trace_id) = 32 AND trace_id NOT GLOB '*[^0-9a-f]*')),
	readings       TEXT,
	CONSTRAINT sync_decisions_reason_check CHECK (
		(outcome = 'sent' AND reason IN ('created', 'updated', 'deleted', 'conflict_resolved', 'deactivated', 'signal_opened', 'signal_updated', 'signal_closed'))
		OR (outcome = 'skipped' AND reason IN ('no_entity_map', 'map_disabled', 'direction_off', 'operation_off', 'record_gate_off', 'filtered', 'own_write_echo', 'stale_version', 'unchanged', 'source_gone', 'conflict_deferred', 'delete_ignored', 'delete_overruled', 'child_row', 'aggregated', 'within_range', 'duplicate_reading', 'rate_limited', 'below_signal_threshold'))
		OR (outcome = 'held' AND reason IN ('conflict_held', 'delete_held'))
		OR (outcome IN ('failed', 'dead_lettered') AND reason IN ('invalid_message', 'mapping_error', 'missing_reference', 'target_rejected', 'target_conflict', 'unauthorized', 'throttled', 'unavailable'))
		OR (outcome = 'dead_lettered' AND reason = 'attempts_exhausted')
	)
);

INSERT INTO sync_decisions_new (id, decided_at, correlation_id, message_id, direction, entity_map, map_version,
	source_type, source_id, source_version, target_type, target_id, target_version, outcome, reason,
	reason_subject, message, changed_fields, attempts, duration_us, conflicts, latency_us, trace_id, readings)
SELECT id, decided_at, correlation_id, message_id, direction, entity_map, map_version,
	source_type, source_id, source_version, target_type, target_id, target_version, outcome, reason,
	reason_subject, message, changed_fields, attempts, duration_us, conflicts, latency_us, trace_id, readings
FROM sync_decisions;

-- AUTOINCREMENT never reuses an id, even of a decision retention deleted:
-- the new table continues from the old one's counter.
DELETE FROM sqlite_sequence WHERE name = 'sync_decisions_new';
INSERT INTO sqlite_sequence (name, seq) SELECT 'sync_decisions_new', seq FROM sqlite_sequence WHERE name = 'sync_decisions';

CREATE TABLE sync_decision_keys_new (
	decision_id BIGINT NOT NULL REFERENCES sync_decisions_new (id) ON DELETE CASCADE,
	name        TEXT NOT NULL,
	hash        TEXT NOT NULL,
	PRIMARY KEY (decision_id, name)
);

INSERT INTO sync_decision_keys_new (decision_id, name, hash)
SELECT decision_id, name, hash FROM sync_decision_keys;

CREATE TABLE sync_decision_captures_new (
	decision_id   BIGINT PRIMARY KEY REFERENCES sync_decisions_new (id) ON DELETE CASCADE,
	captured_at   TIMESTAMP NOT NULL,
	key_id        TEXT NOT NULL,
	key_check     TEXT NOT NULL,
	source_sealed BLOB,
	target_sealed BLOB,
	error_sealed  BLOB
);

INSERT INTO sync_decision_captures_new (decision_id, captured_at, key_id, key_check, source_sealed, target_sealed, error_sealed)
SELECT decision_id, captured_at, key_id, key_check, source_sealed, target_sealed, error_sealed FROM sync_decision_captures;

DROP TABLE sync_decision_keys;
DROP TABLE sync_decision_captures;
DROP TABLE sync_decisions;

ALTER TABLE sync_decisions_new RENAME TO sync_decisions;
ALTER TABLE sync_decision_keys_new RENAME TO sync_decision_keys;
ALTER TABLE sync_decision_captures_new RENAME TO sync_decision_captures;

CREATE INDEX sync_decisions_time ON sync_decisions (decided_at, id);
CREATE INDEX sync_decisions_source ON sync_decisions (source_id, decided_at, id);
CREATE INDEX sync_decisions_target ON sync_decisions (target_id, decided_at, id);
CREATE INDEX sync_decisions_map ON sync_decisions (entity_map, decided_at, id);
CREATE INDEX sync_decisions_outcome ON sync_decisions (outcome, decided_at, id);
CREATE INDEX sync_decisions_reason ON sync_decisions (reason, decided_at, id);
CREATE INDEX sync_decisions_message ON sync_decisions (message_id);
CREATE INDEX sync_decision_keys_hash ON sync_decision_keys (hash);
CREATE INDEX sync_decision_captures_time ON sync_decision_captures (captured_at);
CREATE INDEX sync_decisions_dashboard ON sync_decisions (decided_at, entity_map, outcome, latency_us);
