package agentbench

import (
	"context"
	crand "crypto/rand"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"gorm.io/gorm"

	"github.com/fhirsync/fhirsync/agent"
	"github.com/fhirsync/fhirsync/agent/crm"
	"github.com/fhirsync/fhirsync/agent/fhir"
	"github.com/fhirsync/fhirsync/internal/proccpu"
	"github.com/fhirsync/fhirsync/logs"
	"github.com/fhirsync/fhirsync/maps"
	"github.com/fhirsync/fhirsync/maps/starter"
	"github.com/fhirsync/fhirsync/queues"
	"github.com/fhirsync/fhirsync/queues/embedded"
)

// Targets of the device-stream run (issue 21).
const (
	// TargetStreamReadingsPerSecond is the offered and sustained rate of
	// device Observations into the FHIR feed.
	TargetStreamReadingsPerSecond = 5000.0
	// TargetStreamReduction is how many readings at least one CRM write
	// may stand for, with aggregation on.
	TargetStreamReduction = 100.0
)

// StreamConfig sets a device-stream run. Zero values take the defaults
// noted.
type StreamConfig struct {
	// DB is a migrated project database (queues, windows, decisions).
	DB *gorm.DB
	// Rate is the device Observations per second offered to the FHIR
	// feed (5,000) for Duration (60s).
	Rate     float64
	Duration time.Duration
	// Patients is how many patients the devices measure (1,000), each
	// with one heart-rate stream; Window is the stream's window (30s).
	Patients int
	Window   time.Duration
	// Workers is the agent's workers per queue (the agent's default).
	Workers int
	// Logger receives the agent's process logs (discarded by default);
	// Progress, when set, one line as each step starts.
	Logger   *slog.Logger
	Progress io.Writer
	// OnStart, when set, is called once the readings are in the FHIR
	// server, just before the first notice (a hook for a second stream
	// measured alongside, such as risk signals to care coordinators).
	OnStart func(ctx context.Context, fhirURL, crmURL string) error
	// Signals, when set, runs the signal leg alongside (signals.go).
	Signals *SignalConfig
}

func (c StreamConfig) withDefaults() StreamConfig {
	if c.Rate <= 0 {
		c.Rate = TargetStreamReadingsPerSecond
	}
	if c.Duration <= 0 {
		c.Duration = time.Minute
	}
	if c.Patients <= 0 {
		c.Patients = 1000
	}
	if c.Window <= 0 {
		c.Window = 30 * time.Second
	}
	if c.Logger == nil {
		c.Logger = discardLogger()
	}
	return c
}

// StreamResult is what a device-stream run measured.
type StreamResult struct {
	Patients      int     `json:"patients"`
	WindowSeconds float64 `json:"window_seconds"`
	// Offered readings, at OfferedPerSecond, over OfferSeconds.
	Offered          int     `json:"offered"`
	OfferedPerSecond float64 `json:"offered_per_second"`
	OfferSeconds     float64 `json:"offer_seconds"`
	// IngestSeconds runs from the first notice until the fhir-changes
	// queue was empty; IngestedPerSecond is Offered over it. MaxBacklog is
	// the most notices waiting at a sample (every 2s).
	IngestSeconds     float64 `json:"ingest_seconds"`
	IngestedPerSecond float64 `json:"ingested_per_second"`
	MaxBacklog        int64   `json:"max_backlog"`
	// Windows is the window decisions recorded; Sent those that wrote an
	// aggregate. CRMWrites is the records the CRM gained (one per window
	// sent); CRMOperations counts every CRM operation of the agent, reads
	// included, by the sandbox CRM's accounting (each request alone, each
	// request inside a $batch, each record of a bulk message), and
	// CRMRequests its HTTP requests. Reduction is Offered / CRMWrites,
	// OperationsReduction Offered / CRMOperations.
	Windows             int     `json:"windows"`
	Sent                int     `json:"sent"`
	CRMWrites           int64   `json:"crm_writes"`
	CRMOperations       int64   `json:"crm_operations"`
	CRMRequests         int64   `json:"crm_requests"`
	Reduction           float64 `json:"reduction"`
	OperationsReduction float64 `json:"operations_reduction"`
	// LogRows and LogBytes are the sync-log rows written from the first
	// notice until every window closed, and the bytes of their values
	// (text lengths, 8 per number; indexes not counted); per hour, at the
	// rate they were written.
	LogRows         int64   `json:"log_rows"`
	LogBytes        int64   `json:"log_bytes"`
	LogRowsPerHour  float64 `json:"log_rows_per_hour"`
	LogBytesPerHour float64 `json:"log_bytes_per_hour"`
	// CPUPerReading is the bench process's CPU time (the agent, the
	// embedded queue, the inline sandboxes serving the reads and writes,
	// the driver) per reading from the first notice to the last window.
	CPUPerReading time.Duration `json:"cpu_per_reading_ns"`
	// Lost counts readings neither aggregated nor dropped as duplicates
	// by the agent's metrics. Must be 0.
	Lost int `json:"lost"`
	// Signals is the signal leg's result, when it ran.
	Signals *SignalResult `json:"signals,omitempty"`
}

