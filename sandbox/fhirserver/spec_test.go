package fhirserver

// Behaviours the FHIR R4 RESTful API specification states
// (https://hl7.org/fhir/R4/http.html), each test quoting the sentence it
// holds the sandbox to. docs/sandbox-fhir.md lists them.

import (
	"fmt"
	"net/http"
	"strings"
	"testing"
	"time"
)

// issueCode returns the first issue code of an OperationOutcome body.
func issueCode(r resp) string {
	if r.body["resourceType"] != "OperationOutcome" {
		return ""
	}
	issues, _ := r.body["issue"].([]any)
	if len(issues) == 0 {
		return ""
	}
	code, _ := issues[0].(map[string]any)["code"].(string)
	return code
}

func versionOf(r resp) string {
	meta, _ := r.body["meta"].(map[string]any)
	v, _ := meta["versionId"].(string)
	return v
}

// TestSpecConditionalCreate: http.html#ccreate — "No matches: The server
// processes the create as above ... One Match: The server ignores the post
// and returns 200 OK. Multiple matches: The server returns a 412
// Precondition Failed error indicating the client's criteria were not
// selective enough preferably with an OperationOutcome".
func TestSpecConditionalCreate(t *testing.T) {
	t.Parallel()
	s, base := newTest(t, Options{})
	body := func(v string) string {
		return `{"resourceType":"Patient","identifier":[{"system":"urn:mrn","value":"` + v + `"}],"gender":"female"}`
	}
	first := do(t, "POST", base+"/Patient", body("1"), "If-None-Exist", "identifier=urn:mrn|1")
	id, _ := first.body["id"].(string)
	if first.status != http.StatusCreated || id == "" {
		t.Fatalf("no match: status %d id %q, want 201 and an id", first.status, id)
	}
	// "SHALL also return a Location header which contains the new Logical
	// Id and Version Id of the created resource version:
	// Location: [base]/[type]/[id]/_history/[vid]" (http.html#create).
	if got, want := first.header.Get("Location"), base+"/Patient/"+id+"/_history/1"; got != want {
		t.Errorf("Location %q, want %q", got, want)
	}

	tests := []struct {
		name       string
		criteria   string
		wantStatus int
		wantID     string // "" to skip
		wantCode   string // OperationOutcome issue code on failure
		wantCount  int    // resources after the request
	}{
		{name: "one match returns the existing resource and creates nothing", criteria: "identifier=urn:mrn|1",
			wantStatus: http.StatusOK, wantID: id, wantCount: 1},
		{name: "type prefix tolerated", criteria: "Patient?identifier=urn:mrn|1",
			wantStatus: http.StatusOK, wantID: id, wantCount: 1},
		{name: "no match creates", criteria: "identifier=urn:mrn|2", wantStatus: http.StatusCreated, wantCount: 2},
		{name: "several matches fail with 412", criteria: "identifier=urn:mrn|1,urn:mrn|2",
			wantStatus: http.StatusPreconditionFailed, wantCode: "multiple-matches", wantCount: 2},
		{name: "unsupported criteria are refused, never ignored", criteria: "name=x",
			wantStatus: http.StatusBadRequest, wantCode: "not-supported", wantCount: 2},
	}
	for _, tt := range tests {
		// Sequential: each case sees the store the one before left.
		v := tt.criteria[strings.LastIndex(tt.criteria, "|")+1:]
		r := do(t, "POST", base+"/Patient", body(v), "If-None-Exist", tt.criteria)
		if r.status != tt.wantStatus {
			t.Errorf("%s: status %d, want %d", tt.name, r.status, tt.wantStatus)
			continue
		}
		if tt.wantID != "" && (r.body["id"] != tt.wantID || versionOf(r) != "1") {
			t.Errorf("%s: got %v version %s, want %s version 1", tt.name, r.body["id"], versionOf(r), tt.wantID)
		}
		if tt.wantCode != "" && issueCode(r) != tt.wantCode {
			t.Errorf("%s: issue code %q, want %q", tt.name, issueCode(r), tt.wantCode)
		}
		if n, _ := s.Count(t.Context()); n != tt.wantCount {
			t.Errorf("%s: %d resources, want %d", tt.name, n, tt.wantCount)
		}
	}
}

