-- Map policies (issue 15): entity maps may hold conflicts for a person
-- (conflict_policy 'hold'), say what a deletion does to the linked record
-- (delete_policy) and name a business key that links records created on
-- both sides (business_key_*: both empty when the map has none); attribute
-- maps, including those of expansion maps, may override the conflict
-- policy. ALTER TABLE fires no row triggers, so published versions keep
-- their rows; the new columns read as the defaults the model had before.
ALTER TABLE map_entity_maps DROP CONSTRAINT map_entity_maps_conflict_policy_check;
ALTER TABLE map_entity_maps ADD CONSTRAINT map_entity_maps_conflict_policy_check
	CHECK (conflict_policy IN ('', 'last-writer-wins', 'fhir-wins', 'crm-wins', 'hold'));
ALTER TABLE map_entity_maps ADD COLUMN delete_policy TEXT NOT NULL DEFAULT ''
	CHECK (delete_policy IN ('', 'propagate', 'deactivate', 'ignore'));
ALTER TABLE map_entity_maps ADD COLUMN business_key_fhir_system TEXT NOT NULL DEFAULT '';
ALTER TABLE map_entity_maps ADD COLUMN business_key_crm_attribute TEXT NOT NULL DEFAULT '';
ALTER TABLE map_attribute_maps ADD COLUMN conflict_policy TEXT NOT NULL DEFAULT ''
	CHECK (conflict_policy IN ('', 'last-writer-wins', 'fhir-wins', 'crm-wins', 'hold'));
