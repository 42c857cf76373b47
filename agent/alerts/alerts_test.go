package alerts

import (
	"context"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"gorm.io/gorm"

	"github.com/fhirsync/fhirsync/logs"
	"github.com/fhirsync/fhirsync/queues"
	"github.com/fhirsync/fhirsync/queues/embedded"
	"github.com/fhirsync/fhirsync/storage/storagetest"
)

// receiver is a local webhook receiver on the loopback interface.
type receiver struct {
	*httptest.Server
	mu     sync.Mutex
	bodies map[string][][]byte // by path
}

func newReceiver(t *testing.T) *receiver {
	r := &receiver{bodies: map[string][][]byte{}}
	r.Server = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		b, _ := io.ReadAll(req.Body)
		if req.Method != http.MethodPost || req.Header.Get("Content-Type") != "application/json" {
			http.Error(w, "want a JSON POST", http.StatusBadRequest)
			return
		}
		r.mu.Lock()
		r.bodies[req.URL.Path] = append(r.bodies[req.URL.Path], b)
		r.mu.Unlock()
		_, _ = io.WriteString(w, "ok")
	}))
	t.Cleanup(r.Close)
	return r
}

func (r *receiver) got(path string) [][]byte {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([][]byte(nil), r.bodies[path]...)
}

// Values that stand for patient data: they go into the sync log and the
// queue as a record id and a business key, and must never reach a webhook.
const (
	canaryID  = "pat-canary-4471"
	canaryMRN = "MRN-CANARY-88231"
)

func TestAlertFiresOnceResolvesOnceWithoutPatientData(t *testing.T) {
	storagetest.Each(t, func(t *testing.T, db *gorm.DB) {
		ctx := context.Background()
		rcv := newReceiver(t)
		now := time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)
		store, err := logs.New(db, logs.Config{KeySecret: "c2VjcmV0LXNlY3JldC1zZWNyZXQtMTIzNA=="}, nil)
		if err != nil {
			t.Fatal(err)
		}
		var lags sync.Map
		svc, err := New(Config{
			Rules: []Rule{
				{Name: "dead-letters", Kind: KindDeadLetterRate, Threshold: 1, Window: 5 * time.Minute, Webhook: "slack"},
				{Name: "lag", Kind: KindLag, Threshold: 300, Webhook: "teams"},
			},
			Webhooks: []Webhook{
				{Name: "slack", URL: rcv.URL + "/slack"},
				{Name: "teams", URL: rcv.URL + "/teams", Format: FormatTeamsWorkflow},
			},
			Now: func() time.Time { return now },
		}, Deps{DB: db, Logs: store, OnLag: func(m map[string]time.Duration) {
			for feed, age := range m {
				lags.Store(feed, age)
			}
		}})
		if err != nil {
			t.Fatal(err)
		}
		evaluate := func() {
			t.Helper()
			if err := svc.Evaluate(ctx); err != nil {
				t.Fatal(err)
			}
		}

		// Nothing wrong yet: nothing is sent.
		evaluate()
		if n := len(rcv.got("/slack")) + len(rcv.got("/teams")); n != 0 {
			t.Fatalf("%d notices before anything happened", n)
		}

		// A dead-lettered decision about a patient, and a change waiting
		// ten minutes in the queue.
		d := &logs.Decision{Time: now.Add(-time.Minute), Direction: logs.FHIRToCRM, EntityMap: "patients",
			Source: logs.Ref{Type: "Patient", ID: canaryID}, Outcome: logs.OutcomeDeadLettered, Reason: "mapping_error",
			BusinessKeys: []logs.BusinessKey{{Name: "mrn", Value: canaryMRN}}, Message: "Mapping failed at birthDate."}
		if err := store.Write(ctx, d); err != nil {
			t.Fatal(err)
		}
		q, err := embedded.New(db, "fhir-changes", embedded.Options{})
		if err != nil {
			t.Fatal(err)
		}
		msg, err := queues.Notice{V: queues.NoticeVersion, Side: queues.SideFHIR, Type: "Patient", ID: canaryID,
			Event: queues.EventUpdated, Origin: "history-poll", Version: "3", ChangedAt: now.Add(-10 * time.Minute)}.Message()
		if err != nil {
			t.Fatal(err)
		}
		if err := q.Send(ctx, msg); err != nil {
			t.Fatal(err)
		}

		for range 3 {
			evaluate()
		}
		if got := rcv.got("/slack"); len(got) != 1 || !strings.Contains(string(got[0]), "[FIRING]") {
			t.Fatalf("slack notices after three evaluations = %q, want one firing", got)
		}
		if got := rcv.got("/teams"); len(got) != 1 || !strings.Contains(string(got[0]), "[FIRING]") {
			t.Fatalf("teams notices after three evaluations = %q, want one firing", got)
		}
		if v, _ := lags.Load("history-poll/Patient"); v != 10*time.Minute {
			t.Errorf("feed lag reported = %v, want 10m", v)
		}

		// The decision ages out of the window and the change is processed.
		now = now.Add(6 * time.Minute)
		got, err := q.Receive(ctx, 1, time.Second)
		if err != nil || len(got) != 1 {
			t.Fatalf("receiving the waiting change: %v, %d", err, len(got))
		}
		if err := q.Complete(ctx, got[0]); err != nil {
			t.Fatal(err)
		}
		for range 3 {
			evaluate()
		}
		for _, path := range []string{"/slack", "/teams"} {
			got := rcv.got(path)
			if len(got) != 2 || !strings.Contains(string(got[1]), "[RESOLVED]") {
				t.Fatalf("%s notices = %q, want one firing then one resolved", path, got)
			}
			for _, b := range got {
				if !json.Valid(b) {
					t.Errorf("%s: body is not JSON: %s", path, b)
				}
				for _, phi := range []string{canaryID, canaryMRN, "birthDate"} {
					if strings.Contains(string(b), phi) {
						t.Errorf("%s: notice carries %q: %s", path, phi, b)
					}
				}
			}
		}
		var slack map[string]any
		if err := json.Unmarshal(rcv.got("/slack")[0], &slack); err != nil || len(slack) != 1 || slack["text"] == "" {
			t.Errorf("slack body = %v (%v), want only a text field", slack, err)
		}
		var teams struct {
			Type        string `json:"type"`
			Attachments []struct {
				ContentType string `json:"contentType"`
				Content     struct {
					Type string `json:"type"`
					Body []struct {
						Text string `json:"text"`
					} `json:"body"`
				} `json:"content"`
			} `json:"attachments"`
		}
		if err := json.Unmarshal(rcv.got("/teams")[0], &teams); err != nil || teams.Type != "message" || len(teams.Attachments) != 1 ||
			teams.Attachments[0].ContentType != "application/vnd.microsoft.card.adaptive" || teams.Attachments[0].Content.Type != "AdaptiveCard" ||
			len(teams.Attachments[0].Content.Body) != 1 || !strings.Contains(teams.Attachments[0].Content.Body[0].Text, "lag") {
			t.Errorf("teams body = %+v (%v), want a message with one Adaptive Card", teams, err)
		}

		hist, err := svc.History(ctx, "dead-letters", 10)
		if err != nil {
			t.Fatal(err)
		}
		if len(hist) != 2 || hist[0].State != StateResolved || hist[1].State != StateFiring || hist[1].Value != 1 ||
			hist[0].DeliveredAt == nil || hist[1].DeliveredAt == nil {
			t.Errorf("history = %+v, want firing (value 1) then resolved, both delivered", hist)
		}
		if f, err := svc.Firing(ctx); err != nil || len(f) != 0 {
			t.Errorf("firing after resolution = %v, %v", f, err)
		}
	})
}

