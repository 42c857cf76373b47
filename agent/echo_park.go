package agent

import (
	"context"
	"fmt"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/fhirsync/fhirsync/agent/crm"
	"github.com/fhirsync/fhirsync/logs"
	"github.com/fhirsync/fhirsync/maps"
	"github.com/fhirsync/fhirsync/queues"
)

// A Dataverse service endpoint step registered without an image posts a
// change notice that names the row but not its version
// (RemoteExecutionContext without PostEntityImages). Each row fhirsync
// creates comes back as such a notice, by fhirsync's own application
// user. Telling it from an edit made since — by a person, or another
// integration signed in as the same user — needs the row's current
// version, and reading the row with its child rows for each notice costs
// a backfill more requests than its writes.
//
// So the notice of a row this process created (createdRows) is told from
// the row's version alone: the versions of many such rows are read
// together, one query of the primary key and versionnumber with
// Microsoft.Dynamics.CRM.In ("In Function",
// https://learn.microsoft.com/power-apps/developer/data-platform/webapi/reference/in)
// for up to echoReadMax rows gathered over up to echoReadWait. An echo's
// decision is not latency-critical, but a worker kept waiting that long
// would be: the message is parked — its worker goes on to the next
// message while the check waits, and the message is settled when its
// processing ends, in the transaction of its decision. A row whose
// version is still its create's is decided own_write_echo; any other
// (edited since, deleted, or the read failed) is read and synced as any
// change is.
const (
	// echoReadWait is how long the first parked notice of a table waits
	// for others before their versions are read.
	echoReadWait = time.Second
	// echoReadMax is how many rows one version query reads: a quoted,
	// escaped GUID takes some 45 characters of the URL, so 500 of them
	// stay within Dataverse's 32,768 ("Compose HTTP requests and handle
	// errors", Maximum URL length:
	// https://learn.microsoft.com/power-apps/developer/data-platform/webapi/compose-http-requests-handle-errors#maximum-url-length).
	echoReadMax = 500
	// maxParked bounds the messages parked at once; past it a notice is
	// read and told in its worker as before.
	maxParked = 4096
)

// echoParking parks the processing of create-echo candidates and reads
// their rows' versions together.
type echoParking struct {
	reads *versionReads
	slots chan struct{}
	wg    sync.WaitGroup
}

func newEchoParking(api crmAPI) *echoParking {
	return &echoParking{reads: &versionReads{api: api, max: echoReadMax, wait: echoReadWait, open: map[string]*versionBatch{}},
		slots: make(chan struct{}, maxParked)}
}

// wait blocks until every parked message's processing has ended.
func (ep *echoParking) wait() {
	if ep != nil {
		ep.wg.Wait()
	}
}

// reserve takes a parking place for spot, which must then park. It
// reports false, taking none, when spot is nil (the message cannot park)
// or the lot is full.
func (ep *echoParking) reserve(spot *parkSpot) bool {
	if spot == nil {
		return false
	}
	select {
	case ep.slots <- struct{}{}:
		return true
	default:
		return false
	}
}

// parkSpot lets a message's processing park: give its worker back while
// the processing goes on.
type parkSpot struct {
	once   sync.Once
	ch     chan struct{}
	onPark func()
}

type parkKey struct{}

func spotOf(ctx context.Context) *parkSpot {
	s, _ := ctx.Value(parkKey{}).(*parkSpot)
	return s
}

func (s *parkSpot) park() {
	s.once.Do(func() {
		close(s.ch)
		s.onPark()
	})
}

func (s *parkSpot) parked() bool {
	select {
	case <-s.ch:
		return true
	default:
		return false
	}
}

// parkable runs work, the processing of m, so that it may park: when work
// parks, a new worker takes its worker's place (pool.work) and work goes
// on in this goroutine, its message settled by the pool as any other when
// work ends. Only messages of q, a queue whose completions commit with
// their decisions, processed by a pool's worker, park; others are
// processed as they come.
func (p *pipeline) parkable(ctx context.Context, q txQueue, m *queues.Received, work func(context.Context) settlement) settlement {
	ep := p.parking
	_, ok := q.(queues.Queue)
	hand := handoffOf(ctx)
	if ep == nil || !ok || hand == nil {
		return work(ctx)
	}
	spot := &parkSpot{ch: make(chan struct{})}
	spot.onPark = func() {
		ep.wg.Add(1)
		hand.replace()
	}
	// The work outlives the worker's context once parked; until then, the
	// worker's cancellation (shutdown past the drain period) is its own.
	wctx, cancel := context.WithCancel(context.WithValue(context.WithoutCancel(ctx), parkKey{}, spot))
	stop := context.AfterFunc(ctx, func() {
		if !spot.parked() {
			cancel()
		}
	})
	s := p.safeWork(wctx, m, work)
	stop()
	cancel()
	if spot.parked() {
		<-ep.slots
		ep.wg.Done()
	}
	return s
}

// safeWork turns a panic of parked work into a dead letter, as the pool
// does for its workers.
func (p *pipeline) safeWork(ctx context.Context, m *queues.Received, work func(context.Context) settlement) (s settlement) {
	defer func() {
		if r := recover(); r != nil {
			p.plog.Error("panic while processing a message", "message_id", m.ID, "panic", fmt.Sprint(r))
			s = settlement{kind: settleDeadLetter, reason: "internal_error", description: "processing panicked; see the process log"}
		}
	}()
	return work(ctx)
}

