package alerts

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"slices"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"gorm.io/gorm"
	"gorm.io/gorm/clause"

	"github.com/fhirsync/fhirsync/logs"
	"github.com/fhirsync/fhirsync/storage"
)

// Config configures the alert service.
type Config struct {
	// Rules are the rules from the configuration file.
	Rules []Rule
	// Webhooks are the receivers rules may name.
	Webhooks []Webhook
	// Every is how often rules are evaluated; default 30 seconds.
	Every time.Duration
	// Holder identifies this process in the evaluation lease.
	Holder string
	// Logger receives delivery failures (rule names and statuses only).
	Logger *slog.Logger
	// Client posts to webhooks; default a client with a 10 s timeout.
	Client *http.Client
	// Now is the clock; default time.Now.
	Now func() time.Time
}

// Deps are what the service reads.
type Deps struct {
	// DB holds the rules made in the admin app, the alert history, the
	// lease, the embedded queue and the feed checkpoints. Required.
	DB *gorm.DB
	// Logs is the sync log the windowed rules count in. Required.
	Logs *logs.Store
	// Gatherer holds the CRM budget metrics; nil means no budget readings.
	Gatherer prometheus.Gatherer
	// OnLag, when set, receives every waiting feed's lag after each
	// evaluation (the agent's fhirsync_feed_lag_seconds gauge).
	OnLag func(map[string]time.Duration)
	// EstimateLags, when set, estimates the lags of the feeds whose queue
	// is not in the embedded queue's table (Service Bus), given the
	// evaluation interval; its rows join those Lags reads. A queue it
	// could not read is reported in the error beside the rows it has.
	EstimateLags func(ctx context.Context, now time.Time, every time.Duration) ([]FeedLag, error)
}

// Service evaluates alert rules and keeps their history.
type Service struct {
	cfg  Config
	deps Deps
	log  *slog.Logger
}

// New validates cfg and returns the service.
func New(cfg Config, deps Deps) (*Service, error) {
	if deps.DB == nil || deps.Logs == nil {
		return nil, errors.New("alerts: DB and Logs are required")
	}
	var probs []string
	names := map[string]bool{}
	for i, w := range cfg.Webhooks {
		switch {
		case !ruleName.MatchString(w.Name):
			probs = append(probs, fmt.Sprintf("webhook %d: name %q must be 1 to 64 letters, digits, '-', '_' or '.'", i+1, short(w.Name)))
		case names[w.Name]:
			probs = append(probs, fmt.Sprintf("webhook %q appears twice", w.Name))
		}
		names[w.Name] = true
		if !strings.HasPrefix(w.URL, "https://") && !strings.HasPrefix(w.URL, "http://") {
			probs = append(probs, fmt.Sprintf("webhook %q: url must be an http or https URL", short(w.Name)))
		}
		if w.Format != "" && !slices.Contains(Formats(), w.Format) {
			probs = append(probs, fmt.Sprintf("webhook %q: format %q is not one of %s", short(w.Name), short(w.Format), strings.Join(Formats(), ", ")))
		}
	}
	s := &Service{cfg: cfg, deps: deps}
	seen := map[string]bool{}
	for i := range cfg.Rules {
		r := &cfg.Rules[i]
		r.FromConfig = true
		if err := r.Validate(s.WebhookNames()); err != nil {
			probs = append(probs, fmt.Sprintf("rule %d: %v", i+1, strings.TrimPrefix(err.Error(), ErrInvalidRule.Error()+": ")))
		}
		if seen[r.Name] {
			probs = append(probs, fmt.Sprintf("rule %q appears twice", r.Name))
		}
		seen[r.Name] = true
	}
	if len(probs) > 0 {
		return nil, fmt.Errorf("alerts: %s", strings.Join(probs, "; "))
	}
	if s.cfg.Every <= 0 {
		s.cfg.Every = 30 * time.Second
	}
	if s.cfg.Holder == "" {
		s.cfg.Holder = "alerts"
	}
	if s.cfg.Client == nil {
		s.cfg.Client = &http.Client{Timeout: 10 * time.Second}
	}
	if s.cfg.Now == nil {
		s.cfg.Now = time.Now
	}
	s.log = cfg.Logger
	if s.log == nil {
		s.log = slog.New(slog.DiscardHandler)
	}
	return s, nil
}

