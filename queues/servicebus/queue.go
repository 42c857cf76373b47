package servicebus

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"slices"
	"strconv"
	"sync"
	"time"

	"github.com/Azure/azure-sdk-for-go/sdk/messaging/azservicebus"
	"github.com/Azure/azure-sdk-for-go/sdk/messaging/azservicebus/admin"
	"github.com/Azure/go-amqp"
	"github.com/google/uuid"

	"github.com/fhirsync/fhirsync/queues"
)

// Application properties the adapter reserves. They are stripped from
// Received.Properties and DeadLetter.Properties.
const (
	propMessageID   = "fhirsync-message-id"
	propSessionKey  = "fhirsync-session-key"
	propDeliveryOff = "fhirsync-prior-deliveries"

	sbDeadLetterReason      = "DeadLetterReason"
	sbDeadLetterDescription = "DeadLetterErrorDescription"
)

// envelopeOverhead approximates the AMQP framing and system properties of a
// message on top of its body and application properties.
const envelopeOverhead = 1024

// Queue is one Service Bus queue behind the queues.Queue contract.
type Queue struct {
	cfg   Config
	name  string
	life  context.Context
	stop  context.CancelFunc
	emu   bool
	admin *admin.Client

	client    *azservicebus.Client
	sender    *azservicebus.Sender
	newClient func() (*azservicebus.Client, error)

	mu       sync.Mutex
	closed   bool
	receiver *azservicebus.Receiver // main queue, non-session queues; also peeks
	dlq      *azservicebus.Receiver
	held     map[string]*held

	acceptOnce sync.Once
	sessions   chan accepted        // sessions accepted ahead of Receive
	sessClient *azservicebus.Client // the acceptor's own connection
}

// held is a message this Queue has received and not yet settled.
type held struct {
	msg     *azservicebus.ReceivedMessage
	session *azservicebus.SessionReceiver // nil on queues without sessions
	until   time.Time                     // lock expiry as last reported
	cancel  context.CancelFunc            // stops the renewer
	mu      sync.Mutex                    // serialises settlement and renewal
}

var _ queues.Queue = (*Queue)(nil)

// New connects to the namespace in cfg and serves queueName. It does not
// contact the service; the first operation does, and reports a missing queue
// as an error wrapping queues.ErrNotFound.
func New(cfg Config, queueName string) (*Queue, error) {
	if err := cfg.Validate(); err != nil {
		return nil, fmt.Errorf("service bus config: %w", err)
	}
	if queueName == "" {
		return nil, errors.New("service bus: queue name is required")
	}
	q := &Queue{cfg: cfg, name: queueName, emu: cfg.emulator(), held: map[string]*held{},
		sessions: make(chan accepted)}
	cfg.ClientOptions = clientOptions(cfg.ClientOptions)
	var err error
	if cfg.ConnectionString != "" {
		q.newClient = func() (*azservicebus.Client, error) {
			return azservicebus.NewClientFromConnectionString(cfg.ConnectionString, cfg.ClientOptions)
		}
		if !q.emu {
			q.admin, err = admin.NewClientFromConnectionString(cfg.ConnectionString, nil)
		}
	} else {
		cred, cerr := cfg.credential()
		if cerr != nil {
			return nil, fmt.Errorf("service bus credential: %w", cerr)
		}
		q.newClient = func() (*azservicebus.Client, error) {
			return azservicebus.NewClient(cfg.Namespace, cred, cfg.ClientOptions)
		}
		// A custom connection dialer means the namespace is not reachable
		// over plain HTTPS either; Depth then counts by peeking.
		if cfg.ClientOptions.NewWebSocketConn == nil {
			q.admin, err = admin.NewClient(cfg.Namespace, cred, nil)
		}
	}
	if err == nil {
		q.client, err = q.newClient()
	}
	if err != nil {
		return nil, fmt.Errorf("service bus client for queue %s: %w", queueName, err)
	}
	q.sender, err = q.client.NewSender(queueName, nil)
	if err != nil {
		return nil, fmt.Errorf("service bus sender for queue %s: %w", queueName, err)
	}
	q.life, q.stop = context.WithCancel(context.Background())
	return q, nil
}

// defaultRetry replaces the client's default (3 retries growing to a
// minute apart): the sync agent has its own retry policy, and a settlement
// on a dead connection should fall back to the management link quickly.
var defaultRetry = azservicebus.RetryOptions{MaxRetries: 3, RetryDelay: 200 * time.Millisecond, MaxRetryDelay: 2 * time.Second}

func clientOptions(in *azservicebus.ClientOptions) *azservicebus.ClientOptions {
	out := azservicebus.ClientOptions{}
	if in != nil {
		out = *in
	}
	if out.RetryOptions == (azservicebus.RetryOptions{}) {
		out.RetryOptions = defaultRetry
	}
	return &out
}

