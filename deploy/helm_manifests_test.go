package deploy

import (
	"errors"
	"flag"
	"fmt"
	"net/netip"
	"strings"
	"testing"

	monitoringv1 "github.com/prometheus-operator/prometheus-operator/pkg/apis/monitoring/v1"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	policyv1 "k8s.io/api/policy/v1"
	apivalidation "k8s.io/apimachinery/pkg/api/validation"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	metavalidation "k8s.io/apimachinery/pkg/apis/meta/v1/validation"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/serializer"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/apimachinery/pkg/util/validation"
	"k8s.io/apimachinery/pkg/util/validation/field"
	"k8s.io/client-go/applyconfigurations"
	clientgoscheme "k8s.io/client-go/kubernetes/scheme"
	"sigs.k8s.io/yaml"
)

var update = flag.Bool("update", false, "rewrite the golden files under testdata")

// scheme knows the built-in Kubernetes types and the Prometheus Operator's
// ServiceMonitor.
var scheme = func() *runtime.Scheme {
	s := runtime.NewScheme()
	if err := errors.Join(clientgoscheme.AddToScheme(s), monitoringv1.AddToScheme(s)); err != nil {
		panic(err)
	}
	return s
}()

// strictCodecs refuse unknown and duplicated fields.
var strictCodecs = serializer.NewCodecFactory(scheme, serializer.EnableStrict)

// builtinSchema is the Kubernetes API's structural schema (from its OpenAPI
// document) that client-go ships for server-side apply; it covers the
// built-in kinds, not the ServiceMonitor.
var builtinSchema = applyconfigurations.NewTypeConverter(clientgoscheme.Scheme)

// validateManifest checks one rendered manifest offline, as the API server
// would before admission as far as a client can: it must be a kind the
// scheme knows, decode strictly into its typed object (no unknown or
// duplicated field, every value of its field's type), conform to the
// Kubernetes structural schema, and pass the object checks of objectProblems
// (names, labels, selectors, references inside the object).
func validateManifest(doc []byte) (runtime.Object, error) {
	js, err := yaml.YAMLToJSONStrict(doc)
	if err != nil {
		return nil, fmt.Errorf("not YAML: %w", err)
	}
	obj, gvk, err := strictCodecs.UniversalDeserializer().Decode(js, nil, nil)
	if err != nil {
		return nil, fmt.Errorf("decoding: %w", err)
	}
	if gvk.Group != monitoringv1.SchemeGroupVersion.Group {
		u := &unstructured.Unstructured{}
		if err := u.UnmarshalJSON(js); err != nil {
			return nil, fmt.Errorf("%s: %w", gvk.Kind, err)
		}
		if _, err := builtinSchema.ObjectToTyped(u); err != nil {
			return nil, fmt.Errorf("%s does not match the Kubernetes schema: %w", gvk.Kind, err)
		}
	}
	if errs := objectProblems(obj); len(errs) > 0 {
		return nil, fmt.Errorf("%s: %w", gvk.Kind, errs.ToAggregate())
	}
	return obj, nil
}

