package logs

import (
	"context"
	"crypto/aes"
	"crypto/cipher"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"sort"
	"strconv"
	"time"

	"gorm.io/gorm"
)

// Errors reading a capture. Each names a different fix, so they are kept
// apart: configure the key, restore the right key, or treat the row as
// tampered with.
var (
	// ErrForbidden means the caller lacks the PHI permission.
	ErrForbidden = errors.New("the PHI permission is required to read payload captures")
	// ErrUnknownKey means the capture was sealed with a key id that is not
	// configured in logs.capture.keys.
	ErrUnknownKey = errors.New("capture key is not configured")
	// ErrWrongKey means a key with the capture's key id is configured, but
	// it is not the key that sealed the capture.
	ErrWrongKey = errors.New("configured capture key does not match the key that sealed the capture")
	// ErrTampered means the sealed bytes failed authentication: they were
	// altered, truncated or moved from another decision.
	ErrTampered = errors.New("capture failed authentication (altered or moved ciphertext)")
)

// Principal is the caller of a PHI read, as the admin app knows it.
type Principal interface {
	// Subject identifies the user in the audit trail (a user name or an
	// OIDC subject), never empty for a signed-in user.
	Subject() string
	// CanViewPHI reports whether the user holds the PHI permission.
	CanViewPHI() bool
}

// Capture is a decrypted payload capture.
type Capture struct {
	// DecisionID is the decision the payloads belong to.
	DecisionID int64
	// CapturedAt is when the payloads were sealed.
	CapturedAt time.Time
	// KeyID names the key that sealed them.
	KeyID string
	// Snapshots are the decrypted payloads. They contain PHI.
	Snapshots Snapshots
}

// keyring holds the AES-256 keys by id; sealID names the one that seals.
type keyring struct {
	sealID string
	aeads  map[string]cipher.AEAD
	checks map[string]string
}

func newKeyring(c CaptureConfig) (*keyring, error) {
	kr := &keyring{sealID: c.KeyID, aeads: map[string]cipher.AEAD{}, checks: map[string]string{}}
	var errs []error
	add := func(name, id, key string) {
		raw, err := base64.StdEncoding.DecodeString(key)
		if err != nil || len(raw) != 32 {
			errs = append(errs, fmt.Errorf("%s must be base64 of exactly 32 bytes", name))
			return
		}
		block, err := aes.NewCipher(raw)
		if err != nil {
			errs = append(errs, fmt.Errorf("%s: %v", name, err))
			return
		}
		aead, err := cipher.NewGCM(block)
		if err != nil {
			errs = append(errs, fmt.Errorf("%s: %v", name, err))
			return
		}
		kr.aeads[id] = aead
		kr.checks[id] = keyCheck(raw)
	}
	ids := make([]string, 0, len(c.OldKeys))
	for id := range c.OldKeys {
		ids = append(ids, id)
	}
	sort.Strings(ids)
	for _, id := range ids {
		if id == c.KeyID {
			errs = append(errs, fmt.Errorf("logs.capture.old_keys.%s repeats logs.capture.key_id", id))
			continue
		}
		add("logs.capture.old_keys."+id, id, c.OldKeys[id])
	}
	switch {
	case c.Key != "" && c.KeyID == "":
		errs = append(errs, errors.New("logs.capture.key_id is required with logs.capture.key"))
	case c.Key != "":
		add("logs.capture.key", c.KeyID, c.Key)
	case c.Enabled:
		errs = append(errs, errors.New("logs.capture.key and logs.capture.key_id are required when capture is enabled"))
	}
	if len(errs) > 0 {
		return nil, errors.Join(errs...)
	}
	return kr, nil
}

// keyCheck fingerprints a key so a wrong key can be told from tampering.
// It reveals nothing useful about a 256-bit key.
func keyCheck(raw []byte) string {
	sum := sha256.Sum256(append([]byte("fhirsync capture key check\x00"), raw...))
	return hex.EncodeToString(sum[:8])
}

// captureRow is the sync_decision_captures table.
type captureRow struct {
	DecisionID   int64 `gorm:"primaryKey;autoIncrement:false"`
	CapturedAt   time.Time
	KeyID        string
	KeyCheck     string
	SourceSealed []byte
	TargetSealed []byte
	ErrorSealed  []byte // the endpoint's full error message (migration 0017)
}

func (captureRow) TableName() string { return "sync_decision_captures" }

// aad binds a sealed payload to its decision and part, so ciphertext
// copied to another row or swapped between source and target is refused.
func aad(decisionID int64, part string) []byte {
	b := binary.BigEndian.AppendUint64([]byte("fhirsync capture v1\x00"+part+"\x00"), uint64(decisionID))
	return b
}

// canSeal reports whether a sealing key is configured.
func (kr *keyring) canSeal() bool { return kr != nil && kr.aeads[kr.sealID] != nil }

// sealBytes seals plain under the sealing key with associated data ad;
// nil stays nil. The nonce leads the result.
func (kr *keyring) sealBytes(plain, ad []byte) ([]byte, error) {
	if plain == nil {
		return nil, nil
	}
	aead := kr.aeads[kr.sealID]
	nonce := make([]byte, aead.NonceSize(), aead.NonceSize()+len(plain)+aead.Overhead())
	if _, err := rand.Read(nonce); err != nil {
		return nil, err
	}
	return aead.Seal(nonce, nonce, plain, ad), nil
}

