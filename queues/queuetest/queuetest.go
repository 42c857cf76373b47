// Package queuetest is the contract test suite every queues.Queue
// implementation runs: the embedded database queue on SQLite and PostgreSQL,
// and the Service Bus adapter against the fake and (opt-in) a real namespace.
//
// An implementation's test calls Run with a Factory that returns a fresh,
// empty queue per call:
//
//	func TestContract(t *testing.T) {
//		queuetest.Run(t, func(t *testing.T, o queuetest.Options) queues.Queue {
//			q, err := embedded.New(db, "contract-"+t.Name(), embedded.Options{
//				LockDuration: o.LockDuration, MaxDeliveryCount: o.MaxDeliveryCount,
//				DuplicateWindow: o.DuplicateWindow})
//			if err != nil {
//				t.Fatal(err)
//			}
//			return q
//		})
//	}
//
// Timings are tolerant: locks last one to a few seconds, waits are generous,
// and nothing asserts speed. Subtests run in parallel, so a Factory must be
// safe to call concurrently. The suite calls Close only in its Close case;
// a Factory may register its own cleanup that closes the queue again.
package queuetest

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/fhirsync/fhirsync/queues"
)

// Options configures a queue under test. Run always sets every field.
type Options struct {
	// LockDuration is how long a received message stays locked.
	LockDuration time.Duration
	// MaxDeliveryCount is how many deliveries a message gets before it is
	// dead-lettered with queues.ReasonMaxDeliveryCountExceeded.
	MaxDeliveryCount int
	// DuplicateWindow is how long a MessageID is remembered for duplicate
	// detection.
	DuplicateWindow time.Duration
}

// Factory returns a fresh, empty queue configured with opts. It fails t
// itself when the queue cannot be made.
type Factory func(t *testing.T, opts Options) queues.Queue

// defaults are the options a case starts from before adjusting them.
var defaults = Options{LockDuration: 3 * time.Second, MaxDeliveryCount: 5, DuplicateWindow: time.Minute}

// slack absorbs scheduling noise on a loaded machine when checking that a
// message did not arrive before its time.
const slack = 250 * time.Millisecond

type testCase struct {
	name string
	opts func(*Options)
	run  func(t *testing.T, q queues.Queue, o Options)
}

// Run runs every contract case as a parallel subtest of t, each on its own
// queue from newQueue.
func Run(t *testing.T, newQueue Factory) {
	t.Helper()
	for _, tc := range cases() {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			o := defaults
			if tc.opts != nil {
				tc.opts(&o)
			}
			q := newQueue(t, o)
			tc.run(t, q, o)
		})
	}
}

func cases() []testCase {
	return []testCase{
		{name: "SendReceiveComplete", run: testSendReceiveComplete},
		{name: "ReceiveTimeoutReturnsEmpty", run: testReceiveTimeout},
		{name: "ReceiveWakesOnSend", run: testReceiveWakesOnSend},
		{name: "BatchSendAndReceive", run: testBatch},
		{name: "AbandonWithoutDelay", run: testAbandonNoDelay},
		{name: "AbandonWithDelay", run: testAbandonDelay},
		{name: "LockExpiryRedelivers", opts: shortLock, run: testLockExpiry},
		{name: "SettleAfterLockExpiry", opts: shortLock, run: testSettleAfterExpiry},
		{name: "RenewLockExtends", run: testRenewLock},
		{name: "MaxDeliveryCountDeadLetters", opts: func(o *Options) { o.LockDuration = time.Second; o.MaxDeliveryCount = 2 }, run: testMaxDelivery},
		{name: "DeadLetterWithReason", run: testDeadLetter},
		{name: "PeekDeadLettersPages", run: testPeekPaging},
		{name: "RedriveCountsAndStopsLoops", run: testRedrive},
		{name: "DiscardDeletesDeadLetters", run: testDiscard},
		{name: "DuplicateWithinWindowDropped", run: testDuplicateWithinWindow},
		{name: "DuplicateWindowExpires", opts: func(o *Options) { o.DuplicateWindow = 2 * time.Second }, run: testDuplicateWindowExpires},
		{name: "ScheduledDelivery", run: testScheduled},
		{name: "SessionOrderWithCompetingReceivers", opts: func(o *Options) { o.LockDuration = 10 * time.Second; o.MaxDeliveryCount = 10 }, run: testSessionOrder},
		{name: "Depth", run: testDepth},
		{name: "PropertiesRoundTrip", run: testRoundTrip},
		{name: "TooLargeRejected", run: testTooLarge},
		{name: "Close", run: testClose},
	}
}

func shortLock(o *Options) { o.LockDuration = time.Second }

// --- helpers ---------------------------------------------------------------

func msg(id string) queues.Message {
	return queues.Message{ID: id, Body: []byte(`{"id":"` + id + `"}`), Properties: map[string]string{"case": id}}
}