// TestSpecCreateIgnoresIDAndMeta: http.html#create — "If an id is
// provided, the server SHALL ignore it. If the request body includes a
// meta, the server SHALL ignore the existing versionId and lastUpdated
// values. The server SHALL populate the id, meta.versionId and
// meta.lastUpdated with the new correct values."
func TestSpecCreateIgnoresIDAndMeta(t *testing.T) {
	t.Parallel()
	_, base := newTest(t, Options{})
	r := do(t, "POST", base+"/Patient", `{"resourceType":"Patient","id":"mine","meta":{"versionId":"7","lastUpdated":"2001-01-01T00:00:00Z","tag":[{"code":"kept"}]}}`)
	meta, _ := r.body["meta"].(map[string]any)
	if r.status != 201 || r.body["id"] == "mine" || meta["versionId"] != "1" || meta["lastUpdated"] == "2001-01-01T00:00:00Z" {
		t.Fatalf("create: status %d id %v meta %v", r.status, r.body["id"], meta)
	}
	if tags, _ := meta["tag"].([]any); len(tags) != 1 {
		t.Errorf("meta.tag not kept: %v", meta)
	}
}

// TestSpecVersionAwareUpdateAndDelete: http.html#concurrency — "If the
// version id given in the If-Match header does not match, the server
// returns a 412 Precondition Failed status code instead of updating the
// resource." Delete takes If-Match the same way (RFC 9110 section 13.1.1);
// with no current version no entity tag can match, so that is 412 too.
func TestSpecVersionAwareUpdateAndDelete(t *testing.T) {
	t.Parallel()
	_, base := newTest(t, Options{})
	pat := `{"resourceType":"Patient","id":"p1","active":true}`
	do(t, "PUT", base+"/Patient/p1", pat) // version 1
	do(t, "PUT", base+"/Patient/p1", pat) // version 2
	do(t, "PUT", base+"/Patient/gone", `{"resourceType":"Patient","id":"gone"}`)
	do(t, "DELETE", base+"/Patient/gone", "")

	tests := []struct {
		name, method, path, ifMatch string
		wantStatus                  int
		wantCode                    string
		wantETag                    string
	}{
		{name: "update, stale version", method: "PUT", path: "/Patient/p1", ifMatch: `W/"1"`, wantStatus: 412, wantCode: "conflict"},
		{name: "update, strong form of a stale version", method: "PUT", path: "/Patient/p1", ifMatch: `"1"`, wantStatus: 412, wantCode: "conflict"},
		{name: "update, version not a number", method: "PUT", path: "/Patient/p1", ifMatch: `W/"abc"`, wantStatus: 400, wantCode: "invalid"},
		{name: "update, unknown resource", method: "PUT", path: "/Patient/nobody", ifMatch: `W/"1"`, wantStatus: 412, wantCode: "conflict"},
		{name: "update, deleted resource", method: "PUT", path: "/Patient/gone", ifMatch: `W/"1"`, wantStatus: 412, wantCode: "conflict"},
		{name: "delete, stale version", method: "DELETE", path: "/Patient/p1", ifMatch: `W/"1"`, wantStatus: 412, wantCode: "conflict"},
		{name: "delete, unknown resource", method: "DELETE", path: "/Patient/nobody", ifMatch: `W/"1"`, wantStatus: 412, wantCode: "conflict"},
		{name: "delete, already deleted", method: "DELETE", path: "/Patient/gone", ifMatch: `W/"2"`, wantStatus: 412, wantCode: "conflict"},
		{name: "update, current version", method: "PUT", path: "/Patient/p1", ifMatch: `W/"2"`, wantStatus: 200, wantETag: `W/"3"`},
		{name: "delete, current version", method: "DELETE", path: "/Patient/p1", ifMatch: `W/"3"`, wantStatus: 204, wantETag: `W/"4"`},
	}
	for _, tt := range tests {
		body := ""
		if tt.method == "PUT" {
			id := tt.path[strings.LastIndex(tt.path, "/")+1:]
			body = `{"resourceType":"Patient","id":"` + id + `","active":false}`
		}
		r := do(t, tt.method, base+tt.path, body, "If-Match", tt.ifMatch)
		if r.status != tt.wantStatus {
			t.Errorf("%s: status %d, want %d", tt.name, r.status, tt.wantStatus)
			continue
		}
		if tt.wantCode != "" && issueCode(r) != tt.wantCode {
			t.Errorf("%s: issue code %q, want %q", tt.name, issueCode(r), tt.wantCode)
		}
		if tt.wantETag != "" && r.header.Get("ETag") != tt.wantETag {
			t.Errorf("%s: ETag %q, want %q", tt.name, r.header.Get("ETag"), tt.wantETag)
		}
	}
	// The refused writes changed nothing: p1 went 1, 2, 3 (update) and 4
	// (deletion), and "gone" was not brought back.
	if r := do(t, "GET", base+"/Patient/p1/_history", ""); len(r.body["entry"].([]any)) != 4 {
		t.Errorf("p1 has %d versions, want 4", len(r.body["entry"].([]any)))
	}
	if r := do(t, "GET", base+"/Patient/gone", ""); r.status != http.StatusGone {
		t.Errorf("read of gone: %d, want 410", r.status)
	}
	if r := do(t, "GET", base+"/Patient/nobody", ""); r.status != http.StatusNotFound {
		t.Errorf("read of nobody: %d, want 404", r.status)
	}
}

