package admin

import (
	"context"
	"errors"
	"fmt"
	"log/slog"

	"gorm.io/gorm"
)

// BootstrapEmail is the account Bootstrap creates.
const BootstrapEmail = "admin@localhost"

// Bootstrap creates the first admin when the database has no user at all,
// and writes its one-time password to log, once. The password must be
// changed at first sign-in. With any user present it does nothing, so it
// is safe to call at every start and from several replicas.
func Bootstrap(ctx context.Context, db *gorm.DB, log *slog.Logger) error {
	users, err := NewUsers(db)
	if err != nil {
		return err
	}
	n, err := users.count(ctx)
	if err != nil {
		return fmt.Errorf("counting admin users: %w", err)
	}
	if n > 0 {
		return nil
	}
	pw := generatePassword()
	u, err := users.Create(ctx, "bootstrap", NewUser{Email: BootstrapEmail, Name: "First admin", Role: RoleAdmin,
		Password: pw, MustChangePassword: true})
	if errors.Is(err, ErrEmailTaken) {
		return nil // another replica bootstrapped at the same moment
	}
	if err != nil {
		return fmt.Errorf("creating the first admin: %w", err)
	}
	log.Warn("no admin user existed; created one with a one-time password, change it at first sign-in",
		"email", u.Email, "one_time_password", pw)
	return nil
}
