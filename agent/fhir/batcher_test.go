package fhir

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/fhirsync/fhirsync/sandbox/fhirserver"
)

// countingTransport counts requests by "METHOD path" (the base's path
// removed), so a test sees whether writes went as Bundles or singly, and
// Bundles also by their return preference ("POST / return=minimal").
type countingTransport struct {
	base string
	mu   sync.Mutex
	n    map[string]int
}

func (ct *countingTransport) RoundTrip(r *http.Request) (*http.Response, error) {
	p := strings.Trim(strings.TrimPrefix(r.URL.Path, ct.base), "/")
	p, _, _ = strings.Cut(p, "/") // "Patient/123" counts as "Patient"
	p = "/" + p
	ct.mu.Lock()
	ct.n[r.Method+" "+p]++
	if p == "/" {
		ct.n[r.Method+" / "+r.Header.Get("Prefer")]++
	}
	ct.mu.Unlock()
	return http.DefaultTransport.RoundTrip(r)
}

func (ct *countingTransport) count(key string) int {
	ct.mu.Lock()
	defer ct.mu.Unlock()
	return ct.n[key]
}

func countingClient(t *testing.T, base string) (*Client, *countingTransport) {
	t.Helper()
	u, err := url.Parse(base)
	if err != nil {
		t.Fatal(err)
	}
	ct := &countingTransport{base: strings.TrimRight(u.Path, "/"), n: map[string]int{}}
	c, err := New(Config{BaseURL: base, Timeout: 20 * time.Second, HTTPClient: &http.Client{Transport: ct}})
	if err != nil {
		t.Fatal(err)
	}
	return c, ct
}

// batchable is what both the Client and the Batcher offer the agent: the
// calls a Batcher can send as entries of a batch Bundle, reads and writes.
type batchable interface {
	Read(ctx context.Context, typ, id string) (Resource, error)
	Create(ctx context.Context, res Resource) (Resource, error)
	CreateIfNoneExist(ctx context.Context, res Resource, criteria url.Values) (Resource, bool, error)
	Update(ctx context.Context, res Resource, ifMatch string) (Resource, error)
	Delete(ctx context.Context, typ, id string) error
}

var (
	_ batchable = (*Client)(nil)
	_ batchable = (*Batcher)(nil)
)

// batchCase prepares server state with the plain client and returns the
// call to make, which reports its outcome as a comparable string.
type batchCase struct {
	name string
	// want is the outcome both paths must give; "" compares the batched
	// path with the single one only (servers differ there).
	want    string
	prepare func(ctx context.Context, t *testing.T, c *Client) func(ctx context.Context, w batchable) string
}

// outcome renders a call's result without server-assigned values.
func outcome(res Resource, created *bool, err error) string {
	if err != nil {
		var fe *Error
		if !errors.As(err, &fe) {
			return "error " + err.Error()
		}
		return fmt.Sprintf("%s %d", fe.Class, fe.Status)
	}
	s := "ok"
	if res != nil {
		s += " " + res.Type()
		if res.ID() == "" || res.VersionID() == "" {
			s += " without id or version"
		}
	}
	if created != nil {
		s += fmt.Sprintf(" created=%v", *created)
	}
	return s
}

func made(ctx context.Context, t *testing.T, c *Client, val string) Resource {
	t.Helper()
	r, err := c.Create(ctx, patient(testSystem, val))
	if err != nil {
		t.Fatal(err)
	}
	return r
}

// madeGone creates a Patient with identifier val through c and deletes it;
// it returns the resource as created.
func madeGone(ctx context.Context, t *testing.T, c *Client, val string) Resource {
	t.Helper()
	r := made(ctx, t, c, val)
	if err := c.Delete(ctx, "Patient", r.ID()); err != nil {
		t.Fatal(err)
	}
	return r
}

