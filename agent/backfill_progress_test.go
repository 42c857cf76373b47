package agent

import (
	"testing"
	"time"
)

// TestBackfillProgressRateAndTimeLeft follows a walk that fills the queue
// to its bound at once and then enqueues as fast as the agent processes:
// the rate and the time left are the agent's pace, not the walk's first
// burst, and the rate looks back one minute.
func TestBackfillProgressRateAndTimeLeft(t *testing.T) {
	t0 := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	r := &backfillRun{row: backfillRunRow{State: BackfillRunning, Total: 100000}}
	step := func(at time.Duration, done, queued int64) BackfillProgress {
		r.row.Done, r.queued = done, queued
		return r.progressAt(t0.Add(at))
	}
	if p := step(0, 5000, 5000); p.Processed != 0 || p.Rate != 0 || p.Left != -1 {
		t.Fatalf("first sight of the run: %+v, want nothing processed, rate and time left unknown", p)
	}
	// 100 records/s for 30 s, with the queue at its bound.
	p := step(30*time.Second, 8000, 5000)
	if p.Processed != 3000 || p.Rate != 100 || p.Left != 970*time.Second {
		t.Fatalf("after 30 s at 100/s: processed %d, rate %.1f, left %s; want 3000, 100, 16m10s", p.Processed, p.Rate, p.Left)
	}
	// The agent speeds up to 400 records/s: after a minute at that pace
	// the rate is that pace alone.
	for s := 31; s <= 95; s++ {
		p = step(time.Duration(s)*time.Second, 8000+int64(s-30)*400, 5000)
	}
	if p.Rate < 399 || p.Rate > 401 {
		t.Fatalf("a minute after the agent sped up to 400/s the rate is %.1f", p.Rate)
	}
	wantLeft := time.Duration(float64(100000-p.Processed) / p.Rate * float64(time.Second))
	if p.Left != wantLeft {
		t.Fatalf("left %s, want %s", p.Left, wantLeft)
	}
	if len(r.samples) > 62 {
		t.Fatalf("%d samples kept for a one-minute window of one a second", len(r.samples))
	}
	// The walk ends with the last notices still queued: they count as not
	// yet processed.
	r.row.State = BackfillDone
	if p := step(96*time.Second, 100000, 1200); p.Processed != 98800 {
		t.Fatalf("done with 1,200 queued: processed %d, want 98800", p.Processed)
	}
	if p := step(97*time.Second, 100000, 0); p.Processed != 100000 || p.Percent() != 100 {
		t.Fatalf("done and drained: %+v", p)
	}
}
