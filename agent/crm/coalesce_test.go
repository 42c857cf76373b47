package crm

import (
	"context"
	"errors"
	"fmt"
	"io"
	"mime"
	"mime/multipart"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/fhirsync/fhirsync/sandbox/crmserver"
)

// batchTap stands in front of the sandbox CRM: it counts requests and the
// parts of each $batch, and can refuse the first batches with 429.
type batchTap struct {
	next     http.Handler
	requests atomic.Int64
	refuse   atomic.Int64 // $batch requests still to refuse with 429
	mu       sync.Mutex
	sizes    []int // top-level parts of each $batch that reached the CRM
	queries  []string
}

func (b *batchTap) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	b.requests.Add(1)
	if strings.HasSuffix(r.URL.Path, "$batch") {
		body, _ := io.ReadAll(r.Body)
		r.Body = io.NopCloser(strings.NewReader(string(body)))
		if b.refuse.Add(-1) >= 0 {
			w.Header().Set("Retry-After", "0.01")
			w.Header().Set("Content-Type", "application/json")
			w.WriteHeader(http.StatusTooManyRequests)
			_, _ = io.WriteString(w, `{"error":{"code":"0x80072322","message":"Number of requests exceeded the limit of 6000 over time window of 300 seconds."}}`)
			return
		}
		_, params, _ := mime.ParseMediaType(r.Header.Get("Content-Type"))
		mr := multipart.NewReader(strings.NewReader(string(body)), params["boundary"])
		n := 0
		for {
			p, err := mr.NextPart()
			if err != nil {
				break
			}
			raw, _ := io.ReadAll(p)
			if line, _, _ := strings.Cut(string(raw), "\r\n"); strings.HasPrefix(line, "GET ") {
				b.mu.Lock()
				b.queries = append(b.queries, line)
				b.mu.Unlock()
			}
			n++
		}
		b.mu.Lock()
		b.sizes = append(b.sizes, n)
		b.mu.Unlock()
	}
	b.next.ServeHTTP(w, r)
}

func coalescerOn(t *testing.T, cfg CoalesceConfig) (*crmserver.Server, *batchTap, *Coalescer) {
	t.Helper()
	srv, err := crmserver.New(crmserver.Options{})
	if err != nil {
		t.Fatal(err)
	}
	tap := &batchTap{next: srv}
	return srv, tap, coalescerBehind(t, tap, cfg)
}

// coalescerBehind starts h on a test server and returns a Coalescer
// sending to it.
func coalescerBehind(t *testing.T, h http.Handler, cfg CoalesceConfig) *Coalescer {
	t.Helper()
	hs := httptest.NewServer(h)
	t.Cleanup(hs.Close)
	c, err := New(Config{URL: hs.URL, MaxConcurrency: 8})
	if err != nil {
		t.Fatal(err)
	}
	k, err := NewCoalescer(c, cfg)
	if err != nil {
		t.Fatal(err)
	}
	return k
}

// createContact writes one contact and an identifier row under it in one
// change set, the row bound to the contact by its Content-ID.
func createContact(ctx context.Context, k *Coalescer, fhirID, lastname string) ([]OpResult, error) {
	parent, err := UpsertOp(nil, ByKey("contacts", "msemr_azurefhirid", fhirID),
		Record{"lastname": lastname, "msemr_azurefhirid": fhirID}, UpsertOptions{Mode: CreateOnly})
	if err != nil {
		return nil, err
	}
	child, err := CreateOp("msemr_medicalidentifiers", Record{"msemr_identifiervalue": "mrn-" + fhirID, "msemr_contact@odata.bind": "$1"})
	if err != nil {
		return nil, err
	}
	return k.Apply(ctx, []Op{parent, child})
}

