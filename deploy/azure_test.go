package deploy

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"sigs.k8s.io/yaml"
)

// No Bicep compiler installs on the machines CI runs on (it is a .NET
// program published outside the package registries they reach), so these
// tests read deploy/azure/main.bicep as text: enough to keep the queue
// properties, roles, API-version citations and the app's settings from
// drifting from what the code expects. cmd/fhirsync's
// TestAzureTemplateSettingsLoad loads the app's FHIRSYNC_… settings with
// the real configuration loader.

const bicepPath = "azure/main.bicep"

func readBicep(t *testing.T) string {
	t.Helper()
	b, err := os.ReadFile(bicepPath)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// bicepBlock returns the text of the object or array literal that follows
// prefix (e.g. "var queueProperties = "), matching brackets.
func bicepBlock(src, prefix string) (string, error) {
	i := strings.Index(src, prefix)
	if i < 0 {
		return "", fmt.Errorf("%q not found", prefix)
	}
	start := i + len(prefix)
	for start < len(src) && src[start] != '{' && src[start] != '[' {
		start++
	}
	depth := 0
	for j := start; j < len(src); j++ {
		switch src[j] {
		case '{', '[':
			depth++
		case '}', ']':
			depth--
			if depth == 0 {
				return src[start : j+1], nil
			}
		}
	}
	return "", fmt.Errorf("%q: unbalanced brackets", prefix)
}

var bicepProperty = regexp.MustCompile(`(?m)^\s*([A-Za-z]+):\s*(.+?)\s*$`)

// bicepObject reads the one-level `key: value` lines of an object literal.
func bicepObject(block string) map[string]string {
	m := map[string]string{}
	for _, sub := range bicepProperty.FindAllStringSubmatch(block, -1) {
		m[sub[1]] = strings.Trim(sub[2], "'")
	}
	return m
}

var bicepParam = regexp.MustCompile(`(?m)^param (\w+) (\w+)(?: = (.+))?$`)

// bicepParams maps each parameter to its default ("" and false when it has
// none).
func bicepParams(src string) map[string]struct {
	def        string
	hasDefault bool
} {
	out := map[string]struct {
		def        string
		hasDefault bool
	}{}
	for _, sub := range bicepParam.FindAllStringSubmatch(src, -1) {
		out[sub[1]] = struct {
			def        string
			hasDefault bool
		}{strings.Trim(sub[3], "'"), sub[3] != ""}
	}
	return out
}

// isoMinutes reads the ISO 8601 durations Service Bus takes (PT30S, PT1M,
// PT5M, PT10M).
func isoMinutes(s string) (time.Duration, error) {
	m := regexp.MustCompile(`^PT(?:(\d+)M)?(?:(\d+)S)?$`).FindStringSubmatch(s)
	if m == nil || (m[1] == "" && m[2] == "") {
		return 0, fmt.Errorf("%q is not PTnM or PTnS", s)
	}
	mins, _ := strconv.Atoi(m[1])
	secs, _ := strconv.Atoi(m[2])
	return time.Duration(mins)*time.Minute + time.Duration(secs)*time.Second, nil
}

// queuePropertyProblems checks the queue properties against what the code
// relies on (DESIGN.md, "Queues"; queues/servicebus).
func queuePropertyProblems(src string) error {
	block, err := bicepBlock(src, "var queueProperties = ")
	if err != nil {
		return err
	}
	p := bicepObject(block)
	var errs []error
	want := map[string]string{
		// Per-record order: the adapter sends with session ids and receives
		// through session receivers; doctor fails a queue without sessions.
		"requiresSession": "true",
		// servicebus.Config.MaxDeliveryCount defaults to 10 and must match
		// the queue; the agent's max_attempts defaults to 10.
		"maxDeliveryCount": "10",
		// Stable message ids: a re-sent backfill page is dropped.
		"requiresDuplicateDetection":          "true",
		"duplicateDetectionHistoryTimeWindow": "PT10M",
		// Expired notices become dead letters, never vanish.
		"deadLetteringOnMessageExpiration": "true",
	}
	for k, v := range want {
		if p[k] != v {
			errs = append(errs, fmt.Errorf("queue property %s = %q, want %q", k, p[k], v))
		}
	}
	// Locks are renewed by the adapter; Service Bus allows 5 minutes at most.
	if d, err := isoMinutes(p["lockDuration"]); err != nil {
		errs = append(errs, fmt.Errorf("queue property lockDuration: %w", err))
	} else if d < 30*time.Second || d > 5*time.Minute {
		errs = append(errs, fmt.Errorf("queue property lockDuration = %s, want between 30s and 5m", d))
	}
	if p["enablePartitioning"] == "true" {
		errs = append(errs, errors.New("queue property enablePartitioning: true changes duplicate detection and session placement; leave it off"))
	}
	queues, err := bicepBlock(src, "resource queues 'Microsoft.ServiceBus/namespaces/queues@")
	if err != nil || !strings.Contains(queues, "for name in queueNames") || !strings.Contains(queues, "properties: queueProperties") {
		errs = append(errs, fmt.Errorf("the queues resource must loop over queueNames with properties: queueProperties (%v)", err))
	}
	names, err := bicepBlock(src, "var queueNames = ")
	if err != nil || !strings.Contains(names, "fhirChangesQueue") || !strings.Contains(names, "crmChangesQueue") {
		errs = append(errs, fmt.Errorf("queueNames must hold fhirChangesQueue and crmChangesQueue (%v)", err))
	}
	return errors.Join(errs...)
}

var bicepResource = regexp.MustCompile(`(?m)^resource \w+ '([\w./]+)@([\w-]+)'`)

// apiVersionProblems: every resource type@version the template declares is
// named in a comment with its reference page on Microsoft Learn.
func apiVersionProblems(src string) error {
	var errs []error
	decls := bicepResource.FindAllStringSubmatch(src, -1)
	if len(decls) == 0 {
		return errors.New("no resource declarations")
	}
	for _, d := range decls {
		typ, ver := d[1], d[2]
		if !strings.Contains(src, "// "+typ+"@"+ver) {
			errs = append(errs, fmt.Errorf("%s@%s: no comment naming the type and API version", typ, ver))
		}
		provider, rest, _ := strings.Cut(typ, "/")
		page := "https://learn.microsoft.com/azure/templates/" + strings.ToLower(provider) + "/" + ver + "/" + strings.ToLower(rest)
		if !strings.Contains(src, page) {
			errs = append(errs, fmt.Errorf("%s@%s: its reference page %s is not cited", typ, ver, page))
		}
	}
	return errors.Join(errs...)
}

// The built-in role definition ids, as listed on
// https://learn.microsoft.com/azure/role-based-access-control/built-in-roles.
const (
	roleServiceBusDataSender   = "69a216fc-b8fb-44d8-bc22-1f3c2cd27a39"
	roleServiceBusDataReceiver = "4f6d3b9b-027b-4f4c-9142-0e5a2a2247e0"
	roleServiceBusDataOwner    = "090c5cfd-751d-490a-894a-3ce6f1109419"
	roleKeyVaultSecretsUser    = "4633458b-17de-408a-b874-0445c86b69e6"
	roleOwner                  = "8e3af657-a8ff-443c-a75c-2fe8c4bcb635"
	roleContributor            = "b24988ac-6180-48e5-8f7e-c78ec2f9b8a2"
)

// roleProblems: the identity gets Service Bus Data Sender and Receiver on
// each queue and Key Vault Secrets User on its secrets, nothing broader.
func roleProblems(src string) error {
	var errs []error
	for name, id := range map[string]string{"serviceBusDataSender": roleServiceBusDataSender, "serviceBusDataReceiver": roleServiceBusDataReceiver, "keyVaultSecretsUser": roleKeyVaultSecretsUser} {
		if !strings.Contains(src, fmt.Sprintf("var %s = '%s'", name, id)) {
			errs = append(errs, fmt.Errorf("var %s is not the built-in role id %s", name, id))
		}
	}
	for name, id := range map[string]string{"Azure Service Bus Data Owner": roleServiceBusDataOwner, "Owner": roleOwner, "Contributor": roleContributor} {
		if strings.Contains(src, id) {
			errs = append(errs, fmt.Errorf("the template grants %s (%s); the identity needs only send and receive", name, id))
		}
	}
	for _, sym := range []string{"queueSenders", "queueReceivers"} {
		block, err := bicepBlock(src, "resource "+sym+" ")
		if err != nil {
			errs = append(errs, err)
			continue
		}
		if !strings.Contains(block, "scope: queues[i]") {
			errs = append(errs, fmt.Errorf("%s must be scoped to each queue, not the namespace", sym))
		}
	}
	if !strings.Contains(src, "disableLocalAuth: true") {
		errs = append(errs, errors.New("the namespace must turn shared access keys off (disableLocalAuth: true)"))
	}
	return errors.Join(errs...)
}

var bicepEnv = regexp.MustCompile(`\{ name: '(FHIRSYNC_\w+)', value: ([^}]+?) \}`)

// bicepEnvVars maps the app's FHIRSYNC_… variables to their Bicep value
// expressions, across both branches of crmEnv.
func bicepEnvVars(src string) map[string][]string {
	out := map[string][]string{}
	for _, m := range bicepEnv.FindAllStringSubmatch(src, -1) {
		out[m[1]] = append(out[m[1]], m[2])
	}
	return out
}

// appProblems: the Container App runs serve on the queues the template
// creates, with probes on the real endpoints and secrets from Key Vault.
func appProblems(src string) error {
	var errs []error
	env := bicepEnvVars(src)
	for k, want := range map[string]string{
		"FHIRSYNC_QUEUE_KIND":                    "'servicebus'",
		"FHIRSYNC_QUEUE_FHIR_CHANGES":            "fhirChangesQueue",
		"FHIRSYNC_QUEUE_CRM_CHANGES":             "crmChangesQueue",
		"FHIRSYNC_QUEUE_SERVICE_BUS_AUTH_METHOD": "'managed_identity'",
		"FHIRSYNC_LISTEN":                        "'0.0.0.0:8080'",
		"FHIRSYNC_DATABASE_URL_FILE":             "'/var/run/secrets/fhirsync/database-url'",
	} {
		if !slices.Equal(env[k], []string{want}) {
			errs = append(errs, fmt.Errorf("app setting %s = %v, want %s", k, env[k], want))
		}
	}
	for _, probe := range []string{"type: 'Liveness'\n              httpGet: {\n                path: '/healthz'", "type: 'Readiness'\n              httpGet: {\n                path: '/readyz'"} {
		if !strings.Contains(src, probe) {
			errs = append(errs, fmt.Errorf("no probe %q", strings.Fields(probe)[1]))
		}
	}
	if !strings.Contains(src, "keyVaultUrl: databaseUrl.properties.secretUri, identity: identity.id") {
		errs = append(errs, errors.New("the database URL must be a Key Vault reference resolved with the identity"))
	}
	if !strings.Contains(src, "targetPort: 8080") {
		errs = append(errs, errors.New("ingress must target port 8080 (FHIRSYNC_LISTEN)"))
	}
	return errors.Join(errs...)
}

func TestAzureTemplate(t *testing.T) {
	src := readBicep(t)
	for name, check := range map[string]func(string) error{
		"queue properties": queuePropertyProblems,
		"API versions":     apiVersionProblems,
		"roles":            roleProblems,
		"app":              appProblems,
	} {
		t.Run(name, func(t *testing.T) {
			if err := check(src); err != nil {
				t.Error(err)
			}
		})
	}
}

// TestAzureTemplateChecksRefuseDrift: each check fails on a template that
// drifted from what the code expects.
func TestAzureTemplateChecksRefuseDrift(t *testing.T) {
	src := readBicep(t)
	tests := []struct {
		name     string
		old, new string
		check    func(string) error
		wantErr  string
	}{
		{"sessions off", "  requiresSession: true", "  requiresSession: false", queuePropertyProblems, "requiresSession"},
		{"fewer deliveries than the adapter counts", "  maxDeliveryCount: 10", "  maxDeliveryCount: 5", queuePropertyProblems, "maxDeliveryCount"},
		{"lock longer than Service Bus allows", "  lockDuration: 'PT1M'", "  lockDuration: 'PT10M'", queuePropertyProblems, "lockDuration = 10m0s"},
		{"no dead-lettering on expiry", "  deadLetteringOnMessageExpiration: true", "  deadLetteringOnMessageExpiration: false", queuePropertyProblems, "deadLetteringOnMessageExpiration"},
		{"no duplicate detection", "  requiresDuplicateDetection: true", "  requiresDuplicateDetection: false", queuePropertyProblems, "requiresDuplicateDetection"},
		{"queues with properties of their own", "  properties: queueProperties", "  properties: {}", queuePropertyProblems, "properties: queueProperties"},
		{"an API version not cited", "// Microsoft.KeyVault/vaults@2023-07-01\n", "", apiVersionProblems, "Microsoft.KeyVault/vaults@2023-07-01: no comment"},
		{"a newer API version without its page", "resource vault 'Microsoft.KeyVault/vaults@2023-07-01'", "resource vault 'Microsoft.KeyVault/vaults@2024-11-01'", apiVersionProblems, "2024-11-01"},
		{"data owner instead of receiver", "var serviceBusDataReceiver = '4f6d3b9b-027b-4f4c-9142-0e5a2a2247e0'", "var serviceBusDataReceiver = '090c5cfd-751d-490a-894a-3ce6f1109419'", roleProblems, "Azure Service Bus Data Owner"},
		{"roles on the namespace", "  scope: queues[i]\n  properties: {\n    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', serviceBusDataSender)", "  scope: serviceBus\n  properties: {\n    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', serviceBusDataSender)", roleProblems, "queueSenders must be scoped to each queue"},
		{"app on another queue", "{ name: 'FHIRSYNC_QUEUE_CRM_CHANGES', value: crmChangesQueue }", "{ name: 'FHIRSYNC_QUEUE_CRM_CHANGES', value: 'crm' }", appProblems, "FHIRSYNC_QUEUE_CRM_CHANGES"},
		{"readiness on the liveness endpoint", "type: 'Readiness'\n              httpGet: {\n                path: '/readyz'", "type: 'Readiness'\n              httpGet: {\n                path: '/healthz'", appProblems, "'Readiness'"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if !strings.Contains(src, tt.old) {
				t.Fatalf("%q is not in the template", tt.old)
			}
			err := tt.check(strings.Replace(src, tt.old, tt.new, 1))
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
				t.Errorf("check: %v, want an error containing %q", err, tt.wantErr)
			}
		})
	}
}

