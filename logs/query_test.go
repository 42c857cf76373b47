package logs_test

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"testing"
	"time"

	"gorm.io/gorm"

	"github.com/fhirsync/fhirsync/logs"
	"github.com/fhirsync/fhirsync/storage/storagetest"
)

// seedVaried writes a small log whose rows differ in every filtered field
// and returns them by name.
func seedVaried(t *testing.T, s *logs.Store) map[string]*logs.Decision {
	t.Helper()
	ds := map[string]*logs.Decision{
		// Patient p1 goes to the CRM as contact c1 and comes back.
		"p1-created": decision(t0, func(d *logs.Decision) {
			d.Reason = logs.ReasonCreated
			d.BusinessKeys = []logs.BusinessKey{{Name: "mrn", Value: "MRN-100"}}
		}),
		"p1-unchanged": decision(t0.Add(1*time.Minute), func(d *logs.Decision) {
			d.Outcome, d.Reason = logs.OutcomeSkipped, logs.ReasonUnchanged
			d.BusinessKeys = []logs.BusinessKey{{Name: "mrn", Value: "MRN-100"}}
		}),
		"c1-echo": decision(t0.Add(2*time.Minute), func(d *logs.Decision) {
			d.Direction = logs.CRMToFHIR
			d.Source, d.Target = logs.Ref{Type: "contact", ID: "c1"}, logs.Ref{Type: "Patient", ID: "p1"}
			d.Outcome, d.Reason = logs.OutcomeSkipped, logs.ReasonOwnWriteEcho
			d.BusinessKeys = []logs.BusinessKey{{Name: "mrn", Value: "MRN-100"}, {Name: "crm_id", Value: "CN-1"}}
		}),
		"p1-encounter-map": decision(t0.Add(3*time.Minute), func(d *logs.Decision) {
			d.EntityMap = "patient-account"
			d.Target = logs.Ref{Type: "account", ID: "a1"}
		}),
		// Patient p2, an unrelated record.
		"p2-throttled": decision(t0.Add(4*time.Minute), func(d *logs.Decision) {
			d.Source, d.Target = logs.Ref{Type: "Patient", ID: "p2"}, logs.Ref{Type: "contact", ID: "c2"}
			d.Outcome, d.Reason = logs.OutcomeFailed, logs.ReasonThrottled
			d.BusinessKeys = []logs.BusinessKey{{Name: "mrn", Value: "MRN-200"}}
		}),
		"p2-dead": decision(t0.Add(5*time.Minute), func(d *logs.Decision) {
			d.Source, d.Target = logs.Ref{Type: "Patient", ID: "p2"}, logs.Ref{Type: "contact", ID: "c2"}
			d.Outcome, d.Reason = logs.OutcomeDeadLettered, logs.ReasonAttemptsExhausted
			d.MessageID = "msg-dead"
		}),
		// An Observation whose id collides with the patient's.
		"obs-p1": decision(t0.Add(6*time.Minute), func(d *logs.Decision) {
			d.Source, d.Target = logs.Ref{Type: "Observation", ID: "p1"}, logs.Ref{}
			d.EntityMap = ""
			d.Outcome, d.Reason = logs.OutcomeSkipped, logs.ReasonNoEntityMap
		}),
	}
	order := []string{"p1-created", "p1-unchanged", "c1-echo", "p1-encounter-map", "p2-throttled", "p2-dead", "obs-p1"}
	batch := make([]*logs.Decision, len(order))
	for i, name := range order {
		batch[i] = ds[name]
	}
	write(t, s, batch...)
	return ds
}

