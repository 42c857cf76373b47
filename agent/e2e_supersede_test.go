package agent_test

import (
	"context"
	"testing"
	"time"

	"gorm.io/gorm"

	"github.com/fhirsync/fhirsync/agent"
	"github.com/fhirsync/fhirsync/agent/crm"
	"github.com/fhirsync/fhirsync/agent/fhir"
	"github.com/fhirsync/fhirsync/logs"
	"github.com/fhirsync/fhirsync/queues"
	"github.com/fhirsync/fhirsync/storage/storagetest"
)

// TestResolutionOvertakenByAnEdit checks a person's resolution of a held
// conflict that no longer applies when the agent comes to write it: after
// the hold, the clinician typed the coordinator's value into FHIR too, so
// the two sides agree. The agent writes nothing over either side, and the
// resolution is settled as superseded instead of being sent again.
func TestResolutionOvertakenByAnEdit(t *testing.T) {
	t.Parallel()
	storagetest.Each(t, func(t *testing.T, db *gorm.DB) {
		e := startEnv(t, db, agent.Config{Workers: 2, MaxAttempts: 3, RetryBase: 100 * time.Millisecond, RetryMax: 300 * time.Millisecond,
			BaseKey: testBaseKey, ResolveEvery: 200 * time.Millisecond},
			envOptions{noPoller: true, tweak: reasonMaps})
		ctx := context.Background()
		p, err := e.fhir.Create(ctx, fhir.Resource{"resourceType": "Patient", "gender": "female",
			"name":    []any{map[string]any{"use": "official", "family": "Overtaken", "given": []any{"Ida"}}},
			"telecom": []any{map[string]any{"system": "phone", "use": "mobile", "value": "555-0410"}}})
		if err != nil {
			t.Fatal(err)
		}
		e.byMessage(t, e.notify(t, queues.SideFHIR, "Patient", p.ID(), "", queues.EventCreated), "created")
		e.quiet(t)

		// The mobile phone (policy hold) changes on both sides: held.
		editTelecom(t, e, p.ID(), "mobile", "555-0411")
		editContact(t, e, p.ID(), crm.Record{"mobilephone": "555-0412"}, "conflict_held")
		hcs, err := e.logs.ConflictsFor(ctx, "patient-contact", p.ID())
		if err != nil || len(hcs) != 1 {
			t.Fatalf("held conflicts of the patient: %+v, %v; want one", hcs, err)
		}
		// The clinician then types the coordinator's number into FHIR (no
		// notice yet), and a person takes FHIR's value as it was held.
		editTelecom(t, e, p.ID(), "mobile", "555-0412")
		if err := e.logs.ResolveConflict(ctx, hcs[0].ID, logs.SideFHIR, "coordinator"); err != nil {
			t.Fatal(err)
		}
		deadline := time.Now().Add(30 * time.Second)
		for {
			hc, err := e.logs.Conflict(ctx, hcs[0].ID)
			if err != nil {
				t.Fatal(err)
			}
			if hc.Status == logs.ConflictSuperseded {
				break
			}
			if hc.Status == logs.ConflictApplied {
				t.Fatalf("the resolution was applied although FHIR changed since the hold")
			}
			if time.Now().After(deadline) {
				t.Fatalf("the held conflict is %s after 30s, want superseded", hc.Status)
			}
			time.Sleep(50 * time.Millisecond)
		}
		e.quiet(t)
		if got := contactField(t, e, p.ID(), "mobilephone"); got != "555-0412" {
			t.Errorf("CRM mobile = %q, want 555-0412 (both sides agree)", got)
		}
		if got := telecomValue(t, e, p.ID(), "mobile"); got != "555-0412" {
			t.Errorf("FHIR mobile = %q, want 555-0412", got)
		}
		for _, d := range e.decisions(t, p.ID()) {
			if d.Reason == "conflict_resolved" {
				t.Errorf("a stale resolution was written: %s/%s (%s)", d.Outcome, d.Reason, d.Message)
			}
		}
	})
}
