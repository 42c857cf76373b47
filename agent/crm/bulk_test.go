package crm

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
	"mime"
	"mime/multipart"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	fsmaps "github.com/fhirsync/fhirsync/maps"
	"github.com/fhirsync/fhirsync/sandbox/crmserver"
)

// bulkTap stands in front of the sandbox CRM and keeps the request line
// and body of every part of every $batch; it can also let the sandbox run
// a batch and then lose its answer (503), as a gateway time-out does.
type bulkTap struct {
	next     http.Handler
	requests atomic.Int64
	lose     atomic.Int64 // $batch answers still to lose
	mu       sync.Mutex
	batches  [][]tapPart
}

type tapPart struct {
	line, body string
}

func (b *bulkTap) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	b.requests.Add(1)
	if !strings.HasSuffix(r.URL.Path, "$batch") {
		b.next.ServeHTTP(w, r)
		return
	}
	body, _ := io.ReadAll(r.Body)
	r.Body = io.NopCloser(strings.NewReader(string(body)))
	_, params, _ := mime.ParseMediaType(r.Header.Get("Content-Type"))
	var parts []tapPart
	var walk func(mr *multipart.Reader)
	walk = func(mr *multipart.Reader) {
		for {
			p, err := mr.NextPart()
			if err != nil {
				return
			}
			if mt, ps, _ := mime.ParseMediaType(p.Header.Get("Content-Type")); mt == "multipart/mixed" {
				walk(multipart.NewReader(p, ps["boundary"]))
				continue
			}
			raw, _ := io.ReadAll(p)
			line, rest, _ := strings.Cut(string(raw), "\r\n")
			_, content, _ := strings.Cut(rest, "\r\n\r\n")
			parts = append(parts, tapPart{line: line, body: strings.TrimSpace(content)})
		}
	}
	walk(multipart.NewReader(strings.NewReader(string(body)), params["boundary"]))
	b.mu.Lock()
	b.batches = append(b.batches, parts)
	b.mu.Unlock()
	if b.lose.Add(-1) >= 0 {
		b.next.ServeHTTP(httptest.NewRecorder(), r)
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(http.StatusServiceUnavailable)
		_, _ = io.WriteString(w, `{"error":{"code":"0x80040216","message":"The gateway timed out."}}`)
		return
	}
	b.next.ServeHTTP(w, r)
}

// lines returns the request lines of every part sent, batch by batch.
func (b *bulkTap) lines() [][]string {
	b.mu.Lock()
	defer b.mu.Unlock()
	out := make([][]string, len(b.batches))
	for i, ps := range b.batches {
		for _, p := range ps {
			out[i] = append(out[i], p.line)
		}
	}
	return out
}

// count is the number of request lines sent so far that contain any of
// subs.
func (b *bulkTap) count(subs ...string) int {
	n := 0
	for _, batch := range b.lines() {
		for _, l := range batch {
			for _, s := range subs {
				if strings.Contains(l, s) {
					n++
					break
				}
			}
		}
	}
	return n
}

func bulkOn(t *testing.T, cfg CoalesceConfig) (*crmserver.Server, *bulkTap, *Coalescer) {
	t.Helper()
	srv, err := crmserver.New(crmserver.Options{})
	if err != nil {
		t.Fatal(err)
	}
	tap := &bulkTap{next: srv}
	return srv, tap, coalescerBehind(t, tap, cfg)
}

