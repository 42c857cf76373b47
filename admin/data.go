package admin

import (
	"context"
	"fmt"
	"net/http"
	"slices"
	"time"

	"gorm.io/gorm"

	"github.com/fhirsync/fhirsync/agent"
	"github.com/fhirsync/fhirsync/agent/alerts"
	"github.com/fhirsync/fhirsync/logs"
	"github.com/fhirsync/fhirsync/maps"
	"github.com/fhirsync/fhirsync/queues"
	"github.com/fhirsync/fhirsync/queues/embedded"
)

// DeadLetterQueue is what the dead-letter and dashboard pages need of a
// queue: both queues.Queue implementations (embedded and Service Bus)
// satisfy it.
type DeadLetterQueue interface {
	// PeekDeadLetters lists up to max dead letters with sequence numbers
	// greater than after, oldest first, without locking them.
	PeekDeadLetters(ctx context.Context, after int64, max int) ([]queues.DeadLetter, error)
	// Redrive sends the named dead letters back to the main queue; one
	// already redriven maxRedrives times stays and is reported in the error.
	Redrive(ctx context.Context, seqs []int64, maxRedrives int) (int, error)
	// Discard deletes the named dead letters for good.
	Discard(ctx context.Context, seqs []int64) (int, error)
	// Depth reports the queue's size.
	Depth(ctx context.Context) (queues.Depth, error)
}

// defaultQueueNames are the embedded queues the agent uses.
var defaultQueueNames = []string{"fhir-changes", "crm-changes"}

// maxRedrives is how often one message may be redriven before it is held
// back as a probable loop.
const maxRedrives = 5

// dataStores are the stores the maps, logs, dead-letter and dashboard
// pages read and change.
type dataStores struct {
	maps       *maps.Store
	logs       *logs.Store
	queues     map[string]DeadLetterQueue
	queueNames []string // sorted
	db         *gorm.DB // tables other processes write, read directly (backfill_runs)
	alerts     *alerts.Service

	// replay sends records through the agent again; nil when this
	// process cannot (queues passed in without a replayer).
	replay Replayer

	// crm caches the CRM's entity metadata for map validation; nil when
	// no CRM is configured.
	crm *crmMetadata

	// fhir and crmRecords read live records for the preview, read-only;
	// nil when no FHIR server or CRM is configured.
	fhir       FHIRReader
	crmRecords CRMRecordReader
}

// openData builds the stores from the server's dependencies: the sync log
// and queues passed in, or ones opened on the database.
func (s *Server) openData() (*dataStores, error) {
	db := s.deps.DB
	ms, err := maps.New(db, maps.Options{Logger: s.deps.Logger})
	if err != nil {
		return nil, fmt.Errorf("opening the map store: %w", err)
	}
	d := &dataStores{maps: ms, logs: s.deps.Logs, queues: s.deps.Queues, db: db}
	if d.logs == nil {
		if d.logs, err = logs.New(db, logs.Config{Logger: s.deps.Logger}, nil); err != nil {
			return nil, fmt.Errorf("opening the sync log: %w", err)
		}
	}
	d.replay = s.deps.Replay
	d.crm = newCRMMetadata(s.deps.CRM, time.Now)
	d.fhir, d.crmRecords = s.deps.FHIR, s.deps.CRMRecords
	if d.queues == nil {
		d.queues = map[string]DeadLetterQueue{}
		opened := map[string]*embedded.Queue{}
		for _, name := range defaultQueueNames {
			q, err := embedded.New(db, name, embedded.Options{})
			if err != nil {
				return nil, fmt.Errorf("opening queue %s: %w", name, err)
			}
			d.queues[name], opened[name] = q, q
		}
		if d.replay == nil {
			r, err := agent.NewReplayer(agent.ReplayDeps{Logs: d.logs, Audit: d.logs, Maps: ms,
				FHIRChanges: opened["fhir-changes"], CRMChanges: opened["crm-changes"], Logger: s.deps.Logger})
			if err != nil {
				return nil, err
			}
			d.replay = r
		}
	}
	if d.alerts = s.deps.Alerts; d.alerts == nil {
		if d.alerts, err = alerts.New(alerts.Config{}, alerts.Deps{DB: db, Logs: d.logs, Gatherer: s.deps.Registry}); err != nil {
			return nil, fmt.Errorf("opening the alert rules: %w", err)
		}
	}
	for name := range d.queues {
		d.queueNames = append(d.queueNames, name)
	}
	slices.Sort(d.queueNames)
	return d, nil
}

// principal is the signed-in user as the sync log sees a PHI reader.
type principal struct{ u User }

func (p principal) Subject() string  { return p.u.Email }
func (p principal) CanViewPHI() bool { return p.u.can(permPHI) }

// record writes one admin action to the audit trail. A failure to record
// is logged for operators; the action has already happened.
func (a *app) record(r *http.Request, action, objectType, objectID, before, after string) {
	e := logs.AuditEntry{At: a.now(), Actor: actor(r), Action: action, ObjectType: objectType, ObjectID: objectID,
		Before: before, After: after}
	if err := a.data.logs.AppendAudit(r.Context(), e); err != nil {
		a.log.Error("recording to the audit trail", "action", action, "error", err)
	}
}
