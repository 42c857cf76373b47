package deploy

import (
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"helm.sh/helm/v4/pkg/action"
	"helm.sh/helm/v4/pkg/chart/common"
	chart "helm.sh/helm/v4/pkg/chart/v2"
	"helm.sh/helm/v4/pkg/chart/v2/loader"
	release "helm.sh/helm/v4/pkg/release/v1"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	"sigs.k8s.io/yaml"

	monitoringv1 "github.com/prometheus-operator/prometheus-operator/pkg/apis/monitoring/v1"
)

// chartDir is the chart under test, relative to this package.
const chartDir = "helm/fhirsync"

// kubeVersion is the cluster version lint and template assume (helm's
// offline default is far older than the chart's kubeVersion).
var kubeVersion = func() *common.KubeVersion {
	v, err := common.ParseKubeVersion("v1.33.0")
	if err != nil {
		panic(err)
	}
	return v
}()

// valueSets are the values CI renders the chart with: each must lint
// cleanly (helm lint --strict) and render only manifests that pass
// validateManifest. They are YAML, as an operator's values file is.
var valueSets = []struct {
	name   string
	values string
}{
	{name: "production example", values: mustRead("helm/values-production.example.yaml")},
	{name: "defaults", values: ``},
	{name: "workload identity", values: `
azureWorkloadIdentity:
  enabled: true
  clientId: 0f3c1a52-5a1e-4f51-9a7e-2d1c6b1f0a11
  tenantId: 72f988bf-86f1-41af-91ab-2d7cd011db47
config:
  queue:
    service_bus:
      namespace: contoso-fhirsync.servicebus.windows.net
  fhir:
    base_url: https://contoso-fhir.fhir.azurehealthcareapis.com
  crm:
    base_url: https://contoso.crm.dynamics.com
  agent:
    fhir_account: contoso-fhir
secret:
  name: fhirsync-db
  env:
    FHIRSYNC_DATABASE_URL: database-url
`},
	{name: "servicemonitor and ingress", values: `
serviceMonitor:
  enabled: true
  labels:
    release: kube-prometheus-stack
ingress:
  enabled: true
  className: nginx
  host: fhirsync.contoso.example
  tlsSecretName: fhirsync-tls
networkPolicy:
  ingressFrom:
    - namespaceSelector:
        matchLabels:
          kubernetes.io/metadata.name: ingress-nginx
image:
  digest: sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef
`},
	{name: "single replica with a created secret", values: `
replicaCount: 1
podDisruptionBudget:
  enabled: false
networkPolicy:
  enabled: false
doctorTest:
  enabled: false
secret:
  name: ""
  create: true
  data:
    crm-client-secret: not-a-real-secret
  env:
    FHIRSYNC_DATABASE_URL: null
    FHIRSYNC_CRM_AUTH_CLIENT_SECRET: crm-client-secret
config:
  queue:
    kind: embedded
  crm:
    auth:
      method: client_secret
      tenant_id: 72f988bf-86f1-41af-91ab-2d7cd011db47
      client_id: 0f3c1a52-5a1e-4f51-9a7e-2d1c6b1f0a11
`},
}

// mustRead reads a values file of the repository.
func mustRead(path string) string {
	b, err := os.ReadFile(path)
	if err != nil {
		panic(err)
	}
	return string(b)
}

func loadChart(t *testing.T) *chart.Chart {
	t.Helper()
	ch, err := loader.Load(chartDir)
	if err != nil {
		t.Fatalf("loading the chart: %v", err)
	}
	return ch
}

func parseValues(t *testing.T, s string) map[string]any {
	t.Helper()
	vals := map[string]any{}
	if err := yaml.Unmarshal([]byte(s), &vals); err != nil {
		t.Fatalf("values: %v", err)
	}
	return vals
}

// lint runs helm lint --strict on the chart with vals.
func lint(vals map[string]any) error {
	l := action.NewLint()
	l.Strict = true
	l.Namespace = "fhirsync"
	l.KubeVersion = kubeVersion
	res := l.Run([]string{chartDir}, vals)
	if len(res.Errors) == 0 {
		return nil
	}
	var msgs []string
	for _, err := range res.Errors {
		msgs = append(msgs, err.Error())
	}
	return fmt.Errorf("helm lint: %s", strings.Join(msgs, "; "))
}

