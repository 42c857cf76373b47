package agent_test

import (
	"context"
	"fmt"
	"net/http"
	"net/url"
	"sort"
	"strings"
	"testing"
	"time"

	"gorm.io/gorm"

	"github.com/fhirsync/fhirsync/agent"
	"github.com/fhirsync/fhirsync/agent/crm"
	"github.com/fhirsync/fhirsync/agent/fhir"
	"github.com/fhirsync/fhirsync/logs"
	"github.com/fhirsync/fhirsync/maps"
	"github.com/fhirsync/fhirsync/queues"
	"github.com/fhirsync/fhirsync/sandbox/synth"
	"github.com/fhirsync/fhirsync/storage/storagetest"
)

// TestEveryReasonCodeEndToEnd drives the running agent against the sandbox
// endpoints into every reason code of the registry, one scenario each, and
// then checks that no registered code was left out.
func TestEveryReasonCodeEndToEnd(t *testing.T) {
	t.Parallel()
	storagetest.Each(t, func(t *testing.T, db *gorm.DB) {
		e := startEnv(t, db, agent.Config{Workers: 2, MaxAttempts: 3, RetryBase: 100 * time.Millisecond, RetryMax: 300 * time.Millisecond},
			envOptions{noPoller: true, crmRetries: -1, tweak: func(doc *maps.Document) {
				for i := range doc.EntityMaps {
					if doc.EntityMaps[i].Name == "observation" {
						off := false
						doc.EntityMaps[i].Enabled = &off
					}
				}
			}})
		ctx := context.Background()
		seen := map[logs.ReasonCode]bool{}
		mark := func(d logs.Decision) { seen[d.Reason] = true }

		// The seeded organizations, practitioners and patients, in
		// dependency order: created.
		var orgs []string
		for _, typ := range []string{"Organization", "Practitioner"} {
			for _, id := range allIDs(t, e, typ) {
				msg := e.notify(t, queues.SideFHIR, typ, id, "", queues.EventChanged)
				if typ == "Organization" {
					orgs = append(orgs, id)
					mark(e.byMessage(t, msg, "created"))
				}
			}
			e.quiet(t)
		}
		if len(orgs) < 2 {
			t.Fatalf("the sandbox holds %d organizations, the scenarios need 2", len(orgs))
		}
		for i := range 3 {
			mark(e.byMessage(t, e.notify(t, queues.SideFHIR, "Patient", synth.PatientID(i), "", queues.EventChanged), "created"))
		}
		e.quiet(t)
		// The CRM's service endpoint reported fhirsync's own creates.
		mark(e.waitDecision(t, contactOf(t, e, synth.PatientID(0)), logs.CRMToFHIR, "own_write_echo"))

		steps := []struct {
			name   string
			reason logs.ReasonCode
			run    func(t *testing.T) string // returns the message id to watch
			after  func(t *testing.T)
		}{
			{name: "nothing differs", reason: "unchanged", run: func(t *testing.T) string {
				return e.notify(t, queues.SideFHIR, "Patient", synth.PatientID(0), "", queues.EventChanged)
			}},
			{name: "a coordinator edits the CRM", reason: "updated", run: func(t *testing.T) string {
				id := contactOf(t, e, synth.PatientID(1))
				since := time.Now()
				if _, err := e.crmHuman.Upsert(ctx, crm.ByID("contacts", id), crm.Record{"emailaddress1": "e2e@example.org"}, crm.UpsertOptions{Mode: crm.UpdateOnly}); err != nil {
					t.Fatal(err)
				}
				return lastCRMMessage(t, e, id, since, "updated")
			}},
			{name: "a coordinator opts a contact out of sync", reason: "record_gate_off", run: func(t *testing.T) string {
				id := contactOf(t, e, synth.PatientID(1))
				since := time.Now()
				if _, err := e.crmHuman.Upsert(ctx, crm.ByID("contacts", id), crm.Record{"msemr_syncenabled": false, "emailaddress1": "opted-out@example.org"},
					crm.UpsertOptions{Mode: crm.UpdateOnly}); err != nil {
					t.Fatal(err)
				}
				return lastCRMMessage(t, e, id, since, "record_gate_off")
			}, after: func(t *testing.T) {
				p, err := e.fhir.Read(ctx, "Patient", synth.PatientID(1))
				if err != nil {
					t.Fatal(err)
				}
				if hasEmail(p, "opted-out@example.org") {
					t.Error("a contact whose gate is off was written back")
				}
			}},
			{name: "type without a map", reason: "no_entity_map", run: func(t *testing.T) string {
				return e.notify(t, queues.SideFHIR, "Device", "dev-1", "", queues.EventChanged)
			}},
			{name: "disabled map", reason: "map_disabled", run: func(t *testing.T) string {
				return e.notify(t, queues.SideFHIR, "Observation", "obs-1", "", queues.EventCreated)
			}},
			{name: "write-back off for encounters", reason: "direction_off", run: func(t *testing.T) string {
				return e.notify(t, queues.SideCRM, "msemr_encounter", "00000000-0000-0000-0000-000000000e01", "", queues.EventUpdated)
			}},
			{name: "deletes of organizations are not propagated", reason: "operation_off", run: func(t *testing.T) string {
				// An organization no patient refers to any more matters not.
				if err := e.fhir.Delete(ctx, "Organization", orgs[len(orgs)-1]); err != nil {
					t.Fatal(err)
				}
				return e.notify(t, queues.SideFHIR, "Organization", orgs[len(orgs)-1], "", queues.EventDeleted)
			}},
			{name: "entered-in-error encounter", reason: "filtered", run: func(t *testing.T) string {
				enc, err := e.fhir.Create(ctx, fhir.Resource{"resourceType": "Encounter", "status": "entered-in-error",
					"class":   map[string]any{"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "AMB"},
					"subject": map[string]any{"reference": "Patient/" + synth.PatientID(0)}})
				if err != nil {
					t.Fatal(err)
				}
				return e.notify(t, queues.SideFHIR, "Encounter", enc.ID(), "", queues.EventCreated)
			}},
			{name: "notice about an old version", reason: "stale_version", run: func(t *testing.T) string {
				return e.notify(t, queues.SideFHIR, "Patient", synth.PatientID(0), "0", queues.EventUpdated)
			}},
			{name: "record that never existed", reason: "source_gone", run: func(t *testing.T) string {
				return e.notify(t, queues.SideFHIR, "Patient", "no-such-patient", "", queues.EventUpdated)
			}},
			{name: "patient deleted in FHIR", reason: "deleted", run: func(t *testing.T) string {
				if err := e.fhir.Delete(ctx, "Patient", synth.PatientID(2)); err != nil {
					t.Fatal(err)
				}
				return e.notify(t, queues.SideFHIR, "Patient", synth.PatientID(2), "", queues.EventDeleted)
			}, after: func(t *testing.T) {
				if _, err := e.crmHuman.Retrieve(ctx, crm.ByKey("contacts", "msemr_azurefhirid", synth.PatientID(2))); err == nil {
					t.Error("the contact of the deleted patient still exists")
				}
			}},
			{name: "garbage on the queue", reason: "invalid_message", run: func(t *testing.T) string {
				if err := e.fhirQ.Send(ctx, queues.Message{ID: "garbage-1", Body: []byte(`{"v":1,"side":"fhir","type":`)}); err != nil {
					t.Fatal(err)
				}
				return "garbage-1"
			}},
			{name: "gender outside the value map", reason: "mapping_error", run: func(t *testing.T) string {
				p, err := e.fhir.Create(ctx, fhir.Resource{"resourceType": "Patient", "gender": "robot",
					"name": []any{map[string]any{"use": "official", "family": "Canary"}}})
				if err != nil {
					t.Fatal(err)
				}
				return e.notify(t, queues.SideFHIR, "Patient", p.ID(), "", queues.EventCreated)
			}},
			{name: "CRM refuses the request", reason: "target_rejected", run: func(t *testing.T) string {
				e.crmSrv.FailNext(1, http.StatusBadRequest)
				return e.notify(t, queues.SideFHIR, "Patient", synth.PatientID(0), "", queues.EventChanged)
			}},
			{name: "CRM forbids fhirsync", reason: "unauthorized", run: func(t *testing.T) string {
				e.crmSrv.FailNext(1, http.StatusForbidden)
				return e.notify(t, queues.SideFHIR, "Patient", synth.PatientID(0), "", queues.EventChanged)
			}},
			{name: "CRM throttles", reason: "throttled", run: func(t *testing.T) string {
				e.crmSrv.FailNext(1, http.StatusTooManyRequests)
				return e.notify(t, queues.SideFHIR, "Patient", synth.PatientID(0), "", queues.EventChanged)
			}},
			{name: "FHIR version moved under the write-back", reason: "target_conflict", run: func(t *testing.T) string {
				// A coordinator's edit goes to FHIR, whose next answer is 412.
				id := contactOf(t, e, synth.PatientID(0))
				e.fhirSrv.FailNext(1, http.StatusPreconditionFailed)
				since := time.Now()
				if _, err := e.crmHuman.Upsert(ctx, crm.ByID("contacts", id), crm.Record{"emailaddress1": "conflict@example.org"}, crm.UpsertOptions{Mode: crm.UpdateOnly}); err != nil {
					t.Fatal(err)
				}
				return lastCRMMessage(t, e, id, since, "target_conflict")
			}},
			{name: "FHIR server briefly down", reason: "unavailable", run: func(t *testing.T) string {
				e.fhirSrv.FailNext(1, http.StatusServiceUnavailable)
				return e.notify(t, queues.SideFHIR, "Patient", synth.PatientID(0), "", queues.EventChanged)
			}},
			{name: "FHIR server down for good", reason: "attempts_exhausted", run: func(t *testing.T) string {
				e.fhirSrv.SetOutage(http.StatusServiceUnavailable)
				return e.notify(t, queues.SideFHIR, "Patient", synth.PatientID(1), "", queues.EventChanged)
			}, after: func(t *testing.T) {
				e.fhirSrv.SetOutage(0)
				d, err := e.fhirQ.Depth(ctx)
				if err != nil || d.DeadLetter == 0 {
					t.Errorf("dead-letter depth = %+v, %v; want the exhausted message there", d, err)
				}
			}},
		}
		for _, st := range steps {
			e.quiet(t)
			id := st.run(t)
			d := e.byMessage(t, id, st.reason)
			if d.Message == "" || d.Outcome == "" {
				t.Errorf("%s: decision without a sentence or outcome: %+v", st.name, d)
			}
			mark(d)
			if st.after != nil {
				st.after(t)
			}
		}
		e.quiet(t)

		var missing []string
		for _, r := range logs.Reasons() {
			if !seen[r.Code] {
				missing = append(missing, string(r.Code))
			}
		}
		sort.Strings(missing)
		if len(missing) > 0 {
			t.Errorf("reason codes never produced end to end: %v", missing)
		}
	})
}

// allIDs lists the ids of every resource of a type in the FHIR sandbox.
func allIDs(t *testing.T, e *env, typ string) []string {
	t.Helper()
	ctx := context.Background()
	page, err := e.fhir.Search(ctx, typ, url.Values{"_count": {"100"}})
	if err != nil {
		t.Fatal(err)
	}
	var ids []string
	if err := e.fhir.Each(ctx, page, func(en fhir.Entry) error {
		if en.Resource != nil {
			ids = append(ids, en.Resource.ID())
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	return ids
}

// contactOf finds the CRM contact correlated with a FHIR patient.
func contactOf(t *testing.T, e *env, patientID string) string {
	t.Helper()
	rec, err := e.crmHuman.Retrieve(context.Background(), crm.ByKey("contacts", "msemr_azurefhirid", patientID))
	if err != nil {
		t.Fatalf("contact of %s: %v", patientID, err)
	}
	return rec.String("contactid")
}

// lastCRMMessage waits for the decision with the given reason about a
// contact made after since — the service endpoint's message about an edit
// the test just made — and returns its message id.
func lastCRMMessage(t *testing.T, e *env, contactID string, since time.Time, reason logs.ReasonCode) string {
	t.Helper()
	deadline := time.Now().Add(60 * time.Second)
	for time.Now().Before(deadline) {
		page, err := e.logs.Search(context.Background(), logs.Filter{Record: contactID, Direction: logs.CRMToFHIR, From: since}, "", 20)
		if err == nil {
			for _, d := range page.Decisions {
				if d.Reason == reason {
					return d.MessageID
				}
			}
		}
		time.Sleep(50 * time.Millisecond)
	}
	page, _ := e.logs.Search(context.Background(), logs.Filter{Record: contactID}, "", 20)
	var seen []string
	for _, d := range page.Decisions {
		seen = append(seen, fmt.Sprintf("%s %s %s/%s(%s)", d.Time.Format("15:04:05.000"), d.Direction, d.Outcome, d.Reason, d.Message))
	}
	t.Fatalf("no %s decision about contact %s after %s; its decisions:\n%s", reason, contactID, since.Format("15:04:05.000"), strings.Join(seen, "\n"))
	return ""
}
