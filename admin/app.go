package admin

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"net/netip"
	"net/url"
	"slices"
	"strings"
	"time"
)

// AppConfig configures the web app: where it is reached, sessions and the
// optional OIDC sign-in.
type AppConfig struct {
	// PublicURL is the address users type, e.g. https://sync.example.org.
	// An https URL turns on Secure cookies and HSTS; empty or http (a
	// localhost install) leaves them off. Its origin is also trusted for
	// cross-origin checks behind a proxy that rewrites Host.
	PublicURL string `yaml:"public_url"`
	// SessionIdle ends a session unused for this long; zero means 1 hour.
	SessionIdle time.Duration `yaml:"session_idle"`
	// SessionMax ends every session this long after sign-in; zero means 12 hours.
	SessionMax time.Duration `yaml:"session_max"`
	// OIDC enables single sign-on when its Issuer is set.
	OIDC OIDCConfig `yaml:"oidc"`
	// TLS says the listener itself serves HTTPS (set by the process from
	// its TLS files, not configured here); like an https PublicURL it
	// turns on Secure cookies and HSTS.
	TLS bool `yaml:"-"`
	// TrustedProxies lists the reverse proxies (CIDR prefixes or
	// addresses) whose X-Forwarded-For header names the client for the
	// sign-in throttle. Empty trusts none: the peer address is the client.
	TrustedProxies []string `yaml:"trusted_proxies"`
	// TraceURL is the tracing backend's page of a trace, with {trace_id}
	// where a decision's trace id goes, e.g.
	// https://grafana.example/explore?traceId={trace_id}: the decision
	// page links there. Empty shows the trace id as text.
	TraceURL string `yaml:"trace_url"`
}

func (c AppConfig) withDefaults() AppConfig {
	if c.SessionIdle == 0 {
		c.SessionIdle = time.Hour
	}
	if c.SessionMax == 0 {
		c.SessionMax = 12 * time.Hour
	}
	return c
}

// Validate reports every problem in c at once.
func (c AppConfig) Validate() error {
	c = c.withDefaults()
	var errs []error
	if c.PublicURL != "" {
		if u, err := url.Parse(c.PublicURL); err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
			errs = append(errs, fmt.Errorf("admin.public_url %q is not an http(s) URL", c.PublicURL))
		}
	}
	if c.SessionIdle < time.Minute || c.SessionMax < c.SessionIdle {
		errs = append(errs, errors.New("admin.session_idle must be at least 1m and admin.session_max at least session_idle"))
	}
	if c.OIDC.Issuer != "" {
		errs = append(errs, c.OIDC.validate()...)
	}
	if _, err := parseProxies(c.TrustedProxies); err != nil {
		errs = append(errs, err)
	}
	if c.TraceURL != "" {
		u, err := url.Parse(traceLink(c.TraceURL, "0"))
		switch {
		case err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "":
			errs = append(errs, fmt.Errorf("admin.trace_url %q is not an http(s) URL", c.TraceURL))
		case !strings.Contains(c.TraceURL, traceIDPlaceholder):
			errs = append(errs, fmt.Errorf("admin.trace_url %q does not say where the trace id goes (%s)", c.TraceURL, traceIDPlaceholder))
		}
	}
	return errors.Join(errs...)
}

func (c AppConfig) secure() bool { return c.TLS || strings.HasPrefix(c.PublicURL, "https://") }

// app is the web app mounted on a Server's mux.
type app struct {
	cfg      AppConfig
	log      *slog.Logger
	users    *Users
	sessions *sessions
	throttle *throttle
	proxies  []netip.Prefix // admin.trusted_proxies
	audits   *auditLimiter  // rate-limits login.throttled entries
	oidc     *oidcLogin     // nil when OIDC is off
	pages    pages
	cop      *http.CrossOriginProtection
	now      func() time.Time
	routes   []route
	getPaths map[string]bool
	data     *dataStores // maps, sync log, queues: see data.go
}

// route is one registered endpoint and the permission it needs.
type route struct {
	pattern string // a ServeMux method pattern, "GET /users"
	perm    perm
	handler http.HandlerFunc
}

// mountApp adds the web app and its JSON API to the server's mux.
func (s *Server) mountApp(cfg AppConfig) error {
	_, err := s.mount(cfg, time.Now)
	return err
}

