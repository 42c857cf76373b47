package servicebus_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/Azure/azure-sdk-for-go/sdk/azcore"
	"github.com/Azure/azure-sdk-for-go/sdk/azcore/policy"
	"github.com/Azure/azure-sdk-for-go/sdk/messaging/azservicebus"

	"github.com/fhirsync/fhirsync/queues"
	"github.com/fhirsync/fhirsync/queues/servicebus"
	"github.com/fhirsync/fhirsync/queues/servicebus/sbtest"
)

func newQueue(t *testing.T, cfg servicebus.Config, name string) *servicebus.Queue {
	t.Helper()
	q, err := servicebus.New(cfg, name)
	if err != nil {
		t.Fatalf("New(%s): %v", name, err)
	}
	t.Cleanup(func() { _ = q.Close(context.Background()) })
	return q
}

func receiveOne(t *testing.T, q *servicebus.Queue) *queues.Received {
	t.Helper()
	deadline := time.Now().Add(15 * time.Second)
	for time.Now().Before(deadline) {
		ms, err := q.Receive(t.Context(), 1, time.Second)
		if err != nil {
			t.Fatalf("Receive: %v", err)
		}
		if len(ms) == 1 {
			return ms[0]
		}
	}
	t.Fatal("no message within 15s")
	return nil
}

func expectNone(t *testing.T, q *servicebus.Queue, d time.Duration) {
	t.Helper()
	ms, err := q.Receive(t.Context(), 5, d)
	if err != nil {
		t.Fatalf("Receive: %v", err)
	}
	if len(ms) > 0 {
		t.Fatalf("received %d messages (first %s), want none", len(ms), ms[0].ID)
	}
}

func TestConfigValidate(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name    string
		cfg     servicebus.Config
		wantErr string
	}{
		{name: "connection string", cfg: servicebus.Config{ConnectionString: "Endpoint=sb://x/;SharedAccessKeyName=a;SharedAccessKey=b"}},
		{name: "namespace default credential", cfg: servicebus.Config{Namespace: "contoso.servicebus.windows.net"}},
		{name: "managed identity", cfg: servicebus.Config{Namespace: "contoso.servicebus.windows.net", Credential: servicebus.CredentialManagedIdentity, ClientID: "id"}},
		{name: "client secret", cfg: servicebus.Config{Namespace: "contoso.servicebus.windows.net", Credential: servicebus.CredentialClientSecret, TenantID: "t", ClientID: "c", ClientSecret: "s"}},
		{name: "nothing", cfg: servicebus.Config{}, wantErr: "a connection string or a namespace is required"},
		{name: "both", cfg: servicebus.Config{ConnectionString: "x", Namespace: "y"}, wantErr: "not both"},
		{name: "url namespace", cfg: servicebus.Config{Namespace: "sb://contoso.servicebus.windows.net"}, wantErr: "not a URL"},
		{name: "client secret missing all", cfg: servicebus.Config{Namespace: "n", Credential: servicebus.CredentialClientSecret},
			wantErr: "needs a tenant id\nclient-secret credential needs a client id\nclient-secret credential needs a client secret"},
		{name: "unknown credential", cfg: servicebus.Config{Namespace: "n", Credential: "password"}, wantErr: `unknown credential "password"`},
		{name: "negative limits", cfg: servicebus.Config{ConnectionString: "x", MaxMessageBytes: -1, MaxDeliveryCount: -1}, wantErr: "max message bytes -1 is negative\nmax delivery count -1 is negative"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			err := tt.cfg.Validate()
			if tt.wantErr == "" {
				if err != nil {
					t.Fatalf("Validate() = %v, want nil", err)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
				t.Fatalf("Validate() = %v, want an error containing %q", err, tt.wantErr)
			}
		})
	}
}

func TestNewBuildsAzidentityCredentials(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name string
		cfg  servicebus.Config
	}{
		{name: "default chain", cfg: servicebus.Config{Namespace: "contoso.servicebus.windows.net"}},
		{name: "managed identity", cfg: servicebus.Config{Namespace: "contoso.servicebus.windows.net", Credential: servicebus.CredentialManagedIdentity, ClientID: "00000000-0000-0000-0000-000000000001"}},
		{name: "client secret", cfg: servicebus.Config{Namespace: "contoso.servicebus.windows.net", Credential: servicebus.CredentialClientSecret,
			TenantID: "00000000-0000-0000-0000-000000000002", ClientID: "00000000-0000-0000-0000-000000000003", ClientSecret: "s"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			// Building the client does not contact the service or Entra ID.
			q, err := servicebus.New(tt.cfg, "q")
			if err != nil {
				t.Fatalf("New: %v", err)
			}
			_ = q.Close(context.Background())
		})
	}
}

