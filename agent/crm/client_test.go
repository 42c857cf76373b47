package crm

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/Azure/azure-sdk-for-go/sdk/azcore"
	"github.com/Azure/azure-sdk-for-go/sdk/azcore/policy"

	"github.com/fhirsync/fhirsync/sandbox/crmserver"
)

func sandbox(t testing.TB, opts crmserver.Options, cfg Config) (*crmserver.Server, *Client) {
	t.Helper()
	srv, err := crmserver.New(opts)
	if err != nil {
		t.Fatal(err)
	}
	hs := httptest.NewServer(srv)
	t.Cleanup(hs.Close)
	cfg.URL = hs.URL
	c, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	return srv, c
}

func wantClass(t *testing.T, err error, class Class) *Error {
	t.Helper()
	e, ok := AsError(err)
	if !ok {
		t.Fatalf("error %v is not a *crm.Error", err)
	}
	if e.Class != class {
		t.Fatalf("class = %s, want %s (%v)", e.Class, class, err)
	}
	return e
}

func TestNewValidatesConfig(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name    string
		cfg     Config
		wantErr string
	}{
		{name: "ok", cfg: Config{URL: "https://org.crm.dynamics.com"}},
		{name: "relative url", cfg: Config{URL: "org.crm.dynamics.com"}, wantErr: "absolute"},
		{name: "bearer without token", cfg: Config{URL: "http://x", Auth: AuthBearer}, wantErr: "Token"},
		{name: "secret without ids", cfg: Config{URL: "http://x", Auth: AuthClientSecret}, wantErr: "TenantID"},
		{name: "unknown auth", cfg: Config{URL: "http://x", Auth: "kerberos"}, wantErr: "unknown auth"},
		{name: "too much concurrency", cfg: Config{URL: "http://x", MaxConcurrency: 53}, wantErr: "MaxConcurrency"},
		{name: "batch too big", cfg: Config{URL: "http://x", BatchSize: 1001}, wantErr: "BatchSize"},
		{name: "every problem at once", cfg: Config{URL: "", Auth: AuthBearer, BatchSize: -1}, wantErr: "URL must be an absolute http(s) URL; BatchSize must be between 1 and 1000; auth bearer needs Token"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			c, err := New(tt.cfg)
			if tt.wantErr == "" {
				if err != nil {
					t.Fatal(err)
				}
				if c.Root() != "https://org.crm.dynamics.com/api/data/v9.2/" || c.scope != "https://org.crm.dynamics.com/.default" {
					t.Fatalf("root %s scope %s", c.Root(), c.scope)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
				t.Fatalf("err = %v, want it to contain %q", err, tt.wantErr)
			}
		})
	}
}

func TestCreateRetrieveDelete(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	_, c := sandbox(t, crmserver.Options{}, Config{})
	id, err := c.Create(ctx, "contacts", Record{"firstname": "Ann", "lastname": "Lee", "gendercode": 2, "birthdate": "1980-02-29"})
	if err != nil {
		t.Fatal(err)
	}
	rec, err := c.Retrieve(ctx, ByID("contacts", id), "firstname", "lastname", "gendercode", "birthdate", "fullname")
	if err != nil {
		t.Fatal(err)
	}
	if rec.String("fullname") != "Ann Lee" || rec.String("birthdate") != "1980-02-29" || fmt.Sprint(rec["gendercode"]) != "2" || rec.ETag() == "" {
		t.Fatalf("record = %v", rec)
	}
	if _, present := rec["telephone1"]; present {
		t.Fatalf("$select not applied: %v", rec)
	}
	if err := c.Delete(ctx, ByID("contacts", id), `W/"999"`); err == nil {
		t.Fatal("delete with a stale ETag succeeded")
	} else {
		wantClass(t, err, ClassConflict)
	}
	if err := c.Delete(ctx, ByID("contacts", id), rec.ETag()); err != nil {
		t.Fatal(err)
	}
	_, err = c.Retrieve(ctx, ByID("contacts", id))
	if !errors.Is(err, ErrNotFound) {
		t.Fatalf("retrieve after delete: %v, want ErrNotFound", err)
	}
	if strings.Contains(err.Error(), "Ann") {
		t.Fatalf("error text carries record data: %v", err)
	}
}

