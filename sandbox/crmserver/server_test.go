package crmserver

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/fhirsync/fhirsync/queues"
	"github.com/fhirsync/fhirsync/sandbox/synth"
)

func newServer(t *testing.T, opts Options) (*Server, *httptest.Server) {
	t.Helper()
	s, err := New(opts)
	if err != nil {
		t.Fatal(err)
	}
	hs := httptest.NewServer(s)
	t.Cleanup(hs.Close)
	return s, hs
}

func do(t *testing.T, method, url string, hdr map[string]string, body string) (*http.Response, []byte) {
	t.Helper()
	req, err := http.NewRequest(method, url, strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	for k, v := range hdr {
		req.Header.Set(k, v)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp, b
}

func errorCode(t *testing.T, b []byte) string {
	t.Helper()
	var e struct {
		Error struct{ Code, Message string } `json:"error"`
	}
	if err := json.Unmarshal(b, &e); err != nil || e.Error.Code == "" {
		t.Fatalf("not Dataverse error JSON: %s", b)
	}
	return e.Error.Code
}

func TestFilterParser(t *testing.T) {
	t.Parallel()
	row := map[string]any{"a": "Hello", "n": json.Number("5"), "b": true, "z": nil, "d": "2020-05-01T10:00:00Z"}
	get := func(n string) any { return row[n] }
	known := func(n string) bool { _, ok := row[n]; return ok }
	tests := []struct {
		expr    string
		want    bool
		wantErr bool
	}{
		{expr: "a eq 'hello'", want: true},
		{expr: "a ne 'hello'", want: false},
		{expr: "n gt 4 and n lt 6", want: true},
		{expr: "n ge 6 or n le 4", want: false},
		{expr: "not (n eq 5)", want: false},
		{expr: "b eq true and z eq null", want: true},
		{expr: "z ne null", want: false},
		{expr: "z gt 1", want: false},
		{expr: "d gt 2020-05-01T09:00:00Z", want: true},
		{expr: "d lt 2020-05-01", want: false},
		{expr: "contains(a,'ell') and endswith(a,'LO')", want: true},
		{expr: "a eq 'it''s'", want: false},
		{expr: "(a eq 'x' or (n eq 5 and (b eq true)))", want: true},
		{expr: "q eq 1", wantErr: true},
		{expr: "a eq", wantErr: true},
		{expr: "a like 'x'", wantErr: true},
		{expr: "a eq 'open", wantErr: true},
		{expr: "a eq 1 b", wantErr: true},
		{expr: strings.Repeat("(", 60) + "a eq 'x'" + strings.Repeat(")", 60), wantErr: true},
	}
	for _, tt := range tests {
		t.Run(tt.expr, func(t *testing.T) {
			t.Parallel()
			n, err := parseFilter(tt.expr, known)
			if tt.wantErr {
				if err == nil {
					t.Fatal("parsed")
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if got := n.eval(get); got != tt.want {
				t.Fatalf("eval = %v, want %v", got, tt.want)
			}
		})
	}
}

func TestParseKeySegment(t *testing.T) {
	t.Parallel()
	tests := []struct {
		seg     string
		id      string
		key     map[string]any
		wantErr bool
	}{
		{seg: "5F1E9A3B-2C4D-EE11-BE6E-000D3A5B8F21", id: "5f1e9a3b-2c4d-ee11-be6e-000d3a5b8f21"},
		{seg: "msemr_azurefhirid='pat-1'", key: map[string]any{"msemr_azurefhirid": "pat-1"}},
		{seg: "a='x,y',b=7", key: map[string]any{"a": "x,y", "b": json.Number("7")}},
		{seg: "a='it''s'", key: map[string]any{"a": "it's"}},
		{seg: "17", wantErr: true},
		{seg: "a=", wantErr: true},
		{seg: "a=null", wantErr: true},
	}
	for _, tt := range tests {
		t.Run(tt.seg, func(t *testing.T) {
			t.Parallel()
			id, key, err := parseKeySegment(tt.seg)
			if (err != nil) != tt.wantErr {
				t.Fatalf("err = %v", err)
			}
			if tt.wantErr {
				return
			}
			kb, _ := json.Marshal(key)
			wb, _ := json.Marshal(tt.key)
			if id != tt.id || string(kb) != string(wb) {
				t.Fatalf("got %q %s", id, kb)
			}
		})
	}
}

// TestBatchWireFormat posts a $batch written the way the Dataverse
// documentation shows it and checks the multipart answer.
func TestBatchWireFormat(t *testing.T) {
	t.Parallel()
	s, hs := newServer(t, Options{})
	body := strings.ReplaceAll(`--batch_AAA123
Content-Type: multipart/mixed; boundary=changeset_BBB456

--changeset_BBB456
Content-Type: application/http
Content-Transfer-Encoding: binary
Content-ID: 1

POST `+hs.URL+`/api/data/v9.2/accounts HTTP/1.1
Content-Type: application/json; type=entry

{"name":"Clinic"}
--changeset_BBB456
Content-Type: application/http
Content-Transfer-Encoding: binary
Content-ID: 2

POST /api/data/v9.2/contacts HTTP/1.1
Content-Type: application/json; type=entry

{"lastname":"Lee","parentcustomerid_account@odata.bind":"$1"}
--changeset_BBB456--

--batch_AAA123
Content-Type: application/http
Content-Transfer-Encoding: binary

GET /api/data/v9.2/contacts?$select=lastname,_parentcustomerid_value HTTP/1.1
Accept: application/json

--batch_AAA123--
`, "\n", "\r\n")
	resp, b := do(t, "POST", hs.URL+"/api/data/v9.2/$batch", map[string]string{"Content-Type": "multipart/mixed; boundary=batch_AAA123"}, body)
	if resp.StatusCode != 200 || !strings.HasPrefix(resp.Header.Get("Content-Type"), "multipart/mixed; boundary=batchresponse_") {
		t.Fatalf("status %d, type %s: %s", resp.StatusCode, resp.Header.Get("Content-Type"), b)
	}
	text := string(b)
	for _, want := range []string{"boundary=changesetresponse_", "HTTP/1.1 204 No Content", "Content-Id: 1", "Content-Id: 2", "HTTP/1.1 200 OK", `"lastname":"Lee"`, "_parentcustomerid_value"} {
		if !strings.Contains(text, want) {
			t.Fatalf("answer lacks %q:\n%s", want, text)
		}
	}
	if s.Count("account") != 1 || s.Count("contact") != 1 {
		t.Fatalf("counts %d %d", s.Count("account"), s.Count("contact"))
	}
	// malformed batches are a 400 with the error JSON
	resp, b = do(t, "POST", hs.URL+"/api/data/v9.2/$batch", map[string]string{"Content-Type": "application/json"}, "{}")
	if resp.StatusCode != 400 {
		t.Fatalf("status %d", resp.StatusCode)
	}
	errorCode(t, b)
}

func TestErrorsAreDataverseJSON(t *testing.T) {
	t.Parallel()
	_, hs := newServer(t, Options{Tokens: map[string]string{"t": "11111111-1111-1111-1111-111111111111"}})
	auth := map[string]string{"Authorization": "Bearer t", "Content-Type": "application/json"}
	tests := []struct {
		name, method, path, body string
		hdr                      map[string]string
		status                   int
		code                     string
	}{
		{name: "unknown set", method: "GET", path: "nosuch", status: 404, code: "0x80060888"},
		{name: "missing row", method: "GET", path: "contacts(5f1e9a3b-2c4d-ee11-be6e-000d3a5b8f21)", status: 404, code: "0x80040217"},
		{name: "bad key", method: "GET", path: "contacts(lastname='x')", status: 400, code: "0x80060892"},
		{name: "bad json", method: "POST", path: "contacts", body: "{", status: 400, code: "0x80048d19"},
		{name: "required missing", method: "POST", path: "accounts", body: "{}", status: 400, code: "0x80040200"},
		{name: "update-only missing", method: "PATCH", path: "contacts(msemr_azurefhirid='x')", body: "{}", hdr: map[string]string{"If-Match": "*"}, status: 404, code: "0x80040217"},
		{name: "method not allowed", method: "PUT", path: "contacts", status: 405, code: "0x8006088a"},
		{name: "unknown entity metadata", method: "GET", path: "EntityDefinitions(LogicalName='nosuch')", status: 404, code: "0x80040217"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			h := map[string]string{}
			for k, v := range auth {
				h[k] = v
			}
			for k, v := range tt.hdr {
				h[k] = v
			}
			resp, b := do(t, tt.method, hs.URL+APIPath+tt.path, h, tt.body)
			if resp.StatusCode != tt.status || errorCode(t, b) != tt.code {
				t.Fatalf("status %d body %s", resp.StatusCode, b)
			}
		})
	}
	resp, b := do(t, "GET", hs.URL+APIPath+"WhoAmI", nil, "")
	if resp.StatusCode != 401 || len(b) != 0 || resp.Header.Get("WWW-Authenticate") == "" {
		t.Fatalf("unauthenticated: %d %s", resp.StatusCode, b)
	}
}

func TestFailureInjectionAndLimits(t *testing.T) {
	t.Parallel()
	s, hs := newServer(t, Options{})
	s.FailFor(http.StatusServiceUnavailable, time.Hour)
	resp, b := do(t, "GET", hs.URL+APIPath+"WhoAmI", nil, "")
	if resp.StatusCode != 503 || resp.Header.Get("Retry-After") == "" {
		t.Fatalf("injected: %d %s", resp.StatusCode, b)
	}
	errorCode(t, b)
	s.FailFor(0, 0)
	s.FailNext(1, http.StatusBadGateway)
	if resp, _ := do(t, "GET", hs.URL+APIPath+"WhoAmI", nil, ""); resp.StatusCode != 502 {
		t.Fatalf("fail next: %d", resp.StatusCode)
	}
	if resp, _ := do(t, "GET", hs.URL+APIPath+"WhoAmI", nil, ""); resp.StatusCode != 200 {
		t.Fatalf("after fail next: %d", resp.StatusCode)
	}
	s.SetLimits(Limits{Requests: 2, Window: time.Minute})
	for i := range 3 {
		resp, b := do(t, "GET", hs.URL+APIPath+"WhoAmI", nil, "")
		if i < 2 && resp.StatusCode != 200 {
			t.Fatalf("request %d: %d", i, resp.StatusCode)
		}
		if i == 2 && (resp.StatusCode != 429 || resp.Header.Get("Retry-After") == "" || errorCode(t, b) != "0x80072322") {
			t.Fatalf("throttle: %d %s", resp.StatusCode, b)
		}
	}
	// limits are per authenticated user: impersonating another user does
	// not escape them (TestLimitsPerUser: each token has its own)
	if resp, _ := do(t, "GET", hs.URL+APIPath+"WhoAmI", map[string]string{"MSCRMCallerID": "33333333-3333-3333-3333-333333333333"}, ""); resp.StatusCode != 429 {
		t.Fatalf("impersonated: %d", resp.StatusCode)
	}
	s.SetLimits(Limits{})
	if st := s.Stats(); st.Throttled != 2 || st.Injected != 2 {
		t.Fatalf("stats = %+v", st)
	}
}

func TestConcurrencyLimit(t *testing.T) {
	t.Parallel()
	s, err := New(Options{Limits: Limits{Concurrent: 1}})
	if err != nil {
		t.Fatal(err)
	}
	tk, e := s.admit(DefaultUserID)
	if e != nil {
		t.Fatal(e)
	}
	if _, e := s.admit(DefaultUserID); e == nil || e.status != 429 || e.code != "0x80072326" {
		t.Fatalf("second concurrent request admitted: %v", e)
	}
	tk.end(1, 0)
	if _, e := s.admit(DefaultUserID); e != nil {
		t.Fatalf("after release: %v", e)
	}
}

func TestSeedFromSynth(t *testing.T) {
	t.Parallel()
	s, hs := newServer(t, Options{})
	g := synth.New(7)
	if err := s.SeedSynth(g, 50, 5); err != nil {
		t.Fatal(err)
	}
	if s.Count("contact") != 50 || s.Count("account") != 5 {
		t.Fatalf("counts %d %d", s.Count("contact"), s.Count("account"))
	}
	resp, b := do(t, "GET", hs.URL+APIPath+"contacts("+g.ContactID(3)+")?$select=lastname,gendercode", nil, "")
	if resp.StatusCode != 200 {
		t.Fatalf("%d %s", resp.StatusCode, b)
	}
	var rec map[string]any
	_ = json.Unmarshal(b, &rec)
	if rec["lastname"] != g.Contact(3)["lastname"] {
		t.Fatal("seeded contact does not match the generator")
	}
	if err := s.SeedSynth(g, 1, 0); err == nil {
		t.Fatal("seeding the same ids twice succeeded")
	}
	if err := s.Seed("contact", []map[string]any{{"lastname": "ok"}, {"gendercode": json.Number("9")}}); err == nil || s.Count("contact") != 50 {
		t.Fatalf("a bad seed row was not all-or-nothing: %v, %d", err, s.Count("contact"))
	}
}

type captureQueue struct {
	mu   sync.Mutex
	msgs []queues.Message
}

func (q *captureQueue) Send(_ context.Context, msgs ...queues.Message) error {
	q.mu.Lock()
	defer q.mu.Unlock()
	q.msgs = append(q.msgs, msgs...)
	return nil
}

// TestEndpointSkipsRolledBackChangeSets checks that a failed change set
// posts nothing to the service endpoint, like a rolled-back transaction.
func TestEndpointSkipsRolledBackChangeSets(t *testing.T) {
	t.Parallel()
	q := &captureQueue{}
	_, hs := newServer(t, Options{Endpoint: q})
	body := strings.ReplaceAll(`--b
Content-Type: multipart/mixed; boundary=c

--c
Content-Type: application/http
Content-Transfer-Encoding: binary
Content-ID: 1

POST contacts HTTP/1.1
Content-Type: application/json

{"lastname":"Lee"}
--c
Content-Type: application/http
Content-Transfer-Encoding: binary
Content-ID: 2

POST contacts HTTP/1.1
Content-Type: application/json

{"lastname":"Lee","gendercode":99}
--c--
--b--
`, "\n", "\r\n")
	resp, b := do(t, "POST", hs.URL+APIPath+"$batch", map[string]string{"Content-Type": "multipart/mixed; boundary=b"}, body)
	if resp.StatusCode != 400 || !bytes.Contains(b, []byte("HTTP/1.1 400")) {
		t.Fatalf("%d %s", resp.StatusCode, b)
	}
	if len(q.msgs) != 0 {
		t.Fatalf("%d messages posted for a rolled-back change set", len(q.msgs))
	}
	resp, _ = do(t, "POST", hs.URL+APIPath+"contacts", map[string]string{"Content-Type": "application/json"}, `{"lastname":"Lee"}`)
	if resp.StatusCode != 204 || len(q.msgs) != 1 {
		t.Fatalf("%d, %d messages", resp.StatusCode, len(q.msgs))
	}
}

func TestNewRejectsBadEntities(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name string
		ents []*Entity
	}{
		{name: "no primary id", ents: []*Entity{{LogicalName: "x", EntitySetName: "xs", PrimaryID: "xid"}}},
		{name: "key on unknown attribute", ents: []*Entity{{LogicalName: "x", EntitySetName: "xs", PrimaryID: "xid",
			Attributes: []*Attribute{{LogicalName: "xid", Type: TypeUniqueidentifier}}, Keys: []Key{{LogicalName: "k", Attributes: []string{"nope"}}}}}},
		{name: "relationship on a non-lookup", ents: []*Entity{{LogicalName: "x", EntitySetName: "xs", PrimaryID: "xid",
			Attributes: []*Attribute{{LogicalName: "xid", Type: TypeUniqueidentifier}}, ManyToOne: []Relationship{{Attribute: "xid", Target: "x", NavigationProperty: "n"}}}}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			if _, err := New(Options{Entities: tt.ents}); err == nil {
				t.Fatal("accepted")
			}
		})
	}
}