var batchCases = []batchCase{
	{"create", "ok Patient", func(ctx context.Context, t *testing.T, c *Client) func(context.Context, batchable) string {
		val := uniq("bcreate")
		return func(ctx context.Context, w batchable) string {
			r, err := w.Create(ctx, patient(testSystem, val))
			return outcome(r, nil, err)
		}
	}},
	{"conditional create without a match", "ok Patient created=true", func(ctx context.Context, t *testing.T, c *Client) func(context.Context, batchable) string {
		val := uniq("bcc0")
		return func(ctx context.Context, w batchable) string {
			r, made, err := w.CreateIfNoneExist(ctx, patient(testSystem, val), url.Values{"identifier": {testSystem + "|" + val}})
			return outcome(r, &made, err)
		}
	}},
	{"conditional create with one match", "", func(ctx context.Context, t *testing.T, c *Client) func(context.Context, batchable) string {
		val := uniq("bcc1")
		made(ctx, t, c, val)
		return func(ctx context.Context, w batchable) string {
			r, made, err := w.CreateIfNoneExist(ctx, patient(testSystem, val), url.Values{"identifier": {testSystem + "|" + val}})
			return outcome(r, &made, err)
		}
	}},
	{"conditional create with two matches", "conflict 412", func(ctx context.Context, t *testing.T, c *Client) func(context.Context, batchable) string {
		val := uniq("bcc2")
		made(ctx, t, c, val)
		made(ctx, t, c, val)
		return func(ctx context.Context, w batchable) string {
			r, made, err := w.CreateIfNoneExist(ctx, patient(testSystem, val), url.Values{"identifier": {testSystem + "|" + val}})
			return outcome(r, &made, err)
		}
	}},
	{"update with the current version", "ok Patient", func(ctx context.Context, t *testing.T, c *Client) func(context.Context, batchable) string {
		cur := made(ctx, t, c, uniq("bupd"))
		return func(ctx context.Context, w batchable) string {
			r, err := w.Update(ctx, cur, cur.VersionID())
			return outcome(r, nil, err)
		}
	}},
	{"update with a stale version", "conflict 412", func(ctx context.Context, t *testing.T, c *Client) func(context.Context, batchable) string {
		old := made(ctx, t, c, uniq("bstale"))
		if _, err := c.Update(ctx, old, ""); err != nil {
			t.Fatal(err)
		}
		return func(ctx context.Context, w batchable) string {
			r, err := w.Update(ctx, old, old.VersionID())
			return outcome(r, nil, err)
		}
	}},
	{"update without If-Match", "ok Patient", func(ctx context.Context, t *testing.T, c *Client) func(context.Context, batchable) string {
		cur := made(ctx, t, c, uniq("bnoif"))
		return func(ctx context.Context, w batchable) string {
			r, err := w.Update(ctx, cur, "")
			return outcome(r, nil, err)
		}
	}},
	{"update of a deleted resource with If-Match", "", func(ctx context.Context, t *testing.T, c *Client) func(context.Context, batchable) string {
		cur := madeGone(ctx, t, c, uniq("bgone"))
		return func(ctx context.Context, w batchable) string {
			r, err := w.Update(ctx, cur, cur.VersionID())
			return outcome(r, nil, err)
		}
	}},
	{"create of an invalid resource", "", func(ctx context.Context, t *testing.T, c *Client) func(context.Context, batchable) string {
		return func(ctx context.Context, w batchable) string {
			r, err := w.Create(ctx, Resource{"resourceType": "Patient", "birthDate": "not a date", "gender": 7})
			return outcome(r, nil, err)
		}
	}},
	{"read", "ok Patient", func(ctx context.Context, t *testing.T, c *Client) func(context.Context, batchable) string {
		val := uniq("bread")
		cur := made(ctx, t, c, val)
		return func(ctx context.Context, w batchable) string {
			r, err := w.Read(ctx, "Patient", cur.ID())
			got := outcome(r, nil, err)
			if err == nil && (r.ID() != cur.ID() || r.VersionID() != cur.VersionID() || identifierValue(r) != val) {
				got += fmt.Sprintf(" but %s/%s version %s (%s), want %s version %s (%s)",
					r.Type(), r.ID(), r.VersionID(), identifierValue(r), cur.ID(), cur.VersionID(), val)
			}
			return got
		}
	}},
	{"read of what does not exist", "not_found 404", func(ctx context.Context, t *testing.T, c *Client) func(context.Context, batchable) string {
		id := uniq("nobody")
		return func(ctx context.Context, w batchable) string {
			r, err := w.Read(ctx, "Patient", id)
			return outcome(r, nil, err)
		}
	}},
	{"read of a deleted resource", "", func(ctx context.Context, t *testing.T, c *Client) func(context.Context, batchable) string {
		cur := madeGone(ctx, t, c, uniq("breadgone"))
		return func(ctx context.Context, w batchable) string {
			r, err := w.Read(ctx, "Patient", cur.ID())
			return outcome(r, nil, err)
		}
	}},
	{"delete", "ok", func(ctx context.Context, t *testing.T, c *Client) func(context.Context, batchable) string {
		cur := made(ctx, t, c, uniq("bdel"))
		return func(ctx context.Context, w batchable) string {
			return outcome(nil, nil, w.Delete(ctx, "Patient", cur.ID()))
		}
	}},
	{"delete of what does not exist", "", func(ctx context.Context, t *testing.T, c *Client) func(context.Context, batchable) string {
		id := uniq("nobody")
		return func(ctx context.Context, w batchable) string {
			return outcome(nil, nil, w.Delete(ctx, "Patient", id))
		}
	}},
}

