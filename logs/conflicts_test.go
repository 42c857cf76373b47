package logs_test

import (
	"bytes"
	"context"
	"encoding/csv"
	"encoding/json"
	"errors"
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"

	"gorm.io/gorm"

	"github.com/fhirsync/fhirsync/logs"
	"github.com/fhirsync/fhirsync/storage/storagetest"
)

func TestDecisionConflictsRoundTrip(t *testing.T) {
	t.Parallel()
	storagetest.Each(t, func(t *testing.T, db *gorm.DB) {
		ctx := context.Background()
		s, _ := newStore(t, db, nil)
		conflicts := []logs.Conflict{
			{Attribute: "birthDate", Policy: logs.PolicyHold, Held: true},
			{Attribute: "phone", Policy: logs.PolicyFHIRWins, Overwritten: logs.SideCRM},
			{Attribute: "email", Policy: logs.PolicyCRMWins, Tie: true, Deferred: true},
		}
		held := decision(t0, func(d *logs.Decision) {
			d.Outcome, d.Reason = logs.OutcomeHeld, logs.ReasonConflictHeld
			d.Conflicts = conflicts
			d.ChangedFields = []string{"telephone1"}
		})
		plain := decision(t0.Add(time.Second), nil)
		deleted := decision(t0.Add(2*time.Second), func(d *logs.Decision) {
			d.Outcome, d.Reason = logs.OutcomeSent, logs.ReasonDeactivated
			d.Conflicts = []logs.Conflict{{Policy: logs.PolicyLastWriterWins, Overwritten: logs.SideCRM}}
		})
		write(t, s, held, plain, deleted)

		got, err := s.Get(ctx, held.ID)
		if err != nil {
			t.Fatal(err)
		}
		if got.Outcome != logs.OutcomeHeld || !reflect.DeepEqual(got.Conflicts, conflicts) {
			t.Fatalf("Get conflicts = %s %+v, want held %+v", got.Outcome, got.Conflicts, conflicts)
		}
		if got, _ := s.Get(ctx, plain.ID); got.Conflicts != nil {
			t.Fatalf("a decision without conflicts read back %+v", got.Conflicts)
		}

		page, err := s.Search(ctx, logs.Filter{Conflicts: true}, "", 10)
		if err != nil {
			t.Fatal(err)
		}
		if !slices.Equal(ids(page.Decisions), []int64{deleted.ID, held.ID}) {
			t.Fatalf("Search(Conflicts) = %v, want %v", ids(page.Decisions), []int64{deleted.ID, held.ID})
		}
		if !reflect.DeepEqual(page.Decisions[1].Conflicts, conflicts) {
			t.Fatalf("Search returned conflicts %+v", page.Decisions[1].Conflicts)
		}
		page, err = s.Search(ctx, logs.Filter{Outcome: logs.OutcomeHeld}, "", 10)
		if err != nil || !slices.Equal(ids(page.Decisions), []int64{held.ID}) {
			t.Fatalf("Search(outcome held) = %v, %v", ids(page.Decisions), err)
		}

		var buf bytes.Buffer
		if _, err := s.Export(ctx, &buf, logs.CSV, logs.Filter{}); err != nil {
			t.Fatal(err)
		}
		recs, err := csv.NewReader(&buf).ReadAll()
		if err != nil {
			t.Fatal(err)
		}
		col := slices.Index(recs[0], "conflicts")
		if col < 0 {
			t.Fatalf("csv header %v lacks conflicts", recs[0])
		}
		// Newest first: deleted, plain, held.
		if recs[1][col] != "*:last-writer-wins:overwritten=crm" || recs[2][col] != "" ||
			recs[3][col] != "birthDate:hold:held;phone:fhir-wins:overwritten=crm;email:crm-wins:deferred,tie" {
			t.Fatalf("csv conflicts cells = %q, %q, %q", recs[1][col], recs[2][col], recs[3][col])
		}
		buf.Reset()
		if _, err := s.Export(ctx, &buf, logs.NDJSON, logs.Filter{Outcome: logs.OutcomeHeld}); err != nil {
			t.Fatal(err)
		}
		var line struct {
			Conflicts []logs.Conflict `json:"conflicts"`
		}
		if err := json.Unmarshal(buf.Bytes(), &line); err != nil || !reflect.DeepEqual(line.Conflicts, conflicts) {
			t.Fatalf("ndjson = %s (%v)", buf.String(), err)
		}
	})
}

