package fhir

import (
	"net"
	"net/http"
	"net/http/httptest"
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