// TestAzureTemplateParametersExample: the example names only parameters
// the template declares, and every required one except the secrets, which
// are given on the command line.
func TestAzureTemplateParametersExample(t *testing.T) {
	src := readBicep(t)
	params := bicepParams(src)
	raw, err := os.ReadFile("azure/main.parameters.example.json")
	if err != nil {
		t.Fatal(err)
	}
	var file struct {
		Parameters map[string]struct {
			Value json.RawMessage `json:"value"`
		} `json:"parameters"`
	}
	if err := json.Unmarshal(raw, &file); err != nil {
		t.Fatal(err)
	}
	for name := range file.Parameters {
		if _, ok := params[name]; !ok {
			t.Errorf("the example sets %s, which main.bicep does not declare", name)
		}
	}
	for name, p := range params {
		secure := strings.Contains(src, "@secure()\nparam "+name+" ")
		if _, ok := file.Parameters[name]; !ok && !p.hasDefault && !secure {
			t.Errorf("the example leaves out %s, which has no default", name)
		}
		if _, ok := file.Parameters[name]; ok && secure {
			t.Errorf("the example holds the secure parameter %s; give it on the command line", name)
		}
	}
}

// TestAzureTemplateQueueNamesMatchChart: the template's queue names are
// the Helm chart's, so one namespace serves either deployment.
func TestAzureTemplateQueueNamesMatchChart(t *testing.T) {
	params := bicepParams(readBicep(t))
	raw, err := os.ReadFile(chartDir + "/values.yaml")
	if err != nil {
		t.Fatal(err)
	}
	var values struct {
		Config struct {
			Queue struct {
				FHIRChanges string `json:"fhir_changes"`
				CRMChanges  string `json:"crm_changes"`
			} `json:"queue"`
		} `json:"config"`
	}
	if err := yaml.Unmarshal(raw, &values); err != nil {
		t.Fatal(err)
	}
	if got, want := params["fhirChangesQueue"].def, values.Config.Queue.FHIRChanges; got != want || got == "" {
		t.Errorf("fhirChangesQueue defaults to %q, the chart's config.queue.fhir_changes is %q", got, want)
	}
	if got, want := params["crmChangesQueue"].def, values.Config.Queue.CRMChanges; got != want || got == "" {
		t.Errorf("crmChangesQueue defaults to %q, the chart's config.queue.crm_changes is %q", got, want)
	}
}
