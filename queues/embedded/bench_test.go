package embedded_test

import (
	"context"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/fhirsync/fhirsync/internal/proccpu"
	"github.com/fhirsync/fhirsync/queues"
	"github.com/fhirsync/fhirsync/queues/embedded"
	"github.com/fhirsync/fhirsync/storage/storagetest"
)

// BenchmarkRoundTrip measures full round trips — send, receive, complete —
// one message per b.N, in batches of the given size (Send of a batch,
// Receive up to the batch, CompleteMany). msgs/s is the figure to read.
func BenchmarkRoundTrip(b *testing.B) {
	for _, d := range storagetest.Dialects {
		for _, bc := range []struct {
			batch int
			keyed bool
		}{{1, false}, {100, false}, {100, true}} {
			name := fmt.Sprintf("%s/batch=%d", d, bc.batch)
			if bc.keyed {
				name += "/session-keys"
			}
			b.Run(name, func(b *testing.B) {
				ctx := context.Background()
				db := storagetest.Open(b, d)
				q, err := embedded.New(db, "bench", embedded.Options{})
				if err != nil {
					b.Fatal(err)
				}
				msgs := make([]queues.Message, bc.batch)
				body := []byte(`{"v":1,"side":"fhir","type":"Patient","id":"p","event":"updated","origin":"history-poll"}`)
				seq := 0
				b.ResetTimer()
				for done := 0; done < b.N; {
					n := min(bc.batch, b.N-done)
					for i := range n {
						seq++
						msgs[i] = queues.Message{ID: fmt.Sprintf("m%d", seq), Body: body,
							Properties: map[string]string{"side": "fhir", "type": "Patient"}}
						if bc.keyed {
							msgs[i].SessionKey = fmt.Sprintf("fhir:Patient/%d", seq%5000)
						}
					}
					if err := q.Send(ctx, msgs[:n]...); err != nil {
						b.Fatal(err)
					}
					for got := 0; got < n; {
						ms, err := q.Receive(ctx, n-got, time.Second)
						if err != nil {
							b.Fatal(err)
						}
						if len(ms) == 0 {
							b.Fatalf("received %d of %d", got, n)
						}
						if err := q.CompleteMany(ctx, ms); err != nil {
							b.Fatal(err)
						}
						got += len(ms)
					}
					done += n
				}
				b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "msgs/s")
			})
		}
	}
}

// BenchmarkPipelined is the agent's shape: one sender and two receivers on
// separate connections at once, batches of 100, so round trips overlap.
// One b.N is one message sent, received and completed.
func BenchmarkPipelined(b *testing.B) {
	for _, d := range storagetest.Dialects {
		b.Run(string(d), func(b *testing.B) {
			ctx := context.Background()
			db := storagetest.Open(b, d)
			q, err := embedded.New(db, "bench", embedded.Options{PollInterval: 10 * time.Millisecond})
			if err != nil {
				b.Fatal(err)
			}
			body := []byte(`{"v":1,"side":"fhir","type":"Patient","id":"p","event":"updated","origin":"history-poll"}`)
			const batch, receivers = 100, 2
			b.ResetTimer()
			var wg sync.WaitGroup
			var received atomic.Int64
			errs := make(chan error, receivers+1)
			wg.Go(func() {
				for sent := 0; sent < b.N; {
					// Keep the backlog bounded, as a feed would.
					for int64(sent)-received.Load() > 10*batch {
						time.Sleep(time.Millisecond)
					}
					n := min(batch, b.N-sent)
					msgs := make([]queues.Message, n)
					for i := range msgs {
						msgs[i] = queues.Message{ID: fmt.Sprintf("m%d", sent+i), Body: body,
							Properties: map[string]string{"side": "fhir"}}
					}
					if err := q.Send(ctx, msgs...); err != nil {
						errs <- err
						return
					}
					sent += n
				}
			})
			for range receivers {
				wg.Go(func() {
					for received.Load() < int64(b.N) {
						ms, err := q.Receive(ctx, batch, 100*time.Millisecond)
						if err != nil {
							errs <- err
							return
						}
						if err := q.CompleteMany(ctx, ms); err != nil {
							errs <- err
							return
						}
						received.Add(int64(len(ms)))
					}
				})
			}
			wg.Wait()
			close(errs)
			for err := range errs {
				b.Fatal(err)
			}
			b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "msgs/s")
		})
	}
}

// BenchmarkConcurrentSends measures Sends of one message each from many
// goroutines at once, as change notices arrive from a webhook: on SQLite
// they are written in groups. cpu-µs/msg is this process's CPU time per
// message (the whole cost on SQLite), steadier than wall time on a shared
// machine.
func BenchmarkConcurrentSends(b *testing.B) {
	for _, d := range storagetest.Dialects {
		b.Run(string(d), func(b *testing.B) {
			ctx := context.Background()
			q, err := embedded.New(storagetest.Open(b, d), "bench", embedded.Options{})
			if err != nil {
				b.Fatal(err)
			}
			const senders = 32
			var n atomic.Int64
			body := []byte(`{"v":1,"side":"crm","type":"contact","id":"c","event":"updated","origin":"service-endpoint"}`)
			startCPU := proccpu.Used()
			b.ResetTimer()
			var wg sync.WaitGroup
			for range senders {
				wg.Go(func() {
					for {
						i := n.Add(1)
						if i > int64(b.N) {
							return
						}
						m := queues.Message{ID: fmt.Sprint("m", i), SessionKey: fmt.Sprint("contact/", i%1000), Body: body}
						if err := q.Send(ctx, m); err != nil {
							b.Error(err)
							return
						}
					}
				})
			}
			wg.Wait()
			b.StopTimer()
			if cpu := proccpu.Used() - startCPU; cpu > 0 {
				b.ReportMetric(float64(cpu.Microseconds())/float64(b.N), "cpu-µs/msg")
			}
		})
	}
}

// BenchmarkDepth measures Depth over a backlog of 30,000 messages whose
// bodies are the size of a Dataverse change notice (about 1.5 KB), 100 of
// them locked: the cost of each depth sample and of each wait of a
// backfill for room in the queue.
func BenchmarkDepth(b *testing.B) {
	for _, d := range storagetest.Dialects {
		b.Run(string(d), func(b *testing.B) {
			ctx := context.Background()
			q, err := embedded.New(storagetest.Open(b, d), "bench", embedded.Options{})
			if err != nil {
				b.Fatal(err)
			}
			body := make([]byte, 1500)
			for i := range body {
				body[i] = 'a' + byte(i%26)
			}
			const backlog, batch = 30000, 500
			for sent := 0; sent < backlog; sent += batch {
				msgs := make([]queues.Message, batch)
				for i := range msgs {
					msgs[i] = queues.Message{ID: fmt.Sprintf("m%d", sent+i), Body: body}
				}
				if err := q.Send(ctx, msgs...); err != nil {
					b.Fatal(err)
				}
			}
			if _, err := q.Receive(ctx, 100, time.Second); err != nil {
				b.Fatal(err)
			}
			for b.Loop() {
				dep, err := q.Depth(ctx)
				if err != nil {
					b.Fatal(err)
				}
				if dep.Active != backlog {
					b.Fatalf("Depth = %+v, want %d active", dep, backlog)
				}
			}
		})
	}
}
