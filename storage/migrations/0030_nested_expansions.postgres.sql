-- An expansion map inside an expansion map (maps.ExpansionMap.Expansions):
-- its row names the expansion it sits in. NULL: a top-level expansion of
-- its entity map. Names stay unique within the entity map
-- (UNIQUE (entity_map_id, name)), nested ones included, as the engine
-- keys child rows by expansion name.
ALTER TABLE map_expansion_maps ADD COLUMN parent_expansion_id BIGINT
	REFERENCES map_expansion_maps (id) ON DELETE CASCADE;
