-- An attribute map's round (maps.AttributeMap.Round): the decimal places
-- a FHIR decimal keeps when written to a CRM Decimal, Double or Money
-- column, rounded half away from zero. NULL: not rounded. Dataverse keeps
-- at most 10 places (Decimal; Money at most 4, Double 5), so a larger
-- round means nothing.
ALTER TABLE map_attribute_maps ADD COLUMN round_places INTEGER
	CHECK (round_places IS NULL OR (round_places >= 0 AND round_places <= 10));
