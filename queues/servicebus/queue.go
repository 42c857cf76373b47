package servicebus

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"slices"
	"sync"
	"time"

	"github.com/Azure/azure-sdk-for-go/sdk/messaging/azservicebus"
	"github.com/Azure/azure-sdk-for-go/sdk/messaging/azservicebus/admin"
	"github.com/Azure/go-amqp"

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
	sessions   chan accepted // sessions accepted ahead of Receive
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
	if q.cfg.Tracer != nil {
		msgs = slices.Clone(msgs) // TraceSend writes the trace context into them
	}
	traced := queues.TraceSend(ctx, q.cfg.Tracer, "servicebus", q.name, msgs)
	out := make([]*azservicebus.Message, len(msgs))
	for i, m := range msgs {
		sm, err := q.toSB(m, m.ID, nil)
		if err != nil {
			traced(err)
			return err
		}
		out[i] = sm
	}
	ctx, cancel := q.opContext(ctx)
	defer cancel()
	for i, m := range msgs {
		if err := q.sendOne(ctx, out[i], m.VisibleAt); err != nil {
			traced(err)
			return fmt.Errorf("sending message %s to %s: %w", m.ID, q.name, err)
		}
	}
	traced(nil)
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
