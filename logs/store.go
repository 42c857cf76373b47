package logs

import (
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/robfig/cron/v3"
	"gorm.io/gorm"

	"github.com/fhirsync/fhirsync/storage"
)

// Config is the sync log's part of the fhirsync configuration.
type Config struct {
	// KeySecret is the base64 secret (at least 16 bytes) under which
	// business key values are hashed. Empty means business keys are not
	// recorded and searching by them reports ErrKeysOff. Changing it makes
	// earlier decisions unfindable by business key.
	KeySecret string `yaml:"key_secret" secret:"true"`
	// Retention is how long decisions are kept.
	Retention RetentionConfig `yaml:"retention"`
	// AuditRetention is how long audit trail entries are kept; zero means
	// two years. The retention job (Retention.Schedule) deletes older
	// ones. There is no "keep forever": a trail that grows without bound
	// is a trail nobody decided to keep.
	AuditRetention time.Duration `yaml:"audit_retention"`
	// Capture configures opt-in encrypted payload capture.
	Capture CaptureConfig `yaml:"capture"`
	// Holder identifies this process for the retention lease; empty means
	// host name and process id.
	Holder string `yaml:"-"`
	// Logger receives operator messages; nil means slog.Default().
	Logger *slog.Logger `yaml:"-"`
}

// RetentionConfig is the decision retention policy.
type RetentionConfig struct {
	// MaxAge is how long a decision is kept; zero means 90 days.
	MaxAge time.Duration `yaml:"max_age"`
	// Schedule is a five-field cron expression (UTC) or a descriptor such
	// as "@hourly"; empty means "@hourly".
	Schedule string `yaml:"schedule"`
	// BatchSize bounds the rows one DELETE removes; zero means 5000.
	BatchSize int `yaml:"batch_size"`
}

// CaptureConfig is the payload capture policy.
type CaptureConfig struct {
	// Enabled turns capture on. Off by default.
	Enabled bool `yaml:"enabled"`
	// KeyID names Key; it is stored with each capture Key seals.
	KeyID string `yaml:"key_id"`
	// Key is the base64 32-byte AES-256 key that seals new captures and
	// opens those sealed under KeyID.
	Key string `yaml:"key" secret:"true"`
	// OldKeys maps retired key ids to their base64 keys. They only open
	// captures; keep each until the captures it sealed have expired. In
	// the environment (or a _FILE) it is written id=key, comma- or
	// line-separated.
	OldKeys map[string]string `yaml:"old_keys" secret:"true"`
	// MaxAge is how long a capture is kept; zero means 7 days. It must not
	// exceed the decision retention.
	MaxAge time.Duration `yaml:"max_age"`
}

const (
	defaultMaxAge        = 90 * 24 * time.Hour
	defaultCaptureMaxAge = 7 * 24 * time.Hour
	// defaultAuditRetention is two years of audit trail.
	defaultAuditRetention = 2 * 365 * 24 * time.Hour
	// minAuditRetention keeps a typo from wiping the trail.
	minAuditRetention = 30 * 24 * time.Hour
	defaultSchedule   = "@hourly"
	defaultBatchSize  = 5000
)

// withDefaults fills zero values.
func (c Config) withDefaults() Config {
	if c.Retention.MaxAge == 0 {
		c.Retention.MaxAge = defaultMaxAge
	}
	if c.Retention.Schedule == "" {
		c.Retention.Schedule = defaultSchedule
	}
	if c.Retention.BatchSize == 0 {
		c.Retention.BatchSize = defaultBatchSize
	}
	if c.Capture.MaxAge == 0 {
		c.Capture.MaxAge = defaultCaptureMaxAge
	}
	if c.AuditRetention == 0 {
		c.AuditRetention = defaultAuditRetention
	}
	if c.Logger == nil {
		c.Logger = slog.Default()
	}
	if c.Holder == "" {
		host, _ := os.Hostname()
		c.Holder = fmt.Sprintf("%s:%d", host, os.Getpid())
	}
	return c
}

