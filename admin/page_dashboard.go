package admin

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/fhirsync/fhirsync/agent/alerts"
	"github.com/fhirsync/fhirsync/logs"
)

type dashboardData struct {
	Sections []navItem
	PHI      bool
	Stats    dashboardStats
	// Problem says why a custom range was not used.
	Problem string
}

// dashboardRange is a time range the dashboard shows, with the bucket
// width that fits it.
type dashboardRange struct {
	Key    string        `json:"range"` // 1h, 24h, 7d or custom
	From   time.Time     `json:"from"`
	To     time.Time     `json:"to"`
	Bucket time.Duration `json:"bucket_ns"`
}

// fixedRanges are the ranges offered as links, with their buckets.
var fixedRanges = []struct {
	Key, Label  string
	Span, Width time.Duration
}{
	{"1h", "Last hour", time.Hour, time.Minute},
	{"24h", "Last 24 hours", 24 * time.Hour, 15 * time.Minute},
	{"7d", "Last 7 days", 7 * 24 * time.Hour, 2 * time.Hour},
}

// customWidths are the bucket widths a custom range may get: the
// narrowest that keeps it within maxBuckets.
var customWidths = []time.Duration{time.Minute, 5 * time.Minute, 15 * time.Minute, time.Hour, 2 * time.Hour,
	6 * time.Hour, 12 * time.Hour, 24 * time.Hour}

const (
	maxBuckets  = 120
	maxCustom   = 92 * 24 * time.Hour
	customField = "2006-01-02T15:04"
)

// parseRange reads ?range=1h|24h|7d|custom&from=…&to=… (UTC, as a
// datetime-local field sends it). A bad custom range falls back to 24 h
// and says why.
func parseRange(q url.Values, now time.Time) (dashboardRange, string) {
	key := q.Get("range")
	for _, f := range fixedRanges {
		if key == f.Key {
			return dashboardRange{Key: f.Key, From: now.Add(-f.Span), To: now, Bucket: f.Width}, ""
		}
	}
	def := dashboardRange{Key: "24h", From: now.Add(-24 * time.Hour), To: now, Bucket: 15 * time.Minute}
	if key == "" {
		return def, ""
	}
	if key != "custom" {
		return def, fmt.Sprintf("Range %q is not 1h, 24h, 7d or custom; showing the last 24 hours.", trimTo(key, 20))
	}
	parse := func(name string) (time.Time, error) {
		s := strings.TrimSpace(q.Get(name))
		for _, layout := range []string{customField, "2006-01-02T15:04:05", time.RFC3339, "2006-01-02"} {
			if t, err := time.ParseInLocation(layout, s, time.UTC); err == nil {
				return t.UTC(), nil
			}
		}
		return time.Time{}, fmt.Errorf("%s %q is not a date and time such as 2026-03-01T09:30", name, trimTo(s, 30))
	}
	from, err1 := parse("from")
	to, err2 := parse("to")
	switch {
	case err1 != nil || err2 != nil:
		return def, errors.Join(err1, err2).Error() + "; showing the last 24 hours."
	case !from.Before(to):
		return def, "The custom range ends before it starts; showing the last 24 hours."
	case to.Sub(from) > maxCustom:
		return def, "A custom range spans at most 92 days; showing the last 24 hours."
	}
	r := dashboardRange{Key: "custom", From: from, To: to}
	for _, w := range customWidths {
		r.Bucket = w
		if to.Sub(from)/w <= maxBuckets {
			break
		}
	}
	return r, ""
}

func trimTo(s string, n int) string {
	if len(s) > n {
		return s[:n] + "…"
	}
	return s
}

func (a *app) dashboard(w http.ResponseWriter, r *http.Request) {
	u, _ := currentUser(r)
	var sections []navItem
	for _, n := range a.nav(u) {
		if n.Path != "/" {
			sections = append(sections, n)
		}
	}
	rg, problem := parseRange(r.URL.Query(), a.now().UTC())
	stats, err := a.stats(r.Context(), rg)
	if err != nil {
		a.serverError(w, r, "reading dashboard statistics", err)
		return
	}
	status := http.StatusOK
	if problem != "" {
		status = http.StatusBadRequest
	}
	a.render(w, r, status, "dashboard", "Dashboard", dashboardData{Sections: sections, PHI: u.can(permPHI), Stats: stats, Problem: problem})
}

