package admin

import (
	"io"
	"net/http"
	"net/http/httptest"
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
