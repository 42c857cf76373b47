package agent

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"gorm.io/gorm"

	"github.com/fhirsync/fhirsync/logs"
	"github.com/fhirsync/fhirsync/maps"
	"github.com/fhirsync/fhirsync/queues"
	"github.com/fhirsync/fhirsync/storage/storagetest"
)

// fakeSide is an in-memory system holding records by id, serving as the
// source of one direction and the target of the other.
type fakeSide struct {
	mu       sync.Mutex
	typ      string
	recs     map[string]record
	readErr  error
	findErr  error
	writeErr error
	writes   int
	deletes  int
	nextID   int
}

func newFakeSide(typ string) *fakeSide {
	return &fakeSide{typ: typ, recs: map[string]record{}}
}

func (s *fakeSide) put(id, value string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	v := 1
	if old, ok := s.recs[id]; ok {
		v, _ = strconv.Atoi(old.Version)
		v++
	}
	s.recs[id] = record{Type: s.typ, ID: id, Version: strconv.Itoa(v), Data: map[string]any{"value": value, "peer": id}}
}

func (s *fakeSide) read(_ context.Context, _ *maps.Mapping, id string) (record, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.readErr != nil {
		return record{}, s.readErr
	}
	r, ok := s.recs[id]
	if !ok {
		return record{}, errGone
	}
	return r, nil
}

// find correlates by the "peer" field holding the source id.
func (s *fakeSide) find(_ context.Context, _ *maps.Mapping, src record, cached *link) (record, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.findErr != nil {
		return record{}, s.findErr
	}
	for _, r := range s.recs {
		if r.Data["peer"] == src.ID {
			return r, nil
		}
	}
	return record{}, errGone
}

func (s *fakeSide) write(_ context.Context, _ *maps.Mapping, src record, cur *record, out mapped) (written, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.writeErr != nil {
		return written{}, s.writeErr
	}
	s.writes++
	data := out.Data.(map[string]any)
	if cur == nil {
		s.nextID++
		id := fmt.Sprintf("%s-%d", s.typ, s.nextID)
		s.recs[id] = record{Type: s.typ, ID: id, Version: "1", Data: data}
		return written{ID: id, Version: "1", Created: true}, nil
	}
	v, _ := strconv.Atoi(cur.Version)
	r := record{Type: s.typ, ID: cur.ID, Version: strconv.Itoa(v + 1), Data: data}
	s.recs[cur.ID] = r
	return written{ID: r.ID, Version: r.Version}, nil
}

func (s *fakeSide) deactivate(_ context.Context, _ *maps.Mapping, cur record) (written, error) {
	return written{ID: cur.ID}, nil
}

func (s *fakeSide) remove(_ context.Context, _ *maps.Mapping, cur record) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.deletes++
	delete(s.recs, cur.ID)
	return nil
}

// fakeSet serves one compiled entity map, Patient ↔ contact, whose
// definition a test case may change before the message is handled.
type fakeSet struct{ m *maps.Mapping }

func (f fakeSet) Version() int { return 3 }
func (f fakeSet) candidates(side queues.Side, typ string) []*maps.Mapping {
	em := f.m.Def()
	if (side == queues.SideFHIR && typ == em.FHIRType) || (side == queues.SideCRM && typ == em.CRMEntity) {
		return []*maps.Mapping{f.m}
	}
	return nil
}

func compileTestMap(t testing.TB) *maps.Mapping {
	t.Helper()
	all := []maps.Operation{maps.OpCreate, maps.OpUpdate, maps.OpDelete}
	doc := &maps.Document{Format: 1, EntityMaps: []maps.EntityMap{{
		Name: "patient-contact", FHIRType: "Patient", CRMEntity: "contact", CRMEntitySet: "contacts",
		FHIRToCRM: maps.Flow{Enabled: true, Operations: all}, CRMToFHIR: maps.Flow{Enabled: true, Operations: all},
		Correlation: maps.Correlation{CRMAttribute: "msemr_azurefhirid", FHIRIdentifierSystem: "urn:fhirsync:crm:contactid"},
		Attributes:  []maps.AttributeMap{{Name: "family", CRMAttribute: "lastname", CRMType: maps.TypeString, FHIRPath: "name[0].family"}},
	}}}
	set, err := maps.Compile(doc, maps.CompileOptions{})
	if err != nil {
		t.Fatalf("compiling the test map: %v", err)
	}
	m, ok := set.Map("patient-contact")
	if !ok {
		t.Fatal("compiled set lacks patient-contact")
	}
	return m
}

