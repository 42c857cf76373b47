-- Map policies (issue 15): entity maps may hold conflicts for a person
-- (conflict_policy 'hold'), say what a deletion does to the linked record
-- (delete_policy) and name a business key that links records created on
-- both sides (business_key_*: both empty when the map has none); attribute
-- maps, including those of expansion maps, may override the conflict
-- policy.
--
-- SQLite cannot change a CHECK in place, so map_entity_maps is rebuilt. The
-- runner applies a migration inside a transaction with foreign keys on, where
-- PRAGMA foreign_keys cannot be switched off; dropping map_entity_maps would
-- then cascade-delete the expansion and attribute maps that reference it.
-- So those two children are rebuilt as well, under new names pointing at the
-- new parent, and the old tables are dropped children first: by the time a
-- parent goes, nothing references it. Renaming the new tables to the old
-- names rewrites the references between them. Ids, and the AUTOINCREMENT
-- counters, are kept. DROP TABLE fires no triggers, and the immutability
-- triggers are recreated on the new tables after the copy.

CREATE TABLE map_entity_maps_new (
	id                         INTEGER PRIMARY KEY AUTOINCREMENT,
	version_id                 INTEGER NOT NULL REFERENCES map_versions (id) ON DELETE CASCADE,
	position                   INTEGER NOT NULL,
	name                       TEXT NOT NULL,
	description                TEXT NOT NULL DEFAULT '',
	enabled                    BOOLEAN NOT NULL,
	crm_entity                 TEXT NOT NULL,
	crm_entity_set             TEXT NOT NULL,
	crm_id_attribute           TEXT NOT NULL DEFAULT '',
	fhir_type                  TEXT NOT NULL,
	fhir_to_crm                BOOLEAN NOT NULL,
	fhir_to_crm_operations     TEXT NOT NULL,
	crm_to_fhir                BOOLEAN NOT NULL,
	crm_to_fhir_operations     TEXT NOT NULL,
	correlation_crm_attribute  TEXT NOT NULL,
	correlation_fhir_system    TEXT NOT NULL,
	fhir_filter                TEXT,
	crm_filter                 TEXT,
	crm_gate                   TEXT,
	conflict_policy            TEXT NOT NULL DEFAULT '' CHECK (conflict_policy IN ('', 'last-writer-wins', 'fhir-wins', 'crm-wins', 'hold')),
	samples                    TEXT,
	delete_policy              TEXT NOT NULL DEFAULT '' CHECK (delete_policy IN ('', 'propagate', 'deactivate', 'ignore')),
	business_key_fhir_system   TEXT NOT NULL DEFAULT '',
	business_key_crm_attribute TEXT NOT NULL DEFAULT '',
	UNIQUE (version_id, name)
);

CREATE TABLE map_expansion_maps_new (
	id                INTEGER PRIMARY KEY AUTOINCREMENT,
	version_id        INTEGER NOT NULL REFERENCES map_versions (id) ON DELETE CASCADE,
	entity_map_id     INTEGER NOT NULL REFERENCES map_entity_maps_new (id) ON DELETE CASCADE,
	position          INTEGER NOT NULL,
	name              TEXT NOT NULL,
	enabled           BOOLEAN NOT NULL,
	fhir_path         TEXT NOT NULL,
	exclude           TEXT,
	direction         TEXT NOT NULL DEFAULT '' CHECK (direction IN ('', 'both', 'fhir-to-crm', 'crm-to-fhir')),
	crm_entity        TEXT NOT NULL,
	crm_entity_set    TEXT NOT NULL,
	crm_id_attribute  TEXT NOT NULL DEFAULT '',
	parent_lookup     TEXT NOT NULL,
	parent_navigation TEXT NOT NULL DEFAULT '',
	match_key         TEXT NOT NULL,
	on_remove         TEXT NOT NULL CHECK (on_remove IN ('delete', 'deactivate')),
	UNIQUE (entity_map_id, name)
);