// render is helm template: a client-side dry-run install of the chart,
// returning every manifest (hooks too) as one YAML document each.
func render(ch *chart.Chart, vals map[string]any) ([]string, error) {
	inst := action.NewInstall(action.NewConfiguration())
	inst.DryRunStrategy = action.DryRunClient
	inst.ReleaseName = "sync"
	inst.Namespace = "fhirsync"
	inst.Replace = true
	inst.KubeVersion = kubeVersion
	r, err := inst.Run(ch, vals)
	if err != nil {
		return nil, err
	}
	rel, ok := r.(*release.Release)
	if !ok {
		return nil, fmt.Errorf("helm answered a %T, not a *release.Release", r)
	}
	all := rel.Manifest
	for _, h := range rel.Hooks {
		all += "\n---\n" + h.Manifest
	}
	var docs []string
	for _, d := range strings.Split(all, "\n---") {
		if strings.TrimSpace(stripComments(d)) != "" {
			docs = append(docs, d)
		}
	}
	return docs, nil
}

func stripComments(doc string) string {
	var b strings.Builder
	for _, line := range strings.Split(doc, "\n") {
		if !strings.HasPrefix(strings.TrimSpace(line), "#") {
			b.WriteString(line + "\n")
		}
	}
	return b.String()
}

// rendered is one value set's manifests, decoded.
type rendered struct {
	objs map[string][]any // by kind
}

func (r rendered) one(t *testing.T, kind string) any {
	t.Helper()
	if n := len(r.objs[kind]); n != 1 {
		t.Fatalf("%d %s manifests rendered, want 1", n, kind)
	}
	return r.objs[kind][0]
}

// renderValid lints and renders the chart with values and validates every
// manifest.
func renderValid(t *testing.T, ch *chart.Chart, values string) rendered {
	t.Helper()
	if err := lint(parseValues(t, values)); err != nil {
		t.Fatal(err)
	}
	docs, err := render(ch, parseValues(t, values))
	if err != nil {
		t.Fatalf("helm template: %v", err)
	}
	r := rendered{objs: map[string][]any{}}
	for _, d := range docs {
		obj, err := validateManifest([]byte(d))
		if err != nil {
			t.Fatalf("%v\nin the manifest:\n%s", err, d)
		}
		kind := kindOf(obj)
		r.objs[kind] = append(r.objs[kind], obj)
	}
	if err := crossCheck(r.objs); err != nil {
		t.Fatal(err)
	}
	return r
}

func TestHelmChartRendersValidManifests(t *testing.T) {
	ch := loadChart(t)
	for _, vs := range valueSets {
		t.Run(vs.name, func(t *testing.T) {
			r := renderValid(t, ch, vs.values)
			for _, kind := range []string{"Deployment", "ConfigMap", "Service", "ServiceAccount"} {
				r.one(t, kind)
			}
		})
	}
}

