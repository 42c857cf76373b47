package admin

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"gorm.io/gorm"

	"github.com/fhirsync/fhirsync/storage/storagetest"
)

func TestLoginThrottlePerAccount(t *testing.T) {
	storagetest.Each(t, func(t *testing.T, db *gorm.DB) {
		e := newTestEnv(t, db, AppConfig{})
		e.user("ops@example.org", RoleOperator, false)

		for i := range accountLockAfter {
			if _, resp := e.login("ops@example.org", "wrong password"); resp.StatusCode != http.StatusUnauthorized {
				t.Fatalf("wrong password %d = %d, want 401", i+1, resp.StatusCode)
			}
		}
		// Locked: even the right password is refused, without being checked.
		_, resp := e.login("ops@example.org", testPassword)
		if resp.StatusCode != http.StatusTooManyRequests || resp.Header.Get("Retry-After") != "2" {
			t.Fatalf("right password while locked = %d (Retry-After %q), want 429 after 2 s", resp.StatusCode, resp.Header.Get("Retry-After"))
		}
		// Another account from the same address is not affected.
		e.user("other@example.org", RoleViewer, false)
		if _, resp := e.login("other@example.org", testPassword); resp.StatusCode != http.StatusSeeOther {
			t.Errorf("other account = %d, want 303", resp.StatusCode)
		}

		// The lock doubles with each further failure.
		e.clock.advance(2 * time.Second)
		if _, resp := e.login("ops@example.org", "wrong again"); resp.StatusCode != http.StatusUnauthorized {
			t.Fatalf("wrong password after the lock = %d, want 401", resp.StatusCode)
		}
		if _, resp := e.login("ops@example.org", testPassword); resp.Header.Get("Retry-After") != "4" {
			t.Fatalf("second lock = %d (Retry-After %q), want 4 s", resp.StatusCode, resp.Header.Get("Retry-After"))
		}
		e.clock.advance(4 * time.Second)
		if _, resp := e.login("ops@example.org", testPassword); resp.StatusCode != http.StatusSeeOther {
			t.Fatalf("right password after the lock = %d, want 303", resp.StatusCode)
		}
		// Success forgets the failures: one more failure does not lock.
		e.login("ops@example.org", "wrong")
		if _, resp := e.login("ops@example.org", testPassword); resp.StatusCode != http.StatusSeeOther {
			t.Errorf("after reset = %d, want 303", resp.StatusCode)
		}

		actions := e.auditActions()
		for action, want := range map[string]int{"ops@example.org login.failure": 7,
			// Two refusals within a minute: one entry (auditLimiter).
			"ops@example.org login.throttled": 1,
			"ops@example.org login.success":   2, "other@example.org login.success": 1} {
			if got := count(actions, action); got != want {
				t.Errorf("audit trail has %d × %q, want %d", got, action, want)
			}
		}
	})
}

func count(list []string, s string) int {
	n := 0
	for _, x := range list {
		if x == s {
			n++
		}
	}
	return n
}

