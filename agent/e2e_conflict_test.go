package agent_test

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net/http"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/fhirsync/fhirsync/agent"
	"github.com/fhirsync/fhirsync/agent/crm"
	"github.com/fhirsync/fhirsync/logs"
	"github.com/fhirsync/fhirsync/maps"
	"github.com/fhirsync/fhirsync/queues"
	"github.com/fhirsync/fhirsync/sandbox/synth"
	"github.com/fhirsync/fhirsync/storage"
	"github.com/fhirsync/fhirsync/storage/storagetest"
)

// editBeforeWrite is the agent's CRM transport in these tests: before
// each of the agent's first n conditional updates (If-Match with an ETag)
// of a contact, a coordinator edits the same contact's job title through
// their own client, so the agent's ETag is stale and the sandbox CRM
// answers 412, as Dataverse does ("Perform conditional operations using
// the Web API", Apply optimistic concurrency).
type editBeforeWrite struct {
	next   http.RoundTripper
	human  func() *crm.Client
	left   atomic.Int32
	edits  atomic.Int32
	titles chan string
}

func (t *editBeforeWrite) RoundTrip(r *http.Request) (*http.Response, error) {
	for _, id := range conditionalContactUpdates(r) {
		if t.left.Add(-1) < 0 {
			break
		}
		title := fmt.Sprintf("Coordinator %d", t.edits.Add(1))
		if _, err := t.human().Upsert(r.Context(), crm.ByID("contacts", id), crm.Record{"jobtitle": title}, crm.UpsertOptions{Mode: crm.UpdateOnly}); err != nil {
			return nil, fmt.Errorf("the coordinator's edit failed: %w", err)
		}
		select {
		case t.titles <- title:
		default:
		}
	}
	return t.next.RoundTrip(r)
}

// conditionalContactUpdates lists the contacts r updates with If-Match on
// an ETag: r itself, or the requests inside a $batch.
func conditionalContactUpdates(r *http.Request) []string {
	one := func(method, path, ifMatch string) (string, bool) {
		if method != http.MethodPatch || ifMatch == "" || ifMatch == "*" || !strings.Contains(path, "/contacts(") {
			return "", false
		}
		path, _, _ = strings.Cut(path, "?")
		return path[strings.LastIndex(path, "(")+1 : len(path)-1], true
	}
	if !strings.HasSuffix(r.URL.Path, "/$batch") {
		if id, ok := one(r.Method, r.URL.Path, r.Header.Get("If-Match")); ok {
			return []string{id}
		}
		return nil
	}
	body, err := io.ReadAll(r.Body)
	if err != nil {
		return nil
	}
	r.Body = io.NopCloser(bytes.NewReader(body))
	var ids []string
	for _, part := range strings.Split(string(body), "\r\n\r\n") {
		line, headers, _ := strings.Cut(part, "\r\n")
		f := strings.Fields(line)
		if len(f) != 3 || f[2] != "HTTP/1.1" {
			continue
		}
		ifMatch := ""
		for _, h := range strings.Split(headers, "\r\n") {
			if v, ok := strings.CutPrefix(h, "If-Match: "); ok {
				ifMatch = v
			}
		}
		if id, ok := one(f[0], f[1], ifMatch); ok {
			ids = append(ids, id)
		}
	}
	return ids
}

