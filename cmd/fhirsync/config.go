package main

import (
	"bytes"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"reflect"
	"slices"
	"strconv"
	"strings"
	"time"

	"gopkg.in/yaml.v3"

	"github.com/robfig/cron/v3"

	"github.com/fhirsync/fhirsync/admin"
	"github.com/fhirsync/fhirsync/agent/crm"
	"github.com/fhirsync/fhirsync/internal/tracing"
	"github.com/fhirsync/fhirsync/logs"
	"github.com/fhirsync/fhirsync/storage"
)

// Config is the whole configuration of a fhirsync process. It is loaded from
// an optional YAML file, then from FHIRSYNC_… environment variables (which
// win), and secrets also from FHIRSYNC_…_FILE variables naming a file.
//
// The environment name of a key is FHIRSYNC_ followed by its YAML path in
// upper case joined by underscores: database.url → FHIRSYNC_DATABASE_URL.
type Config struct {
	// DataDir holds the SQLite database and other local state.
	DataDir string `yaml:"data_dir"`
	// Listen is the address of the admin app, JSON API and operational
	// endpoints.
	Listen string `yaml:"listen"`
	// TLSCertFile and TLSKeyFile (PEM), both set, serve listen over HTTPS;
	// session cookies are then Secure.
	TLSCertFile string `yaml:"tls_cert_file"`
	TLSKeyFile  string `yaml:"tls_key_file"`
	// MetricsListen, when set, is the only address serving /metrics (keep
	// it private); empty serves /metrics on listen.
	MetricsListen string         `yaml:"metrics_listen"`
	Database      DatabaseConfig `yaml:"database"`
	Log           LogConfig      `yaml:"log"`
	// ShutdownTimeout bounds how long in-flight work may take to drain
	// after SIGINT or SIGTERM.
	ShutdownTimeout time.Duration  `yaml:"shutdown_timeout"`
	Queue           QueueConfig    `yaml:"queue"`
	FHIR            EndpointConfig `yaml:"fhir"`
	CRM             CRMConfig      `yaml:"crm"`
	// Admin configures the admin app: its public URL (https turns on
	// secure cookies and HSTS), sessions and OIDC sign-in.
	Admin admin.AppConfig `yaml:"admin"`
	Agent AgentConfig     `yaml:"agent"`
	Feeds FeedsConfig     `yaml:"feeds"`
	// Logs configures the sync log: retention, business-key hashing and
	// opt-in encrypted payload capture.
	Logs logs.Config `yaml:"logs"`
	// Alerts sets alert rules and the webhooks they post to.
	Alerts AlertsConfig `yaml:"alerts"`
	// Tracing exports OpenTelemetry traces of each message over OTLP (off
	// by default; docs/observability.md).
	Tracing tracing.Config `yaml:"tracing"`
}

