package fhir

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"gorm.io/gorm"

	"github.com/fhirsync/fhirsync/queues"
	"github.com/fhirsync/fhirsync/sandbox/fhirserver"
	"github.com/fhirsync/fhirsync/sandbox/medplum"
	"github.com/fhirsync/fhirsync/storage"
	"github.com/fhirsync/fhirsync/storage/storagetest"
)

// fakeQueue records sent messages; it can be told to fail.
type fakeQueue struct {
	mu   sync.Mutex
	msgs []queues.Message
	fail error
}

func (q *fakeQueue) Send(_ context.Context, msgs ...queues.Message) error {
	q.mu.Lock()
	defer q.mu.Unlock()
	if q.fail != nil {
		return q.fail
	}
	q.msgs = append(q.msgs, msgs...)
	return nil
}

func (q *fakeQueue) notices(t *testing.T) []queues.Notice {
	t.Helper()
	q.mu.Lock()
	defer q.mu.Unlock()
	var out []queues.Notice
	for _, m := range q.msgs {
		n, err := queues.DecodeNotice(m.Body)
		if err != nil {
			t.Fatalf("sent an invalid notice: %v", err)
		}
		if m.ID != n.MessageID() || m.SessionKey != n.SessionKey() {
			t.Errorf("message id/session %q %q do not match the notice", m.ID, m.SessionKey)
		}
		out = append(out, n)
	}
	return out
}

func (q *fakeQueue) reset() { q.mu.Lock(); q.msgs = nil; q.mu.Unlock() }

type sandboxClock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *sandboxClock) now() time.Time { c.mu.Lock(); defer c.mu.Unlock(); return c.t }
func (c *sandboxClock) add(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.t = c.t.Add(d)
}

