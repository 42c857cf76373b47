package logs

import (
	"context"
	"encoding/base64"
	"errors"
	"fmt"
	"slices"
	"sort"
	"strconv"
	"strings"
	"time"

	"gorm.io/gorm"

	"github.com/fhirsync/fhirsync/storage"
)

// Query errors.
var (
	// ErrBadCursor means a page cursor was not one this package issued.
	ErrBadCursor = errors.New("invalid page cursor")
	// ErrBadFilter means a filter value is not a known enum value or the
	// page size is out of range.
	ErrBadFilter = errors.New("invalid filter")
	// ErrKeysOff means business keys are not recorded because
	// logs.key_secret is not configured.
	ErrKeysOff = errors.New("business keys are not recorded (logs.key_secret is not set)")
)

// Filter selects decisions. Zero fields match everything; set fields must
// all match.
type Filter struct {
	// Record matches decisions whose source or target id is Record: a
	// record's timeline across maps and directions.
	Record string
	// RecordType narrows Record to records of this type, ignoring case.
	RecordType string
	// RecordPrefix makes Record a prefix of the id, ignoring case: a
	// search, where the exact match (the default) is a timeline. No index
	// serves it, so a rare prefix reads the whole log: about 1 s per page
	// at 1,000,000 decisions on SQLite (BenchmarkAt1M), against 0.4 ms for
	// an exact id.
	RecordPrefix bool
	// Linked adds the decisions of the records linked to Record — the
	// other side of each pair that a decision on Record names (a Patient's
	// contact, a contact's Patient) — so a timeline shows both sides. The
	// links are found from the ids equal to Record (with RecordPrefix: as
	// typed, in lower or in upper case, since CRM ids are GUIDs written
	// either way), at most maxLinked of them.
	Linked bool
	// linked is what Linked resolved to; resolved says it was looked up.
	linked   []Ref
	resolved bool
	// BusinessKey matches decisions recorded with this key name and value.
	BusinessKey BusinessKey
	// EntityMap matches decisions made with this entity map.
	EntityMap string
	// Outcome, Reason and Direction match exactly.
	Outcome   Outcome
	Reason    ReasonCode
	Direction Direction
	// MessageID matches the queue message's id.
	MessageID string
	// Conflicts matches only decisions that name at least one conflict.
	Conflicts bool
	// From and To bound the decision time: From <= Time < To.
	From, To time.Time
}

// Page is one page of decisions, newest first. Next is the cursor for the
// following page, empty on the last one.
type Page struct {
	Decisions []Decision `json:"decisions"`
	Next      string     `json:"next,omitempty"`
}

// MaxPageSize is the largest page Search returns.
const MaxPageSize = 1000

func pageLimit(limit int) (int, error) {
	switch {
	case limit == 0:
		return 100, nil
	case limit < 0 || limit > MaxPageSize:
		return 0, fmt.Errorf("%w: page size %d is not between 1 and %d", ErrBadFilter, limit, MaxPageSize)
	}
	return limit, nil
}

// cursor is a keyset position: the last row's time and id. Pages are
// ordered by (decided_at, id) descending, which an index serves for every
// filter, so a deep page costs the same as the first.
type cursor struct {
	at time.Time
	id int64
}

func (c cursor) encode() string {
	s := "v1:" + strconv.FormatInt(c.at.UnixMicro(), 10) + ":" + strconv.FormatInt(c.id, 10)
	return base64.RawURLEncoding.EncodeToString([]byte(s))
}

func decodeCursor(s string) (cursor, error) {
	raw, err := base64.RawURLEncoding.DecodeString(s)
	if err != nil {
		return cursor{}, ErrBadCursor
	}
	parts := strings.Split(string(raw), ":")
	if len(parts) != 3 || parts[0] != "v1" {
		return cursor{}, ErrBadCursor
	}
	us, err1 := strconv.ParseInt(parts[1], 10, 64)
	id, err2 := strconv.ParseInt(parts[2], 10, 64)
	if err1 != nil || err2 != nil || id <= 0 {
		return cursor{}, ErrBadCursor
	}
	return cursor{at: time.UnixMicro(us).UTC(), id: id}, nil
}

