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
	"github.com/fhirsync/fhirsync/queues/servicebus"
	"github.com/fhirsync/fhirsync/queues/servicebus/sbtest"
	"github.com/fhirsync/fhirsync/sandbox/medplum"
	"github.com/fhirsync/fhirsync/storage/storagetest"
)

// TestEndToEndServiceBusMedplum runs the agent over the real azservicebus
// client talking AMQP to the fake Service Bus, against an independent FHIR
// server (Medplum's router, UUID version ids) and the sandbox CRM, whose
// service-endpoint emulation posts RemoteExecutionContext messages to the
// crm-changes queue on the bus — the production topology on one machine.
func TestEndToEndServiceBusMedplum(t *testing.T) {
	t.Parallel()
	storagetest.Each(t, func(t *testing.T, db *gorm.DB) {
		sb := sbtest.Start(t,
			sbtest.QueueConfig{Name: "fhir-changes", Sessions: true, LockDuration: 30 * time.Second, MaxDeliveryCount: 20},
			sbtest.QueueConfig{Name: "crm-changes", Sessions: true, LockDuration: 30 * time.Second, MaxDeliveryCount: 20})
		fhirURL := medplum.Start(t)
		open := func(t *testing.T, name string) queues.Queue {
			q, err := servicebus.New(servicebus.Config{ConnectionString: sb.ConnectionString(), Sessions: true}, name)
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { _ = q.Close(context.Background()) })
			return q
		}
		e := startEnv(t, db, agent.Config{Workers: 4, RetryBase: 200 * time.Millisecond, RetryMax: 2 * time.Second},
			envOptions{fhirURL: fhirURL, queue: open})
		ctx := context.Background()

		// A clinician registers a patient in Medplum; the history feed
		// finds it and the notice travels over the bus.
		created, err := e.fhir.Create(ctx, fhir.Resource{"resourceType": "Patient", "active": true, "gender": "female",
			"birthDate": "1990-02-03", "name": []any{map[string]any{"use": "official", "family": "Øverby", "given": []any{"Ådne"}}},
			"telecom": []any{map[string]any{"system": "email", "value": "oeverby@example.org"}}})
		if err != nil {
			t.Fatal(err)
		}
		id := created.ID()
		e.poller.Trigger()
		d := e.waitDecision(t, id, logs.FHIRToCRM, "created")
		if d.Source.Version != created.VersionID() {
			t.Errorf("decision source version %q, want Medplum's %q", d.Source.Version, created.VersionID())
		}
		contact, err := e.crmHuman.Retrieve(ctx, crm.ByKey("contacts", "msemr_azurefhirid", id))
		if err != nil {
			t.Fatalf("contact not created: %v", err)
		}
		if contact.String("lastname") != "Øverby" || contact.String("firstname") != "Ådne" || contact.String("birthdate") != "1990-02-03" {
			t.Errorf("contact = %v", contact)
		}
		contactID := contact.String("contactid")
		// The CRM's RemoteExecutionContext for that write comes back over
		// the bus and is recognised as fhirsync's own.
		e.waitDecision(t, contactID, logs.CRMToFHIR, "own_write_echo")

		// A care coordinator changes the email; it is written back to
		// Medplum with If-Match on its UUID version.
		if _, err := e.crmHuman.Upsert(ctx, crm.ByID("contacts", contactID), crm.Record{"emailaddress1": "coordinator@example.org"},
			crm.UpsertOptions{Mode: crm.UpdateOnly}); err != nil {
			t.Fatal(err)
		}
		e.waitDecision(t, contactID, logs.CRMToFHIR, "updated")
		after, err := e.fhir.Read(ctx, "Patient", id)
		if err != nil {
			t.Fatal(err)
		}
		if !hasEmail(after, "coordinator@example.org") {
			t.Error("Medplum's Patient lacks the coordinator's email")
		}
		if after["active"] != true || after["birthDate"] != "1990-02-03" {
			t.Errorf("write-back lost unmapped or mapped data: active=%v birthDate=%v", after["active"], after["birthDate"])
		}
		// Medplum's history shows fhirsync's version; its notice is an echo.
		e.poller.Trigger()
		e.waitDecision(t, id, logs.FHIRToCRM, "own_write_echo")
		if n := e.crmSrv.Count("contact"); n != 1 {
			t.Errorf("CRM holds %d contacts, want 1", n)
		}
	})
}
