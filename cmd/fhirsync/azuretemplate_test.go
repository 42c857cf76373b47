package main

import (
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
)

// azureTemplate is the Azure deployment whose app settings these tests load.
var azureTemplate = filepath.Join("..", "..", "deploy", "azure", "main.bicep")

// TestAzureTemplateSettingsLoad loads the Container App's FHIRSYNC_…
// settings in deploy/azure/main.bicep with the real configuration loader,
// once for each way the template signs in to Dataverse (managed identity,
// client secret): every variable must name a configuration key, and the
// whole must validate. Values the template computes at deployment (the
// namespace host, the identity's client id) are stood in for by values of
// the same shape.
func TestAzureTemplateSettingsLoad(t *testing.T) {
	raw, err := os.ReadFile(azureTemplate)
	if err != nil {
		t.Fatal(err)
	}
	src := string(raw)
	known := map[string]bool{}
	for _, k := range configKeys() {
		name := "FHIRSYNC_" + strings.ToUpper(strings.ReplaceAll(k, ".", "_"))
		known[name], known[name+"_FILE"] = true, true
	}
	entry := regexp.MustCompile(`\{ name: '(FHIRSYNC_\w+)', value: ([^}]+?) \}`)
	base := between(t, src, "var baseEnv = [", "\n]\n")
	withSecret := between(t, src, "var crmEnv = useClientSecret ? [", "] : [")
	withIdentity := between(t, src, "] : [\n  { name: 'FHIRSYNC_CRM_AUTH_METHOD', value: 'managed_identity' }", "]\n")
	withIdentity = "{ name: 'FHIRSYNC_CRM_AUTH_METHOD', value: 'managed_identity' }" + withIdentity
	stand := map[string]string{
		"serviceBusHost":               "fhirsync-sb-abc.servicebus.windows.net",
		"identity.properties.clientId": "0f3c1a52-5a1e-4f51-9a7e-2d1c6b1f0a11",
		"dataverseClientId":            "6a1b2c3d-4e5f-4a6b-8c7d-9e0f1a2b3c4d",
		"tenant().tenantId":            "72f988bf-86f1-41af-91ab-2d7cd011db47",
		"fhirBaseUrl":                  "https://contosows-contosofhir.fhir.azurehealthcareapis.com",
		"crmBaseUrl":                   "https://contoso.crm.dynamics.com",
		"fhirAccount":                  "contosofhir",
		"fhirChangesQueue":             "fhir-changes",
		"crmChangesQueue":              "crm-changes",
		"fhirHistoryTypes":             "Patient",
		"crmTrackingEntities":          "contact",
		"'https://${appName}.${containerEnv.properties.defaultDomain}'": "https://fhirsync-app.example.azurecontainerapps.io",
	}
	for name, settings := range map[string]string{"managed identity": base + withIdentity, "client secret": base + withSecret} {
		t.Run(name, func(t *testing.T) {
			dir := t.TempDir()
			env := map[string]string{}
			for _, m := range entry.FindAllStringSubmatch(settings, -1) {
				key, expr := m[1], m[2]
				if !known[key] {
					t.Errorf("%s names no configuration key", key)
				}
				val, ok := stand[expr]
				switch {
				case ok:
				case strings.HasPrefix(expr, "'") && strings.HasSuffix(expr, "'") && !strings.Contains(expr, "${"):
					val = strings.Trim(expr, "'")
				default:
					t.Fatalf("%s = %s: no stand-in for this expression; add one", key, expr)
				}
				if strings.HasSuffix(key, "_FILE") {
					// The mounted Key Vault secret, with a value of its shape.
					secret := "not-a-real-secret"
					if key == "FHIRSYNC_DATABASE_URL_FILE" {
						secret = "postgres://fhirsync:pw@fhirsync-pg-abc.postgres.database.azure.com:5432/fhirsync?sslmode=require"
					}
					p := filepath.Join(dir, filepath.Base(val))
					if err := os.WriteFile(p, []byte(secret), 0o600); err != nil {
						t.Fatal(err)
					}
					val = p
				}
				env[key] = val
			}
			cfg, err := loadConfig("", func(k string) string { return env[k] })
			if err != nil {
				t.Fatal(err)
			}
			def := defaultConfig()
			if cfg.Queue.FHIRChanges != def.Queue.FHIRChanges || cfg.Queue.CRMChanges != def.Queue.CRMChanges {
				t.Errorf("the template's queues are %s and %s; the code's defaults are %s and %s",
					cfg.Queue.FHIRChanges, cfg.Queue.CRMChanges, def.Queue.FHIRChanges, def.Queue.CRMChanges)
			}
			if cfg.Queue.Kind != "servicebus" || cfg.FHIR.BaseURL == "" || cfg.CRM.BaseURL == "" || !strings.HasPrefix(cfg.Database.URL, "postgres://") {
				t.Errorf("queue %s, fhir %q, crm %q, database %q: want Service Bus, both endpoints and PostgreSQL", cfg.Queue.Kind, cfg.FHIR.BaseURL, cfg.CRM.BaseURL, cfg.Database.URL)
			}
		})
	}
	// The queue parameters' defaults are the code's queue names.
	for param, want := range map[string]string{"fhirChangesQueue": defaultConfig().Queue.FHIRChanges, "crmChangesQueue": defaultConfig().Queue.CRMChanges} {
		if !strings.Contains(src, "param "+param+" string = '"+want+"'") {
			t.Errorf("param %s does not default to %q", param, want)
		}
	}
}

// between returns the text of src between the first from and the next to.
func between(t *testing.T, src, from, to string) string {
	t.Helper()
	_, rest, ok := strings.Cut(src, from)
	if !ok {
		t.Fatalf("%q not found in the template", from)
	}
	out, _, ok := strings.Cut(rest, to)
	if !ok {
		t.Fatalf("%q not found after %q", to, from)
	}
	return out
}