// TestCoalesceRoutesResultsUnderConcurrency has many callers write, read
// by alternate key and read child rows at once: each gets its own rows,
// and the CRM sees a handful of $batch requests, not one request per call.
func TestCoalesceRoutesResultsUnderConcurrency(t *testing.T) {
	t.Parallel()
	_, tap, k := coalescerOn(t, CoalesceConfig{MaxOps: 100, MaxWait: 20 * time.Millisecond})
	ctx := context.Background()
	const n = 60
	ids := make([]string, n)
	var wg sync.WaitGroup
	errs := make(chan error, n)
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			fid := fmt.Sprintf("p-%02d", i)
			res, err := createContact(ctx, k, fid, fmt.Sprintf("Name%02d", i))
			if err != nil {
				errs <- err
				return
			}
			for _, r := range res {
				if r.Err != nil {
					errs <- fmt.Errorf("%s: %w", fid, r.Err)
					return
				}
			}
			up, err := UpsertResultOf(ByKey("contacts", "msemr_azurefhirid", fid), res[0])
			if err != nil || up.ID == "" || !up.Created || up.ETag == "" {
				errs <- fmt.Errorf("%s: parent result %+v, %v", fid, up, err)
				return
			}
			ids[i] = up.ID
			rec, err := k.Retrieve(ctx, ByKey("contacts", "msemr_azurefhirid", fid), "lastname", "contactid")
			if err != nil {
				errs <- fmt.Errorf("%s: retrieve: %w", fid, err)
				return
			}
			if rec.String("lastname") != fmt.Sprintf("Name%02d", i) || rec.String("contactid") != up.ID {
				errs <- fmt.Errorf("%s: got someone else's row %v", fid, rec)
				return
			}
			if _, has := rec["msemr_azurefhirid"]; has {
				errs <- fmt.Errorf("%s: the key column added for routing came back: %v", fid, rec)
			}
			var rows []Record
			err = k.RetrieveMultiple(ctx, "msemr_medicalidentifiers", Query{Select: []string{"msemr_identifiervalue"},
				Filter: "_msemr_contact_value eq " + up.ID}, func(r Record) error { rows = append(rows, r); return nil })
			if err != nil {
				errs <- fmt.Errorf("%s: children: %w", fid, err)
				return
			}
			if len(rows) != 1 || rows[0].String("msemr_identifiervalue") != "mrn-"+fid {
				errs <- fmt.Errorf("%s: children %v", fid, rows)
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	// 3 calls per caller; grouped, the CRM sees a few batches.
	if got := tap.requests.Load(); got > 3*n/4 {
		t.Errorf("%d requests for %d calls", got, 3*n)
	}
	tap.mu.Lock()
	defer tap.mu.Unlock()
	grouped := 0
	for _, q := range tap.queries {
		if strings.Contains(q, "Microsoft.Dynamics.CRM.In") {
			grouped++
		}
	}
	if grouped == 0 {
		t.Errorf("no read was grouped into an In query: %v", tap.queries)
	}
}

// TestCoalesceFailingRecordFailsAlone puts a bad change set among good
// ones: only its caller sees the failure, as a single request's error.
// (With bulk messages, TestBulkFailingRecordFailsAlone.)
func TestCoalesceFailingRecordFailsAlone(t *testing.T) {
	t.Parallel()
	srv, tap, k := coalescerOn(t, CoalesceConfig{MaxOps: 100, MaxWait: 50 * time.Millisecond, NoBulk: true})
	ctx := context.Background()
	const n = 10
	type outcome struct {
		res []OpResult
		err error
	}
	out := make([]outcome, n)
	var wg sync.WaitGroup
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			fid := fmt.Sprintf("f-%d", i)
			rec := Record{"lastname": "Good", "msemr_azurefhirid": fid}
			if i == 3 {
				rec["gendercode"] = 99 // not an option of the choice column
			}
			op, _ := UpsertOp(nil, ByKey("contacts", "msemr_azurefhirid", fid), rec, UpsertOptions{Mode: CreateOnly})
			res, err := k.Apply(ctx, []Op{op})
			out[i] = outcome{res, err}
		}()
	}
	wg.Wait()
	for i, o := range out {
		if o.err != nil {
			t.Fatalf("caller %d: the batch failed as a whole: %v", i, o.err)
		}
		e := o.res[0].Err
		if i == 3 {
			if e == nil || e.Class != ClassRejected || e.Status != http.StatusBadRequest {
				t.Errorf("the bad record: %+v, want a 400 rejected error", e)
			}
			continue
		}
		if e != nil {
			t.Errorf("caller %d failed with the bad record: %v", i, e)
		}
	}
	if got := srv.Count("contact"); got != n-1 {
		t.Errorf("%d contacts, want %d", got, n-1)
	}
	if got := tap.requests.Load(); got != 1 {
		t.Errorf("%d requests, want the 10 change sets in one batch", got)
	}
}

