package main

import (
	"context"
	"net/http"
	"net/http/httptest"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/fhirsync/fhirsync/agent/crm"
	"github.com/fhirsync/fhirsync/sandbox/crmserver"
	"github.com/fhirsync/fhirsync/sandbox/fhirserver"
	"github.com/fhirsync/fhirsync/sandbox/synth"
)

// TestSandboxAgentAndCoordinatorAreApart checks the configuration that
// `fhirsync sandbox` and `fhirsync demo` share: the agent calls both
// sandboxes as fhirsync, with a token that the CRM maps to the agent's
// own user id, and the care coordinator has another token and user.
func TestSandboxAgentAndCoordinatorAreApart(t *testing.T) {
	t.Parallel()
	cfg := defaultConfig()
	useSandboxAgent(&cfg)
	crmTokens, fhirClients := crmserver.SandboxTokens(), fhirserver.SandboxClients()
	tests := []struct {
		name       string
		crmToken   string
		fhirToken  string
		wantUser   string
		wantClient string
	}{
		{name: "agent", crmToken: cfg.CRM.Auth.Token, fhirToken: cfg.FHIR.Auth.Token, wantUser: cfg.Agent.CRMUserID, wantClient: fhirserver.AgentClient},
		{name: "coordinator (demo simulator)", crmToken: demoHumanToken, fhirToken: fhirserver.CoordinatorToken,
			wantUser: crmserver.CoordinatorUserID, wantClient: fhirserver.CoordinatorClient},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := crmTokens[tt.crmToken]; got != tt.wantUser {
				t.Errorf("CRM token %q is user %q, want %q", tt.crmToken, got, tt.wantUser)
			}
			if got := fhirClients[tt.fhirToken]; got != tt.wantClient {
				t.Errorf("FHIR token %q is client %q, want %q", tt.fhirToken, got, tt.wantClient)
			}
		})
	}
	if cfg.CRM.Auth.Method != "bearer" || cfg.FHIR.Auth.Method != "bearer" {
		t.Errorf("agent auth methods %q, %q; want bearer on both", cfg.CRM.Auth.Method, cfg.FHIR.Auth.Method)
	}
	if cfg.CRM.Auth.Token == demoHumanToken || cfg.Agent.CRMUserID == crmserver.CoordinatorUserID {
		t.Error("the agent and the care coordinator share a CRM token or user")
	}
	for _, id := range sandboxIdentities {
		if crmTokens[id.token] != id.crmUserID || fhirClients[id.token] != id.fhirClient {
			t.Errorf("%s: token %q is not %s in the CRM and %s in FHIR", id.who, id.token, id.crmUserID, id.fhirClient)
		}
	}
}

// TestSandboxCommandPrintsBothIdentities runs `fhirsync sandbox` and calls
// each server with the tokens it prints: the CRM's WhoAmI answers each
// its own user id, and the FHIR server accepts both and refuses others.
func TestSandboxCommandPrintsBothIdentities(t *testing.T) {
	t.Parallel()
	ctx, cancel := context.WithCancel(context.Background())
	var stdout, stderr syncBuffer
	done := make(chan error, 1)
	go func() {
		done <- run(ctx, []string{"sandbox", "--fhir", "127.0.0.1:0", "--crm", "127.0.0.1:0", "--patients", "1"}, envFrom(nil), &stdout, &stderr)
	}()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("sandbox returned %v", err)
		}
	})
	idLine := regexp.MustCompile(`(?m)^\s+(\S+)\s+.*CRM systemuserid (\S+)$`)
	urlLine := regexp.MustCompile(`(?m)^(FHIR|CRM)\b.*\s(http://\S+)$`)
	var fhirURL, crmURL string
	var ids [][]string
	for deadline := time.Now().Add(30 * time.Second); len(ids) < 2; {
		if time.Now().After(deadline) {
			t.Fatalf("sandbox printed no identities within 30s:\n%s\n%s", stdout.String(), stderr.String())
		}
		time.Sleep(50 * time.Millisecond)
		out := stdout.String()
		for _, m := range urlLine.FindAllStringSubmatch(out, -1) {
			if m[1] == "FHIR" {
				fhirURL = m[2]
			} else {
				crmURL = strings.TrimSuffix(m[2], "/api/data/v9.2/")
			}
		}
		ids = idLine.FindAllStringSubmatch(out, -1)
	}
	if fhirURL == "" || crmURL == "" {
		t.Fatalf("no URLs printed:\n%s", stdout.String())
	}
	want := map[string]string{crmserver.AgentToken: crmserver.AgentUserID, crmserver.CoordinatorToken: crmserver.CoordinatorUserID}
	for _, m := range ids {
		token, user := m[1], m[2]
		if want[token] != user {
			t.Errorf("printed token %q with user %q; want %v", token, user, want)
		}
		delete(want, token)
		c, err := crm.New(crm.Config{URL: crmURL, Auth: crm.AuthBearer, Token: token})
		if err != nil {
			t.Fatal(err)
		}
		if got, err := c.WhoAmI(ctx); err != nil || got != user {
			t.Errorf("WhoAmI with %q = %q, %v; want %q", token, got, err, user)
		}
		if code := getWithToken(t, fhirURL+"/Patient", token); code != http.StatusOK {
			t.Errorf("FHIR search with %q answered %d", token, code)
		}
	}
	if len(want) > 0 {
		t.Errorf("identities not printed: %v", want)
	}
	if code := getWithToken(t, fhirURL+"/Patient", "someone-else"); code != http.StatusUnauthorized {
		t.Errorf("FHIR search with an unknown token answered %d, want 401", code)
	}
}