// where applies f to a query on sync_decisions.
func (s *Store) where(q *gorm.DB, f Filter) (*gorm.DB, error) {
	if f.Outcome != "" && !f.Outcome.valid() {
		return nil, fmt.Errorf("%w: unknown outcome %q", ErrBadFilter, short(string(f.Outcome)))
	}
	if f.Reason != "" {
		if _, ok := LookupReason(f.Reason); !ok {
			return nil, fmt.Errorf("%w: unknown reason %q", ErrBadFilter, short(string(f.Reason)))
		}
	}
	if f.Direction != "" && !f.Direction.valid() {
		return nil, fmt.Errorf("%w: unknown direction %q", ErrBadFilter, short(string(f.Direction)))
	}
	if f.Record != "" {
		q = q.Where(recordCondition(s.db, f))
	} else if f.RecordType != "" || f.RecordPrefix || f.Linked {
		return nil, fmt.Errorf("%w: a record type, prefix or link needs a record id", ErrBadFilter)
	}
	if f.BusinessKey.Name != "" || f.BusinessKey.Value != "" {
		if s.keyMAC == nil {
			return nil, ErrKeysOff
		}
		if f.BusinessKey.Name == "" || f.BusinessKey.Value == "" {
			return nil, fmt.Errorf("%w: a business key needs a name and a value", ErrBadFilter)
		}
		q = q.Where("id IN (SELECT decision_id FROM sync_decision_keys WHERE hash = ?)",
			s.keyHash(f.BusinessKey.Name, f.BusinessKey.Value))
	}
	if f.EntityMap != "" {
		q = q.Where("entity_map = ?", f.EntityMap)
	}
	if f.Outcome != "" {
		q = q.Where("outcome = ?", string(f.Outcome))
	}
	if f.Reason != "" {
		q = q.Where("reason = ?", string(f.Reason))
	}
	if f.Direction != "" {
		q = q.Where("direction = ?", string(f.Direction))
	}
	if f.MessageID != "" {
		q = q.Where("message_id = ?", f.MessageID)
	}
	if f.Conflicts {
		// toRow writes "[]" for a decision without conflicts.
		q = q.Where("conflicts <> '[]'")
	}
	if !f.From.IsZero() {
		q = q.Where("decided_at >= ?", f.From.UTC())
	}
	if !f.To.IsZero() {
		q = q.Where("decided_at < ?", f.To.UTC())
	}
	return q, nil
}

// maxLinked bounds the linked records a timeline takes in; a record is
// normally linked to one record per map.
const maxLinked = 50

// recordCondition matches f's record on either side of a decision, and
// the records linked to it.
func recordCondition(db *gorm.DB, f Filter) *gorm.DB {
	side := func(col string) *gorm.DB {
		var c *gorm.DB
		if f.RecordPrefix {
			// LOWER on both sides: SQLite's LIKE ignores ASCII case,
			// PostgreSQL's does not.
			c = db.Where("LOWER("+col+"_id) LIKE ? ESCAPE '!'", likePrefix(strings.ToLower(f.Record)))
		} else {
			c = db.Where(col+"_id = ?", f.Record)
		}
		if f.RecordType != "" {
			c = c.Where("LOWER("+col+"_type) = ?", strings.ToLower(f.RecordType))
		}
		return c
	}
	c := db.Where(side("source")).Or(side("target"))
	for _, r := range f.linked {
		c = c.Or("source_type = ? AND source_id = ?", r.Type, r.ID).Or("target_type = ? AND target_id = ?", r.Type, r.ID)
	}
	return c
}

// likePrefix is a LIKE pattern (escape character "!") matching strings
// that start with s.
func likePrefix(s string) string {
	return strings.NewReplacer("!", "!!", "%", "!%", "_", "!_").Replace(s) + "%"
}

