package agent_test

import (
	"context"
	"testing"
	"time"

	"gorm.io/gorm"

	"github.com/fhirsync/fhirsync/agent"
	"github.com/fhirsync/fhirsync/agent/crm"
	"github.com/fhirsync/fhirsync/agent/fhir"
	"github.com/fhirsync/fhirsync/queues"
	"github.com/fhirsync/fhirsync/storage/storagetest"
)

// TestWriteBackWithoutLinkCache checks that the link table really is only
// a cache: with it emptied (a crash before it was saved, or a rebuild), a
// CRM edit still finds the Patient through the FHIR id the contact holds
// in its correlation attribute, and updates it instead of creating a
// second one.
func TestWriteBackWithoutLinkCache(t *testing.T) {
	t.Parallel()
	storagetest.Each(t, func(t *testing.T, db *gorm.DB) {
		e := startEnv(t, db, agent.Config{Workers: 2, RetryBase: 100 * time.Millisecond, RetryMax: 300 * time.Millisecond},
			envOptions{noPoller: true})
		ctx := context.Background()
		p, err := e.fhir.Create(ctx, fhir.Resource{"resourceType": "Patient", "gender": "male", "birthDate": "1960-06-06",
			"name": []any{map[string]any{"use": "official", "family": "Relinkson", "given": []any{"Rolf"}}}})
		if err != nil {
			t.Fatal(err)
		}
		e.byMessage(t, e.notify(t, queues.SideFHIR, "Patient", p.ID(), "", queues.EventCreated), "created")
		e.quiet(t)
		contactID := contactOf(t, e, p.ID())
		patientsBefore := len(allIDs(t, e, "Patient"))

		if err := db.Exec("DELETE FROM agent_links").Error; err != nil {
			t.Fatal(err)
		}
		since := time.Now()
		if _, err := e.crmHuman.Upsert(ctx, crm.ByID("contacts", contactID), crm.Record{"emailaddress1": "relinked@example.org"},
			crm.UpsertOptions{Mode: crm.UpdateOnly}); err != nil {
			t.Fatal(err)
		}
		d := e.byMessage(t, lastCRMMessage(t, e, contactID, since, "updated"), "updated")
		if d.Target.ID != p.ID() {
			t.Errorf("the write-back went to Patient/%s, want Patient/%s", d.Target.ID, p.ID())
		}
		after, err := e.fhir.Read(ctx, "Patient", p.ID())
		if err != nil {
			t.Fatal(err)
		}
		if !hasEmail(after, "relinked@example.org") {
			t.Error("the original Patient lacks the coordinator's email")
		}
		e.quiet(t)
		if n := len(allIDs(t, e, "Patient")); n != patientsBefore {
			t.Errorf("FHIR holds %d patients after the write-back, want %d (no duplicate)", n, patientsBefore)
		}
	})
}