// Every is how often Run evaluates the rules.
func (s *Service) Every() time.Duration { return s.cfg.Every }

// WebhookNames lists the configured webhooks' names.
func (s *Service) WebhookNames() []string {
	out := make([]string, 0, len(s.cfg.Webhooks))
	for _, w := range s.cfg.Webhooks {
		out = append(out, w.Name)
	}
	return out
}

type ruleRow struct {
	Name          string `gorm:"primaryKey"`
	Kind          string
	Threshold     float64
	WindowSeconds int64
	Webhook       string
	Enabled       bool
	UpdatedBy     string
	UpdatedAt     time.Time
}

func (ruleRow) TableName() string { return "alert_rules" }

// Event is one change of a rule's state.
type Event struct {
	ID       int64     `json:"id"`
	RuleName string    `json:"rule"`
	Kind     Kind      `json:"kind"`
	State    string    `json:"state"` // StateFiring or StateResolved
	At       time.Time `json:"at"`
	Value    float64   `json:"value"`
	Summary  string    `json:"summary"`
	// DeliveredAt is when the webhook took the notice; nil when the rule
	// has no webhook or delivery failed (DeliveryError says why).
	DeliveredAt   *time.Time `json:"delivered_at,omitempty"`
	DeliveryError string     `json:"delivery_error,omitempty"`
}

// Event states.
const (
	StateFiring   = "firing"
	StateResolved = "resolved"
)

type eventRow struct {
	ID            int64 `gorm:"primaryKey"`
	RuleName      string
	Kind          string
	State         string
	At            time.Time
	Value         float64
	Summary       string
	DeliveredAt   *time.Time
	DeliveryError string
}

func (eventRow) TableName() string { return "alert_events" }

func (r eventRow) event() Event {
	e := Event{ID: r.ID, RuleName: r.RuleName, Kind: Kind(r.Kind), State: r.State, At: r.At.UTC(), Value: r.Value,
		Summary: r.Summary, DeliveryError: r.DeliveryError}
	if r.DeliveredAt != nil {
		t := r.DeliveredAt.UTC()
		e.DeliveredAt = &t
	}
	return e
}

// Rules lists the configured rules, then those made in the admin app, by
// name.
func (s *Service) Rules(ctx context.Context) ([]Rule, error) {
	out := slices.Clone(s.cfg.Rules)
	var rows []ruleRow
	if err := s.deps.DB.WithContext(ctx).Order("name").Find(&rows).Error; err != nil {
		return nil, fmt.Errorf("reading alert rules: %w", err)
	}
	for _, r := range rows {
		if s.configRule(r.Name) != nil {
			continue // the configuration file wins
		}
		out = append(out, Rule{Name: r.Name, Kind: Kind(r.Kind), Threshold: r.Threshold, Window: time.Duration(r.WindowSeconds) * time.Second,
			Webhook: r.Webhook, Disabled: !r.Enabled, UpdatedBy: r.UpdatedBy, UpdatedAt: r.UpdatedAt.UTC()})
	}
	return out, nil
}

func (s *Service) configRule(name string) *Rule {
	for i := range s.cfg.Rules {
		if s.cfg.Rules[i].Name == name {
			return &s.cfg.Rules[i]
		}
	}
	return nil
}

// ErrConfigRule means a rule from the configuration file cannot be changed
// in the admin app.
var ErrConfigRule = errors.New("the rule is set in the configuration file")

