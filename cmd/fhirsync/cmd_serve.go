package main

import (
	"context"
	"fmt"
	"runtime"
	"strings"
	"sync"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"gorm.io/gorm"

	"github.com/fhirsync/fhirsync/admin"
	"github.com/fhirsync/fhirsync/storage"
)

func runServe(ctx context.Context, e *env, args []string) error {
	fs := e.newFlagSet("serve", "serve [--listen ADDR]", `
Run fhirsync: migrate the database, then serve the admin app, the JSON API and
the operational endpoints (/healthz, /readyz, /metrics) until SIGINT or SIGTERM.
With no configuration it uses SQLite in ./data, the embedded queue and
127.0.0.1:8080. On a signal it stops taking work and drains for at most
shutdown_timeout.`)
	listen := fs.String("listen", "", "listener address, overriding listen / FHIRSYNC_LISTEN")
	if done, err := parseFlags(fs, args); done {
		return err
	}
	if fs.NArg() > 0 {
		return usageErrorf("serve takes no arguments")
	}
	tuneCollector(e.getenv)
	cfg, err := e.config()
	if err != nil {
		return err
	}
	if *listen != "" {
		cfg.Listen = *listen
	}
	return serve(ctx, e, cfg, nil)
}

// serve runs fhirsync with cfg until ctx ends. onReady, when set, is called
// with the listener's address once it accepts connections and the database
// is migrated.
func serve(ctx context.Context, e *env, cfg *Config, onReady func(addr string, db *gorm.DB)) error {
	log := e.logger()
	defer e.close()

	db, err := e.openDB(ctx)
	if err != nil {
		return err
	}
	reg := newRegistry()
	if err := admin.Bootstrap(ctx, db, log, passwordDelivery(e.stdout, cfg.DataDir)); err != nil {
		return err
	}
	svc, err := buildServices(ctx, cfg, db, reg, log)
	if err != nil {
		return err
	}
	appCfg := cfg.Admin
	appCfg.TLS = cfg.TLSCertFile != ""
	deps := admin.Deps{DB: db, Registry: reg, Logger: log,
		Queues: map[string]admin.DeadLetterQueue{cfg.Queue.FHIRChanges: svc.fhirQ, cfg.Queue.CRMChanges: svc.crmQ},
		Logs:   svc.logs, Alerts: svc.alerts, Replay: svc.replayer}
	if svc.crm != nil {
		deps.CRM = svc.crm // map saves and publications are checked against its metadata
		deps.CRMRecords = svc.crm
	}
	if svc.fhir != nil {
		deps.FHIR = svc.fhir // the map preview reads live records, read-only
	}
	srv, err := admin.New(admin.Config{Version: buildVersion(), App: appCfg, SeparateMetrics: cfg.MetricsListen != ""}, deps)
	if err != nil {
		return err
	}
	if svc.restHook != nil {
		srv.Mount(cfg.Feeds.RestHook.Path, svc.restHook)
		srv.Mount(strings.TrimSuffix(cfg.Feeds.RestHook.Path, "/")+"/", svc.restHook)
	}
	if svc.crmWebhook != nil {
		srv.Mount(cfg.Feeds.DataverseWebhook.Path, svc.crmWebhook)
	}
	ls, err := openListeners(cfg, srv.Handler(), srv.Metrics())
	if err != nil {
		return err
	}
	for _, w := range securityWarnings(cfg) {
		log.Warn(w)
	}
	addr := ls[0].ln.Addr().String()
	log.Info("fhirsync serving", "version", buildVersion(), "listen", addr, "tls", appCfg.TLS,
		"database", e.describeDB(), "queue", cfg.Queue.Kind, "schema_version", storage.LatestVersion())
	if len(ls) > 1 {
		log.Info("metrics serving", "metrics_listen", ls[1].ln.Addr().String())
	}
	if onReady != nil {
		onReady(addr, db)
	}

	var wg sync.WaitGroup
	errc := make(chan error, len(ls)+1)
	ls.serve(&wg, errc)
	runCtx, stopRun := context.WithCancel(ctx)
	defer stopRun()
	wg.Go(func() {
		if err := svc.run(runCtx); err != nil {
			errc <- err
		}
	})
	select {
	case <-ctx.Done():
		log.Info("shutting down", "drain_timeout", cfg.ShutdownTimeout.String())
	case err = <-errc:
	}
	stopRun()
	drainCtx, cancel := context.WithTimeout(context.WithoutCancel(ctx), cfg.ShutdownTimeout)
	defer cancel()
	ls.shutdown(drainCtx, log)
	wg.Wait()
	log.Info("stopped")
	return err
}

// newRegistry is the process's metric registry (never the global one), with
// the Go runtime, process and build-info collectors.
func newRegistry() *prometheus.Registry {
	reg := prometheus.NewRegistry()
	reg.MustRegister(
		collectors.NewGoCollector(),
		collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}),
	)
	info := prometheus.NewGaugeVec(prometheus.GaugeOpts{
		Name: "fhirsync_build_info", Help: "Build information; always 1.",
	}, []string{"version", "goversion", "schema_version"})
	info.WithLabelValues(buildVersion(), runtime.Version(), fmt.Sprint(storage.LatestVersion())).Set(1)
	reg.MustRegister(info)
	return reg
}
