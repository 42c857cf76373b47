package agent_test

import (
	"context"
	"fmt"
	"net/http"
	"testing"
	"time"

	"gorm.io/gorm"

	"github.com/fhirsync/fhirsync/agent"
	"github.com/fhirsync/fhirsync/agent/crm"
	"github.com/fhirsync/fhirsync/agent/fhir"
	"github.com/fhirsync/fhirsync/logs"
	"github.com/fhirsync/fhirsync/queues"
)

// outage is how long the CRM answers 503 (the number).
const outage = 60 * time.Second

// TestTargetOutage takes the CRM down with 503s for a minute in the middle
// of a sync. Everything is delivered once it is back; nothing is
// dead-lettered while it is down; the failed tries show in the decisions.
func TestTargetOutage(t *testing.T) {
	if testing.Short() {
		t.Skip("the outage lasts a minute; skipped with -short")
	}
	t.Parallel()
	eachEchoMode(t, func(t *testing.T, db *gorm.DB, bypass bool) {
		t.Parallel() // every run waits out its minute with the others
		// The defaults' ten attempts from 2s up to 5m outlast a minute;
		// a shorter base keeps the test quick without changing that. The
		// CRM client does not retry on its own, so every try is the
		// agent's and is recorded.
		e := startEnv(t, db, agent.Config{Workers: 4, RetryBase: 500 * time.Millisecond, RetryMax: 30 * time.Second, BaseKey: testBaseKey},
			envOptions{noPoller: true, crmRetries: -1, bypassOwnSteps: bypass})
		ctx := context.Background()

		// The seeded organizations and practitioners, then 300 patients
		// without lookups (created in FHIR as a registration would).
		var msgs []string
		for _, typ := range []string{"Organization", "Practitioner"} {
			for _, id := range allIDs(t, e, typ) {
				msgs = append(msgs, e.notify(t, queues.SideFHIR, typ, id, "", queues.EventChanged))
			}
		}
		e.quiet(t)
		var patients []string
		for i := range 300 {
			p, err := e.fhir.Create(ctx, fhir.Resource{"resourceType": "Patient", "gender": "female",
				"name": []any{map[string]any{"use": "official", "family": fmt.Sprintf("Outage%03d", i)}}})
			if err != nil {
				t.Fatal(err)
			}
			patients = append(patients, p.ID())
		}
		var patientMsgs []string
		for _, id := range patients {
			patientMsgs = append(patientMsgs, e.notify(t, queues.SideFHIR, "Patient", id, "", queues.EventCreated))
		}
		msgs = append(msgs, patientMsgs...)
		// Mid-sync: once some patients are in the CRM, it goes down.
		deadline := time.Now().Add(30 * time.Second)
		for e.crmSrv.Count("contact") < 60+20 {
			if time.Now().After(deadline) {
				t.Fatalf("the sync did not get going: %d contacts", e.crmSrv.Count("contact"))
			}
			time.Sleep(5 * time.Millisecond)
		}
		down := time.Now()
		e.crmSrv.FailFor(http.StatusServiceUnavailable, outage)
		before := e.crmSrv.Count("contact")
		if before >= 50+len(patients) {
			t.Fatalf("the sync finished before the outage began; nothing to prove")
		}

		// Everything arrives after the outage.
		var last logs.Decision
		for _, id := range msgs {
			d := e.byMessageWithin(t, id, "created", outage+90*time.Second)
			if d.Time.After(last.Time) {
				last = d
			}
		}
		if last.Time.Sub(down) < outage-time.Second {
			t.Errorf("the last record was delivered %s after the outage began; the outage lasted %s", last.Time.Sub(down), outage)
		}
		e.quiet(t)
		for _, id := range patients {
			if _, err := e.crmHuman.Retrieve(ctx, crm.ByKey("contacts", "msemr_azurefhirid", id)); err != nil {
				t.Errorf("patient %s has no contact: %v", id, err)
			}
		}

		// Nothing was given up on.
		fd, err1 := e.fhirQ.Depth(ctx)
		cd, err2 := e.crmQ.Depth(ctx)
		if err1 != nil || err2 != nil || fd.DeadLetter != 0 || cd.DeadLetter != 0 {
			t.Errorf("dead-letter depth fhir %+v crm %+v (%v, %v), want none", fd, cd, err1, err2)
		}
		dead, err := e.logs.Search(ctx, logs.Filter{Outcome: logs.OutcomeDeadLettered}, "", 10)
		if err != nil || len(dead.Decisions) > 0 {
			t.Errorf("dead-lettered decisions: %+v, %v", dead.Decisions, err)
		}

		// The tries during the outage are in the decisions: retries fold
		// into each message's one decision, which lists every failed try
		// (class http_503, retryable) before its successful one, so no
		// failed decision is left once everything went through. (Before
		// the outage, organizations wait for their parent organization:
		// those tries are unresolved lookups, not the outage's.)
		failed, err := e.logs.Search(ctx, logs.Filter{Outcome: logs.OutcomeFailed, Direction: logs.FHIRToCRM, From: down}, "", logs.MaxPageSize)
		if err != nil {
			t.Fatal(err)
		}
		for _, d := range failed.Decisions {
			t.Errorf("failed decision %s (%s) left beside its message's final decision", d.MessageID, d.Reason)
		}
		retried := 0
		for _, id := range patientMsgs {
			d := e.byMessage(t, id, "created")
			if len(d.Attempts) < 2 {
				continue
			}
			retried++
			for i, a := range d.Attempts[:len(d.Attempts)-1] {
				if a.ErrorClass != "http_503" || !a.Retryable {
					t.Errorf("message %s attempt %d = %+v, want a retryable http_503", id, i+1, a)
				}
			}
			if a := d.Attempts[len(d.Attempts)-1]; a.ErrorClass != "" {
				t.Errorf("message %s: final attempt %+v, want a success", id, a)
			}
			if len(d.Attempts) > 9 {
				t.Errorf("message %s took %d attempts; the outage should need far fewer than the maximum of 10", id, len(d.Attempts))
			}
		}
		// Every patient not yet in the CRM when it went down waited for it.
		if want := 50 + len(patients) - before - 4; retried < want {
			t.Errorf("%d messages show retried attempts, want at least the %d still pending at the outage (less those in flight)", retried, want)
		}
		t.Logf("%d of %d records were still to sync when the CRM went down; %d decisions show the 503 attempts",
			50+len(patients)-before, 50+len(patients), retried)
		// The writes retried after the outage still named the endpoint's
		// steps.
		if bypass {
			e.checkBypassed(t, 0)
		}
	})
}

// byMessageWithin is byMessage with a longer wait.
func (e *env) byMessageWithin(t *testing.T, id string, reason logs.ReasonCode, d time.Duration) logs.Decision {
	t.Helper()
	deadline := time.Now().Add(d)
	for time.Now().Before(deadline) {
		page, err := e.logs.Search(context.Background(), logs.Filter{MessageID: id, Reason: reason}, "", 1)
		if err != nil {
			t.Fatal(err)
		}
		if len(page.Decisions) > 0 {
			return page.Decisions[0]
		}
		time.Sleep(200 * time.Millisecond)
	}
	return e.byMessage(t, id, reason)
}