// Validate reports every problem in c at once. Messages never echo
// secrets.
func (c Config) Validate() error {
	c = c.withDefaults()
	var errs []error
	if c.KeySecret != "" {
		if b, err := base64.StdEncoding.DecodeString(c.KeySecret); err != nil || len(b) < 16 {
			errs = append(errs, errors.New("logs.key_secret must be base64 of at least 16 bytes"))
		}
	}
	if c.Retention.MaxAge < time.Hour {
		errs = append(errs, fmt.Errorf("logs.retention.max_age %s is shorter than one hour", c.Retention.MaxAge))
	}
	if c.AuditRetention < minAuditRetention {
		errs = append(errs, fmt.Errorf("logs.audit_retention %s is shorter than 30 days (720h)", c.AuditRetention))
	}
	if _, err := cron.ParseStandard(c.Retention.Schedule); err != nil {
		errs = append(errs, fmt.Errorf("logs.retention.schedule %q: %v", c.Retention.Schedule, err))
	}
	if c.Retention.BatchSize < 1 || c.Retention.BatchSize > 100000 {
		errs = append(errs, fmt.Errorf("logs.retention.batch_size %d is not between 1 and 100000", c.Retention.BatchSize))
	}
	if c.Capture.MaxAge < time.Minute {
		errs = append(errs, fmt.Errorf("logs.capture.max_age %s is shorter than one minute", c.Capture.MaxAge))
	} else if c.Capture.MaxAge > c.Retention.MaxAge {
		errs = append(errs, fmt.Errorf("logs.capture.max_age %s exceeds logs.retention.max_age %s", c.Capture.MaxAge, c.Retention.MaxAge))
	}
	if _, err := newKeyring(c.Capture); err != nil {
		errs = append(errs, err)
	}
	return errors.Join(errs...)
}

// Store is the sync log: decisions, their captures and the audit trail.
// It is safe for concurrent use.
type Store struct {
	db      *gorm.DB
	cfg     Config
	log     *slog.Logger
	keyMAC  []byte // nil when business keys are off
	keys    *keyring
	metrics *retentionMetrics
	now     func() time.Time

	keysOffWarning sync.Once
}

// New prepares the sync log on db, whose schema must be migrated. reg
// receives the retention metrics; nil means they are not registered.
func New(db *gorm.DB, cfg Config, reg prometheus.Registerer) (*Store, error) {
	if err := cfg.Validate(); err != nil {
		return nil, fmt.Errorf("configuring the sync log: %w", err)
	}
	cfg = cfg.withDefaults()
	kr, _ := newKeyring(cfg.Capture)
	s := &Store{db: db, cfg: cfg, log: cfg.Logger, keys: kr, now: time.Now}
	if cfg.KeySecret != "" {
		s.keyMAC, _ = base64.StdEncoding.DecodeString(cfg.KeySecret)
	}
	m, err := newRetentionMetrics(reg)
	if err != nil {
		return nil, fmt.Errorf("registering sync log metrics: %w", err)
	}
	s.metrics = m
	return s, nil
}

// decisionRow is the sync_decisions table.
type decisionRow struct {
	ID            int64 `gorm:"primaryKey"`
	DecidedAt     time.Time
	CorrelationID string
	MessageID     string
	Direction     string
	EntityMap     string
	MapVersion    int
	SourceType    string
	SourceID      string
	SourceVersion string
	TargetType    string
	TargetID      string
	TargetVersion string
	Outcome       string
	Reason        string
	ReasonSubject string
	Message       string
	ChangedFields string
	Attempts      string
	DurationUS    int64 `gorm:"column:duration_us"`
	Conflicts     string
	LatencyUS     *int64  `gorm:"column:latency_us"` // NULL when unknown
	Readings      *string // JSON Readings of a device-stream window; NULL otherwise
	TraceID       string  // empty when not traced
}

func (decisionRow) TableName() string { return "sync_decisions" }

type keyRow struct {
	DecisionID int64
	Name       string
	Hash       string
}

func (keyRow) TableName() string { return "sync_decision_keys" }

