package main

import (
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/fhirsync/fhirsync/agent/alerts"
)

// AlertsConfig sets the alert rules that live in the configuration file
// and the webhooks every rule (from the file or the admin app) may post to.
type AlertsConfig struct {
	// Every is how often the rules are evaluated (0: 30s).
	Every time.Duration `yaml:"every"`
	// Webhooks are the receivers of alert notices.
	Webhooks []AlertWebhookConfig `yaml:"webhooks"`
	// Rules are alert rules; the admin app shows them and cannot change
	// them.
	Rules []alerts.Rule `yaml:"rules"`
}

// AlertWebhookConfig is one webhook alert notices are posted to.
type AlertWebhookConfig struct {
	Name string `yaml:"name"`
	// URL carries the receiver's token (Slack, Teams): a secret.
	URL string `yaml:"url" secret:"true"`
	// Format is text ({"text"}: Slack, Teams connectors; default),
	// teams-workflow (an Adaptive Card message) or json.
	Format string `yaml:"format"`
}

// alertsConfig is the alert service's configuration.
func (c AlertsConfig) alertsConfig() alerts.Config {
	cfg := alerts.Config{Every: c.Every, Rules: slices.Clone(c.Rules)}
	for _, w := range c.Webhooks {
		cfg.Webhooks = append(cfg.Webhooks, alerts.Webhook{Name: w.Name, URL: w.URL, Format: w.Format})
	}
	return cfg
}

// problems reports every problem with the alert settings, naming keys
// and never a webhook URL.
func (c AlertsConfig) problems() []string {
	var p []string
	if c.Every < 0 || (c.Every > 0 && c.Every < time.Second) {
		p = append(p, "alerts.every: must be at least 1s (0: 30s)")
	}
	var names []string
	for i, w := range c.Webhooks {
		key := fmt.Sprintf("alerts.webhooks[%d]", i)
		if w.Name == "" {
			p = append(p, key+".name: required")
		}
		if slices.Contains(names, w.Name) {
			p = append(p, fmt.Sprintf("%s.name: %q appears twice", key, w.Name))
		}
		names = append(names, w.Name)
		if !strings.HasPrefix(w.URL, "https://") && !strings.HasPrefix(w.URL, "http://") {
			p = append(p, key+".url: must be an http or https URL")
		}
		if w.Format != "" && !slices.Contains(alerts.Formats(), w.Format) {
			p = append(p, fmt.Sprintf("%s.format: %q is not one of %s", key, w.Format, strings.Join(alerts.Formats(), ", ")))
		}
	}
	var rules []string
	for i, r := range c.Rules {
		key := fmt.Sprintf("alerts.rules[%d]", i)
		if err := r.Validate(names); err != nil {
			p = append(p, key+": "+strings.TrimPrefix(err.Error(), alerts.ErrInvalidRule.Error()+": "))
		}
		if slices.Contains(rules, r.Name) {
			p = append(p, fmt.Sprintf("%s.name: %q appears twice", key, r.Name))
		}
		rules = append(rules, r.Name)
	}
	return p
}
