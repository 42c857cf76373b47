package crm

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"net/http/httptest"
	"path"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/fhirsync/fhirsync/sandbox/corpus"
)

// The Web API conformance test serves every Dataverse answer of the
// conformance corpus (testdata/conformance/dataverse/webapi and the
// hand-changed ones under testdata/conformance/modified/dataverse, each
// listed in testdata/conformance/SOURCES.md) to the client call it answers,
// and checks what the client makes of it. A file without an expectation
// below fails, so adding a sample adds a case.

// webapiAnswers lists the printed answers of the corpus (relative to it)
// whose file name starts with prefix.
func webapiAnswers(t testing.TB, prefix string) []string {
	t.Helper()
	files, err := corpus.Files("dataverse/webapi", "modified/dataverse")
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, rel := range files {
		if strings.HasPrefix(path.Base(rel), prefix) && strings.HasSuffix(rel, ".response.http") {
			out = append(out, rel)
		}
	}
	return out
}

// printedAnswer is an HTTP answer as Microsoft's documentation prints it.
type printedAnswer struct {
	status int
	header http.Header
	body   []byte
}

var statusLine = regexp.MustCompile(`^HTTP/1\.1 (\d{3})\b`)
var headerLine = regexp.MustCompile(`^[A-Za-z0-9._-]+:`)

// readPrinted parses an answer as the documentation prints it: leading
// blank lines, trailing spaces, a separator line made of spaces, or none
// at all before a JSON body. Only the printing is forgiven; status,
// headers and body are kept as printed (Content-Length is left to the
// test server, which knows the body's real length).
func readPrinted(b []byte) (printedAnswer, error) {
	var a printedAnswer
	rest := b
	line := func() ([]byte, bool) {
		if len(rest) == 0 {
			return nil, false
		}
		l, r, _ := bytes.Cut(rest, []byte("\n"))
		rest = r
		return bytes.TrimRight(l, "\r\t "), true
	}
	var l []byte
	ok := true
	for ok {
		if l, ok = line(); ok && len(l) > 0 {
			break
		}
	}
	m := statusLine.FindSubmatch(l)
	if m == nil {
		return a, errors.New("no HTTP/1.1 status line")
	}
	a.status, _ = strconv.Atoi(string(m[1]))
	a.header = http.Header{}
	for len(rest) > 0 {
		l, r, _ := bytes.Cut(rest, []byte("\n"))
		t := bytes.TrimRight(l, "\r\t ")
		if len(t) == 0 {
			rest = r
			break
		}
		if !headerLine.Match(t) {
			break // the body follows the headers without a blank line
		}
		rest = r
		k, v, _ := strings.Cut(string(t), ":")
		if strings.EqualFold(k, "Content-Length") || strings.EqualFold(k, "Transfer-Encoding") {
			continue
		}
		a.header.Add(k, strings.TrimSpace(v))
	}
	a.body = rest
	return a, nil
}

// organizationURI replaces the documentation's placeholder for the
// organisation's address with the test server's.
func organizationURI(b []byte, base string) []byte {
	b = bytes.ReplaceAll(b, []byte("[Organization URI]"), []byte(base))
	return bytes.ReplaceAll(b, []byte("[Organization Uri]"), []byte(base))
}

// webapiCase is what one answer must decode to.
type webapiCase struct {
	// version is the API version the sample was taken with; the client's
	// service root uses it so the answer's links are the service's own.
	version string
	// then answers the requests after the first (a next page).
	then string
	// method is the method of the client's first request.
	method string
	// run makes the client call the answer belongs to and checks the
	// result; reqs are the requests the server saw, in order.
	run func(t *testing.T, c *Client, base string, reqs func() []*http.Request)
}

