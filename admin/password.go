package admin

import (
	"crypto/rand"
	"crypto/subtle"
	"encoding/base64"
	"errors"
	"fmt"
	"strings"

	"golang.org/x/crypto/argon2"
)

// argonParams are the argon2id cost parameters; they are stored in every
// hash so they can be raised later without breaking existing passwords.
type argonParams struct {
	memoryKiB uint32
	time      uint32
	threads   uint8
}

// defaultArgon follows the OWASP minimum for argon2id (19 MiB, 2 passes).
var defaultArgon = argonParams{memoryKiB: 19 * 1024, time: 2, threads: 1}

const (
	minPasswordLen = 12
	maxPasswordLen = 256
)

var errBadHash = errors.New("stored password hash is malformed")

// Reasons checkPasswordPolicy refuses a password; the message of each is
// safe to show to the user.
var (
	errPasswordLength = fmt.Errorf("password must be %d to %d characters", minPasswordLen, maxPasswordLen)
	errPasswordCommon = errors.New("password is too common or too simple; choose another")
)

// checkPasswordPolicy is the password rule: long enough, not absurd, and
// not a common or trivially patterned password.
func checkPasswordPolicy(pw string) error {
	if n := len([]rune(pw)); n < minPasswordLen || len(pw) > maxPasswordLen {
		return errPasswordLength
	}
	if isCommonPassword(pw) {
		return errPasswordCommon
	}
	return nil
}

// passwordPolicyMessage is what to show for a refused password.
func passwordPolicyMessage(err error) string {
	if errors.Is(err, errPasswordCommon) {
		return "This password is too common or too simple. Choose another."
	}
	return fmt.Sprintf("The password must be %d to %d characters.", minPasswordLen, maxPasswordLen)
}

// hashPassword returns an encoded argon2id hash in the PHC string format:
// $argon2id$v=19$m=19456,t=2,p=1$<salt>$<hash>.
func hashPassword(pw string, p argonParams) string {
	salt := make([]byte, 16)
	_, _ = rand.Read(salt)
	sum := argon2.IDKey([]byte(pw), salt, p.time, p.memoryKiB, p.threads, 32)
	b64 := base64.RawStdEncoding
	return fmt.Sprintf("$argon2id$v=%d$m=%d,t=%d,p=%d$%s$%s",
		argon2.Version, p.memoryKiB, p.time, p.threads, b64.EncodeToString(salt), b64.EncodeToString(sum))
}

// verifyPassword reports whether pw matches the encoded hash, in constant
// time with respect to the hash contents.
func verifyPassword(encoded, pw string) (bool, error) {
	parts := strings.Split(encoded, "$")
	if len(parts) != 6 || parts[1] != "argon2id" {
		return false, errBadHash
	}
	var version int
	if _, err := fmt.Sscanf(parts[2], "v=%d", &version); err != nil || version != argon2.Version {
		return false, errBadHash
	}
	var p argonParams
	if _, err := fmt.Sscanf(parts[3], "m=%d,t=%d,p=%d", &p.memoryKiB, &p.time, &p.threads); err != nil ||
		p.memoryKiB == 0 || p.time == 0 || p.threads == 0 || p.memoryKiB > 1<<21 {
		return false, errBadHash
	}
	b64 := base64.RawStdEncoding
	salt, err1 := b64.DecodeString(parts[4])
	want, err2 := b64.DecodeString(parts[5])
	if err1 != nil || err2 != nil || len(want) == 0 {
		return false, errBadHash
	}
	got := argon2.IDKey([]byte(pw), salt, p.time, p.memoryKiB, p.threads, uint32(len(want)))
	return subtle.ConstantTimeCompare(got, want) == 1, nil
}

// randomToken returns n random bytes, base64url-encoded without padding.
func randomToken(n int) string {
	b := make([]byte, n)
	_, _ = rand.Read(b)
	return base64.RawURLEncoding.EncodeToString(b)
}

// generatePassword makes a one-time password with 128 bits of entropy
// (26 base32 characters).
func generatePassword() string { return rand.Text() }
