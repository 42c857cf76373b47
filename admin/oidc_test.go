package admin

import (
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"maps"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/go-jose/go-jose/v4"
	"gorm.io/gorm"

	"github.com/fhirsync/fhirsync/storage/storagetest"
)

// testIdP is a small OpenID Connect provider: discovery, JWKS, an
// authorize endpoint that approves at once, and a token endpoint that
// checks the client secret, the redirect URI and the PKCE verifier.
type testIdP struct {
	t        *testing.T
	url      string
	clientID string
	secret   string
	key      *rsa.PrivateKey
	clock    *testClock

	mu     sync.Mutex
	claims map[string]any // what the next sign-in's ID token says
	nonce  string         // when set, replaces the nonce the client sent
	grants map[string]idpGrant
	tokens int // ID tokens issued
}

type idpGrant struct {
	redirect, challenge, nonce string
	claims                     map[string]any
}

func newTestIdP(t *testing.T, clock *testClock) *testIdP {
	t.Helper()
	key, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatal(err)
	}
	p := &testIdP{t: t, clientID: "fhirsync-admin", secret: "s3cret", key: key, clock: clock, grants: map[string]idpGrant{}}
	mux := http.NewServeMux()
	mux.HandleFunc("GET /.well-known/openid-configuration", p.discovery)
	mux.HandleFunc("GET /jwks", p.jwks)
	mux.HandleFunc("GET /authorize", p.authorize)
	mux.HandleFunc("POST /token", p.token)
	srv := httptest.NewServer(mux)
	t.Cleanup(srv.Close)
	p.url = srv.URL
	return p
}

// signInAs sets the claims of the next sign-in.
func (p *testIdP) signInAs(claims map[string]any) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.claims = claims
}

func (p *testIdP) discovery(w http.ResponseWriter, _ *http.Request) {
	writeJSON(w, http.StatusOK, map[string]any{
		"issuer": p.url, "authorization_endpoint": p.url + "/authorize", "token_endpoint": p.url + "/token",
		"jwks_uri": p.url + "/jwks", "response_types_supported": []string{"code"},
		"subject_types_supported": []string{"public"}, "id_token_signing_alg_values_supported": []string{"RS256"},
		"code_challenge_methods_supported": []string{"S256"},
	})
}

func (p *testIdP) jwks(w http.ResponseWriter, _ *http.Request) {
	writeJSON(w, http.StatusOK, jose.JSONWebKeySet{Keys: []jose.JSONWebKey{
		{Key: &p.key.PublicKey, KeyID: "k1", Algorithm: "RS256", Use: "sig"}}})
}

func (p *testIdP) authorize(w http.ResponseWriter, r *http.Request) {
	q := r.URL.Query()
	if q.Get("response_type") != "code" || q.Get("client_id") != p.clientID || q.Get("code_challenge_method") != "S256" ||
		q.Get("code_challenge") == "" || q.Get("nonce") == "" || q.Get("state") == "" ||
		!strings.Contains(" "+q.Get("scope")+" ", " openid ") {
		http.Error(w, "bad authorization request: "+r.URL.RawQuery, http.StatusBadRequest)
		return
	}
	p.mu.Lock()
	code := rand.Text()
	p.grants[code] = idpGrant{redirect: q.Get("redirect_uri"), challenge: q.Get("code_challenge"), nonce: q.Get("nonce"), claims: p.claims}
	p.mu.Unlock()
	back, _ := url.Parse(q.Get("redirect_uri"))
	bq := back.Query()
	bq.Set("code", code)
	bq.Set("state", q.Get("state"))
	back.RawQuery = bq.Encode()
	http.Redirect(w, r, back.String(), http.StatusFound)
}