// Name returns the queue's name.
func (q *Queue) Name() string { return q.name }

func (q *Queue) checkOpen() error {
	q.mu.Lock()
	defer q.mu.Unlock()
	if q.closed {
		return fmt.Errorf("service bus queue %s: %w", q.name, queues.ErrClosed)
	}
	return nil
}

// opContext ends when ctx ends or the queue closes.
func (q *Queue) opContext(ctx context.Context) (context.Context, context.CancelFunc) {
	ctx, cancel := context.WithCancel(ctx)
	stop := context.AfterFunc(q.life, cancel)
	return ctx, func() { stop(); cancel() }
}

// --- sending ---------------------------------------------------------------

// Send enqueues msgs one by one; a message with a future VisibleAt is
// scheduled. Every message is checked against the size limit before any is
// sent.
func (q *Queue) Send(ctx context.Context, msgs ...queues.Message) error {
	if err := q.checkOpen(); err != nil {
		return err
	}
	out := make([]*azservicebus.Message, len(msgs))
	for i, m := range msgs {
		sm, err := q.toSB(m, m.ID, nil)
		if err != nil {
			return err
		}
		out[i] = sm
	}
	ctx, cancel := q.opContext(ctx)
	defer cancel()
	for i, m := range msgs {
		if err := q.sendOne(ctx, out[i], m.VisibleAt); err != nil {
			return fmt.Errorf("sending message %s to %s: %w", m.ID, q.name, err)
		}
	}
	return nil
}

func (q *Queue) sendOne(ctx context.Context, m *azservicebus.Message, at time.Time) error {
	if !at.IsZero() && at.After(time.Now()) {
		_, err := q.sender.ScheduleMessages(ctx, []*azservicebus.Message{m}, at, nil)
		return q.mapErr(err)
	}
	return q.mapErr(q.sender.SendMessage(ctx, m, nil))
}

// toSB builds the Service Bus message for m, sent under transportID, with
// extra application properties on top of m's.
func (q *Queue) toSB(m queues.Message, transportID string, extra map[string]any) (*azservicebus.Message, error) {
	if m.ID == "" {
		return nil, errors.New("service bus: message without an ID")
	}
	props := make(map[string]any, len(m.Properties)+len(extra)+2)
	size := len(m.Body) + len(transportID) + len(m.ID) + len(m.SessionKey) + envelopeOverhead
	for k, v := range m.Properties {
		props[k] = v
		size += len(k) + len(v) + 8
	}
	for k, v := range extra {
		props[k] = v
		size += len(k) + len(fmt.Sprint(v)) + 8
	}
	if transportID != m.ID {
		props[propMessageID] = m.ID
	}
	if m.SessionKey != "" {
		props[propSessionKey] = m.SessionKey
	}
	if limit := q.cfg.maxMessageBytes(); size > limit {
		return nil, fmt.Errorf("message %s is about %d bytes, over the %d-byte Service Bus limit: %w",
			m.ID, size, limit, queues.ErrTooLarge)
	}
	out := &azservicebus.Message{MessageID: &transportID, Body: m.Body, ApplicationProperties: props}
	if q.cfg.Sessions {
		sid := m.SessionKey
		if sid == "" {
			sid = m.ID
		}
		out.SessionID = &sid
	}
	return out, nil
}

// --- receiving -------------------------------------------------------------

// Receive waits up to wait for messages and returns at most max. On a
// session-enabled queue each message comes from its own session, whose lock
// is held until the message is settled, so a key never has two messages in
// flight.
func (q *Queue) Receive(ctx context.Context, max int, wait time.Duration) ([]*queues.Received, error) {
	if err := q.checkOpen(); err != nil {
		return nil, err
	}
	if max <= 0 {
		return nil, fmt.Errorf("service bus receive: max %d must be positive", max)
	}
	ctx, cancel := q.opContext(ctx)
	defer cancel()
	var (
		got []*queues.Received
		err error
	)
	deadline := time.Now().Add(wait)
	for {
		if q.cfg.Sessions {
			got, err = q.receiveSessions(ctx, max, deadline)
		} else {
			got, err = q.receivePlain(ctx, max, deadline)
		}
		if len(got) > 0 || err != nil || !time.Now().Before(deadline) {
			break
		}
	}
	if err != nil && q.life.Err() != nil {
		return got, fmt.Errorf("service bus queue %s: %w", q.name, queues.ErrClosed)
	}
	if err != nil && len(got) > 0 {
		return got, nil // the messages are locked; hand them out, the error recurs
	}
	if err == nil && q.life.Err() != nil && len(got) == 0 {
		return nil, nil
	}
	return got, err
}

