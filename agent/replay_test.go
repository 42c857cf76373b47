package agent_test

import (
	"context"
	"errors"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"gorm.io/gorm"

	"github.com/fhirsync/fhirsync/agent"
	"github.com/fhirsync/fhirsync/logs"
	"github.com/fhirsync/fhirsync/maps"
	"github.com/fhirsync/fhirsync/maps/starter"
	"github.com/fhirsync/fhirsync/queues"
	"github.com/fhirsync/fhirsync/queues/embedded"
	"github.com/fhirsync/fhirsync/storage/storagetest"
)

type replayEnv struct {
	logs  *logs.Store
	fhirQ *embedded.Queue
	crmQ  *embedded.Queue
	reg   *prometheus.Registry
	r     *agent.Replayer
}

func newReplayEnv(t *testing.T, db *gorm.DB) *replayEnv {
	t.Helper()
	e := &replayEnv{reg: prometheus.NewRegistry()}
	var err error
	if e.logs, err = logs.New(db, logs.Config{}, nil); err != nil {
		t.Fatal(err)
	}
	if e.fhirQ, err = embedded.New(db, "fhir-changes", embedded.Options{MaxDeliveryCount: 50}); err != nil {
		t.Fatal(err)
	}
	if e.crmQ, err = embedded.New(db, "crm-changes", embedded.Options{MaxDeliveryCount: 50}); err != nil {
		t.Fatal(err)
	}
	if e.r, err = agent.NewReplayer(agent.ReplayDeps{Logs: e.logs, Audit: e.logs, FHIRChanges: e.fhirQ, CRMChanges: e.crmQ, Registry: e.reg}); err != nil {
		t.Fatal(err)
	}
	return e
}

func (e *replayEnv) audit(t *testing.T, action string) []logs.AuditEntry {
	t.Helper()
	page, err := e.logs.Audit(context.Background(), logs.AuditFilter{Action: action}, "", 100)
	if err != nil {
		t.Fatal(err)
	}
	return page.Entries
}

func (e *replayEnv) replays(kind string) float64 {
	c, err := e.reg.Gather()
	if err != nil {
		return -1
	}
	for _, mf := range c {
		if mf.GetName() != "fhirsync_replays_total" {
			continue
		}
		for _, m := range mf.GetMetric() {
			for _, l := range m.GetLabel() {
				if l.GetName() == "kind" && l.GetValue() == kind {
					return m.GetCounter().GetValue()
				}
			}
		}
	}
	return 0
}

