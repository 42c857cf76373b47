package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/Azure/azure-sdk-for-go/sdk/azcore"
	sbadmin "github.com/Azure/azure-sdk-for-go/sdk/messaging/azservicebus/admin"

	"github.com/fhirsync/fhirsync/agent/crm"
	"github.com/fhirsync/fhirsync/maps"
	"github.com/fhirsync/fhirsync/queues"
	"github.com/fhirsync/fhirsync/queues/servicebus/sbtest"
	"github.com/fhirsync/fhirsync/sandbox/crmserver"
	"github.com/fhirsync/fhirsync/sandbox/fhirserver"
	"github.com/fhirsync/fhirsync/storage"
	"github.com/fhirsync/fhirsync/storage/storagetest"
)

// doctorSetup is a configuration file pointing at a migrated SQLite
// database with the starter maps published, the sandbox CRM (answering
// only its agent token, with a webhook service endpoint for
// feeds.dataverse_webhook and its steps) and the sandbox FHIR server, both
// on loopback.
type doctorSetup struct {
	dir, dbPath     string
	fhirURL, crmURL string
	token           string
	extra           string
	crm             *crmserver.Server
	// dbURL, when set, is database.url instead of the SQLite file dbPath.
	dbURL string
	// crmUsers, when set, replaces crm.auth with these crm.users entries
	// (YAML list items).
	crmUsers string
}

// doctorWebhookPath is the configuration's feeds.dataverse_webhook.path,
// and the path of the sandbox CRM's webhook URL.
const doctorWebhookPath = "/hooks/dataverse"

func newDoctorSetup(t *testing.T, crmOpts crmserver.Options) *doctorSetup {
	t.Helper()
	return newDoctorSetupOn(t, crmOpts, "")
}

// newDoctorSetupOn is newDoctorSetup with the database at dbURL (empty: a
// SQLite file in the test's directory).
func newDoctorSetupOn(t *testing.T, crmOpts crmserver.Options, dbURL string) *doctorSetup {
	t.Helper()
	s := &doctorSetup{dir: t.TempDir(), token: crmserver.AgentToken, dbURL: dbURL}
	s.dbPath = filepath.Join(s.dir, "fhirsync.db")
	if dbURL == "" {
		openStarterDB(t, "sqlite:"+s.dbPath)
	} else {
		openStarterDB(t, dbURL)
	}
	fs, err := fhirserver.New(fhirserver.Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { fs.Close() })
	fhirHTTP := httptest.NewServer(fs)
	t.Cleanup(fhirHTTP.Close)
	s.fhirURL = fhirHTTP.URL
	crmOpts.Tokens = crmserver.SandboxTokens()
	if crmOpts.Webhook.URL == "" {
		// Registered only: the doctor writes nothing, so nothing is posted.
		crmOpts.Webhook = crmserver.WebhookTarget{URL: "https://fhirsync.example.org" + doctorWebhookPath, Key: "doctor-webhook-key-0123"}
	}
	cs, err := crmserver.New(crmOpts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cs.Close() })
	s.crm = cs
	crmHTTP := httptest.NewServer(cs)
	t.Cleanup(crmHTTP.Close)
	s.crmURL = crmHTTP.URL
	return s
}