// RunStream measures the agent on a device stream: Rate heart-rate
// Observations per second, already in the sandbox FHIR server, are
// announced on the fhir-changes queue as Azure Health Data Services events
// for Duration; the starter Observation map, with a stream section
// (Window, latest value sent, repeats dropped), is the only map they meet.
func RunStream(ctx context.Context, cfg StreamConfig) (*StreamResult, error) {
	cfg = cfg.withDefaults()
	if cfg.DB == nil {
		return nil, errors.New("agentbench: StreamConfig.DB is required")
	}
	progress := func(format string, args ...any) {
		if cfg.Progress != nil {
			fmt.Fprintf(cfg.Progress, format+"\n", args...)
		}
	}
	var rid [4]byte
	_, _ = crand.Read(rid[:])
	runID := "stream-" + hex.EncodeToString(rid[:])
	qopts := embedded.Options{MaxDeliveryCount: 50}
	fhirQ, err := embedded.New(cfg.DB, runID+"-fhir-changes", qopts)
	if err != nil {
		return nil, err
	}
	defer fhirQ.Close(context.Background())
	crmQ, err := embedded.New(cfg.DB, runID+"-crm-changes", qopts)
	if err != nil {
		return nil, err
	}
	defer crmQ.Close(context.Background())
	sb, err := startLocal("", runID, crmQ)
	if err != nil {
		return nil, err
	}
	defer sb.close()
	sb.tw.reset() // the signal leg reads the task marks

	fc, err := fhir.New(fhir.Config{BaseURL: sb.fhirURL()})
	if err != nil {
		return nil, err
	}
	n := int(cfg.Rate * cfg.Duration.Seconds())
	progress("writing %d device Observations for %d patients to the sandbox FHIR server", n, cfg.Patients)
	readings, err := writeReadings(ctx, fc, n, cfg.Patients)
	if err != nil {
		return nil, err
	}

	var secret [24]byte
	_, _ = crand.Read(secret[:])
	ls, err := logs.New(cfg.DB, logs.Config{KeySecret: base64.StdEncoding.EncodeToString(secret[:]), Logger: cfg.Logger}, nil)
	if err != nil {
		return nil, err
	}
	ms, err := maps.New(cfg.DB, maps.Options{Logger: cfg.Logger})
	if err != nil {
		return nil, err
	}
	var leg *signalLeg
	var tweak func(*maps.Document)
	if cfg.Signals != nil {
		if leg, err = newSignalLeg(ctx, *cfg.Signals, sb, fc, fhirQ); err != nil {
			return nil, err
		}
		tweak = signalMaps
	}
	if err := publishStreamMap(ctx, ms, cfg.Window, tweak); err != nil {
		return nil, err
	}
	agentFHIR, err := fhir.NewBatcher(fc, fhir.BatchConfig{Logger: cfg.Logger})
	if err != nil {
		return nil, err
	}
	ccfg, acfg, err := agentCRMUsers(sb.crmURL(), 1)
	if err != nil {
		return nil, err
	}
	agentCRM, err := crm.New(ccfg)
	if err != nil {
		return nil, err
	}
	// Queue depth is sampled at the agent's default (every 15s): counting
	// a long backlog every second takes CPU the run measures.
	acfg.Workers, acfg.LockRenewEvery = cfg.Workers, 20*time.Second
	reg := prometheus.NewRegistry()
	a, err := agent.New(acfg, agent.Deps{DB: cfg.DB, Maps: ms, FHIR: agentFHIR, CRM: agentCRM, Logs: ls,
		FHIRChanges: fhirQ, CRMChanges: crmQ, Registry: reg, Logger: cfg.Logger})
	if err != nil {
		return nil, err
	}
	runCtx, cancel := context.WithCancel(context.WithoutCancel(ctx))
	done := make(chan error, 1)
	go func() { done <- a.Run(runCtx) }()
	defer func() {
		cancel()
		<-done
	}()
	<-a.Ready()
	if cfg.OnStart != nil {
		if err := cfg.OnStart(ctx, sb.fhirURL(), sb.crmURL()); err != nil {
			return nil, err
		}
	}
	before, err := sb.accounts(ctx)
	if err != nil {
		return nil, err
	}
	rowsBefore, err := sb.count(ctx, "msemr_observation")
	if err != nil {
		return nil, err
	}
	logStart := time.Now().UTC()
	cpu0 := proccpu.Used()
	start := time.Now()

	// Sample the backlog while notices go out.
	var maxBacklog atomic.Int64
	sampleCtx, stopSampling := context.WithCancel(ctx)
	var sampling sync.WaitGroup
	sampling.Go(func() {
		t := time.NewTicker(2 * time.Second)
		defer t.Stop()
		for {
			if d, err := fhirQ.Depth(sampleCtx); err == nil && d.Active > maxBacklog.Load() {
				maxBacklog.Store(d.Active)
			}
			select {
			case <-sampleCtx.Done():
				return
			case <-t.C:
			}
		}
	})
	progress("offering %d notices at %.0f/s for %s", n, cfg.Rate, cfg.Duration)
	if leg != nil {
		leg.start(ctx)
	}
	if err := offer(ctx, fhirQ, readings, cfg.Rate); err != nil {
		stopSampling()
		_ = leg.halt()
		return nil, err
	}
	if leg != nil {
		if err := leg.halt(); err != nil {
			stopSampling()
			return nil, err
		}
	}
	offerSecs := time.Since(start).Seconds()
	progress("waiting for the fhir-changes queue to empty")
	if err := waitEmpty(ctx, fhirQ, 10*time.Minute); err != nil {
		stopSampling()
		return nil, err
	}
	ingestSecs := time.Since(start).Seconds()
	stopSampling()
	sampling.Wait()

	progress("waiting for every window to close (%s windows)", cfg.Window)
	if err := waitWindowsClosed(ctx, cfg.DB, cfg.Window+2*time.Minute); err != nil {
		return nil, err
	}
	if err := waitEmpty(ctx, crmQ, 2*time.Minute); err != nil {
		return nil, err
	}
	elapsed := time.Since(start).Seconds()
	cpu := proccpu.Used() - cpu0
	after, err := sb.accounts(ctx)
	if err != nil {
		return nil, err
	}
	res := &StreamResult{Patients: cfg.Patients, WindowSeconds: cfg.Window.Seconds(), Offered: n, OfferedPerSecond: float64(n) / offerSecs,
		OfferSeconds: offerSecs, IngestSeconds: ingestSecs, IngestedPerSecond: float64(n) / ingestSecs, MaxBacklog: maxBacklog.Load(),
		CPUPerReading: cpu / time.Duration(max(n, 1))}
	rowsAfter, err := sb.count(ctx, "msemr_observation")
	if err != nil {
		return nil, err
	}
	u := crmUse(before[agentUser(0)], after[agentUser(0)], 1)
	res.CRMWrites, res.CRMOperations, res.CRMRequests = int64(rowsAfter-rowsBefore), int64(u.OperationsPerRecord), int64(u.RequestsPerRecord)
	res.Reduction = float64(n) / float64(max(res.CRMWrites, 1))
	res.OperationsReduction = float64(n) / float64(max(res.CRMOperations, 1))
	var row struct{ N, Bytes int64 }
	if err := cfg.DB.WithContext(ctx).Raw(`SELECT COUNT(*) AS n, COALESCE(SUM(LENGTH(correlation_id) + LENGTH(message_id) + LENGTH(direction) + LENGTH(entity_map)
		+ LENGTH(source_type) + LENGTH(source_id) + LENGTH(source_version) + LENGTH(target_type) + LENGTH(target_id) + LENGTH(target_version)
		+ LENGTH(outcome) + LENGTH(reason) + LENGTH(reason_subject) + LENGTH(message) + LENGTH(changed_fields) + LENGTH(attempts)
		+ LENGTH(conflicts) + LENGTH(trace_id) + COALESCE(LENGTH(readings), 0) + 5 * 8), 0) AS bytes
		FROM sync_decisions WHERE decided_at >= ?`, logStart).Scan(&row).Error; err != nil {
		return nil, err
	}
	res.LogRows, res.LogBytes = row.N, row.Bytes
	res.LogRowsPerHour, res.LogBytesPerHour = float64(row.N)/elapsed*3600, float64(row.Bytes)/elapsed*3600
	if err := cfg.DB.WithContext(ctx).Raw(`SELECT COUNT(*) FROM sync_decisions WHERE decided_at >= ? AND readings IS NOT NULL`, logStart).Scan(&res.Windows).Error; err != nil {
		return nil, err
	}
	if err := cfg.DB.WithContext(ctx).Raw(`SELECT COUNT(*) FROM sync_decisions WHERE decided_at >= ? AND readings IS NOT NULL AND outcome = 'sent'`, logStart).Scan(&res.Sent).Error; err != nil {
		return nil, err
	}
	taken, err := readingCounts(reg)
	if err != nil {
		return nil, err
	}
	res.Lost = n - taken
	if leg != nil {
		if res.Signals, err = leg.finish(ctx); err != nil {
			return nil, err
		}
	}
	return res, nil
}

