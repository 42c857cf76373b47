package main

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func envFrom(m map[string]string) func(string) string {
	return func(k string) string { return m[k] }
}

func TestLoadConfigDefaults(t *testing.T) {
	t.Parallel()
	cfg, err := loadConfig("", envFrom(nil))
	if err != nil {
		t.Fatalf("defaults do not validate: %v", err)
	}
	if cfg.Listen != "127.0.0.1:8080" || cfg.Queue.Kind != "embedded" || cfg.Database.URL != "" || cfg.DataDir != "data" {
		t.Fatalf("unexpected defaults: %+v", cfg)
	}
}

func TestLoadConfigSources(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	write := func(name, body string) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(body), 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	file := write("ok.yaml", "listen: 127.0.0.1:9000\nshutdown_timeout: 5s\nqueue:\n  kind: servicebus\n  service_bus:\n    namespace: x.servicebus.windows.net\n    auth:\n      method: managed_identity\n")
	secret := write("dburl", "postgres://u:p@db.example:5432/sync\n")
	tests := []struct {
		name    string
		path    string
		env     map[string]string
		check   func(t *testing.T, c Config)
		wantErr []string
	}{
		{
			name: "file values",
			path: file,
			check: func(t *testing.T, c Config) {
				if c.Listen != "127.0.0.1:9000" || time.Duration(c.ShutdownTimeout) != 5*time.Second || c.Queue.ServiceBus.Auth.Method != "managed_identity" {
					t.Errorf("file not applied: %+v", c)
				}
			},
		},
		{
			name: "environment overrides file",
			path: file,
			env:  map[string]string{"FHIRSYNC_LISTEN": "0.0.0.0:7000", "FHIRSYNC_LOG_FORMAT": "json"},
			check: func(t *testing.T, c Config) {
				if c.Listen != "0.0.0.0:7000" || c.Log.Format != "json" {
					t.Errorf("env not applied: listen=%s format=%s", c.Listen, c.Log.Format)
				}
			},
		},
		{
			name: "secret from _FILE",
			env:  map[string]string{"FHIRSYNC_DATABASE_URL_FILE": secret},
			check: func(t *testing.T, c Config) {
				if c.Database.URL != "postgres://u:p@db.example:5432/sync" {
					t.Errorf("database.url = %q", c.Database.URL)
				}
			},
		},
		{
			name:    "secret set twice",
			env:     map[string]string{"FHIRSYNC_DATABASE_URL_FILE": secret, "FHIRSYNC_DATABASE_URL": "postgres://a"},
			wantErr: []string{"FHIRSYNC_DATABASE_URL and FHIRSYNC_DATABASE_URL_FILE are both set"},
		},
		{
			name:  "non-secret has no _FILE form",
			env:   map[string]string{"FHIRSYNC_LISTEN_FILE": secret},
			check: func(t *testing.T, c Config) {},
		},
		{
			name:    "three mistakes in a file are all reported",
			path:    write("bad.yaml", "listen: nope\nlog:\n  format: xml\nunknown_key: 1\n"),
			wantErr: []string{"listen:", "log.format:", "unknown_key"},
		},
		{
			name:    "bad env values name the variable",
			env:     map[string]string{"FHIRSYNC_SHUTDOWN_TIMEOUT": "soon", "FHIRSYNC_DATABASE_MAX_OPEN_CONNS": "many"},
			wantErr: []string{"FHIRSYNC_SHUTDOWN_TIMEOUT", "FHIRSYNC_DATABASE_MAX_OPEN_CONNS"},
		},
		{
			name: "SQLite synced at every commit",
			env:  map[string]string{"FHIRSYNC_DATABASE_SQLITE_SYNCHRONOUS": "full"},
			check: func(t *testing.T, c Config) {
				if c.Database.SQLiteSynchronous != "full" {
					t.Errorf("database.sqlite_synchronous = %q", c.Database.SQLiteSynchronous)
				}
			},
		},
		{
			name:    "SQLite synchronous setting must be known",
			env:     map[string]string{"FHIRSYNC_DATABASE_SQLITE_SYNCHRONOUS": "extra"},
			wantErr: []string{`database.sqlite_synchronous: "extra" is not normal or full`},
		},
		{
			name:    "service bus needs one way in",
			env:     map[string]string{"FHIRSYNC_QUEUE_KIND": "servicebus"},
			wantErr: []string{"queue.service_bus: set exactly one of"},
		},
		{
			name:    "client secret needs its parts",
			env:     map[string]string{"FHIRSYNC_CRM_AUTH_METHOD": "client_secret"},
			wantErr: []string{"crm.auth: client_secret needs tenant_id"},
		},
		{
			name:    "missing file",
			path:    filepath.Join(dir, "absent.yaml"),
			wantErr: []string{"reading config file"},
		},
		{
			name:    "wrong database scheme",
			env:     map[string]string{"FHIRSYNC_DATABASE_URL": "mysql://x"},
			wantErr: []string{"database.url: must start with"},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			cfg, err := loadConfig(tt.path, envFrom(tt.env))
			if len(tt.wantErr) > 0 {
				var ce *ConfigError
				if !errors.As(err, &ce) {
					t.Fatalf("err = %v, want ConfigError", err)
				}
				if len(tt.wantErr) > 1 && len(ce.Problems) < len(tt.wantErr) {
					t.Errorf("got %d problems, want at least %d: %v", len(ce.Problems), len(tt.wantErr), ce.Problems)
				}
				for _, w := range tt.wantErr {
					if !strings.Contains(err.Error(), w) {
						t.Errorf("error does not mention %q:\n%v", w, err)
					}
				}
				return
			}
			if err != nil {
				t.Fatalf("unexpected error: %v", err)
			}
			tt.check(t, cfg)
		})
	}
}

