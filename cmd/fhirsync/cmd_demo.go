package main

import (
	"context"
	crand "crypto/rand"
	"encoding/base64"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"time"

	"gopkg.in/yaml.v3"
	"gorm.io/gorm"

	"github.com/fhirsync/fhirsync/admin"
	"github.com/fhirsync/fhirsync/agent/crm"
	"github.com/fhirsync/fhirsync/agent/fhir"
	"github.com/fhirsync/fhirsync/maps"
	"github.com/fhirsync/fhirsync/maps/starter"
	"github.com/fhirsync/fhirsync/queues/embedded"
	"github.com/fhirsync/fhirsync/sandbox/crmserver"
	"github.com/fhirsync/fhirsync/sandbox/fhirserver"
	"github.com/fhirsync/fhirsync/sandbox/synth"
)

// demoHumanToken is the care coordinator's bearer token on both sandboxes:
// the simulator edits with it, so its changes are people's edits, not
// fhirsync's own writes.
const demoHumanToken = crmserver.CoordinatorToken

func runDemo(ctx context.Context, e *env, args []string) error {
	fs := e.newFlagSet("demo", "demo [--config FILE] [--listen ADDR] [--data-dir DIR] [--patients N] [--edits-per-second R] [--keep]", `
Run a complete fhirsync on one machine: a sandbox FHIR server and a sandbox
Dataverse-style CRM with synthetic patients, the starter maps published, the
embedded queue and SQLite in a temporary data directory, the agent syncing
both ways, and a simulator that keeps editing records on both sides so the
syncing is visible in the admin app. Prints the admin URL and a login.

--config FILE overlays the demo's own settings with the file's (log, agent,
feeds, admin, logs, alerts, database, data_dir, listen…). Keys that would
point the demo away from its sandboxes (fhir.base_url, fhir.auth,
crm.base_url, crm.auth, crm.users, agent.crm_user_id, queue.kind,
queue.service_bus) are refused. FHIRSYNC_CONFIG and the other FHIRSYNC_
variables are not read, so a production environment in the shell never
points the demo at production services. Flags given win over the file.`)
	listen := fs.String("listen", "127.0.0.1:8080", "admin app address")
	patients := fs.Int("patients", 300, "synthetic patients to seed the FHIR sandbox with")
	rate := fs.Float64("edits-per-second", 1, "simulated edits per second on each side (0 turns the simulator off)")
	keep := fs.Bool("keep", false, "keep the temporary data directory at exit")
	dataDir := fs.String("data-dir", "", "use this data directory instead of a temporary one (created, mode 0700, if missing; kept at exit)")
	if done, err := parseFlags(fs, args); done {
		return err
	}
	if *patients < 0 || *patients > 100000 || *rate < 0 {
		return usageErrorf("demo: --patients must be 0..100000 and --edits-per-second not negative")
	}
	set := map[string]bool{}
	fs.Visit(func(f *flag.Flag) { set[f.Name] = true })
	cfg, fileKeys, err := demoConfig(e.configPath)
	if err != nil {
		return err
	}
	if set["listen"] || !fileKeys["listen"] {
		cfg.Listen = *listen
	}
	if e.logFormat != "" {
		cfg.Log.Format = e.logFormat
	}
	dir := *dataDir
	if dir == "" && fileKeys["data_dir"] {
		dir = cfg.DataDir
	}
	if dir == "" {
		d, err := os.MkdirTemp("", "fhirsync-demo-")
		if err != nil {
			return err
		}
		dir = d
		if !*keep {
			defer os.RemoveAll(dir)
		}
	} else if err := os.MkdirAll(dir, 0o700); err != nil {
		return fmt.Errorf("creating the demo data directory: %w", err)
	}
	cfg.DataDir = dir
	if probs := cfg.Validate(); len(probs) > 0 {
		return &ConfigError{Problems: probs}
	}
	tuneCollector(e.getenv)
	e.cfg = &cfg
	log := e.logger()

	// The sandboxes, each on its own loopback port.
	fhirSrv, err := fhirserver.New(fhirserver.Options{Path: filepath.Join(dir, "sandbox-fhir.db"), Seed: 1, Patients: *patients,
		Encounters: 1, Observations: 2, Clients: fhirserver.SandboxClients(), Logger: log})
	if err != nil {
		return fmt.Errorf("starting the sandbox FHIR server: %w", err)
	}
	defer fhirSrv.Close()
	fhirURL, stopFHIR, err := serveLoopback(ctx, fhirSrv)
	if err != nil {
		return err
	}
	defer stopFHIR()
	cfg.FHIR.BaseURL = fhirURL

	// The CRM's service endpoint posts to the agent's crm-changes queue,
	// which lives in the demo database; open it before the CRM starts.
	db, err := e.openDB(ctx)
	if err != nil {
		return err
	}
	crmQ, err := embedded.New(db, cfg.Queue.CRMChanges, embedded.Options{MaxDeliveryCount: 50})
	if err != nil {
		return err
	}
	crmSrv, err := crmserver.New(crmserver.Options{Tokens: crmserver.SandboxTokens(), Endpoint: crmQ, EndpointImages: true, Logger: log})
	if err != nil {
		return fmt.Errorf("starting the sandbox CRM: %w", err)
	}
	crmURL, stopCRM, err := serveLoopback(ctx, crmSrv)
	if err != nil {
		return err
	}
	defer stopCRM()
	cfg.CRM.BaseURL = crmURL

	if err := publishStarterIfEmpty(ctx, db, log); err != nil {
		return err
	}
	email, password, err := demoLogin(ctx, db)
	if err != nil {
		return err
	}
	return serve(ctx, e, &cfg, func(addr string, _ *gorm.DB) {
		fmt.Fprintf(e.stdout, `
fhirsync demo is running.

  Admin app   http://%s
  Sign in     %s  /  %s
  FHIR        %s   (sandbox, %d synthetic patients)
  CRM         %s   (sandbox, Dataverse Web API shape)
  Data        %s

The simulator edits records on both sides as the care coordinator; watch
the sync log fill. Ctrl-C stops.
`, addr, email, password, fhirURL, *patients, crmURL+"/api/data/v9.2/", dir)
		printSandboxIdentities(e.stdout)
		if *rate > 0 {
			sim, err := newSimulator(fhirURL, crmURL, *patients)
			if err != nil {
				log.Error("simulator not started", "error", err)
				return
			}
			go sim.run(ctx, log, *rate)
		}
	})
}

