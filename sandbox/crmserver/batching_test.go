package crmserver

import (
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"net/url"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"
)

// The Dataverse behaviour a batching client relies on, each held to what
// Microsoft Learn documents (the URLs are in the code under test).

// send makes one request as token and returns the recorder.
func send(s *Server, token, method, path, body string, header ...string) *httptest.ResponseRecorder {
	var r *http.Request
	if body == "" {
		r = httptest.NewRequest(method, APIPath+path, nil)
	} else {
		r = httptest.NewRequest(method, APIPath+path, strings.NewReader(body))
		r.Header.Set("Content-Type", "application/json")
	}
	for i := 0; i+1 < len(header); i += 2 {
		r.Header.Set(header[i], header[i+1])
	}
	if token != "" {
		r.Header.Set("Authorization", "Bearer "+token)
	}
	w := httptest.NewRecorder()
	s.ServeHTTP(w, r)
	return w
}

func TestDOPHintOnEveryAnswer(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name string
		opts Options
		set  int // SetDOPHint(set) when not zero
		want string
	}{
		{name: "default", opts: Options{}, want: "4"},
		{name: "configured", opts: Options{DOPHint: 50}, want: "50"},
		{name: "off", opts: Options{DOPHint: -1}, want: ""},
		{name: "changed at run time", opts: Options{DOPHint: -1}, set: 12, want: "12"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			tt.opts.Tokens = map[string]string{tokenA: userA}
			tt.opts.Limits = Limits{Requests: 1, Window: time.Minute}
			s, err := New(tt.opts)
			if err != nil {
				t.Fatal(err)
			}
			if tt.set != 0 {
				s.SetDOPHint(tt.set)
			}
			answers := map[string]*httptest.ResponseRecorder{
				"success":      send(s, tokenA, http.MethodGet, "WhoAmI", ""),
				"429":          send(s, tokenA, http.MethodGet, "WhoAmI", ""),
				"unauthorized": send(s, "nobody", http.MethodGet, "WhoAmI", ""),
			}
			if answers["429"].Code != http.StatusTooManyRequests {
				t.Fatalf("second request: %d, want 429", answers["429"].Code)
			}
			for name, w := range answers {
				if got := w.Header().Get("x-ms-dop-hint"); got != tt.want {
					t.Errorf("%s answer: x-ms-dop-hint %q, want %q", name, got, tt.want)
				}
			}
		})
	}
}

// lastnames returns the lastname of each row of a collection answer, sorted.
func lastnames(t *testing.T, w *httptest.ResponseRecorder) []string {
	t.Helper()
	if w.Code != http.StatusOK {
		t.Fatalf("status %d: %s", w.Code, w.Body)
	}
	var body struct {
		Value []map[string]any `json:"value"`
	}
	if err := json.Unmarshal(w.Body.Bytes(), &body); err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, r := range body.Value {
		n, _ := r["lastname"].(string)
		out = append(out, n)
	}
	slices.Sort(out)
	return out
}