// TestBatcherSuite: each read and write gives, from its entry of a batch
// Bundle, what the same call made singly gives (R4 http.html#transaction),
// against every target; the reads of concurrent callers go as one Bundle,
// their writes as another asking for return=minimal, and no write's
// answer costs a read.
func TestBatcherSuite(t *testing.T) {
	t.Parallel()
	for _, tg := range targets() {
		t.Run(tg.name, func(t *testing.T) {
			t.Parallel()
			ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
			defer cancel()
			base := tg.start(t)
			c, ct := countingClient(t, base)
			// Two states per case, one for each path.
			single := make([]func(context.Context, batchable) string, len(batchCases))
			batched := make([]func(context.Context, batchable) string, len(batchCases))
			for i, bc := range batchCases {
				single[i] = bc.prepare(ctx, t, c)
				batched[i] = bc.prepare(ctx, t, c)
			}
			want := make([]string, len(batchCases))
			for i := range batchCases {
				want[i] = single[i](ctx, c)
			}
			// Max is the number of cases and Wait long: the Bundle goes
			// when the last caller joins, never by the timer.
			b, err := NewBatcher(c, BatchConfig{Max: len(batchCases), Wait: time.Minute})
			if err != nil {
				t.Fatal(err)
			}
			before, readsBefore := ct.count("POST /"), ct.count("GET /Patient")
			minimalBefore := ct.count("POST / return=minimal")
			got := make([]string, len(batchCases))
			var wg sync.WaitGroup
			for i := range batchCases {
				wg.Go(func() { got[i] = batched[i](ctx, b) })
			}
			wg.Wait()
			if n := ct.count("POST /") - before; n != 2 {
				t.Errorf("%d batch Bundles posted, want 2 (the reads, the writes)", n)
			}
			if n := ct.count("POST / return=minimal") - minimalBefore; n != 1 {
				t.Errorf("%d batch Bundles asked for return=minimal, want 1 (the writes)", n)
			}
			if n := ct.count("GET /Patient") - readsBefore; n != 0 {
				t.Errorf("%d single reads beside the Bundle, want none (the reads are its entries)", n)
			}
			for i, bc := range batchCases {
				if bc.want != "" && want[i] != bc.want {
					t.Errorf("%s singly: %s, want %s", bc.name, want[i], bc.want)
				}
				if got[i] != want[i] {
					t.Errorf("%s in a batch: %s; singly: %s", bc.name, got[i], want[i])
				}
			}
		})
	}
}

// TestBatcherManyWriters: many concurrent callers, Bundles of at most Max
// entries, every caller the id and version of its own resource back (run
// with -race).
func TestBatcherManyWriters(t *testing.T) {
	t.Parallel()
	for _, tg := range targets() {
		t.Run(tg.name, func(t *testing.T) {
			t.Parallel()
			ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
			defer cancel()
			c, ct := countingClient(t, tg.start(t))
			b, err := NewBatcher(c, BatchConfig{Max: 10, Wait: time.Minute})
			if err != nil {
				t.Fatal(err)
			}
			const n = 60
			vals := make([]string, n)
			for i := range vals {
				vals[i] = uniq(fmt.Sprintf("many%d", i))
			}
			created := make([]Resource, n)
			errs := make([]error, n)
			var wg sync.WaitGroup
			for i := range n {
				wg.Go(func() { created[i], errs[i] = b.Create(ctx, patient(testSystem, vals[i])) })
			}
			wg.Wait()
			if got := ct.count("GET /Patient"); got != 0 {
				t.Errorf("%d reads to learn what the creates stored, want none", got)
			}
			for i := range n {
				if errs[i] != nil {
					t.Fatalf("create %d: %v", i, errs[i])
				}
				// The write's answer names the resource; the server holds
				// the caller's.
				cur, err := c.Read(ctx, "Patient", created[i].ID())
				if err != nil || cur.VersionID() != created[i].VersionID() {
					t.Fatalf("caller %d got Patient/%s version %q; reading it: version %q, %v", i, created[i].ID(), created[i].VersionID(), cur.VersionID(), err)
				}
				if got := identifierValue(cur); got != vals[i] {
					t.Fatalf("caller %d got the resource with identifier %q, want %q", i, got, vals[i])
				}
				created[i] = cur
			}
			if got := ct.count("POST /"); got != n/10 {
				t.Errorf("%d Bundles for %d creates with Max 10, want %d", got, n, n/10)
			}
			if got := ct.count("POST /Patient"); got != 0 {
				t.Errorf("%d single creates, want none", got)
			}
			// Then update them all with their versions, concurrently.
			for i := range n {
				wg.Go(func() {
					r := created[i]
					r["active"] = true
					created[i], errs[i] = b.Update(ctx, r, r.VersionID())
				})
			}
			wg.Wait()
			for i := range n {
				if errs[i] != nil {
					t.Fatalf("update %d: %v", i, errs[i])
				}
				cur, err := c.Read(ctx, "Patient", created[i].ID())
				if err != nil || cur.VersionID() != created[i].VersionID() || cur["active"] != true {
					t.Fatalf("after the batched update %d, read %v (%v); want version %s, active", i, cur, err, created[i].VersionID())
				}
			}
		})
	}
}

