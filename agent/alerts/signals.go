package alerts

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"gorm.io/gorm"

	"github.com/fhirsync/fhirsync/queues"
)

// FeedLag is how far behind one feed is: the age of its oldest change
// still waiting in a queue (or being processed). A feed with nothing
// waiting has no lag.
type FeedLag struct {
	// Feed is the notice origin and record type, e.g.
	// "history-poll/Patient" or "crm-tracking/contact".
	Feed string `json:"feed"`
	// Queue is the queue the changes wait in.
	Queue string `json:"queue"`
	// Pending counts the feed's waiting changes among those scanned; for
	// an estimate, the queue's waiting messages, all feeds together.
	Pending int64 `json:"pending"`
	// Oldest is when the oldest waiting change happened at the source, or
	// when it was queued when the feed did not say.
	Oldest time.Time `json:"oldest"`
	// AgeSeconds is now - Oldest.
	AgeSeconds int64 `json:"age_seconds"`
	// Estimated is set when the lag was estimated from the changes the
	// agent received and the queue's depth (Deps.EstimateLags) rather
	// than read from the waiting messages.
	Estimated bool `json:"estimated,omitempty"`
}

// FeedPoll is when a change feed last polled (saved its checkpoint).
type FeedPoll struct {
	Feed       string    `json:"feed"`
	LastPoll   time.Time `json:"last_poll"`
	AgeSeconds int64     `json:"age_seconds"`
}

// Budget is what one CRM application user has used of its
// service-protection limits in the current five-minute window, as
// Dataverse last reported it.
type Budget struct {
	User string `json:"user"`
	// RequestsLeft and TimeLeftSeconds are the last readings; -1 when
	// Dataverse has not reported them.
	RequestsLeft    float64 `json:"requests_left"`
	TimeLeftSeconds float64 `json:"time_left_seconds"`
	// UsedPercent is the larger share used of the two limits.
	UsedPercent float64 `json:"used_percent"`
}

// Dataverse's per-user service-protection limits per five-minute window
// ("Service protection API limits",
// https://learn.microsoft.com/power-apps/developer/data-platform/api-limits).
const (
	budgetRequests    = 6000
	budgetTimeSeconds = 1200
)

// Signals are the operational readings the rules and the dashboard share.
type Signals struct {
	At     time.Time  `json:"at"`
	Lags   []FeedLag  `json:"lags"`
	Polls  []FeedPoll `json:"polls"`
	Budget []Budget   `json:"budget"`
}

// MaxLagSeconds is the largest lag among the feeds, 0 when none waits.
func (s Signals) MaxLagSeconds() int64 {
	var m int64
	for _, l := range s.Lags {
		m = max(m, l.AgeSeconds)
	}
	return m
}

// lagScan bounds how many waiting messages of each queue Lags decodes:
// the oldest, in enqueue order. The backfill and reconcile wait at 5,000
// waiting notices, so the bound normally covers a whole queue.
const lagScan = 5000

type queueRow struct {
	Queue      string
	Body       []byte
	EnqueuedAt time.Time
}

// Lags reads the embedded queue's waiting messages (table queue_messages)
// and returns, per feed, the age of the oldest change. A queue on another
// transport (Service Bus) is not in the table and has no row here; its
// feeds' lags are estimated by the agent (Deps.EstimateLags).
func Lags(ctx context.Context, db *gorm.DB, now time.Time) ([]FeedLag, error) {
	var names []string
	if err := db.WithContext(ctx).Raw("SELECT DISTINCT queue FROM queue_messages WHERE state = 'active'").Scan(&names).Error; err != nil {
		return nil, fmt.Errorf("listing queues with waiting messages: %w", err)
	}
	byFeed := map[string]*FeedLag{}
	for _, q := range names {
		var rows []queueRow
		if err := db.WithContext(ctx).Raw(`SELECT queue, body, enqueued_at FROM queue_messages
			WHERE queue = ? AND state = 'active' ORDER BY seq LIMIT ?`, q, lagScan).Scan(&rows).Error; err != nil {
			return nil, fmt.Errorf("reading waiting messages of queue %s: %w", q, err)
		}
		for _, r := range rows {
			feed, at := "undecodable", r.EnqueuedAt
			if n, err := queues.DecodeNotice(r.Body); err == nil {
				feed = n.Origin + "/" + n.Type
				if !n.ChangedAt.IsZero() {
					at = n.ChangedAt
				}
			}
			key := q + "\x00" + feed
			l := byFeed[key]
			if l == nil {
				l = &FeedLag{Feed: feed, Queue: q, Oldest: at}
				byFeed[key] = l
			}
			l.Pending++
			if at.Before(l.Oldest) {
				l.Oldest = at
			}
		}
	}
	out := make([]FeedLag, 0, len(byFeed))
	for _, l := range byFeed {
		l.Oldest = l.Oldest.UTC()
		l.AgeSeconds = max(int64(now.Sub(l.Oldest).Seconds()), 0)
		out = append(out, *l)
	}
	slices.SortFunc(out, func(a, b FeedLag) int {
		if c := strings.Compare(a.Feed, b.Feed); c != 0 {
			return c
		}
		return strings.Compare(a.Queue, b.Queue)
	})
	return out, nil
}