// doctor writes the configuration file and runs fhirsync doctor on it.
func (s *doctorSetup) doctor(t *testing.T) (out string, code int) {
	t.Helper()
	dbURL := s.dbURL
	if dbURL == "" {
		dbURL = "sqlite:" + s.dbPath
	}
	crmAuth := "  auth:\n    method: bearer\n    token: " + s.token
	if s.crmUsers != "" {
		crmAuth = "  users:\n" + s.crmUsers
	}
	cfg := fmt.Sprintf(`data_dir: %s
database:
  url: %s
fhir:
  base_url: %s
crm:
  base_url: %s
%s
feeds:
  crm_tracking:
    entities: [contact]
  dataverse_webhook:
    path: %s
    key: doctor-webhook-key-0123
%s`, s.dir, dbURL, s.fhirURL, s.crmURL, crmAuth, doctorWebhookPath, s.extra)
	path := filepath.Join(s.dir, "fhirsync.yaml")
	if err := os.WriteFile(path, []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
	var stdout, stderr bytes.Buffer
	err := run(context.Background(), []string{"doctor", "--config", path}, envFrom(nil), &stdout, &stderr)
	code = exitCode(err, &stderr)
	if strings.Contains(stdout.String(), s.token) && s.token != "" {
		t.Errorf("doctor printed the CRM token:\n%s", stdout.String())
	}
	return stdout.String(), code
}

// doctorLine returns the line of doctor's output starting with prefix and
// two spaces, e.g. "ok   crm" or "FAIL crm table contact".
func doctorLine(out, prefix string) string {
	for _, l := range strings.Split(out, "\n") {
		if strings.HasPrefix(l, prefix+"  ") {
			return l
		}
	}
	return ""
}

func TestDoctorAllChecksPassAgainstSandboxes(t *testing.T) {
	t.Parallel()
	s := newDoctorSetup(t, crmserver.Options{})
	out, code := s.doctor(t)
	t.Logf("fhirsync doctor:\n%s", out)
	if code != 0 {
		t.Fatalf("doctor exited %d:\n%s", code, out)
	}
	for _, want := range []string{"ok   database", "ok   queue", "ok   maps", "ok   crm", "ok   crm table contact", "ok   crm privileges contact",
		"ok   crm privileges msemr_medicalidentifier", "ok   crm steps contact", "ok   fhir", "ok   clock"} {
		if doctorLine(out, want) == "" {
			t.Errorf("no %q line:\n%s", want, out)
		}
	}
	if strings.Contains(out, "FAIL") || strings.Contains(out, "skip") {
		t.Errorf("a check failed or was skipped:\n%s", out)
	}
	if l := doctorLine(out, "ok   database"); !strings.Contains(l, fmt.Sprintf("schema %d", storage.LatestVersion())) {
		t.Errorf("database line lacks the schema version: %q", l)
	}
	if l := doctorLine(out, "ok   fhir"); !strings.Contains(l, "_history for") || !strings.Contains(l, "Patient") {
		t.Errorf("fhir line does not name the _history types: %q", l)
	}
	if l := doctorLine(out, "ok   crm privileges contact"); !strings.Contains(l, "Read, Create, Write, Delete, Append, AppendTo at Organization level") {
		t.Errorf("contact privileges line: %q", l)
	}
	if l := doctorLine(out, "ok   crm steps contact"); !strings.Contains(l, `Create, Update steps on service endpoint "fhirsync webhook"`) {
		t.Errorf("contact steps line: %q", l)
	}
}

// TestDoctorBrokenSetups breaks one dependency at a time; each fails its
// own check with its own message and the others still pass.
func TestDoctorBrokenSetups(t *testing.T) {
	t.Parallel()
	noContactKey := func() crmserver.Options {
		ents := crmserver.DefaultEntities()
		for _, e := range ents {
			if e.LogicalName == "contact" {
				e.Keys = nil
			}
		}
		return crmserver.Options{Entities: ents}
	}
	noTracking := func() crmserver.Options {
		ents := crmserver.DefaultEntities()
		for _, e := range ents {
			if e.LogicalName == "contact" {
				e.ChangeTracking = false
			}
		}
		return crmserver.Options{Entities: ents}
	}
	tests := []struct {
		name     string
		crm      func() crmserver.Options
		breakIt  func(t *testing.T, s *doctorSetup)
		area     string // the failing check's line prefix
		wantMsg  []string
		alsoPass []string
	}{
		{
			name:     "wrong CRM secret",
			breakIt:  func(t *testing.T, s *doctorSetup) { s.token = "not-the-agent-token" },
			area:     "FAIL crm",
			wantMsg:  []string{"token refused (401)", "check crm.auth.token"},
			alsoPass: []string{"ok   database", "ok   queue", "ok   maps", "ok   fhir"},
		},
		{
			name: "embedded queue table missing",
			breakIt: func(t *testing.T, s *doctorSetup) {
				db, err := storage.Open(context.Background(), "sqlite:"+s.dbPath, storage.Options{})
				if err != nil {
					t.Fatal(err)
				}
				defer storage.Close(db)
				if err := db.Exec(`DROP TABLE queue_messages`).Error; err != nil {
					t.Fatal(err)
				}
			},
			area:     "FAIL queue",
			wantMsg:  []string{"table queue_messages missing", "fhirsync migrate"},
			alsoPass: []string{"ok   database", "ok   maps", "ok   crm", "ok   fhir"},
		},
		{
			name:     "missing alternate key",
			crm:      noContactKey,
			area:     "FAIL crm table contact",
			wantMsg:  []string{"no alternate key on msemr_azurefhirid", "add an alternate key"},
			alsoPass: []string{"ok   database", "ok   queue", "ok   maps", "ok   crm", "ok   fhir"},
		},
		{
			name:     "change tracking off on a polled table",
			crm:      noTracking,
			area:     "FAIL crm table contact",
			wantMsg:  []string{"change tracking is off", "Track changes"},
			alsoPass: []string{"ok   database", "ok   queue", "ok   maps", "ok   crm", "ok   fhir"},
		},
		{
			name: "FHIR server without _history for Patient",
			breakIt: func(t *testing.T, s *doctorSetup) {
				s.fhirURL = withoutPatientHistory(t, s.fhirURL)
			},
			area:     "FAIL fhir",
			wantMsg:  []string{"does not support _history (history-type) for Patient", "enable versioning and history"},
			alsoPass: []string{"ok   database", "ok   queue", "ok   maps", "ok   crm"},
		},
		{
			name: "FHIR server that does not let Patient be updated",
			breakIt: func(t *testing.T, s *doctorSetup) {
				s.fhirURL = editedCapabilities(t, s.fhirURL, func(res map[string]any) {
					var kept []any
					for _, i := range res["interaction"].([]any) {
						if i.(map[string]any)["code"] != "update" {
							kept = append(kept, i)
						}
					}
					res["interaction"] = kept
				})
			},
			area:     "FAIL fhir",
			wantMsg:  []string{"does not support what the maps write: Patient update", "crmToFHIR"},
			alsoPass: []string{"ok   database", "ok   queue", "ok   maps", "ok   crm"},
		},
		{
			name: "FHIR server clock 10s ahead of the CRM",
			breakIt: func(t *testing.T, s *doctorSetup) {
				target, _ := url.Parse(s.fhirURL)
				p := httputil.NewSingleHostReverseProxy(target)
				p.ModifyResponse = func(res *http.Response) error {
					res.Header.Set("Date", time.Now().Add(10*time.Second).UTC().Format(http.TimeFormat))
					return nil
				}
				srv := httptest.NewServer(p)
				t.Cleanup(srv.Close)
				s.fhirURL = srv.URL
			},
			area:     "FAIL clock",
			wantMsg:  []string{"the FHIR server ahead", "more than agent.conflict_skew 2s", "NTP"},
			alsoPass: []string{"ok   database", "ok   queue", "ok   maps", "ok   crm", "ok   fhir"},
		},
		{
			name: "application user without the Write privilege on contact",
			breakIt: func(t *testing.T, s *doctorSetup) {
				s.crm.RevokePrivilege(crmserver.AgentUserID, "prvWriteContact")
			},
			area:     "FAIL crm privileges contact",
			wantMsg:  []string{"lacks prvWriteContact on contact", "add Write (prvWriteContact)", "security role at Organization level"},
			alsoPass: []string{"ok   crm", "ok   crm table contact", "ok   crm privileges account", "ok   crm steps contact", "ok   fhir"},
		},
		{
			name: "application user without AppendTo on account (lookups to accounts)",
			breakIt: func(t *testing.T, s *doctorSetup) {
				s.crm.RevokePrivilege(crmserver.AgentUserID, "prvAppendToAccount")
			},
			area:     "FAIL crm privileges account",
			wantMsg:  []string{"lacks prvAppendToAccount on account", "add AppendTo (prvAppendToAccount)"},
			alsoPass: []string{"ok   crm privileges contact", "ok   crm steps contact"},
		},
		{
			name: "application user reading contacts at Basic (own rows) depth",
			breakIt: func(t *testing.T, s *doctorSetup) {
				s.crm.SetPrivilegeDepth(crmserver.AgentUserID, "prvReadContact", "Basic")
			},
			area:     "FAIL crm privileges contact",
			wantMsg:  []string{"holds prvReadContact (Basic) on contact below Organization level", "raise prvReadContact (Basic) to Organization level", "rows owned by others"},
			alsoPass: []string{"ok   crm privileges account", "ok   crm steps contact"},
		},
		{
			name: "no Update step for contact",
			breakIt: func(t *testing.T, s *doctorSetup) {
				s.crm.RemoveStep("contact", "Update")
			},
			area:     "FAIL crm steps contact",
			wantMsg:  []string{"no Update step for contact", "register an asynchronous post-operation step", "for message Update, primary entity contact"},
			alsoPass: []string{"ok   crm privileges contact", "ok   crm steps account", "ok   fhir"},
		},
		{
			name: "contact's step registered for Assign instead of Create",
			breakIt: func(t *testing.T, s *doctorSetup) {
				s.crm.RemoveStep("contact", "Create")
				s.crm.AddStep("contact", "Assign")
			},
			area:     "FAIL crm steps contact",
			wantMsg:  []string{"no Create step for contact", "registered for Delete, Assign instead", "for message Create"},
			alsoPass: []string{"ok   crm privileges contact", "ok   crm steps account"},
		},
		{
			name: "no webhook registered for feeds.dataverse_webhook",
			crm: func() crmserver.Options {
				return crmserver.Options{Webhook: crmserver.WebhookTarget{URL: "https://fhirsync.example.org/hooks/other", Key: "k"}}
			},
			area:     "FAIL crm steps",
			wantMsg:  []string{"no service endpoint found", "whose URL ends in /hooks/dataverse", "Register New WebHook"},
			alsoPass: []string{"ok   crm privileges contact", "ok   fhir"},
		},
		{
			name: "SQLite database file missing",
			breakIt: func(t *testing.T, s *doctorSetup) {
				s.dbPath = filepath.Join(s.dir, "gone", "fhirsync.db")
			},
			area:     "FAIL database",
			wantMsg:  []string{"no database at", "no such file", "fhirsync migrate"},
			alsoPass: []string{"ok   crm", "ok   fhir"},
		},
		{
			name: "maps not published",
			breakIt: func(t *testing.T, s *doctorSetup) {
				db, err := storage.Open(context.Background(), "sqlite:"+s.dbPath, storage.Options{})
				if err != nil {
					t.Fatal(err)
				}
				defer storage.Close(db)
				if err := db.Exec(`DELETE FROM map_publications`).Error; err != nil {
					t.Fatal(err)
				}
			},
			area:     "FAIL maps",
			wantMsg:  []string{"nothing published yet", "maps/starter/starter.yaml"},
			alsoPass: []string{"ok   database", "ok   queue", "ok   crm"},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			opts := crmserver.Options{}
			if tt.crm != nil {
				opts = tt.crm()
			}
			s := newDoctorSetup(t, opts)
			if tt.breakIt != nil {
				tt.breakIt(t, s)
			}
			out, code := s.doctor(t)
			t.Logf("fhirsync doctor:\n%s", out)
			if code != 1 {
				t.Errorf("doctor exited %d, want 1:\n%s", code, out)
			}
			line := doctorLine(out, tt.area)
			if line == "" {
				t.Fatalf("no %q line:\n%s", tt.area, out)
			}
			for _, w := range tt.wantMsg {
				if !strings.Contains(line, w) {
					t.Errorf("%q lacks %q", line, w)
				}
			}
			if strings.Count(out, "FAIL") != 1 {
				t.Errorf("want exactly one failed check:\n%s", out)
			}
			for _, p := range tt.alsoPass {
				if doctorLine(out, p) == "" {
					t.Errorf("no %q line:\n%s", p, out)
				}
			}
		})
	}
}

