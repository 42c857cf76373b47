package admin

import (
	"bytes"
	"encoding/json"
	"fmt"
	"net/http"
	"strings"
	"testing"

	"gorm.io/gorm"

	"github.com/fhirsync/fhirsync/storage/storagetest"
)

// TestOpenAPIDescribesEveryAPIRoute keeps the served document and the
// route table in step, both ways.
func TestOpenAPIDescribesEveryAPIRoute(t *testing.T) {
	t.Parallel()
	e := newTestEnv(t, storagetest.Open(t, "sqlite"), AppConfig{})
	resp, err := http.Get(e.url + "/api/v1/openapi.json")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var doc struct {
		OpenAPI string                                `json:"openapi"`
		Paths   map[string]map[string]json.RawMessage `json:"paths"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&doc); err != nil || doc.OpenAPI == "" {
		t.Fatalf("document does not decode: %v", err)
	}
	documented := map[string]bool{}
	for path, ops := range doc.Paths {
		for method := range ops {
			documented[strings.ToUpper(method)+" "+path] = true
		}
	}
	for _, rt := range e.app.routes {
		if !strings.Contains(rt.pattern, " /api/") {
			continue
		}
		if !documented[rt.pattern] {
			t.Errorf("route %s is not in openapi.json", rt.pattern)
		}
		delete(documented, rt.pattern)
	}
	for op := range documented {
		t.Errorf("openapi.json describes %s, which is not registered", op)
	}
}

func TestUsersAPI(t *testing.T) {
	storagetest.Each(t, func(t *testing.T, db *gorm.DB) {
		e := newTestEnv(t, db, AppConfig{})
		admin := e.user("admin@example.org", RoleAdmin, true) // may grant PHI
		c := e.client()
		c.Jar.SetCookies(mustURL(e.url), []*http.Cookie{e.sessionCookie(admin)})
		call := func(method, path, body string) (int, map[string]any) {
			t.Helper()
			req, _ := http.NewRequest(method, e.url+path, strings.NewReader(body))
			req.Header.Set("Content-Type", "application/json")
			resp, err := c.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			defer resp.Body.Close()
			if ct := resp.Header.Get("Content-Type"); ct != "application/json" {
				t.Errorf("%s %s answered %s", method, path, ct)
			}
			var out map[string]any
			_ = json.NewDecoder(resp.Body).Decode(&out)
			return resp.StatusCode, out
		}

		code, created := call("POST", "/api/v1/users", `{"email":"Op@Example.org","role":"operator","phi":true,"password":"initial password"}`)
		if code != 201 || created["email"] != "op@example.org" || created["must_change_password"] != true {
			t.Fatalf("create = %d %v", code, created)
		}
		id := int64(created["id"].(float64))
		tests := []struct {
			name     string
			method   string
			path     string
			body     string
			want     int
			wantCode string
		}{
			{"patch role and phi", "PATCH", fmt.Sprintf("/api/v1/users/%d", id), `{"role":"viewer","phi":false}`, 200, ""},
			{"unknown field", "PATCH", fmt.Sprintf("/api/v1/users/%d", id), `{"rol":"viewer"}`, 400, "bad_request"},
			{"unknown role", "PATCH", fmt.Sprintf("/api/v1/users/%d", id), `{"role":"root"}`, 400, "bad_request"},
			{"unknown user", "PATCH", "/api/v1/users/999999", `{"disabled":true}`, 404, "not_found"},
			{"last admin", "PATCH", fmt.Sprintf("/api/v1/users/%d", admin.ID), `{"disabled":true}`, 409, "conflict"},
			{"duplicate", "POST", "/api/v1/users", `{"email":"op@example.org","role":"viewer"}`, 409, "conflict"},
			{"not JSON", "POST", "/api/v1/users", `email=x`, 400, "bad_request"},
			{"too large", "POST", "/api/v1/users", `{"name":"` + strings.Repeat("x", 70<<10) + `"}`, 413, "request_entity_too_large"},
		}
		for _, tt := range tests {
			t.Run(tt.name, func(t *testing.T) {
				code, out := call(tt.method, tt.path, tt.body)
				got := ""
				if e, ok := out["error"].(map[string]any); ok {
					got, _ = e["code"].(string)
				}
				if code != tt.want || got != tt.wantCode {
					t.Errorf("= %d %q, want %d %q (%v)", code, got, tt.want, tt.wantCode, out)
				}
			})
		}
		u, _ := e.app.users.Get(t.Context(), id)
		if u.Role != RoleViewer || u.PHI {
			t.Errorf("after the patch: %+v", u)
		}
		code, session := call("GET", "/api/v1/session", "")
		perms, _ := json.Marshal(session["permissions"])
		if code != 200 || !bytes.Contains(perms, []byte(`"users.manage"`)) || !bytes.Contains(perms, []byte(`"phi.view"`)) {
			t.Errorf("session = %d %s", code, perms)
		}
	})
}