// objectProblems are the API server's validation rules a rendered chart
// most easily breaks.
func objectProblems(obj runtime.Object) field.ErrorList {
	meta := field.NewPath("metadata")
	var errs field.ErrorList
	objMeta := func(m metav1.ObjectMeta, nameFn apivalidation.ValidateNameFunc) {
		errs = append(errs, apivalidation.ValidateObjectMeta(&m, false, nameFn, meta)...)
	}
	switch o := obj.(type) {
	case *appsv1.Deployment:
		objMeta(o.ObjectMeta, apivalidation.NameIsDNSSubdomain)
		spec := field.NewPath("spec")
		errs = append(errs, selectorProblems(o.Spec.Selector, o.Spec.Template.Labels, spec.Child("selector"))...)
		if o.Spec.Replicas != nil && *o.Spec.Replicas < 0 {
			errs = append(errs, field.Invalid(spec.Child("replicas"), *o.Spec.Replicas, "must not be negative"))
		}
		errs = append(errs, metavalidation.ValidateLabels(o.Spec.Template.Labels, spec.Child("template", "metadata", "labels"))...)
		errs = append(errs, apivalidation.ValidateAnnotations(o.Spec.Template.Annotations, spec.Child("template", "metadata", "annotations"))...)
		errs = append(errs, podSpecProblems(o.Spec.Template.Spec, spec.Child("template", "spec"))...)
	case *corev1.Pod:
		objMeta(o.ObjectMeta, apivalidation.NameIsDNSSubdomain)
		errs = append(errs, podSpecProblems(o.Spec, field.NewPath("spec"))...)
	case *corev1.Service:
		objMeta(o.ObjectMeta, apivalidation.NameIsDNS1035Label)
		errs = append(errs, metavalidation.ValidateLabels(o.Spec.Selector, field.NewPath("spec", "selector"))...)
		for i, p := range o.Spec.Ports {
			path := field.NewPath("spec", "ports").Index(i)
			errs = append(errs, portNameProblems(p.Name, path.Child("name"))...)
			errs = append(errs, intOrNameProblems(p.TargetPort, path.Child("targetPort"))...)
			if p.Port < 1 || p.Port > 65535 {
				errs = append(errs, field.Invalid(path.Child("port"), p.Port, "must be between 1 and 65535"))
			}
		}
	case *corev1.ConfigMap:
		objMeta(o.ObjectMeta, apivalidation.NameIsDNSSubdomain)
		for k := range o.Data {
			for _, msg := range validation.IsConfigMapKey(k) {
				errs = append(errs, field.Invalid(field.NewPath("data").Key(k), k, msg))
			}
		}
	case *corev1.Secret:
		objMeta(o.ObjectMeta, apivalidation.NameIsDNSSubdomain)
		for k := range o.StringData {
			for _, msg := range validation.IsConfigMapKey(k) {
				errs = append(errs, field.Invalid(field.NewPath("stringData").Key(k), k, msg))
			}
		}
	case *corev1.ServiceAccount:
		objMeta(o.ObjectMeta, apivalidation.NameIsDNSSubdomain)
	case *policyv1.PodDisruptionBudget:
		objMeta(o.ObjectMeta, apivalidation.NameIsDNSSubdomain)
		spec := field.NewPath("spec")
		errs = append(errs, selectorProblems(o.Spec.Selector, nil, spec.Child("selector"))...)
		if (o.Spec.MinAvailable == nil) == (o.Spec.MaxUnavailable == nil) {
			errs = append(errs, field.Invalid(spec, "", "set exactly one of minAvailable and maxUnavailable"))
		}
	case *networkingv1.NetworkPolicy:
		objMeta(o.ObjectMeta, apivalidation.NameIsDNSSubdomain)
		spec := field.NewPath("spec")
		errs = append(errs, selectorProblems(&o.Spec.PodSelector, nil, spec.Child("podSelector"))...)
		for i, r := range o.Spec.Ingress {
			errs = append(errs, peerProblems(r.From, r.Ports, spec.Child("ingress").Index(i))...)
		}
		for i, r := range o.Spec.Egress {
			errs = append(errs, peerProblems(r.To, r.Ports, spec.Child("egress").Index(i))...)
		}
	case *networkingv1.Ingress:
		objMeta(o.ObjectMeta, apivalidation.NameIsDNSSubdomain)
		for i, r := range o.Spec.Rules {
			path := field.NewPath("spec", "rules").Index(i)
			for _, msg := range validation.IsDNS1123Subdomain(r.Host) {
				errs = append(errs, field.Invalid(path.Child("host"), r.Host, msg))
			}
			if r.HTTP == nil {
				continue
			}
			for j, p := range r.HTTP.Paths {
				pp := path.Child("http", "paths").Index(j)
				if p.PathType == nil {
					errs = append(errs, field.Required(pp.Child("pathType"), ""))
				}
				if p.Backend.Service == nil || p.Backend.Service.Name == "" {
					errs = append(errs, field.Required(pp.Child("backend", "service", "name"), ""))
				}
			}
		}
	case *monitoringv1.ServiceMonitor:
		objMeta(o.ObjectMeta, apivalidation.NameIsDNSSubdomain)
		errs = append(errs, selectorProblems(&o.Spec.Selector, nil, field.NewPath("spec", "selector"))...)
		if len(o.Spec.Endpoints) == 0 {
			errs = append(errs, field.Required(field.NewPath("spec", "endpoints"), ""))
		}
		for i, e := range o.Spec.Endpoints {
			if e.Port == "" {
				errs = append(errs, field.Required(field.NewPath("spec", "endpoints").Index(i).Child("port"), "the chart scrapes a named Service port"))
			}
		}
	default:
		errs = append(errs, field.Forbidden(field.NewPath("kind"), fmt.Sprintf("%T is not a kind this chart is expected to render; add its checks here", obj)))
	}
	return errs
}

