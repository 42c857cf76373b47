package agent_test

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net/http"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/fhirsync/fhirsync/agent"
	"github.com/fhirsync/fhirsync/agent/crm"
	"github.com/fhirsync/fhirsync/agent/fhir"
	"github.com/fhirsync/fhirsync/logs"
	"github.com/fhirsync/fhirsync/maps"
	"github.com/fhirsync/fhirsync/queues"
	"github.com/fhirsync/fhirsync/storage/storagetest"
)

// enableCareTeam turns on the starter care-team map (shipped disabled).
func enableCareTeam(doc *maps.Document) {
	for i := range doc.EntityMaps {
		if doc.EntityMaps[i].Name == "care-team" {
			doc.EntityMaps[i].Enabled = nil
		}
	}
}

// careTeamRows reads a care team's participants and, under each, its
// role rows, as "start: display, display" lines sorted by start (the
// participants' match key).
func careTeamRows(t *testing.T, c *crm.Client, teamID string) []string {
	t.Helper()
	ctx := context.Background()
	var out []string
	err := c.RetrieveMultiple(ctx, "msemr_careteamparticipants", crm.Query{Filter: "_msemr_careteam_value eq " + teamID},
		func(p crm.Record) error {
			var roles []string
			err := c.RetrieveMultiple(ctx, "msemr_careteamparticipantroles",
				crm.Query{Filter: "_msemr_careteamparticipant_value eq " + p.String("msemr_careteamparticipantid")},
				func(r crm.Record) error {
					roles = append(roles, strings.TrimSpace(r.String("msemr_system")+" "+r.String("msemr_code")+" "+r.String("msemr_display")))
					return nil
				})
			slices.Sort(roles)
			state := ""
			if s, ok := p["statecode"]; ok && fmt.Sprint(s) != "0" {
				state = " (inactive)"
			}
			out = append(out, p.String("msemr_periodstart")[:10]+state+": "+strings.Join(roles, ", "))
			return err
		})
	if err != nil {
		t.Fatal(err)
	}
	slices.Sort(out)
	return out
}

// TestEndToEndCareTeamParticipantRoles syncs a CareTeam whose participants
// carry roles into the sandbox CRM — a msemr_careteamparticipant row per
// participant and under it a msemr_careteamparticipantrole row per role,
// bound in one change set by Content-ID — redelivers the notice without
// duplicating a row, changes a role in FHIR, and writes a role a care
// coordinator added in the CRM back into the participant's role array.
//
// It runs with the agent's $batch change sets (the default) and with one
// request per write (CRMBatchMax 1), where a role row binds to the
// participant row created just before it by that row's id.
func TestEndToEndCareTeamParticipantRoles(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name     string
		batchMax int
	}{{"change sets", 0}, {"single requests", 1}} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			careTeamRoundTrip(t, tc.batchMax)
		})
	}
}

// batchBodies records the $batch request bodies the agent sends.
type batchBodies struct {
	next   http.RoundTripper
	mu     sync.Mutex
	bodies []string
}

func (b *batchBodies) RoundTrip(r *http.Request) (*http.Response, error) {
	if strings.HasSuffix(r.URL.Path, "/$batch") && r.Body != nil {
		body, err := io.ReadAll(r.Body)
		if err != nil {
			return nil, err
		}
		r.Body = io.NopCloser(bytes.NewReader(body))
		b.mu.Lock()
		b.bodies = append(b.bodies, string(body))
		b.mu.Unlock()
	}
	return b.next.RoundTrip(r)
}

func (b *batchBodies) any(sub string) bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	return slices.ContainsFunc(b.bodies, func(s string) bool { return strings.Contains(s, sub) })
}