CREATE TABLE map_attribute_maps_new (
	id                INTEGER PRIMARY KEY AUTOINCREMENT,
	version_id        INTEGER NOT NULL REFERENCES map_versions (id) ON DELETE CASCADE,
	entity_map_id     INTEGER NOT NULL REFERENCES map_entity_maps_new (id) ON DELETE CASCADE,
	expansion_map_id  INTEGER REFERENCES map_expansion_maps_new (id) ON DELETE CASCADE,
	position          INTEGER NOT NULL,
	name              TEXT NOT NULL,
	enabled           BOOLEAN NOT NULL,
	crm_attribute     TEXT NOT NULL,
	crm_type          TEXT NOT NULL CHECK (crm_type IN ('string', 'memo', 'int', 'decimal', 'money', 'bool', 'date-only', 'date-time', 'option-set', 'multi-select', 'lookup')),
	fhir_path         TEXT NOT NULL DEFAULT '',
	direction         TEXT NOT NULL DEFAULT '' CHECK (direction IN ('', 'both', 'fhir-to-crm', 'crm-to-fhir')),
	action            TEXT NOT NULL DEFAULT '' CHECK (action IN ('', 'copy', 'default', 'valueMap', 'lookup', 'computed')),
	default_value     TEXT NOT NULL DEFAULT '',
	value_map         TEXT NOT NULL DEFAULT '',
	lookup_entity_map TEXT NOT NULL DEFAULT '',
	lookup_navigation TEXT NOT NULL DEFAULT '',
	expression        TEXT NOT NULL DEFAULT '',
	required          BOOLEAN NOT NULL DEFAULT FALSE,
	max_length        INTEGER NOT NULL DEFAULT 0 CHECK (max_length >= 0),
	length_policy     TEXT NOT NULL DEFAULT '' CHECK (length_policy IN ('', 'error', 'truncate')),
	fallback_paths    TEXT,
	conflict_policy   TEXT NOT NULL DEFAULT '' CHECK (conflict_policy IN ('', 'last-writer-wins', 'fhir-wins', 'crm-wins', 'hold'))
);

INSERT INTO map_entity_maps_new (id, version_id, position, name, description, enabled, crm_entity, crm_entity_set,
	crm_id_attribute, fhir_type, fhir_to_crm, fhir_to_crm_operations, crm_to_fhir, crm_to_fhir_operations,
	correlation_crm_attribute, correlation_fhir_system, fhir_filter, crm_filter, crm_gate, conflict_policy, samples)
SELECT id, version_id, position, name, description, enabled, crm_entity, crm_entity_set,
	crm_id_attribute, fhir_type, fhir_to_crm, fhir_to_crm_operations, crm_to_fhir, crm_to_fhir_operations,
	correlation_crm_attribute, correlation_fhir_system, fhir_filter, crm_filter, crm_gate, conflict_policy, samples
FROM map_entity_maps;

INSERT INTO map_expansion_maps_new (id, version_id, entity_map_id, position, name, enabled, fhir_path, exclude, direction,
	crm_entity, crm_entity_set, crm_id_attribute, parent_lookup, parent_navigation, match_key, on_remove)
SELECT id, version_id, entity_map_id, position, name, enabled, fhir_path, exclude, direction,
	crm_entity, crm_entity_set, crm_id_attribute, parent_lookup, parent_navigation, match_key, on_remove
FROM map_expansion_maps;

INSERT INTO map_attribute_maps_new (id, version_id, entity_map_id, expansion_map_id, position, name, enabled, crm_attribute,
	crm_type, fhir_path, direction, action, default_value, value_map, lookup_entity_map, lookup_navigation, expression,
	required, max_length, length_policy, fallback_paths)
SELECT id, version_id, entity_map_id, expansion_map_id, position, name, enabled, crm_attribute,
	crm_type, fhir_path, direction, action, default_value, value_map, lookup_entity_map, lookup_navigation, expression,
	required, max_length, length_policy, fallback_paths