// createAll writes n contacts, each with two identifier rows, from n
// concurrent callers; bad, when set, spoils record i.
func createAll(t *testing.T, k *Coalescer, prefix string, n int, bad func(i int, parent, kid Record)) [][]OpResult {
	t.Helper()
	out := make([][]OpResult, n)
	errs := make([]error, n)
	var wg sync.WaitGroup
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			fid := fmt.Sprintf("%s-%02d", prefix, i)
			parent := Record{"lastname": "L" + fid, "msemr_azurefhirid": fid}
			kid := Record{"msemr_identifiervalue": "mrn-" + fid, "msemr_contact@odata.bind": "$1"}
			if bad != nil {
				bad(i, parent, kid)
			}
			p, err := UpsertOp(nil, ByKey("contacts", "msemr_azurefhirid", fid), parent, UpsertOptions{Mode: CreateOnly})
			if err != nil {
				errs[i] = err
				return
			}
			c1, _ := CreateOp("msemr_medicalidentifiers", kid)
			c2, _ := CreateOp("msemr_medicalidentifiers", Record{"msemr_identifiervalue": "ssn-" + fid, "msemr_contact@odata.bind": "$1"})
			out[i], errs[i] = k.Apply(context.Background(), []Op{p, c1, c2})
		}()
	}
	wg.Wait()
	for i, err := range errs {
		if err != nil {
			t.Fatalf("caller %d: %v", i, err)
		}
	}
	return out
}

// kids returns the identifier values of the rows under contact id.
func kids(t *testing.T, k *Coalescer, id string) []string {
	t.Helper()
	var got []string
	err := k.Client().RetrieveMultiple(context.Background(), "msemr_medicalidentifiers", Query{Select: []string{"msemr_identifiervalue"},
		Filter: "_msemr_contact_value eq " + id}, func(r Record) error { got = append(got, r.String("msemr_identifiervalue")); return nil })
	if err != nil {
		t.Fatal(err)
	}
	return got
}

// TestBulkRequestShapes: the records of one flush go as a CreateMultiple
// of their contacts, then a CreateMultiple of their identifier rows bound
// to the contacts' assigned ids, then one version query — one $batch —
// and each caller gets its contact's id and current ETag.
func TestBulkRequestShapes(t *testing.T) {
	t.Parallel()
	srv, tap, k := bulkOn(t, CoalesceConfig{MaxOps: 100, MaxWait: 200 * time.Millisecond})
	const n = 6
	res := createAll(t, k, "s", n, nil)
	// Execution time by the sandbox's accounting: 10 ms per row created,
	// one version query per batch, one table-definition read per table
	// (a change set of three writes costs 120 ms).
	var exec time.Duration
	for _, a := range srv.Accounts() {
		exec += a.ExecutionTime
	}
	if perRecord := exec / n; perRecord > 45*time.Millisecond {
		t.Errorf("%v execution time per record, want under 45 ms", perRecord)
	}
	t.Logf("%v execution time per record", exec/n)
	for i, r := range res {
		for j, x := range r {
			if x.Err != nil {
				t.Fatalf("record %d op %d: %v", i, j, x.Err)
			}
		}
		fid := fmt.Sprintf("s-%02d", i)
		up, err := UpsertResultOf(ByKey("contacts", "msemr_azurefhirid", fid), r[0])
		if err != nil || !up.Created || up.ID == "" || up.ETag == "" {
			t.Fatalf("record %d: parent result %+v, %v", i, up, err)
		}
		row, err := k.Client().Retrieve(context.Background(), ByID("contacts", up.ID), "msemr_azurefhirid")
		if err != nil {
			t.Fatal(err)
		}
		if row.String("msemr_azurefhirid") != fid || row.ETag() != up.ETag {
			t.Errorf("record %d: row %v, want key %s and ETag %s", i, row, fid, up.ETag)
		}
		if got := kids(t, k, up.ID); len(got) != 2 {
			t.Errorf("record %d: identifier rows %v, want 2", i, got)
		}
	}
	if got := srv.Count("contact"); got != n {
		t.Errorf("%d contacts, want %d", got, n)
	}
	tap.mu.Lock()
	batches := tap.batches
	tap.mu.Unlock()
	var all []tapPart
	for _, b := range batches {
		all = append(all, b...)
	}
	var order []string
	for _, p := range all {
		order = append(order, p.line)
		if !strings.Contains(p.line, "CreateMultiple") {
			continue
		}
		var body struct{ Targets []map[string]any }
		if err := json.Unmarshal([]byte(p.body), &body); err != nil {
			t.Fatalf("%s: %v", p.line, err)
		}
		for _, tg := range body.Targets {
			switch {
			case strings.Contains(p.line, "/contacts/"):
				if tg["@odata.type"] != "Microsoft.Dynamics.CRM.contact" || tg["contactid"] == nil || tg["msemr_azurefhirid"] == nil {
					t.Errorf("contact target %v", tg)
				}
			default:
				b, _ := tg["msemr_contact@odata.bind"].(string)
				if tg["@odata.type"] != "Microsoft.Dynamics.CRM.msemr_medicalidentifier" || !strings.HasPrefix(b, "/contacts(") {
					t.Errorf("identifier target %v", tg)
				}
			}
		}
	}
	if len(batches) > 2 {
		t.Errorf("%d batches for %d records arriving together: %v", len(batches), n, order)
	}
	// parents, then children, then the version query, in every batch
	for _, b := range tap.lines() {
		want := []string{"contacts/Microsoft.Dynamics.CRM.CreateMultiple", "msemr_medicalidentifiers/Microsoft.Dynamics.CRM.CreateMultiple", "GET "}
		if len(b) != len(want) {
			t.Fatalf("batch %v, want %v", b, want)
		}
		for i, w := range want {
			if !strings.Contains(b[i], w) {
				t.Errorf("batch %v: part %d is not %s", b, i, w)
			}
		}
	}
}