// SaveRule creates or replaces a rule made in the admin app.
func (s *Service) SaveRule(ctx context.Context, r Rule, actor string) error {
	if s.configRule(r.Name) != nil {
		return fmt.Errorf("saving alert rule %s: %w", r.Name, ErrConfigRule)
	}
	if err := r.Validate(s.WebhookNames()); err != nil {
		return err
	}
	row := ruleRow{Name: r.Name, Kind: string(r.Kind), Threshold: r.Threshold, WindowSeconds: int64(r.window() / time.Second),
		Webhook: r.Webhook, Enabled: !r.Disabled, UpdatedBy: actor, UpdatedAt: s.cfg.Now().UTC()}
	err := s.deps.DB.WithContext(ctx).Clauses(clause.OnConflict{
		Columns:   []clause.Column{{Name: "name"}},
		DoUpdates: clause.AssignmentColumns([]string{"kind", "threshold", "window_seconds", "webhook", "enabled", "updated_by", "updated_at"}),
	}).Create(&row).Error
	if err != nil {
		return fmt.Errorf("saving alert rule %s: %w", r.Name, err)
	}
	return nil
}

// DeleteRule removes a rule made in the admin app; its history stays.
func (s *Service) DeleteRule(ctx context.Context, name string) error {
	if s.configRule(name) != nil {
		return fmt.Errorf("deleting alert rule %s: %w", name, ErrConfigRule)
	}
	if err := s.deps.DB.WithContext(ctx).Where("name = ?", name).Delete(&ruleRow{}).Error; err != nil {
		return fmt.Errorf("deleting alert rule %s: %w", name, err)
	}
	return nil
}

// History lists the newest events, of one rule when rule is not empty.
func (s *Service) History(ctx context.Context, rule string, limit int) ([]Event, error) {
	q := s.deps.DB.WithContext(ctx).Order("id DESC").Limit(max(min(limit, 1000), 1))
	if rule != "" {
		q = q.Where("rule_name = ?", rule)
	}
	var rows []eventRow
	if err := q.Find(&rows).Error; err != nil {
		return nil, fmt.Errorf("reading alert history: %w", err)
	}
	out := make([]Event, len(rows))
	for i, r := range rows {
		out[i] = r.event()
	}
	return out, nil
}

// Firing lists, by rule name, the event that started each rule's current
// firing.
func (s *Service) Firing(ctx context.Context) (map[string]Event, error) {
	latest, err := s.latest(ctx)
	if err != nil {
		return nil, err
	}
	out := map[string]Event{}
	for name, r := range latest {
		if r.State == StateFiring {
			out[name] = r.event()
		}
	}
	return out, nil
}

// latest is each rule's newest event, by rule name.
func (s *Service) latest(ctx context.Context) (map[string]eventRow, error) {
	var rows []eventRow
	err := s.deps.DB.WithContext(ctx).Where("id IN (SELECT MAX(id) FROM alert_events GROUP BY rule_name)").Find(&rows).Error
	if err != nil {
		return nil, fmt.Errorf("reading the alert states: %w", err)
	}
	out := make(map[string]eventRow, len(rows))
	for _, r := range rows {
		out[r.RuleName] = r
	}
	return out, nil
}

// redeliverFor is how long a notice the webhook refused is offered again,
// once per evaluation, while its rule stays in the same state.
const redeliverFor = time.Hour

// Signals reads the lags, polls and budget readings, ages counted to now.
func (s *Service) Signals(ctx context.Context, now time.Time) (Signals, error) {
	sig := Signals{At: now}
	var err error
	if sig.Lags, err = Lags(ctx, s.deps.DB, now); err != nil {
		return sig, err
	}
	if s.deps.EstimateLags != nil {
		est, err := s.deps.EstimateLags(ctx, now, s.cfg.Every)
		if err != nil {
			// The other queues' estimates and the readings stand.
			s.log.Warn("estimating feed lags", "error", err)
		}
		sig.Lags = mergeLags(sig.Lags, est)
	}
	if sig.Polls, err = Polls(ctx, s.deps.DB, now); err != nil {
		return sig, err
	}
	if sig.Budget, err = Budgets(s.deps.Gatherer); err != nil {
		return sig, err
	}
	return sig, nil
}