// publishStreamMap publishes the starter map set with its Observation map
// turned into a stream map: one-way, window w, the latest value, repeats
// dropped. The readings' patients are not in the CRM, so the map's
// lookups (patient, encounter) are left out: the run measures the stream,
// not the lookups.
func publishStreamMap(ctx context.Context, ms *maps.Store, w time.Duration, tweak func(*maps.Document)) error {
	doc, _, err := maps.Import(starter.YAML(), maps.CompileOptions{})
	if err != nil {
		return fmt.Errorf("importing the starter maps: %w", err)
	}
	found := false
	for i := range doc.EntityMaps {
		em := &doc.EntityMaps[i]
		if em.FHIRType != "Observation" {
			continue
		}
		found = true
		em.CRMToFHIR, em.Samples = maps.Flow{}, nil
		em.Stream = &maps.Stream{Window: maps.Duration(w), Aggregate: maps.AggregateLatest, DropRepeats: true}
		var kept []maps.AttributeMap
		for _, a := range em.Attributes {
			if a.Action != maps.ActionLookup {
				kept = append(kept, a)
			}
		}
		em.Attributes = kept
	}
	if !found {
		return errors.New("the starter maps have no Observation map")
	}
	if tweak != nil {
		tweak(doc)
	}
	v, err := ms.CreateDraft(ctx, doc, "bench", "device stream")
	if err != nil {
		return err
	}
	_, err = ms.Publish(ctx, v.Number, "bench", "device stream")
	return err
}

