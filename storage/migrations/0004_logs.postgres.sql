-- Sync log (DESIGN.md §4, §5), owned by package logs: one row per decision,
-- keyed hashes of business keys, opt-in encrypted payload captures, and the
-- append-only audit trail. The reason CHECK repeats the registry in
-- logs/reasons.go (a test keeps them in step); a new code is a new migration.
CREATE TABLE sync_decisions (
	id             BIGSERIAL PRIMARY KEY,
	decided_at     TIMESTAMPTZ NOT NULL,
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
	outcome        TEXT NOT NULL CHECK (outcome IN ('sent', 'skipped', 'failed', 'dead_lettered')),
	reason         TEXT NOT NULL,
	reason_subject TEXT NOT NULL DEFAULT '',
	message        TEXT NOT NULL DEFAULT '',
	changed_fields TEXT NOT NULL DEFAULT '[]',
	attempts       TEXT NOT NULL DEFAULT '[]',
	duration_us    BIGINT NOT NULL DEFAULT 0 CHECK (duration_us >= 0),
	CONSTRAINT sync_decisions_reason_check CHECK (
		(outcome = 'sent' AND reason IN ('created', 'updated', 'deleted'))
		OR (outcome = 'skipped' AND reason IN ('no_entity_map', 'map_disabled', 'direction_off', 'operation_off', 'record_gate_off', 'filtered', 'own_write_echo', 'stale_version', 'unchanged', 'source_gone'))
		OR (outcome IN ('failed', 'dead_lettered') AND reason IN ('invalid_message', 'mapping_error', 'target_rejected', 'target_conflict', 'unauthorized', 'throttled', 'unavailable'))
		OR (outcome = 'dead_lettered' AND reason = 'attempts_exhausted')
	)
);

CREATE INDEX sync_decisions_time ON sync_decisions (decided_at, id);
CREATE INDEX sync_decisions_source ON sync_decisions (source_id, decided_at, id);
CREATE INDEX sync_decisions_target ON sync_decisions (target_id, decided_at, id);
CREATE INDEX sync_decisions_map ON sync_decisions (entity_map, decided_at, id);
CREATE INDEX sync_decisions_outcome ON sync_decisions (outcome, decided_at, id);
CREATE INDEX sync_decisions_reason ON sync_decisions (reason, decided_at, id);
CREATE INDEX sync_decisions_message ON sync_decisions (message_id);

-- Business keys (MRN, CRM id, ...) are stored only as HMAC-SHA256 of
-- name and value under a configured secret, never in clear.
CREATE TABLE sync_decision_keys (
	decision_id BIGINT NOT NULL REFERENCES sync_decisions (id) ON DELETE CASCADE,
	name        TEXT NOT NULL,
	hash        TEXT NOT NULL,
	PRIMARY KEY (decision_id, name)
);

CREATE INDEX sync_decision_keys_hash ON sync_decision_keys (hash);

-- Payload snapshots, AES-256-GCM sealed; present only when capture is on.
CREATE TABLE sync_decision_captures (
	decision_id   BIGINT PRIMARY KEY REFERENCES sync_decisions (id) ON DELETE CASCADE,
	captured_at   TIMESTAMPTZ NOT NULL,
	key_id        TEXT NOT NULL,
	key_check     TEXT NOT NULL,
	source_sealed BYTEA,
	target_sealed BYTEA
);

CREATE INDEX sync_decision_captures_time ON sync_decision_captures (captured_at);

-- Who did what to which object, and when. Append-only.
CREATE TABLE audit_trail (
	id             BIGSERIAL PRIMARY KEY,
	at             TIMESTAMPTZ NOT NULL,
	actor          TEXT NOT NULL CHECK (actor <> ''),
	action         TEXT NOT NULL CHECK (action <> ''),
	object_type    TEXT NOT NULL DEFAULT '',
	object_id      TEXT NOT NULL DEFAULT '',
	before_summary TEXT NOT NULL DEFAULT '',
	after_summary  TEXT NOT NULL DEFAULT ''
);

CREATE INDEX audit_trail_time ON audit_trail (at, id);
CREATE INDEX audit_trail_actor ON audit_trail (actor, at, id);
CREATE INDEX audit_trail_object ON audit_trail (object_type, object_id, at, id);

CREATE FUNCTION audit_trail_refuse_change() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
	RAISE EXCEPTION 'audit_trail is append-only';
END;
$$;

CREATE TRIGGER audit_trail_no_update BEFORE UPDATE OR DELETE ON audit_trail
	FOR EACH ROW EXECUTE FUNCTION audit_trail_refuse_change();

CREATE TRIGGER audit_trail_no_truncate BEFORE TRUNCATE ON audit_trail
	FOR EACH STATEMENT EXECUTE FUNCTION audit_trail_refuse_change();
