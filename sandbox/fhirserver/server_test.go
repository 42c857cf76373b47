package fhirserver

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"
)

func newTest(t testing.TB, opts Options) (*Server, string) {
	t.Helper()
	s, err := New(opts)
	if err != nil {
		t.Fatal(err)
	}
	hs := httptest.NewServer(s)
	t.Cleanup(func() { hs.Close(); s.Close() })
	return s, hs.URL
}

type resp struct {
	status int
	header http.Header
	body   map[string]any
}

func do(t testing.TB, method, u string, body string, hdr ...string) resp {
	t.Helper()
	var rd io.Reader
	if body != "" {
		rd = strings.NewReader(body)
	}
	req, err := http.NewRequest(method, u, rd)
	if err != nil {
		t.Fatal(err)
	}
	for i := 0; i+1 < len(hdr); i += 2 {
		req.Header.Set(hdr[i], hdr[i+1])
	}
	r, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer r.Body.Close()
	b, _ := io.ReadAll(r.Body)
	out := resp{status: r.StatusCode, header: r.Header}
	if len(bytes.TrimSpace(b)) > 0 {
		if ct := r.Header.Get("Content-Type"); !strings.HasPrefix(ct, "application/fhir+json") {
			t.Fatalf("%s %s: content type %q", method, u, ct)
		}
		if err := json.Unmarshal(b, &out.body); err != nil {
			t.Fatalf("%s %s: body is not JSON: %v", method, u, err)
		}
	}
	return out
}

func TestInteractions(t *testing.T) {
	t.Parallel()
	_, base := newTest(t, Options{})
	pat := `{"resourceType":"Patient","id":"p1","identifier":[{"system":"urn:s","value":"v1"}],"extension":[{"url":"u","valueDecimal":1.50}]}`

	r := do(t, "PUT", base+"/Patient/p1", pat)
	if r.status != 201 || r.header.Get("ETag") != `W/"1"` || r.header.Get("Location") == "" {
		t.Fatalf("update-as-create: %d etag %q location %q", r.status, r.header.Get("ETag"), r.header.Get("Location"))
	}
	r = do(t, "PUT", base+"/Patient/p1", pat, "If-Match", `W/"1"`)
	if r.status != 200 || r.header.Get("ETag") != `W/"2"` {
		t.Fatalf("update: %d etag %q", r.status, r.header.Get("ETag"))
	}
	r = do(t, "PUT", base+"/Patient/p1", pat, "If-Match", `W/"1"`)
	if r.status != 412 || r.body["resourceType"] != "OperationOutcome" {
		t.Fatalf("stale If-Match: %d %v", r.status, r.body)
	}
	r = do(t, "GET", base+"/Patient/p1", "")
	meta := r.body["meta"].(map[string]any)
	if r.status != 200 || meta["versionId"] != "2" || meta["lastUpdated"] == nil {
		t.Fatalf("read: %d meta %v", r.status, meta)
	}
	if r = do(t, "GET", base+"/Patient/p1/_history/1", ""); r.status != 200 || r.body["meta"].(map[string]any)["versionId"] != "1" {
		t.Fatalf("vread 1: %d", r.status)
	}
	if r = do(t, "GET", base+"/Patient/p1/_history/9", ""); r.status != 404 {
		t.Fatalf("vread 9: %d", r.status)
	}
	if r = do(t, "DELETE", base+"/Patient/p1", ""); r.status != 204 {
		t.Fatalf("delete: %d", r.status)
	}
	if r = do(t, "GET", base+"/Patient/p1", ""); r.status != 410 {
		t.Fatalf("read deleted: %d", r.status)
	}
	if r = do(t, "GET", base+"/Patient/p1/_history/3", ""); r.status != 410 {
		t.Fatalf("vread of the deletion: %d", r.status)
	}
	if r = do(t, "GET", base+"/Patient?identifier=urn:s|v1", ""); r.body["total"] != float64(0) {
		t.Fatalf("search finds a deleted resource: %v", r.body["total"])
	}
	if r = do(t, "PUT", base+"/Patient/p1", pat); r.status != 201 || r.header.Get("ETag") != `W/"4"` {
		t.Fatalf("re-create after delete: %d etag %q", r.status, r.header.Get("ETag"))
	}
	r = do(t, "GET", base+"/Patient/p1/_history", "")
	if n := len(r.body["entry"].([]any)); n != 4 {
		t.Fatalf("instance history has %d entries, want 4", n)
	}
	methods := []string{}
	for _, e := range r.body["entry"].([]any) {
		methods = append(methods, e.(map[string]any)["request"].(map[string]any)["method"].(string))
	}
	if got := strings.Join(methods, ","); got != "PUT,DELETE,PUT,POST" {
		t.Errorf("history methods newest first = %s", got)
	}

	bad := []struct {
		name, method, path, body string
		status                   int
	}{
		{"type mismatch", "PUT", "/Patient/p2", `{"resourceType":"Observation","id":"p2"}`, 400},
		{"id mismatch", "PUT", "/Patient/p2", `{"resourceType":"Patient","id":"p3"}`, 400},
		{"not JSON", "POST", "/Patient", `<xml/>`, 400},
		{"unknown search parameter", "GET", "/Patient?name=x", "", 400},
		{"bad _lastUpdated", "GET", "/Patient?_lastUpdated=yesterday", "", 400},
		{"bad _since", "GET", "/_history?_since=nope", "", 400},
		{"unknown path", "GET", "/Patient/p1/_history/1/x", "", 404},
		{"method", "PATCH", "/Patient/p1", "", 405},
		{"conditional update without criteria", "PUT", "/Patient", `{"resourceType":"Patient"}`, 400},
		{"not a bundle", "POST", "/", `{"resourceType":"Patient"}`, 400},
	}
	for _, b := range bad {
		if r := do(t, b.method, base+b.path, b.body); r.status != b.status || r.body["resourceType"] != "OperationOutcome" {
			t.Errorf("%s: status %d body %v, want %d with an OperationOutcome", b.name, r.status, r.body["resourceType"], b.status)
		}
	}
}