// selectorProblems validates a label selector and, when podLabels is not
// nil, that it selects those labels.
func selectorProblems(sel *metav1.LabelSelector, podLabels map[string]string, path *field.Path) field.ErrorList {
	if sel == nil {
		return field.ErrorList{field.Required(path, "")}
	}
	errs := metavalidation.ValidateLabelSelector(sel, metavalidation.LabelSelectorValidationOptions{}, path)
	if len(sel.MatchLabels) == 0 && len(sel.MatchExpressions) == 0 && podLabels != nil {
		errs = append(errs, field.Invalid(path, sel, "empty selector would select every pod"))
	}
	if podLabels != nil && len(errs) == 0 {
		s, err := metav1.LabelSelectorAsSelector(sel)
		if err != nil {
			errs = append(errs, field.Invalid(path, sel, err.Error()))
		} else if !s.Matches(labels.Set(podLabels)) {
			errs = append(errs, field.Invalid(path, sel, "does not select the pod template's labels"))
		}
	}
	return errs
}

func portNameProblems(name string, path *field.Path) field.ErrorList {
	var errs field.ErrorList
	for _, msg := range validation.IsValidPortName(name) {
		errs = append(errs, field.Invalid(path, name, msg))
	}
	return errs
}

func intOrNameProblems(p intstr.IntOrString, path *field.Path) field.ErrorList {
	if p.Type == intstr.String {
		return portNameProblems(p.StrVal, path)
	}
	if p.IntVal < 1 || p.IntVal > 65535 {
		return field.ErrorList{field.Invalid(path, p.IntVal, "must be between 1 and 65535")}
	}
	return nil
}

func peerProblems(peers []networkingv1.NetworkPolicyPeer, ports []networkingv1.NetworkPolicyPort, path *field.Path) field.ErrorList {
	var errs field.ErrorList
	for i, p := range peers {
		pp := path.Child("peers").Index(i)
		n := 0
		if p.PodSelector != nil {
			n++
			errs = append(errs, selectorProblems(p.PodSelector, nil, pp.Child("podSelector"))...)
		}
		if p.NamespaceSelector != nil {
			n++
			errs = append(errs, selectorProblems(p.NamespaceSelector, nil, pp.Child("namespaceSelector"))...)
		}
		if p.IPBlock != nil {
			if n > 0 {
				errs = append(errs, field.Forbidden(pp, "ipBlock cannot be combined with selectors"))
			}
			n++
			if _, err := netip.ParsePrefix(p.IPBlock.CIDR); err != nil {
				errs = append(errs, field.Invalid(pp.Child("ipBlock", "cidr"), p.IPBlock.CIDR, err.Error()))
			}
		}
		if n == 0 {
			errs = append(errs, field.Required(pp, "a podSelector, namespaceSelector or ipBlock"))
		}
	}
	for i, p := range ports {
		if p.Port != nil {
			errs = append(errs, intOrNameProblems(*p.Port, path.Child("ports").Index(i).Child("port"))...)
		}
	}
	return errs
}

