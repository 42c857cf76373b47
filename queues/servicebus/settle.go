package servicebus

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"time"

	"github.com/Azure/azure-sdk-for-go/sdk/messaging/azservicebus"
	"github.com/google/uuid"

	"github.com/fhirsync/fhirsync/queues"
)

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
		// The settlement is committed; closing the link only gives the
		// session back, so the caller need not wait for it.
		go closeQuietly(h.session)
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
	err := q.mapErr(op(ctx))
	if h.session != nil && errors.Is(err, queues.ErrClosed) && q.life.Err() == nil {
		// The session's connection was replaced after it dropped, which
		// closed the session's link and with it the session lock.
		return fmt.Errorf("session %s link closed with its connection: %w: %w", h.session.SessionID(), queues.ErrLockLost, err)
	}
	return err
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