func TestDecimalsAndUnknownElementsSurvive(t *testing.T) {
	t.Parallel()
	_, base := newTest(t, Options{})
	in := `{"resourceType":"Patient","id":"d1","extension":[{"url":"u","valueDecimal":0.10000000000000000001}],"_birthDate":{"id":"x"},"futureElement":{"a":[1,2.50]}}`
	do(t, "PUT", base+"/Patient/d1", in)
	req, _ := http.NewRequest("GET", base+"/Patient/d1", nil)
	res, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(res.Body)
	res.Body.Close()
	for _, want := range []string{`0.10000000000000000001`, `"futureElement":{"a":[1,2.50]}`, `"_birthDate":{"id":"x"}`} {
		if !bytes.Contains(b, []byte(want)) {
			t.Errorf("stored resource lost %s: %s", want, b)
		}
	}
}

func TestSearch(t *testing.T) {
	t.Parallel()
	clock := &fakeClock{t: time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)}
	_, base := newTest(t, Options{Now: clock.now})
	for i := range 5 {
		do(t, "PUT", fmt.Sprintf("%s/Patient/s%d", base, i),
			fmt.Sprintf(`{"resourceType":"Patient","id":"s%d","identifier":[{"system":"urn:a","value":"%d"},{"system":"urn:b","value":"shared"}]}`, i, i))
		clock.add(time.Hour)
	}
	tests := []struct {
		query string
		want  string // ids in order
	}{
		{"identifier=urn:a|3", "s3"},
		{"identifier=3", "s3"},
		{"identifier=urn:a|3,urn:a|1", "s1,s3"},
		{"identifier=urn:b|shared", "s0,s1,s2,s3,s4"},
		{"identifier=urn:b|", "s0,s1,s2,s3,s4"},
		{"identifier=urn:zzz|3", ""},
		{"_id=s2,s4", "s2,s4"},
		{"_lastUpdated=ge2026-03-01T14:00:00Z", "s2,s3,s4"},
		{"_lastUpdated=gt2026-03-01T14:00:00Z", "s3,s4"},
		{"_lastUpdated=lt2026-03-01T14:00:00Z", "s0,s1"},
		{"_lastUpdated=le2026-03-01T14:00:00Z", "s0,s1,s2"},
		{"_lastUpdated=2026-03-01T14:00:00Z", "s2"},
		{"_lastUpdated=ge2026-03-01T13:00:00Z&_lastUpdated=lt2026-03-01T15:00:00Z", "s1,s2"},
		{"_lastUpdated=2026-03-01", "s0,s1,s2,s3,s4"},
		{"_lastUpdated=lt2026-03-01", ""},
	}
	for _, tt := range tests {
		t.Run(tt.query, func(t *testing.T) {
			r := do(t, "GET", base+"/Patient?"+tt.query, "")
			if r.status != 200 {
				t.Fatalf("status %d: %v", r.status, r.body)
			}
			var ids []string
			entries, _ := r.body["entry"].([]any)
			for _, e := range entries {
				ids = append(ids, e.(map[string]any)["resource"].(map[string]any)["id"].(string))
			}
			if got := strings.Join(ids, ","); got != tt.want {
				t.Errorf("got %q, want %q", got, tt.want)
			}
		})
	}
	// Paging with _count follows next links to the end.
	var ids []string
	next := base + "/Patient?identifier=urn:b|shared&_count=2"
	for pages := 0; next != ""; pages++ {
		if pages > 5 {
			t.Fatal("paging does not end")
		}
		r := do(t, "GET", next, "")
		next = ""
		for _, e := range r.body["entry"].([]any) {
			ids = append(ids, e.(map[string]any)["resource"].(map[string]any)["id"].(string))
		}
		for _, l := range r.body["link"].([]any) {
			if l.(map[string]any)["relation"] == "next" {
				next = l.(map[string]any)["url"].(string)
			}
		}
	}
	if got := strings.Join(ids, ","); got != "s0,s1,s2,s3,s4" {
		t.Errorf("paged ids %s", got)
	}
}

