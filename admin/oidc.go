package admin

import (
	"context"
	"crypto/subtle"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/coreos/go-oidc/v3/oidc"
	"golang.org/x/oauth2"
	"gorm.io/gorm"
)

// OIDCConfig configures single sign-on with an OpenID Connect issuer such
// as Entra ID (https://login.microsoftonline.com/<tenant>/v2.0).
type OIDCConfig struct {
	Issuer       string `yaml:"issuer"`
	ClientID     string `yaml:"client_id"`
	ClientSecret string `yaml:"client_secret" secret:"true"`
	// RedirectURL is where the issuer sends users back; empty means
	// PublicURL + /login/oidc/callback.
	RedirectURL string `yaml:"redirect_url"`
	// Scopes are space-separated; empty means "openid email profile".
	Scopes string `yaml:"scopes"`
	// RoleClaim names the ID token claim holding role values (a string or
	// an array of strings); empty means "roles", Entra ID's app roles.
	RoleClaim string `yaml:"role_claim"`
	// RoleMap maps claim values to roles. When several match, the most
	// powerful role wins.
	RoleMap map[string]string `yaml:"role_map"`
	// PHIValue is the claim value that grants the PHI permission; empty
	// means OIDC users never get it from their claims.
	PHIValue string `yaml:"phi_value"`
	// DefaultRole applies when no claim value maps to a role; empty refuses
	// such users.
	DefaultRole string `yaml:"default_role"`
	// Label is the sign-in button text; empty means "Sign in with single sign-on".
	Label string `yaml:"label"`
}

func (c OIDCConfig) validate() []error {
	var errs []error
	if u, err := url.Parse(c.Issuer); err != nil || u.Host == "" {
		errs = append(errs, fmt.Errorf("admin.oidc.issuer %q is not a URL", c.Issuer))
	}
	if c.ClientID == "" {
		errs = append(errs, errors.New("admin.oidc.client_id is required"))
	}
	for v, role := range c.RoleMap {
		if _, err := ParseRole(role); err != nil {
			errs = append(errs, fmt.Errorf("admin.oidc.role_map[%q]: %w", v, err))
		}
	}
	if c.DefaultRole != "" {
		if _, err := ParseRole(c.DefaultRole); err != nil {
			errs = append(errs, fmt.Errorf("admin.oidc.default_role: %w", err))
		}
	}
	return errs
}

func (c OIDCConfig) label() string {
	if c.Label == "" {
		return "Sign in with single sign-on"
	}
	return c.Label
}

// oidcLogin runs the authorization code flow with PKCE, state and nonce.
// The issuer is discovered on first use, so a temporarily unreachable
// issuer does not stop the process from starting.
type oidcLogin struct {
	cfg    OIDCConfig
	secure bool
	db     *gorm.DB
	now    func() time.Time
	client *http.Client // nil means http.DefaultClient

	mu       sync.Mutex
	provider *oidc.Provider
	oauth    *oauth2.Config
	verifier *oidc.IDTokenVerifier
}

func newOIDCLogin(app AppConfig, db *gorm.DB, now func() time.Time) *oidcLogin {
	c := app.OIDC
	if c.RedirectURL == "" {
		c.RedirectURL = strings.TrimSuffix(app.PublicURL, "/") + "/login/oidc/callback"
	}
	if c.Scopes == "" {
		c.Scopes = "openid email profile"
	}
	if c.RoleClaim == "" {
		c.RoleClaim = "roles"
	}
	return &oidcLogin{cfg: c, secure: app.secure(), db: db, now: now}
}

func (o *oidcLogin) ctx(ctx context.Context) context.Context {
	if o.client != nil {
		return oidc.ClientContext(ctx, o.client)
	}
	return ctx
}

// setup discovers the issuer once.
func (o *oidcLogin) setup(ctx context.Context) (*oauth2.Config, *oidc.IDTokenVerifier, error) {
	o.mu.Lock()
	defer o.mu.Unlock()
	if o.provider == nil {
		p, err := oidc.NewProvider(o.ctx(ctx), o.cfg.Issuer)
		if err != nil {
			return nil, nil, fmt.Errorf("discovering OIDC issuer %s: %w", o.cfg.Issuer, err)
		}
		o.provider = p
		o.oauth = &oauth2.Config{ClientID: o.cfg.ClientID, ClientSecret: o.cfg.ClientSecret,
			Endpoint: p.Endpoint(), RedirectURL: o.cfg.RedirectURL, Scopes: strings.Fields(o.cfg.Scopes)}
		o.verifier = p.Verifier(&oidc.Config{ClientID: o.cfg.ClientID, Now: o.now})
	}
	return o.oauth, o.verifier, nil
}