func TestFilterIn(t *testing.T) {
	t.Parallel()
	s, err := New(Options{})
	if err != nil {
		t.Fatal(err)
	}
	ids := map[string]string{}
	for _, c := range []struct{ fhirID, last, gender string }{{"p1", "One", "1"}, {"p2", "Two", "2"}, {"p3", "Three", "1"}} {
		w := send(s, "", http.MethodPost, "contacts", `{"msemr_azurefhirid":"`+c.fhirID+`","lastname":"`+c.last+`","gendercode":`+c.gender+`}`)
		if w.Code != http.StatusNoContent {
			t.Fatalf("create: %d %s", w.Code, w.Body)
		}
		loc := w.Header().Get("OData-EntityId")
		ids[c.last] = loc[strings.LastIndex(loc, "(")+1 : len(loc)-1]
	}
	tests := []struct {
		name    string
		filter  string
		query   string // more query options (parameter aliases)
		want    []string
		wantErr bool
	}{
		{name: "alternate key, single quotes", filter: `Microsoft.Dynamics.CRM.In(PropertyName='msemr_azurefhirid',PropertyValues=['p1','p3','p9'])`,
			want: []string{"One", "Three"}},
		{name: "double quotes, parameters in either order", filter: `Microsoft.Dynamics.CRM.In(PropertyValues=["p2"],PropertyName='msemr_azurefhirid')`,
			want: []string{"Two"}},
		{name: "primary key, upper-case GUID", filter: `Microsoft.Dynamics.CRM.In(PropertyName='contactid',PropertyValues=['` + strings.ToUpper(ids["Two"]) + `'])`,
			want: []string{"Two"}},
		{name: "choice column with string values", filter: `Microsoft.Dynamics.CRM.In(PropertyName='gendercode',PropertyValues=['1'])`,
			want: []string{"One", "Three"}},
		{name: "combined with and", filter: `Microsoft.Dynamics.CRM.In(PropertyName='msemr_azurefhirid',PropertyValues=['p1','p2']) and lastname eq 'Two'`,
			want: []string{"Two"}},
		{name: "parameter aliases", filter: `Microsoft.Dynamics.CRM.In(PropertyName=@p1,PropertyValues=@p2)`,
			query: "&@p1=" + url.QueryEscape(`'msemr_azurefhirid'`) + "&@p2=" + url.QueryEscape(`['p3']`), want: []string{"Three"}},
		{name: "no match", filter: `Microsoft.Dynamics.CRM.In(PropertyName='msemr_azurefhirid',PropertyValues=['zz'])`},
		{name: "unknown column", filter: `Microsoft.Dynamics.CRM.In(PropertyName='nosuch',PropertyValues=['a'])`, wantErr: true},
		{name: "lookup by its _value property", filter: `Microsoft.Dynamics.CRM.In(PropertyName='_parentcustomerid_value',PropertyValues=['a'])`, wantErr: true},
		{name: "values not a collection", filter: `Microsoft.Dynamics.CRM.In(PropertyName='lastname',PropertyValues='a')`, wantErr: true},
		{name: "missing PropertyValues", filter: `Microsoft.Dynamics.CRM.In(PropertyName='lastname')`, wantErr: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			w := send(s, "", http.MethodGet, "contacts?$select=lastname&$filter="+url.QueryEscape(tt.filter)+tt.query, "")
			if tt.wantErr {
				if w.Code != http.StatusBadRequest {
					t.Fatalf("status %d, want 400: %s", w.Code, w.Body)
				}
				return
			}
			if got := lastnames(t, w); !slices.Equal(got, tt.want) {
				t.Fatalf("got %v, want %v", got, tt.want)
			}
		})
	}
}

// TestFilterInOnLookup asks for the child rows of several parents at once,
// naming the lookup by its logical name as Dataverse's In wants it.
func TestFilterInOnLookup(t *testing.T) {
	t.Parallel()
	s, err := New(Options{})
	if err != nil {
		t.Fatal(err)
	}
	var parents []string
	for i, fhirID := range []string{"p1", "p2", "p3"} {
		w := send(s, "", http.MethodPost, "contacts", `{"msemr_azurefhirid":"`+fhirID+`","lastname":"L"}`)
		if w.Code != http.StatusNoContent {
			t.Fatalf("create: %d %s", w.Code, w.Body)
		}
		loc := w.Header().Get("OData-EntityId")
		id := loc[strings.LastIndex(loc, "(")+1 : len(loc)-1]
		parents = append(parents, id)
		for j := range i + 1 {
			w := send(s, "", http.MethodPost, "msemr_medicalidentifiers",
				fmt.Sprintf(`{"msemr_identifiervalue":"%s-%d","msemr_contact@odata.bind":"/contacts(%s)"}`, fhirID, j, id))
			if w.Code != http.StatusNoContent {
				t.Fatalf("create child: %d %s", w.Code, w.Body)
			}
		}
	}
	filter := `Microsoft.Dynamics.CRM.In(PropertyName='msemr_contact',PropertyValues=['` + strings.ToUpper(parents[0]) + `','` + parents[2] + `'])`
	w := send(s, "", http.MethodGet, "msemr_medicalidentifiers?$select=msemr_identifiervalue&$filter="+url.QueryEscape(filter), "")
	if w.Code != http.StatusOK {
		t.Fatalf("status %d: %s", w.Code, w.Body)
	}
	var page struct {
		Value []map[string]any `json:"value"`
	}
	if err := json.Unmarshal(w.Body.Bytes(), &page); err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, r := range page.Value {
		got = append(got, fmt.Sprint(r["msemr_identifiervalue"]))
	}
	slices.Sort(got)
	if want := []string{"p1-0", "p3-0", "p3-1", "p3-2"}; !slices.Equal(got, want) {
		t.Fatalf("got %v, want %v", got, want)
	}
}

