package logs_test

import (
	"context"
	"testing"
	"time"

	"gorm.io/gorm"

	"github.com/fhirsync/fhirsync/logs"
	"github.com/fhirsync/fhirsync/storage/storagetest"
)

func failed(at time.Time, msgID, srcID, mapName string, reason logs.ReasonCode, te *logs.TargetError) *logs.Decision {
	return decision(at, func(d *logs.Decision) {
		d.MessageID, d.Source.ID, d.EntityMap = msgID, srcID, mapName
		d.Outcome, d.Reason, d.ChangedFields = logs.OutcomeFailed, reason, nil
		d.Attempts = []logs.Attempt{{At: at, ErrorClass: "http_400", TargetError: te}}
	})
}

// TestRetriesFoldIntoOneDecision: each delivery's decision supersedes the
// failed one before it, so a message retried twice and then sent is one
// decision listing three attempts, each with its class and code.
func TestRetriesFoldIntoOneDecision(t *testing.T) {
	t.Parallel()
	storagetest.Each(t, func(t *testing.T, db *gorm.DB) {
		s, _ := newStore(t, db, nil)
		ctx := context.Background()
		te := &logs.TargetError{Status: 429, Code: "0x80072322", Message: "Number of requests exceeded the limit of '…'."}
		first := failed(t0, "m1", "p1", "patient-contact", logs.ReasonThrottled, te)
		write(t, s, first)
		second := failed(t0.Add(time.Second), "m1", "p1", "patient-contact", logs.ReasonThrottled, te)
		second.Attempts = append(first.Attempts, second.Attempts...)
		second.Supersedes = first.ID
		write(t, s, second)
		// Another message's failed decision is never removed, whatever id
		// a decision names.
		other := failed(t0, "m2", "p2", "patient-contact", logs.ReasonUnavailable, nil)
		write(t, s, other)
		final := decision(t0.Add(2*time.Second), func(d *logs.Decision) {
			d.MessageID, d.Source.ID = "m1", "p1"
			d.Attempts = append(append([]logs.Attempt{}, second.Attempts...), logs.Attempt{At: t0.Add(2 * time.Second)})
			d.Supersedes = second.ID
		})
		write(t, s, final)
		stray := decision(t0.Add(3*time.Second), func(d *logs.Decision) { d.MessageID, d.Supersedes = "m3", other.ID })
		write(t, s, stray)

		page, err := s.Search(ctx, logs.Filter{MessageID: "m1"}, "", 10)
		if err != nil {
			t.Fatal(err)
		}
		if len(page.Decisions) != 1 {
			t.Fatalf("message m1 has %d decisions, want 1 (retries folded): %+v", len(page.Decisions), page.Decisions)
		}
		d := page.Decisions[0]
		if d.ID != final.ID || d.Outcome != logs.OutcomeSent || len(d.Attempts) != 3 {
			t.Fatalf("decision = id %d %s with %d attempts, want id %d sent with 3", d.ID, d.Outcome, len(d.Attempts), final.ID)
		}
		for i, a := range d.Attempts[:2] {
			if a.ErrorClass != "http_400" || a.TargetError == nil || a.Code != "0x80072322" || a.Status != 429 {
				t.Errorf("attempt %d = %+v, want class http_400 and code 0x80072322", i+1, a)
			}
		}
		if d.Attempts[2].TargetError != nil || d.LastError() != nil {
			t.Errorf("the successful last attempt carries an error: %+v", d.Attempts[2])
		}
		if _, err := s.Get(ctx, other.ID); err != nil {
			t.Errorf("another message's failed decision was removed: %v", err)
		}
	})
}

