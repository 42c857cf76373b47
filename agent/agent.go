package agent

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"go.opentelemetry.io/otel/trace"
	"gorm.io/gorm"

	"github.com/fhirsync/fhirsync/agent/crm"
	"github.com/fhirsync/fhirsync/logs"
	"github.com/fhirsync/fhirsync/maps"
	"github.com/fhirsync/fhirsync/maps/path"
	"github.com/fhirsync/fhirsync/queues"
	"github.com/fhirsync/fhirsync/storage"
)

// Config tunes the agent. Zero values take the defaults noted.
type Config struct {
	// Workers is the number of concurrent messages per queue (default
	// DefaultWorkers). A message spends most of its time waiting on the
	// endpoints and the group commit, so workers are cheap; the CRM client
	// still caps its own requests in flight.
	Workers int
	// MaxAttempts is how many deliveries a retryable failure gets before
	// it is dead-lettered as attempts_exhausted (default 10). Keep it below
	// the queue's own maximum delivery count.
	MaxAttempts int
	// RetryBase and RetryMax shape the exponential backoff (2s, 5m).
	RetryBase, RetryMax time.Duration
	// Drain bounds how long in-flight messages may finish at shutdown (30s).
	Drain time.Duration
	// LockRenewEvery renews message locks while processing; zero leaves
	// renewal to the transport (the Service Bus adapter renews itself).
	LockRenewEvery time.Duration
	// CRMUserID is the agent's own application user in the CRM. A change
	// it initiated is only a hint of an echo: the echo is confirmed by the
	// version the agent wrote, since another integration may sign in as
	// the same user.
	CRMUserID string
	// CRMUserIDs are the agent's further application users when the CRM
	// client signs in as several; each counts as CRMUserID does.
	CRMUserIDs []string
	// OwnWriteTTL is how long the versions the agent wrote are remembered
	// for echo detection (7 days).
	OwnWriteTTL time.Duration
	// FHIRAccount is the FHIR service name whose AHDS events are
	// accepted; events naming another service, and every event while it
	// is empty, are invalid messages. fhirsync's own notices need none.
	FHIRAccount string
	// DepthEvery is how often queue depth is sampled for metrics (15s).
	DepthEvery time.Duration
	// BaseKey is the installation's secret (the sync log's key secret,
	// decoded) under which each linked pair's base state — what was last
	// synced per attribute on each side — is hashed. Without it no base
	// state is kept: unkeyed hashes of short values can be reversed.
	BaseKey []byte
	// ConflictSkew is last-writer-wins' clock-skew allowance: two edits
	// whose modified times are no further apart count as simultaneous
	// (default 2s; negative: none).
	ConflictSkew time.Duration
	// ConflictTie settles a last-writer-wins conflict whose order is not
	// known: hold (the default), fhir-wins or crm-wins.
	ConflictTie maps.ConflictPolicy
	// StaleRetries is how many times a write refused with HTTP 412 (the
	// target changed since it was read) is re-read, merged and tried
	// again within one delivery (default 3; negative: none).
	StaleRetries int
	// ResolveEvery is how often resolutions of held conflicts are looked
	// for and sent to be written (default 2s).
	ResolveEvery time.Duration
	// CRMBatchMax is how many CRM operations of concurrent messages share
	// one $batch request (crm.Coalescer; default 100, at most 1,000), each
	// record's writes in one change set; 1 turns batching off: every
	// operation is a request of its own. Batching applies when Deps.CRM is
	// a *crm.Client.
	CRMBatchMax int
	// CRMBatchWait is how long the first operation of a $batch waits for
	// others (default 100ms); a batch goes sooner when all of a queue's
	// workers wait on it, or half of them and no other operation came for
	// a tenth of the wait (crm.Callers).
	CRMBatchWait time.Duration
	// CRMBulkOff keeps each record's CRM writes in a change set of its
	// own. By default the writes of new records (and updates by id sent
	// alone) of one batch go as CreateMultiple / UpdateMultiple messages
	// (crm.CoalesceConfig.NoBulk).
	CRMBulkOff bool
	// BackfillWorkers is how many notices of a backfill or reconcile are
	// processed at once per queue, beside Workers (default 512; negative:
	// none apart, they share Workers). See backfill_lane.go.
	BackfillWorkers int
	// BackfillBatchMax and BackfillBatchWait are CRMBatchMax and
	// CRMBatchWait for the CRM requests of those notices (default 1,000
	// operations, 2s). Batching off (CRMBatchMax 1) turns them off too.
	BackfillBatchMax  int
	BackfillBatchWait time.Duration
	// Stream tunes the windows of stream maps (stream.go); zero values
	// take its defaults.
	Stream StreamConfig
}

