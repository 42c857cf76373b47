package embedded

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"slices"
	"sync"
	"time"

	"github.com/google/uuid"
	"go.opentelemetry.io/otel/trace"
	"gorm.io/gorm"

	"github.com/fhirsync/fhirsync/queues"
	"github.com/fhirsync/fhirsync/storage"
)

// Defaults mirror Azure Service Bus so both transports behave alike.
const (
	DefaultLockDuration     = 60 * time.Second
	DefaultMaxDeliveryCount = 10
	DefaultDuplicateWindow  = 10 * time.Minute
	DefaultMaxMessageBytes  = 256 << 10
	DefaultPollInterval     = 200 * time.Millisecond
)

// MaxBatch caps how many messages one Receive returns.
const MaxBatch = 500

// Options tunes a queue. Zero fields take the defaults above.
type Options struct {
	// LockDuration is how long a received message stays locked before it
	// is delivered again.
	LockDuration time.Duration
	// MaxDeliveryCount is how many deliveries a message gets; the next one
	// dead-letters it with queues.ReasonMaxDeliveryCountExceeded.
	MaxDeliveryCount int
	// DuplicateWindow is how long a MessageID is remembered: a message sent
	// again with the same ID within the window (counted from the first
	// send) is dropped, even after the first was completed.
	DuplicateWindow time.Duration
	// MaxMessageBytes bounds one message (body, ID, session key and
	// properties); larger messages are refused with queues.ErrTooLarge.
	MaxMessageBytes int
	// PollInterval is how often a waiting Receive looks for messages sent
	// by other processes. Sends through this Queue value wake it at once.
	PollInterval time.Duration
	// Tracer, when set, starts a "notice" span for each message sent and
	// carries its trace context in the message's properties
	// (queues.TraceSend); nil: tracing off.
	Tracer trace.TracerProvider
}

func (o Options) withDefaults() Options {
	if o.LockDuration <= 0 {
		o.LockDuration = DefaultLockDuration
	}
	if o.MaxDeliveryCount <= 0 {
		o.MaxDeliveryCount = DefaultMaxDeliveryCount
	}
	if o.DuplicateWindow <= 0 {
		o.DuplicateWindow = DefaultDuplicateWindow
	}
	if o.MaxMessageBytes <= 0 {
		o.MaxMessageBytes = DefaultMaxMessageBytes
	}
	if o.PollInterval <= 0 {
		o.PollInterval = DefaultPollInterval
	}
	return o
}

// Queue is one named queue on the project database. It implements
// queues.Queue and is safe for concurrent use; several processes may open
// the same name on one database and compete for its messages.
type Queue struct {
	db      *gorm.DB
	dialect storage.Dialect
	name    string
	opts    Options

	// writeMu serialises this value's SQLite write transactions so they
	// queue in Go instead of spinning on SQLite's busy handler.
	writeMu sync.Mutex

	// sendMu guards the SQLite sends waiting to be written together
	// (see sendGrouped).
	sendMu  sync.Mutex
	sendQ   []*sendReq
	sending bool // a sender is writing a group or about to

	mu        sync.Mutex
	wake      chan struct{} // closed and replaced when messages may be ready
	lastPrune time.Time

	closeOnce sync.Once
	closed    chan struct{}
}

var _ queues.Queue = (*Queue)(nil)

// New opens the queue called name on db, a database migrated by
// storage.Migrate. Queues are created on first use; the name is recorded
// for ListQueues.
func New(db *gorm.DB, name string, opts Options) (*Queue, error) {
	if name == "" || len(name) > 260 {
		return nil, fmt.Errorf("opening embedded queue: name must be 1 to 260 characters")
	}
	q := &Queue{
		db:      db,
		dialect: storage.DialectOf(db),
		name:    name,
		opts:    opts.withDefaults(),
		wake:    make(chan struct{}),
		closed:  make(chan struct{}),
	}
	if err := q.register(context.Background()); err != nil {
		return nil, fmt.Errorf("opening embedded queue %s: %w", name, err)
	}
	return q, nil
}

