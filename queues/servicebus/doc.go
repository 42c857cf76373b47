// Package servicebus implements the queues.Queue contract on Azure Service
// Bus with the azservicebus client, authenticated by a connection string or
// by azidentity (DefaultAzureCredential, managed identity, client secret).
//
// It owns the mapping from the contract onto Service Bus: peek-lock
// receives with background lock renewal until settlement, complete /
// abandon / dead-letter, sessions for per-key order on session-enabled
// queues, scheduled delivery, the $DeadLetterQueue sub-queue (peek and
// redrive) and the message size limit, checked before sending. It does not
// create queues or change their settings; lock duration, maximum delivery
// count and duplicate detection are properties of the queue in the namespace.
//
// Where Service Bus has no direct equivalent the adapter composes one:
//
//   - Abandon with a delay schedules a copy of the message for later
//     (ScheduleMessages) and completes the original. The copy travels with a
//     transport MessageID derived from the original (so duplicate detection
//     does not drop it) and carries the original ID and the delivery count so
//     far in application properties; Received restores both. Such a retry
//     is counted against Config.MaxDeliveryCount by the adapter. On a
//     session-enabled queue the copy rejoins its session at the back, so a
//     later message of the same key can overtake a delayed retry.
//   - Redrive sends a copy of each chosen dead letter with PropRedriveCount
//     raised by one, then completes the dead letter. Finding the chosen dead
//     letters means receiving from the sub-queue; dead letters passed over
//     are abandoned again, which raises their delivery count.
//   - Depth uses the administration client (HTTPS) for a real namespace.
//     Development emulators have no HTTPS endpoint, so for a connection
//     string with UseDevelopmentEmulator=true it counts by peeking, which is
//     exact but reads every message.
//   - Every message carries its SessionKey in an application property, so it
//     survives on queues without sessions; there it does not order delivery.
//
// On a session-enabled queue two background acceptors, each on a connection
// of its own, take the next free sessions (AcceptNextSessionForQueue) and
// hand them to Receive, which takes one message from a session and renews
// the session lock so the message gets a full lock duration. The session
// lock is held, and renewed with the message, until that message is
// settled; then the session is closed so any receiver can take the key's
// next message. The
// acceptor never cancels an accept from a caller's deadline: the client
// answers that by resetting the whole connection.
//
// A message received before its connection dropped is settled through the
// management link by lock token once the receiving link fails; on a
// session-enabled queue the session lock died with the link and the
// settlement reports queues.ErrLockLost.
//
// Sends go one message per AMQP transfer (no batches).
package servicebus
