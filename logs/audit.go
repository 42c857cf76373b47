package logs

import (
	"context"
	"errors"
	"fmt"
	"time"
	"unicode/utf8"

	"gorm.io/gorm"
)

// ErrInvalidAudit wraps the reasons an audit entry is refused.
var ErrInvalidAudit = errors.New("invalid audit entry")

// AuditEntry is one line of the audit trail: who did what to which
// object, and when. Summaries describe the change for people ("version 3
// published", "role auditor added"); they must not hold PHI.
type AuditEntry struct {
	// ID is assigned when the entry is appended.
	ID int64 `json:"id"`
	// At is when it happened; AppendAudit fills in the current time when
	// it is zero.
	At time.Time `json:"at"`
	// Actor is the user or process that acted. Required.
	Actor string `json:"actor"`
	// Action is a stable dotted name such as "map.publish" or
	// "capture.view". Required.
	Action string `json:"action"`
	// ObjectType and ObjectID name what was acted on ("entity_map", "7").
	ObjectType string `json:"object_type,omitempty"`
	ObjectID   string `json:"object_id,omitempty"`
	// Before and After summarise the object's state around the action.
	Before string `json:"before,omitempty"`
	After  string `json:"after,omitempty"`
}

type auditRow struct {
	ID            int64 `gorm:"primaryKey"`
	At            time.Time
	Actor         string
	Action        string
	ObjectType    string
	ObjectID      string
	BeforeSummary string
	AfterSummary  string
}

func (auditRow) TableName() string { return "audit_trail" }

const maxSummary = 4000

// AppendAudit adds e to the audit trail. The trail is append-only: there is
// no update or delete, and the schema refuses both.
func (s *Store) AppendAudit(ctx context.Context, e AuditEntry) error {
	return s.appendAudit(s.db.WithContext(ctx), e)
}

// appendAudit adds e through db, which may be a transaction: an action and
// its audit entry then commit together.
func (s *Store) appendAudit(db *gorm.DB, e AuditEntry) error {
	var errs []error
	if e.Actor == "" || len(e.Actor) > maxShortText {
		errs = append(errs, fmt.Errorf("actor is empty or longer than %d bytes", maxShortText))
	}
	if e.Action == "" || len(e.Action) > 64 {
		errs = append(errs, errors.New("action is empty or longer than 64 bytes"))
	}
	if len(e.ObjectType) > 64 || len(e.ObjectID) > maxShortText {
		errs = append(errs, errors.New("object type or id is too long"))
	}
	for _, f := range []struct{ name, value string }{{"before", e.Before}, {"after", e.After}} {
		if len(f.value) > maxSummary || !utf8.ValidString(f.value) {
			errs = append(errs, fmt.Errorf("%s summary is longer than %d bytes or not UTF-8", f.name, maxSummary))
		}
	}
	if len(errs) > 0 {
		return fmt.Errorf("appending to the audit trail: %w: %w", ErrInvalidAudit, errors.Join(errs...))
	}
	if e.At.IsZero() {
		e.At = s.now()
	}
	row := auditRow{At: e.At.UTC().Truncate(time.Microsecond), Actor: e.Actor, Action: e.Action,
		ObjectType: e.ObjectType, ObjectID: e.ObjectID, BeforeSummary: e.Before, AfterSummary: e.After}
	if err := db.Create(&row).Error; err != nil {
		return fmt.Errorf("appending %s by %s to the audit trail: %w", e.Action, e.Actor, err)
	}
	return nil
}

// AuditFilter selects audit entries; zero fields match everything.
type AuditFilter struct {
	Actor      string
	Action     string
	ObjectType string
	ObjectID   string
	// From and To bound At: From <= At < To.
	From, To time.Time
}

// AuditPage is one page of audit entries, newest first. Next is the cursor
// for the following page, empty on the last.
type AuditPage struct {
	Entries []AuditEntry `json:"entries"`
	Next    string       `json:"next,omitempty"`
}

// Audit lists audit entries matching f, newest first, limit per page
// (1–1000; zero means 100), continuing after the cursor after.
func (s *Store) Audit(ctx context.Context, f AuditFilter, after string, limit int) (AuditPage, error) {
	limit, err := pageLimit(limit)
	if err != nil {
		return AuditPage{}, err
	}
	q := s.db.WithContext(ctx).Model(&auditRow{})
	if f.Actor != "" {
		q = q.Where("actor = ?", f.Actor)
	}
	if f.Action != "" {
		q = q.Where("action = ?", f.Action)
	}
	if f.ObjectType != "" {
		q = q.Where("object_type = ?", f.ObjectType)
	}
	if f.ObjectID != "" {
		q = q.Where("object_id = ?", f.ObjectID)
	}
	if !f.From.IsZero() {
		q = q.Where("at >= ?", f.From.UTC())
	}
	if !f.To.IsZero() {
		q = q.Where("at < ?", f.To.UTC())
	}
	if after != "" {
		c, err := decodeCursor(after)
		if err != nil {
			return AuditPage{}, err
		}
		q = q.Where("(at, id) < (?, ?)", c.at, c.id)
	}
	var rows []auditRow
	if err := q.Order("at DESC, id DESC").Limit(limit + 1).Find(&rows).Error; err != nil {
		return AuditPage{}, fmt.Errorf("listing the audit trail: %w", err)
	}
	var page AuditPage
	if len(rows) > limit {
		rows = rows[:limit]
		last := rows[limit-1]
		page.Next = cursor{at: last.At.UTC(), id: last.ID}.encode()
	}
	page.Entries = make([]AuditEntry, len(rows))
	for i, r := range rows {
		page.Entries[i] = AuditEntry{ID: r.ID, At: r.At.UTC(), Actor: r.Actor, Action: r.Action,
			ObjectType: r.ObjectType, ObjectID: r.ObjectID, Before: r.BeforeSummary, After: r.AfterSummary}
	}
	return page, nil
}

// forEachAudit pages through f in order, for export.
func (s *Store) forEachAudit(ctx context.Context, f AuditFilter, fn func(AuditEntry) error) error {
	after := ""
	for {
		p, err := s.Audit(ctx, f, after, 1000)
		if err != nil {
			return err
		}
		for _, e := range p.Entries {
			if err := fn(e); err != nil {
				return err
			}
		}
		if p.Next == "" {
			return nil
		}
		after = p.Next
	}
}