func TestSessions(t *testing.T) {
	storagetest.Each(t, func(t *testing.T, db *gorm.DB) {
		e := newTestEnv(t, db, AppConfig{SessionIdle: 30 * time.Minute, SessionMax: 2 * time.Hour})
		u := e.user("ed@example.org", RoleEditor, false)
		signedIn := func(c *http.Client) bool {
			t.Helper()
			return e.get(c, "/api/v1/session").StatusCode == http.StatusOK
		}

		c, resp := e.login("ed@example.org", testPassword)
		if resp.StatusCode != http.StatusSeeOther || resp.Header.Get("Location") != "/" {
			t.Fatalf("sign-in = %d to %q, want 303 to /", resp.StatusCode, resp.Header.Get("Location"))
		}
		cookie := resp.Cookies()[0]
		if cookie.Name != "fhirsync_session" || !cookie.HttpOnly || cookie.SameSite != http.SameSiteLaxMode || cookie.Secure {
			t.Errorf("cookie %+v: want fhirsync_session, HttpOnly, SameSite=Lax, not Secure on plain http", cookie)
		}
		var rows []sessionRow
		db.Find(&rows)
		sum := sha256.Sum256([]byte(cookie.Value))
		if len(rows) != 1 || rows[0].IDHash != hex.EncodeToString(sum[:]) || len(cookie.Value) < 43 {
			t.Fatalf("session stored as %+v; want only the SHA-256 of a 256-bit id", rows)
		}

		t.Run("idle expiry", func(t *testing.T) {
			e.clock.advance(29 * time.Minute)
			if !signedIn(c) {
				t.Fatal("session ended before the idle timeout")
			}
			e.clock.advance(29 * time.Minute) // the previous request refreshed the idle clock
			if !signedIn(c) {
				t.Fatal("activity did not keep the session alive")
			}
			e.clock.advance(31 * time.Minute)
			if signedIn(c) {
				t.Fatal("session outlived the idle timeout")
			}
		})
		t.Run("absolute expiry", func(t *testing.T) {
			c, _ := e.login("ed@example.org", testPassword)
			for range 5 {
				e.clock.advance(25 * time.Minute)
				signedIn(c)
			}
			if signedIn(c) {
				t.Fatal("session outlived its maximum age")
			}
		})
		t.Run("logout", func(t *testing.T) {
			c, resp := e.login("ed@example.org", testPassword)
			stolen := resp.Cookies()[0]
			if resp := e.postForm(c, "/logout", nil); resp.StatusCode != http.StatusSeeOther {
				t.Fatalf("logout = %d", resp.StatusCode)
			}
			other := e.client()
			other.Jar.SetCookies(mustURL(e.url), []*http.Cookie{stolen})
			if signedIn(other) {
				t.Fatal("the session id still works after logout")
			}
		})
		t.Run("sign-in replaces a planted session", func(t *testing.T) {
			planted := e.sessionCookie(u)
			c := e.client()
			c.Jar.SetCookies(mustURL(e.url), []*http.Cookie{planted})
			if resp := e.postForm(c, "/login", url.Values{"email": {"ed@example.org"}, "password": {testPassword}}); resp.StatusCode != http.StatusSeeOther {
				t.Fatalf("sign-in = %d", resp.StatusCode)
			}
			other := e.client()
			other.Jar.SetCookies(mustURL(e.url), []*http.Cookie{planted})
			if signedIn(other) {
				t.Fatal("the session id held before sign-in still works")
			}
			if !signedIn(c) {
				t.Fatal("the new session does not work")
			}
		})
		t.Run("disabled user", func(t *testing.T) {
			c, _ := e.login("ed@example.org", testPassword)
			if err := e.app.users.SetDisabled(context.Background(), "test", u.ID, true); err != nil {
				t.Fatal(err)
			}
			if signedIn(c) {
				t.Fatal("a disabled user's session still works")
			}
			if _, resp := e.login("ed@example.org", testPassword); resp.StatusCode != http.StatusUnauthorized {
				t.Fatalf("disabled user sign-in = %d, want 401", resp.StatusCode)
			}
		})
	})
}

func mustURL(s string) *url.URL {
	u, err := url.Parse(s)
	if err != nil {
		panic(err)
	}
	return u
}

func TestSecureCookieAndHeaders(t *testing.T) {
	t.Parallel()
	db := storagetest.Open(t, "sqlite")
	tests := []struct {
		name       string
		publicURL  string
		wantCookie string
		wantHSTS   bool
	}{
		{name: "plain http localhost", publicURL: "", wantCookie: "fhirsync_session"},
		{name: "https", publicURL: "https://sync.example.org", wantCookie: "__Host-fhirsync_session", wantHSTS: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			e := newTestEnv(t, db, AppConfig{PublicURL: tt.publicURL})
			u, err := e.app.users.ByEmail(t.Context(), "h@example.org")
			if err != nil {
				u = e.user("h@example.org", RoleAdmin, false)
			}
			c := e.sessionCookie(u)
			if c.Name != tt.wantCookie || c.Secure != tt.wantHSTS || !c.HttpOnly || c.Path != "/" {
				t.Errorf("cookie %+v, want %s Secure=%t HttpOnly Path=/", c, tt.wantCookie, tt.wantHSTS)
			}
			req, _ := http.NewRequest(http.MethodGet, e.url+"/login", nil)
			resp, err := http.DefaultClient.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			resp.Body.Close()
			h := resp.Header
			csp := h.Get("Content-Security-Policy")
			for _, want := range []string{"default-src 'none'", "script-src 'self'", "frame-ancestors 'none'", "form-action 'self'"} {
				if !strings.Contains(csp, want) {
					t.Errorf("CSP %q lacks %q", csp, want)
				}
			}
			if strings.Contains(csp, "unsafe-inline") {
				t.Errorf("CSP allows inline code: %q", csp)
			}
			for k, want := range map[string]string{"X-Content-Type-Options": "nosniff", "X-Frame-Options": "DENY",
				"Referrer-Policy": "same-origin", "Cache-Control": "no-store"} {
				if h.Get(k) != want {
					t.Errorf("%s = %q, want %q", k, h.Get(k), want)
				}
			}
			if got := h.Get("Strict-Transport-Security") != ""; got != tt.wantHSTS {
				t.Errorf("HSTS present = %t, want %t", got, tt.wantHSTS)
			}
		})
	}
}