type fakeClock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *fakeClock) now() time.Time { c.mu.Lock(); defer c.mu.Unlock(); return c.t }
func (c *fakeClock) add(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.t = c.t.Add(d)
}

func TestHistoryPagingIsStableUnderWrites(t *testing.T) {
	t.Parallel()
	_, base := newTest(t, Options{})
	for i := range 6 {
		do(t, "PUT", fmt.Sprintf("%s/Patient/h%d", base, i), fmt.Sprintf(`{"resourceType":"Patient","id":"h%d"}`, i))
	}
	do(t, "PUT", base+"/Observation/o1", `{"resourceType":"Observation","id":"o1","status":"final","code":{"text":"x"}}`)
	r := do(t, "GET", base+"/Patient/_history?_count=4", "")
	first := r.body["entry"].([]any)
	var next string
	for _, l := range r.body["link"].([]any) {
		if l.(map[string]any)["relation"] == "next" {
			next = l.(map[string]any)["url"].(string)
		}
	}
	if len(first) != 4 || next == "" {
		t.Fatalf("first page: %d entries, next %q", len(first), next)
	}
	// New writes between pages must not shift the second page.
	do(t, "PUT", base+"/Patient/h9", `{"resourceType":"Patient","id":"h9"}`)
	r = do(t, "GET", next, "")
	second := r.body["entry"].([]any)
	var ids []string
	for _, e := range append(first, second...) {
		ids = append(ids, e.(map[string]any)["resource"].(map[string]any)["id"].(string))
	}
	if got := strings.Join(ids, ","); got != "h5,h4,h3,h2,h1,h0" {
		t.Errorf("type history across pages = %s", got)
	}
	r = do(t, "GET", base+"/_history?_count=100", "")
	if n := len(r.body["entry"].([]any)); n != 8 {
		t.Errorf("system history has %d entries, want 8", n)
	}
}

func TestTransactionIsAtomic(t *testing.T) {
	t.Parallel()
	s, base := newTest(t, Options{})
	do(t, "PUT", base+"/Patient/t1", `{"resourceType":"Patient","id":"t1"}`)
	tx := `{"resourceType":"Bundle","type":"transaction","entry":[
		{"fullUrl":"urn:uuid:aaa","resource":{"resourceType":"Patient"},"request":{"method":"POST","url":"Patient"}},
		{"resource":{"resourceType":"Patient","id":"t1"},"request":{"method":"PUT","url":"Patient/t1","ifMatch":"W/\"7\""}}]}`
	r := do(t, "POST", base+"/", tx)
	if r.status != 412 {
		t.Fatalf("transaction with a stale entry: %d", r.status)
	}
	if n, _ := s.Count(context.Background()); n != 1 {
		t.Errorf("a failed transaction left %d resources, want 1", n)
	}
	batch := strings.Replace(tx, `"transaction"`, `"batch"`, 1)
	r = do(t, "POST", base+"/", batch)
	if r.status != 200 || r.body["type"] != "batch-response" {
		t.Fatalf("batch: %d %v", r.status, r.body["type"])
	}
	entries := r.body["entry"].([]any)
	st := func(i int) string {
		return entries[i].(map[string]any)["response"].(map[string]any)["status"].(string)
	}
	if !strings.HasPrefix(st(0), "201") || !strings.HasPrefix(st(1), "412") {
		t.Errorf("batch statuses %q %q, want 201 and 412", st(0), st(1))
	}
}

