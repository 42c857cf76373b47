package embedded

import (
	"strings"
	"testing"
	"time"

	"github.com/fhirsync/fhirsync/storage"
	"github.com/fhirsync/fhirsync/storage/storagetest"
)

// TestCountingReadsOnlyTheIndex checks, with SQLite's own query plans, that
// counting a queue (Depth) and picking its ready messages search the
// order index without reading the messages' rows: with a backlog of change
// notices a row read per message made every depth sample cost as much as
// reading the whole backlog.
func TestCountingReadsOnlyTheIndex(t *testing.T) {
	db := storagetest.Open(t, storage.SQLite)
	now := time.Now().UTC()
	for _, c := range []struct {
		name, query string
		args        []any
	}{
		{"depth", depthSQL, []any{now, now, "q"}},
		{"pick", pickSQL, []any{"q", now, 10}},
	} {
		rows, err := db.Raw("EXPLAIN QUERY PLAN "+c.query, c.args...).Rows()
		if err != nil {
			t.Fatalf("%s: %v", c.name, err)
		}
		var plan []string
		for rows.Next() {
			var id, parent, unused int
			var detail string
			if err := rows.Scan(&id, &parent, &unused, &detail); err != nil {
				t.Fatalf("%s: %v", c.name, err)
			}
			plan = append(plan, detail)
		}
		rows.Close()
		if len(plan) == 0 || !strings.Contains(plan[0], "COVERING INDEX queue_messages_order") {
			t.Errorf("%s: plan %q; want its first step a search of the covering index queue_messages_order", c.name, plan)
		}
	}
}