// TestPagesHaveNoInlineScript keeps the CSP honest: no page may need
// inline script or style to work.
func TestPagesHaveNoInlineScript(t *testing.T) {
	t.Parallel()
	e := newTestEnv(t, storagetest.Open(t, "sqlite"), AppConfig{})
	admin := e.user("admin@example.org", RoleAdmin, true)
	inline := regexp.MustCompile(`(?i)<script(?:\s[^>]*)?>\s*[^<\s]|<style|\son[a-z]+=|style=|javascript:`)
	for _, path := range []string{"/login", "/", "/users", "/audit", "/account/password", "/no-such-page-for-error"} {
		req, _ := http.NewRequest(http.MethodGet, e.url+path, nil)
		req.AddCookie(e.sessionCookie(admin))
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		var body bytes.Buffer
		_, _ = body.ReadFrom(resp.Body)
		resp.Body.Close()
		if m := inline.FindString(body.String()); m != "" {
			t.Errorf("%s contains inline code %q", path, m)
		}
	}
}

func TestUsersPagePostRedirectGet(t *testing.T) {
	storagetest.Each(t, func(t *testing.T, db *gorm.DB) {
		e := newTestEnv(t, db, AppConfig{})
		e.user("admin@example.org", RoleAdmin, true) // may grant PHI
		c, _ := e.login("admin@example.org", testPassword)

		resp := e.postForm(c, "/users", url.Values{"email": {"new@example.org"}, "name": {"New"}, "role": {"auditor"},
			"phi": {"on"}, "password": {"first password 1"}})
		if resp.StatusCode != http.StatusSeeOther || resp.Header.Get("Location") != "/users?done=created" {
			t.Fatalf("create = %d to %q, want 303 to /users?done=created", resp.StatusCode, resp.Header.Get("Location"))
		}
		u, err := e.app.users.ByEmail(t.Context(), "new@example.org")
		if err != nil || u.Role != RoleAuditor || !u.PHI || !u.MustChangePassword {
			t.Fatalf("created %+v, %v", u, err)
		}
		steps := []struct {
			path string
			form url.Values
			want int
			ok   func(User) bool
		}{
			{fmt.Sprintf("/users/%d/role", u.ID), url.Values{"role": {"operator"}}, 303, func(u User) bool { return u.Role == RoleOperator }},
			{fmt.Sprintf("/users/%d/role", u.ID), url.Values{"role": {"superuser"}}, 400, func(u User) bool { return u.Role == RoleOperator }},
			{fmt.Sprintf("/users/%d/phi", u.ID), url.Values{}, 303, func(u User) bool { return !u.PHI }},
			{fmt.Sprintf("/users/%d/disabled", u.ID), url.Values{"disabled": {"true"}}, 303, func(u User) bool { return u.Disabled }},
			{"/users/999999/role", url.Values{"role": {"viewer"}}, 404, func(User) bool { return true }},
		}
		for _, s := range steps {
			resp := e.postForm(c, s.path, s.form)
			got, _ := e.app.users.Get(t.Context(), u.ID)
			if resp.StatusCode != s.want || !s.ok(got) {
				t.Errorf("POST %s %v = %d, user %+v; want %d", s.path, s.form, resp.StatusCode, got, s.want)
			}
		}
		// The one-time password works once, then must be changed.
		e.app.users.SetDisabled(t.Context(), "test", u.ID, false)
		nc, resp := e.login("new@example.org", "first password 1")
		if resp.StatusCode != http.StatusSeeOther {
			t.Fatalf("first sign-in = %d", resp.StatusCode)
		}
		if resp := e.get(nc, "/"); resp.Header.Get("Location") != "/account/password" {
			t.Fatalf("with a one-time password / redirects to %q, want /account/password", resp.Header.Get("Location"))
		}
		resp = e.postForm(nc, "/account/password", url.Values{"current": {"first password 1"}, "new": {"my own password"}, "confirm": {"my own password"}})
		if resp.StatusCode != http.StatusSeeOther {
			t.Fatalf("password change = %d", resp.StatusCode)
		}
		if resp := e.get(nc, "/"); resp.StatusCode != http.StatusOK {
			t.Fatalf("after the change / = %d, want 200", resp.StatusCode)
		}
		actions := e.auditActions()
		for _, want := range []string{"admin@example.org user.create", "admin@example.org user.role", "admin@example.org user.phi",
			"admin@example.org user.disable", "new@example.org user.password"} {
			if !slices.Contains(actions, want) {
				t.Errorf("audit trail lacks %q: %q", want, actions)
			}
		}
	})
}