func (q *Queue) mainReceiver() (*azservicebus.Receiver, error) {
	q.mu.Lock()
	defer q.mu.Unlock()
	if q.receiver != nil {
		return q.receiver, nil
	}
	r, err := q.client.NewReceiverForQueue(q.name, nil)
	if err != nil {
		return nil, fmt.Errorf("service bus receiver for %s: %w", q.name, err)
	}
	q.receiver = r
	return r, nil
}

func (q *Queue) receivePlain(ctx context.Context, max int, deadline time.Time) ([]*queues.Received, error) {
	r, err := q.mainReceiver()
	if err != nil {
		return nil, err
	}
	rctx, cancel := context.WithDeadline(ctx, deadline)
	defer cancel()
	msgs, err := r.ReceiveMessages(rctx, max, nil)
	if err != nil {
		if ctx.Err() == nil && errors.Is(err, context.DeadlineExceeded) {
			err = nil
		} else {
			err = fmt.Errorf("receiving from %s: %w", q.name, q.mapErr(err))
		}
	}
	var out []*queues.Received
	for _, m := range msgs {
		if r := q.admit(ctx, &held{msg: m}); r != nil {
			out = append(out, r)
		}
	}
	return out, err
}

// accepted is one outcome of the session acceptor.
type accepted struct {
	sr  *azservicebus.SessionReceiver
	err error
}

// acceptLoop accepts sessions ahead of Receive and hands them over one at a
// time. Accepting runs on the queue's lifetime context, never on a caller's
// deadline: cancelling an accept while the service holds it open makes the
// client reset the whole connection, which would break every other link.
// The service ends a fruitless accept itself (com.microsoft:timeout) and the
// loop starts the next one.
func (q *Queue) acceptLoop() {
	var client *azservicebus.Client
	defer func() {
		if client != nil {
			q.mu.Lock()
			q.sessClient = nil
			q.mu.Unlock()
			_ = client.Close(context.Background())
		}
	}()
	for q.life.Err() == nil {
		if client == nil {
			c, err := q.newClient()
			if err != nil {
				q.handOver(accepted{err: fmt.Errorf("service bus client for sessions of %s: %w", q.name, err)})
				continue
			}
			client = c
			q.mu.Lock()
			q.sessClient = c
			q.mu.Unlock()
		}
		sr, err := client.AcceptNextSessionForQueue(q.life, q.name, nil)
		switch {
		case err == nil:
			q.handOver(accepted{sr: sr})
		case q.life.Err() != nil:
			return
		case noSession(err):
		case connLost(err):
			// The client recovers a connection only from links it
			// already has; a dead connection fails every accept. Start
			// over on a new one (sessions held on the old one are lost
			// with it anyway).
			old := client
			client = nil
			go func() { _ = old.Close(context.Background()) }()
			q.pause()
		default:
			q.handOver(accepted{err: fmt.Errorf("accepting a session on %s: %w", q.name, q.mapErr(err))})
		}
	}
}

// handOver gives an accepted session (or an accept failure) to a Receive;
// failures are followed by a pause before the next attempt.
func (q *Queue) handOver(a accepted) {
	select {
	case q.sessions <- a:
	case <-q.life.Done():
		if a.sr != nil {
			closeQuietly(a.sr)
		}
		return
	}
	if a.err != nil {
		q.pause()
	}
}

func (q *Queue) pause() {
	select {
	case <-time.After(500 * time.Millisecond):
	case <-q.life.Done():
	}
}

func (q *Queue) receiveSessions(ctx context.Context, limit int, deadline time.Time) ([]*queues.Received, error) {
	q.acceptOnce.Do(func() { go q.acceptLoop() })
	var out []*queues.Received
	for len(out) < limit {
		wait := time.Until(deadline)
		if len(out) > 0 {
			// Already have something: only take sessions that are ready.
			wait = min(wait, 100*time.Millisecond)
		}
		if wait <= 0 {
			break
		}
		var a accepted
		t := time.NewTimer(wait)
		select {
		case a = <-q.sessions:
			t.Stop()
		case <-t.C:
			return out, nil
		case <-ctx.Done():
			t.Stop()
			return out, ctx.Err()
		}
		if a.err != nil {
			if len(out) > 0 {
				return out, nil
			}
			return nil, a.err
		}
		sr := a.sr
		if time.Until(sr.LockedUntil()) < 50*time.Millisecond {
			closeQuietly(sr) // held too long waiting for a receiver
			continue
		}
		rctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		msgs, err := sr.ReceiveMessages(rctx, 1, nil)
		cancel()
		if len(msgs) == 0 {
			closeQuietly(sr)
			if err != nil && ctx.Err() == nil && !errors.Is(err, context.DeadlineExceeded) && !errors.Is(q.mapErr(err), queues.ErrLockLost) {
				return out, fmt.Errorf("receiving session %s on %s: %w", sr.SessionID(), q.name, q.mapErr(err))
			}
			continue
		}
		if r := q.admit(ctx, &held{msg: msgs[0], session: sr}); r != nil {
			out = append(out, r)
		}
	}
	return out, nil
}

