package admin

import (
	"fmt"
	"net/http"
	"slices"
	"strings"
	"testing"

	"gorm.io/gorm"

	"github.com/fhirsync/fhirsync/storage/storagetest"
)

// specRoles is the role table as the product specifies it (DESIGN.md §8),
// written out independently of rolePerms.
var specRoles = map[Role][]string{
	RoleAdmin: {"dashboard.read", "maps.read", "maps.edit", "logs.read", "logs.export", "deadletters.read",
		"deadletters.redrive", "replay.send", "users.manage", "audit.read", "conflicts.resolve", "alerts.manage"},
	RoleEditor:   {"dashboard.read", "maps.read", "maps.edit", "logs.read", "deadletters.read"},
	RoleOperator: {"dashboard.read", "maps.read", "logs.read", "deadletters.read", "deadletters.redrive", "replay.send", "conflicts.resolve"},
	RoleAuditor:  {"dashboard.read", "maps.read", "logs.read", "logs.export", "deadletters.read", "audit.read"},
	RoleViewer:   {"dashboard.read", "maps.read", "logs.read", "deadletters.read"},
}

// routeSpec is what a route must answer. perm "public" routes answer
// anon to everyone without a session and signedIn to everyone with one;
// other routes answer allowed to holders of perm ("signed_in": any user).
type routeSpec struct {
	perm     string
	allowed  int
	anon     int
	signedIn int
}

