package main

import (
	"context"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"gorm.io/gorm"

	"github.com/fhirsync/fhirsync/agent/alerts"
)

// feedPollDesc is fhirsync_feed_last_poll_timestamp_seconds: when each
// change feed last saved its checkpoint, the reading behind the
// in-product feed_stopped alert. The Prometheus rule "no polls" compares
// it with time().
var feedPollDesc = prometheus.NewDesc("fhirsync_feed_last_poll_timestamp_seconds",
	"Unix time at which a change feed last polled (saved its checkpoint), by feed.", []string{"feed"}, nil)

// feedPollCollector reads the feed checkpoints at each scrape. Every
// replica reads the same shared table, so every replica reports the same
// values; the rules take the latest per feed.
type feedPollCollector struct{ db *gorm.DB }

func (c feedPollCollector) Describe(ch chan<- *prometheus.Desc) { ch <- feedPollDesc }

func (c feedPollCollector) Collect(ch chan<- prometheus.Metric) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	polls, err := alerts.Polls(ctx, c.db, time.Now())
	if err != nil {
		ch <- prometheus.NewInvalidMetric(feedPollDesc, err)
		return
	}
	for _, p := range polls {
		ch <- prometheus.MustNewConstMetric(feedPollDesc, prometheus.GaugeValue, float64(p.LastPoll.UnixMilli())/1000, p.Feed)
	}
}