// Name returns the queue's name.
func (q *Queue) Name() string { return q.name }

// ListQueues returns the names of the queues opened on db, sorted.
func ListQueues(ctx context.Context, db *gorm.DB) ([]string, error) {
	var names []string
	if err := db.WithContext(ctx).Raw(`SELECT name FROM queue_names ORDER BY name`).Scan(&names).Error; err != nil {
		return nil, fmt.Errorf("listing embedded queues: %w", err)
	}
	return names, nil
}

func (q *Queue) isClosed() bool {
	select {
	case <-q.closed:
		return true
	default:
		return false
	}
}

func (q *Queue) errIfClosed(doing string) error {
	if q.isClosed() {
		return fmt.Errorf("%s on queue %s: %w", doing, q.name, queues.ErrClosed)
	}
	return nil
}

// now is the queue's clock, truncated to what both databases store.
func now() time.Time { return time.Now().UTC().Truncate(time.Microsecond) }

// notify wakes receivers waiting in this process.
func (q *Queue) notify() {
	q.mu.Lock()
	close(q.wake)
	q.wake = make(chan struct{})
	q.mu.Unlock()
}

func (q *Queue) waiter() <-chan struct{} {
	q.mu.Lock()
	defer q.mu.Unlock()
	return q.wake
}

// write runs fn in one transaction, for changes made of several
// statements (Send, Redrive). Every state change of a message is one
// transaction or one statement, so a process killed at any point leaves
// each message either before or after the change.
func (q *Queue) write(ctx context.Context, fn func(tx *gorm.DB) error) error {
	if q.dialect == storage.SQLite {
		q.writeMu.Lock()
		defer q.writeMu.Unlock()
	}
	return q.db.WithContext(ctx).Transaction(fn)
}

// single runs fn, whose statements are each a complete change on their own
// (one lock batch, one settlement). On PostgreSQL they run without an
// enclosing transaction (one round trip instead of four); on SQLite fn runs
// in a write transaction, serialised with this value's other writers.
func (q *Queue) single(ctx context.Context, fn func(db *gorm.DB) error) error {
	if q.dialect == storage.SQLite {
		return q.write(ctx, fn)
	}
	return fn(q.db.WithContext(ctx))
}

// Send enqueues msgs atomically: all or none. Messages whose ID was
// sent within the duplicate window are dropped silently; a message without
// an ID gets a random one and is never a duplicate.
func (q *Queue) Send(ctx context.Context, msgs ...queues.Message) error {
	if err := q.errIfClosed("sending"); err != nil {
		return err
	}
	if len(msgs) == 0 {
		return nil
	}
	batch := make([]queues.Message, len(msgs))
	for i, m := range msgs {
		if size := messageSize(m); size > q.opts.MaxMessageBytes {
			return fmt.Errorf("sending message %s to queue %s: %d bytes exceeds the %d-byte limit: %w",
				m.ID, q.name, size, q.opts.MaxMessageBytes, queues.ErrTooLarge)
		}
		if m.ID == "" {
			m.ID = uuid.NewString()
		}
		batch[i] = m
	}
	traced := queues.TraceSend(ctx, q.opts.Tracer, "fhirsync_embedded", q.name, batch)
	t := now()
	insert := func(tx *gorm.DB) error { return q.insertMessages(tx, batch, t) }
	var err error
	switch {
	case q.dialect == storage.Postgres && len(batch) <= sendChunk:
		err = insert(q.db.WithContext(ctx)) // one statement, atomic on its own
	case q.dialect == storage.SQLite:
		err = q.sendGrouped(ctx, batch)
	default:
		err = q.write(ctx, insert)
	}
	traced(err)
	if err != nil {
		return fmt.Errorf("sending %d messages to queue %s: %w", len(msgs), q.name, err)
	}
	q.notify()
	q.maybePrune(ctx, t)
	return nil
}

