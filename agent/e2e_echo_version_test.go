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
	"github.com/fhirsync/fhirsync/logs"
	"github.com/fhirsync/fhirsync/queues"
	"github.com/fhirsync/fhirsync/storage/storagetest"
)

// crmNoticeWithoutVersion puts a CRM change notice naming no row version
// on the agent's queue, by user, as a service endpoint step registered
// without an image posts it.
func (e *env) crmNoticeWithoutVersion(t *testing.T, id, user string, ev queues.Event) string {
	t.Helper()
	n := queues.Notice{V: queues.NoticeVersion, Side: queues.SideCRM, Type: "contact", ID: id,
		Event: ev, Origin: "test", ChangedAt: time.Now(), Initiator: user}
	msg, err := n.Message()
	if err != nil {
		t.Fatal(err)
	}
	if err := e.crmQ.Send(context.Background(), msg); err != nil {
		t.Fatal(err)
	}
	return msg.ID
}

// TestEchoOfACreateIsToldFromItsVersion: the versionless notice, by the
// agent's user, of a contact fhirsync created is own_write_echo told from
// the row's version (the decision's message is the create-echo's, not the
// one of an echo told from a full read); once another integration signed
// in as the same application user has edited the contact, the same notice
// is read and its edit synced to the Patient.
func TestEchoOfACreateIsToldFromItsVersion(t *testing.T) {
	t.Parallel()
	storagetest.Each(t, func(t *testing.T, db *gorm.DB) {
		e, other, created, contact := startEchoEnv(t, db, agent.Config{Workers: 4, RetryBase: 200 * time.Millisecond, RetryMax: time.Second, BaseKey: testBaseKey}, 12, 3)
		ctx := context.Background()
		id := contact.String("contactid")
		echo := e.byMessage(t, e.crmNoticeWithoutVersion(t, id, agentUser, queues.EventCreated), "own_write_echo")
		if echo.Outcome != logs.OutcomeSkipped || !strings.Contains(echo.Message, "as fhirsync created it") {
			t.Errorf("create echo decision %s/%s %q, want skipped/own_write_echo told from the row's version", echo.Outcome, echo.Reason, echo.Message)
		}

		// Another integration, signed in as the agent's user, edits the
		// contact: its notice names no version either, and must flow.
		if _, err := other.Upsert(ctx, crm.ByID("contacts", id), crm.Record{"firstname": "Sameuser"}, crm.UpsertOptions{Mode: crm.UpdateOnly}); err != nil {
			t.Fatal(err)
		}
		d := e.byMessage(t, e.crmNoticeWithoutVersion(t, id, agentUser, queues.EventCreated), "updated")
		if d.Outcome != logs.OutcomeSent {
			t.Errorf("same-user edit decision %s/%s, want sent/updated", d.Outcome, d.Reason)
		}
		got, err := e.fhir.Read(ctx, "Patient", created.ID())
		if err != nil {
			t.Fatal(err)
		}
		if b, _ := json.Marshal(got); !strings.Contains(string(b), "Sameuser") {
			t.Errorf("the Patient does not carry the same-user edit (first name Sameuser)")
		}
	})
}
