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
	"github.com/fhirsync/fhirsync/storage/storagetest"
)

// TestSharedCorrelationColumnEndToEnd syncs a Patient and a Practitioner
// with the same id through the starter maps patient-contact and
// practitioner-contact, which share the contact table and its
// msemr_azurefhirid column. FHIR ids are unique within a resource type
// only (https://hl7.org/fhir/R4/resource.html#id), so both may exist; the
// column's alternate key holds one row per id. The practitioner must not
// take the patient's row: its message ends in one dead-lettered
// mapping_error decision naming both types and the map (no id, no name),
// the patient's contact keeps its values, no second row appears, and the
// agent goes on syncing. So must a row whose contact type this map's
// filter excludes; a lookup through practitioner-contact must not point
// at the patient's row; and a Patient's delete must not remove a
// practitioner's row that holds its id.
func TestSharedCorrelationColumnEndToEnd(t *testing.T) {
	t.Parallel()
	storagetest.Each(t, func(t *testing.T, db *gorm.DB) {
		e := startEnv(t, db, agent.Config{Workers: 2, MaxAttempts: 3, RetryBase: 100 * time.Millisecond, RetryMax: 300 * time.Millisecond},
			envOptions{noPoller: true})
		ctx := context.Background()
		put := func(t *testing.T, typ, id, given, family string) {
			t.Helper()
			res := fhir.Resource{"resourceType": typ, "id": id, "active": true,
				"name": []any{map[string]any{"use": "official", "given": []any{given}, "family": family}}}
			if _, err := e.fhir.Update(ctx, res, ""); err != nil {
				t.Fatalf("putting a %s: %v", typ, err)
			}
		}
		contacts := func(t *testing.T, fhirID string) []crm.Record {
			t.Helper()
			var rows []crm.Record
			err := e.crmHuman.RetrieveMultiple(ctx, "contacts", crm.Query{
				Select: []string{"contactid", "firstname", "lastname", "msemr_contacttype"},
				Filter: fmt.Sprintf("msemr_azurefhirid eq '%s'", fhirID)},
				func(r crm.Record) error { rows = append(rows, r); return nil })
			if err != nil {
				t.Fatal(err)
			}
			return rows
		}
		// settled waits for the message's final decision: one that is not
		// failed (a failed one is retried).
		settled := func(t *testing.T, msg string) logs.Decision {
			t.Helper()
			deadline := time.Now().Add(60 * time.Second)
			for time.Now().Before(deadline) {
				page, err := e.logs.Search(ctx, logs.Filter{MessageID: msg}, "", 50)
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
			t.Fatalf("message %s: no final decision within 60s", msg)
			return logs.Decision{}
		}
		// contactType is a row's contact type in its text form.
		contactType := func(r crm.Record) string { return fmt.Sprint(r["msemr_contacttype"]) }
		wantRefused := func(t *testing.T, d logs.Decision, words ...string) {
			t.Helper()
			if d.Outcome != logs.OutcomeDeadLettered || d.Reason != "mapping_error" || d.EntityMap != "practitioner-contact" {
				t.Fatalf("decision %s/%s under %q (%s), want dead_lettered/mapping_error under practitioner-contact", d.Outcome, d.Reason, d.EntityMap, d.Message)
			}
			for _, w := range words {
				if !strings.Contains(d.Message, w) {
					t.Errorf("the message %q does not name %q", d.Message, w)
				}
			}
		}
		noPHI := func(t *testing.T, d logs.Decision, secrets ...string) {
			t.Helper()
			for _, s := range secrets {
				if s != "" && strings.Contains(strings.ToLower(d.Message), strings.ToLower(s)) {
					t.Errorf("the message %q names %q", d.Message, s)
				}
			}
		}

		t.Run("a practitioner with a synced patient's id", func(t *testing.T) {
			put(t, "Patient", "shared-7", "Petra", "Synthetica")
			e.byMessage(t, e.notify(t, queues.SideFHIR, "Patient", "shared-7", "", queues.EventChanged), "created")
			before := contacts(t, "shared-7")
			if len(before) != 1 || contactType(before[0]) != "935000000" {
				t.Fatalf("contacts of shared-7 after the patient: %v", before)
			}
			row := before[0].String("contactid")

			put(t, "Practitioner", "shared-7", "Doris", "Doctorova")
			d := settled(t, e.notify(t, queues.SideFHIR, "Practitioner", "shared-7", "", queues.EventChanged))
			wantRefused(t, d, "Practitioner", "Patient", "practitioner-contact", "patient-contact", "msemr_azurefhirid")
			noPHI(t, d, "shared-7", row, "Petra", "Synthetica", "Doris", "Doctorova")

			after := contacts(t, "shared-7")
			if len(after) != 1 || after[0].String("contactid") != row || after[0].String("firstname") != "Petra" ||
				after[0].String("lastname") != "Synthetica" || contactType(after[0]) != "935000000" {
				t.Fatalf("contacts of shared-7 after the practitioner: %v, want the patient's row as it was", after)
			}
		})

		t.Run("a patient whose practitioner has a synced patient's id", func(t *testing.T) {
			// The lookup general-practitioner goes through
			// practitioner-contact: the contact holding shared-7 is the
			// patient's, so it must not become the general practitioner.
			res := fhir.Resource{"resourceType": "Patient", "id": "own-13", "active": true,
				"name":                []any{map[string]any{"use": "official", "given": []any{"Paula"}, "family": "Synthetica"}},
				"generalPractitioner": []any{map[string]any{"reference": "Practitioner/shared-7"}}}
			if _, err := e.fhir.Update(ctx, res, ""); err != nil {
				t.Fatal(err)
			}
			d := settled(t, e.notify(t, queues.SideFHIR, "Patient", "own-13", "", queues.EventChanged))
			if d.Outcome != logs.OutcomeDeadLettered || d.Reason != "mapping_error" || d.ReasonSubject != "general-practitioner" {
				t.Fatalf("decision %s/%s at %q (%s), want dead_lettered/mapping_error at general-practitioner", d.Outcome, d.Reason, d.ReasonSubject, d.Message)
			}
			for _, w := range []string{"Practitioner", "Patient", "patient-contact"} {
				if !strings.Contains(d.Message, w) {
					t.Errorf("the message %q does not name %q", d.Message, w)
				}
			}
			noPHI(t, d, "shared-7", "own-13", "Paula", "Petra")
			if rows := contacts(t, "own-13"); len(rows) != 0 {
				t.Fatalf("contacts of own-13: %v, want none", rows)
			}
		})

		t.Run("a practitioner with the id of a contact the map's filter excludes", func(t *testing.T) {
			// A related person's contact, which no map syncs, holds the id.
			row, err := e.crmHuman.Create(ctx, "contacts", crm.Record{"firstname": "Rhea", "lastname": "Relata",
				"msemr_azurefhirid": "shared-8", "msemr_contacttype": 935000002})
			if err != nil {
				t.Fatal(err)
			}
			put(t, "Practitioner", "shared-8", "Dana", "Doctorova")
			d := settled(t, e.notify(t, queues.SideFHIR, "Practitioner", "shared-8", "", queues.EventChanged))
			wantRefused(t, d, "Practitioner", "practitioner-contact", "practitioner-contacts", "msemr_azurefhirid")
			noPHI(t, d, "shared-8", row, "Rhea", "Relata", "Dana")
			after := contacts(t, "shared-8")
			if len(after) != 1 || after[0].String("firstname") != "Rhea" || contactType(after[0]) != "935000002" {
				t.Fatalf("contacts of shared-8 after the practitioner: %v, want the related person's row as it was", after)
			}
		})

		t.Run("a contact nobody gave a type is the record's own", func(t *testing.T) {
			// A contact made before fhirsync (or by hand) holds the id and
			// no contact type: its filter column is empty, so no map's
			// filter says it is another record's, and the patient takes it
			// over, as it did before rows were checked.
			row, err := e.crmHuman.Create(ctx, "contacts", crm.Record{"firstname": "Una", "lastname": "Typless", "msemr_azurefhirid": "shared-10"})
			if err != nil {
				t.Fatal(err)
			}
			put(t, "Patient", "shared-10", "Uma", "Typed")
			d := settled(t, e.notify(t, queues.SideFHIR, "Patient", "shared-10", "", queues.EventChanged))
			if d.Outcome != logs.OutcomeSent || d.EntityMap != "patient-contact" {
				t.Fatalf("the patient: %s/%s under %q (%s), want sent under patient-contact", d.Outcome, d.Reason, d.EntityMap, d.Message)
			}
			after := contacts(t, "shared-10")
			if len(after) != 1 || after[0].String("contactid") != row || after[0].String("firstname") != "Uma" || contactType(after[0]) != "935000000" {
				t.Fatalf("contacts of shared-10 after the patient: %v, want the untyped row, now the patient's", after)
			}
		})

		t.Run("a patient's delete with a synced practitioner's id", func(t *testing.T) {
			put(t, "Practitioner", "shared-9", "Dirk", "Doctorov")
			e.byMessage(t, e.notify(t, queues.SideFHIR, "Practitioner", "shared-9", "", queues.EventChanged), "created")
			d := settled(t, e.notify(t, queues.SideFHIR, "Patient", "shared-9", "", queues.EventDeleted))
			if d.Reason != "source_gone" {
				t.Fatalf("the patient's delete: %s/%s (%s), want skipped/source_gone", d.Outcome, d.Reason, d.Message)
			}
			if after := contacts(t, "shared-9"); len(after) != 1 || contactType(after[0]) != "935000001" {
				t.Fatalf("contacts of shared-9 after the patient's delete: %v, want the practitioner's row", after)
			}
		})

		t.Run("the agent goes on syncing", func(t *testing.T) {
			put(t, "Practitioner", "own-10", "Dina", "Doctorova")
			e.byMessage(t, e.notify(t, queues.SideFHIR, "Practitioner", "own-10", "", queues.EventChanged), "created")
			put(t, "Patient", "shared-7", "Petra", "Synthetica-Neu")
			e.byMessage(t, e.notify(t, queues.SideFHIR, "Patient", "shared-7", "", queues.EventChanged), "updated")
			if after := contacts(t, "shared-7"); len(after) != 1 || after[0].String("lastname") != "Synthetica-Neu" {
				t.Fatalf("contacts of shared-7 after the patient's update: %v", after)
			}
		})
	})
}