// Ids and ETags below are copied from the samples.
var webapiCases = map[string]webapiCase{
	"batch-no-changeset.response.http": {method: "POST", run: func(t *testing.T, c *Client, _ string, _ func() []*http.Request) {
		res := batchOf(t, c, Batch{Items: []BatchItem{single(createTask()), single(createTask()), single(createTask()), single(getTasks())}})
		wantCreated(t, res[:3], "d31ba648-c592-ed11-aad1-000d3a993550", "d41ba648-c592-ed11-aad1-000d3a993550", "d51ba648-c592-ed11-aad1-000d3a993550")
		wantTaskList(t, res[3], 3)
	}},
	"batch-changeset.response.http": {method: "POST", run: func(t *testing.T, c *Client, _ string, _ func() []*http.Request) {
		res := batchOf(t, c, Batch{Items: []BatchItem{{ChangeSet: []Op{createTask(), createTask(), createTask()}}, single(getTasks())}})
		wantCreated(t, res[:3], "e73ffc82-e292-ed11-aad1-000d3a9933c9", "e83ffc82-e292-ed11-aad1-000d3a9933c9", "e93ffc82-e292-ed11-aad1-000d3a9933c9")
		wantTaskList(t, res[3], 3)
	}},
	"batch-changeset-content-id-body.response.http": {method: "POST", run: func(t *testing.T, c *Client, _ string, _ func() []*http.Request) {
		lead, _ := CreateOp("leads", Record{"firstname": "first name", "lastname": "last name"})
		con, _ := CreateOp("contacts", Record{"firstname": "first name"})
		acc, _ := CreateOp("accounts", Record{"name": "IcM Account", "originatingleadid@odata.bind": "$1", "primarycontactid@odata.bind": "$2"})
		res := batchOf(t, c, Batch{Items: []BatchItem{{ChangeSet: []Op{lead, con, acc}}}})
		wantCreated(t, res, "425195a4-7a75-e911-a97a-000d3a34a1bd", "495195a4-7a75-e911-a97a-000d3a34a1bd", "4f5195a4-7a75-e911-a97a-000d3a34a1bd")
	}},
	"batch-changeset-content-id-url.response.http": {method: "POST", run: func(t *testing.T, c *Client, _ string, _ func() []*http.Request) {
		con, _ := CreateOp("contacts", Record{"firstname": "First Name", "lastname": "Last name"})
		put := Op{Method: http.MethodPut, Path: "$1/lastname", Body: []byte(`{"value":"BBBBB"}`)}
		res := batchOf(t, c, Batch{Items: []BatchItem{{ChangeSet: []Op{con, put}}}})
		wantCreated(t, res[:1], "f8ea5d2c-8c75-e911-a97a-000d3a34a1bd")
		if res[1].Status != http.StatusNoContent || res[1].Err != nil {
			t.Errorf("PUT $1/lastname: status %d err %v, want 204", res[1].Status, res[1].Err)
		}
	}},
	"batch-error-stops.response.http":                         {method: "POST", run: batchStopsAtFirstFailure},
	"batch-error-stops.crlf.response.http":                    {method: "POST", run: batchStopsAtFirstFailure},
	"batch-continue-on-error.response.http":                   {method: "POST", run: batchContinuesOnError},
	"batch-continue-on-error.crlf.response.http":              {method: "POST", run: batchContinuesOnError},
	"batch-changeset.crlf.response.http":                      {method: "POST", run: batchChangeSetCRLF},
	"create-basic.response.http":                              {version: "v9.0", method: "POST", run: createBasic},
	"create-return-representation.response.http":              {version: "v9.0", method: "PATCH", run: upsertCreatedWithRepresentation},
	"update-return-representation.response.http":              {version: "v9.0", method: "PATCH", run: upsertUpdatedWithRepresentation},
	"delete-basic.response.http":                              {version: "v9.0", method: "DELETE", run: deleteBasic},
	"conditional-retrieve-not-modified.response.http":         {version: "v9.0", method: "GET", run: retrieveNotModified},
	"delete-if-match-precondition-failed.response.http":       {version: "v9.0", method: "DELETE", run: deleteVersionMismatch},
	"update-if-match-precondition-failed.response.http":       {version: "v9.0", method: "PATCH", run: updateVersionMismatch},
	"upsert-prevent-create-not-found.response.http":           {version: "v9.0", method: "PATCH", run: upsertUpdateOnlyMissing},
	"upsert-prevent-update-precondition-failed.response.http": {version: "v9.0", method: "PATCH", run: upsertCreateOnlyExists},
	"create-plugin-error-annotations.response.http":           {version: "v9.1", method: "POST", run: pluginError(false)},
	"create-plugin-error-annotations.repaired.response.http":  {version: "v9.1", method: "POST", run: pluginError(true)},
	"change-tracking-initial.response.http":                   {version: "v9.0", method: "GET", run: changesInitial},
	"change-tracking-delta.response.http":                     {version: "v9.0", method: "GET", run: changesDelta},
	"paging-first-page.response.http":                         {then: "paging-next-page.response.http", method: "GET", run: pagingFollowsNextLink},
	"paging-next-page.response.http":                          {method: "GET", run: pagingLastPageRead},
	"select-columns.response.http":                            {method: "GET", run: selectColumns},
	"formatted-values.response.http":                          {method: "GET", run: formattedValues},
	"lookup-annotations.response.http":                        {method: "GET", run: lookupAnnotations},
	"whoami-fiddler.response.http":                            {method: "GET", run: whoAmI},
	"service-protection-429-requests.response.http":           {method: "GET", run: throttled("0x80072322", "Number of requests exceeded the limit of 6000")},
	"service-protection-429-execution-time.response.http":     {method: "GET", run: throttled("0x80072321", "Combined execution time of incoming requests exceeded limit")},
	"service-protection-429-concurrency.response.http":        {method: "GET", run: throttled("0x80072326", "Number of concurrent requests exceeded the limit of 52")},
	// CreateMultiple and UpdateMultiple are not calls fhirsync makes; the
	// client's JSON decoding is still held to their answers.
	"create-multiple.response.http": {method: "", run: nil},
	"update-multiple.response.http": {method: "", run: nil},
}

