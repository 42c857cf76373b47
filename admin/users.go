package admin

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/mail"
	"strings"
	"sync"
	"time"

	"gorm.io/gorm"

	"github.com/fhirsync/fhirsync/logs"
)

// Sentinel errors of the user store.
var (
	// ErrUserNotFound means no user has the given id or email.
	ErrUserNotFound = errors.New("user not found")
	// ErrEmailTaken means another user already has the email.
	ErrEmailTaken = errors.New("email is already used by another user")
	// ErrLastAdmin refuses to demote or disable the last enabled admin.
	ErrLastAdmin = errors.New("the last enabled admin cannot be demoted or disabled")
	// ErrInvalidUser wraps validation problems of a new or changed user.
	ErrInvalidUser = errors.New("invalid user")
)

// User is an admin app account.
type User struct {
	ID    int64  `json:"id"`
	Email string `json:"email"`
	Name  string `json:"name,omitempty"`
	Role  Role   `json:"role"`
	// PHI grants the phi.view permission, whatever the role.
	PHI      bool `json:"phi"`
	Disabled bool `json:"disabled"`
	// Local is true when the user signs in with a password, false for
	// accounts created by an OIDC sign-in.
	Local bool `json:"local"`
	// MustChangePassword is set for one-time passwords.
	MustChangePassword bool       `json:"must_change_password,omitempty"`
	CreatedAt          time.Time  `json:"created_at"`
	LastLoginAt        *time.Time `json:"last_login_at,omitempty"`
}

// NewUser is what Create needs. An empty Password creates an account that
// cannot sign in with a password (OIDC only).
type NewUser struct {
	Email    string
	Name     string
	Role     Role
	PHI      bool
	Password string
	// MustChangePassword forces a password change at the next sign-in.
	MustChangePassword bool
}

// auditTrail is where every admin action is recorded, and where auditors
// read it (logs.Store). AppendAudit must be durable when it returns nil.
type auditTrail interface {
	AppendAudit(ctx context.Context, e logs.AuditEntry) error
	Audit(ctx context.Context, f logs.AuditFilter, after string, limit int) (logs.AuditPage, error)
	ExportAudit(ctx context.Context, w io.Writer, format logs.Format, f logs.AuditFilter) (int, error)
}

// Users is the account store. Every change it makes is recorded in the
// audit trail under the acting user's name. It is safe for concurrent use.
type Users struct {
	db    *gorm.DB
	audit auditTrail
	now   func() time.Time
	argon argonParams
	// verify checks a password against a stored hash (verifyPassword;
	// tests count calls through it).
	verify func(encoded, pw string) (bool, error)
	// slots bounds concurrent verifications (maxVerifications).
	slots chan struct{}
}

// NewUsers opens the account store on a migrated database.
func NewUsers(db *gorm.DB) (*Users, error) {
	if db == nil {
		return nil, errors.New("admin: users need a database")
	}
	trail, err := logs.New(db, logs.Config{}, nil)
	if err != nil {
		return nil, fmt.Errorf("opening the audit trail: %w", err)
	}
	return &Users{db: db, audit: trail, now: time.Now, argon: defaultArgon, verify: verifyPassword,
		slots: make(chan struct{}, maxVerifications)}, nil
}

type userRow struct {
	ID                 int64 `gorm:"primaryKey"`
	Email              string
	Name               string
	Role               string
	PHI                bool `gorm:"column:phi"`
	Disabled           bool
	PasswordHash       string
	MustChangePassword bool
	OIDCSubject        *string `gorm:"column:oidc_subject"`
	CreatedAt          time.Time
	UpdatedAt          time.Time
	LastLoginAt        *time.Time
}

func (userRow) TableName() string { return "admin_users" }

func (r userRow) user() User {
	u := User{ID: r.ID, Email: r.Email, Name: r.Name, Role: Role(r.Role), PHI: r.PHI, Disabled: r.Disabled,
		Local: r.OIDCSubject == nil, MustChangePassword: r.MustChangePassword, CreatedAt: r.CreatedAt.UTC()}
	if r.LastLoginAt != nil {
		t := r.LastLoginAt.UTC()
		u.LastLoginAt = &t
	}
	return u
}

// stamp is the time stored in the database: UTC, whole seconds, so that
// SQLite's text timestamps compare in order.
func stamp(t time.Time) time.Time { return t.UTC().Truncate(time.Second) }

func normalizeEmail(s string) (string, error) {
	s = strings.TrimSpace(s)
	a, err := mail.ParseAddress(s)
	if err != nil || a.Address != s || len(s) > 254 {
		return "", fmt.Errorf("%w: %q is not an email address", ErrInvalidUser, s)
	}
	return strings.ToLower(s), nil
}

func isUniqueViolation(err error) bool {
	if errors.Is(err, gorm.ErrDuplicatedKey) {
		return true
	}
	msg := strings.ToLower(err.Error())
	return strings.Contains(msg, "unique") || strings.Contains(msg, "duplicate key")
}