// TestHelmChartDefaults checks what the issue asks of the chart on its
// default values: several replicas, probes on the real endpoints, a
// locked-down security context, a disruption budget and a network policy.
func TestHelmChartDefaults(t *testing.T) {
	r := renderValid(t, loadChart(t), "")
	dep := r.one(t, "Deployment").(*appsv1.Deployment)
	if dep.Spec.Replicas == nil || *dep.Spec.Replicas < 2 {
		t.Errorf("replicas = %v, want several", dep.Spec.Replicas)
	}
	pod := dep.Spec.Template.Spec
	c := pod.Containers[0]
	probes := map[string]*corev1.Probe{"startup": c.StartupProbe, "liveness": c.LivenessProbe, "readiness": c.ReadinessProbe}
	wantPath := map[string]string{"startup": "/healthz", "liveness": "/healthz", "readiness": "/readyz"}
	for name, p := range probes {
		if p == nil || p.HTTPGet == nil || p.HTTPGet.Path != wantPath[name] || p.HTTPGet.Port.String() != "http" {
			t.Errorf("%s probe = %+v, want GET %s on port http", name, p, wantPath[name])
		}
	}
	sc := c.SecurityContext
	if sc == nil || sc.RunAsNonRoot == nil || !*sc.RunAsNonRoot || sc.RunAsUser == nil || *sc.RunAsUser != 65532 ||
		sc.ReadOnlyRootFilesystem == nil || !*sc.ReadOnlyRootFilesystem ||
		sc.AllowPrivilegeEscalation == nil || *sc.AllowPrivilegeEscalation ||
		sc.Capabilities == nil || !slices.Equal(sc.Capabilities.Drop, []corev1.Capability{"ALL"}) ||
		sc.SeccompProfile == nil || sc.SeccompProfile.Type != corev1.SeccompProfileTypeRuntimeDefault {
		t.Errorf("container security context = %+v, want non-root 65532, read-only root, no escalation, ALL dropped, RuntimeDefault seccomp", sc)
	}
	if c.Resources.Requests.Cpu().IsZero() || c.Resources.Limits.Memory().IsZero() {
		t.Errorf("resources = %+v, want CPU requests and a memory limit", c.Resources)
	}
	env := map[string]string{}
	for _, e := range c.Env {
		env[e.Name] = e.Value
	}
	wantEnv := map[string]string{
		"FHIRSYNC_CONFIG":            "/etc/fhirsync/config.yaml",
		"FHIRSYNC_DATABASE_URL_FILE": "/var/run/secrets/fhirsync/database-url",
		"FHIRSYNC_LISTEN":            "0.0.0.0:8080",
		"FHIRSYNC_METRICS_LISTEN":    "0.0.0.0:9090",
		"FHIRSYNC_DATA_DIR":          "/var/lib/fhirsync",
		"FHIRSYNC_LOG_FORMAT":        "json",
	}
	for k, v := range wantEnv {
		if env[k] != v {
			t.Errorf("env %s = %q, want %q", k, env[k], v)
		}
	}
	if _, ok := dep.Spec.Template.Annotations["checksum/config"]; !ok {
		t.Error("the pod template has no checksum/config annotation: a configuration change would not roll the pods")
	}
	mounts := map[string]corev1.VolumeMount{}
	for _, m := range c.VolumeMounts {
		mounts[m.MountPath] = m
	}
	if m, ok := mounts["/etc/fhirsync"]; !ok || !m.ReadOnly {
		t.Errorf("config mount = %+v, want /etc/fhirsync read-only", m)
	}
	for _, dir := range []string{"/var/lib/fhirsync", "/tmp"} {
		if m, ok := mounts[dir]; !ok || m.ReadOnly {
			t.Errorf("mount of %s = %+v, want a writable volume under the read-only root", dir, m)
		}
	}
	if !strings.Contains(r.one(t, "ConfigMap").(*corev1.ConfigMap).Data["config.yaml"], "kind: servicebus") {
		t.Error("config.yaml does not set the Service Bus queues")
	}
	r.one(t, "PodDisruptionBudget")
	np := r.one(t, "NetworkPolicy").(*networkingv1.NetworkPolicy)
	if !slices.Contains(np.Spec.PolicyTypes, networkingv1.PolicyTypeEgress) {
		t.Errorf("network policy types = %v, want Egress restricted too", np.Spec.PolicyTypes)
	}
	if n := len(r.objs["ServiceMonitor"]); n != 0 {
		t.Errorf("%d ServiceMonitors rendered by default, want none (it needs the Prometheus Operator)", n)
	}
	doctor := r.one(t, "Pod").(*corev1.Pod)
	if doctor.Annotations["helm.sh/hook"] != "test" || !slices.Equal(doctor.Spec.Containers[0].Args, []string{"doctor"}) {
		t.Errorf("test pod = %v %v, want a helm test hook running doctor", doctor.Annotations, doctor.Spec.Containers[0].Args)
	}
}

func TestHelmChartWorkloadIdentity(t *testing.T) {
	r := renderValid(t, loadChart(t), valueSets[2].values)
	dep := r.one(t, "Deployment").(*appsv1.Deployment)
	if got := dep.Spec.Template.Labels["azure.workload.identity/use"]; got != "true" {
		t.Errorf("pod label azure.workload.identity/use = %q, want true", got)
	}
	sa := r.one(t, "ServiceAccount").(*corev1.ServiceAccount)
	if got := sa.Annotations["azure.workload.identity/client-id"]; got != "0f3c1a52-5a1e-4f51-9a7e-2d1c6b1f0a11" {
		t.Errorf("service account client-id annotation = %q", got)
	}
	if dep.Spec.Template.Spec.ServiceAccountName != sa.Name {
		t.Errorf("pods run as %q, want the annotated service account %q", dep.Spec.Template.Spec.ServiceAccountName, sa.Name)
	}
}

func TestHelmChartServiceMonitor(t *testing.T) {
	r := renderValid(t, loadChart(t), valueSets[3].values)
	sm := r.one(t, "ServiceMonitor").(*monitoringv1.ServiceMonitor)
	if len(sm.Spec.Endpoints) != 1 || sm.Spec.Endpoints[0].Port != "metrics" || sm.Spec.Endpoints[0].Path != "/metrics" {
		t.Errorf("ServiceMonitor endpoints = %+v, want /metrics on port metrics", sm.Spec.Endpoints)
	}
	if sm.Labels["release"] != "kube-prometheus-stack" {
		t.Errorf("ServiceMonitor labels = %v, want serviceMonitor.labels added", sm.Labels)
	}
	dep := r.one(t, "Deployment").(*appsv1.Deployment)
	if img := dep.Spec.Template.Spec.Containers[0].Image; !strings.HasSuffix(img, "@sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef") {
		t.Errorf("image = %q, want pinned by digest", img)
	}
}

