package admin

import (
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"gorm.io/gorm"

	"github.com/fhirsync/fhirsync/agent/crm"
	"github.com/fhirsync/fhirsync/maps/starter"
	"github.com/fhirsync/fhirsync/sandbox/crmserver"
	"github.com/fhirsync/fhirsync/storage/storagetest"
)

// switchableCRM reads metadata from the sandbox CRM through the real
// client, or fails as an unreachable CRM does while down is set.
type switchableCRM struct {
	client *crm.Client
	down   atomic.Bool
	reads  atomic.Int64
}

func (s *switchableCRM) EntityDefinition(ctx context.Context, name string) (*crm.EntityMetadata, error) {
	if s.down.Load() {
		return nil, errors.New("dial tcp: connection refused")
	}
	s.reads.Add(1)
	return s.client.EntityDefinition(ctx, name)
}

// withSandboxCRM points the app's map validation at a sandbox CRM over
// loopback HTTP.
func withSandboxCRM(t *testing.T, e *testEnv) *switchableCRM {
	t.Helper()
	s, err := crmserver.New(crmserver.Options{})
	if err != nil {
		t.Fatal(err)
	}
	hs := httptest.NewServer(s)
	t.Cleanup(hs.Close)
	c, err := crm.New(crm.Config{URL: hs.URL})
	if err != nil {
		t.Fatal(err)
	}
	r := &switchableCRM{client: c}
	e.app.data.crm = newCRMMetadata(r, e.clock.now)
	return r
}