func TestBootstrap(t *testing.T) {
	storagetest.Each(t, func(t *testing.T, db *gorm.DB) {
		var log bytes.Buffer
		logger := slog.New(slog.NewTextHandler(&log, nil))
		file := filepath.Join(t.TempDir(), "state", "admin-password")
		if err := Bootstrap(t.Context(), db, logger, PasswordDelivery{File: file}); err != nil {
			t.Fatal(err)
		}
		raw, err := os.ReadFile(file)
		if err != nil {
			t.Fatalf("no one-time password file: %v (log %s)", err, log.String())
		}
		pw := strings.TrimSpace(string(raw))
		if fi, err := os.Stat(file); err != nil || fi.Mode().Perm() != 0o600 {
			t.Errorf("password file mode = %v (%v), want 0600", fi.Mode().Perm(), err)
		}
		if strings.Contains(log.String(), pw) || !strings.Contains(log.String(), file) {
			t.Errorf("the log must name the file and not hold the password: %s", log.String())
		}
		log.Reset()
		if err := Bootstrap(t.Context(), db, logger, PasswordDelivery{File: file}); err != nil || log.Len() != 0 {
			t.Fatalf("second Bootstrap: %v, logged %q; want a silent no-op", err, log.String())
		}
		e := newTestEnv(t, db, AppConfig{})
		c, resp := e.login(BootstrapEmail, pw)
		if resp.StatusCode != http.StatusSeeOther {
			t.Fatalf("sign-in with the one-time password = %d", resp.StatusCode)
		}
		if resp := e.get(c, "/users"); resp.Header.Get("Location") != "/account/password" {
			t.Errorf("first admin is not asked to change the one-time password (Location %q)", resp.Header.Get("Location"))
		}
	})
}

func TestBootstrapToTerminal(t *testing.T) {
	t.Parallel()
	db := storagetest.Open(t, "sqlite")
	var log, term bytes.Buffer
	if err := Bootstrap(t.Context(), db, slog.New(slog.NewTextHandler(&log, nil)), PasswordDelivery{Terminal: &term}); err != nil {
		t.Fatal(err)
	}
	m := regexp.MustCompile(`\n    (\S+)\n`).FindStringSubmatch(term.String())
	if m == nil {
		t.Fatalf("no password printed to the terminal: %q", term.String())
	}
	if strings.Contains(log.String(), m[1]) {
		t.Errorf("the one-time password is in the process log: %s", log.String())
	}
	users, _ := NewUsers(db)
	if res, err := users.authenticate(t.Context(), BootstrapEmail, m[1]); err != nil || !res.OK {
		t.Errorf("printed password does not sign in: %v", err)
	}
}

func TestOIDCIssuerUnreachable(t *testing.T) {
	t.Parallel()
	closed := httptest.NewServer(http.NotFoundHandler())
	closed.Close()
	e := newTestEnv(t, storagetest.Open(t, "sqlite"), AppConfig{OIDC: OIDCConfig{Issuer: closed.URL, ClientID: "x"}})
	// The app starts without the issuer and says so only when it is needed.
	if resp := e.get(e.client(), "/login"); resp.StatusCode != http.StatusOK {
		t.Fatalf("sign-in page = %d", resp.StatusCode)
	}
	if resp := e.get(e.client(), "/login/oidc"); resp.StatusCode != http.StatusBadGateway {
		t.Errorf("OIDC start with the issuer down = %d, want 502", resp.StatusCode)
	}
}