// TestDoctorPostgresUnreachable points database.url at a closed port.
func TestDoctorPostgresUnreachable(t *testing.T) {
	t.Parallel()
	s := newDoctorSetup(t, crmserver.Options{})
	cfg := fmt.Sprintf("database:\n  url: postgres://fhirsync:hunter2@127.0.0.1:%s/test?sslmode=disable\n", closedPort(t))
	path := filepath.Join(s.dir, "pg.yaml")
	if err := os.WriteFile(path, []byte(cfg+fmt.Sprintf("fhir:\n  base_url: %s\ncrm:\n  base_url: %s\n  auth:\n    method: bearer\n    token: %s\n", s.fhirURL, s.crmURL, s.token)), 0o600); err != nil {
		t.Fatal(err)
	}
	var stdout, stderr bytes.Buffer
	code := exitCode(run(context.Background(), []string{"doctor", "--config", path}, envFrom(nil), &stdout, &stderr), &stderr)
	out := stdout.String()
	t.Logf("fhirsync doctor:\n%s", out)
	if code != 1 {
		t.Errorf("doctor exited %d:\n%s", code, out)
	}
	line := doctorLine(out, "FAIL database")
	if !strings.Contains(line, "unreachable") || !strings.Contains(line, "check database.url") {
		t.Errorf("database line: %q\n%s", line, out)
	}
	if strings.Contains(out, "hunter2") {
		t.Errorf("doctor printed the database password:\n%s", out)
	}
	for _, want := range []string{"skip queue", "skip maps", "ok   crm", "ok   fhir"} {
		if doctorLine(out, want) == "" {
			t.Errorf("no %q line:\n%s", want, out)
		}
	}
}

