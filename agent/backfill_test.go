package agent_test

import (
	"context"
	"errors"
	"log/slog"
	"net/http/httptest"
	"slices"
	"sync"
	"testing"
	"time"

	"gorm.io/gorm"

	"github.com/fhirsync/fhirsync/agent"
	"github.com/fhirsync/fhirsync/agent/crm"
	"github.com/fhirsync/fhirsync/agent/fhir"
	"github.com/fhirsync/fhirsync/logs"
	"github.com/fhirsync/fhirsync/maps"
	"github.com/fhirsync/fhirsync/maps/starter"
	"github.com/fhirsync/fhirsync/queues"
	"github.com/fhirsync/fhirsync/queues/embedded"
	"github.com/fhirsync/fhirsync/sandbox/crmserver"
	"github.com/fhirsync/fhirsync/sandbox/fhirserver"
	"github.com/fhirsync/fhirsync/sandbox/synth"
	"github.com/fhirsync/fhirsync/storage"
	"github.com/fhirsync/fhirsync/storage/storagetest"
)

const (
	bfPatients = 23
	bfContacts = 11
	bfAccounts = 4
	bfSeed     = 1
)

// backfillEnv is a published starter map set, the sandbox endpoints with
// synthetic records and the two embedded queues, with no agent consuming.
type backfillEnv struct {
	db         *gorm.DB
	fhirSrv    *fhirserver.Server
	crmSrv     *crmserver.Server
	fhir       *fhir.Client
	crm        *crm.Client
	crmAddr    string // the sandbox CRM's base URL
	maps       *maps.Store
	fhirQ      *embedded.Queue
	crmQ       *embedded.Queue
	deps       agent.BackfillDeps
	contactIDs []string
}

func newBackfillEnv(t *testing.T, db *gorm.DB, fhirOpts fhirserver.Options) *backfillEnv {
	t.Helper()
	e := &backfillEnv{db: db}
	var err error
	if e.fhirQ, err = embedded.New(db, "fhir-changes", embedded.Options{}); err != nil {
		t.Fatal(err)
	}
	if e.crmQ, err = embedded.New(db, "crm-changes", embedded.Options{}); err != nil {
		t.Fatal(err)
	}
	if e.fhirSrv, err = fhirserver.New(fhirOpts); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { e.fhirSrv.Close() })
	fhirHTTP := httptest.NewServer(e.fhirSrv)
	t.Cleanup(fhirHTTP.Close)
	if e.crmSrv, err = crmserver.New(crmserver.Options{}); err != nil {
		t.Fatal(err)
	}
	g := synth.New(bfSeed)
	if err := e.crmSrv.SeedSynth(g, bfContacts, bfAccounts); err != nil {
		t.Fatal(err)
	}
	for i := range bfContacts {
		e.contactIDs = append(e.contactIDs, g.ContactID(i))
	}
	crmHTTP := httptest.NewServer(e.crmSrv)
	t.Cleanup(crmHTTP.Close)
	e.crmAddr = crmHTTP.URL
	if e.fhir, err = fhir.New(fhir.Config{BaseURL: fhirHTTP.URL}); err != nil {
		t.Fatal(err)
	}
	if e.crm, err = crm.New(crm.Config{URL: crmHTTP.URL}); err != nil {
		t.Fatal(err)
	}
	if e.maps, err = maps.New(db, maps.Options{Logger: slog.New(slog.DiscardHandler)}); err != nil {
		t.Fatal(err)
	}
	bfPublishStarter(t, e.maps)
	e.deps = agent.BackfillDeps{DB: db, Maps: e.maps, FHIR: e.fhir, CRM: e.crm, FHIRChanges: e.fhirQ, CRMChanges: e.crmQ}
	return e
}

func bfPublishStarter(t *testing.T, ms *maps.Store) {
	t.Helper()
	doc, _, err := maps.Import(starter.YAML(), maps.CompileOptions{})
	if err != nil {
		t.Fatalf("importing the starter maps: %v", err)
	}
	ctx := context.Background()
	v, err := ms.CreateDraft(ctx, doc, "test", "starter")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := ms.Publish(ctx, v.Number, "test", "starter"); err != nil {
		t.Fatal(err)
	}
}

