package embedded_test

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"gorm.io/gorm"

	"github.com/fhirsync/fhirsync/queues"
	"github.com/fhirsync/fhirsync/queues/embedded"
	"github.com/fhirsync/fhirsync/storage/storagetest"
)

func open(t *testing.T, db *gorm.DB, name string, o embedded.Options) *embedded.Queue {
	t.Helper()
	q, err := embedded.New(db, name, o)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = q.Close(context.Background()) })
	return q
}

func keyed(id, key string) queues.Message {
	return queues.Message{ID: id, SessionKey: key, Body: []byte(id)}
}

func ids(ms []*queues.Received) string {
	s := make([]string, len(ms))
	for i, m := range ms {
		s[i] = m.ID
	}
	slices.Sort(s)
	return strings.Join(s, ",")
}

func TestNewValidatesName(t *testing.T) {
	t.Parallel()
	storagetest.Each(t, func(t *testing.T, db *gorm.DB) {
		tests := []struct {
			name    string
			queue   string
			wantErr bool
		}{
			{name: "ordinary", queue: "fhir-changes"},
			{name: "empty", queue: "", wantErr: true},
			{name: "too long", queue: strings.Repeat("q", 261), wantErr: true},
		}
		for _, tt := range tests {
			t.Run(tt.name, func(t *testing.T) {
				_, err := embedded.New(db, tt.queue, embedded.Options{})
				if (err != nil) != tt.wantErr {
					t.Fatalf("New(%q) err = %v, wantErr %v", tt.queue, err, tt.wantErr)
				}
			})
		}
	})
}

func TestListQueues(t *testing.T) {
	t.Parallel()
	storagetest.Each(t, func(t *testing.T, db *gorm.DB) {
		open(t, db, "fhir-changes", embedded.Options{})
		open(t, db, "crm-changes", embedded.Options{})
		open(t, db, "fhir-changes", embedded.Options{}) // reopening is fine
		got, err := embedded.ListQueues(context.Background(), db)
		if err != nil {
			t.Fatal(err)
		}
		if strings.Join(got, ",") != "crm-changes,fhir-changes" {
			t.Fatalf("ListQueues = %v", got)
		}
	})
}

func TestQueuesOnOneDatabaseAreSeparate(t *testing.T) {
	t.Parallel()
	storagetest.Each(t, func(t *testing.T, db *gorm.DB) {
		ctx := context.Background()
		a := open(t, db, "a", embedded.Options{})
		b := open(t, db, "b", embedded.Options{})
		if err := a.Send(ctx, keyed("m1", "")); err != nil {
			t.Fatal(err)
		}
		// The same ID on another queue is not a duplicate.
		if err := b.Send(ctx, keyed("m1", "")); err != nil {
			t.Fatal(err)
		}
		for _, q := range []*embedded.Queue{a, b} {
			ms, err := q.Receive(ctx, 10, time.Second)
			if err != nil || len(ms) != 1 {
				t.Fatalf("%s: Receive = %d messages, %v; want 1", q.Name(), len(ms), err)
			}
			if err := b.Complete(ctx, ms[0]); (q == b) != (err == nil) {
				t.Fatalf("completing %s's message through queue b: err = %v", q.Name(), err)
			}
		}
	})
}

func TestBatchTakesOneMessagePerKey(t *testing.T) {
	t.Parallel()
	storagetest.Each(t, func(t *testing.T, db *gorm.DB) {
		ctx := context.Background()
		q := open(t, db, "batch", embedded.Options{})
		err := q.Send(ctx, keyed("k-1", "k"), keyed("k-2", "k"), keyed("x-1", "x"), keyed("free", ""))
		if err != nil {
			t.Fatal(err)
		}
		ms, err := q.Receive(ctx, 10, time.Second)
		if err != nil {
			t.Fatal(err)
		}
		if got := ids(ms); got != "free,k-1,x-1" {
			t.Fatalf("first batch = %s, want free,k-1,x-1", got)
		}
		if err := q.CompleteMany(ctx, ms); err != nil {
			t.Fatal(err)
		}
		ms, err = q.Receive(ctx, 10, time.Second)
		if err != nil || ids(ms) != "k-2" {
			t.Fatalf("second batch = %s, %v; want k-2", ids(ms), err)
		}
	})
}

