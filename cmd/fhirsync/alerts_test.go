package main

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/fhirsync/fhirsync/agent/alerts"
)

func TestAlertsConfig(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	write := func(body string) string {
		p := filepath.Join(dir, "c.yaml")
		if err := os.WriteFile(p, []byte(body), 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	cfg, err := loadConfig(write(`
alerts:
  every: 15s
  webhooks:
    - name: ops
      format: teams-workflow
  rules:
    - name: dead-letters
      kind: dead_letter_rate
      threshold: 5
      window: 10m
      webhook: ops
`), func(k string) string {
		if k == "FHIRSYNC_ALERTS_WEBHOOKS_0_URL" {
			return "https://hooks.example.org/T0/secret-token"
		}
		return ""
	})
	if err != nil {
		t.Fatal(err)
	}
	want := alerts.Rule{Name: "dead-letters", Kind: alerts.KindDeadLetterRate, Threshold: 5, Window: 10 * time.Minute, Webhook: "ops"}
	if a := cfg.Alerts; a.Every != 15*time.Second || len(a.Rules) != 1 || a.Rules[0] != want ||
		len(a.Webhooks) != 1 || a.Webhooks[0].URL != "https://hooks.example.org/T0/secret-token" {
		t.Errorf("alerts = %+v", a)
	}

	_, err = loadConfig(write(`
alerts:
  webhooks:
    - name: ops
      url: ftp://hooks.example.org/secret-token
      format: xml
  rules:
    - name: lag
      kind: cpu
      webhook: nobody
`), func(string) string { return "" })
	if err == nil {
		t.Fatal("a bad alerts section loaded")
	}
	msg := err.Error()
	for _, want := range []string{"alerts.webhooks[0].url", "alerts.webhooks[0].format", `alerts.rules[0]: kind "cpu"`, `webhook "nobody"`} {
		if !strings.Contains(msg, want) {
			t.Errorf("error does not name %s:\n%s", want, msg)
		}
	}
	if strings.Contains(msg, "secret-token") {
		t.Errorf("error shows the webhook URL:\n%s", msg)
	}
}
