package admin

import (
	"context"
	"log/slog"
	"net/http"
	"net/http/cookiejar"
	"net/http/httptest"
	"net/url"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"gorm.io/gorm"

	"github.com/fhirsync/fhirsync/logs"
)

// testPassword is every test user's password.
const testPassword = "correct horse battery staple"

// testArgon keeps hashing cheap in tests; verification reads the
// parameters from each hash, so the code path is the production one.
var testArgon = argonParams{memoryKiB: 64, time: 1, threads: 1}

// testClock is a settable clock shared by the app and the test identity
// provider.
type testClock struct {
	mu sync.Mutex
	t  time.Time
}

func newTestClock() *testClock {
	return &testClock{t: time.Now().UTC().Truncate(time.Second)}
}

func (c *testClock) now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

func (c *testClock) advance(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.t = c.t.Add(d)
}

// testEnv is a running admin app on a fresh database.
type testEnv struct {
	t     *testing.T
	app   *app
	srv   *httptest.Server
	url   string
	clock *testClock
	db    *gorm.DB
	idp   *testIdP // nil unless withOIDC
	// queues, when set by withQueues, replace the embedded default queues.
	queues map[string]DeadLetterQueue
	// logs, when set by withLogs, replaces the default sync log.
	logs *logs.Store
}

type envOption func(*testEnv, *AppConfig)

// withOIDC starts a test identity provider and points the app at it.
func withOIDC(roleMap map[string]string, defaultRole string) envOption {
	return func(e *testEnv, cfg *AppConfig) {
		e.idp = newTestIdP(e.t, e.clock)
		cfg.OIDC = OIDCConfig{Issuer: e.idp.url, ClientID: e.idp.clientID, ClientSecret: e.idp.secret,
			RoleMap: roleMap, DefaultRole: defaultRole, PHIValue: "FhirSync.PHI", Label: "Sign in with Test IdP"}
	}
}

func newTestEnv(t *testing.T, db *gorm.DB, cfg AppConfig, opts ...envOption) *testEnv {
	t.Helper()
	e := &testEnv{t: t, clock: newTestClock(), db: db}
	e.srv = httptest.NewUnstartedServer(nil)
	e.url = "http://" + e.srv.Listener.Addr().String()
	if cfg.PublicURL == "" {
		cfg.PublicURL = e.url
	}
	for _, o := range opts {
		o(e, &cfg)
	}
	// New mounts the app with the real clock; the test mounts it on a
	// bare server with its own clock instead.
	s := &Server{deps: Deps{DB: db, Registry: prometheus.NewRegistry(), Logger: slog.New(slog.NewTextHandler(t.Output(), nil)),
		Queues: e.queues, Logs: e.logs}, mux: http.NewServeMux()}
	var err error
	e.app, err = s.mount(cfg, e.clock.now)
	if err != nil {
		t.Fatalf("mounting the admin app: %v", err)
	}
	e.app.users.argon = testArgon
	e.srv.Config.Handler = s.Handler()
	e.srv.Start()
	t.Cleanup(e.srv.Close)
	return e
}

// user creates an active local user with testPassword.
func (e *testEnv) user(email string, role Role, phi bool) User {
	e.t.Helper()
	u, err := e.app.users.Create(context.Background(), "test", NewUser{Email: email, Role: role, PHI: phi, Password: testPassword})
	if err != nil {
		e.t.Fatalf("creating %s: %v", email, err)
	}
	return u
}

// client is a browser-like client that keeps cookies and does not follow
// redirects.
func (e *testEnv) client() *http.Client {
	jar, _ := cookiejar.New(nil)
	return &http.Client{Jar: jar, CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
}

// postForm posts form values with c.
func (e *testEnv) postForm(c *http.Client, path string, form url.Values) *http.Response {
	e.t.Helper()
	req, _ := http.NewRequest(http.MethodPost, e.url+path, strings.NewReader(form.Encode()))
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	resp, err := c.Do(req)
	if err != nil {
		e.t.Fatalf("POST %s: %v", path, err)
	}
	resp.Body.Close()
	return resp
}

func (e *testEnv) get(c *http.Client, path string) *http.Response {
	e.t.Helper()
	resp, err := c.Get(e.url + path)
	if err != nil {
		e.t.Fatalf("GET %s: %v", path, err)
	}
	resp.Body.Close()
	return resp
}

// login signs in with a password and returns the signed-in client.
func (e *testEnv) login(email, password string) (*http.Client, *http.Response) {
	e.t.Helper()
	c := e.client()
	resp := e.postForm(c, "/login", url.Values{"email": {email}, "password": {password}})
	return c, resp
}

// sessionCookie starts a session for u without a password round trip.
func (e *testEnv) sessionCookie(u User) *http.Cookie {
	e.t.Helper()
	rec := httptest.NewRecorder()
	if err := e.app.sessions.start(context.Background(), rec, httptest.NewRequest("GET", "/", nil), u.ID); err != nil {
		e.t.Fatal(err)
	}
	return rec.Result().Cookies()[0]
}

// auditActions lists the audit trail's actions, oldest first.
func (e *testEnv) auditActions() []string {
	e.t.Helper()
	p, err := e.app.users.audit.Audit(context.Background(), logs.AuditFilter{}, "", 1000)
	if err != nil {
		e.t.Fatal(err)
	}
	out := make([]string, len(p.Entries))
	for i, en := range p.Entries {
		out[len(out)-1-i] = en.Actor + " " + en.Action
	}
	return out
}

func logsFilterObject(objectType string) logs.AuditFilter {
	return logs.AuditFilter{ObjectType: objectType}
}