// noSession reports an accept-next-session that found no session in time.
func noSession(err error) bool {
	if errors.Is(err, context.DeadlineExceeded) {
		return true
	}
	var sbErr *azservicebus.Error
	if errors.As(err, &sbErr) && sbErr.Code == azservicebus.CodeTimeout {
		return true
	}
	var amqpErr *amqp.Error
	return errors.As(err, &amqpErr) && amqpErr.Condition == "com.microsoft:timeout"
}

// admit records a received message as held and starts its renewer. A
// message past Config.MaxDeliveryCount (counting deliveries of copies the
// adapter scheduled) is dead-lettered instead and admit returns nil.
func (q *Queue) admit(ctx context.Context, h *held) *queues.Received {
	r := q.toReceived(h.msg)
	h.until = r.LockedUntil
	if h.session != nil {
		h.until = h.session.LockedUntil()
		r.LockedUntil = h.until
	}
	if r.DeliveryCount > q.cfg.maxDeliveryCount() {
		desc := fmt.Sprintf("Message could not be consumed after %d delivery attempts.", r.DeliveryCount-1)
		reason := queues.ReasonMaxDeliveryCountExceeded
		_ = q.settleRaw(ctx, h, func(ctx context.Context) error {
			opts := &azservicebus.DeadLetterOptions{Reason: &reason, ErrorDescription: &desc}
			if h.session != nil {
				return h.session.DeadLetterMessage(ctx, h.msg, opts)
			}
			return q.receiver.DeadLetterMessage(ctx, h.msg, opts)
		})
		q.release(h)
		return nil
	}
	rctx, cancel := context.WithCancel(q.life)
	h.cancel = cancel
	q.mu.Lock()
	q.held[r.LockToken] = h
	q.mu.Unlock()
	if d := q.cfg.autoRenewFor(); d > 0 {
		go q.renewLoop(rctx, h, time.Now().Add(d))
	}
	return r
}

func (q *Queue) toReceived(m *azservicebus.ReceivedMessage) *queues.Received {
	props, id, key, prior := splitProps(m)
	r := &queues.Received{
		Message:       queues.Message{ID: id, SessionKey: key, Body: m.Body, Properties: props},
		LockToken:     uuid.UUID(m.LockToken).String(),
		DeliveryCount: int(m.DeliveryCount) + prior,
	}
	if m.SequenceNumber != nil {
		r.SequenceNumber = *m.SequenceNumber
	}
	if m.EnqueuedTime != nil {
		r.EnqueuedAt = *m.EnqueuedTime
	}
	if m.LockedUntil != nil {
		r.LockedUntil = *m.LockedUntil
	}
	return r
}

// splitProps separates the caller's application properties from the ones
// the adapter and Service Bus add.
func splitProps(m *azservicebus.ReceivedMessage) (props map[string]string, id, key string, prior int) {
	props = map[string]string{}
	id = m.MessageID
	for k, v := range m.ApplicationProperties {
		s, ok := v.(string)
		if !ok {
			s = fmt.Sprint(v)
		}
		switch k {
		case propMessageID:
			id = s
		case propSessionKey:
			key = s
		case propDeliveryOff:
			prior, _ = strconv.Atoi(s)
		case sbDeadLetterReason, sbDeadLetterDescription:
		default:
			props[k] = s
		}
	}
	return props, id, key, prior
}

// renewLoop keeps h's lock alive until the message is settled, the queue
// closes or the renewal budget ends.
func (q *Queue) renewLoop(ctx context.Context, h *held, stopAt time.Time) {
	for {
		h.mu.Lock()
		until := h.until
		h.mu.Unlock()
		wait := time.Until(until) / 2
		if wait < 100*time.Millisecond {
			wait = 100 * time.Millisecond
		}
		if time.Now().Add(wait).After(stopAt) {
			return
		}
		t := time.NewTimer(wait)
		select {
		case <-ctx.Done():
			t.Stop()
			return
		case <-t.C:
		}
		if _, err := q.renew(ctx, h); err != nil {
			return
		}
	}
}

// --- settlement ------------------------------------------------------------

func (q *Queue) lookup(m *queues.Received) (*held, error) {
	if err := q.checkOpen(); err != nil {
		return nil, err
	}
	q.mu.Lock()
	h := q.held[m.LockToken]
	q.mu.Unlock()
	if h == nil {
		return nil, fmt.Errorf("message %s lock %s is not held by this receiver: %w", m.ID, m.LockToken, queues.ErrLockLost)
	}
	return h, nil
}

