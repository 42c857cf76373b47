-- A lookup by type (maps.Lookup.ByType): one CRM lookup column per
-- referenced FHIR resource type, an optional type column and its value map,
-- and the policy for other types, as JSON
-- {"byType":[{"type","entityMap","crmAttribute","navigation"}],
--  "typeAttribute","typeValueMap","otherTypes"}. NULL for every other
-- attribute map.
ALTER TABLE map_attribute_maps ADD COLUMN lookup_by_type TEXT;