// createEcho decides the change notice n of a CRM row when it is the echo
// of the row's create by this process, from the row's version alone; nil:
// the notice is read and decided as any other. Only a notice by the
// agent's own user naming no version, of a row this process created, is
// considered. When its processing can park, the row's version is read
// with those of other parked notices; otherwise at once, in the shared
// batches of the CRM client (a read of two columns, without child rows).
func (p *pipeline) createEcho(ctx context.Context, f *flow, m *maps.Mapping, n queues.Notice, events int) *step {
	ep := p.parking
	if ep == nil || events != 1 || f.side != queues.SideCRM || n.Version != "" || n.Event == queues.EventDeleted ||
		f.ownNotice == nil || !f.ownNotice(n) {
		return nil
	}
	side := string(f.side)
	created, ok := p.writes.created.version(side, n.Type, n.ID)
	spot := spotOf(ctx)
	if !ep.reserve(spot) {
		spot = nil
	}
	if !ok {
		// The create may still wait for its answer; only a parked
		// notice waits for it here.
		writing := p.writes.flights.inFlight(side, n.Type)
		if spot == nil || len(writing) == 0 {
			if spot != nil {
				<-ep.slots
			}
			return nil
		}
		spot.park()
		wait(ctx, writing, echoWait)
		if created, ok = p.writes.created.version(side, n.Type, n.ID); !ok {
			return nil
		}
	}
	em := m.Def()
	var cur string
	var found bool
	var err error
	if spot != nil {
		spot.park()
		cur, found, err = ep.reads.version(ctx, em.CRMEntitySet, em.IDAttribute(), n.ID)
	} else {
		cur, found, err = ep.reads.versionNow(ctx, em.CRMEntitySet, em.IDAttribute(), n.ID)
	}
	if err != nil || !found || !created.is(cur) {
		return nil
	}
	return stop(logs.OutcomeSkipped, "own_write_echo", "This record is as fhirsync created it (its version is the create's); its echo is not synced back.")
}

// versionReads reads the current versions of rows of a table together.
type versionReads struct {
	api  crmAPI
	max  int
	wait time.Duration

	mu   sync.Mutex
	open map[string]*versionBatch // gathering, by entity set and primary key
}

// versionBatch is one version query: the rows asked for, and its answer
// once done is closed.
type versionBatch struct {
	set, pk string
	ids     []string
	asked   map[string]bool
	done    chan struct{}
	got     map[string]string // id (lower case) → version (normalised)
	err     error
}

// version returns the current version of the row id of set (pk its
// primary key column); found is false when there is no such row.
func (r *versionReads) version(ctx context.Context, set, pk, id string) (v string, found bool, err error) {
	id = strings.ToLower(id)
	key := set + "\x00" + pk
	r.mu.Lock()
	b := r.open[key]
	if b == nil {
		b = &versionBatch{set: set, pk: pk, asked: map[string]bool{}, done: make(chan struct{})}
		r.open[key] = b
		time.AfterFunc(r.wait, func() { r.send(key, b) })
	}
	if !b.asked[id] {
		b.asked[id] = true
		b.ids = append(b.ids, id)
	}
	if len(b.ids) >= r.max {
		delete(r.open, key)
		go b.run(r.api)
	}
	r.mu.Unlock()
	select {
	case <-b.done:
	case <-ctx.Done():
		return "", false, ctx.Err()
	}
	if b.err != nil {
		return "", false, b.err
	}
	v, found = b.got[id]
	return v, found, nil
}

// versionNow reads the current version of one row at once.
func (r *versionReads) versionNow(ctx context.Context, set, pk, id string) (v string, found bool, err error) {
	row, err := r.api.Retrieve(ctx, crm.ByID(set, id), pk, "versionnumber")
	if isMissing(err) {
		return "", false, nil
	}
	if err != nil {
		return "", false, classify(err)
	}
	v = rowVersion(row)
	return v, v != "", nil
}

// send runs b's query when it is still gathering under key (not sent for
// being full).
func (r *versionReads) send(key string, b *versionBatch) {
	r.mu.Lock()
	if r.open[key] != b {
		r.mu.Unlock()
		return
	}
	delete(r.open, key)
	r.mu.Unlock()
	b.run(r.api)
}

// run reads the versions of b's rows in one query and answers its
// callers.
func (b *versionBatch) run(api crmAPI) {
	b.got = make(map[string]string, len(b.ids))
	q := crm.Query{Select: []string{b.pk, "versionnumber"}, Filter: inFilterOf(b.pk, b.ids)}
	b.err = api.RetrieveMultiple(context.Background(), b.set, q, func(row crm.Record) error {
		id, _ := row[b.pk].(string)
		if v := rowVersion(row); id != "" && v != "" {
			b.got[strings.ToLower(id)] = v
		}
		return nil
	})
	if b.err != nil {
		b.err = classify(fmt.Errorf("reading the versions of %d %s rows: %w", len(b.ids), b.set, b.err))
	}
	close(b.done)
}

// rowVersion is a row's version as own writes remember it: its ETag's, or
// its versionnumber column.
func rowVersion(row crm.Record) string {
	if v := normVersion(row.ETag()); v != "" {
		return v
	}
	switch x := row["versionnumber"].(type) {
	case string:
		return x
	case float64:
		return strconv.FormatFloat(x, 'f', -1, 64)
	case fmt.Stringer: // json.Number
		return x.String()
	}
	return ""
}

// inFilterOf is the Microsoft.Dynamics.CRM.In filter of attr against ids.
func inFilterOf(attr string, ids []string) string {
	var b strings.Builder
	b.WriteString("Microsoft.Dynamics.CRM.In(PropertyName=")
	b.WriteString(crm.Quote(attr))
	b.WriteString(",PropertyValues=[")
	for i, id := range ids {
		if i > 0 {
			b.WriteString(",")
		}
		b.WriteString(crm.Quote(id))
	}
	b.WriteString("])")
	return b.String()
}