// TestBulkFailingRecordFailsAlone: one record with a value the CRM
// refuses fails the bulk message it is in; the records are sent again in
// halves until it is alone, and it fails with the CRM's own error while
// the others are created.
func TestBulkFailingRecordFailsAlone(t *testing.T) {
	t.Parallel()
	srv, tap, k := bulkOn(t, CoalesceConfig{MaxOps: 100, MaxWait: 200 * time.Millisecond})
	const n = 10
	res := createAll(t, k, "f", n, func(i int, parent, kid Record) {
		if i == 3 {
			parent["gendercode"] = 99 // not an option of the choice column
		}
	})
	for i, r := range res {
		e := r[0].Err
		if i == 3 {
			if e == nil || e.Class != ClassRejected || e.Status != http.StatusBadRequest || e.Code == "" || e.RolledBack {
				t.Errorf("the bad record: %+v, want the CRM's own 400", e)
			}
			continue
		}
		for j, x := range r {
			if x.Err != nil {
				t.Errorf("record %d op %d failed with the bad record: %v", i, j, x.Err)
			}
		}
	}
	if got := srv.Count("contact"); got != n-1 {
		t.Errorf("%d contacts, want %d", got, n-1)
	}
	if got := srv.Count("msemr_medicalidentifier"); got != 2*(n-1) {
		t.Errorf("%d identifier rows, want %d", got, 2*(n-1))
	}
	// the good records went in bulk messages; the bad one alone, as a
	// change set
	bulk, changeSets := 0, 0
	for _, b := range tap.lines() {
		for _, l := range b {
			switch {
			case strings.Contains(l, "/contacts/Microsoft.Dynamics.CRM.CreateMultiple"):
				bulk++
			case strings.HasPrefix(l, "PATCH "):
				changeSets++
			}
		}
	}
	if bulk < 2 || changeSets != 1 {
		t.Errorf("%d contact CreateMultiple and %d PATCH requests, want several and 1: %v", bulk, changeSets, tap.lines())
	}
}