// sandbox starts a sandbox FHIR server (optionally wrapped) and a client.
func sandbox(t *testing.T, opts fhirserver.Options, wrap func(http.Handler) http.Handler) (*fhirserver.Server, *Client) {
	t.Helper()
	srv, err := fhirserver.New(opts)
	if err != nil {
		t.Fatal(err)
	}
	var h http.Handler = srv
	if wrap != nil {
		h = wrap(srv)
	}
	hs := httptest.NewServer(h)
	t.Cleanup(func() { hs.Close(); srv.Close() })
	c, err := New(Config{BaseURL: hs.URL, Timeout: 10 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	return srv, c
}

func put(t *testing.T, c *Client, typ, id string, extra map[string]any) Resource {
	t.Helper()
	r := Resource{"resourceType": typ, "id": id}
	for k, v := range extra {
		r[k] = v
	}
	if typ == "Observation" {
		r["status"], r["code"] = "final", map[string]any{"text": "x"}
	}
	out, err := c.Update(context.Background(), r, "")
	if err != nil {
		t.Fatal(err)
	}
	return out
}

func summary(ns []queues.Notice) string {
	var parts []string
	for _, n := range ns {
		parts = append(parts, fmt.Sprintf("%s/%s@%s:%s", n.Type, n.ID, n.Version, n.Event))
	}
	return strings.Join(parts, " ")
}

func TestPollerDeduplicatesAndCheckpoints(t *testing.T) {
	storagetest.Each(t, func(t *testing.T, db *gorm.DB) {
		ctx := context.Background()
		clock := &sandboxClock{t: time.Date(2026, 5, 1, 8, 0, 0, 0, time.UTC)}
		_, c := sandbox(t, fhirserver.Options{Now: clock.now}, nil)
		q := &fakeQueue{}
		newPoller := func(holder string) *Poller {
			p, err := NewPoller(PollerConfig{Client: c, DB: db, Queue: q, Types: []string{"Patient"},
				Holder: holder, PageSize: 2, Overlap: 2 * time.Minute})
			if err != nil {
				t.Fatal(err)
			}
			return p
		}
		p := newPoller("a")

		put(t, c, "Patient", "p1", nil)
		put(t, c, "Patient", "p2", nil)
		clock.add(time.Second)
		put(t, c, "Patient", "p1", map[string]any{"gender": "female"})
		put(t, c, "Observation", "o1", nil) // another feed

		res, err := p.Poll(ctx, "Patient")
		if err != nil {
			t.Fatal(err)
		}
		if got := summary(q.notices(t)); got != "Patient/p1@2:updated Patient/p2@1:created Patient/p1@1:created" {
			t.Errorf("first poll sent %s", got)
		}
		if !res.Polled || res.Sent != 3 || res.Duplicates != 0 {
			t.Errorf("first poll: %+v", res)
		}
		for _, n := range q.notices(t) {
			if n.Side != queues.SideFHIR || n.Origin != "history-poll" || n.ChangedAt.IsZero() {
				t.Errorf("notice %+v lacks side, origin or time", n)
			}
		}

		// The overlap window is read again; nothing is sent twice.
		q.reset()
		res, err = p.Poll(ctx, "Patient")
		if err != nil {
			t.Fatal(err)
		}
		if res.Sent != 0 || res.Duplicates != 3 || len(q.notices(t)) != 0 {
			t.Errorf("second poll without changes: %+v, sent %s", res, summary(q.notices(t)))
		}

		// A new version and a deletion are sent once each.
		clock.add(time.Second)
		put(t, c, "Patient", "p2", map[string]any{"active": true})
		if err := c.Delete(ctx, "Patient", "p1"); err != nil {
			t.Fatal(err)
		}
		res, err = p.Poll(ctx, "Patient")
		if err != nil {
			t.Fatal(err)
		}
		if got := summary(q.notices(t)); got != "Patient/p1@3:deleted Patient/p2@2:updated" {
			t.Errorf("third poll sent %s (%+v)", got, res)
		}

		// The checkpoint lives in the database: a new poller (another
		// process, after the first released its lease) sends nothing old.
		if err := releaseAll(ctx, p, "Patient"); err != nil {
			t.Fatal(err)
		}
		q.reset()
		res, err = newPoller("b").Poll(ctx, "Patient")
		if err != nil {
			t.Fatal(err)
		}
		if !res.Polled || res.Sent != 0 {
			t.Errorf("new poller on the same database re-sent: %+v %s", res, summary(q.notices(t)))
		}

		// Past the overlap window, old changes are neither read nor kept.
		clock.add(time.Hour)
		put(t, c, "Patient", "p3", nil)
		if _, err := newPoller("b").Poll(ctx, "Patient"); err != nil {
			t.Fatal(err)
		}
		res, err = newPoller("b").Poll(ctx, "Patient")
		if err != nil {
			t.Fatal(err)
		}
		if res.Entries != 1 || res.Duplicates != 1 {
			t.Errorf("poll after an hour re-read %d entries (%d duplicates), want only the newest", res.Entries, res.Duplicates)
		}
		var row checkpointRow
		if err := db.Where("feed = ?", FeedName("Patient")).Take(&row).Error; err != nil {
			t.Fatal(err)
		}
		var cp checkpoint
		if err := json.Unmarshal([]byte(row.Position), &cp); err != nil {
			t.Fatal(err)
		}
		if len(cp.Seen) != 1 || !cp.Position.Equal(clock.now().Truncate(time.Millisecond)) {
			t.Errorf("checkpoint = %+v, want position %v and one remembered change", cp, clock.now())
		}
	})
}

func releaseAll(ctx context.Context, p *Poller, types ...string) error {
	for _, typ := range types {
		if err := leaseFor(p, typ).Release(ctx); err != nil {
			return err
		}
	}
	return nil
}

func TestPollerDoesNotAdvanceWhenSendingFails(t *testing.T) {
	storagetest.Each(t, func(t *testing.T, db *gorm.DB) {
		ctx := context.Background()
		_, c := sandbox(t, fhirserver.Options{}, nil)
		q := &fakeQueue{fail: errors.New("queue down")}
		p, err := NewPoller(PollerConfig{Client: c, DB: db, Queue: q, Types: []string{"Patient"}, Holder: "a"})
		if err != nil {
			t.Fatal(err)
		}
		put(t, c, "Patient", "p1", nil)
		if _, err := p.Poll(ctx, "Patient"); err == nil {
			t.Fatal("poll succeeded although the queue failed")
		}
		q.fail = nil
		if _, err := p.Poll(ctx, "Patient"); err != nil {
			t.Fatal(err)
		}
		if got := summary(q.notices(t)); got != "Patient/p1@1:created" {
			t.Errorf("after the queue recovered: %s", got)
		}
	})
}

func TestPollerSurfacesServerFailures(t *testing.T) {
	storagetest.Each(t, func(t *testing.T, db *gorm.DB) {
		ctx := context.Background()
		srv, c := sandbox(t, fhirserver.Options{}, nil)
		q := &fakeQueue{}
		p, err := NewPoller(PollerConfig{Client: c, DB: db, Queue: q, Types: []string{"Patient"}, Holder: "a"})
		if err != nil {
			t.Fatal(err)
		}
		put(t, c, "Patient", "p1", nil)
		srv.SetOutage(http.StatusServiceUnavailable)
		_, err = p.Poll(ctx, "Patient")
		var fe *Error
		if !errors.As(err, &fe) || fe.Class != ClassUnavailable || !fe.Retryable {
			t.Fatalf("poll during an outage: %v", err)
		}
		srv.SetOutage(0)
		if _, err := p.Poll(ctx, "Patient"); err != nil {
			t.Fatal(err)
		}
		if got := summary(q.notices(t)); got != "Patient/p1@1:created" {
			t.Errorf("after the outage: %s", got)
		}
	})
}

// TestTwoPollersNeverPollAFeedAtOnce runs two pollers (two processes'
// worth) on one database against a slow server and checks that history
// requests for a feed never overlap, and that a lapsed lease is taken over
// from the shared checkpoint.
func TestTwoPollersNeverPollAFeedAtOnce(t *testing.T) {
	storagetest.Each(t, func(t *testing.T, db *gorm.DB) {
		ctx := context.Background()
		var inFlight, maxInFlight, requests atomic.Int32
		slow := func(h http.Handler) http.Handler {
			return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				if strings.HasSuffix(r.URL.Path, "/_history") {
					n := inFlight.Add(1)
					defer inFlight.Add(-1)
					for {
						m := maxInFlight.Load()
						if n <= m || maxInFlight.CompareAndSwap(m, n) {
							break
						}
					}
					requests.Add(1)
					time.Sleep(30 * time.Millisecond)
				}
				h.ServeHTTP(w, r)
			})
		}
		_, c := sandbox(t, fhirserver.Options{}, slow)
		for i := range 5 {
			put(t, c, "Patient", fmt.Sprintf("p%d", i), nil)
		}
		q := &fakeQueue{}
		const ttl = 2 * time.Second
		pollers := make([]*Poller, 2)
		for i := range pollers {
			p, err := NewPoller(PollerConfig{Client: c, DB: db, Queue: q, Types: []string{"Patient"},
				Holder: fmt.Sprintf("proc-%d", i), PageSize: 2, LeaseTTL: ttl})
			if err != nil {
				t.Fatal(err)
			}
			pollers[i] = p
		}
		var polled [2]atomic.Int32
		var wg sync.WaitGroup
		for i, p := range pollers {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for range 6 {
					res, err := p.Poll(ctx, "Patient")
					if err != nil {
						t.Errorf("poller %d: %v", i, err)
						return
					}
					if res.Polled {
						polled[i].Add(1)
					}
				}
			}()
		}
		wg.Wait()
		if m := maxInFlight.Load(); m != 1 {
			t.Errorf("%d history requests for one feed ran at once, want 1", m)
		}
		if polled[0].Load()+polled[1].Load() != 6 || polled[0].Load()*polled[1].Load() != 0 {
			t.Errorf("polls per poller: %d and %d; want one holder doing all 6 while the other is refused",
				polled[0].Load(), polled[1].Load())
		}
		if got := len(q.notices(t)); got != 5 {
			t.Errorf("sent %d notices for 5 changes", got)
		}

		// The holder stops (crashes); after the TTL the other takes over
		// and continues from the shared checkpoint.
		holder, other := pollers[0], pollers[1]
		if polled[1].Load() > 0 {
			holder, other = pollers[1], pollers[0]
		}
		put(t, c, "Patient", "p9", nil)
		if res, err := other.Poll(ctx, "Patient"); err != nil || res.Polled {
			t.Fatalf("other poller before the lease lapsed: %+v %v", res, err)
		}
		time.Sleep(ttl + 200*time.Millisecond)
		res, err := other.Poll(ctx, "Patient")
		if err != nil || !res.Polled || res.Sent != 1 {
			t.Fatalf("takeover poll: %+v %v; want the one new change", res, err)
		}
		if res, err := holder.Poll(ctx, "Patient"); err != nil || res.Polled {
			t.Errorf("the old holder polled after the takeover: %+v %v", res, err)
		}
	})
}