// release forgets h and gives back its session.
func (q *Queue) release(h *held) {
	if h.cancel != nil {
		h.cancel()
	}
	q.mu.Lock()
	delete(q.held, uuid.UUID(h.msg.LockToken).String())
	q.mu.Unlock()
	if h.session != nil {
		closeQuietly(h.session)
	}
}

func closeQuietly(sr *azservicebus.SessionReceiver) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	_ = sr.Close(ctx)
}

// settleRaw runs op under h's lock with the session-lock check that the
// client cannot do: a session whose lock has lapsed may be re-accepted by
// the client transparently, which must not revive the lost message lock.
func (q *Queue) settleRaw(ctx context.Context, h *held, op func(context.Context) error) error {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.session != nil && !time.Now().Before(h.until) {
		return fmt.Errorf("session %s lock expired at %s: %w", h.session.SessionID(), h.until.Format(time.RFC3339Nano), queues.ErrLockLost)
	}
	ctx, cancel := q.opContext(ctx)
	defer cancel()
	return q.mapErr(op(ctx))
}

// byToken settles h with op, first through the link the message arrived
// on and, when that link's connection is gone, through the management link
// by lock token (a message built only to carry the lock token makes the
// client take that path). A session lock dies with its link, so on a
// session-enabled queue the fallback can only confirm the lock is lost.
//
// The client retries a link settlement with its fixed default backoff (about
// 45 s in all) even when the link's connection is gone for good, so the
// first attempt gets linkSettleTimeout before the fallback takes over.
func (q *Queue) byToken(ctx context.Context, h *held, op func(context.Context, *azservicebus.ReceivedMessage) error) error {
	lctx, cancel := context.WithTimeout(ctx, linkSettleTimeout)
	err := op(lctx, h.msg)
	cancel()
	timedOut := errors.Is(err, context.DeadlineExceeded) && ctx.Err() == nil
	if !connLost(err) && !timedOut {
		return err
	}
	token := &azservicebus.ReceivedMessage{LockToken: h.msg.LockToken, MessageID: h.msg.MessageID}
	if ferr := op(ctx, token); ferr != nil {
		if h.session != nil && !errors.Is(q.mapErr(ferr), queues.ErrLockLost) {
			return fmt.Errorf("session %s link lost with its connection: %w: %w", h.session.SessionID(), queues.ErrLockLost, ferr)
		}
		return ferr
	}
	return nil
}

// linkSettleTimeout bounds a settlement on the receiving link; a healthy
// one takes a round trip.
const linkSettleTimeout = 3 * time.Second

func connLost(err error) bool {
	var sbErr *azservicebus.Error
	return errors.As(err, &sbErr) && sbErr.Code == azservicebus.CodeConnectionLost
}

// settle runs a final settlement and forgets the message unless the
// failure leaves the lock in place (a transient error).
func (q *Queue) settle(ctx context.Context, m *queues.Received, what string, op func(context.Context, *held) error) error {
	h, err := q.lookup(m)
	if err != nil {
		return err
	}
	err = q.settleRaw(ctx, h, func(ctx context.Context) error { return op(ctx, h) })
	if err == nil || errors.Is(err, queues.ErrLockLost) || errors.Is(err, queues.ErrNotFound) {
		q.release(h)
	}
	if err != nil {
		return fmt.Errorf("%s message %s on %s: %w", what, m.ID, q.name, err)
	}
	return nil
}

// Complete removes the message.
func (q *Queue) Complete(ctx context.Context, m *queues.Received) error {
	return q.settle(ctx, m, "completing", func(ctx context.Context, h *held) error {
		return q.complete(ctx, h)
	})
}

func (q *Queue) complete(ctx context.Context, h *held) error {
	return q.byToken(ctx, h, func(ctx context.Context, msg *azservicebus.ReceivedMessage) error {
		if h.session != nil {
			return h.session.CompleteMessage(ctx, msg, nil)
		}
		return q.receiver.CompleteMessage(ctx, msg, nil)
	})
}