func getWithToken(t *testing.T, url, token string) int {
	t.Helper()
	req, err := http.NewRequest(http.MethodGet, url, nil)
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Authorization", "Bearer "+token)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	return resp.StatusCode
}

// TestDemoSimulatorEditsAsCoordinator makes one simulated edit on each
// side against sandboxes configured as the demo configures them: the CRM
// row's modifiedby is the care coordinator, not the agent, and the FHIR
// write is the coordinator's.
func TestDemoSimulatorEditsAsCoordinator(t *testing.T) {
	t.Parallel()
	fs, err := fhirserver.New(fhirserver.Options{Seed: 1, Patients: 2, Clients: fhirserver.SandboxClients()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { fs.Close() })
	fhirHTTP := httptest.NewServer(fs)
	t.Cleanup(fhirHTTP.Close)
	cs, err := crmserver.New(crmserver.Options{Tokens: crmserver.SandboxTokens()})
	if err != nil {
		t.Fatal(err)
	}
	if err := cs.SeedSynth(synth.New(1), 1, 0); err != nil {
		t.Fatal(err)
	}
	crmHTTP := httptest.NewServer(cs)
	t.Cleanup(crmHTTP.Close)

	sim, err := newSimulator(fhirHTTP.URL, crmHTTP.URL, 2)
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	if fhirErr, crmErr := sim.step(ctx, 7); fhirErr != nil || crmErr != nil {
		t.Fatalf("simulated edits failed: FHIR %v, CRM %v", fhirErr, crmErr)
	}

	agent, err := crm.New(crm.Config{URL: crmHTTP.URL, Auth: crm.AuthBearer, Token: crmserver.AgentToken})
	if err != nil {
		t.Fatal(err)
	}
	row, err := agent.Retrieve(ctx, crm.ByID("contacts", synth.New(1).ContactID(0)), "emailaddress1", "_modifiedby_value")
	if err != nil {
		t.Fatal(err)
	}
	if row.String("emailaddress1") != "coordinator.7@example.org" {
		t.Errorf("the simulator did not edit the contact: email %q", row.String("emailaddress1"))
	}
	if by := row.String("_modifiedby_value"); by != crmserver.CoordinatorUserID {
		t.Errorf("contact modified by %q, want the care coordinator %q (the agent is %q)", by, crmserver.CoordinatorUserID, crmserver.AgentUserID)
	}
	if fs.Writes(fhirserver.CoordinatorClient) != 1 || fs.Writes(fhirserver.AgentClient) != 0 || fs.Writes(fhirserver.Anonymous) != 0 {
		t.Errorf("FHIR writes: coordinator %d, agent %d, anonymous %d; want 1, 0, 0",
			fs.Writes(fhirserver.CoordinatorClient), fs.Writes(fhirserver.AgentClient), fs.Writes(fhirserver.Anonymous))
	}
}