func (p *testIdP) token(w http.ResponseWriter, r *http.Request) {
	id, secret, ok := r.BasicAuth()
	if !ok {
		id, secret = r.PostFormValue("client_id"), r.PostFormValue("client_secret")
	}
	if id != p.clientID || secret != p.secret {
		writeJSON(w, http.StatusUnauthorized, map[string]string{"error": "invalid_client"})
		return
	}
	p.mu.Lock()
	g, found := p.grants[r.PostFormValue("code")]
	delete(p.grants, r.PostFormValue("code"))
	nonce := p.nonce
	p.mu.Unlock()
	sum := sha256.Sum256([]byte(r.PostFormValue("code_verifier")))
	if !found || r.PostFormValue("grant_type") != "authorization_code" || r.PostFormValue("redirect_uri") != g.redirect ||
		base64.RawURLEncoding.EncodeToString(sum[:]) != g.challenge {
		writeJSON(w, http.StatusBadRequest, map[string]string{"error": "invalid_grant"})
		return
	}
	if nonce == "" {
		nonce = g.nonce
	}
	now := p.clock.now()
	claims := map[string]any{"iss": p.url, "aud": p.clientID, "iat": now.Unix(), "exp": now.Add(5 * time.Minute).Unix(), "nonce": nonce}
	maps.Copy(claims, g.claims)
	payload, _ := json.Marshal(claims)
	signer, err := jose.NewSigner(jose.SigningKey{Algorithm: jose.RS256, Key: jose.JSONWebKey{Key: p.key, KeyID: "k1"}},
		(&jose.SignerOptions{}).WithType("JWT"))
	if err != nil {
		p.t.Errorf("signer: %v", err)
		return
	}
	obj, err := signer.Sign(payload)
	if err != nil {
		p.t.Errorf("signing: %v", err)
		return
	}
	raw, _ := obj.CompactSerialize()
	p.mu.Lock()
	p.tokens++
	p.mu.Unlock()
	writeJSON(w, http.StatusOK, map[string]any{"access_token": "at", "token_type": "Bearer", "expires_in": 300, "id_token": raw})
}

// followingClient follows redirects across the app and the provider.
func (e *testEnv) followingClient() *http.Client {
	c := e.client()
	c.CheckRedirect = nil
	return c
}

func TestOIDCSignIn(t *testing.T) {
	roleMap := map[string]string{"FhirSync.Admin": "admin", "FhirSync.Auditor": "auditor", "FhirSync.Viewer": "viewer"}
	storagetest.Each(t, func(t *testing.T, db *gorm.DB) {
		e := newTestEnv(t, db, AppConfig{}, withOIDC(roleMap, ""))
		c := e.followingClient()

		// First sign-in creates the account with the most powerful mapped role.
		e.idp.signInAs(map[string]any{"sub": "u-1", "email": "Dana@Example.org", "name": "Dana",
			"roles": []string{"FhirSync.Viewer", "FhirSync.Auditor", "Other"}})
		resp, err := c.Get(e.url + "/login/oidc?next=/audit")
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != 200 || resp.Request.URL.Path != "/audit" {
			t.Fatalf("OIDC sign-in ended at %s with %d, want /audit with 200", resp.Request.URL, resp.StatusCode)
		}
		u, err := e.app.users.ByEmail(t.Context(), "dana@example.org")
		if err != nil || u.Role != RoleAuditor || u.Local || u.PHI {
			t.Fatalf("OIDC user = %+v, %v; want a non-local auditor without PHI", u, err)
		}

		// Claims are authoritative: the next sign-in follows a role change.
		e.idp.signInAs(map[string]any{"sub": "u-1", "email": "dana@example.org", "roles": []string{"FhirSync.Admin", "FhirSync.PHI"}})
		c2 := e.followingClient()
		resp, err = c2.Get(e.url + "/login/oidc")
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if u, _ = e.app.users.ByEmail(t.Context(), "dana@example.org"); resp.StatusCode != 200 || u.Role != RoleAdmin || !u.PHI {
			t.Fatalf("second sign-in: %d, user %+v; want 200, admin with PHI", resp.StatusCode, u)
		}
		actions := strings.Join(e.auditActions(), "\n")
		for _, want := range []string{"oidc user.create", "dana@example.org login.success", "oidc user.role", "oidc user.phi"} {
			if !strings.Contains(actions, want) {
				t.Errorf("audit trail lacks %q:\n%s", want, actions)
			}
		}
	})
}

