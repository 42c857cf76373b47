package admin

import (
	"fmt"
	"html"
	"net/http"
	"net/url"
	"slices"
	"strings"
	"testing"
	"time"

	"gorm.io/gorm"

	"github.com/fhirsync/fhirsync/logs"
	"github.com/fhirsync/fhirsync/storage/storagetest"
)

// Synthetic values of the held conflicts; they stand where PHI would be.
const (
	fhirBirthDate = "1901-02-03"
	crmBirthDate  = "1901-03-04"
)

// holdConflicts holds, as the agent would, a birthDate conflict of
// Patient/p1 and a delete conflict of Patient/p2 (deleted in the CRM), and
// returns their ids.
func holdConflicts(t testing.TB, s *logs.Store) (attrID, deleteID int64) {
	t.Helper()
	hold := func(c logs.HeldConflict, fv, cv any) int64 {
		err := s.Database().Transaction(func(tx *gorm.DB) error { return s.HoldTx(tx, c, fv, cv) })
		if err != nil {
			t.Fatalf("holding a conflict: %v", err)
		}
		cs, err := s.ConflictsFor(t.Context(), c.EntityMap, c.FHIRID)
		if err != nil || len(cs) != 1 {
			t.Fatalf("ConflictsFor = %v, %v", cs, err)
		}
		return cs[0].ID
	}
	attrID = hold(logs.HeldConflict{EntityMap: "patient-contact", FHIRType: "Patient", FHIRID: "p1", CRMEntity: "contact", CRMID: "c1",
		Attribute: "birthDate", MessageID: "m-1", FHIRHash: []byte("f"), CRMHash: []byte("c"), FHIRChanged: true, CRMChanged: true},
		fhirBirthDate, crmBirthDate)
	deleteID = hold(logs.HeldConflict{EntityMap: "patient-contact", FHIRType: "Patient", FHIRID: "p2", CRMEntity: "contact", CRMID: "c2",
		DeletedSide: logs.SideCRM, MessageID: "m-2", FHIRChanged: true}, map[string]any{"birthDate": "1902-01-01"}, nil)
	return attrID, deleteID
}

// browserPost posts a form with the headers a browser sends: from this
// app's own page when origin is e.url, else from another site.
func (e *testEnv) browserPost(c *http.Client, path string, form url.Values, origin string) int {
	e.t.Helper()
	req, _ := http.NewRequest(http.MethodPost, e.url+path, strings.NewReader(form.Encode()))
	req.Header.Set("Content-Type", formType)
	req.Header.Set("Origin", origin)
	if origin == e.url {
		req.Header.Set("Sec-Fetch-Site", "same-origin")
	} else {
		req.Header.Set("Sec-Fetch-Site", "cross-site")
	}
	resp, err := c.Do(req)
	if err != nil {
		e.t.Fatal(err)
	}
	resp.Body.Close()
	return resp.StatusCode
}