func closedPort(t *testing.T) string {
	t.Helper()
	addr := freePort(t)
	_, port, _ := strings.Cut(addr, ":")
	return port
}

// withoutPatientHistory serves the FHIR sandbox behind a proxy whose
// CapabilityStatement drops Patient's history-type interaction.
func withoutPatientHistory(t *testing.T, base string) string {
	t.Helper()
	return editedCapabilities(t, base, func(res map[string]any) {
		var kept []any
		for _, i := range res["interaction"].([]any) {
			if c := i.(map[string]any)["code"]; c != "history-type" && c != "history-instance" {
				kept = append(kept, i)
			}
		}
		res["interaction"] = kept
	})
}

// editedCapabilities serves the FHIR sandbox behind a proxy whose
// CapabilityStatement's Patient resource is changed by edit.
func editedCapabilities(t *testing.T, base string, edit func(patient map[string]any)) string {
	t.Helper()
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		req, err := http.NewRequestWithContext(r.Context(), r.Method, base+r.URL.RequestURI(), r.Body)
		if err != nil {
			http.Error(w, err.Error(), 500)
			return
		}
		req.Header = r.Header.Clone()
		res, err := http.DefaultClient.Do(req)
		if err != nil {
			http.Error(w, err.Error(), 502)
			return
		}
		defer res.Body.Close()
		body, _ := io.ReadAll(res.Body)
		if r.URL.Path == "/metadata" {
			var cs map[string]any
			if err := json.Unmarshal(body, &cs); err != nil {
				http.Error(w, err.Error(), 500)
				return
			}
			for _, rest := range cs["rest"].([]any) {
				for _, x := range rest.(map[string]any)["resource"].([]any) {
					res := x.(map[string]any)
					if res["type"] != "Patient" {
						continue
					}
					edit(res)
				}
			}
			body, _ = json.Marshal(cs)
		}
		for k, v := range res.Header {
			if k != "Content-Length" {
				w.Header()[k] = v
			}
		}
		w.WriteHeader(res.StatusCode)
		_, _ = w.Write(body)
	}))
	t.Cleanup(srv.Close)
	return srv.URL
}

