package agent_test

import (
	"context"
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

// crmNotice puts a CRM change notice on the agent's queue as the CRM's
// service endpoint would, authored by user; suffix, when set, makes the
// message id differ from the notice's own (a redelivery the queue's
// duplicate detection no longer sees).
func (e *env) crmNotice(t *testing.T, id, version, user, suffix string) string {
	t.Helper()
	n := queues.Notice{V: queues.NoticeVersion, Side: queues.SideCRM, Type: "contact", ID: id, Version: version,
		Event: queues.EventUpdated, Origin: "test", ChangedAt: time.Now(), Initiator: user}
	msg, err := n.Message()
	if err != nil {
		t.Fatal(err)
	}
	msg.ID += suffix
	if err := e.crmQ.Send(context.Background(), msg); err != nil {
		t.Fatal(err)
	}
	return msg.ID
}

// rowVersion is the row version a change notice carries for an ETag.
func rowVersion(etag string) string {
	return strings.Trim(strings.TrimPrefix(etag, "W/"), `"`)
}

// startEchoEnv starts an agent with no poller and the CRM's own notices
// off, so the test decides the order of notices; returns it with a CRM
// client of another integration signed in as the agent's application
// user, and the Patient synth.New(seed).Patient(i) that fhirsync created
// in FHIR and synced to the returned contact.
func startEchoEnv(t *testing.T, db *gorm.DB, cfg agent.Config, seed int64, i int) (*env, *crm.Client, fhir.Resource, crm.Record) {
	t.Helper()
	e := startEnv(t, db, cfg, envOptions{
		noPoller:   true,
		crmOptions: func(o *crmserver.Options) { o.Endpoint = nil },
	})
	ctx := context.Background()
	root := e.crmHuman.Root()
	other, err := crm.New(crm.Config{URL: root[:strings.Index(root, "/api/data")], Auth: crm.AuthBearer, Token: "agent-token"})
	if err != nil {
		t.Fatal(err)
	}
	pat := synth.New(seed).Patient(i)
	delete(pat, "id")
	delete(pat, "generalPractitioner")
	delete(pat, "managingOrganization")
	created, err := e.fhir.Create(ctx, fhir.Resource(pat))
	if err != nil {
		t.Fatal(err)
	}
	e.byMessage(t, e.notify(t, queues.SideFHIR, "Patient", created.ID(), created.VersionID(), queues.EventCreated), "created")
	contact, err := e.crmHuman.Retrieve(ctx, crm.ByKey("contacts", "msemr_azurefhirid", created.ID()))
	if err != nil {
		t.Fatalf("the contact was not created: %v", err)
	}
	return e, other, created, contact
}

// TestEchoIsToldFromAnEditBySameUser: the agent's own write comes back as
// an echo; the same application user, signed in by another integration,
// edits the record after the agent's write and before its echo is
// processed, and that edit is synced; the echo (and its redelivery) stays
// an echo. The CRM's own notices are off so the test decides the order.
func TestEchoIsToldFromAnEditBySameUser(t *testing.T) {
	t.Parallel()
	storagetest.Each(t, func(t *testing.T, db *gorm.DB) {
		// fhirsync creates the contact of a new patient.
		e, other, created, contact := startEchoEnv(t, db, agent.Config{Workers: 4, RetryBase: 200 * time.Millisecond, RetryMax: time.Second}, 11, 2)
		ctx := context.Background()
		contactID, written := contact.String("contactid"), rowVersion(contact.ETag())

		cases := []struct {
			name, version, user, suffix string
		}{
			{name: "the notice names the version fhirsync wrote", version: written, user: agentUser},
			{name: "the notice names no version; the record read is fhirsync's", version: "", user: agentUser},
		}
		for _, c := range cases {
			d := e.byMessage(t, e.crmNotice(t, contactID, c.version, c.user, c.suffix), "own_write_echo")
			if d.Outcome != logs.OutcomeSkipped {
				t.Errorf("%s: decision %s/%s, want skipped/own_write_echo", c.name, d.Outcome, d.Reason)
			}
		}

		// fhirsync writes the contact again (the clinician renamed the
		// patient); before its echo is processed another integration,
		// signed in as the same application user, changes the email.
		renamed, err := e.fhir.Read(ctx, "Patient", created.ID())
		if err != nil {
			t.Fatal(err)
		}
		names := renamed["name"].([]any)
		names[0].(map[string]any)["family"] = "Echotest"
		if renamed, err = e.fhir.Update(ctx, renamed, renamed.VersionID()); err != nil {
			t.Fatal(err)
		}
		e.byMessage(t, e.notify(t, queues.SideFHIR, "Patient", renamed.ID(), renamed.VersionID(), queues.EventUpdated), "updated")
		mine, err := e.crmHuman.Retrieve(ctx, crm.ByID("contacts", contactID))
		if err != nil {
			t.Fatal(err)
		}
		if mine.String("lastname") != "Echotest" {
			t.Fatalf("contact lastname = %q after fhirsync's update", mine.String("lastname"))
		}
		ours := rowVersion(mine.ETag())
		res, err := other.Upsert(ctx, crm.ByID("contacts", contactID), crm.Record{"emailaddress1": "other-integration@example.org"},
			crm.UpsertOptions{Mode: crm.UpdateOnly})
		if err != nil {
			t.Fatal(err)
		}
		theirs := rowVersion(res.ETag)
		if theirs == ours {
			t.Fatalf("the other integration's edit kept version %s", ours)
		}

		// The echo of fhirsync's version is processed after the edit: it is
		// still an echo, and the edit, by the same user, is synced.
		echo := e.byMessage(t, e.crmNotice(t, contactID, ours, agentUser, ""), "own_write_echo")
		if echo.Outcome != logs.OutcomeSkipped {
			t.Errorf("echo decision %s/%s", echo.Outcome, echo.Reason)
		}
		edit := e.byMessage(t, e.crmNotice(t, contactID, theirs, agentUser, ""), "updated")
		if edit.Outcome != logs.OutcomeSent {
			t.Errorf("edit decision %s/%s, want sent/updated", edit.Outcome, edit.Reason)
		}
		after, err := e.fhir.Read(ctx, "Patient", created.ID())
		if err != nil {
			t.Fatal(err)
		}
		if !hasEmail(after, "other-integration@example.org") {
			t.Error("the other integration's edit did not reach the Patient")
		}
		if firstOfficialFamily(after) != "Echotest" {
			t.Errorf("the Patient's family = %q, want the name fhirsync synced", firstOfficialFamily(after))
		}

		// A redelivery of the echo notice is still an echo, though the
		// record has moved on since.
		again := e.byMessage(t, e.crmNotice(t, contactID, ours, agentUser, "#redelivered"), "own_write_echo")
		if again.Outcome != logs.OutcomeSkipped {
			t.Errorf("redelivered echo decision %s/%s", again.Outcome, again.Reason)
		}
		// And a notice without a version, read after the edit, is an edit
		// (its values are not what fhirsync wrote): synced or already in
		// step, never an echo.
		d := e.byMessage(t, e.crmNotice(t, contactID, "", agentUser, "#late"), "unchanged")
		if d.Outcome != logs.OutcomeSkipped {
			t.Errorf("late versionless notice decision %s/%s, want skipped/unchanged", d.Outcome, d.Reason)
		}
	})
}