// sendReq is one Send waiting to be written with others.
type sendReq struct {
	msgs []queues.Message
	done chan error    // the Send's result; buffered
	lead chan struct{} // closed when this Send is to write the next group
}

// sendGrouped writes batch on SQLite together with the Sends of other
// goroutines waiting at the same time: one transaction for the group
// instead of one each (a commit costs more than the inserts of a few
// messages). Sends arriving while a group is written wait and go in the
// next group, written by the first of them. Each Send stays all or none:
// when the group's transaction fails, its Sends are written again one
// transaction each, and each gets its own result. The messages of a group
// are inserted in arrival order as one insertMessages (two statements for
// the group rather than two per Send); it keeps the first copy of an ID and
// drops later ones, so duplicates are dropped exactly as by Sends one
// after the other.
func (q *Queue) sendGrouped(ctx context.Context, batch []queues.Message) error {
	r := &sendReq{msgs: batch, done: make(chan error, 1), lead: make(chan struct{})}
	q.sendMu.Lock()
	q.sendQ = append(q.sendQ, r)
	if !q.sending {
		q.sending = true
		close(r.lead)
	}
	q.sendMu.Unlock()
	select {
	case err := <-r.done:
		return err
	case <-r.lead:
	}
	q.sendMu.Lock()
	group := q.sendQ
	q.sendQ = nil
	q.sendMu.Unlock()
	// The group is written whatever becomes of this caller's context: the
	// other Sends wait for it.
	q.writeGroup(context.WithoutCancel(ctx), group)
	q.sendMu.Lock()
	if len(q.sendQ) == 0 {
		q.sending = false
	} else {
		close(q.sendQ[0].lead) // the next group is its first Send's to write
	}
	q.sendMu.Unlock()
	return <-r.done
}

// writeGroup writes the Sends of group and hands each its result.
func (q *Queue) writeGroup(ctx context.Context, group []*sendReq) {
	t := now()
	if len(group) > 1 {
		var all []queues.Message
		for _, r := range group {
			all = append(all, r.msgs...)
		}
		err := q.write(ctx, func(tx *gorm.DB) error { return q.insertMessages(tx, all, t) })
		if err == nil {
			for _, r := range group {
				r.done <- nil
			}
			return
		}
	}
	for _, r := range group {
		r.done <- q.write(ctx, func(tx *gorm.DB) error { return q.insertMessages(tx, r.msgs, t) })
	}
}

func messageSize(m queues.Message) int {
	n := len(m.Body) + len(m.ID) + len(m.SessionKey)
	for k, v := range m.Properties {
		n += len(k) + len(v)
	}
	return n
}

// maybePrune forgets expired MessageIDs, at most once per minute (or per
// window, if shorter). Failure only delays the clean-up.
func (q *Queue) maybePrune(ctx context.Context, t time.Time) {
	every := min(time.Minute, q.opts.DuplicateWindow)
	q.mu.Lock()
	due := t.Sub(q.lastPrune) >= every
	if due {
		q.lastPrune = t
	}
	q.mu.Unlock()
	if due {
		_ = q.single(ctx, func(tx *gorm.DB) error { return q.pruneIDs(tx, t) })
	}
}

