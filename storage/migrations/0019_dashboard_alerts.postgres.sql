-- Dashboard and alerts (package agent/alerts). latency_us is the time from
-- the source change to the target write of a sent decision, when the feed
-- knew when the source changed; NULL otherwise. The dashboard index covers
-- what its aggregates read over a time range, so they never touch the
-- wide rows.
ALTER TABLE sync_decisions ADD COLUMN latency_us BIGINT CHECK (latency_us >= 0);
CREATE INDEX sync_decisions_dashboard ON sync_decisions (decided_at, entity_map, outcome, latency_us);

-- Alert rules made in the admin app; rules from the configuration file
-- are not stored. A rule names a webhook from the configuration, never a
-- URL, so the admin app cannot be made to post to arbitrary addresses.
CREATE TABLE alert_rules (
	name           TEXT PRIMARY KEY CHECK (name <> ''),
	kind           TEXT NOT NULL CHECK (kind IN ('dead_letter_rate', 'lag', 'auth_failures', 'budget_exhausted', 'feed_stopped')),
	threshold      DOUBLE PRECISION NOT NULL CHECK (threshold >= 0),
	window_seconds BIGINT NOT NULL CHECK (window_seconds > 0),
	webhook        TEXT NOT NULL DEFAULT '',
	enabled        BOOLEAN NOT NULL DEFAULT TRUE,
	updated_by     TEXT NOT NULL DEFAULT '',
	updated_at     TIMESTAMPTZ NOT NULL
);

-- Each time a rule started or stopped firing, and whether the webhook
-- took the notice. summary names counts, feeds and users, never a record.
CREATE TABLE alert_events (
	id             BIGSERIAL PRIMARY KEY,
	rule_name      TEXT NOT NULL,
	kind           TEXT NOT NULL,
	state          TEXT NOT NULL CHECK (state IN ('firing', 'resolved')),
	at             TIMESTAMPTZ NOT NULL,
	value          DOUBLE PRECISION NOT NULL,
	summary        TEXT NOT NULL DEFAULT '',
	delivered_at   TIMESTAMPTZ,
	delivery_error TEXT NOT NULL DEFAULT ''
);
CREATE INDEX alert_events_rule ON alert_events (rule_name, id);
CREATE INDEX alert_events_at ON alert_events (at, id);
