package agent

import (
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/fhirsync/fhirsync/logs"
)

// metrics are the agent's Prometheus series.
type metrics struct {
	decisions *prometheus.CounterVec
	latency   *prometheus.HistogramVec
	depth     *prometheus.GaugeVec
	feedLag   *prometheus.GaugeVec
	// groupCommit is the decisions written per decision-log transaction.
	groupCommit prometheus.Histogram
	now         func() time.Time

	lagMu    sync.Mutex
	lagFeeds map[string]bool // feeds whose lag was ever set
}

func newMetrics(reg prometheus.Registerer) *metrics {
	m := &metrics{
		decisions: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "fhirsync_decisions_total", Help: "Sync decisions by direction, outcome and reason code.",
		}, []string{"direction", "outcome", "reason"}),
		latency: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "fhirsync_sync_latency_seconds",
			Help:    "Time from the source change to the target write, for sent decisions.",
			Buckets: []float64{.01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30, 60, 300},
		}, []string{"direction"}),
		depth: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "fhirsync_queue_depth", Help: "Messages in a queue by state (active, scheduled, dead_letter).",
		}, []string{"queue", "state"}),
		feedLag: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "fhirsync_feed_lag_seconds", Help: "Age of the oldest unprocessed change of a feed (origin/type), 0 when none waits.",
		}, []string{"feed"}),
		groupCommit: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "fhirsync_group_commit_decisions",
			Help:    "Decisions written per transaction of the sync log in the agent's database (group commit).",
			Buckets: []float64{1, 2, 4, 8, 16, 32, 64, 128, 256},
		}),
		now: time.Now,
	}
	if reg != nil {
		reg.MustRegister(m.decisions, m.latency, m.depth, m.feedLag, m.groupCommit)
	}
	return m
}

func (m *metrics) observe(d *logs.Decision) {
	if m == nil {
		return
	}
	m.decisions.WithLabelValues(string(d.Direction), string(d.Outcome), string(d.Reason)).Inc()
}

// observeGroupCommit records a transaction of n decisions that committed.
func (m *metrics) observeGroupCommit(n int) {
	if m == nil {
		return
	}
	m.groupCommit.Observe(float64(n))
}

// observeLatency records source-change-to-target-write time.
func (m *metrics) observeLatency(dir logs.Direction, changedAt time.Time) {
	if m == nil || changedAt.IsZero() {
		return
	}
	m.latency.WithLabelValues(string(dir)).Observe(m.now().Sub(changedAt).Seconds())
}

// ObserveFeedLag sets fhirsync_feed_lag_seconds for feed (the notices'
// origin and record type, "history-poll/Patient"): the age of its oldest
// change still waiting or being processed (on Service Bus, estimated:
// EstimatedLags). The alert evaluator reports
// every feed it finds after each evaluation; a feed missing from a report
// has caught up and reads 0.
func (a *Agent) ObserveFeedLag(lags map[string]time.Duration) {
	m := a.pipe.metrics
	if m == nil {
		return
	}
	m.lagMu.Lock()
	defer m.lagMu.Unlock()
	for feed := range m.lagFeeds {
		if _, ok := lags[feed]; !ok {
			m.feedLag.WithLabelValues(feed).Set(0)
		}
	}
	for feed, age := range lags {
		m.feedLag.WithLabelValues(feed).Set(age.Seconds())
		if m.lagFeeds == nil {
			m.lagFeeds = map[string]bool{}
		}
		m.lagFeeds[feed] = true
	}
}