// streamReading is a reading as the driver announces it.
type streamReading struct{ id, version string }

// writeReadings writes n heart-rate Observations for patients, through
// batch Bundles, and returns them in the order to announce them.
func writeReadings(ctx context.Context, c *fhir.Client, n, patients int) ([]streamReading, error) {
	b, err := fhir.NewBatcher(c, fhir.BatchConfig{Max: 500, Wait: 20 * time.Millisecond})
	if err != nil {
		return nil, err
	}
	out := make([]streamReading, n)
	var next atomic.Int64
	var wg sync.WaitGroup
	errs := make(chan error, 64)
	t0 := time.Now().UTC().Add(-time.Hour)
	for range 64 {
		wg.Go(func() {
			rng := rand.New(rand.NewPCG(uint64(time.Now().UnixNano()), 7))
			for {
				i := int(next.Add(1) - 1)
				if i >= n || ctx.Err() != nil {
					return
				}
				p := i % patients
				// A resting heart rate around 72 with whole-number jitter:
				// some consecutive readings repeat, as devices do.
				v := 72 + int(rng.NormFloat64()*4)
				res := fhir.Resource{"resourceType": "Observation", "status": "final",
					"category":          []any{map[string]any{"coding": []any{map[string]any{"system": "http://terminology.hl7.org/CodeSystem/observation-category", "code": "vital-signs"}}}},
					"code":              map[string]any{"coding": []any{map[string]any{"system": "http://loinc.org", "code": "8867-4", "display": "Heart rate"}}},
					"subject":           map[string]any{"reference": "Patient/device-pat-" + strconv.Itoa(p)},
					"device":            map[string]any{"reference": "Device/monitor-" + strconv.Itoa(p)},
					"effectiveDateTime": t0.Add(time.Duration(i) * time.Millisecond).Format(time.RFC3339Nano),
					"valueQuantity":     map[string]any{"value": json.Number(strconv.Itoa(v)), "unit": "beats/minute", "system": "http://unitsofmeasure.org", "code": "/min"}}
				got, err := b.Create(ctx, res)
				if err != nil {
					errs <- fmt.Errorf("writing reading %d: %w", i, err)
					return
				}
				out[i] = streamReading{id: got.ID(), version: got.VersionID()}
			}
		})
	}
	wg.Wait()
	close(errs)
	return out, <-errs
}

