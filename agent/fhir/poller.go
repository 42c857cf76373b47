package fhir

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"strings"
	"sync"
	"time"

	"github.com/robfig/cron/v3"
	"gorm.io/gorm"
	"gorm.io/gorm/clause"

	"github.com/fhirsync/fhirsync/queues"
	"github.com/fhirsync/fhirsync/storage"
)

// sender puts change notices on a queue.
type sender interface {
	Send(ctx context.Context, msgs ...queues.Message) error
}

// PollerConfig configures the _history poller.
type PollerConfig struct {
	// Client reads the FHIR server. Required.
	Client *Client
	// DB holds checkpoints (feed_checkpoints) and leases. Required.
	DB *gorm.DB
	// Queue receives the notices. Required.
	Queue sender
	// Types are the resource types to poll, one feed each. Required.
	Types []string
	// Schedule is a cron spec (five fields or a descriptor such as
	// "@every 30s"); default "@every 30s".
	Schedule string
	// Overlap is how far before the checkpoint each poll starts reading
	// again, to catch changes that became visible late (clock skew between
	// server nodes, long transactions). Default 2 minutes.
	Overlap time.Duration
	// PageSize is _count for history requests; default 100.
	PageSize int
	// Holder identifies this process in leases; default host-pid-random.
	Holder string
	// LeaseTTL is how long a lease lasts without renewal; it is renewed on
	// every page and every poll. Default 2 minutes.
	LeaseTTL time.Duration
	// Start is where a feed without a checkpoint begins; zero reads the
	// whole history.
	Start time.Time
	// Logger receives poll summaries (counts and references, no resource
	// content); default discards.
	Logger *slog.Logger
}

// Poller turns `_history?_since=` into change notices: per resource type,
// on a cron schedule, with an overlap window that is re-read and
// de-duplicated by (type, id, versionId), a checkpoint in the database and a
// database lease so that among processes sharing the database only one
// polls a feed at a time.
type Poller struct {
	cfg PollerConfig
	log *slog.Logger

	mu       sync.Mutex
	running  map[string]bool
	runCtx   context.Context
	triggers sync.WaitGroup // triggered polls, waited for by Run
}

