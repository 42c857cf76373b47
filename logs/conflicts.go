package logs

import (
	"bytes"
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"time"
	"unicode/utf8"

	"gorm.io/gorm"
	"gorm.io/gorm/clause"

	"github.com/fhirsync/fhirsync/storage"
)

// Held conflict statuses. A conflict is held open; a person resolves it
// (resolved); the agent writes the resolution (applied), or finds the
// conflict gone or replaced before it could (superseded).
const (
	ConflictOpen       = "open"
	ConflictResolved   = "resolved"
	ConflictApplied    = "applied"
	ConflictSuperseded = "superseded"
)

// ConflictStatuses lists the statuses in their order.
func ConflictStatuses() []string {
	return []string{ConflictOpen, ConflictResolved, ConflictApplied, ConflictSuperseded}
}

// Errors about held conflicts.
var (
	// ErrInvalidConflict wraps the reasons a held conflict is refused.
	ErrInvalidConflict = errors.New("invalid held conflict")
	// ErrConflictState means the conflict is not in a status that allows
	// the change (resolving a conflict that is not open, applying one that
	// is not resolved).
	ErrConflictState = errors.New("held conflict is not in a status that allows this")
	// ErrValuesNotKept means the conflict's values were not stored: no
	// payload capture key was configured when it was held, or it has been
	// settled since and its values dropped.
	ErrValuesNotKept = errors.New("the values of this conflict were not kept")
)

// Audit actions about held conflicts.
const (
	// AuditResolveConflict records a person's resolution of a conflict.
	AuditResolveConflict = "conflict.resolve"
	// AuditViewConflictValues records a read of a conflict's values.
	AuditViewConflictValues = "conflict.values_view"
	// AuditViewConflictValuesDenied records a refused read of them.
	AuditViewConflictValuesDenied = "conflict.values_view_denied"
)

// HeldConflict is an attribute (or, for a delete met by an edit, the whole
// record) changed on both sides and held for a person. It names records
// and attributes; values are kept only sealed, and only when payload
// capture keys are configured (ValuesKept).
type HeldConflict struct {
	ID        int64  `json:"id"`
	EntityMap string `json:"entity_map"`
	FHIRType  string `json:"fhir_type"`
	FHIRID    string `json:"fhir_id"`
	CRMEntity string `json:"crm_entity"`
	CRMID     string `json:"crm_id"`
	// Attribute is the attribute map name; "" means a delete met an edit
	// of the whole record.
	Attribute string `json:"attribute,omitempty"`
	// DeletedSide is, for a delete-vs-edit conflict, the side whose record
	// was deleted: "fhir" or "crm"; else "".
	DeletedSide string `json:"deleted_side,omitempty"`
	// MessageID is the message whose decision held it (the latest one when
	// it was held again).
	MessageID string `json:"message_id,omitempty"`
	// FHIRHash and CRMHash are each side's keyed value hash when held, as
	// the agent computed them; opaque here.
	FHIRHash []byte `json:"-"`
	CRMHash  []byte `json:"-"`
	// FHIRChanged and CRMChanged report whether each side had changed
	// since the last sync.
	FHIRChanged bool      `json:"fhir_changed"`
	CRMChanged  bool      `json:"crm_changed"`
	HeldAt      time.Time `json:"held_at"`
	// Status is open, resolved (a person chose; not yet written), applied
	// or superseded.
	Status string `json:"status"`
	// Resolution is the side a person took, "fhir" or "crm", once resolved.
	Resolution string    `json:"resolution,omitempty"`
	ResolvedBy string    `json:"resolved_by,omitempty"`
	ResolvedAt time.Time `json:"resolved_at,omitzero"`
	AppliedAt  time.Time `json:"applied_at,omitzero"`
	// ValuesKept reports that both sides' values are stored, sealed; see
	// Store.ConflictValues.
	ValuesKept bool `json:"values_kept"`
}

// DeleteConflict reports whether c is a delete met by an edit.
func (c HeldConflict) DeleteConflict() bool { return c.Attribute == "" }

// AppliesDelete reports whether c's resolution applies the delete: the
// person took the deleting side.
func (c HeldConflict) AppliesDelete() bool {
	return c.DeleteConflict() && c.Resolution != "" && c.Resolution == c.DeletedSide
}