func TestFailureInjection(t *testing.T) {
	t.Parallel()
	s, base := newTest(t, Options{})
	s.FailNext(2, 503)
	for i := range 2 {
		r := do(t, "GET", base+"/metadata", "")
		if r.status != 503 || r.header.Get("Retry-After") != "1" {
			t.Fatalf("request %d: %d retry-after %q", i, r.status, r.header.Get("Retry-After"))
		}
	}
	if r := do(t, "GET", base+"/metadata", ""); r.status != 200 {
		t.Fatalf("after the injected failures: %d", r.status)
	}
	s.SetOutage(500)
	if r := do(t, "PUT", base+"/Patient/x", `{"resourceType":"Patient","id":"x"}`); r.status != 500 {
		t.Fatalf("during the outage: %d", r.status)
	}
	s.SetOutage(0)
	if n, _ := s.Count(context.Background()); n != 0 {
		t.Errorf("a write during the outage was stored")
	}
	if r := do(t, "GET", base+"/metadata", ""); r.status != 200 || r.body["fhirVersion"] != "4.0.1" {
		t.Fatalf("after the outage: %d", r.status)
	}
}

func TestConcurrentWritesKeepVersionsConsistent(t *testing.T) {
	t.Parallel()
	_, base := newTest(t, Options{})
	do(t, "PUT", base+"/Patient/c", `{"resourceType":"Patient","id":"c"}`)
	var wg sync.WaitGroup
	const n = 40
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			// t.Fatal must not be called from here; report and go on.
			send := func(method, u, body string) {
				req, _ := http.NewRequest(method, u, strings.NewReader(body))
				res, err := http.DefaultClient.Do(req)
				if err != nil {
					t.Error(err)
					return
				}
				_, _ = io.Copy(io.Discard, res.Body)
				res.Body.Close()
				if res.StatusCode >= 300 {
					t.Errorf("%s %s: %d", method, u, res.StatusCode)
				}
			}
			send("PUT", base+"/Patient/c", `{"resourceType":"Patient","id":"c"}`)
			send("POST", base+"/Observation", fmt.Sprintf(`{"resourceType":"Observation","status":"final","code":{"text":"%d"}}`, i))
		}()
	}
	wg.Wait()
	r := do(t, "GET", base+"/Patient/c", "")
	if v := r.body["meta"].(map[string]any)["versionId"]; v != fmt.Sprint(n+1) {
		t.Errorf("version after %d concurrent updates = %v, want %d", n, v, n+1)
	}
	r = do(t, "GET", base+"/Observation?_count=1000", "")
	if r.body["total"] != float64(n) {
		t.Errorf("observations = %v, want %d", r.body["total"], n)
	}
	// lastUpdated never goes backwards in history order.
	r = do(t, "GET", base+"/_history?_count=1000", "")
	prev := "9999"
	for _, e := range r.body["entry"].([]any) {
		lm := e.(map[string]any)["response"].(map[string]any)["lastModified"].(string)
		if lm > prev {
			t.Fatalf("history not in time order: %s after %s", lm, prev)
		}
		prev = lm
	}
}

func TestFileStorePersistsAndSeedsOnce(t *testing.T) {
	t.Parallel()
	path := filepath.Join(t.TempDir(), "fhir.db")
	s, err := New(Options{Path: path, Seed: 42, Patients: 10})
	if err != nil {
		t.Fatal(err)
	}
	n1, _ := s.Count(context.Background())
	if n1 < 10 {
		t.Fatalf("seeded %d resources, want at least 10 patients", n1)
	}
	hs := httptest.NewServer(s)
	r := do(t, "GET", hs.URL+"/Patient/pat-000003", "")
	if r.status != 200 || r.body["meta"].(map[string]any)["versionId"] != "1" {
		t.Fatalf("seeded patient: %d %v", r.status, r.body["meta"])
	}
	do(t, "PUT", hs.URL+"/Patient/extra", `{"resourceType":"Patient","id":"extra"}`)
	hs.Close()
	s.Close()

	s2, err := New(Options{Path: path, Seed: 42, Patients: 10})
	if err != nil {
		t.Fatal(err)
	}
	defer s2.Close()
	if n2, _ := s2.Count(context.Background()); n2 != n1+1 {
		t.Errorf("after reopening: %d resources, want %d (kept, not seeded again)", n2, n1+1)
	}
}