// TestSpecConditionalUpdate: http.html#cond-update — "No matches, no id
// provided: The server performs a create interaction. No matches, id
// provided: The server treats the interaction as an Update as Create
// interaction (or rejects it, if it does not support Update as Create). One
// Match, no
// resource id provided OR (resource id provided and it matches the found
// resource): The server performs the update against the matching resource.
// One Match, resource id provided but does not match resource found: The
// server returns a 400 Bad Request error. Multiple matches: The server
// returns a 412 Precondition Failed error".
func TestSpecConditionalUpdate(t *testing.T) {
	t.Parallel()
	_, base := newTest(t, Options{})
	do(t, "PUT", base+"/Patient/a", `{"resourceType":"Patient","id":"a","identifier":[{"system":"urn:s","value":"a"}]}`)
	do(t, "PUT", base+"/Patient/b", `{"resourceType":"Patient","id":"b","identifier":[{"system":"urn:s","value":"dup"}]}`)
	do(t, "PUT", base+"/Patient/c", `{"resourceType":"Patient","id":"c","identifier":[{"system":"urn:s","value":"dup"}]}`)
	do(t, "PUT", base+"/Patient/d", `{"resourceType":"Patient","id":"d","identifier":[{"system":"urn:s","value":"d"}]}`)
	tests := []struct {
		name, query, id, ifMatch string
		wantStatus               int
		wantID, wantVersion      string
		wantCode                 string
	}{
		{name: "no match, no id: create", query: "identifier=urn:s|new1", wantStatus: 201, wantVersion: "1"},
		{name: "no match, new id: update as create", query: "identifier=urn:s|new2", id: "n2", wantStatus: 201, wantID: "n2", wantVersion: "1"},
		{name: "no match, id exists: update as create updates it (R4 has no 409 case)", query: "identifier=urn:s|new3", id: "d", wantStatus: 200, wantID: "d", wantVersion: "2"},
		{name: "one match, no id: update it", query: "identifier=urn:s|a", wantStatus: 200, wantID: "a", wantVersion: "2"},
		{name: "one match, same id: update it", query: "identifier=urn:s|a", id: "a", wantStatus: 200, wantID: "a", wantVersion: "3"},
		{name: "one match, another id: 400", query: "identifier=urn:s|a", id: "zz", wantStatus: 400, wantCode: "invalid"},
		{name: "one match, stale If-Match: 412", query: "identifier=urn:s|a", ifMatch: `W/"1"`, wantStatus: 412, wantCode: "conflict"},
		{name: "one match, current If-Match: update", query: "identifier=urn:s|a", ifMatch: `W/"3"`, wantStatus: 200, wantID: "a", wantVersion: "4"},
		{name: "multiple matches: 412", query: "identifier=urn:s|dup", wantStatus: 412, wantCode: "multiple-matches"},
	}
	for _, tt := range tests {
		value := tt.query[strings.LastIndex(tt.query, "|")+1:]
		body := `{"resourceType":"Patient","identifier":[{"system":"urn:s","value":"` + value + `"}],"active":true}`
		if tt.id != "" {
			body = strings.Replace(body, `"Patient",`, `"Patient","id":"`+tt.id+`",`, 1)
		}
		var hdr []string
		if tt.ifMatch != "" {
			hdr = []string{"If-Match", tt.ifMatch}
		}
		r := do(t, "PUT", base+"/Patient?"+tt.query, body, hdr...)
		if r.status != tt.wantStatus {
			t.Errorf("%s: status %d, want %d (%v)", tt.name, r.status, tt.wantStatus, r.body)
			continue
		}
		if tt.wantID != "" && r.body["id"] != tt.wantID {
			t.Errorf("%s: id %v, want %s", tt.name, r.body["id"], tt.wantID)
		}
		if tt.wantVersion != "" && (versionOf(r) != tt.wantVersion || r.header.Get("ETag") != `W/"`+tt.wantVersion+`"`) {
			t.Errorf("%s: version %s ETag %q, want %s", tt.name, versionOf(r), r.header.Get("ETag"), tt.wantVersion)
		}
		if tt.wantCode != "" && issueCode(r) != tt.wantCode {
			t.Errorf("%s: issue code %q, want %q", tt.name, issueCode(r), tt.wantCode)
		}
		if r.status == 201 && !strings.HasSuffix(r.header.Get("Location"), "/_history/1") {
			t.Errorf("%s: Location %q", tt.name, r.header.Get("Location"))
		}
	}
}

