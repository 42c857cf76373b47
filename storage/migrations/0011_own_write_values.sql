-- Echoes are told by content: with each version the agent wrote it keeps a
-- keyed hash (HMAC-SHA256 under a per-installation key) of the mapped
-- values it wrote and the names of the fields hashed, so that a change
-- notice without a version can be compared with what was written. No value
-- is kept in clear.
ALTER TABLE agent_own_writes ADD COLUMN value_hash TEXT NOT NULL DEFAULT '';
ALTER TABLE agent_own_writes ADD COLUMN value_fields TEXT NOT NULL DEFAULT '';

-- CRM versions are kept as the bare row version ("123"), the form change
-- notices carry, rather than the ETag (W/"123") the Web API answers with.
UPDATE agent_own_writes SET version = substr(version, 4, length(version) - 4)
WHERE side = 'crm' AND version LIKE 'W/"%"'
  AND NOT EXISTS (SELECT 1 FROM agent_own_writes o
                  WHERE o.side = agent_own_writes.side AND o.rtype = agent_own_writes.rtype
                    AND o.rid = agent_own_writes.rid
                    AND o.version = substr(agent_own_writes.version, 4, length(agent_own_writes.version) - 4));

