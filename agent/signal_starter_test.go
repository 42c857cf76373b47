package agent_test

import (
	"context"
	"os"
	"testing"
	"time"

	"gorm.io/gorm"

	"github.com/fhirsync/fhirsync/agent"
	"github.com/fhirsync/fhirsync/agent/crm"
	"github.com/fhirsync/fhirsync/agent/fhir"
	"github.com/fhirsync/fhirsync/logs"
	"github.com/fhirsync/fhirsync/maps"
	"github.com/fhirsync/fhirsync/sandbox/synth"
	"github.com/fhirsync/fhirsync/storage/storagetest"
)

// hl7Example reads one of HL7's official R4 examples kept for the
// starter maps (maps/testdata/hl7-r4).
func hl7Example(t *testing.T, file string) fhir.Resource {
	t.Helper()
	b, err := os.ReadFile("../maps/testdata/hl7-r4/" + file)
	if err != nil {
		t.Fatal(err)
	}
	res, err := maps.DecodeJSON(b)
	if err != nil {
		t.Fatal(err)
	}
	return fhir.Resource(res)
}

// openTasks counts the CRM's open tasks (statecode 0).
func (e *env) openTasks(t *testing.T) int {
	t.Helper()
	n := 0
	err := e.crmHuman.RetrieveMultiple(context.Background(), "tasks", crm.Query{Select: []string{"activityid"}, Filter: "statecode eq 0"},
		func(crm.Record) error { n++; return nil })
	if err != nil {
		t.Fatal(err)
	}
	return n
}

// TestStarterSignalMapsEndToEnd publishes the starter map set on a fresh
// database with its two signal maps enabled as an administrator would
// (risk-signal and flag-signal, shipped disabled, beside patient-contact;
// the starter flag and risk-assessment maps stay off) and writes HL7's
// examples into the sandbox FHIR server: the Flag example made active
// with its period ending next year and its subject a synced patient, and
// the RiskAssessment prognosis example with a high qualitative risk
// instead of moderate. Each opens exactly one task, owned by the team a
// coordinator assigned the patient's contact to and regarding that
// contact; the Flag's period ending and the risk falling to low close
// both.
func TestStarterSignalMapsEndToEnd(t *testing.T) {
	t.Parallel()
	storagetest.Each(t, func(t *testing.T, db *gorm.DB) {
		enable := func(doc *maps.Document) {
			for i := range doc.EntityMaps {
				switch doc.EntityMaps[i].Name {
				case "risk-signal", "flag-signal", "patient-contact":
					doc.EntityMaps[i].Enabled = nil
				}
			}
		}
		e := startEnv(t, db, agent.Config{Workers: 4, RetryBase: 200 * time.Millisecond, RetryMax: time.Second}, envOptions{tweak: enable})
		ctx := context.Background()
		p0 := synth.PatientID(0)
		e.waitDecision(t, p0, logs.FHIRToCRM, "created")
		contact := e.contactOf(t, p0)
		const ward = "5e1a0000-0000-4000-8000-0000000057a7"
		if _, err := e.crmHuman.Create(ctx, "teams", crm.Record{"teamid": ward, "name": "Community care"}); err != nil {
			t.Fatal(err)
		}
		if _, err := e.crmHuman.Upsert(ctx, crm.ByID("contacts", contact), crm.Record{"ownerid@odata.bind": crm.Bind("teams", ward)}, crm.UpsertOptions{Mode: crm.UpdateOnly}); err != nil {
			t.Fatal(err)
		}

		flag := hl7Example(t, "flag-example.json")
		delete(flag, "id")
		flag["status"] = "active"
		flag["subject"] = map[string]any{"reference": "Patient/" + p0}
		flag["period"] = map[string]any{"start": "2015-01-17", "end": time.Now().AddDate(1, 0, 0).Format("2006-01-02")}
		flag, msg := e.fhirChange(t, flag)
		if d := e.byMessage(t, msg, logs.ReasonSignalOpened); d.EntityMap != "flag-signal" {
			t.Errorf("the Flag was decided by %q, want flag-signal", d.EntityMap)
		}
		flagKey := "Flag_" + flag["id"].(string)

		risk := hl7Example(t, "riskassessment-example-prognosis.json")
		delete(risk, "id")
		risk["subject"] = map[string]any{"reference": "Patient/" + p0}
		setRisk := func(code string) {
			p := risk["prediction"].([]any)[0].(map[string]any)
			p["qualitativeRisk"].(map[string]any)["coding"].([]any)[0].(map[string]any)["code"] = code
		}
		setRisk("high")
		risk, msg = e.fhirChange(t, risk)
		if d := e.byMessage(t, msg, logs.ReasonSignalOpened); d.EntityMap != "risk-signal" {
			t.Errorf("the RiskAssessment was decided by %q, want risk-signal", d.EntityMap)
		}
		riskKey := "RiskAssessment_" + risk["id"].(string)

		for _, want := range []struct {
			key, subject string
			priority     int
		}{{flagKey, "Flag: Big dog", 1}, {riskKey, "Risk: permanent weakness of the left arm", 2}} {
			got := e.taskOf(t, want.key)
			if got.count != 1 || got.state != 0 || got.status != 2 || got.subject != want.subject || got.priority != want.priority {
				t.Errorf("%s: task %+v, want one open Not Started task %q of priority %d", want.key, got, want.subject, want.priority)
			}
			if got.regarding != contact || got.owner != ward {
				t.Errorf("%s: task regarding %s owned by %s, want the contact %s and its team %s", want.key, got.regarding, got.owner, contact, ward)
			}
		}
		if n := e.openTasks(t); n != 2 {
			t.Errorf("%d open tasks, want 2 (one per signal)", n)
		}

		flag["period"] = map[string]any{"start": "2015-01-17", "end": time.Now().AddDate(0, 0, -1).Format("2006-01-02")}
		_, msg = e.fhirChange(t, flag)
		e.byMessage(t, msg, logs.ReasonSignalClosed)
		setRisk("low")
		_, msg = e.fhirChange(t, risk)
		e.byMessage(t, msg, logs.ReasonSignalClosed)
		for _, key := range []string{flagKey, riskKey} {
			if got := e.taskOf(t, key); got.count != 1 || got.state != 1 || got.status != 5 {
				t.Errorf("%s after the signal was lowered: %+v, want its one task Completed (statecode 1, statuscode 5)", key, got)
			}
		}
		if n := e.openTasks(t); n != 0 {
			t.Errorf("%d open tasks after both signals were lowered, want none", n)
		}
	})
}
