package agent

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"time"

	"gorm.io/gorm"
	"gorm.io/gorm/clause"

	"github.com/fhirsync/fhirsync/queues"

	"github.com/fhirsync/fhirsync/storage"
)

// link pairs a FHIR resource with a CRM record under one entity map.
type link struct {
	EntityMap   string `gorm:"primaryKey"`
	FHIRType    string `gorm:"column:fhir_type"`
	FHIRID      string `gorm:"column:fhir_id;primaryKey"`
	CRMEntity   string `gorm:"column:crm_entity"`
	CRMID       string `gorm:"column:crm_id"`
	FHIRVersion string `gorm:"column:fhir_version"`
	CRMVersion  string `gorm:"column:crm_version"`
	UpdatedAt   time.Time
}

func (link) TableName() string { return "agent_links" }

// errNoLink means no cached pairing exists; callers fall back to the
// correlation keys on the records.
var errNoLink = errors.New("no link")

// links is the correlation cache.
type links struct{ db *gorm.DB }

// linkColumns are the columns byKey scans, in link's field order.
const linkColumns = `entity_map, fhir_type, fhir_id, crm_entity, crm_id, fhir_version, crm_version, updated_at`

// dest is where a row of linkColumns scans into.
func (l *link) dest() []any {
	return []any{&l.EntityMap, &l.FHIRType, &l.FHIRID, &l.CRMEntity, &l.CRMID, &l.FHIRVersion, &l.CRMVersion, &l.UpdatedAt}
}

// queryRow runs a query of one row with ? placeholders: on SQLite without
// gorm (storage.Direct), on PostgreSQL through gorm, which numbers them.
func queryRow(ctx context.Context, db *gorm.DB, q string, args ...any) *sql.Row {
	if storage.DialectOf(db) == storage.SQLite {
		return storage.Direct(db.WithContext(ctx)).QueryRow(q, args...)
	}
	return db.WithContext(ctx).Raw(q, args...).Row()
}

// byKey reads a link on SQLite without gorm (see storage.Direct); column
// is fhir_id or crm_id.
func (s links) byKey(ctx context.Context, column, entityMap, id string) (link, error) {
	var l link
	err := storage.Direct(s.db.WithContext(ctx)).QueryRow(`SELECT `+linkColumns+` FROM agent_links WHERE entity_map = ? AND `+column+` = ?`, entityMap, id).
		Scan(l.dest()...)
	if errors.Is(err, sql.ErrNoRows) {
		return link{}, errNoLink
	}
	return l, err
}

func (s links) byFHIR(ctx context.Context, entityMap, fhirID string) (link, error) {
	if storage.DialectOf(s.db) == storage.SQLite {
		return s.byKey(ctx, "fhir_id", entityMap, fhirID)
	}
	var l link
	err := s.db.WithContext(ctx).Where("entity_map = ? AND fhir_id = ?", entityMap, fhirID).Take(&l).Error
	if errors.Is(err, gorm.ErrRecordNotFound) {
		return l, errNoLink
	}
	return l, err
}

func (s links) byCRM(ctx context.Context, entityMap, crmID string) (link, error) {
	if storage.DialectOf(s.db) == storage.SQLite {
		return s.byKey(ctx, "crm_id", entityMap, crmID)
	}
	var l link
	err := s.db.WithContext(ctx).Where("entity_map = ? AND crm_id = ?", entityMap, crmID).Take(&l).Error
	if errors.Is(err, gorm.ErrRecordNotFound) {
		return l, errNoLink
	}
	return l, err
}

// save records or refreshes a pairing. A CRM id paired before with another
// FHIR id (a record re-created on one side) is re-pointed.
func (s links) save(ctx context.Context, l link) error {
	return s.db.WithContext(ctx).Transaction(func(tx *gorm.DB) error { return saveLinksTx(tx, []link{l}) })
}