func TestPollerRunsOnSchedule(t *testing.T) {
	storagetest.Each(t, func(t *testing.T, db *gorm.DB) {
		_, c := sandbox(t, fhirserver.Options{}, nil)
		q := &fakeQueue{}
		put(t, c, "Patient", "p1", nil)
		put(t, c, "Observation", "o1", nil)
		p, err := NewPoller(PollerConfig{Client: c, DB: db, Queue: q, Types: []string{"Patient", "Observation"},
			Schedule: "@every 1s", Holder: "a"})
		if err != nil {
			t.Fatal(err)
		}
		ctx, cancel := context.WithCancel(context.Background())
		done := make(chan error, 1)
		go func() { done <- p.Run(ctx) }()
		deadline := time.Now().Add(20 * time.Second)
		for len(q.notices(t)) < 2 && time.Now().Before(deadline) {
			time.Sleep(100 * time.Millisecond)
		}
		cancel()
		if err := <-done; err != nil {
			t.Fatal(err)
		}
		if got := summary(q.notices(t)); !strings.Contains(got, "Patient/p1@1:created") || !strings.Contains(got, "Observation/o1@1:created") {
			t.Errorf("scheduled polls sent %q", got)
		}
		// Run released its leases on the way out.
		ok, err := leaseFor(&Poller{cfg: PollerConfig{DB: db, Holder: "someone-else", LeaseTTL: time.Minute}}, "Patient").Acquire(context.Background())
		if err != nil || !ok {
			t.Errorf("lease still held after Run returned: %v %v", ok, err)
		}
	})
}