// DefaultWorkers is how many messages of each queue are processed at once
// unless Config.Workers says otherwise. Each message waits in turn for a
// shared CRM $batch, a FHIR batch Bundle and the group commit, so the
// messages in flight, not the CPU, set the pace: a queue moves at most
// Workers ÷ (one message's time) records a second, and a message's time
// is the endpoints' answer times added up — tens of milliseconds against
// the sandboxes on loopback, hundreds against Dataverse and a FHIR
// service over the network. In `fhirsync bench --records 10000
// --crm-bypass-own-steps on`, 256 workers instead of 64 gave 1.5 times the
// FHIR→CRM and 1.4 times the CRM→FHIR records a second, at the same FHIR→CRM
// CPU per record and about a tenth more CRM→FHIR (docs/benchmarks.md,
// twelfth round).
const DefaultWorkers = 256

func (c Config) withDefaults() Config {
	if c.Workers <= 0 {
		c.Workers = DefaultWorkers
	}
	if c.MaxAttempts <= 0 {
		c.MaxAttempts = 10
	}
	if c.RetryBase <= 0 {
		c.RetryBase = 2 * time.Second
	}
	if c.RetryMax <= 0 {
		c.RetryMax = 5 * time.Minute
	}
	if c.Drain <= 0 {
		c.Drain = 30 * time.Second
	}
	if c.OwnWriteTTL <= 0 {
		c.OwnWriteTTL = 7 * 24 * time.Hour
	}
	if c.DepthEvery <= 0 {
		c.DepthEvery = 15 * time.Second
	}
	if c.StaleRetries == 0 {
		c.StaleRetries = 3
	} else if c.StaleRetries < 0 {
		c.StaleRetries = 0
	}
	if c.ResolveEvery <= 0 {
		c.ResolveEvery = 2 * time.Second
	}
	if c.BackfillWorkers == 0 {
		c.BackfillWorkers = DefaultBackfillWorkers
	}
	if c.BackfillBatchMax <= 0 {
		c.BackfillBatchMax = DefaultBackfillBatchMax
	}
	if c.BackfillBatchWait <= 0 {
		c.BackfillBatchWait = DefaultBackfillBatchWait
	}
	return c
}

// mapStore publishes the current map set and its changes.
type mapStore interface {
	Watch(ctx context.Context) <-chan *maps.Set
}

// Deps are the services the agent connects.
type Deps struct {
	DB          *gorm.DB
	Maps        mapStore
	FHIR        fhirAPI
	CRM         crmAPI
	Logs        decisionLog
	FHIRChanges queues.Queue // notices of FHIR changes, synced to the CRM
	CRMChanges  queues.Queue // notices of CRM changes, synced to FHIR
	Registry    prometheus.Registerer
	Logger      *slog.Logger
	// Capture, when set, returns payload snapshots for a decision (payload
	// capture on). It receives the source and the mapped output.
	Capture func(src, out any) *logs.Snapshots
	// Tracer, when set, traces each message from the trace context its
	// properties carry (see tracing.go); nil: tracing off.
	Tracer trace.TracerProvider
}

// Agent syncs both directions.
type Agent struct {
	cfg     Config
	deps    Deps
	pipe    *pipeline
	current atomic.Pointer[maps.Set]
	ready   chan struct{}
	once    sync.Once
	log     *slog.Logger
	// batch group-commits decisions when the log supports batches.
	batch *batchWriter
}