// demoRefusedKeys are the configuration keys the demo sets itself to reach
// its sandboxes; a --config file setting them is refused, not ignored.
var demoRefusedKeys = []string{
	"fhir.base_url", "fhir.auth", "crm.base_url", "crm.auth", "crm.users",
	"agent.crm_user_id", "queue.kind", "queue.service_bus",
}

// demoConfig is the demo's configuration: its own defaults (the sandbox
// identities, quick feeds, a fresh sync-log key) overlaid with the YAML file
// at path, if any. It reports the keys the file sets. The environment is
// not read. Validation waits for the data directory.
func demoConfig(path string) (Config, map[string]bool, error) {
	cfg := defaultConfig()
	cfg.Log.Format = "text"
	useSandboxAgent(&cfg)
	cfg.Feeds.FHIRHistory = FHIRHistoryConfig{Types: []string{"Organization", "Practitioner", "Patient", "Encounter", "Observation"},
		Schedule: "@every 5s", Overlap: 30 * time.Second}
	cfg.ShutdownTimeout = 10 * time.Second
	var secret [24]byte
	_, _ = crand.Read(secret[:])
	cfg.Logs.KeySecret = base64.StdEncoding.EncodeToString(secret[:])
	keys := map[string]bool{}
	if path == "" {
		return cfg, keys, nil
	}
	raw, err := os.ReadFile(path)
	if err != nil {
		return cfg, keys, &ConfigError{[]string{fmt.Sprintf("reading config file: %v", err)}}
	}
	var root yaml.Node
	if err := yaml.Unmarshal(raw, &root); err != nil {
		return cfg, keys, &ConfigError{[]string{fmt.Sprintf("%s: %v", path, err)}}
	}
	if len(root.Content) > 0 {
		yamlKeys(root.Content[0], "", keys)
	}
	var probs []string
	for _, k := range demoRefusedKeys {
		if keys[k] {
			probs = append(probs, fmt.Sprintf("%s: %s is set by the demo to reach its sandboxes; remove it from the file, or run fhirsync serve to use your own", path, k))
		}
	}
	probs = append(probs, decodeConfigFile(path, raw, &cfg)...)
	if len(probs) > 0 {
		return cfg, keys, &ConfigError{Problems: probs}
	}
	return cfg, keys, nil
}

// yamlKeys records the dotted path of every mapping key under n.
func yamlKeys(n *yaml.Node, prefix string, keys map[string]bool) {
	if n.Kind != yaml.MappingNode {
		return
	}
	for i := 0; i+1 < len(n.Content); i += 2 {
		k := prefix + n.Content[i].Value
		keys[k] = true
		yamlKeys(n.Content[i+1], k+".", keys)
	}
}

// serveLoopback serves h on a free loopback port.
func serveLoopback(ctx context.Context, h http.Handler) (string, func(), error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", nil, err
	}
	srv := newHTTPServer(h, defaultTimeouts)
	go func() { _ = srv.Serve(ln) }()
	return "http://" + ln.Addr().String(), func() {
		sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
		defer cancel()
		_ = srv.Shutdown(sctx)
	}, nil
}

