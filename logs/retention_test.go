package logs_test

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"
	"gorm.io/gorm"

	"github.com/fhirsync/fhirsync/logs"
	"github.com/fhirsync/fhirsync/storage"
	"github.com/fhirsync/fhirsync/storage/storagetest"
)

const day = 24 * time.Hour

func retentionConfig(schedule string) func(*logs.Config) {
	return func(c *logs.Config) {
		c.Retention = logs.RetentionConfig{MaxAge: 30 * day, BatchSize: 3, Schedule: schedule}
		c.Capture = logs.CaptureConfig{Enabled: true, KeyID: "k1", Key: keyA, MaxAge: 2 * day}
	}
}

// seedAges writes 7 decisions 40 days old, 4 ten days old and 2 from now,
// each with a capture made when it was written and a business key.
func seedAges(t *testing.T, s *logs.Store, now time.Time) {
	t.Helper()
	for _, group := range []struct {
		age time.Duration
		n   int
	}{{40 * day, 7}, {10 * day, 4}, {0, 2}} {
		at := now.Add(-group.age)
		logs.SetClock(s, func() time.Time { return at })
		for range group.n {
			write(t, s, decision(at, func(d *logs.Decision) {
				d.BusinessKeys = []logs.BusinessKey{{Name: "mrn", Value: "M"}}
				d.Snapshots = &logs.Snapshots{Source: []byte("{}")}
			}))
		}
	}
	logs.SetClock(s, func() time.Time { return now })
}

func TestPruneDeletesInBoundedBatches(t *testing.T) {
	t.Parallel()
	storagetest.Each(t, func(t *testing.T, db *gorm.DB) {
		s, reg := newStore(t, db, retentionConfig(""))
		seedAges(t, s, t0)
		// Held conflicts: one settled 40 days ago, one settled 10 days ago,
		// and one held 40 days ago and still open.
		for i, c := range []struct {
			age    time.Duration
			status string
		}{{40 * day, logs.ConflictSuperseded}, {10 * day, logs.ConflictSuperseded}, {40 * day, ""}} {
			at := t0.Add(-c.age)
			logs.SetClock(s, func() time.Time { return at })
			hc := held("a"+itoa(int64(i)), "f", "c")
			hc.HeldAt = at
			hold(t, s, hc, nil, nil)
			if c.status != "" {
				if err := settle(t, s, onlyPending(t, s, hc.Attribute), c.status); err != nil {
					t.Fatal(err)
				}
			}
		}
		logs.SetClock(s, func() time.Time { return t0 })
		res, err := s.Prune(context.Background())
		if err != nil {
			t.Fatal(err)
		}
		// Captures older than 2 days: 7 + 4, in batches of 3 (3,3,3,2);
		// decisions older than 30 days: 7 (3,3,1); conflicts settled more
		// than 30 days ago: 1 (1); audit entries older than two years:
		// none (1).
		want := logs.PruneResult{Decisions: 7, Captures: 11, Conflicts: 1, Batches: 9}
		if res != want {
			t.Fatalf("Prune = %+v, want %+v", res, want)
		}
		for table, n := range map[string]int64{"sync_decisions": 6, "sync_decision_captures": 2, "sync_decision_keys": 6, "held_conflicts": 2} {
			if got := count(t, db, table); got != n {
				t.Errorf("%s has %d rows, want %d", table, got, n)
			}
		}
		var oldest time.Time
		if err := db.Raw("SELECT MIN(decided_at) FROM sync_decisions").Row().Scan(&oldest); err != nil {
			// SQLite returns MIN of a TIMESTAMP column as text.
			var text string
			if err := db.Raw("SELECT MIN(decided_at) FROM sync_decisions").Row().Scan(&text); err != nil {
				t.Fatal(err)
			}
			oldest, _ = time.Parse("2006-01-02 15:04:05.999999999-07:00", text)
		}
		if !oldest.Equal(t0.Add(-10 * day)) {
			t.Errorf("oldest kept decision at %s, want %s", oldest, t0.Add(-10*day))
		}
		if got := testutil.ToFloat64(metric(t, reg, "decisions")); got != 7 {
			t.Errorf("deleted decisions metric = %v, want 7", got)
		}
		if got := testutil.ToFloat64(metric(t, reg, "conflicts")); got != 1 {
			t.Errorf("deleted conflicts metric = %v, want 1", got)
		}
		if n, _ := s.OpenConflictCount(context.Background()); n != 1 {
			t.Errorf("open conflicts after pruning = %d, want the old open one kept", n)
		}
		again, err := s.Prune(context.Background())
		if err != nil || again.Decisions != 0 || again.Captures != 0 || again.Conflicts != 0 {
			t.Fatalf("second Prune = %+v, %v; want nothing deleted", again, err)
		}
		if p := s.Policy(); p.MaxAge != 30*day || p.CaptureMaxAge != 2*day || p.BatchSize != 3 || !p.CaptureEnabled || p.Schedule != "@hourly" {
			t.Errorf("Policy = %+v", p)
		}
	})
}

