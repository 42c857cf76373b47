-- Device streams (docs/device-streams.md), owned by package agent: the
-- open aggregation windows of stream maps, the readings already taken
-- (so a reading delivered again is not counted twice) and the aggregates
-- sent per patient for the rate limit. Windows are aligned to multiples
-- of their length since the Unix epoch; times are Unix seconds.
-- A window's values live here only while it is open and for one window
-- length after it closed (the repeat check); the sync log keeps one
-- decision per window with its counts (sync_decisions.readings, JSON),
-- never the values.
--
-- The reason codes aggregated, within_range, duplicate_reading and
-- rate_limited join the CHECK, which repeats the registry in
-- logs/reasons.go (a test keeps them in step).

-- An entity map's stream section (maps.Stream, JSON); NULL: not a
-- stream map.
ALTER TABLE map_entity_maps ADD COLUMN stream TEXT;

CREATE TABLE stream_windows (
	entity_map    TEXT NOT NULL,
	stream_key    TEXT NOT NULL,
	window_start  BIGINT NOT NULL,
	window_end    BIGINT NOT NULL CHECK (window_end > window_start),
	state         TEXT NOT NULL DEFAULT 'open' CHECK (state IN ('open', 'closing', 'closed')),
	subject       TEXT NOT NULL,
	code          TEXT NOT NULL,
	unit          TEXT NOT NULL DEFAULT '',
	kept          BIGINT NOT NULL DEFAULT 0 CHECK (kept >= 0),
	duplicates    BIGINT NOT NULL DEFAULT 0 CHECK (duplicates >= 0),
	sum_value     DOUBLE PRECISION NOT NULL DEFAULT 0,
	min_value     DOUBLE PRECISION,
	max_value     DOUBLE PRECISION,
	latest_value  TEXT NOT NULL DEFAULT '',
	latest_at_us  BIGINT NOT NULL DEFAULT 0,
	latest_id     TEXT NOT NULL DEFAULT '',
	last_value    TEXT NOT NULL DEFAULT '',
	claimed_by    TEXT NOT NULL DEFAULT '',
	claimed_until BIGINT NOT NULL DEFAULT 0,
	attempts      INTEGER NOT NULL DEFAULT 0,
	PRIMARY KEY (entity_map, stream_key, window_start)
);

CREATE INDEX stream_windows_due ON stream_windows (state, window_end);

-- reading is a 64-bit hash of the Observation's id and version; rows
-- older than the agent's repeat horizon (taken_at, Unix seconds) are
-- pruned.
CREATE TABLE stream_seen (
	entity_map TEXT NOT NULL,
	reading    BIGINT NOT NULL,
	taken_at   BIGINT NOT NULL,
	PRIMARY KEY (entity_map, reading)
);

CREATE INDEX stream_seen_taken ON stream_seen (taken_at);

CREATE TABLE stream_rate (
	entity_map   TEXT NOT NULL,
	subject      TEXT NOT NULL,
	period_start BIGINT NOT NULL,
	sent         INTEGER NOT NULL DEFAULT 0 CHECK (sent >= 0),
	PRIMARY KEY (entity_map, subject, period_start)
);

ALTER TABLE sync_decisions ADD COLUMN readings TEXT;

ALTER TABLE sync_decisions DROP CONSTRAINT sync_decisions_reason_check;
ALTER TABLE sync_decisions ADD CONSTRAINT sync_decisions_reason_check CHECK (
	(outcome = 'sent' AND reason IN ('created', 'updated', 'deleted', 'conflict_resolved', 'deactivated'))
	OR (outcome = 'skipped' AND reason IN ('no_entity_map', 'map_disabled', 'direction_off', 'operation_off', 'record_gate_off', 'filtered', 'own_write_echo', 'stale_version', 'unchanged', 'source_gone', 'conflict_deferred', 'delete_ignored', 'delete_overruled', 'child_row', 'aggregated', 'within_range', 'duplicate_reading', 'rate_limited'))
	OR (outcome = 'held' AND reason IN ('conflict_held', 'delete_held'))
	OR (outcome IN ('failed', 'dead_lettered') AND reason IN ('invalid_message', 'mapping_error', 'missing_reference', 'target_rejected', 'target_conflict', 'unauthorized', 'throttled', 'unavailable'))
	OR (outcome = 'dead_lettered' AND reason = 'attempts_exhausted')
);