// heldConflictRow is the held_conflicts table.
type heldConflictRow struct {
	ID          int64 `gorm:"primaryKey"`
	EntityMap   string
	FHIRType    string `gorm:"column:fhir_type"`
	FHIRID      string `gorm:"column:fhir_id"`
	CRMEntity   string `gorm:"column:crm_entity"`
	CRMID       string `gorm:"column:crm_id"`
	Attribute   string
	DeletedSide string
	MessageID   string
	FHIRHash    []byte `gorm:"column:fhir_hash"`
	CRMHash     []byte `gorm:"column:crm_hash"`
	FHIRChanged bool   `gorm:"column:fhir_changed"`
	CRMChanged  bool   `gorm:"column:crm_changed"`
	HeldAt      time.Time
	Status      string
	Resolution  string
	ResolvedBy  string
	ResolvedAt  *time.Time
	AppliedAt   *time.Time
	KeyID       string
	KeyCheck    string
	FHIRSealed  []byte `gorm:"column:fhir_sealed"`
	CRMSealed   []byte `gorm:"column:crm_sealed"`
}

func (heldConflictRow) TableName() string { return "held_conflicts" }

func (r heldConflictRow) conflict() HeldConflict {
	c := HeldConflict{
		ID: r.ID, EntityMap: r.EntityMap, FHIRType: r.FHIRType, FHIRID: r.FHIRID,
		CRMEntity: r.CRMEntity, CRMID: r.CRMID, Attribute: r.Attribute, DeletedSide: r.DeletedSide,
		MessageID: r.MessageID, FHIRHash: r.FHIRHash, CRMHash: r.CRMHash,
		FHIRChanged: r.FHIRChanged, CRMChanged: r.CRMChanged, HeldAt: r.HeldAt.UTC(),
		Status: r.Status, Resolution: r.Resolution, ResolvedBy: r.ResolvedBy,
		ValuesKept: r.KeyID != "",
	}
	if r.ResolvedAt != nil {
		c.ResolvedAt = r.ResolvedAt.UTC()
	}
	if r.AppliedAt != nil {
		c.AppliedAt = r.AppliedAt.UTC()
	}
	return c
}

// conflictAAD binds a sealed value to its row and side, so a ciphertext
// moved to another conflict, or swapped between the sides, is refused.
func conflictAAD(id int64, side string) []byte {
	return binary.BigEndian.AppendUint64([]byte("fhirsync held conflict v1\x00"+side+"\x00"), uint64(id))
}

// maxHash bounds a stored value hash.
const maxHash = 64

func (c HeldConflict) validate() error {
	var errs []error
	if c.EntityMap == "" || c.FHIRID == "" {
		errs = append(errs, errors.New("entity map and FHIR id are required"))
	}
	for _, f := range []struct{ name, value string }{
		{"entity map", c.EntityMap}, {"FHIR type", c.FHIRType}, {"FHIR id", c.FHIRID},
		{"CRM entity", c.CRMEntity}, {"CRM id", c.CRMID}, {"attribute", c.Attribute}, {"message id", c.MessageID},
	} {
		if len(f.value) > maxShortText || !utf8.ValidString(f.value) {
			errs = append(errs, fmt.Errorf("%s is longer than %d bytes or not UTF-8", f.name, maxShortText))
		}
	}
	switch {
	case c.DeletedSide != "" && c.DeletedSide != SideFHIR && c.DeletedSide != SideCRM:
		errs = append(errs, fmt.Errorf("deleted side %q is not fhir, crm or empty", short(c.DeletedSide)))
	case c.Attribute == "" && c.DeletedSide == "":
		errs = append(errs, errors.New("a conflict names an attribute, or a deleted side for the whole record"))
	case c.Attribute != "" && c.DeletedSide != "":
		errs = append(errs, errors.New("an attribute conflict has no deleted side"))
	}
	if len(c.FHIRHash) > maxHash || len(c.CRMHash) > maxHash {
		errs = append(errs, fmt.Errorf("a value hash is longer than %d bytes", maxHash))
	}
	if len(errs) > 0 {
		return fmt.Errorf("%w: %w", ErrInvalidConflict, errors.Join(errs...))
	}
	return nil
}

