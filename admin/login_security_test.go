package admin

import (
	"context"
	"fmt"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"gorm.io/gorm"

	"github.com/fhirsync/fhirsync/logs"
	"github.com/fhirsync/fhirsync/storage/storagetest"
)

// loginFrom posts a sign-in with an X-Forwarded-For header (none when xff
// is empty) and returns the status.
func (e *testEnv) loginFrom(email, password, xff string) int {
	e.t.Helper()
	form := url.Values{"email": {email}, "password": {password}}
	req, _ := http.NewRequest(http.MethodPost, e.url+"/login", strings.NewReader(form.Encode()))
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	if xff != "" {
		req.Header.Set("X-Forwarded-For", xff)
	}
	resp, err := e.client().Do(req)
	if err != nil {
		e.t.Errorf("POST /login: %v", err)
		return 0
	}
	resp.Body.Close()
	return resp.StatusCode
}

// countVerifications wraps the app's password verification with a counter
// and a gauge of how many run at once.
func (e *testEnv) countVerifications(delay time.Duration) (calls, peak *atomic.Int64) {
	calls, peak = new(atomic.Int64), new(atomic.Int64)
	var running atomic.Int64
	e.app.users.verify = func(encoded, pw string) (bool, error) {
		calls.Add(1)
		n := running.Add(1)
		defer running.Add(-1)
		for {
			p := peak.Load()
			if n <= p || peak.CompareAndSwap(p, n) {
				break
			}
		}
		time.Sleep(delay)
		return verifyPassword(encoded, pw)
	}
	return calls, peak
}

// TestParallelGuessesGetNoMoreVerifications: 30 guesses sent at once to an
// account that locks after 5 get exactly 5 password verifications.
func TestParallelGuessesGetNoMoreVerifications(t *testing.T) {
	storagetest.Each(t, func(t *testing.T, db *gorm.DB) {
		e := newTestEnv(t, db, AppConfig{})
		e.user("ops@example.org", RoleOperator, false)
		calls, _ := e.countVerifications(0)
		const guesses = 30
		statuses := make(chan int, guesses)
		var wg sync.WaitGroup
		for i := range guesses {
			wg.Go(func() { statuses <- e.loginFrom("ops@example.org", fmt.Sprintf("wrong guess %d", i), "") })
		}
		wg.Wait()
		close(statuses)
		byStatus := map[int]int{}
		for s := range statuses {
			byStatus[s]++
		}
		if got := calls.Load(); got != accountLockAfter {
			t.Errorf("%d passwords verified, want %d", got, accountLockAfter)
		}
		if byStatus[http.StatusUnauthorized] != accountLockAfter || byStatus[http.StatusTooManyRequests] != guesses-accountLockAfter {
			t.Errorf("statuses %v, want %d × 401 and %d × 429", byStatus, accountLockAfter, guesses-accountLockAfter)
		}
	})
}

// TestConcurrentVerificationsAreBounded: however many sign-ins arrive at
// once, at most maxVerifications passwords are verified at a time.
func TestConcurrentVerificationsAreBounded(t *testing.T) {
	t.Parallel()
	e := newTestEnv(t, storagetest.Open(t, "sqlite"), AppConfig{})
	const n = 24
	for i := range n {
		e.user(fmt.Sprintf("user%d@example.org", i), RoleViewer, false)
	}
	calls, peak := e.countVerifications(40 * time.Millisecond)
	var wg sync.WaitGroup
	var unauthorized atomic.Int64
	for i := range n {
		// Distinct accounts, so the throttle lets every attempt through.
		wg.Go(func() {
			if s := e.loginFrom(fmt.Sprintf("user%d@example.org", i), "a wrong password", ""); s == http.StatusUnauthorized {
				unauthorized.Add(1)
			} else {
				t.Logf("status %d", s)
			}
		})
	}
	wg.Wait()
	if calls.Load() != n || unauthorized.Load() != n {
		t.Fatalf("%d verifications and %d × 401 for %d attempts", calls.Load(), unauthorized.Load(), n)
	}
	if p := peak.Load(); p > maxVerifications || p < 2 {
		t.Errorf("at most %d verifications ran at once, want 2…%d", p, maxVerifications)
	}
}