func TestConflictPagesAndPermissions(t *testing.T) {
	storagetest.Each(t, func(t *testing.T, db *gorm.DB) {
		store, err := logs.New(db, logs.Config{Capture: logs.CaptureConfig{KeyID: "k1", Key: captureKey}}, nil)
		if err != nil {
			t.Fatal(err)
		}
		e := newTestEnv(t, db, AppConfig{}, withLogs(store))
		viewer := e.as(e.user("viewer@example.org", RoleViewer, false))
		phiViewer := e.as(e.user("phi-viewer@example.org", RoleViewer, true))
		operator := e.as(e.user("operator@example.org", RoleOperator, false))
		attrID, deleteID := holdConflicts(t, store)
		attrPath, deletePath := fmt.Sprint("/conflicts/", attrID), fmt.Sprint("/conflicts/", deleteID)

		// The list: every role that reads the sync log; no values.
		code, body := e.page(viewer, "GET", "/conflicts", "", "")
		if code != 200 || !strings.Contains(body, `href="`+attrPath+`">birthDate</a>`) ||
			!strings.Contains(body, "whole record (deleted in CRM)") || !strings.Contains(body, "Patient/p1") ||
			!strings.Contains(body, "contact/c1") || strings.Contains(body, fhirBirthDate) {
			t.Fatalf("conflicts page = %d:\n%.3000s", code, body)
		}
		if !strings.Contains(body, `href="/conflicts"`) {
			t.Error("the navigation has no Conflicts entry")
		}

		// No PHI: no values, and the page says why.
		code, body = e.page(viewer, "GET", attrPath, "", "")
		if code != 200 || !strings.Contains(body, "Hidden: viewing values needs the PHI permission.") ||
			strings.Contains(body, fhirBirthDate) || strings.Contains(body, crmBirthDate) {
			t.Fatalf("detail without PHI = %d:\n%.3000s", code, body)
		}
		if !strings.Contains(body, `id="fhir-changed">yes<`) || !strings.Contains(body, "Never kept in clear") {
			t.Errorf("detail lacks the changed flags or the base sentence:\n%.3000s", body)
		}
		if strings.Contains(body, `id="take-fhir"`) {
			t.Error("a viewer is offered the resolution buttons")
		}
		if code, _ := e.apiCall(viewer, "GET", fmt.Sprint("/api/v1/conflicts/", attrID, "/values"), ""); code != 403 {
			t.Errorf("values API without PHI = %d, want 403", code)
		}
		// A viewer cannot resolve, by form or by API.
		if code, _ := e.page(viewer, "POST", attrPath+"/resolve", formType, "take=fhir"); code != 403 {
			t.Errorf("viewer resolving = %d, want 403", code)
		}
		if code, _ := e.apiCall(viewer, "POST", fmt.Sprint("/api/v1/conflicts/", attrID, "/resolve"), `{"take":"fhir"}`); code != 403 {
			t.Errorf("viewer resolving by API = %d, want 403", code)
		}

		// PHI: the values are shown, and the view is audited.
		code, body = e.page(phiViewer, "GET", attrPath, "", "")
		if code != 200 || !strings.Contains(body, fhirBirthDate) || !strings.Contains(body, crmBirthDate) {
			t.Fatalf("detail with PHI = %d:\n%.3000s", code, body)
		}
		code, out := e.apiCall(phiViewer, "GET", fmt.Sprint("/api/v1/conflicts/", attrID, "/values"), "")
		if code != 200 || out["fhir"] != fhirBirthDate || out["crm"] != crmBirthDate {
			t.Errorf("values API with PHI = %d %v", code, out)
		}
		if got := countOf(e.auditActions(), "phi-viewer@example.org "+logs.AuditViewConflictValues); got != 2 {
			t.Errorf("%d audited value views, want 2: %v", got, e.auditActions())
		}

		// The operator resolves; the cross-origin check applies first.
		code, body = e.page(operator, "GET", attrPath, "", "")
		if code != 200 || !strings.Contains(body, `id="take-fhir"`) || !strings.Contains(body, `id="take-crm"`) || strings.Contains(body, fhirBirthDate) {
			t.Fatalf("detail for the operator = %d:\n%.3000s", code, body)
		}
		if code := e.browserPost(operator, attrPath+"/resolve", url.Values{"take": {"crm"}}, "https://evil.example"); code != 403 {
			t.Errorf("cross-origin resolve = %d, want 403", code)
		}
		if c, _ := store.Conflict(t.Context(), attrID); c.Status != logs.ConflictOpen {
			t.Fatalf("a refused cross-origin resolve changed the conflict: %+v", c)
		}
		if code, _ := e.page(operator, "POST", attrPath+"/resolve", formType, "take=both"); code != 400 {
			t.Errorf("resolve with take=both = %d, want 400", code)
		}
		if code := e.browserPost(operator, attrPath+"/resolve", url.Values{"take": {"crm"}}, e.url); code != http.StatusSeeOther {
			t.Fatalf("same-origin resolve = %d, want 303", code)
		}
		code, body = e.page(operator, "GET", attrPath+"?done=conflict", "", "")
		if code != 200 || !strings.Contains(body, "Resolution recorded.") ||
			!strings.Contains(html.UnescapeString(body), "operator@example.org chose to take the CRM value") || strings.Contains(body, `id="take-fhir"`) {
			t.Errorf("after resolving = %d:\n%.3000s", code, body)
		}
		if c, _ := store.Conflict(t.Context(), attrID); c.Status != logs.ConflictResolved || c.Resolution != "crm" || c.ResolvedBy != "operator@example.org" {
			t.Fatalf("resolved conflict = %+v", c)
		}
		if code, _ := e.page(operator, "POST", attrPath+"/resolve", formType, "take=fhir"); code != http.StatusConflict {
			t.Errorf("resolving twice = %d, want 409", code)
		}
		if !slices.Contains(e.auditActions(), "operator@example.org "+logs.AuditResolveConflict) {
			t.Errorf("the resolution is not in the audit trail: %v", e.auditActions())
		}

		// The delete conflict through the API.
		code, body = e.page(operator, "GET", deletePath, "", "")
		if code != 200 || !strings.Contains(body, `id="apply-delete"`) || !strings.Contains(body, `id="keep-record"`) {
			t.Fatalf("delete conflict detail = %d:\n%.3000s", code, body)
		}
		if code, _ := e.apiCall(operator, "POST", fmt.Sprint("/api/v1/conflicts/", deleteID, "/resolve"), `{}`); code != 400 {
			t.Errorf("API resolve without take = %d, want 400", code)
		}
		code, out = e.apiCall(operator, "POST", fmt.Sprint("/api/v1/conflicts/", deleteID, "/resolve"), `{"take":"fhir"}`)
		if code != 200 || out["status"] != "resolved" || out["resolution"] != "fhir" || out["deleted_side"] != "crm" {
			t.Fatalf("API resolve = %d %v", code, out)
		}
		if code, _ := e.apiCall(operator, "POST", fmt.Sprint("/api/v1/conflicts/", deleteID, "/resolve"), `{"take":"crm"}`); code != 409 {
			t.Errorf("API resolving twice = %d, want 409", code)
		}
		code, out = e.apiCall(viewer, "GET", "/api/v1/conflicts", "")
		if list, _ := out["conflicts"].([]any); code != 200 || len(list) != 2 {
			t.Fatalf("API list = %d %v", code, out)
		}
		code, out = e.apiCall(viewer, "GET", "/api/v1/conflicts?status=open", "")
		if list, _ := out["conflicts"].([]any); code != 200 || len(list) != 0 {
			t.Fatalf("API list of open conflicts = %d %v", code, out)
		}
		code, out = e.apiCall(viewer, "GET", "/api/v1/conflicts?limit=1", "")
		if list, _ := out["conflicts"].([]any); code != 200 || len(list) != 1 || out["next"] != float64(attrID) {
			t.Fatalf("API first page of one = %d %v", code, out)
		}
		if code, _ := e.apiCall(viewer, "GET", "/api/v1/conflicts?status=closed", ""); code != 400 {
			t.Errorf("API list with an unknown status = %d, want 400", code)
		}
		code, out = e.apiCall(viewer, "GET", fmt.Sprint("/api/v1/conflicts/", attrID), "")
		if code != 200 || out["attribute"] != "birthDate" || out["values_kept"] != true || out["fhir_hash"] != nil {
			t.Errorf("API get = %d %v", code, out)
		}
		if code, _ := e.apiCall(viewer, "GET", "/api/v1/conflicts/9999", ""); code != 404 {
			t.Errorf("API get of a missing conflict = %d, want 404", code)
		}
	})
}