// TestBulkChildFailsAfterParent: a record whose identifier row is refused
// after its contact was created gets the row's own error on that op; the
// contact stands, and the other records are whole.
func TestBulkChildFailsAfterParent(t *testing.T) {
	t.Parallel()
	srv, _, k := bulkOn(t, CoalesceConfig{MaxOps: 100, MaxWait: 200 * time.Millisecond})
	const n = 6
	res := createAll(t, k, "c", n, func(i int, parent, kid Record) {
		if i == 2 {
			kid["msemr_identifiervalue"] = strings.Repeat("x", 5000) // longer than the column allows
		}
	})
	for i, r := range res {
		if i == 2 {
			if r[0].Err != nil {
				t.Errorf("the parent of the bad row: %v", r[0].Err)
			}
			if e := r[1].Err; e == nil || e.Class != ClassRejected || e.RolledBack {
				t.Errorf("the bad row: %+v, want its own rejection", e)
			}
			continue
		}
		for j, x := range r {
			if x.Err != nil {
				t.Errorf("record %d op %d: %v", i, j, x.Err)
			}
		}
	}
	if got := srv.Count("contact"); got != n {
		t.Errorf("%d contacts, want %d", got, n)
	}
	if got := srv.Count("msemr_medicalidentifier"); got < 2*(n-1) || got > 2*n-1 {
		t.Errorf("%d identifier rows, want %d or %d", got, 2*(n-1), 2*n-1)
	}
}

// TestBulkLostAnswerResendsAsUpsert: the CRM ran the batch but its answer
// was lost; the records go again as UpsertMultiple of the same ids and no
// row is written twice.
func TestBulkLostAnswerResendsAsUpsert(t *testing.T) {
	t.Parallel()
	srv, tap, k := bulkOn(t, CoalesceConfig{MaxOps: 100, MaxWait: 200 * time.Millisecond})
	tap.lose.Store(1)
	const n = 4
	res := createAll(t, k, "l", n, nil)
	for i, r := range res {
		for j, x := range r {
			if x.Err != nil {
				t.Fatalf("record %d op %d: %v", i, j, x.Err)
			}
		}
		if up, err := UpsertResultOf(ByKey("contacts", "msemr_azurefhirid", fmt.Sprintf("l-%02d", i)), r[0]); err != nil || up.ETag == "" {
			t.Errorf("record %d: %+v %v", i, up, err)
		}
	}
	if got := srv.Count("contact"); got != n {
		t.Errorf("%d contacts, want %d", got, n)
	}
	if got := srv.Count("msemr_medicalidentifier"); got != 2*n {
		t.Errorf("%d identifier rows, want %d", got, 2*n)
	}
	if tap.count("UpsertMultiple") == 0 {
		t.Errorf("nothing was sent again as UpsertMultiple: %v", tap.lines())
	}
}

// TestBulkThrottledBatchGoesAgain: a 429 for the batch holding bulk
// messages pauses the user and the same records go again, once each.
func TestBulkThrottledBatchGoesAgain(t *testing.T) {
	t.Parallel()
	srv, err := crmserver.New(crmserver.Options{})
	if err != nil {
		t.Fatal(err)
	}
	tap := &batchTap{next: srv}
	tap.refuse.Store(1)
	k := coalescerBehind(t, tap, CoalesceConfig{MaxOps: 100, MaxWait: 200 * time.Millisecond})
	const n = 5
	res := createAll(t, k, "t", n, nil)
	for i, r := range res {
		for j, x := range r {
			if x.Err != nil {
				t.Fatalf("record %d op %d: %v", i, j, x.Err)
			}
		}
	}
	if got := srv.Count("contact"); got != n {
		t.Errorf("%d contacts, want %d", got, n)
	}
	if got := srv.Count("msemr_medicalidentifier"); got != 2*n {
		t.Errorf("%d identifier rows, want %d", got, 2*n)
	}
	if tap.refuse.Load() >= 0 {
		t.Fatal("no batch was refused")
	}
}

