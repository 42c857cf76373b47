-- Attribute maps may name fallback paths (a JSON array of path texts), tried
-- when the primary path's leading element is absent.
ALTER TABLE map_attribute_maps ADD COLUMN fallback_paths TEXT;