func TestWriteRefusesInvalidConflicts(t *testing.T) {
	t.Parallel()
	s, _ := newStore(t, storagetest.Open(t, "sqlite"), nil)
	for _, tc := range []struct {
		name string
		c    logs.Conflict
		want string
	}{
		{"unknown policy", logs.Conflict{Attribute: "a", Policy: "newest"}, `policy "newest"`},
		{"no policy", logs.Conflict{Attribute: "a"}, `policy ""`},
		{"unknown side", logs.Conflict{Attribute: "a", Policy: "hold", Overwritten: "both"}, `overwritten "both"`},
		{"held and overwritten", logs.Conflict{Attribute: "a", Policy: "hold", Held: true, Overwritten: "crm"}, "more than one"},
		{"held and deferred", logs.Conflict{Attribute: "a", Policy: "hold", Held: true, Deferred: true}, "more than one"},
		{"long attribute", logs.Conflict{Attribute: strings.Repeat("a", 300), Policy: "hold"}, "attribute is longer"},
	} {
		d := decision(t0, func(d *logs.Decision) { d.Conflicts = []logs.Conflict{{Attribute: "ok", Policy: "crm-wins"}, tc.c} })
		err := s.Write(context.Background(), d)
		if !errors.Is(err, logs.ErrInvalidDecision) || !strings.Contains(err.Error(), "conflict 2: ") || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: err = %v, want ErrInvalidDecision naming conflict 2 and %q", tc.name, err, tc.want)
		}
	}
}

// held builds the conflict the agent would hold for attribute attr of
// Patient/p1 ↔ contact/c1.
func held(attr string, fhirHash, crmHash string) logs.HeldConflict {
	return logs.HeldConflict{
		EntityMap: "patient-contact", FHIRType: "Patient", FHIRID: "p1", CRMEntity: "contact", CRMID: "c1",
		Attribute: attr, MessageID: "msg-1", FHIRHash: []byte(fhirHash), CRMHash: []byte(crmHash),
		FHIRChanged: true, CRMChanged: true, HeldAt: t0,
	}
}

func hold(t *testing.T, s *logs.Store, c logs.HeldConflict, fv, cv any) {
	t.Helper()
	err := s.Database().Transaction(func(tx *gorm.DB) error { return s.HoldTx(tx, c, fv, cv) })
	if err != nil {
		t.Fatalf("HoldTx: %v", err)
	}
}

func settle(t *testing.T, s *logs.Store, id int64, status string) error {
	t.Helper()
	return s.Database().Transaction(func(tx *gorm.DB) error { return s.SettleConflictTx(tx, id, status) })
}

// onlyPending returns the id of the pending conflict of attribute attr of
// patient-contact p1.
func onlyPending(t *testing.T, s *logs.Store, attr string) int64 {
	t.Helper()
	cs, err := s.ConflictsFor(context.Background(), "patient-contact", "p1")
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range cs {
		if c.Attribute == attr {
			return c.ID
		}
	}
	t.Fatalf("no pending conflict of %s", attr)
	return 0
}

func onlyConflict(t *testing.T, s *logs.Store) logs.HeldConflict {
	t.Helper()
	cs, err := s.ConflictsFor(context.Background(), "patient-contact", "p1")
	if err != nil {
		t.Fatal(err)
	}
	if len(cs) != 1 {
		t.Fatalf("ConflictsFor = %+v, want one", cs)
	}
	return cs[0]
}