// AgentConfig tunes the sync agent. It runs when both fhir.base_url and
// crm.base_url are set (demo sets them to its sandboxes).
type AgentConfig struct {
	// Workers is the number of messages processed at once per queue (0:
	// agent.DefaultWorkers, 256).
	Workers int `yaml:"workers"`
	// MaxAttempts is how many deliveries a retryable failure gets before
	// it is dead-lettered as attempts_exhausted.
	MaxAttempts int `yaml:"max_attempts"`
	// CRMUserID is the agent's application user; empty asks the CRM
	// (WhoAmI) at start.
	CRMUserID string `yaml:"crm_user_id"`
	// FHIRAccount names the only FHIR service whose AHDS events are
	// accepted; while it is empty the agent refuses every such event.
	FHIRAccount string `yaml:"fhir_account"`
	// ReconcileSchedule runs the backfill of every enabled entity map on a
	// cron schedule (e.g. "@daily"); empty turns it off.
	ReconcileSchedule string `yaml:"reconcile_schedule"`
	// ConflictSkew is last-writer-wins' clock-skew allowance: edits whose
	// modified times are no further apart count as simultaneous (0: 2s).
	ConflictSkew time.Duration `yaml:"conflict_skew"`
	// ConflictTie settles a last-writer-wins conflict whose order is not
	// known: hold (default), fhir-wins or crm-wins.
	ConflictTie string `yaml:"conflict_tie"`
	// FHIRBatchMax is how many FHIR reads and writes of concurrent
	// messages share one batch Bundle, where the server's
	// CapabilityStatement lists batch (0: 100; 1: no batching; at most
	// 1000).
	FHIRBatchMax int `yaml:"fhir_batch_max"`
	// FHIRBatchWait is how long the first entry (read or write) of a batch
	// Bundle waits for others (0: fhir.DefaultBatchWait, 3ms).
	FHIRBatchWait time.Duration `yaml:"fhir_batch_wait"`
	// StaleRetries is how many times a write refused with HTTP 412 is
	// re-read, merged and retried within one delivery (0: 3; -1: none).
	StaleRetries int `yaml:"stale_retries"`
	// CRMBatchMax is how many CRM operations of concurrent messages share
	// one $batch request (0: 100; 1: no batching; at most 1000).
	CRMBatchMax int `yaml:"crm_batch_max"`
	// CRMBatchWait is how long the first operation of a $batch waits for
	// others unless the agent's workers all wait on it (0: 100ms).
	CRMBatchWait time.Duration `yaml:"crm_batch_wait"`
	// CRMBulk is on (the default, also when empty) or off: new records'
	// writes in a batch go as CreateMultiple / UpdateMultiple bulk
	// messages, or each record's as a change set of its own.
	CRMBulk string `yaml:"crm_bulk"`
	// BackfillWorkers is how many notices of a backfill or reconcile are
	// processed at once per queue, beside Workers (0: 512; -1: none
	// apart, they share Workers).
	BackfillWorkers int `yaml:"backfill_workers"`
	// BackfillBatchMax and BackfillBatchWait are crm_batch_max and
	// crm_batch_wait for the CRM requests of those notices (0: 1000, 2s).
	BackfillBatchMax  int           `yaml:"backfill_batch_max"`
	BackfillBatchWait time.Duration `yaml:"backfill_batch_wait"`
}

// FeedsConfig selects the change feeds this process runs. Every process may
// enable them: a database lease lets one poll each feed at a time.
type FeedsConfig struct {
	FHIRHistory FHIRHistoryConfig `yaml:"fhir_history"`
	CRMTracking CRMTrackingConfig `yaml:"crm_tracking"`
	RestHook    RestHookConfig    `yaml:"rest_hook"`
	// DataverseWebhook receives the contexts of a Dataverse webhook
	// service endpoint and queues them on the CRM changes queue.
	DataverseWebhook DataverseWebhookConfig `yaml:"dataverse_webhook"`
}

// FHIRHistoryConfig is the _history poller, the FHIR source of truth.
type FHIRHistoryConfig struct {
	// Types to poll; empty polls none. Comma-separated in the environment.
	Types    []string      `yaml:"types"`
	Schedule string        `yaml:"schedule"`
	Overlap  time.Duration `yaml:"overlap"`
	// Count is _count, the page size of each history request (0: 100).
	Count int `yaml:"count"`
}

// CRMTrackingConfig is Dataverse change tracking, per entity.
type CRMTrackingConfig struct {
	// Entities to track (logical names); empty tracks none.
	Entities []string `yaml:"entities"`
	Schedule string   `yaml:"schedule"`
}

// RestHookConfig is the FHIR rest-hook subscription endpoint.
type RestHookConfig struct {
	// Path on the listener, e.g. /hooks/fhir; empty disables it.
	Path string `yaml:"path"`
	// Authorization is the header value the FHIR server must send;
	// required with Path unless AllowAnonymous is set.
	Authorization string `yaml:"authorization" secret:"true"`
	// AllowAnonymous accepts notifications without an Authorization
	// header (anyone who reaches Path can queue work); a warning is logged.
	AllowAnonymous bool `yaml:"allow_anonymous"`
}

// DataverseWebhookConfig is the endpoint a Dataverse webhook (a service
// endpoint registered with the Plug-in Registration tool) posts to.
type DataverseWebhookConfig struct {
	// Path on the listener, e.g. /hooks/dataverse; empty disables it.
	Path string `yaml:"path"`
	// Header names the request header carrying Key (HttpHeader
	// authentication); empty expects Key as the code query parameter
	// (WebhookKey authentication).
	Header string `yaml:"header"`
	// Key is the value Dataverse must send; required with Path.
	Key string `yaml:"key" secret:"true"`
}