// TestAlertDeliveryFailureIsRecordedAndRetried: a notice the webhook
// refuses is recorded with the status (never the URL) and offered again
// at the next evaluation; it stays one event.
func TestAlertDeliveryFailureIsRecordedAndRetried(t *testing.T) {
	db := storagetest.Open(t, "sqlite")
	ctx := context.Background()
	var mu sync.Mutex
	calls := 0
	flaky := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		mu.Lock()
		defer mu.Unlock()
		calls++
		if calls == 1 {
			http.Error(w, "no", http.StatusForbidden)
		}
	}))
	defer flaky.Close()
	store, err := logs.New(db, logs.Config{}, nil)
	if err != nil {
		t.Fatal(err)
	}
	svc, err := New(Config{Webhooks: []Webhook{{Name: "ops", URL: flaky.URL + "/secret-token", Format: FormatJSON}}},
		Deps{DB: db, Logs: store})
	if err != nil {
		t.Fatal(err)
	}
	if err := svc.SaveRule(ctx, Rule{Name: "stopped", Kind: KindFeedStopped, Threshold: 0, Webhook: "ops"}, "admin@example.org"); err != nil {
		t.Fatal(err)
	}
	if err := db.Exec("INSERT INTO feed_checkpoints (feed, position, updated_at) VALUES ('fhir-history:Patient', '{}', ?)", time.Now().UTC().Add(-time.Hour)).Error; err != nil {
		t.Fatal(err)
	}
	if err := svc.Evaluate(ctx); err != nil {
		t.Fatal(err)
	}
	h, err := svc.History(ctx, "", 10)
	if err != nil {
		t.Fatal(err)
	}
	if len(h) != 1 || h[0].State != StateFiring || h[0].DeliveredAt != nil || !strings.Contains(h[0].DeliveryError, "HTTP 403") ||
		strings.Contains(h[0].DeliveryError, "secret-token") {
		t.Fatalf("history = %+v, want one undelivered firing that names the status, not the URL", h)
	}
	for range 2 {
		if err := svc.Evaluate(ctx); err != nil {
			t.Fatal(err)
		}
	}
	if h, err = svc.History(ctx, "", 10); err != nil || len(h) != 1 || h[0].DeliveredAt == nil || h[0].DeliveryError != "" {
		t.Errorf("after the next evaluations: %+v, %v; want the one event, delivered", h, err)
	}
	mu.Lock()
	defer mu.Unlock()
	if calls != 2 {
		t.Errorf("%d posts, want the refused one and one more", calls)
	}
}

