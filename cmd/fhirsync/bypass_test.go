package main

import (
	"bytes"
	"context"
	"log/slog"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/fhirsync/fhirsync/agent/crm"
	"github.com/fhirsync/fhirsync/queues"
	"github.com/fhirsync/fhirsync/sandbox/crmserver"
)

// countingSender counts the service-endpoint messages the sandbox CRM
// posts.
type countingSender struct {
	mu sync.Mutex
	n  int
}

func (s *countingSender) Send(_ context.Context, msgs ...queues.Message) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.n += len(msgs)
	return nil
}

func (s *countingSender) count() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.n
}

// TestBypassOwnSteps: with crm.bypass_own_steps on, serve's setup finds
// the Service Bus endpoint of queue.crm_changes, and the agent's client
// then writes without the change being posted back; doctor says so. When
// the endpoint is another queue's, or the user lacks
// prvBypassCustomBusinessLogic, the setup logs why and leaves the client
// without the bypass (its writes are posted), and doctor fails the check
// with the fix; a privilege taken away while running turns the bypass off
// with a warning, and the write goes through.
func TestBypassOwnSteps(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	var gauge float64
	run := func(t *testing.T, queue string, revoke, revokeLater bool) (posted int, bypassing bool, log, doctorOut string) {
		t.Helper()
		sent := &countingSender{}
		cs, err := crmserver.New(crmserver.Options{Tokens: crmserver.SandboxTokens(), Endpoint: sent, EndpointPath: "crm-changes"})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { cs.Close() })
		if revoke {
			cs.RevokePrivilege(crmserver.AgentUserID, "prvBypassCustomBusinessLogic")
		}
		hs := httptest.NewServer(cs)
		t.Cleanup(hs.Close)
		client, err := crm.New(crmConfig(CRMConfig{BaseURL: hs.URL, Auth: CredentialConfig{Method: "bearer", Token: crmserver.AgentToken}}, nil))
		if err != nil {
			t.Fatal(err)
		}
		cfg := defaultConfig()
		cfg.Queue.CRMChanges = queue
		cfg.CRM.BypassOwnSteps = true
		var buf bytes.Buffer
		reg := prometheus.NewRegistry()
		bypassOwnSteps(ctx, &cfg, client, slog.New(slog.NewTextHandler(&buf, nil)), reg)
		defer func() {
			mfs, err := reg.Gather()
			if err != nil || len(mfs) != 1 || mfs[0].GetName() != "fhirsync_crm_bypass_active" {
				t.Fatalf("gathered %v, %v", mfs, err)
			}
			gauge = mfs[0].GetMetric()[0].GetGauge().GetValue()
		}()
		if _, err := client.Create(ctx, "contacts", crm.Record{"lastname": "Own"}); err != nil {
			t.Fatal(err)
		}
		var out bytes.Buffer
		d := &doctor{cfg: &cfg, out: &out}
		d.crmBypass(ctx, client)
		if revokeLater {
			n := sent.count()
			cs.RevokePrivilege(crmserver.AgentUserID, "prvBypassCustomBusinessLogic")
			if _, err := client.Create(ctx, "contacts", crm.Record{"lastname": "AfterRevoke"}); err != nil {
				t.Fatal(err)
			}
			if sent.count() != n+1 {
				t.Errorf("the create after the privilege was revoked was not posted")
			}
		}
		return sent.count(), client.Bypassing(), buf.String(), out.String()
	}

	posted, on, log, doc := run(t, "crm-changes", false, false)
	if gauge != 1 {
		t.Errorf("fhirsync_crm_bypass_active %v with the bypass in place, want 1", gauge)
	}
	if posted != 0 || !on || !strings.Contains(log, "bypass its service endpoint's steps") || !strings.Contains(log, "contact Create") {
		t.Errorf("own endpoint: %d posted, bypassing %v, log %q; want none posted, on", posted, on, log)
	}
	if l := doctorLine(doc, "ok   crm bypass"); !strings.Contains(l, `service endpoint "fhirsync crm-changes"`) {
		t.Errorf("doctor with the bypass in place:\n%s", doc)
	}

	posted, on, log, doc = run(t, "crm-other", false, false)
	if gauge != 0 {
		t.Errorf("fhirsync_crm_bypass_active %v without the endpoint, want 0", gauge)
	}
	if posted != 1 || on || !strings.Contains(log, "no service endpoint found: want a Service Bus queue endpoint (contract Queue) with path crm-other") {
		t.Errorf("another queue: %d posted, bypassing %v, log %q; want the change posted, off, and why", posted, on, log)
	}
	if l := doctorLine(doc, "FAIL crm bypass"); !strings.Contains(l, "no service endpoint found") {
		t.Errorf("doctor without the endpoint:\n%s", doc)
	}

	posted, on, log, doc = run(t, "crm-changes", true, false)
	if posted != 1 || on || !strings.Contains(log, "lacks prvBypassCustomBusinessLogic") {
		t.Errorf("without the privilege: %d posted, bypassing %v, log %q; want the change posted, off, and why", posted, on, log)
	}
	if l := doctorLine(doc, "FAIL crm bypass"); !strings.Contains(l, "lacks prvBypassCustomBusinessLogic") || !strings.Contains(l, crm.PrivilegeBypassCustomBusinessLogic) {
		t.Errorf("doctor without the privilege:\n%s", doc)
	}

	_, on, log, _ = run(t, "crm-changes", false, true)
	if gauge != 0 {
		t.Errorf("fhirsync_crm_bypass_active %v after the refusal, want 0", gauge)
	}
	if on || !strings.Contains(log, "refused the agent's step bypass for a missing privilege") || !strings.Contains(log, "0x80040220") {
		t.Errorf("privilege revoked while running: bypassing %v, log %q; want off and a warning", on, log)
	}
}
