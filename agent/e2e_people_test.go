package agent_test

import (
	"context"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"gorm.io/gorm"

	"github.com/fhirsync/fhirsync/agent"
	"github.com/fhirsync/fhirsync/agent/crm"
	"github.com/fhirsync/fhirsync/logs"
	"github.com/fhirsync/fhirsync/sandbox/crmserver"
	"github.com/fhirsync/fhirsync/sandbox/synth"
	"github.com/fhirsync/fhirsync/storage/storagetest"
)

// TestCoordinatorEditIsSyncedAgentWriteIsEcho signs the sandbox's care
// coordinator in beside the agent's application user: the contact the
// agent creates comes back from the CRM's service endpoint as its own
// write and is skipped, while the coordinator's edit of the same contact,
// made with the coordinator's own token, is an edit and is sent to FHIR;
// the Patient version the agent writes from it is skipped in turn.
func TestCoordinatorEditIsSyncedAgentWriteIsEcho(t *testing.T) {
	t.Parallel()
	storagetest.Each(t, func(t *testing.T, db *gorm.DB) {
		e := startEnv(t, db, agent.Config{Workers: 4, RetryBase: 200 * time.Millisecond, RetryMax: time.Second}, envOptions{
			crmOptions: func(o *crmserver.Options) {
				o.Tokens[crmserver.CoordinatorToken] = crmserver.CoordinatorUserID
			},
		})
		ctx := context.Background()
		// The coordinator reaches the same sandbox CRM on a listener of their own.
		crmHTTP := httptest.NewServer(e.crmSrv)
		t.Cleanup(crmHTTP.Close)
		coordinator, err := crm.New(crm.Config{URL: crmHTTP.URL, Auth: crm.AuthBearer, Token: crmserver.CoordinatorToken})
		if err != nil {
			t.Fatal(err)
		}
		if who, err := coordinator.WhoAmI(ctx); err != nil || who != crmserver.CoordinatorUserID {
			t.Fatalf("WhoAmI as the coordinator = %q, %v", who, err)
		}

		// The agent creates the patient's contact; its echo is skipped.
		patientID := synth.PatientID(0)
		e.waitDecision(t, patientID, logs.FHIRToCRM, "created")
		contact, err := coordinator.Retrieve(ctx, crm.ByKey("contacts", "msemr_azurefhirid", patientID), "contactid")
		if err != nil {
			t.Fatalf("the contact was not created: %v", err)
		}
		contactID := contact.String("contactid")
		if echo := e.waitDecision(t, contactID, logs.CRMToFHIR, "own_write_echo"); echo.Outcome != logs.OutcomeSkipped {
			t.Errorf("the agent's own write: %s/%s, want skipped/own_write_echo", echo.Outcome, echo.Reason)
		}

		// The coordinator changes the contact's email with their own token.
		const email = "coordinator.people@example.org"
		if _, err := coordinator.Upsert(ctx, crm.ByID("contacts", contactID), crm.Record{"emailaddress1": email},
			crm.UpsertOptions{Mode: crm.UpdateOnly}); err != nil {
			t.Fatal(err)
		}
		edited, err := coordinator.Retrieve(ctx, crm.ByID("contacts", contactID), "_modifiedby_value")
		if err != nil {
			t.Fatal(err)
		}
		if by := edited.String("_modifiedby_value"); by != crmserver.CoordinatorUserID {
			t.Fatalf("contact modified by %q, want the coordinator %q", by, crmserver.CoordinatorUserID)
		}
		sent := e.waitDecision(t, contactID, logs.CRMToFHIR, "updated")
		if sent.Outcome != logs.OutcomeSent {
			t.Errorf("the coordinator's edit: %s/%s, want sent/updated", sent.Outcome, sent.Reason)
		}
		if !strings.Contains(sent.Source.Version, edited.ETag()) {
			t.Errorf("the sent decision is for version %q, want the coordinator's %q", sent.Source.Version, edited.ETag())
		}
		patient, err := e.fhir.Read(ctx, "Patient", patientID)
		if err != nil {
			t.Fatal(err)
		}
		if !hasEmail(patient, email) {
			t.Error("the Patient lacks the coordinator's email")
		}

		// The Patient version the agent wrote from that edit is its own
		// write too: the history feed finds it and it is skipped.
		e.poller.Trigger()
		if echo := e.waitDecision(t, patientID, logs.FHIRToCRM, "own_write_echo"); echo.Outcome != logs.OutcomeSkipped {
			t.Errorf("the agent's write-back: %s/%s, want skipped/own_write_echo", echo.Outcome, echo.Reason)
		}
	})
}
