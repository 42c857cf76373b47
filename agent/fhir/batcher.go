package fhir

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	fsmaps "github.com/fhirsync/fhirsync/maps"
)

// DefaultBatchWait is how long a batch Bundle waits for more entries by
// default. A FHIR server counts no requests against a budget as Dataverse
// does, so a Bundle is worth waiting for only as long as the wait does not
// hold up the writers: a pool of workers going through a backlog waits in
// the pending Bundle, and every millisecond there is a millisecond of each
// message's time; writes that arrive together still share a Bundle. In
// `fhirsync bench` (10,000 records, CRM→FHIR without limits, 64 workers)
// the agent synced a median of 1,237 records/s with 3ms against 1,036 with
// 50ms (twelve and thirteen runs, alternating), at the same CPU per record;
// see docs/benchmarks.md, tenth round.
const DefaultBatchWait = 3 * time.Millisecond

// BatchConfig configures a Batcher.
type BatchConfig struct {
	// Max is the most entries one batch Bundle carries; default 100. 1
	// turns batching off: every call is its own request.
	Max int
	// Wait is the longest the first pending entry (a read or a write)
	// waits for others before its Bundle is sent; default
	// DefaultBatchWait. The Bundle goes sooner when nothing joined it for
	// a tenth of Wait (at least 1ms).
	Wait time.Duration
	// Logger receives capability and fallback notes (no resource
	// content); default discards.
	Logger *slog.Logger
}

// Batcher gathers the reads and writes (Read, Create, CreateIfNoneExist,
// Update, Delete) that concurrent callers make into batch Bundles (FHIR R4
// http.html#transaction: https://hl7.org/fhir/R4/http.html#transaction):
// one POST [base] per up to Max entries, or after Wait since the first
// pending entry, with several Bundles in flight at once. Each caller gets
// exactly what the Client's single call would give it — the stored
// resource, or an *Error of the same class, 412 on a lost If-Match
// included — read from its own entry's response.
//
// A batch has no interdependencies between entries (R4: "The success or
// failure of one change SHOULD not alter the success or failure or
// resulting content of another change"), so one failing entry fails only
// its caller. A whole Bundle that fails for a retryable reason (429, 5xx,
// the network) gives every caller that retryable error, and each retry
// joins whatever Bundle is pending then; a whole Bundle the server refuses
// as such (another 4xx) is sent again as single requests.
//
// It batches only when the server's CapabilityStatement lists the
// system-level interaction "batch"; otherwise, and for searches, it passes
// the call through to the Client. Calls that overlap in time
// have no order among them, as with concurrent single requests.
type Batcher struct {
	c   *Client
	cfg BatchConfig
	log *slog.Logger

	mu      sync.Mutex
	pending []*batchOp
	gen     uint64 // counts taken pending lists, so a late timer flushes nothing
	// firstAt and lastAt are when the pending list's first and latest
	// entries arrived.
	firstAt, lastAt time.Time

	capMu     sync.Mutex
	capable   atomic.Int32 // capUnknown, capYes or capNo
	noReads   atomic.Bool  // the server refused a GET entry: reads go singly
	checkedAt time.Time    // of the last failed capability read
	now       func() time.Time
}

const (
	capUnknown int32 = iota
	capYes
	capNo
)

// capRecheck is how long after a failed CapabilityStatement read the
// Batcher sends single requests before asking again.
const capRecheck = time.Minute