// keyFor returns the AEAD of keyID, telling a key that is not configured
// (ErrUnknownKey) from one that is not the key whose check was stored
// (ErrWrongKey).
func (kr *keyring) keyFor(keyID, check string) (cipher.AEAD, error) {
	aead, ok := kr.aeads[keyID]
	if !ok {
		return nil, ErrUnknownKey
	}
	if kr.checks[keyID] != check {
		return nil, ErrWrongKey
	}
	return aead, nil
}

// openBytes opens what sealBytes sealed with the same associated data;
// nil stays nil. A failure is ErrTampered.
func openBytes(aead cipher.AEAD, sealed, ad []byte) ([]byte, error) {
	if sealed == nil {
		return nil, nil
	}
	n := aead.NonceSize()
	if len(sealed) < n+aead.Overhead() {
		return nil, ErrTampered
	}
	plain, err := aead.Open(nil, sealed[:n], sealed[n:], ad)
	if err != nil {
		return nil, ErrTampered
	}
	return plain, nil
}

func (kr *keyring) seal(decisionID int64, now time.Time, s *Snapshots) (captureRow, error) {
	src, err := kr.sealBytes(s.Source, aad(decisionID, "source"))
	if err != nil {
		return captureRow{}, err
	}
	tgt, err := kr.sealBytes(s.Target, aad(decisionID, "target"))
	if err != nil {
		return captureRow{}, err
	}
	msg, err := kr.sealBytes(s.Error, aad(decisionID, "error"))
	if err != nil {
		return captureRow{}, err
	}
	return captureRow{DecisionID: decisionID, CapturedAt: now, KeyID: kr.sealID, KeyCheck: kr.checks[kr.sealID], SourceSealed: src, TargetSealed: tgt, ErrorSealed: msg}, nil
}

func (kr *keyring) open(row captureRow) (Snapshots, error) {
	aead, err := kr.keyFor(row.KeyID, row.KeyCheck)
	if err != nil {
		return Snapshots{}, fmt.Errorf("capture of decision %d: key %q: %w", row.DecisionID, row.KeyID, err)
	}
	src, err := openBytes(aead, row.SourceSealed, aad(row.DecisionID, "source"))
	if err != nil {
		return Snapshots{}, fmt.Errorf("capture of decision %d, source: %w", row.DecisionID, err)
	}
	tgt, err := openBytes(aead, row.TargetSealed, aad(row.DecisionID, "target"))
	if err != nil {
		return Snapshots{}, fmt.Errorf("capture of decision %d, target: %w", row.DecisionID, err)
	}
	msg, err := openBytes(aead, row.ErrorSealed, aad(row.DecisionID, "error"))
	if err != nil {
		return Snapshots{}, fmt.Errorf("capture of decision %d, error message: %w", row.DecisionID, err)
	}
	return Snapshots{Source: src, Target: tgt, Error: msg}, nil
}

// Audit actions written by the sync log itself.
const (
	// AuditViewCapture records a successful read of a payload capture.
	AuditViewCapture = "capture.view"
	// AuditViewCaptureDenied records a refused read of a payload capture.
	AuditViewCaptureDenied = "capture.view_denied"
)

// ReadCapture decrypts the payload capture of decision id for p. It
// requires p.CanViewPHI(); every call, allowed or refused, is recorded in
// the audit trail before anything is returned, and no plaintext is
// returned when the audit entry cannot be written.
func (s *Store) ReadCapture(ctx context.Context, p Principal, id int64) (Capture, error) {
	subject := ""
	if p != nil {
		subject = p.Subject()
	}
	if subject == "" {
		return Capture{}, fmt.Errorf("reading capture of decision %d: %w (no signed-in user)", id, ErrForbidden)
	}
	object := strconv.FormatInt(id, 10)
	if !p.CanViewPHI() {
		if err := s.AppendAudit(ctx, AuditEntry{Actor: subject, Action: AuditViewCaptureDenied, ObjectType: "decision", ObjectID: object}); err != nil {
			return Capture{}, fmt.Errorf("reading capture of decision %d: %w", id, err)
		}
		return Capture{}, fmt.Errorf("reading capture of decision %d: %w", id, ErrForbidden)
	}
	var row captureRow
	err := s.db.WithContext(ctx).Where("decision_id = ?", id).Take(&row).Error
	if errors.Is(err, gorm.ErrRecordNotFound) {
		return Capture{}, fmt.Errorf("reading capture of decision %d: %w", id, ErrNotFound)
	}
	if err != nil {
		return Capture{}, fmt.Errorf("reading capture of decision %d: %w", id, err)
	}
	snaps, openErr := s.keys.open(row)
	entry := AuditEntry{Actor: subject, Action: AuditViewCapture, ObjectType: "decision", ObjectID: object}
	if openErr != nil {
		entry.After = "refused: " + openErrSummary(openErr)
	}
	if err := s.AppendAudit(ctx, entry); err != nil {
		return Capture{}, fmt.Errorf("reading capture of decision %d: %w", id, err)
	}
	if openErr != nil {
		s.log.Warn("payload capture could not be opened", "decision_id", id, "key_id", row.KeyID, "error", openErr)
		return Capture{}, fmt.Errorf("reading capture of decision %d: %w", id, openErr)
	}
	return Capture{DecisionID: id, CapturedAt: row.CapturedAt.UTC(), KeyID: row.KeyID, Snapshots: snaps}, nil
}

func openErrSummary(err error) string {
	switch {
	case errors.Is(err, ErrUnknownKey):
		return "unknown key"
	case errors.Is(err, ErrWrongKey):
		return "wrong key"
	default:
		return "failed authentication"
	}
}