// sbQueue is a queue as the fake administration API describes it.
type sbQueue struct {
	sessions, deadLetterOnExpiry bool
	lock                         string // ISO 8601, e.g. PT1M
	maxDeliveries                int
}

// goodQueue has the properties fhirsync expects.
var goodQueue = sbQueue{sessions: true, deadLetterOnExpiry: true, lock: "PT1M", maxDeliveries: 10}

// TestDoctorServiceBusQueues runs the Service Bus checks' administration
// client against a server answering as the Service Bus ATOM management API
// does: a queue's QueueDescription entry, or an empty feed for a queue that
// does not exist; 401 for a key it does not know and 403 for one without
// Manage rights. (The repository's fake Service Bus speaks AMQP only; it
// has no management endpoint.)
func TestDoctorServiceBusQueues(t *testing.T) {
	t.Parallel()
	queues := map[string]sbQueue{}
	authStatus := 0 // 0: accept
	srv := httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Header.Get("Authorization") == "" {
			http.Error(w, "no token", http.StatusUnauthorized)
			return
		}
		if authStatus != 0 {
			w.Header().Set("Content-Type", "application/xml; charset=utf-8")
			w.WriteHeader(authStatus)
			fmt.Fprintf(w, `<Error><Code>%d</Code><Detail>refused by the test server</Detail></Error>`, authStatus)
			return
		}
		name := strings.TrimPrefix(r.URL.Path, "/")
		w.Header().Set("Content-Type", "application/atom+xml;type=entry;charset=utf-8")
		q, ok := queues[name]
		if !ok {
			fmt.Fprintf(w, `<feed xmlns="http://www.w3.org/2005/Atom"><title type="text">Publicly Listed Services</title><id>uuid:1</id><updated>2026-01-01T00:00:00Z</updated></feed>`)
			return
		}
		fmt.Fprintf(w, `<entry xmlns="http://www.w3.org/2005/Atom"><id>https://%s/%s</id><title type="text">%s</title><updated>2026-01-01T00:00:00Z</updated>`+
			`<content type="application/xml"><QueueDescription xmlns="http://schemas.microsoft.com/netservices/2010/10/servicebus/connect" xmlns:i="http://www.w3.org/2001/XMLSchema-instance">`+
			`<LockDuration>%s</LockDuration><MaxSizeInMegabytes>1024</MaxSizeInMegabytes><RequiresDuplicateDetection>false</RequiresDuplicateDetection>`+
			`<RequiresSession>%t</RequiresSession><DefaultMessageTimeToLive>P14D</DefaultMessageTimeToLive><DeadLetteringOnMessageExpiration>%t</DeadLetteringOnMessageExpiration>`+
			`<DuplicateDetectionHistoryTimeWindow>PT10M</DuplicateDetectionHistoryTimeWindow><MaxDeliveryCount>%d</MaxDeliveryCount><EnableBatchedOperations>true</EnableBatchedOperations>`+
			`<Status>Active</Status><AutoDeleteOnIdle>P10675199DT2H48M5.4775807S</AutoDeleteOnIdle><EnablePartitioning>false</EnablePartitioning></QueueDescription></content></entry>`,
			r.Host, name, name, q.lock, q.sessions, q.deadLetterOnExpiry, q.maxDeliveries)
	}))
	t.Cleanup(srv.Close)
	host := strings.TrimPrefix(srv.URL, "https://")
	const key = "c2VjcmV0LWtleS1ub3QtcHJpbnRlZA=="
	check := func(t *testing.T, qs map[string]sbQueue) string {
		t.Helper()
		for k := range queues {
			delete(queues, k)
		}
		for k, v := range qs {
			queues[k] = v
		}
		cfg := defaultConfig()
		cfg.Queue.Kind = "servicebus"
		cfg.Queue.ServiceBus.ConnectionString = "Endpoint=sb://" + host + "/;SharedAccessKeyName=RootManageSharedAccessKey;SharedAccessKey=" + key
		var out bytes.Buffer
		d := &doctor{cfg: &cfg, out: &out, sbOptions: &sbadmin.ClientOptions{ClientOptions: azcore.ClientOptions{Transport: srv.Client()}}}
		d.queue(context.Background())
		t.Logf("doctor's queue checks:\n%s", out.String())
		if strings.Contains(out.String(), key) {
			t.Errorf("the key was printed")
		}
		return out.String()
	}
	with := func(change func(q *sbQueue)) sbQueue {
		q := goodQueue
		change(&q)
		return q
	}
	// The subtests share the server's queue table, so they run in order.
	t.Run("both queues as fhirsync expects", func(t *testing.T) {
		out := check(t, map[string]sbQueue{"fhir-changes": goodQueue, "crm-changes": goodQueue})
		if l := doctorLine(out, "ok   servicebus"); !strings.Contains(l, "shared access policy RootManageSharedAccessKey accepted by "+host) {
			t.Errorf("servicebus line: %q", l)
		}
		for _, q := range []string{"fhir-changes", "crm-changes"} {
			if l := doctorLine(out, "ok   queue "+q); !strings.Contains(l, "sessions on, lock 1m0s, max deliveries 10, dead-lettering on expiry") {
				t.Errorf("queue %s: %q", q, l)
			}
		}
		if strings.Contains(out, "FAIL") {
			t.Errorf("a check failed:\n%s", out)
		}
	})
	tests := []struct {
		name      string
		fhirQueue *sbQueue // nil: missing
		auth      int
		line      string
		want      []string
	}{
		{name: "missing queue", line: "FAIL queue fhir-changes", want: []string{"queue fhir-changes does not exist", "create it with sessions"}},
		{name: "queue without sessions", fhirQueue: ptr(with(func(q *sbQueue) { q.sessions = false })), line: "FAIL queue fhir-changes",
			want: []string{"is not session-enabled", "recreate it"}},
		{name: "lock of 10 seconds", fhirQueue: ptr(with(func(q *sbQueue) { q.lock = "PT10S" })), line: "FAIL queue fhir-changes",
			want: []string{"locks messages for 10s only", "lock duration (lockDuration) to at least 30s"}},
		{name: "max delivery count 5", fhirQueue: ptr(with(func(q *sbQueue) { q.maxDeliveries = 5 })), line: "FAIL queue fhir-changes",
			want: []string{"max delivery count 5", "maxDeliveryCount) to 10"}},
		{name: "no dead-lettering on expiry", fhirQueue: ptr(with(func(q *sbQueue) { q.deadLetterOnExpiry = false })), line: "FAIL queue fhir-changes",
			want: []string{"drops expired messages", "deadLetteringOnMessageExpiration"}},
		{name: "key refused", fhirQueue: &goodQueue, auth: http.StatusUnauthorized, line: "FAIL servicebus",
			want: []string{"refused the credentials (401)", "SharedAccessKeyName and SharedAccessKey"}},
		// A 403 falls back to opening sender links over AMQP, which this
		// HTTPS-only server does not answer.
		{name: "key without Manage", fhirQueue: &goodQueue, auth: http.StatusForbidden, line: "FAIL servicebus",
			want: []string{"did not answer", "refused to show queue properties (403)", "Manage rights or the Azure Service Bus Data Owner role"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			authStatus = tt.auth
			defer func() { authStatus = 0 }()
			qs := map[string]sbQueue{"crm-changes": goodQueue}
			if tt.fhirQueue != nil {
				qs["fhir-changes"] = *tt.fhirQueue
			}
			out := check(t, qs)
			l := doctorLine(out, tt.line)
			for _, w := range tt.want {
				if !strings.Contains(l, w) {
					t.Errorf("%q lacks %q\n%s", l, w, out)
				}
			}
			if strings.Count(out, "FAIL") != 1 {
				t.Errorf("want exactly one failed check:\n%s", out)
			}
			if tt.auth == 0 && doctorLine(out, "ok   queue crm-changes") == "" {
				t.Errorf("the good queue did not pass:\n%s", out)
			}
		})
	}
}

