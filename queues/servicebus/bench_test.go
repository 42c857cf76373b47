package servicebus_test

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/fhirsync/fhirsync/queues"
	"github.com/fhirsync/fhirsync/queues/servicebus"
	"github.com/fhirsync/fhirsync/queues/servicebus/sbtest"
)

// BenchmarkRoundTrip measures send, receive and complete through the real
// client against the fake; the fake, not the adapter, dominates.
func BenchmarkRoundTrip(b *testing.B) {
	for _, sessions := range []bool{false, true} {
		b.Run(fmt.Sprintf("sessions=%v", sessions), func(b *testing.B) {
			srv := sbtest.Start(b, sbtest.QueueConfig{Name: "bench", Sessions: sessions, DuplicateWindow: -1})
			q, err := servicebus.New(servicebus.Config{ConnectionString: srv.ConnectionString(), Sessions: sessions}, "bench")
			if err != nil {
				b.Fatal(err)
			}
			defer q.Close(context.Background())
			ctx := context.Background()
			const batch = 20
			b.ResetTimer()
			for i := 0; i < b.N; i += batch {
				n := min(batch, b.N-i)
				msgs := make([]queues.Message, n)
				for j := range msgs {
					msgs[j] = queues.Message{ID: fmt.Sprintf("m%d", i+j), Body: []byte(`{"v":1}`)}
				}
				if err := q.Send(ctx, msgs...); err != nil {
					b.Fatal(err)
				}
				for got := 0; got < n; {
					ms, err := q.Receive(ctx, n-got, 5*time.Second)
					if err != nil {
						b.Fatal(err)
					}
					if len(ms) == 0 {
						b.Fatalf("nothing received with %d of %d outstanding", n-got, n)
					}
					for _, m := range ms {
						if err := q.Complete(ctx, m); err != nil {
							b.Fatal(err)
						}
					}
					got += len(ms)
				}
			}
			b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "msgs/s")
		})
	}
}
