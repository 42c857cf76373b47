package agentbench

import (
	"context"
	"testing"
	"time"

	"github.com/fhirsync/fhirsync/storage"
	"github.com/fhirsync/fhirsync/storage/storagetest"
)

// TestRunStreamSignalsSmall runs the signal leg beside a small device
// stream: every RiskAssessment and Flag written while the readings go out
// becomes exactly one CRM task, and the latencies are measured.
func TestRunStreamSignalsSmall(t *testing.T) {
	t.Parallel()
	db := storagetest.Open(t, storage.SQLite)
	res, err := RunStream(context.Background(), StreamConfig{DB: db, Rate: 400, Duration: 4 * time.Second, Patients: 20, Window: 2 * time.Second,
		Signals: &SignalConfig{Rate: 4, Patients: 5}})
	if err != nil {
		t.Fatal(err)
	}
	s := res.Signals
	if s == nil {
		t.Fatal("no signal result")
	}
	if s.Written < 10 || s.Tasks != s.Written || s.Missing != 0 || s.Duplicates != 0 {
		t.Fatalf("signals %+v: want at least 10 written, one task each, none missing or duplicated", *s)
	}
	if s.P50 <= 0 || s.P99 < s.P50 || s.Max < s.P99 {
		t.Errorf("latencies p50 %s p99 %s max %s are not ordered", s.P50, s.P99, s.Max)
	}
	if res.Lost != 0 {
		t.Errorf("the stream lost %d readings with signals alongside", res.Lost)
	}
}
