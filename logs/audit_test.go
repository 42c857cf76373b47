package logs_test

import (
	"bytes"
	"context"
	"encoding/csv"
	"encoding/json"
	"errors"
	"slices"
	"strings"
	"testing"
	"time"

	"gorm.io/gorm"

	"github.com/fhirsync/fhirsync/logs"
	"github.com/fhirsync/fhirsync/storage/storagetest"
)

func TestAuditTrail(t *testing.T) {
	t.Parallel()
	storagetest.Each(t, func(t *testing.T, db *gorm.DB) {
		ctx := context.Background()
		s, _ := newStore(t, db, nil)
		entries := []logs.AuditEntry{
			{At: t0, Actor: "alice", Action: "map.publish", ObjectType: "entity_map", ObjectID: "7", Before: "version 2", After: "version 3"},
			{At: t0.Add(time.Minute), Actor: "bob", Action: "dead_letter.redrive", ObjectType: "message", ObjectID: "m-1"},
			{At: t0.Add(2 * time.Minute), Actor: "alice", Action: "user.role_add", ObjectType: "user", ObjectID: "carol", After: "=role auditor"},
			{At: t0.Add(2 * time.Minute), Actor: "alice", Action: "map.publish", ObjectType: "entity_map", ObjectID: "8"},
		}
		for _, e := range entries {
			if err := s.AppendAudit(ctx, e); err != nil {
				t.Fatal(err)
			}
		}
		tests := []struct {
			name   string
			filter logs.AuditFilter
			want   []string // object ids, newest first
		}{
			{"all", logs.AuditFilter{}, []string{"8", "carol", "m-1", "7"}},
			{"actor", logs.AuditFilter{Actor: "alice"}, []string{"8", "carol", "7"}},
			{"action", logs.AuditFilter{Action: "map.publish"}, []string{"8", "7"}},
			{"object", logs.AuditFilter{ObjectType: "entity_map", ObjectID: "7"}, []string{"7"}},
			{"time range", logs.AuditFilter{From: t0.Add(time.Minute), To: t0.Add(2 * time.Minute)}, []string{"m-1"}},
		}
		for _, tt := range tests {
			t.Run(tt.name, func(t *testing.T) {
				var got []string
				after := ""
				for {
					p, err := s.Audit(ctx, tt.filter, after, 1)
					if err != nil {
						t.Fatal(err)
					}
					for _, e := range p.Entries {
						got = append(got, e.ObjectID)
					}
					if p.Next == "" {
						break
					}
					after = p.Next
				}
				if !slices.Equal(got, tt.want) {
					t.Fatalf("object ids = %v, want %v", got, tt.want)
				}
			})
		}
		p, _ := s.Audit(ctx, logs.AuditFilter{ObjectID: "7"}, "", 10)
		if len(p.Entries) != 1 || p.Entries[0].Before != "version 2" || p.Entries[0].After != "version 3" || !p.Entries[0].At.Equal(t0) {
			t.Fatalf("entry = %+v", p.Entries)
		}

		for _, bad := range []logs.AuditEntry{{Action: "x"}, {Actor: "x"}, {Actor: "x", Action: "y", After: strings.Repeat("a", 5000)}} {
			if err := s.AppendAudit(ctx, bad); !errors.Is(err, logs.ErrInvalidAudit) {
				t.Errorf("AppendAudit(%+v) err = %v, want ErrInvalidAudit", bad.Actor+"/"+bad.Action, err)
			}
		}

		// Append-only, even for someone bypassing the package.
		for _, stmt := range []string{"UPDATE audit_trail SET actor = 'mallory'", "DELETE FROM audit_trail"} {
			if err := db.Exec(stmt).Error; err == nil || !strings.Contains(err.Error(), "append-only") {
				t.Errorf("%s: err = %v, want it refused as append-only", stmt, err)
			}
		}
		if n := count(t, db, "audit_trail"); n != 4 {
			t.Fatalf("audit trail has %d entries, want 4", n)
		}

		var buf bytes.Buffer
		n, err := s.ExportAudit(ctx, &buf, logs.CSV, logs.AuditFilter{})
		if err != nil || n != 4 {
			t.Fatalf("ExportAudit csv = %d, %v", n, err)
		}
		recs, err := csv.NewReader(&buf).ReadAll()
		if err != nil {
			t.Fatal(err)
		}
		if len(recs) != 5 || recs[0][2] != "actor" || recs[2][7] != "'=role auditor" {
			t.Fatalf("csv = %q", recs)
		}
		buf.Reset()
		if n, err := s.ExportAudit(ctx, &buf, logs.NDJSON, logs.AuditFilter{Actor: "bob"}); err != nil || n != 1 {
			t.Fatalf("ExportAudit ndjson = %d, %v", n, err)
		}
		var e logs.AuditEntry
		if err := json.Unmarshal(buf.Bytes(), &e); err != nil || e.Action != "dead_letter.redrive" {
			t.Fatalf("ndjson line = %s (%v)", buf.String(), err)
		}
	})
}

func TestExportDecisions(t *testing.T) {
	t.Parallel()
	storagetest.Each(t, func(t *testing.T, db *gorm.DB) {
		ctx := context.Background()
		s, _ := newStore(t, db, nil)
		var batch []*logs.Decision
		for i := range 2100 { // more than two export pages
			batch = append(batch, decision(t0.Add(time.Duration(i)*time.Second), func(d *logs.Decision) {
				d.BusinessKeys = []logs.BusinessKey{{Name: "mrn", Value: "SECRET-MRN"}}
				d.Attempts = []logs.Attempt{{At: t0, ErrorClass: "http_503", Retryable: true}}
			}))
		}
		batch[0].Message = "=HYPERLINK(\"x\")"
		write(t, s, batch...)

		var buf bytes.Buffer
		n, err := s.Export(ctx, &buf, logs.CSV, logs.Filter{})
		if err != nil || n != 2100 {
			t.Fatalf("Export csv = %d, %v", n, err)
		}
		if strings.Contains(buf.String(), "SECRET-MRN") {
			t.Fatal("export contains a business key value")
		}
		recs, err := csv.NewReader(&buf).ReadAll()
		if err != nil {
			t.Fatal(err)
		}
		header := recs[0]
		col := func(name string) int { return slices.Index(header, name) }
		last := recs[len(recs)-1]
		if len(recs) != 2101 || last[col("id")] != itoa(batch[0].ID) || last[col("message")] != "'=HYPERLINK(\"x\")" ||
			last[col("business_keys")] != "mrn" || last[col("changed_fields")] != "firstname;birthdate" ||
			last[col("duration_ms")] != "1.500" || !strings.Contains(last[col("attempts")], "http_503 retryable=true") {
			t.Fatalf("csv rows = %d, last = %q", len(recs), last)
		}

		buf.Reset()
		n, err = s.Export(ctx, &buf, logs.NDJSON, logs.Filter{From: t0.Add(2090 * time.Second)})
		if err != nil || n != 10 {
			t.Fatalf("Export ndjson = %d, %v", n, err)
		}
		lines := strings.Split(strings.TrimSpace(buf.String()), "\n")
		var d logs.Decision
		if err := json.Unmarshal([]byte(lines[0]), &d); err != nil {
			t.Fatal(err)
		}
		if len(lines) != 10 || d.ID != batch[2099].ID || d.Reason != logs.ReasonUpdated || d.Source.ID != "p1" {
			t.Fatalf("ndjson first line = %s", lines[0])
		}
		if _, err := logs.ParseFormat("xml"); !errors.Is(err, logs.ErrBadFilter) {
			t.Errorf("ParseFormat(xml) err = %v", err)
		}
	})
}