// Abandon releases the lock. With a zero delay Service Bus makes the
// message available at once and counts the delivery. With a delay it
// schedules a copy for later and completes the original (see the package
// documentation).
func (q *Queue) Abandon(ctx context.Context, m *queues.Received, delay time.Duration) error {
	if delay <= 0 {
		return q.settle(ctx, m, "abandoning", func(ctx context.Context, h *held) error {
			return q.byToken(ctx, h, func(ctx context.Context, msg *azservicebus.ReceivedMessage) error {
				if h.session != nil {
					return h.session.AbandonMessage(ctx, msg, nil)
				}
				return q.receiver.AbandonMessage(ctx, msg, nil)
			})
		})
	}
	return q.settle(ctx, m, "abandoning with delay", func(ctx context.Context, h *held) error {
		// Confirm the lock first so a lost lock schedules no copy.
		if err := q.renewRaw(ctx, h); err != nil {
			return err
		}
		orig := m.Message
		orig.VisibleAt = time.Time{}
		transportID := fmt.Sprintf("%s#retry-%d", orig.ID, m.DeliveryCount)
		copyMsg, err := q.toSB(orig, transportID, map[string]any{propDeliveryOff: strconv.Itoa(m.DeliveryCount)})
		if err != nil {
			return err
		}
		if _, err := q.sender.ScheduleMessages(ctx, []*azservicebus.Message{copyMsg}, time.Now().Add(delay), nil); err != nil {
			return fmt.Errorf("scheduling the retry: %w", q.mapErr(err))
		}
		return q.complete(ctx, h)
	})
}

// DeadLetter moves the message to the $DeadLetterQueue sub-queue.
func (q *Queue) DeadLetter(ctx context.Context, m *queues.Received, reason, description string) error {
	return q.settle(ctx, m, "dead-lettering", func(ctx context.Context, h *held) error {
		opts := &azservicebus.DeadLetterOptions{Reason: &reason, ErrorDescription: &description}
		return q.byToken(ctx, h, func(ctx context.Context, msg *azservicebus.ReceivedMessage) error {
			if h.session != nil {
				return h.session.DeadLetterMessage(ctx, msg, opts)
			}
			return q.receiver.DeadLetterMessage(ctx, msg, opts)
		})
	})
}

// RenewLock extends the message lock (the session lock on a
// session-enabled queue) and returns the new expiry.
func (q *Queue) RenewLock(ctx context.Context, m *queues.Received) (time.Time, error) {
	h, err := q.lookup(m)
	if err != nil {
		return time.Time{}, err
	}
	until, err := q.renew(ctx, h)
	if err != nil {
		if errors.Is(err, queues.ErrLockLost) {
			q.release(h)
		}
		return time.Time{}, fmt.Errorf("renewing the lock of message %s on %s: %w", m.ID, q.name, err)
	}
	return until, nil
}

func (q *Queue) renew(ctx context.Context, h *held) (time.Time, error) {
	err := q.settleRaw(ctx, h, func(ctx context.Context) error { return q.renewRaw(ctx, h) })
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.until, err
}

// renewRaw renews h's lock; the caller holds h.mu.
func (q *Queue) renewRaw(ctx context.Context, h *held) error {
	if h.session != nil {
		if err := h.session.RenewSessionLock(ctx, nil); err != nil {
			return q.mapErr(err)
		}
		h.until = h.session.LockedUntil()
		return nil
	}
	if err := q.receiver.RenewMessageLock(ctx, h.msg, nil); err != nil {
		return q.mapErr(err)
	}
	if h.msg.LockedUntil != nil {
		h.until = *h.msg.LockedUntil
	}
	return nil
}

// --- dead letters ----------------------------------------------------------

func (q *Queue) deadLetterReceiver() (*azservicebus.Receiver, error) {
	q.mu.Lock()
	defer q.mu.Unlock()
	if q.dlq != nil {
		return q.dlq, nil
	}
	r, err := q.client.NewReceiverForQueue(q.name, &azservicebus.ReceiverOptions{SubQueue: azservicebus.SubQueueDeadLetter})
	if err != nil {
		return nil, fmt.Errorf("service bus dead-letter receiver for %s: %w", q.name, err)
	}
	q.dlq = r
	return r, nil
}

// PeekDeadLetters lists dead letters after the given sequence number.
func (q *Queue) PeekDeadLetters(ctx context.Context, after int64, max int) ([]queues.DeadLetter, error) {
	if err := q.checkOpen(); err != nil {
		return nil, err
	}
	if max <= 0 {
		return nil, nil
	}
	r, err := q.deadLetterReceiver()
	if err != nil {
		return nil, err
	}
	ctx, cancel := q.opContext(ctx)
	defer cancel()
	from := after + 1
	msgs, err := r.PeekMessages(ctx, max, &azservicebus.PeekMessagesOptions{FromSequenceNumber: &from})
	if err != nil {
		return nil, fmt.Errorf("peeking dead letters of %s: %w", q.name, q.mapErr(err))
	}
	out := make([]queues.DeadLetter, 0, len(msgs))
	for _, m := range msgs {
		if m.SequenceNumber != nil && *m.SequenceNumber <= after {
			continue
		}
		out = append(out, toDeadLetter(m))
	}
	return out, nil
}

