package crm

import (
	"context"
	"errors"
	"fmt"
	"time"

	"gorm.io/gorm"
	"gorm.io/gorm/clause"

	"github.com/fhirsync/fhirsync/queues"
	"github.com/fhirsync/fhirsync/storage"
)

// sender puts change notices on a queue. Send enqueues all msgs or returns
// an error; a message sent twice with the same ID may be dropped as a
// duplicate (queues.Queue guarantees this).
type sender interface {
	Send(ctx context.Context, msgs ...queues.Message) error
}

// Feed origins written on notices.
const (
	OriginTracking  = "crm-tracking"
	OriginReconcile = "reconcile"
	OriginEndpoint  = "crm-endpoint"
)

// FeedConfig configures the change-tracking feed of one entity.
type FeedConfig struct {
	// Entity is the logical name (notice Type), e.g. "contact".
	Entity string
	// Set is the entity set name, e.g. "contacts".
	Set string
	// PrimaryID is the primary key attribute; empty means Entity + "id".
	PrimaryID string
	// Holder identifies this process for the lease.
	Holder string
	// LeaseTTL is how long the lease lasts without renewal; zero means
	// 2 minutes. Poll more often than this.
	LeaseTTL time.Duration
	// EmitInitial sends a notice for every existing row when the feed
	// starts without a checkpoint; otherwise the first poll only takes
	// the baseline (backfill is a separate job).
	EmitInitial bool
	// SendBatch is how many notices go to the queue per Send; zero means 100.
	SendBatch int
}

// Feed turns Dataverse change tracking into change notices. One process
// at a time polls a feed (database lease); the delta link is stored in
// feed_checkpoints only after its notices were sent, so a crash re-sends
// rather than loses.
type Feed struct {
	c     *Client
	db    *gorm.DB
	q     sender
	cfg   FeedConfig
	lease *storage.Lease
	now   func() time.Time
}

// PollResult says what one poll did.
type PollResult struct {
	// Leased is false when another process holds the feed.
	Leased bool
	// Notices counts notices sent (Deleted of them for deletions).
	Notices int
	Deleted int
	// Reconciled is set when the stored token had expired (or pointed at
	// another service) and every row was re-announced.
	Reconciled bool
	// Baseline is set when the poll only established the starting point.
	Baseline bool
}

// NewFeed builds the feed of one entity.
func NewFeed(c *Client, db *gorm.DB, q sender, cfg FeedConfig) (*Feed, error) {
	if c == nil || db == nil || q == nil {
		return nil, errors.New("crm feed: client, database and queue are required")
	}
	if cfg.Entity == "" || cfg.Set == "" || cfg.Holder == "" {
		return nil, errors.New("crm feed: Entity, Set and Holder are required")
	}
	if cfg.PrimaryID == "" {
		cfg.PrimaryID = cfg.Entity + "id"
	}
	if cfg.LeaseTTL == 0 {
		cfg.LeaseTTL = 2 * time.Minute
	}
	if cfg.SendBatch == 0 {
		cfg.SendBatch = 100
	}
	f := &Feed{c: c, db: db, q: q, cfg: cfg, now: time.Now}
	f.lease = storage.NewLease(db, "feed:"+f.Name(), cfg.Holder, cfg.LeaseTTL)
	return f, nil
}

// Name is the feed's checkpoint and lease name.
func (f *Feed) Name() string { return OriginTracking + ":" + f.cfg.Entity }

type checkpointRow struct {
	Feed      string `gorm:"column:feed;primaryKey"`
	Position  string `gorm:"column:position"`
	UpdatedAt time.Time
}

func (checkpointRow) TableName() string { return "feed_checkpoints" }

func (f *Feed) loadCheckpoint(ctx context.Context) (string, error) {
	var rows []checkpointRow
	if err := f.db.WithContext(ctx).Where("feed = ?", f.Name()).Limit(1).Find(&rows).Error; err != nil {
		return "", fmt.Errorf("loading checkpoint of %s: %w", f.Name(), err)
	}
	if len(rows) == 0 {
		return "", nil
	}
	return rows[0].Position, nil
}