func TestServe(t *testing.T) {
	t.Parallel()
	s, err := New(Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- s.Serve(ctx, ln) }()
	if r := do(t, "GET", "http://"+ln.Addr().String()+"/metadata", ""); r.status != 200 {
		t.Fatalf("metadata: %d", r.status)
	}
	cancel()
	if err := <-done; err != nil {
		t.Fatalf("Serve returned %v after shutdown", err)
	}
}

// BenchmarkUpsert measures conditional updates (the agent's write path).
func BenchmarkUpsert(b *testing.B) {
	_, base := newTest(b, Options{})
	client := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: 16}}
	b.SetParallelism(4)
	var mu sync.Mutex
	next := 0
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			mu.Lock()
			i := next
			next++
			mu.Unlock()
			body := fmt.Sprintf(`{"resourceType":"Patient","identifier":[{"system":"urn:bench","value":"%d"}],"name":[{"family":"Bench"}]}`, i%500)
			req, _ := http.NewRequest("PUT", fmt.Sprintf("%s/Patient?identifier=urn:bench|%d", base, i%500), strings.NewReader(body))
			req.Header.Set("Content-Type", "application/fhir+json")
			res, err := client.Do(req)
			if err != nil {
				b.Fatal(err)
			}
			_, _ = io.Copy(io.Discard, res.Body)
			res.Body.Close()
			if res.StatusCode != 200 && res.StatusCode != 201 {
				b.Fatalf("status %d", res.StatusCode)
			}
		}
	})
}

// TestBatchReads: a GET entry of a batch answers as the read interaction
// does (R4 http.html#read: 404 for an id never known, 410 for a deleted
// one), with the resource and its etag, and sees the batch's own writes,
// which commit before its reads are answered.
func TestBatchReads(t *testing.T) {
	t.Parallel()
	_, base := newTest(t, Options{})
	do(t, "PUT", base+"/Patient/r1", `{"resourceType":"Patient","id":"r1","gender":"female"}`)
	do(t, "PUT", base+"/Patient/r2", `{"resourceType":"Patient","id":"r2"}`)
	do(t, "DELETE", base+"/Patient/r2", "")
	batch := `{"resourceType":"Bundle","type":"batch","entry":[
		{"request":{"method":"GET","url":"Patient/r1"}},
		{"request":{"method":"GET","url":"Patient/r2"}},
		{"request":{"method":"GET","url":"Patient/nobody"}},
		{"resource":{"resourceType":"Patient","id":"r3","gender":"male"},"request":{"method":"PUT","url":"Patient/r3"}},
		{"request":{"method":"GET","url":"Patient/r3"}}]}`
	r := do(t, "POST", base+"/", batch)
	if r.status != 200 || r.body["type"] != "batch-response" {
		t.Fatalf("batch: %d %v", r.status, r.body["type"])
	}
	entries := r.body["entry"].([]any)
	if len(entries) != 5 {
		t.Fatalf("%d entries, want 5", len(entries))
	}
	entry := func(i int) (status, etag string, res map[string]any) {
		e := entries[i].(map[string]any)
		resp := e["response"].(map[string]any)
		status, _ = resp["status"].(string)
		etag, _ = resp["etag"].(string)
		res, _ = e["resource"].(map[string]any)
		return status, etag, res
	}
	if st, etag, res := entry(0); st != "200 OK" || etag != `W/"1"` || res["id"] != "r1" || res["gender"] != "female" {
		t.Errorf("read of r1: %q %q %v", st, etag, res)
	}
	if st, _, res := entry(1); st != "410 Gone" || res != nil {
		t.Errorf("read of deleted r2: %q %v, want 410 Gone without a resource", st, res)
	}
	if st, _, res := entry(2); st != "404 Not Found" || res != nil {
		t.Errorf("read of an unknown id: %q %v, want 404 Not Found", st, res)
	}
	if st, _, res := entry(4); st != "200 OK" || res["gender"] != "male" {
		t.Errorf("read of r3, written by the same batch: %q %v", st, res)
	}
	// The single read answers the same.
	if got := do(t, "GET", base+"/Patient/r2", ""); got.status != 410 {
		t.Errorf("single read of deleted r2: %d, want 410", got.status)
	}
}