func TestBulkMessages(t *testing.T) {
	t.Parallel()
	const typ = `"@odata.type":"Microsoft.Dynamics.CRM.contact"`
	s, err := New(Options{})
	if err != nil {
		t.Fatal(err)
	}
	// CreateMultiple: 200 with the new ids, in order.
	w := send(s, "", http.MethodPost, "contacts/Microsoft.Dynamics.CRM.CreateMultiple",
		`{"Targets":[{`+typ+`,"lastname":"A","msemr_azurefhirid":"a"},{`+typ+`,"lastname":"B","msemr_azurefhirid":"b"}]}`)
	if w.Code != http.StatusOK {
		t.Fatalf("CreateMultiple: %d %s", w.Code, w.Body)
	}
	var created struct {
		Context string   `json:"@odata.context"`
		IDs     []string `json:"Ids"`
	}
	if err := json.Unmarshal(w.Body.Bytes(), &created); err != nil || len(created.IDs) != 2 ||
		!strings.HasSuffix(created.Context, "$metadata#Microsoft.Dynamics.CRM.CreateMultipleResponse") {
		t.Fatalf("CreateMultiple answer: %s", w.Body)
	}
	// UpdateMultiple: 204, by primary key.
	w = send(s, "", http.MethodPost, "contacts/Microsoft.Dynamics.CRM.UpdateMultiple",
		`{"Targets":[{`+typ+`,"contactid":"`+created.IDs[0]+`","firstname":"Ann"},{`+typ+`,"contactid":"`+created.IDs[1]+`","firstname":"Bob"}]}`)
	if w.Code != http.StatusNoContent {
		t.Fatalf("UpdateMultiple: %d %s", w.Code, w.Body)
	}
	// UpsertMultiple: by alternate key through @odata.id, one existing,
	// one new; 204 without a body ("The UpsertMultiple action returns 204
	// NoContent. The UpsertMultipleResponse complex type is not returned.")
	w = send(s, "", http.MethodPost, "contacts/Microsoft.Dynamics.CRM.UpsertMultiple",
		`{"Targets":[{`+typ+`,"@odata.id":"contacts(msemr_azurefhirid='a')","lastname":"A2"},{`+typ+`,"@odata.id":"contacts(msemr_azurefhirid='c')","lastname":"C"}]}`)
	if w.Code != http.StatusNoContent || w.Body.Len() != 0 {
		t.Fatalf("UpsertMultiple: %d %s, want 204 without a body", w.Code, w.Body)
	}
	// by primary key in the body: a new row with the id given
	const newID = "0f8fad5b-d9cb-469f-a165-70867728950e"
	w = send(s, "", http.MethodPost, "contacts/Microsoft.Dynamics.CRM.UpsertMultiple",
		`{"Targets":[{`+typ+`,"contactid":"`+newID+`","lastname":"Z"}]}`)
	if w.Code != http.StatusNoContent {
		t.Fatalf("UpsertMultiple by primary key: %d %s", w.Code, w.Body)
	}
	if w := send(s, "", http.MethodDelete, "contacts("+newID+")", ""); w.Code != http.StatusNoContent {
		t.Fatalf("the row upserted by primary key: %d %s", w.Code, w.Body)
	}
	got := lastnames(t, send(s, "", http.MethodGet, "contacts?$select=lastname,firstname", ""))
	if want := []string{"A2", "B", "C"}; !slices.Equal(got, want) {
		t.Fatalf("rows %v, want %v", got, want)
	}
	var b map[string]any
	_ = json.Unmarshal(send(s, "", http.MethodGet, "contacts("+created.IDs[1]+")?$select=firstname", "").Body.Bytes(), &b)
	if b["firstname"] != "Bob" {
		t.Fatalf("UpdateMultiple did not update: %v", b)
	}

	// A failing target fails the whole message: nothing is written.
	failures := []struct {
		name, path, body string
		wantStatus       int
	}{
		{name: "CreateMultiple with an invalid value", path: "CreateMultiple",
			body: `{"Targets":[{` + typ + `,"lastname":"D"},{` + typ + `,"lastname":"E","gendercode":99}]}`, wantStatus: http.StatusBadRequest},
		{name: "CreateMultiple with a duplicate key", path: "CreateMultiple",
			body: `{"Targets":[{` + typ + `,"lastname":"D"},{` + typ + `,"lastname":"E","msemr_azurefhirid":"b"}]}`, wantStatus: http.StatusPreconditionFailed},
		{name: "UpdateMultiple of a missing row", path: "UpdateMultiple",
			body: `{"Targets":[{` + typ + `,"contactid":"` + created.IDs[0] + `","lastname":"D"},{` + typ + `,"contactid":"00000000-0000-0000-0000-000000000001","lastname":"E"}]}`, wantStatus: http.StatusNotFound},
		{name: "UpsertMultiple without @odata.type", path: "UpsertMultiple",
			body: `{"Targets":[{` + typ + `,"@odata.id":"contacts(msemr_azurefhirid='d')","lastname":"D"},{"@odata.id":"contacts(msemr_azurefhirid='e')","lastname":"E"}]}`, wantStatus: http.StatusBadRequest},
		{name: "UpsertMultiple of another table's type", path: "UpsertMultiple",
			body: `{"Targets":[{"@odata.type":"Microsoft.Dynamics.CRM.account","@odata.id":"contacts(msemr_azurefhirid='d')","lastname":"D"}]}`, wantStatus: http.StatusBadRequest},
	}
	for _, f := range failures {
		w := send(s, "", http.MethodPost, "contacts/Microsoft.Dynamics.CRM."+f.path, f.body)
		if w.Code != f.wantStatus {
			t.Errorf("%s: %d %s, want %d", f.name, w.Code, w.Body, f.wantStatus)
		}
		if got := lastnames(t, send(s, "", http.MethodGet, "contacts?$select=lastname", "")); !slices.Equal(got, []string{"A2", "B", "C"}) {
			t.Errorf("%s: rows %v after the failure", f.name, got)
		}
	}
}