// resolve looks up what f.Linked needs: the records on the other side of
// the decisions that name f's record.
func (s *Store) resolve(ctx context.Context, f Filter) (Filter, error) {
	if !f.Linked || f.resolved || f.Record == "" {
		return f, nil
	}
	f.resolved = true
	ids := []string{f.Record}
	for _, v := range []string{strings.ToLower(f.Record), strings.ToUpper(f.Record)} {
		if f.RecordPrefix && !slices.Contains(ids, v) {
			ids = append(ids, v)
		}
	}
	type ref struct{ Type, ID string }
	var refs []ref
	for _, side := range [][2]string{{"source", "target"}, {"target", "source"}} {
		q := s.db.WithContext(ctx).Model(&decisionRow{}).
			Distinct(side[1]+"_type AS type", side[1]+"_id AS id").
			Where(side[0]+"_id IN ?", ids).Where(side[1] + "_id <> ''")
		if f.RecordType != "" {
			q = q.Where("LOWER("+side[0]+"_type) = ?", strings.ToLower(f.RecordType))
		}
		var got []ref
		if err := q.Limit(maxLinked).Scan(&got).Error; err != nil {
			return f, fmt.Errorf("finding the records linked to %s: %w", short(f.Record), err)
		}
		refs = append(refs, got...)
	}
	seen := map[ref]bool{}
	for _, r := range refs {
		if seen[r] || len(f.linked) == maxLinked {
			continue
		}
		seen[r] = true
		f.linked = append(f.linked, Ref{Type: r.Type, ID: r.ID})
	}
	return f, nil
}

// Search lists decisions matching f, newest first, limit per page (1 to
// MaxPageSize; zero means 100), continuing after the cursor after ("" for
// the first page). With f.Record or f.BusinessKey set it is the record's
// timeline.
func (s *Store) Search(ctx context.Context, f Filter, after string, limit int) (Page, error) {
	limit, err := pageLimit(limit)
	if err != nil {
		return Page{}, err
	}
	if f, err = s.resolve(ctx, f); err != nil {
		return Page{}, err
	}
	q, err := s.where(s.db.WithContext(ctx).Model(&decisionRow{}), f)
	if err != nil {
		return Page{}, err
	}
	if after != "" {
		c, err := decodeCursor(after)
		if err != nil {
			return Page{}, err
		}
		q = q.Where("(decided_at, id) < (?, ?)", c.at, c.id)
	}
	var rows []decisionRow
	if err := q.Order("decided_at DESC, id DESC").Limit(limit + 1).Find(&rows).Error; err != nil {
		return Page{}, fmt.Errorf("searching decisions: %w", err)
	}
	var page Page
	if len(rows) > limit {
		rows = rows[:limit]
		last := rows[limit-1]
		page.Next = cursor{at: last.DecidedAt.UTC(), id: last.ID}.encode()
	}
	page.Decisions = make([]Decision, len(rows))
	ids := make([]int64, len(rows))
	for i, r := range rows {
		page.Decisions[i] = r.decision()
		ids[i] = r.ID
	}
	if err := s.attachKeyNames(ctx, page.Decisions, ids); err != nil {
		return Page{}, err
	}
	return page, nil
}

// attachKeyNames fills the business key names (never values) of ds.
func (s *Store) attachKeyNames(ctx context.Context, ds []Decision, ids []int64) error {
	if len(ids) == 0 {
		return nil
	}
	var keys []keyRow
	if err := s.db.WithContext(ctx).Select("decision_id", "name").Where("decision_id IN ?", ids).
		Order("decision_id, name").Find(&keys).Error; err != nil {
		return fmt.Errorf("reading business key names: %w", err)
	}
	byID := map[int64][]BusinessKey{}
	for _, k := range keys {
		byID[k.DecisionID] = append(byID[k.DecisionID], BusinessKey{Name: k.Name})
	}
	for i := range ds {
		ds[i].BusinessKeys = byID[ds[i].ID]
	}
	return nil
}

// Get returns decision id, with its business key names and whether a
// payload capture is stored.
func (s *Store) Get(ctx context.Context, id int64) (Decision, error) {
	var row decisionRow
	err := s.db.WithContext(ctx).Where("id = ?", id).Take(&row).Error
	if errors.Is(err, gorm.ErrRecordNotFound) {
		return Decision{}, fmt.Errorf("reading decision %d: %w", id, ErrNotFound)
	}
	if err != nil {
		return Decision{}, fmt.Errorf("reading decision %d: %w", id, err)
	}
	ds := []Decision{row.decision()}
	if err := s.attachKeyNames(ctx, ds, []int64{id}); err != nil {
		return Decision{}, err
	}
	var n int64
	if err := s.db.WithContext(ctx).Model(&captureRow{}).Where("decision_id = ?", id).Count(&n).Error; err != nil {
		return Decision{}, fmt.Errorf("reading decision %d: %w", id, err)
	}
	ds[0].Captured = n > 0
	return ds[0], nil
}