// New wires an agent. Run starts it.
func New(cfg Config, deps Deps) (*Agent, error) {
	cfg = cfg.withDefaults()
	if deps.DB == nil || deps.Maps == nil || deps.FHIR == nil || deps.CRM == nil || deps.Logs == nil || deps.FHIRChanges == nil || deps.CRMChanges == nil {
		return nil, errors.New("agent: DB, Maps, FHIR, CRM, Logs, FHIRChanges and CRMChanges are required")
	}
	if deps.Logger == nil {
		deps.Logger = slog.New(slog.DiscardHandler)
	}
	a := &Agent{cfg: cfg, deps: deps, ready: make(chan struct{}), log: deps.Logger}
	lk, ow := links{db: deps.DB}, newOwnWrites(deps.DB)
	if len(cfg.BaseKey) > 0 {
		// The hashes of own writes' values are keyed by the installation's
		// secret too, under a key of their own.
		ow.key = newValueKey(cfg.BaseKey)
	}
	api := deps.CRM
	var live *crm.Coalescer
	if c, ok := deps.CRM.(*crm.Client); ok && cfg.CRMBatchMax != 1 {
		// Concurrent messages' CRM requests share $batch requests.
		k, err := crm.NewCoalescer(c, crm.CoalesceConfig{MaxOps: cfg.CRMBatchMax, MaxWait: cfg.CRMBatchWait, NoBulk: cfg.CRMBulkOff})
		if err != nil {
			return nil, fmt.Errorf("agent: %w", err)
		}
		api, live = k, k
		if cfg.BackfillWorkers > 0 {
			// Notices of a backfill or reconcile share large batches
			// of their own (backfill_lane.go).
			bk, err := crm.NewCoalescer(c, crm.CoalesceConfig{MaxOps: cfg.BackfillBatchMax, MaxWait: cfg.BackfillBatchWait, NoBulk: cfg.CRMBulkOff})
			if err != nil {
				return nil, fmt.Errorf("agent: backfill batches: %w", err)
			}
			api = newLaneAPI(k, bk)
		}
	}
	lookups := newLookupCache()
	res := conceptLookups{resolver: resolver{links: lk, crm: api, maps: a.entityMapByName, sharing: a.entityMapsOfCRM, lookups: lookups}, concepts: newConceptCache(api)}
	fs := fhirSide{api: deps.FHIR, crm: api, writes: ow}
	cs := crmSide{api: api, writes: ow, links: lk, sharing: a.entityMapsOfCRM}
	prec := newPrecisions(deps.CRM)
	own := newCRMUsers(cfg.CRMUserID, cfg.CRMUserIDs)
	a.pipe = &pipeline{
		flows: map[queues.Side]*flow{
			queues.SideFHIR: {dir: logs.FHIRToCRM, side: queues.SideFHIR, targetOf: "crm", source: fs, target: cs,
				mapFor: func(ctx context.Context, m *maps.Mapping, src record, cur *record) (mapped, error) {
					return mapToCRM(ctx, m, src, cur, res, prec, nil)
				},
				mapExcept: func(ctx context.Context, m *maps.Mapping, src record, cur *record, skip maps.Except) (mapped, error) {
					return mapToCRM(ctx, m, src, cur, res, prec, skip)
				},
				filtered: func(m *maps.Mapping, src record) (string, error) {
					name, err := m.FHIRFiltered(src.Data)
					return name, engineError(err)
				},
				isEcho: func(ctx context.Context, n queues.Notice, src record) (bool, error) {
					return ow.echo(ctx, "fhir", n, src)
				}},
			queues.SideCRM: {dir: logs.CRMToFHIR, side: queues.SideCRM, targetOf: "fhir", source: cs, target: fs,
				mapFor: func(ctx context.Context, m *maps.Mapping, src record, cur *record) (mapped, error) {
					return mapToFHIR(ctx, m, src, cur, res, nil)
				},
				mapExcept: func(ctx context.Context, m *maps.Mapping, src record, cur *record, skip maps.Except) (mapped, error) {
					return mapToFHIR(ctx, m, src, cur, res, skip)
				},
				filtered: func(m *maps.Mapping, src record) (string, error) {
					return m.CRMFiltered(crmState(&src).Record), nil
				},
				isEcho: func(ctx context.Context, n queues.Notice, src record) (bool, error) {
					return ow.echo(ctx, "crm", n, src)
				},
				ownNotice: own.initiated},
		},
		maps:         a.mapSet,
		crmBatch:     live,
		workers:      cfg.Workers,
		log:          deps.Logs,
		links:        lk,
		lookups:      lookups,
		writes:       ow,
		base:         newBaseHasher(cfg.BaseKey),
		maxAttempts:  cfg.MaxAttempts,
		mergeOpts:    mergeOptions{Skew: cfg.ConflictSkew, Tie: cfg.ConflictTie},
		crmUsers:     own,
		staleRetries: cfg.StaleRetries,
		backoff:      Backoff{Base: cfg.RetryBase, Max: cfg.RetryMax},
		metrics:      newMetrics(deps.Registry),
		plog:         deps.Logger,
		now:          time.Now,
		capture:      deps.Capture,
		fhirAccount:  cfg.FHIRAccount,

		requeue: func(ctx context.Context, ns []queues.Notice) error {
			for _, n := range ns {
				msg, err := n.Message()
				if err != nil {
					continue // DecodeEvents validated each notice; none fails here
				}
				q := deps.FHIRChanges
				if n.Side == queues.SideCRM {
					q = deps.CRMChanges
				}
				if err := q.Send(ctx, msg); err != nil {
					return err
				}
			}
			return nil
		},
	}
	a.pipe.parking = newEchoParking(api)
	a.pipe.tracer = tracerOf(deps.Tracer)
	if deps.Tracer != nil {
		traceFlows(a.pipe.flows, a.pipe.tracer)
	}
	a.pipe.streams = newStreamer(cfg.Stream, deps.DB, replicaName(), deps.Registry, deps.Logger, a.pipe.now)
	if !cfg.Stream.ReadOneByOne {
		a.pipe.streams.reader = newReadingReader(deps.FHIR.Search)
	}
	if cs, ok := deps.Logs.(conflictStore); ok && storage.SameDatabase(logsDatabase(deps.Logs), deps.DB) {
		a.pipe.conflicts = cs
	}
	// Group commit needs the sync log in the agent's database, where the
	// links and own writes live.
	if bs, ok := deps.Logs.(batchStore); ok && storage.SameDatabase(logsDatabase(deps.Logs), deps.DB) {
		a.batch = newBatchWriter(bs, 4*cfg.Workers, 2*time.Millisecond, applyEffects)
		a.batch.committed = a.pipe.metrics.observeGroupCommit
		a.pipe.batch = a.batch
	}
	return a, nil
}