// oidcFlowRow is a sign-in in progress, keyed by the hash of its state.
type oidcFlowRow struct {
	StateHash string `gorm:"primaryKey"`
	Nonce     string
	Verifier  string
	ReturnTo  string
	ExpiresAt time.Time
}

func (oidcFlowRow) TableName() string { return "admin_oidc_flows" }

const (
	oidcStateCookie = "fhirsync_oidc_state"
	oidcFlowTTL     = 10 * time.Minute
)

// oidcStart sends the browser to the issuer.
func (a *app) oidcStart(w http.ResponseWriter, r *http.Request) {
	o := a.oidc
	conf, _, err := o.setup(r.Context())
	if err != nil {
		a.log.Error("OIDC sign-in unavailable", "error", err)
		a.renderError(w, r, http.StatusBadGateway, "Single sign-on is not reachable right now.")
		return
	}
	state, nonce, verifier := randomToken(32), randomToken(32), oauth2.GenerateVerifier()
	now := stamp(a.now())
	row := oidcFlowRow{StateHash: hashToken(state), Nonce: nonce, Verifier: verifier,
		ReturnTo: safeNext(r.URL.Query().Get("next")), ExpiresAt: now.Add(oidcFlowTTL)}
	db := o.db.WithContext(r.Context())
	db.Where("expires_at < ?", now).Delete(&oidcFlowRow{})
	if err := db.Create(&row).Error; err != nil {
		a.serverError(w, r, "starting OIDC sign-in", err)
		return
	}
	http.SetCookie(w, &http.Cookie{Name: oidcStateCookie, Value: state, Path: "/login/oidc", HttpOnly: true,
		Secure: o.secure, SameSite: http.SameSiteLaxMode, MaxAge: int(oidcFlowTTL.Seconds())})
	http.Redirect(w, r, conf.AuthCodeURL(state, oidc.Nonce(nonce), oauth2.S256ChallengeOption(verifier)), http.StatusFound)
}

// oidcCallback finishes the flow: it checks the state against the cookie,
// uses the flow once, redeems the code with the PKCE verifier, verifies
// the ID token and its nonce, maps claims to a role and signs the user in.
func (a *app) oidcCallback(w http.ResponseWriter, r *http.Request) {
	ctx, o, q := r.Context(), a.oidc, r.URL.Query()
	refuse := func(reason string, err error) {
		a.log.Warn("OIDC sign-in refused", "reason", reason, "error", err)
		a.audit(ctx, "oidc", "login.failure", "", "method oidc, "+reason)
		a.render(w, r, http.StatusForbidden, "login", "Sign in", a.loginData("", "", "Single sign-on failed: "+reason+"."))
	}
	http.SetCookie(w, &http.Cookie{Name: oidcStateCookie, Path: "/login/oidc", MaxAge: -1, HttpOnly: true, Secure: o.secure})
	if e := q.Get("error"); e != "" {
		refuse("the identity provider answered "+e, nil)
		return
	}
	state := q.Get("state")
	c, err := r.Cookie(oidcStateCookie)
	if err != nil || state == "" || subtle.ConstantTimeCompare([]byte(c.Value), []byte(state)) != 1 {
		refuse("the sign-in state does not match this browser", err)
		return
	}
	var flows []oidcFlowRow
	db := o.db.WithContext(ctx)
	if err := db.Where("state_hash = ?", hashToken(state)).Limit(1).Find(&flows).Error; err != nil {
		a.serverError(w, r, "reading OIDC sign-in", err)
		return
	}
	if len(flows) == 0 {
		refuse("the sign-in was already used or is unknown", nil)
		return
	}
	flow := flows[0]
	// Deleting first makes the flow single-use even under a replayed callback.
	if res := db.Where("state_hash = ?", flow.StateHash).Delete(&oidcFlowRow{}); res.Error != nil || res.RowsAffected != 1 {
		refuse("the sign-in was already used", res.Error)
		return
	}
	if a.now().After(flow.ExpiresAt) {
		refuse("the sign-in took too long", nil)
		return
	}
	conf, verifier, err := o.setup(ctx)
	if err != nil {
		refuse("the identity provider is not reachable", err)
		return
	}
	tok, err := conf.Exchange(o.ctx(ctx), q.Get("code"), oauth2.VerifierOption(flow.Verifier))
	if err != nil {
		refuse("the authorization code was not accepted", err)
		return
	}
	raw, _ := tok.Extra("id_token").(string)
	idt, err := verifier.Verify(o.ctx(ctx), raw)
	if err != nil {
		refuse("the ID token is not valid", err)
		return
	}
	if subtle.ConstantTimeCompare([]byte(idt.Nonce), []byte(flow.Nonce)) != 1 {
		refuse("the ID token nonce does not match", nil)
		return
	}
	var claims map[string]any
	if err := idt.Claims(&claims); err != nil {
		refuse("the ID token claims cannot be read", err)
		return
	}
	id, err := o.identity(idt.Issuer, idt.Subject, claims)
	if err != nil {
		refuse(err.Error(), nil)
		return
	}
	u, err := a.users.signInOIDC(ctx, id)
	if err != nil {
		if status, _ := userErrorStatus(err); status == http.StatusInternalServerError {
			a.serverError(w, r, "signing in with OIDC", err)
			return
		}
		refuse("the account cannot be used: "+err.Error(), nil)
		return
	}
	if u.Disabled {
		refuse("the account is disabled", nil)
		return
	}
	if err := a.signIn(ctx, w, r, u, "oidc"); err != nil {
		a.serverError(w, r, "starting a session", err)
		return
	}
	http.Redirect(w, r, safeNext(flow.ReturnTo), http.StatusSeeOther)
}

