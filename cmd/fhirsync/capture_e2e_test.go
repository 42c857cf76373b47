package main

import (
	"bytes"
	"context"
	"encoding/base64"
	"fmt"
	"io"
	"net/http"
	"net/http/cookiejar"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/fhirsync/fhirsync/agent/fhir"
	"github.com/fhirsync/fhirsync/logs"
	"github.com/fhirsync/fhirsync/storage"
)

// TestServeCapturesPayloads runs serve with logs.capture.enabled and a
// key, syncs one patient, and checks the whole path of a capture: the
// decision says it was captured, the stored row is sealed (the patient's
// name is nowhere in it), a user with the PHI permission sees the payload
// in the admin app, and one without it is refused and sees no value.
func TestServeCapturesPayloads(t *testing.T) {
	t.Parallel()
	s := newSyncSetup(t, storage.SQLite, 0, 0)
	ctx := context.Background()
	key := base64.StdEncoding.EncodeToString(bytes.Repeat([]byte{7}, 32))
	addr := freePort(t)
	extra := map[string]string{
		"FHIRSYNC_LISTEN":                      addr,
		"FHIRSYNC_LOGS_CAPTURE_ENABLED":        "true",
		"FHIRSYNC_LOGS_CAPTURE_KEY":            key,
		"FHIRSYNC_LOGS_CAPTURE_KEY_ID":         "k1",
		"FHIRSYNC_FEEDS_FHIR_HISTORY_TYPES":    "Patient",
		"FHIRSYNC_FEEDS_FHIR_HISTORY_SCHEDULE": "@every 1s",
	}
	getenv := s.getenvWith(extra)

	const password = "correct horse battery staple 42"
	pwFile := writePasswordFile(t, password)
	for _, args := range [][]string{
		{"users", "create", "--email", "phi@example.org", "--role", "operator", "--phi", "--password-file", pwFile},
		{"users", "create", "--email", "nophi@example.org", "--role", "admin", "--password-file", pwFile},
	} {
		var out, errb bytes.Buffer
		if code := exitCode(run(ctx, args, getenv, &out, &errb), &errb); code != 0 {
			t.Fatalf("%v: exit %d: %s", args, code, errb.String())
		}
	}

	base, _, stderr := startServe(t, ctx, getenv, addr)

	fc, err := fhir.New(fhir.Config{BaseURL: getenv("FHIRSYNC_FHIR_BASE_URL")})
	if err != nil {
		t.Fatal(err)
	}
	p, err := fc.Create(ctx, fhir.Resource{"resourceType": "Patient", "gender": "female", "birthDate": "1961-03-04",
		"name": []any{map[string]any{"use": "official", "family": "Capturedottir", "given": []any{"Ada"}}}})
	if err != nil {
		t.Fatal(err)
	}

	store, err := logs.New(s.db, logs.Config{}, nil)
	if err != nil {
		t.Fatal(err)
	}
	d := waitSentDecision(t, ctx, store, p.ID(), stderr)
	got, err := store.Get(ctx, d.ID)
	if err != nil {
		t.Fatal(err)
	}
	if !got.Captured {
		t.Fatalf("decision %d (%s %s) has no capture although logs.capture.enabled is on", d.ID, d.Outcome, d.Reason)
	}
	var sealed struct{ SourceSealed, TargetSealed []byte }
	if err := s.db.Raw("SELECT source_sealed, target_sealed FROM sync_decision_captures WHERE decision_id = ?", d.ID).Scan(&sealed).Error; err != nil {
		t.Fatal(err)
	}
	if len(sealed.SourceSealed) == 0 || len(sealed.TargetSealed) == 0 {
		t.Fatalf("capture row lacks a sealed source or target: %d / %d bytes", len(sealed.SourceSealed), len(sealed.TargetSealed))
	}
	for _, b := range [][]byte{sealed.SourceSealed, sealed.TargetSealed} {
		if bytes.Contains(b, []byte("Capturedottir")) {
			t.Fatal("the stored capture holds the patient's name in the clear")
		}
	}

	capturePath := fmt.Sprintf("%s/logs/%d/capture", base, d.ID)
	phi := signIn(t, base, "phi@example.org", password)
	code, body := getWith(t, phi, capturePath)
	if code != http.StatusOK || !strings.Contains(body, "Capturedottir") || !strings.Contains(body, "1961-03-04") {
		t.Fatalf("PHI holder: GET capture = %d, want 200 with the patient's name and birth date:\n%.2000s", code, body)
	}
	if !strings.Contains(body, `id="capture-target"`) || !strings.Contains(body, "lastname") {
		t.Errorf("the capture page lacks the target (CRM) payload:\n%.2000s", body)
	}
	// The decision's changed fields, with the values written.
	if !strings.Contains(body, `id="capture-changes"`) || !strings.Contains(body, "<td>lastname</td><td><code>&#34;Capturedottir&#34;</code>") {
		t.Errorf("the capture page does not pair the changed fields with their values:\n%.4000s", body)
	}
	nophi := signIn(t, base, "nophi@example.org", password)
	code, body = getWith(t, nophi, capturePath)
	if code != http.StatusForbidden || strings.Contains(body, "Capturedottir") {
		t.Fatalf("user without PHI: GET capture = %d (want 403), name shown: %v", code, strings.Contains(body, "Capturedottir"))
	}
	_, body = getWith(t, nophi, fmt.Sprintf("%s/logs/%d", base, d.ID))
	if strings.Contains(body, "Capturedottir") || strings.Contains(body, "1961-03-04") {
		t.Error("the decision page shows a captured value to a user without the PHI permission")
	}

	// serve gives the admin app its replayer: the replay page can send.
	code, body = getWith(t, nophi, base+"/replay")
	if code != http.StatusOK || strings.Contains(body, `id="replay-unavailable"`) {
		t.Errorf("GET /replay under serve = %d, replay available: %v", code, !strings.Contains(body, `id="replay-unavailable"`))
	}

	views, err := store.Audit(ctx, logs.AuditFilter{Action: logs.AuditViewCapture}, "", 10)
	if err != nil {
		t.Fatal(err)
	}
	if len(views.Entries) != 1 || views.Entries[0].Actor != "phi@example.org" {
		t.Fatalf("audit trail of capture views = %+v, want one by phi@example.org", views.Entries)
	}
}

