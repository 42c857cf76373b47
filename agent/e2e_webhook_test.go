package agent_test

import (
	"context"
	"net/http"
	"net/http/httptest"
	"sync"
	"testing"
	"time"

	"gorm.io/gorm"

	"github.com/fhirsync/fhirsync/agent"
	"github.com/fhirsync/fhirsync/agent/crm"
	"github.com/fhirsync/fhirsync/logs"
	"github.com/fhirsync/fhirsync/queues"
	"github.com/fhirsync/fhirsync/queues/embedded"
	"github.com/fhirsync/fhirsync/sandbox/crmserver"
	"github.com/fhirsync/fhirsync/sandbox/synth"
	"github.com/fhirsync/fhirsync/storage/storagetest"
)

// webhookLog records what the receiver answered to the sandbox's posts.
type webhookLog struct {
	mu    sync.Mutex
	posts []webhookPost
}

type webhookPost struct {
	status          int
	entity, request string
	correlation     string
}

func (l *webhookLog) wrap(h http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		rec := &statusRecorder{ResponseWriter: w, status: http.StatusOK}
		h.ServeHTTP(rec, r)
		l.mu.Lock()
		l.posts = append(l.posts, webhookPost{status: rec.status, entity: r.Header.Get("x-ms-dynamics-entity-name"),
			request: r.Header.Get("x-ms-dynamics-request-name"), correlation: r.Header.Get("x-ms-correlation-request-id")})
		l.mu.Unlock()
	})
}

func (l *webhookLog) snapshot() []webhookPost {
	l.mu.Lock()
	defer l.mu.Unlock()
	return append([]webhookPost(nil), l.posts...)
}

type statusRecorder struct {
	http.ResponseWriter
	status int
}

func (r *statusRecorder) WriteHeader(code int) {
	r.status = code
	r.ResponseWriter.WriteHeader(code)
}

// TestEndToEndDataverseWebhook runs the CRM side through a webhook service
// endpoint instead of Service Bus: the sandbox CRM posts each context to
// the receiver over HTTP with the HttpHeader key, the receiver queues it on
// crm-changes, and the agent writes a care coordinator's change back to
// the Patient.
func TestEndToEndDataverseWebhook(t *testing.T) {
	t.Parallel()
	storagetest.Each(t, func(t *testing.T, db *gorm.DB) {
		const header, key = "x-fhirsync-key", "webhook-e2e-key-0123456789"
		var crmQ queues.Queue
		var hooks webhookLog
		e := startEnv(t, db, agent.Config{Workers: 4, RetryBase: 200 * time.Millisecond, RetryMax: time.Second}, envOptions{
			queue: func(t *testing.T, name string) queues.Queue {
				q, err := embedded.New(db, name, embedded.Options{LockDuration: 30 * time.Second, MaxDeliveryCount: 50})
				if err != nil {
					t.Fatal(err)
				}
				if name == "crm-changes" {
					crmQ = q
				}
				return q
			},
			crmOptions: func(o *crmserver.Options) {
				h, err := crm.NewWebhook(crm.WebhookConfig{Queue: crmQ, Header: header, Key: key})
				if err != nil {
					t.Fatal(err)
				}
				mux := http.NewServeMux()
				mux.Handle("/hooks/dataverse", hooks.wrap(h))
				srv := httptest.NewServer(mux)
				t.Cleanup(srv.Close)
				// The webhook replaces the Service Bus endpoint.
				o.Endpoint = nil
				o.Webhook = crmserver.WebhookTarget{URL: srv.URL + "/hooks/dataverse", Header: header, Key: key}
			},
		})
		ctx := context.Background()

		patientID := synth.PatientID(0)
		e.waitDecision(t, patientID, logs.FHIRToCRM, "created")
		contact, err := e.crmHuman.Retrieve(ctx, crm.ByKey("contacts", "msemr_azurefhirid", patientID))
		if err != nil {
			t.Fatalf("the contact was not created: %v", err)
		}
		contactID := contact.String("contactid")
		// The contact fhirsync wrote comes back through the webhook and is
		// recognised as the agent's own write.
		e.waitDecision(t, contactID, logs.CRMToFHIR, "own_write_echo")

		// A care coordinator changes the contact's email; the webhook
		// reports it and the agent writes it back to the Patient.
		if _, err := e.crmHuman.Upsert(ctx, crm.ByID("contacts", contactID), crm.Record{"emailaddress1": "webhook-set@example.org"},
			crm.UpsertOptions{Mode: crm.UpdateOnly}); err != nil {
			t.Fatal(err)
		}
		d := e.waitDecision(t, contactID, logs.CRMToFHIR, "updated")
		if d.Outcome != logs.OutcomeSent {
			t.Fatalf("write-back decision = %+v, want outcome sent", d)
		}
		after, err := e.fhir.Read(ctx, "Patient", patientID)
		if err != nil {
			t.Fatal(err)
		}
		if !hasEmail(after, "webhook-set@example.org") {
			t.Errorf("the Patient lacks the email set in the CRM")
		}

		posts := hooks.snapshot()
		updates := 0
		for _, p := range posts {
			if p.status != http.StatusAccepted {
				t.Errorf("the receiver answered a post %d, want 202", p.status)
			}
			if p.entity == "" || p.request == "" || p.correlation == "" {
				t.Errorf("a post lacks the documented headers: %+v", p)
			}
			if p.entity == "contact" && p.request == "Update" {
				updates++
			}
		}
		if updates == 0 {
			t.Errorf("no contact Update was posted to the webhook; posts: %+v", posts)
		}
		// The sandbox counts a post once its Send returns, just after the
		// receiver answered it: wait for the count to catch up.
		st := e.crmSrv.Stats()
		for deadline := time.Now().Add(5 * time.Second); st.EndpointSent < int64(len(posts)) && time.Now().Before(deadline); st = e.crmSrv.Stats() {
			time.Sleep(10 * time.Millisecond)
		}
		if st.EndpointSent < int64(len(posts)) || st.EndpointFailed != 0 {
			t.Errorf("sandbox endpoint stats = %+v after %d webhook posts", st, len(posts))
		}
	})
}