// On SQLite a batch is written in multi-row statements of a few fixed
// sizes (32, 16, 8, 4, 2 and 1 rows: 27 rows go as 16+8+2+1), so that each
// statement text stays prepared (storage.KeepPrepared) — a statement of a
// new size every batch would be prepared again each time, which costs more
// than running one cached statement per row. PostgreSQL gets multi-row
// statements through gorm, one round trip per chunk.
const (
	insertColumns = `decided_at, correlation_id, message_id, direction, entity_map, map_version,
		source_type, source_id, source_version, target_type, target_id, target_version, outcome, reason, reason_subject,
		message, changed_fields, attempts, duration_us, conflicts, latency_us, readings, trace_id`
	decisionParams = 23
	keyParams      = 3
)

// sqliteChunks are the row counts of the multi-row statements, largest first.
var sqliteChunks = []int{32, 16, 8, 4, 2, 1}

// insertDecisionSQL and insertKeySQL hold the statements by row count.
var insertDecisionSQL, insertKeySQL = func() (d, k map[int]string) {
	d, k = map[int]string{}, map[int]string{}
	for _, n := range sqliteChunks {
		d[n] = storage.KeepPrepared(`INSERT INTO sync_decisions (` + insertColumns + `) VALUES ` + placeholders(n, decisionParams) + ` RETURNING id`)
		k[n] = storage.KeepPrepared(`INSERT INTO sync_decision_keys (decision_id, name, hash) VALUES ` + placeholders(n, keyParams))
	}
	return d, k
}()

// placeholders is rows groups of cols "?", as in a VALUES list.
func placeholders(rows, cols int) string {
	g := "(?" + strings.Repeat(", ?", cols-1) + ")"
	return g + strings.Repeat(", "+g, rows-1)
}

// chunk is the largest statement size that fits n rows.
func chunk(n int) int {
	for _, c := range sqliteChunks {
		if c <= n {
			return c
		}
	}
	return 1
}

// insertDecisions inserts rows and sets their IDs.
func insertDecisions(tx *gorm.DB, rows []decisionRow) error {
	if storage.DialectOf(tx) != storage.SQLite {
		return tx.CreateInBatches(&rows, writeChunk).Error
	}
	args := make([]any, 0, sqliteChunks[0]*decisionParams)
	ids := make([]int64, 0, sqliteChunks[0])
	for len(rows) > 0 {
		n := chunk(len(rows))
		args = args[:0]
		for i := range rows[:n] {
			r := &rows[i]
			args = append(args, r.DecidedAt, r.CorrelationID, r.MessageID, r.Direction, r.EntityMap, r.MapVersion,
				r.SourceType, r.SourceID, r.SourceVersion, r.TargetType, r.TargetID, r.TargetVersion, r.Outcome, r.Reason,
				r.ReasonSubject, r.Message, r.ChangedFields, r.Attempts, r.DurationUS, r.Conflicts, r.LatencyUS, r.Readings, r.TraceID)
		}
		var err error
		if ids, err = queryIDs(tx, insertDecisionSQL[n], args, ids[:0]); err != nil {
			return err
		}
		if len(ids) != n {
			return fmt.Errorf("the database returned %d ids for %d rows", len(ids), n)
		}
		// One statement numbers its rows in the order of its VALUES, each
		// above every id before (AUTOINCREMENT); RETURNING may list them
		// in any order.
		slices.Sort(ids)
		for i := range rows[:n] {
			rows[i].ID = ids[i]
		}
		rows = rows[n:]
	}
	return nil
}

// queryIDs runs an INSERT … RETURNING id on SQLite and appends the ids.
func queryIDs(tx *gorm.DB, query string, args []any, ids []int64) ([]int64, error) {
	rs, err := storage.Direct(tx).Query(query, args...)
	if err != nil {
		return ids, err
	}
	defer rs.Close()
	for rs.Next() {
		var id int64
		if err := rs.Scan(&id); err != nil {
			return ids, err
		}
		ids = append(ids, id)
	}
	return ids, rs.Err()
}