// mergeLags adds the estimated rows est to the rows read from the table,
// except for a queue the table has rows of (its reading is exact), sorted
// by feed and queue.
func mergeLags(read, est []FeedLag) []FeedLag {
	if len(est) == 0 {
		return read
	}
	inTable := map[string]bool{}
	for _, l := range read {
		inTable[l.Queue] = true
	}
	out := slices.Clone(read)
	for _, l := range est {
		if !inTable[l.Queue] {
			out = append(out, l)
		}
	}
	slices.SortFunc(out, func(a, b FeedLag) int {
		if c := strings.Compare(a.Feed, b.Feed); c != 0 {
			return c
		}
		return strings.Compare(a.Queue, b.Queue)
	})
	return out
}

// Polls reads when each change feed last saved its checkpoint.
func Polls(ctx context.Context, db *gorm.DB, now time.Time) ([]FeedPoll, error) {
	var rows []struct {
		Feed      string
		UpdatedAt time.Time
	}
	if err := db.WithContext(ctx).Raw("SELECT feed, updated_at FROM feed_checkpoints ORDER BY feed").Scan(&rows).Error; err != nil {
		return nil, fmt.Errorf("reading feed checkpoints: %w", err)
	}
	out := make([]FeedPoll, 0, len(rows))
	for _, r := range rows {
		out = append(out, FeedPoll{Feed: r.Feed, LastPoll: r.UpdatedAt.UTC(), AgeSeconds: max(int64(now.Sub(r.UpdatedAt).Seconds()), 0)})
	}
	return out, nil
}

// Budgets reads the CRM users' remaining budget from the process's
// metrics (fhirsync_crm_budget_requests_remaining and
// fhirsync_crm_budget_time_remaining_seconds, by user).
func Budgets(g prometheus.Gatherer) ([]Budget, error) {
	if g == nil {
		return []Budget{}, nil
	}
	mfs, err := g.Gather()
	if err != nil {
		return nil, fmt.Errorf("reading the CRM budget metrics: %w", err)
	}
	byUser := map[string]*Budget{}
	get := func(user string) *Budget {
		b := byUser[user]
		if b == nil {
			b = &Budget{User: user, RequestsLeft: -1, TimeLeftSeconds: -1}
			byUser[user] = b
		}
		return b
	}
	for _, mf := range mfs {
		name := mf.GetName()
		if name != "fhirsync_crm_budget_requests_remaining" && name != "fhirsync_crm_budget_time_remaining_seconds" {
			continue
		}
		for _, m := range mf.GetMetric() {
			user := ""
			for _, l := range m.GetLabel() {
				if l.GetName() == "user" {
					user = l.GetValue()
				}
			}
			b := get(user)
			v := m.GetGauge().GetValue()
			if name == "fhirsync_crm_budget_requests_remaining" {
				b.RequestsLeft = v
				b.UsedPercent = max(b.UsedPercent, usedPercent(v, budgetRequests))
			} else {
				b.TimeLeftSeconds = v
				b.UsedPercent = max(b.UsedPercent, usedPercent(v, budgetTimeSeconds))
			}
		}
	}
	out := make([]Budget, 0, len(byUser))
	for _, b := range byUser {
		out = append(out, *b)
	}
	slices.SortFunc(out, func(a, b Budget) int { return strings.Compare(a.User, b.User) })
	return out, nil
}

func usedPercent(left, limit float64) float64 {
	return min(max(100*(1-left/limit), 0), 100)
}