// saveLinksTx saves ls in order inside the caller's transaction. On
// SQLite an UPDATE refreshes an unchanged pairing; otherwise one INSERT OR
// REPLACE does it: REPLACE removes the rows that
// conflict on either key (the same FHIR id, or the CRM id paired before
// with another FHIR id) before inserting, which is what save does in two
// statements.
func saveLinksTx(tx *gorm.DB, ls []link) error {
	if len(ls) == 0 {
		return nil
	}
	if storage.DialectOf(tx) != storage.SQLite {
		for _, l := range ls {
			if err := saveLinkTx(tx, l); err != nil {
				return err
			}
		}
		return nil
	}
	now := time.Now().UTC()
	// One row per statement, the same text each time, so it stays prepared.
	for _, l := range ls {
		// Most saves refresh a pairing that exists with its versions: an
		// UPDATE of the row leaves both keys' indexes alone, where REPLACE
		// deletes the row and inserts it again, rewriting an entry in each.
		res, err := storage.Direct(tx).Exec(`UPDATE agent_links SET fhir_type = ?, crm_entity = ?, fhir_version = ?, crm_version = ?, updated_at = ?
			WHERE entity_map = ? AND fhir_id = ? AND crm_id = ?`, l.FHIRType, l.CRMEntity, l.FHIRVersion, l.CRMVersion, now,
			l.EntityMap, l.FHIRID, l.CRMID)
		if err != nil {
			return err
		}
		if n, err := res.RowsAffected(); err == nil && n == 1 {
			continue
		}
		_, err = storage.Direct(tx).Exec(`INSERT OR REPLACE INTO agent_links (entity_map, fhir_type, fhir_id, crm_entity, crm_id, fhir_version, crm_version, updated_at)
			VALUES (?, ?, ?, ?, ?, ?, ?, ?)`, l.EntityMap, l.FHIRType, l.FHIRID, l.CRMEntity, l.CRMID, l.FHIRVersion, l.CRMVersion, now)
		if err != nil {
			return err
		}
	}
	return nil
}

// saveLinkTx saves one link in two statements: it removes a pairing of
// the same CRM record with another FHIR id, then upserts.
func saveLinkTx(tx *gorm.DB, l link) error {
	l.UpdatedAt = time.Now().UTC()
	if err := tx.Where("entity_map = ? AND crm_id = ? AND fhir_id <> ?", l.EntityMap, l.CRMID, l.FHIRID).Delete(&link{}).Error; err != nil {
		return err
	}
	return tx.Clauses(clause.OnConflict{
		Columns:   []clause.Column{{Name: "entity_map"}, {Name: "fhir_id"}},
		DoUpdates: clause.AssignmentColumns([]string{"fhir_type", "crm_entity", "crm_id", "fhir_version", "crm_version", "updated_at"}),
	}).Create(&l).Error
}

// remove forgets a pairing and its base state.
func (s links) remove(ctx context.Context, entityMap, fhirID string) error {
	return s.db.WithContext(ctx).Transaction(func(tx *gorm.DB) error {
		if err := removeBase(tx, entityMap, fhirID); err != nil {
			return err
		}
		return tx.Where("entity_map = ? AND fhir_id = ?", entityMap, fhirID).Delete(&link{}).Error
	})
}

// ownWrite is one version the agent produced.
type ownWrite struct {
	Side      string `gorm:"primaryKey"`
	RType     string `gorm:"column:rtype;primaryKey"`
	RID       string `gorm:"column:rid;primaryKey"`
	Version   string `gorm:"primaryKey"` // normalised (normVersion)
	WrittenAt time.Time
	// ValueHash is the keyed hash of the values written (valueDigest) and
	// ValueFields the names it covers; both empty when not known.
	ValueHash   string `gorm:"column:value_hash"`
	ValueFields string `gorm:"column:value_fields"`
	// Created: the write created the row (not kept in the table; see
	// createdRows).
	Created bool `gorm:"-"`
}

func (ownWrite) TableName() string { return "agent_own_writes" }

// ownWrites remembers the versions the agent wrote, and a keyed hash of
// the values in each, for loop prevention.
type ownWrites struct {
	db *gorm.DB
	// pending holds the versions written but not yet committed to the
	// table (they commit with the message's decision), so an echo that
	// arrives in between is still recognised; by version key and by
	// record key (the newest write).
	pending *sync.Map
	// key is the HMAC key of the value hashes.
	key []byte
	// flights are the target writes whose versions are not known yet.
	flights *flights
	// created are the rows this process created, with the versions their
	// creates made.
	created *createdRows
}

// newOwnWrites hashes values under a random key; set key for the
// installation's.
func newOwnWrites(db *gorm.DB) ownWrites {
	return ownWrites{db: db, pending: &sync.Map{}, key: newValueKey(nil), flights: newFlights(), created: newCreatedRows()}
}

func (w ownWrite) key() string {
	return w.recordKey() + "\x00" + normVersion(w.Version)
}