// sealValues seals both sides' values of conflict id, as JSON, when a
// capture key is configured; otherwise it returns empty columns and the
// values are not kept.
func (s *Store) sealValues(id int64, fhirValue, crmValue any) (keyID, check string, fhirSealed, crmSealed []byte, err error) {
	if !s.keys.canSeal() {
		return "", "", nil, nil, nil
	}
	seal := func(side string, v any) ([]byte, error) {
		plain, err := json.Marshal(v)
		if err != nil {
			// The error names the type, never the value.
			return nil, fmt.Errorf("encoding the %s value as JSON: %T", side, v)
		}
		return s.keys.sealBytes(plain, conflictAAD(id, side))
	}
	if fhirSealed, err = seal(SideFHIR, fhirValue); err != nil {
		return "", "", nil, nil, err
	}
	if crmSealed, err = seal(SideCRM, crmValue); err != nil {
		return "", "", nil, nil, err
	}
	return s.keys.sealID, s.keys.checks[s.keys.sealID], fhirSealed, crmSealed, nil
}

const insertHeldSQL = `INSERT INTO held_conflicts (entity_map, fhir_type, fhir_id, crm_entity, crm_id, attribute,
	deleted_side, message_id, fhir_hash, crm_hash, fhir_changed, crm_changed, held_at, status)
	VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, 'open')
	ON CONFLICT (entity_map, fhir_id, attribute) WHERE status IN ('open', 'resolved') DO NOTHING
	RETURNING id`

// HoldTx records c as held, in the caller's transaction tx (the one that
// writes the decision that held it). There is at most one pending (open
// or resolved) row per entity map, FHIR id and attribute: holding it again
// updates that row's references, message, hashes, flags, time and values,
// and a resolved row whose hashes changed goes back to open, since the
// person chose between values that are no longer there. The values are
// sealed with the payload capture key, bound to the row and side, only
// when a capture key is configured; otherwise they are not stored. c.ID,
// Status, Resolution and the times other than HeldAt are ignored; a zero
// HeldAt means now.
func (s *Store) HoldTx(tx *gorm.DB, c HeldConflict, fhirValue, crmValue any) error {
	if err := c.validate(); err != nil {
		return err
	}
	at := c.HeldAt
	if at.IsZero() {
		at = s.now()
	}
	at = at.UTC().Truncate(time.Microsecond)
	var ids []int64
	// A concurrent holder of the same attribute makes PostgreSQL wait here
	// for its commit and then insert nothing; the row is then updated below.
	err := tx.Raw(insertHeldSQL, c.EntityMap, c.FHIRType, c.FHIRID, c.CRMEntity, c.CRMID, c.Attribute,
		c.DeletedSide, c.MessageID, c.FHIRHash, c.CRMHash, c.FHIRChanged, c.CRMChanged, at).Scan(&ids).Error
	if err != nil {
		return fmt.Errorf("holding conflict of %s %s: %w", c.EntityMap, c.FHIRID, err)
	}
	if len(ids) == 1 {
		return s.storeValues(tx, ids[0], fhirValue, crmValue)
	}
	var row heldConflictRow
	q := tx.Where("entity_map = ? AND fhir_id = ? AND attribute = ? AND status IN ?",
		c.EntityMap, c.FHIRID, c.Attribute, []string{ConflictOpen, ConflictResolved})
	if storage.DialectOf(tx) == storage.Postgres {
		q = q.Clauses(clause.Locking{Strength: "UPDATE"})
	}
	if err := q.Take(&row).Error; err != nil {
		return fmt.Errorf("holding conflict of %s %s again: %w", c.EntityMap, c.FHIRID, err)
	}
	updates := map[string]any{
		"fhir_type": c.FHIRType, "crm_entity": c.CRMEntity, "crm_id": c.CRMID,
		"deleted_side": c.DeletedSide, "message_id": c.MessageID,
		"fhir_hash": c.FHIRHash, "crm_hash": c.CRMHash,
		"fhir_changed": c.FHIRChanged, "crm_changed": c.CRMChanged, "held_at": at,
	}
	if row.Status == ConflictResolved && (!bytes.Equal(row.FHIRHash, c.FHIRHash) || !bytes.Equal(row.CRMHash, c.CRMHash)) {
		updates["status"] = ConflictOpen
		updates["resolution"] = ""
		updates["resolved_by"] = ""
		updates["resolved_at"] = nil
	}
	if err := tx.Model(&heldConflictRow{}).Where("id = ?", row.ID).Updates(updates).Error; err != nil {
		return fmt.Errorf("holding conflict %d again: %w", row.ID, err)
	}
	return s.storeValues(tx, row.ID, fhirValue, crmValue)
}