// TestTooLargeBeforeSending checks the limit is enforced by the adapter
// itself (nothing reaches the fake) and, when the configured limit is above
// what the service accepts, that the service's refusal maps to the same
// sentinel.
func TestTooLargeBeforeSending(t *testing.T) {
	t.Parallel()
	srv := sbtest.Start(t, sbtest.QueueConfig{Name: "big"})
	body := bytes.Repeat([]byte("x"), 300<<10)

	q := newQueue(t, servicebus.Config{ConnectionString: srv.ConnectionString()}, "big")
	err := q.Send(t.Context(), queues.Message{ID: "huge", Body: body})
	if !errors.Is(err, queues.ErrTooLarge) {
		t.Fatalf("Send of 300 KB: err = %v, want ErrTooLarge", err)
	}
	if !strings.Contains(err.Error(), "262144-byte Service Bus limit") {
		t.Errorf("error %q does not name the limit", err)
	}
	if d, err := q.Depth(t.Context()); err != nil || d != (queues.Depth{}) {
		t.Fatalf("Depth after refused send = %+v, %v; want empty", d, err)
	}

	premium := newQueue(t, servicebus.Config{ConnectionString: srv.ConnectionString(), MaxMessageBytes: 1 << 20}, "big")
	err = premium.Send(t.Context(), queues.Message{ID: "huge", Body: body})
	if !errors.Is(err, queues.ErrTooLarge) {
		t.Fatalf("Send of 300 KB to a 256 KB link: err = %v, want ErrTooLarge", err)
	}
}

func TestUnknownQueue(t *testing.T) {
	t.Parallel()
	srv := sbtest.Start(t, sbtest.QueueConfig{Name: "exists"})
	q := newQueue(t, servicebus.Config{ConnectionString: srv.ConnectionString()}, "missing")
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	defer cancel()
	if err := q.Send(ctx, queues.Message{ID: "m", Body: []byte("{}")}); !errors.Is(err, queues.ErrNotFound) {
		t.Errorf("Send to a missing queue: err = %v, want ErrNotFound", err)
	}
	if _, err := q.Receive(ctx, 1, 5*time.Second); !errors.Is(err, queues.ErrNotFound) {
		t.Errorf("Receive from a missing queue: err = %v, want ErrNotFound", err)
	}
	if _, err := q.PeekDeadLetters(ctx, 0, 10); !errors.Is(err, queues.ErrNotFound) {
		t.Errorf("PeekDeadLetters of a missing queue: err = %v, want ErrNotFound", err)
	}
}

// TestReconnectAfterDrop drops every connection at the socket while a
// message is locked: the adapter settles it after reconnecting (through the
// management link, since the receiving link is gone) and keeps sending and
// receiving.
func TestReconnectAfterDrop(t *testing.T) {
	t.Parallel()
	for _, sessions := range []bool{false, true} {
		t.Run(fmt.Sprintf("sessions=%v", sessions), func(t *testing.T) {
			t.Parallel()
			srv := sbtest.Start(t, sbtest.QueueConfig{Name: "r", Sessions: sessions})
			q := newQueue(t, servicebus.Config{ConnectionString: srv.ConnectionString(), Sessions: sessions}, "r")
			if err := q.Send(t.Context(), queues.Message{ID: "before", Body: []byte("{}")}); err != nil {
				t.Fatal(err)
			}
			m := receiveOne(t, q)
			if n := srv.DropConnections(t); n == 0 {
				t.Fatal("the fake had no connection to drop")
			}
			err := q.Complete(t.Context(), m)
			if sessions {
				// A session lock dies with its link: Service Bus gives
				// the session to the next receiver.
				if !errors.Is(err, queues.ErrLockLost) {
					t.Fatalf("Complete after the drop on a session queue: err = %v, want ErrLockLost", err)
				}
				again := receiveOne(t, q)
				if again.ID != "before" || again.DeliveryCount != 2 {
					t.Fatalf("after the drop got %s with DeliveryCount %d, want before with 2", again.ID, again.DeliveryCount)
				}
				if err := q.Complete(t.Context(), again); err != nil {
					t.Fatalf("Complete after reconnecting: %v", err)
				}
			} else if err != nil {
				t.Fatalf("Complete of a message received before the drop: %v", err)
			}
			if err := q.Send(t.Context(), queues.Message{ID: "after", Body: []byte("{}")}); err != nil {
				t.Fatalf("Send after the drop: %v", err)
			}
			got := receiveOne(t, q)
			if got.ID != "after" {
				t.Fatalf("received %s after the drop, want after", got.ID)
			}
			if err := q.Complete(t.Context(), got); err != nil {
				t.Fatalf("Complete after the drop: %v", err)
			}
			expectNone(t, q, 500*time.Millisecond)
		})
	}
}