// Counts are decision totals for a dashboard.
type Counts struct {
	// Total is the number of matching decisions.
	Total int64 `json:"total"`
	// ByOutcome and ByReason count matching decisions per value.
	ByOutcome map[Outcome]int64    `json:"by_outcome"`
	ByReason  map[ReasonCode]int64 `json:"by_reason"`
	// Buckets split the counts over time, oldest first; empty buckets are
	// left out. Present only when a bucket width was asked for.
	Buckets []Bucket `json:"buckets,omitempty"`
}

// Bucket is the counts of one time slice [Start, Start+width).
type Bucket struct {
	Start     time.Time            `json:"start"`
	ByOutcome map[Outcome]int64    `json:"by_outcome"`
	ByReason  map[ReasonCode]int64 `json:"by_reason"`
}

// Counts totals the decisions matching f per outcome and reason and, when
// bucket is at least one second, per time slice of that width (aligned to
// the Unix epoch, in UTC). Bound f by time for large logs.
func (s *Store) Counts(ctx context.Context, f Filter, bucket time.Duration) (Counts, error) {
	if bucket != 0 && bucket < time.Second {
		return Counts{}, fmt.Errorf("%w: bucket %s is shorter than one second", ErrBadFilter, bucket)
	}
	f, err := s.resolve(ctx, f)
	if err != nil {
		return Counts{}, err
	}
	q, err := s.where(s.db.WithContext(ctx).Model(&decisionRow{}), f)
	if err != nil {
		return Counts{}, err
	}
	secs := int64(bucket / time.Second)
	type group struct {
		Slot    int64
		Outcome string
		Reason  string
		N       int64
	}
	var groups []group
	if secs > 0 {
		slot := "CAST(strftime('%s', decided_at) AS INTEGER) / ?"
		if storage.DialectOf(s.db) == storage.Postgres {
			slot = "CAST(floor(extract(epoch FROM decided_at) / ?) AS BIGINT)"
		}
		q = q.Select("("+slot+") AS slot, outcome, reason, COUNT(*) AS n", secs).Group("slot, outcome, reason")
	} else {
		q = q.Select("0 AS slot, outcome, reason, COUNT(*) AS n").Group("outcome, reason")
	}
	if err := q.Scan(&groups).Error; err != nil {
		return Counts{}, fmt.Errorf("counting decisions: %w", err)
	}
	c := Counts{ByOutcome: map[Outcome]int64{}, ByReason: map[ReasonCode]int64{}}
	slots := map[int64]*Bucket{}
	for _, g := range groups {
		c.Total += g.N
		c.ByOutcome[Outcome(g.Outcome)] += g.N
		c.ByReason[ReasonCode(g.Reason)] += g.N
		if secs == 0 {
			continue
		}
		b := slots[g.Slot]
		if b == nil {
			b = &Bucket{Start: time.Unix(g.Slot*secs, 0).UTC(), ByOutcome: map[Outcome]int64{}, ByReason: map[ReasonCode]int64{}}
			slots[g.Slot] = b
		}
		b.ByOutcome[Outcome(g.Outcome)] += g.N
		b.ByReason[ReasonCode(g.Reason)] += g.N
	}
	for _, b := range slots {
		c.Buckets = append(c.Buckets, *b)
	}
	sort.Slice(c.Buckets, func(i, j int) bool { return c.Buckets[i].Start.Before(c.Buckets[j].Start) })
	return c, nil
}

// forEach pages through every decision matching f, newest first.
func (s *Store) forEach(ctx context.Context, f Filter, fn func(Decision) error) error {
	f, err := s.resolve(ctx, f)
	if err != nil {
		return err
	}
	after := ""
	for {
		p, err := s.Search(ctx, f, after, MaxPageSize)
		if err != nil {
			return err
		}
		for _, d := range p.Decisions {
			if err := fn(d); err != nil {
				return err
			}
		}
		if p.Next == "" {
			return nil
		}
		after = p.Next
	}
}
