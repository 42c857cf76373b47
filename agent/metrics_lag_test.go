package agent

import (
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
)

// TestObserveFeedLag: the gauge holds each reported feed's lag, and a feed
// that has caught up (missing from the next report) reads 0.
func TestObserveFeedLag(t *testing.T) {
	t.Parallel()
	m := newMetrics(prometheus.NewRegistry())
	a := &Agent{pipe: &pipeline{metrics: m}}
	a.ObserveFeedLag(map[string]time.Duration{"history-poll/Patient": 90 * time.Second, "crm-tracking/contact": time.Second})
	if v := testutil.ToFloat64(m.feedLag.WithLabelValues("history-poll/Patient")); v != 90 {
		t.Errorf("lag = %v, want 90", v)
	}
	a.ObserveFeedLag(map[string]time.Duration{"crm-tracking/contact": 5 * time.Second})
	if v := testutil.ToFloat64(m.feedLag.WithLabelValues("history-poll/Patient")); v != 0 {
		t.Errorf("lag of a feed caught up = %v, want 0", v)
	}
	if v := testutil.ToFloat64(m.feedLag.WithLabelValues("crm-tracking/contact")); v != 5 {
		t.Errorf("lag = %v, want 5", v)
	}
}