func toDeadLetter(m *azservicebus.ReceivedMessage) queues.DeadLetter {
	props, id, key, prior := splitProps(m)
	d := queues.DeadLetter{
		Message:       queues.Message{ID: id, SessionKey: key, Body: m.Body, Properties: props},
		DeliveryCount: int(m.DeliveryCount) + prior,
	}
	if m.SequenceNumber != nil {
		d.SequenceNumber = *m.SequenceNumber
	}
	if m.EnqueuedTime != nil {
		d.EnqueuedAt = *m.EnqueuedTime
	}
	if m.DeadLetterReason != nil {
		d.Reason = *m.DeadLetterReason
	}
	if m.DeadLetterErrorDescription != nil {
		d.Description = *m.DeadLetterErrorDescription
	}
	d.RedriveCount, _ = strconv.Atoi(props[queues.PropRedriveCount])
	return d
}

// Redrive sends the chosen dead letters back to the queue with
// PropRedriveCount raised by one and completes them in the sub-queue.
func (q *Queue) Redrive(ctx context.Context, seqs []int64, maxRedrives int) (int, error) {
	if err := q.checkOpen(); err != nil {
		return 0, err
	}
	if len(seqs) == 0 {
		return 0, nil
	}
	r, err := q.deadLetterReceiver()
	if err != nil {
		return 0, err
	}
	ctx, cancel := q.opContext(ctx)
	defer cancel()

	// Find the chosen dead letters and apply the loop guard from a peek,
	// before anything is locked.
	known := map[int64]queues.DeadLetter{}
	from := slices.Min(seqs)
	for {
		page, err := r.PeekMessages(ctx, 250, &azservicebus.PeekMessagesOptions{FromSequenceNumber: &from})
		if err != nil {
			return 0, fmt.Errorf("peeking dead letters of %s: %w", q.name, q.mapErr(err))
		}
		for _, m := range page {
			d := toDeadLetter(m)
			known[d.SequenceNumber] = d
			from = max(from, d.SequenceNumber+1)
		}
		if len(page) == 0 || from > slices.Max(seqs) {
			break
		}
	}
	var errs []error
	want := map[int64]bool{}
	for _, s := range seqs {
		d, ok := known[s]
		switch {
		case !ok:
			errs = append(errs, fmt.Errorf("dead letter %d of %s: %w", s, q.name, queues.ErrNotFound))
		case d.RedriveCount >= maxRedrives:
			errs = append(errs, fmt.Errorf("dead letter %d (message %s) of %s was redriven %d times: %w",
				s, d.ID, q.name, d.RedriveCount, queues.ErrRedriveLimit))
		default:
			want[s] = true
		}
	}

	done := 0
	var passed []*azservicebus.ReceivedMessage
	for len(want) > 0 {
		rctx, rcancel := context.WithTimeout(ctx, 3*time.Second)
		msgs, err := r.ReceiveMessages(rctx, min(len(want)+len(passed)+10, 100), nil)
		rcancel()
		if err != nil && !errors.Is(err, context.DeadlineExceeded) {
			errs = append(errs, fmt.Errorf("receiving dead letters of %s: %w", q.name, q.mapErr(err)))
			break
		}
		if len(msgs) == 0 {
			break
		}
		for _, m := range msgs {
			seq := int64(-1)
			if m.SequenceNumber != nil {
				seq = *m.SequenceNumber
			}
			if !want[seq] {
				passed = append(passed, m)
				continue
			}
			delete(want, seq)
			if err := q.redriveOne(ctx, r, m); err != nil {
				errs = append(errs, fmt.Errorf("redriving dead letter %d of %s: %w", seq, q.name, err))
				continue
			}
			done++
		}
	}
	for _, m := range passed {
		_ = r.AbandonMessage(ctx, m, nil)
	}
	for s := range want {
		errs = append(errs, fmt.Errorf("dead letter %d of %s was not received for redrive: %w", s, q.name, queues.ErrNotFound))
	}
	return done, errors.Join(errs...)
}

func (q *Queue) redriveOne(ctx context.Context, r *azservicebus.Receiver, m *azservicebus.ReceivedMessage) error {
	d := toDeadLetter(m)
	n := d.RedriveCount + 1
	props := maps.Clone(d.Properties)
	props[queues.PropRedriveCount] = strconv.Itoa(n)
	msg := queues.Message{ID: d.ID, SessionKey: d.SessionKey, Body: d.Body, Properties: props}
	out, err := q.toSB(msg, fmt.Sprintf("%s#redrive-%d", d.ID, n), nil)
	if err != nil {
		return err
	}
	if err := q.sender.SendMessage(ctx, out, nil); err != nil {
		return q.mapErr(err)
	}
	return q.mapErr(r.CompleteMessage(ctx, m, nil))
}

// --- depth -----------------------------------------------------------------