// TestSpecHistory: http.html#history — "The return content is a Bundle
// with type set to history containing the specified version history,
// sorted with oldest versions last, and including deleted resources. Each
// entry SHALL minimally contain at least one of: a resource which holds
// the resource as it is at the conclusion of the interaction, or a request
// with entry.request.method." "_since: Only include resource versions that
// were created at or after the given instant in time"; "_count: ... The
// server is not bound to return the number requested, but cannot return
// more". Paging follows http.html#paging (link relation next).
func TestSpecHistory(t *testing.T) {
	t.Parallel()
	clock := &fakeClock{t: time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)}
	_, base := newTest(t, Options{Now: clock.now})
	write := func(method, path, body string) {
		if r := do(t, method, base+path, body); r.status >= 300 {
			t.Fatalf("%s %s: %d", method, path, r.status)
		}
		clock.add(time.Second)
	}
	write("POST", "/Patient", `{"resourceType":"Patient","active":true}`)          // 12:00:00
	write("PUT", "/Patient/p1", `{"resourceType":"Patient","id":"p1"}`)            // 12:00:01
	write("PUT", "/Observation/o1", `{"resourceType":"Observation","id":"o1"}`)    // 12:00:02
	write("PUT", "/Patient/p1", `{"resourceType":"Patient","id":"p1","active":1}`) // 12:00:03
	write("DELETE", "/Patient/p1", "")                                             // 12:00:04
	write("PUT", "/Patient/p2", `{"resourceType":"Patient","id":"p2"}`)            // 12:00:05

	type step struct{ ref, method, status string }
	tests := []struct {
		name, path string
		want       []step // newest first, across every page
	}{
		{name: "instance", path: "/Patient/p1/_history?_count=2", want: []step{
			{"Patient/p1", "DELETE", "204"}, {"Patient/p1", "PUT", "200"}, {"Patient/p1", "POST", "201"}}},
		{name: "type since 12:00:01", path: "/Patient/_history?_count=2&_since=2026-03-01T12:00:01Z", want: []step{
			{"Patient/p2", "POST", "201"}, {"Patient/p1", "DELETE", "204"}, {"Patient/p1", "PUT", "200"}, {"Patient/p1", "POST", "201"}}},
		{name: "type since a later instant with an offset", path: "/Patient/_history?_since=2026-03-01T14:00:03%2B02:00", want: []step{
			{"Patient/p2", "POST", "201"}, {"Patient/p1", "DELETE", "204"}, {"Patient/p1", "PUT", "200"}}},
		{name: "system, one per page", path: "/_history?_count=1&_since=2026-03-01T12:00:02Z", want: []step{
			{"Patient/p2", "POST", "201"}, {"Patient/p1", "DELETE", "204"}, {"Patient/p1", "PUT", "200"}, {"Observation/o1", "POST", "201"}}},
		{name: "since after every change", path: "/_history?_since=2026-03-01T13:00:00Z", want: nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var got []step
			count := 0
			if i := strings.Index(tt.path, "_count="); i >= 0 {
				fmt.Sscanf(tt.path[i+len("_count="):], "%d", &count)
			}
			var lastModified []string
			for next := base + tt.path; next != ""; {
				r := do(t, "GET", next, "")
				if r.status != 200 || r.body["resourceType"] != "Bundle" || r.body["type"] != "history" {
					t.Fatalf("GET %s: %d %v %v, want 200 and a history Bundle", next, r.status, r.body["resourceType"], r.body["type"])
				}
				entries, _ := r.body["entry"].([]any)
				if count > 0 && len(entries) > count {
					t.Fatalf("page has %d entries, _count was %d", len(entries), count)
				}
				next = ""
				for _, l := range r.body["link"].([]any) {
					if l.(map[string]any)["relation"] == "next" {
						next = l.(map[string]any)["url"].(string)
					}
				}
				for _, e := range entries {
					e := e.(map[string]any)
					req, _ := e["request"].(map[string]any)
					res, _ := e["response"].(map[string]any)
					method, _ := req["method"].(string)
					status, _ := res["status"].(string)
					full, _ := e["fullUrl"].(string)
					ref := strings.TrimPrefix(full, base+"/")
					resource, hasResource := e["resource"].(map[string]any)
					// "If the entry.request.method is a PUT or a POST, the
					// entry SHALL contain a resource"; a deletion has none.
					if (method == "DELETE") == hasResource {
						t.Errorf("%s %s: resource present = %v", method, ref, hasResource)
					}
					if hasResource {
						meta := resource["meta"].(map[string]any)
						if res["etag"] != `W/"`+meta["versionId"].(string)+`"` {
							t.Errorf("%s: response.etag %v for version %v", ref, res["etag"], meta["versionId"])
						}
					}
					lm, _ := res["lastModified"].(string)
					lastModified = append(lastModified, lm)
					got = append(got, step{ref, method, strings.Fields(status + " ")[0]})
				}
			}
			if fmt.Sprint(got) != fmt.Sprint(tt.want) {
				t.Errorf("entries %v, want %v", got, tt.want)
			}
			for i := 1; i < len(lastModified); i++ {
				if lastModified[i] > lastModified[i-1] {
					t.Errorf("entry %d (%s) is newer than the one before (%s): oldest versions must come last", i, lastModified[i], lastModified[i-1])
				}
			}
		})
	}
	if r := do(t, "GET", base+"/Patient/nobody/_history", ""); r.status != 404 || issueCode(r) != "not-found" {
		t.Errorf("history of an unknown resource: %d %q, want 404 not-found", r.status, issueCode(r))
	}
	if r := do(t, "GET", base+"/_history?_since=2026-03-01", ""); r.status != 400 {
		t.Errorf("_since without a time: %d, want 400 (an instant is required)", r.status)
	}
}