// minWebhookKeyLen is the shortest webhook key accepted: the key is all that
// stands between the internet and the CRM changes queue.
const minWebhookKeyLen = 16

// DatabaseConfig selects the project database.
type DatabaseConfig struct {
	// URL is empty for SQLite in DataDir, "sqlite:PATH", or "postgres://…".
	URL          string `yaml:"url" secret:"true"`
	MaxOpenConns int    `yaml:"max_open_conns"`
	// SQLiteSynchronous is storage.SyncNormal or storage.SyncFull.
	SQLiteSynchronous string `yaml:"sqlite_synchronous"`
}

// LogConfig shapes process logging (not the sync log).
type LogConfig struct {
	Format string `yaml:"format"` // text or json
	Level  string `yaml:"level"`  // debug, info, warn, error
}

// QueueConfig selects the queue transport.
type QueueConfig struct {
	// Kind is "embedded" (the project database) or "servicebus".
	Kind string `yaml:"kind"`
	// FHIRChanges and CRMChanges name the two queues.
	FHIRChanges string           `yaml:"fhir_changes"`
	CRMChanges  string           `yaml:"crm_changes"`
	ServiceBus  ServiceBusConfig `yaml:"service_bus"`
}

// ServiceBusConfig is how to reach Azure Service Bus: a connection string,
// or a namespace with an Entra ID credential.
type ServiceBusConfig struct {
	ConnectionString string `yaml:"connection_string" secret:"true"`
	// Namespace is the fully qualified name, e.g. contoso.servicebus.windows.net.
	Namespace string           `yaml:"namespace"`
	Auth      CredentialConfig `yaml:"auth"`
}

// CredentialConfig selects an azidentity credential.
type CredentialConfig struct {
	// Method is "default" (DefaultAzureCredential), "managed_identity",
	// "client_secret", "bearer" (a static token) or "none".
	Method       string `yaml:"method"`
	TenantID     string `yaml:"tenant_id"`
	ClientID     string `yaml:"client_id"`
	ClientSecret string `yaml:"client_secret" secret:"true"`
	Token        string `yaml:"token" secret:"true"`
}

// EndpointConfig is a FHIR server or a Dataverse environment.
type EndpointConfig struct {
	// BaseURL is the FHIR base (https://ws-fhir.fhir.azurehealthcareapis.com)
	// or the Dataverse org (https://org.crm.dynamics.com). Empty runs the
	// built-in sandbox.
	BaseURL string           `yaml:"base_url"`
	Auth    CredentialConfig `yaml:"auth"`
	Timeout time.Duration    `yaml:"timeout"`
}

// CRMConfig is the Dataverse environment and the application users
// fhirsync signs in as.
type CRMConfig struct {
	// BaseURL is the Dataverse org (https://org.crm.dynamics.com). Empty
	// runs the built-in sandbox.
	BaseURL string `yaml:"base_url"`
	// Auth is the one application user, unless Users lists them.
	Auth CredentialConfig `yaml:"auth"`
	// Users are application users that share the requests, each with
	// Dataverse's service-protection limits of its own. In the environment
	// an entry's keys are FHIRSYNC_CRM_USERS_<n>_<KEY>, n counting from 0
	// without gaps (FHIRSYNC_CRM_USERS_0_CLIENT_SECRET_FILE).
	Users   []CRMUserConfig `yaml:"users"`
	Timeout time.Duration   `yaml:"timeout"`
	// MaxConcurrency caps each user's requests in flight (1 to 52). Within
	// it, the limit follows the x-ms-dop-hint Dataverse answers with; 0
	// leaves the hint alone to decide, at most 52.
	MaxConcurrency int `yaml:"max_concurrency"`
	// BypassOwnSteps has the agent's writes name the steps of its own
	// service endpoint in Dataverse's optional parameter
	// BypassBusinessLogicExecutionStepIds, so its own changes are not
	// posted back to it; other endpoints' steps still run. Every
	// application user needs prvBypassCustomBusinessLogic (System
	// Administrator has it); without it the agent goes on without the
	// bypass.
	BypassOwnSteps bool `yaml:"bypass_own_steps"`
	// BypassStepLimit is the organization's
	// BypassBusinessLogicExecutionStepIdsLimit, how many step ids a request
	// may name; 0 means Dataverse's default, 3.
	BypassStepLimit int `yaml:"bypass_step_limit"`
}

