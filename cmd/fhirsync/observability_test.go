package main

import (
	"context"
	"encoding/json"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"gopkg.in/yaml.v3"

	"github.com/fhirsync/fhirsync/sandbox/crmserver"
	"github.com/fhirsync/fhirsync/storage"
)

// The alert rules and the dashboard shipped for Prometheus and Grafana.
const (
	rulesFile     = "../../deploy/prometheus/fhirsync-rules.yaml"
	rulesTestFile = "../../deploy/prometheus/fhirsync-rules.test.yaml"
	dashboardFile = "../../deploy/grafana/fhirsync-dashboard.json"
)

// ruleFile is the Prometheus rule file format (groups of rules).
type ruleFile struct {
	Groups []struct {
		Name  string `yaml:"name"`
		Rules []struct {
			Alert       string            `yaml:"alert"`
			Record      string            `yaml:"record"`
			Expr        string            `yaml:"expr"`
			For         string            `yaml:"for"`
			Labels      map[string]string `yaml:"labels"`
			Annotations map[string]string `yaml:"annotations"`
		} `yaml:"rules"`
	} `yaml:"groups"`
}

// servedMetricNames are the metric names the serve process exposes: the
// collectors of newRegistry and everything buildServices registers (the
// agent, the CRM client, the sync log's retention, replays, feed polls),
// read from the collectors' descriptions so that vectors nobody has set yet
// count too.
func servedMetricNames(t *testing.T) map[string]bool {
	t.Helper()
	s := newDoctorSetup(t, crmserver.Options{})
	cfg := defaultConfig()
	cfg.DataDir = s.dir
	cfg.Database.URL = "sqlite:" + s.dbPath
	cfg.FHIR.BaseURL = s.fhirURL
	cfg.CRM.BaseURL = s.crmURL
	cfg.CRM.Auth = CredentialConfig{Method: "bearer", Token: s.token}
	cfg.Feeds.FHIRHistory.Types = []string{"Patient"}
	cfg.Feeds.CRMTracking.Entities = []string{"contact"}
	db, err := storage.Open(context.Background(), cfg.Database.URL, storage.Options{DataDir: cfg.DataDir})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { storage.Close(db) })
	reg := newRegistry()
	rec := &describingRegisterer{Registry: reg, names: map[string]bool{}}
	svc, err := buildServices(context.Background(), &cfg, db, rec, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	if svc.agent == nil {
		t.Fatal("buildServices built no agent: its metrics would be missing")
	}
	t.Cleanup(func() { svc.closeQueues(context.Background()) })
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		rec.names[mf.GetName()] = true
	}
	return rec.names
}

// describingRegisterer records the names of the metrics every collector
// registered through it describes.
type describingRegisterer struct {
	*prometheus.Registry
	names map[string]bool
}

var fqName = regexp.MustCompile(`fqName: "([^"]+)"`)

func (r *describingRegisterer) Register(c prometheus.Collector) error {
	ch := make(chan *prometheus.Desc, 64)
	go func() { c.Describe(ch); close(ch) }()
	for d := range ch {
		if m := fqName.FindStringSubmatch(d.String()); m != nil {
			r.names[m[1]] = true
		}
	}
	return r.Registry.Register(c)
}

func (r *describingRegisterer) MustRegister(cs ...prometheus.Collector) {
	for _, c := range cs {
		if err := r.Register(c); err != nil {
			panic(err)
		}
	}
}