// TestAutoRenew holds messages past their lock duration without settling:
// the background renewer keeps the lock, another receiver sees nothing, and
// the late Complete succeeds. With a short renewal budget the lock lapses.
func TestAutoRenew(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name     string
		sessions bool
		budget   time.Duration
		wantLost bool
	}{
		{name: "plain", budget: time.Minute},
		{name: "sessions", sessions: true, budget: time.Minute},
		{name: "budget spent", budget: time.Second, wantLost: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			const lock = 3 * time.Second
			srv := sbtest.Start(t, sbtest.QueueConfig{Name: "a", LockDuration: lock, Sessions: tt.sessions})
			cfg := servicebus.Config{ConnectionString: srv.ConnectionString(), Sessions: tt.sessions, AutoRenewFor: tt.budget}
			q := newQueue(t, cfg, "a")
			other := newQueue(t, cfg, "a")
			if err := q.Send(t.Context(), queues.Message{ID: "slow", SessionKey: "k", Body: []byte("{}")}); err != nil {
				t.Fatal(err)
			}
			m := receiveOne(t, q)
			received := time.Now()
			if tt.wantLost {
				again := receiveOne(t, other)
				if again.ID != "slow" || again.DeliveryCount != 2 {
					t.Fatalf("after the budget got %s with DeliveryCount %d", again.ID, again.DeliveryCount)
				}
				if err := q.Complete(t.Context(), m); !errors.Is(err, queues.ErrLockLost) {
					t.Fatalf("Complete after the renewal budget: err = %v, want ErrLockLost", err)
				}
				if err := other.Complete(t.Context(), again); err != nil {
					t.Fatal(err)
				}
				return
			}
			expectNone(t, other, lock+2*time.Second)
			if err := q.Complete(t.Context(), m); err != nil {
				t.Fatalf("Complete after %v with a %v lock: %v", time.Since(received), lock, err)
			}
			expectNone(t, other, 500*time.Millisecond)
		})
	}
}

// TestPlainQueue covers the queue without sessions: the contract suite runs
// on session-enabled queues.
func TestPlainQueue(t *testing.T) {
	t.Parallel()
	srv := sbtest.Start(t, sbtest.QueueConfig{Name: "p", LockDuration: 2 * time.Second, MaxDeliveryCount: 3})
	q := newQueue(t, servicebus.Config{ConnectionString: srv.ConnectionString(), MaxDeliveryCount: 3, AutoRenewFor: -1}, "p")
	ctx := t.Context()
	sent := queues.Message{ID: "p1", SessionKey: "fhir:Patient/1", Body: []byte(`{"a":1}`), Properties: map[string]string{"k": "v"}}
	later := queues.Message{ID: "p2", Body: []byte("{}"), VisibleAt: time.Now().Add(time.Hour)}
	if err := q.Send(ctx, sent, later); err != nil {
		t.Fatal(err)
	}
	if d, err := q.Depth(ctx); err != nil || d != (queues.Depth{Active: 1, Scheduled: 1}) {
		t.Fatalf("Depth = %+v, %v; want 1 active, 1 scheduled", d, err)
	}
	m := receiveOne(t, q)
	if m.ID != sent.ID || m.SessionKey != sent.SessionKey || m.Properties["k"] != "v" || m.DeliveryCount != 1 {
		t.Fatalf("received %+v", m.Message)
	}
	until, err := q.RenewLock(ctx, m)
	if err != nil || !until.After(m.LockedUntil.Add(-time.Millisecond)) {
		t.Fatalf("RenewLock = %v, %v; want after %v", until, err, m.LockedUntil)
	}
	// Abandon with a delay: a scheduled copy that counts the delivery.
	if err := q.Abandon(ctx, m, 1500*time.Millisecond); err != nil {
		t.Fatalf("Abandon with delay: %v", err)
	}
	if d, err := q.Depth(ctx); err != nil || d != (queues.Depth{Scheduled: 2}) {
		t.Fatalf("Depth after delayed abandon = %+v, %v; want 2 scheduled", d, err)
	}
	expectNone(t, q, 500*time.Millisecond)
	m = receiveOne(t, q)
	if m.ID != sent.ID || m.DeliveryCount != 2 || m.Properties["k"] != "v" {
		t.Fatalf("delayed retry = %s with DeliveryCount %d and properties %v", m.ID, m.DeliveryCount, m.Properties)
	}
	// The third delivery is the last one allowed; a fourth is dead-lettered
	// by the adapter because Service Bus counts only the copy's deliveries.
	if err := q.Abandon(ctx, m, 100*time.Millisecond); err != nil {
		t.Fatal(err)
	}
	m = receiveOne(t, q)
	if m.DeliveryCount != 3 {
		t.Fatalf("third delivery has DeliveryCount %d", m.DeliveryCount)
	}
	if err := q.Abandon(ctx, m, 100*time.Millisecond); err != nil {
		t.Fatal(err)
	}
	expectNone(t, q, 1500*time.Millisecond)
	ds, err := q.PeekDeadLetters(ctx, 0, 10)
	if err != nil || len(ds) != 1 {
		t.Fatalf("PeekDeadLetters = %d, %v; want 1", len(ds), err)
	}
	if d := ds[0]; d.ID != sent.ID || d.Reason != queues.ReasonMaxDeliveryCountExceeded || d.DeliveryCount != 4 || d.SessionKey != sent.SessionKey {
		t.Fatalf("dead letter = %+v", d)
	}
	n, err := q.Redrive(ctx, []int64{ds[0].SequenceNumber, 999999}, 1)
	if n != 1 || !errors.Is(err, queues.ErrNotFound) {
		t.Fatalf("Redrive with an unknown sequence number = %d, %v; want 1 and ErrNotFound", n, err)
	}
	m = receiveOne(t, q)
	if m.ID != sent.ID || m.Properties[queues.PropRedriveCount] != "1" || m.DeliveryCount != 1 {
		t.Fatalf("redriven = %s, properties %v, DeliveryCount %d", m.ID, m.Properties, m.DeliveryCount)
	}
	if err := q.Complete(ctx, m); err != nil {
		t.Fatal(err)
	}
	if d, err := q.Depth(ctx); err != nil || d != (queues.Depth{Scheduled: 1}) {
		t.Fatalf("final Depth = %+v, %v; want the hour-later message only", d, err)
	}
}

