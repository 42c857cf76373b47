package alerts

import (
	"context"
	"errors"
	"sync"
	"testing"
	"time"

	"github.com/fhirsync/fhirsync/logs"
	"github.com/fhirsync/fhirsync/queues"
	"github.com/fhirsync/fhirsync/queues/embedded"
	"github.com/fhirsync/fhirsync/storage/storagetest"
)

// TestLagRuleFiresOnEstimatedLags: with a queue that is not in the
// embedded table (Service Bus), the estimated rows are the signals: the
// lag rule fires on them and resolves when they are gone, the gauge hook
// gets them, an estimator error leaves the other readings standing, and a
// queue the table has rows of keeps its exact reading.
func TestLagRuleFiresOnEstimatedLags(t *testing.T) {
	db := storagetest.Open(t, "sqlite")
	ctx := context.Background()
	now := time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)
	store, err := logs.New(db, logs.Config{}, nil)
	if err != nil {
		t.Fatal(err)
	}
	var mu sync.Mutex
	var est []FeedLag
	var estErr error
	var gotEvery time.Duration
	gauge := map[string]time.Duration{}
	svc, err := New(Config{Every: 45 * time.Second, Now: func() time.Time { return now },
		Rules: []Rule{{Name: "lag", Kind: KindLag, Threshold: 600}}},
		Deps{DB: db, Logs: store,
			EstimateLags: func(_ context.Context, _ time.Time, every time.Duration) ([]FeedLag, error) {
				mu.Lock()
				defer mu.Unlock()
				gotEvery = every
				return est, estErr
			},
			OnLag: func(m map[string]time.Duration) {
				mu.Lock()
				defer mu.Unlock()
				clear(gauge)
				for k, v := range m {
					gauge[k] = v
				}
			}})
	if err != nil {
		t.Fatal(err)
	}
	set := func(rows []FeedLag, err error) {
		mu.Lock()
		defer mu.Unlock()
		est, estErr = rows, err
	}
	firing := func() bool {
		t.Helper()
		if err := svc.Evaluate(ctx); err != nil {
			t.Fatal(err)
		}
		f, err := svc.Firing(ctx)
		if err != nil {
			t.Fatal(err)
		}
		_, ok := f["lag"]
		return ok
	}

	set([]FeedLag{{Feed: "history-poll/Patient", Queue: "sb-fhir", Pending: 40, Oldest: now.Add(-15 * time.Minute), AgeSeconds: 900, Estimated: true}}, nil)
	if !firing() {
		t.Fatal("the lag rule did not fire on an estimated lag of 15 minutes (threshold 10)")
	}
	mu.Lock()
	if gauge["history-poll/Patient"] != 15*time.Minute || gotEvery != 45*time.Second {
		t.Errorf("gauge = %v, estimator asked with interval %v; want 15m and 45s", gauge, gotEvery)
	}
	mu.Unlock()
	sig, err := svc.Signals(ctx, now)
	if err != nil || len(sig.Lags) != 1 || !sig.Lags[0].Estimated || sig.Lags[0].Queue != "sb-fhir" {
		t.Fatalf("signals = %+v, %v; want the estimated row", sig.Lags, err)
	}

	// The estimator fails for a queue: the readings stand, with the rows
	// it has.
	set(nil, errors.New("reading the depth of sb-crm: unavailable"))
	if firing() {
		t.Error("still firing with no estimated row")
	}

	// A queue in the embedded table keeps its exact reading; another
	// queue's estimate joins it.
	q, err := embedded.New(db, "fhir-changes", embedded.Options{})
	if err != nil {
		t.Fatal(err)
	}
	msg, err := queues.Notice{V: queues.NoticeVersion, Side: queues.SideFHIR, Type: "Patient", ID: "p1",
		Event: queues.EventUpdated, Origin: "history-poll", Version: "1", ChangedAt: now.Add(-2 * time.Minute)}.Message()
	if err != nil {
		t.Fatal(err)
	}
	if err := q.Send(ctx, msg); err != nil {
		t.Fatal(err)
	}
	set([]FeedLag{
		{Feed: "history-poll/Patient", Queue: "fhir-changes", Pending: 1, AgeSeconds: 3600, Estimated: true},
		{Feed: "crm-tracking/contact", Queue: "sb-crm", Pending: 2, AgeSeconds: 30, Estimated: true},
	}, nil)
	sig, err = svc.Signals(ctx, now)
	if err != nil {
		t.Fatal(err)
	}
	if len(sig.Lags) != 2 || sig.Lags[0].Feed != "crm-tracking/contact" || !sig.Lags[0].Estimated ||
		sig.Lags[1].Queue != "fhir-changes" || sig.Lags[1].Estimated || sig.Lags[1].AgeSeconds != 120 {
		t.Errorf("signals = %+v; want the estimate of sb-crm and the table's reading of fhir-changes (120 s)", sig.Lags)
	}
}
