-- Conflicts (docs/conflicts.md), owned by package logs: the outcome held
-- and the reason codes conflict_held, delete_held, conflict_resolved,
-- deactivated, conflict_deferred, delete_ignored and delete_overruled; the
-- decision's conflicts (attribute, policy, side overwritten; never a
-- value) in a JSON column; and held_conflicts, the conflicts waiting for a
-- person. The reason CHECK repeats the registry in logs/reasons.go (a test
-- keeps them in step).
ALTER TABLE sync_decisions ADD COLUMN conflicts TEXT NOT NULL DEFAULT '[]';

ALTER TABLE sync_decisions DROP CONSTRAINT sync_decisions_outcome_check;
ALTER TABLE sync_decisions ADD CONSTRAINT sync_decisions_outcome_check
	CHECK (outcome IN ('sent', 'skipped', 'held', 'failed', 'dead_lettered'));

ALTER TABLE sync_decisions DROP CONSTRAINT sync_decisions_reason_check;
ALTER TABLE sync_decisions ADD CONSTRAINT sync_decisions_reason_check CHECK (
	(outcome = 'sent' AND reason IN ('created', 'updated', 'deleted', 'conflict_resolved', 'deactivated'))
	OR (outcome = 'skipped' AND reason IN ('no_entity_map', 'map_disabled', 'direction_off', 'operation_off', 'record_gate_off', 'filtered', 'own_write_echo', 'stale_version', 'unchanged', 'source_gone', 'conflict_deferred', 'delete_ignored', 'delete_overruled'))
	OR (outcome = 'held' AND reason IN ('conflict_held', 'delete_held'))
	OR (outcome IN ('failed', 'dead_lettered') AND reason IN ('invalid_message', 'mapping_error', 'target_rejected', 'target_conflict', 'unauthorized', 'throttled', 'unavailable'))
	OR (outcome = 'dead_lettered' AND reason = 'attempts_exhausted')
);

-- Conflicts held for a person. At most one row per pair and attribute is
-- pending (open, or resolved and not yet written); holding it again
-- updates that row. Each side's value is kept only as a keyed hash the
-- agent computes and, when payload capture keys are configured, sealed
-- with AES-256-GCM bound to the row and side; otherwise not at all. The
-- sealed values are dropped once the conflict is applied or superseded.
CREATE TABLE held_conflicts (
	id           BIGSERIAL PRIMARY KEY,
	entity_map   TEXT NOT NULL CHECK (entity_map <> ''),
	fhir_type    TEXT NOT NULL DEFAULT '',
	fhir_id      TEXT NOT NULL CHECK (fhir_id <> ''),
	crm_entity   TEXT NOT NULL DEFAULT '',
	crm_id       TEXT NOT NULL DEFAULT '',
	attribute    TEXT NOT NULL DEFAULT '',
	deleted_side TEXT NOT NULL DEFAULT '' CHECK (deleted_side IN ('', 'fhir', 'crm')),
	message_id   TEXT NOT NULL DEFAULT '',
	fhir_hash    BYTEA,
	crm_hash     BYTEA,
	fhir_changed BOOLEAN NOT NULL DEFAULT FALSE,
	crm_changed  BOOLEAN NOT NULL DEFAULT FALSE,
	held_at      TIMESTAMPTZ NOT NULL,
	status       TEXT NOT NULL CHECK (status IN ('open', 'resolved', 'applied', 'superseded')),
	resolution   TEXT NOT NULL DEFAULT '' CHECK (resolution IN ('', 'fhir', 'crm')),
	resolved_by  TEXT NOT NULL DEFAULT '',
	resolved_at  TIMESTAMPTZ,
	applied_at   TIMESTAMPTZ,
	key_id       TEXT NOT NULL DEFAULT '',
	key_check    TEXT NOT NULL DEFAULT '',
	fhir_sealed  BYTEA,
	crm_sealed   BYTEA,
	CHECK ((status IN ('resolved', 'applied')) = (resolution <> '') OR status = 'superseded'),
	CHECK (attribute <> '' OR deleted_side <> '')
);

CREATE UNIQUE INDEX held_conflicts_pending ON held_conflicts (entity_map, fhir_id, attribute)
	WHERE status IN ('open', 'resolved');
CREATE INDEX held_conflicts_status ON held_conflicts (status, id);
