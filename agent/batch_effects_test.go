package agent

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"

	"gorm.io/gorm"

	"github.com/fhirsync/fhirsync/logs"
	"github.com/fhirsync/fhirsync/queues"
	"github.com/fhirsync/fhirsync/queues/embedded"
	"github.com/fhirsync/fhirsync/storage"
	"github.com/fhirsync/fhirsync/storage/storagetest"
)

// effectsEnv is a sync log, a queue and a running group-commit writer on
// one database.
type effectsEnv struct {
	db    *gorm.DB
	store *logs.Store
	q     *embedded.Queue
	b     *batchWriter
}

func newEffectsEnv(t *testing.T, db *gorm.DB, lock time.Duration) *effectsEnv {
	t.Helper()
	store, err := logs.New(db, logs.Config{KeySecret: "c2VjcmV0LXNlY3JldC1zZWNyZXQ="}, nil)
	if err != nil {
		t.Fatal(err)
	}
	q, err := embedded.New(db, "effects", embedded.Options{LockDuration: lock})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = q.Close(context.Background()) })
	b := newBatchWriter(store, 16, 20*time.Millisecond, applyEffects)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { b.run(ctx); close(done) }()
	t.Cleanup(func() { cancel(); <-done })
	return &effectsEnv{db: db, store: store, q: q, b: b}
}

// receive sends n messages and receives them all.
func (e *effectsEnv) receive(t *testing.T, n int) []*queues.Received {
	t.Helper()
	ctx := context.Background()
	for i := range n {
		if err := e.q.Send(ctx, queues.Message{ID: fmt.Sprintf("m%d-%d", i, time.Now().UnixNano()), Body: []byte(`{}`)}); err != nil {
			t.Fatal(err)
		}
	}
	var got []*queues.Received
	for len(got) < n {
		ms, err := e.q.Receive(ctx, n-len(got), time.Second)
		if err != nil || len(ms) == 0 {
			t.Fatalf("received %d of %d: %v", len(got), n, err)
		}
		got = append(got, ms...)
	}
	return got
}

func decisionFor(m *queues.Received) *logs.Decision {
	return &logs.Decision{MessageID: m.ID, Direction: logs.FHIRToCRM, Outcome: logs.OutcomeSent, Reason: "created",
		Source: logs.Ref{Type: "Patient", ID: "p-" + m.ID}}
}

func (e *effectsEnv) decided(t *testing.T, m *queues.Received) bool {
	t.Helper()
	page, err := e.store.Search(context.Background(), logs.Filter{MessageID: m.ID}, "", 5)
	if err != nil {
		t.Fatal(err)
	}
	return len(page.Decisions) == 1
}

func TestGroupCommitRecordsEffectsWithTheDecision(t *testing.T) {
	t.Parallel()
	storagetest.Each(t, func(t *testing.T, db *gorm.DB) {
		e := newEffectsEnv(t, db, time.Minute)
		ms := e.receive(t, 3)
		ctx := context.Background()
		ow := newOwnWrites(db)
		us := make([]*unit, len(ms))
		for i, m := range ms {
			us[i] = &unit{d: decisionFor(m), complete: m, q: e.q,
				link: &link{EntityMap: "patient", FHIRType: "Patient", FHIRID: fmt.Sprintf("p%d", i), CRMEntity: "contact", CRMID: fmt.Sprintf("c%d", i), FHIRVersion: "1"},
				own:  &ownWrite{Side: "crm", RType: "contact", RID: fmt.Sprintf("c%d", i), Version: "7", WrittenAt: time.Now().UTC()}}
		}
		var wg sync.WaitGroup
		errs := make([]error, len(us))
		for i, u := range us {
			wg.Go(func() { errs[i] = e.b.commit(ctx, u) })
		}
		wg.Wait()
		lk := links{db: db}
		for i, u := range us {
			if errs[i] != nil {
				t.Fatalf("unit %d: %v", i, errs[i])
			}
			if !u.settled || u.lockLost {
				t.Errorf("unit %d: settled %v, lock lost %v; want settled with its decision", i, u.settled, u.lockLost)
			}
			if !e.decided(t, ms[i]) {
				t.Errorf("unit %d: no decision recorded", i)
			}
			l, err := lk.byFHIR(ctx, "patient", fmt.Sprintf("p%d", i))
			if err != nil || l.CRMID != fmt.Sprintf("c%d", i) {
				t.Errorf("unit %d: link %+v, %v", i, l, err)
			}
			own, err := ow.isOwn(ctx, "crm", "contact", fmt.Sprintf("c%d", i), "7")
			if err != nil || !own {
				t.Errorf("unit %d: own write not recorded (%v, %v)", i, own, err)
			}
		}
		d, err := e.q.Depth(ctx)
		if err != nil || d.Active != 0 {
			t.Fatalf("completed messages still on the queue: %+v, %v", d, err)
		}
	})
}