func TestWebAPIConformance(t *testing.T) {
	t.Parallel()
	files := webapiAnswers(t, "")
	if len(files) < 20 {
		t.Fatalf("found %d Web API answers in the corpus, want at least 20", len(files))
	}
	for _, rel := range files {
		t.Run(rel, func(t *testing.T) {
			t.Parallel()
			tc, ok := webapiCases[path.Base(rel)]
			if !ok {
				t.Fatalf("no expectation for %s", rel)
			}
			raw := readCorpusFile(t, rel)
			if tc.run == nil {
				noClientCall(t, raw)
				return
			}
			var thenRaw []byte
			if tc.then != "" {
				thenRaw = readCorpusFile(t, path.Join(path.Dir(rel), tc.then))
			}
			var mu sync.Mutex
			var reqs []*http.Request
			var base string
			hs := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				mu.Lock()
				reqs = append(reqs, r)
				n := len(reqs)
				mu.Unlock()
				src := raw
				if n > 1 && thenRaw != nil {
					src = thenRaw
				}
				a, err := readPrinted(organizationURI(src, base))
				if err != nil {
					t.Errorf("reading the sample: %v", err)
					w.WriteHeader(599)
					return
				}
				if a.header.Get("Content-Type") == "" {
					w.Header()["Content-Type"] = nil // as printed: no sniffed type
				}
				for k, v := range a.header {
					w.Header()[k] = v
				}
				w.WriteHeader(a.status)
				_, _ = w.Write(a.body)
			}))
			defer hs.Close()
			base = hs.URL
			version := tc.version
			if version == "" {
				version = "v9.2"
			}
			c, err := New(Config{URL: hs.URL + "/api/data/" + version + "/", MaxRetries: -1})
			if err != nil {
				t.Fatal(err)
			}
			tc.run(t, c, hs.URL, func() []*http.Request { mu.Lock(); defer mu.Unlock(); return slices.Clone(reqs) })
			mu.Lock()
			defer mu.Unlock()
			if len(reqs) == 0 {
				t.Fatal("the client sent no request")
			}
			if reqs[0].Method != tc.method {
				t.Errorf("first request %s %s, want method %s", reqs[0].Method, reqs[0].URL.Path, tc.method)
			}
		})
	}
}