// logsDatabase is the database a sync log keeps its decisions in, when it
// says.
func logsDatabase(l decisionLog) *gorm.DB {
	if d, ok := l.(interface{ Database() *gorm.DB }); ok {
		return d.Database()
	}
	return nil
}

// settlesInTx returns q as a txQueue when its messages can be completed in
// the transaction that records their decisions: a queue kept in the same
// database as the group-committed sync log.
func (a *Agent) settlesInTx(q queues.Queue) txQueue {
	tq, ok := q.(txQueue)
	if !ok || a.batch == nil || !storage.SameDatabase(tq.Database(), a.deps.DB) {
		return nil
	}
	return tq
}

// setView adapts a compiled maps.Set to the pipeline.
type setView struct{ s *maps.Set }

func (v setView) Version() int         { return v.s.Version() }
func (v setView) all() []*maps.Mapping { return v.s.Maps() }
func (v setView) candidates(side queues.Side, typ string) []*maps.Mapping {
	if side == queues.SideFHIR {
		return v.s.ForFHIR(typ)
	}
	return v.s.ForCRM(typ)
}

// emptySet stands in before anything is published: every notice is
// skipped as no_entity_map.
type emptySet struct{}

func (emptySet) Version() int                                   { return 0 }
func (emptySet) candidates(queues.Side, string) []*maps.Mapping { return nil }