func TestOIDCSignInRefused(t *testing.T) {
	t.Parallel()
	db := storagetest.Open(t, "sqlite")
	e := newTestEnv(t, db, AppConfig{}, withOIDC(map[string]string{"FhirSync.Admin": "admin"}, ""))
	e.user("local@example.org", RoleViewer, false)

	tests := []struct {
		name   string
		claims map[string]any
		nonce  string
		tamper func(callback *url.URL)
	}{
		{name: "no mapped role", claims: map[string]any{"sub": "a", "email": "a@example.org", "roles": []string{"Other"}}},
		{name: "no email", claims: map[string]any{"sub": "b", "roles": "FhirSync.Admin"}},
		{name: "email of a local account", claims: map[string]any{"sub": "c", "email": "local@example.org", "roles": "FhirSync.Admin"}},
		{name: "wrong nonce", nonce: "replayed", claims: map[string]any{"sub": "d", "email": "d@example.org", "roles": "FhirSync.Admin"}},
		{name: "state from another browser", claims: map[string]any{"sub": "e", "email": "e@example.org", "roles": "FhirSync.Admin"},
			tamper: func(u *url.URL) { q := u.Query(); q.Set("state", "forged"); u.RawQuery = q.Encode() }},
		{name: "code not issued", claims: map[string]any{"sub": "f", "email": "f@example.org", "roles": "FhirSync.Admin"},
			tamper: func(u *url.URL) { q := u.Query(); q.Set("code", "made-up"); u.RawQuery = q.Encode() }},
		{name: "provider error", claims: map[string]any{"sub": "g", "email": "g@example.org", "roles": "FhirSync.Admin"},
			tamper: func(u *url.URL) { u.RawQuery = "error=access_denied" }},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			e.idp.signInAs(tt.claims)
			e.idp.mu.Lock()
			e.idp.nonce = tt.nonce
			e.idp.mu.Unlock()
			c := e.client() // stops at every redirect so the callback can be altered
			resp := e.get(c, "/login/oidc")
			resp, err := c.Get(resp.Header.Get("Location"))
			if err != nil {
				t.Fatal(err)
			}
			resp.Body.Close()
			callback, _ := url.Parse(resp.Header.Get("Location"))
			if tt.tamper != nil {
				tt.tamper(callback)
			}
			resp, err = c.Get(callback.String())
			if err != nil {
				t.Fatal(err)
			}
			resp.Body.Close()
			if resp.StatusCode != http.StatusForbidden {
				t.Errorf("callback = %d, want 403", resp.StatusCode)
			}
			if resp := e.get(c, "/api/v1/session"); resp.StatusCode != http.StatusUnauthorized {
				t.Errorf("after a refused sign-in the session API answers %d, want 401", resp.StatusCode)
			}
		})
	}

	t.Run("callback replayed", func(t *testing.T) {
		e.idp.signInAs(map[string]any{"sub": "h", "email": "h@example.org", "roles": "FhirSync.Admin"})
		e.idp.mu.Lock()
		e.idp.nonce = ""
		e.idp.mu.Unlock()
		c := e.client()
		resp := e.get(c, "/login/oidc")
		resp, _ = c.Get(resp.Header.Get("Location"))
		resp.Body.Close()
		callback := resp.Header.Get("Location")
		if resp := e.get(c, strings.TrimPrefix(callback, e.url)); resp.StatusCode != http.StatusSeeOther {
			t.Fatalf("first callback = %d, want 303", resp.StatusCode)
		}
		if resp := e.get(e.client(), strings.TrimPrefix(callback, e.url)); resp.StatusCode != http.StatusForbidden {
			t.Errorf("replayed callback = %d, want 403", resp.StatusCode)
		}
	})
}