// TestSpecReadHeadersAndErrors: http.html#read — "Servers SHOULD return an
// ETag header with the versionId of the resource (if versioning is
// supported) and a Last-Modified header"; "A GET for a deleted resource
// returns a 410 status code, whereas a GET for an unknown resource returns
// 404"; http.html#vread — "If the version referred to is actually one
// where the resource was deleted, the server should return a 410 status
// code"; http.html#update — "If no id element is provided, or the id
// disagrees with the id in the URL, the server SHALL respond with an HTTP
// 400 error code, and SHOULD provide an OperationOutcome identifying the
// issue". The issue codes are those of the R4 IssueType value set
// (valueset-issue-type.html).
func TestSpecReadHeadersAndErrors(t *testing.T) {
	t.Parallel()
	clock := &fakeClock{t: time.Date(2026, 3, 1, 12, 0, 0, 250e6, time.UTC)}
	_, base := newTest(t, Options{Now: clock.now})
	do(t, "PUT", base+"/Patient/p1", `{"resourceType":"Patient","id":"p1"}`)
	for _, path := range []string{"/Patient/p1", "/Patient/p1/_history/1"} {
		r := do(t, "GET", base+path, "")
		if r.header.Get("ETag") != `W/"1"` || r.header.Get("Last-Modified") != "Sun, 01 Mar 2026 12:00:00 GMT" {
			t.Errorf("GET %s: ETag %q Last-Modified %q", path, r.header.Get("ETag"), r.header.Get("Last-Modified"))
		}
	}
	do(t, "PUT", base+"/Patient/d1", `{"resourceType":"Patient","id":"d1"}`)
	do(t, "DELETE", base+"/Patient/d1", "")
	tests := []struct {
		name, method, path, body string
		wantStatus               int
		wantCode                 string
	}{
		{"read unknown", "GET", "/Patient/nobody", "", 404, "not-found"},
		{"read deleted", "GET", "/Patient/d1", "", 410, "deleted"},
		{"vread deletion", "GET", "/Patient/d1/_history/2", "", 410, "deleted"},
		{"vread unknown version", "GET", "/Patient/p1/_history/5", "", 404, "not-found"},
		{"update without id", "PUT", "/Patient/p1", `{"resourceType":"Patient"}`, 400, "invalid"},
		{"update with another id", "PUT", "/Patient/p1", `{"resourceType":"Patient","id":"p2"}`, 400, "invalid"},
		{"create of the wrong type", "POST", "/Patient", `{"resourceType":"Observation"}`, 400, "invalid"},
		{"body not JSON", "POST", "/Patient", `{`, 400, "structure"},
		{"unsupported search parameter", "GET", "/Patient?family=x", "", 400, "not-supported"},
		{"unknown interaction", "GET", "/Patient/p1/_history/1/x", "", 404, "not-supported"},
	}
	for _, tt := range tests {
		r := do(t, tt.method, base+tt.path, tt.body)
		if r.status != tt.wantStatus || issueCode(r) != tt.wantCode {
			t.Errorf("%s: %d %q, want %d with an OperationOutcome coded %q", tt.name, r.status, issueCode(r), tt.wantStatus, tt.wantCode)
		}
	}
}