type harness struct {
	p      *pipeline
	fhir   *fakeSide
	crm    *fakeSide
	em     *maps.EntityMap
	logs   *logs.Store
	gate   logs.ReasonCode
	mapErr error
}

func newHarness(t testing.TB, db *gorm.DB) *harness {
	t.Helper()
	store, err := logs.New(db, logs.Config{KeySecret: "c2VjcmV0LXNlY3JldC1zZWNyZXQ="}, nil)
	if err != nil {
		t.Fatal(err)
	}
	m := compileTestMap(t)
	h := &harness{
		fhir: newFakeSide("Patient"),
		crm:  newFakeSide("contact"),
		em:   m.Def(),
		logs: store,
	}
	mapFor := func(_ context.Context, _ *maps.Mapping, src record, cur *record) (mapped, error) {
		if h.mapErr != nil {
			return mapped{}, h.mapErr
		}
		switch h.gate {
		case "filtered":
			return mapped{Filtered: "active-only"}, nil
		case "record_gate_off":
			return mapped{Gated: "sync-enabled"}, nil
		}
		out := map[string]any{"value": src.Data["value"], "peer": src.ID}
		if cur != nil && cur.Data["value"] == out["value"] {
			return mapped{Data: out}, nil
		}
		return mapped{Data: out, Changed: []string{"value"}}, nil
	}
	lk := links{db: db}
	ow := ownWrites{db: db}
	echo := func(side string) func(ctx context.Context, n queues.Notice, src record) (bool, error) {
		return func(ctx context.Context, n queues.Notice, src record) (bool, error) {
			return ow.echo(ctx, side, n, src)
		}
	}
	h.p = &pipeline{
		flows: map[queues.Side]*flow{
			queues.SideFHIR: {dir: logs.FHIRToCRM, side: queues.SideFHIR, targetOf: "crm", source: h.fhir, target: h.crm, mapFor: mapFor, isEcho: echo("fhir")},
			queues.SideCRM:  {dir: logs.CRMToFHIR, side: queues.SideCRM, targetOf: "fhir", source: h.crm, target: h.fhir, mapFor: mapFor, isEcho: echo("crm")},
		},
		maps:        func(context.Context) (mapSet, error) { return fakeSet{m}, nil },
		log:         store,
		links:       lk,
		writes:      ow,
		maxAttempts: 3,
		backoff:     Backoff{Base: time.Second, Max: time.Minute},
		metrics:     newMetrics(nil),
		plog:        slog.New(slog.DiscardHandler),
		now:         time.Now,
	}
	return h
}

var seq atomic.Int64

func notice(t testing.TB, side queues.Side, typ, id, version string, ev queues.Event, deliveries int) *queues.Received {
	t.Helper()
	n := queues.Notice{V: 1, Side: side, Type: typ, ID: id, Version: version, Event: ev, Origin: "test"}
	msg, err := n.Message()
	if err != nil {
		t.Fatal(err)
	}
	return &queues.Received{Message: msg, DeliveryCount: deliveries, SequenceNumber: seq.Add(1)}
}

func lastDecision(t *testing.T, h *harness, messageID string) logs.Decision {
	t.Helper()
	page, err := h.logs.Search(context.Background(), logs.Filter{MessageID: messageID}, "", 1)
	if err != nil || len(page.Decisions) == 0 {
		t.Fatalf("no decision recorded for %s: %v", messageID, err)
	}
	return page.Decisions[0]
}