// dashboardStats is what the dashboard shows and GET /api/v1/dashboard
// returns.
type dashboardStats struct {
	At     time.Time      `json:"at"`
	Range  dashboardRange `json:"range"`
	Series logs.Series    `json:"series"`
	// PerMinute is the range's mean throughput.
	PerMinute  float64           `json:"per_minute"`
	TopReasons []reasonCount     `json:"top_reasons"`
	Queues     []queueDepth      `json:"queues"`
	Lags       []alerts.FeedLag  `json:"lags"`
	Polls      []alerts.FeedPoll `json:"polls"`
	Budget     []alerts.Budget   `json:"budget"`
	// OpenConflicts counts the held conflicts waiting for a person.
	OpenConflicts int64 `json:"open_conflicts"`
	// Firing counts the alert rules firing now.
	Firing int `json:"firing_alerts"`
}

type reasonCount struct {
	Reason logs.ReasonCode `json:"reason"`
	Count  int64           `json:"count"`
}

type queueDepth struct {
	Queue      string `json:"queue"`
	Active     int64  `json:"active"`
	Scheduled  int64  `json:"scheduled"`
	DeadLetter int64  `json:"dead_letter"`
	Error      string `json:"error,omitempty"`
}

// stats reads everything the dashboard shows for rg.
func (a *app) stats(ctx context.Context, rg dashboardRange) (dashboardStats, error) {
	now := a.now().UTC()
	s := dashboardStats{At: now, Range: rg}
	var err error
	if s.Series, err = a.data.logs.Series(ctx, rg.From, rg.To, rg.Bucket); err != nil {
		return s, fmt.Errorf("aggregating decisions: %w", err)
	}
	if mins := rg.To.Sub(rg.From).Minutes(); mins > 0 {
		s.PerMinute = float64(s.Series.Total.Decisions) / mins
	}
	c, err := a.data.logs.Counts(ctx, logs.Filter{From: rg.From, To: rg.To}, 0)
	if err != nil {
		return s, fmt.Errorf("counting reasons: %w", err)
	}
	s.TopReasons = []reasonCount{}
	for code, n := range c.ByReason {
		s.TopReasons = append(s.TopReasons, reasonCount{code, n})
	}
	slices.SortFunc(s.TopReasons, func(x, y reasonCount) int {
		if x.Count != y.Count {
			if x.Count > y.Count {
				return -1
			}
			return 1
		}
		return strings.Compare(string(x.Reason), string(y.Reason))
	})
	if len(s.TopReasons) > 8 {
		s.TopReasons = s.TopReasons[:8]
	}
	s.Queues = []queueDepth{}
	for _, name := range a.data.queueNames {
		d, err := a.data.queues[name].Depth(ctx)
		qd := queueDepth{Queue: name, Active: d.Active, Scheduled: d.Scheduled, DeadLetter: d.DeadLetter}
		if err != nil {
			a.log.Warn("reading queue depth", "queue", name, "error", err)
			qd.Error = "unavailable"
		}
		s.Queues = append(s.Queues, qd)
	}
	if s.OpenConflicts, err = a.data.logs.OpenConflictCount(ctx); err != nil {
		return s, err
	}
	sig, err := a.data.alerts.Signals(ctx, now)
	if err != nil {
		return s, err
	}
	s.Lags, s.Polls, s.Budget = sig.Lags, sig.Polls, sig.Budget
	firing, err := a.data.alerts.Firing(ctx)
	if err != nil {
		return s, err
	}
	s.Firing = len(firing)
	return s, nil
}

// apiDashboard is GET /api/v1/dashboard?range=1h|24h|7d|custom&from=&to=.
func (a *app) apiDashboard(w http.ResponseWriter, r *http.Request) {
	rg, problem := parseRange(r.URL.Query(), a.now().UTC())
	if problem != "" {
		a.renderError(w, r, http.StatusBadRequest, problem)
		return
	}
	s, err := a.stats(r.Context(), rg)
	if err != nil {
		a.serverError(w, r, "reading dashboard statistics", err)
		return
	}
	writeJSON(w, http.StatusOK, s)
}

// The view helpers below shape the figures for the template.

// RangeLinks are the fixed ranges as links, the current one marked.
func (s dashboardStats) RangeLinks() []rangeLink {
	var out []rangeLink
	for _, f := range fixedRanges {
		out = append(out, rangeLink{Label: f.Label, Href: "/?range=" + f.Key, Current: s.Range.Key == f.Key})
	}
	return out
}

type rangeLink struct {
	Label, Href string
	Current     bool
}

// CustomFrom and CustomTo fill the custom range fields.
func (s dashboardStats) CustomFrom() string { return s.Range.From.UTC().Format(customField) }
func (s dashboardStats) CustomTo() string   { return s.Range.To.UTC().Format(customField) }