// NewBatcher validates cfg and returns a Batcher writing through c.
func NewBatcher(c *Client, cfg BatchConfig) (*Batcher, error) {
	var probs []string
	if c == nil {
		probs = append(probs, "a FHIR client is required")
	}
	if cfg.Max < 0 || cfg.Wait < 0 {
		probs = append(probs, "batch size and wait must not be negative")
	}
	if len(probs) > 0 {
		return nil, fmt.Errorf("fhir batcher config: %s", strings.Join(probs, "; "))
	}
	if cfg.Max == 0 {
		cfg.Max = 100
	}
	if cfg.Wait == 0 {
		cfg.Wait = DefaultBatchWait
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	b := &Batcher{c: c, cfg: cfg, log: cfg.Logger, now: time.Now}
	if cfg.Max == 1 {
		b.capable.Store(capNo)
	}
	return b, nil
}

// Read is Client.Read, batched as a GET entry (R4 http.html#transaction:
// a batch may hold reads) in the Bundle pending with other reads and
// writes. The entry answers as the read interaction does: the resource,
// or 404 / 410 as an *Error of the same class. A server that refuses GET
// entries (an entry answered 400, 405, 422 or 501) gets single reads from
// then on.
func (b *Batcher) Read(ctx context.Context, typ, id string) (Resource, error) {
	if b.noReads.Load() || !isTypeName(typ) || !isID(id) || !b.batching(ctx) {
		return b.c.Read(ctx, typ, id)
	}
	op := &batchOp{op: "read " + typ + "/" + id, typ: typ, id: id, method: http.MethodGet, url: typ + "/" + id}
	r := b.submit(ctx, op)
	switch {
	case r.single:
		return b.c.Read(ctx, typ, id)
	case r.err != nil && readsRefused(r.status):
		if b.noReads.CompareAndSwap(false, true) {
			b.log.Warn("fhir batch: the server refused a read in a batch Bundle; reading with single requests", "status", r.status)
		}
		return b.c.Read(ctx, typ, id)
	case r.err != nil:
		return nil, r.err
	case r.res == nil || r.res.ID() != id:
		// A 2xx entry without the resource asked for: read it as the
		// Client would.
		return b.c.Read(ctx, typ, id)
	}
	return r.res, nil
}

// readsRefused reports whether a read entry's status says the server does
// not serve reads inside a batch, rather than anything about the resource.
func readsRefused(status int) bool {
	switch status {
	case http.StatusBadRequest, http.StatusMethodNotAllowed, http.StatusUnprocessableEntity, http.StatusNotImplemented:
		return true
	}
	return false
}

// Search passes through to the Client.
func (b *Batcher) Search(ctx context.Context, typ string, q url.Values) (*Page, error) {
	return b.c.Search(ctx, typ, q)
}

// Create is Client.Create, batched.
func (b *Batcher) Create(ctx context.Context, res Resource) (Resource, error) {
	typ := res.Type()
	if !b.batching(ctx) {
		return b.c.Create(ctx, res)
	}
	op := &batchOp{op: "create " + typ, typ: typ, method: http.MethodPost, url: typ}
	if err := op.setResource(res); err != nil {
		return b.c.Create(ctx, res) // the Client reports it as it always has
	}
	switch r := b.submit(ctx, op); {
	case r.single:
		return b.c.create(ctx, typ, op.resource)
	case r.err != nil:
		return nil, r.err
	default:
		return b.stored(ctx, op, r)
	}
}

// CreateIfNoneExist is Client.CreateIfNoneExist, batched with
// entry.request.ifNoneExist.
func (b *Batcher) CreateIfNoneExist(ctx context.Context, res Resource, criteria url.Values) (Resource, bool, error) {
	typ := res.Type()
	if !b.batching(ctx) || !isTypeName(typ) || len(criteria) == 0 {
		return b.c.CreateIfNoneExist(ctx, res, criteria)
	}
	op := &batchOp{op: "conditional create " + typ, typ: typ, method: http.MethodPost, url: typ, ifNoneExist: criteria.Encode()}
	if err := op.setResource(res); err != nil {
		return b.c.CreateIfNoneExist(ctx, res, criteria)
	}
	r := b.submit(ctx, op)
	switch {
	case r.single:
		return b.c.createIfNoneExist(ctx, typ, op.resource, criteria)
	case r.err != nil:
		return nil, false, r.err
	case r.status != http.StatusCreated:
		// One match: R4 http.html#ccreate has the server ignore the post
		// and answer 200 OK, with or without the match.
		if r.res != nil {
			return r.res, false, nil
		}
		if typ, id, vid := r.named(op); typ == op.typ && id != "" && vid != "" {
			return r.minimal(typ, id, vid), false, nil
		}
		return nil, false, nil
	}
	got, err := b.stored(ctx, op, r)
	return got, err == nil, err
}

// Update is Client.Update, batched with entry.request.ifMatch.
func (b *Batcher) Update(ctx context.Context, res Resource, ifMatch string) (Resource, error) {
	typ, id := res.Type(), res.ID()
	if !b.batching(ctx) || !isTypeName(typ) || !isID(id) {
		return b.c.Update(ctx, res, ifMatch)
	}
	op := &batchOp{op: "update " + typ + "/" + id, typ: typ, id: id, method: http.MethodPut, url: typ + "/" + id}
	if ifMatch != "" {
		op.ifMatch = `W/"` + ifMatch + `"`
	}
	if err := op.setResource(res); err != nil {
		return b.c.Update(ctx, res, ifMatch)
	}
	switch r := b.submit(ctx, op); {
	case r.single:
		return b.c.update(ctx, typ, id, op.resource, ifMatch)
	case r.err != nil:
		return nil, r.err
	default:
		return b.stored(ctx, op, r)
	}
}

// Delete is Client.Delete, batched.
func (b *Batcher) Delete(ctx context.Context, typ, id string) error {
	if !b.batching(ctx) || !isTypeName(typ) || !isID(id) {
		return b.c.Delete(ctx, typ, id)
	}
	op := &batchOp{op: "delete " + typ + "/" + id, typ: typ, id: id, method: http.MethodDelete, url: typ + "/" + id}
	r := b.submit(ctx, op)
	if r.single {
		return b.c.Delete(ctx, typ, id)
	}
	return r.err
}

// batching reports whether writes go into Bundles: Max is above 1 and the
// server's CapabilityStatement lists the system interaction "batch". A
// failed read of the statement means single requests for capRecheck.
func (b *Batcher) batching(ctx context.Context) bool {
	switch b.capable.Load() {
	case capYes:
		return true
	case capNo:
		return false
	}
	b.capMu.Lock()
	defer b.capMu.Unlock()
	if s := b.capable.Load(); s != capUnknown {
		return s == capYes
	}
	if !b.checkedAt.IsZero() && b.now().Sub(b.checkedAt) < capRecheck {
		return false
	}
	cctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	cs, err := b.c.Capabilities(cctx)
	if err != nil {
		if ctx.Err() == nil {
			b.checkedAt = b.now()
			b.log.Warn("fhir batch: reading the CapabilityStatement failed; writing single requests for now", "err", err)
		}
		return false
	}
	if supportsBatch(cs) {
		b.capable.Store(capYes)
		b.log.Info("fhir batch: the server supports batch Bundles", "batch_max", b.cfg.Max, "batch_wait_ms", b.cfg.Wait.Milliseconds())
		return true
	}
	b.capable.Store(capNo)
	b.log.Info("fhir batch: the server's CapabilityStatement lists no batch interaction; writing single requests")
	return false
}

// supportsBatch reports whether a CapabilityStatement's server-mode rest
// element lists the interaction "batch" (R4 CapabilityStatement.rest.interaction).
func supportsBatch(cs Resource) bool {
	rests, _ := cs["rest"].([]any)
	for _, r := range rests {
		rm, _ := r.(map[string]any)
		if mode, _ := rm["mode"].(string); mode != "" && mode != "server" {
			continue
		}
		ints, _ := rm["interaction"].([]any)
		for _, it := range ints {
			im, _ := it.(map[string]any)
			if code, _ := im["code"].(string); code == "batch" {
				return true
			}
		}
	}
	return false
}

// batchOp is one caller's entry.
type batchOp struct {
	op          string // the Client's Op for the same call, e.g. "update Patient/1"
	typ, id     string
	method, url string
	ifMatch     string
	ifNoneExist string
	// resource is encoded by the caller, so the caller's map is never
	// read by the goroutine that sends the Bundle.
	resource json.RawMessage

	state atomic.Int32 // opWaiting, opTaken or opAbandoned
	done  chan batchResult
}

const (
	opWaiting int32 = iota
	opTaken
	opAbandoned
)

// batchResult is what the Bundle said about one entry.
type batchResult struct {
	// single asks the caller to make its call as a single request.
	single bool
	err    error
	status int
	res    Resource // nil when the entry carried none (or another type)
	// entry is the answer's entry: its response names what a write
	// stored when it carried no resource.
	entry Entry
}

func (op *batchOp) setResource(res Resource) error {
	raw, err := encode(res)
	if err != nil {
		return err
	}
	op.resource = raw
	return nil
}

// stored returns what a successful create or update stored: the entry's
// resource when the server sent it, else a resource holding only its
// type, id and meta.versionId (and meta.lastUpdated when given), from the
// entry's response.location, fullUrl and response.etag — what a write's
// caller needs, without another request. Only when the answer names no
// version is the resource read.
func (b *Batcher) stored(ctx context.Context, op *batchOp, r batchResult) (Resource, error) {
	if r.res != nil {
		return r.res, nil
	}
	typ, id, vid := r.named(op)
	if typ != op.typ || id == "" {
		return nil, invalidResponse(op.op, r.status, "batch entry has neither the %s nor a location", op.typ)
	}
	if vid == "" {
		return b.c.Read(ctx, typ, id)
	}
	return r.minimal(typ, id, vid), nil
}

// named is the type, id and version an entry's response names (Entry.Ref);
// when it names none, op's own type and id, with the version of the
// entry's ETag.
func (r batchResult) named(op *batchOp) (typ, id, vid string) {
	typ, id, vid = r.entry.Ref()
	if typ == "" && op.id != "" {
		typ, id, vid = op.typ, op.id, etagVersion(r.entry.ETag)
	}
	return typ, id, vid
}

// minimal is a resource holding only typ, id and meta.versionId vid, with
// meta.lastUpdated when the entry gives it: a write's answer without its
// resource.
func (r batchResult) minimal(typ, id, vid string) Resource {
	meta := map[string]any{"versionId": vid}
	if !r.entry.LastModified.IsZero() {
		meta["lastUpdated"] = r.entry.LastModified.UTC().Format(time.RFC3339Nano)
	}
	return Resource{"resourceType": typ, "id": id, "meta": meta}
}

// submit adds op to the pending Bundle and waits for its result or the end
// of ctx.
func (b *Batcher) submit(ctx context.Context, op *batchOp) batchResult {
	if err := ctx.Err(); err != nil {
		return batchResult{err: ctxError(op.op, ctx)}
	}
	op.done = make(chan batchResult, 1)
	b.mu.Lock()
	b.pending = append(b.pending, op)
	now := time.Now()
	b.lastAt = now
	switch {
	case len(b.pending) >= b.cfg.Max:
		ops := b.take()
		b.mu.Unlock()
		go b.flush(ops)
	case len(b.pending) == 1:
		b.firstAt = now
		gen := b.gen
		b.mu.Unlock()
		time.AfterFunc(b.quietGap(), func() { b.expire(gen) })
	default:
		b.mu.Unlock()
	}
	select {
	case r := <-op.done:
		return r
	case <-ctx.Done():
		// Still pending, the entry is left out of its Bundle; already on
		// its way, its outcome is as unknown as that of a single request
		// cancelled in flight.
		op.state.CompareAndSwap(opWaiting, opAbandoned)
		return batchResult{err: ctxError(op.op, ctx)}
	}
}

// quietGap is how long a pending Bundle waits after its latest entry
// before it is sent, when Wait has not run out: callers that have all
// asked are not kept waiting for the rest of Wait.
func (b *Batcher) quietGap() time.Duration { return max(b.cfg.Wait/10, time.Millisecond) }

// expire sends the pending list gen once Wait has passed since its first
// entry or nothing joined it for the quiet gap; otherwise it waits again
// for whichever comes first.
func (b *Batcher) expire(gen uint64) {
	b.mu.Lock()
	if b.gen != gen {
		b.mu.Unlock()
		return
	}
	now := time.Now()
	if d := min(b.firstAt.Add(b.cfg.Wait).Sub(now), b.lastAt.Add(b.quietGap()).Sub(now)); d > 0 {
		b.mu.Unlock()
		time.AfterFunc(d, func() { b.expire(gen) })
		return
	}
	ops := b.take()
	b.mu.Unlock()
	b.flush(ops)
}

// take empties the pending list; b.mu is held.
func (b *Batcher) take() []*batchOp {
	ops := b.pending
	b.pending = nil
	b.gen++
	return ops
}

// ctxError is what the Client returns when ctx ends during a request.
func ctxError(op string, ctx context.Context) error {
	if errors.Is(ctx.Err(), context.DeadlineExceeded) {
		return &Error{Op: op, Class: ClassUnavailable, Retryable: true, Err: ctx.Err()}
	}
	return fmt.Errorf("fhir %s: %w", op, context.Cause(ctx))
}

// bundleEntry is one entry of the request Bundle.
type bundleEntry struct {
	FullURL  string          `json:"fullUrl,omitempty"`
	Resource json.RawMessage `json:"resource,omitempty"`
	Request  bundleRequest   `json:"request"`
}

type bundleRequest struct {
	Method      string `json:"method"`
	URL         string `json:"url"`
	IfMatch     string `json:"ifMatch,omitempty"`
	IfNoneExist string `json:"ifNoneExist,omitempty"`
}

// batchBundle writes the batch Bundle of entries as json.Marshal writes
// the struct {resourceType, type, entry}, without re-reading each entry's
// resource: encode wrote those bytes, already valid and compact.
func batchBundle(entries []bundleEntry) []byte {
	n := 64
	for _, e := range entries {
		n += len(e.Resource) + len(e.Request.URL) + 128
	}
	b := append(make([]byte, 0, n), `{"resourceType":"Bundle","type":"batch","entry":[`...)
	for i, e := range entries {
		if i > 0 {
			b = append(b, ',')
		}
		b = append(b, '{')
		if e.FullURL != "" {
			b = append(b, `"fullUrl":`...)
			b = append(fsmaps.AppendJSONString(b, e.FullURL), ',')
		}
		if len(e.Resource) > 0 {
			b = append(b, `"resource":`...)
			b = append(append(b, e.Resource...), ',')
		}
		b = append(b, `"request":{"method":`...)
		b = fsmaps.AppendJSONString(b, e.Request.Method)
		b = append(b, `,"url":`...)
		b = fsmaps.AppendJSONString(b, e.Request.URL)
		if e.Request.IfMatch != "" {
			b = append(b, `,"ifMatch":`...)
			b = fsmaps.AppendJSONString(b, e.Request.IfMatch)
		}
		if e.Request.IfNoneExist != "" {
			b = append(b, `,"ifNoneExist":`...)
			b = fsmaps.AppendJSONString(b, e.Request.IfNoneExist)
		}
		b = append(b, "}}"...)
	}
	return append(b, "]}"...)
}

// flush sends the ops callers are still waiting for as one batch Bundle
// and answers each.
func (b *Batcher) flush(ops []*batchOp) {
	live := ops[:0:0]
	for _, op := range ops {
		if op.state.CompareAndSwap(opWaiting, opTaken) {
			live = append(live, op)
		}
	}
	// Reads and writes go in Bundles of their own: the writes' asks for
	// return=minimal, which R4 answers with "just the
	// Bundle.entry.response populated for each entry, and not the
	// Bundle.entry.resource values" (http.html#return). The caller needs
	// only the id and version a write stored, which response.location and
	// response.etag carry, so neither side encodes, sends or decodes the
	// resource a second time.
	var reads, writes []*batchOp
	for _, op := range live {
		if op.method == http.MethodGet {
			reads = append(reads, op)
		} else {
			writes = append(writes, op)
		}
	}
	if len(reads) > 0 && len(writes) > 0 {
		go b.send(reads, false)
		b.send(writes, true)
		return
	}
	b.send(live, len(writes) > 0)
}

// send posts ops as one batch Bundle, asking for return=minimal when
// minimal, and answers each op.
func (b *Batcher) send(live []*batchOp, minimal bool) {
	if len(live) == 1 {
		// A Bundle of one costs more than the request itself.
		live[0].done <- batchResult{single: true}
		return
	}
	entries := make([]bundleEntry, len(live))
	for i, op := range live {
		e := bundleEntry{Resource: op.resource,
			Request: bundleRequest{Method: op.method, URL: op.url, IfMatch: op.ifMatch, IfNoneExist: op.ifNoneExist}}
		if op.method == http.MethodPost {
			// R4 Bundle: a resource without a server id yet is named
			// by a urn:uuid.
			e.FullURL = "urn:uuid:" + newUUID()
		}
		entries[i] = e
	}
	page, err := b.c.batch(context.Background(), batchBundle(entries), minimal)
	if err == nil && len(page.Entries) != len(live) {
		err = invalidResponse("batch", http.StatusOK, "batch-response has %d entries for %d requests", len(page.Entries), len(live))
	}
	if err != nil {
		b.failAll(live, err)
		return
	}
	for i, op := range live {
		op.done <- entryResult(op, page.Entries[i])
	}
}

// failAll answers every op of a Bundle that failed as a whole.
func (b *Batcher) failAll(ops []*batchOp, err error) {
	var fe *Error
	if !errors.As(err, &fe) {
		// Not even sent (building the request): send singly.
		answerAll(ops, batchResult{single: true})
		return
	}
	if fe.Retryable || fe.Class == ClassUnauthorized || fe.Class == ClassInvalidResponse {
		// Retryable failures and refused credentials are each caller's
		// as they would be with single requests; after an answer that is
		// not a batch-response, entries may have been applied, so it is
		// not safe to send them again now.
		for _, op := range ops {
			e := *fe
			e.Op = op.op
			op.done <- batchResult{err: &e}
		}
		return
	}
	// The server refused the Bundle itself (400, 404, 405, 413, ...):
	// nothing was applied, each write goes on its own.
	if fe.Status == http.StatusNotFound || fe.Status == http.StatusMethodNotAllowed {
		// POST [base] is not served after all, whatever the
		// CapabilityStatement says.
		b.capable.Store(capNo)
	}
	b.log.Warn("fhir batch: the server refused a batch Bundle; sending its entries singly",
		"status", fe.Status, "class", string(fe.Class), "entries", len(ops))
	answerAll(ops, batchResult{single: true})
}

func answerAll(ops []*batchOp, r batchResult) {
	for _, op := range ops {
		op.done <- r
	}
}

// entryResult reads one batch-response entry: response.status "SHALL start
// with a 3 digit HTTP code" (R4 Bundle.entry.response.status), a failure
// carries its OperationOutcome in response.outcome.
func entryResult(op *batchOp, e Entry) batchResult {
	status := entryStatus(e.Status)
	if status == 0 {
		return batchResult{err: invalidResponse(op.op, 0, "batch entry response has no status")}
	}
	if status < 200 || status > 299 {
		text := ""
		if e.Outcome != nil {
			if raw, err := json.Marshal(e.Outcome); err == nil {
				text = outcomeText(raw)
			}
		}
		return batchResult{status: status, err: classifyStatus(op.op, status, text)}
	}
	r := batchResult{status: status, entry: e}
	if e.Resource != nil && e.Resource.Type() == op.typ {
		r.res = e.Resource
	}
	return r
}

// entryStatus reads the leading 3-digit code of response.status.
func entryStatus(s string) int {
	s = strings.TrimSpace(s)
	if len(s) < 3 {
		return 0
	}
	if len(s) > 3 && s[3] != ' ' {
		return 0
	}
	n, err := strconv.Atoi(s[:3])
	if err != nil || n < 100 {
		return 0
	}
	return n
}

func newUUID() string {
	var u [16]byte
	_, _ = rand.Read(u[:])
	u[6] = u[6]&0x0f | 0x40
	u[8] = u[8]&0x3f | 0x80
	h := hex.EncodeToString(u[:])
	return h[:8] + "-" + h[8:12] + "-" + h[12:16] + "-" + h[16:20] + "-" + h[20:]
}

// batch POSTs a batch Bundle to the base (R4 http.html#transaction) and
// returns the batch-response.
func (c *Client) batch(ctx context.Context, body []byte, minimal bool) (*Page, error) {
	cl := call{op: "batch", method: http.MethodPost, body: body, want: "Bundle"}
	if minimal {
		cl.header = http.Header{"Prefer": {"return=minimal"}}
	}
	r, _, err := c.doResource(ctx, cl)
	if err != nil {
		return nil, err
	}
	p, err := c.page("batch", r)
	if err != nil {
		return nil, err
	}
	if p.Type != "batch-response" {
		return nil, invalidResponse("batch", http.StatusOK, "expected a batch-response Bundle, got type %q", truncate(p.Type, 64))
	}
	return p, nil
}