// storeValues seals and stores the values of conflict id, or clears them
// when no capture key is configured.
func (s *Store) storeValues(tx *gorm.DB, id int64, fhirValue, crmValue any) error {
	keyID, check, fv, cv, err := s.sealValues(id, fhirValue, crmValue)
	if err != nil {
		return fmt.Errorf("sealing the values of conflict %d: %w", id, err)
	}
	err = tx.Model(&heldConflictRow{}).Where("id = ?", id).Updates(map[string]any{
		"key_id": keyID, "key_check": check, "fhir_sealed": fv, "crm_sealed": cv,
	}).Error
	if err != nil {
		return fmt.Errorf("storing the values of conflict %d: %w", id, err)
	}
	return nil
}

// pending is the statuses of a conflict not yet written.
var pending = []string{ConflictOpen, ConflictResolved}

// Conflicts lists held conflicts with status ("" means open and resolved,
// the ones not yet written), oldest first, limit per page (1 to
// MaxPageSize; zero means 100), with ids greater than after.
func (s *Store) Conflicts(ctx context.Context, status string, after int64, limit int) ([]HeldConflict, error) {
	limit, err := pageLimit(limit)
	if err != nil {
		return nil, err
	}
	q := s.db.WithContext(ctx).Model(&heldConflictRow{})
	switch {
	case status == "":
		q = q.Where("status IN ?", pending)
	case validStatus(status):
		q = q.Where("status = ?", status)
	default:
		return nil, fmt.Errorf("%w: unknown conflict status %q", ErrBadFilter, short(status))
	}
	return s.findConflicts(q.Where("id > ?", after).Order("id").Limit(limit), "listing held conflicts")
}

func validStatus(s string) bool {
	for _, v := range ConflictStatuses() {
		if s == v {
			return true
		}
	}
	return false
}

func (s *Store) findConflicts(q *gorm.DB, what string) ([]HeldConflict, error) {
	var rows []heldConflictRow
	if err := q.Find(&rows).Error; err != nil {
		return nil, fmt.Errorf("%s: %w", what, err)
	}
	out := make([]HeldConflict, len(rows))
	for i, r := range rows {
		out[i] = r.conflict()
	}
	return out, nil
}

// Conflict returns held conflict id.
func (s *Store) Conflict(ctx context.Context, id int64) (HeldConflict, error) {
	row, err := s.conflictRow(s.db.WithContext(ctx), id)
	if err != nil {
		return HeldConflict{}, err
	}
	return row.conflict(), nil
}

func (s *Store) conflictRow(db *gorm.DB, id int64) (heldConflictRow, error) {
	var row heldConflictRow
	err := db.Where("id = ?", id).Take(&row).Error
	if errors.Is(err, gorm.ErrRecordNotFound) {
		return row, fmt.Errorf("reading held conflict %d: %w", id, ErrNotFound)
	}
	if err != nil {
		return row, fmt.Errorf("reading held conflict %d: %w", id, err)
	}
	return row, nil
}

// ConflictsFor returns the pending (open and resolved) conflicts of one
// linked pair, oldest first.
func (s *Store) ConflictsFor(ctx context.Context, entityMap, fhirID string) ([]HeldConflict, error) {
	q := s.db.WithContext(ctx).Where("entity_map = ? AND fhir_id = ? AND status IN ?", entityMap, fhirID, pending).Order("id")
	return s.findConflicts(q, "listing the held conflicts of a record")
}

// ResolvedConflicts returns up to limit (1 to MaxPageSize; zero means 100)
// conflicts a person resolved that are not yet applied, earliest
// resolution first.
func (s *Store) ResolvedConflicts(ctx context.Context, limit int) ([]HeldConflict, error) {
	limit, err := pageLimit(limit)
	if err != nil {
		return nil, err
	}
	q := s.db.WithContext(ctx).Where("status = ?", ConflictResolved).Order("resolved_at, id").Limit(limit)
	return s.findConflicts(q, "listing resolved conflicts")
}

