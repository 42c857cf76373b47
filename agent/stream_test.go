package agent_test

import (
	"context"
	"encoding/json"
	"fmt"
	"testing"
	"time"

	"gorm.io/gorm"

	"github.com/fhirsync/fhirsync/agent"
	"github.com/fhirsync/fhirsync/agent/crm"
	"github.com/fhirsync/fhirsync/agent/fhir"
	"github.com/fhirsync/fhirsync/logs"
	"github.com/fhirsync/fhirsync/maps"
	"github.com/fhirsync/fhirsync/queues"
	"github.com/fhirsync/fhirsync/sandbox/synth"
	"github.com/fhirsync/fhirsync/storage/storagetest"
)

// streamWindow is the window length of the end-to-end stream test: long
// enough for a burst of notices to land in one window on a loaded machine.
const streamWindow = 6 * time.Second

// asStreamMap turns the starter Observation map into a device-stream map:
// 6 s windows sending the mean, a threshold of 100, repeats dropped, one
// aggregate per patient per hour.
func asStreamMap(doc *maps.Document) {
	high := 100.0
	for i := range doc.EntityMaps {
		em := &doc.EntityMaps[i]
		if em.FHIRType != "Observation" {
			continue
		}
		em.CRMToFHIR = maps.Flow{}
		em.Samples = nil
		em.Stream = &maps.Stream{Window: maps.Duration(streamWindow), Aggregate: maps.AggregateMean, DropRepeats: true,
			Threshold: &maps.Threshold{High: &high}, RateLimit: &maps.RateLimit{Sends: 1, Per: maps.Duration(time.Hour)}}
	}
}

// heartRate creates a device reading in the FHIR server.
func heartRate(t *testing.T, c *fhir.Client, patient, value string) fhir.Resource {
	t.Helper()
	res := fhir.Resource{"resourceType": "Observation", "status": "final",
		"category":          []any{map[string]any{"coding": []any{map[string]any{"system": "http://terminology.hl7.org/CodeSystem/observation-category", "code": "vital-signs"}}}},
		"code":              map[string]any{"coding": []any{map[string]any{"system": "http://loinc.org", "code": "8867-4", "display": "Heart rate"}}},
		"subject":           map[string]any{"reference": "Patient/" + patient},
		"effectiveDateTime": time.Now().UTC().Format(time.RFC3339Nano),
		"valueQuantity":     map[string]any{"value": json.Number(value), "unit": "beats/minute", "system": "http://unitsofmeasure.org", "code": "/min"}}
	got, err := c.Create(context.Background(), res)
	if err != nil {
		t.Fatal(err)
	}
	return got
}

// clearOfHour waits out a full clock hour that is less than within away.
// The stream map's rate limit counts sends per clock hour, so a test whose
// windows straddle the hour would find the second window's budget fresh.
func clearOfHour(within time.Duration) {
	now := time.Now()
	next := now.Truncate(time.Hour).Add(time.Hour)
	if next.Sub(now) < within {
		time.Sleep(time.Until(next.Add(100 * time.Millisecond)))
	}
}

// atWindowStart waits until a stream window has just begun.
func atWindowStart() {
	secs := int64(streamWindow / time.Second)
	now := time.Now()
	next := time.Unix(now.Unix()-now.Unix()%secs+secs, 0).Add(100 * time.Millisecond)
	time.Sleep(time.Until(next))
}

// windowDecisions waits for n decisions of the stream map with a reason
// in want, and returns every decision of the map.
func (e *env) windowDecisions(t *testing.T, n int, want ...logs.ReasonCode) []logs.Decision {
	t.Helper()
	deadline := time.Now().Add(90 * time.Second)
	var ds []logs.Decision
	for time.Now().Before(deadline) {
		page, err := e.logs.Search(context.Background(), logs.Filter{EntityMap: "observation"}, "", 100)
		if err != nil {
			t.Fatal(err)
		}
		ds = page.Decisions
		got := 0
		for _, d := range ds {
			for _, r := range want {
				if d.Reason == r {
					got++
				}
			}
		}
		if got >= n {
			return ds
		}
		time.Sleep(100 * time.Millisecond)
	}
	for _, d := range ds {
		t.Logf("%s %s/%s %q %+v", d.Source, d.Outcome, d.Reason, d.Message, d.Readings)
	}
	t.Fatalf("fewer than %d %v decisions within 90s", n, want)
	return nil
}