// podSpecProblems checks containers, ports, probes, mounts and volumes.
func podSpecProblems(spec corev1.PodSpec, path *field.Path) field.ErrorList {
	var errs field.ErrorList
	if len(spec.Containers) == 0 {
		errs = append(errs, field.Required(path.Child("containers"), ""))
	}
	volumes := map[string]bool{}
	for i, v := range spec.Volumes {
		vp := path.Child("volumes").Index(i)
		for _, msg := range validation.IsDNS1123Label(v.Name) {
			errs = append(errs, field.Invalid(vp.Child("name"), v.Name, msg))
		}
		if volumes[v.Name] {
			errs = append(errs, field.Duplicate(vp.Child("name"), v.Name))
		}
		volumes[v.Name] = true
		n := 0
		for _, set := range []bool{v.ConfigMap != nil, v.Secret != nil, v.EmptyDir != nil, v.Projected != nil, v.PersistentVolumeClaim != nil, v.CSI != nil} {
			if set {
				n++
			}
		}
		if n != 1 {
			errs = append(errs, field.Invalid(vp, v.Name, "must have exactly one volume source"))
		}
	}
	if spec.ServiceAccountName != "" {
		for _, msg := range validation.IsDNS1123Subdomain(spec.ServiceAccountName) {
			errs = append(errs, field.Invalid(path.Child("serviceAccountName"), spec.ServiceAccountName, msg))
		}
	}
	names := map[string]bool{}
	for i, c := range spec.Containers {
		cp := path.Child("containers").Index(i)
		for _, msg := range validation.IsDNS1123Label(c.Name) {
			errs = append(errs, field.Invalid(cp.Child("name"), c.Name, msg))
		}
		if names[c.Name] {
			errs = append(errs, field.Duplicate(cp.Child("name"), c.Name))
		}
		names[c.Name] = true
		if strings.TrimSpace(c.Image) == "" {
			errs = append(errs, field.Required(cp.Child("image"), ""))
		}
		ports := map[string]bool{}
		for j, p := range c.Ports {
			pp := cp.Child("ports").Index(j)
			if p.Name != "" {
				errs = append(errs, portNameProblems(p.Name, pp.Child("name"))...)
				if ports[p.Name] {
					errs = append(errs, field.Duplicate(pp.Child("name"), p.Name))
				}
				ports[p.Name] = true
			}
			if p.ContainerPort < 1 || p.ContainerPort > 65535 {
				errs = append(errs, field.Invalid(pp.Child("containerPort"), p.ContainerPort, "must be between 1 and 65535"))
			}
		}
		for name, pr := range map[string]*corev1.Probe{"startupProbe": c.StartupProbe, "livenessProbe": c.LivenessProbe, "readinessProbe": c.ReadinessProbe} {
			if pr == nil || pr.HTTPGet == nil {
				continue
			}
			port := pr.HTTPGet.Port
			errs = append(errs, intOrNameProblems(port, cp.Child(name, "httpGet", "port"))...)
			if port.Type == intstr.String && !ports[port.StrVal] {
				errs = append(errs, field.NotFound(cp.Child(name, "httpGet", "port"), port.StrVal))
			}
			if !strings.HasPrefix(pr.HTTPGet.Path, "/") {
				errs = append(errs, field.Invalid(cp.Child(name, "httpGet", "path"), pr.HTTPGet.Path, "must start with /"))
			}
		}
		mounts := map[string]bool{}
		for j, m := range c.VolumeMounts {
			mp := cp.Child("volumeMounts").Index(j)
			if !volumes[m.Name] {
				errs = append(errs, field.NotFound(mp.Child("name"), m.Name))
			}
			if mounts[m.MountPath] {
				errs = append(errs, field.Duplicate(mp.Child("mountPath"), m.MountPath))
			}
			mounts[m.MountPath] = true
		}
		for j, e := range c.Env {
			for _, msg := range validation.IsEnvVarName(e.Name) {
				errs = append(errs, field.Invalid(cp.Child("env").Index(j).Child("name"), e.Name, msg))
			}
		}
	}
	return errs
}

// kindOf names a decoded object's kind.
func kindOf(obj runtime.Object) string {
	gvks, _, err := scheme.ObjectKinds(obj)
	if err != nil || len(gvks) == 0 {
		return fmt.Sprintf("%T", obj)
	}
	return gvks[0].Kind
}

