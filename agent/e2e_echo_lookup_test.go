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
	"github.com/fhirsync/fhirsync/queues"
	"github.com/fhirsync/fhirsync/sandbox/crmserver"
	"github.com/fhirsync/fhirsync/sandbox/synth"
	"github.com/fhirsync/fhirsync/storage/storagetest"
)

// decisionOf waits for the first decision of one message, whatever its
// reason.
func (e *env) decisionOf(t *testing.T, id string) logs.Decision {
	t.Helper()
	deadline := time.Now().Add(60 * time.Second)
	for time.Now().Before(deadline) {
		page, err := e.logs.Search(context.Background(), logs.Filter{MessageID: id}, "", 50)
		if err != nil {
			t.Fatal(err)
		}
		for _, d := range page.Decisions {
			if d.Outcome != logs.OutcomeFailed {
				return d
			}
		}
		time.Sleep(50 * time.Millisecond)
	}
	t.Fatalf("message %s: no decision within 60s", id)
	return logs.Decision{}
}

// TestEchoLookupEditEndToEnd: a care coordinator changes only the general
// practitioner of a contact fhirsync wrote (the lookup column
// msemr_generalpractitioner, set through its navigation property as the
// CRM's forms do) and the change notice names no version, as a service
// endpoint step without an image posts it. The edit is not the echo of
// fhirsync's write — the echo check compares the lookup's id — so it
// reaches the Patient's generalPractitioner. fhirsync's own write of that
// lookup is still told as its echo, also when the row's version moved on
// through an edit of an unmapped column, and its write of the Patient
// comes back as an echo too: nothing is written back to the CRM.
func TestEchoLookupEditEndToEnd(t *testing.T) {
	t.Parallel()
	storagetest.Each(t, func(t *testing.T, db *gorm.DB) {
		e := startEnv(t, db, agent.Config{Workers: 4, RetryBase: 200 * time.Millisecond, RetryMax: time.Second}, envOptions{
			noPoller:   true,
			crmOptions: func(o *crmserver.Options) { o.Endpoint = nil },
		})
		ctx := context.Background()
		for _, typ := range []string{"Organization", "Practitioner"} {
			for _, id := range allIDs(t, e, typ) {
				e.notify(t, queues.SideFHIR, typ, id, "", queues.EventChanged)
			}
			e.quiet(t)
		}
		doctors := allIDs(t, e, "Practitioner")
		if len(doctors) < 3 {
			t.Fatalf("the sandbox FHIR server holds %d practitioners, want 3", len(doctors))
		}
		contactOf := func(t *testing.T, practitioner string) string {
			t.Helper()
			rec, err := e.crmHuman.Retrieve(ctx, crm.ByKey("contacts", "msemr_azurefhirid", practitioner), "contactid")
			if err != nil {
				t.Fatalf("the contact of practitioner %s: %v", practitioner, err)
			}
			return strings.ToLower(rec.String("contactid"))
		}

		// fhirsync creates the contact of a new patient of doctors[0].
		pat := synth.New(23).Patient(1)
		delete(pat, "id")
		delete(pat, "managingOrganization")
		pat["generalPractitioner"] = []any{map[string]any{"reference": "Practitioner/" + doctors[0]}}
		created, err := e.fhir.Create(ctx, fhir.Resource(pat))
		if err != nil {
			t.Fatal(err)
		}
		e.byMessage(t, e.notify(t, queues.SideFHIR, "Patient", created.ID(), created.VersionID(), queues.EventCreated), "created")
		contact, err := e.crmHuman.Retrieve(ctx, crm.ByKey("contacts", "msemr_azurefhirid", created.ID()))
		if err != nil {
			t.Fatal(err)
		}
		contactID := contact.String("contactid")
		gp := func(t *testing.T) (string, string) {
			t.Helper()
			rec, err := e.crmHuman.Retrieve(ctx, crm.ByID("contacts", contactID), "_msemr_generalpractitioner_value")
			if err != nil {
				t.Fatal(err)
			}
			return strings.ToLower(rec.String("_msemr_generalpractitioner_value")), rowVersion(rec.ETag())
		}
		if got, _ := gp(t); got != contactOf(t, doctors[0]) {
			t.Fatalf("the contact's general practitioner is %q, want the contact of %s", got, doctors[0])
		}

		// The clinician moves the patient to doctors[1]; fhirsync writes
		// the lookup alone. Its echo, read at fhirsync's version and (after
		// an edit of a column no map reads) at a later one, is an echo.
		moved, err := e.fhir.Read(ctx, "Patient", created.ID())
		if err != nil {
			t.Fatal(err)
		}
		moved["generalPractitioner"] = []any{map[string]any{"reference": "Practitioner/" + doctors[1]}}
		if moved, err = e.fhir.Update(ctx, moved, moved.VersionID()); err != nil {
			t.Fatal(err)
		}
		d := e.byMessage(t, e.notify(t, queues.SideFHIR, "Patient", moved.ID(), moved.VersionID(), queues.EventUpdated), "updated")
		if !strings.Contains(d.Message, "Updated 1 field(s)") {
			t.Errorf("fhirsync's update: %q, want the general practitioner alone", d.Message)
		}
		if got, _ := gp(t); got != contactOf(t, doctors[1]) {
			t.Fatalf("the contact's general practitioner is %q after fhirsync's update, want the contact of %s", got, doctors[1])
		}
		if d := e.decisionOf(t, e.crmNotice(t, contactID, "", agentUser, "")); d.Reason != "own_write_echo" {
			t.Errorf("the echo of fhirsync's write of the lookup: %s/%s (%s), want own_write_echo", d.Outcome, d.Reason, d.Message)
		}
		if _, err := e.crmHuman.Upsert(ctx, crm.ByID("contacts", contactID), crm.Record{"jobtitle": "Night porter"}, crm.UpsertOptions{Mode: crm.UpdateOnly}); err != nil {
			t.Fatal(err)
		}
		if d := e.decisionOf(t, e.crmNotice(t, contactID, "", humanUser, "")); d.Reason != "own_write_echo" {
			t.Errorf("a notice read after an edit of an unmapped column: %s/%s (%s), want own_write_echo (the mapped values, lookup included, are fhirsync's)", d.Outcome, d.Reason, d.Message)
		}

		// The coordinator changes the general practitioner alone, to
		// doctors[2]'s contact (its id in upper case, as a client may
		// write it).
		third := contactOf(t, doctors[2])
		if _, err := e.crmHuman.Upsert(ctx, crm.ByID("contacts", contactID), crm.Record{
			"msemr_generalpractitioner@odata.bind": "/contacts(" + strings.ToUpper(third) + ")"}, crm.UpsertOptions{Mode: crm.UpdateOnly}); err != nil {
			t.Fatal(err)
		}
		edit := e.decisionOf(t, e.crmNotice(t, contactID, "", humanUser, ""))
		if edit.Outcome != logs.OutcomeSent || edit.Reason != "updated" {
			t.Fatalf("the coordinator's edit of the general practitioner: %s/%s (%s), want sent/updated", edit.Outcome, edit.Reason, edit.Message)
		}
		after, err := e.fhir.Read(ctx, "Patient", created.ID())
		if err != nil {
			t.Fatal(err)
		}
		if got := fmt.Sprint(after["generalPractitioner"]); !strings.Contains(got, "Practitioner/"+doctors[2]) || strings.Contains(got, "Practitioner/"+doctors[1]) {
			t.Errorf("the Patient's generalPractitioner = %s, want Practitioner/%s", got, doctors[2])
		}
		_, before := gp(t)

		// fhirsync's write of the Patient comes back as its echo; a late
		// notice of the contact is in step; the contact is not written.
		if d := e.decisionOf(t, e.notify(t, queues.SideFHIR, "Patient", after.ID(), after.VersionID(), queues.EventUpdated)); d.Reason != "own_write_echo" {
			t.Errorf("the echo of fhirsync's write of the Patient: %s/%s (%s), want own_write_echo", d.Outcome, d.Reason, d.Message)
		}
		if d := e.decisionOf(t, e.crmNotice(t, contactID, "", humanUser, "#late")); d.Outcome != logs.OutcomeSkipped {
			t.Errorf("a late notice of the contact: %s/%s (%s), want skipped", d.Outcome, d.Reason, d.Message)
		}
		e.quiet(t)
		if got, v := gp(t); got != third || v != before {
			t.Errorf("the contact after the sync: general practitioner %q at version %s, want %q still at %s", got, v, third, before)
		}
	})
}
