package admin

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"

	"gorm.io/gorm"
)

// BootstrapEmail is the account Bootstrap creates.
const BootstrapEmail = "admin@localhost"

// PasswordDelivery is where Bootstrap hands over the one-time password:
// never the process log, which is shipped and kept where passwords must
// not be.
type PasswordDelivery struct {
	// Terminal, when set, is an interactive terminal the password is
	// printed to, once.
	Terminal io.Writer
	// File is written (mode 0600, replacing any earlier file) when
	// Terminal is nil; the log names the file, not the password.
	File string
}

// Bootstrap creates the first admin when the database has no user at all
// and delivers its one-time password, once. The password must be changed
// at first sign-in. With any user present it does nothing, so it is safe
// to call at every start and from several replicas.
func Bootstrap(ctx context.Context, db *gorm.DB, log *slog.Logger, to PasswordDelivery) error {
	if to.Terminal == nil && to.File == "" {
		return errors.New("admin: bootstrap needs a terminal or a file for the one-time password")
	}
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
	if to.Terminal != nil {
		_, err := fmt.Fprintf(to.Terminal, "\nNo admin user existed. Sign in as %s with this one-time password and change it:\n\n    %s\n\n", u.Email, pw)
		if err != nil {
			return fmt.Errorf("printing the one-time password: %w", err)
		}
		log.Warn("no admin user existed; created one and printed its one-time password to the terminal", "email", u.Email)
		return nil
	}
	if err := writeSecretFile(to.File, []byte(pw+"\n")); err != nil {
		return fmt.Errorf("writing the one-time password: %w", err)
	}
	log.Warn("no admin user existed; created one with a one-time password in a file readable only by this user; "+
		"sign in, change it, then delete the file", "email", u.Email, "password_file", to.File)
	return nil
}

// writeSecretFile writes b to a new file at path with mode 0600. An
// existing file (or link) is removed first rather than written through, so
// its old permissions or target cannot expose the secret.
func writeSecretFile(path string, b []byte) error {
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return err
	}
	if err := os.Remove(path); err != nil && !errors.Is(err, os.ErrNotExist) {
		return err
	}
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return err
	}
	if _, err := f.Write(b); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}