func send(t *testing.T, q queues.Queue, msgs ...queues.Message) {
	t.Helper()
	if err := q.Send(t.Context(), msgs...); err != nil {
		t.Fatalf("Send(%s): %v", messageIDs(msgs), err)
	}
}

func messageIDs(ms []queues.Message) string {
	s := make([]string, len(ms))
	for i, m := range ms {
		s[i] = m.ID
	}
	return "[" + strings.Join(s, " ") + "]"
}

// receiveN collects exactly n messages within d, failing t otherwise.
func receiveN(t *testing.T, q queues.Queue, n int, d time.Duration) []*queues.Received {
	t.Helper()
	var got []*queues.Received
	deadline := time.Now().Add(d)
	for len(got) < n && time.Now().Before(deadline) {
		ms, err := q.Receive(t.Context(), n-len(got), time.Second)
		if err != nil {
			t.Fatalf("Receive: %v", err)
		}
		if len(ms) > n-len(got) {
			t.Fatalf("Receive(max %d) returned %d messages", n-len(got), len(ms))
		}
		got = append(got, ms...)
	}
	if len(got) != n {
		t.Fatalf("received %d messages within %v, want %d (%s)", len(got), d, n, receivedIDs(got))
	}
	return got
}

func receiveOne(t *testing.T, q queues.Queue) *queues.Received {
	t.Helper()
	return receiveN(t, q, 1, 15*time.Second)[0]
}

// expectNone waits d and fails t if anything is delivered.
func expectNone(t *testing.T, q queues.Queue, d time.Duration) {
	t.Helper()
	ms, err := q.Receive(t.Context(), 10, d)
	if err != nil {
		t.Fatalf("Receive: %v", err)
	}
	if len(ms) > 0 {
		t.Fatalf("received %s, want nothing", receivedIDs(ms))
	}
}

