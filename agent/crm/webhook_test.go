package crm

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"github.com/fhirsync/fhirsync/queues"
)

// webhookQueue is a hand fake of the crm-changes queue.
type webhookQueue struct {
	mu   sync.Mutex
	msgs []queues.Message
	err  error
}

func (q *webhookQueue) Send(_ context.Context, msgs ...queues.Message) error {
	q.mu.Lock()
	defer q.mu.Unlock()
	if q.err != nil {
		return q.err
	}
	q.msgs = append(q.msgs, msgs...)
	return nil
}

const testWebhookKey = "0123456789abcdef-webhook-key"

// webhookPost builds a post as Dataverse sends it, with the documented
// headers and the key as a header or as ?code=.
func webhookPost(body []byte, header, key string) *http.Request {
	target := "/hooks/dataverse"
	if header == "" && key != "" {
		target += "?code=" + key
	}
	r := httptest.NewRequest(http.MethodPost, target, bytes.NewReader(body))
	r.Header.Set("Content-Type", "application/json")
	r.Header.Set(headerOrganization, "contoso.crm.dynamics.com")
	r.Header.Set(headerEntityName, "contact")
	r.Header.Set(headerRequestName, "Update")
	r.Header.Set(headerCorrelationID, "b374239d-4233-41a9-8b17-a86cb4f737b5")
	if header != "" && key != "" {
		r.Header.Set(header, key)
	}
	return r
}

func TestWebhookAnswers(t *testing.T) {
	t.Parallel()
	sample := readCorpusFile(t, "dataverse/contexts/webhook-update-contact-async-postimage.json")
	var logged bytes.Buffer
	tests := []struct {
		name       string
		header     string // configured header; empty: code query parameter
		sendKey    string
		body       []byte
		method     string
		maxBytes   int64
		queueErr   error
		sizeHeader bool
		wantStatus int
		wantQueued bool
		wantText   string // in the answer body
	}{
		{name: "header key accepted", header: "x-fhirsync-key", sendKey: testWebhookKey, body: sample, wantStatus: http.StatusAccepted, wantQueued: true},
		{name: "code query key accepted", sendKey: testWebhookKey, body: sample, wantStatus: http.StatusAccepted, wantQueued: true},
		{name: "size exceeded header kept", sendKey: testWebhookKey, body: sample, sizeHeader: true, wantStatus: http.StatusAccepted, wantQueued: true},
		{name: "missing header key", header: "x-fhirsync-key", body: sample, wantStatus: http.StatusUnauthorized},
		{name: "wrong header key", header: "x-fhirsync-key", sendKey: testWebhookKey + "x", body: sample, wantStatus: http.StatusUnauthorized},
		{name: "missing code", body: sample, wantStatus: http.StatusUnauthorized},
		{name: "wrong code", sendKey: "not-the-key-at-all", body: sample, wantStatus: http.StatusUnauthorized},
		{name: "oversize", sendKey: testWebhookKey, body: sample, maxBytes: int64(len(sample)) - 1, wantStatus: http.StatusRequestEntityTooLarge},
		{name: "exactly the limit", sendKey: testWebhookKey, body: sample, maxBytes: int64(len(sample)), wantStatus: http.StatusAccepted, wantQueued: true},
		{name: "malformed JSON", sendKey: testWebhookKey, body: []byte(`{"MessageName":"Update",`), wantStatus: http.StatusBadRequest, wantText: "not a RemoteExecutionContext"},
		{name: "not a context", sendKey: testWebhookKey, body: []byte(`{"resourceType":"Patient","id":"p1","name":[{"family":"Secretname"}]}`), wantStatus: http.StatusBadRequest, wantText: "MessageName is missing"},
		{name: "empty body", sendKey: testWebhookKey, body: nil, wantStatus: http.StatusBadRequest},
		{name: "GET refused", sendKey: testWebhookKey, body: nil, method: http.MethodGet, wantStatus: http.StatusMethodNotAllowed},
		{name: "queue failure", sendKey: testWebhookKey, body: sample, queueErr: errors.New("broker unreachable"), wantStatus: http.StatusServiceUnavailable},
		{name: "queue refuses the size", sendKey: testWebhookKey, body: sample, queueErr: fmt.Errorf("sending: %w", queues.ErrTooLarge), wantStatus: http.StatusRequestEntityTooLarge},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			q := &webhookQueue{err: tc.queueErr}
			h, err := NewWebhook(WebhookConfig{Queue: q, Header: tc.header, Key: testWebhookKey, MaxBodyBytes: tc.maxBytes,
				Logger: slog.New(slog.NewTextHandler(&logged, nil))})
			if err != nil {
				t.Fatal(err)
			}
			r := webhookPost(tc.body, tc.header, tc.sendKey)
			if tc.method != "" {
				r.Method = tc.method
			}
			if tc.sizeHeader {
				r.Header.Set(headerMsgSizeExceeded, "true")
			}
			w := httptest.NewRecorder()
			h.ServeHTTP(w, r)
			if w.Code != tc.wantStatus {
				t.Fatalf("status = %d (%s), want %d", w.Code, strings.TrimSpace(w.Body.String()), tc.wantStatus)
			}
			if tc.wantText != "" && !strings.Contains(w.Body.String(), tc.wantText) {
				t.Errorf("answer %q lacks %q", w.Body.String(), tc.wantText)
			}
			if strings.Contains(w.Body.String(), "Secretname") {
				t.Errorf("answer %q repeats a value from the body", w.Body.String())
			}
			if got := len(q.msgs); got != map[bool]int{true: 1}[tc.wantQueued] {
				t.Fatalf("queued %d messages, want queued=%v", got, tc.wantQueued)
			}
			if !tc.wantQueued {
				return
			}
			m := q.msgs[0]
			if !bytes.Equal(m.Body, tc.body) {
				t.Errorf("queued body differs from the post")
			}
			if m.SessionKey != "crm:contact/6d81597f-0f9f-e711-8122-000d3aa2331c" {
				t.Errorf("session key = %q", m.SessionKey)
			}
			if m.Properties[propOrganization] != "contoso.crm.dynamics.com" || m.Properties[propEntityName] != "contact" ||
				m.Properties[propRequestName] != "Update" {
				t.Errorf("properties = %v", m.Properties)
			}
			if _, ok := m.Properties[propMaxSizeExceeded]; ok != tc.sizeHeader {
				t.Errorf("MessageMaxSizeExceeded present = %v, want %v", ok, tc.sizeHeader)
			}
		})
	}
	if strings.Contains(logged.String(), "Secretname") || strings.Contains(logged.String(), "James") {
		t.Errorf("process log carries record values:\n%s", logged.String())
	}
	if !strings.Contains(logged.String(), "reason=invalid_context") {
		t.Errorf("process log lacks the refusal reason:\n%s", logged.String())
	}
}

