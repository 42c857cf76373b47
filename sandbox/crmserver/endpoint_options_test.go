package crmserver

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/fhirsync/fhirsync/queues"
)

const (
	entityNameProperty  = "http://schemas.microsoft.com/xrm/2011/Claims/EntityLogicalName"
	requestNameProperty = "http://schemas.microsoft.com/xrm/2011/Claims/RequestName"
)

// gatedQueue is a sender that records every Send call and, while held,
// keeps Send waiting until release, like a queue that is slow to answer.
// With err set it refuses every Send.
type gatedQueue struct {
	mu      sync.Mutex
	gate    chan struct{} // nil: Send does not wait
	entered int           // Send calls started
	calls   []int         // messages per Send call that returned
	msgs    []queues.Message
	err     error
}

func (q *gatedQueue) Send(ctx context.Context, msgs ...queues.Message) error {
	q.mu.Lock()
	q.entered++
	gate := q.gate
	q.mu.Unlock()
	if gate != nil {
		select {
		case <-gate:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	q.mu.Lock()
	defer q.mu.Unlock()
	q.calls = append(q.calls, len(msgs))
	if q.err != nil {
		return q.err
	}
	q.msgs = append(q.msgs, msgs...)
	return nil
}

func (q *gatedQueue) hold() {
	q.mu.Lock()
	defer q.mu.Unlock()
	q.gate = make(chan struct{})
}

func (q *gatedQueue) release() {
	q.mu.Lock()
	defer q.mu.Unlock()
	if q.gate != nil {
		close(q.gate)
		q.gate = nil
	}
}

// snapshot returns how many Send calls started, the message count of each
// call that returned, and the messages accepted.
func (q *gatedQueue) snapshot() (int, []int, []queues.Message) {
	q.mu.Lock()
	defer q.mu.Unlock()
	return q.entered, slices.Clone(q.calls), slices.Clone(q.msgs)
}

// waitUntil polls cond until it holds, failing the test after a few
// seconds.
func waitUntil(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(2 * time.Millisecond)
	}
}

// write sends one write request and returns the id in OData-EntityId. It
// fails the test unless the server answers 204 within a few seconds, so a
// write stuck behind the endpoint fails instead of hanging.
func write(t *testing.T, hs *httptest.Server, method, path, body string) string {
	t.Helper()
	req, err := http.NewRequest(method, hs.URL+APIPath+path, strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Content-Type", "application/json")
	resp, err := (&http.Client{Timeout: 5 * time.Second}).Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, path, err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusNoContent {
		t.Fatalf("%s %s: status %d", method, path, resp.StatusCode)
	}
	loc := resp.Header.Get("OData-EntityId")
	if i := strings.LastIndex(loc, "("); i >= 0 && strings.HasSuffix(loc, ")") {
		return loc[i+1 : len(loc)-1]
	}
	if method == http.MethodDelete {
		return ""
	}
	t.Fatalf("%s %s: OData-EntityId %q", method, path, loc)
	return ""
}

// primaryEntityID reads PrimaryEntityId from a RemoteExecutionContext.
func primaryEntityID(t *testing.T, m queues.Message) string {
	t.Helper()
	var ctx struct{ PrimaryEntityId string }
	if err := json.Unmarshal(m.Body, &ctx); err != nil {
		t.Fatalf("message %s: %v", m.ID, err)
	}
	return ctx.PrimaryEntityId
}

// closeWithin calls s.Close and fails the test if it has not returned
// after d.
func closeWithin(t *testing.T, s *Server, d time.Duration) {
	t.Helper()
	closed := make(chan error, 1)
	go func() { closed <- s.Close() }()
	select {
	case err := <-closed:
		if err != nil {
			t.Fatalf("Close: %v", err)
		}
	case <-time.After(d):
		t.Fatalf("Close did not return within %v", d)
	}
}

// TestEndpointEntities checks that only changes to the entities with a
// registered step are posted, and that every entity's are without a list.
func TestEndpointEntities(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name     string
		entities []string
		want     []string // entity/RequestName of the posted messages, in order
	}{
		{
			name:     "only the listed entity",
			entities: []string{"contact"},
			want:     []string{"contact/Create"},
		},
		{
			name: "every entity without a list",
			want: []string{"contact/Create", "account/Create", "msemr_medicalidentifier/Create", "account/Update", "account/Delete"},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			q := &gatedQueue{}
			_, hs := newServer(t, Options{Endpoint: q, EndpointEntities: tt.entities})
			contactID := write(t, hs, http.MethodPost, "contacts", `{"lastname":"Lee"}`)
			accountID := write(t, hs, http.MethodPost, "accounts", `{"name":"Clinic"}`)
			write(t, hs, http.MethodPost, "msemr_medicalidentifiers", `{"msemr_name":"MRN","msemr_identifiervalue":"123"}`)
			write(t, hs, http.MethodPatch, "accounts("+accountID+")", `{"name":"Clinic North"}`)
			write(t, hs, http.MethodDelete, "accounts("+accountID+")", "")

			_, _, msgs := q.snapshot()
			var got []string
			for _, m := range msgs {
				got = append(got, m.Properties[entityNameProperty]+"/"+m.Properties[requestNameProperty])
			}
			if !slices.Equal(got, tt.want) {
				t.Fatalf("posted %q, want %q", got, tt.want)
			}
			if id := primaryEntityID(t, msgs[0]); id != contactID {
				t.Fatalf("contact message is for %s, want %s", id, contactID)
			}
		})
	}
}

