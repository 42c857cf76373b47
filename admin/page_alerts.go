package admin

import (
	"errors"
	"fmt"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/fhirsync/fhirsync/agent/alerts"
)

// alertsData is the Alerts page: every rule with its state, a form for
// admins, and the firing/resolved history.
type alertsData struct {
	Rules    []alertRuleView
	History  []alerts.Event
	Webhooks []string
	Kinds    []alerts.Kind
	Windows  []windowOption
	CanEdit  bool
	Every    string
	Form     alertForm
	Problem  string
	Done     string
}

type alertRuleView struct {
	alerts.Rule
	Firing      bool
	FiringSince time.Time
}

// alertForm is the rule form as typed, kept on a refused save.
type alertForm struct {
	Name, Kind, Threshold, Window, Webhook string
	Disabled                               bool
}

type windowOption struct{ Value, Label string }

var alertWindows = []windowOption{{"5m", "5 minutes"}, {"15m", "15 minutes"}, {"1h", "1 hour"}, {"24h", "24 hours"}}

// WindowLabel renders a rule's window; kinds without one show a dash.
func (v alertRuleView) WindowLabel() string {
	if v.Kind != alerts.KindDeadLetterRate && v.Kind != alerts.KindAuthFailures {
		return "—"
	}
	w := v.Window
	if w <= 0 {
		w = alerts.DefaultWindow
	}
	return humanDuration(w)
}

func (a *app) alertsPage(w http.ResponseWriter, r *http.Request) {
	done := map[string]string{"saved": "Alert rule saved.", "deleted": "Alert rule deleted."}[r.URL.Query().Get("done")]
	a.renderAlerts(w, r, http.StatusOK, alertForm{Kind: string(alerts.KindDeadLetterRate), Threshold: "1", Window: "5m"}, "", done)
}

func (a *app) renderAlerts(w http.ResponseWriter, r *http.Request, status int, form alertForm, problem, done string) {
	rules, firing, hist, ok := a.readAlerts(w, r, "")
	if !ok {
		return
	}
	u, _ := currentUser(r)
	d := alertsData{History: hist, Webhooks: a.data.alerts.WebhookNames(), Kinds: alerts.Kinds(), Windows: alertWindows,
		CanEdit: u.can(permAlerts), Every: humanDuration(a.data.alerts.Every()), Form: form, Problem: problem, Done: done}
	for _, rule := range rules {
		v := alertRuleView{Rule: rule}
		if e, ok := firing[rule.Name]; ok {
			v.Firing, v.FiringSince = true, e.At
		}
		d.Rules = append(d.Rules, v)
	}
	a.render(w, r, status, "alerts", "Alerts", d)
}

// saveAlertRule is POST /alerts/rules: create or replace a rule made in
// the app. Recorded in the audit trail.
func (a *app) saveAlertRule(w http.ResponseWriter, r *http.Request) {
	f := alertForm{Name: strings.TrimSpace(r.PostFormValue("name")), Kind: r.PostFormValue("kind"),
		Threshold: strings.TrimSpace(r.PostFormValue("threshold")), Window: r.PostFormValue("window"),
		Webhook: r.PostFormValue("webhook"), Disabled: r.PostFormValue("disabled") == "on"}
	rule, err := f.rule()
	if err == nil {
		err = a.data.alerts.SaveRule(r.Context(), rule, actor(r))
	}
	if err != nil {
		if errors.Is(err, alerts.ErrInvalidRule) || errors.Is(err, alerts.ErrConfigRule) || errors.Is(err, errAlertForm) {
			a.renderAlerts(w, r, http.StatusBadRequest, f, strings.TrimPrefix(err.Error(), alerts.ErrInvalidRule.Error()+": "), "")
			return
		}
		a.serverError(w, r, "saving an alert rule", err)
		return
	}
	a.record(r, "alert_rule.save", "alert_rule", rule.Name, "", ruleSummary(rule))
	http.Redirect(w, r, "/alerts?done=saved", http.StatusSeeOther)
}

// deleteAlertRule is POST /alerts/rules/{name}/delete.
func (a *app) deleteAlertRule(w http.ResponseWriter, r *http.Request) {
	name := r.PathValue("name")
	if err := a.data.alerts.DeleteRule(r.Context(), name); err != nil {
		if errors.Is(err, alerts.ErrConfigRule) {
			a.renderAlerts(w, r, http.StatusBadRequest, alertForm{}, err.Error(), "")
			return
		}
		a.serverError(w, r, "deleting an alert rule", err)
		return
	}
	a.record(r, "alert_rule.delete", "alert_rule", name, "", "")
	http.Redirect(w, r, "/alerts?done=deleted", http.StatusSeeOther)
}

var errAlertForm = errors.New("invalid alert form")

// rule reads the form; Validate checks the rest.
func (f alertForm) rule() (alerts.Rule, error) {
	r := alerts.Rule{Name: f.Name, Kind: alerts.Kind(f.Kind), Webhook: f.Webhook, Disabled: f.Disabled}
	var probs []string
	th, err := strconv.ParseFloat(f.Threshold, 64)
	if err != nil {
		probs = append(probs, fmt.Sprintf("threshold %q is not a number", trimTo(f.Threshold, 20)))
	}
	r.Threshold = th
	if f.Window != "" {
		if r.Window, err = time.ParseDuration(f.Window); err != nil {
			probs = append(probs, fmt.Sprintf("window %q is not a duration such as 5m", trimTo(f.Window, 20)))
		}
	}
	if len(probs) > 0 {
		return r, fmt.Errorf("%w: %s", errAlertForm, strings.Join(probs, "; "))
	}
	return r, nil
}

// ruleSummary describes a rule for the audit trail.
func ruleSummary(r alerts.Rule) string {
	s := fmt.Sprintf("kind=%s threshold=%g window=%s webhook=%s", r.Kind, r.Threshold, r.Window, r.Webhook)
	if r.Disabled {
		s += " disabled"
	}
	return s
}

// apiAlerts is GET /api/v1/alerts: the rules, which fire now, and the
// newest events.
func (a *app) apiAlerts(w http.ResponseWriter, r *http.Request) {
	rules, firing, hist, ok := a.readAlerts(w, r, r.URL.Query().Get("rule"))
	if !ok {
		return
	}
	writeJSON(w, http.StatusOK, map[string]any{"rules": rules, "firing": firing, "history": hist})
}

// readAlerts reads the rules, the alerts firing now and the newest 100
// events (of rule, or of every rule when rule is empty). On an error it
// has written the server error and ok is false.
func (a *app) readAlerts(w http.ResponseWriter, r *http.Request, rule string) (rules []alerts.Rule, firing map[string]alerts.Event, hist []alerts.Event, ok bool) {
	ctx := r.Context()
	rules, err := a.data.alerts.Rules(ctx)
	if err != nil {
		a.serverError(w, r, "reading alert rules", err)
		return nil, nil, nil, false
	}
	firing, err = a.data.alerts.Firing(ctx)
	if err != nil {
		a.serverError(w, r, "reading firing alerts", err)
		return nil, nil, nil, false
	}
	hist, err = a.data.alerts.History(ctx, rule, 100)
	if err != nil {
		a.serverError(w, r, "reading alert history", err)
		return nil, nil, nil, false
	}
	return rules, firing, hist, true
}