// OpenConflictCount counts the conflicts waiting for a person.
func (s *Store) OpenConflictCount(ctx context.Context) (int64, error) {
	var n int64
	if err := s.db.WithContext(ctx).Model(&heldConflictRow{}).Where("status = ?", ConflictOpen).Count(&n).Error; err != nil {
		return 0, fmt.Errorf("counting open conflicts: %w", err)
	}
	return n, nil
}

// stateError explains why row cannot make a change.
func stateError(row heldConflictRow, change string) error {
	why := "it is " + row.Status
	if row.Resolution != "" && row.ResolvedBy != "" {
		why += fmt.Sprintf(" (%s took the %s side)", row.ResolvedBy, sideName(row.Resolution))
	}
	return fmt.Errorf("%w: held conflict %d cannot be %s: %s", ErrConflictState, row.ID, change, why)
}

func sideName(side string) string {
	if side == SideFHIR {
		return "FHIR"
	}
	return "CRM"
}

// ResolveConflict records that actor chose the take side ("fhir" or
// "crm") for open conflict id, with an audit entry in the same
// transaction. For a delete conflict, taking the deleted side applies the
// delete and taking the other keeps the record. The agent writes the
// resolution later. A conflict that is not open is refused with
// ErrConflictState.
func (s *Store) ResolveConflict(ctx context.Context, id int64, take string, actor string) error {
	if take != SideFHIR && take != SideCRM {
		return fmt.Errorf("resolving held conflict %d: %w: take %q is not fhir or crm", id, ErrInvalidConflict, short(take))
	}
	if actor == "" || len(actor) > maxShortText {
		return fmt.Errorf("resolving held conflict %d: %w: actor is empty or longer than %d bytes", id, ErrInvalidConflict, maxShortText)
	}
	now := s.now().UTC().Truncate(time.Microsecond)
	return s.db.WithContext(ctx).Transaction(func(tx *gorm.DB) error {
		row, err := s.conflictRow(tx, id)
		if err != nil {
			return err
		}
		if row.Status != ConflictOpen {
			return stateError(row, "resolved")
		}
		r := tx.Model(&heldConflictRow{}).Where("id = ? AND status = ?", id, ConflictOpen).Updates(map[string]any{
			"status": ConflictResolved, "resolution": take, "resolved_by": actor, "resolved_at": now,
		})
		if r.Error != nil {
			return fmt.Errorf("resolving held conflict %d: %w", id, r.Error)
		}
		if r.RowsAffected == 0 {
			// Settled between the read and the update.
			row, err := s.conflictRow(tx, id)
			if err != nil {
				return err
			}
			return stateError(row, "resolved")
		}
		row.Resolution = take
		return s.appendAudit(tx, AuditEntry{
			At: now, Actor: actor, Action: AuditResolveConflict,
			ObjectType: "held_conflict", ObjectID: strconv.FormatInt(id, 10),
			Before: "open", After: resolutionSummary(row),
		})
	})
}

// resolutionSummary describes a resolution for the audit trail, by
// reference and attribute name.
func resolutionSummary(row heldConflictRow) string {
	c := row.conflict()
	subject := fmt.Sprintf("%s %s/%s", c.EntityMap, c.FHIRType, c.FHIRID)
	if c.DeleteConflict() {
		if c.AppliesDelete() {
			return fmt.Sprintf("resolved: apply the delete (deleted in %s) of %s", sideName(c.DeletedSide), subject)
		}
		return fmt.Sprintf("resolved: keep the record (deleted in %s) of %s", sideName(c.DeletedSide), subject)
	}
	return fmt.Sprintf("resolved: take the %s value of %s of %s", sideName(c.Resolution), c.Attribute, subject)
}