func TestGroupCommitKeepsTheDecisionWhenALockExpired(t *testing.T) {
	t.Parallel()
	storagetest.Each(t, func(t *testing.T, db *gorm.DB) {
		e := newEffectsEnv(t, db, 300*time.Millisecond)
		ms := e.receive(t, 1)
		time.Sleep(400 * time.Millisecond) // the lock runs out
		u := &unit{d: decisionFor(ms[0]), complete: ms[0], q: e.q}
		if err := e.b.commit(context.Background(), u); err != nil {
			t.Fatal(err)
		}
		if !u.settled || !u.lockLost {
			t.Fatalf("settled %v, lock lost %v; want the completion tried and the lost lock reported", u.settled, u.lockLost)
		}
		if !e.decided(t, ms[0]) {
			t.Fatal("the decision was not recorded")
		}
		again, err := e.q.Receive(context.Background(), 1, 2*time.Second)
		if err != nil || len(again) != 1 || again[0].ID != ms[0].ID {
			t.Fatalf("the message whose lock expired is not delivered again: %v, %v", again, err)
		}
	})
}

func TestGroupCommitWritesTheDecisionAloneWhenItsEffectsFail(t *testing.T) {
	t.Parallel()
	storagetest.Each(t, func(t *testing.T, db *gorm.DB) {
		e := newEffectsEnv(t, db, time.Minute)
		ms := e.receive(t, 2)
		// side must be fhir or crm: the schema refuses this own write.
		bad := &unit{d: decisionFor(ms[0]), complete: ms[0], q: e.q,
			own: &ownWrite{Side: "elsewhere", RType: "contact", RID: "c1", Version: "1", WrittenAt: time.Now().UTC()}}
		good := &unit{d: decisionFor(ms[1]), complete: ms[1], q: e.q}
		var wg sync.WaitGroup
		var errBad, errGood error
		wg.Go(func() { errBad = e.b.commit(context.Background(), bad) })
		wg.Go(func() { errGood = e.b.commit(context.Background(), good) })
		wg.Wait()
		if errBad != nil || errGood != nil {
			t.Fatalf("commit: %v, %v", errBad, errGood)
		}
		if !e.decided(t, ms[0]) || !e.decided(t, ms[1]) {
			t.Fatal("a decision is missing")
		}
		if bad.settled {
			t.Error("the unit whose effects failed reports its message completed")
		}
		if !good.settled {
			t.Error("the good unit was not completed with its decision")
		}
		// The pool settles the bad unit's message itself; it is still locked.
		if err := e.q.Complete(context.Background(), ms[0]); err != nil {
			t.Fatalf("the message of the unit whose effects failed is not left to the pool: %v", err)
		}
	})
}

