package main

import (
	"context"
	"encoding/base64"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"os"
	"strings"
	"sync"
	"time"

	"github.com/Azure/azure-sdk-for-go/sdk/azcore"
	"github.com/Azure/azure-sdk-for-go/sdk/azidentity"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/robfig/cron/v3"
	"go.opentelemetry.io/otel/trace"
	"gorm.io/gorm"

	"github.com/fhirsync/fhirsync/agent"
	"github.com/fhirsync/fhirsync/agent/alerts"
	"github.com/fhirsync/fhirsync/agent/crm"
	"github.com/fhirsync/fhirsync/agent/fhir"
	"github.com/fhirsync/fhirsync/internal/tracing"
	"github.com/fhirsync/fhirsync/logs"
	"github.com/fhirsync/fhirsync/maps"
	"github.com/fhirsync/fhirsync/queues"
	"github.com/fhirsync/fhirsync/queues/embedded"
	"github.com/fhirsync/fhirsync/queues/servicebus"
)

// services is everything a running fhirsync process holds. serve and demo
// build it here; bench assembles the same parts with per-run names.
type services struct {
	db          *gorm.DB
	maps        *maps.Store
	logs        *logs.Store
	fhirQ, crmQ queues.Queue
	fhir        *fhir.Client // nil when no FHIR server is configured
	crm         *crm.Client  // nil when no CRM is configured
	agent       *agent.Agent // nil unless both endpoints are configured
	poller      *fhir.Poller
	crmFeeds    []*crm.Feed
	restHook    http.Handler
	crmWebhook  http.Handler // nil unless feeds.dataverse_webhook.path is set
	log         *slog.Logger
	feedSched   string
	reconciler  *agent.Reconciler
	replayer    *agent.Replayer
	alerts      *alerts.Service
	tracing     *tracing.Tracing // its Provider is nil when tracing is off
}