// TestSpecPrefer: http.html#return — "Prefer: return=minimal ... asks to
// return no body. Prefer: return=representation asks to return the full
// resource. Prefer: return=OperationOutcome asks the server to return an
// OperationOutcome resource ... Servers SHOULD honor this header."
func TestSpecPrefer(t *testing.T) {
	t.Parallel()
	_, base := newTest(t, Options{})
	tests := []struct {
		prefer   string
		wantType string // "" for no body
	}{
		{"return=minimal", ""},
		{"return=representation", "Patient"},
		{"return=OperationOutcome", "OperationOutcome"},
		{"", "Patient"},
	}
	for i, tt := range tests {
		path := fmt.Sprintf("/Patient/pref%d", i)
		body := fmt.Sprintf(`{"resourceType":"Patient","id":"pref%d"}`, i)
		var hdr []string
		if tt.prefer != "" {
			hdr = []string{"Prefer", tt.prefer}
		}
		r := do(t, "PUT", base+path, body, hdr...)
		got, _ := r.body["resourceType"].(string)
		if r.status != 201 || got != tt.wantType || r.header.Get("ETag") != `W/"1"` || r.header.Get("Location") == "" {
			t.Errorf("Prefer %q: %d body %q ETag %q Location %q, want 201 body %q with ETag and Location",
				tt.prefer, r.status, got, r.header.Get("ETag"), r.header.Get("Location"), tt.wantType)
		}
	}
}