func insertKeys(tx *gorm.DB, keys []keyRow) error {
	if len(keys) == 0 {
		return nil
	}
	if storage.DialectOf(tx) != storage.SQLite {
		return tx.CreateInBatches(&keys, writeChunk).Error
	}
	args := make([]any, 0, sqliteChunks[0]*keyParams)
	for len(keys) > 0 {
		n := chunk(len(keys))
		args = args[:0]
		for _, k := range keys[:n] {
			args = append(args, k.DecisionID, k.Name, k.Hash)
		}
		if _, err := storage.Direct(tx).Exec(insertKeySQL[n], args...); err != nil {
			return err
		}
		keys = keys[n:]
	}
	return nil
}

func toRow(d *Decision) (decisionRow, error) {
	fields, err := json.Marshal(nonNil(d.ChangedFields))
	if err != nil {
		return decisionRow{}, err
	}
	attempts := make([]Attempt, len(d.Attempts))
	for i, a := range d.Attempts {
		a.At = a.At.UTC().Truncate(time.Microsecond)
		attempts[i] = a
	}
	att, err := json.Marshal(attempts)
	if err != nil {
		return decisionRow{}, err
	}
	conflicts := d.Conflicts
	if conflicts == nil {
		conflicts = []Conflict{}
	}
	conf, err := json.Marshal(conflicts)
	if err != nil {
		return decisionRow{}, err
	}
	var latency *int64
	if d.Latency > 0 {
		us := d.Latency.Microseconds()
		latency = &us
	}
	var readings *string
	if d.Readings != nil {
		raw, err := json.Marshal(d.Readings)
		if err != nil {
			return decisionRow{}, err
		}
		s := string(raw)
		readings = &s
	}
	return decisionRow{
		LatencyUS: latency, Readings: readings, DecidedAt: d.Time, CorrelationID: d.CorrelationID, MessageID: d.MessageID,
		Direction: string(d.Direction), EntityMap: d.EntityMap, MapVersion: d.MapVersion,
		SourceType: d.Source.Type, SourceID: d.Source.ID, SourceVersion: d.Source.Version,
		TargetType: d.Target.Type, TargetID: d.Target.ID, TargetVersion: d.Target.Version,
		Outcome: string(d.Outcome), Reason: string(d.Reason), ReasonSubject: d.ReasonSubject,
		Message: d.Message, ChangedFields: string(fields), Attempts: string(att),
		DurationUS: d.Duration.Microseconds(), Conflicts: string(conf), TraceID: d.TraceID,
	}, nil
}

func (r decisionRow) decision() Decision {
	d := Decision{
		ID: r.ID, Time: r.DecidedAt.UTC(), CorrelationID: r.CorrelationID, MessageID: r.MessageID,
		Direction: Direction(r.Direction), EntityMap: r.EntityMap, MapVersion: r.MapVersion,
		Source:  Ref{Type: r.SourceType, ID: r.SourceID, Version: r.SourceVersion},
		Target:  Ref{Type: r.TargetType, ID: r.TargetID, Version: r.TargetVersion},
		Outcome: Outcome(r.Outcome), Reason: ReasonCode(r.Reason), ReasonSubject: r.ReasonSubject,
		Message: r.Message, Duration: time.Duration(r.DurationUS) * time.Microsecond, TraceID: r.TraceID,
	}
	if r.LatencyUS != nil {
		d.Latency = time.Duration(*r.LatencyUS) * time.Microsecond
	}
	if r.Readings != nil {
		var rd Readings
		if json.Unmarshal([]byte(*r.Readings), &rd) == nil {
			d.Readings = &rd
		}
	}
	// The columns are written only by toRow; a decode failure leaves the
	// list empty rather than hiding the whole decision.
	_ = json.Unmarshal([]byte(r.ChangedFields), &d.ChangedFields)
	_ = json.Unmarshal([]byte(r.Attempts), &d.Attempts)
	_ = json.Unmarshal([]byte(r.Conflicts), &d.Conflicts)
	if len(d.Conflicts) == 0 {
		d.Conflicts = nil
	}
	if len(d.ChangedFields) == 0 {
		d.ChangedFields = nil
	}
	if len(d.Attempts) == 0 {
		d.Attempts = nil
	}
	return d
}