// Run evaluates the rules every Config.Every while this process holds the
// "alerts" lease, until ctx ends. Among replicas sharing the database one
// evaluates; the others take over when its lease lapses.
func (s *Service) Run(ctx context.Context) error {
	lease := storage.NewLease(s.deps.DB, "alerts", s.cfg.Holder, 3*s.cfg.Every)
	t := time.NewTicker(s.cfg.Every)
	defer t.Stop()
	for {
		held, err := lease.Acquire(ctx)
		switch {
		case err != nil && ctx.Err() == nil:
			s.log.Warn("acquiring the alert lease", "error", err)
		case held:
			if err := s.Evaluate(ctx); err != nil && ctx.Err() == nil {
				s.log.Warn("evaluating alert rules", "error", err)
			}
		}
		select {
		case <-ctx.Done():
			_ = lease.Release(context.WithoutCancel(ctx))
			return nil
		case <-t.C:
		}
	}
}

// measure is one rule's value now and a sentence about it.
func (s *Service) measure(ctx context.Context, r Rule, sig Signals) (float64, string, error) {
	switch r.Kind {
	case KindDeadLetterRate, KindAuthFailures:
		f := logs.Filter{From: sig.At.Add(-r.window())}
		what := "decisions dead-lettered"
		if r.Kind == KindDeadLetterRate {
			f.Outcome = logs.OutcomeDeadLettered
		} else {
			f.Reason = "unauthorized"
			what = "decisions refused as unauthorized (401/403)"
		}
		c, err := s.deps.Logs.Counts(ctx, f, 0)
		if err != nil {
			return 0, "", err
		}
		return float64(c.Total), fmt.Sprintf("%d %s in the last %s", c.Total, what, r.window()), nil
	case KindLag:
		var worst FeedLag
		for _, l := range sig.Lags {
			if l.AgeSeconds >= worst.AgeSeconds {
				worst = l
			}
		}
		if worst.Feed == "" {
			return 0, "no change is waiting", nil
		}
		return float64(worst.AgeSeconds), fmt.Sprintf("the oldest unprocessed change of feed %s is %s old (%d waiting in %s)",
			worst.Feed, time.Duration(worst.AgeSeconds)*time.Second, worst.Pending, worst.Queue), nil
	case KindFeedStopped:
		var worst FeedPoll
		for _, p := range sig.Polls {
			if p.AgeSeconds >= worst.AgeSeconds {
				worst = p
			}
		}
		if worst.Feed == "" {
			return 0, "no feed has polled yet", nil
		}
		return float64(worst.AgeSeconds), fmt.Sprintf("feed %s last polled %s ago", worst.Feed, time.Duration(worst.AgeSeconds)*time.Second), nil
	case KindBudgetExhausted:
		var worst Budget
		for _, b := range sig.Budget {
			if b.UsedPercent >= worst.UsedPercent {
				worst = b
			}
		}
		if worst.User == "" {
			return 0, "no CRM budget reading yet", nil
		}
		return worst.UsedPercent, fmt.Sprintf("CRM user %s has used %.0f%% of its service-protection budget", worst.User, worst.UsedPercent), nil
	}
	return 0, "", fmt.Errorf("unknown rule kind %q", r.Kind)
}

