package admin

import (
	"fmt"
	"net/http/httptest"
	"net/url"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/chromedp/chromedp"
	"gorm.io/gorm"

	"github.com/fhirsync/fhirsync/admin/browsertest"
	"github.com/fhirsync/fhirsync/agent/crm"
	"github.com/fhirsync/fhirsync/agent/fhir"
	"github.com/fhirsync/fhirsync/logs"
	"github.com/fhirsync/fhirsync/sandbox/crmserver"
	"github.com/fhirsync/fhirsync/sandbox/fhirserver"
	"github.com/fhirsync/fhirsync/storage/storagetest"
)

// liveRecords are one patient held on both sandboxes, linked the way the
// agent links them (the contact's msemr_azurefhirid holds the Patient's
// id), with different family names so that a preview has a change to show.
type liveRecords struct {
	patientID, contactID, practitionerID string
}

// withLiveEndpoints starts the sandbox FHIR server and the sandbox CRM,
// points the app's live-record readers at them, and stores Ada Lovelace
// as a Patient and Ada Byron as the linked contact.
func withLiveEndpoints(t *testing.T, e *testEnv) liveRecords {
	t.Helper()
	fs, err := fhirserver.New(fhirserver.Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { fs.Close() })
	fh := httptest.NewServer(fs)
	t.Cleanup(fh.Close)
	cs, err := crmserver.New(crmserver.Options{})
	if err != nil {
		t.Fatal(err)
	}
	ch := httptest.NewServer(cs)
	t.Cleanup(ch.Close)
	fc, err := fhir.New(fhir.Config{BaseURL: fh.URL})
	if err != nil {
		t.Fatal(err)
	}
	cc, err := crm.New(crm.Config{URL: ch.URL})
	if err != nil {
		t.Fatal(err)
	}
	e.app.data.fhir, e.app.data.crmRecords = fc, cc

	// Her general practitioner, already synced: a practitioner contact
	// correlated with Practitioner/babbage.
	drID, err := cc.Create(t.Context(), "contacts", crm.Record{"firstname": "Charles", "lastname": "Babbage",
		"msemr_contacttype": 935000001, "msemr_azurefhirid": "babbage"})
	if err != nil {
		t.Fatal(err)
	}
	p, err := fc.Create(t.Context(), fhir.Resource{"resourceType": "Patient", "gender": "female", "birthDate": "1815-12-10",
		"name":                []any{map[string]any{"use": "official", "family": "Lovelace", "given": []any{"Ada"}}},
		"generalPractitioner": []any{map[string]any{"reference": "Practitioner/babbage"}}})
	if err != nil {
		t.Fatal(err)
	}
	cid, err := cc.Create(t.Context(), "contacts", crm.Record{"firstname": "Ada", "lastname": "Byron",
		"gendercode": 2, "birthdate": "1815-12-10", "msemr_contacttype": 935000000, "msemr_azurefhirid": p.ID(),
		"msemr_generalpractitioner@odata.bind": "/contacts(" + drID + ")"})
	if err != nil {
		t.Fatal(err)
	}
	// A medical record number as a child row, which only the contact has.
	if _, err := cc.Create(t.Context(), "msemr_medicalidentifiers", crm.Record{"msemr_identifiersystem": "urn:oid:1.2.36.146.595.217.0.1",
		"msemr_identifiervalue": "MRN-1815", "msemr_contact@odata.bind": "/contacts(" + cid + ")"}); err != nil {
		t.Fatal(err)
	}
	return liveRecords{patientID: p.ID(), contactID: cid, practitionerID: drID}
}

// previewShown is what the preview page shows of a result.
type previewShown struct {
	outcome, current, diff, output string
}

// readPreview waits for the result and reads it; a part the page lacks
// reads as "".
func readPreview(s *previewShown) chromedp.Tasks {
	text := func(id string, v *string) chromedp.Action {
		return chromedp.Evaluate(fmt.Sprintf(`(document.getElementById(%q) || {}).textContent || ""`, id), v)
	}
	return chromedp.Tasks{
		chromedp.WaitVisible("#preview-result", chromedp.ByID),
		text("preview-outcome", &s.outcome),
		text("preview-current-source", &s.current),
		text("preview-diff", &s.diff),
		text("preview-output", &s.output),
	}
}