func (w ownWrite) recordKey() string {
	return w.Side + "\x00" + w.RType + "\x00" + w.RID
}

// note records w as written, before it is committed; done forgets it
// once the commit has ended (either way).
func (s ownWrites) note(w ownWrite) (done func()) {
	if w.Created {
		s.created.note(w)
	}
	if s.pending == nil {
		return func() {}
	}
	k, rk := w.key(), w.recordKey()
	s.pending.Store(k, w)
	s.pending.Store(rk, w)
	return func() {
		s.pending.Delete(k)
		s.pending.CompareAndDelete(rk, w)
	}
}

func (s ownWrites) remember(ctx context.Context, side, rtype, rid, version string) error {
	if version == "" {
		return nil
	}
	w := ownWrite{Side: side, RType: rtype, RID: rid, Version: version, WrittenAt: time.Now().UTC()}
	if err := rememberTx(s.db.WithContext(ctx), []ownWrite{w}); err != nil {
		return fmt.Errorf("remembering own write %s:%s/%s: %w", side, rtype, rid, err)
	}
	return nil
}

// rememberTx records ws inside the caller's transaction.
func rememberTx(tx *gorm.DB, ws []ownWrite) error {
	if len(ws) == 0 {
		return nil
	}
	for i := range ws {
		ws[i].Version = normVersion(ws[i].Version)
	}
	if storage.DialectOf(tx) != storage.SQLite {
		return tx.Clauses(clause.OnConflict{DoNothing: true}).CreateInBatches(&ws, 500).Error
	}
	// Multi-row statements of fixed sizes, so that each stays prepared.
	args := make([]any, 0, ownChunks[0]*ownParams)
	for len(ws) > 0 {
		n := ownChunk(len(ws))
		args = args[:0]
		for _, w := range ws[:n] {
			args = append(args, w.Side, w.RType, w.RID, w.Version, w.WrittenAt, w.ValueHash, w.ValueFields)
		}
		if _, err := storage.Direct(tx).Exec(insertOwnSQL[n], args...); err != nil {
			return err
		}
		ws = ws[n:]
	}
	return nil
}

// ownParams is the columns of one own write as rememberTx inserts it.
const ownParams = 7

// ownChunks are the row counts of rememberTx's statements on SQLite,
// largest first: 13 rows go as 8+4+1.
var ownChunks = []int{32, 16, 8, 4, 2, 1}

// insertOwnSQL holds rememberTx's SQLite statements by row count.
var insertOwnSQL = func() map[int]string {
	m := map[int]string{}
	g := "(?" + strings.Repeat(", ?", ownParams-1) + ")"
	for _, n := range ownChunks {
		m[n] = storage.KeepPrepared(`INSERT INTO agent_own_writes (side, rtype, rid, version, written_at, value_hash, value_fields) VALUES ` +
			g + strings.Repeat(", "+g, n-1) + ` ON CONFLICT DO NOTHING`)
	}
	return m
}()

// ownChunk is the largest statement size that fits n rows.
func ownChunk(n int) int {
	for _, c := range ownChunks {
		if c <= n {
			return c
		}
	}
	return 1
}

// isOwn reports whether any of versions (empty ones ignored) of the
// record is a version the agent wrote.
func (s ownWrites) isOwn(ctx context.Context, side, rtype, rid string, versions ...string) (bool, error) {
	vs := make([]any, 0, len(versions))
	for _, v := range versions {
		if v = normVersion(v); v != "" && !slices.Contains(vs, any(v)) {
			vs = append(vs, v)
		}
	}
	if len(vs) == 0 {
		return false, nil
	}
	if s.pending != nil {
		for _, v := range vs {
			if _, ok := s.pending.Load(ownWrite{Side: side, RType: rtype, RID: rid, Version: v.(string)}.key()); ok {
				return true, nil
			}
		}
	}
	in := "?" + strings.Repeat(", ?", len(vs)-1)
	args := append([]any{side, rtype, rid}, vs...)
	if storage.DialectOf(s.db) == storage.SQLite {
		return storage.Direct(s.db.WithContext(ctx)).Exists(`SELECT 1 FROM agent_own_writes WHERE side = ? AND rtype = ? AND rid = ? AND version IN (`+in+`)`, args...)
	}
	var n int64
	err := s.db.WithContext(ctx).Model(&ownWrite{}).
		Where("side = ? AND rtype = ? AND rid = ? AND version IN ("+in+")", args...).Count(&n).Error
	return n > 0, err
}