func TestCreateRejectsInvalidValues(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	_, c := sandbox(t, crmserver.Options{}, Config{})
	tests := []struct {
		name string
		rec  Record
	}{
		{name: "unknown attribute", rec: Record{"lastname": "X", "shoe_size": 9}},
		{name: "option outside the set", rec: Record{"lastname": "X", "gendercode": 7}},
		{name: "string too long", rec: Record{"lastname": strings.Repeat("x", 51)}},
		{name: "lookup set directly", rec: Record{"lastname": "X", "parentcustomerid": "00000000-0000-0000-0000-000000000001"}},
		{name: "date-only with garbage", rec: Record{"lastname": "X", "birthdate": "yesterday"}},
		{name: "bind to a missing row", rec: Record{"lastname": "X", "parentcustomerid_account@odata.bind": Bind("accounts", "00000000-0000-0000-0000-000000000001")}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			_, err := c.Create(ctx, "contacts", tt.rec)
			if err == nil {
				t.Fatal("create succeeded")
			}
			e, _ := AsError(err)
			if e == nil || (e.Class != ClassRejected && e.Class != ClassNotFound) || e.Retryable || e.Code == "" {
				t.Fatalf("error = %#v", e)
			}
		})
	}
}

func TestUpsertByAlternateKey(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	_, c := sandbox(t, crmserver.Options{}, Config{})
	key := ByKey("contacts", "msemr_azurefhirid", "pat-1")

	// update-only on a missing row is not_found and creates nothing
	_, err := c.Upsert(ctx, key, Record{"lastname": "Lee"}, UpsertOptions{Mode: UpdateOnly})
	wantClass(t, err, ClassNotFound)

	first, err := c.Upsert(ctx, key, Record{"lastname": "Lee", "firstname": "Ann"}, UpsertOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if !first.Created || first.ID == "" || first.ETag == "" || first.Record.String("msemr_azurefhirid") != "pat-1" {
		t.Fatalf("first upsert = %+v", first)
	}
	second, err := c.Upsert(ctx, key, Record{"firstname": "Anne"}, UpsertOptions{Select: []string{"firstname", "lastname"}})
	if err != nil {
		t.Fatal(err)
	}
	if second.Created || second.ID != first.ID || second.ETag == first.ETag || second.Record.String("lastname") != "Lee" || second.Record.String("firstname") != "Anne" {
		t.Fatalf("second upsert = %+v", second)
	}
	// create-only on an existing row is a conflict
	_, err = c.Upsert(ctx, key, Record{"lastname": "Other"}, UpsertOptions{Mode: CreateOnly})
	wantClass(t, err, ClassConflict)
	// a stale ETag is a conflict, the current one succeeds
	_, err = c.Upsert(ctx, key, Record{"lastname": "Stale"}, UpsertOptions{IfMatch: first.ETag})
	wantClass(t, err, ClassConflict)
	third, err := c.Upsert(ctx, key, Record{"lastname": "Fresh"}, UpsertOptions{IfMatch: second.ETag})
	if err != nil || third.Created {
		t.Fatalf("upsert with current ETag = %+v, %v", third, err)
	}
	// update-only on the existing row succeeds
	if _, err := c.Upsert(ctx, key, Record{"middlename": "Q"}, UpsertOptions{Mode: UpdateOnly}); err != nil {
		t.Fatal(err)
	}
	// a key value with quotes and slashes round-trips
	odd := ByKey("contacts", "msemr_azurefhirid", "o'brien/1 ?#%")
	res, err := c.Upsert(ctx, odd, Record{"lastname": "O'Brien"}, UpsertOptions{})
	if err != nil || !res.Created {
		t.Fatalf("odd key upsert = %+v, %v", res, err)
	}
	got, err := c.Retrieve(ctx, odd, "msemr_azurefhirid")
	if err != nil || got.String("msemr_azurefhirid") != "o'brien/1 ?#%" {
		t.Fatalf("odd key retrieve = %v, %v", got, err)
	}
	// two rows cannot share a key value
	_, err = c.Create(ctx, "contacts", Record{"lastname": "Dup", "msemr_azurefhirid": "pat-1"})
	wantClass(t, err, ClassConflict)
}

func TestLookupsWithBind(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	_, c := sandbox(t, crmserver.Options{}, Config{})
	acc, err := c.Upsert(ctx, ByKey("accounts", "msemr_azurefhirid", "org-1"), Record{"name": "Clinic"}, UpsertOptions{})
	if err != nil {
		t.Fatal(err)
	}
	byID, err := c.Create(ctx, "contacts", Record{"lastname": "A", "parentcustomerid_account@odata.bind": Bind("accounts", acc.ID)})
	if err != nil {
		t.Fatal(err)
	}
	byKey, err := c.Create(ctx, "contacts", Record{"lastname": "B", "parentcustomerid_account@odata.bind": BindKey("accounts", "msemr_azurefhirid", "org-1")})
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	err = c.RetrieveMultiple(ctx, "contacts", Query{Select: []string{"lastname", "_parentcustomerid_value"},
		Filter: "_parentcustomerid_value eq " + acc.ID, OrderBy: "lastname"}, func(r Record) error {
		if r.String("_parentcustomerid_value") != acc.ID {
			t.Errorf("lookup = %v", r["_parentcustomerid_value"])
		}
		got = append(got, r.String("contactid"))
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if strings.Join(got, ",") != byID+","+byKey {
		t.Fatalf("contacts of the account = %v", got)
	}
	// binding to the wrong entity is rejected
	_, err = c.Create(ctx, "contacts", Record{"lastname": "C", "parentcustomerid_account@odata.bind": Bind("contacts", byID)})
	wantClass(t, err, ClassRejected)
	// null clears a lookup
	if _, err := c.Upsert(ctx, ByID("contacts", byID), Record{"parentcustomerid_account@odata.bind": nil}, UpsertOptions{Mode: UpdateOnly}); err != nil {
		t.Fatal(err)
	}
	r, err := c.Retrieve(ctx, ByID("contacts", byID), "_parentcustomerid_value")
	if err != nil || r["_parentcustomerid_value"] != nil {
		t.Fatalf("cleared lookup = %v, %v", r, err)
	}
}

func TestRetrieveMultipleQueriesAndPages(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	_, c := sandbox(t, crmserver.Options{}, Config{PageSize: 3})
	for i := range 10 {
		rec := Record{"lastname": fmt.Sprintf("L%02d", i), "numberofchildren": i, "donotphone": i%2 == 0,
			"msemr_azurefhirid": fmt.Sprintf("p%d", i), "birthdate": fmt.Sprintf("19%02d-01-01", 50+i)}
		if i == 3 {
			rec["firstname"] = "O'Hara"
		}
		if _, err := c.Create(ctx, "contacts", rec); err != nil {
			t.Fatal(err)
		}
	}
	tests := []struct {
		name    string
		q       Query
		want    string
		wantErr bool
	}{
		{name: "all, paged", q: Query{OrderBy: "lastname"}, want: "L00,L01,L02,L03,L04,L05,L06,L07,L08,L09"},
		{name: "eq", q: Query{Filter: "msemr_azurefhirid eq 'p4'"}, want: "L04"},
		{name: "eq is case-insensitive", q: Query{Filter: "lastname eq 'l05'"}, want: "L05"},
		{name: "quoted quote", q: Query{Filter: "firstname eq " + Quote("O'Hara")}, want: "L03"},
		{name: "ne null", q: Query{Filter: "firstname ne null"}, want: "L03"},
		{name: "gt and lt", q: Query{Filter: "numberofchildren gt 2 and numberofchildren lt 5", OrderBy: "lastname"}, want: "L03,L04"},
		{name: "ge or le", q: Query{Filter: "numberofchildren ge 8 or numberofchildren le 0", OrderBy: "lastname desc"}, want: "L09,L08,L00"},
		{name: "bool and not", q: Query{Filter: "donotphone eq true and not (numberofchildren ge 4)", OrderBy: "lastname"}, want: "L00,L02"},
		{name: "date compare", q: Query{Filter: "birthdate lt 1953-01-01", OrderBy: "birthdate desc"}, want: "L02,L01,L00"},
		{name: "top with order", q: Query{OrderBy: "numberofchildren desc", Top: 4}, want: "L09,L08,L07,L06"},
		{name: "startswith", q: Query{Filter: "startswith(lastname,'L0') and numberofchildren eq 7"}, want: "L07"},
		{name: "unknown attribute", q: Query{Filter: "shoe_size eq 1"}, wantErr: true},
		{name: "syntax error", q: Query{Filter: "lastname eq"}, wantErr: true},
		{name: "unknown select", q: Query{Select: []string{"nope"}}, wantErr: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			var got []string
			err := c.RetrieveMultiple(ctx, "contacts", tt.q, func(r Record) error {
				got = append(got, r.String("lastname"))
				return nil
			})
			if tt.wantErr {
				wantClass(t, err, ClassRejected)
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if tt.q.OrderBy == "" {
				sort.Strings(got)
			}
			if strings.Join(got, ",") != tt.want {
				t.Fatalf("got %v, want %s", got, tt.want)
			}
		})
	}
}

func TestEntityDefinition(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	_, c := sandbox(t, crmserver.Options{}, Config{})
	for _, name := range []string{"contact", "account", "msemr_medicalidentifier", "msemr_encounter", "msemr_observation"} {
		m, err := c.EntityDefinition(ctx, name)
		if err != nil {
			t.Fatal(err)
		}
		if m.PrimaryID != name+"id" || !m.HasKey("msemr_azurefhirid") || !m.ChangeTracking {
			t.Fatalf("%s: %+v", name, m)
		}
	}
	m, err := c.EntityDefinition(ctx, "contact")
	if err != nil {
		t.Fatal(err)
	}
	g, ok := m.Attribute("gendercode")
	if !ok || g.Type != "Picklist" || !g.HasOption(1) || !g.HasOption(2) || g.HasOption(3) {
		t.Fatalf("gendercode = %+v", g)
	}
	if b, _ := m.Attribute("birthdate"); b == nil || b.Format != "DateOnly" {
		t.Fatalf("birthdate = %+v", b)
	}
	if s, _ := m.Attribute("statecode"); s == nil || len(s.Options) != 2 {
		t.Fatalf("statecode = %+v", s)
	}
	if l, ok := m.Lookup("parentcustomerid_account"); !ok || l.Attribute != "parentcustomerid" || l.Target != "account" {
		t.Fatalf("lookup = %+v", l)
	}
	if f, _ := m.Attribute("firstname"); f == nil || f.MaxLength != 50 {
		t.Fatalf("firstname = %+v", f)
	}
	_, err = c.EntityDefinition(ctx, "nosuchentity")
	wantClass(t, err, ClassNotFound)
}

func TestBatchChangeSetsAndContinueOnError(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	srv, c := sandbox(t, crmserver.Options{}, Config{})

	// a committed change set: create an account, then a contact bound to it by Content-ID
	acc, _ := CreateOp("accounts", Record{"name": "Clinic"})
	acc.ContentID = "1"
	con, _ := CreateOp("contacts", Record{"lastname": "A", "parentcustomerid_account@odata.bind": "$1"})
	res, err := c.ExecuteBatch(ctx, Batch{Items: []BatchItem{{ChangeSet: []Op{acc, con}}}})
	if err != nil {
		t.Fatal(err)
	}
	if len(res) != 2 || res[0].Err != nil || res[1].Err != nil || res[0].Status != 204 {
		t.Fatalf("results = %+v", res)
	}
	accID, _ := idFromEntityID(res[0].Header.Get("OData-EntityId"))
	conID, _ := idFromEntityID(res[1].Header.Get("OData-EntityId"))
	r, err := c.Retrieve(ctx, ByID("contacts", conID), "_parentcustomerid_value")
	if err != nil || r.String("_parentcustomerid_value") != accID {
		t.Fatalf("bound contact = %v, %v", r, err)
	}

	// a failing change set rolls back entirely
	before := srv.Count("contact")
	good, _ := UpsertOp(c, ByKey("contacts", "msemr_azurefhirid", "cs-1"), Record{"lastname": "Good"}, UpsertOptions{})
	bad, _ := CreateOp("contacts", Record{"lastname": "Bad", "gendercode": 99})
	res, err = c.ExecuteBatch(ctx, Batch{Items: []BatchItem{{ChangeSet: []Op{good, bad}}}})
	if err != nil {
		t.Fatal(err)
	}
	if len(res) != 2 || !res[0].RolledBack || !res[1].RolledBack || res[1].Status != 400 || res[0].Err == nil || res[0].Err.Class != ClassRejected {
		t.Fatalf("rolled back results = %+v", res)
	}
	if srv.Count("contact") != before {
		t.Fatalf("change set not atomic: %d contacts, want %d", srv.Count("contact"), before)
	}

	// without continue-on-error the batch stops at the first failure
	op1, _ := CreateOp("contacts", Record{"lastname": "One"})
	op2, _ := CreateOp("contacts", Record{"lastname": "Two", "nope": 1})
	op3, _ := CreateOp("contacts", Record{"lastname": "Three"})
	res, err = c.ExecuteBatch(ctx, Batch{Items: []BatchItem{{Op: &op1}, {Op: &op2}, {Op: &op3}}})
	if err != nil {
		t.Fatal(err)
	}
	if res[0].Err != nil || res[1].Err == nil || !res[2].Skipped {
		t.Fatalf("stop-on-error results = %+v", res)
	}
	// with it, the batch carries on
	res, err = c.ExecuteBatch(ctx, Batch{ContinueOnError: true, Items: []BatchItem{{Op: &op1}, {Op: &op2}, {Op: &op3}}})
	if err != nil {
		t.Fatal(err)
	}
	if res[0].Err != nil || res[1].Err == nil || res[1].Err.Class != ClassRejected || res[2].Skipped || res[2].Err != nil {
		t.Fatalf("continue-on-error results = %+v", res)
	}

	// more than 1,000 requests are refused before sending
	ops := make([]BatchItem, 1001)
	for i := range ops {
		op := DeleteOp(ByID("contacts", conID), "")
		ops[i] = BatchItem{Op: &op}
	}
	_, err = c.ExecuteBatch(ctx, Batch{Items: ops})
	wantClass(t, err, ClassRejected)
}

func TestUpsertManyCreatesThenUpdates(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	srv, c := sandbox(t, crmserver.Options{}, Config{BatchSize: 7})
	items := make([]UpsertItem, 30)
	for i := range items {
		items[i] = UpsertItem{Target: ByKey("contacts", "msemr_azurefhirid", fmt.Sprintf("p%d", i)), Record: Record{"lastname": fmt.Sprintf("L%d", i)}}
	}
	items[5].Record = Record{"lastname": "X", "gendercode": 42}
	out, err := c.UpsertMany(ctx, items)
	if err != nil {
		t.Fatal(err)
	}
	for i, o := range out {
		if i == 5 {
			if e, ok := AsError(o.Err); !ok || e.Class != ClassRejected {
				t.Fatalf("row 5: %v", o.Err)
			}
			continue
		}
		if o.Err != nil || !o.Result.Created {
			t.Fatalf("row %d: %+v", i, o)
		}
	}
	if srv.Count("contact") != 29 {
		t.Fatalf("%d contacts, want 29", srv.Count("contact"))
	}
	out, err = c.UpsertMany(ctx, items[:10])
	if err != nil {
		t.Fatal(err)
	}
	for i, o := range out {
		if i != 5 && (o.Err != nil || o.Result.Created) {
			t.Fatalf("second pass row %d: %+v", i, o)
		}
	}
}

func TestThrottlingHonoursRetryAfter(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	srv, c := sandbox(t, crmserver.Options{Limits: crmserver.Limits{Requests: 4, Window: time.Second}}, Config{})
	for i := range 10 {
		if _, err := c.Create(ctx, "contacts", Record{"lastname": fmt.Sprint(i)}); err != nil {
			t.Fatalf("create %d: %v", i, err)
		}
	}
	// 10 requests at 4 per window: a client that waits out Retry-After is
	// refused at most twice (the 5th and 9th request); one that retried at
	// once would be refused on every attempt and give up.
	if th := srv.Stats().Throttled; th < 1 || th > 2 {
		t.Fatalf("the server throttled %d times, want 1 or 2", th)
	}
	if srv.Count("contact") != 10 {
		t.Fatalf("%d contacts", srv.Count("contact"))
	}

	// a client that will not wait gets the classified error with the hint
	_, strict := sandbox(t, crmserver.Options{Limits: crmserver.Limits{Requests: 1, Window: time.Minute}}, Config{MaxRetries: -1})
	if _, err := strict.Create(ctx, "contacts", Record{"lastname": "a"}); err != nil {
		t.Fatal(err)
	}
	_, err := strict.Create(ctx, "contacts", Record{"lastname": "b"})
	e := wantClass(t, err, ClassThrottled)
	if !e.Retryable || e.RetryAfter < 30*time.Second || e.Code != "0x80072322" {
		t.Fatalf("throttled error = %#v", e)
	}
}

func TestUpsertManyAdaptsBatchSizeToThrottling(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	// A $batch is one request (the request limit cannot trip here); its
	// operations' execution time counts: 100 × 20 ms uses a window's second.
	srv, c := sandbox(t, crmserver.Options{Limits: crmserver.Limits{Requests: 40, Window: time.Second,
		ExecutionTime: time.Second, CostPerOperation: 20 * time.Millisecond}}, Config{BatchSize: 100})
	items := make([]UpsertItem, 120)
	for i := range items {
		items[i] = UpsertItem{Target: ByKey("contacts", "msemr_azurefhirid", fmt.Sprintf("p%d", i)), Record: Record{"lastname": "L"}}
	}
	out, err := c.UpsertMany(ctx, items)
	if err != nil {
		t.Fatal(err)
	}
	for i, o := range out {
		if o.Err != nil {
			t.Fatalf("row %d: %v", i, o.Err)
		}
	}
	if srv.Count("contact") != 120 || srv.Stats().Throttled == 0 {
		t.Fatalf("count %d, throttled %d", srv.Count("contact"), srv.Stats().Throttled)
	}
	if c.BatchSize() >= 100 {
		t.Fatalf("batch size %d did not shrink after throttling", c.BatchSize())
	}
}

func TestConcurrencyLimit(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	srv, c := sandbox(t, crmserver.Options{Limits: crmserver.Limits{Concurrent: 2}}, Config{MaxConcurrency: 2})
	var wg sync.WaitGroup
	errs := make(chan error, 20)
	for i := range 20 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			_, err := c.Create(ctx, "contacts", Record{"lastname": fmt.Sprint(i)})
			errs <- err
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Fatal(err)
		}
	}
	if srv.Stats().Throttled != 0 {
		t.Fatalf("client semaphore let %d requests over the limit", srv.Stats().Throttled)
	}
}

func TestUnavailableIsRetriedWhenSafe(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	srv, c := sandbox(t, crmserver.Options{}, Config{})
	id, err := c.Create(ctx, "contacts", Record{"lastname": "A"})
	if err != nil {
		t.Fatal(err)
	}
	srv.FailNext(2, http.StatusServiceUnavailable)
	if _, err := c.Retrieve(ctx, ByID("contacts", id)); err != nil {
		t.Fatalf("idempotent read not retried: %v", err)
	}
	srv.FailNext(1, http.StatusServiceUnavailable)
	_, err = c.Create(ctx, "contacts", Record{"lastname": "B"})
	e := wantClass(t, err, ClassUnavailable)
	if !e.Retryable || e.RetryAfter != time.Second {
		t.Fatalf("error = %#v", e)
	}
	// an outage longer than the client will wait is returned, classified
	srv.FailFor(http.StatusServiceUnavailable, time.Hour)
	impatient, err := New(Config{URL: c.Root(), MaxRetryWait: time.Second})
	if err != nil {
		t.Fatal(err)
	}
	_, err = impatient.Retrieve(ctx, ByID("contacts", id))
	if e := wantClass(t, err, ClassUnavailable); e.RetryAfter < time.Minute {
		t.Fatalf("Retry-After hint lost: %#v", e)
	}
}

type fakeCredential struct {
	mu     sync.Mutex
	scopes []string
	calls  int
}

func (f *fakeCredential) GetToken(_ context.Context, o policy.TokenRequestOptions) (azcore.AccessToken, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.calls++
	f.scopes = append(f.scopes, o.Scopes...)
	return azcore.AccessToken{Token: "tok-app", ExpiresOn: time.Now().Add(time.Hour)}, nil
}

func TestAuthAndCallerIdentity(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	const app, human = "11111111-1111-1111-1111-111111111111", "22222222-2222-2222-2222-222222222222"
	tokens := map[string]string{"tok-app": app, "tok-human": human}
	cred := &fakeCredential{}
	_, c := sandbox(t, crmserver.Options{Tokens: tokens}, Config{Auth: AuthDefault, Credential: cred})
	for range 3 {
		who, err := c.WhoAmI(ctx)
		if err != nil || who != app {
			t.Fatalf("WhoAmI = %q, %v", who, err)
		}
	}
	if cred.calls != 1 || len(cred.scopes) != 1 || !strings.HasSuffix(cred.scopes[0], "/.default") || !strings.HasPrefix(cred.scopes[0], "http://127.0.0.1:") {
		t.Fatalf("token requests = %d, scopes %v", cred.calls, cred.scopes)
	}
	id, err := c.Create(ctx, "contacts", Record{"lastname": "A"})
	if err != nil {
		t.Fatal(err)
	}
	r, _ := c.Retrieve(ctx, ByID("contacts", id), "_createdby_value")
	if r.String("_createdby_value") != app {
		t.Fatalf("createdby = %v", r)
	}
	// static bearer token of another user, impersonating a third
	imp, err := New(Config{URL: strings.TrimSuffix(c.Root(), APIPath), Auth: AuthBearer, Token: "tok-human", CallerID: "33333333-3333-3333-3333-333333333333"})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := imp.Upsert(ctx, ByID("contacts", id), Record{"firstname": "B"}, UpsertOptions{Mode: UpdateOnly}); err != nil {
		t.Fatal(err)
	}
	r, _ = c.Retrieve(ctx, ByID("contacts", id), "_modifiedby_value")
	if r.String("_modifiedby_value") != "33333333-3333-3333-3333-333333333333" {
		t.Fatalf("modifiedby = %v", r)
	}
	// an unknown token is unauthorized, never a success
	bad, _ := New(Config{URL: strings.TrimSuffix(c.Root(), APIPath), Auth: AuthBearer, Token: "stolen"})
	_, err = bad.WhoAmI(ctx)
	e := wantClass(t, err, ClassUnauthorized)
	if e.Retryable || e.Status != 401 {
		t.Fatalf("error = %#v", e)
	}
}

// TestRetrieveIfChanged reads a row again only when its ETag moved: the
// sandbox answers If-None-Match with the current ETag 304, as Dataverse
// does.
func TestRetrieveIfChanged(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	_, c := sandbox(t, crmserver.Options{}, Config{})
	id, err := c.Create(ctx, "contacts", Record{"lastname": "Lee"})
	if err != nil {
		t.Fatal(err)
	}
	first, changed, err := c.RetrieveIfChanged(ctx, ByID("contacts", id), "", "lastname")
	if err != nil || !changed || first.ETag() == "" || first.String("lastname") != "Lee" {
		t.Fatalf("first read = %v, %v, %v", first, changed, err)
	}
	rec, changed, err := c.RetrieveIfChanged(ctx, ByID("contacts", id), first.ETag(), "lastname")
	if err != nil || changed || rec != nil {
		t.Fatalf("unchanged read = %v, %v, %v; want not changed", rec, changed, err)
	}
	if _, err := c.Upsert(ctx, ByID("contacts", id), Record{"lastname": "Li"}, UpsertOptions{Mode: UpdateOnly}); err != nil {
		t.Fatal(err)
	}
	rec, changed, err = c.RetrieveIfChanged(ctx, ByID("contacts", id), first.ETag(), "lastname")
	if err != nil || !changed || rec.String("lastname") != "Li" || rec.ETag() == first.ETag() {
		t.Fatalf("read after an update = %v, %v, %v", rec, changed, err)
	}
}
