-- A concept lookup's section (maps.AttributeMap.Concept): an attribute map
-- of action lookup that resolves a CodeableConcept to a row of the data
-- model's msemr_codeableconcept table by code and type, as JSON
-- {"type","systems","create","navigation"}. NULL for every other attribute
-- map.
ALTER TABLE map_attribute_maps ADD COLUMN concept TEXT;