func TestHeldConflictLifecycle(t *testing.T) {
	t.Parallel()
	storagetest.Each(t, func(t *testing.T, db *gorm.DB) {
		ctx := context.Background()
		s, _ := newStore(t, db, nil)
		logs.SetClock(s, func() time.Time { return t0.Add(time.Hour) })

		hold(t, s, held("birthDate", "f1", "c1"), "1990-01-01", "1991-01-01")
		c := onlyConflict(t, s)
		want := held("birthDate", "f1", "c1")
		want.ID, want.Status = c.ID, logs.ConflictOpen
		if !reflect.DeepEqual(c, want) {
			t.Fatalf("held conflict =\n%+v\nwant\n%+v", c, want)
		}
		if c.ValuesKept {
			t.Fatal("values kept without a capture key")
		}
		if n, err := s.OpenConflictCount(ctx); err != nil || n != 1 {
			t.Fatalf("OpenConflictCount = %d, %v", n, err)
		}
		if _, _, err := s.ConflictValues(ctx, user{"alice", true}, c.ID); !errors.Is(err, logs.ErrValuesNotKept) {
			t.Fatalf("ConflictValues without a key: err = %v, want ErrValuesNotKept", err)
		}

		// Held again (another message, the CRM side changed again): the same row.
		again := held("birthDate", "f1", "c2")
		again.MessageID, again.HeldAt, again.FHIRChanged = "msg-2", t0.Add(time.Minute), false
		hold(t, s, again, nil, nil)
		c2 := onlyConflict(t, s)
		if c2.ID != c.ID || c2.MessageID != "msg-2" || string(c2.CRMHash) != "c2" || c2.FHIRChanged || !c2.HeldAt.Equal(t0.Add(time.Minute)) {
			t.Fatalf("held again = %+v", c2)
		}
		if n := count(t, db, "held_conflicts"); n != 1 {
			t.Fatalf("%d rows after holding the same attribute twice, want 1", n)
		}

		// A second attribute and a delete conflict of another record.
		hold(t, s, held("phone", "f", "c"), nil, nil)
		del := held("", "f", "c")
		del.FHIRID, del.DeletedSide = "p2", logs.SideCRM
		hold(t, s, del, nil, nil)

		if err := s.ResolveConflict(ctx, c.ID, "both", "alice"); !errors.Is(err, logs.ErrInvalidConflict) {
			t.Fatalf("resolve with take=both: err = %v", err)
		}
		if err := s.ResolveConflict(ctx, c.ID, logs.SideCRM, ""); !errors.Is(err, logs.ErrInvalidConflict) {
			t.Fatalf("resolve without an actor: err = %v", err)
		}
		if err := s.ResolveConflict(ctx, 9999, logs.SideCRM, "alice"); !errors.Is(err, logs.ErrNotFound) {
			t.Fatalf("resolve a missing conflict: err = %v", err)
		}
		if err := s.ResolveConflict(ctx, c.ID, logs.SideCRM, "alice"); err != nil {
			t.Fatal(err)
		}
		c3, _ := s.Conflict(ctx, c.ID)
		if c3.Status != logs.ConflictResolved || c3.Resolution != "crm" || c3.ResolvedBy != "alice" || !c3.ResolvedAt.Equal(t0.Add(time.Hour)) {
			t.Fatalf("resolved conflict = %+v", c3)
		}
		err := s.ResolveConflict(ctx, c.ID, logs.SideFHIR, "bob")
		if !errors.Is(err, logs.ErrConflictState) || !strings.Contains(err.Error(), "resolved (alice took the CRM side)") {
			t.Fatalf("resolving twice: err = %v", err)
		}
		audit, err := s.Audit(ctx, logs.AuditFilter{Action: logs.AuditResolveConflict}, "", 10)
		if err != nil || len(audit.Entries) != 1 {
			t.Fatalf("audit of resolutions = %+v, %v", audit, err)
		}
		if e := audit.Entries[0]; e.Actor != "alice" || e.ObjectType != "held_conflict" || e.ObjectID != itoa(c.ID) ||
			e.After != "resolved: take the CRM value of birthDate of patient-contact Patient/p1" {
			t.Fatalf("audit entry = %+v", e)
		}

		// Held again with the same hashes: the resolution stands.
		hold(t, s, again, nil, nil)
		if c4, _ := s.Conflict(ctx, c.ID); c4.Status != logs.ConflictResolved || c4.Resolution != "crm" {
			t.Fatalf("held again unchanged after resolution = %+v", c4)
		}
		resolved, err := s.ResolvedConflicts(ctx, 10)
		if err != nil || len(resolved) != 1 || resolved[0].ID != c.ID {
			t.Fatalf("ResolvedConflicts = %+v, %v", resolved, err)
		}
		// Held again with a value changed since the person chose: open again.
		changed := again
		changed.FHIRHash = []byte("f9")
		hold(t, s, changed, nil, nil)
		if c5, _ := s.Conflict(ctx, c.ID); c5.Status != logs.ConflictOpen || c5.Resolution != "" || c5.ResolvedBy != "" || !c5.ResolvedAt.IsZero() {
			t.Fatalf("held again with a changed value after resolution = %+v", c5)
		}

		if err := settle(t, s, c.ID, logs.ConflictApplied); !errors.Is(err, logs.ErrConflictState) {
			t.Fatalf("applying an open conflict: err = %v", err)
		}
		if err := s.ResolveConflict(ctx, c.ID, logs.SideFHIR, "bob"); err != nil {
			t.Fatal(err)
		}
		if err := settle(t, s, c.ID, logs.ConflictApplied); err != nil {
			t.Fatal(err)
		}
		if c6, _ := s.Conflict(ctx, c.ID); c6.Status != logs.ConflictApplied || c6.Resolution != "fhir" || !c6.AppliedAt.Equal(t0.Add(time.Hour)) {
			t.Fatalf("applied conflict = %+v", c6)
		}
		if err := settle(t, s, c.ID, logs.ConflictApplied); !errors.Is(err, logs.ErrConflictState) {
			t.Fatalf("applying twice: err = %v", err)
		}
		if err := settle(t, s, c.ID, "open"); !errors.Is(err, logs.ErrInvalidConflict) {
			t.Fatalf("settling as open: err = %v", err)
		}
		// Once applied, the attribute can be held anew, in a new row.
		hold(t, s, held("birthDate", "f3", "c3"), nil, nil)
		pendingIDs := func(status string) []int64 {
			cs, err := s.Conflicts(ctx, status, 0, 0)
			if err != nil {
				t.Fatal(err)
			}
			var out []int64
			for _, c := range cs {
				out = append(out, c.ID)
			}
			return out
		}
		all := pendingIDs("")
		if len(all) != 3 || slices.Contains(all, c.ID) {
			t.Fatalf("pending conflicts = %v: want three, without the applied %d", all, c.ID)
		}
		if got := pendingIDs(logs.ConflictApplied); !slices.Equal(got, []int64{c.ID}) {
			t.Fatalf("applied conflicts = %v", got)
		}
		page, err := s.Conflicts(ctx, "", all[0], 1)
		if err != nil || len(page) != 1 || page[0].ID != all[1] {
			t.Fatalf("second page of one = %+v, %v", page, err)
		}
		if _, err := s.Conflicts(ctx, "closed", 0, 0); !errors.Is(err, logs.ErrBadFilter) {
			t.Fatalf("unknown status: err = %v", err)
		}

		// The delete conflict: keeping the record is taking the other side.
		dc, err := s.ConflictsFor(ctx, "patient-contact", "p2")
		if err != nil || len(dc) != 1 || !dc[0].DeleteConflict() || dc[0].DeletedSide != "crm" {
			t.Fatalf("delete conflict = %+v, %v", dc, err)
		}
		if err := s.ResolveConflict(ctx, dc[0].ID, logs.SideFHIR, "alice"); err != nil {
			t.Fatal(err)
		}
		if d, _ := s.Conflict(ctx, dc[0].ID); d.AppliesDelete() {
			t.Fatal("taking the FHIR side of a CRM delete applies the delete")
		}
		audit, _ = s.Audit(ctx, logs.AuditFilter{Action: logs.AuditResolveConflict, ObjectID: itoa(dc[0].ID)}, "", 10)
		if len(audit.Entries) != 1 || !strings.HasPrefix(audit.Entries[0].After, "resolved: keep the record (deleted in CRM)") {
			t.Fatalf("audit of the delete resolution = %+v", audit.Entries)
		}
		// Superseded from open.
		if err := settle(t, s, all[2], logs.ConflictSuperseded); err == nil {
			if c, _ := s.Conflict(ctx, all[2]); c.Status != logs.ConflictSuperseded {
				t.Fatalf("superseded conflict = %+v", c)
			}
		} else {
			t.Fatal(err)
		}
		if n, _ := s.OpenConflictCount(ctx); n != 1 {
			t.Fatalf("OpenConflictCount = %d, want 1 (phone)", n)
		}
	})
}

