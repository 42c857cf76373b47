package agentbench

import (
	"context"
	"math"
	"os"
	"strconv"
	"testing"
	"time"

	"github.com/fhirsync/fhirsync/storage"
	"github.com/fhirsync/fhirsync/storage/storagetest"
)

// TestRunStreamSmall runs the device-stream bench at a small size: every
// reading is accounted for, each window ends in one decision, and the CRM
// gets one write per window, not per reading.
func TestRunStreamSmall(t *testing.T) {
	t.Parallel()
	db := storagetest.Open(t, storage.SQLite)
	res, err := RunStream(context.Background(), StreamConfig{DB: db, Rate: 400, Duration: 3 * time.Second, Patients: 20, Window: 2 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	if res.Offered != 1200 || res.Lost != 0 {
		t.Fatalf("offered %d, lost %d; want 1200 offered, none lost", res.Offered, res.Lost)
	}
	// 3 s of readings over 2 s windows: each patient's readings fall in 2
	// or 3 windows. Each window is sent, unless every reading it caught
	// repeated the patient's previous value (the bench's streams drop
	// repeats): then it is decided skipped as duplicate_reading.
	var others []struct{ Outcome, Reason, Message string }
	if err := db.Raw(`SELECT outcome, reason, message FROM sync_decisions WHERE readings IS NOT NULL AND outcome <> 'sent'`).Scan(&others).Error; err != nil {
		t.Fatal(err)
	}
	for _, o := range others {
		if o.Outcome != "skipped" || o.Reason != "duplicate_reading" {
			t.Errorf("window decided %s/%s (%s), want sent, or skipped as duplicate_reading", o.Outcome, o.Reason, o.Message)
		}
	}
	// Windows follow arrival, so an agent slowed by a busy machine spreads
	// the readings over more of them: at most one per 2 s of ingest, plus
	// the one the start splits, per patient.
	most := 20 * (int(math.Ceil(res.IngestSeconds/2)) + 1)
	if res.Windows < 40 || res.Windows > max(60, most) || res.Sent+len(others) != res.Windows || len(others) > res.Windows/10 {
		t.Errorf("windows %d (sent %d, all-duplicate %d) over %.1f s of ingest, want 40 to %d, each sent or all-duplicate, at most a tenth all-duplicate",
			res.Windows, res.Sent, len(others), res.IngestSeconds, max(60, most))
	}
	if res.CRMWrites != int64(res.Sent) {
		t.Errorf("CRM records written %d, want one per window sent (%d)", res.CRMWrites, res.Sent)
	}
	if res.Reduction < 20 {
		t.Errorf("reduction %.1f, want at least 20 readings per CRM write (60 readings per window)", res.Reduction)
	}
	// One row per window and one per CRM notice of an aggregate written.
	if res.LogRows != int64(res.Windows+res.Sent) {
		t.Errorf("log rows %d, want %d", res.LogRows, res.Windows+res.Sent)
	}
}

// BenchmarkDeviceStream runs the device-stream bench once per iteration
// at the rate: FHIRSYNC_STREAM_RATE (5000), _SECONDS (60),
// _PATIENTS (1000) and _WINDOW (30s) change it; FHIRSYNC_BENCH_DATABASE_URL
// runs it on PostgreSQL. A signal leg runs alongside (signals.go).
//
//	go test ./agent/agentbench/ -run '^$' -bench DeviceStream -benchtime 1x
func BenchmarkDeviceStream(b *testing.B) {
	cfg := StreamConfig{Rate: envFloat("FHIRSYNC_STREAM_RATE", 5000), Duration: time.Duration(envFloat("FHIRSYNC_STREAM_SECONDS", 60) * float64(time.Second)),
		Patients: int(envFloat("FHIRSYNC_STREAM_PATIENTS", 1000)),
		// The signal leg: FHIRSYNC_SIGNAL_RATE RiskAssessments/Flags per
		// second (1) while the readings go out.
		Signals: &SignalConfig{Rate: envFloat("FHIRSYNC_SIGNAL_RATE", 1)}}
	if w, err := time.ParseDuration(os.Getenv("FHIRSYNC_STREAM_WINDOW")); err == nil {
		cfg.Window = w
	}
	for b.Loop() {
		db := storagetest.Open(b, storage.SQLite)
		if url := os.Getenv("FHIRSYNC_BENCH_DATABASE_URL"); url != "" {
			var err error
			if db, err = storage.Open(context.Background(), url, storage.Options{}); err != nil {
				b.Fatal(err)
			}
			if _, err := storage.Migrate(context.Background(), db); err != nil {
				b.Fatal(err)
			}
		}
		cfg.DB, cfg.Progress = db, os.Stderr
		res, err := RunStream(context.Background(), cfg)
		if err != nil {
			b.Fatal(err)
		}
		WriteStream(os.Stderr, res)
		b.ReportMetric(res.IngestedPerSecond, "readings/s")
		b.ReportMetric(res.Reduction, "readings/CRM-write")
		b.ReportMetric(float64(res.CRMWrites), "CRM-writes")
		b.ReportMetric(res.LogRowsPerHour, "log-rows/h")
		b.ReportMetric(res.LogBytesPerHour, "log-bytes/h")
		b.ReportMetric(float64(res.CPUPerReading.Microseconds()), "cpu-µs/reading")
		if s := res.Signals; s != nil {
			b.ReportMetric(s.P50.Seconds(), "signal-p50-s")
			b.ReportMetric(s.P99.Seconds(), "signal-p99-s")
		}
	}
}

func envFloat(name string, def float64) float64 {
	if v, err := strconv.ParseFloat(os.Getenv(name), 64); err == nil && v > 0 {
		return v
	}
	return def
}