// Depth reports the queue's message counts: from the administration API on
// a real namespace, by peeking on a development emulator.
func (q *Queue) Depth(ctx context.Context) (queues.Depth, error) {
	if err := q.checkOpen(); err != nil {
		return queues.Depth{}, err
	}
	ctx, cancel := q.opContext(ctx)
	defer cancel()
	if q.admin != nil {
		p, err := q.admin.GetQueueRuntimeProperties(ctx, q.name, nil)
		if err != nil {
			return queues.Depth{}, fmt.Errorf("reading the depth of %s: %w", q.name, q.mapErr(err))
		}
		if p == nil {
			return queues.Depth{}, fmt.Errorf("reading the depth of %s: %w", q.name, queues.ErrNotFound)
		}
		return queues.Depth{
			Active:     int64(p.ActiveMessageCount),
			Scheduled:  int64(p.ScheduledMessageCount),
			DeadLetter: int64(p.DeadLetterMessageCount),
		}, nil
	}
	var d queues.Depth
	main, err := q.peekReceiver()
	if err != nil {
		return d, err
	}
	err = peekAll(ctx, main, func(m *azservicebus.ReceivedMessage) {
		if m.State == azservicebus.MessageStateScheduled {
			d.Scheduled++
		} else {
			d.Active++
		}
	})
	if err != nil {
		return d, fmt.Errorf("counting messages of %s: %w", q.name, q.mapErr(err))
	}
	dlq, err := q.deadLetterReceiver()
	if err != nil {
		return d, err
	}
	if err := peekAll(ctx, dlq, func(*azservicebus.ReceivedMessage) { d.DeadLetter++ }); err != nil {
		return d, fmt.Errorf("counting dead letters of %s: %w", q.name, q.mapErr(err))
	}
	return d, nil
}

// peekReceiver is the receiver used to peek the main queue. On a
// session-enabled queue it is a plain receiver that never receives; a real
// namespace refuses it, which is why Depth peeks only on emulators.
func (q *Queue) peekReceiver() (*azservicebus.Receiver, error) {
	return q.mainReceiver()
}

func peekAll(ctx context.Context, r *azservicebus.Receiver, each func(*azservicebus.ReceivedMessage)) error {
	from := int64(0)
	for {
		page, err := r.PeekMessages(ctx, 250, &azservicebus.PeekMessagesOptions{FromSequenceNumber: &from})
		if err != nil {
			return err
		}
		if len(page) == 0 {
			return nil
		}
		for _, m := range page {
			each(m)
			if m.SequenceNumber != nil {
				from = max(from, *m.SequenceNumber+1)
			}
		}
	}
}

// --- closing and errors ----------------------------------------------------

// Close stops renewals, closes every link and the connection. Locks still
// held lapse on the service.
func (q *Queue) Close(ctx context.Context) error {
	q.mu.Lock()
	if q.closed {
		q.mu.Unlock()
		return nil
	}
	q.closed = true
	hs := slices.Collect(maps.Values(q.held))
	q.held = map[string]*held{}
	q.mu.Unlock()
	q.stop()
	for _, h := range hs {
		if h.session != nil {
			_ = h.session.Close(ctx)
		}
	}
	if err := q.client.Close(ctx); err != nil {
		return fmt.Errorf("closing service bus queue %s: %w", q.name, err)
	}
	return nil
}

// mapErr wraps Service Bus failures in the contract's sentinel errors.
func (q *Queue) mapErr(err error) error {
	if err == nil {
		return nil
	}
	var sbErr *azservicebus.Error
	if errors.As(err, &sbErr) {
		switch sbErr.Code {
		case azservicebus.CodeLockLost:
			return fmt.Errorf("%w: %w", queues.ErrLockLost, err)
		case azservicebus.CodeNotFound:
			return fmt.Errorf("queue %s: %w: %w", q.name, queues.ErrNotFound, err)
		case azservicebus.CodeClosed:
			return fmt.Errorf("%w: %w", queues.ErrClosed, err)
		}
	}
	if errors.Is(err, azservicebus.ErrMessageTooLarge) {
		return fmt.Errorf("%w: %w", queues.ErrTooLarge, err)
	}
	var amqpErr *amqp.Error
	if errors.As(err, &amqpErr) {
		switch amqpErr.Condition {
		case "com.microsoft:message-lock-lost", "com.microsoft:session-lock-lost":
			return fmt.Errorf("%w: %w", queues.ErrLockLost, err)
		case amqp.ErrCondNotFound:
			return fmt.Errorf("queue %s: %w: %w", q.name, queues.ErrNotFound, err)
		case amqp.ErrCondMessageSizeExceeded:
			return fmt.Errorf("%w: %w", queues.ErrTooLarge, err)
		}
	}
	if q.life.Err() != nil && errors.Is(err, context.Canceled) {
		return fmt.Errorf("%w: %w", queues.ErrClosed, err)
	}
	return err
}