// Create adds a user. actor names who did it, for the audit trail.
func (s *Users) Create(ctx context.Context, actor string, n NewUser) (User, error) {
	email, err := normalizeEmail(n.Email)
	var errs []error
	if err != nil {
		errs = append(errs, err)
	}
	if _, err := ParseRole(string(n.Role)); err != nil {
		errs = append(errs, fmt.Errorf("%w: %w", ErrInvalidUser, err))
	}
	if len(n.Name) > 200 {
		errs = append(errs, fmt.Errorf("%w: name is longer than 200 characters", ErrInvalidUser))
	}
	if n.Password != "" {
		if err := checkPasswordPolicy(n.Password); err != nil {
			errs = append(errs, fmt.Errorf("%w: %w", ErrInvalidUser, err))
		}
	}
	if len(errs) > 0 {
		return User{}, errors.Join(errs...)
	}
	return s.insert(ctx, actor, userRow{Email: email, Name: strings.TrimSpace(n.Name), Role: string(n.Role),
		PHI: n.PHI, MustChangePassword: n.MustChangePassword && n.Password != ""}, n.Password)
}

func (s *Users) insert(ctx context.Context, actor string, row userRow, password string) (User, error) {
	if password != "" {
		row.PasswordHash = hashPassword(password, s.argon)
	}
	row.CreatedAt = stamp(s.now())
	row.UpdatedAt = row.CreatedAt
	if err := s.db.WithContext(ctx).Create(&row).Error; err != nil {
		if isUniqueViolation(err) {
			return User{}, fmt.Errorf("creating user %s: %w", row.Email, ErrEmailTaken)
		}
		return User{}, fmt.Errorf("creating user %s: %w", row.Email, err)
	}
	u := row.user()
	after := fmt.Sprintf("role %s, phi %t", u.Role, u.PHI)
	if !u.Local {
		after += ", oidc"
	}
	return u, s.record(ctx, actor, "user.create", u.ID, "", after)
}

// List returns every user, ordered by email.
func (s *Users) List(ctx context.Context) ([]User, error) {
	var rows []userRow
	if err := s.db.WithContext(ctx).Order("email").Find(&rows).Error; err != nil {
		return nil, fmt.Errorf("listing users: %w", err)
	}
	out := make([]User, len(rows))
	for i, r := range rows {
		out[i] = r.user()
	}
	return out, nil
}

// Get returns the user with id.
func (s *Users) Get(ctx context.Context, id int64) (User, error) {
	r, err := s.row(ctx, s.db, "id = ?", id)
	return r.user(), err
}

// ByEmail returns the user with email (case-insensitive).
func (s *Users) ByEmail(ctx context.Context, email string) (User, error) {
	r, err := s.row(ctx, s.db, "email = ?", strings.ToLower(strings.TrimSpace(email)))
	return r.user(), err
}

func (s *Users) row(ctx context.Context, db *gorm.DB, query string, arg any) (userRow, error) {
	var rows []userRow
	if err := db.WithContext(ctx).Where(query, arg).Limit(1).Find(&rows).Error; err != nil {
		return userRow{}, fmt.Errorf("reading user: %w", err)
	}
	if len(rows) == 0 {
		return userRow{}, ErrUserNotFound
	}
	return rows[0], nil
}

// SetRole changes a user's role.
func (s *Users) SetRole(ctx context.Context, actor string, id int64, role Role) error {
	if _, err := ParseRole(string(role)); err != nil {
		return fmt.Errorf("%w: %w", ErrInvalidUser, err)
	}
	return s.change(ctx, actor, id, "user.role", func(r *userRow) (string, string, map[string]any) {
		return "role " + r.Role, "role " + string(role), map[string]any{"role": string(role)}
	})
}

// SetPHI grants or withdraws the PHI permission.
func (s *Users) SetPHI(ctx context.Context, actor string, id int64, phi bool) error {
	return s.change(ctx, actor, id, "user.phi", func(r *userRow) (string, string, map[string]any) {
		return fmt.Sprintf("phi %t", r.PHI), fmt.Sprintf("phi %t", phi), map[string]any{"phi": phi}
	})
}

// SetDisabled disables or re-enables a user. Disabling ends the user's
// sessions.
func (s *Users) SetDisabled(ctx context.Context, actor string, id int64, disabled bool) error {
	action := "user.enable"
	if disabled {
		action = "user.disable"
	}
	return s.change(ctx, actor, id, action, func(r *userRow) (string, string, map[string]any) {
		return fmt.Sprintf("disabled %t", r.Disabled), fmt.Sprintf("disabled %t", disabled), map[string]any{"disabled": disabled}
	})
}

// SetPassword sets a local user's password and ends their sessions.
// mustChange forces another change at the next sign-in (a one-time
// password given by an admin).
func (s *Users) SetPassword(ctx context.Context, actor string, id int64, password string, mustChange bool) error {
	if err := checkPasswordPolicy(password); err != nil {
		return fmt.Errorf("%w: %w", ErrInvalidUser, err)
	}
	hash := hashPassword(password, s.argon)
	return s.change(ctx, actor, id, "user.password", func(r *userRow) (string, string, map[string]any) {
		return "", fmt.Sprintf("must change %t", mustChange), map[string]any{"password_hash": hash, "must_change_password": mustChange}
	})
}

