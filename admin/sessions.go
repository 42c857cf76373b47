package admin

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"net/http"
	"time"

	"gorm.io/gorm"
)

// errNoSession means the request carries no valid session.
var errNoSession = errors.New("no valid session")

// sessionRow is one signed-in browser. The cookie holds a random 256-bit
// id; the table holds only its SHA-256, so a database leak does not leak
// sessions.
type sessionRow struct {
	IDHash     string `gorm:"primaryKey"`
	UserID     int64
	CreatedAt  time.Time
	LastSeenAt time.Time
	ExpiresAt  time.Time
}

func (sessionRow) TableName() string { return "admin_sessions" }

func hashToken(token string) string {
	sum := sha256.Sum256([]byte(token))
	return hex.EncodeToString(sum[:])
}

// sessions issues, checks and ends sessions.
type sessions struct {
	db       *gorm.DB
	users    *Users
	now      func() time.Time
	idle     time.Duration
	absolute time.Duration
	secure   bool
}

// cookieName uses the __Host- prefix when cookies are Secure, which pins
// the cookie to this host and path /.
func (s *sessions) cookieName() string {
	if s.secure {
		return "__Host-fhirsync_session"
	}
	return "fhirsync_session"
}

// start creates a session for userID and sets its cookie. A session the
// request already carried is deleted, so an id planted before sign-in is
// never promoted.
func (s *sessions) start(ctx context.Context, w http.ResponseWriter, r *http.Request, userID int64) error {
	if c, err := r.Cookie(s.cookieName()); err == nil && c.Value != "" {
		s.db.WithContext(ctx).Where("id_hash = ?", hashToken(c.Value)).Delete(&sessionRow{})
	}
	token := randomToken(32)
	now := stamp(s.now())
	row := sessionRow{IDHash: hashToken(token), UserID: userID, CreatedAt: now, LastSeenAt: now, ExpiresAt: now.Add(s.absolute)}
	if err := s.db.WithContext(ctx).Create(&row).Error; err != nil {
		return fmt.Errorf("starting a session for user %d: %w", userID, err)
	}
	// Clean up expired sessions now and then; every sign-in is often enough.
	s.db.WithContext(ctx).Where("expires_at < ?", now).Delete(&sessionRow{})
	http.SetCookie(w, &http.Cookie{Name: s.cookieName(), Value: token, Path: "/", HttpOnly: true,
		Secure: s.secure, SameSite: http.SameSiteLaxMode, Expires: row.ExpiresAt})
	return nil
}

// user returns the signed-in user of r, or errNoSession. It enforces the
// idle and absolute expiry and refuses disabled users.
func (s *sessions) user(r *http.Request) (User, error) {
	c, err := r.Cookie(s.cookieName())
	if err != nil || c.Value == "" {
		return User{}, errNoSession
	}
	ctx := r.Context()
	id := hashToken(c.Value)
	var rows []sessionRow
	if err := s.db.WithContext(ctx).Where("id_hash = ?", id).Limit(1).Find(&rows).Error; err != nil {
		return User{}, fmt.Errorf("reading session: %w", err)
	}
	if len(rows) == 0 {
		return User{}, errNoSession
	}
	row, now := rows[0], s.now()
	if now.After(row.ExpiresAt) || now.After(row.LastSeenAt.Add(s.idle)) {
		s.db.WithContext(ctx).Where("id_hash = ?", id).Delete(&sessionRow{})
		return User{}, errNoSession
	}
	u, err := s.users.Get(ctx, row.UserID)
	if errors.Is(err, ErrUserNotFound) || u.Disabled {
		return User{}, errNoSession
	}
	if err != nil {
		return User{}, err
	}
	// Refresh the idle clock at most once a minute to spare the database.
	if now.Sub(row.LastSeenAt) > time.Minute {
		s.db.WithContext(ctx).Model(&sessionRow{}).Where("id_hash = ?", id).Update("last_seen_at", stamp(now))
	}
	return u, nil
}

// end deletes the session of r and clears its cookie.
func (s *sessions) end(w http.ResponseWriter, r *http.Request) error {
	http.SetCookie(w, &http.Cookie{Name: s.cookieName(), Value: "", Path: "/", HttpOnly: true,
		Secure: s.secure, SameSite: http.SameSiteLaxMode, MaxAge: -1})
	c, err := r.Cookie(s.cookieName())
	if err != nil || c.Value == "" {
		return nil
	}
	if err := s.db.WithContext(r.Context()).Where("id_hash = ?", hashToken(c.Value)).Delete(&sessionRow{}).Error; err != nil {
		return fmt.Errorf("ending session: %w", err)
	}
	return nil
}