// TestContentIDBindInChangeSet: a later request of a change set binds a
// lookup to a row an earlier one created, by "$<Content-ID>" ("Execute
// batch operations using the Web API", Reference URIs in an operation).
func TestContentIDBindInChangeSet(t *testing.T) {
	t.Parallel()
	s, err := New(Options{})
	if err != nil {
		t.Fatal(err)
	}
	body := batchBody([]string{
		`POST accounts {"name":"Clinic"}`,
		`POST contacts {"lastname":"Bound","parentcustomerid_account@odata.bind":"$1"}`,
	})
	r := httptest.NewRequest(http.MethodPost, APIPath+"$batch", strings.NewReader(body))
	r.Header.Set("Content-Type", "multipart/mixed; boundary=batch_T")
	w := httptest.NewRecorder()
	s.ServeHTTP(w, r)
	if w.Code != http.StatusOK {
		t.Fatalf("batch: %d %s", w.Code, w.Body)
	}
	parts := flatten(readAnswer(t, w.Header().Get("Content-Type"), w.Body.Bytes()))
	if len(parts) != 2 || parts[0].status != 204 || parts[1].status != 204 {
		t.Fatalf("answers %v", parts)
	}
	var accounts struct {
		Value []map[string]any `json:"value"`
	}
	_ = json.Unmarshal(send(s, "", http.MethodGet, "accounts?$select=name", "").Body.Bytes(), &accounts)
	var contacts struct {
		Value []map[string]any `json:"value"`
	}
	_ = json.Unmarshal(send(s, "", http.MethodGet, "contacts?$select=lastname,parentcustomerid", "").Body.Bytes(), &contacts)
	if len(accounts.Value) != 1 || len(contacts.Value) != 1 || contacts.Value[0]["_parentcustomerid_value"] != accounts.Value[0]["accountid"] {
		t.Fatalf("accounts %v, contacts %v", accounts.Value, contacts.Value)
	}
}

