package maps

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"gorm.io/gorm"
)

// Options configures a Store.
type Options struct {
	// CRM, when set, validates CRM entities and attributes at save.
	CRM *CRMMetadata
	// PollInterval is how often Watch looks for a new publication
	// (default 5 s).
	PollInterval time.Duration
	// Logger receives operational messages (default slog.Default()).
	Logger *slog.Logger
	// Now is the clock (default time.Now).
	Now func() time.Time
}

// Store keeps map set versions in the database: drafts that can be edited,
// published versions that cannot, and the history of publications. Several
// processes may share one database; each sees a new publication through
// Current and Watch without a restart.
type Store struct {
	db   *gorm.DB
	opts Options

	mu      sync.Mutex
	seq     int64 // publication the cached set belongs to
	current *Set
}

// New returns a Store on db, which must be migrated.
func New(db *gorm.DB, opts Options) (*Store, error) {
	if db == nil {
		return nil, errors.New("maps: nil database")
	}
	if opts.PollInterval <= 0 {
		opts.PollInterval = 5 * time.Second
	}
	if opts.Logger == nil {
		opts.Logger = slog.Default()
	}
	if opts.Now == nil {
		opts.Now = time.Now
	}
	return &Store{db: db, opts: opts}, nil
}

// Status is the state of a stored version.
type Status string

// Version states.
const (
	StatusDraft     Status = "draft"     // editable, not used by the agent
	StatusPublished Status = "published" // immutable; may be (or have been) current
)

// VersionInfo describes a stored version without its content.
type VersionInfo struct {
	Number      int        `json:"number"`
	Status      Status     `json:"status"`
	Note        string     `json:"note,omitempty"`
	Checksum    string     `json:"checksum"`
	CreatedBy   string     `json:"createdBy,omitempty"`
	CreatedAt   time.Time  `json:"createdAt"`
	UpdatedAt   time.Time  `json:"updatedAt"`
	PublishedAt *time.Time `json:"publishedAt,omitempty"`
	PublishedBy string     `json:"publishedBy,omitempty"`
	// Current says this is the version of the newest publication.
	Current bool `json:"current"`
}

// Publication is one entry of the publication history.
type Publication struct {
	Seq         int64     `json:"seq"`
	Version     int       `json:"version"`
	PublishedAt time.Time `json:"publishedAt"`
	PublishedBy string    `json:"publishedBy,omitempty"`
	Note        string    `json:"note,omitempty"`
	// Rollback says an earlier version was published again.
	Rollback bool `json:"rollback"`
}

// CreateDraft validates doc and stores it as a new draft version with the
// next number.
func (s *Store) CreateDraft(ctx context.Context, doc *Document, by, note string) (VersionInfo, error) {
	if _, err := Compile(doc, CompileOptions{CRM: s.opts.CRM}); err != nil {
		return VersionInfo{}, err
	}
	sum, err := checksum(doc)
	if err != nil {
		return VersionInfo{}, err
	}
	var row versionRow
	create := func(tx *gorm.DB) error {
		var maxNum *int
		if err := tx.Model(&versionRow{}).Select("MAX(number)").Scan(&maxNum).Error; err != nil {
			return err
		}
		n := 1
		if maxNum != nil {
			n = *maxNum + 1
		}
		now := s.opts.Now().UTC()
		row = versionRow{Number: n, Status: StatusDraft, Format: doc.Format, Note: note, Checksum: sum, CreatedBy: by, CreatedAt: now, UpdatedAt: now}
		if err := tx.Create(&row).Error; err != nil {
			return err
		}
		return insertContent(tx, row.ID, doc)
	}
	// Two editors saving at once may pick the same number; the unique
	// constraint refuses the second, which then takes the next one.
	for attempt := 0; ; attempt++ {
		err = s.db.WithContext(ctx).Transaction(create)
		if err == nil || attempt == 4 || ctx.Err() != nil {
			break
		}
		var n int64
		if s.db.WithContext(ctx).Model(&versionRow{}).Where("number = ?", row.Number).Count(&n).Error != nil || n == 0 {
			break // not a number clash
		}
	}
	if err != nil {
		return VersionInfo{}, fmt.Errorf("saving map set draft: %w", err)
	}
	return row.info(false), nil
}