func countOf(list []string, s string) int {
	n := 0
	for _, v := range list {
		if v == s {
			n++
		}
	}
	return n
}

// TestConflictValuesNotKept: without a capture key the values are never
// stored, and a PHI holder is told so rather than shown an empty value.
func TestConflictValuesNotKept(t *testing.T) {
	db := storagetest.Open(t, "sqlite")
	e := newTestEnv(t, db, AppConfig{})
	admin := e.as(e.user("admin@example.org", RoleAdmin, true))
	attrID, _ := holdConflicts(t, e.app.data.logs)
	code, body := e.page(admin, "GET", fmt.Sprint("/conflicts/", attrID), "", "")
	if code != 200 || !strings.Contains(body, "Not kept: values are stored, encrypted, only when payload capture keys are configured") ||
		strings.Contains(body, fhirBirthDate) {
		t.Fatalf("detail without capture keys = %d:\n%.3000s", code, body)
	}
	if code, _ := e.apiCall(admin, "GET", fmt.Sprint("/api/v1/conflicts/", attrID, "/values"), ""); code != 404 {
		t.Errorf("values API without capture keys = %d, want 404", code)
	}
	// The dashboard counts the open conflicts and links to them.
	code, body = e.page(admin, "GET", "/", "", "")
	if code != 200 || !strings.Contains(body, `<a href="/conflicts" id="stat-open-conflicts">2</a>`) {
		t.Errorf("dashboard = %d:\n%.3000s", code, body)
	}
	if code, out := e.apiCall(admin, "GET", "/api/v1/dashboard", ""); code != 200 || out["open_conflicts"] != float64(2) {
		t.Errorf("dashboard API = %d %v", code, out["open_conflicts"])
	}
}