// RangeLabel names the range for headings.
func (s dashboardStats) RangeLabel() string {
	for _, f := range fixedRanges {
		if f.Key == s.Range.Key {
			return f.Label
		}
	}
	return "From " + s.Range.From.Format("2006-01-02 15:04") + " to " + s.Range.To.Format("2006-01-02 15:04") + " UTC"
}

// BucketLabel names the resolution.
func (s dashboardStats) BucketLabel() string { return humanDuration(s.Range.Bucket) }

// RefreshSeconds is how often the page refreshes its figures: wider
// ranges cost more to aggregate and change more slowly.
func (s dashboardStats) RefreshSeconds() int {
	switch {
	case s.Range.Key == "custom":
		return 0
	case s.Range.Bucket <= time.Minute:
		return 5
	case s.Range.Bucket <= 15*time.Minute:
		return 15
	}
	return 60
}

// MaxLag is the largest feed lag.
func (s dashboardStats) MaxLag() string {
	var m int64
	for _, l := range s.Lags {
		m = max(m, l.AgeSeconds)
	}
	return humanDuration(time.Duration(m) * time.Second)
}

// ErrorRate renders the range's error rate.
func (s dashboardStats) ErrorRate() string { return percent(s.Series.Total.ErrorRate) }

// Outcomes lists the outcomes in drawing order.
func (dashboardStats) Outcomes() []logs.Outcome { return logs.Outcomes() }

// chart is an SVG bar chart drawn from the buckets: one bar per bucket,
// stacked by outcome (throughput) or one value (latency).
type chart struct {
	Width, Height int
	Rects         []chartRect
	Max           string // the top of the scale, for people
}

type chartRect struct {
	X, Y, W, H float64
	Fill       string
}

// outcomeFill matches the .seg-* colours of app.css.
var outcomeFill = map[logs.Outcome]string{
	logs.OutcomeSent: "#5aa469", logs.OutcomeSkipped: "#e0b94f", logs.OutcomeHeld: "#7a5fb5",
	logs.OutcomeFailed: "#d9822b", logs.OutcomeDeadLettered: "#a4262c",
}

const chartHeight = 100

// ThroughputChart stacks each bucket's decisions by outcome.
func (s dashboardStats) ThroughputChart() chart {
	var top int64
	for _, b := range s.Series.Buckets {
		top = max(top, b.Decisions)
	}
	c := chart{Width: 10 * len(s.Series.Buckets), Height: chartHeight, Max: strconv.FormatInt(top, 10)}
	for i, b := range s.Series.Buckets {
		y := float64(chartHeight)
		for _, o := range logs.Outcomes() {
			n := b.ByOutcome[o]
			if n == 0 {
				continue
			}
			h := float64(chartHeight) * float64(n) / float64(max(top, 1))
			y -= h
			c.Rects = append(c.Rects, chartRect{X: float64(10*i) + 1, Y: y, W: 8, H: h, Fill: outcomeFill[o]})
		}
	}
	return c
}

// LatencyChart draws each bucket's p95 latency.
func (s dashboardStats) LatencyChart() chart {
	var top time.Duration
	for _, b := range s.Series.Buckets {
		top = max(top, b.Latency.P95)
	}
	c := chart{Width: 10 * len(s.Series.Buckets), Height: chartHeight, Max: humanDuration(top)}
	for i, b := range s.Series.Buckets {
		if b.Latency.P95 == 0 {
			continue
		}
		h := float64(chartHeight) * float64(b.Latency.P95) / float64(max(top, 1))
		c.Rects = append(c.Rects, chartRect{X: float64(10*i) + 1, Y: float64(chartHeight) - h, W: 8, H: h, Fill: "#3b6ea8"})
	}
	return c
}

// ThroughputSummary is the throughput chart's text alternative.
func (s dashboardStats) ThroughputSummary() string {
	busiest, n := time.Time{}, int64(-1)
	for _, b := range s.Series.Buckets {
		if b.Decisions > n {
			busiest, n = b.Start, b.Decisions
		}
	}
	if n <= 0 {
		return "No decisions in this range."
	}
	t := s.Series.Total
	return fmt.Sprintf("%d decisions in %d buckets of %s: %d sent, %d skipped, %d held, %d failed, %d dead-lettered; error rate %s; busiest bucket %s UTC with %d.",
		t.Decisions, len(s.Series.Buckets), humanDuration(s.Range.Bucket), t.ByOutcome[logs.OutcomeSent], t.ByOutcome[logs.OutcomeSkipped],
		t.ByOutcome[logs.OutcomeHeld], t.ByOutcome[logs.OutcomeFailed], t.ByOutcome[logs.OutcomeDeadLettered], percent(t.ErrorRate),
		busiest.Format("2006-01-02 15:04"), n)
}