func TestAccountsPerUser(t *testing.T) {
	t.Parallel()
	clock := newFakeClock()
	// Two requests per window, so the third request of user A is refused.
	l := DataverseLimits()
	l.Requests, l.Window = 2, time.Minute
	s := limitedServer(t, l, clock)
	if w := createBatch(s, tokenA, 0, 3); w.Code != http.StatusOK { // 3 writes
		t.Fatalf("batch: %d %s", w.Code, w.Body)
	}
	if w := send(s, tokenA, http.MethodGet, "contacts?$select=lastname", ""); w.Code != http.StatusOK { // a read of 3 rows
		t.Fatalf("query: %d", w.Code)
	}
	if w := whoAmI(s, tokenA); w.Code != http.StatusTooManyRequests {
		t.Fatalf("third request: %d, want 429", w.Code)
	}
	if w := send(s, tokenB, http.MethodPost, "contacts/Microsoft.Dynamics.CRM.CreateMultiple",
		`{"Targets":[{"@odata.type":"Microsoft.Dynamics.CRM.contact","lastname":"X"},{"@odata.type":"Microsoft.Dynamics.CRM.contact","lastname":"Y"}]}`); w.Code != http.StatusOK {
		t.Fatalf("CreateMultiple: %d %s", w.Code, w.Body)
	}
	got := s.Accounts()
	want := map[string]Account{
		userA: {Requests: 2, Operations: 4, Throttled: 1,
			ExecutionTime: 3*DefaultCostPerOperation + DefaultCostPerQuery + 3*DefaultCostPerRowRead},
		userB: {Requests: 1, Operations: 2, ExecutionTime: 2 * DefaultCostCreateMultipleRow},
	}
	if len(got) != len(want) || got[userA] != want[userA] || got[userB] != want[userB] {
		t.Fatalf("accounts %+v, want %+v", got, want)
	}
	// An exempt user is accounted but never refused.
	l.Exempt = []string{userA}
	s.SetLimits(l)
	for range 3 {
		if w := whoAmI(s, tokenA); w.Code != http.StatusOK {
			t.Fatalf("exempt user refused: %d", w.Code)
		}
	}
	if got := s.Accounts()[userA]; got.Requests != 5 || got.Throttled != 1 {
		t.Fatalf("exempt user's account %+v", got)
	}
	l.Exempt = nil
	// Twice the cost charges twice the time, and a reset starts again.
	s.ResetAccounts()
	l.CostMultiplier, l.Requests = 2, 0
	s.SetLimits(l)
	createBatch(s, tokenB, 10, 2)
	if got := s.Accounts()[userB]; got != (Account{Requests: 1, Operations: 2, ExecutionTime: 4 * DefaultCostPerOperation}) {
		t.Fatalf("at twice the cost: %+v", got)
	}
}

func TestOnWriteSeesEveryCommittedWrite(t *testing.T) {
	t.Parallel()
	var mu sync.Mutex
	var got []string
	s, err := New(Options{Tokens: map[string]string{tokenA: userA}, OnWrite: func(w Write) {
		mu.Lock()
		defer mu.Unlock()
		f, _ := w.Attributes["msemr_azurefhirid"].(string)
		got = append(got, w.Message+" "+w.Entity+" "+f+" "+w.InitiatingUserID)
	}})
	if err != nil {
		t.Fatal(err)
	}
	const typ = `"@odata.type":"Microsoft.Dynamics.CRM.contact"`
	send(s, tokenA, http.MethodPatch, "contacts(msemr_azurefhirid='a')", `{"lastname":"A"}`)
	send(s, tokenA, http.MethodPost, "contacts/Microsoft.Dynamics.CRM.UpsertMultiple",
		`{"Targets":[{`+typ+`,"@odata.id":"contacts(msemr_azurefhirid='a')","lastname":"A2"},{`+typ+`,"@odata.id":"contacts(msemr_azurefhirid='b')","lastname":"B"}]}`)
	// a failed message commits nothing and reports nothing
	send(s, tokenA, http.MethodPost, "contacts/Microsoft.Dynamics.CRM.CreateMultiple",
		`{"Targets":[{`+typ+`,"lastname":"C","msemr_azurefhirid":"c"},{`+typ+`,"lastname":"D","gendercode":99}]}`)
	want := []string{"Create contact a " + userA, "Update contact a " + userA, "Create contact b " + userA}
	mu.Lock()
	defer mu.Unlock()
	if !slices.Equal(got, want) {
		t.Fatalf("writes %q, want %q", got, want)
	}
}

func TestDataverseLimitsOver(t *testing.T) {
	t.Parallel()
	l := DataverseLimitsOver(10 * time.Second)
	if l.Requests != 200 || l.ExecutionTime != 40*time.Second || l.Window != 10*time.Second || l.Concurrent != DataverseConcurrent {
		t.Fatalf("scaled to 10 s: %+v", l)
	}
	if d := DataverseLimitsOver(DataverseWindow); d.Requests != DataverseRequests || d.ExecutionTime != DataverseExecutionTime {
		t.Fatalf("the documented window: %+v", d)
	}
}