// CRMUserConfig is one application user of crm.users.
type CRMUserConfig struct {
	// Name labels the user in metrics and errors; it must not be a
	// secret. Empty: client_id, else user1, user2… by position.
	Name string `yaml:"name"`
	// Method and the rest are as in CredentialConfig.
	Method       string `yaml:"method"`
	TenantID     string `yaml:"tenant_id"`
	ClientID     string `yaml:"client_id"`
	ClientSecret string `yaml:"client_secret" secret:"true"`
	Token        string `yaml:"token" secret:"true"`
	// UserID is the user's systemuserid; empty asks the CRM (WhoAmI) at
	// start.
	UserID string `yaml:"user_id"`
}

// credential is the user's credential part, for validation.
func (u CRMUserConfig) credential() CredentialConfig {
	return CredentialConfig{Method: u.Method, TenantID: u.TenantID, ClientID: u.ClientID, ClientSecret: u.ClientSecret, Token: u.Token}
}

// label is the user's label in metrics, as the CRM client derives it.
func (u CRMUserConfig) label(i int) string {
	switch {
	case u.Name != "":
		return u.Name
	case u.ClientID != "":
		return u.ClientID
	}
	return "user" + strconv.Itoa(i+1)
}

// defaultConfig is what runs with no configuration at all.
func defaultConfig() Config {
	return Config{
		DataDir:         "data",
		Listen:          "127.0.0.1:8080",
		Log:             LogConfig{Format: "text", Level: "info"},
		ShutdownTimeout: 30 * time.Second,
		Queue:           QueueConfig{Kind: "embedded", FHIRChanges: "fhir-changes", CRMChanges: "crm-changes"},
		FHIR:            EndpointConfig{Timeout: 30 * time.Second, Auth: CredentialConfig{Method: "none"}},
		CRM:             CRMConfig{Timeout: 30 * time.Second, Auth: CredentialConfig{Method: "none"}},
		Feeds: FeedsConfig{
			FHIRHistory: FHIRHistoryConfig{Schedule: "@every 30s", Overlap: 2 * time.Minute},
			CRMTracking: CRMTrackingConfig{Schedule: "@every 30s"},
		},
	}
}

// ConfigError lists every problem found while loading and validating.
type ConfigError struct{ Problems []string }

func (e *ConfigError) Error() string {
	return "invalid configuration:\n  - " + strings.Join(e.Problems, "\n  - ")
}

// loadConfig reads path (optional) and the environment, then validates.
func loadConfig(path string, getenv func(string) string) (Config, error) {
	cfg := defaultConfig()
	var probs []string
	if path != "" {
		raw, err := os.ReadFile(path)
		if err != nil {
			return cfg, &ConfigError{[]string{fmt.Sprintf("reading config file: %v", err)}}
		}
		probs = append(probs, decodeConfigFile(path, raw, &cfg)...)
	}
	probs = append(probs, applyEnv(reflect.ValueOf(&cfg).Elem(), "FHIRSYNC", getenv)...)
	probs = append(probs, cfg.Validate()...)
	if len(probs) > 0 {
		return cfg, &ConfigError{Problems: probs}
	}
	return cfg, nil
}

// decodeConfigFile overlays the YAML document raw (read from path) onto
// cfg, refusing unknown keys, and returns each problem prefixed with path.
func decodeConfigFile(path string, raw []byte, cfg *Config) []string {
	dec := yaml.NewDecoder(bytes.NewReader(raw))
	dec.KnownFields(true)
	err := dec.Decode(cfg)
	if err == nil || errors.Is(err, io.EOF) {
		return nil
	}
	var te *yaml.TypeError
	if !errors.As(err, &te) {
		return []string{fmt.Sprintf("%s: %v", path, err)}
	}
	probs := make([]string, 0, len(te.Errors))
	for _, m := range te.Errors {
		probs = append(probs, path+": "+m)
	}
	return probs
}