// Evaluate measures every enabled rule once; a rule whose value reached
// its threshold and was not firing fires, one firing whose value fell
// below resolves. Each change is recorded and sent to the rule's webhook.
func (s *Service) Evaluate(ctx context.Context) error {
	now := s.cfg.Now().UTC()
	sig, err := s.Signals(ctx, now)
	if err != nil {
		return err
	}
	if s.deps.OnLag != nil {
		lags := map[string]time.Duration{}
		for _, l := range sig.Lags {
			lags[l.Feed] = max(lags[l.Feed], time.Duration(l.AgeSeconds)*time.Second)
		}
		s.deps.OnLag(lags)
	}
	rules, err := s.Rules(ctx)
	if err != nil {
		return err
	}
	latest, err := s.latest(ctx)
	if err != nil {
		return err
	}
	var errs []error
	for _, r := range rules {
		last, seen := latest[r.Name]
		was := seen && last.State == StateFiring
		if r.Disabled && !was {
			continue
		}
		value, text, err := s.measure(ctx, r, sig)
		if err != nil {
			errs = append(errs, fmt.Errorf("rule %s: %w", r.Name, err))
			continue
		}
		fire := !r.Disabled && value >= r.Threshold
		if fire == was {
			// The same notice again, not a new one, when the webhook
			// refused it.
			if seen && r.Webhook != "" && last.DeliveredAt == nil && last.DeliveryError != "" && now.Sub(last.At) < redeliverFor {
				if err := s.deliverAndRecord(ctx, r, last); err != nil {
					errs = append(errs, err)
				}
			}
			continue
		}
		state := StateFiring
		if !fire {
			state = StateResolved
			if r.Disabled {
				text = "rule disabled; " + text
			}
		}
		ev := eventRow{RuleName: r.Name, Kind: string(r.Kind), State: state, At: now, Value: value,
			Summary: fmt.Sprintf("%s: %s (threshold %g %s).", r.Kind.Label(), text, r.Threshold, r.Kind.Unit())}
		if err := s.deps.DB.WithContext(ctx).Create(&ev).Error; err != nil {
			errs = append(errs, fmt.Errorf("recording alert %s: %w", r.Name, err))
			continue
		}
		if r.Webhook == "" {
			continue
		}
		if err := s.deliverAndRecord(ctx, r, ev); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// deliverAndRecord posts ev to r's webhook and records whether it took it.
func (s *Service) deliverAndRecord(ctx context.Context, r Rule, ev eventRow) error {
	upd := map[string]any{}
	if err := s.deliver(ctx, r, ev); err != nil {
		s.log.Warn("delivering an alert", "rule", r.Name, "webhook", r.Webhook, "error", err)
		upd["delivery_error"] = err.Error()
	} else {
		upd["delivered_at"] = s.cfg.Now().UTC()
		upd["delivery_error"] = ""
	}
	if err := s.deps.DB.WithContext(ctx).Model(&eventRow{}).Where("id = ?", ev.ID).Updates(upd).Error; err != nil {
		return fmt.Errorf("recording delivery of alert %s: %w", r.Name, err)
	}
	return nil
}

// Body is the notice a webhook receives, in the webhook's format.
func Body(format string, r Rule, e Event) ([]byte, error) {
	mark := "FIRING"
	if e.State == StateResolved {
		mark = "RESOLVED"
	}
	text := fmt.Sprintf("[%s] fhirsync alert %s — %s", mark, r.Name, e.Summary)
	switch format {
	case "", FormatText:
		return json.Marshal(map[string]string{"text": text})
	case FormatTeamsWorkflow:
		card := map[string]any{
			"$schema": "http://adaptivecards.io/schemas/adaptive-card.json", "type": "AdaptiveCard", "version": "1.4",
			"body": []map[string]any{{"type": "TextBlock", "text": text, "wrap": true}},
		}
		return json.Marshal(map[string]any{"type": "message", "attachments": []map[string]any{
			{"contentType": "application/vnd.microsoft.card.adaptive", "contentUrl": nil, "content": card}}})
	case FormatJSON:
		return json.Marshal(map[string]any{"text": text, "rule": r.Name, "kind": r.Kind, "state": e.State,
			"value": e.Value, "threshold": r.Threshold, "at": e.At.UTC().Format(time.RFC3339)})
	}
	return nil, fmt.Errorf("unknown webhook format %q", format)
}

func (s *Service) deliver(ctx context.Context, r Rule, ev eventRow) error {
	var wh *Webhook
	for i := range s.cfg.Webhooks {
		if s.cfg.Webhooks[i].Name == r.Webhook {
			wh = &s.cfg.Webhooks[i]
		}
	}
	if wh == nil {
		return fmt.Errorf("webhook %q is not configured", r.Webhook)
	}
	body, err := Body(wh.Format, r, ev.event())
	if err != nil {
		return err
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, wh.URL, bytes.NewReader(body))
	if err != nil {
		return fmt.Errorf("building the request to webhook %s", wh.Name) // the URL is a secret
	}
	req.Header.Set("Content-Type", "application/json")
	resp, err := s.cfg.Client.Do(req)
	if err != nil {
		return fmt.Errorf("posting to webhook %s: the request failed", wh.Name)
	}
	defer resp.Body.Close()
	_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, 64<<10))
	if resp.StatusCode/100 != 2 {
		return fmt.Errorf("posting to webhook %s: HTTP %d", wh.Name, resp.StatusCode)
	}
	return nil
}