func TestParseRecordRef(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name     string
		in       string
		wantSide queues.Side
		wantType string
		wantID   string
		wantErr  bool
	}{
		{name: "fhir", in: "fhir:Patient/123", wantSide: queues.SideFHIR, wantType: "Patient", wantID: "123"},
		{name: "crm", in: "crm:contact/0a6b8c4e-0000-4000-8000-000000000007", wantSide: queues.SideCRM, wantType: "contact", wantID: "0a6b8c4e-0000-4000-8000-000000000007"},
		{name: "no side", in: "Patient/123", wantErr: true},
		{name: "no id", in: "fhir:Patient", wantErr: true},
		{name: "unknown side", in: "ehr:Patient/1", wantErr: true},
		{name: "empty id", in: "fhir:Patient/", wantErr: true},
		{name: "bad characters", in: "fhir:Patient/a b", wantErr: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			n, err := agent.ParseRecordRef(tt.in)
			if tt.wantErr {
				if !errors.Is(err, agent.ErrBadRecordRef) {
					t.Fatalf("ParseRecordRef(%q) = %+v, %v; want ErrBadRecordRef", tt.in, n, err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if n.Side != tt.wantSide || n.Type != tt.wantType || n.ID != tt.wantID || n.Origin != agent.OriginReplay || n.Event != queues.EventChanged {
				t.Fatalf("ParseRecordRef(%q) = %+v", tt.in, n)
			}
		})
	}
}

func TestReplayRecords(t *testing.T) {
	t.Parallel()
	storagetest.Each(t, func(t *testing.T, db *gorm.DB) {
		e := newReplayEnv(t, db)
		ctx := context.Background()
		refs := []string{"fhir:Patient/pat-000001", "crm:contact/0a6b8c4e-0000-4000-8000-000000000007"}

		res, err := e.r.Records(ctx, refs, agent.ReplayOptions{DryRun: true})
		if err != nil {
			t.Fatal(err)
		}
		if !slices.Equal(res.Refs, refs) || res.Sent != 0 || bfActive(t, e.fhirQ)+bfActive(t, e.crmQ) != 0 {
			t.Fatalf("dry run = %+v, queues %d/%d; want the refs and nothing sent", res, bfActive(t, e.fhirQ), bfActive(t, e.crmQ))
		}
		if len(e.audit(t, agent.AuditReplayRecords)) != 0 || e.replays(agent.ReplayRecord) != 0 {
			t.Fatal("a dry run was audited or counted")
		}

		// Replaying twice sends two messages: a replay is never taken for
		// a duplicate of an earlier notice.
		for range 2 {
			res, err = e.r.Records(ctx, refs, agent.ReplayOptions{Actor: "cli:alice"})
			if err != nil {
				t.Fatal(err)
			}
			if res.Sent != 2 {
				t.Fatalf("Sent = %d, want 2", res.Sent)
			}
			time.Sleep(2 * time.Millisecond)
		}
		if bfActive(t, e.fhirQ) != 2 || bfActive(t, e.crmQ) != 2 {
			t.Fatalf("queues hold %d/%d, want 2/2", bfActive(t, e.fhirQ), bfActive(t, e.crmQ))
		}
		fn := bfDrain(t, e.fhirQ)
		if fn[0].ID != "pat-000001" || fn[0].Origin != agent.OriginReplay || fn[0].ChangedAt.IsZero() {
			t.Fatalf("notice = %+v", fn[0])
		}
		entries := e.audit(t, agent.AuditReplayRecords)
		if len(entries) != 2 || entries[0].Actor != "cli:alice" || !strings.Contains(entries[0].After, "2 notices sent") ||
			!strings.Contains(entries[0].Before, "fhir:Patient/pat-000001") {
			t.Fatalf("audit = %+v", entries)
		}
		if got := e.replays(agent.ReplayRecord); got != 4 {
			t.Fatalf("fhirsync_replays_total{kind=record} = %v, want 4", got)
		}
		if _, err := e.r.Records(ctx, []string{"Patient/1"}, agent.ReplayOptions{Actor: "cli:alice"}); !errors.Is(err, agent.ErrBadRecordRef) {
			t.Fatalf("bad ref error = %v", err)
		}
		if _, err := e.r.Records(ctx, refs, agent.ReplayOptions{}); err == nil {
			t.Fatal("a replay without an actor was sent")
		}
	})
}

func TestReplayFromLog(t *testing.T) {
	t.Parallel()
	storagetest.Each(t, func(t *testing.T, db *gorm.DB) {
		e := newReplayEnv(t, db)
		ctx := context.Background()
		now := time.Now().UTC()
		throttled := func(at time.Duration, dir logs.Direction, typ, id string) *logs.Decision {
			return &logs.Decision{Time: now.Add(-at), Direction: dir, EntityMap: "patient-contact", MapVersion: 1,
				Source: logs.Ref{Type: typ, ID: id}, Outcome: logs.OutcomeFailed, Reason: logs.ReasonThrottled,
				Message: "Throttled.", Attempts: []logs.Attempt{{At: now, ErrorClass: "http_429", Retryable: true}}}
		}
		ds := []*logs.Decision{
			throttled(time.Minute, logs.FHIRToCRM, "Patient", "p1"),
			throttled(2*time.Minute, logs.FHIRToCRM, "Patient", "p1"),
			throttled(3*time.Minute, logs.FHIRToCRM, "Patient", "p2"),
			throttled(4*time.Minute, logs.CRMToFHIR, "contact", "c1"),
			throttled(48*time.Hour, logs.FHIRToCRM, "Patient", "old"),
			{Time: now, Direction: logs.FHIRToCRM, EntityMap: "patient-contact", Source: logs.Ref{Type: "Patient", ID: "p3"},
				Target: logs.Ref{Type: "contact", ID: "c3"}, Outcome: logs.OutcomeSent, Reason: logs.ReasonCreated, Message: "Created."},
			{Time: now, Direction: logs.FHIRToCRM, Outcome: logs.OutcomeDeadLettered, Reason: "invalid_message", Message: "Not a notice."},
		}
		if err := e.logs.WriteBatch(ctx, ds); err != nil {
			t.Fatal(err)
		}
		since := logs.Filter{Outcome: logs.OutcomeFailed, Reason: logs.ReasonThrottled, EntityMap: "patient-contact", From: now.Add(-24 * time.Hour)}
		tests := []struct {
			name          string
			q             agent.LogQuery
			wantRefs      []string
			wantTruncated bool
		}{
			{name: "failed throttled in the last day", q: agent.LogQuery{Filter: since},
				wantRefs: []string{"fhir:Patient/p1", "fhir:Patient/p2", "crm:contact/c1"}},
			{name: "one direction", q: agent.LogQuery{Filter: logs.Filter{Reason: logs.ReasonThrottled, Direction: logs.CRMToFHIR}},
				wantRefs: []string{"crm:contact/c1"}},
			{name: "all time", q: agent.LogQuery{Filter: logs.Filter{Reason: logs.ReasonThrottled}},
				wantRefs: []string{"fhir:Patient/p1", "fhir:Patient/p2", "crm:contact/c1", "fhir:Patient/old"}},
			{name: "limit", q: agent.LogQuery{Filter: since, Limit: 2},
				wantRefs: []string{"fhir:Patient/p1", "fhir:Patient/p2"}, wantTruncated: true},
			{name: "undecodable messages name no record", q: agent.LogQuery{Filter: logs.Filter{Reason: "invalid_message"}}},
		}
		for _, tt := range tests {
			t.Run(tt.name, func(t *testing.T) {
				dry, err := e.r.FromLog(ctx, tt.q, agent.ReplayOptions{DryRun: true})
				if err != nil {
					t.Fatal(err)
				}
				if !slices.Equal(dry.Refs, tt.wantRefs) || dry.Truncated != tt.wantTruncated {
					t.Fatalf("dry run refs = %v (truncated %v), want %v (%v)", dry.Refs, dry.Truncated, tt.wantRefs, tt.wantTruncated)
				}
				if bfActive(t, e.fhirQ)+bfActive(t, e.crmQ) != 0 {
					t.Fatal("a dry run sent notices")
				}
				res, err := e.r.FromLog(ctx, tt.q, agent.ReplayOptions{Actor: "cli:bob"})
				if err != nil {
					t.Fatal(err)
				}
				if res.Sent != len(tt.wantRefs) {
					t.Fatalf("Sent = %d, want %d", res.Sent, len(tt.wantRefs))
				}
				var got []string
				for _, n := range append(bfDrain(t, e.fhirQ), bfDrain(t, e.crmQ)...) {
					got = append(got, n.Ref())
				}
				slices.Sort(got)
				want := slices.Sorted(slices.Values(tt.wantRefs))
				if !slices.Equal(got, want) {
					t.Fatalf("queued %v, want %v", got, want)
				}
			})
		}
		entries := e.audit(t, agent.AuditReplayRecords)
		if len(entries) == 0 || !strings.Contains(entries[len(entries)-1].Before, "outcome=failed") {
			t.Fatalf("audit = %+v, want the query summarised", entries)
		}
		if got := e.replays(agent.ReplayLogQuery); got != 3+1+4+2 {
			t.Fatalf("fhirsync_replays_total{kind=log_query} = %v, want 10", got)
		}
	})
}

// rpDeadLetter sends notices for ids and dead-letters each with reason.
func rpDeadLetter(t *testing.T, q *embedded.Queue, reason string, ids ...string) {
	t.Helper()
	ctx := context.Background()
	for _, id := range ids {
		n := queues.Notice{V: queues.NoticeVersion, Side: queues.SideFHIR, Type: "Patient", ID: id, Event: queues.EventUpdated,
			Version: "1", Origin: "history-poll"}
		msg, err := n.Message()
		if err != nil {
			t.Fatal(err)
		}
		if err := q.Send(ctx, msg); err != nil {
			t.Fatal(err)
		}
	}
	dead := 0
	for dead < len(ids) {
		msgs, err := q.Receive(ctx, len(ids), time.Second)
		if err != nil {
			t.Fatal(err)
		}
		if len(msgs) == 0 {
			t.Fatalf("only %d of %d messages came back to dead-letter", dead, len(ids))
		}
		for _, m := range msgs {
			if err := q.DeadLetter(ctx, m, reason, "test"); err != nil {
				t.Fatal(err)
			}
			dead++
		}
	}
}

// rpReDeadLetter receives every active message and dead-letters it again.
func rpReDeadLetter(t *testing.T, q *embedded.Queue, reason string) int {
	t.Helper()
	ctx := context.Background()
	n := 0
	for {
		msgs, err := q.Receive(ctx, 100, 50*time.Millisecond)
		if err != nil {
			t.Fatal(err)
		}
		if len(msgs) == 0 {
			return n
		}
		for _, m := range msgs {
			if err := q.DeadLetter(ctx, m, reason, "again"); err != nil {
				t.Fatal(err)
			}
			n++
		}
	}
}

func TestReplayDeadLetters(t *testing.T) {
	t.Parallel()
	storagetest.Each(t, func(t *testing.T, db *gorm.DB) {
		e := newReplayEnv(t, db)
		ctx := context.Background()
		rpDeadLetter(t, e.fhirQ, "throttled", "p1", "p2")
		rpDeadLetter(t, e.fhirQ, "invalid_message", "p3")
		rpDeadLetter(t, e.crmQ, "throttled", "p4")

		dry, err := e.r.DeadLetters(ctx, agent.DeadLetterQuery{Side: queues.SideFHIR, Reason: "throttled"}, agent.ReplayOptions{DryRun: true})
		if err != nil {
			t.Fatal(err)
		}
		var refs []string
		for _, d := range dry.Matched {
			refs = append(refs, d.Record)
		}
		if !slices.Equal(refs, []string{"fhir:Patient/p1", "fhir:Patient/p2"}) || dry.Redriven != 0 {
			t.Fatalf("dry run = %+v", dry)
		}
		if d, _ := e.fhirQ.Depth(ctx); d.DeadLetter != 3 || d.Active != 0 {
			t.Fatalf("a dry run moved dead letters: %+v", d)
		}

		// Redrive the throttled ones of the FHIR queue up to the limit of
		// two; the third time they are held back.
		q := agent.DeadLetterQuery{Side: queues.SideFHIR, Reason: "throttled", MaxRedrives: 2}
		for round := 1; round <= 3; round++ {
			res, err := e.r.DeadLetters(ctx, q, agent.ReplayOptions{Actor: "cli:carol"})
			if err != nil {
				t.Fatalf("round %d: %v", round, err)
			}
			wantRedriven, wantHeld := 2, 0
			if round == 3 {
				wantRedriven, wantHeld = 0, 2
			}
			if res.Redriven != wantRedriven || len(res.Held) != wantHeld {
				t.Fatalf("round %d: redriven %d held %d, want %d and %d", round, res.Redriven, len(res.Held), wantRedriven, wantHeld)
			}
			if round < 3 {
				if got := bfActive(t, e.fhirQ); got != 2 {
					t.Fatalf("round %d: %d active after redrive, want 2", round, got)
				}
				if n := rpReDeadLetter(t, e.fhirQ, "throttled"); n != 2 {
					t.Fatalf("round %d: %d redriven messages came back, want 2", round, n)
				}
			}
		}
		if d, _ := e.fhirQ.Depth(ctx); d.DeadLetter != 3 || d.Active != 0 {
			t.Fatalf("after the limit: %+v, want the 3 dead letters kept", d)
		}
		// Both queues, every reason, default limit.
		res, err := e.r.DeadLetters(ctx, agent.DeadLetterQuery{}, agent.ReplayOptions{Actor: "cli:carol"})
		if err != nil {
			t.Fatal(err)
		}
		if res.Redriven != 4 || len(res.Held) != 0 {
			t.Fatalf("redrive of everything = %d redriven, %d held; want 4 and 0", res.Redriven, len(res.Held))
		}
		if bfActive(t, e.fhirQ) != 3 || bfActive(t, e.crmQ) != 1 {
			t.Fatalf("active %d/%d, want 3/1", bfActive(t, e.fhirQ), bfActive(t, e.crmQ))
		}
		entries := e.audit(t, agent.AuditReplayDeadLetters)
		if len(entries) != 3 || entries[0].Actor != "cli:carol" || entries[0].After != "4 redriven" {
			t.Fatalf("audit = %+v", entries)
		}
		if got := testutil.CollectAndCount(e.reg, "fhirsync_replays_total"); got != 1 {
			t.Fatalf("series = %d, want 1", got)
		}
		if got := e.replays(agent.ReplayDeadLetter); got != 2+2+4 {
			t.Fatalf("fhirsync_replays_total{kind=dead_letter} = %v, want 8", got)
		}
	})
}

func TestNewReplayerSharesTheCounter(t *testing.T) {
	t.Parallel()
	db := storagetest.Open(t, "sqlite")
	q, err := embedded.New(db, "q", embedded.Options{})
	if err != nil {
		t.Fatal(err)
	}
	ls, err := logs.New(db, logs.Config{}, nil)
	if err != nil {
		t.Fatal(err)
	}
	reg := prometheus.NewRegistry()
	for range 2 {
		if _, err := agent.NewReplayer(agent.ReplayDeps{Audit: ls, FHIRChanges: q, CRMChanges: q, Registry: reg}); err != nil {
			t.Fatalf("a second replayer on one registry: %v", err)
		}
	}
	if _, err := agent.NewReplayer(agent.ReplayDeps{FHIRChanges: q, CRMChanges: q}); err == nil {
		t.Fatal("a replayer without an audit trail was built")
	}
}

// TestReplayDryRunPlans: a dry run says, per record, which published maps
// would take it and the decision the map gates give — the same gates the
// pipeline applies — plus the record's last decision, and sends nothing.
func TestReplayDryRunPlans(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	db := storagetest.Open(t, "sqlite")
	e := newReplayEnv(t, db)
	ms, err := maps.New(db, maps.Options{})
	if err != nil {
		t.Fatal(err)
	}
	doc, _, err := maps.Import(starter.YAML(), maps.CompileOptions{})
	if err != nil {
		t.Fatal(err)
	}
	off := false
	for i := range doc.EntityMaps {
		if doc.EntityMaps[i].Name == "organization-account" {
			doc.EntityMaps[i].Enabled = &off
		}
	}
	v, err := ms.CreateDraft(ctx, doc, "test", "starter, organizations off")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := ms.Publish(ctx, v.Number, "test", "starter"); err != nil {
		t.Fatal(err)
	}
	r, err := agent.NewReplayer(agent.ReplayDeps{Logs: e.logs, Audit: e.logs, FHIRChanges: e.fhirQ, CRMChanges: e.crmQ, Maps: ms})
	if err != nil {
		t.Fatal(err)
	}
	at := time.Now().UTC().Add(-time.Hour).Truncate(time.Second)
	if err := e.logs.WriteBatch(ctx, []*logs.Decision{{Time: at, Direction: logs.FHIRToCRM, EntityMap: "patient-contact",
		Source: logs.Ref{Type: "Patient", ID: "p1"}, Outcome: logs.OutcomeDeadLettered, Reason: logs.ReasonTargetRejected, Message: "400"}}); err != nil {
		t.Fatal(err)
	}

	refs := []string{"fhir:Patient/p1", "crm:contact/c1", "crm:msemr_encounter/e1", "fhir:Organization/o1", "fhir:Basic/b1"}
	res, err := r.Records(ctx, refs, agent.ReplayOptions{Actor: "alice", DryRun: true})
	if err != nil {
		t.Fatal(err)
	}
	type want struct {
		maps    string
		outcome logs.Outcome
		reason  logs.ReasonCode
		last    logs.ReasonCode
	}
	wants := []want{
		{maps: "patient-contact", last: logs.ReasonTargetRejected},
		{maps: "patient-contact,practitioner-contact"},
		{maps: "encounter", outcome: logs.OutcomeSkipped, reason: "direction_off"},
		{maps: "organization-account", outcome: logs.OutcomeSkipped, reason: "map_disabled"},
		{outcome: logs.OutcomeSkipped, reason: "no_entity_map"},
	}
	if len(res.Plans) != len(wants) {
		t.Fatalf("%d plans for %d records: %+v", len(res.Plans), len(wants), res.Plans)
	}
	for i, w := range wants {
		p := res.Plans[i]
		var last logs.ReasonCode
		if p.Last != nil {
			last = p.Last.Reason
		}
		if p.Ref != refs[i] || strings.Join(p.Maps, ",") != w.maps || p.Outcome != w.outcome || p.Reason != w.reason || last != w.last || p.Message == "" {
			t.Errorf("plan %d = %+v (last %v); want %+v", i, p, p.Last, w)
		}
		if p.MapVersion != v.Number {
			t.Errorf("plan %d map version %d, want %d", i, p.MapVersion, v.Number)
		}
	}
	if d, _ := e.fhirQ.Depth(ctx); d.Active != 0 {
		t.Fatalf("a dry run enqueued %d notices", d.Active)
	}
	if got := e.audit(t, agent.AuditReplayDryRun); len(got) != 1 || got[0].Actor != "alice" || !strings.Contains(got[0].Before, "5 records") {
		t.Fatalf("dry run audit = %+v", got)
	}
	if got := e.audit(t, agent.AuditReplayRecords); len(got) != 0 {
		t.Fatalf("a dry run was audited as a replay: %+v", got)
	}

	// A log query's plan carries the matching decision it found.
	res, err = r.FromLog(ctx, agent.LogQuery{Filter: logs.Filter{Outcome: logs.OutcomeDeadLettered}}, agent.ReplayOptions{DryRun: true})
	if err != nil {
		t.Fatal(err)
	}
	if len(res.Plans) != 1 || res.Plans[0].Last == nil || !res.Plans[0].Last.Time.Equal(at) || res.Plans[0].Maps[0] != "patient-contact" {
		t.Fatalf("log query plans = %+v", res.Plans)
	}
}