// TestCoalesceThrottledBatchSplits refuses the first batch with 429: its
// callers are sent again in smaller batches and all succeed.
func TestCoalesceThrottledBatchSplits(t *testing.T) {
	t.Parallel()
	srv, tap, k := coalescerOn(t, CoalesceConfig{MaxOps: 8, MaxWait: time.Second})
	tap.refuse.Store(1)
	ctx := context.Background()
	var wg sync.WaitGroup
	errs := make(chan error, 8)
	for i := range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			fid := fmt.Sprintf("t-%d", i)
			_, err := k.Upsert(ctx, ByKey("contacts", "msemr_azurefhirid", fid), Record{"lastname": "T", "msemr_azurefhirid": fid}, UpsertOptions{Mode: CreateOnly})
			errs <- err
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Errorf("a caller failed: %v", err)
		}
	}
	if got := srv.Count("contact"); got != 8 {
		t.Errorf("%d contacts, want 8", got)
	}
	tap.mu.Lock()
	defer tap.mu.Unlock()
	// The refused batch of 8 never reached the CRM; then halves.
	if len(tap.sizes) != 2 || tap.sizes[0] != 4 || tap.sizes[1] != 4 {
		t.Errorf("batches after the 429 carried %v parts, want [4 4]", tap.sizes)
	}
}

// TestCoalesceThrottledToTheEnd gives up after the client's retries and
// hands each caller the throttled error with its Retry-After.
func TestCoalesceThrottledToTheEnd(t *testing.T) {
	t.Parallel()
	srv, err := crmserver.New(crmserver.Options{})
	if err != nil {
		t.Fatal(err)
	}
	tap := &batchTap{next: srv}
	tap.refuse.Store(1000)
	hs := httptest.NewServer(tap)
	t.Cleanup(hs.Close)
	c, err := New(Config{URL: hs.URL, MaxRetries: 2})
	if err != nil {
		t.Fatal(err)
	}
	k, _ := NewCoalescer(c, CoalesceConfig{MaxWait: time.Millisecond})
	_, err = k.Retrieve(context.Background(), ByID("contacts", "00000000-0000-0000-0000-000000000001"))
	e := wantClass(t, err, ClassThrottled)
	if !e.Retryable || e.RetryAfter <= 0 {
		t.Errorf("throttled error %+v lacks Retry-After", e)
	}
	// 1 + 2 retries of the batch, and the table definition read that
	// lets reads by id be grouped
	if got := tap.requests.Load(); got != 4 {
		t.Errorf("%d requests, want 1 + 2 retries and a definition read", got)
	}
}

// TestCoalesceSingleRequestErrors keeps the errors single requests give:
// 404 matching ErrNotFound, and 412 for a stale If-Match.
func TestCoalesceSingleRequestErrors(t *testing.T) {
	t.Parallel()
	_, _, k := coalescerOn(t, CoalesceConfig{MaxWait: time.Millisecond})
	ctx := context.Background()
	_, err := k.Retrieve(ctx, ByKey("contacts", "msemr_azurefhirid", "nobody"))
	if !errors.Is(err, ErrNotFound) {
		t.Errorf("missing key: %v, want ErrNotFound", err)
	}
	_, err = k.Retrieve(ctx, ByID("contacts", "00000000-0000-0000-0000-000000000001"))
	if !errors.Is(err, ErrNotFound) {
		t.Errorf("missing id: %v, want ErrNotFound", err)
	}
	r, err := k.Upsert(ctx, ByKey("contacts", "msemr_azurefhirid", "s1"), Record{"lastname": "A", "msemr_azurefhirid": "s1"}, UpsertOptions{Mode: CreateOnly})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := k.Upsert(ctx, ByID("contacts", r.ID), Record{"lastname": "B"}, UpsertOptions{Mode: UpdateOnly, IfMatch: r.ETag}); err != nil {
		t.Fatal(err)
	}
	_, err = k.Upsert(ctx, ByID("contacts", r.ID), Record{"lastname": "C"}, UpsertOptions{Mode: UpdateOnly, IfMatch: r.ETag})
	e := wantClass(t, err, ClassConflict)
	if e.Status != http.StatusPreconditionFailed || e.Request != 0 || !strings.HasPrefix(e.Op, "upserting contacts(") {
		t.Errorf("stale write: %+v, want a single request's 412", e)
	}
	if err := k.Delete(ctx, ByID("contacts", r.ID), ""); err != nil {
		t.Fatal(err)
	}
	if err := k.Delete(ctx, ByID("contacts", r.ID), ""); !errors.Is(err, ErrNotFound) {
		t.Errorf("second delete: %v, want ErrNotFound", err)
	}
}

