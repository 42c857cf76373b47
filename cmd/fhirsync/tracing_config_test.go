package main

import (
	"strings"
	"testing"
)

// TestTracingConfig: tracing is off by default; its keys and
// admin.trace_url come from the environment like every other key, and bad
// values are reported with the others.
func TestTracingConfig(t *testing.T) {
	t.Parallel()
	cfg, err := loadConfig("", envFrom(nil))
	if err != nil {
		t.Fatal(err)
	}
	if cfg.Tracing.Enabled {
		t.Error("tracing is on by default")
	}
	cfg, err = loadConfig("", envFrom(map[string]string{
		"FHIRSYNC_TRACING_ENABLED": "true", "FHIRSYNC_TRACING_ENDPOINT": "http://otel-collector:4318",
		"FHIRSYNC_TRACING_PROTOCOL": "grpc", "FHIRSYNC_TRACING_SAMPLE_RATIO": "0.25",
		"FHIRSYNC_ADMIN_TRACE_URL": "https://grafana.example/explore?traceId={trace_id}",
	}))
	if err != nil {
		t.Fatal(err)
	}
	tr := cfg.Tracing
	if !tr.Enabled || tr.Endpoint != "http://otel-collector:4318" || tr.Protocol != "grpc" || tr.SampleRatio != 0.25 ||
		cfg.Admin.TraceURL != "https://grafana.example/explore?traceId={trace_id}" {
		t.Errorf("tracing configuration from the environment: %+v, trace URL %q", tr, cfg.Admin.TraceURL)
	}
	_, err = loadConfig("", envFrom(map[string]string{
		"FHIRSYNC_TRACING_PROTOCOL": "zipkin", "FHIRSYNC_TRACING_SAMPLE_RATIO": "lots",
		"FHIRSYNC_ADMIN_TRACE_URL": "https://grafana.example/explore",
	}))
	for _, want := range []string{"tracing.protocol", "FHIRSYNC_TRACING_SAMPLE_RATIO", "admin.trace_url"} {
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("bad tracing settings: %v, want a problem naming %s", err, want)
		}
	}
}
