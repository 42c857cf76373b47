package crmserver

import (
	"bytes"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"sync"
	"testing"
)

// hookReceiver records the webhook posts and answers each with the next of
// its statuses (then 200).
type hookReceiver struct {
	mu       sync.Mutex
	statuses []int
	reqs     []*http.Request
	bodies   [][]byte
}

func (h *hookReceiver) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	b, _ := io.ReadAll(r.Body)
	h.mu.Lock()
	h.reqs = append(h.reqs, r)
	h.bodies = append(h.bodies, b)
	status := http.StatusOK
	if len(h.statuses) > 0 {
		status, h.statuses = h.statuses[0], h.statuses[1:]
	}
	h.mu.Unlock()
	w.WriteHeader(status)
}

// TestWebhookTargetPosts checks that with a webhook target each context is
// POSTed with the documented headers and the configured authentication,
// with the same bytes the Service Bus endpoint gets, and that a 502, 503
// or 504 is attempted once more while other failures are not.
func TestWebhookTargetPosts(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name         string
		header, key  string
		statuses     []int
		wantAttempts int
		wantFailed   int64
	}{
		{name: "HttpHeader key", header: "x-fhirsync-key", key: "k1", wantAttempts: 1},
		{name: "WebhookKey code", key: "k2", wantAttempts: 1},
		{name: "503 is tried once more", key: "k3", statuses: []int{http.StatusServiceUnavailable}, wantAttempts: 2},
		{name: "504 twice fails", key: "k4", statuses: []int{http.StatusGatewayTimeout, http.StatusGatewayTimeout}, wantAttempts: 2, wantFailed: 1},
		{name: "401 is not retried", key: "k5", statuses: []int{http.StatusUnauthorized}, wantAttempts: 1, wantFailed: 1},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			recv := &hookReceiver{statuses: tt.statuses}
			hook := httptest.NewServer(recv)
			t.Cleanup(hook.Close)
			q := &gatedQueue{}
			s, hs := newServer(t, Options{Endpoint: q, Webhook: WebhookTarget{URL: hook.URL + "/hooks/dataverse", Header: tt.header, Key: tt.key}})
			id := write(t, hs, http.MethodPost, "contacts", `{"lastname":"Lee"}`)

			recv.mu.Lock()
			defer recv.mu.Unlock()
			if len(recv.reqs) != tt.wantAttempts {
				t.Fatalf("%d posts, want %d", len(recv.reqs), tt.wantAttempts)
			}
			r := recv.reqs[0]
			if r.Method != http.MethodPost || r.URL.Path != "/hooks/dataverse" || r.Header.Get("Content-Type") != "application/json" {
				t.Errorf("post = %s %s (%s)", r.Method, r.URL, r.Header.Get("Content-Type"))
			}
			if tt.header != "" && (r.Header.Get(tt.header) != tt.key || r.URL.Query().Has("code")) {
				t.Errorf("HttpHeader: header %q = %q, query %q", tt.header, r.Header.Get(tt.header), r.URL.RawQuery)
			}
			if tt.header == "" && r.URL.Query().Get("code") != tt.key {
				t.Errorf("WebhookKey: query %q, want code=%s", r.URL.RawQuery, tt.key)
			}
			var ctx struct {
				CorrelationID   string `json:"CorrelationId"`
				PrimaryEntityID string `json:"PrimaryEntityId"`
			}
			if err := json.Unmarshal(recv.bodies[0], &ctx); err != nil || ctx.PrimaryEntityID != id {
				t.Fatalf("body is not the context of %s: %v", id, err)
			}
			for h, want := range map[string]string{"x-ms-dynamics-organization": "sandbox", "x-ms-dynamics-entity-name": "contact",
				"x-ms-dynamics-request-name": "Create", "x-ms-correlation-request-id": ctx.CorrelationID} {
				if got := r.Header.Get(h); got != want || got == "" {
					t.Errorf("%s = %q, want %q", h, got, want)
				}
			}
			if r.Header.Get("x-ms-dynamics-msg-size-exceeded") != "" {
				t.Errorf("x-ms-dynamics-msg-size-exceeded sent for a small context")
			}
			_, _, msgs := q.snapshot()
			if len(msgs) != 1 || !bytes.Equal(msgs[0].Body, recv.bodies[0]) {
				t.Errorf("the Service Bus endpoint got %d messages, want the same context the webhook got", len(msgs))
			}
			if st := s.Stats(); st.EndpointFailed != tt.wantFailed {
				t.Errorf("EndpointFailed = %d, want %d", st.EndpointFailed, tt.wantFailed)
			}
		})
	}
}

func TestWebhookTargetURLChecked(t *testing.T) {
	t.Parallel()
	if _, err := New(Options{Webhook: WebhookTarget{URL: "ftp://example.org/hook"}}); err == nil {
		t.Fatal("New accepted a webhook URL that is not http(s)")
	}
}