// staticToken is a test azcore.TokenCredential that hands out a fixed
// bearer token and counts the calls.
type staticToken struct {
	token  string
	scopes atomic.Value
	calls  atomic.Int64
}

func (s *staticToken) GetToken(_ context.Context, opts policy.TokenRequestOptions) (azcore.AccessToken, error) {
	s.calls.Add(1)
	s.scopes.Store(strings.Join(opts.Scopes, " "))
	return azcore.AccessToken{Token: s.token, ExpiresOn: time.Now().Add(time.Hour)}, nil
}

// TestTokenCredential runs the namespace + azcore.TokenCredential path (the
// one azidentity credentials take) against the fake: the client's WebSocket
// dialer hook hands it a plain TCP connection, and the fake sees a JWT
// put-token with the credential's token.
func TestTokenCredential(t *testing.T) {
	t.Parallel()
	srv := sbtest.Start(t, sbtest.QueueConfig{Name: "cred"})
	cred := &staticToken{token: "header.payload.signature"}
	dial := func(ctx context.Context, _ azservicebus.NewWebSocketConnArgs) (net.Conn, error) {
		var d net.Dialer
		return d.DialContext(ctx, "tcp", srv.Addr)
	}
	q := newQueue(t, servicebus.Config{
		Namespace:       "fhirsync-test.servicebus.windows.net",
		TokenCredential: cred,
		ClientOptions:   &azservicebus.ClientOptions{NewWebSocketConn: dial},
	}, "cred")
	if err := q.Send(t.Context(), queues.Message{ID: "c1", Body: []byte("{}")}); err != nil {
		t.Fatalf("Send with a token credential: %v", err)
	}
	m := receiveOne(t, q)
	if err := q.Complete(t.Context(), m); err != nil {
		t.Fatal(err)
	}
	if cred.calls.Load() == 0 {
		t.Fatal("the token credential was never asked for a token")
	}
	if got := cred.scopes.Load(); got != "https://servicebus.azure.net//.default" {
		t.Errorf("token scope = %q", got)
	}
	var jwt int
	for _, ev := range srv.Tokens() {
		if ev.Type != "jwt" || ev.Token != cred.token {
			t.Errorf("put-token type %q token %q, want jwt with the credential's token", ev.Type, ev.Token)
		}
		if !strings.HasPrefix(ev.Audience, "amqps://fhirsync-test.servicebus.windows.net/cred") {
			t.Errorf("put-token audience %q", ev.Audience)
		}
		jwt++
	}
	if jwt == 0 {
		t.Fatal("the fake saw no put-token")
	}
}

