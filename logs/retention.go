package logs

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/robfig/cron/v3"

	"github.com/fhirsync/fhirsync/storage"
)

// Policy is the retention policy in force, for the admin app to show.
type Policy struct {
	// MaxAge is how long decisions are kept.
	MaxAge time.Duration `json:"max_age"`
	// Schedule is the cron expression (UTC) the pruning job runs on.
	Schedule string `json:"schedule"`
	// BatchSize is the most rows one DELETE removes.
	BatchSize int `json:"batch_size"`
	// CaptureEnabled reports whether payload capture is on.
	CaptureEnabled bool `json:"capture_enabled"`
	// CaptureMaxAge is how long payload captures are kept.
	CaptureMaxAge time.Duration `json:"capture_max_age"`
	// BusinessKeys reports whether business keys are recorded (hashed).
	BusinessKeys bool `json:"business_keys"`
	// AuditMaxAge is how long audit trail entries are kept.
	AuditMaxAge time.Duration `json:"audit_max_age"`
}

// Policy returns the retention and capture policy in force.
func (s *Store) Policy() Policy {
	return Policy{
		MaxAge: s.cfg.Retention.MaxAge, Schedule: s.cfg.Retention.Schedule,
		BatchSize: s.cfg.Retention.BatchSize, CaptureEnabled: s.cfg.Capture.Enabled,
		CaptureMaxAge: s.cfg.Capture.MaxAge, BusinessKeys: s.keyMAC != nil,
		AuditMaxAge: s.cfg.AuditRetention,
	}
}

// PruneResult says what one retention run removed.
type PruneResult struct {
	// Decisions is the number of decisions deleted (with their key hashes
	// and captures).
	Decisions int64
	// Captures is the number of captures deleted for being older than the
	// capture retention.
	Captures int64
	// Conflicts is the number of settled (applied or superseded) held
	// conflicts deleted for being settled longer than the decision
	// retention. Open and resolved ones are kept until settled.
	Conflicts int64
	// Audit is the number of audit trail entries deleted for being older
	// than the audit retention.
	Audit int64
	// Batches is the number of DELETE statements run.
	Batches int
}

type retentionMetrics struct {
	runs     *prometheus.CounterVec
	deleted  *prometheus.CounterVec
	duration prometheus.Histogram
	lastOK   prometheus.Gauge
}

func newRetentionMetrics(reg prometheus.Registerer) (*retentionMetrics, error) {
	m := &retentionMetrics{
		runs: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "fhirsync_logs_retention_runs_total",
			Help: "Sync log retention runs by result: ok, error, or skipped (another process holds the lease).",
		}, []string{"result"}),
		deleted: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "fhirsync_logs_retention_deleted_total",
			Help: "Rows deleted by sync log retention, by kind: decisions, captures, conflicts (settled held conflicts) or audit.",
		}, []string{"kind"}),
		duration: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "fhirsync_logs_retention_duration_seconds",
			Help:    "Duration of sync log retention runs that held the lease.",
			Buckets: prometheus.ExponentialBuckets(0.01, 4, 8),
		}),
		lastOK: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "fhirsync_logs_retention_last_success_timestamp_seconds",
			Help: "Unix time of the last successful sync log retention run.",
		}),
	}
	for _, r := range []string{"ok", "error", "skipped"} {
		m.runs.WithLabelValues(r)
	}
	for _, k := range []string{"decisions", "captures", "conflicts", "audit"} {
		m.deleted.WithLabelValues(k)
	}
	if reg != nil {
		for _, c := range []prometheus.Collector{m.runs, m.deleted, m.duration, m.lastOK} {
			if err := reg.Register(c); err != nil {
				return nil, err
			}
		}
	}
	return m, nil
}

// Prune deletes, now, captures older than the capture retention,
// decisions older than the decision retention and audit entries older
// than the audit retention, in batches of at most
// BatchSize rows, each its own statement, so no single DELETE holds locks
// for long. It takes no lease; RunRetention is the scheduled form.
func (s *Store) Prune(ctx context.Context) (PruneResult, error) {
	return s.prune(ctx, func() error { return nil })
}

