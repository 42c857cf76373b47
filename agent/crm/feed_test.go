package crm

import (
	"context"
	"errors"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"gorm.io/gorm"

	"github.com/fhirsync/fhirsync/queues"
	"github.com/fhirsync/fhirsync/sandbox/crmserver"
	"github.com/fhirsync/fhirsync/storage"
	"github.com/fhirsync/fhirsync/storage/storagetest"
)

type memQueue struct {
	mu   sync.Mutex
	msgs []queues.Message
	fail error
}

func (q *memQueue) Send(_ context.Context, msgs ...queues.Message) error {
	q.mu.Lock()
	defer q.mu.Unlock()
	if q.fail != nil {
		return q.fail
	}
	q.msgs = append(q.msgs, msgs...)
	return nil
}

func (q *memQueue) take(t *testing.T) []queues.Notice {
	t.Helper()
	q.mu.Lock()
	defer q.mu.Unlock()
	var out []queues.Notice
	for _, m := range q.msgs {
		n, err := queues.DecodeNotice(m.Body)
		if err != nil {
			t.Fatal(err)
		}
		if m.ID != n.MessageID() {
			t.Fatalf("message id %q, notice id %q", m.ID, n.MessageID())
		}
		out = append(out, n)
	}
	q.msgs = nil
	sort.Slice(out, func(i, j int) bool { return out[i].ID+string(out[i].Event) < out[j].ID+string(out[j].Event) })
	return out
}

func events(ns []queues.Notice, names map[string]string) string {
	var parts []string
	for _, n := range ns {
		parts = append(parts, names[n.ID]+":"+string(n.Event)+"@"+n.Origin)
	}
	sort.Strings(parts)
	return strings.Join(parts, ",")
}

func TestFeedPollsChangesIntoNotices(t *testing.T) {
	storagetest.Each(t, func(t *testing.T, db *gorm.DB) {
		ctx := context.Background()
		srv, c := sandbox(t, crmserver.Options{}, Config{PageSize: 2})
		me, err := c.WhoAmI(ctx)
		if err != nil {
			t.Fatal(err)
		}
		q := &memQueue{}
		f, err := NewFeed(c, db, q, FeedConfig{Entity: "contact", Set: "contacts", Holder: "agent-1"})
		if err != nil {
			t.Fatal(err)
		}
		names := map[string]string{}
		create := func(n string) string {
			id, err := c.Create(ctx, "contacts", Record{"lastname": n})
			if err != nil {
				t.Fatal(err)
			}
			names[id] = n
			return id
		}
		a := create("A")
		create("B")

		// first poll: baseline only
		res, err := f.Poll(ctx)
		if err != nil || !res.Leased || !res.Baseline || res.Notices != 0 {
			t.Fatalf("baseline poll = %+v, %v", res, err)
		}
		if got := q.take(t); len(got) != 0 {
			t.Fatalf("baseline sent %d notices", len(got))
		}

		// changes: update A, create C, delete B
		if _, err := c.Upsert(ctx, ByID("contacts", a), Record{"firstname": "x"}, UpsertOptions{Mode: UpdateOnly}); err != nil {
			t.Fatal(err)
		}
		create("C")
		var b string
		for id, n := range names {
			if n == "B" {
				b = id
			}
		}
		if err := c.Delete(ctx, ByID("contacts", b), ""); err != nil {
			t.Fatal(err)
		}
		res, err = f.Poll(ctx)
		if err != nil || res.Notices != 3 || res.Deleted != 1 {
			t.Fatalf("poll = %+v, %v", res, err)
		}
		got := q.take(t)
		// A was updated within the second it was created, so it may read
		// as changed rather than updated; C is new, B deleted
		e := events(got, names)
		if e != "A:updated@crm-tracking,B:deleted@crm-tracking,C:changed@crm-tracking" && e != "A:changed@crm-tracking,B:deleted@crm-tracking,C:changed@crm-tracking" {
			t.Fatalf("notices = %s", e)
		}
		for _, n := range got {
			if n.Side != queues.SideCRM || n.Type != "contact" {
				t.Fatalf("notice = %+v", n)
			}
			if n.Event != queues.EventDeleted && (n.Initiator != me || n.Version == "" || n.ChangedAt.IsZero()) {
				t.Fatalf("notice lacks initiator/version/time: %+v", n)
			}
		}
		// nothing new: nothing sent
		if res, err := f.Poll(ctx); err != nil || res.Notices != 0 {
			t.Fatalf("idle poll = %+v, %v", res, err)
		}

		// a failed send keeps the checkpoint, so the change is sent again
		create("D")
		q.fail = errors.New("queue down")
		if _, err := f.Poll(ctx); err == nil {
			t.Fatal("poll succeeded while the queue refused")
		}
		q.fail = nil
		if res, err := f.Poll(ctx); err != nil || res.Notices != 1 {
			t.Fatalf("poll after queue recovery = %+v, %v", res, err)
		}
		q.take(t)

		// another holder cannot poll while the lease is live
		other, _ := NewFeed(c, db, q, FeedConfig{Entity: "contact", Set: "contacts", Holder: "agent-2"})
		if res, err := other.Poll(ctx); err != nil || res.Leased {
			t.Fatalf("second holder poll = %+v, %v", res, err)
		}

		// an expired token falls back to a full reconcile
		srv.ExpireDeltaTokens()
		res, err = f.Poll(ctx)
		if err != nil || !res.Reconciled || res.Notices != 3 {
			t.Fatalf("reconcile poll = %+v, %v", res, err)
		}
		if e := events(q.take(t), names); e != "A:changed@reconcile,C:changed@reconcile,D:changed@reconcile" {
			t.Fatalf("reconcile notices = %s", e)
		}
		create("E")
		if res, err := f.Poll(ctx); err != nil || res.Notices != 1 || res.Reconciled {
			t.Fatalf("poll after reconcile = %+v, %v", res, err)
		}
		var stored string
		if err := db.Raw("SELECT position FROM feed_checkpoints WHERE feed = ?", f.Name()).Scan(&stored).Error; err != nil || !strings.Contains(stored, "$deltatoken=") {
			t.Fatalf("stored checkpoint %q, %v", stored, err)
		}
	})
}