func identifierValue(r Resource) string {
	ids, _ := r["identifier"].([]any)
	for _, id := range ids {
		m, _ := id.(map[string]any)
		if v, _ := m["value"].(string); v != "" {
			return v
		}
	}
	return ""
}

// fakeBatchServer answers metadata with the given CapabilityStatement
// interactions and POST [base] with batch(entries); every other request
// is answered by single.
type fakeBatchServer struct {
	interactions []string
	batch        func(w http.ResponseWriter, entries []any)
	single       func(w http.ResponseWriter, r *http.Request)

	bundles, singles, metadata atomic.Int32
	sizes                      chan int
}

func (f *fakeBatchServer) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	w.Header().Set("Content-Type", "application/fhir+json")
	switch {
	case r.URL.Path == "/metadata":
		f.metadata.Add(1)
		var ints []any
		for _, c := range f.interactions {
			ints = append(ints, map[string]any{"code": c})
		}
		_ = json.NewEncoder(w).Encode(map[string]any{"resourceType": "CapabilityStatement",
			"rest": []any{map[string]any{"mode": "server", "interaction": ints}}})
	case r.URL.Path == "/" && r.Method == http.MethodPost:
		f.bundles.Add(1)
		var b struct {
			Type  string `json:"type"`
			Entry []any  `json:"entry"`
		}
		raw, _ := io.ReadAll(r.Body)
		if json.Unmarshal(raw, &b) != nil || b.Type != "batch" {
			w.WriteHeader(http.StatusBadRequest)
			return
		}
		if f.sizes != nil {
			f.sizes <- len(b.Entry)
		}
		f.batch(w, b.Entry)
	default:
		f.singles.Add(1)
		f.single(w, r)
	}
}

func writeBatchResponse(w http.ResponseWriter, entries ...any) {
	_ = json.NewEncoder(w).Encode(map[string]any{"resourceType": "Bundle", "type": "batch-response", "entry": entries})
}

func singleCreated(w http.ResponseWriter, r *http.Request) {
	w.WriteHeader(http.StatusCreated)
	_, _ = io.WriteString(w, `{"resourceType":"Patient","id":"single","meta":{"versionId":"1"}}`)
}

func startFake(t *testing.T, f *fakeBatchServer) *Client {
	t.Helper()
	hs := httptest.NewServer(f)
	t.Cleanup(hs.Close)
	c, err := New(Config{BaseURL: hs.URL, Timeout: 5 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// createAll runs n concurrent creates through b.
func createAll(ctx context.Context, b *Batcher, n int) ([]Resource, []error) {
	res, errs := make([]Resource, n), make([]error, n)
	var wg sync.WaitGroup
	for i := range n {
		wg.Go(func() { res[i], errs[i] = b.Create(ctx, Resource{"resourceType": "Patient"}) })
	}
	wg.Wait()
	return res, errs
}

// TestBatcherWholeBundleFailures: a Bundle that fails as a whole gives each
// caller the error its single request would have (retryable ones with the
// server's Retry-After), or is sent again as single requests when the
// server refused the Bundle itself.
func TestBatcherWholeBundleFailures(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name        string
		batch       func(w http.ResponseWriter, entries []any)
		wantClass   Class // "" wants success through single requests
		wantRetry   bool
		wantAfter   time.Duration
		wantSingles int32
	}{
		{name: "service unavailable", batch: func(w http.ResponseWriter, _ []any) {
			w.Header().Set("Retry-After", "7")
			w.WriteHeader(http.StatusServiceUnavailable)
		}, wantClass: ClassUnavailable, wantRetry: true, wantAfter: 7 * time.Second},
		{name: "throttled", batch: func(w http.ResponseWriter, _ []any) {
			w.Header().Set("Retry-After", "3")
			w.WriteHeader(http.StatusTooManyRequests)
		}, wantClass: ClassThrottled, wantRetry: true, wantAfter: 3 * time.Second},
		{name: "unauthorized", batch: func(w http.ResponseWriter, _ []any) {
			w.WriteHeader(http.StatusUnauthorized)
		}, wantClass: ClassUnauthorized},
		{name: "fewer entries than requests", batch: func(w http.ResponseWriter, _ []any) {
			writeBatchResponse(w, map[string]any{"response": map[string]any{"status": "201 Created"}})
		}, wantClass: ClassInvalidResponse},
		{name: "a transaction-response", batch: func(w http.ResponseWriter, entries []any) {
			_ = json.NewEncoder(w).Encode(map[string]any{"resourceType": "Bundle", "type": "transaction-response", "entry": entries})
		}, wantClass: ClassInvalidResponse},
		{name: "bundle refused", batch: func(w http.ResponseWriter, _ []any) {
			w.WriteHeader(http.StatusUnprocessableEntity)
			_, _ = io.WriteString(w, `{"resourceType":"OperationOutcome","issue":[{"severity":"error","code":"invalid"}]}`)
		}, wantSingles: 3},
		{name: "bundle too large", batch: func(w http.ResponseWriter, _ []any) {
			w.WriteHeader(http.StatusRequestEntityTooLarge)
		}, wantSingles: 3},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			f := &fakeBatchServer{interactions: []string{"batch"}, batch: tt.batch, single: singleCreated}
			b, err := NewBatcher(startFake(t, f), BatchConfig{Max: 3, Wait: time.Minute})
			if err != nil {
				t.Fatal(err)
			}
			res, errs := createAll(context.Background(), b, 3)
			for i, err := range errs {
				if tt.wantClass == "" {
					if err != nil || res[i].ID() != "single" {
						t.Errorf("caller %d: %v, %v; want the single request's resource", i, res[i], err)
					}
					continue
				}
				var fe *Error
				if !errors.As(err, &fe) {
					t.Fatalf("caller %d: %v, want an *Error", i, err)
				}
				if fe.Class != tt.wantClass || fe.Retryable != tt.wantRetry || fe.RetryAfter != tt.wantAfter || fe.Op != "create Patient" {
					t.Errorf("caller %d: op %q class %s retryable %v after %v; want create Patient, %s, %v, %v",
						i, fe.Op, fe.Class, fe.Retryable, fe.RetryAfter, tt.wantClass, tt.wantRetry, tt.wantAfter)
				}
			}
			if got := f.singles.Load(); got != tt.wantSingles {
				t.Errorf("%d single requests, want %d", got, tt.wantSingles)
			}
		})
	}
}