// buildServices wires the stores, queues, endpoint clients, the agent and
// the feeds from cfg. Nothing runs until run is called.
func buildServices(ctx context.Context, cfg *Config, db *gorm.DB, reg prometheus.Registerer, log *slog.Logger) (*services, error) {
	s := &services{db: db, log: log, feedSched: cfg.Feeds.CRMTracking.Schedule}
	var err error
	logsCfg := cfg.Logs
	logsCfg.Logger = log
	if s.logs, err = logs.New(db, logsCfg, reg); err != nil {
		return nil, err
	}
	if s.maps, err = maps.New(db, maps.Options{Logger: log}); err != nil {
		return nil, err
	}
	if s.tracing, err = tracing.New(ctx, cfg.Tracing, tracing.Deps{Getenv: os.Getenv, Version: buildVersion(), Logger: log}); err != nil {
		return nil, err
	}
	if s.fhirQ, err = openTracedQueue(cfg, db, cfg.Queue.FHIRChanges, s.tracing.Provider()); err != nil {
		return nil, err
	}
	if s.crmQ, err = openTracedQueue(cfg, db, cfg.Queue.CRMChanges, s.tracing.Provider()); err != nil {
		return nil, err
	}
	if s.replayer, err = s.newReplayer(reg); err != nil {
		return nil, err
	}
	if reg != nil {
		if err := reg.Register(feedPollCollector{db: db}); err != nil {
			return nil, fmt.Errorf("registering the feed poll metric: %w", err)
		}
	}
	ac := cfg.Alerts.alertsConfig()
	ac.Holder, ac.Logger = holder(), log
	gatherer, _ := reg.(prometheus.Gatherer)
	var estimate func(context.Context, time.Time, time.Duration) ([]alerts.FeedLag, error)
	if cfg.Queue.Kind != "embedded" {
		// Service Bus: not in queue_messages; the agent estimates the lag
		// from the changes it receives and the queues' depths.
		names := map[queues.Side]string{queues.SideFHIR: cfg.Queue.FHIRChanges, queues.SideCRM: cfg.Queue.CRMChanges}
		estimate = func(ctx context.Context, now time.Time, every time.Duration) ([]alerts.FeedLag, error) {
			if s.agent == nil {
				return nil, nil
			}
			return s.agent.EstimatedLags(ctx, now, every, names)
		}
	}
	if s.alerts, err = alerts.New(ac, alerts.Deps{DB: db, Logs: s.logs, Gatherer: gatherer, EstimateLags: estimate, OnLag: func(lags map[string]time.Duration) {
		if s.agent != nil {
			s.agent.ObserveFeedLag(lags)
		}
	}}); err != nil {
		return nil, err
	}
	if cfg.FHIR.BaseURL != "" {
		fc := fhir.Config{BaseURL: cfg.FHIR.BaseURL, Timeout: cfg.FHIR.Timeout, UserAgent: "fhirsync/" + buildVersion()}
		switch cfg.FHIR.Auth.Method {
		case "bearer":
			fc.BearerToken = cfg.FHIR.Auth.Token
		case "none":
		default:
			if fc.Credential, err = credential(cfg.FHIR.Auth); err != nil {
				return nil, fmt.Errorf("fhir.auth: %w", err)
			}
		}
		if s.fhir, err = fhir.New(fc); err != nil {
			return nil, err
		}
	}
	if cfg.CRM.BaseURL != "" {
		if s.crm, err = crm.New(crmConfig(cfg.CRM, reg)); err != nil {
			return nil, err
		}
	}
	if wh := cfg.Feeds.DataverseWebhook; wh.Path != "" {
		// Accepted even while the agent is idle: the contexts wait on the
		// queue, as a Service Bus endpoint's would.
		if s.crmWebhook, err = crm.NewWebhook(crm.WebhookConfig{Queue: s.crmQ, Header: wh.Header, Key: wh.Key, Logger: log}); err != nil {
			return nil, err
		}
	}
	if s.fhir == nil || s.crm == nil {
		log.Warn("the sync agent is idle: set fhir.base_url and crm.base_url (or run fhirsync demo) to sync")
		return s, nil
	}
	userIDs := []string{cfg.Agent.CRMUserID}
	if cfg.Agent.CRMUserID == "" {
		wctx, cancel := context.WithTimeout(ctx, 30*time.Second)
		userIDs, err = s.crm.UserIDs(wctx)
		cancel()
		if err != nil {
			return nil, fmt.Errorf("asking the CRM who fhirsync is (set agent.crm_user_id, or each crm.users entry's user_id, to skip): %w", err)
		}
	}
	if cfg.CRM.BypassOwnSteps {
		wctx, cancel := context.WithTimeout(ctx, time.Minute)
		bypassOwnSteps(wctx, cfg, s.crm, log, reg)
		cancel()
	}
	renew := time.Duration(0)
	if cfg.Queue.Kind == "embedded" {
		renew = 20 * time.Second
	}
	fhirWrites, err := fhir.NewBatcher(s.fhir, fhir.BatchConfig{Max: cfg.Agent.FHIRBatchMax, Wait: cfg.Agent.FHIRBatchWait, Logger: log})
	if err != nil {
		return nil, err
	}
	var capture func(src, out any) *logs.Snapshots
	if cfg.Logs.Capture.Enabled {
		capture = agent.CapturePayloads
	}
	s.agent, err = agent.New(agent.Config{Workers: cfg.Agent.Workers, MaxAttempts: cfg.Agent.MaxAttempts, CRMUserID: userIDs[0], CRMUserIDs: userIDs[1:],
		FHIRAccount: cfg.Agent.FHIRAccount, Drain: cfg.ShutdownTimeout, LockRenewEvery: renew, BaseKey: baseKey(cfg.Logs.KeySecret),
		ConflictSkew: cfg.Agent.ConflictSkew, ConflictTie: maps.ConflictPolicy(cfg.Agent.ConflictTie), StaleRetries: cfg.Agent.StaleRetries,
		CRMBatchMax: cfg.Agent.CRMBatchMax, CRMBatchWait: cfg.Agent.CRMBatchWait, CRMBulkOff: cfg.Agent.CRMBulk == "off",
		BackfillWorkers: cfg.Agent.BackfillWorkers, BackfillBatchMax: cfg.Agent.BackfillBatchMax, BackfillBatchWait: cfg.Agent.BackfillBatchWait},
		agent.Deps{DB: db, Maps: s.maps, FHIR: fhirWrites, CRM: s.crm, Logs: s.logs, FHIRChanges: s.fhirQ, CRMChanges: s.crmQ,
			Registry: reg, Logger: log, Capture: capture, Tracer: s.tracing.Provider()})
	if err != nil {
		return nil, err
	}
	if s.reconciler, err = s.newReconciler(cfg.Agent.ReconcileSchedule); err != nil {
		return nil, err
	}
	if h := cfg.Feeds.FHIRHistory; len(h.Types) > 0 {
		if s.poller, err = fhir.NewPoller(fhir.PollerConfig{Client: s.fhir, DB: db, Queue: s.fhirQ, Types: h.Types,
			Schedule: h.Schedule, Overlap: h.Overlap, PageSize: h.Count, Holder: holder(), Logger: log}); err != nil {
			return nil, err
		}
	}
	for _, ent := range cfg.Feeds.CRMTracking.Entities {
		f, err := crm.NewFeed(s.crm, db, s.crmQ, crm.FeedConfig{Entity: ent, Set: entitySet(ctx, s.maps, ent), Holder: holder()})
		if err != nil {
			return nil, err
		}
		s.crmFeeds = append(s.crmFeeds, f)
	}
	if rh := cfg.Feeds.RestHook; rh.Path != "" {
		ping := func() {}
		if s.poller != nil {
			ping = s.poller.Trigger
		}
		if s.restHook, err = fhir.NewRestHook(fhir.RestHookConfig{Queue: s.fhirQ, Authorization: rh.Authorization, Ping: ping, Logger: log}); err != nil {
			return nil, err
		}
	}
	return s, nil
}

