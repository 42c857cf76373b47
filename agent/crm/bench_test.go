package crm

import (
	"context"
	"fmt"
	"net/http"
	"net/http/httptest"
	"sync"
	"testing"
	"time"

	"github.com/fhirsync/fhirsync/sandbox/crmserver"
)

func benchRecord(i int) Record {
	return Record{"firstname": "Ann", "lastname": fmt.Sprintf("L%d", i), "gendercode": 1 + i%2,
		"birthdate": "1980-03-01", "telephone1": "+1 555 0100", "emailaddress1": "a@example.org",
		"address1_line1": "1 Main Street", "address1_city": "Springfield", "address1_postalcode": "12345"}
}

// BenchmarkUpsert measures alternate-key upserts per second against the
// sandbox CRM, one request per row versus $batch. Keys cycle through 2,000
// values, so after warm-up half the upserts update existing rows.
func BenchmarkUpsert(b *testing.B) {
	ctx := context.Background()
	key := func(i int) Target { return ByKey("contacts", "msemr_azurefhirid", fmt.Sprintf("pat-%d", i%2000)) }
	b.Run("single", func(b *testing.B) {
		_, c := sandbox(b, crmserver.Options{}, Config{})
		b.ResetTimer()
		for i := 0; i < b.N; i++ {
			if _, err := c.Upsert(ctx, key(i), benchRecord(i), UpsertOptions{}); err != nil {
				b.Fatal(err)
			}
		}
		b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "upserts/s")
	})
	b.Run("single-concurrent8", func(b *testing.B) {
		_, c := sandbox(b, crmserver.Options{}, Config{MaxConcurrency: 8})
		b.ResetTimer()
		var wg sync.WaitGroup
		next := make(chan int)
		errs := make(chan error, 8)
		for range 8 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for i := range next {
					if _, err := c.Upsert(ctx, key(i), benchRecord(i), UpsertOptions{}); err != nil {
						errs <- err
						return
					}
				}
			}()
		}
		for i := 0; i < b.N; i++ {
			next <- i
		}
		close(next)
		wg.Wait()
		close(errs)
		if err := <-errs; err != nil {
			b.Fatal(err)
		}
		b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "upserts/s")
	})
	for _, size := range []int{100, 1000} {
		b.Run(fmt.Sprintf("batch%d", size), func(b *testing.B) {
			_, c := sandbox(b, crmserver.Options{}, Config{BatchSize: size})
			items := make([]UpsertItem, b.N)
			for i := range items {
				items[i] = UpsertItem{Target: key(i), Record: benchRecord(i)}
			}
			b.ResetTimer()
			out, err := c.UpsertMany(ctx, items)
			if err != nil {
				b.Fatal(err)
			}
			for _, o := range out {
				if o.Err != nil {
					b.Fatal(o.Err)
				}
			}
			b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "upserts/s")
		})
	}
}

// BenchmarkUpsertWithLatency repeats the comparison with 5 ms added to
// every HTTP exchange, closer to a client talking to a Dataverse region
// over the internet, where round trips rather than processing dominate.
func BenchmarkUpsertWithLatency(b *testing.B) {
	ctx := context.Background()
	key := func(i int) Target { return ByKey("contacts", "msemr_azurefhirid", fmt.Sprintf("pat-%d", i%2000)) }
	slow := func(b *testing.B, cfg Config) *Client {
		srv, err := crmserver.New(crmserver.Options{})
		if err != nil {
			b.Fatal(err)
		}
		hs := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			time.Sleep(5 * time.Millisecond)
			srv.ServeHTTP(w, r)
		}))
		b.Cleanup(hs.Close)
		cfg.URL = hs.URL
		c, err := New(cfg)
		if err != nil {
			b.Fatal(err)
		}
		return c
	}
	b.Run("single", func(b *testing.B) {
		c := slow(b, Config{})
		b.ResetTimer()
		for i := 0; i < b.N; i++ {
			if _, err := c.Upsert(ctx, key(i), benchRecord(i), UpsertOptions{}); err != nil {
				b.Fatal(err)
			}
		}
		b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "upserts/s")
	})
	b.Run("batch100", func(b *testing.B) {
		c := slow(b, Config{BatchSize: 100})
		items := make([]UpsertItem, b.N)
		for i := range items {
			items[i] = UpsertItem{Target: key(i), Record: benchRecord(i)}
		}
		b.ResetTimer()
		out, err := c.UpsertMany(ctx, items)
		if err != nil {
			b.Fatal(err)
		}
		for _, o := range out {
			if o.Err != nil {
				b.Fatal(o.Err)
			}
		}
		b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "upserts/s")
	})
}