// TestBulkUpdatesAlone: updates by id sent alone by several callers go as
// one UpdateMultiple, and each caller gets its row's new ETag.
func TestBulkUpdatesAlone(t *testing.T) {
	t.Parallel()
	_, tap, k := bulkOn(t, CoalesceConfig{MaxOps: 100, MaxWait: 200 * time.Millisecond})
	ctx := context.Background()
	const n = 4
	ids := make([]string, n)
	for i := range n {
		id, err := k.Client().Create(ctx, "contacts", Record{"lastname": fmt.Sprintf("U%d", i)})
		if err != nil {
			t.Fatal(err)
		}
		ids[i] = id
	}
	got := make([]UpsertResult, n)
	errs := make([]error, n)
	var wg sync.WaitGroup
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			got[i], errs[i] = k.Upsert(ctx, ByID("contacts", ids[i]), Record{"msemr_azurefhirid": fmt.Sprintf("u-%d", i)}, UpsertOptions{Mode: UpdateOnly})
		}()
	}
	wg.Wait()
	for i := range n {
		if errs[i] != nil {
			t.Fatalf("caller %d: %v", i, errs[i])
		}
		row, err := k.Client().Retrieve(ctx, ByID("contacts", ids[i]), "msemr_azurefhirid")
		if err != nil {
			t.Fatal(err)
		}
		if got[i].ID != ids[i] || got[i].Created || got[i].ETag == "" || got[i].ETag != row.ETag() || row.String("msemr_azurefhirid") != fmt.Sprintf("u-%d", i) {
			t.Errorf("caller %d: %+v, row %v", i, got[i], row)
		}
	}
	if tap.count("contacts/Microsoft.Dynamics.CRM.UpdateMultiple") == 0 {
		t.Errorf("no UpdateMultiple: %v", tap.lines())
	}
	// A missing row fails its caller alone, with the CRM's 404.
	_, err := k.Upsert(ctx, ByID("contacts", "00000000-0000-0000-0000-000000000001"), Record{"lastname": "x"}, UpsertOptions{Mode: UpdateOnly})
	if !errors.Is(err, ErrNotFound) {
		t.Errorf("update of a missing row: %v, want not found", err)
	}
}

// TestBulkOffSendsChangeSets: NoBulk keeps every record's writes in a
// change set of its own.
func TestBulkOffSendsChangeSets(t *testing.T) {
	t.Parallel()
	_, tap, k := bulkOn(t, CoalesceConfig{MaxOps: 100, MaxWait: 200 * time.Millisecond, NoBulk: true})
	createAll(t, k, "o", 3, nil)
	for _, b := range tap.lines() {
		for _, l := range b {
			if strings.Contains(l, "Multiple") {
				t.Errorf("bulk message with bulk off: %s", l)
			}
		}
	}
}

// TestInnerThrottlePausesUser: a 429 answered for a request inside a
// $batch pauses the user that sent the batch, as a 429 of its own does.
func TestInnerThrottlePausesUser(t *testing.T) {
	t.Parallel()
	hs := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "multipart/mixed; boundary=batchresponse_1")
		_, _ = io.WriteString(w, "--batchresponse_1\r\nContent-Type: application/http\r\nContent-Transfer-Encoding: binary\r\n\r\n"+
			"HTTP/1.1 429 Too Many Requests\r\nRetry-After: 30\r\nContent-Type: application/json; odata.metadata=minimal\r\n\r\n"+
			`{"error":{"code":"0x80072321","message":"Combined execution time of incoming requests exceeded limit."}}`+
			"\r\n--batchresponse_1--\r\n")
	}))
	t.Cleanup(hs.Close)
	c, err := New(Config{URL: hs.URL})
	if err != nil {
		t.Fatal(err)
	}
	op := Op{Method: http.MethodGet, Path: "contacts"}
	res, err := c.ExecuteBatch(context.Background(), Batch{Items: []BatchItem{{Op: &op}}, ContinueOnError: true})
	if err != nil {
		t.Fatal(err)
	}
	if res[0].Err == nil || res[0].Err.Class != ClassThrottled {
		t.Fatalf("inner answer %+v, want throttled", res[0])
	}
	if d := c.users.resumeIn(nil); d < 20*time.Second {
		t.Errorf("user paused for %v after an inner 429 with Retry-After 30", d)
	}
}