// Receive waits up to wait for available messages and locks at most limit
// of them (capped at MaxBatch) with one statement. Messages with a session
// key are handed out one at a time per key, oldest first.
func (q *Queue) Receive(ctx context.Context, limit int, wait time.Duration) ([]*queues.Received, error) {
	limit = min(MaxBatch, max(1, limit))
	deadline := time.Now().Add(wait)
	for {
		if err := q.errIfClosed("receiving"); err != nil {
			return nil, err
		}
		woken := q.waiter()
		ms, err := q.receiveOnce(ctx, limit)
		if err != nil || len(ms) > 0 {
			return ms, err
		}
		left := time.Until(deadline)
		if left <= 0 {
			return nil, nil
		}
		timer := time.NewTimer(min(left, q.opts.PollInterval))
		select {
		case <-ctx.Done():
			timer.Stop()
			return nil, ctx.Err()
		case <-q.closed:
			timer.Stop()
			return nil, fmt.Errorf("receiving on queue %s: %w", q.name, queues.ErrClosed)
		case <-woken:
			timer.Stop()
		case <-timer.C:
		}
	}
}

func (q *Queue) receiveOnce(ctx context.Context, limit int) ([]*queues.Received, error) {
	t := now()
	if q.dialect == storage.SQLite {
		// A read first: on an idle queue no write lock is taken.
		ready, err := q.anyReady(q.db.WithContext(ctx), t)
		if err != nil {
			return nil, fmt.Errorf("receiving from queue %s: %w", q.name, err)
		}
		if !ready {
			return nil, nil
		}
	}
	var out []*queues.Received
	deadLettered := false
	err := q.single(ctx, func(tx *gorm.DB) error {
		var dead int
		var err error
		out, dead, err = q.lockBatch(tx, limit, now(), newToken())
		deadLettered = dead > 0
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("receiving from queue %s: %w", q.name, err)
	}
	if deadLettered {
		q.notify() // a key's next message may now be due
	}
	return out, nil
}

func newToken() string {
	var b [16]byte
	_, _ = rand.Read(b[:])
	return hex.EncodeToString(b[:])
}

// Complete removes a message whose lock is still held.
func (q *Queue) Complete(ctx context.Context, m *queues.Received) error {
	return q.settle(ctx, "completing", m, func(tx *gorm.DB, t time.Time) (int64, error) {
		return q.deleteLocked(tx, m, t)
	})
}

// CompleteMany completes every message in ms whose lock is still held, in
// one transaction. If some locks were lost it completes the others and
// returns an error wrapping queues.ErrLockLost that names the sequence
// numbers left behind (they will be delivered again).
func (q *Queue) CompleteMany(ctx context.Context, ms []*queues.Received) error {
	if err := q.errIfClosed("completing"); err != nil {
		return err
	}
	if len(ms) == 0 {
		return nil
	}
	var lost []int64
	err := q.single(ctx, func(tx *gorm.DB) error {
		var err error
		lost, err = q.completeHeld(tx, ms)
		return err
	})
	if err != nil {
		return fmt.Errorf("completing %d messages on queue %s: %w", len(ms), q.name, err)
	}
	q.notify()
	if len(lost) > 0 {
		return fmt.Errorf("completing messages on queue %s: sequence numbers %v: %w", q.name, lost, queues.ErrLockLost)
	}
	return nil
}

// CompleteTx completes ms inside the caller's transaction tx (opened on the
// same database), so work recorded in that database commits or rolls back
// together with the completion: a consumer that does this processes each
// message exactly once even if it is killed. If any lock was lost it
// returns an error wrapping queues.ErrLockLost and the caller must roll
// back.
func (q *Queue) CompleteTx(tx *gorm.DB, ms ...*queues.Received) error {
	lost, err := q.CompleteHeld(tx, ms...)
	if err != nil {
		return err
	}
	if len(lost) > 0 {
		return fmt.Errorf("completing message %d on queue %s: %w", lost[0], q.name, queues.ErrLockLost)
	}
	return nil
}

// CompleteHeld completes inside the caller's transaction tx (opened on
// the same database, see Database) those of ms whose locks are still held,
// and returns the sequence numbers of the others: their locks expired and
// they will be delivered again. Unlike CompleteTx, a lost lock is not an
// error, so one late message does not undo the work of the others
// committed with it.
func (q *Queue) CompleteHeld(tx *gorm.DB, ms ...*queues.Received) (lost []int64, err error) {
	if err := q.errIfClosed("completing"); err != nil {
		return nil, err
	}
	lost, err = q.completeHeld(tx, ms)
	if err != nil {
		return nil, fmt.Errorf("completing %d messages on queue %s: %w", len(ms), q.name, err)
	}
	q.notify() // early if the caller has not committed yet; pollers catch up
	return lost, nil
}

// completeHeld deletes the rows of ms whose locks are held and returns
// the sequence numbers of the others.
func (q *Queue) completeHeld(tx *gorm.DB, ms []*queues.Received) ([]int64, error) {
	if slices.Contains(ms, nil) {
		return nil, errors.New("nil message in batch")
	}
	done, err := q.deleteLockedMany(tx, ms, now())
	if err != nil {
		return nil, err
	}
	var lost []int64
	for _, m := range ms {
		if !done[m.SequenceNumber] {
			lost = append(lost, m.SequenceNumber)
		}
	}
	return lost, nil
}

// Database is the database the queue keeps its messages in, for callers
// that complete messages inside their own transactions.
func (q *Queue) Database() *gorm.DB { return q.db }

// Abandon releases the lock; the message is delivered again after delay.
func (q *Queue) Abandon(ctx context.Context, m *queues.Received, delay time.Duration) error {
	return q.settle(ctx, "abandoning", m, func(tx *gorm.DB, t time.Time) (int64, error) {
		return q.unlock(tx, m, t, t.Add(max(0, delay)))
	})
}

// DeadLetter moves the message to the dead-letter sub-queue.
func (q *Queue) DeadLetter(ctx context.Context, m *queues.Received, reason, description string) error {
	return q.settle(ctx, "dead-lettering", m, func(tx *gorm.DB, t time.Time) (int64, error) {
		return q.deadLetterLocked(tx, m, t, reason, description)
	})
}

// RenewLock extends the lock by the lock duration from now.
func (q *Queue) RenewLock(ctx context.Context, m *queues.Received) (time.Time, error) {
	var until time.Time
	err := q.settle(ctx, "renewing the lock of", m, func(tx *gorm.DB, t time.Time) (int64, error) {
		until = t.Add(q.opts.LockDuration)
		return q.extendLock(tx, m, t, until)
	})
	if err != nil {
		return time.Time{}, err
	}
	m.LockedUntil = until
	return until, nil
}

// settle runs one lock-checked change; zero rows changed means the lock
// is gone.
func (q *Queue) settle(ctx context.Context, doing string, m *queues.Received, change func(tx *gorm.DB, t time.Time) (int64, error)) error {
	if err := q.errIfClosed(doing + " a message"); err != nil {
		return err
	}
	if m == nil {
		return fmt.Errorf("%s a nil message on queue %s", doing, q.name)
	}
	var n int64
	err := q.single(ctx, func(tx *gorm.DB) error {
		var err error
		n, err = change(tx, now())
		return err
	})
	if err != nil {
		return fmt.Errorf("%s message %d on queue %s: %w", doing, m.SequenceNumber, q.name, err)
	}
	if n == 0 {
		return fmt.Errorf("%s message %d on queue %s: %w", doing, m.SequenceNumber, q.name, queues.ErrLockLost)
	}
	q.notify()
	return nil
}

// PeekDeadLetters lists dead letters after the given sequence number,
// oldest first, without changing them.
func (q *Queue) PeekDeadLetters(ctx context.Context, after int64, limit int) ([]queues.DeadLetter, error) {
	if err := q.errIfClosed("peeking dead letters"); err != nil {
		return nil, err
	}
	ds, err := q.selectDead(q.db.WithContext(ctx), after, min(MaxBatch, max(1, limit)))
	if err != nil {
		return nil, fmt.Errorf("peeking dead letters of queue %s: %w", q.name, err)
	}
	return ds, nil
}

// Redrive moves the named dead letters back to the queue as new messages
// (new sequence numbers, delivery count reset, PropRedriveCount
// incremented). Those already redriven maxRedrives times stay where they
// are (an error wrapping queues.ErrRedriveLimit names them); unknown
// sequence numbers are reported with queues.ErrNotFound. The others are
// redriven even when an error is returned.
func (q *Queue) Redrive(ctx context.Context, seqs []int64, maxRedrives int) (int, error) {
	if err := q.errIfClosed("redriving"); err != nil {
		return 0, err
	}
	if len(seqs) == 0 {
		return 0, nil
	}
	var res redriveResult
	err := q.write(ctx, func(tx *gorm.DB) error {
		var err error
		res, err = q.redrive(tx, seqs, maxRedrives, now())
		return err
	})
	if err != nil {
		return 0, fmt.Errorf("redriving dead letters of queue %s: %w", q.name, err)
	}
	if res.moved > 0 {
		q.notify()
	}
	var errs []error
	if len(res.held) > 0 {
		errs = append(errs, fmt.Errorf("redriving dead letters of queue %s: sequence numbers %v already redriven %d times: %w",
			q.name, res.held, maxRedrives, queues.ErrRedriveLimit))
	}
	if len(res.missing) > 0 {
		errs = append(errs, fmt.Errorf("redriving dead letters of queue %s: sequence numbers %v: %w",
			q.name, res.missing, queues.ErrNotFound))
	}
	return res.moved, errors.Join(errs...)
}

// Discard deletes the named dead letters for good; unknown sequence
// numbers (or messages that are not dead letters) are reported with
// queues.ErrNotFound, the others are deleted even then.
func (q *Queue) Discard(ctx context.Context, seqs []int64) (int, error) {
	if err := q.errIfClosed("discarding"); err != nil {
		return 0, err
	}
	if len(seqs) == 0 {
		return 0, nil
	}
	var gone []int64
	err := q.write(ctx, func(tx *gorm.DB) error {
		for chunk := range slices.Chunk(seqs, 500) {
			var found []int64
			if err := tx.Raw(`SELECT seq FROM queue_messages WHERE queue = ? AND state = 'dead' AND seq IN ?`, q.name, chunk).Scan(&found).Error; err != nil {
				return err
			}
			if len(found) == 0 {
				continue
			}
			if err := tx.Exec(`DELETE FROM queue_messages WHERE queue = ? AND state = 'dead' AND seq IN ?`, q.name, found).Error; err != nil {
				return err
			}
			gone = append(gone, found...)
		}
		return nil
	})
	if err != nil {
		return 0, fmt.Errorf("discarding dead letters of queue %s: %w", q.name, err)
	}
	var missing []int64
	for _, s := range seqs {
		if !slices.Contains(gone, s) && !slices.Contains(missing, s) {
			missing = append(missing, s)
		}
	}
	if len(missing) > 0 {
		return len(gone), fmt.Errorf("discarding dead letters of queue %s: sequence numbers %v: %w", q.name, missing, queues.ErrNotFound)
	}
	return len(gone), nil
}

// Depth counts the queue's messages. Locked messages count as active;
// messages abandoned with a delay count as scheduled until due.
func (q *Queue) Depth(ctx context.Context) (queues.Depth, error) {
	if err := q.errIfClosed("measuring depth"); err != nil {
		return queues.Depth{}, err
	}
	d, err := q.depth(q.db.WithContext(ctx), now())
	if err != nil {
		return queues.Depth{}, fmt.Errorf("measuring depth of queue %s: %w", q.name, err)
	}
	return d, nil
}

// Close stops this value: waiting receives return, later calls fail with
// queues.ErrClosed, and locks it holds lapse on their own. The database
// stays open; it belongs to the caller. Closing twice is harmless.
func (q *Queue) Close(ctx context.Context) error {
	q.closeOnce.Do(func() { close(q.closed) })
	return nil
}