// noClientCall holds an answer to a call the client does not make to what
// the client's decoders accept: a 2xx whose JSON body, if any, decodes.
func noClientCall(t *testing.T, raw []byte) {
	t.Helper()
	a, err := readPrinted(raw)
	if err != nil {
		t.Fatal(err)
	}
	if a.status < 200 || a.status > 299 {
		t.Fatalf("status %d, want a success", a.status)
	}
	if len(bytes.TrimSpace(a.body)) == 0 {
		return
	}
	var v map[string]any
	if err := decodeJSON("reading a bulk answer", result{status: a.status, header: a.header, body: a.body}, &v); err != nil || len(v) == 0 {
		t.Fatalf("decoding the body: %v", err)
	}
}

func single(op Op) BatchItem { return BatchItem{Op: &op} }

func createTask() Op {
	op, _ := CreateOp("tasks", Record{"subject": "Task in batch", "regardingobjectid_account_task@odata.bind": "accounts(00000000-0000-0000-0000-000000000001)"})
	return op
}

func getTasks() Op {
	return Op{Method: http.MethodGet, Path: "accounts(00000000-0000-0000-0000-000000000001)/Account_Tasks?$select=subject"}
}

func batchOf(t *testing.T, c *Client, b Batch) []OpResult {
	t.Helper()
	res, err := c.ExecuteBatch(context.Background(), b)
	if err != nil {
		t.Fatalf("batch: %v", err)
	}
	if len(res) != b.size() {
		t.Fatalf("%d results for %d requests", len(res), b.size())
	}
	return res
}

func wantCreated(t *testing.T, res []OpResult, ids ...string) {
	t.Helper()
	for i, id := range ids {
		got, _ := idFromEntityID(res[i].Header.Get("OData-EntityId"))
		if res[i].Status != http.StatusNoContent || res[i].Err != nil || got != id {
			t.Errorf("request %d: status %d err %v id %q, want 204 with id %s", i+1, res[i].Status, res[i].Err, got, id)
		}
	}
}

func wantTaskList(t *testing.T, r OpResult, n int) {
	t.Helper()
	var pg struct {
		Value []Record `json:"value"`
	}
	if r.Status != http.StatusOK || r.Err != nil {
		t.Fatalf("GET in batch: status %d err %v", r.Status, r.Err)
	}
	if err := decodeJSON("reading the batch GET", result{status: r.Status, header: r.Header, body: r.Body}, &pg); err != nil {
		t.Fatal(err)
	}
	if len(pg.Value) != n || pg.Value[0].ETag() == "" || pg.Value[0].String("activityid") == "" {
		t.Errorf("GET in batch: %d rows (%v), want %d with ETags and ids", len(pg.Value), pg.Value, n)
	}
}

// wantErr checks a classified error: class, status, code and the start of
// the CRM's message.
func wantErr(t *testing.T, err error, class Class, status int, code, msg string) *Error {
	t.Helper()
	e, ok := AsError(err)
	if !ok {
		t.Fatalf("error %v is not a *crm.Error", err)
	}
	if e.Class != class || e.Status != status || e.Code != code || !strings.HasPrefix(e.Message, msg) {
		t.Fatalf("error = class %s status %d code %q message %q; want %s %d %q %q…", e.Class, e.Status, e.Code, e.Message, class, status, code, msg)
	}
	return e
}