// TestBulkWithReadsInTheSameBatch: reads and bulk writes share a flush;
// each caller still gets its own answer.
func TestBulkWithReadsInTheSameBatch(t *testing.T) {
	t.Parallel()
	_, tap, k := bulkOn(t, CoalesceConfig{MaxOps: 100, MaxWait: 300 * time.Millisecond})
	ctx := context.Background()
	if _, err := k.Client().Create(ctx, "contacts", Record{"lastname": "Seeded", "msemr_azurefhirid": "seed-1"}); err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	var rec Record
	var rerr, merr error
	wg.Add(2)
	go func() {
		defer wg.Done()
		rec, rerr = k.Retrieve(ctx, ByKey("contacts", "msemr_azurefhirid", "seed-1"), "lastname")
	}()
	go func() {
		defer wg.Done()
		_, merr = k.Retrieve(ctx, ByKey("contacts", "msemr_azurefhirid", "nobody"), "lastname")
	}()
	res := createAll(t, k, "m", 4, nil)
	wg.Wait()
	if rerr != nil || rec.String("lastname") != "Seeded" {
		t.Errorf("read in the flush: %v, %v", rec, rerr)
	}
	if !errors.Is(merr, ErrNotFound) {
		t.Errorf("read of a missing row: %v, want not found", merr)
	}
	for i, r := range res {
		for j, x := range r {
			if x.Err != nil {
				t.Errorf("record %d op %d: %v", i, j, x.Err)
			}
		}
		if up, err := UpsertResultOf(ByKey("contacts", "msemr_azurefhirid", fmt.Sprintf("m-%02d", i)), r[0]); err != nil || up.ETag == "" {
			t.Errorf("record %d: %+v, %v", i, up, err)
		}
	}
	mixed := false
	for _, b := range tap.lines() {
		reads, bulk := 0, 0
		for _, l := range b {
			if strings.Contains(l, "Multiple") {
				bulk++
			} else if strings.HasPrefix(l, "GET ") {
				reads++
			}
		}
		mixed = mixed || (bulk > 0 && reads > 1)
	}
	if !mixed {
		t.Errorf("no batch held both reads and bulk writes: %v", tap.lines())
	}
}

// TestReadsByIDAreGrouped: reads by primary key from concurrent callers
// become one In query on the primary key; each caller gets its row, and a
// missing row is not found.
func TestReadsByIDAreGrouped(t *testing.T) {
	t.Parallel()
	_, tap, k := bulkOn(t, CoalesceConfig{MaxOps: 100, MaxWait: 200 * time.Millisecond})
	ctx := context.Background()
	const n = 5
	ids := make([]string, n)
	for i := range n {
		id, err := k.Client().Create(ctx, "contacts", Record{"lastname": fmt.Sprintf("R%d", i)})
		if err != nil {
			t.Fatal(err)
		}
		ids[i] = id
	}
	got := make([]Record, n+1)
	errs := make([]error, n+1)
	var wg sync.WaitGroup
	for i := range n + 1 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			id := "00000000-0000-0000-0000-0000000000ff"
			if i < n {
				id = strings.ToUpper(ids[i])
			}
			got[i], errs[i] = k.Retrieve(ctx, ByID("contacts", id), "lastname")
		}()
	}
	wg.Wait()
	for i := range n {
		if errs[i] != nil || got[i].String("lastname") != fmt.Sprintf("R%d", i) || got[i].ETag() == "" {
			t.Errorf("caller %d: %v, %v", i, got[i], errs[i])
		}
		// As a retrieve of its own answers (the primary id comes with
		// every row), whether or not the read was grouped.
		if id, _ := got[i]["contactid"].(string); !strings.EqualFold(id, ids[i]) {
			t.Errorf("caller %d: contactid %q, want the row's id %s: %v", i, id, ids[i], got[i])
		}
	}
	if !errors.Is(errs[n], ErrNotFound) {
		t.Errorf("missing row: %v, want not found", errs[n])
	}
	if tap.count("PropertyName%3D%27contactid%27", "PropertyName='contactid'") == 0 {
		t.Errorf("no In query on contactid: %v", tap.lines())
	}
}

