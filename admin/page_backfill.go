package admin

import (
	"context"
	"fmt"
	"net/http"
	"time"
)

// backfillStale is how long a running backfill may go without saving its
// progress before the page says its process may have stopped. A walk
// saves after every page, and every two seconds while it waits.
const backfillStale = time.Minute

// backfillRun is one row of backfill_runs (written by `fhirsync
// backfill`, see agent.BackfillRuns) as the page shows it: counts and
// times only.
type backfillRun struct {
	ID          string
	MapName     string
	Side        string
	State       string
	Done        int64
	Total       int64
	Rate        float64
	Queued      int64
	ThrottledMS int64 `gorm:"column:throttled_ms"`
	Resumes     int
	Error       string
	StartedAt   time.Time
	UpdatedAt   time.Time
	FinishedAt  *time.Time
	// Stale is set for a running walk whose process saved nothing for
	// backfillStale.
	Stale bool `gorm:"-"`
}

// Percent renders Done of Total, or "—" when the total is unknown.
func (r backfillRun) Percent() string {
	if r.Total <= 0 {
		return "—"
	}
	return fmt.Sprintf("%.1f %%", 100*float64(min(r.Done, r.Total))/float64(r.Total))
}

// Processed estimates the records the agent has taken off the queue: the
// notices enqueued less those still waiting there (of any origin, so the
// figure errs low).
func (r backfillRun) Processed() int64 {
	return max(r.Done-r.Queued, 0)
}

// Left is the estimated time until the agent has processed the last record
// of a running walk, at the walk's rate (records processed per second over
// the last minute, as the walk stored it).
func (r backfillRun) Left() string {
	if r.State != "running" || r.Stale || r.Total < 0 || r.Rate <= 0 {
		return "—"
	}
	return time.Duration(float64(max(r.Total-r.Processed(), 0)) / r.Rate * float64(time.Second)).Round(time.Second).String()
}

// Waited is the time the walk spent waiting for the queue or the source.
func (r backfillRun) Waited() string {
	return (time.Duration(r.ThrottledMS) * time.Millisecond).Round(time.Second).String()
}

type backfillsData struct {
	Runs []backfillRun
}

// backfillsPage lists the newest backfill runs with their progress.
func (a *app) backfillsPage(w http.ResponseWriter, r *http.Request) {
	runs, err := a.backfillRuns(r.Context(), 50)
	if err != nil {
		a.serverError(w, r, "reading backfill runs", err)
		return
	}
	a.render(w, r, http.StatusOK, "backfills", "Backfills", backfillsData{Runs: runs})
}

func (a *app) backfillRuns(ctx context.Context, limit int) ([]backfillRun, error) {
	var runs []backfillRun
	err := a.data.db.WithContext(ctx).Raw(`SELECT id, map_name, side, state, done, total, rate, queued, throttled_ms, resumes, error,
		started_at, updated_at, finished_at FROM backfill_runs ORDER BY started_at DESC LIMIT ?`, limit).Scan(&runs).Error
	if err != nil {
		return nil, err
	}
	now := a.now()
	for i := range runs {
		runs[i].Stale = runs[i].State == "running" && now.Sub(runs[i].UpdatedAt) > backfillStale
	}
	return runs, nil
}