// TestBatcherEntryResults: the entries of one batch-response, each read
// into its own caller's result.
func TestBatcherEntryResults(t *testing.T) {
	t.Parallel()
	f := &fakeBatchServer{interactions: []string{"batch"}, batch: func(w http.ResponseWriter, entries []any) {
		out := make([]any, len(entries))
		for i, e := range entries {
			req := e.(map[string]any)["request"].(map[string]any)
			switch id := strings.TrimPrefix(req["url"].(string), "Patient/"); id {
			case "ok":
				out[i] = map[string]any{"resource": map[string]any{"resourceType": "Patient", "id": "ok", "meta": map[string]any{"versionId": "2"}},
					"response": map[string]any{"status": "200 OK", "etag": `W/"2"`}}
			case "minimal":
				// return=minimal: no resource, only where it is.
				out[i] = map[string]any{"response": map[string]any{"status": "200", "location": "Patient/minimal/_history/5"}}
			case "stale":
				if req["ifMatch"] != `W/"1"` {
					t.Errorf("stale entry's ifMatch %v, want W/\"1\"", req["ifMatch"])
				}
				out[i] = map[string]any{"response": map[string]any{"status": "412 Precondition Failed",
					"outcome": map[string]any{"resourceType": "OperationOutcome", "issue": []any{map[string]any{"severity": "error", "code": "conflict", "diagnostics": "version 2 is current"}}}}}
			case "busy":
				out[i] = map[string]any{"response": map[string]any{"status": "503 Service Unavailable"}}
			case "nostatus":
				out[i] = map[string]any{"response": map[string]any{}}
			}
		}
		writeBatchResponse(w, out...)
	}, single: func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != "/Patient/minimal/_history/5" {
			w.WriteHeader(http.StatusNotFound)
			return
		}
		_, _ = io.WriteString(w, `{"resourceType":"Patient","id":"minimal","meta":{"versionId":"5"}}`)
	}}
	b, err := NewBatcher(startFake(t, f), BatchConfig{Max: 5, Wait: time.Minute})
	if err != nil {
		t.Fatal(err)
	}
	ids := []string{"ok", "minimal", "stale", "busy", "nostatus"}
	got := make([]string, len(ids))
	var outcomeText string
	var wg sync.WaitGroup
	for i, id := range ids {
		wg.Go(func() {
			r, err := b.Update(context.Background(), Resource{"resourceType": "Patient", "id": id}, "1")
			got[i] = outcome(r, nil, err)
			var fe *Error
			if id == "stale" && errors.As(err, &fe) {
				outcomeText = fe.Outcome
				if !errors.Is(err, ErrConflict) || fe.Op != "update Patient/stale" {
					t.Errorf("stale: %v, want ErrConflict for update Patient/stale", err)
				}
			}
			if id == "busy" && (!errors.As(err, &fe) || !fe.Retryable) {
				t.Errorf("busy: %v, want a retryable error", err)
			}
		})
	}
	wg.Wait()
	want := []string{"ok Patient", "ok Patient", "conflict 412", "unavailable 503", "invalid_response 0"}
	for i := range ids {
		if got[i] != want[i] {
			t.Errorf("%s: %s, want %s", ids[i], got[i], want[i])
		}
	}
	if !strings.Contains(outcomeText, "version 2 is current") {
		t.Errorf("the stale entry's outcome text %q lacks the server's diagnostics", outcomeText)
	}
	if n := f.bundles.Load(); n != 1 {
		t.Errorf("%d Bundles, want 1", n)
	}
}

