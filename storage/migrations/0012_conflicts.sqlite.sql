-- Conflicts (docs/conflicts.md), owned by package logs: the outcome held
-- and the reason codes conflict_held, delete_held, conflict_resolved,
-- deactivated, conflict_deferred, delete_ignored and delete_overruled; the
-- decision's conflicts (attribute, policy, side overwritten; never a
-- value) in a JSON column; and held_conflicts, the conflicts waiting for a
-- person.
--
-- SQLite cannot change a CHECK constraint, so sync_decisions is rebuilt
-- (https://www.sqlite.org/lang_altertable.html#otheralter). Migrations run
-- inside a transaction with foreign keys on, where PRAGMA foreign_keys
-- cannot be turned off; and dropping a table with foreign keys on deletes
-- its rows first, running the ON DELETE CASCADE of sync_decision_keys and
-- sync_decision_captures. So the two child tables are rebuilt with it:
-- each new table is filled from its old one, the old children are dropped
-- before the old parent (nothing references it then, and nothing
-- cascades), and the new tables are renamed into place. A rename rewrites
-- the REFERENCES clauses that name the renamed table, so the new children
-- end up referencing sync_decisions again.

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
	CONSTRAINT sync_decisions_reason_check CHECK (
		(outcome = 'sent' AND reason IN ('created', 'updated', 'deleted', 'conflict_resolved', 'deactivated'))
		OR (outcome = 'skipped' AND reason IN ('no_entity_map', 'map_disabled', 'direction_off', 'operation_off', 'record_gate_off', 'filtered', 'own_write_echo', 'stale_version', 'unchanged', 'source_gone', 'conflict_deferred', 'delete_ignored', 'delete_overruled'))
		OR (outcome = 'held' AND reason IN ('conflict_held', 'delete_held'))
		OR (outcome IN ('failed', 'dead_lettered') AND reason IN ('invalid_message', 'mapping_error', 'target_rejected', 'target_conflict', 'unauthorized', 'throttled', 'unavailable'))
		OR (outcome = 'dead_lettered' AND reason = 'attempts_exhausted')
	)
);

INSERT INTO sync_decisions_new (id, decided_at, correlation_id, message_id, direction, entity_map, map_version,
	source_type, source_id, source_version, target_type, target_id, target_version, outcome, reason,
	reason_subject, message, changed_fields, attempts, duration_us)
SELECT id, decided_at, correlation_id, message_id, direction, entity_map, map_version,
	source_type, source_id, source_version, target_type, target_id, target_version, outcome, reason,
	reason_subject, message, changed_fields, attempts, duration_us
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
	target_sealed BLOB
);

INSERT INTO sync_decision_captures_new (decision_id, captured_at, key_id, key_check, source_sealed, target_sealed)
SELECT decision_id, captured_at, key_id, key_check, source_sealed, target_sealed FROM sync_decision_captures;

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

-- Conflicts held for a person. At most one row per pair and attribute is
-- pending (open, or resolved and not yet written); holding it again
-- updates that row. Each side's value is kept only as a keyed hash the
-- agent computes and, when payload capture keys are configured, sealed
-- with AES-256-GCM bound to the row and side; otherwise not at all. The
-- sealed values are dropped once the conflict is applied or superseded.
CREATE TABLE held_conflicts (
	id           INTEGER PRIMARY KEY AUTOINCREMENT,
	entity_map   TEXT NOT NULL CHECK (entity_map <> ''),
	fhir_type    TEXT NOT NULL DEFAULT '',
	fhir_id      TEXT NOT NULL CHECK (fhir_id <> ''),
	crm_entity   TEXT NOT NULL DEFAULT '',
	crm_id       TEXT NOT NULL DEFAULT '',
	attribute    TEXT NOT NULL DEFAULT '',
	deleted_side TEXT NOT NULL DEFAULT '' CHECK (deleted_side IN ('', 'fhir', 'crm')),
	message_id   TEXT NOT NULL DEFAULT '',
	fhir_hash    BLOB,
	crm_hash     BLOB,
	fhir_changed BOOLEAN NOT NULL DEFAULT FALSE,
	crm_changed  BOOLEAN NOT NULL DEFAULT FALSE,
	held_at      TIMESTAMP NOT NULL,
	status       TEXT NOT NULL CHECK (status IN ('open', 'resolved', 'applied', 'superseded')),
	resolution   TEXT NOT NULL DEFAULT '' CHECK (resolution IN ('', 'fhir', 'crm')),
	resolved_by  TEXT NOT NULL DEFAULT '',
	resolved_at  TIMESTAMP,
	applied_at   TIMESTAMP,
	key_id       TEXT NOT NULL DEFAULT '',
	key_check    TEXT NOT NULL DEFAULT '',
	fhir_sealed  BLOB,
	crm_sealed   BLOB,
	CHECK ((status IN ('resolved', 'applied')) = (resolution <> '') OR status = 'superseded'),
	CHECK (attribute <> '' OR deleted_side <> '')
);

CREATE UNIQUE INDEX held_conflicts_pending ON held_conflicts (entity_map, fhir_id, attribute)
	WHERE status IN ('open', 'resolved');
CREATE INDEX held_conflicts_status ON held_conflicts (status, id);