// TestCoalesceOrderPerCaller has callers each write one row many times in
// a row while others do the same: every caller's last write is what the
// row holds, and each read sees the write before it.
func TestCoalesceOrderPerCaller(t *testing.T) {
	t.Parallel()
	_, _, k := coalescerOn(t, CoalesceConfig{MaxWait: 5 * time.Millisecond})
	ctx := context.Background()
	var wg sync.WaitGroup
	errs := make(chan error, 8)
	for i := range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			fid := fmt.Sprintf("o-%d", i)
			t0 := ByKey("contacts", "msemr_azurefhirid", fid)
			r, err := k.Upsert(ctx, t0, Record{"lastname": "v0", "msemr_azurefhirid": fid}, UpsertOptions{Mode: CreateOnly})
			if err != nil {
				errs <- err
				return
			}
			etag := r.ETag
			for v := 1; v <= 5; v++ {
				u, err := k.Upsert(ctx, ByID("contacts", r.ID), Record{"lastname": fmt.Sprintf("v%d", v)}, UpsertOptions{Mode: UpdateOnly, IfMatch: etag})
				if err != nil {
					errs <- fmt.Errorf("%s v%d: %w", fid, v, err)
					return
				}
				etag = u.ETag
				got, err := k.Retrieve(ctx, t0, "lastname")
				if err != nil || got.String("lastname") != fmt.Sprintf("v%d", v) || got.ETag() != etag {
					errs <- fmt.Errorf("%s: read after write v%d: %v %v", fid, v, got, err)
					return
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
}

// TestCoalesceInQuerySplitting keeps every grouped query's URL within the
// limit and every value in exactly one query.
func TestCoalesceInQuerySplitting(t *testing.T) {
	t.Parallel()
	c, err := New(Config{URL: "https://org.example.com"})
	if err != nil {
		t.Fatal(err)
	}
	k, _ := NewCoalescer(c, CoalesceConfig{})
	var es []*entry
	for i := range 300 {
		es = append(es, &entry{kind: kindKeyRead, set: "contacts", attr: "msemr_azurefhirid", value: fmt.Sprintf("%03d-%s", i, strings.Repeat("x", 250))})
	}
	chunks := k.inChunks(es)
	if len(chunks) < 2 {
		t.Fatalf("%d chunks for ~80 KB of values", len(chunks))
	}
	seen := 0
	for _, ch := range chunks {
		op, _ := k.inOp(ch)
		if l := len(c.root) + len(op.Path); l > maxQueryURL {
			t.Errorf("query URL of %d characters", l)
		}
		for _, e := range ch {
			if !strings.Contains(op.Path, e.value[:3]+"-") {
				t.Errorf("value %s missing from its query", e.value[:3])
			}
		}
		seen += len(ch)
	}
	if seen != len(es) {
		t.Errorf("%d values in the queries, want %d", seen, len(es))
	}

	// Against the sandbox: long keys read at once, found and missing.
	_, tap, k2 := coalescerOn(t, CoalesceConfig{MaxOps: 200, MaxWait: 50 * time.Millisecond})
	ctx := context.Background()
	long := func(i int) string { return fmt.Sprintf("%03d-%s", i, strings.Repeat("k", 90)) }
	for i := range 150 {
		if i%2 == 0 {
			continue
		}
		if _, err := k2.c.Upsert(ctx, ByKey("contacts", "msemr_azurefhirid", long(i)), Record{"lastname": fmt.Sprint(i), "msemr_azurefhirid": long(i)}, UpsertOptions{Mode: CreateOnly}); err != nil {
			t.Fatal(err)
		}
	}
	before := tap.requests.Load()
	var wg sync.WaitGroup
	errs := make(chan error, 150)
	for i := range 150 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			rec, err := k2.Retrieve(ctx, ByKey("contacts", "msemr_azurefhirid", long(i)), "lastname")
			switch {
			case i%2 == 0 && !errors.Is(err, ErrNotFound):
				errs <- fmt.Errorf("key %d: %v %v, want not found", i, rec, err)
			case i%2 == 1 && (err != nil || rec.String("lastname") != fmt.Sprint(i)):
				errs <- fmt.Errorf("key %d: %v %v", i, rec, err)
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	if got := tap.requests.Load() - before; got > 4 {
		t.Errorf("%d requests for 150 reads", got)
	}
}