const subjectTooLong = "A validation error occurred.  The length of the 'subject' attribute of the 'task' entity exceeded the maximum allowed length of '200'."

func batchStopsAtFirstFailure(t *testing.T, c *Client, _ string, _ func() []*http.Request) {
	res := batchOf(t, c, Batch{Items: []BatchItem{single(createTask()), single(createTask()), single(createTask())}})
	e := wantErr(t, res[0].Err, ClassRejected, 400, "0x80044331", subjectTooLong)
	if e.Request != 1 || res[0].Status != 400 {
		t.Errorf("failure attributed to request %d (status %d), want request 1", e.Request, res[0].Status)
	}
	if !res[1].Skipped || !res[2].Skipped {
		t.Errorf("requests 2 and 3 = %+v, %+v; want skipped (never executed)", res[1], res[2])
	}
	if s := e.Error(); !strings.Contains(s, "batch request 1") || strings.Contains(s, "'subject'") {
		t.Errorf("error text %q should name request 1 and elide quoted values", s)
	}
}

func batchContinuesOnError(t *testing.T, c *Client, _ string, reqs func() []*http.Request) {
	res := batchOf(t, c, Batch{ContinueOnError: true, Items: []BatchItem{single(createTask()), single(createTask()), single(createTask())}})
	e := wantErr(t, res[0].Err, ClassRejected, 400, "0x80044331", subjectTooLong)
	if e.Request != 1 {
		t.Errorf("failure attributed to request %d, want 1", e.Request)
	}
	wantCreated(t, res[1:], "aed2ae8b-3c94-ed11-aad1-000d3a9933c9", "b181a991-3c94-ed11-aad1-000d3a9933c9")
	if p := reqs()[0].Header.Get("Prefer"); p != "odata.continue-on-error" {
		t.Errorf("Prefer = %q, want odata.continue-on-error", p)
	}
}

func batchChangeSetCRLF(t *testing.T, c *Client, _ string, _ func() []*http.Request) {
	res := batchOf(t, c, Batch{Items: []BatchItem{{ChangeSet: []Op{createTask(), createTask(), createTask()}}, single(getTasks())}})
	wantCreated(t, res[:3], "e73ffc82-e292-ed11-aad1-000d3a9933c9", "e83ffc82-e292-ed11-aad1-000d3a9933c9", "e93ffc82-e292-ed11-aad1-000d3a9933c9")
	wantTaskList(t, res[3], 3)
}

func createBasic(t *testing.T, c *Client, _ string, _ func() []*http.Request) {
	id, err := c.Create(context.Background(), "accounts", Record{"name": "Sample Account"})
	if err != nil || id != "7eb682f1-ca75-e511-80d4-00155d2a68d1" {
		t.Fatalf("Create = %q, %v; want 7eb682f1-ca75-e511-80d4-00155d2a68d1", id, err)
	}
}

// A create with Prefer: return=representation is answered 201 with the row;
// the client's upsert gets the same answer when it creates.
func upsertCreatedWithRepresentation(t *testing.T, c *Client, _ string, _ func() []*http.Request) {
	r, err := c.Upsert(context.Background(), ByKey("accounts", "accountnumber", "A-1"), Record{"name": "Sample Account"}, UpsertOptions{FullRecord: true})
	if err != nil {
		t.Fatal(err)
	}
	if !r.Created || r.ID != "d6f193fc-ce85-e611-80d8-00155d2a68de" || r.ETag != `W/"536530"` || r.Record.String("name") != "Sample Account" {
		t.Fatalf("upsert = created %v id %s etag %s", r.Created, r.ID, r.ETag)
	}
	if v, _ := r.Record["revenue"].(json.Number); v != "5000000.0000" {
		t.Errorf("revenue = %v, want the exact 5000000.0000", r.Record["revenue"])
	}
}