// TestBrowserPreview previews, in chromium, a Patient read live from the
// FHIR server by id, a contact read live from the CRM by id, and a logged
// decision's captured payload reached from the decision page: each shows
// the mapped output, the decision the agent would record, and the changes
// against the target's current state read live from the other side. The
// result stands beside the form on a desktop and below it at 375 px,
// without sideways scrolling; every live read is in the audit trail.
func TestBrowserPreview(t *testing.T) {
	browser := browsertest.Start(t)
	db := storagetest.Open(t, "sqlite")
	store, err := logs.New(db, logs.Config{Capture: logs.CaptureConfig{Enabled: true, KeyID: "k1", Key: captureKey}}, nil)
	if err != nil {
		t.Fatal(err)
	}
	e := newTestEnv(t, db, AppConfig{}, withLogs(store))
	e.user("phi@example.org", RoleEditor, true)
	live := withLiveEndpoints(t, e)
	n := starterDraft(t, e)
	page := fmt.Sprintf("%s/maps/versions/%d/preview?map=patient-contact", e.url, n)
	ctx := browser.Session(t, 2*time.Minute)
	if err := chromedp.Run(ctx, signIn(e.url, "phi@example.org")); err != nil {
		t.Fatal(err)
	}

	t.Run("a Patient read live from the FHIR server by id", func(t *testing.T) {
		var s previewShown
		var beside bool
		err := chromedp.Run(ctx,
			chromedp.EmulateViewport(1280, 900),
			chromedp.Navigate(page),
			chromedp.WaitVisible("#preview-form", chromedp.ByID),
			chromedp.Click("#preview-source-fhir", chromedp.ByID),
			chromedp.SendKeys("#preview-record-id", live.patientID, chromedp.ByID),
			chromedp.Click("#preview", chromedp.ByID),
			readPreview(&s),
			chromedp.Evaluate(`document.getElementById("preview-result").getBoundingClientRect().left >=
				document.getElementById("preview-form").getBoundingClientRect().right`, &beside),
		)
		if err != nil {
			t.Fatal(err)
		}
		if s.outcome != "sent / updated" {
			t.Errorf("decision %q, want sent / updated (the contact exists)", s.outcome)
		}
		if !strings.Contains(s.current, "read live from the CRM") || !strings.Contains(s.current, live.patientID) {
			t.Errorf("current state %q, want it read live from the CRM by msemr_azurefhirid", s.current)
		}
		if !strings.Contains(s.diff, "lastname") || !strings.Contains(s.diff, `"Byron"`) || !strings.Contains(s.diff, `"Lovelace"`) {
			t.Errorf("diff %q, want lastname Byron → Lovelace", s.diff)
		}
		if strings.Contains(s.diff, "firstname") {
			t.Errorf("diff %q lists firstname, which is the same on both sides", s.diff)
		}
		if !strings.Contains(s.output, `"lastname": "Lovelace"`) {
			t.Errorf("output %q lacks the mapped lastname", s.output)
		}
		if !strings.Contains(s.output, `"/contacts(`+live.practitionerID+`)"`) {
			t.Errorf("output %q does not bind the general practitioner's contact %s", s.output, live.practitionerID)
		}
		if !beside {
			t.Error("on a 1280 px window the result is not beside the form")
		}
	})

	t.Run("a contact read live from the CRM by id", func(t *testing.T) {
		var s previewShown
		err := chromedp.Run(ctx,
			chromedp.Navigate(page),
			chromedp.WaitVisible("#preview-form", chromedp.ByID),
			chromedp.Click("#preview-source-crm", chromedp.ByID),
			chromedp.SendKeys("#preview-record-id", live.contactID, chromedp.ByID),
			chromedp.Click("#preview", chromedp.ByID),
			readPreview(&s),
		)
		if err != nil {
			t.Fatal(err)
		}
		if s.outcome != "sent / updated" {
			t.Errorf("decision %q, want sent / updated (the Patient exists)", s.outcome)
		}
		if !strings.Contains(s.current, "read live from the FHIR server") || !strings.Contains(s.current, "Patient/"+live.patientID) {
			t.Errorf("current state %q, want Patient/%s read live from the FHIR server", s.current, live.patientID)
		}
		if !strings.Contains(s.diff, "family") || !strings.Contains(s.diff, `"Lovelace"`) || !strings.Contains(s.diff, `"Byron"`) {
			t.Errorf("diff %q, want the family name Lovelace → Byron", s.diff)
		}
		if !strings.Contains(s.output, `"family": "Byron"`) || !strings.Contains(s.output, `"resourceType": "Patient"`) {
			t.Errorf("output %q, want the Patient with the contact's family name", s.output)
		}
		if !strings.Contains(s.output, `"value": "MRN-1815"`) || !strings.Contains(s.diff, `"MRN-1815"`) {
			t.Errorf("output %q, diff %q: want the identifier of the contact's child row", s.output, s.diff)
		}
		// The contact's practitioner lookup resolves back to the same
		// Practitioner, so the reference does not change.
		if !strings.Contains(s.output, `"reference": "Practitioner/babbage"`) || strings.Contains(s.diff, "generalPractitioner") {
			t.Errorf("output %q, diff %q: want generalPractitioner kept as Practitioner/babbage", s.output, s.diff)
		}
		var dir string
		if err := chromedp.Run(ctx, chromedp.Value("#preview-direction", &dir, chromedp.ByID)); err != nil {
			t.Fatal(err)
		}
		if dir != "crm-to-fhir" {
			t.Errorf("after a CRM record the form shows direction %q, want crm-to-fhir", dir)
		}
	})

	t.Run("a logged decision from the decision page", func(t *testing.T) {
		d := &logs.Decision{Direction: logs.FHIRToCRM, EntityMap: "patient-contact", Source: logs.Ref{Type: "Patient", ID: live.patientID},
			Target: logs.Ref{Type: "contact", ID: live.contactID}, Outcome: logs.OutcomeSent, Reason: logs.ReasonUpdated,
			Snapshots: &logs.Snapshots{Source: []byte(`{"resourceType":"Patient","id":"` + live.patientID +
				`","name":[{"use":"official","family":"Hopper","given":["Grace"]}]}`)}}
		if err := store.Write(t.Context(), d); err != nil {
			t.Fatal(err)
		}
		var s previewShown
		var source, chosen string
		err := chromedp.Run(ctx,
			chromedp.Navigate(fmt.Sprint(e.url, "/logs/", d.ID)),
			chromedp.Click("#preview-with-draft", chromedp.ByID),
			chromedp.WaitVisible("#preview-form", chromedp.ByID),
			chromedp.Value("#preview-decision", &chosen, chromedp.ByID),
			chromedp.Click("#preview", chromedp.ByID),
			readPreview(&s),
			chromedp.Text("#preview-result p", &source, chromedp.ByQuery),
		)
		if err != nil {
			t.Fatal(err)
		}
		if chosen != fmt.Sprint(d.ID) {
			t.Errorf("the link filled in decision %q, want %d", chosen, d.ID)
		}
		if !strings.Contains(source, fmt.Sprintf("captured payload of decision %d", d.ID)) {
			t.Errorf("the result says %q, want the captured payload of decision %d", source, d.ID)
		}
		if s.outcome != "sent / updated" || !strings.Contains(s.current, "read live from the CRM") {
			t.Errorf("decision %q against %q, want sent / updated against the contact read live", s.outcome, s.current)
		}
		for _, want := range []string{"firstname", `"Ada"`, `"Grace"`, "lastname", `"Byron"`, `"Hopper"`} {
			if !strings.Contains(s.diff, want) {
				t.Errorf("diff %q lacks %s", s.diff, want)
			}
		}
	})

	t.Run("at 375 px the result is below the form without sideways scrolling", func(t *testing.T) {
		var below, fits bool
		err := chromedp.Run(ctx,
			chromedp.EmulateViewport(375, 800),
			chromedp.Navigate(page),
			chromedp.WaitVisible("#preview-form", chromedp.ByID),
			chromedp.Click("#preview-source-fhir", chromedp.ByID),
			chromedp.SendKeys("#preview-record-id", live.patientID, chromedp.ByID),
			chromedp.Click("#preview", chromedp.ByID),
			chromedp.WaitVisible("#preview-result", chromedp.ByID),
			chromedp.Evaluate(`document.getElementById("preview-result").getBoundingClientRect().top >=
				document.getElementById("preview-form").getBoundingClientRect().bottom`, &below),
			chromedp.Evaluate(`document.documentElement.scrollWidth <= document.documentElement.clientWidth`, &fits),
		)
		if err != nil {
			t.Fatal(err)
		}
		if !below {
			t.Error("at 375 px the result is not below the form")
		}
		if !fits {
			t.Error("at 375 px the preview page scrolls sideways")
		}
	})

	var reads []string
	for _, a := range e.auditActions() {
		if strings.HasSuffix(a, " "+auditPreviewLiveRead) {
			reads = append(reads, a)
		}
	}
	// Two live reads per preview (the record and its target), one for the
	// logged one (its target), two at 375 px.
	if len(reads) != 7 || !slices.Contains(reads, "phi@example.org "+auditPreviewLiveRead) {
		t.Errorf("live reads in the audit trail: %v, want 7 by phi@example.org", reads)
	}
}