func (f *Feed) saveCheckpoint(ctx context.Context, link string) error {
	row := checkpointRow{Feed: f.Name(), Position: link, UpdatedAt: f.now().UTC()}
	err := f.db.WithContext(ctx).Clauses(clause.OnConflict{
		Columns:   []clause.Column{{Name: "feed"}},
		DoUpdates: clause.AssignmentColumns([]string{"position", "updated_at"}),
	}).Create(&row).Error
	if err != nil {
		return fmt.Errorf("saving checkpoint of %s: %w", f.Name(), err)
	}
	return nil
}

// Poll takes the lease, reads the changes since the stored delta link,
// sends one notice per change and stores the new delta link.
func (f *Feed) Poll(ctx context.Context) (PollResult, error) {
	var res PollResult
	ok, err := f.lease.Acquire(ctx)
	if err != nil {
		return res, err
	}
	if !ok {
		return res, nil
	}
	res.Leased = true
	link, err := f.loadCheckpoint(ctx)
	if err != nil {
		return res, err
	}
	origin, emit := OriginTracking, true
	switch {
	case link == "":
		res.Baseline = !f.cfg.EmitInitial
		emit = f.cfg.EmitInitial
		origin = OriginReconcile
	case !f.c.sameService(link):
		link, origin, res.Reconciled = "", OriginReconcile, true
	}
	next, err := f.walk(ctx, link, origin, emit, &res)
	if errors.Is(err, ErrDeltaExpired) {
		res.Reconciled, res.Notices, res.Deleted = true, 0, 0
		next, err = f.walk(ctx, "", OriginReconcile, true, &res)
	}
	if err != nil {
		return res, err
	}
	return res, f.saveCheckpoint(ctx, next)
}

func (f *Feed) walk(ctx context.Context, link, origin string, emit bool, res *PollResult) (string, error) {
	started := f.now().UTC()
	var pending []queues.Message
	flush := func() error {
		if len(pending) == 0 {
			return nil
		}
		if err := f.q.Send(ctx, pending...); err != nil {
			return fmt.Errorf("sending %d notices of %s: %w", len(pending), f.Name(), err)
		}
		pending = pending[:0]
		return nil
	}
	q := ChangeQuery{Set: f.cfg.Set, PrimaryID: f.cfg.PrimaryID, DeltaLink: link,
		Select: []string{"createdon", "modifiedon", "versionnumber", "_modifiedby_value"}}
	next, err := f.c.Changes(ctx, q, func(ch Change) error {
		if !emit {
			return nil
		}
		n := f.notice(ch, origin, started)
		m, err := n.Message()
		if err != nil {
			return fmt.Errorf("building notice for %s/%s: %w", f.cfg.Entity, ch.ID, err)
		}
		pending = append(pending, m)
		res.Notices++
		if ch.Deleted {
			res.Deleted++
		}
		if len(pending) >= f.cfg.SendBatch {
			return flush()
		}
		return nil
	})
	if err != nil {
		return "", err
	}
	if err := flush(); err != nil {
		return "", err
	}
	return next, nil
}

func (f *Feed) notice(ch Change, origin string, polled time.Time) queues.Notice {
	n := queues.Notice{V: queues.NoticeVersion, Side: queues.SideCRM, Type: f.cfg.Entity, ID: ch.ID, Origin: origin}
	if ch.Deleted {
		n.Event, n.ChangedAt = queues.EventDeleted, polled
		return n
	}
	// Change tracking does not say whether a row is new. modifiedon after
	// createdon proves an update; equal stamps (second precision) may be a
	// create or a quick update, so the notice says only "changed".
	n.Event = queues.EventChanged
	created, modified := ch.Record.String("createdon"), ch.Record.String("modifiedon")
	if origin == OriginTracking && created != "" && modified != "" && created != modified {
		n.Event = queues.EventUpdated
	}
	if t, err := time.Parse(time.RFC3339Nano, modified); err == nil {
		n.ChangedAt = t
	}
	if v, ok := ch.Record["versionnumber"]; ok && v != nil {
		n.Version = fmt.Sprint(v)
	} else {
		n.Version = ch.Record.ETag()
	}
	n.Initiator = ch.Record.String("_modifiedby_value")
	return n
}