// LatencySummary is the latency chart's text alternative.
func (s dashboardStats) LatencySummary() string {
	t := s.Series.Total
	if t.Timed == 0 {
		return "No sent decision in this range says when its source changed."
	}
	var worst time.Time
	var p95 time.Duration
	for _, b := range s.Series.Buckets {
		if b.Latency.P95 > p95 {
			worst, p95 = b.Start, b.Latency.P95
		}
	}
	return fmt.Sprintf("Source change to target write over %d sent decisions: p50 %s, p95 %s, p99 %s; the slowest bucket, %s UTC, had p95 %s.",
		t.Timed, humanDuration(t.Latency.P50), humanDuration(t.Latency.P95), humanDuration(t.Latency.P99),
		worst.Format("2006-01-02 15:04"), humanDuration(p95))
}

// humanDuration renders d shortly: 850ms, 4.2s, 3m10s, 2h0m.
func humanDuration(d time.Duration) string {
	switch {
	case d <= 0:
		return "0s"
	case d < time.Second:
		return strconv.FormatInt(d.Milliseconds(), 10) + "ms"
	case d < time.Minute:
		return strconv.FormatFloat(d.Seconds(), 'f', 1, 64) + "s"
	case d < 24*time.Hour:
		return strings.TrimSuffix(d.Truncate(time.Second).String(), "0s")
	}
	days := d / (24 * time.Hour)
	return fmt.Sprintf("%dd%s", days, strings.TrimSuffix((d-days*24*time.Hour).Truncate(time.Minute).String(), "0s"))
}

func percent(f float64) string { return strconv.FormatFloat(100*f, 'f', 1, 64) + "%" }

// statsRow is one row of the bucket and map tables, ready to show.
type statsRow struct {
	Label, Href   string
	Decisions     int64
	PerMinute     string
	Outcomes      []int64 // in logs.Outcomes() order
	Errors        int64
	ErrorRate     string
	Timed         int64
	P50, P95, P99 string
}

func rowOf(label string, st logs.Stats, span time.Duration) statsRow {
	r := statsRow{Label: label, Decisions: st.Decisions, Errors: st.Errors, ErrorRate: percent(st.ErrorRate), Timed: st.Timed,
		PerMinute: strconv.FormatFloat(float64(st.Decisions)/max(span.Minutes(), 1), 'f', 1, 64)}
	for _, o := range logs.Outcomes() {
		r.Outcomes = append(r.Outcomes, st.ByOutcome[o])
	}
	r.P50, r.P95, r.P99 = "—", "—", "—"
	if st.Timed > 0 {
		r.P50, r.P95, r.P99 = humanDuration(st.Latency.P50), humanDuration(st.Latency.P95), humanDuration(st.Latency.P99)
	}
	return r
}

// BucketRows are the buckets as table rows.
func (s dashboardStats) BucketRows() []statsRow {
	out := make([]statsRow, 0, len(s.Series.Buckets))
	for _, b := range s.Series.Buckets {
		out = append(out, rowOf(b.Start.UTC().Format("2006-01-02 15:04"), b.Stats, s.Range.Bucket))
	}
	return out
}

// MapRows are the entity maps as table rows.
func (s dashboardStats) MapRows() []statsRow {
	out := make([]statsRow, 0, len(s.Series.Maps))
	for _, m := range s.Series.Maps {
		label, href := m.Map, "/logs?map="+url.QueryEscape(m.Map)
		if m.Map == "" {
			label, href = "(no map)", ""
		}
		r := rowOf(label, m.Stats, s.Range.To.Sub(s.Range.From))
		r.Href = href
		out = append(out, r)
	}
	return out
}

// Total is the whole range as a row.
func (s dashboardStats) Total() statsRow {
	return rowOf("All", s.Series.Total, s.Range.To.Sub(s.Range.From))
}

// Age renders seconds for people.
func (dashboardStats) Age(secs int64) string { return humanDuration(time.Duration(secs) * time.Second) }

// BudgetLeft renders a budget reading; -1 means none yet.
func (dashboardStats) BudgetLeft(v float64, unit string) string {
	if v < 0 {
		return "no reading"
	}
	return strconv.FormatFloat(v, 'f', 0, 64) + unit
}

// Percent renders a percentage already scaled to 0-100.
func (dashboardStats) Percent(v float64) string { return strconv.FormatFloat(v, 'f', 0, 64) + "%" }

// Legend is the outcomes with their chart colours.
func (dashboardStats) Legend() []legendItem {
	var out []legendItem
	for _, o := range logs.Outcomes() {
		out = append(out, legendItem{Outcome: o, Fill: outcomeFill[o]})
	}
	return out
}

type legendItem struct {
	Outcome logs.Outcome
	Fill    string
}
