package admin

import (
	"fmt"
	"net/http"
	"net/url"
	"strings"
	"testing"

	"gorm.io/gorm"

	"github.com/fhirsync/fhirsync/storage/storagetest"
)

// TestPHIGrantableOnlyByHolder: an admin without the PHI permission can
// neither grant it to themselves nor to anyone else, on the pages or the
// API; one who holds it can; withdrawing needs no PHI.
func TestPHIGrantableOnlyByHolder(t *testing.T) {
	storagetest.Each(t, func(t *testing.T, db *gorm.DB) {
		e := newTestEnv(t, db, AppConfig{})
		plain := e.user("plain@example.org", RoleAdmin, false)
		holder := e.user("holder@example.org", RoleAdmin, true)
		target := e.user("target@example.org", RoleViewer, false)
		as := func(u User) *http.Client {
			c := e.client()
			c.Jar.SetCookies(mustURL(e.url), []*http.Cookie{e.sessionCookie(u)})
			return c
		}
		apiCall := func(c *http.Client, method, path, body string) int {
			req, _ := http.NewRequest(method, e.url+path, strings.NewReader(body))
			req.Header.Set("Content-Type", "application/json")
			resp, err := c.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			resp.Body.Close()
			return resp.StatusCode
		}
		phiOf := func(id int64) bool {
			u, err := e.app.users.Get(t.Context(), id)
			if err != nil {
				t.Fatal(err)
			}
			return u.PHI
		}
		pc := as(plain)
		refused := []struct {
			name string
			do   func() int
		}{
			{"page grant to self", func() int {
				return e.postForm(pc, fmt.Sprintf("/users/%d/phi", plain.ID), url.Values{"phi": {"on"}}).StatusCode
			}},
			{"page grant to other", func() int {
				return e.postForm(pc, fmt.Sprintf("/users/%d/phi", target.ID), url.Values{"phi": {"on"}}).StatusCode
			}},
			{"page create with PHI", func() int {
				return e.postForm(pc, "/users", url.Values{"email": {"new1@example.org"}, "role": {"viewer"},
					"phi": {"on"}, "password": {"a first password here"}}).StatusCode
			}},
			{"API patch self", func() int {
				return apiCall(pc, "PATCH", fmt.Sprintf("/api/v1/users/%d", plain.ID), `{"phi":true}`)
			}},
			{"API patch role and PHI", func() int {
				return apiCall(pc, "PATCH", fmt.Sprintf("/api/v1/users/%d", target.ID), `{"role":"auditor","phi":true}`)
			}},
			{"API create with PHI", func() int {
				return apiCall(pc, "POST", "/api/v1/users", `{"email":"new2@example.org","role":"viewer","phi":true,"password":"a first password here"}`)
			}},
		}
		for _, tt := range refused {
			if got := tt.do(); got != http.StatusForbidden {
				t.Errorf("%s = %d, want 403", tt.name, got)
			}
		}
		if phiOf(plain.ID) || phiOf(target.ID) {
			t.Fatal("a refused grant changed a user")
		}
		if u, _ := e.app.users.Get(t.Context(), target.ID); u.Role != RoleViewer {
			t.Errorf("a refused patch changed the role to %s", u.Role)
		}
		for _, email := range []string{"new1@example.org", "new2@example.org"} {
			if _, err := e.app.users.ByEmail(t.Context(), email); err == nil {
				t.Errorf("%s was created by a refused request", email)
			}
		}
		hc := as(holder)
		if got := e.postForm(hc, fmt.Sprintf("/users/%d/phi", target.ID), url.Values{"phi": {"on"}}).StatusCode; got != http.StatusSeeOther || !phiOf(target.ID) {
			t.Errorf("grant by a holder = %d, phi %t; want 303 and granted", got, phiOf(target.ID))
		}
		if got := apiCall(pc, "PATCH", fmt.Sprintf("/api/v1/users/%d", target.ID), `{"phi":false}`); got != http.StatusOK || phiOf(target.ID) {
			t.Errorf("withdrawal by an admin without PHI = %d, phi %t; want 200 and withdrawn", got, phiOf(target.ID))
		}
	})
}