// TestBatcherOnlyWhereSupported: without "batch" in the CapabilityStatement,
// or with Max 1, every write is a single request.
func TestBatcherOnlyWhereSupported(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name         string
		interactions []string
		max          int
		wantMetadata int32
	}{
		{name: "transaction only", interactions: []string{"transaction", "history-system"}, max: 10, wantMetadata: 1},
		{name: "max 1", interactions: []string{"batch"}, max: 1, wantMetadata: 0},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			f := &fakeBatchServer{interactions: tt.interactions, single: singleCreated,
				batch: func(w http.ResponseWriter, _ []any) { t.Error("a batch Bundle was posted") }}
			b, err := NewBatcher(startFake(t, f), BatchConfig{Max: tt.max, Wait: time.Millisecond})
			if err != nil {
				t.Fatal(err)
			}
			_, errs := createAll(context.Background(), b, 4)
			for _, err := range errs {
				if err != nil {
					t.Fatal(err)
				}
			}
			if f.singles.Load() != 4 || f.metadata.Load() != tt.wantMetadata {
				t.Errorf("%d single requests and %d metadata reads, want 4 and %d", f.singles.Load(), f.metadata.Load(), tt.wantMetadata)
			}
		})
	}
}

// TestBatcherFlushesAfterWait: fewer writes than Max go after Wait; a
// caller whose context ends while pending is left out of the Bundle.
func TestBatcherFlushesAfterWait(t *testing.T) {
	t.Parallel()
	f := &fakeBatchServer{interactions: []string{"batch"}, single: singleCreated, sizes: make(chan int, 4),
		batch: func(w http.ResponseWriter, entries []any) {
			out := make([]any, len(entries))
			for i := range entries {
				out[i] = map[string]any{"resource": map[string]any{"resourceType": "Patient", "id": fmt.Sprint(i), "meta": map[string]any{"versionId": "1"}},
					"response": map[string]any{"status": "201 Created"}}
			}
			writeBatchResponse(w, out...)
		}}
	b, err := NewBatcher(startFake(t, f), BatchConfig{Max: 100, Wait: 500 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	if !b.batching(context.Background()) {
		t.Fatal("the fake server's CapabilityStatement lists batch, but the Batcher does not batch")
	}
	gone, cancel := context.WithCancel(context.Background())
	cancelled := make(chan error, 1)
	go func() {
		_, err := b.Create(gone, Resource{"resourceType": "Patient"})
		cancelled <- err
	}()
	// Wait until the first create is pending, then cancel it.
	for {
		b.mu.Lock()
		n := len(b.pending)
		b.mu.Unlock()
		if n == 1 {
			break
		}
		time.Sleep(time.Millisecond)
	}
	cancel()
	if err := <-cancelled; !errors.Is(err, context.Canceled) {
		t.Errorf("cancelled caller got %v, want context.Canceled", err)
	}
	_, errs := createAll(context.Background(), b, 3)
	for _, err := range errs {
		if err != nil {
			t.Fatal(err)
		}
	}
	if n := <-f.sizes; n != 3 {
		t.Errorf("Bundle of %d entries, want 3 (the cancelled caller left out)", n)
	}
}

func TestSupportsBatch(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name string
		cs   string
		want bool
	}{
		{"system batch", `{"rest":[{"mode":"server","interaction":[{"code":"batch"}]}]}`, true},
		{"transaction only", `{"rest":[{"mode":"server","interaction":[{"code":"transaction"}]}]}`, false},
		{"client mode", `{"rest":[{"mode":"client","interaction":[{"code":"batch"}]}]}`, false},
		{"batch as a type interaction", `{"rest":[{"mode":"server","resource":[{"type":"Patient","interaction":[{"code":"batch"}]}]}]}`, false},
		{"no rest", `{"status":"active"}`, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r, err := decodeResource([]byte(`{"resourceType":"CapabilityStatement",` + strings.TrimPrefix(tt.cs, "{")))
			if err != nil {
				t.Fatal(err)
			}
			if got := supportsBatch(r); got != tt.want {
				t.Errorf("supportsBatch = %v, want %v", got, tt.want)
			}
		})
	}
}

func TestEntryStatus(t *testing.T) {
	t.Parallel()
	for in, want := range map[string]int{"201 Created": 201, "412": 412, " 200 OK ": 200, "": 0, "OK": 0, "2010": 0, "99 x": 0} {
		if got := entryStatus(in); got != want {
			t.Errorf("entryStatus(%q) = %d, want %d", in, got, want)
		}
	}
}

