-- The audit trail stays append-only, except that rows older than the
-- retention horizon may be deleted: the retention job moves the horizon to
-- now - logs.audit_retention and deletes what lies before it, in one
-- transaction. Updates and deletes of newer rows are refused.
CREATE TABLE audit_trail_horizon (
	id      INTEGER PRIMARY KEY CHECK (id = 1),
	horizon TIMESTAMP NOT NULL
);
INSERT INTO audit_trail_horizon (id, horizon) VALUES (1, '1970-01-01 00:00:00+00:00');

DROP TRIGGER audit_trail_no_delete;
CREATE TRIGGER audit_trail_no_delete BEFORE DELETE ON audit_trail
	WHEN OLD.at >= (SELECT horizon FROM audit_trail_horizon WHERE id = 1)
	BEGIN SELECT RAISE(ABORT, 'audit_trail is append-only: only rows past the retention horizon may be deleted'); END;