// crossCheck checks the references between a release's objects: the
// Service, disruption budget, network policy and ServiceMonitor select the
// Deployment's pods (or its Service), named ports exist where they point,
// and what the pods mount from the release is rendered.
func crossCheck(objs map[string][]any) error {
	var errs []error
	deps := objs["Deployment"]
	if len(deps) != 1 {
		return fmt.Errorf("%d Deployments rendered, want 1", len(deps))
	}
	dep := deps[0].(*appsv1.Deployment)
	pod := labels.Set(dep.Spec.Template.Labels)
	podPorts := map[string]bool{}
	for _, c := range dep.Spec.Template.Spec.Containers {
		for _, p := range c.Ports {
			podPorts[p.Name] = true
		}
	}
	selects := func(what string, sel *metav1.LabelSelector, set labels.Set) {
		s, err := metav1.LabelSelectorAsSelector(sel)
		if err != nil || !s.Matches(set) {
			errs = append(errs, fmt.Errorf("%s selector %v does not select its target's labels %v", what, sel, set))
		}
	}
	svcPorts := map[string]bool{}
	var svc *corev1.Service
	for _, o := range objs["Service"] {
		svc = o.(*corev1.Service)
		if !labels.SelectorFromSet(svc.Spec.Selector).Matches(pod) {
			errs = append(errs, fmt.Errorf("Service %s selects %v, not the pods' labels %v", svc.Name, svc.Spec.Selector, pod))
		}
		for _, p := range svc.Spec.Ports {
			svcPorts[p.Name] = true
			if p.TargetPort.Type == intstr.String && !podPorts[p.TargetPort.StrVal] {
				errs = append(errs, fmt.Errorf("Service %s port %s targets %q, which the pods do not declare", svc.Name, p.Name, p.TargetPort.StrVal))
			}
		}
	}
	for _, o := range objs["PodDisruptionBudget"] {
		pdb := o.(*policyv1.PodDisruptionBudget)
		selects("PodDisruptionBudget", pdb.Spec.Selector, pod)
	}
	for _, o := range objs["NetworkPolicy"] {
		np := o.(*networkingv1.NetworkPolicy)
		selects("NetworkPolicy", &np.Spec.PodSelector, pod)
		for _, r := range np.Spec.Ingress {
			for _, p := range r.Ports {
				if p.Port != nil && p.Port.Type == intstr.String && !podPorts[p.Port.StrVal] {
					errs = append(errs, fmt.Errorf("NetworkPolicy admits port %q, which the pods do not declare", p.Port.StrVal))
				}
			}
		}
	}
	for _, o := range objs["ServiceMonitor"] {
		sm := o.(*monitoringv1.ServiceMonitor)
		if svc == nil {
			errs = append(errs, errors.New("a ServiceMonitor without a Service"))
			continue
		}
		selects("ServiceMonitor", &sm.Spec.Selector, labels.Set(svc.Labels))
		for _, e := range sm.Spec.Endpoints {
			if !svcPorts[e.Port] {
				errs = append(errs, fmt.Errorf("ServiceMonitor scrapes port %q, which the Service does not have", e.Port))
			}
		}
	}
	for _, o := range objs["Ingress"] {
		ing := o.(*networkingv1.Ingress)
		for _, r := range ing.Spec.Rules {
			for _, p := range r.HTTP.Paths {
				b := p.Backend.Service
				if svc == nil || b.Name != svc.Name || !svcPorts[b.Port.Name] {
					errs = append(errs, fmt.Errorf("Ingress routes to service %s port %q, which the release does not have", b.Name, b.Port.Name))
				}
			}
		}
	}
	rendered := func(kind, name string) bool {
		for _, o := range objs[kind] {
			if o.(metav1.Object).GetName() == name {
				return true
			}
		}
		return false
	}
	for _, v := range dep.Spec.Template.Spec.Volumes {
		if v.ConfigMap != nil && !rendered("ConfigMap", v.ConfigMap.Name) {
			errs = append(errs, fmt.Errorf("the pods mount ConfigMap %s, which the release does not render", v.ConfigMap.Name))
		}
		if v.Secret == nil {
			continue
		}
		for _, o := range objs["Secret"] {
			sec := o.(*corev1.Secret)
			if sec.Name != v.Secret.SecretName {
				continue
			}
			for _, it := range v.Secret.Items {
				if _, ok := sec.StringData[it.Key]; !ok {
					errs = append(errs, fmt.Errorf("the pods mount key %s of Secret %s, which the release renders without it", it.Key, sec.Name))
				}
			}
		}
	}
	if sa := dep.Spec.Template.Spec.ServiceAccountName; len(objs["ServiceAccount"]) > 0 && !rendered("ServiceAccount", sa) {
		errs = append(errs, fmt.Errorf("the pods run as service account %s, which the release does not render", sa))
	}
	return errors.Join(errs...)
}

