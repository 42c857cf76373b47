package agentbench

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"math"
	"slices"
	"strconv"
	"sync"
	"time"

	"github.com/fhirsync/fhirsync/agent/crm"
	"github.com/fhirsync/fhirsync/agent/fhir"
	"github.com/fhirsync/fhirsync/maps"
	"github.com/fhirsync/fhirsync/queues"
)

// TargetSignalP99 is the bound on RiskAssessment/Flag → CRM task,
// 99th percentile, while the device stream runs.
const TargetSignalP99 = 60 * time.Second

// SignalConfig sets the signal leg of a device-stream run: while the
// readings' notices go out, a scoring job writes RiskAssessments (and a
// Flag for each risk out of range) to the FHIR server at Rate per second,
// each announced on the same fhir-changes queue; the leg measures the time
// from each FHIR write to its CRM task.
type SignalConfig struct {
	// Rate is the signal resources written per second (1).
	Rate float64
	// Patients is how many of the stream's patients are in the CRM as
	// contacts and receive signals (20).
	Patients int
}

// SignalResult is what the signal leg measured. Latency runs from the
// FHIR write of a resource (before its create request) to the sandbox
// CRM's commit of its task, as the CRM's write hook saw it.
type SignalResult struct {
	Written int           `json:"written"`
	Tasks   int           `json:"tasks"`
	Missing int           `json:"missing"` // resources whose task did not appear within 2 minutes
	P50     time.Duration `json:"p50_ns"`
	P99     time.Duration `json:"p99_ns"`
	Max     time.Duration `json:"max_ns"`
	// Duplicates counts tasks beyond one per resource. Must be 0.
	Duplicates int `json:"duplicates"`
}

// signalTeamID is the care coordinators' team that owns the tasks.
const signalTeamID = "5e1a0000-0000-4000-8000-0000000be7c0"

// signalLeg writes signals while the stream runs.
type signalLeg struct {
	cfg   SignalConfig
	fc    *fhir.Client
	q     queues.Queue
	sb    *local
	human *crm.Client

	mu      sync.Mutex
	written map[string]time.Time // signal key (Type_id) → FHIR write began
	stop    context.CancelFunc
	done    chan error
}

// signalMaps adds the leg's two signal maps to doc: RiskAssessments with
// a probability of 0.7 or more, and active Flags, raise tasks regarding
// the patient's contact for the team. The patient map is the starter's.
func signalMaps(doc *maps.Document) {
	// The starter set ships its own risk-signal and flag-signal (disabled,
	// owned by the contact's owner); the leg's team-owned ones replace them.
	doc.EntityMaps = slices.DeleteFunc(doc.EntityMaps, func(em maps.EntityMap) bool {
		return em.Name == "risk-signal" || em.Name == "flag-signal"
	})
	for i := range doc.EntityMaps {
		if t := doc.EntityMaps[i].FHIRType; t == "Flag" || t == "RiskAssessment" {
			off := false
			doc.EntityMaps[i].Enabled = &off
		}
	}
	task := func(name, typ, subject string, sig maps.Signal) maps.EntityMap {
		return maps.EntityMap{Name: name, CRMEntity: "task", CRMEntitySet: "tasks", CRMIDAttribute: "activityid", FHIRType: typ,
			FHIRToCRM:   maps.Flow{Enabled: true, Operations: []maps.Operation{maps.OpCreate, maps.OpUpdate}},
			Correlation: maps.Correlation{CRMAttribute: "fhirsync_signalsource", FHIRIdentifierSystem: "urn:fhirsync:crm:signaltaskid"},
			Attributes: []maps.AttributeMap{
				{Name: "subject", CRMAttribute: "subject", CRMType: maps.TypeString, Action: maps.ActionComputed, Expression: subject, Direction: maps.FHIRToCRM},
				{Name: "priority", CRMAttribute: "prioritycode", CRMType: maps.TypeOptionSet, Action: maps.ActionDefault, Default: "2", Direction: maps.FHIRToCRM},
				{Name: "regarding", CRMAttribute: "regardingobjectid", CRMType: maps.TypeLookup, FHIRPath: "subject.reference", Action: maps.ActionLookup,
					Lookup: &maps.Lookup{EntityMap: "patient-contact", Navigation: "regardingobjectid_contact_task"}, Direction: maps.FHIRToCRM},
			},
			Signal: &sig}
	}
	doc.EntityMaps = append(doc.EntityMaps,
		task("risk-signal", "RiskAssessment", "'Risk: ' + prediction.first().outcome.text", maps.Signal{When: "status = 'final'",
			Probability: &maps.ProbabilityThreshold{Path: "prediction.probabilityDecimal", AtLeast: 0.7}, Owner: maps.SignalOwner{Team: signalTeamID}}),
		task("flag-signal", "Flag", "'Flag: ' + code.text", maps.Signal{When: "status = 'active'", EndsAt: "period.end", Owner: maps.SignalOwner{Team: signalTeamID}}))
}

