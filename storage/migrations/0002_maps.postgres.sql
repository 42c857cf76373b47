-- Maps (DESIGN.md §3): versions of the whole map set, each holding its
-- value, entity, expansion and attribute maps. A draft can be edited; a
-- published version is immutable (the triggers below refuse any change to
-- it or its rows). map_publications records every publication, so the
-- current set is the version of the newest publication and a rollback is a
-- new publication of an older version. Nested lists (operations, value map
-- entries, match keys, samples) are JSON text.
CREATE TABLE map_versions (
	id           BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
	number       INTEGER NOT NULL UNIQUE CHECK (number > 0),
	status       TEXT NOT NULL CHECK (status IN ('draft', 'published')),
	format       INTEGER NOT NULL,
	note         TEXT NOT NULL DEFAULT '',
	checksum     TEXT NOT NULL,
	created_by   TEXT NOT NULL DEFAULT '',
	created_at   TIMESTAMPTZ NOT NULL,
	updated_at   TIMESTAMPTZ NOT NULL,
	published_at TIMESTAMPTZ,
	published_by TEXT NOT NULL DEFAULT ''
);

CREATE INDEX map_versions_status ON map_versions (status, number);

CREATE TABLE map_publications (
	seq          BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
	version_id   BIGINT NOT NULL REFERENCES map_versions (id),
	published_at TIMESTAMPTZ NOT NULL,
	published_by TEXT NOT NULL DEFAULT '',
	note         TEXT NOT NULL DEFAULT '',
	rollback     BOOLEAN NOT NULL DEFAULT FALSE
);

CREATE TABLE map_value_maps (
	id           BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
	version_id   BIGINT NOT NULL REFERENCES map_versions (id) ON DELETE CASCADE,
	position     INTEGER NOT NULL,
	name         TEXT NOT NULL,
	description  TEXT NOT NULL DEFAULT '',
	system       TEXT NOT NULL DEFAULT '',
	entries      TEXT NOT NULL,
	unmapped     TEXT NOT NULL DEFAULT '' CHECK (unmapped IN ('', 'error', 'skip', 'default')),
	default_crm  INTEGER,
	default_fhir TEXT NOT NULL DEFAULT '',
	UNIQUE (version_id, name)
);

CREATE TABLE map_entity_maps (
	id                        BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
	version_id                BIGINT NOT NULL REFERENCES map_versions (id) ON DELETE CASCADE,
	position                  INTEGER NOT NULL,
	name                      TEXT NOT NULL,
	description               TEXT NOT NULL DEFAULT '',
	enabled                   BOOLEAN NOT NULL,
	crm_entity                TEXT NOT NULL,
	crm_entity_set            TEXT NOT NULL,
	crm_id_attribute          TEXT NOT NULL DEFAULT '',
	fhir_type                 TEXT NOT NULL,
	fhir_to_crm               BOOLEAN NOT NULL,
	fhir_to_crm_operations    TEXT NOT NULL,
	crm_to_fhir               BOOLEAN NOT NULL,
	crm_to_fhir_operations    TEXT NOT NULL,
	correlation_crm_attribute TEXT NOT NULL,
	correlation_fhir_system   TEXT NOT NULL,
	fhir_filter               TEXT,
	crm_filter                TEXT,
	crm_gate                  TEXT,
	conflict_policy           TEXT NOT NULL DEFAULT '' CHECK (conflict_policy IN ('', 'last-writer-wins', 'fhir-wins', 'crm-wins')),
	samples                   TEXT,
	UNIQUE (version_id, name)
);

CREATE INDEX map_entity_maps_fhir_type ON map_entity_maps (fhir_type);
CREATE INDEX map_entity_maps_crm_entity ON map_entity_maps (crm_entity);

CREATE TABLE map_expansion_maps (
	id                BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
	version_id        BIGINT NOT NULL REFERENCES map_versions (id) ON DELETE CASCADE,
	entity_map_id     BIGINT NOT NULL REFERENCES map_entity_maps (id) ON DELETE CASCADE,
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

CREATE TABLE map_attribute_maps (
	id                BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
	version_id        BIGINT NOT NULL REFERENCES map_versions (id) ON DELETE CASCADE,
	entity_map_id     BIGINT NOT NULL REFERENCES map_entity_maps (id) ON DELETE CASCADE,
	expansion_map_id  BIGINT REFERENCES map_expansion_maps (id) ON DELETE CASCADE,
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
	length_policy     TEXT NOT NULL DEFAULT '' CHECK (length_policy IN ('', 'error', 'truncate'))
);

CREATE INDEX map_attribute_maps_entity ON map_attribute_maps (entity_map_id, expansion_map_id, position);

-- Published versions are immutable.
CREATE FUNCTION map_versions_refuse_change() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
	IF TG_OP IN ('UPDATE', 'DELETE') AND OLD.status = 'published' THEN
		RAISE EXCEPTION 'published map versions are immutable';
	END IF;
	IF TG_OP = 'DELETE' THEN
		RETURN OLD;
	END IF;
	RETURN NEW;
END;
$$;

CREATE TRIGGER map_versions_immutable BEFORE UPDATE OR DELETE ON map_versions FOR EACH ROW EXECUTE FUNCTION map_versions_refuse_change();

CREATE FUNCTION map_rows_refuse_change() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
	vid BIGINT;
BEGIN
	IF TG_OP = 'INSERT' THEN
		vid := NEW.version_id;
	ELSE
		vid := OLD.version_id;
	END IF;
	IF (SELECT status FROM map_versions WHERE id = vid) = 'published' THEN
		RAISE EXCEPTION 'published map versions are immutable';
	END IF;
	IF TG_OP = 'DELETE' THEN
		RETURN OLD;
	END IF;
	RETURN NEW;
END;
$$;

CREATE TRIGGER map_value_maps_immutable BEFORE INSERT OR UPDATE OR DELETE ON map_value_maps FOR EACH ROW EXECUTE FUNCTION map_rows_refuse_change();
CREATE TRIGGER map_entity_maps_immutable BEFORE INSERT OR UPDATE OR DELETE ON map_entity_maps FOR EACH ROW EXECUTE FUNCTION map_rows_refuse_change();
CREATE TRIGGER map_expansion_maps_immutable BEFORE INSERT OR UPDATE OR DELETE ON map_expansion_maps FOR EACH ROW EXECUTE FUNCTION map_rows_refuse_change();
CREATE TRIGGER map_attribute_maps_immutable BEFORE INSERT OR UPDATE OR DELETE ON map_attribute_maps FOR EACH ROW EXECUTE FUNCTION map_rows_refuse_change();