func TestHoldTxRefusesInvalidConflictsAndRollsBack(t *testing.T) {
	t.Parallel()
	storagetest.Each(t, func(t *testing.T, db *gorm.DB) {
		s, _ := newStore(t, db, nil)
		bad := []logs.HeldConflict{
			{FHIRID: "p1", Attribute: "a"},
			{EntityMap: "m", Attribute: "a"},
			{EntityMap: "m", FHIRID: "p1"},
			{EntityMap: "m", FHIRID: "p1", DeletedSide: "both"},
			{EntityMap: "m", FHIRID: "p1", Attribute: "a", DeletedSide: "crm"},
			{EntityMap: "m", FHIRID: "p1", Attribute: "a", FHIRHash: make([]byte, 65)},
		}
		for i, c := range bad {
			err := db.Transaction(func(tx *gorm.DB) error { return s.HoldTx(tx, c, nil, nil) })
			if !errors.Is(err, logs.ErrInvalidConflict) {
				t.Errorf("conflict %d: err = %v, want ErrInvalidConflict", i, err)
			}
		}
		boom := errors.New("decision write failed")
		err := db.Transaction(func(tx *gorm.DB) error {
			if err := s.HoldTx(tx, held("phone", "f", "c"), nil, nil); err != nil {
				return err
			}
			return boom
		})
		if !errors.Is(err, boom) || count(t, db, "held_conflicts") != 0 {
			t.Fatalf("rolled back hold: err = %v, rows = %d", err, count(t, db, "held_conflicts"))
		}
	})
}