func TestNewPollerValidates(t *testing.T) {
	t.Parallel()
	c, _ := New(Config{BaseURL: "http://127.0.0.1:1"})
	tests := []struct {
		name    string
		cfg     PollerConfig
		wantErr bool
	}{
		{"nothing", PollerConfig{}, true},
		{"bad type", PollerConfig{Client: c, DB: &gorm.DB{}, Queue: &fakeQueue{}, Types: []string{"patient"}}, true},
		{"bad schedule", PollerConfig{Client: c, DB: &gorm.DB{}, Queue: &fakeQueue{}, Types: []string{"Patient"}, Schedule: "every now and then"}, true},
		{"ok", PollerConfig{Client: c, DB: &gorm.DB{}, Queue: &fakeQueue{}, Types: []string{"Patient"}, Schedule: "*/5 * * * *"}, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			if _, err := NewPoller(tt.cfg); (err != nil) != tt.wantErr {
				t.Errorf("err = %v, wantErr %v", err, tt.wantErr)
			}
		})
	}
}

// TestPollerAgainstMedplum checks the poller on a server with UUID version
// ids and millisecond clocks of its own.
func TestPollerAgainstMedplum(t *testing.T) {
	t.Parallel()
	base := medplum.Start(t)
	c, err := New(Config{BaseURL: base, Timeout: 20 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	db := storagetest.Open(t, storage.SQLite)
	q := &fakeQueue{}
	p, err := NewPoller(PollerConfig{Client: c, DB: db, Queue: q, Types: []string{"Practitioner"}, Holder: "a", PageSize: 2})
	if err != nil {
		t.Fatal(err)
	}
	a, err := c.Create(ctx, Resource{"resourceType": "Practitioner", "active": true})
	if err != nil {
		t.Fatal(err)
	}
	b, err := c.Create(ctx, Resource{"resourceType": "Practitioner", "active": true})
	if err != nil {
		t.Fatal(err)
	}
	a["active"] = false
	a2, err := c.Update(ctx, a, a.VersionID())
	if err != nil {
		t.Fatal(err)
	}
	if err := c.Delete(ctx, "Practitioner", b.ID()); err != nil {
		t.Fatal(err)
	}
	if _, err := p.Poll(ctx, "Practitioner"); err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, n := range q.notices(t) {
		if n.ID == a.ID() || n.ID == b.ID() {
			got = append(got, fmt.Sprintf("%s:%s", n.ID, n.Event))
			if !uuidVersion.MatchString(n.Version) {
				t.Errorf("version %q is not the server's UUID", n.Version)
			}
		}
	}
	want := []string{b.ID() + ":deleted", a.ID() + ":updated", b.ID() + ":created", a.ID() + ":created"}
	if strings.Join(got, " ") != strings.Join(want, " ") {
		t.Errorf("notices %v, want %v", got, want)
	}
	if n := q.notices(t)[1]; n.ID == a.ID() && n.Version != a2.VersionID() {
		t.Errorf("update notice version %s, want %s", n.Version, a2.VersionID())
	}
	q.reset()
	res, err := p.Poll(ctx, "Practitioner")
	if err != nil {
		t.Fatal(err)
	}
	if res.Sent != 0 || res.Duplicates < 4 {
		t.Errorf("second poll: %+v, want nothing sent and the overlap de-duplicated", res)
	}
}

func TestPollerTriggerPollsBetweenTurns(t *testing.T) {
	storagetest.Each(t, func(t *testing.T, db *gorm.DB) {
		_, c := sandbox(t, fhirserver.Options{}, nil)
		q := &fakeQueue{}
		p, err := NewPoller(PollerConfig{Client: c, DB: db, Queue: q, Types: []string{"Patient"},
			Schedule: "@every 1h", Holder: "a"})
		if err != nil {
			t.Fatal(err)
		}
		p.Trigger() // not running: nothing happens
		ctx, cancel := context.WithCancel(context.Background())
		done := make(chan error, 1)
		go func() { done <- p.Run(ctx) }()
		defer func() {
			cancel()
			if err := <-done; err != nil {
				t.Error(err)
			}
		}()
		put(t, c, "Patient", "p1", nil)
		deadline := time.Now().Add(20 * time.Second)
		for len(q.notices(t)) == 0 && time.Now().Before(deadline) {
			p.Trigger() // Run may not have started yet
			time.Sleep(100 * time.Millisecond)
		}
		if got := summary(q.notices(t)); got != "Patient/p1@1:created" {
			t.Errorf("triggered poll sent %q", got)
		}
	})
}

// TestPollerKeepsChangesAtTheCheckpointInstant: a change stamped with the
// very instant the checkpoint holds, made after the poll that set it, is
// still sent — _since is inclusive ("at or after the given instant", R4
// http.html#history) and what the window reads again is de-duplicated by
// id and version — even with an overlap as small as it gets. Each request
// carries _since and _count, and the next links are followed.
func TestPollerKeepsChangesAtTheCheckpointInstant(t *testing.T) {
	storagetest.Each(t, func(t *testing.T, db *gorm.DB) {
		ctx := context.Background()
		clock := &sandboxClock{t: time.Date(2026, 5, 1, 8, 0, 0, 0, time.UTC)}
		var mu sync.Mutex
		var queries []url.Values
		_, c := sandbox(t, fhirserver.Options{Now: clock.now}, func(next http.Handler) http.Handler {
			return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				if strings.HasSuffix(r.URL.Path, "/_history") {
					mu.Lock()
					queries = append(queries, r.URL.Query())
					mu.Unlock()
				}
				next.ServeHTTP(w, r)
			})
		})
		q := &fakeQueue{}
		p, err := NewPoller(PollerConfig{Client: c, DB: db, Queue: q, Types: []string{"Patient"}, Holder: "a",
			PageSize: 1, Overlap: time.Nanosecond})
		if err != nil {
			t.Fatal(err)
		}
		put(t, c, "Patient", "a", nil)
		clock.add(time.Second)
		put(t, c, "Patient", "b", nil)
		if _, err := p.Poll(ctx, "Patient"); err != nil {
			t.Fatal(err)
		}
		if got := summary(q.notices(t)); got != "Patient/b@1:created Patient/a@1:created" {
			t.Fatalf("first poll sent %s", got)
		}
		// The clock has not moved: these carry the checkpoint's instant.
		q.reset()
		put(t, c, "Patient", "c", nil)
		put(t, c, "Patient", "b", map[string]any{"active": true})
		res, err := p.Poll(ctx, "Patient")
		if err != nil {
			t.Fatal(err)
		}
		if got := summary(q.notices(t)); got != "Patient/b@2:updated Patient/c@1:created" {
			t.Errorf("second poll sent %s (%+v), want the two changes at the checkpoint's instant", got, res)
		}
		if res.Duplicates != 1 {
			t.Errorf("second poll: %d duplicates, want 1 (Patient/b@1, read again at the same instant)", res.Duplicates)
		}
		mu.Lock()
		defer mu.Unlock()
		// First poll: no checkpoint, so no _since; two pages of one.
		// Second poll: three pages from the checkpoint's instant.
		if len(queries) != 5 {
			t.Fatalf("%d history requests, want 5: %v", len(queries), queries)
		}
		for i, qv := range queries {
			if qv.Get("_count") != "1" {
				t.Errorf("request %d: _count %q, want 1", i, qv.Get("_count"))
			}
		}
		if s := queries[0].Get("_since"); s != "" {
			t.Errorf("first poll's _since %q, want none (no checkpoint, no Start)", s)
		}
		since, err := time.Parse(time.RFC3339Nano, queries[2].Get("_since"))
		if err != nil || since.After(clock.now()) || clock.now().Sub(since) > time.Millisecond {
			t.Errorf("second poll's _since %q, want the checkpoint's instant or just before", queries[2].Get("_since"))
		}
	})
}