func upsertUpdatedWithRepresentation(t *testing.T, c *Client, _ string, reqs func() []*http.Request) {
	r, err := c.Upsert(context.Background(), ByID("accounts", "00000000-0000-0000-0000-000000000001"), Record{"name": "Updated Sample Account"}, UpsertOptions{Mode: UpdateOnly, FullRecord: true})
	if err != nil {
		t.Fatal(err)
	}
	if r.Created || r.ID != "00000000-0000-0000-0000-000000000001" || r.ETag != `W/"536537"` {
		t.Fatalf("upsert = created %v id %s etag %s, want an update of the row with W/\"536537\"", r.Created, r.ID, r.ETag)
	}
	if h := reqs()[0].Header; h.Get("If-Match") != "*" || h.Get("Prefer") != "return=representation" {
		t.Errorf("request headers %v, want If-Match: * and Prefer: return=representation", h)
	}
}

func deleteBasic(t *testing.T, c *Client, _ string, _ func() []*http.Request) {
	if err := c.Delete(context.Background(), ByID("accounts", "00000000-0000-0000-0000-000000000001"), ""); err != nil {
		t.Fatal(err)
	}
}

func retrieveNotModified(t *testing.T, c *Client, _ string, reqs func() []*http.Request) {
	rec, changed, err := c.RetrieveIfChanged(context.Background(), ByID("accounts", "00000000-0000-0000-0000-000000000001"), `W/"468026"`, "name")
	if err != nil || changed || rec != nil {
		t.Fatalf("RetrieveIfChanged = %v, %v, %v; want not changed", rec, changed, err)
	}
	if got := reqs()[0].Header.Get("If-None-Match"); got != `W/"468026"` {
		t.Errorf("If-None-Match = %q", got)
	}
}

const versionMismatch = "The version of the existing record doesn't match the RowVersion property provided."

func deleteVersionMismatch(t *testing.T, c *Client, _ string, _ func() []*http.Request) {
	err := c.Delete(context.Background(), ByID("accounts", "00000000-0000-0000-0000-000000000001"), `W/"470867"`)
	wantErr(t, err, ClassConflict, 412, "", versionMismatch)
}

func updateVersionMismatch(t *testing.T, c *Client, _ string, reqs func() []*http.Request) {
	_, err := c.Upsert(context.Background(), ByID("accounts", "00000000-0000-0000-0000-000000000001"), Record{"name": "Updated Account Name"}, UpsertOptions{IfMatch: `W/"470867"`})
	e := wantErr(t, err, ClassConflict, 412, "", versionMismatch)
	if e.Retryable {
		t.Error("a 412 is not retryable as the same request: it needs a re-read")
	}
	if n := len(reqs()); n != 1 {
		t.Errorf("%d requests, want 1 (the same If-Match cannot succeed again)", n)
	}
}

func upsertUpdateOnlyMissing(t *testing.T, c *Client, _ string, _ func() []*http.Request) {
	_, err := c.Upsert(context.Background(), ByID("accounts", "00000000-0000-0000-0000-000000000001"), Record{"name": "x"}, UpsertOptions{Mode: UpdateOnly})
	wantErr(t, err, ClassNotFound, 404, "", "account With Id = 00000000-0000-0000-0000-000000000001 Does Not Exist")
	if !errors.Is(err, ErrNotFound) {
		t.Error("a 404 should match ErrNotFound")
	}
}

func upsertCreateOnlyExists(t *testing.T, c *Client, _ string, _ func() []*http.Request) {
	_, err := c.Upsert(context.Background(), ByID("accounts", "00000000-0000-0000-0000-000000000001"), Record{"name": "x"}, UpsertOptions{Mode: CreateOnly})
	wantErr(t, err, ClassConflict, 412, "", "A record with matching key values already exists.")
}