// crmConfig is the CRM client's configuration: crm.users, or crm.auth as
// the one user; reg receives the per-user request metrics.
func crmConfig(c CRMConfig, reg prometheus.Registerer) crm.Config {
	cc := crm.Config{URL: c.BaseURL, Timeout: c.Timeout, MaxConcurrency: c.MaxConcurrency, Registerer: reg}
	users := c.Users
	if len(users) == 0 {
		a := c.Auth
		users = []CRMUserConfig{{Method: a.Method, TenantID: a.TenantID, ClientID: a.ClientID, ClientSecret: a.ClientSecret, Token: a.Token}}
	}
	for _, u := range users {
		cc.Users = append(cc.Users, crm.User{Name: u.Name, Auth: crm.AuthMode(u.Method), Token: u.Token, TenantID: u.TenantID,
			ClientID: u.ClientID, ClientSecret: u.ClientSecret, UserID: u.UserID})
	}
	return cc
}

func openQueue(cfg *Config, db *gorm.DB, name string) (queues.Queue, error) {
	return openTracedQueue(cfg, db, name, nil)
}

// openTracedQueue opens a queue whose sends start each message's trace
// when tp is set (queues.TraceSend).
func openTracedQueue(cfg *Config, db *gorm.DB, name string, tp trace.TracerProvider) (queues.Queue, error) {
	if cfg.Queue.Kind == "servicebus" {
		sb := cfg.Queue.ServiceBus
		return servicebus.New(servicebus.Config{ConnectionString: sb.ConnectionString, Namespace: sb.Namespace,
			Credential: map[string]servicebus.Credential{"": servicebus.CredentialDefault, "default": servicebus.CredentialDefault,
				"managed_identity": servicebus.CredentialManagedIdentity, "client_secret": servicebus.CredentialClientSecret}[sb.Auth.Method], TenantID: sb.Auth.TenantID, ClientID: sb.Auth.ClientID,
			ClientSecret: sb.Auth.ClientSecret, Sessions: true, Tracer: tp}, name)
	}
	return embedded.New(db, name, embedded.Options{MaxDeliveryCount: 50, Tracer: tp})
}