// change applies one update inside a transaction, keeps at least one
// enabled admin, ends sessions when access shrinks, and records it.
func (s *Users) change(ctx context.Context, actor string, id int64, action string,
	plan func(*userRow) (before, after string, cols map[string]any)) error {
	var before, after string
	err := s.db.WithContext(ctx).Transaction(func(tx *gorm.DB) error {
		r, err := s.row(ctx, tx, "id = ?", id)
		if err != nil {
			return err
		}
		var cols map[string]any
		before, after, cols = plan(&r)
		demotes := r.Role == string(RoleAdmin) && !r.Disabled &&
			((cols["role"] != nil && cols["role"] != string(RoleAdmin)) || cols["disabled"] == true)
		if demotes {
			var others int64
			if err := tx.Model(&userRow{}).Where("role = ? AND disabled = ? AND id <> ?", RoleAdmin, false, id).
				Count(&others).Error; err != nil {
				return err
			}
			if others == 0 {
				return ErrLastAdmin
			}
		}
		if _, ok := cols["password_hash"]; ok && r.OIDCSubject != nil {
			return fmt.Errorf("%w: %s signs in with OIDC and has no password", ErrInvalidUser, r.Email)
		}
		cols["updated_at"] = stamp(s.now())
		if err := tx.Model(&userRow{}).Where("id = ?", id).Updates(cols).Error; err != nil {
			return err
		}
		if cols["disabled"] == true || cols["password_hash"] != nil || cols["role"] != nil {
			return tx.Where("user_id = ?", id).Delete(&sessionRow{}).Error
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("%s for user %d: %w", action, id, err)
	}
	return s.record(ctx, actor, action, id, before, after)
}

func (s *Users) record(ctx context.Context, actor, action string, id int64, before, after string) error {
	err := s.audit.AppendAudit(ctx, logs.AuditEntry{At: s.now(), Actor: actor, Action: action,
		ObjectType: "user", ObjectID: fmt.Sprint(id), Before: before, After: after})
	if err != nil {
		return fmt.Errorf("recording %s: %w", action, err)
	}
	return nil
}

// errBusy means too many passwords are being verified at once; the caller
// should answer 503 and let the client retry.
var errBusy = errors.New("too many sign-ins in progress")

// maxVerifications bounds concurrent password verifications per process:
// each argon2id verification takes its memory cost (19 MiB by default), so
// a burst of guesses must not turn into a burst of memory.
const maxVerifications = 4

// verifyWait is how long a verification waits for a free slot before the
// request is refused with errBusy.
const verifyWait = 3 * time.Second

// authResult is the outcome of a password check.
type authResult struct {
	User User
	// Known is true when an account has the email (for the audit trail
	// only: callers must not show the difference).
	Known bool
	// OK is true when the password is right and the account enabled.
	OK bool
}

// authenticate checks a local password. Unknown emails cost as much time as
// known ones. At most maxVerifications run at once; a request that cannot
// get a slot within verifyWait gets errBusy.
func (s *Users) authenticate(ctx context.Context, email, password string) (authResult, error) {
	r, err := s.row(ctx, s.db, "email = ?", strings.ToLower(strings.TrimSpace(email)))
	if err != nil && !errors.Is(err, ErrUserNotFound) {
		return authResult{}, err
	}
	known := err == nil
	release, err := s.acquireVerification(ctx)
	if err != nil {
		return authResult{Known: known}, err
	}
	defer release()
	if !known || r.PasswordHash == "" {
		_, _ = s.verify(dummyHash(), password)
		return authResult{Known: known}, nil
	}
	ok, err := s.verify(r.PasswordHash, password)
	if err != nil {
		return authResult{Known: known}, fmt.Errorf("checking password of user %d: %w", r.ID, err)
	}
	if !ok || r.Disabled {
		return authResult{Known: known}, nil
	}
	return authResult{User: r.user(), Known: true, OK: true}, nil
}

// acquireVerification takes a verification slot, waiting at most
// verifyWait.
func (s *Users) acquireVerification(ctx context.Context) (func(), error) {
	t := time.NewTimer(verifyWait)
	defer t.Stop()
	select {
	case s.slots <- struct{}{}:
		return func() { <-s.slots }, nil
	case <-t.C:
		return nil, errBusy
	case <-ctx.Done():
		return nil, ctx.Err()
	}
}

// dummyHash is verified when the account does not exist, so that timing
// does not reveal which emails have accounts.
var dummyHash = sync.OnceValue(func() string { return hashPassword(randomToken(16), defaultArgon) })

// touchLogin stamps the last sign-in time.
func (s *Users) touchLogin(ctx context.Context, id int64) error {
	return s.db.WithContext(ctx).Model(&userRow{}).Where("id = ?", id).
		Update("last_login_at", stamp(s.now())).Error
}

// count reports how many users exist.
func (s *Users) count(ctx context.Context) (int64, error) {
	var n int64
	err := s.db.WithContext(ctx).Model(&userRow{}).Count(&n).Error
	return n, err
}
