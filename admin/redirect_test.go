package admin

import (
	"net/http"
	"net/url"
	"testing"

	"github.com/fhirsync/fhirsync/storage/storagetest"
)

func TestSafeNext(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name, next, want string
	}{
		{"empty", "", "/"},
		{"a page", "/maps", "/maps"},
		{"a page with a query", "/logs?outcome=failed&after=3", "/logs?outcome=failed&after=3"},
		{"a page with a fragment", "/maps/versions/2#attr", "/maps/versions/2#attr"},
		{"encoded slash inside a path", "/logs/a%2Fb", "/logs/a%2Fb"},
		{"the sign-in page itself", "/login?next=/", "/"},
		{"relative path", "maps", "/"},
		{"protocol-relative", "//evil.example", "/"},
		{"protocol-relative with path", "//evil.example/maps", "/"},
		{"backslash after slash", "/\\evil.example", "/"},
		{"backslash later", "/maps\\..\\evil", "/"},
		{"tab between slashes", "/\t/evil.example", "/"},
		{"newline between slashes", "/\n/evil.example", "/"},
		{"carriage return between slashes", "/\r/evil.example", "/"},
		{"encoded tab", "/%09/evil.example", "/"},
		{"encoded newline", "/%0a/evil.example", "/"},
		{"encoded backslash", "/%5Cevil.example", "/"},
		{"encoded second slash", "/%2F/evil.example", "/"},
		{"NUL", "/\x00/evil.example", "/"},
		{"DEL", "/\x7f/evil.example", "/"},
		{"absolute http URL", "http://evil.example/", "/"},
		{"absolute https URL", "https://evil.example/", "/"},
		{"scheme without slashes", "http:evil.example", "/"},
		{"javascript", "javascript:alert(1)", "/"},
		{"data", "data:text/html,hi", "/"},
		{"leading space", " /maps", "/"},
		{"user info", "//user@evil.example", "/"},
		{"triple slash", "///evil.example", "/"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := safeNext(tc.next); got != tc.want {
				t.Errorf("safeNext(%q) = %q, want %q", tc.next, got, tc.want)
			}
			// Whatever passes resolves to this origin as a browser would.
			got := safeNext(tc.next)
			base, _ := url.Parse("https://sync.example.org/login")
			ref, err := url.Parse(got)
			if err != nil || base.ResolveReference(ref).Host != "sync.example.org" {
				t.Errorf("safeNext(%q) = %q leaves the origin", tc.next, got)
			}
		})
	}
}

// TestSignInRedirectStaysOnSite: the encoded-tab target of the report is
// answered with a redirect home, both from the sign-in form and from the
// sign-in page of a signed-in user.
func TestSignInRedirectStaysOnSite(t *testing.T) {
	t.Parallel()
	e := newTestEnv(t, storagetest.Open(t, "sqlite"), AppConfig{})
	e.user("admin@example.org", RoleAdmin, false)
	for _, next := range []string{"/\t/evil.example", "//evil.example", "/\\evil.example", "https://evil.example/"} {
		c := e.client()
		resp := e.postForm(c, "/login", url.Values{"email": {"admin@example.org"}, "password": {testPassword}, "next": {next}})
		if resp.StatusCode != http.StatusSeeOther || resp.Header.Get("Location") != "/" {
			t.Errorf("sign-in with next=%q: %d Location %q, want 303 to /", next, resp.StatusCode, resp.Header.Get("Location"))
		}
		resp = e.get(c, "/login?next="+url.QueryEscape(next))
		if resp.StatusCode != http.StatusSeeOther || resp.Header.Get("Location") != "/" {
			t.Errorf("signed-in GET /login?next=%q: %d Location %q, want 303 to /", next, resp.StatusCode, resp.Header.Get("Location"))
		}
	}
	c := e.client()
	resp := e.postForm(c, "/login", url.Values{"email": {"admin@example.org"}, "password": {testPassword}, "next": {"/maps?x=1"}})
	if resp.Header.Get("Location") != "/maps?x=1" {
		t.Errorf("a same-site next is kept: Location %q", resp.Header.Get("Location"))
	}
}
