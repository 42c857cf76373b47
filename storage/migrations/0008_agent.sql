-- Correlation cache: which FHIR resource and which CRM record are the same
-- thing under an entity map. The authoritative keys live on the records
-- themselves (the CRM alternate key attribute and the FHIR identifier
-- system); this table is a cache that `fhirsync backfill --relink` rebuilds.
CREATE TABLE agent_links (
	entity_map   TEXT NOT NULL,
	fhir_type    TEXT NOT NULL,
	fhir_id      TEXT NOT NULL,
	crm_entity   TEXT NOT NULL,
	crm_id       TEXT NOT NULL,
	-- the last source versions synced in each direction, for stale checks
	fhir_version TEXT NOT NULL DEFAULT '',
	crm_version  TEXT NOT NULL DEFAULT '',
	updated_at   TIMESTAMP NOT NULL,
	PRIMARY KEY (entity_map, fhir_id)
);
CREATE UNIQUE INDEX agent_links_crm ON agent_links (entity_map, crm_id);

-- Versions the agent itself produced, so their change notices are skipped as
-- own_write_echo instead of being synced back (loop prevention).
CREATE TABLE agent_own_writes (
	side       TEXT NOT NULL CHECK (side IN ('fhir', 'crm')),
	rtype      TEXT NOT NULL,
	rid        TEXT NOT NULL,
	version    TEXT NOT NULL,
	written_at TIMESTAMP NOT NULL,
	PRIMARY KEY (side, rtype, rid, version)
);
CREATE INDEX agent_own_writes_age ON agent_own_writes (written_at);