// TestPruneAuditTrail: audit entries older than logs.audit_retention are
// deleted by the retention job, and the schema still refuses every other
// change to the trail.
func TestPruneAuditTrail(t *testing.T) {
	t.Parallel()
	storagetest.Each(t, func(t *testing.T, db *gorm.DB) {
		s, reg := newStore(t, db, func(c *logs.Config) {
			retentionConfig("")(c)
			c.AuditRetention = 60 * day
		})
		for _, g := range []struct {
			age time.Duration
			n   int
		}{{400 * day, 4}, {61 * day, 1}, {59 * day, 2}, {0, 1}} {
			for range g.n {
				if err := s.AppendAudit(context.Background(), logs.AuditEntry{At: t0.Add(-g.age), Actor: "a@example.org", Action: "map.publish"}); err != nil {
					t.Fatal(err)
				}
			}
		}
		logs.SetClock(s, func() time.Time { return t0 })
		res, err := s.Prune(context.Background())
		if err != nil {
			t.Fatal(err)
		}
		if res.Audit != 5 {
			t.Errorf("Prune deleted %d audit entries, want 5 (%+v)", res.Audit, res)
		}
		if n := count(t, db, "audit_trail"); n != 3 {
			t.Errorf("audit trail has %d entries, want 3", n)
		}
		if got := testutil.ToFloat64(metric(t, reg, "audit")); got != 5 {
			t.Errorf("deleted audit metric = %v, want 5", got)
		}
		for _, stmt := range []string{"DELETE FROM audit_trail", "UPDATE audit_trail SET actor = 'mallory'"} {
			if err := db.Exec(stmt).Error; err == nil || !strings.Contains(err.Error(), "append-only") {
				t.Errorf("%s after pruning: err = %v, want it refused as append-only", stmt, err)
			}
		}
		if n := count(t, db, "audit_trail"); n != 3 {
			t.Errorf("audit trail has %d entries after refused changes, want 3", n)
		}
		if p := s.Policy(); p.AuditMaxAge != 60*day {
			t.Errorf("Policy().AuditMaxAge = %s, want 60 days", p.AuditMaxAge)
		}
	})
}

func TestAuditRetentionConfig(t *testing.T) {
	t.Parallel()
	if err := (logs.Config{AuditRetention: 24 * time.Hour}).Validate(); err == nil || !strings.Contains(err.Error(), "logs.audit_retention") {
		t.Errorf("a one-day audit retention: %v, want a logs.audit_retention error", err)
	}
	if err := (logs.Config{}).Validate(); err != nil {
		t.Errorf("default config: %v", err)
	}
}

func TestScheduledRetentionHoldsTheLease(t *testing.T) {
	t.Parallel()
	storagetest.Each(t, func(t *testing.T, db *gorm.DB) {
		ctx, cancel := context.WithCancel(context.Background())
		defer cancel()
		s, reg := newStore(t, db, retentionConfig("@every 1s"))
		now := time.Now().UTC()
		seedAges(t, s, now)
		other := storage.NewLease(db, "logs:retention", "another-process", time.Minute)
		if ok, err := other.Acquire(ctx); err != nil || !ok {
			t.Fatalf("other.Acquire = %v, %v", ok, err)
		}
		done := make(chan error, 1)
		go func() { done <- s.RunRetention(ctx) }()

		waitFor(t, "a skipped run", func() bool { return runs(t, reg, "skipped") >= 1 })
		if n := count(t, db, "sync_decisions"); n != 13 {
			t.Fatalf("%d decisions left while another process held the lease, want 13", n)
		}
		if err := other.Release(ctx); err != nil {
			t.Fatal(err)
		}
		waitFor(t, "a successful run", func() bool { return runs(t, reg, "ok") >= 1 })
		if n := count(t, db, "sync_decisions"); n != 6 {
			t.Fatalf("%d decisions left after the run, want 6", n)
		}
		if runs(t, reg, "error") != 0 {
			t.Error("a run failed")
		}
		cancel()
		select {
		case err := <-done:
			if err != nil {
				t.Fatal(err)
			}
		case <-time.After(10 * time.Second):
			t.Fatal("RunRetention did not return after cancel")
		}
	})
}

func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(15 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(50 * time.Millisecond)
	}
}