func ptr[T any](v T) *T { return &v }

// TestDoctorOnPostgres runs the good setup with its database on
// PostgreSQL: every check passes; then the agent loses prvDeleteContact
// and only the contact privileges line fails.
func TestDoctorOnPostgres(t *testing.T) {
	t.Parallel()
	s := newDoctorSetupOn(t, crmserver.Options{}, storagetest.URL(t, storage.Postgres))
	out, code := s.doctor(t)
	t.Logf("fhirsync doctor:\n%s", out)
	if code != 0 || strings.Contains(out, "FAIL") || strings.Contains(out, "skip") {
		t.Fatalf("doctor exited %d:\n%s", code, out)
	}
	if l := doctorLine(out, "ok   database"); !strings.Contains(l, "postgres") {
		t.Errorf("database line: %q", l)
	}
	s.crm.RevokePrivilege(crmserver.AgentUserID, "prvDeleteContact")
	out, code = s.doctor(t)
	if l := doctorLine(out, "FAIL crm privileges contact"); code != 1 || !strings.Contains(l, "lacks prvDeleteContact on contact") || strings.Count(out, "FAIL") != 1 {
		t.Errorf("exit %d, want 1 and one failed line naming prvDeleteContact:\n%s", code, out)
	}
}

// TestDoctorChecksEveryCRMUser signs in as two application users
// (crm.users); the second lacks prvCreateAccount, and the account line
// names that user and that privilege.
func TestDoctorChecksEveryCRMUser(t *testing.T) {
	t.Parallel()
	s := newDoctorSetup(t, crmserver.Options{})
	s.crmUsers = fmt.Sprintf("    - name: primary\n      method: bearer\n      token: %s\n    - name: second\n      method: bearer\n      token: %s\n",
		crmserver.AgentToken, crmserver.CoordinatorToken)
	s.crm.RevokePrivilege(crmserver.CoordinatorUserID, "prvCreateAccount")
	out, code := s.doctor(t)
	t.Logf("fhirsync doctor:\n%s", out)
	if code != 1 {
		t.Errorf("doctor exited %d, want 1", code)
	}
	if l := doctorLine(out, "ok   crm"); !strings.Contains(l, "signed in as 2 application user(s)") {
		t.Errorf("crm line: %q", l)
	}
	l := doctorLine(out, "FAIL crm privileges account")
	for _, w := range []string{"the application user second lacks prvCreateAccount on account", "add Create (prvCreateAccount) to the application user second's security role"} {
		if !strings.Contains(l, w) {
			t.Errorf("%q lacks %q", l, w)
		}
	}
	if strings.Contains(l, "primary") || strings.Count(out, "FAIL") != 1 {
		t.Errorf("want one failed line, naming the second user only:\n%s", out)
	}
	if strings.Contains(out, crmserver.CoordinatorToken) {
		t.Errorf("doctor printed a token")
	}
}