func TestFeedEmitInitialAndLeaseExpiry(t *testing.T) {
	storagetest.Each(t, func(t *testing.T, db *gorm.DB) {
		ctx := context.Background()
		_, c := sandbox(t, crmserver.Options{}, Config{})
		for _, n := range []string{"A", "B"} {
			if _, err := c.Create(ctx, "contacts", Record{"lastname": n}); err != nil {
				t.Fatal(err)
			}
		}
		q := &memQueue{}
		f, _ := NewFeed(c, db, q, FeedConfig{Entity: "contact", Set: "contacts", Holder: "h1", EmitInitial: true, LeaseTTL: 50 * time.Millisecond})
		res, err := f.Poll(ctx)
		if err != nil || res.Notices != 2 || res.Baseline {
			t.Fatalf("initial poll = %+v, %v", res, err)
		}
		for _, n := range q.take(t) {
			if n.Event != queues.EventChanged || n.Origin != OriginReconcile {
				t.Fatalf("initial notice = %+v", n)
			}
		}
		// once the first holder's lease lapses a second one takes over,
		// continuing from the shared checkpoint
		time.Sleep(80 * time.Millisecond)
		g, _ := NewFeed(c, db, q, FeedConfig{Entity: "contact", Set: "contacts", Holder: "h2", EmitInitial: true})
		res, err = g.Poll(ctx)
		if err != nil || !res.Leased || res.Notices != 0 {
			t.Fatalf("takeover poll = %+v, %v", res, err)
		}
		if ok, _ := storage.NewLease(db, "feed:"+f.Name(), "h1", time.Minute).Acquire(ctx); ok {
			t.Fatal("first holder re-took a live lease")
		}
	})
}

func TestNewFeedValidates(t *testing.T) {
	t.Parallel()
	c, _ := New(Config{URL: "http://x"})
	if _, err := NewFeed(c, nil, &memQueue{}, FeedConfig{Entity: "contact", Set: "contacts", Holder: "h"}); err == nil {
		t.Fatal("nil database accepted")
	}
	if _, err := NewFeed(c, &gorm.DB{}, &memQueue{}, FeedConfig{Entity: "contact"}); err == nil {
		t.Fatal("missing Set and Holder accepted")
	}
}
