-- The time of the last edit on each side of a linked pair that fhirsync
-- did not make itself (FHIR meta.lastUpdated, CRM modifiedon of the last
-- version read that fhirsync had not written), kept with the base state:
-- last-writer-wins orders two edits by these, since a record's modified
-- time also moves when fhirsync writes to it. NULL: not known.
ALTER TABLE agent_link_base ADD COLUMN fhir_edited_at TIMESTAMP;
ALTER TABLE agent_link_base ADD COLUMN crm_edited_at TIMESTAMP;
