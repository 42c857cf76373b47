package main

import (
	"context"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/chromedp/chromedp"

	"github.com/fhirsync/fhirsync/admin/browsertest"
	"github.com/fhirsync/fhirsync/agent/crm"
	"github.com/fhirsync/fhirsync/agent/fhir"
)

// TestDemoChangeReachesCRMAndLogExplorer runs `fhirsync demo`, signs in with
// the login it prints, creates a patient in the sandbox FHIR server as a
// clinician would, and watches the record reach the CRM and its decision
// appear in the log explorer, in a real browser.
func TestDemoChangeReachesCRMAndLogExplorer(t *testing.T) {
	t.Parallel()
	b := browsertest.Start(t)
	addr := freePort(t)
	ctx, cancel := context.WithCancel(context.Background())
	var stdout, stderr syncBuffer
	done := make(chan error, 1)
	go func() {
		done <- run(ctx, []string{"demo", "--listen", addr, "--patients", "5", "--edits-per-second", "0", "--data-dir", t.TempDir()},
			envFrom(nil), &stdout, &stderr)
	}()
	t.Cleanup(func() {
		cancel()
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("demo returned %v", err)
			}
		case <-time.After(60 * time.Second):
			t.Error("demo did not stop within 60s")
		}
	})

	// The demo prints where everything is and how to sign in.
	var email, password, fhirURL, crmURL string
	banner := regexp.MustCompile(`Sign in\s+(\S+)\s+/\s+(\S+)`)
	deadline := time.Now().Add(90 * time.Second)
	for email == "" {
		if time.Now().After(deadline) {
			t.Fatalf("demo printed no login within 90s\nstdout:\n%s\nstderr:\n%s", stdout.String(), stderr.String())
		}
		select {
		case err := <-done:
			t.Fatalf("demo exited early: %v\n%s", err, stderr.String())
		case <-time.After(100 * time.Millisecond):
		}
		out := stdout.String()
		if m := banner.FindStringSubmatch(out); m != nil {
			email, password = m[1], m[2]
			fhirURL = field(out, "FHIR")
			crmURL = strings.TrimSuffix(field(out, "CRM"), "/api/data/v9.2/")
		}
	}
	base := "http://" + addr

	// A clinician registers a patient in the sandbox FHIR server.
	fc, err := fhir.New(fhir.Config{BaseURL: fhirURL})
	if err != nil {
		t.Fatal(err)
	}
	p, err := fc.Create(context.Background(), fhir.Resource{"resourceType": "Patient", "gender": "female", "birthDate": "1977-07-07",
		"name": []any{map[string]any{"use": "official", "family": "Browserova", "given": []any{"Vera"}}}})
	if err != nil {
		t.Fatal(err)
	}

	bctx := b.Session(t, 3*time.Minute)
	if err := chromedp.Run(bctx,
		chromedp.Navigate(base+"/logs"),
		chromedp.WaitVisible("#login-form", chromedp.ByID),
		chromedp.SendKeys("#email", email, chromedp.ByID),
		chromedp.SendKeys("#password", password, chromedp.ByID),
		chromedp.Click("#sign-in", chromedp.ByID),
		chromedp.WaitVisible("#decisions", chromedp.ByID),
	); err != nil {
		t.Fatalf("signing in: %v\n%s", err, stderr.String())
	}

	// The decision appears in the record's timeline in the log explorer.
	var table string
	for {
		if err := chromedp.Run(bctx,
			chromedp.Navigate(base+"/logs?record="+p.ID()),
			chromedp.WaitVisible("#decisions", chromedp.ByID),
			chromedp.Text("#decisions", &table, chromedp.ByID),
		); err != nil {
			t.Fatalf("opening the timeline: %v", err)
		}
		if strings.Contains(table, "created") {
			break
		}
		if time.Now().After(deadline.Add(90 * time.Second)) {
			t.Fatalf("no created decision for Patient/%s in the log explorer; the table says:\n%s", p.ID(), table)
		}
		time.Sleep(time.Second)
	}
	if !strings.Contains(table, "FHIR → CRM") || !strings.Contains(table, "patient-contact") || !strings.Contains(table, "sent") {
		t.Errorf("timeline row lacks direction, map or outcome:\n%s", table)
	}
	if strings.Contains(table, "Browserova") {
		t.Error("the log explorer shows a patient's name")
	}

	// And the contact exists in the CRM.
	cc, err := crm.New(crm.Config{URL: crmURL, Auth: crm.AuthBearer, Token: demoHumanToken})
	if err != nil {
		t.Fatal(err)
	}
	contact, err := cc.Retrieve(context.Background(), crm.ByKey("contacts", "msemr_azurefhirid", p.ID()))
	if err != nil {
		t.Fatalf("the contact was not created in the CRM: %v", err)
	}
	if contact.String("lastname") != "Browserova" {
		t.Errorf("contact lastname = %q", contact.String("lastname"))
	}
}

// field reads a "Label   value" line of the demo's banner.
func field(out, label string) string {
	for _, line := range strings.Split(out, "\n") {
		f := strings.Fields(line)
		if len(f) >= 2 && f[0] == label {
			return f[1]
		}
	}
	return ""
}