// A key's oldest message holds back the rest of the key even while it is
// scheduled for later (stricter than Service Bus; see the package doc).
func TestScheduledHeadHoldsItsKey(t *testing.T) {
	t.Parallel()
	storagetest.Each(t, func(t *testing.T, db *gorm.DB) {
		ctx := context.Background()
		q := open(t, db, "sched-head", embedded.Options{})
		first := keyed("k-1", "k")
		first.VisibleAt = time.Now().Add(2 * time.Second)
		if err := q.Send(ctx, first, keyed("k-2", "k"), keyed("x-1", "x")); err != nil {
			t.Fatal(err)
		}
		ms, err := q.Receive(ctx, 10, 500*time.Millisecond)
		if err != nil || ids(ms) != "x-1" {
			t.Fatalf("before k-1 is due got %s, %v; want x-1 only", ids(ms), err)
		}
		var order []string
		deadline := time.Now().Add(15 * time.Second)
		for len(order) < 2 && time.Now().Before(deadline) {
			ms, err := q.Receive(ctx, 10, time.Second)
			if err != nil {
				t.Fatal(err)
			}
			for _, m := range ms {
				order = append(order, m.ID)
				if err := q.Complete(ctx, m); err != nil {
					t.Fatal(err)
				}
			}
		}
		if strings.Join(order, ",") != "k-1,k-2" {
			t.Fatalf("key k delivered as %v, want k-1 then k-2", order)
		}
	})
}