// TestHelmChartRefusesBadValues: values that would deploy something broken
// are refused by values.schema.json (helm lint and helm template) or by the
// chart's own checks (helm template and install; helm lint only logs a
// template's fail).
func TestHelmChartRefusesBadValues(t *testing.T) {
	ch := loadChart(t)
	tests := []struct {
		name, values, wantErr string
		schema                bool // refused by values.schema.json, so by helm lint too
	}{
		{name: "several replicas on SQLite", values: "secret: {name: ''}\n", wantErr: "replicaCount > 1 needs PostgreSQL"},
		{name: "workload identity without a client id", values: "azureWorkloadIdentity: {enabled: true}\n", wantErr: "needs azureWorkloadIdentity.clientId"},
		{name: "created secret without a key it mounts", values: "replicaCount: 1\nsecret: {create: true, data: {other: x}}\n", wantErr: "secret.env.FHIRSYNC_DATABASE_URL names key database-url, which secret.data does not hold"},
		{name: "no replica", values: "replicaCount: 0\n", wantErr: "replicaCount", schema: true},
		{name: "writable root file system", values: "securityContext: {readOnlyRootFilesystem: false, allowPrivilegeEscalation: false}\n", wantErr: "readOnlyRootFilesystem", schema: true},
		{name: "misspelt key", values: "replicas: 2\n", wantErr: "replicas", schema: true},
		{name: "a chart-owned config key", values: "config: {listen: '0.0.0.0:1'}\n", wantErr: "config", schema: true},
		{name: "secret variable with _FILE", values: "secret: {env: {FHIRSYNC_DATABASE_URL_FILE: database-url}}\n", wantErr: "FHIRSYNC_DATABASE_URL_FILE", schema: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := lint(parseValues(t, tt.values))
			if tt.schema && (err == nil || !strings.Contains(err.Error(), tt.wantErr)) {
				t.Errorf("helm lint: %v, want an error naming %q", err, tt.wantErr)
			}
			if _, err := render(ch, parseValues(t, tt.values)); err == nil || !strings.Contains(err.Error(), tt.wantErr) {
				t.Errorf("helm template: %v, want an error naming %q", err, tt.wantErr)
			}
		})
	}
}

// TestHelmChartRenderedConfig writes each value set's fhirsync container
// environment and configuration file to testdata, where cmd/fhirsync's
// TestHelmChartConfigsLoad loads them with the real configuration loader
// (strict keys, Validate). Run with -update after changing what the chart
// hands the process.
func TestHelmChartRenderedConfig(t *testing.T) {
	ch := loadChart(t)
	for _, vs := range valueSets {
		docs, err := render(ch, parseValues(t, vs.values))
		if err != nil {
			t.Fatal(err)
		}
		var cm *corev1.ConfigMap
		var dep *appsv1.Deployment
		for _, d := range docs {
			obj, err := validateManifest([]byte(d))
			if err != nil {
				t.Fatal(err)
			}
			switch o := obj.(type) {
			case *corev1.ConfigMap:
				cm = o
			case *appsv1.Deployment:
				dep = o
			}
		}
		if cm == nil || dep == nil {
			t.Fatalf("%s: no ConfigMap or Deployment rendered", vs.name)
		}
		env := map[string]string{}
		for _, e := range dep.Spec.Template.Spec.Containers[0].Env {
			env[e.Name] = e.Value
		}
		out, err := yaml.Marshal(map[string]any{"env": env, "config.yaml": cm.Data["config.yaml"]})
		if err != nil {
			t.Fatal(err)
		}
		golden := filepath.Join("testdata", "helm-config-"+strings.ReplaceAll(vs.name, " ", "-")+".yaml")
		got := "# " + vs.name + ": the container's environment and config.yaml (written by TestHelmChartRenderedConfig -update)\n" + string(out)
		if *update {
			if err := os.MkdirAll("testdata", 0o755); err != nil {
				t.Fatal(err)
			}
			if err := os.WriteFile(golden, []byte(got), 0o644); err != nil {
				t.Fatal(err)
			}
			continue
		}
		want, err := os.ReadFile(golden)
		if err != nil {
			t.Fatalf("%v (run go test ./deploy/ -run TestHelmChartRenderedConfig -update)", err)
		}
		if string(want) != got {
			t.Errorf("%s renders other than %s; run with -update and check cmd/fhirsync's TestHelmChartConfigsLoad:\n%s", vs.name, golden, got)
		}
	}
}