func nonNil(s []string) []string {
	if s == nil {
		return []string{}
	}
	return s
}

// keyHash is the stored form of a business key: HMAC-SHA256 over the name
// and the value, so equal values under different names do not match.
func (s *Store) keyHash(name, value string) string {
	m := hmac.New(sha256.New, s.keyMAC)
	m.Write([]byte(name))
	m.Write([]byte{0})
	m.Write([]byte(strings.TrimSpace(value)))
	return hex.EncodeToString(m.Sum(nil))
}

// Write records one decision and sets its ID.
func (s *Store) Write(ctx context.Context, d *Decision) error {
	return s.WriteBatch(ctx, []*Decision{d})
}

// writeChunk bounds the rows per INSERT statement (PostgreSQL allows at
// most 65535 bind parameters; a decision row has 20).
const writeChunk = 1000

// WriteBatch records decisions in one transaction and sets their IDs.
// Either all are written or, when one is invalid or the database fails,
// none; the error names the decision by its position.
func (s *Store) WriteBatch(ctx context.Context, ds []*Decision) error {
	return s.WriteBatchWith(ctx, ds, nil)
}

// Database is the database the sync log is kept in.
func (s *Store) Database() *gorm.DB { return s.db }

// WriteBatchWith is WriteBatch that also runs also, when not nil, in the
// same transaction after the decisions are inserted: a caller's own rows
// in the same database (the agent's correlation links, a queue message's
// completion) commit or roll back together with the decisions. An error
// from also rolls everything back and is returned.
func (s *Store) WriteBatchWith(ctx context.Context, ds []*Decision, also func(tx *gorm.DB) error) error {
	if len(ds) == 0 {
		return nil
	}
	now := s.now().UTC()
	rows := make([]decisionRow, len(ds))
	for i, d := range ds {
		if err := d.validate(now); err != nil {
			return fmt.Errorf("writing decision %d of %d (message %s): %w", i+1, len(ds), short(d.MessageID), err)
		}
		r, err := toRow(d)
		if err != nil {
			return fmt.Errorf("encoding decision %d of %d: %w", i+1, len(ds), err)
		}
		rows[i] = r
	}
	err := s.db.WithContext(ctx).Transaction(func(tx *gorm.DB) error {
		if err := insertDecisions(tx, rows); err != nil {
			return fmt.Errorf("inserting decisions: %w", err)
		}
		var keys []keyRow
		var captures []captureRow
		for i, d := range ds {
			d.ID = rows[i].ID
			if d.ID == 0 {
				return errors.New("inserting decisions: the database returned no id")
			}
			if s.keyMAC != nil {
				for _, k := range d.BusinessKeys {
					keys = append(keys, keyRow{DecisionID: d.ID, Name: k.Name, Hash: s.keyHash(k.Name, k.Value)})
				}
			}
			if s.cfg.Capture.Enabled && d.Snapshots != nil {
				c, err := s.keys.seal(d.ID, now, d.Snapshots)
				if err != nil {
					return fmt.Errorf("sealing capture of decision %d: %w", d.ID, err)
				}
				captures = append(captures, c)
			}
		}
		if err := insertKeys(tx, keys); err != nil {
			return fmt.Errorf("inserting business key hashes: %w", err)
		}
		if err := deleteSuperseded(tx, ds); err != nil {
			return err
		}
		if len(captures) > 0 {
			if err := tx.CreateInBatches(&captures, 200).Error; err != nil {
				return fmt.Errorf("inserting captures: %w", err)
			}
		}
		if also != nil {
			return also(tx)
		}
		return nil
	})
	if err != nil {
		for _, d := range ds {
			d.ID = 0
		}
		return fmt.Errorf("writing %d decisions: %w", len(ds), err)
	}
	if s.keyMAC == nil {
		for _, d := range ds {
			if len(d.BusinessKeys) > 0 {
				s.keysOffWarning.Do(func() {
					s.log.Warn("business keys are not recorded: logs.key_secret is not set", "decision_id", d.ID)
				})
				break
			}
		}
	}
	return nil
}
