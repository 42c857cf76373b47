-- The audit trail stays append-only, except that rows older than the
-- retention horizon may be deleted: the retention job moves the horizon to
-- now - logs.audit_retention and deletes what lies before it, in one
-- transaction. Updates, truncation and deletes of newer rows are refused.
CREATE TABLE audit_trail_horizon (
	id      INTEGER PRIMARY KEY CHECK (id = 1),
	horizon TIMESTAMPTZ NOT NULL
);
INSERT INTO audit_trail_horizon (id, horizon) VALUES (1, '1970-01-01T00:00:00Z');

CREATE FUNCTION audit_trail_refuse_recent_delete() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
	IF OLD.at >= (SELECT horizon FROM audit_trail_horizon WHERE id = 1) THEN
		RAISE EXCEPTION 'audit_trail is append-only: only rows past the retention horizon may be deleted';
	END IF;
	RETURN OLD;
END;
$$;

DROP TRIGGER audit_trail_no_update ON audit_trail;
CREATE TRIGGER audit_trail_no_update BEFORE UPDATE ON audit_trail
	FOR EACH ROW EXECUTE FUNCTION audit_trail_refuse_change();
CREATE TRIGGER audit_trail_no_delete BEFORE DELETE ON audit_trail
	FOR EACH ROW EXECUTE FUNCTION audit_trail_refuse_recent_delete();