// TestPlainLockLost settles after the lock lapsed on a queue without
// sessions, where the service itself (not the adapter) must refuse: link
// settlements with com.microsoft:message-lock-lost, lock renewal with 410.
func TestPlainLockLost(t *testing.T) {
	t.Parallel()
	srv := sbtest.Start(t, sbtest.QueueConfig{Name: "l", LockDuration: time.Second})
	q := newQueue(t, servicebus.Config{ConnectionString: srv.ConnectionString(), AutoRenewFor: -1}, "l")
	ops := []struct {
		name   string
		settle func(ctx context.Context, m *queues.Received) error
	}{
		{"Complete", func(ctx context.Context, m *queues.Received) error { return q.Complete(ctx, m) }},
		{"Abandon", func(ctx context.Context, m *queues.Received) error { return q.Abandon(ctx, m, 0) }},
		{"AbandonDelay", func(ctx context.Context, m *queues.Received) error { return q.Abandon(ctx, m, time.Second) }},
		{"DeadLetter", func(ctx context.Context, m *queues.Received) error { return q.DeadLetter(ctx, m, "r", "d") }},
		{"RenewLock", func(ctx context.Context, m *queues.Received) error { _, err := q.RenewLock(ctx, m); return err }},
	}
	for _, op := range ops {
		if err := q.Send(t.Context(), queues.Message{ID: op.name, Body: []byte("{}")}); err != nil {
			t.Fatal(err)
		}
	}
	byID := map[string]*queues.Received{}
	for len(byID) < len(ops) {
		m := receiveOne(t, q)
		byID[m.ID] = m
	}
	time.Sleep(1500 * time.Millisecond)
	for _, op := range ops {
		if err := op.settle(t.Context(), byID[op.name]); !errors.Is(err, queues.ErrLockLost) {
			t.Errorf("%s after the lock lapsed: err = %v, want ErrLockLost", op.name, err)
		}
	}
	seen := map[string]bool{}
	for len(seen) < len(ops) {
		m := receiveOne(t, q)
		if seen[m.ID] || m.DeliveryCount != 2 {
			t.Fatalf("redelivered %s (again: %v) with DeliveryCount %d, want each once with 2", m.ID, seen[m.ID], m.DeliveryCount)
		}
		seen[m.ID] = true
		if err := q.Complete(t.Context(), m); err != nil {
			t.Fatal(err)
		}
	}
	expectNone(t, q, 1500*time.Millisecond) // no copy was scheduled by AbandonDelay
	if ds, err := q.PeekDeadLetters(t.Context(), 0, 10); err != nil || len(ds) != 0 {
		t.Fatalf("dead letters after refused settlements = %d, %v; want none", len(ds), err)
	}
}

// TestSessionTakenWhileWaiting: a session accepted ahead of any Receive
// waits holding its lock; when that lock lapses and another receiver takes
// the session, the first Receive to pick up the stale session gives it up
// without an error and without costing the message a delivery.
func TestSessionTakenWhileWaiting(t *testing.T) {
	t.Parallel()
	srv := sbtest.Start(t, sbtest.QueueConfig{Name: "w", LockDuration: time.Second, Sessions: true})
	cfg := servicebus.Config{ConnectionString: srv.ConnectionString(), Sessions: true, AutoRenewFor: -1}
	a := newQueue(t, cfg, "w")
	cfg.AutoRenewFor = time.Minute // b keeps the session while a tries
	b := newQueue(t, cfg, "w")
	if err := a.Send(t.Context(), queues.Message{ID: "m", SessionKey: "k", Body: []byte("{}")}); err != nil {
		t.Fatal(err)
	}
	// Starts a's acceptors; the wait is too short to take what they accept.
	if ms, err := a.Receive(t.Context(), 1, time.Millisecond); err != nil || len(ms) != 0 {
		t.Fatalf("first Receive on a = %d messages, %v; want none and no error", len(ms), err)
	}
	time.Sleep(2500 * time.Millisecond) // a's session lock lapses unrenewed
	got := receiveOne(t, b)
	if got.ID != "m" || got.DeliveryCount != 1 {
		t.Fatalf("b received %s with DeliveryCount %d, want m with 1", got.ID, got.DeliveryCount)
	}
	ms, err := a.Receive(t.Context(), 1, 2*time.Second)
	if err != nil {
		t.Fatalf("Receive on a after b took its session: %v", err)
	}
	if len(ms) != 0 {
		t.Fatalf("a received %s (DeliveryCount %d) while b holds the session", ms[0].ID, ms[0].DeliveryCount)
	}
	if err := b.Complete(t.Context(), got); err != nil {
		t.Fatalf("b Complete: %v", err)
	}
}
