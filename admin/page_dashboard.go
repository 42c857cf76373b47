package admin

import (
	"context"
	"fmt"
	"net/http"
	"slices"
	"strconv"
	"time"

	"github.com/fhirsync/fhirsync/logs"
)

type dashboardData struct {
	Sections []navItem
	PHI      bool
	Stats    dashboardStats
}

func (a *app) dashboard(w http.ResponseWriter, r *http.Request) {
	u, _ := currentUser(r)
	var sections []navItem
	for _, n := range a.nav(u) {
		if n.Path != "/" {
			sections = append(sections, n)
		}
	}
	stats, err := a.stats(r.Context(), 24)
	if err != nil {
		a.serverError(w, r, "reading dashboard statistics", err)
		return
	}
	a.render(w, r, http.StatusOK, "dashboard", "Dashboard", dashboardData{Sections: sections, PHI: u.can(permPHI), Stats: stats})
}

// dashboardStats is what the dashboard shows, and what its script polls.
type dashboardStats struct {
	At         time.Time      `json:"at"`
	Hours      int            `json:"hours"`
	Total      int64          `json:"total"`
	PerMinute  float64        `json:"per_minute"`
	Outcomes   []outcomeCount `json:"outcomes"`
	TopReasons []reasonCount  `json:"top_reasons"`
	Buckets    []logs.Bucket  `json:"buckets"`
	Queues     []queueDepth   `json:"queues"`
	Feeds      []feedLag      `json:"feeds"`
	MaxBucket  int64          `json:"max_bucket"`
	// OpenConflicts counts the held conflicts waiting for a person.
	OpenConflicts int64                  `json:"open_conflicts"`
	ByOutcome     map[logs.Outcome]int64 `json:"-"`
}

type outcomeCount struct {
	Outcome logs.Outcome `json:"outcome"`
	Count   int64        `json:"count"`
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

type feedLag struct {
	Feed       string    `json:"feed"`
	LastPoll   time.Time `json:"last_poll"`
	LagSeconds int64     `json:"lag_seconds"`
}

// Lag renders the feed's lag for people.
func (f feedLag) Lag() string { return (time.Duration(f.LagSeconds) * time.Second).String() }

// stats counts the decisions of the last hours (hourly buckets), the
// queue depths and the time since each feed last polled.
func (a *app) stats(ctx context.Context, hours int) (dashboardStats, error) {
	now := a.now().UTC()
	s := dashboardStats{At: now, Hours: hours}
	bucket := time.Hour
	if hours <= 2 {
		bucket = 5 * time.Minute
	}
	c, err := a.data.logs.Counts(ctx, logs.Filter{From: now.Add(-time.Duration(hours) * time.Hour)}, bucket)
	if err != nil {
		return s, fmt.Errorf("counting decisions: %w", err)
	}
	s.Total, s.Buckets, s.ByOutcome = c.Total, c.Buckets, c.ByOutcome
	if s.Buckets == nil {
		s.Buckets = []logs.Bucket{}
	}
	s.PerMinute = float64(c.Total) / (float64(hours) * 60)
	for _, o := range logs.Outcomes() {
		s.Outcomes = append(s.Outcomes, outcomeCount{o, c.ByOutcome[o]})
	}
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
		if x.Reason < y.Reason {
			return -1
		}
		return 1
	})
	if len(s.TopReasons) > 8 {
		s.TopReasons = s.TopReasons[:8]
	}
	if s.TopReasons == nil {
		s.TopReasons = []reasonCount{}
	}
	for _, b := range s.Buckets {
		var n int64
		for _, v := range b.ByOutcome {
			n += v
		}
		s.MaxBucket = max(s.MaxBucket, n)
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
	feeds, err := a.data.feeds(ctx)
	if err != nil {
		return s, err
	}
	s.Feeds = []feedLag{}
	for _, f := range feeds {
		s.Feeds = append(s.Feeds, feedLag{Feed: f.Feed, LastPoll: f.UpdatedAt.UTC(), LagSeconds: int64(now.Sub(f.UpdatedAt).Seconds())})
	}
	return s, nil
}

// apiDashboard is GET /api/v1/dashboard?hours=N (1 to 168, default 24).
func (a *app) apiDashboard(w http.ResponseWriter, r *http.Request) {
	hours := 24
	if s := r.URL.Query().Get("hours"); s != "" {
		n, err := strconv.Atoi(s)
		if err != nil || n < 1 || n > 168 {
			a.renderError(w, r, http.StatusBadRequest, "hours must be 1 to 168.")
			return
		}
		hours = n
	}
	s, err := a.stats(r.Context(), hours)
	if err != nil {
		a.serverError(w, r, "reading dashboard statistics", err)
		return
	}
	writeJSON(w, http.StatusOK, s)
}