// goodDeployment passes validateManifest; each case of
// TestValidateManifestRefusesBrokenManifests breaks it in one way.
const goodDeployment = `apiVersion: apps/v1
kind: Deployment
metadata:
  name: sync-fhirsync
  labels: {app.kubernetes.io/name: fhirsync}
spec:
  replicas: 2
  selector:
    matchLabels: {app.kubernetes.io/name: fhirsync}
  template:
    metadata:
      labels: {app.kubernetes.io/name: fhirsync}
    spec:
      containers:
        - name: fhirsync
          image: fhirsync/fhirsync:0.1.0
          ports:
            - {name: http, containerPort: 8080}
          readinessProbe:
            httpGet: {path: /readyz, port: http}
          volumeMounts:
            - {name: config, mountPath: /etc/fhirsync}
      volumes:
        - name: config
          configMap: {name: sync-fhirsync}
`

func TestValidateManifestRefusesBrokenManifests(t *testing.T) {
	if _, err := validateManifest([]byte(goodDeployment)); err != nil {
		t.Fatalf("the unbroken manifest is refused: %v", err)
	}
	tests := []struct {
		name     string
		old, new string // goodDeployment with old replaced by new
		doc      string // or a whole manifest
		wantErr  string
	}{
		{name: "unknown field", old: "  replicas: 2", new: "  replica: 2", wantErr: `unknown field "spec.replica"`},
		{name: "misplaced field", old: "          ports:", new: "          port: 8080\n          ports:", wantErr: `unknown field "spec.template.spec.containers[0].port"`},
		{name: "wrong type", old: "replicas: 2", new: "replicas: two", wantErr: "replicas"},
		{name: "duplicate key", old: "  replicas: 2", new: "  replicas: 2\n  replicas: 3", wantErr: `"replicas"`},
		{name: "selector does not match the pods", old: "    matchLabels: {app.kubernetes.io/name: fhirsync}", new: "    matchLabels: {app.kubernetes.io/name: other}", wantErr: "does not select the pod template's labels"},
		{name: "no image", old: "          image: fhirsync/fhirsync:0.1.0\n", new: "", wantErr: "image: Required"},
		{name: "probe on an undeclared port", old: "port: http}", new: "port: admin}", wantErr: `readinessProbe.httpGet.port: Not found: "admin"`},
		{name: "mount of an undeclared volume", old: "{name: config, mountPath", new: "{name: secrets, mountPath", wantErr: `volumeMounts[0].name: Not found: "secrets"`},
		{name: "invalid name", old: "name: sync-fhirsync\n  labels", new: "name: Sync_FHIRsync\n  labels", wantErr: "metadata.name: Invalid value"},
		{name: "invalid label value", old: "  labels: {app.kubernetes.io/name: fhirsync}", new: "  labels: {app.kubernetes.io/name: \"not valid!\"}", wantErr: "metadata.labels: Invalid value"},
		{name: "two ports on one number", old: "            - {name: http, containerPort: 8080}", new: "            - {name: http, containerPort: 8080}\n            - {name: web, containerPort: 8080}", wantErr: "does not match the Kubernetes schema: .spec.template.spec.containers[name=\"fhirsync\"].ports: duplicate entries"},
		{name: "kind of another version", old: "apiVersion: apps/v1", new: "apiVersion: apps/v2", wantErr: "no kind"},
		{name: "not YAML", old: "  replicas: 2", new: "  replicas: [2", wantErr: "not YAML"},
		{name: "ServiceMonitor with an unknown field", doc: `apiVersion: monitoring.coreos.com/v1
kind: ServiceMonitor
metadata: {name: sync-fhirsync}
spec:
  selector: {matchLabels: {app.kubernetes.io/name: fhirsync}}
  endpoint: [{port: metrics}]
`, wantErr: `unknown field "spec.endpoint"`},
		{name: "NetworkPolicy with a bad CIDR", doc: `apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: sync-fhirsync}
spec:
  podSelector: {matchLabels: {app.kubernetes.io/name: fhirsync}}
  egress:
    - to: [{ipBlock: {cidr: 0.0.0.0/33}}]
`, wantErr: "ipBlock.cidr: Invalid value"},
		{name: "PodDisruptionBudget with both limits", doc: `apiVersion: policy/v1
kind: PodDisruptionBudget
metadata: {name: sync-fhirsync}
spec:
  minAvailable: 1
  maxUnavailable: 1
  selector: {matchLabels: {app.kubernetes.io/name: fhirsync}}
`, wantErr: "set exactly one of minAvailable and maxUnavailable"},
		{name: "Service with an invalid port name", doc: `apiVersion: v1
kind: Service
metadata: {name: sync-fhirsync}
spec:
  selector: {app.kubernetes.io/name: fhirsync}
  ports: [{name: HTTP_Port, port: 8080}]
`, wantErr: "spec.ports[0].name: Invalid value"},
		{name: "a kind the chart does not render", doc: `apiVersion: batch/v1
kind: Job
metadata: {name: sync-fhirsync}
spec:
  template:
    spec:
      restartPolicy: Never
      containers: [{name: a, image: b}]
`, wantErr: "is not a kind this chart is expected to render"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			doc := tt.doc
			if doc == "" {
				if !strings.Contains(goodDeployment, tt.old) {
					t.Fatalf("%q is not in the manifest", tt.old)
				}
				doc = strings.Replace(goodDeployment, tt.old, tt.new, 1)
			}
			_, err := validateManifest([]byte(doc))
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
				t.Errorf("validateManifest: %v, want an error containing %q", err, tt.wantErr)
			}
		})
	}
}

