// Package embedded is the queues.Queue implementation on the project
// database: SQLite for a single machine, PostgreSQL when several processes
// share one database. It gives the same guarantees as the Service Bus
// adapter so the agent cannot tell them apart:
//
//   - peek-lock: Receive locks messages for Options.LockDuration; Complete,
//     Abandon (with a delay), DeadLetter and RenewLock need the live lock,
//     and fail with queues.ErrLockLost once it has lapsed, after which the
//     message is delivered again with its delivery count raised;
//   - past Options.MaxDeliveryCount deliveries a message is dead-lettered
//     with queues.ReasonMaxDeliveryCountExceeded;
//   - duplicate detection by MessageID within Options.DuplicateWindow,
//     counted from the first send and holding after completion;
//   - delayed visibility (Message.VisibleAt, Abandon's delay);
//   - per-session-key order with competing consumers: only the oldest
//     active message of a key is deliverable, so a key is blocked while that
//     message is locked, scheduled for later or abandoned with a delay. This
//     is stricter than Service Bus, where a message scheduled for later does
//     not hold back the session's other messages;
//   - dead letters that can be listed (PeekDeadLetters) and redriven with a
//     redrive counter (queues.PropRedriveCount) and a limit;
//   - nothing lost when the process dies: every state change is a single
//     transaction, and an expired lock simply makes the row visible again.
//
// Send, Receive and CompleteMany work on batches, one statement each on
// PostgreSQL, for throughput; CompleteTx completes inside the caller's
// transaction so a consumer's own writes and the completion commit
// together. On PostgreSQL competing receivers lock rows with
// FOR UPDATE SKIP LOCKED; on SQLite write transactions are serialised
// (BEGIN IMMEDIATE) and a Queue value serialises its own writers in Go.
// Lock expiry uses the clock of the process that received the message, so
// processes sharing a PostgreSQL database need synchronised clocks (NTP);
// skew well below the lock duration is harmless.
//
// All SQL lives in sql.go; the tables come from the 0003_queues migration.
// The package does not own metrics, the sync pipeline or the meaning of a
// message body (the agent and queues.Notice do).
package embedded