FROM map_attribute_maps;

-- Keep each AUTOINCREMENT counter, so an id once used (by a deleted draft)
-- is not handed out again.
DELETE FROM sqlite_sequence WHERE name IN ('map_entity_maps_new', 'map_expansion_maps_new', 'map_attribute_maps_new');
INSERT INTO sqlite_sequence (name, seq) SELECT name || '_new', seq FROM sqlite_sequence
	WHERE name IN ('map_entity_maps', 'map_expansion_maps', 'map_attribute_maps');

DROP TABLE map_attribute_maps;
DROP TABLE map_expansion_maps;
DROP TABLE map_entity_maps;

ALTER TABLE map_entity_maps_new RENAME TO map_entity_maps;
ALTER TABLE map_expansion_maps_new RENAME TO map_expansion_maps;
ALTER TABLE map_attribute_maps_new RENAME TO map_attribute_maps;

CREATE INDEX map_entity_maps_fhir_type ON map_entity_maps (fhir_type);
CREATE INDEX map_entity_maps_crm_entity ON map_entity_maps (crm_entity);
CREATE INDEX map_attribute_maps_entity ON map_attribute_maps (entity_map_id, expansion_map_id, position);

-- Published versions are immutable (as in 0002_maps).
CREATE TRIGGER map_entity_maps_immutable_ins BEFORE INSERT ON map_entity_maps WHEN (SELECT status FROM map_versions WHERE id = NEW.version_id) = 'published' BEGIN SELECT RAISE(ABORT, 'published map versions are immutable'); END;
CREATE TRIGGER map_entity_maps_immutable_upd BEFORE UPDATE ON map_entity_maps WHEN (SELECT status FROM map_versions WHERE id = OLD.version_id) = 'published' BEGIN SELECT RAISE(ABORT, 'published map versions are immutable'); END;
CREATE TRIGGER map_entity_maps_immutable_del BEFORE DELETE ON map_entity_maps WHEN (SELECT status FROM map_versions WHERE id = OLD.version_id) = 'published' BEGIN SELECT RAISE(ABORT, 'published map versions are immutable'); END;
CREATE TRIGGER map_expansion_maps_immutable_ins BEFORE INSERT ON map_expansion_maps WHEN (SELECT status FROM map_versions WHERE id = NEW.version_id) = 'published' BEGIN SELECT RAISE(ABORT, 'published map versions are immutable'); END;
CREATE TRIGGER map_expansion_maps_immutable_upd BEFORE UPDATE ON map_expansion_maps WHEN (SELECT status FROM map_versions WHERE id = OLD.version_id) = 'published' BEGIN SELECT RAISE(ABORT, 'published map versions are immutable'); END;
CREATE TRIGGER map_expansion_maps_immutable_del BEFORE DELETE ON map_expansion_maps WHEN (SELECT status FROM map_versions WHERE id = OLD.version_id) = 'published' BEGIN SELECT RAISE(ABORT, 'published map versions are immutable'); END;
CREATE TRIGGER map_attribute_maps_immutable_ins BEFORE INSERT ON map_attribute_maps WHEN (SELECT status FROM map_versions WHERE id = NEW.version_id) = 'published' BEGIN SELECT RAISE(ABORT, 'published map versions are immutable'); END;
CREATE TRIGGER map_attribute_maps_immutable_upd BEFORE UPDATE ON map_attribute_maps WHEN (SELECT status FROM map_versions WHERE id = OLD.version_id) = 'published' BEGIN SELECT RAISE(ABORT, 'published map versions are immutable'); END;
CREATE TRIGGER map_attribute_maps_immutable_del BEFORE DELETE ON map_attribute_maps WHEN (SELECT status FROM map_versions WHERE id = OLD.version_id) = 'published' BEGIN SELECT RAISE(ABORT, 'published map versions are immutable'); END;
