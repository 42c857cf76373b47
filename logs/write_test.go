package logs_test

import (
	"context"
	"errors"
	"reflect"
	"strings"
	"testing"
	"time"

	"gorm.io/gorm"

	"github.com/fhirsync/fhirsync/logs"
	"github.com/fhirsync/fhirsync/storage/storagetest"
)

func TestWriteAndGetRoundTrip(t *testing.T) {
	t.Parallel()
	storagetest.Each(t, func(t *testing.T, db *gorm.DB) {
		ctx := context.Background()
		s, _ := newStore(t, db, nil)
		d := decision(t0.Add(123456789*time.Nanosecond), func(d *logs.Decision) {
			d.BusinessKeys = []logs.BusinessKey{{Name: "mrn", Value: "MRN-1"}, {Name: "crm_id", Value: "C-1"}}
			d.Attempts = []logs.Attempt{
				{At: t0.Add(-time.Second), ErrorClass: "http_429", Retryable: true},
				{At: t0},
			}
			d.Outcome, d.Reason, d.ReasonSubject = logs.OutcomeFailed, logs.ReasonMappingError, "birthdate"
		})
		if err := s.Write(ctx, d); err != nil {
			t.Fatal(err)
		}
		if d.ID == 0 {
			t.Fatal("Write did not set the id")
		}
		got, err := s.Get(ctx, d.ID)
		if err != nil {
			t.Fatal(err)
		}
		want := *d
		want.Time = t0.Add(123456 * time.Microsecond)
		want.BusinessKeys = []logs.BusinessKey{{Name: "crm_id"}, {Name: "mrn"}}
		if !reflect.DeepEqual(got, want) {
			t.Fatalf("Get =\n%+v\nwant\n%+v", got, want)
		}
		if _, err := s.Get(ctx, d.ID+100); !errors.Is(err, logs.ErrNotFound) {
			t.Fatalf("Get(missing) err = %v, want ErrNotFound", err)
		}
	})
}

func TestWriteRefusesInvalidDecisions(t *testing.T) {
	t.Parallel()
	storagetest.Each(t, func(t *testing.T, db *gorm.DB) {
		s, _ := newStore(t, db, nil)
		tests := []struct {
			name    string
			edit    func(*logs.Decision)
			wantMsg string
		}{
			{"unregistered reason", func(d *logs.Decision) { d.Reason = "made_up" }, "not a registered reason code"},
			{"reason not allowed with outcome", func(d *logs.Decision) { d.Outcome = logs.OutcomeSent; d.Reason = logs.ReasonUnauthorized }, "not allowed with outcome sent"},
			{"attempts_exhausted is not a retry", func(d *logs.Decision) { d.Outcome = logs.OutcomeFailed; d.Reason = logs.ReasonAttemptsExhausted }, "not allowed"},
			{"no outcome", func(d *logs.Decision) { d.Outcome = "" }, "outcome"},
			{"bad direction", func(d *logs.Decision) { d.Direction = "sideways" }, "direction"},
			{"empty business key value", func(d *logs.Decision) { d.BusinessKeys = []logs.BusinessKey{{Name: "mrn"}} }, "has no value"},
			{"duplicate business key", func(d *logs.Decision) {
				d.BusinessKeys = []logs.BusinessKey{{Name: "mrn", Value: "a"}, {Name: "mrn", Value: "b"}}
			}, "appears twice"},
			{"negative duration", func(d *logs.Decision) { d.Duration = -time.Second }, "negative"},
			{"oversize message", func(d *logs.Decision) { d.Message = strings.Repeat("x", 2000) }, "message"},
		}
		for _, tt := range tests {
			t.Run(tt.name, func(t *testing.T) {
				d := decision(t0, tt.edit)
				err := s.Write(context.Background(), d)
				if !errors.Is(err, logs.ErrInvalidDecision) || !strings.Contains(err.Error(), tt.wantMsg) {
					t.Fatalf("Write err = %v, want ErrInvalidDecision mentioning %q", err, tt.wantMsg)
				}
				if d.ID != 0 {
					t.Errorf("refused decision got id %d", d.ID)
				}
			})
		}
		if n := count(t, db, "sync_decisions"); n != 0 {
			t.Fatalf("%d decisions stored after refusals", n)
		}
	})
}

func TestWriteBatchIsAllOrNothing(t *testing.T) {
	t.Parallel()
	storagetest.Each(t, func(t *testing.T, db *gorm.DB) {
		s, _ := newStore(t, db, nil)
		batch := []*logs.Decision{decision(t0, nil), decision(t0, func(d *logs.Decision) { d.Reason = "nope" }), decision(t0, nil)}
		err := s.WriteBatch(context.Background(), batch)
		if !errors.Is(err, logs.ErrInvalidDecision) || !strings.Contains(err.Error(), "decision 2 of 3") {
			t.Fatalf("err = %v, want the second decision named", err)
		}
		if n := count(t, db, "sync_decisions"); n != 0 {
			t.Fatalf("%d decisions stored from a refused batch", n)
		}
		var many []*logs.Decision
		for i := range 2500 {
			many = append(many, decision(t0.Add(time.Duration(i)*time.Millisecond), func(d *logs.Decision) {
				d.BusinessKeys = []logs.BusinessKey{{Name: "mrn", Value: "m"}}
			}))
		}
		write(t, s, many...)
		seen := map[int64]bool{}
		for _, d := range many {
			if d.ID == 0 || seen[d.ID] {
				t.Fatalf("batch ids not unique and set: %d", d.ID)
			}
			seen[d.ID] = true
		}
		if n := count(t, db, "sync_decisions"); n != 2500 {
			t.Fatalf("stored %d decisions, want 2500", n)
		}
		if n := count(t, db, "sync_decision_keys"); n != 2500 {
			t.Fatalf("stored %d key hashes, want 2500", n)
		}
		got, err := s.Get(context.Background(), many[1234].ID)
		if err != nil || got.MessageID != many[1234].MessageID {
			t.Fatalf("Get of batch member = %+v, %v: ids were not assigned in order", got, err)
		}
	})
}