// offer sends a notice per reading at rate, in ticks of 10ms.
func offer(ctx context.Context, q queues.Queue, rs []streamReading, rate float64) error {
	start := time.Now()
	sent := 0
	tick := time.NewTicker(10 * time.Millisecond)
	defer tick.Stop()
	for sent < len(rs) {
		due := min(int(time.Since(start).Seconds()*rate)+1, len(rs))
		if due > sent {
			msgs := make([]queues.Message, 0, due-sent)
			now := time.Now()
			for _, r := range rs[sent:due] {
				n := queues.Notice{V: queues.NoticeVersion, Side: queues.SideFHIR, Type: "Observation", ID: r.id, Version: r.version,
					Event: queues.EventCreated, Origin: "ahds-event", ChangedAt: now}
				m, err := n.Message()
				if err != nil {
					return err
				}
				msgs = append(msgs, m)
			}
			if err := q.Send(ctx, msgs...); err != nil {
				return fmt.Errorf("sending notices: %w", err)
			}
			sent = due
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-tick.C:
		}
	}
	return nil
}

// waitEmpty waits until q holds no message, for at most limit.
func waitEmpty(ctx context.Context, q queues.Queue, limit time.Duration) error {
	deadline := time.Now().Add(limit)
	for time.Now().Before(deadline) {
		d, err := q.Depth(ctx)
		if err != nil {
			return err
		}
		if d.Active == 0 && d.Scheduled == 0 {
			return nil
		}
		// Counting a long queue is not free: look every second.
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(time.Second):
		}
	}
	return fmt.Errorf("queue not empty after %s", limit)
}

// waitWindowsClosed waits until no stream window is open or closing.
func waitWindowsClosed(ctx context.Context, db *gorm.DB, limit time.Duration) error {
	deadline := time.Now().Add(limit)
	for time.Now().Before(deadline) {
		var n int64
		if err := db.WithContext(ctx).Raw(`SELECT COUNT(*) FROM stream_windows WHERE state <> 'closed'`).Scan(&n).Error; err != nil {
			return err
		}
		if n == 0 {
			return nil
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(250 * time.Millisecond):
		}
	}
	return fmt.Errorf("stream windows still open after %s", limit)
}

// readingCounts is the readings the agent's metrics account for: every
// fate of fhirsync_stream_readings_total.
func readingCounts(reg *prometheus.Registry) (int, error) {
	mfs, err := reg.Gather()
	if err != nil {
		return 0, err
	}
	n := 0
	for _, mf := range mfs {
		if mf.GetName() != "fhirsync_stream_readings_total" {
			continue
		}
		for _, m := range mf.GetMetric() {
			n += int(m.GetCounter().GetValue())
		}
	}
	return n, nil
}

// WriteStream prints r for people.
func WriteStream(w io.Writer, r *StreamResult) {
	met := func(ok bool) string {
		if ok {
			return "met"
		}
		return "not met"
	}
	fmt.Fprintf(w, "device stream: %d patients, one heart-rate stream each, %.0fs windows (latest value, repeats dropped)\n", r.Patients, r.WindowSeconds)
	fmt.Fprintf(w, "  offered           %d readings at %.0f/s over %.1fs\n", r.Offered, r.OfferedPerSecond, r.OfferSeconds)
	fmt.Fprintf(w, "  ingested          %.0f readings/s (queue empty %.1fs after the first notice; max backlog %d)  target ≥ %.0f/s: %s\n",
		r.IngestedPerSecond, r.IngestSeconds, r.MaxBacklog, TargetStreamReadingsPerSecond, met(r.IngestedPerSecond >= TargetStreamReadingsPerSecond))
	fmt.Fprintf(w, "  CRM writes        %d records written for %d windows (%d sent); %d CRM operations in all, reads included, in %d requests\n",
		r.CRMWrites, r.Windows, r.Sent, r.CRMOperations, r.CRMRequests)
	fmt.Fprintf(w, "  reduction         %.0f readings per CRM write (%.0f per CRM operation)  target ≥ %.0f: %s\n",
		r.Reduction, r.OperationsReduction, TargetStreamReduction, met(r.Reduction >= TargetStreamReduction))
	fmt.Fprintf(w, "  sync log          %d rows, %d bytes of values; %.0f rows/h, %.1f MB/h at this rate\n", r.LogRows, r.LogBytes, r.LogRowsPerHour, r.LogBytesPerHour/1e6)
	fmt.Fprintf(w, "  CPU per reading   %.0f µs (whole process: agent, embedded queue, inline sandboxes, driver)\n", float64(r.CPUPerReading)/float64(time.Microsecond))
	fmt.Fprintf(w, "  readings lost     %d\n", r.Lost)
	if r.Signals != nil {
		writeSignals(w, r.Signals)
	}
}