// pluginError: Microsoft's printed example lacks a comma before its last
// annotation; the client still keeps the code, message and the annotations
// before the fault. The repaired copy yields the inner message too.
func pluginError(repaired bool) func(t *testing.T, c *Client, _ string, _ func() []*http.Request) {
	return func(t *testing.T, c *Client, _ string, _ func() []*http.Request) {
		_, err := c.Create(context.Background(), "accounts", Record{"name": "Example Account"})
		e := wantErr(t, err, ClassRejected, 400, "0x80040265", "Example Error Message.")
		d := e.Details
		if d.OperationStatus != "1" || d.SubErrorCode != "12345" ||
			d.HelpLink != "http://go.microsoft.com/fwlink/?LinkID=398563&error=Microsoft.Crm.CrmException%3a80040265&client=platform" ||
			!strings.Contains(d.TraceText, "Entering MyClass plug-in.") {
			t.Errorf("details = %+v", d)
		}
		if want := map[bool]string{true: "Example Error Message.", false: ""}[repaired]; d.InnerMessage != want {
			t.Errorf("inner message = %q, want %q", d.InnerMessage, want)
		}
		if strings.Contains(e.Error(), "MyClass") {
			t.Error("the trace text is detail, not part of the error text")
		}
	}
}

func changesInitial(t *testing.T, c *Client, _ string, reqs func() []*http.Request) {
	var got []Change
	link, err := c.Changes(context.Background(), ChangeQuery{Set: "accounts", PrimaryID: "accountid", Select: []string{"name", "accountnumber", "telephone1", "fax"}},
		func(ch Change) error { got = append(got, ch); return nil })
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != 1 || got[0].ID != "60c4e274-0d87-e711-80e5-00155db19e6d" || got[0].Deleted || got[0].Record.ETag() != `W/"915244"` || got[0].Record.String("telephone1") != "555000" {
		t.Fatalf("changes = %+v", got)
	}
	if !strings.HasSuffix(link, "$deltatoken=919042%2108%2f22%2f2017%2008%3a10%3a44") {
		t.Errorf("delta link = %s", link)
	}
	if p := reqs()[0].Header.Get("Prefer"); !strings.Contains(p, "odata.track-changes") {
		t.Errorf("Prefer = %q", p)
	}
}

func changesDelta(t *testing.T, c *Client, base string, _ func() []*http.Request) {
	var got []Change
	link, err := c.Changes(context.Background(), ChangeQuery{Set: "accounts", PrimaryID: "accountid",
		DeltaLink: base + "/api/data/v9.0/accounts?$select=name,telephone1,fax&$deltatoken=919042%2108%2f22%2f2017%2008%3a10%3a44"},
		func(ch Change) error { got = append(got, ch); return nil })
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != 2 || got[0].ID != "60c4e274-0d87-e711-80e5-00155db19e6d" || got[0].Deleted ||
		got[1].ID != "2e451703-c686-e711-80e5-00155db19e6d" || !got[1].Deleted || got[1].Record != nil {
		t.Fatalf("changes = %+v", got)
	}
	if !strings.HasSuffix(link, "$deltatoken=919058%2108%2f22%2f2017%2008%3a21%3a20") {
		t.Errorf("delta link = %s", link)
	}
}

var errEnough = errors.New("enough rows")

func pagingFollowsNextLink(t *testing.T, c *Client, _ string, reqs func() []*http.Request) {
	var names []string
	err := c.RetrieveMultiple(context.Background(), "contacts", Query{Select: []string{"fullname"}}, func(r Record) error {
		names = append(names, r.String("fullname")+" "+r.ETag())
		if len(names) == 4 {
			return errEnough // the second page links to a third the sample does not have
		}
		return nil
	})
	if !errors.Is(err, errEnough) {
		t.Fatalf("walk ended with %v", err)
	}
	want := []string{`Yvonne McKay (sample) W/"72201545"`, `Susanna Stubberod (sample) W/"80648695"`, `Nancy Anderson (sample) W/"80648710"`, `Maria Campbell (sample) W/"80648724"`}
	if !slices.Equal(names, want) {
		t.Fatalf("rows = %q, want %q", names, want)
	}
	rs := reqs()
	if len(rs) != 2 || !strings.Contains(rs[1].URL.RawQuery, "$skiptoken=%3Ccookie%20pagenumber=%222%22") {
		t.Errorf("second request %v, want the first page's nextLink verbatim", rs[len(rs)-1].URL)
	}
}