// TestSyncLogShowsConflicts: a decision's conflicts on its page, the held
// outcome in the filter, and the conflicts-only filter.
func TestSyncLogShowsConflicts(t *testing.T) {
	db := storagetest.Open(t, "sqlite")
	e := newTestEnv(t, db, AppConfig{})
	viewer := e.as(e.user("viewer@example.org", RoleViewer, false))
	writeDecisions(t, e.app.data.logs, e.clock.now().Add(-time.Hour), 3)
	d := &logs.Decision{Direction: logs.FHIRToCRM, EntityMap: "patient-contact", Source: logs.Ref{Type: "Patient", ID: "p7"},
		Target: logs.Ref{Type: "contact", ID: "c7"}, Outcome: logs.OutcomeHeld, Reason: logs.ReasonConflictHeld,
		ChangedFields: []string{"telephone1"}, Conflicts: []logs.Conflict{
			{Attribute: "birthDate", Policy: logs.PolicyHold, Held: true},
			{Attribute: "phone", Policy: logs.PolicyLastWriterWins, Overwritten: logs.SideCRM},
			{Attribute: "email", Policy: logs.PolicyCRMWins, Tie: true, Deferred: true},
		}}
	if err := e.app.data.logs.Write(t.Context(), d); err != nil {
		t.Fatal(err)
	}
	code, body := e.page(viewer, "GET", fmt.Sprint("/logs/", d.ID), "", "")
	for _, want := range []string{`id="conflicts-table"`, "birthDate", "held for a person", "the CRM value was overwritten",
		"deferred: the other side won", "tie-breaker", "conflict_held"} {
		if !strings.Contains(body, want) {
			t.Errorf("decision page lacks %q", want)
		}
	}
	if code != 200 {
		t.Fatalf("decision page = %d", code)
	}
	code, body = e.page(viewer, "GET", "/logs", "", "")
	if code != 200 || !strings.Contains(body, "<option>held</option>") {
		t.Errorf("the outcome filter lacks held (%d)", code)
	}
	for _, path := range []string{"/logs?outcome=held", "/logs?conflicts=1"} {
		code, body = e.page(viewer, "GET", path, "", "")
		if code != 200 || strings.Count(body, "<tr data-id=") != 1 || !strings.Contains(body, fmt.Sprintf(`data-id="%d"`, d.ID)) {
			t.Errorf("%s = %d, %d rows; want the held decision only", path, code, strings.Count(body, "<tr data-id="))
		}
	}
	if code, _ := e.page(viewer, "GET", "/logs?conflicts=maybe", "", ""); code != 400 {
		t.Errorf("conflicts=maybe = %d, want 400", code)
	}
	if code, out := e.apiCall(viewer, "GET", "/api/v1/logs?conflicts=1", ""); code != 200 || len(out["decisions"].([]any)) != 1 {
		t.Errorf("API conflicts filter = %d %v", code, out)
	}
}
