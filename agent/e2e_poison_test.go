package agent_test

import (
	"bytes"
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"testing"
	"time"

	"gorm.io/gorm"

	"github.com/fhirsync/fhirsync/agent"
	"github.com/fhirsync/fhirsync/logs"
	"github.com/fhirsync/fhirsync/queues"
	"github.com/fhirsync/fhirsync/queues/embedded"
	"github.com/fhirsync/fhirsync/sandbox/synth"
)

// poisonCase is one entry of testdata/poison/cases.json: a raw message
// body, the queue it is put on and the reason its decision must carry.
type poisonCase struct {
	File   string          `json:"file"`
	Queue  string          `json:"queue"` // fhir or crm
	Reason logs.ReasonCode `json:"reason"`
	What   string          `json:"what"`
	body   []byte
}

func loadPoison(t *testing.T) []poisonCase {
	t.Helper()
	raw, err := os.ReadFile(filepath.Join("testdata", "poison", "cases.json"))
	if err != nil {
		t.Fatal(err)
	}
	var cases []poisonCase
	if err := json.Unmarshal(raw, &cases); err != nil {
		t.Fatalf("testdata/poison/cases.json: %v", err)
	}
	files, err := filepath.Glob(filepath.Join("testdata", "poison", "*"))
	if err != nil {
		t.Fatal(err)
	}
	listed := map[string]bool{"cases.json": true}
	for i := range cases {
		c := &cases[i]
		if listed[c.File] {
			t.Fatalf("cases.json lists %s twice", c.File)
		}
		listed[c.File] = true
		if c.body, err = os.ReadFile(filepath.Join("testdata", "poison", c.File)); err != nil {
			t.Fatal(err)
		}
		if c.Queue != "fhir" && c.Queue != "crm" || c.Reason == "" {
			t.Fatalf("cases.json: %s needs queue fhir or crm and a reason", c.File)
		}
	}
	for _, f := range files {
		if !listed[filepath.Base(f)] {
			t.Errorf("testdata/poison/%s is not listed in cases.json", filepath.Base(f))
		}
	}
	// Bodies too large to keep in the repository: an Event Grid event over
	// its 1 MiB limit and a RemoteExecutionContext over its 4 MiB limit.
	pad := bytes.Repeat([]byte("x"), 1<<20)
	cases = append(cases,
		poisonCase{File: "generated:event-oversize", Queue: "fhir", Reason: "invalid_message", What: "an Event Grid event over 1 MiB",
			body: []byte(`{"eventType":"Microsoft.HealthcareApis.FhirResourceUpdated","topic":"` + string(pad) + `","data":{"resourceType":"Patient","resourceFhirAccount":"a","resourceFhirId":"p1","resourceVersionId":1}}`)},
		poisonCase{File: "generated:rec-oversize", Queue: "crm", Reason: "invalid_message", What: "a RemoteExecutionContext over 4 MiB",
			body: []byte(`{"MessageName":"Update","PrimaryEntityName":"contact","PrimaryEntityId":"0b7e2c1d-0000-4000-8000-000000000099","OrganizationName":"` + string(bytes.Repeat(pad, 4)) + `"}`)},
	)
	return cases
}

// poisonFHIRAccount is the FHIR service the corpus events name: the agent
// takes AHDS events only from the service agent.fhir_account names.
const poisonFHIRAccount = "ws-fhir.fhir.azurehealthcareapis.com"

// TestPoisonMessages puts a corpus of bad messages straight onto the
// agent's queues — broken JSON, wrong envelopes, odd Dataverse contexts,
// bad Event Grid fields, oversize bodies, records that do not exist — and
// checks each ends in exactly one decision with the expected reason while
// the agent keeps running: a good record still syncs afterwards.
func TestPoisonMessages(t *testing.T) {
	t.Parallel()
	cases := loadPoison(t)
	if len(cases) < 50 {
		t.Fatalf("the poison corpus holds %d messages, want at least 50", len(cases))
	}
	eachEchoMode(t, func(t *testing.T, db *gorm.DB, bypass bool) {
		e := startEnv(t, db, agent.Config{Workers: 4, MaxAttempts: 3, RetryBase: 100 * time.Millisecond, RetryMax: 300 * time.Millisecond, BaseKey: testBaseKey,
			FHIRAccount: poisonFHIRAccount},
			envOptions{noPoller: true, crmRetries: -1, bypassOwnSteps: bypass})
		ctx := context.Background()
		// The agent's own queue handles refuse bodies over 256 KiB on
		// send; these handles on the same queues let the oversize ones in,
		// as a foreign producer would.
		big := embedded.Options{LockDuration: 30 * time.Second, MaxDeliveryCount: 50, MaxMessageBytes: 8 << 20}
		fhirIn, err := embedded.New(db, "fhir-changes", big)
		if err != nil {
			t.Fatal(err)
		}
		crmIn, err := embedded.New(db, "crm-changes", big)
		if err != nil {
			t.Fatal(err)
		}
		for _, c := range cases {
			q := fhirIn
			if c.Queue == "crm" {
				q = crmIn
			}
			if err := q.Send(ctx, queues.Message{ID: "poison:" + c.File, Body: c.body}); err != nil {
				t.Fatalf("%s: sending: %v", c.File, err)
			}
		}
		e.quiet(t)
		for _, c := range cases {
			page, err := e.logs.Search(ctx, logs.Filter{MessageID: "poison:" + c.File}, "", 10)
			if err != nil {
				t.Fatal(err)
			}
			if len(page.Decisions) != 1 {
				t.Errorf("%s (%s): %d decisions, want exactly one", c.File, c.What, len(page.Decisions))
				continue
			}
			d := page.Decisions[0]
			if d.Reason != c.Reason || d.Message == "" {
				t.Errorf("%s (%s): decision %s/%s (%q), want reason %s", c.File, c.What, d.Outcome, d.Reason, d.Message, c.Reason)
			}
			wantOutcome := logs.OutcomeSkipped
			if c.Reason == "invalid_message" {
				wantOutcome = logs.OutcomeDeadLettered
			}
			if d.Outcome != wantOutcome {
				t.Errorf("%s (%s): outcome %s, want %s", c.File, c.What, d.Outcome, wantOutcome)
			}
		}
		// Every invalid message is in a dead-letter queue, nothing else.
		var invalid int64
		for _, c := range cases {
			if c.Reason == "invalid_message" {
				invalid++
			}
		}
		fd, err1 := e.fhirQ.Depth(ctx)
		cd, err2 := e.crmQ.Depth(ctx)
		if err1 != nil || err2 != nil || fd.DeadLetter+cd.DeadLetter != invalid {
			t.Errorf("dead-letter depth fhir %+v crm %+v (%v, %v), want %d invalid messages there", fd, cd, err1, err2, invalid)
		}

		// The agent is still running: a good record syncs.
		msg := e.notify(t, queues.SideFHIR, "Organization", synth.OrganizationID(0), "", queues.EventChanged)
		e.byMessage(t, msg, "created")
		if bypass {
			e.quiet(t)
			e.checkBypassed(t, 0)
		}
	})
}