// routeSpecs must name every registered route: a new route without an
// entry fails TestRoleRouteMatrix. Bodies are empty forms or "{}".
var routeSpecs = map[string]routeSpec{
	"GET /static/{file...}":     {perm: "public", anon: 200, signedIn: 200},
	"GET /login":                {perm: "public", anon: 200, signedIn: 303},
	"POST /login":               {perm: "public", anon: 400, signedIn: 400},
	"GET /login/oidc":           {perm: "public", anon: 302, signedIn: 302},
	"GET /login/oidc/callback":  {perm: "public", anon: 403, signedIn: 403},
	"POST /logout":              {perm: "signed_in", allowed: 303},
	"GET /{$}":                  {perm: "dashboard.read", allowed: 200},
	"GET /account/password":     {perm: "signed_in", allowed: 200},
	"POST /account/password":    {perm: "signed_in", allowed: 400},
	"GET /users":                {perm: "users.manage", allowed: 200},
	"POST /users":               {perm: "users.manage", allowed: 400},
	"POST /users/{id}/role":     {perm: "users.manage", allowed: 400},
	"POST /users/{id}/phi":      {perm: "users.manage", allowed: 303},
	"POST /users/{id}/disabled": {perm: "users.manage", allowed: 303},
	"GET /audit/export":         {perm: "audit.read", allowed: 200},
	"GET /audit":                {perm: "audit.read", allowed: 200},
	"GET /api/v1/openapi.json":  {perm: "public", anon: 200, signedIn: 200},
	"GET /api/v1/session":       {perm: "signed_in", allowed: 200},
	"GET /api/v1/users":         {perm: "users.manage", allowed: 200},
	"POST /api/v1/users":        {perm: "users.manage", allowed: 400},
	"PATCH /api/v1/users/{id}":  {perm: "users.manage", allowed: 200},
	"GET /api/v1/audit":         {perm: "audit.read", allowed: 200},

	"GET /maps":                                {perm: "maps.read", allowed: 200},
	"POST /maps/import":                        {perm: "maps.edit", allowed: 400},
	"GET /maps/diff":                           {perm: "maps.read", allowed: 200},
	"GET /maps/preview":                        {perm: "phi.view", allowed: 404},
	"GET /maps/versions/{id}":                  {perm: "maps.read", allowed: 404},
	"POST /maps/versions/{id}":                 {perm: "maps.edit", allowed: 404},
	"POST /maps/versions/{id}/attribute":       {perm: "maps.edit", allowed: 400},
	"GET /maps/versions/{id}/preview":          {perm: "maps.read", allowed: 404},
	"POST /maps/versions/{id}/preview":         {perm: "maps.read", allowed: 400},
	"GET /maps/versions/{id}/publish":          {perm: "maps.edit", allowed: 404},
	"POST /maps/versions/{id}/publish":         {perm: "maps.edit", allowed: 404},
	"POST /maps/versions/{id}/discard":         {perm: "maps.edit", allowed: 404},
	"POST /maps/versions/{id}/rollback":        {perm: "maps.edit", allowed: 404},
	"POST /maps/versions/{id}/draft":           {perm: "maps.edit", allowed: 404},
	"GET /maps/versions/{id}/export":           {perm: "maps.read", allowed: 404},
	"GET /maps/versions/{id}/edit":             {perm: "maps.edit", allowed: 404},
	"POST /maps/versions/{id}/edit":            {perm: "maps.edit", allowed: 404},
	"GET /logs":                                {perm: "logs.read", allowed: 200},
	"GET /logs/export":                         {perm: "logs.export", allowed: 200},
	"GET /logs/{id}":                           {perm: "logs.read", allowed: 404},
	"GET /logs/{id}/capture":                   {perm: "phi.view", allowed: 404},
	"GET /failures":                            {perm: "logs.read", allowed: 200},
	"GET /api/v1/failures":                     {perm: "logs.read", allowed: 200},
	"GET /conflicts":                           {perm: "logs.read", allowed: 200},
	"GET /conflicts/{id}":                      {perm: "logs.read", allowed: 404},
	"POST /conflicts/{id}/resolve":             {perm: "conflicts.resolve", allowed: 400},
	"GET /api/v1/conflicts":                    {perm: "logs.read", allowed: 200},
	"GET /api/v1/conflicts/{id}":               {perm: "logs.read", allowed: 404},
	"GET /api/v1/conflicts/{id}/values":        {perm: "phi.view", allowed: 404},
	"POST /api/v1/conflicts/{id}/resolve":      {perm: "conflicts.resolve", allowed: 400},
	"GET /deadletters":                         {perm: "deadletters.read", allowed: 200},
	"GET /deadletters/{queue}/{seq}":           {perm: "deadletters.read", allowed: 404},
	"POST /deadletters/confirm":                {perm: "deadletters.redrive", allowed: 400},
	"POST /deadletters/redrive":                {perm: "deadletters.redrive", allowed: 400},
	"POST /deadletters/discard":                {perm: "deadletters.redrive", allowed: 400},
	"GET /replay":                              {perm: "replay.send", allowed: 200},
	"POST /replay/preview":                     {perm: "replay.send", allowed: 400},
	"POST /replay":                             {perm: "replay.send", allowed: 400},
	"GET /api/v1/maps":                         {perm: "maps.read", allowed: 200},
	"POST /api/v1/maps/validate":               {perm: "maps.read", allowed: 400},
	"POST /api/v1/maps/import":                 {perm: "maps.edit", allowed: 400},
	"GET /api/v1/maps/versions/{id}":           {perm: "maps.read", allowed: 404},
	"GET /api/v1/maps/versions/{id}/export":    {perm: "maps.read", allowed: 404},
	"POST /api/v1/maps/versions/{id}/preview":  {perm: "maps.read", allowed: 400},
	"POST /api/v1/maps/versions/{id}/publish":  {perm: "maps.edit", allowed: 404},
	"POST /api/v1/maps/versions/{id}/rollback": {perm: "maps.edit", allowed: 404},
	"POST /api/v1/maps/document":               {perm: "maps.read", allowed: 400},
	"POST /api/v1/maps/samples":                {perm: "maps.read", allowed: 400},
	"POST /api/v1/maps/evaluate":               {perm: "maps.read", allowed: 400},
	"GET /api/v1/maps/fhir-elements":           {perm: "maps.read", allowed: 400},
	"GET /api/v1/maps/crm-attributes":          {perm: "maps.read", allowed: 400},
	"POST /api/v1/maps/crm-metadata/refresh":   {perm: "maps.edit", allowed: 404},
	"GET /api/v1/logs":                         {perm: "logs.read", allowed: 200},
	"GET /api/v1/logs/export":                  {perm: "logs.export", allowed: 200},
	"GET /api/v1/logs/{id}":                    {perm: "logs.read", allowed: 404},
	"GET /api/v1/deadletters":                  {perm: "deadletters.read", allowed: 200},
	"GET /api/v1/deadletters/{queue}/{seq}":    {perm: "deadletters.read", allowed: 404},
	"POST /api/v1/deadletters/redrive":         {perm: "deadletters.redrive", allowed: 400},
	"POST /api/v1/deadletters/discard":         {perm: "deadletters.redrive", allowed: 400},
	"POST /api/v1/replay":                      {perm: "replay.send", allowed: 400},
	"GET /api/v1/dashboard":                    {perm: "dashboard.read", allowed: 200},
	"GET /backfills":                           {perm: "dashboard.read", allowed: 200},
	"GET /alerts":                              {perm: "dashboard.read", allowed: 200},
	"POST /alerts/rules":                       {perm: "alerts.manage", allowed: 400},
	"POST /alerts/rules/{name}/delete":         {perm: "alerts.manage", allowed: 303},
	"GET /api/v1/alerts":                       {perm: "dashboard.read", allowed: 200},
}