// applyEnv overlays FHIRSYNC_… variables onto the struct v.
func applyEnv(v reflect.Value, prefix string, getenv func(string) string) []string {
	var probs []string
	t := v.Type()
	for i := range t.NumField() {
		f := t.Field(i)
		tag := strings.Split(f.Tag.Get("yaml"), ",")[0]
		if tag == "" || tag == "-" {
			continue
		}
		name := prefix + "_" + strings.ToUpper(tag)
		fv := v.Field(i)
		if fv.Kind() == reflect.Struct {
			probs = append(probs, applyEnv(fv, name, getenv)...)
			continue
		}
		if fv.Kind() == reflect.Slice && fv.Type().Elem().Kind() == reflect.Struct {
			probs = append(probs, applyEnvList(fv, name, getenv)...)
			continue
		}
		val, set := getenv(name), getenv(name) != ""
		if f.Tag.Get("secret") == "true" {
			if file := getenv(name + "_FILE"); file != "" {
				if set {
					probs = append(probs, fmt.Sprintf("%s and %s_FILE are both set; use one", name, name))
					continue
				}
				b, err := os.ReadFile(file)
				if err != nil {
					probs = append(probs, fmt.Sprintf("%s_FILE: %v", name, err))
					continue
				}
				val, set = strings.TrimRight(string(b), "\r\n"), true
			}
		}
		if !set {
			continue
		}
		if err := setScalar(fv, val); err != nil {
			probs = append(probs, fmt.Sprintf("%s: %v", name, err))
		}
	}
	return probs
}

// applyEnvList overlays NAME_<n>_… variables onto the list entries, n
// counting from 0; an entry past the list's end is added when any of its
// variables is set.
func applyEnvList(fv reflect.Value, name string, getenv func(string) string) []string {
	var probs []string
	for i := 0; ; i++ {
		prefix := name + "_" + strconv.Itoa(i)
		if i >= fv.Len() {
			if !anyEnv(fv.Type().Elem(), prefix, getenv) {
				return probs
			}
			fv.Set(reflect.Append(fv, reflect.New(fv.Type().Elem()).Elem()))
		}
		probs = append(probs, applyEnv(fv.Index(i), prefix, getenv)...)
	}
}

// anyEnv reports whether a variable of a struct t under prefix is set.
func anyEnv(t reflect.Type, prefix string, getenv func(string) string) bool {
	for i := range t.NumField() {
		f := t.Field(i)
		tag := strings.Split(f.Tag.Get("yaml"), ",")[0]
		if tag == "" || tag == "-" {
			continue
		}
		name := prefix + "_" + strings.ToUpper(tag)
		if getenv(name) != "" || (f.Tag.Get("secret") == "true" && getenv(name+"_FILE") != "") {
			return true
		}
		if f.Type.Kind() == reflect.Struct && anyEnv(f.Type, name, getenv) {
			return true
		}
	}
	return false
}

func setScalar(fv reflect.Value, s string) error {
	switch {
	case fv.Type() == reflect.TypeOf(time.Duration(0)):
		d, err := time.ParseDuration(s)
		if err != nil {
			return fmt.Errorf("%q is not a duration (use e.g. 30s, 5m)", s)
		}
		fv.SetInt(int64(d))
	case fv.Kind() == reflect.Slice && fv.Type().Elem().Kind() == reflect.String:
		var parts []string
		for _, p := range strings.Split(s, ",") {
			if p = strings.TrimSpace(p); p != "" {
				parts = append(parts, p)
			}
		}
		fv.Set(reflect.ValueOf(parts))
	case fv.Kind() == reflect.String:
		fv.SetString(s)
	case fv.Kind() == reflect.Map && fv.Type().Key().Kind() == reflect.String && fv.Type().Elem().Kind() == reflect.String:
		return setStringMap(fv, s)
	case fv.Kind() == reflect.Int:
		n, err := strconv.Atoi(s)
		if err != nil {
			return fmt.Errorf("%q is not an integer", s)
		}
		fv.SetInt(int64(n))
	case fv.Kind() == reflect.Bool:
		b, err := strconv.ParseBool(s)
		if err != nil {
			return fmt.Errorf("%q is not true or false", s)
		}
		fv.SetBool(b)
	case fv.Kind() == reflect.Float64:
		f, err := strconv.ParseFloat(s, 64)
		if err != nil {
			return fmt.Errorf("%q is not a number", s)
		}
		fv.SetFloat(f)
	default:
		return fmt.Errorf("cannot be set from the environment")
	}
	return nil
}