func careTeamRoundTrip(t *testing.T, batchMax int) {
	batches := &batchBodies{}
	e := startEnv(t, storagetest.Open(t, "sqlite"), agent.Config{Workers: 2, RetryBase: 200 * time.Millisecond, RetryMax: time.Second, CRMBatchMax: batchMax},
		envOptions{tweak: enableCareTeam, noPoller: true, crmTransport: func(rt http.RoundTripper) http.RoundTripper { batches.next = rt; return batches }})
	ctx := context.Background()
	team := fhir.Resource{"resourceType": "CareTeam", "status": "active", "name": "Ward 3 discharge team",
		"participant": []any{
			map[string]any{"period": map[string]any{"start": "2024-01-01T00:00:00Z"}, "role": []any{
				map[string]any{"coding": []any{map[string]any{"system": "http://snomed.info/sct", "code": "224535009", "display": "Registered nurse"}}},
				map[string]any{"text": "night shift"},
			}},
			map[string]any{"period": map[string]any{"start": "2024-02-01T00:00:00Z"}, "role": []any{map[string]any{"text": "adviser"}}},
		}}
	created, err := e.fhir.Create(ctx, team)
	if err != nil {
		t.Fatal(err)
	}
	id := created.ID()
	e.notify(t, queues.SideFHIR, "CareTeam", id, created.VersionID(), queues.EventUpdated)
	d := e.waitDecision(t, id, logs.FHIRToCRM, "created")
	if d.EntityMap != "care-team" || !slices.Contains(d.ChangedFields, "participant-roles") {
		t.Errorf("decision %+v: want care-team naming participant-roles among the changed fields", d)
	}
	rec, err := e.crmHuman.Retrieve(ctx, crm.ByKey("msemr_careteams", "msemr_azurefhirid", id))
	if err != nil {
		t.Fatal(err)
	}
	teamID := rec.String("msemr_careteamid")
	// In a change set, a role row of a participant created in the same
	// change set binds to it by Content-ID (the participants are the
	// change set's 2nd and 5th requests, after the care team).
	if bound := batches.any(`"msemr_careteamparticipant@odata.bind":"$2"`) && batches.any(`"msemr_careteamparticipant@odata.bind":"$5"`); bound != (batchMax != 1) {
		t.Errorf("role rows bound by Content-ID in a $batch: %v, want %v", bound, batchMax != 1)
	}
	want := []string{
		"2024-01-01: http://snomed.info/sct 224535009 Registered nurse, night shift",
		"2024-02-01: adviser",
	}
	if got := careTeamRows(t, e.crmHuman, teamID); !slices.Equal(got, want) {
		t.Fatalf("CRM rows after create:\n%s\nwant\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
	// The role rows fhirsync wrote come back from the CRM's endpoint as
	// child rows of the care-team map, not as records of their own.
	e.quiet(t)
	var roleRow bool
	all, _ := e.logs.Search(ctx, logs.Filter{}, "", 200)
	for _, d := range all.Decisions {
		if d.Source.Type == "msemr_careteamparticipantrole" {
			roleRow = true
			if d.Reason != logs.ReasonChildRow || d.ReasonSubject != "participant-roles" || d.EntityMap != "care-team" {
				t.Errorf("a role row's own notice: %s/%s subject %q map %q", d.Outcome, d.Reason, d.ReasonSubject, d.EntityMap)
			}
		}
	}
	if !roleRow {
		t.Error("no decision for the role rows' notices")
	}

	// A second notice of the same version (a trigger repeating what the
	// history feed said; its message id differs, so the queue's duplicate
	// detection does not drop it) writes nothing and duplicates nothing.
	participants, roles := e.crmSrv.Count("msemr_careteamparticipant"), e.crmSrv.Count("msemr_careteamparticipantrole")
	msg := e.notify(t, queues.SideFHIR, "CareTeam", id, created.VersionID(), queues.EventCreated)
	again := e.byMessage(t, msg, "unchanged")
	if again.Outcome != logs.OutcomeSkipped {
		t.Errorf("redelivery = %s/%s", again.Outcome, again.Reason)
	}
	if p, r := e.crmSrv.Count("msemr_careteamparticipant"), e.crmSrv.Count("msemr_careteamparticipantrole"); p != participants || r != roles || r != 3 {
		t.Errorf("after redelivery: %d participants and %d roles, want %d and %d (3)", p, r, participants, roles)
	}

	// A clinician changes the second participant's role in FHIR.
	cur, err := e.fhir.Read(ctx, "CareTeam", id)
	if err != nil {
		t.Fatal(err)
	}
	cur["participant"].([]any)[1].(map[string]any)["role"] = []any{map[string]any{"text": "lead"}}
	updated, err := e.fhir.Update(ctx, cur, cur.VersionID())
	if err != nil {
		t.Fatal(err)
	}
	msg = e.notify(t, queues.SideFHIR, "CareTeam", id, updated.VersionID(), queues.EventUpdated)
	e.byMessage(t, msg, "updated")
	want[1] = "2024-02-01: lead"
	if got := careTeamRows(t, e.crmHuman, teamID); !slices.Equal(got, want) {
		t.Fatalf("CRM rows after the role changed:\n%s\nwant\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
	if p, r := e.crmSrv.Count("msemr_careteamparticipant"), e.crmSrv.Count("msemr_careteamparticipantrole"); p != 2 || r != 3 {
		t.Errorf("after the role changed: %d participants and %d roles, want 2 and 3", p, r)
	}

	// A care coordinator adds a role to the first participant in the CRM
	// and renames the team; write-back carries both to FHIR.
	var first string
	err = e.crmHuman.RetrieveMultiple(ctx, "msemr_careteamparticipants", crm.Query{Filter: "_msemr_careteam_value eq " + teamID},
		func(p crm.Record) error {
			if strings.HasPrefix(p.String("msemr_periodstart"), "2024-01-01") {
				first = p.String("msemr_careteamparticipantid")
			}
			return nil
		})
	if err != nil || first == "" {
		t.Fatalf("first participant: %q %v", first, err)
	}
	e.quiet(t)
	if _, err := e.crmHuman.Create(ctx, "msemr_careteamparticipantroles", crm.Record{"msemr_display": "on call",
		"msemr_careteamparticipant@odata.bind": "/msemr_careteamparticipants(" + first + ")"}); err != nil {
		t.Fatal(err)
	}
	if _, err := e.crmHuman.Upsert(ctx, crm.ByID("msemr_careteams", teamID), crm.Record{"msemr_name": "Ward 3 discharge team (weekend)"},
		crm.UpsertOptions{Mode: crm.UpdateOnly}); err != nil {
		t.Fatal(err)
	}
	up := e.waitDecision(t, teamID, logs.CRMToFHIR, "updated")
	if !slices.Contains(up.ChangedFields, "participant") {
		t.Errorf("write-back changed %v, want participant among them", up.ChangedFields)
	}
	back, err := e.fhir.Read(ctx, "CareTeam", id)
	if err != nil {
		t.Fatal(err)
	}
	got, _ := maps.EncodeJSON(back["participant"])
	wantFHIR := `[{"period":{"start":"2024-01-01T00:00:00Z"},"role":[{"coding":[{"code":"224535009","display":"Registered nurse","system":"http://snomed.info/sct"}]},{"text":"night shift"},{"coding":[{"display":"on call"}]}]},{"period":{"start":"2024-02-01T00:00:00Z"},"role":[{"text":"lead"}]}]`
	if string(got) != wantFHIR || back["name"] != "Ward 3 discharge team (weekend)" {
		t.Errorf("CareTeam after write-back: name %v, participants\n got %s\nwant %s", back["name"], got, wantFHIR)
	}
}