// TestOnlyTheLeaseHolderEvaluates: two processes run the evaluator on one
// database; the rule's notice is sent once.
func TestOnlyTheLeaseHolderEvaluates(t *testing.T) {
	db := storagetest.Open(t, "sqlite")
	rcv := newReceiver(t)
	store, err := logs.New(db, logs.Config{}, nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := db.Exec("INSERT INTO feed_checkpoints (feed, position, updated_at) VALUES ('crm-tracking:contact', '{}', ?)", time.Now().UTC().Add(-time.Hour)).Error; err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	for _, holder := range []string{"replica-a", "replica-b"} {
		svc, err := New(Config{Holder: holder, Every: 50 * time.Millisecond,
			Rules:    []Rule{{Name: "stopped", Kind: KindFeedStopped, Threshold: 60, Webhook: "ops"}},
			Webhooks: []Webhook{{Name: "ops", URL: rcv.URL + "/ops"}}}, Deps{DB: db, Logs: store})
		if err != nil {
			t.Fatal(err)
		}
		wg.Go(func() { _ = svc.Run(ctx) })
	}
	deadline := time.Now().Add(10 * time.Second)
	for len(rcv.got("/ops")) == 0 && time.Now().Before(deadline) {
		time.Sleep(20 * time.Millisecond)
	}
	time.Sleep(300 * time.Millisecond) // several more ticks of both
	cancel()
	wg.Wait()
	if n := len(rcv.got("/ops")); n != 1 {
		t.Errorf("%d notices from two replicas, want 1", n)
	}
	var holders []string
	if err := db.Raw("SELECT holder FROM leases WHERE name = 'alerts'").Scan(&holders).Error; err != nil || len(holders) > 1 {
		t.Errorf("lease holders = %v, %v", holders, err)
	}
}

func TestRuleValidate(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name    string
		rule    Rule
		wantErr string
	}{
		{"ok", Rule{Name: "dl", Kind: KindDeadLetterRate, Threshold: 1, Window: time.Minute, Webhook: "ops"}, ""},
		{"bad name", Rule{Name: "a b", Kind: KindLag}, "name"},
		{"bad kind", Rule{Name: "x", Kind: "cpu"}, "kind"},
		{"negative threshold", Rule{Name: "x", Kind: KindLag, Threshold: -1}, "threshold"},
		{"budget over 100", Rule{Name: "x", Kind: KindBudgetExhausted, Threshold: 101}, "percentage"},
		{"short window", Rule{Name: "x", Kind: KindAuthFailures, Window: time.Second}, "window"},
		{"unknown webhook", Rule{Name: "x", Kind: KindLag, Webhook: "nope"}, "webhook"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := tt.rule.Validate([]string{"ops"})
			if (err == nil) != (tt.wantErr == "") || (err != nil && !strings.Contains(err.Error(), tt.wantErr)) {
				t.Errorf("Validate() = %v, want error containing %q", err, tt.wantErr)
			}
		})
	}
}

func TestBudgetsFromMetrics(t *testing.T) {
	t.Parallel()
	reg := prometheus.NewRegistry()
	req := prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "fhirsync_crm_budget_requests_remaining", Help: "h"}, []string{"user"})
	tim := prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "fhirsync_crm_budget_time_remaining_seconds", Help: "h"}, []string{"user"})
	reg.MustRegister(req, tim)
	req.WithLabelValues("user1").Set(4500) // 25% used
	tim.WithLabelValues("user1").Set(300)  // 75% used
	req.WithLabelValues("user2").Set(0)    // exhausted
	b, err := Budgets(reg)
	if err != nil {
		t.Fatal(err)
	}
	if len(b) != 2 || b[0].User != "user1" || b[0].UsedPercent != 75 || b[1].UsedPercent != 100 || b[1].TimeLeftSeconds != -1 {
		t.Errorf("Budgets = %+v", b)
	}
}
