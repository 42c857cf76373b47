package agent_test

import (
	"context"
	"encoding/base64"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"slices"
	"sort"
	"strings"
	"sync/atomic"
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
	// The installation's key: with it the agent keeps each pair's base
	// state, which the conflict and delete scenarios need.
	key, err := base64.StdEncoding.DecodeString("ZTJlLXRlc3Qta2V5LXNlY3JldA==")
	if err != nil {
		t.Fatal(err)
	}
	storagetest.Each(t, func(t *testing.T, db *gorm.DB) {
		stale := &staleContactWrites{}
		// CRMBatchMax 1: staleContactWrites answers single PATCH requests
		// with 412, which batching would carry inside $batch requests
		// (TestConflictIsRetriedAfterReRead covers 412 through batches).
		e := startEnv(t, db, agent.Config{Workers: 2, MaxAttempts: 3, RetryBase: 100 * time.Millisecond, RetryMax: 300 * time.Millisecond, BaseKey: key, CRMBatchMax: 1},
			envOptions{noPoller: true, crmRetries: -1, tweak: reasonMaps,
				crmTransport: func(next http.RoundTripper) http.RoundTripper { stale.next = next; return stale }})
		ctx := context.Background()
		// The care coordinators' team the signal maps' tasks are owned by.
		if _, err := e.crmHuman.Create(ctx, "teams", crm.Record{"teamid": signalTeam, "name": "Care coordinators"}); err != nil {
			t.Fatal(err)
		}
		seen := map[logs.ReasonCode]bool{}
		// A device-stream window's decision also counts its readings by
		// what became of them, each under its reason code.
		mark := func(d logs.Decision) {
			seen[d.Reason] = true
			if d.Readings != nil {
				for r, n := range d.Readings.Counts {
					if n > 0 {
						seen[r] = true
					}
				}
			}
		}

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

		// Records of their own for the conflict and delete scenarios, each
		// synced once so that its pair has a base: patients whose phones
		// are edited on both sides or who are deleted while their contact
		// is edited, a practitioner and an encounter deleted in FHIR.
		newPatient := func(family string) string {
			p, err := e.fhir.Create(ctx, fhir.Resource{"resourceType": "Patient", "gender": "female",
				"name": []any{map[string]any{"use": "official", "family": family, "given": []any{"Ida"}}},
				"telecom": []any{
					map[string]any{"system": "phone", "use": "work", "value": "555-0100"},
					map[string]any{"system": "phone", "use": "mobile", "value": "555-0110"},
				}})
			if err != nil {
				t.Fatal(err)
			}
			mark(e.byMessage(t, e.notify(t, queues.SideFHIR, "Patient", p.ID(), "", queues.EventCreated), "created"))
			return p.ID()
		}
		deferredPatient, heldPatient := newPatient("Workphone"), newPatient("Mobilephone")
		deleteTiePatient, deleteLatePatient := newPatient("Tiedelete"), newPatient("Latedelete")
		prac, err := e.fhir.Create(ctx, fhir.Resource{"resourceType": "Practitioner",
			"name": []any{map[string]any{"use": "official", "family": "Leaving", "given": []any{"Noor"}}}})
		if err != nil {
			t.Fatal(err)
		}
		mark(e.byMessage(t, e.notify(t, queues.SideFHIR, "Practitioner", prac.ID(), "", queues.EventCreated), "created"))
		enc, err := e.fhir.Create(ctx, fhir.Resource{"resourceType": "Encounter", "status": "finished",
			"class":   map[string]any{"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "AMB"},
			"subject": map[string]any{"reference": "Patient/" + synth.PatientID(0)},
			"period":  map[string]any{"start": "2024-05-01T10:15:00Z", "end": "2024-05-01T11:00:00Z"}})
		if err != nil {
			t.Fatal(err)
		}
		mark(e.byMessage(t, e.notify(t, queues.SideFHIR, "Encounter", enc.ID(), "", queues.EventCreated), "created"))
		e.quiet(t)

		// Device readings of two patients in one stream window: the one
		// whose readings leave the range gets one aggregate (the same
		// reading delivered twice is dropped), the other's window stays
		// within the range; the first patient's next window meets the
		// rate limit.
		p0, p1 := synth.PatientID(0), synth.PatientID(1)
		high := []fhir.Resource{heartRate(t, e.fhir, p0, "70"), heartRate(t, e.fhir, p0, "120")}
		calm := []fhir.Resource{heartRate(t, e.fhir, p1, "60"), heartRate(t, e.fhir, p1, "65")}
		clearOfHour(90 * time.Second)
		atWindowStart()
		for _, r := range append(high, calm...) {
			e.notify(t, queues.SideFHIR, "Observation", r.ID(), r.VersionID(), queues.EventCreated)
		}
		time.Sleep(1500 * time.Millisecond)
		e.notify(t, queues.SideFHIR, "Observation", high[0].ID(), "", queues.EventUpdated)
		for _, d := range e.windowDecisions(t, 2, logs.ReasonCreated, logs.ReasonWithinRange) {
			if d.Readings == nil {
				continue
			}
			mark(d)
			switch d.Reason {
			case logs.ReasonCreated:
				if c := d.Readings.Counts; d.Outcome != logs.OutcomeSent || c[logs.ReasonAggregated] != 2 || c[logs.ReasonDuplicateReading] != 1 {
					t.Errorf("window sent: %s with counts %v, want sent, 2 aggregated and 1 duplicate_reading", d.Outcome, c)
				}
			case logs.ReasonWithinRange:
				if d.Outcome != logs.OutcomeSkipped || d.Readings.Counts[logs.ReasonWithinRange] != 2 {
					t.Errorf("window within range: %s with counts %v", d.Outcome, d.Readings.Counts)
				}
			}
		}
		e.quiet(t)
		again := heartRate(t, e.fhir, p0, "130")
		atWindowStart()
		e.notify(t, queues.SideFHIR, "Observation", again.ID(), again.VersionID(), queues.EventCreated)
		for _, d := range e.windowDecisions(t, 1, logs.ReasonRateLimited) {
			if d.Readings != nil && d.Reason == logs.ReasonRateLimited {
				mark(d)
			}
		}
		e.quiet(t)

		var heldID int64       // the held conflict a coordinator resolves
		var flag fhir.Resource // the Flag whose task is opened, updated and closed

		steps := []struct {
			name   string
			reason logs.ReasonCode
			run    func(t *testing.T) string // returns the message id to watch
			check  func(t *testing.T, d logs.Decision)
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
				return e.notify(t, queues.SideFHIR, "Basic", "basic-1", "", queues.EventChanged)
			}},
			{name: "disabled map", reason: "map_disabled", run: func(t *testing.T) string {
				return e.notify(t, queues.SideFHIR, "Device", "dev-1", "", queues.EventCreated)
			}},
			{name: "an active Flag raises a task", reason: "signal_opened", run: func(t *testing.T) string {
				var msg string
				flag, msg = e.fhirChange(t, fhir.Resource{"resourceType": "Flag", "status": "active",
					"code": map[string]any{"text": "Fall risk"}, "subject": map[string]any{"reference": "Patient/" + synth.PatientID(0)}})
				return msg
			}, after: func(t *testing.T) {
				if got := e.taskOf(t, "Flag_"+flag.ID()); got.count != 1 || got.state != 0 {
					t.Errorf("task of the active Flag = %+v, want one open", got)
				}
			}},
			{name: "the Flag changes", reason: "signal_updated", run: func(t *testing.T) string {
				flag["code"] = map[string]any{"text": "Fall risk, uses a walker"}
				var msg string
				flag, msg = e.fhirChange(t, flag)
				return msg
			}},
			{name: "the Flag ends", reason: "signal_closed", run: func(t *testing.T) string {
				flag["status"] = "inactive"
				var msg string
				flag, msg = e.fhirChange(t, flag)
				return msg
			}, after: func(t *testing.T) {
				if got := e.taskOf(t, "Flag_"+flag.ID()); got.count != 1 || got.state != 1 || got.status != 5 {
					t.Errorf("task of the ended Flag = %+v, want statecode 1 statuscode 5", got)
				}
			}},
			{name: "a low qualitative risk", reason: "below_signal_threshold", run: func(t *testing.T) string {
				_, msg := e.fhirChange(t, fhir.Resource{"resourceType": "RiskAssessment", "status": "final",
					"subject": map[string]any{"reference": "Patient/" + synth.PatientID(0)},
					"prediction": []any{map[string]any{"outcome": map[string]any{"text": "Fall"},
						"qualitativeRisk": map[string]any{"coding": []any{map[string]any{"system": "http://terminology.hl7.org/CodeSystem/risk-probability", "code": "low"}}}}}})
				return msg
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
			}, check: func(t *testing.T, d logs.Decision) {
				// The CRM's own code and message, not only http_400.
				if te := d.LastError(); te == nil || te.Code != "0x80040216" || te.Status != http.StatusBadRequest || te.Message == "" {
					t.Errorf("target_rejected without the CRM's code and message: %+v", d.Attempts)
				}
			}},
			{name: "encounter of a patient not synced yet", reason: "missing_reference", run: func(t *testing.T) string {
				p, err := e.fhir.Create(ctx, fhir.Resource{"resourceType": "Patient", "gender": "male",
					"name": []any{map[string]any{"use": "official", "family": "Unsynced"}}})
				if err != nil {
					t.Fatal(err)
				}
				enc, err := e.fhir.Create(ctx, fhir.Resource{"resourceType": "Encounter", "status": "finished",
					"class":   map[string]any{"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "AMB"},
					"subject": map[string]any{"reference": "Patient/" + p.ID()}})
				if err != nil {
					t.Fatal(err)
				}
				return e.notify(t, queues.SideFHIR, "Encounter", enc.ID(), "", queues.EventCreated)
			}, check: func(t *testing.T, d logs.Decision) {
				if d.ReasonSubject == "" {
					t.Errorf("missing_reference names no attribute map: %+v", d)
				}
			}},
			{name: "a patient's identifier row changes in the CRM", reason: "child_row", run: func(t *testing.T) string {
				var rowID string
				err := e.crmHuman.RetrieveMultiple(ctx, "msemr_medicalidentifiers", crm.Query{Select: []string{"msemr_medicalidentifierid"}, Top: 1},
					func(r crm.Record) error { rowID = r.String("msemr_medicalidentifierid"); return nil })
				if err != nil || rowID == "" {
					t.Fatalf("no identifier row in the CRM (%v)", err)
				}
				return e.notify(t, queues.SideCRM, "msemr_medicalidentifier", rowID, "", queues.EventUpdated)
			}, check: func(t *testing.T, d logs.Decision) {
				if d.EntityMap != "patient-contact" || d.ReasonSubject == "" {
					t.Errorf("child_row decision names map %q and expansion %q, want patient-contact and its expansion", d.EntityMap, d.ReasonSubject)
				}
				// The CRM's service endpoint reported the child rows
				// fhirsync wrote; none of them may be no_entity_map noise.
				page, err := e.logs.Search(ctx, logs.Filter{Reason: "no_entity_map"}, "", 500)
				if err != nil {
					t.Fatal(err)
				}
				for _, x := range page.Decisions {
					if x.Source.Type == "msemr_medicalidentifier" {
						t.Errorf("an identifier row was decided no_entity_map: %+v", x)
					}
				}
			}},
			{name: "CRM forbids fhirsync", reason: "unauthorized", run: func(t *testing.T) string {
				e.crmSrv.FailNext(1, http.StatusForbidden)
				return e.notify(t, queues.SideFHIR, "Patient", synth.PatientID(0), "", queues.EventChanged)
			}},
			{name: "CRM throttles", reason: "throttled", run: func(t *testing.T) string {
				e.crmSrv.FailNext(1, http.StatusTooManyRequests)
				return e.notify(t, queues.SideFHIR, "Patient", synth.PatientID(0), "", queues.EventChanged)
			}},
			{name: "work phone changed on both sides, FHIR's value wins", reason: "conflict_deferred", run: func(t *testing.T) string {
				// A clinician changes the work phone in FHIR (its notice
				// not yet sent) and a coordinator changes it in the CRM:
				// the CRM's message meets FHIR's change, and fhir-wins
				// keeps FHIR's value, which FHIR's own message carries.
				// The pair has travelled both ways once before: the first
				// write-back stamps the contact's id on the patient, a
				// write of its own.
				editContact(t, e, deferredPatient, crm.Record{"emailaddress1": "workphone@example.org"}, "updated")
				editTelecom(t, e, deferredPatient, "work", "555-0201")
				return editContact(t, e, deferredPatient, crm.Record{"telephone1": "555-0202"}, "conflict_deferred")
			}, check: func(t *testing.T, d logs.Decision) {
				wantConflict(t, d, logs.Conflict{Attribute: "work-phone", Policy: logs.PolicyFHIRWins, Deferred: true})
			}, after: func(t *testing.T) {
				// FHIR's change reaches the CRM through FHIR's own notice or
				// through the notice the deferring message queued for it,
				// whichever comes first: one of them overwrites the CRM's
				// value and names it.
				e.notify(t, queues.SideFHIR, "Patient", deferredPatient, "", queues.EventChanged)
				want := logs.Conflict{Attribute: "work-phone", Policy: logs.PolicyFHIRWins, Overwritten: logs.SideCRM}
				deadline := time.Now().Add(60 * time.Second)
				for !slices.ContainsFunc(e.decisions(t, deferredPatient), func(d logs.Decision) bool {
					return d.Direction == logs.FHIRToCRM && d.Reason == "updated" && slices.Contains(d.Conflicts, want)
				}) {
					if time.Now().After(deadline) {
						t.Fatalf("no fhir_to_crm updated decision names %+v within 60s", want)
					}
					time.Sleep(50 * time.Millisecond)
				}
				if got := contactField(t, e, deferredPatient, "telephone1"); got != "555-0201" {
					t.Errorf("work phone in the CRM = %q, want FHIR's 555-0201", got)
				}
			}},
			{name: "mobile phone changed on both sides, held for a person", reason: "conflict_held", run: func(t *testing.T) string {
				editTelecom(t, e, heldPatient, "mobile", "555-0301")
				return editContact(t, e, heldPatient, crm.Record{"mobilephone": "555-0302"}, "conflict_held")
			}, check: func(t *testing.T, d logs.Decision) {
				if d.Outcome != logs.OutcomeHeld {
					t.Errorf("outcome %s, want held", d.Outcome)
				}
				wantConflict(t, d, logs.Conflict{Attribute: "mobile-phone", Policy: logs.PolicyHold, Held: true})
			}, after: func(t *testing.T) {
				hcs, err := e.logs.ConflictsFor(ctx, "patient-contact", heldPatient)
				if err != nil {
					t.Fatal(err)
				}
				for _, hc := range hcs {
					if hc.Attribute == "mobile-phone" && hc.Status == "open" {
						heldID = hc.ID
					}
				}
				if heldID == 0 {
					t.Fatalf("no open held conflict for the mobile phone: %+v", hcs)
				}
				if got := contactField(t, e, heldPatient, "mobilephone"); got != "555-0302" {
					t.Errorf("mobile phone in the CRM = %q; a held conflict writes neither side", got)
				}
				if got := telecomValue(t, e, heldPatient, "mobile"); got != "555-0301" {
					t.Errorf("mobile phone in FHIR = %q; a held conflict writes neither side", got)
				}
			}},
			{name: "a coordinator takes FHIR's mobile phone", reason: "conflict_resolved", run: func(t *testing.T) string {
				if heldID == 0 {
					t.Fatal("nothing was held to resolve")
				}
				if err := e.logs.ResolveConflict(ctx, heldID, logs.SideFHIR, "coordinator"); err != nil {
					t.Fatal(err)
				}
				return e.waitDecision(t, heldPatient, logs.FHIRToCRM, "conflict_resolved").MessageID
			}, check: func(t *testing.T, d logs.Decision) {
				wantConflict(t, d, logs.Conflict{Attribute: "mobile-phone", Policy: logs.PolicyPerson, Overwritten: logs.SideCRM})
			}, after: func(t *testing.T) {
				if got := contactField(t, e, heldPatient, "mobilephone"); got != "555-0301" {
					t.Errorf("mobile phone in the CRM = %q, want the chosen 555-0301", got)
				}
				hc, err := e.logs.Conflict(ctx, heldID)
				if err != nil || hc.Status != "applied" {
					t.Errorf("resolved conflict is %q (%v), want applied", hc.Status, err)
				}
			}},
			{name: "patient deleted in FHIR as the coordinator edits the contact", reason: "delete_held", run: func(t *testing.T) string {
				if err := e.fhir.Delete(ctx, "Patient", deleteTiePatient); err != nil {
					t.Fatal(err)
				}
				deletedAt := time.Now()
				// The edit's own message finds the patient gone and leaves
				// the matter to the delete's message.
				editContact(t, e, deleteTiePatient, crm.Record{"emailaddress1": "tie@example.org"}, "conflict_deferred")
				// The two changes are within the clock-skew allowance:
				// last-writer-wins cannot order them.
				return e.notifyAt(t, queues.SideFHIR, "Patient", deleteTiePatient, queues.EventDeleted, deletedAt)
			}, check: func(t *testing.T, d logs.Decision) {
				if d.Outcome != logs.OutcomeHeld {
					t.Errorf("outcome %s, want held", d.Outcome)
				}
				wantConflict(t, d, logs.Conflict{Policy: logs.PolicyHold, Tie: true, Held: true})
			}, after: func(t *testing.T) {
				if got := contactField(t, e, deleteTiePatient, "emailaddress1"); got != "tie@example.org" {
					t.Errorf("email of the held contact = %q, want the coordinator's edit kept", got)
				}
				hcs, err := e.logs.ConflictsFor(ctx, "patient-contact", deleteTiePatient)
				if err != nil {
					t.Fatal(err)
				}
				if len(hcs) != 1 || !hcs[0].DeleteConflict() || hcs[0].DeletedSide != logs.SideFHIR {
					t.Errorf("held conflicts of the deleted patient = %+v, want one delete of the FHIR side", hcs)
				}
			}},
			{name: "patient deleted in FHIR before the coordinator's later edit", reason: "delete_overruled", run: func(t *testing.T) string {
				if err := e.fhir.Delete(ctx, "Patient", deleteLatePatient); err != nil {
					t.Fatal(err)
				}
				deletedAt := time.Now()
				// The coordinator edits the contact well after the delete
				// (beyond the 2 s clock-skew allowance), before the delete's
				// notice arrives: last-writer-wins keeps the edit.
				time.Sleep(3 * time.Second)
				editContact(t, e, deleteLatePatient, crm.Record{"emailaddress1": "later@example.org"}, "conflict_deferred")
				return e.notifyAt(t, queues.SideFHIR, "Patient", deleteLatePatient, queues.EventDeleted, deletedAt)
			}, check: func(t *testing.T, d logs.Decision) {
				wantConflict(t, d, logs.Conflict{Policy: logs.PolicyLastWriterWins, Deferred: true})
			}, after: func(t *testing.T) {
				if got := contactField(t, e, deleteLatePatient, "emailaddress1"); got != "later@example.org" {
					t.Errorf("email of the kept contact = %q, want the coordinator's edit", got)
				}
			}},
			{name: "practitioner deleted in FHIR, the map ignores deletes", reason: "delete_ignored", run: func(t *testing.T) string {
				if err := e.fhir.Delete(ctx, "Practitioner", prac.ID()); err != nil {
					t.Fatal(err)
				}
				return e.notify(t, queues.SideFHIR, "Practitioner", prac.ID(), "", queues.EventDeleted)
			}, after: func(t *testing.T) {
				if got := contactField(t, e, prac.ID(), "lastname"); got != "Leaving" {
					t.Errorf("contact of the deleted practitioner: last name %q, want it kept", got)
				}
			}},
			{name: "encounter deleted in FHIR, the map deactivates", reason: "deactivated", run: func(t *testing.T) string {
				if err := e.fhir.Delete(ctx, "Encounter", enc.ID()); err != nil {
					t.Fatal(err)
				}
				return e.notify(t, queues.SideFHIR, "Encounter", enc.ID(), "", queues.EventDeleted)
			}, after: func(t *testing.T) {
				rec, err := e.crmHuman.Retrieve(ctx, crm.ByKey("msemr_encounters", "msemr_azurefhirid", enc.ID()), "statecode", "statuscode")
				if err != nil {
					t.Fatalf("the deactivated encounter: %v", err)
				}
				if fmt.Sprint(rec["statecode"]) != "1" || fmt.Sprint(rec["statuscode"]) != "2" {
					t.Errorf("encounter state %v/%v, want inactive 1/2", rec["statecode"], rec["statuscode"])
				}
			}},
			{name: "the contact keeps changing under the agent's writes", reason: "target_conflict", run: func(t *testing.T) string {
				// A clinician's change goes to the CRM, where every write
				// of the first delivery finds the contact changed (412):
				// the write and its three re-read retries all lose.
				editTelecom(t, e, synth.PatientID(0), "home", "555-0412")
				stale.left.Store(4)
				return e.notify(t, queues.SideFHIR, "Patient", synth.PatientID(0), "", queues.EventChanged)
			}, check: func(t *testing.T, d logs.Decision) {
				if d.Outcome != logs.OutcomeFailed {
					t.Errorf("outcome %s, want failed (retried later)", d.Outcome)
				}
				lost := 0
				for _, a := range d.Attempts {
					if a.ErrorClass == "http_412" {
						lost++
					}
				}
				if lost < 3 {
					t.Errorf("attempts %+v: want the refused write re-read and retried 3 times in the delivery", d.Attempts)
				}
			}, after: func(t *testing.T) {
				// The next delivery's write lands.
				e.quiet(t)
				if got := contactField(t, e, synth.PatientID(0), "telephone2"); got != "555-0412" {
					t.Errorf("home phone in the CRM = %q, want 555-0412 once the writes stop losing", got)
				}
				if n := stale.refused.Load(); n != 4 {
					t.Errorf("%d writes refused, want 4 (one delivery: the write and 3 retries)", n)
				}
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
			if st.check != nil {
				st.check(t, d)
			}
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
		seen = append(seen, fmt.Sprintf("%s %s %s/%s(%s) changed %v conflicts %+v", d.Time.Format("15:04:05.000"), d.Direction, d.Outcome, d.Reason, d.Message, d.ChangedFields, d.Conflicts))
	}
	t.Fatalf("no %s decision about contact %s after %s; its decisions:\n%s", reason, contactID, since.Format("15:04:05.000"), strings.Join(seen, "\n"))
	return ""
}

// reasonMaps is the starter map set as these scenarios need it:
// observations as a device stream (asStreamMap), Flags and
// RiskAssessments as signals (withSignalMaps); on patients, the mobile phone held for a person when
// it changes on both sides and FHIR's work phone preferred; practitioners
// deleted in FHIR kept in the CRM; encounters deleted in FHIR deactivated
// there.
func reasonMaps(doc *maps.Document) {
	asStreamMap(doc)
	withSignalMaps(doc)
	for i := range doc.EntityMaps {
		em := &doc.EntityMaps[i]
		switch em.Name {
		case "patient-contact":
			for j := range em.Attributes {
				switch em.Attributes[j].Name {
				case "mobile-phone":
					em.Attributes[j].ConflictPolicy = maps.ConflictHold
				case "work-phone":
					em.Attributes[j].ConflictPolicy = maps.ConflictFHIRWins
				}
			}
		case "practitioner-contact":
			em.DeletePolicy = maps.DeleteIgnore
		case "encounter":
			em.DeletePolicy = maps.DeleteDeactivate
		}
	}
}

// notifyAt puts a change notice that happened at a given time on the
// agent's queue: a feed reporting a change with its time.
func (e *env) notifyAt(t *testing.T, side queues.Side, typ, id string, ev queues.Event, at time.Time) string {
	t.Helper()
	n := queues.Notice{V: queues.NoticeVersion, Side: side, Type: typ, ID: id, Event: ev, Origin: "test", ChangedAt: at.UTC()}
	msg, err := n.Message()
	if err != nil {
		t.Fatal(err)
	}
	q := e.fhirQ
	if side == queues.SideCRM {
		q = e.crmQ
	}
	if err := q.Send(context.Background(), msg); err != nil {
		t.Fatal(err)
	}
	return msg.ID
}

// editTelecom changes one phone of a patient in FHIR, as a clinician
// would; no notice is sent.
func editTelecom(t *testing.T, e *env, patientID, use, value string) {
	t.Helper()
	ctx := context.Background()
	p, err := e.fhir.Read(ctx, "Patient", patientID)
	if err != nil {
		t.Fatal(err)
	}
	items, _ := p["telecom"].([]any)
	found := false
	for _, it := range items {
		if m, ok := it.(map[string]any); ok && m["system"] == "phone" && m["use"] == use {
			m["value"], found = value, true
		}
	}
	if !found {
		items = append(items, map[string]any{"system": "phone", "use": use, "value": value})
	}
	p["telecom"] = items
	if _, err := e.fhir.Update(ctx, p, ""); err != nil {
		t.Fatal(err)
	}
}

// telecomValue reads one phone of a patient in FHIR.
func telecomValue(t *testing.T, e *env, patientID, use string) string {
	t.Helper()
	p, err := e.fhir.Read(context.Background(), "Patient", patientID)
	if err != nil {
		t.Fatal(err)
	}
	items, _ := p["telecom"].([]any)
	for _, it := range items {
		if m, ok := it.(map[string]any); ok && m["system"] == "phone" && m["use"] == use {
			s, _ := m["value"].(string)
			return s
		}
	}
	return ""
}

// editContact changes the contact of a FHIR resource as a coordinator
// would and returns the id of the message the CRM sent about it, once
// that message was decided with reason.
func editContact(t *testing.T, e *env, fhirID string, rec crm.Record, reason logs.ReasonCode) string {
	t.Helper()
	id := contactOf(t, e, fhirID)
	since := time.Now()
	if _, err := e.crmHuman.Upsert(context.Background(), crm.ByID("contacts", id), rec, crm.UpsertOptions{Mode: crm.UpdateOnly}); err != nil {
		t.Fatal(err)
	}
	return lastCRMMessage(t, e, id, since, reason)
}

// contactField reads one attribute of the contact of a FHIR resource.
func contactField(t *testing.T, e *env, fhirID, attr string) string {
	t.Helper()
	rec, err := e.crmHuman.Retrieve(context.Background(), crm.ByKey("contacts", "msemr_azurefhirid", fhirID), attr)
	if err != nil {
		t.Fatalf("contact of %s: %v", fhirID, err)
	}
	return rec.String(attr)
}

// wantConflict checks that d names the conflict want.
func wantConflict(t *testing.T, d logs.Decision, want logs.Conflict) {
	t.Helper()
	if !slices.Contains(d.Conflicts, want) {
		t.Errorf("decision %s/%s (%s) names conflicts %+v, want %+v among them", d.Outcome, d.Reason, d.Message, d.Conflicts, want)
	}
}

// staleContactWrites is the agent's CRM transport here: while left is
// positive, each conditional update of a contact is answered 412, as
// Dataverse answers a write whose ETag is no longer the row's because
// someone changed it in between.
type staleContactWrites struct {
	next    http.RoundTripper
	left    atomic.Int32
	refused atomic.Int32
}

func (s *staleContactWrites) RoundTrip(r *http.Request) (*http.Response, error) {
	im := r.Header.Get("If-Match")
	if r.Method == http.MethodPatch && strings.Contains(r.URL.Path, "/contacts(") && im != "" && im != "*" && s.left.Add(-1) >= 0 {
		s.refused.Add(1)
		body := `{"error":{"code":"0x80060882","message":"The version of the existing record doesn't match the RowVersion property provided."}}`
		return &http.Response{StatusCode: http.StatusPreconditionFailed, Status: "412 Precondition Failed", Proto: "HTTP/1.1", ProtoMajor: 1, ProtoMinor: 1,
			Header: http.Header{"Content-Type": {"application/json"}}, Body: io.NopCloser(strings.NewReader(body)),
			ContentLength: int64(len(body)), Request: r}, nil
	}
	return s.next.RoundTrip(r)
}