func TestPipelineEndsEveryPathInOneDecision(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name        string
		setup       func(h *harness)
		msg         func(t *testing.T) *queues.Received
		wantOutcome logs.Outcome
		wantReason  logs.ReasonCode
		wantSettle  settleKind
		check       func(t *testing.T, h *harness, d logs.Decision)
	}{
		{name: "created", setup: func(h *harness) { h.fhir.put("p1", "a") },
			msg: func(t *testing.T) *queues.Received {
				return notice(t, queues.SideFHIR, "Patient", "p1", "", queues.EventCreated, 1)
			},
			wantOutcome: logs.OutcomeSent, wantReason: "created", wantSettle: settleComplete,
			check: func(t *testing.T, h *harness, d logs.Decision) {
				if h.crm.writes != 1 || d.Target.Type != "contact" || d.Target.ID == "" || d.MapVersion != 3 || d.EntityMap != "patient-contact" {
					t.Errorf("writes=%d decision=%+v", h.crm.writes, d)
				}
			}},
		{name: "updated then unchanged", setup: func(h *harness) {
			h.fhir.put("p1", "a")
			h.p.handle(context.Background(), notice(t, queues.SideFHIR, "Patient", "p1", "", queues.EventCreated, 1))
			h.fhir.put("p1", "b")
		}, msg: func(t *testing.T) *queues.Received {
			return notice(t, queues.SideFHIR, "Patient", "p1", "2", queues.EventUpdated, 1)
		},
			wantOutcome: logs.OutcomeSent, wantReason: "updated", wantSettle: settleComplete,
			check: func(t *testing.T, h *harness, d logs.Decision) {
				if len(d.ChangedFields) != 1 || d.ChangedFields[0] != "value" {
					t.Errorf("changed fields = %v", d.ChangedFields)
				}
				// The same notice again: nothing differs at the target.
				m := notice(t, queues.SideFHIR, "Patient", "p1", "", queues.EventChanged, 1)
				h.p.handle(context.Background(), m)
				if got := lastDecision(t, h, m.ID); got.Reason != "unchanged" || h.crm.writes != 2 {
					t.Errorf("repeat: reason %s, writes %d; want unchanged, 2", got.Reason, h.crm.writes)
				}
			}},
		{name: "no entity map", msg: func(t *testing.T) *queues.Received {
			return notice(t, queues.SideFHIR, "Device", "d1", "", queues.EventCreated, 1)
		},
			wantOutcome: logs.OutcomeSkipped, wantReason: "no_entity_map", wantSettle: settleComplete},
		{name: "map disabled", setup: func(h *harness) { off := false; h.em.Enabled = &off; h.fhir.put("p1", "a") },
			msg: func(t *testing.T) *queues.Received {
				return notice(t, queues.SideFHIR, "Patient", "p1", "", queues.EventCreated, 1)
			},
			wantOutcome: logs.OutcomeSkipped, wantReason: "map_disabled", wantSettle: settleComplete},
		{name: "direction off", setup: func(h *harness) { h.em.CRMToFHIR.Enabled = false; h.crm.put("c1", "a") },
			msg: func(t *testing.T) *queues.Received {
				return notice(t, queues.SideCRM, "contact", "c1", "", queues.EventUpdated, 1)
			},
			wantOutcome: logs.OutcomeSkipped, wantReason: "direction_off", wantSettle: settleComplete},
		{name: "create not allowed", setup: func(h *harness) { h.em.FHIRToCRM.Operations = []maps.Operation{maps.OpUpdate}; h.fhir.put("p1", "a") },
			msg: func(t *testing.T) *queues.Received {
				return notice(t, queues.SideFHIR, "Patient", "p1", "", queues.EventCreated, 1)
			},
			wantOutcome: logs.OutcomeSkipped, wantReason: "operation_off", wantSettle: settleComplete,
			check: func(t *testing.T, h *harness, d logs.Decision) {
				if h.crm.writes != 0 {
					t.Error("a create was written although create is off")
				}
			}},
		{name: "record gate off", setup: func(h *harness) { h.gate = "record_gate_off"; h.crm.put("c1", "a") },
			msg: func(t *testing.T) *queues.Received {
				return notice(t, queues.SideCRM, "contact", "c1", "", queues.EventUpdated, 1)
			},
			wantOutcome: logs.OutcomeSkipped, wantReason: "record_gate_off", wantSettle: settleComplete},
		{name: "filtered names the filter", setup: func(h *harness) { h.gate = "filtered"; h.fhir.put("p1", "a") },
			msg: func(t *testing.T) *queues.Received {
				return notice(t, queues.SideFHIR, "Patient", "p1", "", queues.EventCreated, 1)
			},
			wantOutcome: logs.OutcomeSkipped, wantReason: "filtered", wantSettle: settleComplete,
			check: func(t *testing.T, h *harness, d logs.Decision) {
				if d.ReasonSubject != "active-only" {
					t.Errorf("subject = %q, want the filter name", d.ReasonSubject)
				}
			}},
		{name: "own write echo", setup: func(h *harness) {
			h.fhir.put("p1", "a")
			h.p.handle(context.Background(), notice(t, queues.SideFHIR, "Patient", "p1", "", queues.EventCreated, 1))
		}, msg: func(t *testing.T) *queues.Received {
			// The CRM's change feed reports the contact fhirsync just wrote.
			return notice(t, queues.SideCRM, "contact", "contact-1", "1", queues.EventCreated, 1)
		}, wantOutcome: logs.OutcomeSkipped, wantReason: "own_write_echo", wantSettle: settleComplete,
			check: func(t *testing.T, h *harness, d logs.Decision) {
				if h.fhir.writes != 0 {
					t.Error("the echo was written back to FHIR")
				}
			}},
		{name: "stale version", setup: func(h *harness) {
			h.fhir.put("p1", "a")
			h.fhir.put("p1", "b")
			h.p.handle(context.Background(), notice(t, queues.SideFHIR, "Patient", "p1", "2", queues.EventUpdated, 1))
		}, msg: func(t *testing.T) *queues.Received {
			return notice(t, queues.SideFHIR, "Patient", "p1", "1", queues.EventCreated, 1)
		},
			wantOutcome: logs.OutcomeSkipped, wantReason: "stale_version", wantSettle: settleComplete},
		{name: "source gone", msg: func(t *testing.T) *queues.Received {
			return notice(t, queues.SideFHIR, "Patient", "ghost", "", queues.EventUpdated, 1)
		},
			wantOutcome: logs.OutcomeSkipped, wantReason: "source_gone", wantSettle: settleComplete},
		{name: "deleted", setup: func(h *harness) {
			h.fhir.put("p1", "a")
			h.p.handle(context.Background(), notice(t, queues.SideFHIR, "Patient", "p1", "", queues.EventCreated, 1))
			delete(h.fhir.recs, "p1")
		}, msg: func(t *testing.T) *queues.Received {
			return notice(t, queues.SideFHIR, "Patient", "p1", "", queues.EventDeleted, 1)
		},
			wantOutcome: logs.OutcomeSent, wantReason: "deleted", wantSettle: settleComplete,
			check: func(t *testing.T, h *harness, d logs.Decision) {
				if h.crm.deletes != 1 || len(h.crm.recs) != 0 {
					t.Errorf("deletes=%d left=%d", h.crm.deletes, len(h.crm.recs))
				}
			}},
		{name: "invalid message", msg: func(t *testing.T) *queues.Received {
			return &queues.Received{Message: queues.Message{ID: "garbage-1", Body: []byte(`{"v":1,"side":"fhir"`)}, DeliveryCount: 1}
		}, wantOutcome: logs.OutcomeDeadLettered, wantReason: "invalid_message", wantSettle: settleDeadLetter},
		{name: "mapping error names the attribute map", setup: func(h *harness) {
			h.mapErr = &mappingError{attribute: "birthdate", err: errors.New("not a date")}
			h.fhir.put("p1", "a")
		}, msg: func(t *testing.T) *queues.Received {
			return notice(t, queues.SideFHIR, "Patient", "p1", "", queues.EventCreated, 1)
		},
			wantOutcome: logs.OutcomeDeadLettered, wantReason: "mapping_error", wantSettle: settleDeadLetter,
			check: func(t *testing.T, h *harness, d logs.Decision) {
				if d.ReasonSubject != "birthdate" {
					t.Errorf("subject = %q", d.ReasonSubject)
				}
			}},
		{name: "target rejected", setup: func(h *harness) {
			h.crm.writeErr = Permanent(&endpointError{class: classRejected, status: 400, err: errors.New("bad field")})
			h.fhir.put("p1", "a")
		}, msg: func(t *testing.T) *queues.Received {
			return notice(t, queues.SideFHIR, "Patient", "p1", "", queues.EventCreated, 1)
		},
			wantOutcome: logs.OutcomeDeadLettered, wantReason: "target_rejected", wantSettle: settleDeadLetter,
			check: func(t *testing.T, h *harness, d logs.Decision) {
				if len(d.Attempts) != 1 || d.Attempts[0].ErrorClass != "http_400" || d.Attempts[0].Retryable {
					t.Errorf("attempts = %+v", d.Attempts)
				}
			}},
		{name: "unauthorized is never a success", setup: func(h *harness) {
			h.crm.writeErr = Permanent(&endpointError{class: classUnauthorized, status: 403, err: errors.New("forbidden")})
			h.fhir.put("p1", "a")
		}, msg: func(t *testing.T) *queues.Received {
			return notice(t, queues.SideFHIR, "Patient", "p1", "", queues.EventCreated, 1)
		},
			wantOutcome: logs.OutcomeDeadLettered, wantReason: "unauthorized", wantSettle: settleDeadLetter},
		{name: "conflict retried", setup: func(h *harness) {
			h.fhir.writeErr = &endpointError{class: classConflict, status: 412, err: errors.New("version moved")}
			h.crm.put("c1", "a")
		}, msg: func(t *testing.T) *queues.Received {
			return notice(t, queues.SideCRM, "contact", "c1", "", queues.EventUpdated, 1)
		},
			wantOutcome: logs.OutcomeFailed, wantReason: "target_conflict", wantSettle: settleAbandon},
		{name: "throttled waits for retry-after", setup: func(h *harness) {
			h.crm.writeErr = RetryAfter(90*time.Second, &endpointError{class: classThrottled, status: 429, err: errors.New("slow down")})
			h.fhir.put("p1", "a")
		}, msg: func(t *testing.T) *queues.Received {
			return notice(t, queues.SideFHIR, "Patient", "p1", "", queues.EventCreated, 1)
		},
			wantOutcome: logs.OutcomeFailed, wantReason: "throttled", wantSettle: settleAbandon},
		{name: "unavailable source", setup: func(h *harness) {
			h.fhir.readErr = &endpointError{class: classUnavailable, status: 503, err: errors.New("down")}
		}, msg: func(t *testing.T) *queues.Received {
			return notice(t, queues.SideFHIR, "Patient", "p1", "", queues.EventCreated, 1)
		},
			wantOutcome: logs.OutcomeFailed, wantReason: "unavailable", wantSettle: settleAbandon},
		{name: "attempts exhausted keeps every attempt", setup: func(h *harness) {
			h.crm.writeErr = &endpointError{class: classUnavailable, status: 503, err: errors.New("down")}
			h.fhir.put("p1", "a")
			for i := 1; i <= 2; i++ {
				h.p.handle(context.Background(), retry(notice(t, queues.SideFHIR, "Patient", "p1", "", queues.EventCreated, i)))
			}
		}, msg: func(t *testing.T) *queues.Received {
			return retry(notice(t, queues.SideFHIR, "Patient", "p1", "", queues.EventCreated, 3))
		}, wantOutcome: logs.OutcomeDeadLettered, wantReason: "attempts_exhausted", wantSettle: settleDeadLetter,
			check: func(t *testing.T, h *harness, d logs.Decision) {
				if len(d.Attempts) != 3 {
					t.Fatalf("attempts = %d, want 3: %+v", len(d.Attempts), d.Attempts)
				}
				for _, a := range d.Attempts {
					if a.ErrorClass != "http_503" || !a.Retryable {
						t.Errorf("attempt %+v", a)
					}
				}
			}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			storagetest.Each(t, func(t *testing.T, db *gorm.DB) {
				h := newHarness(t, db)
				if tt.setup != nil {
					tt.setup(h)
				}
				m := tt.msg(t)
				s := h.p.handle(context.Background(), m)
				if s.kind != tt.wantSettle {
					t.Errorf("settlement = %v, want %v", s.kind, tt.wantSettle)
				}
				d := lastDecision(t, h, m.ID)
				if d.Outcome != tt.wantOutcome || d.Reason != tt.wantReason {
					t.Fatalf("decision = %s/%s (%s), want %s/%s", d.Outcome, d.Reason, d.Message, tt.wantOutcome, tt.wantReason)
				}
				if d.Message == "" {
					t.Error("decision has no human sentence")
				}
				if tt.wantSettle == settleAbandon && s.delay <= 0 {
					t.Error("a retry must wait")
				}
				if tt.wantReason == "throttled" && s.delay < 90*time.Second {
					t.Errorf("retry in %v ignores Retry-After 90s", s.delay)
				}
				if tt.check != nil {
					tt.check(t, h, d)
				}
			})
		})
	}
}