// TestDeviceStreamEndToEnd sends a burst of device readings for two
// patients through the agent: each patient's window ends in one decision
// with its counts — one CRM write with the mean for the patient whose
// readings left the range, none for the one who stayed inside it — the
// same reading delivered twice and a repeated value are dropped, a
// malformed reading is dead-lettered on its own, and the patient's next
// window meets the rate limit.
func TestDeviceStreamEndToEnd(t *testing.T) {
	t.Parallel()
	storagetest.Each(t, func(t *testing.T, db *gorm.DB) {
		e := startEnv(t, db, agent.Config{Workers: 8, RetryBase: 200 * time.Millisecond, RetryMax: time.Second,
			Stream: agent.StreamConfig{CloseEvery: 100 * time.Millisecond}}, envOptions{tweak: asStreamMap})
		ctx := context.Background()
		p0, p1 := synth.PatientID(0), synth.PatientID(1)
		e.waitDecision(t, p0, logs.FHIRToCRM, "created")
		e.waitDecision(t, p1, logs.FHIRToCRM, "created")
		before := e.crmSrv.Count("msemr_observation")

		high := []fhir.Resource{heartRate(t, e.fhir, p0, "70"), heartRate(t, e.fhir, p0, "80"), heartRate(t, e.fhir, p0, "80"), heartRate(t, e.fhir, p0, "120")}
		calm := []fhir.Resource{heartRate(t, e.fhir, p1, "60"), heartRate(t, e.fhir, p1, "65")}
		bad := heartRate(t, e.fhir, p0, "1")
		delete(bad, "valueQuantity")
		bad["valueString"] = "irregular"
		bad, err := e.fhir.Update(ctx, bad, "")
		if err != nil {
			t.Fatal(err)
		}
		clearOfHour(90 * time.Second)
		atWindowStart()
		// Workers take concurrent notices in any order, so the value to be
		// repeated (80) goes alone, and its repeat after it.
		for _, r := range []fhir.Resource{high[0], high[3], calm[0], calm[1], bad} {
			e.notify(t, queues.SideFHIR, "Observation", r.ID(), r.VersionID(), queues.EventCreated)
		}
		time.Sleep(1500 * time.Millisecond)
		e.notify(t, queues.SideFHIR, "Observation", high[1].ID(), high[1].VersionID(), queues.EventCreated)
		time.Sleep(1500 * time.Millisecond)
		e.notify(t, queues.SideFHIR, "Observation", high[2].ID(), high[2].VersionID(), queues.EventCreated)
		// The same reading again through another feed (no version named).
		e.notify(t, queues.SideFHIR, "Observation", high[0].ID(), "", queues.EventUpdated)

		ds := e.windowDecisions(t, 2, logs.ReasonCreated, logs.ReasonWithinRange)
		var sent, inside *logs.Decision
		for i := range ds {
			d := &ds[i]
			switch d.Reason {
			case logs.ReasonCreated:
				sent = d
			case logs.ReasonWithinRange:
				inside = d
			}
		}
		if sent.Outcome != logs.OutcomeSent || sent.Readings == nil || sent.Readings.Subject != "Patient/"+p0 || sent.Readings.Code != "http://loinc.org|8867-4" {
			t.Fatalf("window decision = %+v (readings %+v)", sent, sent.Readings)
		}
		if c := sent.Readings.Counts; c[logs.ReasonAggregated] != 3 || c[logs.ReasonDuplicateReading] != 2 || len(c) != 2 {
			t.Errorf("counts = %v, want 3 aggregated (70, 80, 120) and 2 duplicate_reading (80 repeated, 70 again)", c)
		}
		if got := sent.Readings.End.Sub(sent.Readings.Start); got != streamWindow {
			t.Errorf("window length = %s", got)
		}
		if inside.Outcome != logs.OutcomeSkipped || inside.Readings.Counts[logs.ReasonWithinRange] != 2 || inside.Readings.Subject != "Patient/"+p1 {
			t.Errorf("within-range decision = %+v (readings %+v)", inside, inside.Readings)
		}
		malformed := e.waitDecision(t, bad.ID(), logs.FHIRToCRM, logs.ReasonMappingError)
		if malformed.Outcome != logs.OutcomeDeadLettered || malformed.ReasonSubject != "stream" {
			t.Errorf("malformed reading decision = %+v", malformed)
		}
		// One decision per window and one for the malformed reading; none
		// per reading. (The CRM's notice of the aggregate it stored is
		// decided direction_off: the stream map is one-way.)
		fromFHIR := 0
		for _, d := range ds {
			if d.Direction == logs.FHIRToCRM {
				fromFHIR++
			}
		}
		if fromFHIR != 3 {
			for _, d := range ds {
				t.Logf("%s %s %s/%s", d.Direction, d.Source, d.Outcome, d.Reason)
			}
			t.Errorf("%d FHIR→CRM decisions of the stream map, want 3", fromFHIR)
		}
		if n := e.crmSrv.Count("msemr_observation"); n != before+1 {
			t.Fatalf("CRM holds %d observations, want %d (one aggregate)", n, before+1)
		}
		agg, err := e.crmHuman.Retrieve(ctx, crm.ByKey("msemr_observations", "msemr_azurefhirid", sent.Source.ID))
		if err != nil {
			t.Fatal(err)
		}
		if v := fmt.Sprint(agg["msemr_valuequantity"]); v != "90" {
			t.Errorf("aggregate value = %s, want the mean 90", v)
		}
		if agg.String("_msemr_subjecttypepatient_value") == "" {
			t.Error("the aggregate is not linked to the patient's contact")
		}

		// The next window of the same patient goes over the rate limit
		// (one aggregate per hour).
		again := []fhir.Resource{heartRate(t, e.fhir, p0, "130"), heartRate(t, e.fhir, p0, "131")}
		atWindowStart()
		for _, r := range again {
			e.notify(t, queues.SideFHIR, "Observation", r.ID(), r.VersionID(), queues.EventCreated)
		}
		ds = e.windowDecisions(t, 1, logs.ReasonRateLimited)
		for _, d := range ds {
			if d.Reason == logs.ReasonRateLimited && d.Readings.Counts[logs.ReasonRateLimited] != 2 {
				t.Errorf("rate-limited counts = %v", d.Readings.Counts)
			}
		}
		if n := e.crmSrv.Count("msemr_observation"); n != before+1 {
			t.Errorf("CRM holds %d observations after the rate-limited window, want %d", n, before+1)
		}
	})
}