// signIn signs in through the login form and returns a client holding
// the session.
func signIn(t *testing.T, base, email, password string) *http.Client {
	t.Helper()
	jar, err := cookiejar.New(nil)
	if err != nil {
		t.Fatal(err)
	}
	c := &http.Client{Jar: jar, Timeout: 30 * time.Second}
	resp, err := c.PostForm(base+"/login", url.Values{"email": {email}, "password": {password}})
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK || strings.Contains(string(b), `id="login-form"`) {
		t.Fatalf("signing in as %s: %d\n%.1000s", email, resp.StatusCode, b)
	}
	return c
}

func getWith(t *testing.T, c *http.Client, u string) (int, string) {
	t.Helper()
	resp, err := c.Get(u)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

// getenv is s's environment with extra's values in front.
func (s *syncSetup) getenvWith(extra map[string]string) func(string) string {
	return func(k string) string {
		if v, ok := extra[k]; ok {
			return v
		}
		return s.getenv(k)
	}
}

// writePasswordFile writes password to a file for users create
// --password-file and returns its path.
func writePasswordFile(t *testing.T, password string) string {
	t.Helper()
	pwFile := filepath.Join(t.TempDir(), "pw")
	if err := os.WriteFile(pwFile, []byte(password+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	return pwFile
}

// startServe runs serve on addr until the test ends or stop is called
// (stop waits up to 30s for it to return, and is safe to call twice), and
// returns once /healthz answers. stderr collects serve's process log.
func startServe(t *testing.T, ctx context.Context, getenv func(string) string, addr string) (base string, stop func(), stderr *syncBuffer) {
	t.Helper()
	sctx, cancel := context.WithCancel(ctx)
	stderr = new(syncBuffer)
	done := make(chan error, 1)
	go func() { done <- run(sctx, []string{"serve"}, getenv, io.Discard, stderr) }()
	stopped := false
	stop = func() {
		if stopped {
			return
		}
		stopped = true
		cancel()
		select {
		case <-done:
		case <-time.After(30 * time.Second):
			t.Error("serve did not stop within 30s")
		}
	}
	t.Cleanup(stop)
	base = "http://" + addr
	waitFor(t, base+"/healthz", done, stderr)
	return base, stop, stderr
}

// waitSentDecision waits up to 60s for a sent decision about Patient/id
// and returns the newest one.
func waitSentDecision(t *testing.T, ctx context.Context, store *logs.Store, id string, stderr fmt.Stringer) logs.Decision {
	t.Helper()
	for deadline := time.Now().Add(60 * time.Second); ; {
		page, err := store.Search(ctx, logs.Filter{Record: id, Outcome: logs.OutcomeSent}, "", 10)
		if err != nil {
			t.Fatal(err)
		}
		if len(page.Decisions) > 0 {
			return page.Decisions[0]
		}
		if time.Now().After(deadline) {
			t.Fatalf("no sent decision for Patient/%s within 60s\n%s", id, stderr.String())
		}
		time.Sleep(200 * time.Millisecond)
	}
}
