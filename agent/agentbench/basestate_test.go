package agentbench

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"gorm.io/gorm"

	"github.com/fhirsync/fhirsync/storage/storagetest"
)

func TestMeasureBaseStateSizesTheRows(t *testing.T) {
	t.Parallel()
	storagetest.Each(t, func(t *testing.T, db *gorm.DB) {
		ctx := context.Background()
		b, err := measureBaseState(ctx, db)
		if err != nil || b.Links != 0 || b.BytesPerLink != 0 {
			t.Fatalf("empty table measured as %+v, %v", b, err)
		}
		// Two attributes, "ab" and "c": format byte, then per attribute a
		// length byte, the name and two 16-byte hashes.
		enc := []byte{1}
		for _, name := range []string{"ab", "c"} {
			enc = append(enc, byte(len(name)))
			enc = append(enc, name...)
			enc = append(enc, make([]byte, 32)...)
		}
		for _, id := range []string{"p1", "p2"} {
			if err := db.Exec(`INSERT INTO agent_link_base (entity_map, fhir_id, crm_id, map_version, hashes, updated_at) VALUES (?, ?, ?, ?, ?, ?)`,
				"patient", id, "c-"+id, 1, enc, time.Now().UTC()).Error; err != nil {
				t.Fatal(err)
			}
		}
		b, err = measureBaseState(ctx, db)
		if err != nil {
			t.Fatal(err)
		}
		// 7 + 2 + 4 bytes of keys, the hashes, 16 for version and time.
		want := float64(7 + 2 + 4 + len(enc) + 16)
		if b.Links != 2 || b.BytesPerLink != want || b.AttributesPerLink != 2 {
			t.Errorf("measured %+v, want 2 links of %.0f bytes with 2 attributes", b, want)
		}
		rows := (&Result{BaseState: b}).Rows()
		found := false
		for _, r := range rows {
			if strings.HasPrefix(r.Metric, "base state stored per linked pair") {
				found = r.Value == fmt.Sprintf("%.0f bytes", want)
			}
		}
		if !found {
			t.Errorf("no base-state row of %.0f bytes in %+v", want, rows)
		}
	})
}