// TestEndpointAsyncPostsInBackground checks that with EndpointAsync a
// write answers while the endpoint is still busy, that the messages that
// accumulate meanwhile are posted together and each exactly once, in
// write order, and that Close waits for what is pending.
func TestEndpointAsyncPostsInBackground(t *testing.T) {
	t.Parallel()
	const writes = 20
	q := &gatedQueue{}
	q.hold()
	s, hs := newServer(t, Options{Endpoint: q, EndpointAsync: true})
	// Runs before the HTTP server closes: nothing may stay held.
	t.Cleanup(func() {
		q.release()
		closeWithin(t, s, 5*time.Second)
	})

	ids := []string{write(t, hs, http.MethodPost, "contacts", `{"lastname":"Lee 0"}`)}
	waitUntil(t, "the first Send", func() bool {
		entered, _, _ := q.snapshot()
		return entered == 1
	})
	for i := 1; i < writes; i++ {
		ids = append(ids, write(t, hs, http.MethodPost, "contacts", fmt.Sprintf(`{"lastname":"Lee %d"}`, i)))
	}
	if entered, calls, _ := q.snapshot(); entered != 1 || len(calls) != 0 {
		t.Fatalf("while the endpoint was held: %d Send calls started, %d returned; want 1 and 0", entered, len(calls))
	}

	q.release()
	waitUntil(t, "every message to be sent", func() bool { return s.Stats().EndpointSent == writes })
	_, calls, msgs := q.snapshot()
	// The first Send took the first write's message; the other writes
	// answered while it was held, so their messages go in one Send.
	if want := []int{1, writes - 1}; !slices.Equal(calls, want) {
		t.Fatalf("messages per Send call: %v, want %v", calls, want)
	}
	var got []string
	for _, m := range msgs {
		got = append(got, primaryEntityID(t, m))
	}
	if !slices.Equal(got, ids) {
		t.Fatalf("posted records %v, want each of %v once, in write order", got, ids)
	}

	// Close with messages still pending behind a held endpoint.
	q.hold()
	const more = 5
	for i := range more {
		ids = append(ids, write(t, hs, http.MethodPost, "contacts", fmt.Sprintf(`{"lastname":"Kim %d"}`, i)))
	}
	closed := make(chan struct{})
	go func() {
		s.Close()
		close(closed)
	}()
	select {
	case <-closed:
		t.Fatal("Close returned while the endpoint still held messages")
	case <-time.After(50 * time.Millisecond):
	}
	q.release()
	select {
	case <-closed:
	case <-time.After(5 * time.Second):
		t.Fatal("Close did not return after the endpoint was released")
	}
	_, _, msgs = q.snapshot()
	got = got[:0]
	for _, m := range msgs {
		got = append(got, primaryEntityID(t, m))
	}
	if !slices.Equal(got, ids) {
		t.Fatalf("after Close, posted records %v, want %v", got, ids)
	}
	if st := s.Stats(); st.EndpointSent != writes+more || st.EndpointFailed != 0 {
		t.Fatalf("after Close: EndpointSent %d, EndpointFailed %d; want %d and 0", st.EndpointSent, st.EndpointFailed, writes+more)
	}
	closeWithin(t, s, 5*time.Second)
}

// TestEndpointRefusalsAreCounted checks that messages the endpoint refuses
// are counted as failed, one by one also when refused together in one
// Send, and do not stop the server answering.
func TestEndpointRefusalsAreCounted(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name  string
		async bool
	}{
		{name: "synchronous"},
		{name: "asynchronous", async: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			const writes = 5
			q := &gatedQueue{err: errors.New("queue unavailable")}
			s, hs := newServer(t, Options{Endpoint: q, EndpointAsync: tt.async})
			t.Cleanup(func() {
				q.release()
				closeWithin(t, s, 5*time.Second)
			})

			if tt.async {
				// Hold the first Send so the other writes' messages are
				// refused together.
				q.hold()
			}
			for i := range writes {
				write(t, hs, http.MethodPost, "contacts", fmt.Sprintf(`{"lastname":"Lee %d"}`, i))
				if i == 0 && tt.async {
					waitUntil(t, "the first Send", func() bool {
						entered, _, _ := q.snapshot()
						return entered == 1
					})
				}
			}
			q.release()
			waitUntil(t, "the refusals to be counted", func() bool { return s.Stats().EndpointFailed == writes })
			if st := s.Stats(); st.EndpointSent != 0 {
				t.Fatalf("EndpointSent %d after refusals", st.EndpointSent)
			}
			if _, calls, _ := q.snapshot(); tt.async && !slices.Equal(calls, []int{1, writes - 1}) {
				t.Fatalf("messages per refused Send call: %v, want [1 %d]", calls, writes-1)
			}

			resp, body := do(t, http.MethodGet, hs.URL+APIPath+"contacts?$select=lastname", nil, "")
			var page struct{ Value []map[string]any }
			if resp.StatusCode != http.StatusOK || json.Unmarshal(body, &page) != nil || len(page.Value) != writes {
				t.Fatalf("listing contacts after refusals: %d %s", resp.StatusCode, body)
			}
			write(t, hs, http.MethodPost, "contacts", `{"lastname":"Kim"}`)
			closeWithin(t, s, 5*time.Second)
			if st := s.Stats(); st.EndpointFailed != writes+1 || st.EndpointSent != 0 {
				t.Fatalf("after Close: EndpointFailed %d, EndpointSent %d; want %d and 0", st.EndpointFailed, st.EndpointSent, writes+1)
			}
		})
	}
}
