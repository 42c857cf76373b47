package logs

import (
	"cmp"
	"context"
	"encoding/json"
	"fmt"
	"slices"
	"time"

	"gorm.io/gorm"
)

// deleteSuperseded removes, in the transaction that writes ds, the failed
// decisions they supersede: a message retried ends in one decision that
// lists every attempt. Only a failed decision of the same message is ever
// removed, so a wrong id cannot delete anything else.
func deleteSuperseded(tx *gorm.DB, ds []*Decision) error {
	for _, d := range ds {
		if d.Supersedes == 0 || d.Supersedes == d.ID {
			continue
		}
		if err := tx.Exec(`DELETE FROM sync_decisions WHERE id = ? AND message_id = ? AND outcome = 'failed'`,
			d.Supersedes, d.MessageID).Error; err != nil {
			return fmt.Errorf("folding decision %d into decision %d: %w", d.Supersedes, d.ID, err)
		}
	}
	return nil
}

// FailureGroup is the records failing now for one reason in one entity
// map and direction: records whose latest decision is failed or
// dead-lettered.
type FailureGroup struct {
	Reason    ReasonCode `json:"reason"`
	EntityMap string     `json:"entity_map"`
	Direction Direction  `json:"direction"`
	// Records counts the records; DeadLettered how many of them were
	// given up on (the others will be retried).
	Records      int `json:"records"`
	DeadLettered int `json:"dead_lettered"`
	// Latest is the time of the group's newest decision.
	Latest time.Time `json:"latest"`
	// Errors are what the endpoints said, one entry per error code (an
	// empty code: no error body), most records first.
	Errors []FailureError `json:"errors"`
	// Examples are the group's newest decisions, at most
	// FailureFilter.Examples of them.
	Examples []FailingRecord `json:"examples"`
}

// FailureError is one endpoint error code within a group.
type FailureError struct {
	// Code, Status and Message are those of the newest decision with the
	// code; Message is redacted (TargetError.Message).
	TargetError
	Records int `json:"records"`
	// Decision is the id of that newest decision.
	Decision int64 `json:"decision"`
}

// FailingRecord is one record failing now: its latest decision.
type FailingRecord struct {
	Decision int64        `json:"decision"`
	Time     time.Time    `json:"time"`
	Outcome  Outcome      `json:"outcome"`
	Source   Ref          `json:"source"`
	Error    *TargetError `json:"error,omitempty"`
	Attempts int          `json:"attempts"`
}

// FailureFilter narrows FailingNow.
type FailureFilter struct {
	// EntityMap and Reason keep only the records of one map or reason.
	EntityMap string
	Reason    ReasonCode
	// Examples bounds the records listed per group; zero means 5.
	Examples int
	// Limit bounds the records read; zero means 10000. Failures reports
	// Truncated when there were more.
	Limit int
}

// Failures is the answer of FailingNow.
type Failures struct {
	Groups []FailureGroup `json:"groups"`
	// Records is the number of records failing now (up to the limit).
	Records   int  `json:"records"`
	Truncated bool `json:"truncated,omitempty"`
}

// failingRow is the part of a decision row FailingNow reads.
type failingRow struct {
	ID         int64
	DecidedAt  time.Time
	Direction  string
	EntityMap  string
	SourceType string
	SourceID   string
	Outcome    string
	Reason     string
	Attempts   string
}

// FailingNow lists the records whose latest decision is failed or
// dead-lettered, grouped by reason, entity map and direction, groups
// with the most records first. A record is its source reference in one
// direction; a decision without a source (an invalid message) stands for
// its message.
func (s *Store) FailingNow(ctx context.Context, f FailureFilter) (Failures, error) {
	if f.Examples <= 0 {
		f.Examples = 5
	}
	if f.Limit <= 0 {
		f.Limit = 10000
	}
	q := s.db.WithContext(ctx).Table("sync_decisions AS d").
		Select("d.id, d.decided_at, d.direction, d.entity_map, d.source_type, d.source_id, d.outcome, d.reason, d.attempts").
		Where("d.outcome IN ?", []string{string(OutcomeFailed), string(OutcomeDeadLettered)}).
		Where(`NOT EXISTS (SELECT 1 FROM sync_decisions n
			WHERE n.source_id = d.source_id AND n.source_type = d.source_type AND n.direction = d.direction
			AND (d.source_id <> '' OR n.message_id = d.message_id)
			AND (n.decided_at > d.decided_at OR (n.decided_at = d.decided_at AND n.id > d.id)))`)
	if f.EntityMap != "" {
		q = q.Where("d.entity_map = ?", f.EntityMap)
	}
	if f.Reason != "" {
		q = q.Where("d.reason = ?", string(f.Reason))
	}
	var rows []failingRow
	if err := q.Order("d.decided_at DESC, d.id DESC").Limit(f.Limit + 1).Scan(&rows).Error; err != nil {
		return Failures{}, fmt.Errorf("listing the records failing now: %w", err)
	}
	out := Failures{}
	if len(rows) > f.Limit {
		rows, out.Truncated = rows[:f.Limit], true
	}
	out.Records = len(rows)
	type key struct{ reason, m, dir string }
	byKey := map[key]*FailureGroup{}
	var order []key
	for _, r := range rows { // newest first
		k := key{r.Reason, r.EntityMap, r.Direction}
		g := byKey[k]
		if g == nil {
			g = &FailureGroup{Reason: ReasonCode(r.Reason), EntityMap: r.EntityMap, Direction: Direction(r.Direction), Latest: r.DecidedAt.UTC()}
			byKey[k] = g
			order = append(order, k)
		}
		g.Records++
		if r.Outcome == string(OutcomeDeadLettered) {
			g.DeadLettered++
		}
		var atts []Attempt
		_ = json.Unmarshal([]byte(r.Attempts), &atts) // written only by toRow
		var te *TargetError
		if len(atts) > 0 {
			te = atts[len(atts)-1].TargetError
		}
		code := ""
		if te != nil {
			code = te.Code
		}
		i := slices.IndexFunc(g.Errors, func(e FailureError) bool { return e.Code == code })
		if i < 0 {
			e := FailureError{Decision: r.ID}
			if te != nil {
				e.TargetError = *te
			}
			g.Errors = append(g.Errors, e)
			i = len(g.Errors) - 1
		}
		g.Errors[i].Records++
		if len(g.Examples) < f.Examples {
			g.Examples = append(g.Examples, FailingRecord{Decision: r.ID, Time: r.DecidedAt.UTC(), Outcome: Outcome(r.Outcome),
				Source: Ref{Type: r.SourceType, ID: r.SourceID}, Error: te, Attempts: len(atts)})
		}
	}
	for _, k := range order {
		g := byKey[k]
		slices.SortStableFunc(g.Errors, func(a, b FailureError) int { return cmp.Compare(b.Records, a.Records) })
		out.Groups = append(out.Groups, *g)
	}
	slices.SortStableFunc(out.Groups, func(a, b FailureGroup) int { return cmp.Compare(b.Records, a.Records) })
	return out, nil
}