// retry gives the redelivered notice the same message id as the first.
func retry(m *queues.Received) *queues.Received {
	m.ID = "retry-message"
	return m
}

func TestEchoNamedByTheNoticeIsDecidedWithoutReadingTheSource(t *testing.T) {
	t.Parallel()
	storagetest.Each(t, func(t *testing.T, db *gorm.DB) {
		h := newHarness(t, db)
		h.p.flows[queues.SideCRM].ownNotice = func(n queues.Notice) bool { return n.Initiator == "agent-user" }
		h.crm.put("c1", "x")
		// The agent wrote version 1 of the contact.
		if err := h.p.writes.remember(context.Background(), "crm", "contact", "c1", `W/"1"`); err != nil {
			t.Fatal(err)
		}
		h.crm.readErr = errors.New("the source must not be read for a change the agent made")
		mk := func(initiator string, version ...string) *queues.Received {
			v := "1"
			if len(version) > 0 {
				v = version[0]
			}
			n := queues.Notice{V: 1, Side: queues.SideCRM, Type: "contact", ID: "c1", Version: v, Event: queues.EventUpdated, Origin: "test", Initiator: initiator}
			msg, err := n.Message()
			if err != nil {
				t.Fatal(err)
			}
			return &queues.Received{Message: msg, DeliveryCount: 1, SequenceNumber: seq.Add(1)}
		}
		own := mk("agent-user")
		if s := h.p.handle(context.Background(), own); s.kind != settleComplete {
			t.Fatalf("settlement %v, want complete", s.kind)
		}
		if d := lastDecision(t, h, own.ID); d.Outcome != logs.OutcomeSkipped || d.Reason != "own_write_echo" {
			t.Fatalf("decision %s/%s, want skipped/own_write_echo", d.Outcome, d.Reason)
		}
		// Someone else's change is read (and here fails on the read).
		other := mk("someone-else")
		h.p.handle(context.Background(), other)
		if d := lastDecision(t, h, other.ID); d.Reason == "own_write_echo" {
			t.Fatal("a change by another user was taken for the agent's own")
		}
		// The agent's user is only a hint: a version the agent did not
		// write (another integration signed in as the same user) is read.
		sameUser := mk("agent-user", "2")
		h.p.handle(context.Background(), sameUser)
		if d := lastDecision(t, h, sameUser.ID); d.Reason == "own_write_echo" {
			t.Fatal("a version the agent did not write was taken for its own because of its author")
		}
	})
}
