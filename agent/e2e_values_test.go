package agent_test

import (
	"context"
	"encoding/json"
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

// TestValuesTheCRMCannotHold syncs values the sandbox CRM, as Dataverse,
// refuses or rounds: a given name longer than the contact's firstname
// column (the map's own length limit lifted) ends in one dead-lettered
// target_rejected decision naming the
// attribute, with the CRM's code and message and without the value; an
// observation value with more decimal places than its column keeps is
// stored rounded and a second notice about the same version is
// unchanged, not another update.
func TestValuesTheCRMCannotHold(t *testing.T) {
	t.Parallel()
	storagetest.Each(t, func(t *testing.T, db *gorm.DB) {
		e := startEnv(t, db, agent.Config{Workers: 2, MaxAttempts: 3, RetryBase: 100 * time.Millisecond, RetryMax: 300 * time.Millisecond},
			envOptions{noPoller: true, tweak: func(doc *maps.Document) {
				// Without the map's own limit (maxLength: 50, which ends in a
				// mapping_error before anything is sent), the CRM decides.
				for i := range doc.EntityMaps {
					for j := range doc.EntityMaps[i].Attributes {
						if a := &doc.EntityMaps[i].Attributes[j]; a.CRMAttribute == "firstname" {
							a.MaxLength, a.LengthPolicy = 0, ""
						}
					}
				}
			}})
		ctx := context.Background()
		create := func(t *testing.T, res fhir.Resource) string {
			t.Helper()
			got, err := e.fhir.Create(ctx, res)
			if err != nil {
				t.Fatalf("creating a %s: %v", res["resourceType"], err)
			}
			return got.ID()
		}

		t.Run("a string too long for its column", func(t *testing.T) {
			long := strings.Repeat("Maximiliana", 6) // 66 characters; firstname holds 50
			id := create(t, fhir.Resource{"resourceType": "Patient", "gender": "female",
				"name": []any{map[string]any{"use": "official", "family": "Quinn", "given": []any{long}}}})
			msg := e.notify(t, queues.SideFHIR, "Patient", id, "", queues.EventChanged)
			d := e.byMessage(t, msg, "target_rejected")
			if d.Outcome != logs.OutcomeDeadLettered {
				t.Errorf("outcome %s, want dead_lettered (retrying cannot help)", d.Outcome)
			}
			if d.ReasonSubject != "firstname" {
				t.Errorf("subject %q, want firstname", d.ReasonSubject)
			}
			for _, want := range []string{"firstname", "0x80044331", "exceeded the maximum allowed length of '50'"} {
				if !strings.Contains(d.Message, want) {
					t.Errorf("message %q lacks %q", d.Message, want)
				}
			}
			if strings.Contains(d.Message, "Maximiliana") {
				t.Errorf("message %q carries the value", d.Message)
			}
			if len(d.Attempts) != 1 || d.Attempts[0].Retryable {
				t.Errorf("attempts %+v, want one, not retryable", d.Attempts)
			}
			e.quiet(t)
			for _, d := range e.decisions(t, id) {
				if d.Direction == logs.FHIRToCRM && d.Reason != "target_rejected" {
					t.Errorf("another decision for the patient: %s/%s (%s)", d.Outcome, d.Reason, d.Message)
				}
			}
			if _, err := e.crmHuman.Retrieve(ctx, crm.ByKey("contacts", "msemr_azurefhirid", id)); err == nil {
				t.Error("the contact exists although its create was refused")
			}
		})

		t.Run("a decimal rounded to its column's precision", func(t *testing.T) {
			pid := create(t, fhir.Resource{"resourceType": "Patient", "gender": "male",
				"name": []any{map[string]any{"use": "official", "family": "Okafor", "given": []any{"Chidi"}}}})
			e.byMessage(t, e.notify(t, queues.SideFHIR, "Patient", pid, "", queues.EventChanged), "created")
			oid := create(t, fhir.Resource{"resourceType": "Observation", "status": "final",
				"code":          map[string]any{"coding": []any{map[string]any{"system": "http://loinc.org", "code": "29463-7"}}, "text": "Body weight"},
				"subject":       map[string]any{"reference": "Patient/" + pid},
				"valueQuantity": map[string]any{"value": json.Number("72.123456789012"), "unit": "kg"}})
			first := e.byMessage(t, e.notify(t, queues.SideFHIR, "Observation", oid, "", queues.EventChanged), "created")
			if !strings.Contains(first.Message, "msemr_valuequantity rounded") {
				t.Errorf("create decision %q does not say the value was rounded", first.Message)
			}
			rec, err := e.crmHuman.Retrieve(ctx, crm.ByKey("msemr_observations", "msemr_azurefhirid", oid), "msemr_valuequantity")
			if err != nil {
				t.Fatal(err)
			}
			if got, _ := json.Marshal(rec["msemr_valuequantity"]); string(got) != "72.1234567890" {
				t.Errorf("the CRM holds %s, want 72.1234567890 (ten places)", got)
			}
			for i := range 2 {
				d := e.byMessage(t, e.notify(t, queues.SideFHIR, "Observation", oid, "", queues.EventChanged), "unchanged")
				if !strings.Contains(d.Message, "msemr_valuequantity rounded") {
					t.Errorf("notice %d: decision %q does not say the value is compared rounded", i+2, d.Message)
				}
			}
			e.quiet(t)
			for _, d := range e.decisions(t, oid) {
				if d.Direction == logs.FHIRToCRM && d.Reason == "updated" {
					t.Errorf("the observation was updated again: %s", d.Message)
				}
			}
		})
	})
}
