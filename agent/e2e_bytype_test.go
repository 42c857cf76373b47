package agent_test

import (
	"context"
	"fmt"
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
	"github.com/fhirsync/fhirsync/storage/storagetest"
)

// TestLookupByTypeEndToEnd syncs references that may name several resource
// types through the starter maps' lookups by type, against the sandbox
// CRM: a Schedule's actor goes to the column of its type (a location, then
// a practitioner, clearing the location), an Appointment's participants
// each get the column of their actor's type and the type column, so do a
// CareTeam's participants by their member's type, and an
// Encounter whose subject is a Group (a type its patient lookup does not
// sync) ends in one dead-lettered mapping_error decision naming the
// attribute map and the types, without the id.
func TestLookupByTypeEndToEnd(t *testing.T) {
	t.Parallel()
	storagetest.Each(t, func(t *testing.T, db *gorm.DB) {
		e := startEnv(t, db, agent.Config{Workers: 2, MaxAttempts: 3, RetryBase: 100 * time.Millisecond, RetryMax: 300 * time.Millisecond},
			envOptions{noPoller: true, tweak: func(doc *maps.Document) {
				for i := range doc.EntityMaps {
					switch doc.EntityMaps[i].Name {
					case "location", "schedule", "appointment", "care-team":
						doc.EntityMaps[i].Enabled = nil
					}
				}
			}})
		ctx := context.Background()
		for _, typ := range []string{"Organization", "Practitioner", "Patient"} {
			for _, id := range allIDs(t, e, typ) {
				e.notify(t, queues.SideFHIR, typ, id, "", queues.EventChanged)
			}
			e.quiet(t)
		}
		create := func(t *testing.T, res fhir.Resource) string {
			t.Helper()
			got, err := e.fhir.Create(ctx, res)
			if err != nil {
				t.Fatalf("creating a %s: %v", res["resourceType"], err)
			}
			return got.ID()
		}
		crmID := func(t *testing.T, set, idAttr, fhirID string) string {
			t.Helper()
			rec, err := e.crmHuman.Retrieve(ctx, crm.ByKey(set, "msemr_azurefhirid", fhirID), idAttr)
			if err != nil {
				t.Fatalf("%s of %s: %v", set, fhirID, err)
			}
			return strings.ToLower(rec.String(idAttr))
		}
		practitioner := allIDs(t, e, "Practitioner")[0]
		patient := allIDs(t, e, "Patient")[0]
		loc := create(t, fhir.Resource{"resourceType": "Location", "status": "active", "name": "South Wing"})
		e.byMessage(t, e.notify(t, queues.SideFHIR, "Location", loc, "", queues.EventChanged), "created")
		locRow := crmID(t, "msemr_locations", "msemr_locationid", loc)
		doctor := crmID(t, "contacts", "contactid", practitioner)
		person := crmID(t, "contacts", "contactid", patient)

		actorColumns := []string{"_msemr_actorlocation_value", "_msemr_actorpractitioner_value", "_msemr_actorpatient_value",
			"_msemr_actordevice_value", "_msemr_actorpractitionerrole_value", "_msemr_actorrelatedperson_value"}
		scheduleActors := func(t *testing.T, id string) map[string]string {
			t.Helper()
			rec, err := e.crmHuman.Retrieve(ctx, crm.ByKey("msemr_schedules", "msemr_azurefhirid", id), actorColumns...)
			if err != nil {
				t.Fatal(err)
			}
			set := map[string]string{}
			for _, c := range actorColumns {
				if v := rec.String(c); v != "" {
					set[c] = strings.ToLower(v)
				}
			}
			return set
		}

		t.Run("a schedule's actor changes type", func(t *testing.T) {
			sched := fhir.Resource{"resourceType": "Schedule", "active": true, "actor": []any{map[string]any{"reference": "Location/" + loc}}}
			id := create(t, sched)
			e.byMessage(t, e.notify(t, queues.SideFHIR, "Schedule", id, "", queues.EventChanged), "created")
			if got := scheduleActors(t, id); len(got) != 1 || got["_msemr_actorlocation_value"] != locRow {
				t.Fatalf("actor columns %v, want only msemr_actorlocation = the location's row", got)
			}
			sched["id"] = id
			sched["actor"] = []any{map[string]any{"reference": "Practitioner/" + practitioner}}
			if _, err := e.fhir.Update(ctx, sched, ""); err != nil {
				t.Fatal(err)
			}
			e.byMessage(t, e.notify(t, queues.SideFHIR, "Schedule", id, "", queues.EventChanged), "updated")
			if got := scheduleActors(t, id); len(got) != 1 || got["_msemr_actorpractitioner_value"] != doctor {
				t.Fatalf("actor columns %v, want only msemr_actorpractitioner = the practitioner's contact", got)
			}
			// Back in the CRM, the actor becomes the location again, and
			// nothing else changes: the edit of lookup columns alone is no
			// echo of fhirsync's write (the echo hash holds each lookup
			// column's id), and write-back rebuilds the reference from the
			// one column set.
			e.quiet(t)
			row := crmID(t, "msemr_schedules", "msemr_scheduleid", id)
			// The CRM's notices of fhirsync's two writes (the second wrote
			// lookup columns alone) were told as their echoes.
			echoes := 0
			for _, d := range e.decisions(t, row) {
				if d.Direction == logs.CRMToFHIR {
					if d.Reason != "own_write_echo" {
						t.Fatalf("a notice of fhirsync's own write of the schedule: %s/%s (%s), want own_write_echo", d.Outcome, d.Reason, d.Message)
					}
					echoes++
				}
			}
			if echoes == 0 {
				t.Fatal("no decision on the CRM's notices of fhirsync's writes of the schedule")
			}
			if _, err := e.crmHuman.Upsert(ctx, crm.ByID("msemr_schedules", row), crm.Record{"msemr_actorpractitioner@odata.bind": nil,
				"msemr_actorlocation@odata.bind": "/msemr_locations(" + strings.ToUpper(locRow) + ")"},
				crm.UpsertOptions{Mode: crm.UpdateOnly}); err != nil {
				t.Fatal(err)
			}
			e.waitDecision(t, row, logs.CRMToFHIR, "updated")
			back, err := e.fhir.Read(ctx, "Schedule", id)
			if err != nil {
				t.Fatal(err)
			}
			if actors, _ := back["actor"].([]any); len(actors) != 1 || actors[0].(map[string]any)["reference"] != "Location/"+loc {
				t.Errorf("Schedule after write-back: actor %v; want [Location/%s]", back["actor"], loc)
			}
			e.quiet(t)
			var since []string
			for _, d := range e.decisions(t, row) {
				if d.Direction == logs.CRMToFHIR && d.Reason == "own_write_echo" {
					echoes--
				} else if d.Direction == logs.CRMToFHIR {
					since = append(since, string(d.Reason))
				}
			}
			if echoes != 0 || len(since) != 1 {
				t.Errorf("after the coordinator's edit: %d more own_write_echo decision(s) and %v; want the one updated decision", -echoes, since)
			}
		})

		t.Run("an appointment's participants", func(t *testing.T) {
			id := create(t, fhir.Resource{"resourceType": "Appointment", "status": "booked", "participant": []any{
				map[string]any{"actor": map[string]any{"reference": "Patient/" + patient, "display": "The patient"}, "status": "accepted"},
				map[string]any{"actor": map[string]any{"reference": "Practitioner/" + practitioner, "display": "The doctor"}, "status": "accepted"},
				map[string]any{"actor": map[string]any{"reference": "Location/" + loc, "display": "The room"}, "status": "accepted"},
				map[string]any{"actor": map[string]any{"reference": "HealthcareService/hs-1", "display": "The service"}, "status": "accepted"},
			}})
			e.byMessage(t, e.notify(t, queues.SideFHIR, "Appointment", id, "", queues.EventChanged), "created")
			appt := crmID(t, "msemr_appointmentemrs", "activityid", id)
			got := map[string]string{}
			err := e.crmHuman.RetrieveMultiple(ctx, "msemr_appointmentemrparticipants", crm.Query{
				Select: []string{"msemr_name", "msemr_participantactortype", "_msemr_actorpatient_value", "_msemr_actorphysician_value", "_msemr_actorlocation_value"},
				Filter: "_msemr_appointmentemr_value eq " + appt}, func(r crm.Record) error {
				got[r.String("msemr_name")] = strings.ToLower(r.String("_msemr_actorpatient_value")) + "|" + strings.ToLower(r.String("_msemr_actorphysician_value")) +
					"|" + strings.ToLower(r.String("_msemr_actorlocation_value")) + "|" + optionText(r["msemr_participantactortype"])
				return nil
			})
			if err != nil {
				t.Fatal(err)
			}
			want := map[string]string{
				"The patient": person + "|||935000000",
				"The doctor":  "|" + doctor + "||935000001",
				"The room":    "||" + locRow + "|935000005",
				"The service": "|||935000004",
			}
			for k, w := range want {
				if got[k] != w {
					t.Errorf("participant %q: patient|physician|location|type = %q, want %q", k, got[k], w)
				}
			}
		})

		t.Run("a care team's members", func(t *testing.T) {
			org := allIDs(t, e, "Organization")[0]
			id := create(t, fhir.Resource{"resourceType": "CareTeam", "status": "active", "name": "Ward team", "participant": []any{
				map[string]any{"member": map[string]any{"reference": "Patient/" + patient}, "period": map[string]any{"start": "2026-01-01T00:00:00Z"}},
				map[string]any{"member": map[string]any{"reference": "Organization/" + org}, "period": map[string]any{"start": "2026-01-02T00:00:00Z"}},
				map[string]any{"member": map[string]any{"reference": "Practitioner/" + practitioner}, "period": map[string]any{"start": "2026-01-03T00:00:00Z"}},
			}})
			e.byMessage(t, e.notify(t, queues.SideFHIR, "CareTeam", id, "", queues.EventChanged), "created")
			team := crmID(t, "msemr_careteams", "msemr_careteamid", id)
			account := crmID(t, "accounts", "accountid", org)
			got := map[string]string{}
			err := e.crmHuman.RetrieveMultiple(ctx, "msemr_careteamparticipants", crm.Query{
				Select: []string{"msemr_periodstart", "msemr_membertype", "_msemr_memberpatient_value", "_msemr_memberpractioner_value", "_msemr_memberorganization_value"},
				Filter: "_msemr_careteam_value eq " + team}, func(r crm.Record) error {
				got[r.String("msemr_periodstart")[:10]] = strings.ToLower(r.String("_msemr_memberpatient_value")) + "|" + strings.ToLower(r.String("_msemr_memberpractioner_value")) +
					"|" + strings.ToLower(r.String("_msemr_memberorganization_value")) + "|" + optionText(r["msemr_membertype"])
				return nil
			})
			if err != nil {
				t.Fatal(err)
			}
			want := map[string]string{
				"2026-01-01": person + "|||935000002",
				"2026-01-02": "||" + account + "|935000003",
				"2026-01-03": "|" + doctor + "||935000000",
			}
			for k, w := range want {
				if got[k] != w {
					t.Errorf("participant from %s: patient|practitioner|organization|type = %q, want %q", k, got[k], w)
				}
			}
		})

		t.Run("an encounter whose subject is a group", func(t *testing.T) {
			id := create(t, fhir.Resource{"resourceType": "Encounter", "status": "finished",
				"class":   map[string]any{"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "AMB"},
				"subject": map[string]any{"reference": "Group/grp-secret-9"}})
			d := e.byMessage(t, e.notify(t, queues.SideFHIR, "Encounter", id, "", queues.EventChanged), "mapping_error")
			if d.Outcome != logs.OutcomeDeadLettered || d.ReasonSubject != "patient" {
				t.Errorf("decision %s on %q, want dead_lettered naming attribute map patient", d.Outcome, d.ReasonSubject)
			}
			if !strings.Contains(d.Message, "Group") || !strings.Contains(d.Message, `"patient-contact" syncs Patient`) || strings.Contains(d.Message, "grp-secret-9") {
				t.Errorf("message %q should name the types and map, not the id", d.Message)
			}
			if len(d.Attempts) != 1 || d.Attempts[0].Retryable {
				t.Errorf("attempts %+v, want one, not retryable", d.Attempts)
			}
		})
	})
}

// optionText is an option value as text ("" for none).
func optionText(v any) string {
	if v == nil {
		return ""
	}
	return fmt.Sprint(v)
}