func (s *Server) mount(cfg AppConfig, now func() time.Time) (*app, error) {
	if err := cfg.Validate(); err != nil {
		return nil, fmt.Errorf("configuring the admin app: %w", err)
	}
	cfg = cfg.withDefaults()
	users, err := NewUsers(s.deps.DB)
	if err != nil {
		return nil, err
	}
	users.now = now
	ps, err := parsePages()
	if err != nil {
		return nil, err
	}
	a := &app{cfg: cfg, log: s.deps.Logger, users: users, pages: ps, now: now,
		sessions: &sessions{db: s.deps.DB, users: users, now: now, idle: cfg.SessionIdle, absolute: cfg.SessionMax, secure: cfg.secure()},
		throttle: &throttle{db: s.deps.DB, now: now, base: 2 * time.Second, max: 15 * time.Minute, forget: time.Hour},
		cop:      http.NewCrossOriginProtection(),
		audits:   &auditLimiter{every: time.Minute},
	}
	a.proxies, _ = parseProxies(cfg.TrustedProxies) // checked by Validate
	if cfg.PublicURL != "" {
		u, _ := url.Parse(cfg.PublicURL)
		if err := a.cop.AddTrustedOrigin(u.Scheme + "://" + u.Host); err != nil {
			return nil, fmt.Errorf("trusting admin.public_url: %w", err)
		}
	}
	a.cop.SetDenyHandler(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		a.renderError(w, r, http.StatusForbidden, "Cross-origin request refused.")
	}))
	if cfg.OIDC.Issuer != "" {
		a.oidc = newOIDCLogin(cfg, s.deps.DB, now)
	}
	if a.data, err = s.openData(); err != nil {
		return nil, err
	}
	a.routes = a.routeTable()
	a.getPaths = map[string]bool{}
	for _, rt := range a.routes {
		if path, ok := strings.CutPrefix(rt.pattern, "GET "); ok {
			a.getPaths[strings.TrimSuffix(path, "{$}")] = true
		}
		s.mux.Handle(rt.pattern, a.wrap(rt))
	}
	a.mountFallbacks(s.mux)
	return a, nil
}