// Validate reports every problem at once, each naming its key.
func (c Config) Validate() []string {
	var p []string
	bad := func(key, format string, args ...any) { p = append(p, key+": "+fmt.Sprintf(format, args...)) }
	if c.DataDir == "" {
		bad("data_dir", "must not be empty")
	}
	if _, port, err := net.SplitHostPort(c.Listen); err != nil {
		bad("listen", "%q is not host:port", c.Listen)
	} else if n, err := strconv.Atoi(port); err != nil || n < 0 || n > 65535 {
		bad("listen", "port %q is not a number between 0 and 65535", port)
	}
	p = append(p, c.validateTransport()...)
	if u := c.Database.URL; u != "" && !hasAnyPrefix(u, "postgres://", "postgresql://", "sqlite:", "file:") {
		bad("database.url", "must start with postgres://, postgresql://, sqlite: or file:")
	}
	if c.Database.MaxOpenConns < 0 {
		bad("database.max_open_conns", "must not be negative")
	}
	if s := c.Database.SQLiteSynchronous; s != "" && s != storage.SyncNormal && s != storage.SyncFull {
		bad("database.sqlite_synchronous", "%q is not %s or %s", s, storage.SyncNormal, storage.SyncFull)
	}
	if !slices.Contains([]string{"text", "json"}, c.Log.Format) {
		bad("log.format", "%q is not text or json", c.Log.Format)
	}
	if !slices.Contains([]string{"debug", "info", "warn", "error"}, c.Log.Level) {
		bad("log.level", "%q is not debug, info, warn or error", c.Log.Level)
	}
	if c.ShutdownTimeout <= 0 {
		bad("shutdown_timeout", "must be positive")
	}
	switch c.Queue.Kind {
	case "embedded":
	case "servicebus":
		sb := c.Queue.ServiceBus
		if (sb.ConnectionString == "") == (sb.Namespace == "") {
			bad("queue.service_bus", "set exactly one of connection_string and namespace")
		}
		if sb.Namespace != "" {
			p = append(p, c.Queue.ServiceBus.Auth.validate("queue.service_bus.auth", false)...)
		}
	default:
		bad("queue.kind", "%q is not embedded or servicebus", c.Queue.Kind)
	}
	if c.Queue.FHIRChanges == "" || c.Queue.CRMChanges == "" || c.Queue.FHIRChanges == c.Queue.CRMChanges {
		bad("queue", "fhir_changes and crm_changes must be two different non-empty names")
	}
	crmEP := EndpointConfig{BaseURL: c.CRM.BaseURL, Auth: c.CRM.Auth, Timeout: c.CRM.Timeout}
	for key, ep := range map[string]EndpointConfig{"fhir": c.FHIR, "crm": crmEP} {
		if ep.BaseURL != "" && !hasAnyPrefix(ep.BaseURL, "https://", "http://") {
			bad(key+".base_url", "must be an http(s) URL")
		}
		if ep.Timeout <= 0 {
			bad(key+".timeout", "must be positive")
		}
		p = append(p, ep.Auth.validate(key+".auth", true)...)
	}
	p = append(p, c.validateCRMUsers()...)
	if _, err := cron.ParseStandard(c.Feeds.FHIRHistory.Schedule); err != nil {
		bad("feeds.fhir_history.schedule", "%v", err)
	}
	if n := c.Feeds.FHIRHistory.Count; n < 0 || n > 1000 {
		bad("feeds.fhir_history.count", "must be between 1 and 1000 (0: 100)")
	}
	if _, err := cron.ParseStandard(c.Feeds.CRMTracking.Schedule); err != nil {
		bad("feeds.crm_tracking.schedule", "%v", err)
	}
	if rh := c.Feeds.RestHook; rh.Path != "" && rh.Authorization == "" && !rh.AllowAnonymous {
		bad("feeds.rest_hook.authorization", "required with feeds.rest_hook.path (the Authorization header value the FHIR server sends; "+
			"or FHIRSYNC_FEEDS_REST_HOOK_AUTHORIZATION_FILE), or set feeds.rest_hook.allow_anonymous: true")
	}
	if wh := c.Feeds.DataverseWebhook; wh.Path != "" || wh.Key != "" || wh.Header != "" {
		switch {
		case wh.Path == "":
			bad("feeds.dataverse_webhook.path", "required when a header or key is set")
		case !strings.HasPrefix(wh.Path, "/") || strings.ContainsAny(wh.Path, " \t{}?#"):
			bad("feeds.dataverse_webhook.path", "%q must start with / and hold no spaces, braces, ? or #", wh.Path)
		case c.Feeds.RestHook.Path != "" && strings.TrimSuffix(wh.Path, "/") == strings.TrimSuffix(c.Feeds.RestHook.Path, "/"):
			bad("feeds.dataverse_webhook.path", "must differ from feeds.rest_hook.path")
		}
		if len(wh.Key) < minWebhookKeyLen {
			bad("feeds.dataverse_webhook.key", "must be at least %d characters (set it or FHIRSYNC_FEEDS_DATAVERSE_WEBHOOK_KEY_FILE)", minWebhookKeyLen)
		}
		if wh.Header != "" && !validHeaderName(wh.Header) {
			bad("feeds.dataverse_webhook.header", "%q is not a valid HTTP header name", wh.Header)
		}
	}
	if s := c.Agent.ReconcileSchedule; s != "" {
		if _, err := cron.ParseStandard(s); err != nil {
			bad("agent.reconcile_schedule", "%v", err)
		}
	}
	if c.Agent.Workers < 0 || c.Agent.MaxAttempts < 0 {
		bad("agent", "workers and max_attempts must not be negative")
	}
	if c.Agent.FHIRBatchMax < 0 || c.Agent.FHIRBatchMax > 1000 {
		bad("agent.fhir_batch_max", "must be between 1 and 1000 (0: the default)")
	}
	if c.Agent.FHIRBatchWait < 0 {
		bad("agent.fhir_batch_wait", "must not be negative")
	}
	switch c.Agent.ConflictTie {
	case "", "hold", "fhir-wins", "crm-wins":
	default:
		bad("agent.conflict_tie", "%q is not hold, fhir-wins or crm-wins", c.Agent.ConflictTie)
	}
	if c.Agent.CRMBatchMax < 0 || c.Agent.CRMBatchMax > 1000 {
		bad("agent.crm_batch_max", "must be between 0 and 1000")
	}
	if c.Agent.CRMBatchWait < 0 {
		bad("agent.crm_batch_wait", "must not be negative")
	}
	if c.Agent.BackfillWorkers < -1 {
		bad("agent.backfill_workers", "must be -1 (none apart), 0 (the default) or more")
	}
	if c.Agent.BackfillBatchMax < 0 || c.Agent.BackfillBatchMax > 1000 {
		bad("agent.backfill_batch_max", "must be between 0 and 1000")
	}
	if c.Agent.BackfillBatchWait < 0 {
		bad("agent.backfill_batch_wait", "must not be negative")
	}
	switch c.Agent.CRMBulk {
	case "", "on", "off":
	default:
		bad("agent.crm_bulk", "%q is not on or off", c.Agent.CRMBulk)
	}
	if c.Agent.ConflictSkew < 0 {
		bad("agent.conflict_skew", "must not be negative")
	}
	if err := c.Logs.Validate(); err != nil {
		for _, line := range strings.Split(err.Error(), "\n") {
			p = append(p, line)
		}
	}
	if err := c.Admin.Validate(); err != nil {
		for _, line := range strings.Split(err.Error(), "\n") {
			p = append(p, "admin: "+line)
		}
	}
	if err := c.Tracing.Validate(); err != nil {
		p = append(p, strings.Split(err.Error(), "\n")...)
	}
	p = append(p, c.Alerts.problems()...)
	slices.Sort(p)
	return p
}