// newSignalLeg seeds the CRM with the team and the patients' contacts.
func newSignalLeg(ctx context.Context, cfg SignalConfig, sb *local, fc *fhir.Client, q queues.Queue) (*signalLeg, error) {
	if cfg.Rate <= 0 {
		cfg.Rate = 1
	}
	if cfg.Patients <= 0 {
		cfg.Patients = 20
	}
	human, err := coordinator(sb.crmURL())
	if err != nil {
		return nil, err
	}
	if _, err := human.Create(ctx, "teams", crm.Record{"teamid": signalTeamID, "name": "Care coordinators"}); err != nil {
		return nil, fmt.Errorf("creating the care coordinators' team: %w", err)
	}
	for p := range cfg.Patients {
		if _, err := human.Create(ctx, "contacts", crm.Record{"lastname": "Device patient " + strconv.Itoa(p), "msemr_azurefhirid": "device-pat-" + strconv.Itoa(p)}); err != nil {
			return nil, fmt.Errorf("creating a patient's contact: %w", err)
		}
	}
	return &signalLeg{cfg: cfg, fc: fc, q: q, sb: sb, human: human, written: map[string]time.Time{}}, nil
}

// start writes signals at the configured rate until stopped: each second
// alternately a RiskAssessment above the threshold or an active Flag, for
// the patients in turn.
func (l *signalLeg) start(ctx context.Context) {
	ctx, l.stop = context.WithCancel(ctx)
	l.done = make(chan error, 1)
	go func() {
		every := time.Duration(float64(time.Second) / l.cfg.Rate)
		t := time.NewTicker(every)
		defer t.Stop()
		for i := 0; ; i++ {
			if err := l.write(ctx, i); err != nil && ctx.Err() == nil {
				l.done <- err
				return
			}
			select {
			case <-ctx.Done():
				l.done <- nil
				return
			case <-t.C:
			}
		}
	}()
}

func (l *signalLeg) write(ctx context.Context, i int) error {
	patient := "Patient/device-pat-" + strconv.Itoa(i%l.cfg.Patients)
	res := fhir.Resource{"resourceType": "RiskAssessment", "status": "final", "subject": map[string]any{"reference": patient},
		"occurrenceDateTime": time.Now().UTC().Format(time.RFC3339),
		"prediction":         []any{map[string]any{"outcome": map[string]any{"text": "Arrhythmia"}, "probabilityDecimal": json.Number("0.83")}}}
	if i%2 == 1 {
		res = fhir.Resource{"resourceType": "Flag", "status": "active", "subject": map[string]any{"reference": patient},
			"code": map[string]any{"text": "Heart rate out of range"}}
	}
	began := time.Now()
	got, err := l.fc.Create(ctx, res)
	if err != nil {
		return fmt.Errorf("writing a signal: %w", err)
	}
	typ := res["resourceType"].(string)
	l.mu.Lock()
	l.written[maps.SignalKey(typ, got.ID())] = began
	l.mu.Unlock()
	n := queues.Notice{V: queues.NoticeVersion, Side: queues.SideFHIR, Type: typ, ID: got.ID(), Version: got.VersionID(),
		Event: queues.EventCreated, Origin: "ahds-event", ChangedAt: began}
	m, err := n.Message()
	if err != nil {
		return err
	}
	return l.q.Send(ctx, m)
}

// halt stops writing signals.
func (l *signalLeg) halt() error {
	if l == nil || l.stop == nil {
		return nil
	}
	l.stop()
	l.stop = nil
	return <-l.done
}

// finish stops writing, waits up to two minutes for every task, and
// measures.
func (l *signalLeg) finish(ctx context.Context) (*SignalResult, error) {
	if err := l.halt(); err != nil {
		return nil, err
	}
	l.mu.Lock()
	written := make(map[string]time.Time, len(l.written))
	for k, v := range l.written {
		written[k] = v
	}
	l.mu.Unlock()
	deadline := time.Now().Add(2 * time.Minute)
	var tasks map[string]time.Time
	for {
		_, crmSide := l.sb.tw.snapshot()
		tasks = map[string]time.Time{}
		for k := range written {
			if at, ok := crmSide[taskMark(k)]; ok {
				tasks[k] = at
			}
		}
		if len(tasks) == len(written) || time.Now().After(deadline) {
			break
		}
		select {
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-time.After(250 * time.Millisecond):
		}
	}
	r := &SignalResult{Written: len(written), Tasks: len(tasks), Missing: len(written) - len(tasks)}
	var lat []time.Duration
	for k, at := range tasks {
		lat = append(lat, at.Sub(written[k]))
	}
	slices.Sort(lat)
	if len(lat) > 0 {
		r.P50, r.P99, r.Max = percentile(lat, 0.50), percentile(lat, 0.99), lat[len(lat)-1]
	}
	// One task per resource: the sandbox's tasks against the resources.
	r.Duplicates = max(l.sb.crmSrv.Count("task")-len(tasks), 0)
	return r, nil
}

// percentile is the nearest-rank percentile of sorted ds.
func percentile(ds []time.Duration, p float64) time.Duration {
	i := int(math.Ceil(p*float64(len(ds)))) - 1
	return ds[min(max(i, 0), len(ds)-1)]
}

// taskMark is the CRM write mark of a signal's task (targetWrites).
func taskMark(key string) string { return "task:" + key }

// writeSignals prints the signal leg for people.
func writeSignals(w io.Writer, r *SignalResult) {
	met := "met"
	if r.P99 >= TargetSignalP99 || r.Missing > 0 {
		met = "not met"
	}
	fmt.Fprintf(w, "  signals           %d RiskAssessments/Flags written while the stream ran → %d CRM tasks (%d missing, %d duplicate)\n",
		r.Written, r.Tasks, r.Missing, r.Duplicates)
	fmt.Fprintf(w, "  FHIR write → task p50 %s, p99 %s, max %s  target p99 < %s: %s\n",
		r.P50.Round(time.Millisecond), r.P99.Round(time.Millisecond), r.Max.Round(time.Millisecond), TargetSignalP99, met)
}
