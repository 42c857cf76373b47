package queues

import (
	"context"
	"errors"
	"time"
)

// Contract errors. Implementations wrap these so callers can test with
// errors.Is regardless of transport.
var (
	// ErrLockLost means the message's lock expired or was taken by another
	// receiver; the settlement did not happen and the message will be
	// delivered again.
	ErrLockLost = errors.New("message lock lost")
	// ErrTooLarge means a message exceeds the transport's size limit and
	// was not sent.
	ErrTooLarge = errors.New("message too large")
	// ErrRedriveLimit means a dead letter has been redriven the maximum
	// number of times and is held back to break a loop.
	ErrRedriveLimit = errors.New("redrive limit reached")
	// ErrNotFound means a named message or queue does not exist.
	ErrNotFound = errors.New("not found")
	// ErrClosed means the queue was closed.
	ErrClosed = errors.New("queue closed")
)

// ReasonMaxDeliveryCountExceeded is the dead-letter reason set when a
// message has been delivered more than the maximum number of times (the same
// string Service Bus uses).
const ReasonMaxDeliveryCountExceeded = "MaxDeliveryCountExceeded"

// PropRedriveCount is the application property that counts redrives.
const PropRedriveCount = "fhirsync-redrive-count"

// Message is an outgoing message.
type Message struct {
	// ID is the stable MessageID used for duplicate detection: sending the
	// same ID twice within the detection window enqueues it once.
	ID string
	// SessionKey, when set, orders delivery per key: a message is not
	// delivered while an earlier one with the same key is locked or pending.
	SessionKey string
	// Body is the envelope (a Notice encoded by EncodeNotice).
	Body []byte
	// Properties are application properties, small strings.
	Properties map[string]string
	// VisibleAt schedules delivery for later; zero means now.
	VisibleAt time.Time
}

// Received is a message delivered under a peek-lock.
type Received struct {
	Message
	// LockToken identifies the lock; settling needs it.
	LockToken string
	// SequenceNumber is unique per queue and increases with enqueue order.
	SequenceNumber int64
	// DeliveryCount counts deliveries including this one (first = 1).
	DeliveryCount int
	// EnqueuedAt is when the message entered the queue.
	EnqueuedAt time.Time
	// LockedUntil is when the lock expires unless renewed.
	LockedUntil time.Time
}

// DeadLetter is a message held in the dead-letter sub-queue.
type DeadLetter struct {
	Message
	SequenceNumber int64
	DeliveryCount  int
	EnqueuedAt     time.Time
	// Reason is a short stable code (e.g. MaxDeliveryCountExceeded or an
	// agent reason code); Description is the human detail.
	Reason      string
	Description string
	// RedriveCount is how many times this message was redriven before.
	RedriveCount int
}

// Depth is a snapshot of a queue's size.
type Depth struct {
	Active     int64 // available or locked now
	Scheduled  int64 // visible later
	DeadLetter int64
}

// Queue is the contract both transports implement; the queuetest suite
// checks it. One Queue value serves one named queue.
//
// Settlement (Complete, Abandon, DeadLetter) must be called exactly once per
// Received, by the holder of a live lock; after the lock expires they return
// an error wrapping ErrLockLost and the message is delivered again.
type Queue interface {
	// Send enqueues messages; duplicates by ID within the window are
	// dropped silently (the send succeeds).
	Send(ctx context.Context, msgs ...Message) error
	// Receive waits up to wait for at least one message and returns at
	// most max, each locked for the queue's lock duration. A message whose
	// delivery count would exceed the maximum is dead-lettered with
	// ReasonMaxDeliveryCountExceeded instead of being returned.
	Receive(ctx context.Context, max int, wait time.Duration) ([]*Received, error)
	// Complete removes the message.
	Complete(ctx context.Context, m *Received) error
	// Abandon releases the lock; the message becomes visible again after
	// delay (zero: at once).
	Abandon(ctx context.Context, m *Received, delay time.Duration) error
	// DeadLetter moves the message to the dead-letter sub-queue.
	DeadLetter(ctx context.Context, m *Received, reason, description string) error
	// RenewLock extends the lock and returns its new expiry.
	RenewLock(ctx context.Context, m *Received) (time.Time, error)
	// PeekDeadLetters lists up to max dead letters with sequence numbers
	// greater than after, oldest first, without locking them.
	PeekDeadLetters(ctx context.Context, after int64, max int) ([]DeadLetter, error)
	// Redrive sends the named dead letters (by sequence number) back to
	// the main queue with PropRedriveCount incremented, and removes them
	// from the dead-letter sub-queue. A message already redriven
	// maxRedrives times is left in place and reported in the error
	// (wrapping ErrRedriveLimit). It returns how many were redriven.
	Redrive(ctx context.Context, seqs []int64, maxRedrives int) (int, error)
	// Discard deletes the named dead letters (by sequence number) for
	// good. Unknown sequence numbers are reported in the error (wrapping
	// ErrNotFound); the others are discarded. It returns how many were.
	Discard(ctx context.Context, seqs []int64) (int, error)
	// Depth reports the queue's size.
	Depth(ctx context.Context) (Depth, error)
	// Close releases the queue's resources; in-flight locks lapse.
	Close(ctx context.Context) error
}