// probe reads, in one query, whether version (normalised) of the record
// is one the agent wrote and, if not, the newest own write of the record
// (ok false when there is none).
func (s ownWrites) probe(ctx context.Context, side, rtype, rid, version string) (own bool, newest ownWrite, ok bool, err error) {
	version = normVersion(version)
	w := ownWrite{Side: side, RType: rtype, RID: rid, Version: version}
	if s.pending != nil {
		if _, found := s.pending.Load(w.key()); found && version != "" {
			return true, ownWrite{}, false, nil
		}
		if p, found := s.pending.Load(w.recordKey()); found {
			return false, p.(ownWrite), true, nil
		}
	}
	// The row of version sorts first when there is one; else the newest.
	const q = `SELECT version, value_hash, value_fields FROM agent_own_writes WHERE side = ? AND rtype = ? AND rid = ?
		ORDER BY CASE WHEN version = ? THEN 0 ELSE 1 END, written_at DESC LIMIT 1`
	err = queryRow(ctx, s.db, q, side, rtype, rid, version).Scan(&newest.Version, &newest.ValueHash, &newest.ValueFields)
	if errors.Is(err, sql.ErrNoRows) {
		return false, ownWrite{}, false, nil
	}
	if err != nil {
		return false, ownWrite{}, false, fmt.Errorf("reading the own writes of %s:%s: %w", side, rtype, err)
	}
	if version != "" && newest.Version == version {
		return true, ownWrite{}, false, nil
	}
	return false, newest, true, nil
}

// prune forgets own writes older than age, in bounded batches.
func (s ownWrites) prune(ctx context.Context, age time.Duration) (int64, error) {
	cut := time.Now().UTC().Add(-age)
	rowID := "rowid"
	if storage.DialectOf(s.db) == storage.Postgres {
		rowID = "ctid"
	}
	q := `DELETE FROM agent_own_writes WHERE ` + rowID + ` IN (SELECT ` + rowID + ` FROM agent_own_writes WHERE written_at < ? LIMIT 5000)`
	var total int64
	for {
		res := s.db.WithContext(ctx).Exec(q, cut)
		if res.Error != nil {
			return total, res.Error
		}
		total += res.RowsAffected
		if res.RowsAffected < 5000 {
			return total, nil
		}
	}
}

// applyEffects writes the units' own writes and links and completes their
// messages, inside the transaction that records their decisions.
func applyEffects(tx *gorm.DB, us []*unit) error {
	var owns []ownWrite
	var ls []link
	var bs []*linkBase
	byQueue := map[txQueue][]*unit{}
	for _, u := range us {
		if u.own != nil {
			owns = append(owns, *u.own)
		}
		if u.base != nil {
			bs = append(bs, u.base)
		}
		if u.link != nil {
			ls = append(ls, *u.link)
		}
		if u.complete != nil {
			byQueue[u.q] = append(byQueue[u.q], u)
		}
	}
	if err := saveLinksTx(tx, ls); err != nil {
		return fmt.Errorf("%w: saving correlation links: %v", errEffects, err)
	}
	if err := rememberTx(tx, owns); err != nil {
		return fmt.Errorf("%w: remembering own writes: %v", errEffects, err)
	}
	if err := saveBasesTx(tx, bs); err != nil {
		return fmt.Errorf("%w: saving base states: %v", errEffects, err)
	}
	for _, u := range us {
		if err := runEffects(tx, u.effects); err != nil {
			return fmt.Errorf("%w: recording held conflicts: %v", errEffects, err)
		}
	}
	for q, qus := range byQueue {
		ms := make([]*queues.Received, len(qus))
		for i, u := range qus {
			ms[i] = u.complete
		}
		lost, err := q.CompleteHeld(tx, ms...)
		if err != nil {
			return fmt.Errorf("%w: %v", errEffects, err)
		}
		for _, u := range qus {
			u.settled = true
			u.lockLost = slices.Contains(lost, u.complete.SequenceNumber)
		}
	}
	return nil
}

// runEffects runs a unit's further writes in tx.
func runEffects(tx *gorm.DB, fs []func(tx *gorm.DB) error) error {
	for _, f := range fs {
		if err := f(tx); err != nil {
			return err
		}
	}
	return nil
}