// TestWebhookQueuesEveryCorpusContext posts every published context of the
// conformance corpus (three of them are webhook bodies printed in
// Microsoft's documentation) and expects each queued byte for byte, under
// a MessageID that is the same when the same context is posted again and
// differs between contexts.
func TestWebhookQueuesEveryCorpusContext(t *testing.T) {
	t.Parallel()
	files := corpusFiles(t, filepath.Join("dataverse", "contexts"))
	if len(files) < 9 {
		t.Fatalf("the corpus holds %d contexts, want at least 9", len(files))
	}
	q := &webhookQueue{}
	h, err := NewWebhook(WebhookConfig{Queue: q, Header: "x-fhirsync-key", Key: testWebhookKey})
	if err != nil {
		t.Fatal(err)
	}
	ids := map[string]string{}
	for _, rel := range files {
		t.Run(filepath.Base(rel), func(t *testing.T) {
			body := readCorpusFile(t, rel)
			x, err := DecodeRemoteExecutionContext(body)
			if err != nil {
				t.Fatalf("the corpus context does not decode: %v", err)
			}
			var msgIDs []string
			for range 2 {
				before := len(q.msgs)
				w := httptest.NewRecorder()
				h.ServeHTTP(w, webhookPost(body, "x-fhirsync-key", testWebhookKey))
				if w.Code != http.StatusAccepted {
					t.Fatalf("status = %d (%s), want 202", w.Code, strings.TrimSpace(w.Body.String()))
				}
				if len(q.msgs) != before+1 {
					t.Fatalf("queued %d messages, want 1", len(q.msgs)-before)
				}
				m := q.msgs[len(q.msgs)-1]
				if !bytes.Equal(m.Body, body) {
					t.Fatalf("queued body differs from the post")
				}
				if m.Properties[propRequestName] != x.MessageName || m.Properties[propEntityName] != x.PrimaryEntityName {
					t.Errorf("properties = %v, want %s of %s", m.Properties, x.MessageName, x.PrimaryEntityName)
				}
				if !strings.Contains(m.ID, x.PrimaryEntityID) || len(m.ID) > 128 {
					t.Errorf("MessageID %q does not name the record or is longer than Service Bus allows", m.ID)
				}
				msgIDs = append(msgIDs, m.ID)
			}
			if msgIDs[0] != msgIDs[1] {
				t.Errorf("MessageIDs of the same post differ: %q, %q", msgIDs[0], msgIDs[1])
			}
			if other, dup := ids[msgIDs[0]]; dup {
				t.Errorf("MessageID %q is also that of %s", msgIDs[0], other)
			}
			ids[msgIDs[0]] = rel
		})
	}
}

func TestNewWebhookValidates(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name    string
		cfg     WebhookConfig
		wantErr string
	}{
		{name: "no queue", cfg: WebhookConfig{Key: testWebhookKey}, wantErr: "queue"},
		{name: "no key", cfg: WebhookConfig{Queue: &webhookQueue{}}, wantErr: "key"},
		{name: "bad header name", cfg: WebhookConfig{Queue: &webhookQueue{}, Key: testWebhookKey, Header: "x key"}, wantErr: "header name"},
		{name: "valid", cfg: WebhookConfig{Queue: &webhookQueue{}, Key: testWebhookKey, Header: "x-fhirsync-key"}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			_, err := NewWebhook(tc.cfg)
			if (err != nil) != (tc.wantErr != "") || (err != nil && !strings.Contains(err.Error(), tc.wantErr)) {
				t.Fatalf("err = %v, want one containing %q", err, tc.wantErr)
			}
		})
	}
}