// TestBulkRefusedByATable: a table that does not take CreateMultiple (here
// the request is renamed on its way, so the CRM refuses it) costs the
// records in it a change set each, once; later records of that table skip
// the bulk messages.
func TestBulkRefusedByATable(t *testing.T) {
	t.Parallel()
	srv, err := crmserver.New(crmserver.Options{})
	if err != nil {
		t.Fatal(err)
	}
	tap := &bulkTap{next: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if strings.HasSuffix(r.URL.Path, "$batch") {
			body, _ := io.ReadAll(r.Body)
			body = []byte(strings.ReplaceAll(string(body), "msemr_medicalidentifiers/Microsoft.Dynamics.CRM.CreateMultiple", "msemr_medicalidentifiers/Microsoft.Dynamics.CRM.NoSuchMultiple"))
			r.Body = io.NopCloser(strings.NewReader(string(body)))
			r.ContentLength = int64(len(body))
		}
		srv.ServeHTTP(w, r)
	})}
	k := coalescerBehind(t, tap, CoalesceConfig{MaxOps: 100, MaxWait: 200 * time.Millisecond})
	for round, prefix := range []string{"r1", "r2"} {
		before := len(tap.lines())
		for i, r := range createAll(t, k, prefix, 4, nil) {
			for j, x := range r {
				if x.Err != nil {
					t.Fatalf("round %d record %d op %d: %v", round, i, j, x.Err)
				}
			}
		}
		refused := 0
		for _, b := range tap.lines()[before:] {
			for _, l := range b {
				if strings.Contains(l, "msemr_medicalidentifiers/Microsoft.Dynamics.CRM.") {
					refused++
				}
			}
		}
		if round == 0 && refused == 0 {
			t.Fatalf("round 1 sent no identifier bulk message: %v", tap.lines())
		}
		if round == 1 && refused != 0 {
			t.Errorf("round 2 sent %d identifier bulk messages to a table that refused them", refused)
		}
	}
	if got := srv.Count("msemr_medicalidentifier"); got != 16 {
		t.Errorf("%d identifier rows, want 16", got)
	}
	if got := srv.Count("contact"); got != 8 {
		t.Errorf("%d contacts, want 8", got)
	}
}