// BenchmarkBatcherCreate creates Patients in the sandbox from 64
// concurrent callers, singly and through a Batcher, and reports HTTP
// requests per record and the process's CPU time (client and sandbox
// server together) per record.
func BenchmarkBatcherCreate(b *testing.B) {
	benchBatcher(b, 5*time.Millisecond, "record", func(b *testing.B, c *Client) func(ctx context.Context, bt *Batcher, i int64) error {
		return func(ctx context.Context, bt *Batcher, _ int64) error {
			_, err := bt.Create(ctx, patient(testSystem, "bench"))
			return err
		}
	})
}

// BenchmarkBatcherRead reads 1,000 stored Patients from the sandbox server
// (in this process) with 64 concurrent callers, singly and as GET entries
// of batch Bundles at the default wait, and reports HTTP requests per read
// and the process's CPU time (client and sandbox server together) per
// read.
func BenchmarkBatcherRead(b *testing.B) {
	benchBatcher(b, 0, "read", func(b *testing.B, c *Client) func(ctx context.Context, bt *Batcher, i int64) error {
		ids := make([]string, 1000)
		for i := range ids {
			r, err := c.Create(context.Background(), patient(testSystem, fmt.Sprintf("read-%d", i)))
			if err != nil {
				b.Fatal(err)
			}
			ids[i] = r.ID()
		}
		return func(ctx context.Context, bt *Batcher, i int64) error {
			id := ids[i%int64(len(ids))]
			r, err := bt.Read(ctx, "Patient", id)
			if err == nil && r.ID() != id {
				err = fmt.Errorf("read Patient/%s gave Patient/%s", id, r.ID())
			}
			return err
		}
	})
}

// benchBatcher runs call b.N times from 64 concurrent callers against the
// sandbox server in this process, singly (Max 1) and through a Batcher
// (Max 100, the given wait; 0 is the default), after prepare, and reports
// HTTP requests per call and the process's CPU time per call, each per
// unit.
func benchBatcher(b *testing.B, wait time.Duration, unit string, prepare func(b *testing.B, c *Client) func(ctx context.Context, bt *Batcher, i int64) error) {
	for _, mode := range []struct {
		name string
		max  int
	}{{"single", 1}, {"batch", 100}} {
		b.Run(mode.name, func(b *testing.B) {
			srv, err := fhirserver.New(fhirserver.Options{})
			if err != nil {
				b.Fatal(err)
			}
			hs := httptest.NewServer(srv)
			defer func() { hs.Close(); srv.Close() }()
			ct := &countingTransport{n: map[string]int{}}
			c, err := New(Config{BaseURL: hs.URL, HTTPClient: &http.Client{Transport: ct}})
			if err != nil {
				b.Fatal(err)
			}
			call := prepare(b, c)
			bt, err := NewBatcher(c, BatchConfig{Max: mode.max, Wait: wait})
			if err != nil {
				b.Fatal(err)
			}
			ct.mu.Lock()
			clear(ct.n) // what prepare sent is not counted
			ct.mu.Unlock()
			ctx := context.Background()
			var next atomic.Int64
			cpu0 := cpuTime()
			b.ResetTimer()
			var wg sync.WaitGroup
			for range 64 {
				wg.Go(func() {
					for i := next.Add(1); i <= int64(b.N); i = next.Add(1) {
						if err := call(ctx, bt, i); err != nil {
							b.Error(err)
							return
						}
					}
				})
			}
			wg.Wait()
			b.StopTimer()
			reqs := 0
			ct.mu.Lock()
			for k, v := range ct.n {
				if k != "GET /metadata" {
					reqs += v
				}
			}
			ct.mu.Unlock()
			b.ReportMetric(float64(reqs)/float64(b.N), "requests/"+unit)
			b.ReportMetric(float64((cpuTime()-cpu0).Microseconds())/float64(b.N), "cpu-µs/"+unit)
		})
	}
}