// TestVerificationBusyIsRefused: a request that cannot get a verification
// slot is refused with 503, and its attempt is not a wrong password.
func TestVerificationBusyIsRefused(t *testing.T) {
	t.Parallel()
	e := newTestEnv(t, storagetest.Open(t, "sqlite"), AppConfig{})
	e.user("ops@example.org", RoleOperator, false)
	for range maxVerifications {
		e.app.users.slots <- struct{}{}
	}
	start := time.Now()
	if got := e.loginFrom("ops@example.org", testPassword, ""); got != http.StatusServiceUnavailable {
		t.Errorf("sign-in with every slot taken = %d, want 503", got)
	}
	if waited := time.Since(start); waited < verifyWait {
		t.Errorf("refused after %s, want a wait of %s first", waited, verifyWait)
	}
	for range maxVerifications {
		<-e.app.users.slots
	}
	if got := e.loginFrom("ops@example.org", testPassword, ""); got != http.StatusSeeOther {
		t.Errorf("sign-in with free slots = %d, want 303", got)
	}
}

// TestLockoutCannotBeTurnedAgainstAUser: failures from an attacker's
// address lock the account for that address only; the administrator with
// the right password from another address still signs in. Behind a
// trusted proxy the address is the forwarded one.
func TestLockoutCannotBeTurnedAgainstAUser(t *testing.T) {
	storagetest.Each(t, func(t *testing.T, db *gorm.DB) {
		// The test server's peer is 127.0.0.1: it plays the proxy.
		e := newTestEnv(t, db, AppConfig{TrustedProxies: []string{"127.0.0.0/8", "::1"}})
		e.user("admin@example.org", RoleAdmin, false)
		const attacker, adminAddr = "203.0.113.9", "198.51.100.7"
		for i := range 3 * accountLockAfter {
			e.loginFrom("admin@example.org", fmt.Sprintf("guess %d", i), attacker)
		}
		if got := e.loginFrom("admin@example.org", testPassword, attacker); got != http.StatusTooManyRequests {
			t.Fatalf("right password from the attacker's address = %d, want 429", got)
		}
		if got := e.loginFrom("admin@example.org", testPassword, adminAddr); got != http.StatusSeeOther {
			t.Errorf("administrator from another address = %d, want 303", got)
		}
		// A client-written hop left of the proxy's entry is not believed:
		// the attacker cannot pose as the administrator's address.
		if got := e.loginFrom("admin@example.org", testPassword, adminAddr+", "+attacker); got != http.StatusTooManyRequests {
			t.Errorf("attacker claiming the administrator's address = %d, want 429", got)
		}
		// Other accounts are not locked for the attacker's address either.
		e.user("viewer@example.org", RoleViewer, false)
		if got := e.loginFrom("viewer@example.org", testPassword, attacker); got != http.StatusSeeOther {
			t.Errorf("another account from the attacker's address = %d, want 303", got)
		}
	})
}

// TestForwardedForIgnoredWithoutTrustedProxies: a client cannot escape the
// lock by writing a new X-Forwarded-For with each guess.
func TestForwardedForIgnoredWithoutTrustedProxies(t *testing.T) {
	t.Parallel()
	e := newTestEnv(t, storagetest.Open(t, "sqlite"), AppConfig{})
	e.user("ops@example.org", RoleOperator, false)
	calls, _ := e.countVerifications(0)
	for i := range 3 * accountLockAfter {
		e.loginFrom("ops@example.org", "wrong password", fmt.Sprintf("192.0.2.%d", i+1))
	}
	if got := calls.Load(); got != accountLockAfter {
		t.Errorf("%d verifications with spoofed addresses, want %d", got, accountLockAfter)
	}
}