// TestBulkKeepsChangeSetOfNestedBinds: a record whose rows bind to a row
// created in the same change set other than the record ($2: a care team
// participant's role under the participant) keeps its change set, next to
// records that go in bulk, and the role row points at its participant.
func TestBulkKeepsChangeSetOfNestedBinds(t *testing.T) {
	t.Parallel()
	_, tap, k := bulkOn(t, CoalesceConfig{MaxOps: 100, MaxWait: 200 * time.Millisecond})
	var (
		wg      sync.WaitGroup
		results []OpResult
		err     error
	)
	wg.Add(1)
	go func() {
		defer wg.Done()
		team, _ := UpsertOp(nil, ByKey("msemr_careteams", "msemr_azurefhirid", "team-1"), Record{"msemr_name": "Ward 3", "msemr_azurefhirid": "team-1"}, UpsertOptions{Mode: CreateOnly})
		part, _ := CreateOp("msemr_careteamparticipants", Record{"msemr_description": "nurse", "msemr_careteam@odata.bind": "$1"})
		role, _ := CreateOp("msemr_careteamparticipantroles", Record{"msemr_display": "Registered nurse", "msemr_careteamparticipant@odata.bind": "$2"})
		results, err = k.Apply(context.Background(), []Op{team, part, role})
	}()
	createAll(t, k, "n", 2, nil)
	wg.Wait()
	if err != nil {
		t.Fatal(err)
	}
	for i, r := range results {
		if r.Err != nil {
			t.Fatalf("op %d: %v", i, r.Err)
		}
	}
	if n := tap.count("msemr_careteams/Microsoft.Dynamics.CRM.", "msemr_careteamparticipantroles/Microsoft.Dynamics.CRM."); n != 0 {
		t.Errorf("%d bulk messages for the care team's rows, want its change set", n)
	}
	if n := tap.count("/msemr_careteamparticipantroles HTTP/1.1"); n != 1 {
		t.Errorf("role rows created by request: %d, want 1 (lines %v)", n, tap.lines())
	}
	var parts, roles []Record
	c := k.Client()
	if err := c.RetrieveMultiple(context.Background(), "msemr_careteamparticipants", Query{}, func(r Record) error { parts = append(parts, r); return nil }); err != nil {
		t.Fatal(err)
	}
	if err := c.RetrieveMultiple(context.Background(), "msemr_careteamparticipantroles", Query{}, func(r Record) error { roles = append(roles, r); return nil }); err != nil {
		t.Fatal(err)
	}
	if len(parts) != 1 || len(roles) != 1 || !strings.EqualFold(roles[0].String("_msemr_careteamparticipant_value"), parts[0].String("msemr_careteamparticipantid")) {
		t.Errorf("participants %v, roles %v: want one role under the one participant", parts, roles)
	}
}

// TestAppendTargetIsTheRecordWithItsFields: a bulk message's target is
// written as EncodeJSON writes the record with the fields put over it (the
// later of two with one name winning), the record itself left as it was.
func TestAppendTargetIsTheRecordWithItsFields(t *testing.T) {
	t.Parallel()
	rec := Record{"lastname": "Ng", "parentcustomerid_account@odata.bind": "$1", "contactid": "old", "emailaddress1": nil,
		"msemr_age": json.Number("42"), "telephones": []any{map[string]any{"n": "1"}}, "text": "<a & b>\u2028"}
	for _, tc := range []struct {
		name string
		rec  Record
		over []field
	}{
		{"none", rec, nil},
		{"new fields", rec, []field{{"@odata.type", "Microsoft.Dynamics.CRM.contact"}, {"msemr_mrn", "m1"}}},
		{"over its own", rec, []field{{"parentcustomerid_account@odata.bind", "accounts(a1)"}, {"contactid", "c1"}}},
		{"the later wins", rec, []field{{"contactid", "c1"}, {"contactid", "c2"}}},
		{"empty record", Record{}, []field{{"contactid", "c1"}}},
		{"nil record", nil, []field{{"contactid", "c1"}}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			want := map[string]any{}
			for k, v := range tc.rec {
				want[k] = v
			}
			for _, f := range tc.over {
				want[f.name] = f.value
			}
			wantBody, err := fsmaps.EncodeJSON(want)
			if err != nil {
				t.Fatal(err)
			}
			before, _ := fsmaps.EncodeJSON(map[string]any(tc.rec))
			got, err := appendTarget([]byte("x"), tc.rec, tc.over)
			if err != nil {
				t.Fatal(err)
			}
			if string(got) != "x"+string(wantBody) {
				t.Errorf("got  %s\nwant x%s", got, wantBody)
			}
			if after, _ := fsmaps.EncodeJSON(map[string]any(tc.rec)); string(after) != string(before) {
				t.Errorf("the record changed: %s, was %s", after, before)
			}
		})
	}
	if _, err := appendTarget(nil, Record{"x": math.NaN()}, nil); err == nil {
		t.Error("a value JSON cannot hold was written")
	}
}