func (a *Agent) mapSet(ctx context.Context) (mapSet, error) {
	if s := a.current.Load(); s != nil {
		return setView{s}, nil
	}
	return emptySet{}, nil
}

func (a *Agent) entityMapByName(name string) (*maps.EntityMap, bool) {
	s := a.current.Load()
	if s == nil {
		return nil, false
	}
	m, ok := s.Map(name)
	if !ok {
		return nil, false
	}
	return m.Def(), true
}

// entityMapsOfCRM is the published entity maps of a CRM entity.
func (a *Agent) entityMapsOfCRM(entity string) []*maps.EntityMap {
	s := a.current.Load()
	if s == nil {
		return nil
	}
	var out []*maps.EntityMap
	for _, m := range s.ForCRM(entity) {
		out = append(out, m.Def())
	}
	return out
}

// Run processes both queues until ctx ends, then drains. New map
// publications take effect without a restart.
func (a *Agent) Run(ctx context.Context) error {
	watchCtx, stopWatch := context.WithCancel(context.WithoutCancel(ctx))
	defer stopWatch()
	sets := a.deps.Maps.Watch(watchCtx)
	// Take the first published set (if any) before receiving, so the first
	// messages are not skipped for want of maps.
	select {
	case s, ok := <-sets:
		if ok && s != nil {
			a.current.Store(s)
			a.log.Info("map set loaded", "map_version", s.Version())
		}
	case <-time.After(2 * time.Second):
		a.log.Warn("no published map set yet; notices are skipped as no_entity_map until one is published")
	case <-ctx.Done():
	}
	go func() {
		for s := range sets {
			if old := a.current.Swap(s); old == nil || old.Version() != s.Version() {
				a.log.Info("map set changed", "map_version", s.Version())
			}
		}
	}()

	// The decision writer outlives the pools: draining workers still
	// record their decisions.
	batchCtx, stopBatch := context.WithCancel(context.WithoutCancel(ctx))
	batchDone := make(chan struct{})
	if a.batch != nil {
		go func() { a.batch.run(batchCtx); close(batchDone) }()
	} else {
		close(batchDone)
	}
	defer func() { stopBatch(); <-batchDone }()
	// The stream window writer, like the decision writer, outlives the
	// pools: draining workers wait on it.
	streamDone := make(chan struct{})
	go func() { a.pipe.streams.runWriter(batchCtx); close(streamDone) }()
	if r := a.pipe.streams.reader; r != nil {
		go r.run(batchCtx)
	}
	defer func() { stopBatch(); <-streamDone }()

	var wg sync.WaitGroup
	errs := make(chan error, 2)
	for name, q := range map[string]queues.Queue{"fhir-changes": a.deps.FHIRChanges, "crm-changes": a.deps.CRMChanges} {
		p := &pool{name: name, q: q, handle: a.pipe.handleOn(a.settlesInTx(q)), workers: a.cfg.Workers, batch: a.cfg.Workers * 2,
			bulkWorkers:    max(a.cfg.BackfillWorkers, 0),
			lockRenewEvery: a.cfg.LockRenewEvery, drain: a.cfg.Drain, log: a.log}
		wg.Go(func() {
			if err := p.run(ctx); err != nil {
				errs <- fmt.Errorf("queue %s: %w", name, err)
			}
		})
		wg.Go(func() { a.sampleDepth(ctx, name, q) })
	}
	wg.Go(func() { a.pruneOwnWrites(ctx) })
	wg.Go(func() { a.pipe.streams.runCloser(ctx, a.pipe.closeWindow) })
	if a.pipe.conflicts != nil {
		wg.Go(func() { a.sendResolutions(ctx) })
	}
	a.once.Do(func() { close(a.ready) })
	wg.Wait()
	// Parked messages end their processing before decisions stop.
	a.pipe.parking.wait()
	close(errs)
	return errors.Join(collect(errs)...)
}

func collect(ch <-chan error) []error {
	var out []error
	for e := range ch {
		out = append(out, e)
	}
	return out
}

// Ready is closed once Run has started its workers.
func (a *Agent) Ready() <-chan struct{} { return a.ready }

