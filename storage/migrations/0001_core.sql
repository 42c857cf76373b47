-- Core: leases held by feed pollers and scheduled jobs so only one process
-- runs each at a time (DESIGN.md §9), and checkpoints for change feeds.
CREATE TABLE leases (
	name       TEXT PRIMARY KEY,
	holder     TEXT NOT NULL,
	expires_at TIMESTAMP NOT NULL,
	updated_at TIMESTAMP NOT NULL
);

CREATE TABLE feed_checkpoints (
	feed       TEXT PRIMARY KEY,
	position   TEXT NOT NULL,
	updated_at TIMESTAMP NOT NULL
);