// cpuTime is the process's user and system CPU time so far.
func cpuTime() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// TestBatcherLoneWriteGoesSingly: a write with no company when its wait
// ends is sent as its own request, with the same answers.
func TestBatcherLoneWriteGoesSingly(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	c, ct := countingClient(t, targets()[0].start(t))
	b, err := NewBatcher(c, BatchConfig{Max: 100, Wait: time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	val := uniq("lone")
	p, err := b.Create(ctx, patient(testSystem, val))
	if err != nil || p.VersionID() != "1" {
		t.Fatalf("create: %v, %v", p, err)
	}
	crit := url.Values{"identifier": {testSystem + "|" + val}}
	if _, made, err := b.CreateIfNoneExist(ctx, patient(testSystem, val), crit); err != nil || made {
		t.Errorf("conditional create with a match: created %v, %v", made, err)
	}
	p2, err := b.Update(ctx, p, p.VersionID())
	if err != nil || p2.VersionID() != "2" {
		t.Fatalf("update: %v, %v", p2, err)
	}
	if _, err := b.Update(ctx, p, p.VersionID()); !errors.Is(err, ErrConflict) {
		t.Errorf("stale update: %v, want ErrConflict", err)
	}
	if err := b.Delete(ctx, "Patient", p.ID()); err != nil {
		t.Errorf("delete: %v", err)
	}
	if n := ct.count("POST /"); n != 0 {
		t.Errorf("%d Bundles for lone writes, want none", n)
	}
	if n := ct.count("POST /Patient") + ct.count("PUT /Patient") + ct.count("DELETE /Patient"); n != 5 {
		t.Errorf("%d single writes, want 5", n)
	}
}

// TestBatcherReadsWhereServed: a server that answers a read entry 405 (it
// serves only writes in a batch) gets that read again as a single request,
// and every later read singly; its writes still go as Bundles. A read
// entry answered 404 is the caller's own not-found, not a refusal.
func TestBatcherReadsWhereServed(t *testing.T) {
	t.Parallel()
	var refuse atomic.Bool
	f := &fakeBatchServer{interactions: []string{"batch"}, batch: func(w http.ResponseWriter, entries []any) {
		out := make([]any, len(entries))
		for i, e := range entries {
			req := e.(map[string]any)["request"].(map[string]any)
			id := strings.TrimPrefix(req["url"].(string), "Patient/")
			switch {
			case req["method"] != http.MethodGet:
				out[i] = map[string]any{"resource": map[string]any{"resourceType": "Patient", "id": id, "meta": map[string]any{"versionId": "2"}},
					"response": map[string]any{"status": "200 OK"}}
			case refuse.Load():
				out[i] = map[string]any{"response": map[string]any{"status": "405 Method Not Allowed"}}
			case id == "gone":
				out[i] = map[string]any{"response": map[string]any{"status": "404 Not Found"}}
			default:
				out[i] = map[string]any{"resource": map[string]any{"resourceType": "Patient", "id": id, "meta": map[string]any{"versionId": "7"}},
					"response": map[string]any{"status": "200 OK", "etag": `W/"7"`}}
			}
		}
		writeBatchResponse(w, out...)
	}, single: func(w http.ResponseWriter, r *http.Request) {
		id := strings.TrimPrefix(r.URL.Path, "/Patient/")
		_, _ = fmt.Fprintf(w, `{"resourceType":"Patient","id":%q,"meta":{"versionId":"8"}}`, id)
	}}
	b, err := NewBatcher(startFake(t, f), BatchConfig{Max: 2, Wait: time.Minute})
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	// Two reads fill a Bundle of two: both are its entries.
	pair := func(a, c string) (got [2]string) {
		var wg sync.WaitGroup
		for i, id := range []string{a, c} {
			wg.Go(func() {
				r, err := b.Read(ctx, "Patient", id)
				got[i] = outcome(r, nil, err)
				if err == nil {
					got[i] += " " + r.ID() + "@" + r.VersionID()
				}
			})
		}
		wg.Wait()
		return got
	}
	if got := pair("a", "gone"); got != [2]string{"ok Patient a@7", "not_found 404"} {
		t.Errorf("reads as entries: %q", got)
	}
	if b.noReads.Load() || f.singles.Load() != 0 || f.bundles.Load() != 1 {
		t.Fatalf("after entries that were served: noReads %v, %d single requests, %d Bundles; want false, 0, 1",
			b.noReads.Load(), f.singles.Load(), f.bundles.Load())
	}
	refuse.Store(true)
	if got := pair("b", "c"); got != [2]string{"ok Patient b@8", "ok Patient c@8"} {
		t.Errorf("reads refused as entries: %q, want each read again singly", got)
	}
	if !b.noReads.Load() || f.singles.Load() != 2 {
		t.Fatalf("after refused entries: noReads %v, %d single requests; want true, 2", b.noReads.Load(), f.singles.Load())
	}
	bundles := f.bundles.Load()
	if got := pair("d", "e"); got != [2]string{"ok Patient d@8", "ok Patient e@8"} {
		t.Errorf("later reads: %q", got)
	}
	if f.bundles.Load() != bundles || f.singles.Load() != 4 {
		t.Errorf("later reads: %d more Bundles, %d single requests; want 0 and 4", f.bundles.Load()-bundles, f.singles.Load())
	}
	// Writes still share Bundles.
	var wg sync.WaitGroup
	for _, id := range []string{"w1", "w2"} {
		wg.Go(func() {
			if _, err := b.Update(ctx, Resource{"resourceType": "Patient", "id": id}, ""); err != nil {
				t.Errorf("update %s: %v", id, err)
			}
		})
	}
	wg.Wait()
	if f.bundles.Load() != bundles+1 {
		t.Errorf("two updates after reads went singly: %d Bundles, want %d", f.bundles.Load(), bundles+1)
	}
}