// bfDrain receives every message of q and returns their notices.
func bfDrain(t *testing.T, q *embedded.Queue) []queues.Notice {
	t.Helper()
	ctx := context.Background()
	var out []queues.Notice
	for {
		msgs, err := q.Receive(ctx, 100, 50*time.Millisecond)
		if err != nil {
			t.Fatal(err)
		}
		if len(msgs) == 0 {
			return out
		}
		for _, m := range msgs {
			n, err := queues.DecodeNotice(m.Body)
			if err != nil {
				t.Fatalf("message %s is not a notice: %v", m.ID, err)
			}
			out = append(out, n)
			if err := q.Complete(ctx, m); err != nil {
				t.Fatal(err)
			}
		}
	}
}

func bfActive(t *testing.T, q queues.Queue) int64 {
	t.Helper()
	d, err := q.Depth(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	return d.Active
}

func bfIDs(ns []queues.Notice, side queues.Side, typ string) []string {
	var ids []string
	for _, n := range ns {
		if n.Side == side && n.Type == typ {
			ids = append(ids, n.ID)
		}
	}
	slices.Sort(ids)
	return ids
}

func bfPatientIDs(n int) []string {
	var ids []string
	for i := range n {
		ids = append(ids, synth.PatientID(i))
	}
	slices.Sort(ids)
	return ids
}

func TestBackfill(t *testing.T) {
	t.Parallel()
	storagetest.Each(t, func(t *testing.T, db *gorm.DB) {
		e := newBackfillEnv(t, db, fhirserver.Options{Seed: bfSeed, Patients: bfPatients})
		ctx := context.Background()
		wantContacts := slices.Sorted(slices.Values(e.contactIDs))

		tests := []struct {
			name             string
			opts             agent.BackfillOptions
			wantFHIR, wantCR int
			wantErr          bool
			wantIs           error
		}{
			{name: "both sides, paged search", opts: agent.BackfillOptions{Map: "patient-contact", BatchSize: 5},
				wantFHIR: bfPatients, wantCR: bfContacts},
			{name: "fhir side only", opts: agent.BackfillOptions{Map: "patient-contact", Side: queues.SideFHIR},
				wantFHIR: bfPatients},
			{name: "crm side only", opts: agent.BackfillOptions{Map: "patient-contact", Side: queues.SideCRM, BatchSize: 3},
				wantCR: bfContacts},
			{name: "dry run sends nothing", opts: agent.BackfillOptions{Map: "patient-contact", DryRun: true},
				wantFHIR: bfPatients, wantCR: bfContacts},
			{name: "unknown map", opts: agent.BackfillOptions{Map: "no-such-map"}, wantErr: true, wantIs: agent.ErrMapUnavailable},
			{name: "direction off", opts: agent.BackfillOptions{Map: "encounter", Side: queues.SideCRM}, wantErr: true, wantIs: agent.ErrMapUnavailable},
			{name: "unknown side", opts: agent.BackfillOptions{Map: "patient-contact", Side: "sideways"}, wantErr: true},
		}
		for _, tt := range tests {
			t.Run(tt.name, func(t *testing.T) {
				var seen []queues.Notice
				tt.opts.OnNotice = func(n queues.Notice) { seen = append(seen, n) }
				res, err := agent.Backfill(ctx, tt.opts, e.deps)
				if tt.wantErr {
					if err == nil {
						t.Fatalf("Backfill = %+v, want an error", res)
					}
					if tt.wantIs != nil && !errors.Is(err, tt.wantIs) {
						t.Fatalf("error = %v, want %v", err, tt.wantIs)
					}
					if bfActive(t, e.fhirQ)+bfActive(t, e.crmQ) != 0 {
						t.Fatal("a failed backfill enqueued notices")
					}
					return
				}
				if err != nil {
					t.Fatal(err)
				}
				if res.FHIR != tt.wantFHIR || res.CRM != tt.wantCR {
					t.Fatalf("counts = fhir %d crm %d, want %d and %d", res.FHIR, res.CRM, tt.wantFHIR, tt.wantCR)
				}
				if len(seen) != tt.wantFHIR+tt.wantCR {
					t.Errorf("OnNotice saw %d notices, want %d", len(seen), tt.wantFHIR+tt.wantCR)
				}
				if tt.opts.DryRun {
					if n := bfActive(t, e.fhirQ) + bfActive(t, e.crmQ); n != 0 {
						t.Fatalf("a dry run enqueued %d messages", n)
					}
					return
				}
				if got := bfActive(t, e.fhirQ); got != int64(tt.wantFHIR) {
					t.Errorf("fhir-changes holds %d messages, want %d", got, tt.wantFHIR)
				}
				if got := bfActive(t, e.crmQ); got != int64(tt.wantCR) {
					t.Errorf("crm-changes holds %d messages, want %d", got, tt.wantCR)
				}
				fn, cn := bfDrain(t, e.fhirQ), bfDrain(t, e.crmQ)
				if tt.wantFHIR > 0 && !slices.Equal(bfIDs(fn, queues.SideFHIR, "Patient"), bfPatientIDs(bfPatients)) {
					t.Errorf("fhir notices name %v, want every patient once", bfIDs(fn, queues.SideFHIR, "Patient"))
				}
				if tt.wantCR > 0 && !slices.Equal(bfIDs(cn, queues.SideCRM, "contact"), wantContacts) {
					t.Errorf("crm notices name %v, want every contact once", bfIDs(cn, queues.SideCRM, "contact"))
				}
				for _, n := range append(fn, cn...) {
					if n.Origin != agent.OriginBackfill || n.Event != queues.EventChanged || n.ChangedAt.IsZero() {
						t.Fatalf("notice %+v is not a backfill change notice", n)
					}
				}
			})
		}
	})
}

func TestBackfillRunsAgainAsNewMessages(t *testing.T) {
	t.Parallel()
	storagetest.Each(t, func(t *testing.T, db *gorm.DB) {
		e := newBackfillEnv(t, db, fhirserver.Options{Seed: bfSeed, Patients: 3})
		ctx := context.Background()
		for range 2 {
			if _, err := agent.Backfill(ctx, agent.BackfillOptions{Map: "patient-contact", Side: queues.SideFHIR}, e.deps); err != nil {
				t.Fatal(err)
			}
			time.Sleep(2 * time.Millisecond) // a distinct ChangedAt
		}
		if got := bfActive(t, e.fhirQ); got != 6 {
			t.Fatalf("two backfills of 3 patients left %d messages, want 6 (a backfill is not deduplicated against the last)", got)
		}
	})
}

func TestReconcilerLease(t *testing.T) {
	t.Parallel()
	storagetest.Each(t, func(t *testing.T, db *gorm.DB) {
		e := newBackfillEnv(t, db, fhirserver.Options{Seed: bfSeed, Patients: 6, Encounters: 4, Observations: 5})
		ctx := context.Background()
		resources, err := e.fhirSrv.Count(ctx)
		if err != nil {
			t.Fatal(err)
		}
		newRec := func(holder string) *agent.Reconciler {
			r, err := agent.NewReconciler(agent.ReconcilerConfig{Schedule: "@daily", Holder: holder, LeaseTTL: 30 * time.Second}, e.deps)
			if err != nil {
				t.Fatal(err)
			}
			return r
		}
		a, b := newRec("process-a"), newRec("process-b")

		// Another process holds the lease: neither runs.
		other := storage.NewLease(db, agent.ReconcileLeaseName, "process-c", time.Minute)
		if ok, err := other.Acquire(ctx); err != nil || !ok {
			t.Fatalf("taking the lease: %v %v", ok, err)
		}
		if res, err := a.RunOnce(ctx); err != nil || res.Ran {
			t.Fatalf("RunOnce while another holds the lease = %+v, %v; want not run", res, err)
		}
		if n := bfActive(t, e.fhirQ) + bfActive(t, e.crmQ); n != 0 {
			t.Fatalf("%d notices enqueued without the lease", n)
		}
		if err := other.Release(ctx); err != nil {
			t.Fatal(err)
		}

		// Two processes fire at the same scheduled time: one runs.
		var wg sync.WaitGroup
		results := make([]agent.ReconcileResult, 2)
		for i, r := range []*agent.Reconciler{a, b} {
			wg.Go(func() {
				res, err := r.RunOnce(ctx)
				if err != nil {
					t.Error(err)
				}
				results[i] = res
			})
		}
		wg.Wait()
		if results[0].Ran == results[1].Ran {
			t.Fatalf("ran = %v and %v, want exactly one", results[0].Ran, results[1].Ran)
		}
		winner := results[0]
		if !winner.Ran {
			winner = results[1]
		}
		// Every FHIR resource of a mapped type once; the contacts once
		// although two maps share them; the accounts.
		if got := bfActive(t, e.fhirQ); got != int64(resources) {
			t.Errorf("fhir-changes holds %d notices, want one per FHIR resource (%d)", got, resources)
		}
		if got := bfActive(t, e.crmQ); got != bfContacts+bfAccounts {
			t.Errorf("crm-changes holds %d notices, want %d", got, bfContacts+bfAccounts)
		}
		var names []string
		for _, m := range winner.Maps {
			names = append(names, m.Map)
		}
		if !slices.Contains(names, "patient-contact") || !slices.Contains(names, "encounter") {
			t.Errorf("reconciled maps %v, want every enabled map", names)
		}
		for _, n := range bfDrain(t, e.fhirQ) {
			if n.Origin != agent.OriginReconcile {
				t.Fatalf("notice origin %q, want reconcile", n.Origin)
			}
		}

		// The run keeps the lease until shortly before the next scheduled
		// time, so a process firing a little late does not repeat it.
		for _, r := range []*agent.Reconciler{a, b} {
			if res, err := r.RunOnce(ctx); err != nil || res.Ran {
				t.Fatalf("a second run for the same scheduled time = %+v, %v", res, err)
			}
		}
	})
}

func TestReconcilerRunsOnSchedule(t *testing.T) {
	t.Parallel()
	storagetest.Each(t, func(t *testing.T, db *gorm.DB) {
		e := newBackfillEnv(t, db, fhirserver.Options{Seed: bfSeed, Patients: 2})
		r, err := agent.NewReconciler(agent.ReconcilerConfig{Schedule: "@every 1s", Holder: "p"}, e.deps)
		if err != nil {
			t.Fatal(err)
		}
		ctx, cancel := context.WithCancel(context.Background())
		done := make(chan error, 1)
		go func() { done <- r.Run(ctx) }()
		deadline := time.Now().Add(20 * time.Second)
		for bfActive(t, e.crmQ) == 0 && time.Now().Before(deadline) {
			time.Sleep(100 * time.Millisecond)
		}
		cancel()
		if err := <-done; err != nil {
			t.Fatalf("Run = %v", err)
		}
		if bfActive(t, e.crmQ) == 0 {
			t.Fatal("the scheduled reconcile enqueued nothing within 20s")
		}
	})
}

func TestNewReconcilerRejectsBadConfig(t *testing.T) {
	t.Parallel()
	db := storagetest.Open(t, storage.SQLite)
	q, err := embedded.New(db, "q", embedded.Options{})
	if err != nil {
		t.Fatal(err)
	}
	ms, err := maps.New(db, maps.Options{Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatal(err)
	}
	deps := agent.BackfillDeps{DB: db, Maps: ms, FHIRChanges: q, CRMChanges: q}
	tests := []struct {
		name    string
		cfg     agent.ReconcilerConfig
		deps    agent.BackfillDeps
		wantErr bool
	}{
		{name: "off", cfg: agent.ReconcilerConfig{Holder: "h"}, deps: deps},
		{name: "daily", cfg: agent.ReconcilerConfig{Schedule: "@daily", Holder: "h"}, deps: deps},
		{name: "five fields", cfg: agent.ReconcilerConfig{Schedule: "30 2 * * *", Holder: "h"}, deps: deps},
		{name: "bad schedule", cfg: agent.ReconcilerConfig{Schedule: "sometimes", Holder: "h"}, deps: deps, wantErr: true},
		{name: "no holder", cfg: agent.ReconcilerConfig{Schedule: "@daily"}, deps: deps, wantErr: true},
		{name: "no database", cfg: agent.ReconcilerConfig{Holder: "h"}, deps: agent.BackfillDeps{Maps: ms, FHIRChanges: q, CRMChanges: q}, wantErr: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := agent.NewReconciler(tt.cfg, tt.deps)
			if (err != nil) != tt.wantErr {
				t.Fatalf("NewReconciler error = %v, wantErr %v", err, tt.wantErr)
			}
		})
	}
	// With no schedule, Run returns at once.
	r, err := agent.NewReconciler(agent.ReconcilerConfig{Holder: "h"}, deps)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := r.Run(ctx); err != nil || ctx.Err() != nil {
		t.Fatalf("Run with the schedule off = %v (ctx %v), want an immediate nil", err, ctx.Err())
	}
}

// TestBackfillIsSyncedByTheAgent runs the agent on the notices a backfill
// enqueues: every patient of the FHIR server becomes a CRM contact, with
// one decision per notice.
func TestBackfillIsSyncedByTheAgent(t *testing.T) {
	t.Parallel()
	storagetest.Each(t, func(t *testing.T, db *gorm.DB) {
		const patients = 4
		e := newBackfillEnv(t, db, fhirserver.Options{Seed: bfSeed, Patients: patients})
		ctx := context.Background()
		ls, err := logs.New(db, logs.Config{}, nil)
		if err != nil {
			t.Fatal(err)
		}
		contactsBefore := e.crmSrv.Count("contact")
		// Organizations and practitioners first, so that the patients'
		// references resolve; then the patients.
		var notices int
		for _, m := range []string{"organization-account", "practitioner-contact", "patient-contact"} {
			res, err := agent.Backfill(ctx, agent.BackfillOptions{Map: m, Side: queues.SideFHIR}, e.deps)
			if err != nil {
				t.Fatal(err)
			}
			notices += res.Total()
		}
		a, err := agent.New(agent.Config{Workers: 2, RetryBase: 100 * time.Millisecond, RetryMax: 500 * time.Millisecond, CRMUserID: "00000000-0000-0000-0000-0000000a6e17"},
			agent.Deps{DB: db, Maps: e.maps, FHIR: e.fhir, CRM: e.crm, Logs: ls, FHIRChanges: e.fhirQ, CRMChanges: e.crmQ})
		if err != nil {
			t.Fatal(err)
		}
		runCtx, cancel := context.WithCancel(ctx)
		done := make(chan error, 1)
		go func() { done <- a.Run(runCtx) }()
		defer func() {
			cancel()
			if err := <-done; err != nil && !errors.Is(err, context.Canceled) {
				t.Errorf("agent: %v", err)
			}
		}()
		created := func() int {
			n := 0
			for i := range patients {
				page, err := ls.Search(ctx, logs.Filter{Record: synth.PatientID(i), Direction: logs.FHIRToCRM, Reason: logs.ReasonCreated}, "", 10)
				if err != nil {
					t.Fatal(err)
				}
				if len(page.Decisions) > 0 {
					n++
				}
			}
			return n
		}
		deadline := time.Now().Add(60 * time.Second)
		for created() < patients && time.Now().Before(deadline) {
			time.Sleep(100 * time.Millisecond)
		}
		if n := created(); n != patients {
			t.Fatalf("%d of %d patients were created in the CRM within 60s", n, patients)
		}
		if got := e.crmSrv.Count("contact"); got < contactsBefore+patients {
			t.Fatalf("the CRM holds %d contacts, want at least %d", got, contactsBefore+patients)
		}
		for i := range patients {
			id := synth.PatientID(i)
			if _, err := e.crm.Retrieve(ctx, crm.ByKey("contacts", "msemr_azurefhirid", id)); err != nil {
				t.Fatalf("no contact for backfilled patient %s: %v", id, err)
			}
		}
		// Every backfill notice ends in a decision.
		deadline = time.Now().Add(30 * time.Second)
		for {
			all, err := ls.Counts(ctx, logs.Filter{Direction: logs.FHIRToCRM}, 0)
			if err != nil {
				t.Fatal(err)
			}
			if all.Total >= int64(notices) {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("%d FHIR to CRM decisions for %d backfill notices", all.Total, notices)
			}
			time.Sleep(100 * time.Millisecond)
		}
	})
}