// oidcIdentity is what an ID token says about a user.
type oidcIdentity struct {
	Subject string // issuer + " " + sub: unique across issuers
	Email   string
	Name    string
	Role    Role
	PHI     bool
}

// identity maps ID token claims to an account.
func (o *oidcLogin) identity(issuer, subject string, claims map[string]any) (oidcIdentity, error) {
	id := oidcIdentity{Subject: issuer + " " + subject}
	for _, k := range []string{"email", "preferred_username", "upn"} {
		if s, _ := claims[k].(string); s != "" {
			id.Email = strings.ToLower(s)
			break
		}
	}
	if id.Email == "" {
		return id, errors.New("the ID token has no email, preferred_username or upn claim")
	}
	id.Name, _ = claims["name"].(string)
	var values []string
	switch v := claims[o.cfg.RoleClaim].(type) {
	case string:
		values = []string{v}
	case []any:
		for _, x := range v {
			if s, ok := x.(string); ok {
				values = append(values, s)
			}
		}
	}
	best := len(Roles)
	for _, v := range values {
		if i := slices.Index(Roles, Role(o.cfg.RoleMap[v])); i >= 0 && i < best {
			best = i
		}
		if o.cfg.PHIValue != "" && v == o.cfg.PHIValue {
			id.PHI = true
		}
	}
	switch {
	case best < len(Roles):
		id.Role = Roles[best]
	case o.cfg.DefaultRole != "":
		id.Role = Role(o.cfg.DefaultRole)
	default:
		return id, fmt.Errorf("no %s claim value maps to a role", o.cfg.RoleClaim)
	}
	return id, nil
}

// signInOIDC finds or creates the account of an OIDC identity. Claims are
// authoritative: the role and PHI flag follow them at every sign-in, and
// each change is recorded.
func (s *Users) signInOIDC(ctx context.Context, id oidcIdentity) (User, error) {
	const actor = "oidc"
	r, err := s.row(ctx, s.db, "oidc_subject = ?", id.Subject)
	if errors.Is(err, ErrUserNotFound) {
		email, err := normalizeEmail(id.Email)
		if err != nil {
			return User{}, err
		}
		subject := id.Subject
		return s.insert(ctx, actor, userRow{Email: email, Name: id.Name, Role: string(id.Role), PHI: id.PHI, OIDCSubject: &subject}, "")
	}
	if err != nil {
		return User{}, err
	}
	if r.Disabled {
		return r.user(), nil
	}
	if Role(r.Role) != id.Role {
		if err := s.SetRole(ctx, actor, r.ID, id.Role); err != nil {
			return User{}, err
		}
	}
	if r.PHI != id.PHI {
		if err := s.SetPHI(ctx, actor, r.ID, id.PHI); err != nil {
			return User{}, err
		}
	}
	return s.Get(ctx, r.ID)
}
