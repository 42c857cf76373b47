package logs_test

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"gorm.io/gorm"

	"github.com/fhirsync/fhirsync/logs"
	"github.com/fhirsync/fhirsync/storage"
	"github.com/fhirsync/fhirsync/storage/storagetest"
)

// within reports whether got estimates want as closely as the histogram
// promises: within the width of want's bin (1-2-5 per decade).
func within(got, want time.Duration) bool {
	d := got - want
	if d < 0 {
		d = -d
	}
	return d <= want*3/2
}

func TestSeries(t *testing.T) {
	storagetest.Each(t, func(t *testing.T, db *gorm.DB) {
		ctx := context.Background()
		s, _ := newStore(t, db, nil)
		// An hour from t0: 100 sent decisions of map a in the first
		// minute, latencies 1..100 ms; 10 dead-lettered and 10 skipped of
		// map b in the third minute; one decision outside the range.
		var ds []*logs.Decision
		for i := 1; i <= 100; i++ {
			ds = append(ds, decision(t0.Add(time.Duration(i)*100*time.Millisecond), func(d *logs.Decision) {
				d.EntityMap, d.Latency = "a", time.Duration(i)*time.Millisecond
			}))
		}
		for i := range 10 {
			ds = append(ds, decision(t0.Add(2*time.Minute+time.Duration(i)*time.Second), func(d *logs.Decision) {
				d.EntityMap, d.Outcome, d.Reason = "b", logs.OutcomeDeadLettered, "mapping_error"
			}))
			ds = append(ds, decision(t0.Add(2*time.Minute+time.Duration(i)*time.Second), func(d *logs.Decision) {
				d.EntityMap, d.Outcome, d.Reason = "b", logs.OutcomeSkipped, "unchanged"
			}))
		}
		ds = append(ds, decision(t0.Add(-time.Second), nil))
		if err := s.WriteBatch(ctx, ds); err != nil {
			t.Fatal(err)
		}
		got, err := s.Series(ctx, t0, t0.Add(time.Hour), time.Minute)
		if err != nil {
			t.Fatal(err)
		}
		if len(got.Buckets) != 60 || !got.Buckets[0].Start.Equal(t0) {
			t.Fatalf("%d buckets from %v, want 60 from %v", len(got.Buckets), got.Buckets[0].Start, t0)
		}
		if b := got.Buckets[0]; b.Decisions != 100 || b.Errors != 0 || b.Timed != 100 {
			t.Errorf("first minute = %+v", b.Stats)
		}
		if b := got.Buckets[2]; b.Decisions != 20 || b.Errors != 10 || b.ErrorRate != 0.5 || b.ByOutcome[logs.OutcomeSkipped] != 10 {
			t.Errorf("third minute = %+v", b.Stats)
		}
		if b := got.Buckets[1]; b.Decisions != 0 {
			t.Errorf("second minute = %+v, want empty", b.Stats)
		}
		if tot := got.Total; tot.Decisions != 120 || tot.Errors != 10 || tot.Timed != 100 {
			t.Errorf("total = %+v", tot)
		}
		q := got.Total.Latency
		if !within(q.P50, 50*time.Millisecond) || !within(q.P95, 95*time.Millisecond) || !within(q.P99, 99*time.Millisecond) {
			t.Errorf("latency = %+v, want about 50, 95, 99 ms", q)
		}
		if q.P50 > q.P95 || q.P95 > q.P99 {
			t.Errorf("latency percentiles out of order: %+v", q)
		}
		if len(got.Maps) != 2 || got.Maps[0].Map != "a" || got.Maps[0].Decisions != 100 || got.Maps[1].Map != "b" ||
			got.Maps[1].Errors != 10 || got.Maps[1].Timed != 0 || got.Maps[1].Latency.P99 != 0 {
			t.Errorf("maps = %+v", got.Maps)
		}

		// Two-hour buckets over a week to t0+1m, aligned to the epoch: the
		// first minute and the decision before t0.
		week, err := s.Series(ctx, t0.Add(-7*24*time.Hour+time.Minute), t0.Add(time.Minute), 2*time.Hour)
		if err != nil {
			t.Fatal(err)
		}
		if n := len(week.Buckets); n != 85 || week.Total.Decisions != 101 {
			t.Errorf("week: %d buckets, %d decisions", n, week.Total.Decisions)
		}

		for _, bad := range []struct {
			from, to time.Time
			bucket   time.Duration
		}{{t0, t0, time.Minute}, {t0, t0.Add(time.Hour), time.Second}, {t0, t0.Add(30 * 24 * time.Hour), time.Minute}} {
			if _, err := s.Series(ctx, bad.from, bad.to, bad.bucket); !errors.Is(err, logs.ErrBadFilter) {
				t.Errorf("Series(%v, %v, %v) = %v, want ErrBadFilter", bad.from, bad.to, bad.bucket, err)
			}
		}

		if storage.DialectOf(db) == storage.SQLite {
			// The aggregate reads the covering index, never the rows.
			var plan []struct{ Detail string }
			if err := db.Raw(`EXPLAIN QUERY PLAN SELECT entity_map, outcome, latency_us, COUNT(*) FROM sync_decisions
				WHERE decided_at >= ? AND decided_at < ? GROUP BY 1, 2, 3`, t0, t0.Add(time.Hour)).Scan(&plan).Error; err != nil {
				t.Fatal(err)
			}
			var details []string
			for _, p := range plan {
				details = append(details, p.Detail)
			}
			if !strings.Contains(strings.Join(details, "; "), "COVERING INDEX sync_decisions_dashboard") {
				t.Errorf("query plan = %q, want the covering index sync_decisions_dashboard", details)
			}
		}
	})
}

// BenchmarkSeries aggregates a day of 50,000 decisions into 15-minute
// buckets, as the dashboard's 24 h view does.
func BenchmarkSeries(b *testing.B) {
	for _, d := range storagetest.Dialects {
		b.Run(string(d), func(b *testing.B) {
			db := storagetest.Open(b, d)
			s, err := logs.New(db, logs.Config{}, nil)
			if err != nil {
				b.Fatal(err)
			}
			ctx := context.Background()
			var batch []*logs.Decision
			for i := range 50_000 {
				batch = append(batch, decision(t0.Add(time.Duration(i)*1728*time.Millisecond), func(d *logs.Decision) {
					d.EntityMap = []string{"a", "b", "c"}[i%3]
					d.Latency = time.Duration(i%5000) * time.Millisecond
				}))
				if len(batch) == 1000 {
					if err := s.WriteBatch(ctx, batch); err != nil {
						b.Fatal(err)
					}
					batch = batch[:0]
				}
			}
			b.ResetTimer()
			for b.Loop() {
				if _, err := s.Series(ctx, t0, t0.Add(24*time.Hour), 15*time.Minute); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
