package admin

import (
	"net/http"
	"strings"
	"testing"

	"github.com/fhirsync/fhirsync/storage/storagetest"
)

// TestSecureCookies: the session cookie is Secure, and HSTS sent, when the
// listener serves TLS itself or the public URL is https; not on a plain
// http install.
func TestSecureCookies(t *testing.T) {
	t.Parallel()
	db := storagetest.Open(t, "sqlite")
	for _, tc := range []struct {
		name       string
		cfg        AppConfig
		wantSecure bool
	}{
		{"plain http", AppConfig{}, false},
		{"TLS listener", AppConfig{TLS: true}, true},
		{"https public URL", AppConfig{PublicURL: "https://sync.example.org"}, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			e := newTestEnv(t, db, tc.cfg)
			email := strings.ReplaceAll(tc.name, " ", "-") + "@example.org"
			e.user(email, RoleViewer, false)
			req, _ := http.NewRequest(http.MethodPost, e.url+"/login", strings.NewReader("email="+email+"&password="+strings.ReplaceAll(testPassword, " ", "+")))
			req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
			resp, err := e.client().Do(req)
			if err != nil {
				t.Fatal(err)
			}
			resp.Body.Close()
			cookies := resp.Cookies()
			if resp.StatusCode != http.StatusSeeOther || len(cookies) == 0 {
				t.Fatalf("sign-in: %d with %d cookies", resp.StatusCode, len(cookies))
			}
			for _, c := range cookies {
				if c.Secure != tc.wantSecure {
					t.Errorf("cookie %s Secure = %v, want %v", c.Name, c.Secure, tc.wantSecure)
				}
			}
			if hsts := resp.Header.Get("Strict-Transport-Security") != ""; hsts != tc.wantSecure {
				t.Errorf("HSTS sent = %v, want %v", hsts, tc.wantSecure)
			}
		})
	}
}