// routeTable lists every page and API endpoint with the permission it
// needs. The role × route test walks this table.
func (a *app) routeTable() []route {
	rs := []route{
		{"GET /static/{file...}", permPublic, a.static},
		{"GET /login", permPublic, a.loginPage},
		{"POST /login", permPublic, a.login},
		{"POST /logout", permSignedIn, a.logout},
		{"GET /{$}", permDashboard, a.dashboard},
		{"GET /account/password", permSignedIn, a.passwordPage},
		{"POST /account/password", permSignedIn, a.changePassword},
		{"GET /users", permUsers, a.usersPage},
		{"POST /users", permUsers, a.createUser},
		{"POST /users/{id}/role", permUsers, a.setRole},
		{"POST /users/{id}/phi", permUsers, a.setPHI},
		{"POST /users/{id}/disabled", permUsers, a.setDisabled},
		{"GET /audit", permAudit, a.auditPage},
		{"GET /audit/export", permAudit, a.auditExport},
		{"GET /api/v1/openapi.json", permPublic, a.apiDocument},
		{"GET /api/v1/session", permSignedIn, a.apiSession},
		{"GET /api/v1/users", permUsers, a.apiListUsers},
		{"POST /api/v1/users", permUsers, a.apiCreateUser},
		{"PATCH /api/v1/users/{id}", permUsers, a.apiPatchUser},
		{"GET /api/v1/audit", permAudit, a.apiAudit},
		{"GET /maps", permMapsRead, a.mapsPage},
		{"POST /maps/import", permMapsEdit, a.importMaps},
		{"GET /maps/diff", permMapsRead, a.diffPage},
		{"GET /maps/preview", permPHI, a.previewLogged},
		{"GET /maps/versions/{id}", permMapsRead, a.versionPage},
		{"POST /maps/versions/{id}", permMapsEdit, a.saveYAML},
		{"POST /maps/versions/{id}/attribute", permMapsEdit, a.saveAttribute},
		{"GET /maps/versions/{id}/preview", permMapsRead, a.previewGet},
		{"POST /maps/versions/{id}/preview", permMapsRead, a.previewPage},
		{"GET /maps/versions/{id}/publish", permMapsEdit, a.publishConfirm},
		{"POST /maps/versions/{id}/publish", permMapsEdit, a.publishVersion},
		{"POST /maps/versions/{id}/discard", permMapsEdit, a.discardDraft},
		{"POST /maps/versions/{id}/rollback", permMapsEdit, a.rollbackVersion},
		{"POST /maps/versions/{id}/draft", permMapsEdit, a.draftFrom},
		{"GET /maps/versions/{id}/export", permMapsRead, a.exportVersion},
		{"GET /maps/versions/{id}/edit", permMapsEdit, a.editorPage},
		{"POST /maps/versions/{id}/edit", permMapsEdit, a.editorSave},
		{"GET /logs", permLogsRead, a.logsPage},
		{"GET /logs/export", permLogsExport, a.logsExport},
		{"GET /logs/{id}", permLogsRead, a.decisionPage},
		{"GET /logs/{id}/capture", permPHI, a.capturePage},
		{"GET /failures", permLogsRead, a.failuresPage},
		{"GET /api/v1/failures", permLogsRead, a.apiFailures},
		{"GET /conflicts", permLogsRead, a.conflictsPage},
		{"GET /conflicts/{id}", permLogsRead, a.conflictPage},
		{"POST /conflicts/{id}/resolve", permConflictsResolve, a.resolveConflictPost},
		{"GET /backfills", permDashboard, a.backfillsPage},
		{"GET /deadletters", permDLRead, a.deadLettersPage},
		{"GET /deadletters/{queue}/{seq}", permDLRead, a.deadLetterPage},
		{"POST /deadletters/confirm", permDLRedrive, a.confirmRedrive},
		{"POST /deadletters/redrive", permDLRedrive, a.redrivePost},
		{"POST /deadletters/discard", permDLRedrive, a.discardPost},
		{"GET /replay", permReplay, a.replayPage},
		{"POST /replay/preview", permReplay, a.replayPreview},
		{"POST /replay", permReplay, a.replayPost},
		{"GET /api/v1/maps", permMapsRead, a.apiMaps},
		{"POST /api/v1/maps/validate", permMapsRead, a.apiValidate},
		{"POST /api/v1/maps/import", permMapsEdit, a.apiImport},
		{"GET /api/v1/maps/versions/{id}", permMapsRead, a.apiVersion},
		{"GET /api/v1/maps/versions/{id}/export", permMapsRead, a.exportVersion},
		{"POST /api/v1/maps/versions/{id}/preview", permMapsRead, a.apiPreview},
		{"POST /api/v1/maps/versions/{id}/publish", permMapsEdit, a.apiPublish},
		{"POST /api/v1/maps/versions/{id}/rollback", permMapsEdit, a.apiRollback},
		{"POST /api/v1/maps/document", permMapsRead, a.apiMapDocument},
		{"POST /api/v1/maps/samples", permMapsRead, a.apiSamples},
		{"POST /api/v1/maps/evaluate", permMapsRead, a.apiEvaluate},
		{"GET /api/v1/maps/fhir-elements", permMapsRead, a.apiFHIRElements},
		{"GET /api/v1/maps/crm-attributes", permMapsRead, a.apiCRMAttributes},
		{"POST /api/v1/maps/crm-metadata/refresh", permMapsEdit, a.apiRefreshCRM},
		{"GET /api/v1/logs", permLogsRead, a.apiLogs},
		{"GET /api/v1/logs/export", permLogsExport, a.logsExport},
		{"GET /api/v1/logs/{id}", permLogsRead, a.apiDecision},
		{"GET /api/v1/conflicts", permLogsRead, a.apiConflicts},
		{"GET /api/v1/conflicts/{id}", permLogsRead, a.apiConflict},
		{"GET /api/v1/conflicts/{id}/values", permPHI, a.apiConflictValues},
		{"POST /api/v1/conflicts/{id}/resolve", permConflictsResolve, a.apiResolveConflict},
		{"GET /api/v1/deadletters", permDLRead, a.apiDeadLetters},
		{"GET /api/v1/deadletters/{queue}/{seq}", permDLRead, a.apiDeadLetter},
		{"POST /api/v1/deadletters/redrive", permDLRedrive, a.apiRedrive},
		{"POST /api/v1/deadletters/discard", permDLRedrive, a.apiDiscard},
		{"POST /api/v1/replay", permReplay, a.apiReplay},
		{"GET /api/v1/dashboard", permDashboard, a.apiDashboard},
		{"GET /alerts", permDashboard, a.alertsPage},
		{"POST /alerts/rules", permAlerts, a.saveAlertRule},
		{"POST /alerts/rules/{name}/delete", permAlerts, a.deleteAlertRule},
		{"GET /api/v1/alerts", permDashboard, a.apiAlerts},
	}
	if a.oidc != nil {
		rs = append(rs,
			route{"GET /login/oidc", permPublic, a.oidcStart},
			route{"GET /login/oidc/callback", permPublic, a.oidcCallback})
	}
	return rs
}

