package agent

import (
	"context"
	"testing"
	"time"

	"github.com/fhirsync/fhirsync/logs"
	"github.com/fhirsync/fhirsync/queues"
	"github.com/fhirsync/fhirsync/storage/storagetest"
)

// TestSentDecisionRecordsLatency: a sent decision records the time from
// the source change its notice names to the target write, which the
// dashboard's percentiles read; without a change time, or when nothing is
// written, there is none.
func TestSentDecisionRecordsLatency(t *testing.T) {
	t.Parallel()
	h := newHarness(t, storagetest.Open(t, "sqlite"))
	ctx := context.Background()
	at := func(id string, changedAt time.Time) *queues.Received {
		t.Helper()
		n := queues.Notice{V: 1, Side: queues.SideFHIR, Type: "Patient", ID: id, Event: queues.EventUpdated, Origin: "test", ChangedAt: changedAt}
		msg, err := n.Message()
		if err != nil {
			t.Fatal(err)
		}
		return &queues.Received{Message: msg, DeliveryCount: 1, SequenceNumber: seq.Add(1)}
	}
	h.fhir.put("p1", "a")
	m := at("p1", time.Now().Add(-2*time.Second))
	h.p.handle(ctx, m)
	if d := lastDecision(t, h, m.ID); d.Outcome != logs.OutcomeSent || d.Latency < 2*time.Second || d.Latency > time.Minute {
		t.Errorf("sent with a change time: %s %s, latency %v; want about 2s", d.Outcome, d.Reason, d.Latency)
	}
	h.fhir.put("p2", "a")
	m = at("p2", time.Time{})
	h.p.handle(ctx, m)
	if d := lastDecision(t, h, m.ID); d.Outcome != logs.OutcomeSent || d.Latency != 0 {
		t.Errorf("sent without a change time: %s, latency %v; want none", d.Outcome, d.Latency)
	}
	m = at("p1", time.Now().Add(-time.Second))
	h.p.handle(ctx, m)
	if d := lastDecision(t, h, m.ID); d.Outcome != logs.OutcomeSkipped || d.Latency != 0 {
		t.Errorf("unchanged: %s, latency %v; want skipped with none", d.Outcome, d.Latency)
	}
}