func TestSavedLinksRepointACRMRecord(t *testing.T) {
	t.Parallel()
	storagetest.Each(t, func(t *testing.T, db *gorm.DB) {
		ctx := context.Background()
		save := func(ls ...link) {
			t.Helper()
			if err := db.Transaction(func(tx *gorm.DB) error { return saveLinksTx(tx, ls) }); err != nil {
				t.Fatal(err)
			}
		}
		l := func(fhirID, crmID, v string) link {
			return link{EntityMap: "patient", FHIRType: "Patient", FHIRID: fhirID, CRMEntity: "contact", CRMID: crmID, FHIRVersion: v}
		}
		save(l("a", "x", "1"), l("b", "y", "1"))
		// The CRM record x is now paired with FHIR c, and a's link moves on.
		save(l("c", "x", "1"), l("b", "y", "2"))
		lk := links{db: db}
		if _, err := lk.byFHIR(ctx, "patient", "a"); !errors.Is(err, errNoLink) {
			t.Errorf("the old pairing of x survived: %v", err)
		}
		if got, err := lk.byCRM(ctx, "patient", "x"); err != nil || got.FHIRID != "c" {
			t.Errorf("x is paired with %q (%v), want c", got.FHIRID, err)
		}
		if got, err := lk.byFHIR(ctx, "patient", "b"); err != nil || got.FHIRVersion != "2" {
			t.Errorf("b's link was not refreshed: %+v, %v", got, err)
		}
		// FHIR b is now paired with another CRM record: y loses its link.
		save(l("b", "z", "3"))
		if got, err := lk.byFHIR(ctx, "patient", "b"); err != nil || got.CRMID != "z" || got.FHIRVersion != "3" {
			t.Errorf("b was not re-paired with z: %+v, %v", got, err)
		}
		if _, err := lk.byCRM(ctx, "patient", "y"); !errors.Is(err, errNoLink) {
			t.Errorf("y kept a link after b moved to z: %v", err)
		}
		// A batch of more links than one statement holds: even FHIR ids
		// refresh their pairing, odd ones move to a new CRM record.
		var first, second []link
		for i := range 21 {
			first = append(first, l(fmt.Sprintf("f%02d", i), fmt.Sprintf("k%02d", i), "1"))
			crm := fmt.Sprintf("k%02d", i)
			if i%2 == 1 {
				crm = fmt.Sprintf("n%02d", i)
			}
			second = append(second, l(fmt.Sprintf("f%02d", i), crm, "2"))
		}
		save(first...)
		save(second...)
		for _, want := range second {
			if got, err := lk.byFHIR(ctx, "patient", want.FHIRID); err != nil || got.CRMID != want.CRMID || got.FHIRVersion != "2" {
				t.Errorf("%s: link %+v, %v; want paired with %s at version 2", want.FHIRID, got, err, want.CRMID)
			}
		}
		for i := 1; i < 21; i += 2 {
			if _, err := lk.byCRM(ctx, "patient", fmt.Sprintf("k%02d", i)); !errors.Is(err, errNoLink) {
				t.Errorf("k%02d kept a link after its FHIR record moved on: %v", i, err)
			}
		}
	})
}

// A refresh of an existing pairing updates the row in place on SQLite (its
// rowid stays), instead of deleting and inserting it again.
func TestRefreshedLinkIsUpdatedInPlace(t *testing.T) {
	t.Parallel()
	db := storagetest.Open(t, storage.SQLite)
	save := func(v string) {
		t.Helper()
		l := link{EntityMap: "patient", FHIRType: "Patient", FHIRID: "a", CRMEntity: "contact", CRMID: "x", FHIRVersion: v}
		if err := db.Transaction(func(tx *gorm.DB) error { return saveLinksTx(tx, []link{l}) }); err != nil {
			t.Fatal(err)
		}
	}
	rowid := func() (id int64, version string) {
		t.Helper()
		if err := db.Raw(`SELECT rowid, fhir_version FROM agent_links WHERE entity_map = 'patient' AND fhir_id = 'a'`).Row().Scan(&id, &version); err != nil {
			t.Fatal(err)
		}
		return id, version
	}
	save("1")
	before, _ := rowid()
	save("2")
	after, v := rowid()
	if v != "2" {
		t.Fatalf("fhir_version %q after the refresh, want 2", v)
	}
	if after != before {
		t.Errorf("the refresh replaced the row (rowid %d, then %d) instead of updating it", before, after)
	}
}
