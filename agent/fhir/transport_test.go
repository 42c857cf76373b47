package fhir

import (
	"encoding/json"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"path"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
)

// TestDefaultTransportKeepsConnections: concurrent workers reading from
// one server reuse their connections. Go's default transport keeps two idle
// connections per host, so 32 workers making 50 reads each open hundreds;
// the client's own transport opens about one per worker. A request that
// finds no idle connection dials, and a connection freed meanwhile may
// serve it instead: on a loaded machine the dials that lose such races
// add more (34–66 seen), so the bound is a tenth of the reads, against the
// 402–464 connections the default transport opened.
func TestDefaultTransportKeepsConnections(t *testing.T) {
	var opened atomic.Int64
	hs := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/fhir+json")
		w.Header().Set("ETag", `W/"1"`)
		_, _ = w.Write([]byte(`{"resourceType":"Patient","id":"p1","meta":{"versionId":"1"}}`))
	}))
	hs.Config.ConnState = func(_ net.Conn, s http.ConnState) {
		if s == http.StateNew {
			opened.Add(1)
		}
	}
	hs.Start()
	t.Cleanup(hs.Close)
	c, err := New(Config{BaseURL: hs.URL})
	if err != nil {
		t.Fatal(err)
	}
	const workers, reads = 32, 50
	var wg sync.WaitGroup
	errs := make(chan error, workers*reads)
	for range workers {
		wg.Go(func() {
			for range reads {
				if _, err := c.Read(t.Context(), "Patient", "p1"); err != nil {
					errs <- err
				}
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatalf("Read: %v", err)
	}
	if n, bound := opened.Load(), int64(workers*reads/10); n > bound {
		t.Fatalf("%d workers × %d reads opened %d connections, want at most %d", workers, reads, n, bound)
	}
	t.Logf("%d reads over %d connections", workers*reads, opened.Load())
}

// TestResponseBodiesAreNotKept: the buffer a response body is read into
// is reused by later calls, so nothing decoded from one body may point
// into it. One read, then fifty answered with bodies of the same length:
// the first resource's values must survive them, escaped strings, numbers
// and keys included.
func TestResponseBodiesAreNotKept(t *testing.T) {
	t.Parallel()
	bodies := map[string]string{
		"a": `{"resourceType":"Patient","id":"a","name":[{"family":"Aaaa","given":["Al\u00e9"]}],"multipleBirthInteger":1}`,
		"b": `{"resourceType":"Patient","id":"b","name":[{"family":"Bbbb","given":["Bo\u00e9"]}],"multipleBirthInteger":2}`,
	}
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/fhir+json")
		_, _ = io.WriteString(w, bodies[path.Base(r.URL.Path)])
	}))
	t.Cleanup(srv.Close)
	c, err := New(Config{BaseURL: srv.URL})
	if err != nil {
		t.Fatal(err)
	}
	a, err := c.Read(t.Context(), "Patient", "a")
	if err != nil {
		t.Fatal(err)
	}
	want, _ := json.Marshal(a)
	// A sync.Pool does not promise to hand a buffer back to the next
	// call; many calls make it all but certain that one gets the first's.
	for range 50 {
		if _, err := c.Read(t.Context(), "Patient", "b"); err != nil {
			t.Fatal(err)
		}
	}
	if got, _ := json.Marshal(a); string(got) != string(want) {
		t.Errorf("the first resource changed when the next body was read:\n got %s\nwant %s", got, want)
	}
	if s := string(want); !strings.Contains(s, `"family":"Aaaa"`) || !strings.Contains(s, `"Alé"`) || !strings.Contains(s, `"multipleBirthInteger":1`) {
		t.Errorf("the first resource decoded as %s", s)
	}
}