// TestMapSaveAndPublishCheckedAgainstCRM: with a CRM configured, a draft
// naming a CRM attribute the CRM does not have is refused at save (page
// and API) with the problem's location and a suggested fix; while the CRM
// cannot be read a draft is saved with a warning but not published; once
// it answers again, publishing refuses the bad attribute with its location.
func TestMapSaveAndPublishCheckedAgainstCRM(t *testing.T) {
	storagetest.Each(t, func(t *testing.T, db *gorm.DB) {
		e := newTestEnv(t, db, AppConfig{})
		fake := withSandboxCRM(t, e)
		editor := e.as(e.user("editor@example.org", RoleEditor, false))
		e.importStarter(editor) // the starter maps fit the sandbox CRM

		save := func(crmAttribute string) (int, string) {
			return e.page(editor, "POST", "/maps/versions/1/attribute", formType, url.Values{"map": {"patient-contact"},
				"attr": {"birth-date"}, "fhirPath": {"birthDate"}, "crmAttribute": {crmAttribute}, "crmType": {"date-only"},
				"direction": {""}, "enabled": {"on"}}.Encode())
		}
		code, body := save("birthdat")
		for _, want := range []string{`attribute map &#34;birth-date&#34; / crmAttribute`, `has no attribute &#34;birthdat&#34;`,
			`Suggested fix: did you mean &#34;birthdate&#34;?`} {
			if code != http.StatusUnprocessableEntity || !strings.Contains(body, want) {
				t.Fatalf("saving a nonexistent CRM attribute = %d, want 422 showing %q:\n%.3000s", code, want, body)
			}
		}
		doc, _, err := e.app.data.maps.Version(t.Context(), 1)
		if err != nil {
			t.Fatal(err)
		}
		if _, am := findAttribute(doc, "patient-contact", "birth-date"); am.CRMAttribute != "birthdate" {
			t.Fatalf("the refused edit was stored: %q", am.CRMAttribute)
		}

		// The API refuses the same map set, with location and fix.
		bad := strings.Replace(string(starter.YAML()), "crmAttribute: birthdate\n", "crmAttribute: birthdat\n", 1)
		req, _ := json.Marshal(map[string]string{"yaml": bad})
		code, out := e.apiCall(editor, "POST", "/api/v1/maps/import", string(req))
		if code != http.StatusUnprocessableEntity || !hasProblem(out, `entity map "patient-contact" / attribute map "birth-date" / crmAttribute`, `did you mean "birthdate"?`) {
			t.Fatalf("API import of a nonexistent CRM attribute = %d %v", code, out)
		}

		// The CRM cannot be read: the draft is saved with a warning...
		fake.down.Store(true)
		e.clock.advance(crmMetadataTTL + time.Second)
		resp := e.postForm(editor, "/maps/versions/1/attribute", url.Values{"map": {"patient-contact"},
			"attr": {"birth-date"}, "fhirPath": {"birthDate"}, "crmAttribute": {"birthdat"}, "crmType": {"date-only"}, "enabled": {"on"}})
		if loc := resp.Header.Get("Location"); resp.StatusCode != http.StatusSeeOther || !strings.Contains(loc, "ok=saved-unchecked") {
			t.Fatalf("saving while the CRM is unreachable = %d to %q, want a redirect with the warning", resp.StatusCode, loc)
		}
		if _, body := e.page(editor, "GET", "/maps/versions/1?ok=saved-unchecked", "", ""); !strings.Contains(body, "could not be read") {
			t.Fatalf("the version page does not show the warning")
		}
		// ...and not published.
		if code, body := e.page(editor, "POST", "/maps/versions/1/publish", formType, "note=n"); code != http.StatusServiceUnavailable || !strings.Contains(body, "could not be read") {
			t.Fatalf("publishing while the CRM is unreachable = %d:\n%.2000s", code, body)
		}

		// The CRM answers again: publishing shows the problem on the page.
		fake.down.Store(false)
		code, body = e.page(editor, "POST", "/maps/versions/1/publish", formType, "note=n")
		if code != http.StatusUnprocessableEntity || !strings.Contains(body, `attribute map &#34;birth-date&#34; / crmAttribute`) || !strings.Contains(body, "Not published") {
			t.Fatalf("publishing a nonexistent CRM attribute = %d:\n%.3000s", code, body)
		}
		code, out = e.apiCall(editor, "POST", "/api/v1/maps/versions/1/publish", `{"note":"n"}`)
		if code != http.StatusUnprocessableEntity || !hasProblem(out, `attribute map "birth-date" / crmAttribute`, `did you mean "birthdate"?`) {
			t.Fatalf("API publish of a nonexistent CRM attribute = %d %v", code, out)
		}
		vs, err := e.app.data.maps.Versions(t.Context())
		if err != nil {
			t.Fatal(err)
		}
		for _, v := range vs {
			if v.Current {
				t.Fatalf("version %d was published", v.Number)
			}
		}

		// Cached metadata is reused within its lifetime.
		before := fake.reads.Load()
		if _, err := e.app.crmCheck(t.Context(), doc, true); err != nil {
			t.Fatal(err)
		}
		if fake.reads.Load() != before {
			t.Fatalf("a check within the cache lifetime read the CRM again (%d reads)", fake.reads.Load()-before)
		}
		// Validation as one types finds the problem from the cache, without
		// reading the CRM again.
		code, out = e.apiCall(editor, "POST", "/api/v1/maps/validate", string(req))
		if code != http.StatusOK || out["valid"] != false || !hasProblem(out, `attribute map "birth-date" / crmAttribute`, `did you mean "birthdate"?`) {
			t.Fatalf("validating a nonexistent CRM attribute = %d %v", code, out)
		}
		if fake.reads.Load() != before {
			t.Fatalf("live validation read the CRM again (%d reads)", fake.reads.Load()-before)
		}
	})
}

// hasProblem reports whether an API answer lists a problem whose location
// contains loc and whose fix contains fix.
func hasProblem(out map[string]any, loc, fix string) bool {
	ps, _ := out["problems"].([]any)
	for _, p := range ps {
		m, _ := p.(map[string]any)
		l, _ := m["location"].(string)
		f, _ := m["fix"].(string)
		if strings.Contains(l, loc) && strings.Contains(f, fix) {
			return true
		}
	}
	return false
}
