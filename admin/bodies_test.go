package admin

import (
	"bytes"
	"encoding/json"
	"io"
	"mime/multipart"
	"net/http"
	"net/http/httptest"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/fhirsync/fhirsync/storage/storagetest"
)

// multipartBody is a form with one file field of size bytes.
func multipartBody(t *testing.T, field string, size int) (io.Reader, string) {
	t.Helper()
	var buf bytes.Buffer
	mw := multipart.NewWriter(&buf)
	fw, err := mw.CreateFormFile(field, "maps.yaml")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := fw.Write(bytes.Repeat([]byte("# padding line\n"), size/15+1)); err != nil {
		t.Fatal(err)
	}
	if err := mw.Close(); err != nil {
		t.Fatal(err)
	}
	return &buf, mw.FormDataContentType()
}

// emptyDir fails the test when dir holds anything.
func emptyDir(t *testing.T, dir string) {
	t.Helper()
	entries, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	for _, en := range entries {
		t.Errorf("temporary file left behind: %s", en.Name())
	}
}

// TestUploadTemporaryFilesRemoved: a multipart file spooled to disk is
// removed when the handler returns, even though the handler worked on a
// copy of the request (as authorize makes one for the user context).
func TestUploadTemporaryFilesRemoved(t *testing.T) {
	e := newTestEnv(t, storagetest.Open(t, "sqlite"), AppConfig{})
	tmp := t.TempDir()
	t.Setenv("TMPDIR", tmp)

	var spooled int
	rt := route{pattern: "POST /maps/import", perm: permPublic, handler: func(w http.ResponseWriter, r *http.Request) {
		r = r.WithContext(r.Context())
		f, _, err := r.FormFile("file")
		if err != nil {
			t.Errorf("reading the upload: %v", err)
			return
		}
		f.Close()
		entries, _ := os.ReadDir(tmp)
		spooled = len(entries)
	}}
	body, ct := multipartBody(t, "file", 2*formMemory)
	req := httptest.NewRequest(http.MethodPost, "/maps/import", body)
	req.Header.Set("Content-Type", ct)
	rec := httptest.NewRecorder()
	e.app.serveRoute(rt, rec, req)
	if spooled != 1 {
		t.Fatalf("the upload should have been spooled to one temporary file during the handler, found %d", spooled)
	}
	emptyDir(t, tmp)

	// Through the whole server: an editor's upload above formMemory, and
	// a viewer's upload to a form that takes no files.
	editor := e.user("editor@example.org", RoleEditor, false)
	viewer := e.user("viewer@example.org", RoleViewer, false)
	for _, tc := range []struct {
		name, path string
		u          User
		size       int
		wantStatus int
	}{
		{"editor imports a large file", "/maps/import", editor, 2 * formMemory, http.StatusUnprocessableEntity},
		{"viewer posts a file to the password form", "/account/password", viewer, 2 * formMemory, http.StatusRequestEntityTooLarge},
		{"viewer posts a small file to the password form", "/account/password", viewer, 10 << 10, http.StatusBadRequest},
	} {
		t.Run(tc.name, func(t *testing.T) {
			body, ct := multipartBody(t, "file", tc.size)
			req, _ := http.NewRequest(http.MethodPost, e.url+tc.path, body)
			req.Header.Set("Content-Type", ct)
			req.AddCookie(e.sessionCookie(tc.u))
			resp, err := e.client().Do(req)
			if err != nil {
				t.Fatal(err)
			}
			// The whole answer, so the handler has returned.
			_, _ = io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
			if resp.StatusCode != tc.wantStatus {
				t.Errorf("status %d, want %d", resp.StatusCode, tc.wantStatus)
			}
			emptyDir(t, tmp)
		})
	}
}

