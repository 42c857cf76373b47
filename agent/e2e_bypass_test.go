package agent_test

import (
	"context"
	"testing"
	"time"

	"github.com/fhirsync/fhirsync/agent"
	"github.com/fhirsync/fhirsync/agent/crm"
	"github.com/fhirsync/fhirsync/logs"
	"github.com/fhirsync/fhirsync/sandbox/synth"
	"github.com/fhirsync/fhirsync/storage/storagetest"
)

// TestEndToEndBypassedOwnSteps runs the round trip of
// TestEndToEndEmbeddedQueueAndSandboxes with the agent's CRM writes naming
// the sandbox endpoint's steps (crm.bypass_own_steps): the contacts it
// writes are not posted back, so no message and no decision is spent on
// them, and a care coordinator's later edit still is posted and reaches
// the Patient.
func TestEndToEndBypassedOwnSteps(t *testing.T) {
	t.Parallel()
	e := startEnv(t, storagetest.Open(t, "sqlite"), agent.Config{Workers: 4, RetryBase: 200 * time.Millisecond, RetryMax: time.Second},
		envOptions{bypassOwnSteps: true})
	ctx := context.Background()
	id := synth.PatientID(0)
	d := e.waitDecision(t, id, logs.FHIRToCRM, "created")
	e.quiet(t)
	e.checkBypassed(t, 0)

	// A care coordinator's edit is not the agent's: it is posted and
	// written back to the Patient.
	if _, err := e.crmHuman.Upsert(ctx, crm.ByID("contacts", d.Target.ID), crm.Record{"emailaddress1": "coordinator-set@example.org"},
		crm.UpsertOptions{Mode: crm.UpdateOnly}); err != nil {
		t.Fatal(err)
	}
	e.waitDecision(t, d.Target.ID, logs.CRMToFHIR, "updated")
	e.quiet(t)
	for _, x := range e.decisions(t, d.Target.ID) {
		if x.Direction == logs.CRMToFHIR && x.Reason != "updated" {
			t.Errorf("the agent's own write of the contact came back: %s %s", x.Outcome, x.Reason)
		}
	}
	after, err := e.fhir.Read(ctx, "Patient", id)
	if err != nil {
		t.Fatal(err)
	}
	if !hasEmail(after, "coordinator-set@example.org") {
		t.Errorf("the Patient lacks the coordinator's email")
	}
	if st := e.crmSrv.Stats(); st.EndpointSent != 1 {
		t.Errorf("sandbox endpoint posted %d changes, want the coordinator's one", st.EndpointSent)
	}
}
