package main

import (
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"gopkg.in/yaml.v3"
)

// TestHelmChartConfigsLoad loads what the Helm chart hands the process —
// the container's environment and config.yaml, as rendered for each value
// set of deploy's TestHelmChartRenderedConfig — with the real loader:
// strict keys, FHIRSYNC_…_FILE secrets, Validate. A chart that renders a
// key fhirsync does not know, or a value it refuses, fails here.
func TestHelmChartConfigsLoad(t *testing.T) {
	files, err := filepath.Glob(filepath.Join("..", "..", "deploy", "testdata", "helm-config-*.yaml"))
	if err != nil || len(files) == 0 {
		t.Fatalf("no rendered chart configurations (%v); go test ./deploy/ -run TestHelmChartRenderedConfig -update writes them", err)
	}
	// The chart's defaults leave the Service Bus namespace to the operator.
	wantProblems := map[string][]string{
		"helm-config-production-example.yaml":                   nil,
		"helm-config-defaults.yaml":                             {"queue.service_bus: set exactly one of connection_string and namespace"},
		"helm-config-workload-identity.yaml":                    nil,
		"helm-config-servicemonitor-and-ingress.yaml":           {"queue.service_bus: set exactly one of connection_string and namespace"},
		"helm-config-single-replica-with-a-created-secret.yaml": nil,
	}
	for _, file := range files {
		t.Run(filepath.Base(file), func(t *testing.T) {
			want, ok := wantProblems[filepath.Base(file)]
			if !ok {
				t.Fatalf("a new rendered configuration: say here which problems it should have")
			}
			raw, err := os.ReadFile(file)
			if err != nil {
				t.Fatal(err)
			}
			var rendered struct {
				Env    map[string]string `yaml:"env"`
				Config string            `yaml:"config.yaml"`
			}
			if err := yaml.Unmarshal(raw, &rendered); err != nil {
				t.Fatal(err)
			}
			dir := t.TempDir()
			cfgPath := filepath.Join(dir, "config.yaml")
			if err := os.WriteFile(cfgPath, []byte(rendered.Config), 0o600); err != nil {
				t.Fatal(err)
			}
			env := map[string]string{}
			for k, v := range rendered.Env {
				switch {
				case k == "FHIRSYNC_CONFIG":
					if v != "/etc/fhirsync/config.yaml" {
						t.Errorf("FHIRSYNC_CONFIG = %q, not the mounted file", v)
					}
				case strings.HasSuffix(k, "_FILE"):
					// The mounted Secret key, with a value of the right shape.
					val := "not-a-real-secret"
					if k == "FHIRSYNC_DATABASE_URL_FILE" {
						val = "postgres://fhirsync@db.example:5432/fhirsync?sslmode=require"
					}
					p := filepath.Join(dir, filepath.Base(v))
					if err := os.WriteFile(p, []byte(val+"\n"), 0o600); err != nil {
						t.Fatal(err)
					}
					env[k] = p
				default:
					env[k] = v
				}
			}
			cfg, err := loadConfig(cfgPath, func(k string) string { return env[k] })
			var got []string
			if ce, ok := err.(*ConfigError); ok {
				got = ce.Problems
			} else if err != nil {
				t.Fatal(err)
			}
			if !slices.Equal(got, want) {
				t.Fatalf("problems = %q, want %q", got, want)
			}
			if cfg.Listen != env["FHIRSYNC_LISTEN"] || cfg.MetricsListen != env["FHIRSYNC_METRICS_LISTEN"] || cfg.DataDir != "/var/lib/fhirsync" {
				t.Errorf("listen, metrics_listen, data_dir = %q, %q, %q; want the chart's environment", cfg.Listen, cfg.MetricsListen, cfg.DataDir)
			}
			if _, ok := env["FHIRSYNC_DATABASE_URL_FILE"]; ok && !strings.HasPrefix(cfg.Database.URL, "postgres://") {
				t.Errorf("database.url = %q, want the mounted secret's", cfg.Database.URL)
			}
		})
	}
}