// eventually retries check until it passes or d elapses; transports may
// report counts and dead letters with a short lag.
func eventually(t *testing.T, d time.Duration, check func() error) {
	t.Helper()
	deadline := time.Now().Add(d)
	for {
		err := check()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatal(err)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

func receivedIDs(ms []*queues.Received) string {
	s := make([]string, len(ms))
	for i, m := range ms {
		s[i] = m.ID
	}
	return "[" + strings.Join(s, " ") + "]"
}

func deadIDs(ds []queues.DeadLetter) string {
	s := make([]string, len(ds))
	for i, d := range ds {
		s[i] = d.ID
	}
	return "[" + strings.Join(s, " ") + "]"
}

func peekAll(t *testing.T, q queues.Queue) []queues.DeadLetter {
	t.Helper()
	ds, err := q.PeekDeadLetters(t.Context(), 0, 100)
	if err != nil {
		t.Fatalf("PeekDeadLetters: %v", err)
	}
	return ds
}

// waitDeadLetters waits until the dead-letter sub-queue holds exactly n.
func waitDeadLetters(t *testing.T, q queues.Queue, n int) []queues.DeadLetter {
	t.Helper()
	var ds []queues.DeadLetter
	eventually(t, 10*time.Second, func() error {
		ds = peekAll(t, q)
		if len(ds) != n {
			return fmt.Errorf("dead letters = %s, want %d", deadIDs(ds), n)
		}
		return nil
	})
	return ds
}

func waitDepth(t *testing.T, q queues.Queue, want queues.Depth) {
	t.Helper()
	eventually(t, 10*time.Second, func() error {
		d, err := q.Depth(t.Context())
		if err != nil {
			return fmt.Errorf("Depth: %w", err)
		}
		if d != want {
			return fmt.Errorf("Depth = %+v, want %+v", d, want)
		}
		return nil
	})
}

// propsInclude fails t unless every sent property arrived unchanged.
func propsInclude(t *testing.T, got, sent map[string]string) {
	t.Helper()
	for k, v := range sent {
		if gv, ok := got[k]; !ok || gv != v {
			t.Errorf("property %q = %q (present %v), want %q", k, gv, ok, v)
		}
	}
}

func mustComplete(t *testing.T, q queues.Queue, m *queues.Received) {
	t.Helper()
	if err := q.Complete(t.Context(), m); err != nil {
		t.Fatalf("Complete(%s): %v", m.ID, err)
	}
}

// --- cases -----------------------------------------------------------------

func testSendReceiveComplete(t *testing.T, q queues.Queue, o Options) {
	start := time.Now()
	sent := []queues.Message{msg("a"), msg("b"), msg("c")}
	for _, m := range sent {
		send(t, q, m) // separate sends: enqueue order is a, b, c
	}
	before := time.Now()
	got := receiveN(t, q, 3, 15*time.Second)
	after := time.Now()
	slices.SortFunc(got, func(x, y *queues.Received) int { return strings.Compare(x.ID, y.ID) })
	tokens := map[string]bool{}
	for i, m := range got {
		if m.ID != sent[i].ID {
			t.Fatalf("received %s, want a, b, c", receivedIDs(got))
		}
		if !bytes.Equal(m.Body, sent[i].Body) {
			t.Errorf("%s body = %q, want %q", m.ID, m.Body, sent[i].Body)
		}
		propsInclude(t, m.Properties, sent[i].Properties)
		if m.DeliveryCount != 1 {
			t.Errorf("%s DeliveryCount = %d, want 1", m.ID, m.DeliveryCount)
		}
		if m.LockToken == "" || tokens[m.LockToken] {
			t.Errorf("%s LockToken %q is empty or shared", m.ID, m.LockToken)
		}
		tokens[m.LockToken] = true
		if m.SequenceNumber <= 0 {
			t.Errorf("%s SequenceNumber = %d, want > 0", m.ID, m.SequenceNumber)
		}
		if i > 0 && m.SequenceNumber <= got[i-1].SequenceNumber {
			t.Errorf("SequenceNumber of %s (%d) not above %s (%d) sent before it", m.ID, m.SequenceNumber, got[i-1].ID, got[i-1].SequenceNumber)
		}
		if m.EnqueuedAt.Before(start.Add(-time.Minute)) || m.EnqueuedAt.After(after.Add(time.Minute)) {
			t.Errorf("%s EnqueuedAt = %v, outside the test's run (%v..%v)", m.ID, m.EnqueuedAt, start, after)
		}
		if !m.LockedUntil.After(before) || m.LockedUntil.After(after.Add(o.LockDuration+time.Minute)) {
			t.Errorf("%s LockedUntil = %v, want about %v after %v", m.ID, m.LockedUntil, o.LockDuration, before)
		}
	}
	for _, m := range got {
		mustComplete(t, q, m)
	}
	if err := q.Complete(t.Context(), got[0]); err == nil {
		t.Error("completing a message twice succeeded")
	}
	expectNone(t, q, time.Second)
}

func testReceiveTimeout(t *testing.T, q queues.Queue, o Options) {
	ms, err := q.Receive(t.Context(), 5, 300*time.Millisecond)
	if err != nil {
		t.Fatalf("Receive on an empty queue: %v", err)
	}
	if len(ms) != 0 {
		t.Fatalf("Receive on an empty queue returned %s", receivedIDs(ms))
	}
}

func testReceiveWakesOnSend(t *testing.T, q queues.Queue, o Options) {
	done := make(chan error, 1)
	go func() {
		time.Sleep(500 * time.Millisecond)
		done <- q.Send(t.Context(), msg("late"))
	}()
	ms, err := q.Receive(t.Context(), 1, 20*time.Second)
	if err != nil {
		t.Fatalf("Receive: %v", err)
	}
	if err := <-done; err != nil {
		t.Fatalf("Send: %v", err)
	}
	if len(ms) != 1 || ms[0].ID != "late" {
		t.Fatalf("Receive waiting for a send got %s, want [late]", receivedIDs(ms))
	}
	mustComplete(t, q, ms[0])
}

func testBatch(t *testing.T, q queues.Queue, o Options) {
	var sent []queues.Message
	for i := range 7 {
		sent = append(sent, msg(fmt.Sprintf("b%d", i)))
	}
	send(t, q, sent...)
	seen := map[string]int{}
	deadline := time.Now().Add(20 * time.Second)
	for len(seen) < len(sent) && time.Now().Before(deadline) {
		ms, err := q.Receive(t.Context(), 3, time.Second)
		if err != nil {
			t.Fatalf("Receive: %v", err)
		}
		if len(ms) > 3 {
			t.Fatalf("Receive(max 3) returned %d", len(ms))
		}
		for _, m := range ms {
			seen[m.ID]++
			if seen[m.ID] > 1 {
				t.Fatalf("%s delivered twice while locked", m.ID)
			}
			mustComplete(t, q, m)
		}
	}
	if len(seen) != len(sent) {
		t.Fatalf("received %d distinct messages, want %d: %v", len(seen), len(sent), seen)
	}
	expectNone(t, q, 500*time.Millisecond)
}

func testAbandonNoDelay(t *testing.T, q queues.Queue, o Options) {
	send(t, q, msg("ab"))
	m := receiveOne(t, q)
	if err := q.Abandon(t.Context(), m, 0); err != nil {
		t.Fatalf("Abandon: %v", err)
	}
	again := receiveOne(t, q)
	if again.ID != "ab" || again.DeliveryCount != 2 {
		t.Fatalf("after Abandon got %s with DeliveryCount %d, want ab with 2", again.ID, again.DeliveryCount)
	}
	if again.LockToken == m.LockToken {
		t.Errorf("redelivery reused lock token %q", m.LockToken)
	}
	if err := q.Complete(t.Context(), m); !errors.Is(err, queues.ErrLockLost) {
		t.Errorf("Complete with the abandoned lock: err = %v, want ErrLockLost", err)
	}
	mustComplete(t, q, again)
}

func testAbandonDelay(t *testing.T, q queues.Queue, o Options) {
	send(t, q, msg("later"))
	m := receiveOne(t, q)
	const delay = 3 * time.Second
	abandonedAt := time.Now()
	if err := q.Abandon(t.Context(), m, delay); err != nil {
		t.Fatalf("Abandon: %v", err)
	}
	expectNone(t, q, time.Second)
	again := receiveOne(t, q)
	if got := time.Since(abandonedAt); got < delay-slack {
		t.Errorf("redelivered %v after Abandon with delay %v", got, delay)
	}
	if again.ID != "later" || again.DeliveryCount != 2 {
		t.Fatalf("after delayed Abandon got %s with DeliveryCount %d, want later with 2", again.ID, again.DeliveryCount)
	}
	mustComplete(t, q, again)
}

func testLockExpiry(t *testing.T, q queues.Queue, o Options) {
	send(t, q, msg("exp"))
	first := receiveOne(t, q)
	// Not settled: the lock lapses and the message comes back.
	second := receiveOne(t, q)
	if second.ID != "exp" || second.DeliveryCount != 2 {
		t.Fatalf("after lock expiry got %s with DeliveryCount %d, want exp with 2", second.ID, second.DeliveryCount)
	}
	if second.LockToken == first.LockToken {
		t.Errorf("redelivery reused lock token %q", first.LockToken)
	}
	if err := q.Complete(t.Context(), first); !errors.Is(err, queues.ErrLockLost) {
		t.Fatalf("Complete with the expired lock: err = %v, want ErrLockLost", err)
	}
	mustComplete(t, q, second)
	expectNone(t, q, 500*time.Millisecond)
}

func testSettleAfterExpiry(t *testing.T, q queues.Queue, o Options) {
	ops := []struct {
		name   string
		settle func(ctx context.Context, m *queues.Received) error
	}{
		{"Complete", func(ctx context.Context, m *queues.Received) error { return q.Complete(ctx, m) }},
		{"Abandon", func(ctx context.Context, m *queues.Received) error { return q.Abandon(ctx, m, 0) }},
		{"DeadLetter", func(ctx context.Context, m *queues.Received) error { return q.DeadLetter(ctx, m, "r", "d") }},
		{"RenewLock", func(ctx context.Context, m *queues.Received) error { _, err := q.RenewLock(ctx, m); return err }},
	}
	var sent []queues.Message
	for _, op := range ops {
		sent = append(sent, msg(op.name))
	}
	send(t, q, sent...)
	got := receiveN(t, q, len(ops), 15*time.Second)
	byID := map[string]*queues.Received{}
	latest := time.Time{}
	for _, m := range got {
		byID[m.ID] = m
		if m.LockedUntil.After(latest) {
			latest = m.LockedUntil
		}
	}
	time.Sleep(min(time.Until(latest)+time.Second, 10*time.Second))
	for _, op := range ops {
		if err := op.settle(t.Context(), byID[op.name]); !errors.Is(err, queues.ErrLockLost) {
			t.Errorf("%s after lock expiry: err = %v, want ErrLockLost", op.name, err)
		}
	}
	// Nothing was settled: every message is delivered again, none is dead.
	again := receiveN(t, q, len(ops), 15*time.Second)
	for _, m := range again {
		if m.DeliveryCount != 2 {
			t.Errorf("%s DeliveryCount = %d, want 2", m.ID, m.DeliveryCount)
		}
		mustComplete(t, q, m)
	}
	if ds := peekAll(t, q); len(ds) != 0 {
		t.Errorf("dead letters after expired settlements: %s", deadIDs(ds))
	}
}

func testRenewLock(t *testing.T, q queues.Queue, o Options) {
	send(t, q, msg("renew"))
	m := receiveOne(t, q)
	received := time.Now()
	prev := m.LockedUntil
	for i := range 8 {
		time.Sleep(500 * time.Millisecond)
		until, err := q.RenewLock(t.Context(), m)
		if err != nil {
			t.Fatalf("RenewLock #%d: %v", i+1, err)
		}
		if until.Before(prev) || !until.After(time.Now()) {
			t.Fatalf("RenewLock #%d = %v, want after the previous expiry %v and after now", i+1, until, prev)
		}
		prev = until
		if i == 3 {
			expectNone(t, q, 300*time.Millisecond)
		}
	}
	if held := time.Since(received); held <= o.LockDuration {
		t.Fatalf("held the lock only %v, not past the lock duration %v; the test proves nothing", held, o.LockDuration)
	}
	mustComplete(t, q, m)
	expectNone(t, q, 500*time.Millisecond)
}

func testMaxDelivery(t *testing.T, q queues.Queue, o Options) {
	m := msg("poison")
	send(t, q, m)
	first := receiveOne(t, q)
	if err := q.Abandon(t.Context(), first, 0); err != nil {
		t.Fatalf("Abandon: %v", err)
	}
	second := receiveOne(t, q)
	if second.DeliveryCount != 2 {
		t.Fatalf("second delivery has DeliveryCount %d, want 2", second.DeliveryCount)
	}
	// The second lock lapses; a third delivery would exceed the maximum.
	// (LockedUntil, not o.LockDuration: a transport may round locks up.)
	expectNone(t, q, max(time.Until(second.LockedUntil), 0)+2*time.Second)
	ds := waitDeadLetters(t, q, 1)
	d := ds[0]
	if d.ID != m.ID || !bytes.Equal(d.Body, m.Body) {
		t.Errorf("dead letter %s body %q, want %s body %q", d.ID, d.Body, m.ID, m.Body)
	}
	if d.Reason != queues.ReasonMaxDeliveryCountExceeded {
		t.Errorf("Reason = %q, want %q", d.Reason, queues.ReasonMaxDeliveryCountExceeded)
	}
	if d.DeliveryCount != o.MaxDeliveryCount {
		t.Errorf("DeliveryCount = %d, want %d", d.DeliveryCount, o.MaxDeliveryCount)
	}
	waitDepth(t, q, queues.Depth{DeadLetter: 1})
}

func testDeadLetter(t *testing.T, q queues.Queue, o Options) {
	m := msg("dl")
	m.Properties["side"] = "fhir"
	send(t, q, m)
	r := receiveOne(t, q)
	const reason, desc = "mapping_error", "attribute map birthDate: cannot parse date"
	if err := q.DeadLetter(t.Context(), r, reason, desc); err != nil {
		t.Fatalf("DeadLetter: %v", err)
	}
	expectNone(t, q, 500*time.Millisecond)
	d := waitDeadLetters(t, q, 1)[0]
	if d.ID != m.ID || !bytes.Equal(d.Body, m.Body) {
		t.Errorf("dead letter %s body %q, want %s body %q", d.ID, d.Body, m.ID, m.Body)
	}
	propsInclude(t, d.Properties, m.Properties)
	if d.Reason != reason || d.Description != desc {
		t.Errorf("Reason, Description = %q, %q; want %q, %q", d.Reason, d.Description, reason, desc)
	}
	if d.DeliveryCount != 1 || d.RedriveCount != 0 {
		t.Errorf("DeliveryCount, RedriveCount = %d, %d; want 1, 0", d.DeliveryCount, d.RedriveCount)
	}
	if d.SequenceNumber <= 0 || d.EnqueuedAt.IsZero() {
		t.Errorf("SequenceNumber %d, EnqueuedAt %v: want both set", d.SequenceNumber, d.EnqueuedAt)
	}
	if err := q.Complete(t.Context(), r); err == nil {
		t.Error("Complete after DeadLetter succeeded")
	}
	waitDepth(t, q, queues.Depth{DeadLetter: 1})
}

func testPeekPaging(t *testing.T, q queues.Queue, o Options) {
	for i := range 5 {
		send(t, q, msg(fmt.Sprintf("p%d", i)))
	}
	got := receiveN(t, q, 5, 15*time.Second)
	slices.SortFunc(got, func(a, b *queues.Received) int { return int(a.SequenceNumber - b.SequenceNumber) })
	for _, m := range got {
		if err := q.DeadLetter(t.Context(), m, "paging", m.ID); err != nil {
			t.Fatalf("DeadLetter(%s): %v", m.ID, err)
		}
	}
	all := waitDeadLetters(t, q, 5)
	if again := peekAll(t, q); deadIDs(again) != deadIDs(all) {
		t.Fatalf("a second peek saw %s, the first %s: peeking must not consume", deadIDs(again), deadIDs(all))
	}
	var pages []string
	var paged []queues.DeadLetter
	after := int64(0)
	for range 5 {
		page, err := q.PeekDeadLetters(t.Context(), after, 2)
		if err != nil {
			t.Fatalf("PeekDeadLetters(after %d): %v", after, err)
		}
		if len(page) > 2 {
			t.Fatalf("PeekDeadLetters(max 2) returned %d", len(page))
		}
		pages = append(pages, deadIDs(page))
		if len(page) == 0 {
			break
		}
		for _, d := range page {
			if d.SequenceNumber <= after {
				t.Fatalf("page after %d holds sequence number %d", after, d.SequenceNumber)
			}
			after = d.SequenceNumber
		}
		paged = append(paged, page...)
	}
	want := "[p0 p1][p2 p3][p4][]"
	if strings.Join(pages, "") != want {
		t.Fatalf("pages = %s, want %s", strings.Join(pages, ""), want)
	}
	if deadIDs(paged) != deadIDs(all) {
		t.Fatalf("paging saw %s, one peek saw %s", deadIDs(paged), deadIDs(all))
	}
}

func testRedrive(t *testing.T, q queues.Queue, o Options) {
	const maxRedrives = 2
	sent := msg("rd")
	sent.Properties["keep"] = "me"
	send(t, q, sent, msg("rd-other"))
	for _, m := range receiveN(t, q, 2, 15*time.Second) {
		if err := q.DeadLetter(t.Context(), m, "target_rejected", "400 from target"); err != nil {
			t.Fatalf("DeadLetter: %v", err)
		}
	}
	ds := waitDeadLetters(t, q, 2)
	// Both at once, then rd alone until the guard holds it back.
	n, err := q.Redrive(t.Context(), []int64{ds[0].SequenceNumber, ds[1].SequenceNumber}, maxRedrives)
	if err != nil || n != 2 {
		t.Fatalf("Redrive of two = %d, %v; want 2, nil", n, err)
	}
	waitDeadLetters(t, q, 0)
	for round := 1; ; round++ {
		want := 1
		if round == 1 {
			want = 2 // rd-other comes back too
		}
		var target *queues.Received
		for _, m := range receiveN(t, q, want, 15*time.Second) {
			if m.ID == "rd-other" {
				mustComplete(t, q, m)
				continue
			}
			target = m
		}
		if target == nil || !bytes.Equal(target.Body, sent.Body) {
			t.Fatalf("round %d: the redriven message did not come back", round)
		}
		propsInclude(t, target.Properties, sent.Properties)
		if got := target.Properties[queues.PropRedriveCount]; got != strconv.Itoa(round) {
			t.Fatalf("round %d: %s = %q, want %q", round, queues.PropRedriveCount, got, strconv.Itoa(round))
		}
		if target.DeliveryCount != 1 {
			t.Errorf("round %d: redriven message has DeliveryCount %d, want 1", round, target.DeliveryCount)
		}
		if err := q.DeadLetter(t.Context(), target, "target_rejected", "still 400"); err != nil {
			t.Fatalf("DeadLetter: %v", err)
		}
		d := waitDeadLetters(t, q, 1)[0]
		if d.RedriveCount != round {
			t.Fatalf("round %d: dead letter RedriveCount = %d", round, d.RedriveCount)
		}
		n, err := q.Redrive(t.Context(), []int64{d.SequenceNumber}, maxRedrives)
		if round < maxRedrives {
			if err != nil || n != 1 {
				t.Fatalf("round %d: Redrive = %d, %v; want 1, nil", round, n, err)
			}
			continue
		}
		if !errors.Is(err, queues.ErrRedriveLimit) || n != 0 {
			t.Fatalf("Redrive past the limit = %d, %v; want 0, ErrRedriveLimit", n, err)
		}
		break
	}
	held := waitDeadLetters(t, q, 1)[0]
	if held.RedriveCount != maxRedrives || !bytes.Equal(held.Body, sent.Body) {
		t.Fatalf("held dead letter has RedriveCount %d body %q", held.RedriveCount, held.Body)
	}
	expectNone(t, q, 500*time.Millisecond)
}

func testDiscard(t *testing.T, q queues.Queue, o Options) {
	send(t, q, msg("dc-1"), msg("dc-2"), msg("dc-3"))
	for _, m := range receiveN(t, q, 3, 15*time.Second) {
		if err := q.DeadLetter(t.Context(), m, "target_rejected", "400 from target"); err != nil {
			t.Fatalf("DeadLetter: %v", err)
		}
	}
	ds := waitDeadLetters(t, q, 3)
	var keep queues.DeadLetter
	var drop []int64
	for _, d := range ds {
		if d.ID == "dc-2" {
			keep = d
			continue
		}
		drop = append(drop, d.SequenceNumber)
	}
	n, err := q.Discard(t.Context(), drop)
	if err != nil || n != 2 {
		t.Fatalf("Discard of two = %d, %v; want 2, nil", n, err)
	}
	left := waitDeadLetters(t, q, 1)
	if left[0].ID != "dc-2" {
		t.Fatalf("after discarding dc-1 and dc-3 the dead letters are %s", deadIDs(left))
	}
	// Discarding again, or a sequence number that never was, is reported;
	// the known one in the same call still goes.
	n, err = q.Discard(t.Context(), []int64{drop[0], keep.SequenceNumber})
	if !errors.Is(err, queues.ErrNotFound) || n != 1 {
		t.Fatalf("Discard of one gone and one present = %d, %v; want 1, ErrNotFound", n, err)
	}
	waitDeadLetters(t, q, 0)
	expectNone(t, q, 500*time.Millisecond)
}

func testDuplicateWithinWindow(t *testing.T, q queues.Queue, o Options) {
	send(t, q, msg("dup"), msg("dup"), msg("solo"))
	send(t, q, msg("dup"))
	got := receiveN(t, q, 2, 15*time.Second)
	for _, m := range got {
		mustComplete(t, q, m)
	}
	if ids := receivedIDs(got); ids != "[dup solo]" && ids != "[solo dup]" {
		t.Fatalf("received %s, want dup and solo once each", ids)
	}
	// Completed but still inside the window: a resend is dropped too.
	send(t, q, msg("dup"))
	expectNone(t, q, time.Second)
}

func testDuplicateWindowExpires(t *testing.T, q queues.Queue, o Options) {
	send(t, q, msg("again"))
	sent := time.Now() // the window started before Send returned
	mustComplete(t, q, receiveOne(t, q))
	time.Sleep(time.Until(sent.Add(o.DuplicateWindow + 1500*time.Millisecond)))
	send(t, q, msg("again"))
	m := receiveOne(t, q)
	if m.ID != "again" || m.DeliveryCount != 1 {
		t.Fatalf("resend after the window: got %s with DeliveryCount %d", m.ID, m.DeliveryCount)
	}
	mustComplete(t, q, m)
}

func testScheduled(t *testing.T, q queues.Queue, o Options) {
	m := msg("sched")
	m.VisibleAt = time.Now().Add(3 * time.Second)
	send(t, q, m)
	// Look for an early delivery while the message is surely not due; a
	// slow Send on a loaded machine shortens the look, never the deadline.
	if early := min(time.Second, time.Until(m.VisibleAt)-time.Second); early > 0 {
		expectNone(t, q, early)
	}
	r := receiveOne(t, q)
	if now := time.Now(); now.Before(m.VisibleAt.Add(-slack)) {
		t.Errorf("delivered %v before its VisibleAt", m.VisibleAt.Sub(now))
	}
	if r.ID != "sched" || r.DeliveryCount != 1 {
		t.Fatalf("got %s with DeliveryCount %d", r.ID, r.DeliveryCount)
	}
	mustComplete(t, q, r)
}

// testSessionOrder runs competing receivers over interleaved session keys
// and checks that a key never has two messages in flight and that each key's
// messages are completed in send order, including after an abandon.
func testSessionOrder(t *testing.T, q queues.Queue, o Options) {
	const keys, perKey, receivers = 4, 6, 3
	var sent []queues.Message
	for i := range perKey {
		for k := range keys {
			m := msg(fmt.Sprintf("k%d-%d", k, i))
			m.SessionKey = fmt.Sprintf("fhir:Patient/k%d", k)
			sent = append(sent, m)
		}
	}
	send(t, q, sent...)

	var (
		mu       sync.Mutex
		inFlight = map[string]string{} // session key -> message id
		next     = map[string]int{}    // session key -> next index to complete
		done     = 0
		problems []string
	)
	index := func(id string) int { n, _ := strconv.Atoi(id[strings.IndexByte(id, '-')+1:]); return n }
	fail := func(format string, args ...any) {
		problems = append(problems, fmt.Sprintf(format, args...))
	}
	deadline := time.Now().Add(40 * time.Second)
	var wg sync.WaitGroup
	for range receivers {
		wg.Go(func() {
			for time.Now().Before(deadline) {
				mu.Lock()
				finished := done == len(sent) || len(problems) > 0
				mu.Unlock()
				if finished {
					return
				}
				ms, err := q.Receive(t.Context(), 3, time.Second)
				if err != nil {
					mu.Lock()
					fail("Receive: %v", err)
					mu.Unlock()
					return
				}
				mu.Lock()
				for _, m := range ms {
					if other, busy := inFlight[m.SessionKey]; busy {
						fail("%s delivered while %s of the same key is in flight", m.ID, other)
					}
					inFlight[m.SessionKey] = m.ID
				}
				mu.Unlock()
				for _, m := range ms {
					time.Sleep(20 * time.Millisecond) // hold the lock while "working"
					mu.Lock()
					if got, want := index(m.ID), next[m.SessionKey]; got != want {
						fail("%s delivered when index %d of its key was due", m.ID, want)
					}
					delete(inFlight, m.SessionKey)
					abandon := index(m.ID)%3 == 1 && m.DeliveryCount == 1
					if !abandon {
						next[m.SessionKey]++
						done++
					}
					mu.Unlock()
					// The in-flight mark is cleared before settling: the
					// queue may hand the key's next message to another
					// receiver only once the settlement is committed.
					var err error
					if abandon {
						err = q.Abandon(t.Context(), m, 0)
					} else {
						err = q.Complete(t.Context(), m)
					}
					if err != nil {
						mu.Lock()
						fail("settling %s: %v", m.ID, err)
						mu.Unlock()
					}
				}
			}
		})
	}
	wg.Wait()
	for _, p := range problems {
		t.Error(p)
	}
	if done != len(sent) {
		t.Fatalf("completed %d of %d messages in time; per key next index: %v", done, len(sent), next)
	}
	expectNone(t, q, 500*time.Millisecond)
}

func testDepth(t *testing.T, q queues.Queue, o Options) {
	later := msg("later")
	later.VisibleAt = time.Now().Add(time.Hour)
	send(t, q, msg("d1"), msg("d2"), msg("d3"), later)
	waitDepth(t, q, queues.Depth{Active: 3, Scheduled: 1})
	ms := receiveN(t, q, 1, 15*time.Second)
	waitDepth(t, q, queues.Depth{Active: 3, Scheduled: 1}) // locked still counts as active
	if err := q.DeadLetter(t.Context(), ms[0], "depth", ""); err != nil {
		t.Fatalf("DeadLetter: %v", err)
	}
	waitDepth(t, q, queues.Depth{Active: 2, Scheduled: 1, DeadLetter: 1})
	mustComplete(t, q, receiveOne(t, q))
	waitDepth(t, q, queues.Depth{Active: 1, Scheduled: 1, DeadLetter: 1})
}

func testRoundTrip(t *testing.T, q queues.Queue, o Options) {
	n := queues.Notice{Side: queues.SideFHIR, Type: "Patient", ID: "pat-1", Version: "7",
		Event: queues.EventUpdated, Origin: "history-poll", ChangedAt: time.Date(2026, 1, 2, 3, 4, 5, 6000, time.UTC)}
	nm, err := n.Message()
	if err != nil {
		t.Fatal(err)
	}
	nm.Properties["empty"] = ""
	nm.Properties["unicode"] = "Zürich → 東京"
	big := queues.Message{ID: "big", Body: bytes.Repeat([]byte("x"), queues.MaxNoticeBytes), Properties: map[string]string{"size": "max"}}
	send(t, q, nm, big)
	got := receiveN(t, q, 2, 15*time.Second)
	for _, r := range got {
		want := nm
		if r.ID == big.ID {
			want = big
		}
		if r.ID != want.ID || r.SessionKey != want.SessionKey || !bytes.Equal(r.Body, want.Body) {
			t.Errorf("received ID %q SessionKey %q body of %d bytes; want %q %q %d bytes",
				r.ID, r.SessionKey, len(r.Body), want.ID, want.SessionKey, len(want.Body))
		}
		propsInclude(t, r.Properties, want.Properties)
		if r.ID == nm.ID {
			back, err := queues.DecodeNotice(r.Body)
			if err != nil || back.Ref() != n.Ref() || back.Version != n.Version || !back.ChangedAt.Equal(n.ChangedAt) {
				t.Errorf("decoded notice %+v, %v; want %+v", back, err, n)
			}
		}
		mustComplete(t, q, r)
	}
}

func testTooLarge(t *testing.T, q queues.Queue, o Options) {
	big := queues.Message{ID: "huge", Body: bytes.Repeat([]byte("x"), 1<<20+1)}
	if err := q.Send(t.Context(), big); !errors.Is(err, queues.ErrTooLarge) {
		t.Fatalf("Send of %d bytes: err = %v, want ErrTooLarge", len(big.Body), err)
	}
	expectNone(t, q, 500*time.Millisecond)
}

func testClose(t *testing.T, q queues.Queue, o Options) {
	type result struct {
		n   int
		err error
	}
	waiting := make(chan result, 1)
	go func() {
		ms, err := q.Receive(context.Background(), 1, 30*time.Second)
		waiting <- result{len(ms), err}
	}()
	time.Sleep(300 * time.Millisecond)
	if err := q.Close(t.Context()); err != nil {
		t.Fatalf("Close: %v", err)
	}
	select {
	case r := <-waiting:
		if r.n != 0 || (r.err != nil && !errors.Is(r.err, queues.ErrClosed)) {
			t.Errorf("Receive interrupted by Close = %d messages, %v; want none and nil or ErrClosed", r.n, r.err)
		}
	case <-time.After(20 * time.Second):
		t.Fatal("a waiting Receive did not return after Close")
	}
	if err := q.Send(t.Context(), msg("x")); !errors.Is(err, queues.ErrClosed) {
		t.Errorf("Send after Close: err = %v, want ErrClosed", err)
	}
	if _, err := q.Receive(t.Context(), 1, 100*time.Millisecond); !errors.Is(err, queues.ErrClosed) {
		t.Errorf("Receive after Close: err = %v, want ErrClosed", err)
	}
}