// NewPoller validates cfg and returns a poller.
func NewPoller(cfg PollerConfig) (*Poller, error) {
	var probs []string
	if cfg.Client == nil {
		probs = append(probs, "a FHIR client is required")
	}
	if cfg.DB == nil {
		probs = append(probs, "a database is required")
	}
	if cfg.Queue == nil {
		probs = append(probs, "a queue is required")
	}
	if len(cfg.Types) == 0 {
		probs = append(probs, "at least one resource type is required")
	}
	for _, t := range cfg.Types {
		if !isTypeName(t) {
			probs = append(probs, fmt.Sprintf("%q is not a resource type", t))
		}
	}
	if cfg.Schedule == "" {
		cfg.Schedule = "@every 30s"
	}
	if _, err := cron.ParseStandard(cfg.Schedule); err != nil {
		probs = append(probs, fmt.Sprintf("schedule %q: %v", cfg.Schedule, err))
	}
	if cfg.Overlap < 0 || cfg.LeaseTTL < 0 || cfg.PageSize < 0 {
		probs = append(probs, "overlap, lease TTL and page size must not be negative")
	}
	if len(probs) > 0 {
		return nil, fmt.Errorf("fhir history poller config: %s", strings.Join(probs, "; "))
	}
	if cfg.Overlap == 0 {
		cfg.Overlap = 2 * time.Minute
	}
	if cfg.PageSize == 0 {
		cfg.PageSize = 100
	}
	if cfg.LeaseTTL == 0 {
		cfg.LeaseTTL = 2 * time.Minute
	}
	if cfg.Holder == "" {
		host, _ := os.Hostname()
		var b [4]byte
		_, _ = rand.Read(b[:])
		cfg.Holder = fmt.Sprintf("%s-%d-%s", host, os.Getpid(), hex.EncodeToString(b[:]))
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	return &Poller{cfg: cfg, log: cfg.Logger, running: map[string]bool{}}, nil
}

// FeedName is the checkpoint and lease name of a type's history feed.
func FeedName(typ string) string { return "fhir-history:" + typ }

func leaseFor(p *Poller, typ string) *storage.Lease {
	return storage.NewLease(p.cfg.DB, FeedName(typ), p.cfg.Holder, p.cfg.LeaseTTL)
}

// ErrLeaseLost means another process took the feed's lease during a poll;
// the poll stopped without moving the checkpoint.
var ErrLeaseLost = errors.New("fhir history poller: lease lost during the poll")

// PollResult summarises one poll.
type PollResult struct {
	// Polled is false when another holder has the feed's lease.
	Polled bool
	// Entries is how many history entries were read; Sent how many
	// notices were sent; Duplicates how many entries had been sent before
	// (the overlap window, or a page read twice).
	Entries, Sent, Duplicates int
	// Position is the checkpoint after the poll.
	Position time.Time
}

// checkpoint is the stored position of a feed: the newest change time seen
// and the changes at or after Position-Overlap that were already sent.
type checkpoint struct {
	Position time.Time            `json:"position"`
	Seen     map[string]time.Time `json:"seen,omitempty"`
}

type checkpointRow struct {
	Feed      string `gorm:"primaryKey"`
	Position  string
	UpdatedAt time.Time
}

func (checkpointRow) TableName() string { return "feed_checkpoints" }

func (p *Poller) loadCheckpoint(ctx context.Context, feed string) (checkpoint, error) {
	var row checkpointRow
	err := p.cfg.DB.WithContext(ctx).Where("feed = ?", feed).Take(&row).Error
	if errors.Is(err, gorm.ErrRecordNotFound) {
		return checkpoint{Position: p.cfg.Start}, nil
	}
	if err != nil {
		return checkpoint{}, fmt.Errorf("loading checkpoint %s: %w", feed, err)
	}
	var cp checkpoint
	if err := json.Unmarshal([]byte(row.Position), &cp); err != nil {
		return checkpoint{}, fmt.Errorf("checkpoint %s is corrupt: %w", feed, err)
	}
	return cp, nil
}

func (p *Poller) saveCheckpoint(ctx context.Context, feed string, cp checkpoint) error {
	b, err := json.Marshal(cp)
	if err != nil {
		return err
	}
	row := checkpointRow{Feed: feed, Position: string(b), UpdatedAt: time.Now().UTC()}
	err = p.cfg.DB.WithContext(ctx).Clauses(clause.OnConflict{
		Columns:   []clause.Column{{Name: "feed"}},
		DoUpdates: clause.AssignmentColumns([]string{"position", "updated_at"}),
	}).Create(&row).Error
	if err != nil {
		return fmt.Errorf("saving checkpoint %s: %w", feed, err)
	}
	return nil
}

// Poll reads one type's history since its checkpoint and sends a notice for
// every change not sent before. Without the lease it does nothing and
// reports Polled false.
func (p *Poller) Poll(ctx context.Context, typ string) (PollResult, error) {
	feed := FeedName(typ)
	lease := leaseFor(p, typ)
	ok, err := lease.Acquire(ctx)
	if err != nil || !ok {
		return PollResult{}, err
	}
	res := PollResult{Polled: true}
	cp, err := p.loadCheckpoint(ctx, feed)
	if err != nil {
		return res, err
	}
	from := cp.Position
	if !from.IsZero() {
		from = from.Add(-p.cfg.Overlap)
	}
	seen := cp.Seen
	if seen == nil {
		seen = map[string]time.Time{}
	}
	high := cp.Position
	page, err := p.cfg.Client.History(ctx, typ, from, p.cfg.PageSize)
	for err == nil {
		var msgs []queues.Message
		for _, e := range page.Entries {
			res.Entries++
			n, at, ok := historyNotice(e)
			if !ok || n.Type != typ {
				p.log.Warn("fhir history entry without a usable reference", "feed", feed)
				continue
			}
			if at.IsZero() {
				at = high
			}
			key := n.Type + "/" + n.ID + "/" + n.Version
			if _, dup := seen[key]; dup {
				res.Duplicates++
				continue
			}
			seen[key] = at
			if at.After(high) {
				high = at
			}
			m, err := n.Message()
			if err != nil {
				p.log.Warn("fhir history entry makes no valid notice", "feed", feed, "record_ref", n.Ref(), "err", err)
				continue
			}
			msgs = append(msgs, m)
		}
		if len(msgs) > 0 {
			if err := p.cfg.Queue.Send(ctx, msgs...); err != nil {
				return res, fmt.Errorf("sending %d notices from %s: %w", len(msgs), feed, err)
			}
			res.Sent += len(msgs)
		}
		if page.Next == "" {
			break
		}
		if ok, err := lease.Acquire(ctx); err != nil || !ok {
			if err == nil {
				err = ErrLeaseLost
			}
			return res, err
		}
		page, err = p.cfg.Client.NextPage(ctx, page)
	}
	if err != nil {
		return res, fmt.Errorf("polling %s: %w", feed, err)
	}
	// Keep only what the next poll's overlap window can return again.
	floor := high.Add(-p.cfg.Overlap)
	for k, at := range seen {
		if at.Before(floor) {
			delete(seen, k)
		}
	}
	cp = checkpoint{Position: high, Seen: seen}
	if ok, err := lease.Acquire(ctx); err != nil || !ok {
		if err == nil {
			err = ErrLeaseLost
		}
		return res, err
	}
	if err := p.saveCheckpoint(ctx, feed, cp); err != nil {
		return res, err
	}
	res.Position = high
	return res, nil
}

// historyNotice builds the notice for a history entry and the time of the
// change.
func historyNotice(e Entry) (queues.Notice, time.Time, bool) {
	typ, id, version := e.Ref()
	if typ == "" || id == "" {
		return queues.Notice{}, time.Time{}, false
	}
	n := queues.Notice{V: queues.NoticeVersion, Side: queues.SideFHIR, Type: typ, ID: id, Version: version, Origin: "history-poll"}
	switch {
	case e.Deleted():
		n.Event = queues.EventDeleted
	case strings.EqualFold(e.Method, "POST"):
		n.Event = queues.EventCreated
	case strings.EqualFold(e.Method, "PUT"), strings.EqualFold(e.Method, "PATCH"):
		n.Event = queues.EventUpdated
	default:
		n.Event = queues.EventChanged
	}
	at := e.LastModified
	if e.Resource != nil {
		if lu := e.Resource.LastUpdated(); !lu.IsZero() {
			at = lu
		}
		if m, ok := e.Resource["meta"].(map[string]any); ok {
			n.Initiator, _ = m["source"].(string)
		}
	}
	n.ChangedAt = at.UTC()
	if n.Version == "" {
		// Without a version the change time tells changes apart.
		n.Version = "t" + at.UTC().Format("20060102T150405.000000000")
	}
	return n, at, true
}

// Run polls every type on the schedule until ctx ends. A poll still
// running when its next turn comes is not started twice.
func (p *Poller) Run(ctx context.Context) error {
	p.mu.Lock()
	p.runCtx = ctx
	p.mu.Unlock()
	c := cron.New()
	for _, typ := range p.cfg.Types {
		if _, err := c.AddFunc(p.cfg.Schedule, func() { p.pollOnce(ctx, typ) }); err != nil {
			return fmt.Errorf("scheduling %s: %w", FeedName(typ), err)
		}
	}
	c.Start()
	<-ctx.Done()
	<-c.Stop().Done()
	p.mu.Lock()
	p.runCtx = nil // no new triggered polls from here on
	p.mu.Unlock()
	p.triggers.Wait()
	rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
	defer cancel()
	for _, typ := range p.cfg.Types {
		_ = leaseFor(p, typ).Release(rctx)
	}
	return nil
}

// Trigger polls every type now (in the background) when Run is active,
// e.g. on a rest-hook ping. Polls already running are not doubled.
func (p *Poller) Trigger() {
	p.mu.Lock()
	defer p.mu.Unlock()
	ctx := p.runCtx
	if ctx == nil || ctx.Err() != nil {
		return
	}
	for _, typ := range p.cfg.Types {
		p.triggers.Add(1)
		go func() {
			defer p.triggers.Done()
			p.pollOnce(ctx, typ)
		}()
	}
}

// pollOnce runs Poll unless one is already running for typ, and logs the
// outcome.
func (p *Poller) pollOnce(ctx context.Context, typ string) {
	p.mu.Lock()
	if p.running[typ] {
		p.mu.Unlock()
		return
	}
	p.running[typ] = true
	p.mu.Unlock()
	defer func() {
		p.mu.Lock()
		delete(p.running, typ)
		p.mu.Unlock()
	}()
	start := time.Now()
	res, err := p.Poll(ctx, typ)
	switch {
	case err != nil && ctx.Err() == nil:
		attrs := []any{"feed", FeedName(typ), "err", err}
		var fe *Error
		if errors.As(err, &fe) {
			attrs = append(attrs, "class", string(fe.Class), "status", fe.Status)
		}
		p.log.Warn("fhir history poll failed", attrs...)
	case err == nil && res.Polled:
		p.log.Debug("fhir history poll", "feed", FeedName(typ), "entries", res.Entries, "sent", res.Sent,
			"duplicates", res.Duplicates, "duration_ms", time.Since(start).Milliseconds())
	}
}