// discard is a service-endpoint sender that keeps nothing.
type discard struct{}

func (discard) Send(context.Context, ...queues.Message) error { return nil }

// TestDoctorServiceBusEndpointSteps checks the steps of a Service Bus
// service endpoint: found by its queue path and namespace; another queue
// or namespace is reported as no endpoint.
func TestDoctorServiceBusEndpointSteps(t *testing.T) {
	t.Parallel()
	db := openStarterDB(t, "sqlite:"+filepath.Join(t.TempDir(), "fhirsync.db"))
	ms, err := maps.New(db, maps.Options{Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatal(err)
	}
	set, err := ms.Current(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	cs, err := crmserver.New(crmserver.Options{Tokens: crmserver.SandboxTokens(), Endpoint: discard{}, EndpointPath: "crm-changes"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cs.Close() })
	hs := httptest.NewServer(cs)
	t.Cleanup(hs.Close)
	client, err := crm.New(crmConfig(CRMConfig{BaseURL: hs.URL, Auth: CredentialConfig{Method: "bearer", Token: crmserver.AgentToken}}, nil))
	if err != nil {
		t.Fatal(err)
	}
	steps := func(queue, namespace string) string {
		cfg := defaultConfig()
		cfg.Queue.Kind = "servicebus"
		cfg.Queue.CRMChanges = queue
		cfg.Queue.ServiceBus.Namespace = namespace
		var out bytes.Buffer
		d := &doctor{cfg: &cfg, out: &out, set: set}
		d.crmSteps(context.Background(), client)
		t.Logf("steps checks (queue %s, namespace %s):\n%s", queue, namespace, out.String())
		return out.String()
	}
	out := steps("crm-changes", "sandbox.servicebus.windows.net")
	if l := doctorLine(out, "ok   crm steps contact"); !strings.Contains(l, `Create, Update steps on service endpoint "fhirsync crm-changes"`) || strings.Contains(out, "FAIL") {
		t.Errorf("queue endpoint:\n%s", out)
	}
	// A step on a bulk message runs beside the single message's (merged
	// pipelines): each change would be posted twice.
	cs.AddStep("contact", "CreateMultiple")
	out = steps("crm-changes", "sandbox.servicebus.windows.net")
	if l := doctorLine(out, "FAIL crm steps contact"); !strings.Contains(l, "registered on CreateMultiple") || !strings.Contains(l, "unregister the CreateMultiple step(s) of contact") {
		t.Errorf("a CreateMultiple step:\n%s", out)
	}
	cs.RemoveStep("contact", "CreateMultiple")
	out = steps("crm-other", "sandbox.servicebus.windows.net")
	if l := doctorLine(out, "FAIL crm steps"); !strings.Contains(l, "want a Service Bus queue endpoint (contract Queue) with path crm-other") || !strings.Contains(l, "Register New Service Endpoint") {
		t.Errorf("another queue: %q", l)
	}
	out = steps("crm-changes", "prod.servicebus.windows.net")
	if l := doctorLine(out, "FAIL crm steps"); !strings.Contains(l, "with path crm-changes in namespace prod.servicebus.windows.net") {
		t.Errorf("an endpoint of another namespace was taken:\n%s", out)
	}
}

// TestDoctorServiceBusEmulator runs the Service Bus check against the fake
// Service Bus with an emulator connection string: without an
// administration API, doctor opens a sender link to each queue (the
// credentials, the queue and the Send right) and says the properties were
// not checked; a missing queue fails its own line.
func TestDoctorServiceBusEmulator(t *testing.T) {
	t.Parallel()
	fake := sbtest.Start(t, sbtest.QueueConfig{Name: "fhir-changes", Sessions: true})
	check := func(t *testing.T) string {
		t.Helper()
		cfg := defaultConfig()
		cfg.Queue.Kind = "servicebus"
		cfg.Queue.ServiceBus.ConnectionString = fake.ConnectionString()
		var out bytes.Buffer
		d := &doctor{cfg: &cfg, out: &out}
		ctx, cancel := context.WithTimeout(context.Background(), doctorTimeout)
		defer cancel()
		d.queue(ctx)
		t.Logf("doctor's queue checks:\n%s", out.String())
		return out.String()
	}
	out := check(t)
	if l := doctorLine(out, "ok   servicebus"); !strings.Contains(l, "shared access policy t accepted by") || !strings.Contains(l, "may send to fhir-changes") {
		t.Errorf("servicebus line: %q", l)
	}
	if l := doctorLine(out, "skip queue fhir-changes"); !strings.Contains(l, "exists; sessions, lock duration, max deliveries and dead-lettering not checked: the emulator has no administration API") {
		t.Errorf("fhir-changes line: %q", l)
	}
	if l := doctorLine(out, "FAIL queue crm-changes"); !strings.Contains(l, "queue crm-changes does not exist") || strings.Count(out, "FAIL") != 1 {
		t.Errorf("the missing queue does not fail alone:\n%s", out)
	}
	fake.CreateQueue(t, sbtest.QueueConfig{Name: "crm-changes", Sessions: true})
	out = check(t)
	if strings.Contains(out, "FAIL") || doctorLine(out, "skip queue crm-changes") == "" {
		t.Errorf("with both queues:\n%s", out)
	}
}