func TestSearchFilters(t *testing.T) {
	t.Parallel()
	storagetest.Each(t, func(t *testing.T, db *gorm.DB) {
		s, _ := newStore(t, db, nil)
		ds := seedVaried(t, s)
		tests := []struct {
			name    string
			filter  logs.Filter
			want    []string // newest first
			wantErr error
		}{
			{name: "everything", filter: logs.Filter{},
				want: []string{"obs-p1", "p2-dead", "p2-throttled", "p1-encounter-map", "c1-echo", "p1-unchanged", "p1-created"}},
			{name: "record timeline across maps and directions", filter: logs.Filter{Record: "p1"},
				want: []string{"obs-p1", "p1-encounter-map", "c1-echo", "p1-unchanged", "p1-created"}},
			{name: "record with type", filter: logs.Filter{Record: "p1", RecordType: "Patient"},
				want: []string{"p1-encounter-map", "c1-echo", "p1-unchanged", "p1-created"}},
			{name: "record as target only", filter: logs.Filter{Record: "c1"},
				want: []string{"c1-echo", "p1-unchanged", "p1-created"}},
			{name: "record prefix ignores case", filter: logs.Filter{Record: "P", RecordPrefix: true},
				want: []string{"obs-p1", "p2-dead", "p2-throttled", "p1-encounter-map", "c1-echo", "p1-unchanged", "p1-created"}},
			{name: "record prefix with type ignores case", filter: logs.Filter{Record: "P2", RecordType: "patient", RecordPrefix: true},
				want: []string{"p2-dead", "p2-throttled"}},
			{name: "record prefix is not a pattern", filter: logs.Filter{Record: "p_", RecordPrefix: true}, want: []string{}},
			{name: "exact record is exact", filter: logs.Filter{Record: "P1"}, want: []string{}},
			{name: "timeline with linked records", filter: logs.Filter{Record: "c2", Linked: true},
				want: []string{"p2-dead", "p2-throttled"}},
			{name: "timeline of a type with linked records", filter: logs.Filter{Record: "p1", RecordType: "Patient", Linked: true},
				// c1 and a1 are linked to Patient/p1; Observation/p1 is not.
				want: []string{"p1-encounter-map", "c1-echo", "p1-unchanged", "p1-created"}},
			{name: "linked records are found from the id in upper case", filter: logs.Filter{Record: "A1", RecordPrefix: true, Linked: true},
				want: []string{"p1-encounter-map", "c1-echo", "p1-unchanged", "p1-created"}},
			{name: "prefix without record", filter: logs.Filter{RecordPrefix: true}, wantErr: logs.ErrBadFilter},
			{name: "business key", filter: logs.Filter{BusinessKey: logs.BusinessKey{Name: "mrn", Value: "MRN-100"}},
				want: []string{"c1-echo", "p1-unchanged", "p1-created"}},
			{name: "business key value is trimmed", filter: logs.Filter{BusinessKey: logs.BusinessKey{Name: "mrn", Value: " MRN-200 "}},
				want: []string{"p2-throttled"}},
			{name: "business key under another name", filter: logs.Filter{BusinessKey: logs.BusinessKey{Name: "crm_id", Value: "MRN-100"}},
				want: []string{}},
			{name: "entity map", filter: logs.Filter{EntityMap: "patient-account"}, want: []string{"p1-encounter-map"}},
			{name: "outcome", filter: logs.Filter{Outcome: logs.OutcomeSkipped}, want: []string{"obs-p1", "c1-echo", "p1-unchanged"}},
			{name: "reason", filter: logs.Filter{Reason: logs.ReasonThrottled}, want: []string{"p2-throttled"}},
			{name: "direction", filter: logs.Filter{Direction: logs.CRMToFHIR}, want: []string{"c1-echo"}},
			{name: "message id", filter: logs.Filter{MessageID: "msg-dead"}, want: []string{"p2-dead"}},
			{name: "time range is half open", filter: logs.Filter{From: t0.Add(time.Minute), To: t0.Add(3 * time.Minute)},
				want: []string{"c1-echo", "p1-unchanged"}},
			{name: "combined", filter: logs.Filter{Record: "p1", Outcome: logs.OutcomeSent, Direction: logs.FHIRToCRM},
				want: []string{"p1-encounter-map", "p1-created"}},
			{name: "unknown outcome", filter: logs.Filter{Outcome: "lost"}, wantErr: logs.ErrBadFilter},
			{name: "unknown reason", filter: logs.Filter{Reason: "nope"}, wantErr: logs.ErrBadFilter},
			{name: "unknown direction", filter: logs.Filter{Direction: "up"}, wantErr: logs.ErrBadFilter},
			{name: "type without record", filter: logs.Filter{RecordType: "Patient"}, wantErr: logs.ErrBadFilter},
			{name: "key without value", filter: logs.Filter{BusinessKey: logs.BusinessKey{Name: "mrn"}}, wantErr: logs.ErrBadFilter},
		}
		for _, tt := range tests {
			t.Run(tt.name, func(t *testing.T) {
				page, err := s.Search(context.Background(), tt.filter, "", 0)
				if tt.wantErr != nil {
					if !errors.Is(err, tt.wantErr) {
						t.Fatalf("err = %v, want %v", err, tt.wantErr)
					}
					return
				}
				if err != nil {
					t.Fatal(err)
				}
				want := make([]int64, len(tt.want))
				for i, name := range tt.want {
					want[i] = ds[name].ID
				}
				if got := ids(page.Decisions); !slices.Equal(got, want) {
					t.Fatalf("ids = %v, want %v (%v)", got, want, tt.want)
				}
				if page.Next != "" {
					t.Errorf("Next = %q on a single page", page.Next)
				}
			})
		}
	})
}

