package admin

import (
	"context"
	"errors"
	"log/slog"
	"net/http"
	"slices"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"gorm.io/gorm"

	"github.com/fhirsync/fhirsync/agent/alerts"
	"github.com/fhirsync/fhirsync/logs"
	"github.com/fhirsync/fhirsync/storage"
)

// Config shapes the admin listener.
type Config struct {
	// Version is shown on the status page and in the build-info metric.
	Version string
	// ReadyTimeout bounds one readiness check.
	ReadyTimeout time.Duration
	// App configures the admin web app: sign-in, sessions, OIDC.
	App AppConfig
	// SeparateMetrics leaves /metrics off Handler; serve Metrics on a
	// listener of its own.
	SeparateMetrics bool
}

// Deps are the services the admin app reads.
type Deps struct {
	DB       *gorm.DB
	Registry *prometheus.Registry
	Logger   *slog.Logger
	// Queues are the queues whose dead letters and depth the app shows,
	// by name; nil means the embedded queues "fhir-changes" and
	// "crm-changes" on DB. Pass the Service Bus queues when serve uses them.
	Queues map[string]DeadLetterQueue
	// Logs is the sync log as configured (business key secret, capture
	// keys, retention); nil means one opened on DB with the default policy,
	// which can neither search by business key nor open payload captures.
	Logs *logs.Store
	// Alerts holds the alert rules and their history; nil means a service
	// on DB with no configured rules or webhooks (rules made in the app
	// are then shown only, never posted).
	Alerts *alerts.Service
	// Replay sends records through the agent again from the replay page;
	// nil with the default embedded queues means one on those queues,
	// nil with Queues passed in turns the replay page off.
	Replay Replayer
	// CRM reads the CRM's entity metadata, against which saving and
	// publishing a map set check every attribute map; nil skips the check.
	CRM CRMEntityReader
	// FHIR and CRMRecords read single records, read-only, for the map
	// preview of a live record and of the target's current state; nil
	// turns those off.
	FHIR       FHIRReader
	CRMRecords CRMRecordReader
}

// Server serves the admin app and the operational endpoints.
type Server struct {
	cfg  Config
	deps Deps
	mux  *http.ServeMux
	// open lists the patterns served outside the app's route table (the
	// operational endpoints and mounted handlers that authenticate on
	// their own), so a test can hold every route to an expectation.
	open []string
}

// New builds the server. It fails fast on missing dependencies.
func New(cfg Config, deps Deps) (*Server, error) {
	if deps.DB == nil || deps.Registry == nil {
		return nil, errors.New("admin: DB and Registry are required")
	}
	if deps.Logger == nil {
		deps.Logger = slog.New(slog.DiscardHandler)
	}
	if cfg.ReadyTimeout == 0 {
		cfg.ReadyTimeout = 3 * time.Second
	}
	s := &Server{cfg: cfg, deps: deps, mux: http.NewServeMux()}
	s.handleOpen("GET /healthz", http.HandlerFunc(s.healthz))
	s.handleOpen("GET /readyz", http.HandlerFunc(s.readyz))
	if !cfg.SeparateMetrics {
		s.handleOpen("GET /metrics", s.Metrics())
	}
	if err := s.mountApp(cfg.App); err != nil {
		return nil, err
	}
	return s, nil
}

// Mount serves h at pattern on the listener, beside the admin app (e.g.
// the FHIR rest-hook notification endpoint). It authenticates on its own.
func (s *Server) Mount(pattern string, h http.Handler) { s.handleOpen(pattern, h) }

// handleOpen serves h at pattern outside the app's route table.
func (s *Server) handleOpen(pattern string, h http.Handler) {
	s.mux.Handle(pattern, h)
	s.open = append(s.open, pattern)
}

// OpenRoutes lists the patterns served outside the app's route table,
// which the role × route matrix does not cover: each must authenticate on
// its own or be meant for anyone (health, readiness, metrics).
func (s *Server) OpenRoutes() []string { return slices.Clone(s.open) }

// Metrics serves the registry's metrics in the Prometheus text format.
func (s *Server) Metrics() http.Handler {
	return promhttp.HandlerFor(s.deps.Registry, promhttp.HandlerOpts{Registry: s.deps.Registry})
}

// Handler is the root handler for the listener.
func (s *Server) Handler() http.Handler { return s.mux }

func (s *Server) healthz(w http.ResponseWriter, _ *http.Request) {
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	_, _ = w.Write([]byte("ok\n"))
}

// readyz answers 200 only when the database answers and the schema is
// exactly the version this binary expects; the body says which check failed.
func (s *Server) readyz(w http.ResponseWriter, r *http.Request) {
	ctx, cancel := context.WithTimeout(r.Context(), s.cfg.ReadyTimeout)
	defer cancel()
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	w.Header().Set("Cache-Control", "no-store")
	if err := storage.Check(ctx, s.deps.DB); err != nil {
		s.deps.Logger.Warn("readiness check failed", "error", err)
		w.WriteHeader(http.StatusServiceUnavailable)
		_, _ = w.Write([]byte("not ready: " + err.Error() + "\n"))
		return
	}
	_, _ = w.Write([]byte("ready\n"))
}

// mountFallbacks serves what no route of the table names: the favicon
// browsers ask for at /favicon.ico, and an app-styled 404 page (a JSON
// error under /api/) for every other unknown path and method.
func (a *app) mountFallbacks(mux *http.ServeMux) {
	mux.Handle("GET /favicon.ico", a.headers(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Cache-Control", "public, max-age=86400")
		http.Redirect(w, r, "/static/favicon.svg", http.StatusMovedPermanently)
	})))
	mux.Handle("/", a.headers(http.HandlerFunc(a.notFound)))
}

// notFound shows the 404 page, with the navigation when someone is
// signed in, so they can find their way back.
func (a *app) notFound(w http.ResponseWriter, r *http.Request) {
	if !isAPI(r) {
		if u, err := a.sessions.user(r); err == nil {
			r = r.WithContext(context.WithValue(r.Context(), userKey{}, u))
		}
	}
	a.renderError(w, r, http.StatusNotFound, "There is no page at this address. Check the link, or start again from the dashboard.")
}