// promqlMetricNames returns the metric names a PromQL expression selects:
// the identifiers left once strings, label matchers, ranges and grouping
// clauses are removed and function and aggregation calls are set aside.
func promqlMetricNames(expr string) []string {
	s := regexp.MustCompile(`"(?:[^"\\]|\\.)*"|'(?:[^'\\]|\\.)*'`).ReplaceAllString(expr, `""`)
	s = regexp.MustCompile(`\{[^}]*\}`).ReplaceAllString(s, " ")
	s = regexp.MustCompile(`\[[^\]]*\]`).ReplaceAllString(s, " ")
	s = regexp.MustCompile(`\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)`).ReplaceAllString(s, " ")
	keywords := map[string]bool{"and": true, "or": true, "unless": true, "bool": true, "offset": true, "inf": true, "nan": true,
		"by": true, "without": true, "on": true, "ignoring": true, "group_left": true, "group_right": true}
	var out []string
	for _, loc := range regexp.MustCompile(`[A-Za-z_:][A-Za-z0-9_:]*`).FindAllStringIndex(s, -1) {
		if loc[0] > 0 && (s[loc[0]-1] >= '0' && s[loc[0]-1] <= '9' || s[loc[0]-1] == '.') {
			continue // the unit of a number or duration (5m, 1e3)
		}
		id := s[loc[0]:loc[1]]
		if next := strings.TrimLeft(s[loc[1]:], " \t\n"); strings.HasPrefix(next, "(") || keywords[strings.ToLower(id)] {
			continue
		}
		if !slices.Contains(out, id) {
			out = append(out, id)
		}
	}
	return out
}

func TestPromqlMetricNames(t *testing.T) {
	t.Parallel()
	tests := []struct {
		expr string
		want []string
	}{
		{`up{job="fhirsync"} == 0`, []string{"up"}},
		{`sum by (direction) (rate(fhirsync_decisions_total{outcome=~"failed|dead_lettered"}[10m])) / sum(rate(a_total[5m])) > 0.05`, []string{"fhirsync_decisions_total", "a_total"}},
		{`time() - max by (feed) (x_seconds) > 1800`, []string{"x_seconds"}},
		{`histogram_quantile(0.95, sum by (le) (rate(h_bucket[5m]))) and on (instance) y offset 5m`, []string{"h_bucket", "y"}},
	}
	for _, tt := range tests {
		if got := promqlMetricNames(tt.expr); !slices.Equal(got, tt.want) {
			t.Errorf("promqlMetricNames(%q) = %v, want %v", tt.expr, got, tt.want)
		}
	}
}

// knownMetric reports whether name is served, counting a histogram's
// _bucket, _sum and _count series and Prometheus's own up.
func knownMetric(served map[string]bool, name string) bool {
	if served[name] || name == "up" {
		return true
	}
	for _, suf := range []string{"_bucket", "_sum", "_count"} {
		if base, ok := strings.CutSuffix(name, suf); ok && served[base] {
			return true
		}
	}
	return false
}