// TestSpecBatchPreferMinimal: http.html#return — for create, update and
// transaction, "In the case of transactions this means returning a Bundle
// with just the Bundle.entry.response populated for each entry, and not
// the Bundle.entry.resource values". With return=minimal a batch's
// writes come back as their response alone (status, location, etag,
// lastModified); a read's entry keeps the resource it read. Without the
// header every entry carries its resource.
func TestSpecBatchPreferMinimal(t *testing.T) {
	t.Parallel()
	_, base := newTest(t, Options{})
	if r := do(t, "PUT", base+"/Patient/pm-read", `{"resourceType":"Patient","id":"pm-read"}`); r.status != 201 {
		t.Fatalf("seeding: %d", r.status)
	}
	for _, prefer := range []string{"return=minimal", ""} {
		id := "pm-upd" + strings.TrimPrefix(prefer, "return=")
		body := `{"resourceType":"Bundle","type":"batch","entry":[
			{"fullUrl":"urn:uuid:6f1c9a52-1d55-4f4f-9a0e-2b7f1f6f3c11","resource":{"resourceType":"Patient"},"request":{"method":"POST","url":"Patient"}},
			{"resource":{"resourceType":"Patient","id":"` + id + `"},"request":{"method":"PUT","url":"Patient/` + id + `"}},
			{"request":{"method":"GET","url":"Patient/pm-read"}}]}`
		var hdr []string
		if prefer != "" {
			hdr = []string{"Prefer", prefer}
		}
		r := do(t, "POST", base, body, hdr...)
		entries, _ := r.body["entry"].([]any)
		if r.status != 200 || len(entries) != 3 {
			t.Fatalf("Prefer %q: %d with %d entries, want 200 with 3", prefer, r.status, len(entries))
		}
		for i, it := range entries {
			e, _ := it.(map[string]any)
			res, _ := e["resource"].(map[string]any)
			rsp, _ := e["response"].(map[string]any)
			wantResource := prefer == "" || i == 2
			if (res != nil) != wantResource {
				t.Errorf("Prefer %q, entry %d: resource %v, want one: %v", prefer, i, res, wantResource)
			}
			if rsp["status"] == nil || rsp["etag"] == nil || rsp["lastModified"] == nil {
				t.Errorf("Prefer %q, entry %d: response %v, want status, etag and lastModified", prefer, i, rsp)
			}
			if loc, _ := rsp["location"].(string); i == 0 && !strings.Contains(loc, "/_history/1") {
				t.Errorf("Prefer %q: the create's location %q names no version", prefer, loc)
			}
		}
	}
}