func TestClientAddr(t *testing.T) {
	t.Parallel()
	proxies, err := parseProxies([]string{"10.0.0.0/8", "192.0.2.1"})
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name, peer, xff, want string
	}{
		{"no proxy header", "198.51.100.1:5000", "", "198.51.100.1"},
		{"untrusted peer's header ignored", "198.51.100.1:5000", "203.0.113.5", "198.51.100.1"},
		{"trusted proxy", "10.1.2.3:5000", "203.0.113.5", "203.0.113.5"},
		{"chain of trusted proxies", "10.1.2.3:5000", "203.0.113.5, 192.0.2.1, 10.9.9.9", "203.0.113.5"},
		{"client-written hops ignored", "10.1.2.3:5000", "1.1.1.1, 203.0.113.5", "203.0.113.5"},
		{"malformed hop stops the walk", "10.1.2.3:5000", "203.0.113.5, junk, 10.2.2.2", "10.2.2.2"},
		{"trusted proxy without header", "192.0.2.1:80", "", "192.0.2.1"},
		{"IPv6 peer", "[2001:db8::1]:443", "203.0.113.5", "2001:db8::1"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := httptest.NewRequest(http.MethodPost, "/login", nil)
			r.RemoteAddr = tt.peer
			if tt.xff != "" {
				r.Header.Set("X-Forwarded-For", tt.xff)
			}
			if got := clientAddr(r, proxies); got != tt.want {
				t.Errorf("clientAddr = %q, want %q", got, tt.want)
			}
		})
	}
	if _, err := parseProxies([]string{"10.0.0.0/33"}); err == nil {
		t.Error("an invalid prefix was accepted")
	}
	if err := (AppConfig{TrustedProxies: []string{"proxy.example.org"}}).Validate(); err == nil ||
		!strings.Contains(err.Error(), "admin.trusted_proxies") {
		t.Errorf("Validate with a host name = %v, want an admin.trusted_proxies error", err)
	}
}

// TestSignInAuditIsBoundedAndKeepsNoTypedEmail: failures on unknown
// accounts do not store what was typed, and refusals of a locked key are
// recorded once a minute.
func TestSignInAuditIsBoundedAndKeepsNoTypedEmail(t *testing.T) {
	t.Parallel()
	e := newTestEnv(t, storagetest.Open(t, "sqlite"), AppConfig{})
	e.user("ops@example.org", RoleOperator, false)
	const typed = "my-secret-password@oops"
	e.loginFrom(typed, "wrong password", "")
	for range accountLockAfter + 10 {
		e.loginFrom("ops@example.org", "wrong password", "")
	}
	e.clock.advance(61 * time.Second)
	e.loginFrom("ops@example.org", "wrong password", "") // reserves, locks again
	e.loginFrom("ops@example.org", "wrong password", "") // refused: a new minute

	page, err := e.app.users.audit.Audit(context.Background(), logs.AuditFilter{}, "", 1000)
	if err != nil {
		t.Fatal(err)
	}
	actions := map[string]int{}
	for _, en := range page.Entries {
		actions[en.Actor+" "+en.Action]++
		if strings.Contains(en.Actor+en.Before+en.After, typed) {
			t.Errorf("audit entry %s keeps the typed email: %+v", en.Action, en)
		}
	}
	if actions["unknown account login.failure"] != 1 {
		t.Errorf("unknown-account failures recorded %d times, want 1 (%v)", actions["unknown account login.failure"], actions)
	}
	if got := actions["ops@example.org login.throttled"]; got != 2 {
		t.Errorf("login.throttled recorded %d times for 11 refusals in two minutes, want 2", got)
	}
}

// TestThrottlePrunesForgottenKeys: rows untouched for the forget period
// are deleted, so cycling through typed emails cannot grow the table
// without bound; recent and locked rows stay.
func TestThrottlePrunesForgottenKeys(t *testing.T) {
	storagetest.Each(t, func(t *testing.T, db *gorm.DB) {
		clock := newTestClock()
		th := &throttle{db: db, now: clock.now, base: time.Second, max: 2 * time.Hour, forget: time.Hour}
		ctx := context.Background()
		for i := range 5 {
			if _, err := th.reserve(ctx, fmt.Sprintf("old%d", i), 5); err != nil {
				t.Fatal(err)
			}
		}
		// A key locked for two hours, beyond the forget period.
		if err := db.Create(&throttleRow{ThrottleKey: "locked", Failures: 40, LastFailureAt: stamp(clock.now()),
			LockedUntil: stamp(clock.now().Add(2 * time.Hour))}).Error; err != nil {
			t.Fatal(err)
		}
		clock.advance(61 * time.Minute)
		if _, err := th.reserve(ctx, "new", 5); err != nil {
			t.Fatal(err)
		}
		var keys []string
		if err := db.Model(&throttleRow{}).Order("throttle_key").Pluck("throttle_key", &keys).Error; err != nil {
			t.Fatal(err)
		}
		if fmt.Sprint(keys) != "[locked new]" {
			t.Errorf("throttle keys after pruning = %v, want [locked new]", keys)
		}
	})
}