// TestAlertRulesAndDashboard checks the shipped rules and dashboard: the
// rule file parses, has the alerts operators need, each with a severity,
// a summary and a description saying what to do; every metric that rules
// and dashboard query is one the serve process exposes. With promtool on
// the PATH (Debian's prometheus package) the rules also pass promtool
// check rules, and their unit tests (fhirsync-rules.test.yaml, one at
// least per alert) pass promtool test rules.
func TestAlertRulesAndDashboard(t *testing.T) {
	t.Parallel()
	served := servedMetricNames(t)
	for _, want := range []string{"fhirsync_decisions_total", "fhirsync_feed_lag_seconds", "fhirsync_feed_last_poll_timestamp_seconds",
		"fhirsync_queue_depth", "fhirsync_crm_budget_requests_remaining", "fhirsync_sync_latency_seconds", "process_resident_memory_bytes"} {
		if !served[want] {
			t.Errorf("the serve process does not expose %s", want)
		}
	}

	raw, err := os.ReadFile(rulesFile)
	if err != nil {
		t.Fatal(err)
	}
	var rf ruleFile
	dec := yaml.NewDecoder(strings.NewReader(string(raw)))
	dec.KnownFields(true)
	if err := dec.Decode(&rf); err != nil {
		t.Fatalf("%s: %v", rulesFile, err)
	}
	var alerts []string
	for _, g := range rf.Groups {
		for _, r := range g.Rules {
			alerts = append(alerts, r.Alert)
			if r.Alert == "" || r.Expr == "" {
				t.Errorf("rule %+v: alert and expr are required", r)
			}
			if r.For != "" {
				if _, err := time.ParseDuration(r.For); err != nil {
					t.Errorf("alert %s: for %q: %v", r.Alert, r.For, err)
				}
			}
			if !slices.Contains([]string{"critical", "warning", "info"}, r.Labels["severity"]) {
				t.Errorf("alert %s: severity %q", r.Alert, r.Labels["severity"])
			}
			if r.Annotations["summary"] == "" || len(r.Annotations["description"]) < 60 {
				t.Errorf("alert %s: needs a summary and a description that says what to do", r.Alert)
			}
			for _, m := range promqlMetricNames(r.Expr) {
				if !knownMetric(served, m) {
					t.Errorf("alert %s queries %s, which the serve process does not expose", r.Alert, m)
				}
			}
		}
	}
	// The conditions of the in-product alerts and the operational ones.
	for _, want := range []string{"FhirsyncProcessDown", "FhirsyncFeedLagHigh", "FhirsyncFeedStopped", "FhirsyncErrorRateHigh",
		"FhirsyncDeadLettersGrowing", "FhirsyncUnauthorized", "FhirsyncDataverseBudgetLow", "FhirsyncQueueDepthHigh"} {
		if !slices.Contains(alerts, want) {
			t.Errorf("no alert %s in %s", want, rulesFile)
		}
	}

	raw, err = os.ReadFile(dashboardFile)
	if err != nil {
		t.Fatal(err)
	}
	var dash struct {
		Title  string `json:"title"`
		UID    string `json:"uid"`
		Panels []struct {
			Title   string `json:"title"`
			Targets []struct {
				Expr string `json:"expr"`
			} `json:"targets"`
		} `json:"panels"`
	}
	if err := json.Unmarshal(raw, &dash); err != nil {
		t.Fatalf("%s: %v", dashboardFile, err)
	}
	if dash.UID == "" || len(dash.Panels) < 8 {
		t.Errorf("dashboard %q: uid %q, %d panels", dash.Title, dash.UID, len(dash.Panels))
	}
	var queried []string
	for _, p := range dash.Panels {
		if len(p.Targets) == 0 {
			t.Errorf("panel %q has no query", p.Title)
		}
		for _, q := range p.Targets {
			for _, m := range promqlMetricNames(q.Expr) {
				queried = append(queried, m)
				if !knownMetric(served, m) {
					t.Errorf("panel %q queries %s, which the serve process does not expose", p.Title, m)
				}
			}
		}
	}
	sort.Strings(queried)
	t.Logf("dashboard queries %s", strings.Join(slices.Compact(queried), ", "))

	promtool, err := exec.LookPath("promtool")
	if err != nil {
		if os.Getenv("FHIRSYNC_CI") != "" {
			t.Fatal("promtool is not installed (Debian package prometheus); FHIRSYNC_CI=1 requires it")
		}
		t.Skip("promtool is not installed (Debian package prometheus): rules checked by this test only")
	}
	abs, _ := filepath.Abs(rulesFile)
	out, err := exec.Command(promtool, "check", "rules", abs).CombinedOutput()
	if err != nil {
		t.Fatalf("promtool check rules: %v\n%s", err, out)
	}
	t.Logf("promtool check rules:\n%s", out)
	// The rules' unit tests: series in, alerts (labels and annotations)
	// out, for every alert operators page on.
	cmd := exec.Command(promtool, "test", "rules", filepath.Base(rulesTestFile))
	cmd.Dir = filepath.Dir(abs)
	if out, err = cmd.CombinedOutput(); err != nil {
		t.Fatalf("promtool test rules: %v\n%s", err, out)
	}
	t.Logf("promtool test rules:\n%s", out)
	tested, err := os.ReadFile(rulesTestFile)
	if err != nil {
		t.Fatal(err)
	}
	for _, a := range alerts {
		if !strings.Contains(string(tested), "alertname: "+a+"\n") {
			t.Errorf("alert %s has no test in %s", a, rulesTestFile)
		}
	}
}