// flushTraces exports the spans still buffered; a collector that does not
// answer within five seconds costs them.
func (s *services) flushTraces(ctx context.Context) {
	fctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
	defer cancel()
	if err := s.tracing.Shutdown(fctx); err != nil {
		s.log.Warn("flushing traces failed", "error", err)
	}
}

// credential builds the azidentity credential an endpoint's auth names.
func credential(a CredentialConfig) (azcore.TokenCredential, error) {
	switch a.Method {
	case "default":
		return azidentity.NewDefaultAzureCredential(nil)
	case "managed_identity":
		opts := &azidentity.ManagedIdentityCredentialOptions{}
		if a.ClientID != "" {
			opts.ID = azidentity.ClientID(a.ClientID)
		}
		return azidentity.NewManagedIdentityCredential(opts)
	case "client_secret":
		return azidentity.NewClientSecretCredential(a.TenantID, a.ClientID, a.ClientSecret, nil)
	}
	return nil, fmt.Errorf("unsupported method %q", a.Method)
}

// entitySet finds the entity set of a CRM entity in the published maps,
// else guesses the Web API's plural.
func entitySet(ctx context.Context, ms *maps.Store, entity string) string {
	if set, err := ms.Current(ctx); err == nil {
		for _, m := range set.ForCRM(entity) {
			return m.Def().CRMEntitySet
		}
	}
	if strings.HasSuffix(entity, "s") {
		return entity + "es"
	}
	return entity + "s"
}

func holder() string {
	host, _ := os.Hostname()
	return fmt.Sprintf("%s:%d", host, os.Getpid())
}

// run starts the agent, the feeds and the scheduled jobs and returns when
// ctx ends and everything has drained.
func (s *services) run(ctx context.Context) error {
	var wg sync.WaitGroup
	var mu sync.Mutex
	var errs []error
	fail := func(err error) {
		if err != nil && !errors.Is(err, context.Canceled) {
			mu.Lock()
			errs = append(errs, err)
			mu.Unlock()
		}
	}
	if s.agent != nil {
		wg.Go(func() { fail(s.agent.Run(ctx)) })
	}
	if s.poller != nil {
		wg.Go(func() { fail(s.poller.Run(ctx)) })
	}
	if len(s.crmFeeds) > 0 {
		c := cron.New()
		for _, f := range s.crmFeeds {
			if _, err := c.AddFunc(s.feedSched, func() {
				if _, err := f.Poll(ctx); err != nil && ctx.Err() == nil {
					s.log.Warn("change-tracking poll failed", "feed", f.Name(), "error", err)
				}
			}); err != nil {
				return err
			}
		}
		c.Start()
		wg.Go(func() { <-ctx.Done(); <-c.Stop().Done() })
	}
	if s.reconciler != nil {
		wg.Go(func() { fail(s.reconciler.Run(ctx)) })
	}
	wg.Go(func() { fail(s.logs.RunRetention(ctx)) })
	if s.alerts != nil {
		wg.Go(func() { fail(s.alerts.Run(ctx)) })
	}
	wg.Wait()
	s.flushTraces(ctx)
	return errors.Join(errs...)
}

// baseKey is the sync log's key secret, decoded, which the agent also
// hashes each linked pair's base state under; nil when none is set (the
// base state is then not kept). Validate has checked its form.
func baseKey(secret string) []byte {
	b, err := base64.StdEncoding.DecodeString(secret)
	if err != nil {
		return nil
	}
	return b
}
