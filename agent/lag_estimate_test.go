package agent

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/fhirsync/fhirsync/agent/alerts"
	"github.com/fhirsync/fhirsync/logs"
	"github.com/fhirsync/fhirsync/queues"
	"github.com/fhirsync/fhirsync/queues/servicebus"
	"github.com/fhirsync/fhirsync/queues/servicebus/sbtest"
)

// TestLagEstimator checks the estimate against a clock: the oldest age
// received in the last window plus the time since, nothing while the queue
// is empty, a feed without a recent receipt left out while the queue
// receives, the whole estimate growing once nothing is received, and a
// queue whose depth cannot be read reported without hiding the other.
func TestLagEstimator(t *testing.T) {
	t.Parallel()
	t0 := time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)
	const window = time.Minute
	depths := map[string]queues.Depth{}
	var depthErr error
	qs := []lagQueue{
		{name: "sb-fhir", side: queues.SideFHIR, depth: func(context.Context) (queues.Depth, error) { return depths["sb-fhir"], nil }},
		{name: "sb-crm", side: queues.SideCRM, depth: func(context.Context) (queues.Depth, error) { return depths["sb-crm"], depthErr }},
	}
	var e lagEstimator
	est := func(now time.Time) map[string]alerts.FeedLag {
		t.Helper()
		rows, err := e.estimate(context.Background(), now, window, qs)
		if err != nil {
			t.Fatal(err)
		}
		out := map[string]alerts.FeedLag{}
		for _, r := range rows {
			if !r.Estimated {
				t.Errorf("row %+v not marked estimated", r)
			}
			out[r.Queue+" "+r.Feed] = r
		}
		return out
	}
	age := func(rows map[string]alerts.FeedLag, key string) time.Duration {
		t.Helper()
		r, ok := rows[key]
		if !ok {
			t.Fatalf("no row %q in %v", key, rows)
		}
		return time.Duration(r.AgeSeconds) * time.Second
	}
	if _, err := e.estimate(context.Background(), t0, window, qs); err != nil {
		t.Fatal(err)
	}

	// Patients received 5 and 3 minutes after they changed; an
	// observation without ChangedAt, 20 s after it was queued.
	e.observe(queues.SideFHIR, "history-poll", "Patient", t0.Add(-5*time.Minute), t0.Add(-time.Minute), t0)
	e.observe(queues.SideFHIR, "history-poll", "Patient", t0.Add(-2*time.Minute), t0.Add(-time.Minute), t0.Add(time.Second))
	e.observe(queues.SideFHIR, "rest-hook", "Observation", time.Time{}, t0.Add(-10*time.Second), t0.Add(10*time.Second))
	e.observe(queues.SideCRM, "crm-tracking", "contact", t0.Add(-time.Second), time.Time{}, t0)

	// Nothing waits: no rows.
	if rows := est(t0.Add(20 * time.Second)); len(rows) != 0 {
		t.Fatalf("rows with empty queues: %v", rows)
	}
	// Messages wait in sb-fhir: the oldest age plus the time since its
	// receipt; the same for the observation; sb-crm stays empty.
	depths["sb-fhir"] = queues.Depth{Active: 7, Scheduled: 1}
	rows := est(t0.Add(20 * time.Second))
	if len(rows) != 2 {
		t.Fatalf("rows = %v, want the two feeds of sb-fhir", rows)
	}
	if got := age(rows, "sb-fhir history-poll/Patient"); got != 5*time.Minute+20*time.Second {
		t.Errorf("Patient lag = %v, want 5m20s", got)
	}
	if r := rows["sb-fhir history-poll/Patient"]; r.Pending != 8 || !r.Oldest.Equal(t0.Add(-5*time.Minute)) {
		t.Errorf("Patient row = %+v, want 8 waiting, oldest at the change", r)
	}
	if got := age(rows, "sb-fhir rest-hook/Observation"); got != 30*time.Second {
		t.Errorf("Observation lag (from the enqueue time) = %v, want 30s", got)
	}

	// Two windows on, patients still arrive (now a minute old) and the
	// observations stopped: the patients' lag is the recent one; the
	// observation feed is taken as caught up.
	t1 := t0.Add(2*window + 5*time.Second)
	e.observe(queues.SideFHIR, "history-poll", "Patient", t1.Add(-time.Minute), time.Time{}, t1)
	rows = est(t1.Add(5 * time.Second))
	if len(rows) != 1 {
		t.Fatalf("rows = %v, want only the Patient feed", rows)
	}
	if got := age(rows, "sb-fhir history-poll/Patient"); got != time.Minute+5*time.Second {
		t.Errorf("Patient lag after the window moved = %v, want 1m5s", got)
	}

	// The agent stops receiving with messages waiting: every feed's
	// estimate grows with the time since its last receipt.
	t2 := t1.Add(10 * time.Minute)
	rows = est(t2)
	if got := age(rows, "sb-fhir history-poll/Patient"); got != 11*time.Minute {
		t.Errorf("Patient lag of a stopped agent = %v, want 11m", got)
	}
	if got := age(rows, "sb-fhir rest-hook/Observation"); got != t2.Sub(t0.Add(-10*time.Second)) {
		t.Errorf("Observation lag of a stopped agent = %v, want %v", got, t2.Sub(t0.Add(-10*time.Second)))
	}

	// The CRM queue's depth cannot be read: its error, and the FHIR
	// queue's rows.
	depthErr = errors.New("admin API unavailable")
	got, err := e.estimate(context.Background(), t2, window, qs)
	if err == nil || len(got) != 2 {
		t.Errorf("estimate with a failing depth = %v, %v; want the error and sb-fhir's two rows", got, err)
	}
}