func TestCompleteManyReportsLostLocks(t *testing.T) {
	t.Parallel()
	storagetest.Each(t, func(t *testing.T, db *gorm.DB) {
		ctx := context.Background()
		q := open(t, db, "many", embedded.Options{})
		var msgs []queues.Message
		for i := range 5 {
			msgs = append(msgs, keyed(fmt.Sprintf("m%d", i), ""))
		}
		if err := q.Send(ctx, msgs...); err != nil {
			t.Fatal(err)
		}
		ms, err := q.Receive(ctx, 5, time.Second)
		if err != nil || len(ms) != 5 {
			t.Fatalf("Receive = %d, %v", len(ms), err)
		}
		lost := ms[2]
		if err := q.Abandon(ctx, lost, time.Hour); err != nil {
			t.Fatal(err)
		}
		err = q.CompleteMany(ctx, ms)
		if !errors.Is(err, queues.ErrLockLost) || !strings.Contains(err.Error(), fmt.Sprint(lost.SequenceNumber)) {
			t.Fatalf("CompleteMany with one lost lock: err = %v, want ErrLockLost naming %d", err, lost.SequenceNumber)
		}
		d, err := q.Depth(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if d != (queues.Depth{Scheduled: 1}) {
			t.Fatalf("Depth = %+v, want only the abandoned message (scheduled)", d)
		}
	})
}

func TestCompleteTxFollowsTheCallersTransaction(t *testing.T) {
	t.Parallel()
	storagetest.Each(t, func(t *testing.T, db *gorm.DB) {
		ctx := context.Background()
		if err := db.Exec(`CREATE TABLE done_work (id TEXT NOT NULL)`).Error; err != nil {
			t.Fatal(err)
		}
		q := open(t, db, "tx", embedded.Options{})
		if err := q.Send(ctx, keyed("w1", "")); err != nil {
			t.Fatal(err)
		}
		ms, err := q.Receive(ctx, 1, time.Second)
		if err != nil || len(ms) != 1 {
			t.Fatalf("Receive = %d, %v", len(ms), err)
		}
		m := ms[0]
		errRollback := errors.New("work failed")
		err = db.Transaction(func(tx *gorm.DB) error {
			if err := tx.Exec(`INSERT INTO done_work (id) VALUES (?)`, m.ID).Error; err != nil {
				return err
			}
			if err := q.CompleteTx(tx, m); err != nil {
				return err
			}
			return errRollback
		})
		if !errors.Is(err, errRollback) {
			t.Fatalf("transaction err = %v", err)
		}
		if d, _ := q.Depth(ctx); d.Active != 1 {
			t.Fatalf("after rollback Depth = %+v, want the message still there", d)
		}
		err = db.Transaction(func(tx *gorm.DB) error {
			if err := tx.Exec(`INSERT INTO done_work (id) VALUES (?)`, m.ID).Error; err != nil {
				return err
			}
			return q.CompleteTx(tx, m)
		})
		if err != nil {
			t.Fatalf("committing work and completion: %v", err)
		}
		var n int64
		db.Raw(`SELECT COUNT(*) FROM done_work`).Scan(&n)
		if d, _ := q.Depth(ctx); d.Active != 0 || n != 1 {
			t.Fatalf("after commit Depth = %+v and %d work rows, want 0 and 1", d, n)
		}
		if err := db.Transaction(func(tx *gorm.DB) error { return q.CompleteTx(tx, m) }); !errors.Is(err, queues.ErrLockLost) {
			t.Fatalf("CompleteTx of a completed message: err = %v, want ErrLockLost", err)
		}
	})
}

func TestRedriveUnknownSequenceNumber(t *testing.T) {
	t.Parallel()
	storagetest.Each(t, func(t *testing.T, db *gorm.DB) {
		q := open(t, db, "redrive", embedded.Options{})
		n, err := q.Redrive(context.Background(), []int64{424242}, 3)
		if n != 0 || !errors.Is(err, queues.ErrNotFound) {
			t.Fatalf("Redrive of an unknown sequence number = %d, %v; want 0, ErrNotFound", n, err)
		}
	})
}

// Separate Queue values stand in for separate processes competing for one
// queue: every message is delivered once.
func TestCompetingQueueValuesShareWork(t *testing.T) {
	t.Parallel()
	storagetest.Each(t, func(t *testing.T, db *gorm.DB) {
		ctx := context.Background()
		const n, workers = 400, 4
		sender := open(t, db, "shared", embedded.Options{})
		var msgs []queues.Message
		for i := range n {
			key := ""
			if i%2 == 0 {
				key = fmt.Sprintf("key-%d", i%10)
			}
			msgs = append(msgs, keyed(fmt.Sprintf("m%03d", i), key))
		}
		if err := sender.Send(ctx, msgs...); err != nil {
			t.Fatal(err)
		}
		var mu sync.Mutex
		seen := map[string]int{}
		var wg sync.WaitGroup
		for w := range workers {
			q := open(t, db, "shared", embedded.Options{PollInterval: 20 * time.Millisecond})
			wg.Go(func() {
				for {
					ms, err := q.Receive(ctx, 1+w*7, 500*time.Millisecond)
					if err != nil {
						t.Errorf("worker %d: Receive: %v", w, err)
						return
					}
					if len(ms) == 0 {
						return
					}
					mu.Lock()
					for _, m := range ms {
						seen[m.ID]++
					}
					mu.Unlock()
					if err := q.CompleteMany(ctx, ms); err != nil {
						t.Errorf("worker %d: CompleteMany: %v", w, err)
						return
					}
				}
			})
		}
		wg.Wait()
		if len(seen) != n {
			t.Fatalf("%d distinct messages delivered, want %d", len(seen), n)
		}
		for id, c := range seen {
			if c != 1 {
				t.Errorf("%s delivered %d times", id, c)
			}
		}
	})
}

// Senders racing with the same IDs (in different orders) enqueue each ID
// once and do not deadlock.
func TestConcurrentDuplicateSends(t *testing.T) {
	t.Parallel()
	storagetest.Each(t, func(t *testing.T, db *gorm.DB) {
		ctx := context.Background()
		const n, senders = 50, 4
		var wg sync.WaitGroup
		for s := range senders {
			q := open(t, db, "dups", embedded.Options{})
			wg.Go(func() {
				msgs := make([]queues.Message, n)
				for i := range n {
					j := i
					if s%2 == 1 {
						j = n - 1 - i
					}
					msgs[i] = keyed(fmt.Sprintf("id%02d", j), "")
				}
				if err := q.Send(ctx, msgs...); err != nil {
					t.Errorf("sender %d: %v", s, err)
				}
			})
		}
		wg.Wait()
		q := open(t, db, "dups", embedded.Options{})
		d, err := q.Depth(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if d.Active != n {
			t.Fatalf("Depth.Active = %d after %d senders sent the same %d IDs, want %d", d.Active, senders, n, n)
		}
	})
}

// Sends on one queue value racing with each other are written in groups:
// each ID is enqueued once whichever Send of a group carries it first, and
// each sender's messages keep their order.
func TestGroupedSendsDropDuplicatesAndKeepOrder(t *testing.T) {
	t.Parallel()
	storagetest.Each(t, func(t *testing.T, db *gorm.DB) {
		ctx := context.Background()
		q := open(t, db, "grouped", embedded.Options{})
		const senders, per = 8, 40
		var wg sync.WaitGroup
		for s := range senders {
			wg.Go(func() {
				for i := range per {
					// Every sender also sends the shared IDs; only one copy
					// of each may be enqueued.
					msgs := []queues.Message{keyed(fmt.Sprintf("s%d-%02d", s, i), fmt.Sprint("s", s))}
					if i%4 == 0 {
						msgs = append(msgs, keyed(fmt.Sprintf("shared-%02d", i), ""))
					}
					if err := q.Send(ctx, msgs...); err != nil {
						t.Errorf("sender %d: %v", s, err)
						return
					}
				}
			})
		}
		wg.Wait()
		d, err := q.Depth(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if want := int64(senders*per + per/4); d.Active != want {
			t.Fatalf("Depth.Active = %d, want %d", d.Active, want)
		}
		next := map[string]int{}
		got := 0
		for got < senders*per+per/4 {
			ms, err := q.Receive(ctx, 100, time.Second)
			if err != nil {
				t.Fatal(err)
			}
			if len(ms) == 0 {
				t.Fatalf("queue ran dry after %d messages", got)
			}
			for _, m := range ms {
				got++
				if m.SessionKey == "" {
					continue
				}
				var s, i int
				if _, err := fmt.Sscanf(m.ID, "s%d-%d", &s, &i); err != nil {
					t.Fatalf("unexpected message %s", m.ID)
				}
				if i != next[m.SessionKey] {
					t.Fatalf("sender %d: message %d came after %d", s, i, next[m.SessionKey]-1)
				}
				next[m.SessionKey]++
			}
			if err := q.CompleteMany(ctx, ms); err != nil {
				t.Fatal(err)
			}
		}
	})
}