// prune runs the batches, calling between before each one so the caller
// can renew its lease or stop.
func (s *Store) prune(ctx context.Context, between func() error) (PruneResult, error) {
	var res PruneResult
	now := s.now().UTC()
	batch := s.cfg.Retention.BatchSize
	steps := []struct {
		kind  string
		sql   string
		until time.Time
		count *int64
	}{
		{"captures", `DELETE FROM sync_decision_captures WHERE decision_id IN (
			SELECT decision_id FROM sync_decision_captures WHERE captured_at < ? ORDER BY captured_at LIMIT ?)`,
			now.Add(-s.cfg.Capture.MaxAge), &res.Captures},
		{"decisions", `DELETE FROM sync_decisions WHERE id IN (
			SELECT id FROM sync_decisions WHERE decided_at < ? ORDER BY decided_at, id LIMIT ?)`,
			now.Add(-s.cfg.Retention.MaxAge), &res.Decisions},
		{"conflicts", `DELETE FROM held_conflicts WHERE id IN (
			SELECT id FROM held_conflicts WHERE status IN ('applied', 'superseded') AND applied_at < ? ORDER BY applied_at, id LIMIT ?)`,
			now.Add(-s.cfg.Retention.MaxAge), &res.Conflicts},
		// The schema refuses deletes of entries newer than the horizon,
		// which the step moves first (see migration 0015).
		{"audit", `DELETE FROM audit_trail WHERE id IN (
			SELECT id FROM audit_trail WHERE at < ? ORDER BY at, id LIMIT ?)`,
			now.Add(-s.cfg.AuditRetention), &res.Audit},
	}
	for _, st := range steps {
		if st.kind == "audit" {
			if err := s.db.WithContext(ctx).Exec("UPDATE audit_trail_horizon SET horizon = ? WHERE id = 1", st.until).Error; err != nil {
				return res, fmt.Errorf("moving the audit trail horizon: %w", err)
			}
		}
		for {
			if err := between(); err != nil {
				return res, err
			}
			r := s.db.WithContext(ctx).Exec(st.sql, st.until, batch)
			if r.Error != nil {
				return res, fmt.Errorf("deleting expired %s: %w", st.kind, r.Error)
			}
			res.Batches++
			*st.count += r.RowsAffected
			s.metrics.deleted.WithLabelValues(st.kind).Add(float64(r.RowsAffected))
			if r.RowsAffected < int64(batch) {
				break
			}
		}
	}
	return res, nil
}

// errLeaseLost stops a run whose lease another process took over.
var errLeaseLost = errors.New("retention lease lost")

const retentionLease = "logs:retention"

// retentionRun is one scheduled run: take the lease or skip, prune,
// record metrics.
func (s *Store) retentionRun(ctx context.Context) {
	lease := storage.NewLease(s.db, retentionLease, s.cfg.Holder, 5*time.Minute)
	ok, err := lease.Acquire(ctx)
	if err != nil {
		s.metrics.runs.WithLabelValues("error").Inc()
		s.log.Error("sync log retention could not take its lease", "error", err)
		return
	}
	if !ok {
		s.metrics.runs.WithLabelValues("skipped").Inc()
		s.log.Debug("sync log retention skipped: another process holds the lease")
		return
	}
	defer func() { _ = lease.Release(context.WithoutCancel(ctx)) }()
	start := time.Now()
	lastRenew := start
	res, err := s.prune(ctx, func() error {
		if time.Since(lastRenew) < time.Minute {
			return ctx.Err()
		}
		lastRenew = time.Now()
		ok, err := lease.Acquire(ctx)
		if err == nil && !ok {
			err = errLeaseLost
		}
		return err
	})
	took := time.Since(start)
	s.metrics.duration.Observe(took.Seconds())
	if err != nil {
		s.metrics.runs.WithLabelValues("error").Inc()
		s.log.Error("sync log retention failed", "error", err, "decisions_deleted", res.Decisions, "captures_deleted", res.Captures)
		return
	}
	s.metrics.runs.WithLabelValues("ok").Inc()
	s.metrics.lastOK.SetToCurrentTime()
	s.log.Info("sync log retention done", "decisions_deleted", res.Decisions, "captures_deleted", res.Captures,
		"audit_deleted", res.Audit, "batches", res.Batches, "duration_ms", took.Milliseconds())
}

// RunRetention runs the retention job on the configured cron schedule until
// ctx ends. Each run holds the database lease "logs:retention", so among
// processes sharing the database only one prunes at a time; a run still
// going when the next is due makes that one skip.
func (s *Store) RunRetention(ctx context.Context) error {
	c := cron.New(cron.WithLocation(time.UTC), cron.WithChain(cron.SkipIfStillRunning(cron.DiscardLogger)))
	if _, err := c.AddFunc(s.cfg.Retention.Schedule, func() { s.retentionRun(ctx) }); err != nil {
		return fmt.Errorf("scheduling sync log retention %q: %w", s.cfg.Retention.Schedule, err)
	}
	c.Start()
	<-ctx.Done()
	<-c.Stop().Done()
	return nil
}