func pagingLastPageRead(t *testing.T, c *Client, _ string, _ func() []*http.Request) {
	n := 0
	err := c.RetrieveMultiple(context.Background(), "contacts", Query{Select: []string{"fullname"}}, func(r Record) error {
		n++
		if r.String("contactid") == "" {
			t.Errorf("row without contactid: %v", r)
		}
		return errEnough
	})
	if !errors.Is(err, errEnough) || n != 1 {
		t.Fatalf("walk = %v after %d rows", err, n)
	}
}

func oneAccount(t *testing.T, c *Client) Record {
	t.Helper()
	var rows []Record
	err := c.RetrieveMultiple(context.Background(), "accounts", Query{Select: []string{"name", "revenue"}}, func(r Record) error { rows = append(rows, r); return nil })
	if err != nil {
		t.Fatal(err)
	}
	if len(rows) == 0 {
		t.Fatal("no rows")
	}
	return rows[0]
}

func selectColumns(t *testing.T, c *Client, _ string, _ func() []*http.Request) {
	r := oneAccount(t, c)
	if r.String("accountid") != "4624eff7-53d3-ed11-a7c7-000d3a993550" || r.ETag() != `W/"81052965"` || r["revenue"] != json.Number("20000.0000") {
		t.Fatalf("row = %v", r)
	}
}

func formattedValues(t *testing.T, c *Client, _ string, _ func() []*http.Request) {
	r := oneAccount(t, c)
	if r.String("revenue@OData.Community.Display.V1.FormattedValue") != "$20,000.00" || r["customertypecode"] != json.Number("1") ||
		r.String("modifiedon") != "2023-04-07T21:59:01Z" || r.String("_primarycontactid_value") != "70bf4d48-34cb-ed11-b596-0022481d68cd" {
		t.Fatalf("row = %v", r)
	}
}

func lookupAnnotations(t *testing.T, c *Client, _ string, _ func() []*http.Request) {
	var rows []Record
	err := c.RetrieveMultiple(context.Background(), "accounts", Query{Select: []string{"name", "_ownerid_value"}}, func(r Record) error { rows = append(rows, r); return nil })
	if err != nil {
		t.Fatal(err)
	}
	if len(rows) != 2 || rows[0].String("_ownerid_value@Microsoft.Dynamics.CRM.lookuplogicalname") != "team" ||
		rows[1].String("_ownerid_value@Microsoft.Dynamics.CRM.lookuplogicalname") != "systemuser" ||
		rows[1].String("_ownerid_value") != "4026be43-6b69-e111-8f65-78e7d1620f5e" {
		t.Fatalf("rows = %v", rows)
	}
}

func whoAmI(t *testing.T, c *Client, _ string, _ func() []*http.Request) {
	id, err := c.WhoAmI(context.Background())
	if err != nil || id != "22cc22cc-dd33-ee44-ff55-66aa66aa66aa" {
		t.Fatalf("WhoAmI = %q, %v", id, err)
	}
}

func throttled(code, msg string) func(t *testing.T, c *Client, _ string, _ func() []*http.Request) {
	return func(t *testing.T, c *Client, _ string, _ func() []*http.Request) {
		_, err := c.Retrieve(context.Background(), ByID("contacts", "00000000-0000-0000-0000-000000000001"))
		e := wantErr(t, err, ClassThrottled, 429, code, msg)
		if !e.Retryable || e.RetryAfter != 5*time.Second {
			t.Fatalf("retryable %v after %s, want retryable after 5s", e.Retryable, e.RetryAfter)
		}
	}
}
