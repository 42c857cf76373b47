package embedded_test

import (
	"context"
	"testing"

	"github.com/fhirsync/fhirsync/queues"
	"github.com/fhirsync/fhirsync/queues/embedded"
	"github.com/fhirsync/fhirsync/queues/queuetest"
	"github.com/fhirsync/fhirsync/storage/storagetest"
)

// TestContract runs the shared queue contract on SQLite and PostgreSQL. The
// cases share one database per dialect, each on its own queue name, which
// also checks that queues on one database do not see each other's messages.
func TestContract(t *testing.T) {
	t.Parallel()
	for _, d := range storagetest.Dialects {
		t.Run(string(d), func(t *testing.T) {
			t.Parallel()
			db := storagetest.Open(t, d)
			queuetest.Run(t, func(t *testing.T, o queuetest.Options) queues.Queue {
				q, err := embedded.New(db, t.Name(), embedded.Options{
					LockDuration:     o.LockDuration,
					MaxDeliveryCount: o.MaxDeliveryCount,
					DuplicateWindow:  o.DuplicateWindow,
				})
				if err != nil {
					t.Fatal(err)
				}
				t.Cleanup(func() { _ = q.Close(context.Background()) })
				return q
			})
		})
	}
}