// publishStarterIfEmpty publishes the starter map set on a database that
// has none.
func publishStarterIfEmpty(ctx context.Context, db *gorm.DB, log *slog.Logger) error {
	ms, err := maps.New(db, maps.Options{Logger: log})
	if err != nil {
		return err
	}
	if _, err := ms.Current(ctx); err == nil {
		return nil
	} else if !errors.Is(err, maps.ErrNotFound) {
		return err
	}
	doc, _, err := maps.Import(starter.YAML(), maps.CompileOptions{})
	if err != nil {
		return fmt.Errorf("importing the starter maps: %w", err)
	}
	v, err := ms.CreateDraft(ctx, doc, "demo", "starter map set")
	if err != nil {
		return err
	}
	_, err = ms.Publish(ctx, v.Number, "demo", "starter map set")
	return err
}

// demoLogin creates (or resets) the demo administrator.
func demoLogin(ctx context.Context, db *gorm.DB) (string, string, error) {
	const email = "admin@demo.local"
	users, err := admin.NewUsers(db)
	if err != nil {
		return "", "", err
	}
	var b [12]byte
	_, _ = crand.Read(b[:])
	pw := base64.RawURLEncoding.EncodeToString(b[:])
	if u, err := users.ByEmail(ctx, email); err == nil {
		return email, pw, users.SetPassword(ctx, "demo", u.ID, pw, false)
	}
	_, err = users.Create(ctx, "demo", admin.NewUser{Email: email, Name: "Demo administrator", Role: admin.RoleAdmin, PHI: true, Password: pw})
	return email, pw, err
}

// simulator keeps editing as a person would: patients' home phones in
// FHIR and contacts' emails in the CRM, both as the care coordinator, so
// the agent syncs each edit instead of taking it for its own write.
type simulator struct {
	fhir     *fhir.Client
	crm      *crm.Client
	patients int
}

func newSimulator(fhirURL, crmURL string, patients int) (*simulator, error) {
	fc, err := fhir.New(fhir.Config{BaseURL: fhirURL, BearerToken: fhirserver.CoordinatorToken})
	if err != nil {
		return nil, fmt.Errorf("simulator: FHIR client: %w", err)
	}
	cc, err := crm.New(crm.Config{URL: crmURL, Auth: crm.AuthBearer, Token: demoHumanToken})
	if err != nil {
		return nil, fmt.Errorf("simulator: CRM client: %w", err)
	}
	return &simulator{fhir: fc, crm: cc, patients: patients}, nil
}

// run makes rate edits per second on each side until ctx ends.
func (s *simulator) run(ctx context.Context, log *slog.Logger, rate float64) {
	t := time.NewTicker(time.Duration(float64(time.Second) / rate))
	defer t.Stop()
	for n := 0; ; n++ {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		fhirErr, crmErr := s.step(ctx, n)
		if fhirErr != nil && ctx.Err() == nil {
			log.Debug("simulator: FHIR edit skipped", "error", fhirErr)
		}
		if crmErr != nil && ctx.Err() == nil {
			log.Debug("simulator: CRM edit skipped", "error", crmErr)
		}
	}
}

// step makes the n-th edit on each side.
func (s *simulator) step(ctx context.Context, n int) (fhirErr, crmErr error) {
	if s.patients > 0 {
		fhirErr = editPatient(ctx, s.fhir, synth.PatientID(rand.IntN(s.patients)), n)
	}
	return fhirErr, editContact(ctx, s.crm, n)
}

func editPatient(ctx context.Context, c *fhir.Client, id string, n int) error {
	res, err := c.Read(ctx, "Patient", id)
	if err != nil {
		return err
	}
	tel, _ := res["telecom"].([]any)
	tel = append([]any{}, tel...)
	phone := map[string]any{"system": "phone", "use": "home", "value": fmt.Sprintf("+1-555-01%02d-%04d", n%100, rand.IntN(10000))}
	replaced := false
	for i, x := range tel {
		if m, ok := x.(map[string]any); ok && m["system"] == "phone" && m["use"] == "home" {
			tel[i], replaced = phone, true
		}
	}
	if !replaced {
		tel = append(tel, phone)
	}
	res["telecom"] = tel
	_, err = c.Update(ctx, res, res.VersionID())
	return err
}

func editContact(ctx context.Context, c *crm.Client, n int) error {
	var ids []string
	err := c.RetrieveMultiple(ctx, "contacts", crm.Query{Select: []string{"contactid"}, Filter: "msemr_contacttype eq 935000000", Top: 50},
		func(r crm.Record) error { ids = append(ids, r.String("contactid")); return nil })
	if err != nil || len(ids) == 0 {
		return err
	}
	id := ids[rand.IntN(len(ids))]
	_, err = c.Upsert(ctx, crm.ByID("contacts", id), crm.Record{"emailaddress1": fmt.Sprintf("coordinator.%d@example.org", n)},
		crm.UpsertOptions{Mode: crm.UpdateOnly})
	return err
}