// TestEstimatedLagsOverFakeServiceBus runs the estimate over the real
// azservicebus client and the fake Service Bus (session-enabled queues,
// whose waiting messages cannot be listed by feed; its Depth counts them by
// peeking, as on an emulator — a real namespace's Depth uses the
// administration API, which the fake does not serve). A received
// notice goes through the pipeline's receive hook; while the others wait
// the feed shows the change's age; once all are settled, no row.
func TestEstimatedLagsOverFakeServiceBus(t *testing.T) {
	t.Parallel()
	sb := sbtest.Start(t, sbtest.QueueConfig{Name: "sb-fhir", Sessions: true, LockDuration: 30 * time.Second, MaxDeliveryCount: 20})
	q, err := servicebus.New(servicebus.Config{ConnectionString: sb.ConnectionString(), Sessions: true}, "sb-fhir")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = q.Close(context.Background()) })
	ctx := t.Context()
	changed := time.Now().Add(-10 * time.Minute)
	for _, id := range []string{"p1", "p2", "p3"} {
		m, err := queues.Notice{V: queues.NoticeVersion, Side: queues.SideFHIR, Type: "Patient", ID: id,
			Event: queues.EventUpdated, Origin: "history-poll", Version: "1", ChangedAt: changed}.Message()
		if err != nil {
			t.Fatal(err)
		}
		if err := q.Send(ctx, m); err != nil {
			t.Fatal(err)
		}
	}
	a := &Agent{deps: Deps{FHIRChanges: q}, pipe: &pipeline{now: time.Now}}
	names := map[queues.Side]string{queues.SideFHIR: "sb-fhir"}

	// Nothing received yet: nothing to estimate from.
	if rows, err := a.EstimatedLags(ctx, time.Now(), time.Minute, names); err != nil || len(rows) != 0 {
		t.Fatalf("before any receive: %v, %v; want no rows", rows, err)
	}
	got, err := q.Receive(ctx, 1, 10*time.Second)
	if err != nil || len(got) != 1 {
		t.Fatalf("receive: %d messages, %v", len(got), err)
	}
	// The pipeline without flows records the receipt, then refuses the
	// notice (no flow for the side); the message is put back.
	if st := a.pipe.run(ctx, got[0], &unit{d: &logs.Decision{}}); st == nil || st.reason != "invalid_message" {
		t.Fatalf("pipeline step = %+v, want invalid_message (no flows)", st)
	}
	if err := q.Abandon(ctx, got[0], 0); err != nil {
		t.Fatal(err)
	}
	rows, err := a.EstimatedLags(ctx, time.Now(), time.Minute, names)
	if err != nil {
		t.Fatal(err)
	}
	if len(rows) != 1 || rows[0].Feed != "history-poll/Patient" || rows[0].Queue != "sb-fhir" || rows[0].Pending != 3 ||
		rows[0].AgeSeconds < 600 || rows[0].AgeSeconds > 660 || !rows[0].Estimated {
		t.Fatalf("rows = %+v; want history-poll/Patient in sb-fhir, 3 waiting, about 600 s", rows)
	}

	// All processed: the queue is empty and the feed has no lag.
	for done := 0; done < 3; {
		got, err := q.Receive(ctx, 3, 10*time.Second)
		if err != nil {
			t.Fatal(err)
		}
		for _, m := range got {
			if err := q.Complete(ctx, m); err != nil {
				t.Fatal(err)
			}
			done++
		}
	}
	if rows, err := a.EstimatedLags(ctx, time.Now(), time.Minute, names); err != nil || len(rows) != 0 {
		t.Fatalf("after the queue emptied: %v, %v; want no rows", rows, err)
	}
}

// BenchmarkLagObserve is the receive hook's cost per message (no
// allocation once the feed is known), from parallel workers.
func BenchmarkLagObserve(b *testing.B) {
	var e lagEstimator
	changed := time.Now().Add(-time.Minute)
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			e.observe(queues.SideFHIR, "history-poll", "Patient", changed, time.Time{}, time.Now())
		}
	})
}