func TestCrossCheckRefusesDanglingReferences(t *testing.T) {
	dep, err := validateManifest([]byte(goodDeployment))
	if err != nil {
		t.Fatal(err)
	}
	svc := func(selector, targetPort string) runtime.Object {
		o, err := validateManifest([]byte(fmt.Sprintf(`apiVersion: v1
kind: Service
metadata: {name: sync-fhirsync}
spec:
  selector: {app.kubernetes.io/name: %s}
  ports: [{name: http, port: 8080, targetPort: %s}]
`, selector, targetPort)))
		if err != nil {
			t.Fatal(err)
		}
		return o
	}
	cm, err := validateManifest([]byte("apiVersion: v1\nkind: ConfigMap\nmetadata: {name: sync-fhirsync}\n"))
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name    string
		objs    map[string][]any
		wantErr string
	}{
		{name: "consistent", objs: map[string][]any{"Deployment": {dep}, "Service": {svc("fhirsync", "http")}, "ConfigMap": {cm}}},
		{name: "service selects other pods", objs: map[string][]any{"Deployment": {dep}, "Service": {svc("other", "http")}, "ConfigMap": {cm}}, wantErr: "not the pods' labels"},
		{name: "service targets an undeclared port", objs: map[string][]any{"Deployment": {dep}, "Service": {svc("fhirsync", "web")}, "ConfigMap": {cm}}, wantErr: `targets "web"`},
		{name: "mounted ConfigMap not rendered", objs: map[string][]any{"Deployment": {dep}, "Service": {svc("fhirsync", "http")}}, wantErr: "mount ConfigMap sync-fhirsync"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := crossCheck(tt.objs)
			if tt.wantErr == "" {
				if err != nil {
					t.Fatalf("crossCheck: %v", err)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
				t.Errorf("crossCheck: %v, want an error containing %q", err, tt.wantErr)
			}
		})
	}
}