// matrixRequest builds a request for a route pattern, filling path
// wildcards with real values.
func matrixRequest(t *testing.T, base, pattern string, target User) *http.Request {
	method, path, _ := strings.Cut(pattern, " ")
	path = strings.ReplaceAll(path, "{$}", "")
	path = strings.ReplaceAll(path, "{id}", fmt.Sprint(target.ID))
	path = strings.ReplaceAll(path, "{file...}", "app.css")
	var body string
	switch {
	case method == http.MethodGet:
	case strings.HasPrefix(path, "/api/"):
		body = "{}"
	}
	req, err := http.NewRequest(method, base+path, strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	if method != http.MethodGet {
		if strings.HasPrefix(path, "/api/") {
			req.Header.Set("Content-Type", "application/json")
		} else {
			req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
		}
	}
	return req
}

func TestRoleRouteMatrix(t *testing.T) {
	storagetest.Each(t, func(t *testing.T, db *gorm.DB) {
		e := newTestEnv(t, db, AppConfig{}, withOIDC(map[string]string{"FhirSync.Admin": "admin"}, ""))
		target := e.user("target@example.org", RoleViewer, false)
		e.user("keeper@example.org", RoleAdmin, false) // keeps an admin around whatever the matrix does

		var registered []string
		for _, rt := range e.app.routes {
			registered = append(registered, rt.pattern)
			if _, ok := routeSpecs[rt.pattern]; !ok {
				t.Errorf("route %q has no entry in routeSpecs; add what each role must get", rt.pattern)
			}
		}
		for p := range routeSpecs {
			if !slices.Contains(registered, p) {
				t.Errorf("routeSpecs names %q, which is not registered", p)
			}
		}

		identities := []Role{"", RoleAdmin, RoleEditor, RoleOperator, RoleAuditor, RoleViewer}
		users := map[Role]User{}
		for _, r := range identities[1:] {
			users[r] = e.user(string(r)+"@example.org", r, false)
		}
		client := e.client()
		for _, rt := range e.app.routes {
			spec := routeSpecs[rt.pattern]
			for _, role := range identities {
				name := string(role)
				if name == "" {
					name = "anonymous"
				}
				t.Run(rt.pattern+"/"+name, func(t *testing.T) {
					req := matrixRequest(t, e.url, rt.pattern, target)
					if role != "" {
						req.AddCookie(e.sessionCookie(users[role]))
					}
					resp, err := client.Do(req)
					if err != nil {
						t.Fatal(err)
					}
					resp.Body.Close()
					api := strings.Contains(rt.pattern, " /api/")
					want, wantLogin := spec.allowed, false
					switch {
					case spec.perm == "public" && role == "":
						want = spec.anon
					case spec.perm == "public":
						want = spec.signedIn
					case role == "" && api:
						want = http.StatusUnauthorized
					case role == "":
						want, wantLogin = http.StatusSeeOther, true
					case spec.perm != "signed_in" && !slices.Contains(specRoles[role], spec.perm):
						want = http.StatusForbidden
					}
					if resp.StatusCode != want {
						t.Errorf("%s as %s = %d, want %d", rt.pattern, name, resp.StatusCode, want)
					}
					if loc := resp.Header.Get("Location"); wantLogin && !strings.HasPrefix(loc, "/login") {
						t.Errorf("%s as %s redirects to %q, want the sign-in page", rt.pattern, name, loc)
					}
				})
			}
		}
	})
}

// TestCrossOriginPostsRefused sends every state-changing route a request
// that a browser makes from another site: all must be refused before they
// act, while the same request from this origin goes through.
func TestCrossOriginPostsRefused(t *testing.T) {
	storagetest.Each(t, func(t *testing.T, db *gorm.DB) {
		e := newTestEnv(t, db, AppConfig{}, withOIDC(map[string]string{"FhirSync.Admin": "admin"}, ""))
		admin := e.user("admin@example.org", RoleAdmin, true) // may grant PHI
		target := e.user("target@example.org", RoleViewer, false)
		client := e.client()
		headers := []struct {
			name   string
			header map[string]string
		}{
			{"origin header", map[string]string{"Origin": "https://evil.example"}},
			{"fetch metadata", map[string]string{"Sec-Fetch-Site": "cross-site"}},
			{"both", map[string]string{"Origin": "https://evil.example", "Sec-Fetch-Site": "cross-site"}},
		}
		checked := 0
		for _, rt := range e.app.routes {
			if strings.HasPrefix(rt.pattern, "GET ") {
				continue
			}
			checked++
			for _, h := range headers {
				t.Run(rt.pattern+"/"+h.name, func(t *testing.T) {
					req := matrixRequest(t, e.url, rt.pattern, target)
					req.AddCookie(e.sessionCookie(admin))
					for k, v := range h.header {
						req.Header.Set(k, v)
					}
					resp, err := client.Do(req)
					if err != nil {
						t.Fatal(err)
					}
					resp.Body.Close()
					if resp.StatusCode != http.StatusForbidden {
						t.Errorf("cross-origin %s = %d, want 403", rt.pattern, resp.StatusCode)
					}
				})
			}
		}
		if checked < 8 {
			t.Fatalf("only %d state-changing routes checked", checked)
		}
		u, err := e.app.users.Get(t.Context(), target.ID)
		if err != nil || u.Disabled || u.PHI || u.Role != RoleViewer {
			t.Errorf("a refused cross-origin request changed the target user: %+v, %v", u, err)
		}

		// The same change from this origin is accepted.
		req, _ := http.NewRequest(http.MethodPost, e.url+fmt.Sprintf("/users/%d/phi", target.ID), strings.NewReader("phi=on"))
		req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
		req.Header.Set("Origin", e.url)
		req.Header.Set("Sec-Fetch-Site", "same-origin")
		req.AddCookie(e.sessionCookie(admin))
		resp, err := client.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if u, _ := e.app.users.Get(t.Context(), target.ID); resp.StatusCode != http.StatusSeeOther || !u.PHI {
			t.Errorf("same-origin grant = %d (phi %t), want 303 and PHI granted", resp.StatusCode, u.PHI)
		}
	})
}