func TestConflictValuesSealedAndAudited(t *testing.T) {
	t.Parallel()
	storagetest.Each(t, func(t *testing.T, db *gorm.DB) {
		ctx := context.Background()
		s, _ := newStore(t, db, func(c *logs.Config) {
			c.Capture = logs.CaptureConfig{KeyID: "k1", Key: keyA}
		})
		const fhirCanary, crmCanary = "Canaryfhirvalue77Qx", "Canarycrmvalue78Qx"
		hold(t, s, held("name", "f", "c"), map[string]any{"given": fhirCanary}, crmCanary)
		other := held("phone", "f", "c")
		other.FHIRID = "p9"
		hold(t, s, other, nil, "+1 555")
		c := onlyConflict(t, s)
		if !c.ValuesKept {
			t.Fatal("values not kept with a capture key configured")
		}
		dump := dumpDatabase(t, db)
		if strings.Contains(dump, fhirCanary) || strings.Contains(dump, crmCanary) {
			t.Fatal("a conflict value is stored in clear")
		}

		if _, _, err := s.ConflictValues(ctx, user{"vic", false}, c.ID); !errors.Is(err, logs.ErrForbidden) {
			t.Fatalf("ConflictValues without PHI: err = %v", err)
		}
		if _, _, err := s.ConflictValues(ctx, nil, c.ID); !errors.Is(err, logs.ErrForbidden) {
			t.Fatalf("ConflictValues without a user: err = %v", err)
		}
		fv, cv, err := s.ConflictValues(ctx, user{"alice", true}, c.ID)
		if err != nil {
			t.Fatal(err)
		}
		if !reflect.DeepEqual(fv, map[string]any{"given": fhirCanary}) || cv != crmCanary {
			t.Fatalf("ConflictValues = %#v, %#v", fv, cv)
		}
		if _, _, err := s.ConflictValues(ctx, user{"alice", true}, 9999); !errors.Is(err, logs.ErrNotFound) {
			t.Fatalf("ConflictValues of a missing conflict: err = %v", err)
		}
		audit, err := s.Audit(ctx, logs.AuditFilter{ObjectType: "held_conflict"}, "", 10)
		if err != nil {
			t.Fatal(err)
		}
		var got []string
		for _, e := range audit.Entries {
			got = append(got, e.Actor+" "+e.Action)
		}
		slices.Sort(got)
		if want := []string{"alice conflict.values_view", "vic conflict.values_view_denied"}; !slices.Equal(got, want) {
			t.Fatalf("audit entries = %v, want %v", got, want)
		}

		// A sealed value moved to another conflict is refused.
		o, _ := s.ConflictsFor(ctx, "patient-contact", "p9")
		if err := db.Exec(`UPDATE held_conflicts SET crm_sealed = (SELECT crm_sealed FROM held_conflicts WHERE id = ?) WHERE id = ?`, c.ID, o[0].ID).Error; err != nil {
			t.Fatal(err)
		}
		if _, _, err := s.ConflictValues(ctx, user{"alice", true}, o[0].ID); !errors.Is(err, logs.ErrTampered) {
			t.Fatalf("moved ciphertext: err = %v, want ErrTampered", err)
		}
		// Another key cannot open them, and says so.
		s2, _ := newStore(t, db, func(c *logs.Config) { c.Capture = logs.CaptureConfig{KeyID: "k1", Key: keyB} })
		if _, _, err := s2.ConflictValues(ctx, user{"alice", true}, c.ID); !errors.Is(err, logs.ErrWrongKey) {
			t.Fatalf("wrong key: err = %v, want ErrWrongKey", err)
		}

		// Settling drops the values.
		if err := s.ResolveConflict(ctx, c.ID, logs.SideFHIR, "alice"); err != nil {
			t.Fatal(err)
		}
		if err := settle(t, s, c.ID, logs.ConflictApplied); err != nil {
			t.Fatal(err)
		}
		if c, _ := s.Conflict(ctx, c.ID); c.ValuesKept {
			t.Fatal("an applied conflict still keeps its values")
		}
		if _, _, err := s.ConflictValues(ctx, user{"alice", true}, c.ID); !errors.Is(err, logs.ErrValuesNotKept) {
			t.Fatalf("values of an applied conflict: err = %v", err)
		}
	})
}

// TestHoldTxConcurrent holds the same attribute from several transactions
// at once, as two agent processes handling both sides' notices might: every
// hold succeeds and one row remains.
func TestHoldTxConcurrent(t *testing.T) {
	t.Parallel()
	storagetest.Each(t, func(t *testing.T, db *gorm.DB) {
		s, _ := newStore(t, db, nil)
		errs := make(chan error, 6)
		for i := range 6 {
			go func() {
				c := held("birthDate", "f", string(rune('a'+i)))
				errs <- db.Transaction(func(tx *gorm.DB) error { return s.HoldTx(tx, c, nil, nil) })
			}()
		}
		for range 6 {
			if err := <-errs; err != nil {
				t.Errorf("concurrent HoldTx: %v", err)
			}
		}
		if n := count(t, db, "held_conflicts"); n != 1 {
			t.Fatalf("%d rows after concurrent holds of one attribute, want 1", n)
		}
	})
}
