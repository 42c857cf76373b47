package logs_test

import (
	"context"
	"strings"
	"testing"

	"gorm.io/gorm"

	"github.com/fhirsync/fhirsync/logs"
	"github.com/fhirsync/fhirsync/storage/storagetest"
)

// TestTraceIDIsKept: a decision's trace id is written alone and in a batch
// and read back; a malformed one is refused before the database, and the
// column's CHECK refuses one written around the store.
func TestTraceIDIsKept(t *testing.T) {
	t.Parallel()
	storagetest.Each(t, func(t *testing.T, db *gorm.DB) {
		ctx := context.Background()
		s, _ := newStore(t, db, nil)
		const id = "4bf92f3577b34da6a3ce929d0e0e4736"
		one := decision(t0, func(d *logs.Decision) { d.TraceID = id })
		if err := s.Write(ctx, one); err != nil {
			t.Fatal(err)
		}
		batch := []*logs.Decision{
			decision(t0.Add(1), func(d *logs.Decision) { d.TraceID = "0af7651916cd43dd8448eb211c80319c" }),
			decision(t0.Add(2), nil),
			decision(t0.Add(3), func(d *logs.Decision) { d.TraceID = "00f067aa0ba902b700f067aa0ba902b7" }),
		}
		if err := s.WriteBatch(ctx, batch); err != nil {
			t.Fatal(err)
		}
		for _, d := range append([]*logs.Decision{one}, batch...) {
			got, err := s.Get(ctx, d.ID)
			if err != nil {
				t.Fatal(err)
			}
			if got.TraceID != d.TraceID {
				t.Errorf("decision %d trace id %q, want %q", d.ID, got.TraceID, d.TraceID)
			}
		}
		for _, bad := range []string{"4BF92F3577B34DA6A3CE929D0E0E4736", "00000000000000000000000000000000", "4bf92f35", "4bf92f3577b34da6a3ce929d0e0e473g"} {
			err := s.Write(ctx, decision(t0.Add(4), func(d *logs.Decision) { d.TraceID = bad }))
			if err == nil || !strings.Contains(err.Error(), "trace id") {
				t.Errorf("trace id %q: err %v, want it refused", bad, err)
			}
		}
		if err := db.Exec(`UPDATE sync_decisions SET trace_id = 'not-a-trace' WHERE id = ?`, one.ID).Error; err == nil {
			t.Error("the trace_id column took a malformed value")
		}
	})
}