func TestAppConfigValidate(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name    string
		cfg     AppConfig
		wantErr []string
	}{
		{name: "zero value", cfg: AppConfig{}},
		{name: "https with entra", cfg: AppConfig{PublicURL: "https://sync.example.org", OIDC: OIDCConfig{
			Issuer: "https://login.microsoftonline.com/t/v2.0", ClientID: "c", RoleMap: map[string]string{"A": "admin"}}}},
		{name: "everything wrong", cfg: AppConfig{PublicURL: "sync.example.org", SessionIdle: time.Second,
			OIDC: OIDCConfig{Issuer: "::", RoleMap: map[string]string{"A": "root"}, DefaultRole: "owner"}},
			wantErr: []string{"public_url", "session_idle", "oidc.issuer", "oidc.client_id", "role_map", "default_role"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := tt.cfg.Validate()
			if (err != nil) != (len(tt.wantErr) > 0) {
				t.Fatalf("Validate = %v", err)
			}
			for _, w := range tt.wantErr {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error lacks %q: %v", w, err)
				}
			}
		})
	}
}

func TestAuditPageAndExport(t *testing.T) {
	storagetest.Each(t, func(t *testing.T, db *gorm.DB) {
		e := newTestEnv(t, db, AppConfig{})
		e.user("admin@example.org", RoleAdmin, false)
		e.user("auditor@example.org", RoleAuditor, false)
		c, _ := e.login("auditor@example.org", testPassword)

		read := func(path string) (int, string, string) {
			resp, err := c.Get(e.url + path)
			if err != nil {
				t.Fatal(err)
			}
			defer resp.Body.Close()
			var b bytes.Buffer
			_, _ = b.ReadFrom(resp.Body)
			return resp.StatusCode, resp.Header.Get("Content-Type"), b.String()
		}
		code, _, page := read("/audit?actor=test")
		if code != 200 || !strings.Contains(page, "user.create") || strings.Contains(page, "login.success") {
			t.Errorf("filtered audit page = %d:\n%s", code, page)
		}
		code, ctype, csv := read("/audit/export?format=csv&action=user.create")
		lines := strings.Split(strings.TrimSpace(csv), "\n")
		if code != 200 || ctype != "text/csv; charset=utf-8" || len(lines) != 3 || !strings.HasPrefix(lines[0], "id,at,actor,action") {
			t.Errorf("csv export = %d %s:\n%s", code, ctype, csv)
		}
		code, _, nd := read("/audit/export?format=ndjson&actor=auditor@example.org")
		if code != 200 || !strings.Contains(nd, `"action":"login.success"`) {
			t.Errorf("ndjson export = %d:\n%s", code, nd)
		}
		if code, _, _ := read("/audit/export?format=xml"); code != http.StatusBadRequest {
			t.Errorf("unknown format = %d, want 400", code)
		}
		if code, _, _ := read("/audit?after=garbage"); code != http.StatusBadRequest {
			t.Errorf("bad cursor = %d, want 400", code)
		}
		if got := count(e.auditActions(), "auditor@example.org audit.export"); got != 2 {
			t.Errorf("%d exports recorded, want 2", got)
		}
	})
}

// TestThrottleReservesConcurrentAttempts: parallel attempts must each
// count, and none may pass once the key is locked, or an attacker could
// guess in parallel past the lockout.
func TestThrottleReservesConcurrentAttempts(t *testing.T) {
	storagetest.Each(t, func(t *testing.T, db *gorm.DB) {
		clock := newTestClock()
		th := &throttle{db: db, now: clock.now, base: time.Second, max: time.Minute, forget: time.Hour}
		const n, lockAfter = 12, 5
		type result struct {
			until time.Time
			err   error
		}
		results := make(chan result, n)
		for range n {
			go func() {
				u, err := th.reserve(context.Background(), "k", lockAfter)
				results <- result{u, err}
			}()
		}
		passed := 0
		for range n {
			r := <-results
			if r.err != nil {
				t.Fatal(r.err)
			}
			if r.until.IsZero() {
				passed++
			}
		}
		if passed != lockAfter {
			t.Errorf("%d of %d parallel attempts passed, want %d", passed, n, lockAfter)
		}
		var row throttleRow
		if err := db.Where("throttle_key = ?", "k").First(&row).Error; err != nil {
			t.Fatal(err)
		}
		if row.Failures != lockAfter {
			t.Errorf("counted %d attempts, want %d (refused ones do not count)", row.Failures, lockAfter)
		}
	})
}