// TestPreviewLiveRecordNeedsPHI: without the PHI permission a live record
// cannot be read (page and API), the target's current state is not read
// either and the page says why; with it, the read is audited.
func TestPreviewLiveRecordNeedsPHI(t *testing.T) {
	storagetest.Each(t, func(t *testing.T, db *gorm.DB) {
		e := newTestEnv(t, db, AppConfig{})
		live := withLiveEndpoints(t, e)
		editor := e.as(e.user("editor@example.org", RoleEditor, false))
		phi := e.as(e.user("phi@example.org", RoleEditor, true))
		e.importStarter(editor)

		form := url.Values{"map": {"patient-contact"}, "source": {"fhir"}, "record_id": {live.patientID}}.Encode()
		code, body := e.page(editor, "POST", "/maps/versions/1/preview", formType, form)
		if code != 403 || !strings.Contains(body, "needs the PHI permission") || strings.Contains(body, "Lovelace") {
			t.Errorf("live read without PHI = %d:\n%.2000s", code, body)
		}
		code, out := e.apiCall(editor, "POST", "/api/v1/maps/versions/1/preview",
			fmt.Sprintf(`{"map":"patient-contact","source":"crm","record_id":%q}`, live.contactID))
		if code != 403 {
			t.Errorf("API live read without PHI = %d %v", code, out)
		}
		// A pasted record: mapped, but the target is not read for a user
		// without PHI, and the page says so.
		pasted := url.Values{"map": {"patient-contact"}, "direction": {"fhir-to-crm"},
			"input": {`{"resourceType":"Patient","id":"` + live.patientID + `","name":[{"use":"official","family":"Hopper"}]}`}}.Encode()
		code, body = e.page(editor, "POST", "/maps/versions/1/preview", formType, pasted)
		if code != 200 || !strings.Contains(body, "needs the PHI permission; paste it") || strings.Contains(body, "Byron") {
			t.Errorf("pasted preview without PHI = %d:\n%.3000s", code, body)
		}
		if slices.ContainsFunc(e.auditActions(), func(a string) bool { return strings.HasSuffix(a, auditPreviewLiveRead) }) {
			t.Errorf("a refused read is in the audit trail as a read: %v", e.auditActions())
		}

		code, out = e.apiCall(phi, "POST", "/api/v1/maps/versions/1/preview",
			fmt.Sprintf(`{"map":"patient-contact","source":"fhir","record_id":%q}`, live.patientID))
		if code != 200 || out["outcome"] != "sent" || out["reason"] != "updated" || !strings.Contains(fmt.Sprint(out["diff"]), "Byron") {
			t.Errorf("API live read with PHI = %d %v", code, out)
		}
		for _, bad := range []string{"../metadata", "x y"} {
			code, _ = e.apiCall(phi, "POST", "/api/v1/maps/versions/1/preview",
				fmt.Sprintf(`{"map":"patient-contact","source":"fhir","record_id":%q}`, bad))
			if code != 400 {
				t.Errorf("record id %q = %d, want 400", bad, code)
			}
		}
		code, _ = e.apiCall(phi, "POST", "/api/v1/maps/versions/1/preview", `{"map":"patient-contact","source":"fhir","record_id":"nosuch"}`)
		if code != 404 {
			t.Errorf("a Patient the server does not have = %d, want 404", code)
		}
		if n := len(slices.DeleteFunc(e.auditActions(), func(a string) bool { return a != "phi@example.org "+auditPreviewLiveRead })); n != 3 {
			t.Errorf("%d live reads audited, want 3 (record and target, then the missing record): %v", n, e.auditActions())
		}
	})
}