// validateCRMUsers checks crm.users, crm.max_concurrency and
// crm.bypass_step_limit.
func (c Config) validateCRMUsers() []string {
	var p []string
	if c.CRM.BypassStepLimit < 0 {
		p = append(p, "crm.bypass_step_limit: must not be negative (0: Dataverse's default, 3)")
	}
	if n := c.CRM.MaxConcurrency; n < 0 || n > crm.MaxConcurrency {
		p = append(p, fmt.Sprintf("crm.max_concurrency: must be between 1 and %d per user (0: follow the CRM's x-ms-dop-hint)", crm.MaxConcurrency))
	}
	if len(c.CRM.Users) == 0 {
		return p
	}
	if a := c.CRM.Auth; a.Method != "none" || a.Token != "" || a.ClientSecret != "" {
		p = append(p, "crm.auth: set crm.auth or crm.users, not both")
	}
	if len(c.CRM.Users) > 1 && c.Agent.CRMUserID != "" {
		p = append(p, "agent.crm_user_id: names one user; with several crm.users set each one's user_id, or leave them to WhoAmI")
	}
	seen := map[string]bool{}
	for i, u := range c.CRM.Users {
		key := fmt.Sprintf("crm.users[%d]", i)
		if u.Method == "" {
			p = append(p, key+".method: required")
		} else {
			p = append(p, u.credential().validate(key, true)...)
		}
		if l := u.label(i); seen[l] {
			p = append(p, fmt.Sprintf("%s.name: %q labels another user too; give each user its own name", key, l))
		} else {
			seen[l] = true
		}
	}
	return p
}