// SettleConflictTx marks conflict id, in the caller's transaction, as
// applied (its resolution was written; it must be resolved) or superseded
// (it no longer needs writing; it must be open or resolved), and drops its
// sealed values.
func (s *Store) SettleConflictTx(tx *gorm.DB, id int64, status string) error {
	var from []string
	switch status {
	case ConflictApplied:
		from = []string{ConflictResolved}
	case ConflictSuperseded:
		from = pending
	default:
		return fmt.Errorf("settling held conflict %d: %w: status %q is not applied or superseded", id, ErrInvalidConflict, short(status))
	}
	r := tx.Model(&heldConflictRow{}).Where("id = ? AND status IN ?", id, from).Updates(map[string]any{
		"status": status, "applied_at": s.now().UTC().Truncate(time.Microsecond),
		"key_id": "", "key_check": "", "fhir_sealed": nil, "crm_sealed": nil,
	})
	if r.Error != nil {
		return fmt.Errorf("settling held conflict %d: %w", id, r.Error)
	}
	if r.RowsAffected == 1 {
		return nil
	}
	row, err := s.conflictRow(tx, id)
	if err != nil {
		return err
	}
	return stateError(row, status)
}

// ConflictValues decrypts both sides' values of conflict id for p, as
// they were when it was last held. It requires p.CanViewPHI() (else
// ErrForbidden); every call, allowed or refused, is recorded in the audit
// trail before anything is returned. ErrValuesNotKept means they were not
// stored. A value missing on its side is nil.
func (s *Store) ConflictValues(ctx context.Context, p Principal, id int64) (fhirValue, crmValue any, err error) {
	subject := ""
	if p != nil {
		subject = p.Subject()
	}
	if subject == "" {
		return nil, nil, fmt.Errorf("reading the values of held conflict %d: %w (no signed-in user)", id, ErrForbidden)
	}
	object := strconv.FormatInt(id, 10)
	entry := AuditEntry{Actor: subject, Action: AuditViewConflictValues, ObjectType: "held_conflict", ObjectID: object}
	if !p.CanViewPHI() {
		entry.Action = AuditViewConflictValuesDenied
		if err := s.AppendAudit(ctx, entry); err != nil {
			return nil, nil, fmt.Errorf("reading the values of held conflict %d: %w", id, err)
		}
		return nil, nil, fmt.Errorf("reading the values of held conflict %d: %w", id, ErrForbidden)
	}
	row, err := s.conflictRow(s.db.WithContext(ctx), id)
	if err != nil {
		return nil, nil, err
	}
	fv, cv, openErr := s.openValues(row)
	switch {
	case errors.Is(openErr, ErrValuesNotKept):
		entry.After = "refused: values not kept"
	case openErr != nil:
		entry.After = "refused: " + openErrSummary(openErr)
	}
	if err := s.AppendAudit(ctx, entry); err != nil {
		return nil, nil, fmt.Errorf("reading the values of held conflict %d: %w", id, err)
	}
	if openErr != nil {
		if !errors.Is(openErr, ErrValuesNotKept) {
			s.log.Warn("held conflict values could not be opened", "conflict_id", id, "key_id", row.KeyID, "error", openErr)
		}
		return nil, nil, fmt.Errorf("reading the values of held conflict %d: %w", id, openErr)
	}
	return fv, cv, nil
}

func (s *Store) openValues(row heldConflictRow) (fhirValue, crmValue any, err error) {
	if row.KeyID == "" {
		return nil, nil, ErrValuesNotKept
	}
	aead, err := s.keys.keyFor(row.KeyID, row.KeyCheck)
	if err != nil {
		return nil, nil, fmt.Errorf("key %q: %w", row.KeyID, err)
	}
	open := func(side string, sealed []byte) (any, error) {
		plain, err := openBytes(aead, sealed, conflictAAD(row.ID, side))
		if err != nil {
			return nil, fmt.Errorf("%s value: %w", side, err)
		}
		var v any
		if plain != nil {
			dec := json.NewDecoder(bytes.NewReader(plain))
			dec.UseNumber()
			if err := dec.Decode(&v); err != nil {
				return nil, fmt.Errorf("%s value: %w", side, ErrTampered)
			}
		}
		return v, nil
	}
	if fhirValue, err = open(SideFHIR, row.FHIRSealed); err != nil {
		return nil, nil, err
	}
	if crmValue, err = open(SideCRM, row.CRMSealed); err != nil {
		return nil, nil, err
	}
	return fhirValue, crmValue, nil
}
