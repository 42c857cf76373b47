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

// crmCreateNotice puts a CRM create notice without a row version on the
// agent's queue, as a service endpoint without images posts it.
func (e *env) crmCreateNotice(t *testing.T, id, user string) string {
	t.Helper()
	n := queues.Notice{V: queues.NoticeVersion, Side: queues.SideCRM, Type: "contact", ID: id,
		Event: queues.EventCreated, Origin: "test", ChangedAt: time.Now(), Initiator: user}
	msg, err := n.Message()
	if err != nil {
		t.Fatal(err)
	}
	if err := e.crmQ.Send(context.Background(), msg); err != nil {
		t.Fatal(err)
	}
	return msg.ID
}

// TestEchoOfACreateIsToldWithoutARead: the create notice, naming no
// version, of a contact fhirsync created is its echo, told without reading
// the contact (the decision's message is the create-echo's, not the one
// of an echo told from the record read); a contact created by another
// integration signed in as the same application user is synced.
func TestEchoOfACreateIsToldWithoutARead(t *testing.T) {
	t.Parallel()
	storagetest.Each(t, func(t *testing.T, db *gorm.DB) {
		e := startEnv(t, db, agent.Config{Workers: 4, RetryBase: 200 * time.Millisecond, RetryMax: time.Second}, envOptions{
			noPoller:   true,
			crmOptions: func(o *crmserver.Options) { o.Endpoint = nil },
		})
		ctx := context.Background()
		root := e.crmHuman.Root()
		other, err := crm.New(crm.Config{URL: root[:strings.Index(root, "/api/data")], Auth: crm.AuthBearer, Token: "agent-token"})
		if err != nil {
			t.Fatal(err)
		}

		pat := synth.New(12).Patient(3)
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
		echo := e.byMessage(t, e.crmCreateNotice(t, contact.String("contactid"), agentUser), "own_write_echo")
		if echo.Outcome != logs.OutcomeSkipped || !strings.Contains(echo.Message, "created by fhirsync") {
			t.Errorf("create echo decision %s/%s %q, want skipped/own_write_echo told from the create", echo.Outcome, echo.Reason, echo.Message)
		}

		theirs, err := other.Create(ctx, "contacts", crm.Record{"msemr_contacttype": 935000000, "firstname": "Same", "lastname": "Userrow",
			"birthdate": "1971-02-03", "emailaddress1": "same-user@example.org"})
		if err != nil {
			t.Fatal(err)
		}
		d := e.byMessage(t, e.crmCreateNotice(t, theirs, agentUser), "created")
		if d.Outcome != logs.OutcomeSent {
			t.Errorf("other integration's create decision %s/%s, want sent/created", d.Outcome, d.Reason)
		}
	})
}
