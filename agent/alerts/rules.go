package alerts

import (
	"errors"
	"fmt"
	"regexp"
	"slices"
	"strings"
	"time"
)

// Kind is what a rule watches.
type Kind string

// The kinds of rule. Each compares one measured value with the rule's
// threshold and fires while the value is at or above it.
const (
	// KindDeadLetterRate counts decisions dead-lettered within the window.
	KindDeadLetterRate Kind = "dead_letter_rate"
	// KindLag is the age in seconds of the oldest unprocessed change of
	// any feed.
	KindLag Kind = "lag"
	// KindAuthFailures counts decisions refused as unauthorized (401/403)
	// within the window.
	KindAuthFailures Kind = "auth_failures"
	// KindBudgetExhausted is the largest share (percent) of a CRM user's
	// service-protection budget (requests or execution time) used in the
	// current window, as Dataverse last reported it.
	KindBudgetExhausted Kind = "budget_exhausted"
	// KindFeedStopped is the time in seconds since the feed that polled
	// longest ago last polled.
	KindFeedStopped Kind = "feed_stopped"
)

// Kinds lists every kind, in the order the admin app offers them.
func Kinds() []Kind {
	return []Kind{KindDeadLetterRate, KindLag, KindAuthFailures, KindBudgetExhausted, KindFeedStopped}
}

// Label is the kind for people.
func (k Kind) Label() string {
	switch k {
	case KindDeadLetterRate:
		return "dead-letter rate"
	case KindLag:
		return "lag"
	case KindAuthFailures:
		return "authentication failures"
	case KindBudgetExhausted:
		return "CRM budget exhausted"
	case KindFeedStopped:
		return "feed stopped"
	}
	return string(k)
}

// Unit names what the threshold of the kind counts.
func (k Kind) Unit() string {
	switch k {
	case KindDeadLetterRate, KindAuthFailures:
		return "decisions in the window"
	case KindLag, KindFeedStopped:
		return "seconds"
	case KindBudgetExhausted:
		return "percent used"
	}
	return ""
}

// windowed reports whether the kind counts decisions within a window.
func (k Kind) windowed() bool { return k == KindDeadLetterRate || k == KindAuthFailures }

// Rule is one alert rule.
type Rule struct {
	// Name identifies the rule; letters, digits, '-', '_' and '.'.
	Name string `json:"name" yaml:"name"`
	// Kind is what the rule watches.
	Kind Kind `json:"kind" yaml:"kind"`
	// Threshold is the value at or above which the rule fires, in the
	// kind's unit.
	Threshold float64 `json:"threshold" yaml:"threshold"`
	// Window is how far back dead-letter and authentication rules count;
	// default 5 minutes. Other kinds ignore it.
	Window time.Duration `json:"window_ns" yaml:"window"`
	// Webhook names the configured webhook that receives the rule's
	// notices; empty means the rule is shown in the admin app only.
	Webhook string `json:"webhook,omitempty" yaml:"webhook"`
	// Disabled rules are not evaluated.
	Disabled bool `json:"disabled,omitempty" yaml:"disabled"`
	// FromConfig marks a rule from the configuration file, which the
	// admin app shows but does not change.
	FromConfig bool `json:"from_config,omitempty" yaml:"-"`
	// UpdatedBy and UpdatedAt say who last saved a rule made in the
	// admin app.
	UpdatedBy string    `json:"updated_by,omitempty" yaml:"-"`
	UpdatedAt time.Time `json:"updated_at,omitzero" yaml:"-"`
}

// DefaultWindow is a windowed rule's window when none is set.
const DefaultWindow = 5 * time.Minute

var ruleName = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$`)

// ErrInvalidRule wraps every reason a rule is refused.
var ErrInvalidRule = errors.New("invalid alert rule")

// Validate reports every problem with r at once; webhooks are the names
// of the configured webhooks.
func (r Rule) Validate(webhooks []string) error {
	var probs []string
	if !ruleName.MatchString(r.Name) {
		probs = append(probs, fmt.Sprintf("name %q must be 1 to 64 letters, digits, '-', '_' or '.'", short(r.Name)))
	}
	if !slices.Contains(Kinds(), r.Kind) {
		var ks []string
		for _, k := range Kinds() {
			ks = append(ks, string(k))
		}
		probs = append(probs, fmt.Sprintf("kind %q is not one of %s", short(string(r.Kind)), strings.Join(ks, ", ")))
	}
	if r.Threshold < 0 || r.Threshold != r.Threshold {
		probs = append(probs, "threshold must be a number, zero or more")
	}
	if r.Kind == KindBudgetExhausted && r.Threshold > 100 {
		probs = append(probs, "a budget threshold is a percentage, at most 100")
	}
	if r.Window < 0 || (r.Window > 0 && r.Window < time.Minute) || r.Window > 7*24*time.Hour {
		probs = append(probs, "window must be between 1 minute and 7 days")
	}
	if r.Webhook != "" && !slices.Contains(webhooks, r.Webhook) {
		probs = append(probs, fmt.Sprintf("webhook %q is not configured (alerts.webhooks)", short(r.Webhook)))
	}
	if len(probs) > 0 {
		return fmt.Errorf("%w: %s", ErrInvalidRule, strings.Join(probs, "; "))
	}
	return nil
}

func (r Rule) window() time.Duration {
	if r.Window <= 0 {
		return DefaultWindow
	}
	return r.Window
}

func short(s string) string {
	if len(s) > 40 {
		return s[:40] + "…"
	}
	return s
}

// Webhook is a configured receiver of alert notices.
type Webhook struct {
	// Name is what rules refer to.
	Name string `yaml:"name"`
	// URL receives a POST per notice. It is a secret (Slack and Teams
	// URLs carry their token); set it with url_file where possible.
	URL string `yaml:"url"`
	// Format is the body's shape: FormatText (default), FormatTeamsWorkflow
	// or FormatJSON.
	Format string `yaml:"format"`
}

// Webhook body formats.
const (
	// FormatText is {"text": "..."}: what a Slack incoming webhook
	// (https://api.slack.com/messaging/webhooks) and a Teams incoming
	// webhook connector (MicrosoftDocs/msteams-docs, "Create an Incoming
	// Webhook") both accept.
	FormatText = "text"
	// FormatTeamsWorkflow is a message with one Adaptive Card attachment,
	// the body a Teams "When a Teams webhook request is received"
	// workflow posts to a channel.
	FormatTeamsWorkflow = "teams-workflow"
	// FormatJSON is {"text", "rule", "kind", "state", "value",
	// "threshold", "at"} for receivers of your own.
	FormatJSON = "json"
)

// Formats lists the webhook formats.
func Formats() []string { return []string{FormatText, FormatTeamsWorkflow, FormatJSON} }