func TestBusinessKeysNeedASecret(t *testing.T) {
	t.Parallel()
	storagetest.Each(t, func(t *testing.T, db *gorm.DB) {
		s, _ := newStore(t, db, func(c *logs.Config) { c.KeySecret = "" })
		write(t, s, decision(t0, func(d *logs.Decision) {
			d.BusinessKeys = []logs.BusinessKey{{Name: "mrn", Value: "MRN-9"}}
		}))
		if n := count(t, db, "sync_decision_keys"); n != 0 {
			t.Fatalf("%d key rows stored without a secret", n)
		}
		_, err := s.Search(context.Background(), logs.Filter{BusinessKey: logs.BusinessKey{Name: "mrn", Value: "MRN-9"}}, "", 10)
		if !errors.Is(err, logs.ErrKeysOff) {
			t.Fatalf("err = %v, want ErrKeysOff", err)
		}
		if s.Policy().BusinessKeys {
			t.Error("Policy reports business keys on")
		}
	})
}

// TestKeysetPagination walks pages of rows that share timestamps, while
// new decisions arrive, and checks that nothing is repeated or missed.
func TestKeysetPagination(t *testing.T) {
	t.Parallel()
	storagetest.Each(t, func(t *testing.T, db *gorm.DB) {
		ctx := context.Background()
		s, _ := newStore(t, db, nil)
		var batch []*logs.Decision
		for i := range 250 {
			// Five decisions per timestamp, written out of time order.
			at := t0.Add(time.Duration((i*37)%50) * time.Second)
			batch = append(batch, decision(at, func(d *logs.Decision) {
				d.Source.ID = "rec"
				d.MessageID = fmt.Sprint("m", i)
			}))
		}
		write(t, s, batch...)
		want := slices.Clone(batch)
		slices.SortFunc(want, func(a, b *logs.Decision) int {
			if c := b.Time.Compare(a.Time); c != 0 {
				return c
			}
			return int(b.ID - a.ID)
		})
		for _, f := range []logs.Filter{{}, {Record: "rec"}, {Outcome: logs.OutcomeSent}, {EntityMap: "patient-contact"}} {
			var got []int64
			after := ""
			pages := 0
			for {
				page, err := s.Search(ctx, f, after, 7)
				if err != nil {
					t.Fatal(err)
				}
				got = append(got, ids(page.Decisions)...)
				pages++
				if pages == 3 {
					// A newer decision arriving mid-walk must not shift later pages.
					write(t, s, decision(t0.Add(time.Hour), func(d *logs.Decision) { d.Source.ID = "rec" }))
				}
				if page.Next == "" {
					break
				}
				after = page.Next
			}
			if pages != 36 {
				t.Errorf("filter %+v: %d pages, want 36", f, pages)
			}
			var wantIDs []int64
			for _, d := range want {
				wantIDs = append(wantIDs, d.ID)
			}
			if !slices.Equal(got, wantIDs) {
				t.Fatalf("filter %+v: walked ids\n%v\nwant\n%v", f, got, wantIDs)
			}
			// The late arrivals are the newest; drop them for the next filter's walk.
			if err := db.Exec("DELETE FROM sync_decisions WHERE decided_at > ?", t0.Add(time.Minute)).Error; err != nil {
				t.Fatal(err)
			}
		}
		for _, bad := range []string{"garbage!", "djE6eDox", "djE6MTIzOjA"} {
			if _, err := s.Search(ctx, logs.Filter{}, bad, 10); !errors.Is(err, logs.ErrBadCursor) {
				t.Errorf("cursor %q: err = %v, want ErrBadCursor", bad, err)
			}
		}
		for _, n := range []int{-1, logs.MaxPageSize + 1} {
			if _, err := s.Search(ctx, logs.Filter{}, "", n); !errors.Is(err, logs.ErrBadFilter) {
				t.Errorf("limit %d: err = %v, want ErrBadFilter", n, err)
			}
		}
	})
}