// wrap puts every route behind the security headers, the cross-origin
// check for state-changing methods, and its permission check.
func (a *app) wrap(rt route) http.Handler {
	return a.headers(a.cop.Handler(a.authorize(rt)))
}

// headers sets the security headers every response carries.
func (a *app) headers(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		h := w.Header()
		h.Set("Content-Security-Policy", "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "+
			"connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'")
		h.Set("X-Content-Type-Options", "nosniff")
		h.Set("X-Frame-Options", "DENY")
		h.Set("Referrer-Policy", "same-origin")
		h.Set("Cross-Origin-Opener-Policy", "same-origin")
		if a.cfg.secure() {
			h.Set("Strict-Transport-Security", "max-age=63072000; includeSubDomains")
		}
		if !strings.HasPrefix(r.URL.Path, "/static/") {
			h.Set("Cache-Control", "no-store")
		}
		next.ServeHTTP(w, r)
	})
}

type userKey struct{}

// currentUser is the signed-in user of a request that passed authorize.
func currentUser(r *http.Request) (User, bool) {
	u, ok := r.Context().Value(userKey{}).(User)
	return u, ok
}

// passwordChangeRoutes stay open while a one-time password must be changed.
var passwordChangeRoutes = []string{"GET /account/password", "POST /account/password", "POST /logout", "GET /api/v1/session"}

// authorize checks the session and the route's permission.
func (a *app) authorize(rt route) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		// Bodies of requests refused here are never read.
		if rt.perm == permPublic {
			// Public pages still know who is signed in (the sign-in page
			// sends them on); static files do not need to.
			if strings.HasPrefix(rt.pattern, "GET /static/") {
				a.serveRoute(rt, w, r)
				return
			}
			if u, err := a.sessions.user(r); err == nil {
				r = r.WithContext(context.WithValue(r.Context(), userKey{}, u))
			}
			a.serveRoute(rt, w, r)
			return
		}
		u, err := a.sessions.user(r)
		switch {
		case errors.Is(err, errNoSession):
			if isAPI(r) {
				a.renderError(w, r, http.StatusUnauthorized, "Sign in first.")
				return
			}
			next := "/login"
			if r.Method == http.MethodGet && r.URL.Path != "/" {
				next += "?next=" + url.QueryEscape(r.URL.RequestURI())
			}
			http.Redirect(w, r, next, http.StatusSeeOther)
			return
		case err != nil:
			a.serverError(w, r, "checking session", err)
			return
		}
		r = r.WithContext(context.WithValue(r.Context(), userKey{}, u))
		if u.MustChangePassword && !slices.Contains(passwordChangeRoutes, rt.pattern) {
			if isAPI(r) {
				a.renderError(w, r, http.StatusForbidden, "Change your one-time password first.")
				return
			}
			http.Redirect(w, r, "/account/password", http.StatusSeeOther)
			return
		}
		if !u.can(rt.perm) {
			a.renderError(w, r, http.StatusForbidden, "Your role does not allow this.")
			return
		}
		a.serveRoute(rt, w, r)
	})
}

func isAPI(r *http.Request) bool { return strings.HasPrefix(r.URL.Path, "/api/") }

// navItem is one entry of the main navigation.
type navItem struct {
	Label string
	Path  string
	perm  perm
}

// navigation lists the sections; each shows once its page is registered
// and the user may open it.
var navigation = []navItem{
	{"Dashboard", "/", permDashboard},
	{"Maps", "/maps", permMapsRead},
	{"Sync logs", "/logs", permLogsRead},
	{"Failing now", "/failures", permLogsRead},
	{"Conflicts", "/conflicts", permLogsRead},
	{"Dead letters", "/deadletters", permDLRead},
	{"Replay", "/replay", permReplay},
	{"Backfills", "/backfills", permDashboard},
	{"Alerts", "/alerts", permDashboard},
	{"Users", "/users", permUsers},
	{"Audit trail", "/audit", permAudit},
}

func (a *app) nav(u User) []navItem {
	var out []navItem
	for _, n := range navigation {
		if a.getPaths[n.Path] && u.can(n.perm) {
			out = append(out, n)
		}
	}
	return out
}

// actor names the signed-in user in the audit trail.
func actor(r *http.Request) string {
	if u, ok := currentUser(r); ok {
		return u.Email
	}
	return "anonymous"
}