// TestConflictIsRetriedAfterReRead: a contact changed between the agent's
// read and its write (a real concurrent edit, answered 412 by the sandbox
// CRM) is not dead-lettered; the next attempt re-reads the contact and its
// write lands, keeping the coordinator's edit. When every attempt loses
// the race, the message ends dead-lettered as target_conflict.
func TestConflictIsRetriedAfterReRead(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name         string
		interfere    int32 // conditional updates preceded by a coordinator's edit
		wantFinal    logs.ReasonCode
		wantOutcome  logs.Outcome
		wantConflict int // deliveries that failed with target_conflict before the final one (folded into it)
		wantLost     int // writes refused with 412, each listed as an attempt
		wantLanded   bool
	}{
		// A lost race is re-read, merged and written again in the same
		// delivery (agent.Config.StaleRetries, here 2): one loss costs no
		// redelivery.
		{name: "one lost race, then the write lands", interfere: 1, wantFinal: "updated", wantOutcome: logs.OutcomeSent, wantConflict: 0, wantLost: 1, wantLanded: true},
		// Three deliveries of three writes each, all lost.
		{name: "every attempt loses the race", interfere: 1000, wantFinal: "target_conflict", wantOutcome: logs.OutcomeDeadLettered, wantConflict: 2, wantLost: 9},
	}
	for _, tt := range tests {
		for _, bypass := range []bool{false, true} {
			name := tt.name + "/echoed"
			if bypass {
				name = tt.name + "/bypassed"
			}
			t.Run(name, func(t *testing.T) {
				t.Parallel()
				db := storagetest.Open(t, storage.SQLite)
				ctx := context.Background()
				tr := &editBeforeWrite{titles: make(chan string, 1)}
				var e *env
				tr.human = func() *crm.Client { return e.crmHuman }
				e = startEnv(t, db, agent.Config{Workers: 2, MaxAttempts: 3, StaleRetries: 2, RetryBase: 100 * time.Millisecond, RetryMax: 300 * time.Millisecond},
					envOptions{noPoller: true, crmRetries: -1, bypassOwnSteps: bypass, crmTransport: func(next http.RoundTripper) http.RoundTripper { tr.next = next; return tr },
						// The coordinator's edits stay in the CRM: without the
						// write-back, a lost race is all these runs show (the
						// three-way merge of edits on both sides is another
						// test's business).
						tweak: func(doc *maps.Document) {
							for i := range doc.EntityMaps {
								doc.EntityMaps[i].CRMToFHIR.Enabled = false
							}
						}})
				for _, typ := range []string{"Organization", "Practitioner"} {
					for _, id := range allIDs(t, e, typ) {
						e.notify(t, queues.SideFHIR, typ, id, "", queues.EventChanged)
					}
					e.quiet(t)
				}
				pid := synth.PatientID(0)
				e.byMessage(t, e.notify(t, queues.SideFHIR, "Patient", pid, "", queues.EventChanged), "created")
				e.quiet(t)
				contact := contactOf(t, e, pid)

				// A clinician changes the home phone in FHIR; the coordinator
				// edits the contact between the agent's read and its write.
				p, err := e.fhir.Read(ctx, "Patient", pid)
				if err != nil {
					t.Fatal(err)
				}
				const phone = "555-0142"
				p["telecom"] = []any{map[string]any{"system": "phone", "use": "home", "value": phone}}
				if _, err := e.fhir.Update(ctx, p, ""); err != nil {
					t.Fatal(err)
				}
				tr.left.Store(tt.interfere)
				msg := e.notify(t, queues.SideFHIR, "Patient", pid, "", queues.EventChanged)
				final := e.finalDecision(t, msg, tt.wantOutcome)
				if final.Reason != tt.wantFinal {
					t.Fatalf("final decision %s/%s (%s), want %s", final.Outcome, final.Reason, final.Message, tt.wantOutcome)
				}
				tr.left.Store(0)

				// Retries fold into one decision: the message has only its
				// final decision, whose attempts show each delivery.
				all := e.messageDecisions(t, msg)
				if len(all) != 1 {
					t.Errorf("the message has %d decisions (%v), want its final one only", len(all), reasons(all))
				}
				for _, d := range all {
					if d.Outcome == logs.OutcomeDeadLettered && d.Reason != "target_conflict" {
						t.Errorf("dead-lettered as %s (%s): a lost race is target_conflict", d.Reason, d.Message)
					}
				}
				// Each delivery ends with an attempt; the failed deliveries'
				// last attempts are retryable http_412 (StaleRetries+1 of them
				// per delivery).
				if deliveries := len(final.Attempts) / 3; tt.wantConflict > 0 && deliveries != tt.wantConflict+1 {
					t.Errorf("final decision lists %d attempts: %d deliveries of 3, want %d", len(final.Attempts), deliveries, tt.wantConflict+1)
				}
				want := tt.wantLost + 1
				if !tt.wantLanded {
					want = tt.wantLost // the last lost write is the final attempt
				}
				if len(final.Attempts) != want {
					t.Fatalf("final decision records %d attempts, want %d: %+v", len(final.Attempts), want, final.Attempts)
				}
				for i, a := range final.Attempts[:tt.wantLost] {
					if a.ErrorClass != "http_412" || !a.Retryable {
						t.Errorf("attempt %d: class %q retryable %v, want a retryable http_412", i+1, a.ErrorClass, a.Retryable)
					}
				}

				rec, err := e.crmHuman.Retrieve(ctx, crm.ByID("contacts", contact), "telephone2", "jobtitle")
				if err != nil {
					t.Fatal(err)
				}
				if got := rec.String("telephone2") == phone; got != tt.wantLanded {
					t.Errorf("home phone in the CRM = %q; landed %v, want %v", rec.String("telephone2"), got, tt.wantLanded)
				}
				if want := fmt.Sprintf("Coordinator %d", tr.edits.Load()); rec.String("jobtitle") != want {
					t.Errorf("job title = %q, want the coordinator's last edit %q", rec.String("jobtitle"), want)
				}
				if tt.wantLanded && final.Target.Version != rec.ETag() && rec.ETag() != "" {
					// the write-back of the coordinator's edit may move the
					// version on; the agent's write must still be the one
					// that set the phone
					t.Logf("contact version moved on after the agent's write (%s → %s)", final.Target.Version, rec.ETag())
				}
				// The coordinator's edits are posted; the agent's writes,
				// retried or not, are not.
				if bypass {
					e.quiet(t)
					e.checkBypassed(t, int64(tr.edits.Load()))
				}
			})
		}
	}
}

// finalDecision waits for the message's decision with the given outcome.
func (e *env) finalDecision(t *testing.T, id string, outcome logs.Outcome) logs.Decision {
	t.Helper()
	deadline := time.Now().Add(60 * time.Second)
	for time.Now().Before(deadline) {
		for _, d := range e.messageDecisions(t, id) {
			if d.Outcome == outcome {
				return d
			}
		}
		time.Sleep(50 * time.Millisecond)
	}
	t.Fatalf("message %s: no %s decision within 60s; saw %v", id, outcome, reasons(e.messageDecisions(t, id)))
	return logs.Decision{}
}

// messageDecisions returns every decision recorded for a message.
func (e *env) messageDecisions(t *testing.T, id string) []logs.Decision {
	t.Helper()
	page, err := e.logs.Search(context.Background(), logs.Filter{MessageID: id}, "", 50)
	if err != nil {
		t.Fatal(err)
	}
	return page.Decisions
}

func reasons(ds []logs.Decision) []string {
	var out []string
	for _, d := range ds {
		out = append(out, string(d.Outcome)+"/"+string(d.Reason))
	}
	return out
}