func (a *Agent) sampleDepth(ctx context.Context, name string, q queues.Queue) {
	t := time.NewTicker(a.cfg.DepthEvery)
	defer t.Stop()
	for {
		if d, err := q.Depth(ctx); err == nil {
			a.pipe.metrics.depth.WithLabelValues(name, "active").Set(float64(d.Active))
			a.pipe.metrics.depth.WithLabelValues(name, "scheduled").Set(float64(d.Scheduled))
			a.pipe.metrics.depth.WithLabelValues(name, "dead_letter").Set(float64(d.DeadLetter))
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

func (a *Agent) pruneOwnWrites(ctx context.Context) {
	t := time.NewTicker(time.Hour)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			if n, err := a.pipe.writes.prune(ctx, a.cfg.OwnWriteTTL); err != nil {
				a.log.Warn("pruning own-write records failed", "error", err)
			} else if n > 0 {
				a.log.Info("pruned own-write records", "rows", n)
			}
		}
	}
}

// mapToCRM runs the engine for a FHIR change. Decimal and money values are
// compared with the CRM's at the precision the CRM keeps (prec).
func mapToCRM(ctx context.Context, m *maps.Mapping, src record, cur *record, r maps.LookupResolver, prec *precisions, skip maps.Except) (mapped, error) {
	res, err := m.ToCRMExcept(ctx, src.Data, crmState(cur), r, skip)
	if err != nil {
		return mapped{}, engineError(err)
	}
	if res.Filtered != "" || res.Gated != "" {
		return mapped{Filtered: res.Filtered, Gated: res.Gated}, nil
	}
	rounded := prec.settle(ctx, m.Def().CRMEntity, res, crmState(cur))
	return mapped{Data: res, Changed: res.Changed, Rounded: rounded, Declared: declaredRounding(m, res.Rounded), ChangedAttrs: stillChanged(m, res)}, nil
}

// mapToFHIR runs the engine for a CRM change onto the current FHIR
// resource (read-modify-write: everything unmapped is kept).
func mapToFHIR(ctx context.Context, m *maps.Mapping, src record, cur *record, r maps.LookupResolver, skip maps.Except) (mapped, error) {
	var base map[string]any
	if cur != nil {
		// The engine writes into its base: map onto a copy, so that the
		// record as read stays for the merge and a second mapping.
		base, _ = path.DeepCopy(cur.Data).(map[string]any)
	}
	st := crmState(&src)
	res, err := m.ToFHIRExcept(ctx, *st, base, r, skip)
	if err != nil {
		return mapped{}, engineError(err)
	}
	if res.Filtered != "" || res.Gated != "" {
		return mapped{Filtered: res.Filtered, Gated: res.Gated}, nil
	}
	return mapped{Data: res.Resource, Changed: res.Changed, ChangedAttrs: res.ChangedAttributes}, nil
}

// engineError turns a maps.MappingError into the agent's mapping error
// naming the attribute map; a lookup's endpoint failure stays retryable.
func engineError(err error) error {
	var me *maps.MappingError
	if errors.As(err, &me) {
		var ee *endpointError
		if errors.As(err, &ee) {
			return err
		}
		name := me.Attribute
		if me.Expansion != "" {
			name = me.Expansion + "." + name
		}
		return &mappingError{attribute: name, retryable: errors.Is(err, maps.ErrUnresolvedLookup), err: err}
	}
	return err
}

// stillChanged is the attribute maps whose CRM attribute still differs
// after rounding to the CRM's precision settled the result.
func stillChanged(m *maps.Mapping, res *maps.CRMResult) []string {
	if len(res.ChangedAttributes) == 0 {
		return nil
	}
	out := make([]string, 0, len(res.ChangedAttributes))
	for _, a := range res.ChangedAttributes {
		cols, ok := m.CRMColumnsOf(a)
		if !ok {
			cols = []string{a} // an expansion map: Changed names it
		}
		for _, c := range cols {
			if slices.Contains(res.Changed, c) {
				out = append(out, a)
				break
			}
		}
	}
	return out
}