func TestCounts(t *testing.T) {
	t.Parallel()
	storagetest.Each(t, func(t *testing.T, db *gorm.DB) {
		ctx := context.Background()
		s, _ := newStore(t, db, nil)
		seedVaried(t, s)
		c, err := s.Counts(ctx, logs.Filter{}, 0)
		if err != nil {
			t.Fatal(err)
		}
		wantOutcome := map[logs.Outcome]int64{logs.OutcomeSent: 2, logs.OutcomeSkipped: 3, logs.OutcomeFailed: 1, logs.OutcomeDeadLettered: 1}
		if c.Total != 7 || !mapsEqual(c.ByOutcome, wantOutcome) {
			t.Errorf("counts = %+v, want total 7 and %v", c, wantOutcome)
		}
		wantReason := map[logs.ReasonCode]int64{"created": 1, "updated": 1, "unchanged": 1, "own_write_echo": 1,
			"throttled": 1, "attempts_exhausted": 1, "no_entity_map": 1}
		if !mapsEqual(c.ByReason, wantReason) {
			t.Errorf("by reason = %v, want %v", c.ByReason, wantReason)
		}
		if len(c.Buckets) != 0 {
			t.Errorf("buckets without a width: %v", c.Buckets)
		}

		// Three-minute buckets: [0,3) [3,6) [6,9) minutes after t0.
		c, err = s.Counts(ctx, logs.Filter{Direction: logs.FHIRToCRM}, 3*time.Minute)
		if err != nil {
			t.Fatal(err)
		}
		if c.Total != 6 || len(c.Buckets) != 3 {
			t.Fatalf("bucketed counts = %+v, want 6 in 3 buckets", c)
		}
		wantStarts := []time.Time{t0, t0.Add(3 * time.Minute), t0.Add(6 * time.Minute)}
		wantSent := []int64{1, 1, 0}
		wantFailed := []int64{0, 2, 0}
		for i, b := range c.Buckets {
			if !b.Start.Equal(wantStarts[i]) || b.ByOutcome[logs.OutcomeSent] != wantSent[i] ||
				b.ByOutcome[logs.OutcomeFailed]+b.ByOutcome[logs.OutcomeDeadLettered] != wantFailed[i] {
				t.Errorf("bucket %d = %+v, want start %s sent %d failed+dead %d", i, b, wantStarts[i], wantSent[i], wantFailed[i])
			}
		}
		if _, err := s.Counts(ctx, logs.Filter{}, time.Millisecond); !errors.Is(err, logs.ErrBadFilter) {
			t.Errorf("sub-second bucket: err = %v", err)
		}
	})
}

func mapsEqual[K comparable](a, b map[K]int64) bool {
	if len(a) != len(b) {
		return false
	}
	for k, v := range a {
		if b[k] != v {
			return false
		}
	}
	return true
}