// TestBodyLimitsPerRoute: each route reads at most its limit and answers
// 413 beyond it; the map set routes take the documented MaxMapSetBytes.
func TestBodyLimitsPerRoute(t *testing.T) {
	t.Parallel()
	e := newTestEnv(t, storagetest.Open(t, "sqlite"), AppConfig{})
	admin := e.user("admin@example.org", RoleAdmin, false)
	jsonYAML := func(n int) (io.Reader, string) {
		b, _ := json.Marshal(importRequest{YAML: strings.Repeat("#", n)})
		return bytes.NewReader(b), "application/json"
	}
	form := func(n int) (io.Reader, string) {
		return strings.NewReader("email=a%40b.c&password=" + strings.Repeat("x", n)), "application/x-www-form-urlencoded"
	}
	upload := func(n int) (io.Reader, string) { return multipartBody(t, "file", n) }
	for _, tc := range []struct {
		name, path string
		body       func(int) (io.Reader, string)
		size       int
		signedIn   bool
		wantStatus int
	}{
		{"sign-in form within limit", "/login", form, 1 << 10, false, http.StatusUnauthorized},
		{"sign-in form too large", "/login", form, defaultBodyLimit, false, http.StatusRequestEntityTooLarge},
		{"API import of 3 MiB (above the old nested 64 KiB)", "/api/v1/maps/import", jsonYAML, 3 << 20, true, http.StatusUnprocessableEntity},
		{"API import too large", "/api/v1/maps/import", jsonYAML, MaxMapSetBytes + multipartOverhead, true, http.StatusRequestEntityTooLarge},
		{"API validate too large", "/api/v1/maps/validate", jsonYAML, MaxMapSetBytes + multipartOverhead, true, http.StatusRequestEntityTooLarge},
		{"API publish body too large", "/api/v1/maps/versions/1/publish", jsonYAML, defaultBodyLimit, true, http.StatusRequestEntityTooLarge},
		{"API user creation too large", "/api/v1/users", jsonYAML, defaultBodyLimit, true, http.StatusRequestEntityTooLarge},
		{"upload too large", "/maps/import", upload, MaxMapSetBytes + multipartOverhead, true, http.StatusRequestEntityTooLarge},
		{"role change form too large", "/users/1/role", form, defaultBodyLimit, true, http.StatusRequestEntityTooLarge},
	} {
		t.Run(tc.name, func(t *testing.T) {
			body, ct := tc.body(tc.size)
			req, _ := http.NewRequest(http.MethodPost, e.url+tc.path, body)
			req.Header.Set("Content-Type", ct)
			if tc.signedIn {
				req.AddCookie(e.sessionCookie(admin))
			}
			resp, err := e.client().Do(req)
			if err != nil {
				t.Fatal(err)
			}
			defer resp.Body.Close()
			if resp.StatusCode != tc.wantStatus {
				msg, _ := io.ReadAll(io.LimitReader(resp.Body, 300))
				t.Errorf("status %d, want %d: %s", resp.StatusCode, tc.wantStatus, msg)
			}
		})
	}
}

// TestNullJSONBodyRefused: a bare null is not an empty object.
func TestNullJSONBodyRefused(t *testing.T) {
	t.Parallel()
	e := newTestEnv(t, storagetest.Open(t, "sqlite"), AppConfig{})
	admin := e.user("admin@example.org", RoleAdmin, false)
	for _, path := range []string{"/api/v1/maps/versions/1/publish", "/api/v1/maps/import", "/api/v1/users"} {
		for _, body := range []string{"null", " null\n"} {
			req, _ := http.NewRequest(http.MethodPost, e.url+path, strings.NewReader(body))
			req.Header.Set("Content-Type", "application/json")
			req.AddCookie(e.sessionCookie(admin))
			resp, err := e.client().Do(req)
			if err != nil {
				t.Fatal(err)
			}
			msg, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if resp.StatusCode != http.StatusBadRequest || !strings.Contains(string(msg), "null") {
				t.Errorf("POST %s %q: status %d %s, want 400 naming null", path, body, resp.StatusCode, msg)
			}
		}
	}
}

// TestExportsOutlastWriteTimeout: the export routes extend the server's
// write deadline, other routes keep it.
func TestExportsOutlastWriteTimeout(t *testing.T) {
	t.Parallel()
	e := newTestEnv(t, storagetest.Open(t, "sqlite"), AppConfig{})
	slow := func(w http.ResponseWriter, r *http.Request) {
		time.Sleep(400 * time.Millisecond)
		_, _ = w.Write([]byte("all rows\n"))
	}
	mux := http.NewServeMux()
	for _, pattern := range []string{"GET /logs/export", "GET /maps"} {
		rt := route{pattern: pattern, perm: permPublic, handler: slow}
		mux.HandleFunc(pattern, func(w http.ResponseWriter, r *http.Request) { e.app.serveRoute(rt, w, r) })
	}
	srv := httptest.NewUnstartedServer(mux)
	srv.Config.WriteTimeout = 100 * time.Millisecond
	srv.Start()
	t.Cleanup(srv.Close)
	for path, wantBody := range map[string]bool{"/logs/export": true, "/maps": false} {
		resp, err := srv.Client().Get(srv.URL + path)
		var body []byte
		if err == nil {
			body, err = io.ReadAll(resp.Body)
			resp.Body.Close()
		}
		got := err == nil && string(body) == "all rows\n"
		if got != wantBody {
			t.Errorf("GET %s after the write timeout: body %q, err %v; want the body: %v", path, body, err, wantBody)
		}
	}
}
