package admin

import (
	"io"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"gorm.io/gorm"

	"github.com/fhirsync/fhirsync/storage"
	"github.com/fhirsync/fhirsync/storage/storagetest"
)

// TestOperationalEndpoints checks /healthz, /readyz and /metrics on the
// server serve builds, including /readyz refusing a schema this binary
// does not match.
func TestOperationalEndpoints(t *testing.T) {
	t.Parallel()
	storagetest.Each(t, func(t *testing.T, db *gorm.DB) {
		s, err := New(Config{}, Deps{DB: db, Registry: prometheus.NewRegistry()})
		if err != nil {
			t.Fatal(err)
		}
		srv := httptest.NewServer(s.Handler())
		defer srv.Close()
		get := func(path string) (int, string) {
			t.Helper()
			resp, err := http.Get(srv.URL + path)
			if err != nil {
				t.Fatal(err)
			}
			defer resp.Body.Close()
			b, _ := io.ReadAll(resp.Body)
			return resp.StatusCode, string(b)
		}
		if code, body := get("/readyz"); code != http.StatusOK || !strings.Contains(body, "ready") {
			t.Fatalf("/readyz on a current schema = %d %q", code, body)
		}
		if code, body := get("/metrics"); code != http.StatusOK || !strings.Contains(body, "# HELP") {
			t.Errorf("/metrics = %d %.100q", code, body)
		}
		future := storage.LatestVersion() + 1
		if err := db.Exec(`INSERT INTO schema_migrations (version, name, applied_at) VALUES (?, 'future', ?)`, future, time.Now()).Error; err != nil {
			t.Fatal(err)
		}
		code, body := get("/readyz")
		if code != http.StatusServiceUnavailable || !strings.Contains(body, "newer") {
			t.Errorf("/readyz on a newer schema = %d %q, want 503 naming the newer schema", code, body)
		}
		if code, _ := get("/healthz"); code != http.StatusOK {
			t.Errorf("/healthz = %d while not ready, want 200 (the process is up)", code)
		}
	})
}

// TestRoutesOutsideTheTable holds the routes served beside the admin app
// to a list: a new one added outside the route table (and so outside the
// role × route matrix) fails here until it is listed with why it needs no
// sign-in.
func TestRoutesOutsideTheTable(t *testing.T) {
	t.Parallel()
	db := storagetest.Open(t, storage.SQLite)
	expect := map[string]string{
		"GET /healthz": "liveness for orchestrators; says nothing but ok",
		"GET /readyz":  "readiness for orchestrators; names no data",
		"GET /metrics": "Prometheus metrics; moved to metrics_listen when set",
	}
	s, err := New(Config{}, Deps{DB: db, Registry: prometheus.NewRegistry()})
	if err != nil {
		t.Fatal(err)
	}
	got := s.OpenRoutes()
	for _, p := range got {
		if _, ok := expect[p]; !ok {
			t.Errorf("route %q is served outside the route table without an entry here", p)
		}
	}
	for p := range expect {
		if !slices.Contains(got, p) {
			t.Errorf("route %q is expected outside the route table but not served", p)
		}
	}
	s.Mount("POST /hooks/test", http.NotFoundHandler())
	if !slices.Contains(s.OpenRoutes(), "POST /hooks/test") {
		t.Error("a mounted handler is not listed among the routes outside the table")
	}
	sep, err := New(Config{SeparateMetrics: true}, Deps{DB: db, Registry: prometheus.NewRegistry()})
	if err != nil {
		t.Fatal(err)
	}
	if slices.Contains(sep.OpenRoutes(), "GET /metrics") {
		t.Error("/metrics is served on the admin listener although metrics_listen is set")
	}
}