// UpdateDraft replaces the content of draft version number.
func (s *Store) UpdateDraft(ctx context.Context, number int, doc *Document, by, note string) (VersionInfo, error) {
	if _, err := Compile(doc, CompileOptions{CRM: s.opts.CRM}); err != nil {
		return VersionInfo{}, err
	}
	sum, err := checksum(doc)
	if err != nil {
		return VersionInfo{}, err
	}
	var row versionRow
	err = s.db.WithContext(ctx).Transaction(func(tx *gorm.DB) error {
		if err := tx.Where("number = ?", number).Take(&row).Error; err != nil {
			return notFound(err, number)
		}
		if row.Status != StatusDraft {
			return fmt.Errorf("version %d: %w", number, ErrImmutable)
		}
		for _, t := range []any{&attributeRow{}, &expansionRow{}, &entityRow{}, &valueMapRow{}} {
			if err := tx.Where("version_id = ?", row.ID).Delete(t).Error; err != nil {
				return err
			}
		}
		row.UpdatedAt = s.opts.Now().UTC()
		row.Checksum, row.Format = sum, doc.Format
		if note != "" {
			row.Note = note
		}
		if by != "" {
			row.CreatedBy = by
		}
		if err := tx.Model(&versionRow{}).Where("id = ? AND status = ?", row.ID, StatusDraft).
			Updates(map[string]any{"updated_at": row.UpdatedAt, "checksum": sum, "format": doc.Format, "note": row.Note, "created_by": row.CreatedBy}).Error; err != nil {
			return err
		}
		return insertContent(tx, row.ID, doc)
	})
	if err != nil {
		return VersionInfo{}, fmt.Errorf("updating map set draft %d: %w", number, err)
	}
	return row.info(false), nil
}

// DeleteDraft removes draft version number; published versions stay.
func (s *Store) DeleteDraft(ctx context.Context, number int) error {
	return s.db.WithContext(ctx).Transaction(func(tx *gorm.DB) error {
		var row versionRow
		if err := tx.Where("number = ?", number).Take(&row).Error; err != nil {
			return notFound(err, number)
		}
		if row.Status != StatusDraft {
			return fmt.Errorf("version %d: %w", number, ErrImmutable)
		}
		for _, t := range []any{&attributeRow{}, &expansionRow{}, &entityRow{}, &valueMapRow{}} {
			if err := tx.Where("version_id = ?", row.ID).Delete(t).Error; err != nil {
				return err
			}
		}
		return tx.Delete(&versionRow{}, row.ID).Error
	})
}

// Publish makes version number current. A draft becomes published (and
// immutable); an already published version is published again, which is
// how a rollback works. Every process sees the change through Current and
// Watch.
func (s *Store) Publish(ctx context.Context, number int, by, note string) (VersionInfo, error) {
	var (
		row      versionRow
		rollback bool
	)
	err := s.db.WithContext(ctx).Transaction(func(tx *gorm.DB) error {
		if err := tx.Where("number = ?", number).Take(&row).Error; err != nil {
			return notFound(err, number)
		}
		doc, err := loadContent(tx, &row)
		if err != nil {
			return err
		}
		if _, err := Compile(doc, CompileOptions{CRM: s.opts.CRM}); err != nil {
			return err
		}
		now := s.opts.Now().UTC()
		rollback = row.Status == StatusPublished
		if !rollback {
			res := tx.Model(&versionRow{}).Where("id = ? AND status = ?", row.ID, StatusDraft).
				Updates(map[string]any{"status": StatusPublished, "published_at": now, "published_by": by, "updated_at": now})
			if res.Error != nil {
				return res.Error
			}
			row.Status, row.PublishedAt, row.PublishedBy = StatusPublished, &now, by
		}
		return tx.Create(&publicationRow{VersionID: row.ID, PublishedAt: now, PublishedBy: by, Note: note, Rollback: rollback}).Error
	})
	if err != nil {
		return VersionInfo{}, fmt.Errorf("publishing map set version %d: %w", number, err)
	}
	s.opts.Logger.InfoContext(ctx, "map set published", "map_version", number, "rollback", rollback)
	return row.info(true), nil
}

// Rollback publishes an earlier published version again.
func (s *Store) Rollback(ctx context.Context, number int, by, note string) (VersionInfo, error) {
	var row versionRow
	if err := s.db.WithContext(ctx).Where("number = ?", number).Take(&row).Error; err != nil {
		return VersionInfo{}, notFound(err, number)
	}
	if row.Status != StatusPublished {
		return VersionInfo{}, fmt.Errorf("rolling back to version %d: only published versions can be rolled back to", number)
	}
	return s.Publish(ctx, number, by, note)
}

// Versions lists every stored version, newest first.
func (s *Store) Versions(ctx context.Context) ([]VersionInfo, error) {
	var rows []versionRow
	if err := s.db.WithContext(ctx).Order("number DESC").Find(&rows).Error; err != nil {
		return nil, fmt.Errorf("listing map versions: %w", err)
	}
	cur, _, err := s.latestPublication(ctx)
	if err != nil {
		return nil, err
	}
	out := make([]VersionInfo, len(rows))
	for i, r := range rows {
		out[i] = r.info(r.ID == cur)
	}
	return out, nil
}

// Version returns the content and description of version number.
func (s *Store) Version(ctx context.Context, number int) (*Document, VersionInfo, error) {
	var row versionRow
	if err := s.db.WithContext(ctx).Where("number = ?", number).Take(&row).Error; err != nil {
		return nil, VersionInfo{}, notFound(err, number)
	}
	doc, err := loadContent(s.db.WithContext(ctx), &row)
	if err != nil {
		return nil, VersionInfo{}, fmt.Errorf("loading map version %d: %w", number, err)
	}
	cur, _, err := s.latestPublication(ctx)
	if err != nil {
		return nil, VersionInfo{}, err
	}
	return doc, row.info(row.ID == cur), nil
}

