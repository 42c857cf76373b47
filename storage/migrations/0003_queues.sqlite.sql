-- Embedded queue (DESIGN.md §6). One table holds every queue's messages;
-- state says whether a row is in the main queue or its dead-letter
-- sub-queue. A row is available when visible_at has passed: receiving
-- sets lock_token and moves visible_at to the lock's expiry, so an expired
-- lock needs no sweeper. seq is AUTOINCREMENT so sequence numbers are never
-- reused, even after the newest row is deleted.
CREATE TABLE queue_messages (
	seq              INTEGER PRIMARY KEY AUTOINCREMENT,
	queue            TEXT NOT NULL,
	message_id       TEXT NOT NULL,
	session_key      TEXT NOT NULL DEFAULT '',
	body             BLOB NOT NULL,
	properties       TEXT,
	enqueued_at      TIMESTAMP NOT NULL,
	visible_at       TIMESTAMP NOT NULL,
	lock_token       TEXT,
	delivery_count   INTEGER NOT NULL DEFAULT 0 CHECK (delivery_count >= 0),
	redrive_count    INTEGER NOT NULL DEFAULT 0 CHECK (redrive_count >= 0),
	state            TEXT NOT NULL DEFAULT 'active' CHECK (state IN ('active', 'dead')),
	dead_reason      TEXT,
	dead_description TEXT,
	dead_at          TIMESTAMP
);

-- Receive walks a queue's active rows in sequence order; dead-letter
-- listing walks its dead rows the same way.
CREATE INDEX queue_messages_order ON queue_messages (queue, state, seq);
-- Per-session-key order: is there an older active row with the same key?
CREATE INDEX queue_messages_session ON queue_messages (queue, session_key, state, seq);

-- Duplicate detection: a MessageID is remembered until expires_at.
CREATE TABLE queue_message_ids (
	queue      TEXT NOT NULL,
	message_id TEXT NOT NULL,
	expires_at TIMESTAMP NOT NULL,
	PRIMARY KEY (queue, message_id)
);

CREATE INDEX queue_message_ids_expiry ON queue_message_ids (expires_at);

-- Names of the queues opened on this database, for listings.
CREATE TABLE queue_names (
	name       TEXT PRIMARY KEY,
	created_at TIMESTAMP NOT NULL
);