// validateTransport checks the TLS files and the metrics address.
func (c Config) validateTransport() []string {
	var p []string
	switch {
	case (c.TLSCertFile == "") != (c.TLSKeyFile == ""):
		p = append(p, "tls_cert_file, tls_key_file: set both or neither")
	case c.TLSCertFile != "":
		if _, err := tls.LoadX509KeyPair(c.TLSCertFile, c.TLSKeyFile); err != nil {
			p = append(p, fmt.Sprintf("tls_cert_file, tls_key_file: %v", err))
		}
	}
	if c.MetricsListen != "" {
		if _, port, err := net.SplitHostPort(c.MetricsListen); err != nil {
			p = append(p, fmt.Sprintf("metrics_listen: %q is not host:port", c.MetricsListen))
		} else if n, err := strconv.Atoi(port); err != nil || n < 0 || n > 65535 {
			p = append(p, fmt.Sprintf("metrics_listen: port %q is not a number between 0 and 65535", port))
		} else if c.MetricsListen == c.Listen && n != 0 {
			p = append(p, "metrics_listen: must differ from listen")
		}
	}
	return p
}

func (a CredentialConfig) validate(key string, allowStatic bool) []string {
	var p []string
	switch a.Method {
	case "default", "managed_identity":
	case "client_secret":
		if a.TenantID == "" || a.ClientID == "" || a.ClientSecret == "" {
			p = append(p, key+": client_secret needs tenant_id, client_id and client_secret")
		}
	case "bearer":
		if !allowStatic {
			p = append(p, key+": bearer is not supported here")
		} else if a.Token == "" {
			p = append(p, key+".token: required for bearer")
		}
	case "none":
		if !allowStatic {
			p = append(p, key+": none is not supported here")
		}
	default:
		p = append(p, fmt.Sprintf("%s.method: %q is not default, managed_identity, client_secret, bearer or none", key, a.Method))
	}
	return p
}

func hasAnyPrefix(s string, prefixes ...string) bool {
	for _, p := range prefixes {
		if strings.HasPrefix(s, p) {
			return true
		}
	}
	return false
}

// validHeaderName reports whether s is an HTTP header field name (an RFC
// 9110 token).
func validHeaderName(s string) bool {
	if s == "" {
		return false
	}
	for _, c := range []byte(s) {
		if c >= 0x7f || c <= ' ' || strings.IndexByte(`"(),/:;<=>?@[\]{}`, c) >= 0 {
			return false
		}
	}
	return true
}