func TestLoadConfigDataverseWebhook(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	write := func(name, body string) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(body), 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	const key = "k3y-from-the-plug-in-registration"
	file := write("webhook.yaml", "feeds:\n  dataverse_webhook:\n    path: /hooks/dataverse\n    header: x-fhirsync-key\n")
	keyFile := write("webhook-key", key+"\n")
	tests := []struct {
		name    string
		path    string
		env     map[string]string
		want    DataverseWebhookConfig
		wantErr []string
	}{
		{
			name: "file with the key from _FILE",
			path: file,
			env:  map[string]string{"FHIRSYNC_FEEDS_DATAVERSE_WEBHOOK_KEY_FILE": keyFile},
			want: DataverseWebhookConfig{Path: "/hooks/dataverse", Header: "x-fhirsync-key", Key: key},
		},
		{
			name: "environment only, code query key",
			env:  map[string]string{"FHIRSYNC_FEEDS_DATAVERSE_WEBHOOK_PATH": "/hooks/dv", "FHIRSYNC_FEEDS_DATAVERSE_WEBHOOK_KEY": key},
			want: DataverseWebhookConfig{Path: "/hooks/dv", Key: key},
		},
		{
			name: "off by default",
			want: DataverseWebhookConfig{},
		},
		{
			name:    "path without a key",
			path:    file,
			wantErr: []string{"feeds.dataverse_webhook.key: must be at least 16 characters"},
		},
		{
			name:    "short key",
			path:    file,
			env:     map[string]string{"FHIRSYNC_FEEDS_DATAVERSE_WEBHOOK_KEY": "short"},
			wantErr: []string{"feeds.dataverse_webhook.key: must be at least 16 characters"},
		},
		{
			name:    "key set twice",
			path:    file,
			env:     map[string]string{"FHIRSYNC_FEEDS_DATAVERSE_WEBHOOK_KEY": key, "FHIRSYNC_FEEDS_DATAVERSE_WEBHOOK_KEY_FILE": keyFile},
			wantErr: []string{"FHIRSYNC_FEEDS_DATAVERSE_WEBHOOK_KEY and FHIRSYNC_FEEDS_DATAVERSE_WEBHOOK_KEY_FILE are both set"},
		},
		{
			name:    "key without a path",
			env:     map[string]string{"FHIRSYNC_FEEDS_DATAVERSE_WEBHOOK_KEY": key},
			wantErr: []string{"feeds.dataverse_webhook.path: required when a header or key is set"},
		},
		{
			name: "every problem at once",
			path: write("bad-webhook.yaml", "feeds:\n  rest_hook:\n    path: /hooks/fhir\n  dataverse_webhook:\n    path: hooks\n    header: \"x key\"\n    key: short\n"),
			wantErr: []string{"feeds.dataverse_webhook.path: \"hooks\" must start with /",
				"feeds.dataverse_webhook.header: \"x key\" is not a valid HTTP header name", "feeds.dataverse_webhook.key"},
		},
		{
			name:    "same path as the rest hook",
			path:    write("clash.yaml", "feeds:\n  rest_hook:\n    path: /hooks/fhir/\n  dataverse_webhook:\n    path: /hooks/fhir\n    key: "+key+"\n"),
			wantErr: []string{"feeds.dataverse_webhook.path: must differ from feeds.rest_hook.path"},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			cfg, err := loadConfig(tt.path, envFrom(tt.env))
			if len(tt.wantErr) > 0 {
				var ce *ConfigError
				if !errors.As(err, &ce) {
					t.Fatalf("err = %v, want ConfigError", err)
				}
				for _, w := range tt.wantErr {
					if !strings.Contains(err.Error(), w) {
						t.Errorf("error does not mention %q:\n%v", w, err)
					}
				}
				if strings.Contains(err.Error(), key) {
					t.Errorf("error repeats the key:\n%v", err)
				}
				return
			}
			if err != nil {
				t.Fatalf("unexpected error: %v", err)
			}
			if cfg.Feeds.DataverseWebhook != tt.want {
				t.Errorf("feeds.dataverse_webhook = %+v, want %+v", cfg.Feeds.DataverseWebhook, tt.want)
			}
		})
	}
}