// TestFailingNow groups the records whose latest decision failed by
// reason and map, counts them, and names the endpoint's code; a record
// that failed and was then sent is not failing.
func TestFailingNow(t *testing.T) {
	t.Parallel()
	storagetest.Each(t, func(t *testing.T, db *gorm.DB) {
		s, _ := newStore(t, db, nil)
		ctx := context.Background()
		length := &logs.TargetError{Status: 400, Code: "0x80044331", Message: "The length of the 'lastname' attribute of the 'contact' entity exceeded the maximum allowed length of '…'."}
		missing := &logs.TargetError{Status: 400, Code: "0x80040217", Message: "contact With Id = … Does Not Exist"}
		dead := func(d *logs.Decision) *logs.Decision { d.Outcome = logs.OutcomeDeadLettered; return d }
		write(t, s,
			dead(failed(t0, "a1", "p1", "patient-contact", logs.ReasonTargetRejected, length)),
			dead(failed(t0.Add(time.Second), "a2", "p2", "patient-contact", logs.ReasonTargetRejected, length)),
			dead(failed(t0.Add(2*time.Second), "a3", "p3", "patient-contact", logs.ReasonTargetRejected, missing)),
			failed(t0.Add(3*time.Second), "a4", "e1", "encounter", logs.ReasonMissingReference, nil),
			// p4 failed and then went through: not failing now.
			failed(t0.Add(4*time.Second), "a5", "p4", "patient-contact", logs.ReasonTargetRejected, length),
			decision(t0.Add(5*time.Second), func(d *logs.Decision) { d.MessageID, d.Source.ID = "a6", "p4" }),
			// p5 was sent and fails now.
			decision(t0.Add(6*time.Second), func(d *logs.Decision) { d.MessageID, d.Source.ID = "a7", "p5" }),
			failed(t0.Add(7*time.Second), "a8", "p5", "patient-contact", logs.ReasonUnavailable, nil),
		)
		got, err := s.FailingNow(ctx, logs.FailureFilter{})
		if err != nil {
			t.Fatal(err)
		}
		if got.Records != 5 || len(got.Groups) != 3 {
			t.Fatalf("FailingNow = %d records in %d groups, want 5 in 3: %+v", got.Records, len(got.Groups), got.Groups)
		}
		g := got.Groups[0]
		if g.Reason != logs.ReasonTargetRejected || g.EntityMap != "patient-contact" || g.Records != 3 || g.DeadLettered != 3 {
			t.Fatalf("first group = %+v, want target_rejected/patient-contact with 3 dead-lettered records", g)
		}
		if len(g.Errors) != 2 || g.Errors[0].Code != "0x80044331" || g.Errors[0].Records != 2 || g.Errors[1].Code != "0x80040217" || g.Errors[1].Records != 1 {
			t.Errorf("errors = %+v, want 0x80044331 ×2 then 0x80040217 ×1", g.Errors)
		}
		if g.Errors[0].Message != length.Message || g.Examples[0].Source.ID != "p3" {
			t.Errorf("group detail = %+v / %+v", g.Errors[0], g.Examples)
		}
		for _, g := range got.Groups {
			for _, e := range g.Examples {
				if e.Source.ID == "p4" {
					t.Errorf("p4 was sent after it failed but is listed as failing")
				}
			}
		}
		only, err := s.FailingNow(ctx, logs.FailureFilter{Reason: logs.ReasonMissingReference})
		if err != nil {
			t.Fatal(err)
		}
		if len(only.Groups) != 1 || only.Groups[0].EntityMap != "encounter" || only.Groups[0].DeadLettered != 0 {
			t.Errorf("missing_reference only = %+v", only.Groups)
		}
	})
}

// TestCaptureKeepsTheFullErrorMessage: the endpoint's full message is
// sealed with the payload capture and opened only for the PHI permission.
func TestCaptureKeepsTheFullErrorMessage(t *testing.T) {
	t.Parallel()
	storagetest.Each(t, func(t *testing.T, db *gorm.DB) {
		s, _ := newStore(t, db, captureOn("k1", keyA, nil))
		ctx := context.Background()
		d := failed(t0, "m1", "p1", "patient-contact", logs.ReasonTargetRejected, &logs.TargetError{Status: 400, Code: "0x80044331", Message: "value '…' too long"})
		d.Snapshots = &logs.Snapshots{Error: []byte("value 'Annabelle-Josephine' too long")}
		write(t, s, d)
		c, err := s.ReadCapture(ctx, user{name: "ann", phi: true}, d.ID)
		if err != nil {
			t.Fatal(err)
		}
		if string(c.Snapshots.Error) != "value 'Annabelle-Josephine' too long" || c.Snapshots.Source != nil {
			t.Errorf("capture = %+v", c.Snapshots)
		}
		if _, err := s.ReadCapture(ctx, user{name: "bob"}, d.ID); err == nil {
			t.Error("a user without the PHI permission read the full message")
		}
	})
}
