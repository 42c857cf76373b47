package servicebus

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"time"

	"github.com/Azure/azure-sdk-for-go/sdk/messaging/azservicebus"
	"github.com/Azure/go-amqp"
	"github.com/google/uuid"

	"github.com/fhirsync/fhirsync/queues"
)

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

// acceptors is how many sessions are being accepted at once; each
// accepted session waits for a Receive holding its lock, so this also
// bounds how many keys a Queue keeps from other consumers while idle.
const acceptors = 2

// accepted is one outcome of the session acceptor.
type accepted struct {
	sr  *azservicebus.SessionReceiver
	err error
}

// acceptLoop accepts sessions ahead of Receive, on a connection of its
// own, and hands them over one at a time. Accepting runs on the queue's lifetime context, never on a caller's
// deadline: cancelling an accept while the service holds it open makes the
// client reset the whole connection, which would break every other link.
// The service ends a fruitless accept itself (com.microsoft:timeout) and the
// loop starts the next one.
func (q *Queue) acceptLoop() {
	var client *azservicebus.Client
	defer func() {
		if client != nil {
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
	q.acceptOnce.Do(func() {
		for range acceptors {
			go q.acceptLoop()
		}
	})
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
		// The session may have waited for a Receive since it was accepted;
		// start its lock afresh before taking a message, so that a lock
		// that lapsed meanwhile costs no delivery. A session another
		// receiver took after the lapse cannot be locked again: it is
		// lost to this receiver like an expired lock.
		if err := sr.RenewSessionLock(ctx, nil); err != nil {
			closeQuietly(sr)
			if sessionLost(q.mapErr(err)) || ctx.Err() != nil {
				continue
			}
			return out, fmt.Errorf("renewing session %s on %s: %w", sr.SessionID(), q.name, q.mapErr(err))
		}
		rctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		msgs, err := sr.ReceiveMessages(rctx, 1, nil)
		cancel()
		if len(msgs) == 0 {
			closeQuietly(sr)
			if err != nil && ctx.Err() == nil && !errors.Is(err, context.DeadlineExceeded) && !sessionLost(q.mapErr(err)) {
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

// sessionLost reports an error that means this receiver no longer holds
// the session: its lock expired, or another receiver holds it now.
func sessionLost(err error) bool {
	if errors.Is(err, queues.ErrLockLost) {
		return true
	}
	var amqpErr *amqp.Error
	return errors.As(err, &amqpErr) && amqpErr.Condition == "com.microsoft:session-cannot-be-locked"
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
		if _, err := q.renew(ctx, h); err != nil && (errors.Is(err, queues.ErrLockLost) || ctx.Err() != nil) {
			return
		}
	}
}