// Publications lists the publication history, newest first.
func (s *Store) Publications(ctx context.Context) ([]Publication, error) {
	var rows []struct {
		Seq         int64
		Number      int
		PublishedAt time.Time
		PublishedBy string
		Note        string
		Rollback    bool
	}
	err := s.db.WithContext(ctx).Table("map_publications").
		Select("map_publications.seq, map_publications.published_at, map_publications.published_by, map_publications.note, map_publications.rollback, map_versions.number AS number").
		Joins("JOIN map_versions ON map_versions.id = map_publications.version_id").
		Order("map_publications.seq DESC").Scan(&rows).Error
	if err != nil {
		return nil, fmt.Errorf("listing map publications: %w", err)
	}
	out := make([]Publication, len(rows))
	for i, r := range rows {
		out[i] = Publication{Seq: r.Seq, Version: r.Number, PublishedAt: r.PublishedAt.UTC(), PublishedBy: r.PublishedBy, Note: r.Note, Rollback: r.Rollback}
	}
	return out, nil
}

// latestPublication returns the version id and sequence of the newest
// publication (0, 0 when nothing was published).
func (s *Store) latestPublication(ctx context.Context) (versionID, seq int64, err error) {
	var rows []publicationRow
	if err := s.db.WithContext(ctx).Order("seq DESC").Limit(1).Find(&rows).Error; err != nil {
		return 0, 0, fmt.Errorf("reading the current map publication: %w", err)
	}
	if len(rows) == 0 {
		return 0, 0, nil
	}
	return rows[0].VersionID, rows[0].Seq, nil
}

// Current returns the compiled map set of the newest publication, with its
// version number; ErrNotFound when nothing was published yet. It costs one
// small query while the publication is unchanged.
func (s *Store) Current(ctx context.Context) (*Set, error) {
	vid, seq, err := s.latestPublication(ctx)
	if err != nil {
		return nil, err
	}
	if seq == 0 {
		return nil, fmt.Errorf("current map set: nothing published yet: %w", ErrNotFound)
	}
	s.mu.Lock()
	if s.current != nil && s.seq == seq {
		set := s.current
		s.mu.Unlock()
		return set, nil
	}
	s.mu.Unlock()
	var row versionRow
	if err := s.db.WithContext(ctx).Take(&row, vid).Error; err != nil {
		return nil, fmt.Errorf("loading the current map version: %w", err)
	}
	doc, err := loadContent(s.db.WithContext(ctx), &row)
	if err != nil {
		return nil, fmt.Errorf("loading map version %d: %w", row.Number, err)
	}
	// Published content was validated at publication; metadata may have
	// changed since, so only the map set's own rules apply here.
	set, err := compile(doc, row.Number, CompileOptions{})
	if err != nil {
		return nil, fmt.Errorf("compiling map version %d: %w", row.Number, err)
	}
	s.mu.Lock()
	if seq >= s.seq {
		s.seq, s.current = seq, set
	}
	s.mu.Unlock()
	return set, nil
}

// Watch sends the current map set at once (when one is published) and
// again after every new publication — by any process sharing the database —
// until ctx ends, when the channel is closed. A slow receiver only ever
// gets the newest set. Errors while polling are logged and retried.
func (s *Store) Watch(ctx context.Context) <-chan *Set {
	ch := make(chan *Set, 1)
	go func() {
		defer close(ch)
		t := time.NewTicker(s.opts.PollInterval)
		defer t.Stop()
		var sent int64 = -1
		for {
			_, seq, err := s.latestPublication(ctx)
			if err == nil && seq != sent && seq != 0 {
				set, cerr := s.Current(ctx)
				switch {
				case cerr != nil:
					err = cerr
				default:
					select {
					case <-ch: // drop a set nobody took yet
					default:
					}
					ch <- set
					sent = seq
				}
			}
			if err != nil && ctx.Err() == nil {
				s.opts.Logger.WarnContext(ctx, "watching map publications", "error", err)
			}
			select {
			case <-ctx.Done():
				return
			case <-t.C:
			}
		}
	}()
	return ch
}

func notFound(err error, number int) error {
	if errors.Is(err, gorm.ErrRecordNotFound) {
		return fmt.Errorf("map version %d: %w", number, ErrNotFound)
	}
	return err
}

func checksum(doc *Document) (string, error) {
	raw, err := Export(doc)
	if err != nil {
		return "", err
	}
	sum := sha256.Sum256(raw)
	return hex.EncodeToString(sum[:]), nil
}

func toJSON(v any) string {
	raw, err := json.Marshal(v)
	if err != nil {
		panic(err) // only plain data structures are encoded here
	}
	return string(raw)
}

func fromJSON(s *string, v any) error {
	if s == nil || *s == "" {
		return nil
	}
	return json.Unmarshal([]byte(*s), v)
}
