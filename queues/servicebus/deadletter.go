package servicebus

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"slices"
	"strconv"
	"time"

	"github.com/Azure/azure-sdk-for-go/sdk/messaging/azservicebus"

	"github.com/fhirsync/fhirsync/queues"
)

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

	done, rerrs := q.takeDeadLetters(ctx, r, want, "redriv", func(m *azservicebus.ReceivedMessage) error {
		return q.redriveOne(ctx, r, m)
	})
	return done, errors.Join(append(errs, rerrs...)...)
}

// takeDeadLetters receives the dead letters whose sequence numbers are in
// want (emptying it), applies act to each, and abandons the others it had
// to receive on the way. It returns how many act settled, and an error for
// each that failed or was not found. verb names the action in errors
// ("redriv" → "redriving").
func (q *Queue) takeDeadLetters(ctx context.Context, r *azservicebus.Receiver, want map[int64]bool, verb string,
	act func(m *azservicebus.ReceivedMessage) error) (int, []error) {
	var errs []error
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
			if err := act(m); err != nil {
				errs = append(errs, fmt.Errorf("%sing dead letter %d of %s: %w", verb, seq, q.name, err))
				continue
			}
			done++
		}
	}
	for _, m := range passed {
		_ = r.AbandonMessage(ctx, m, nil)
	}
	for s := range want {
		errs = append(errs, fmt.Errorf("dead letter %d of %s was not received for %sing: %w", s, q.name, verb, queues.ErrNotFound))
	}
	return done, errs
}

// Discard completes the chosen dead letters in the sub-queue, which
// deletes them for good.
func (q *Queue) Discard(ctx context.Context, seqs []int64) (int, error) {
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
	want := map[int64]bool{}
	for _, s := range seqs {
		want[s] = true
	}
	done, errs := q.takeDeadLetters(ctx, r, want, "discard", func(m *azservicebus.ReceivedMessage) error {
		return q.mapErr(r.CompleteMessage(ctx, m, nil))
	})
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
