package agent

import (
	"context"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"gorm.io/gorm"

	"github.com/fhirsync/fhirsync/queues"
	"github.com/fhirsync/fhirsync/queues/embedded"
	"github.com/fhirsync/fhirsync/storage/storagetest"
)

func sendN(t *testing.T, q queues.Queue, n int, prefix string) {
	t.Helper()
	var msgs []queues.Message
	for i := range n {
		msgs = append(msgs, queues.Message{ID: fmt.Sprintf("%s-%d", prefix, i), Body: []byte("{}")})
	}
	if err := q.Send(context.Background(), msgs...); err != nil {
		t.Fatal(err)
	}
}

func waitUntil(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(60 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func TestPoolSettlesEachMessageOnce(t *testing.T) {
	t.Parallel()
	storagetest.Each(t, func(t *testing.T, db *gorm.DB) {
		q, err := embedded.New(db, "pool-once", embedded.Options{LockDuration: 30 * time.Second})
		if err != nil {
			t.Fatal(err)
		}
		const n = 200
		sendN(t, q, n, "m")
		var mu sync.Mutex
		seen := map[string]int{}
		abandoned := map[string]bool{}
		p := &pool{name: "t", q: q, workers: 4, batch: 16, drain: 10 * time.Second, log: slog.New(slog.DiscardHandler),
			handle: func(ctx context.Context, m *queues.Received) settlement {
				mu.Lock()
				defer mu.Unlock()
				// Every tenth message is abandoned once, then completed.
				if len(m.ID) > 0 && m.ID[len(m.ID)-1] == '7' && !abandoned[m.ID] {
					abandoned[m.ID] = true
					return settlement{kind: settleAbandon}
				}
				seen[m.ID]++
				return settlement{kind: settleComplete}
			}}
		ctx, cancel := context.WithCancel(context.Background())
		done := make(chan error, 1)
		go func() { done <- p.run(ctx) }()
		waitUntil(t, "all messages completed", func() bool {
			mu.Lock()
			defer mu.Unlock()
			return len(seen) == n
		})
		cancel()
		if err := <-done; err != nil {
			t.Fatal(err)
		}
		for id, c := range seen {
			if c != 1 {
				t.Errorf("%s completed %d times", id, c)
			}
		}
		d, err := q.Depth(context.Background())
		if err != nil || d.Active != 0 || d.DeadLetter != 0 {
			t.Fatalf("depth after run = %+v, %v; want empty", d, err)
		}
	})
}

func TestPoolDeadLettersAndSurvivesPanics(t *testing.T) {
	t.Parallel()
	storagetest.Each(t, func(t *testing.T, db *gorm.DB) {
		q, err := embedded.New(db, "pool-dl", embedded.Options{})
		if err != nil {
			t.Fatal(err)
		}
		sendN(t, q, 3, "x")
		var handled atomic.Int32
		p := &pool{name: "t", q: q, workers: 2, drain: 5 * time.Second, log: slog.New(slog.DiscardHandler),
			handle: func(ctx context.Context, m *queues.Received) settlement {
				handled.Add(1)
				switch m.ID {
				case "x-0":
					panic("boom")
				case "x-1":
					return settlement{kind: settleDeadLetter, reason: "mapping_error", description: "attribute map birthdate"}
				}
				return settlement{kind: settleComplete}
			}}
		ctx, cancel := context.WithCancel(context.Background())
		done := make(chan error, 1)
		go func() { done <- p.run(ctx) }()
		waitUntil(t, "two dead letters", func() bool {
			d, _ := q.Depth(context.Background())
			return d.DeadLetter == 2 && d.Active == 0
		})
		cancel()
		<-done
		dls, err := q.PeekDeadLetters(context.Background(), 0, 10)
		if err != nil {
			t.Fatal(err)
		}
		reasons := map[string]string{}
		for _, dl := range dls {
			reasons[dl.ID] = dl.Reason
		}
		if reasons["x-1"] != "mapping_error" || reasons["x-0"] == "" {
			t.Fatalf("dead letters = %v", reasons)
		}
	})
}

func TestPoolDrainIsBounded(t *testing.T) {
	t.Parallel()
	db := storagetest.Open(t, "sqlite")
	q, err := embedded.New(db, "pool-drain", embedded.Options{LockDuration: time.Minute})
	if err != nil {
		t.Fatal(err)
	}
	sendN(t, q, 2, "slow")
	started := make(chan struct{}, 2)
	p := &pool{name: "t", q: q, workers: 2, drain: 300 * time.Millisecond, log: slog.New(slog.DiscardHandler),
		handle: func(ctx context.Context, m *queues.Received) settlement {
			started <- struct{}{}
			if m.ID == "slow-0" {
				return settlement{kind: settleComplete} // finishes within the drain
			}
			<-ctx.Done() // never finishes on its own
			return settlement{kind: settleAbandon, delay: time.Hour}
		}}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- p.run(ctx) }()
	<-started
	<-started
	begin := time.Now()
	cancel()
	select {
	case <-done:
	case <-time.After(30 * time.Second):
		t.Fatal("pool did not stop after its drain period")
	}
	if el := time.Since(begin); el < 250*time.Millisecond {
		t.Errorf("stopped after %v, before the drain period", el)
	}
	// The interrupted message is available again at once, not in an hour.
	got, err := q.Receive(context.Background(), 10, 5*time.Second)
	if err != nil || len(got) != 1 || got[0].ID != "slow-1" {
		t.Fatalf("after drain: %d messages, %v; want slow-1 back", len(got), err)
	}
}
