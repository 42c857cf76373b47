-- One row per walk of one side of an entity map by a backfill: where it
-- stands, so that a backfill killed half way resumes from its last
-- checkpoint, and how far it got, so that the admin app (another process)
-- shows its progress. position is what the side's paging resumes from:
-- the FHIR search's next link, or the last CRM primary id enqueued.
-- changed_at is the ChangedAt of the run's notices, kept so that a resumed
-- run re-sends a page with the same message ids. total is -1 when the
-- source did not say how many records there are.
CREATE TABLE backfill_runs (
	id           TEXT PRIMARY KEY,
	map_name     TEXT NOT NULL,
	side         TEXT NOT NULL CHECK (side IN ('fhir', 'crm')),
	origin       TEXT NOT NULL,
	state        TEXT NOT NULL CHECK (state IN ('running', 'interrupted', 'done', 'abandoned')),
	position     TEXT NOT NULL DEFAULT '',
	done         BIGINT NOT NULL DEFAULT 0,
	total        BIGINT NOT NULL DEFAULT -1,
	rate         DOUBLE PRECISION NOT NULL DEFAULT 0,
	queued       BIGINT NOT NULL DEFAULT 0,
	throttled_ms BIGINT NOT NULL DEFAULT 0,
	resumes      INTEGER NOT NULL DEFAULT 0,
	holder       TEXT NOT NULL DEFAULT '',
	error        TEXT NOT NULL DEFAULT '',
	changed_at   TIMESTAMP NOT NULL,
	started_at   TIMESTAMP NOT NULL,
	updated_at   TIMESTAMP NOT NULL,
	finished_at  TIMESTAMP
);
CREATE INDEX backfill_runs_unfinished ON backfill_runs (map_name, side, origin, state);
CREATE INDEX backfill_runs_started ON backfill_runs (started_at);
