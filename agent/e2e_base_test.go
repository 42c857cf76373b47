package agent_test

import (
	"context"
	"encoding/base64"
	"errors"
	"testing"
	"time"

	"gorm.io/gorm"

	"github.com/fhirsync/fhirsync/agent"
	"github.com/fhirsync/fhirsync/agent/crm"
	"github.com/fhirsync/fhirsync/agent/fhir"
	"github.com/fhirsync/fhirsync/logs"
	"github.com/fhirsync/fhirsync/storage/storagetest"
)

// After a sync in either direction, the pair's base holds the keyed hash
// of each mapped attribute's value on each side as synced, under the
// installation's key; without the key no base is kept.
func TestEndToEndBaseStateAfterASync(t *testing.T) {
	t.Parallel()
	key, err := base64.StdEncoding.DecodeString("ZTJlLXRlc3Qta2V5LXNlY3JldA==")
	if err != nil {
		t.Fatal(err)
	}
	storagetest.Each(t, func(t *testing.T, db *gorm.DB) {
		e := startEnv(t, db, agent.Config{Workers: 2, RetryBase: 100 * time.Millisecond, RetryMax: 300 * time.Millisecond, BaseKey: key})
		ctx := context.Background()
		created, err := e.fhir.Create(ctx, fhir.Resource{"resourceType": "Patient",
			"name":      []any{map[string]any{"use": "official", "family": "Basewright", "given": []any{"Ada"}}},
			"birthDate": "1980-01-02"})
		if err != nil {
			t.Fatal(err)
		}
		id := created.ID()
		e.poller.Trigger()
		e.waitDecision(t, id, logs.FHIRToCRM, "created")
		contact, err := e.crmHuman.Retrieve(ctx, crm.ByKey("contacts", "msemr_azurefhirid", id))
		if err != nil {
			t.Fatalf("the contact was not created: %v", err)
		}
		contactID := contact.String("contactid")
		h := func(attr, side string, v any) [16]byte {
			return agent.BaseHash(key, "patient-contact", id, attr, side, v)
		}

		base, version, err := agent.BaseHashes(ctx, db, "patient-contact", id, contactID)
		if err != nil {
			t.Fatalf("no base state after the create: %v", err)
		}
		if version == 0 {
			t.Error("the base does not record the map version")
		}
		tests := []struct {
			name, attr string
			fhir, crm  any
		}{
			{name: "family name", attr: "last-name", fhir: []any{"Basewright"}, crm: "Basewright"},
			{name: "given name", attr: "first-name", fhir: []any{"Ada"}, crm: "Ada"},
			{name: "birth date", attr: "birth-date", fhir: []any{"1980-01-02"}, crm: "1980-01-02"},
			{name: "absent on both sides", attr: "suffix", fhir: nil, crm: nil},
		}
		for _, tt := range tests {
			got, ok := base[tt.attr]
			switch {
			case !ok:
				t.Errorf("%s: no hashes for %s", tt.name, tt.attr)
			case got[0] != h(tt.attr, "fhir", tt.fhir):
				t.Errorf("%s: the FHIR hash is not that of the synced value", tt.name)
			case got[1] != h(tt.attr, "crm", tt.crm):
				t.Errorf("%s: the CRM hash is not that of the synced value", tt.name)
			}
		}

		// A care coordinator sets the email in the CRM: written back to
		// FHIR, and the base follows on both sides.
		if _, err := e.crmHuman.Upsert(ctx, crm.ByID("contacts", contactID), crm.Record{"emailaddress1": "base@example.org"},
			crm.UpsertOptions{Mode: crm.UpdateOnly}); err != nil {
			t.Fatal(err)
		}
		e.waitDecision(t, contactID, logs.CRMToFHIR, "updated")
		after, _, err := agent.BaseHashes(ctx, db, "patient-contact", id, contactID)
		if err != nil {
			t.Fatalf("no base state after the write-back: %v", err)
		}
		email := after["email"]
		if email[0] != h("email", "fhir", []any{"base@example.org"}) || email[1] != h("email", "crm", "base@example.org") {
			t.Error("the base does not hold the email written back")
		}
		if after["last-name"] != base["last-name"] {
			t.Error("an attribute neither side changed has a new base")
		}
		if _, _, err := agent.BaseHashes(ctx, db, "patient-contact", id, "another-contact"); !errors.Is(err, agent.ErrNoBase) {
			t.Errorf("a base was served for another pairing: %v", err)
		}
	})
}
