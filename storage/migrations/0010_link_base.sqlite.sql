-- Base state of each correlated pair: for every mapped attribute, a keyed
-- hash of the value last synced on each side — the common ancestor a
-- three-way merge compares both sides with. One row per link (keyed like
-- agent_links by entity map and FHIR id, with the CRM id it was written
-- for); the attribute→hash pairs are packed in one value (see agent/base.go
-- for the encoding): about 1.1 KB per pair for a 22-attribute map, where one
-- row per attribute would repeat the three key columns in every row and in
-- every primary-key entry, several times as much. No value is stored, only
-- HMAC-SHA256 digests truncated to 16 bytes.
CREATE TABLE agent_link_base (
	entity_map  TEXT NOT NULL CHECK (entity_map <> ''),
	fhir_id     TEXT NOT NULL CHECK (fhir_id <> ''),
	crm_id      TEXT NOT NULL CHECK (crm_id <> ''),
	map_version INTEGER NOT NULL CHECK (map_version >= 0),
	hashes      BLOB NOT NULL CHECK (typeof(hashes) = 'blob' AND length(hashes) >= 1),
	updated_at  TIMESTAMP NOT NULL,
	PRIMARY KEY (entity_map, fhir_id)
);
-- Reading the base from the CRM side, and dropping a base whose CRM record
-- was re-paired with another FHIR resource.
CREATE INDEX agent_link_base_crm ON agent_link_base (entity_map, crm_id);
