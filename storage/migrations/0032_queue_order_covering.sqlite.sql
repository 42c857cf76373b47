-- The embedded queue's order index also holds each message's visible_at,
-- session_key and lock_token, so that counting a queue's messages by state
-- (Queue.Depth: active, scheduled, dead-lettered) and picking the ready
-- messages read the index alone. Without them SQLite read every message's
-- row, body and all, to count: 48 ms for a backlog of 30,000 change
-- notices of 1.5 KB (BenchmarkDepth; 7 ms from the index), on every depth
-- sample and every wait of a backfill for room in the queue. Locking a
-- message already rewrote this index entry (its UPDATE sets state), so the
-- wider entry adds no index write there; abandoning a message and renewing
-- a lock now rewrite it too, once each.
DROP INDEX queue_messages_order;
CREATE INDEX queue_messages_order ON queue_messages (queue, state, seq, visible_at, session_key, lock_token);
