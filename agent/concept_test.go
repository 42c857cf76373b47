package agent_test

import (
	"context"
	"fmt"
	"sync"
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

const snomed = "http://snomed.info/sct"

// conditionOf is a Condition of the patient with a SNOMED code and the
// encounter-diagnosis category.
func conditionOf(patient, code, display string) fhir.Resource {
	return fhir.Resource{
		"resourceType": "Condition",
		"code": map[string]any{"coding": []any{
			map[string]any{"system": "http://hl7.org/fhir/sid/icd-10", "code": "T20.0"},
			map[string]any{"system": snomed, "code": code, "display": display},
		}, "text": display},
		"category": []any{map[string]any{"coding": []any{map[string]any{
			"system": "http://terminology.hl7.org/CodeSystem/condition-category", "code": "encounter-diagnosis", "display": "Encounter Diagnosis"}}}},
		"subject": map[string]any{"reference": "Patient/" + patient},
	}
}

// conceptRows reads the sandbox CRM's concept rows as code|type → ids.
func conceptRows(t *testing.T, c *crm.Client) map[string][]string {
	t.Helper()
	out := map[string][]string{}
	err := c.RetrieveMultiple(context.Background(), maps.ConceptEntitySet, crm.Query{Select: []string{maps.ConceptIDColumn, maps.ConceptCodeColumn, maps.ConceptTypeColumn}},
		func(r crm.Record) error {
			k := fmt.Sprintf("%s|%v", r.String(maps.ConceptCodeColumn), r[maps.ConceptTypeColumn])
			out[k] = append(out[k], r.String(maps.ConceptIDColumn))
			return nil
		})
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// TestConceptLookupsSyncConditions: Conditions synced into the sandbox CRM
// bind their code and category to msemr_codeableconcept rows the agent
// creates, one row per distinct code and type, reused by a second
// Condition with the same code, by a redelivery and by many Conditions of
// a new code synced at once; a care coordinator's change of the code in the
// CRM comes back to FHIR as the coding rebuilt from the row.
func TestConceptLookupsSyncConditions(t *testing.T) {
	t.Parallel()
	storagetest.Each(t, func(t *testing.T, db *gorm.DB) {
		e := startEnv(t, db, agent.Config{Workers: 6, RetryBase: 200 * time.Millisecond, RetryMax: time.Second}, envOptions{tweak: func(doc *maps.Document) {
			for i := range doc.EntityMaps {
				if em := &doc.EntityMaps[i]; em.Name == "condition" {
					em.Enabled = nil
					em.CRMToFHIR = maps.Flow{Enabled: true, Operations: []maps.Operation{maps.OpUpdate}}
				}
			}
		}})
		ctx := context.Background()
		patient := synth.PatientID(0)
		e.waitDecision(t, patient, logs.FHIRToCRM, "created")

		create := func(code, display string) string {
			t.Helper()
			got, err := e.fhir.Create(ctx, conditionOf(patient, code, display))
			if err != nil {
				t.Fatal(err)
			}
			return got.ID()
		}
		syncCondition := func(id string, reason logs.ReasonCode) logs.Decision {
			t.Helper()
			msg := e.notify(t, queues.SideFHIR, "Condition", id, "", queues.EventUpdated)
			return e.byMessage(t, msg, reason)
		}

		// Two Conditions with the same code: one row for the code, one for
		// the category, both bound by both records.
		c1, c2 := create("39065001", "Burn of ear"), create("39065001", "Burn of ear")
		syncCondition(c1, "created")
		syncCondition(c2, "created")
		rows := conceptRows(t, e.crmHuman)
		if len(rows) != 2 || len(rows["39065001|935000023"]) != 1 || len(rows["encounter-diagnosis|935000022"]) != 1 {
			t.Fatalf("concept rows after two Conditions with one code = %v, want one code row and one category row", rows)
		}
		codeRow := rows["39065001|935000023"][0]
		for _, id := range []string{c1, c2} {
			rec, err := e.crmHuman.Retrieve(ctx, crm.ByKey("msemr_conditions", "msemr_azurefhirid", id), "_msemr_conditioncode_value", "msemr_name")
			if err != nil {
				t.Fatal(err)
			}
			if rec.String("_msemr_conditioncode_value") != codeRow {
				t.Errorf("Condition %s binds code row %q, want %q", id, rec.String("_msemr_conditioncode_value"), codeRow)
			}
		}
		var name, code string
		var typ any
		row, err := e.crmHuman.Retrieve(ctx, crm.ByID(maps.ConceptEntitySet, codeRow), maps.ConceptNameColumn, maps.ConceptCodeColumn, maps.ConceptTypeColumn)
		if err != nil {
			t.Fatal(err)
		}
		name, code, typ = row.String(maps.ConceptNameColumn), row.String(maps.ConceptCodeColumn), row[maps.ConceptTypeColumn]
		if name != "Burn of ear" || code != "39065001" || fmt.Sprint(typ) != "935000023" {
			t.Errorf("code row = %q %q %v, want the SNOMED coding's code and display, type Condition Code", name, code, typ)
		}

		// Redelivered: nothing changes, no row is added.
		syncCondition(c1, "unchanged")
		if n := e.crmSrv.Count(maps.ConceptEntity); n != 2 {
			t.Errorf("concept rows after a redelivery = %d, want 2", n)
		}

		// Six Conditions of a new code at once, on six workers: one row.
		var ids []string
		for range 6 {
			ids = append(ids, create("40055000", "Chronic sinusitis"))
		}
		var msgs []string
		var mu sync.Mutex
		var wg sync.WaitGroup
		for _, id := range ids {
			wg.Go(func() {
				msg := e.notify(t, queues.SideFHIR, "Condition", id, "", queues.EventUpdated)
				mu.Lock()
				msgs = append(msgs, msg)
				mu.Unlock()
			})
		}
		wg.Wait()
		for _, msg := range msgs {
			e.byMessage(t, msg, "created")
		}
		rows = conceptRows(t, e.crmHuman)
		if len(rows) != 3 || len(rows["40055000|935000023"]) != 1 {
			t.Fatalf("concept rows after six Conditions of a new code at once = %v, want one more row", rows)
		}

		// A care coordinator recodes c1 in the CRM as chronic sinusitis; the
		// Condition's code is rebuilt from the row: SNOMED, code, display.
		// The onset text changes with it: the agent tells a CRM edit from
		// the echo of its own write by the mapped values, and lookup binds
		// are not among the values it compares (agent/echo.go skipField),
		// so an edit of lookups alone would be taken for an echo.
		crmCond, err := e.crmHuman.Retrieve(ctx, crm.ByKey("msemr_conditions", "msemr_azurefhirid", c1), "msemr_conditionid")
		if err != nil {
			t.Fatal(err)
		}
		condID := crmCond.String("msemr_conditionid")
		sinusitis := rows["40055000|935000023"][0]
		if _, err := e.crmHuman.Upsert(ctx, crm.ByID("msemr_conditions", condID),
			crm.Record{"msemr_conditioncode@odata.bind": crm.Bind(maps.ConceptEntitySet, sinusitis), "msemr_onsetstring": "since childhood"},
			crm.UpsertOptions{Mode: crm.UpdateOnly}); err != nil {
			t.Fatal(err)
		}
		e.waitDecision(t, condID, logs.CRMToFHIR, "updated")
		back, err := e.fhir.Read(ctx, "Condition", c1)
		if err != nil {
			t.Fatal(err)
		}
		cc, _ := back["code"].(map[string]any)
		codings, _ := cc["coding"].([]any)
		first, _ := codings[0].(map[string]any)
		if len(codings) != 1 || first["system"] != snomed || first["code"] != "40055000" || first["display"] != "Chronic sinusitis" {
			t.Errorf("Condition code after the CRM recoded it = %v, want the SNOMED coding of the row", cc)
		}
		if back["onsetString"] != "since childhood" {
			t.Errorf("onsetString after write-back = %v", back["onsetString"])
		}
		if cats, _ := back["category"].([]any); len(cats) != 1 {
			t.Errorf("categories after write-back = %v, want the one category kept", back["category"])
		}
		if n := e.crmSrv.Count(maps.ConceptEntity); n != 3 {
			t.Errorf("concept rows after the round trip = %d, want 3", n)
		}
	})
}
