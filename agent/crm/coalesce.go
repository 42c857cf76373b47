package crm

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"maps"
	"net/http"
	"net/url"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"
)

// Coalescer defaults.
const (
	// DefaultCoalesceMax is how many operations a coalesced $batch carries
	// before it is sent without waiting.
	DefaultCoalesceMax = 100
	// DefaultCoalesceWait is how long the first pending operation waits
	// for company (see flush.go): at 200 records/s a batch every 100 ms
	// carries some 20 records' operations, and a record's two or three
	// reads and writes add at most a few tenths of a second to its
	// latency.
	DefaultCoalesceWait = 100 * time.Millisecond
	// DefaultCoalesceInFlight is how many coalesced batches may be under
	// way at once.
	DefaultCoalesceInFlight = 4
	// maxQueryURL bounds the URL of one grouped query inside a $batch.
	// Dataverse accepts URLs of up to 32,768 characters, and up to 65,536
	// inside a $batch ("Compose HTTP requests and handle errors", Maximum
	// URL length:
	// https://learn.microsoft.com/power-apps/developer/data-platform/webapi/compose-http-requests-handle-errors#maximum-url-length);
	// the lower figure leaves room for the service root.
	maxQueryURL = 32 << 10
)

// CoalesceConfig tunes a Coalescer. Zero values take the defaults.
type CoalesceConfig struct {
	// MaxOps is the number of operations after which a batch is sent at
	// once (default 100, at most 1,000).
	MaxOps int
	// MaxWait is how long the first operation of a batch waits for others
	// (default 100 ms).
	MaxWait time.Duration
	// MaxInFlight bounds the batches under way at once (default 4).
	MaxInFlight int
	// NoBulk sends every record's writes as its own change set, as
	// single operations of the $batch. By default the writes of new
	// records and updates sent alone go in bulk messages (bulk.go).
	NoBulk bool
}

// Coalescer gathers the requests of concurrent callers into $batch
// requests. Dataverse's service protection counts a $batch as one request
// against the number-of-requests limit (6,000 per user per 5-minute
// sliding window) while each operation inside it still counts towards
// execution time ("Service protection API limits", How service protection
// API limits are enforced:
// https://learn.microsoft.com/power-apps/developer/data-platform/api-limits),
// so many small writes and reads cost one request instead of one each.
//
// A batch is sent when it holds MaxOps operations, MaxWait after its
// first operation arrived, or as soon as every caller of a Callers set
// (a pool's workers) waits on the coalescer; while a caller of no set
// waits in it, also when no operation joined it for a tenth of MaxWait
// (flush.go). It is sent with Prefer: odata.continue-on-error:
// a failed operation or change set fails only its caller. Each caller gets
// the result and the error a single request would have given (an *Error
// with the same class, status and Retry-After; ErrNotFound on 404).
// Retrieves by the same one-attribute alternate key of the same entity set,
// and child-row queries on the same parent lookup, gathered in one batch,
// become one query with Microsoft.Dynamics.CRM.In. A batch refused as a
// whole (429, 5xx, a transport failure) is sent again split in two, its
// writes only when they are safe to repeat. A Coalescer is safe for
// concurrent use; per-caller order is the caller's: each call returns
// before the caller sends the next.
type Coalescer struct {
	c        *Client
	max      int
	wait     time.Duration
	inFlight chan struct{}
	bulk     bool
	tables   tables

	mu      sync.Mutex
	pending []*entry
	ops     int
	timer   *time.Timer
	first   time.Time // arrival of the oldest pending entry
	last    time.Time // arrival of the newest
	// ungrouped counts the pending entries whose caller is of no Callers
	// set.
	ungrouped int
}

// quietGap is how long a batch waits after the last arrival before it is
// sent anyway: callers that have all asked are not kept waiting for
// company that is not coming, while a steady stream fills the batch up to
// MaxWait.
func (k *Coalescer) quietGap() time.Duration { return max(k.wait/10, time.Millisecond) }

// NewCoalescer builds a Coalescer over c.
func NewCoalescer(c *Client, cfg CoalesceConfig) (*Coalescer, error) {
	if c == nil {
		return nil, errors.New("coalescer: no client")
	}
	if cfg.MaxOps < 0 || cfg.MaxOps > MaxBatchSize {
		return nil, fmt.Errorf("coalescer: MaxOps must be between 1 and %d", MaxBatchSize)
	}
	if cfg.MaxOps == 0 {
		cfg.MaxOps = DefaultCoalesceMax
	}
	if cfg.MaxWait <= 0 {
		cfg.MaxWait = DefaultCoalesceWait
	}
	if cfg.MaxInFlight <= 0 {
		cfg.MaxInFlight = DefaultCoalesceInFlight
	}
	return &Coalescer{c: c, max: cfg.MaxOps, wait: cfg.MaxWait, inFlight: make(chan struct{}, cfg.MaxInFlight), bulk: !cfg.NoBulk}, nil
}

// Client returns the client the coalescer sends through.
func (k *Coalescer) Client() *Client { return k.c }

type entryKind int

const (
	kindOps      entryKind = iota // ops as one change set, or one single op
	kindKeyRead                   // Retrieve by a one-attribute alternate key
	kindChildren                  // RetrieveMultiple of the rows under one parent
)

// entry is one caller's request waiting for its batch.
type entry struct {
	ctx  context.Context
	kind entryKind
	// ops are sent as a change set when changeSet is set, else ops[0]
	// alone.
	ops       []Op
	changeSet bool
	// idempotent writes may be sent again after a batch failed without an
	// answer.
	idempotent bool

	// key reads and child reads
	set, attr, value string
	sel              []string
	alone            bool // sent as its own request, never grouped

	// bulk is the record's progress through bulk messages, when its
	// writes go in them (bulk.go).
	bulk *bulkState
	// byID: a key read by primary key (attr names the primary key
	// column), grouped with others as key reads are.
	byID bool

	// callers is the set the caller belongs to (nil: none).
	callers *Callers

	done    chan struct{}
	results []OpResult
	rows    []Record
	err     error
}

func (e *entry) size() int {
	if e.bulk != nil && !e.bulk.off {
		// its rows travel inside bulk messages, one request each
		return 1
	}
	if e.kind == kindOps {
		return len(e.ops)
	}
	return 1
}

func (e *entry) finish(results []OpResult, rows []Record, err error) {
	e.results, e.rows, e.err = results, rows, err
	close(e.done)
}

// submit queues e and waits for its answer.
func (k *Coalescer) submit(ctx context.Context, e *entry) error {
	e.ctx, e.done = ctx, make(chan struct{})
	if k.bulk {
		e.bulk = bulkPlanOf(e)
	}
	now := time.Now()
	k.mu.Lock()
	if len(k.pending) == 0 {
		k.first = now
	}
	k.last = now
	k.pending = append(k.pending, e)
	k.ops += e.size()
	allWait := k.joined(e, callersOf(ctx))
	switch {
	case k.ops >= k.max || allWait:
		k.stopTimer()
		go k.flush()
	case k.timer == nil:
		k.timer = time.AfterFunc(k.due().Sub(now), k.expire)
	case e.callers == nil && k.ungrouped == 1:
		// The batch waited for MaxWait; a caller of no set brings the
		// quiet gap.
		k.stopTimer()
		k.timer = time.AfterFunc(k.due().Sub(now), k.expire)
	}
	k.mu.Unlock()
	select {
	case <-e.done:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

func (k *Coalescer) stopTimer() {
	if k.timer != nil {
		k.timer.Stop()
		k.timer = nil
	}
}

// expire sends the pending batch once it has waited MaxWait or no one
// joined it for the quiet gap; otherwise it waits again for whichever
// comes first.
func (k *Coalescer) expire() {
	k.mu.Lock()
	now := time.Now()
	if len(k.pending) > 0 {
		if d := k.due().Sub(now); d > 0 {
			k.timer = time.AfterFunc(d, k.expire)
			k.mu.Unlock()
			return
		}
	}
	k.timer = nil
	k.mu.Unlock()
	k.flush()
}

// flush takes a batch slot, then as many pending entries as one batch
// holds (those that arrived while it waited for the slot included), and
// sends them.
func (k *Coalescer) flush() {
	k.inFlight <- struct{}{}
	defer func() { <-k.inFlight }()
	k.mu.Lock()
	n, ops := 0, 0
	for n < len(k.pending) && (n == 0 || ops+k.pending[n].size() <= k.max) {
		ops += k.pending[n].size()
		n++
	}
	take := slices.Clone(k.pending[:n])
	k.pending = slices.Delete(k.pending, 0, n)
	k.ops -= ops
	k.taken(take)
	switch {
	case len(k.pending) == 0:
		k.stopTimer()
	case k.ops >= k.max:
		go k.flush()
	case k.timer == nil:
		k.first = time.Now()
		k.timer = time.AfterFunc(k.due().Sub(k.first), k.expire)
	}
	k.mu.Unlock()
	if len(take) > 0 {
		k.run(take, 0)
	}
}

// run sends entries as one batch and answers them, sending again what
// may be sent again.
func (k *Coalescer) run(entries []*entry, attempt int) {
	live := entries[:0:0]
	for _, e := range entries {
		if err := e.ctx.Err(); err != nil {
			e.finish(nil, nil, err)
			continue
		}
		live = append(live, e)
	}
	if len(live) == 0 {
		return
	}
	var bulk []*entry
	rest := live
	if k.bulk {
		bulk, rest = k.bulkEntries(live)
	}
	b, plan := k.build(rest)
	first := 0
	for _, p := range plan {
		first += p.n
	}
	bp := k.buildBulk(bulk, &b, first)
	if b.size() > MaxBatchSize && len(live) > 1 {
		k.split(live, attempt)
		return
	}
	// The batch is sent on the coalescer's behalf: one caller giving up
	// must not cancel the others' requests. The client's time-out bounds it.
	results, err := k.c.executeBatch(context.Background(), b, true)
	if err != nil {
		k.failed(live, err, attempt)
		return
	}
	bo := k.answerBulk(bp, results)
	if len(bo.again) > 0 && attempt >= k.c.retries {
		for _, e := range bo.again {
			e.finish(nil, nil, &Error{Op: "sending a batch", Class: ClassThrottled, Retryable: true, RetryAfter: bo.wait,
				Err: errors.New("operations throttled inside the batch")})
		}
		bo.again = nil
	}
	again, alone := bo.again, bo.alone
	wait := bo.wait
	for _, p := range plan {
		res := results[p.first : p.first+p.n]
		if redo, after := p.retryable(res); redo && attempt < k.c.retries {
			again = append(again, p.entries...)
			wait = max(wait, after)
			continue
		}
		if p.answer(k, res) {
			alone = append(alone, p.entries...)
		}
	}
	if len(alone) > 0 {
		k.run(alone, attempt)
	}
	if len(bo.split) > 0 {
		k.split(bo.split, attempt)
	}
	if len(again) > 0 {
		if k.c.sleep(context.Background(), wait) != nil {
			for _, e := range again {
				e.finish(nil, nil, &Error{Op: "sending a batch", Class: ClassThrottled, Retryable: true, RetryAfter: wait,
					Err: errors.New("operations throttled inside the batch")})
			}
			return
		}
		k.split(again, attempt+1)
	}
}

// failed handles a batch refused as a whole: nothing in it ran (429), or
// its fate is unknown (5xx, no answer). Entries safe to send again are
// sent again in smaller batches; the others get the error.
func (k *Coalescer) failed(entries []*entry, err error, attempt int) {
	e, ok := AsError(err)
	if !ok || !e.Retryable || attempt >= k.c.retries {
		for _, x := range entries {
			x.finish(nil, nil, err)
		}
		return
	}
	again := entries
	if e.Class != ClassThrottled {
		// The batch may have run in part: only what is safe to repeat
		// goes again.
		again = again[:0:0]
		for _, x := range entries {
			if x.bulk != nil && !x.bulk.off {
				// Its new rows go again as UpsertMultiple of the same
				// ids, which a second run leaves as the first left it.
				x.bulk.uncertain = true
				again = append(again, x)
			} else if x.kind != kindOps || x.idempotent {
				again = append(again, x)
			} else {
				x.finish(nil, nil, err)
			}
		}
	}
	if len(again) == 0 {
		return
	}
	wait := e.RetryAfter
	if wait == 0 {
		wait = backoff(attempt)
	}
	if wait > k.c.retryWait || k.c.sleep(context.Background(), wait) != nil {
		for _, x := range again {
			x.finish(nil, nil, err)
		}
		return
	}
	k.split(again, attempt+1)
}

// split sends entries again in two halves, one after the other.
func (k *Coalescer) split(entries []*entry, attempt int) {
	if len(entries) == 1 {
		k.run(entries, attempt)
		return
	}
	half := len(entries) / 2
	k.run(entries[:half], attempt)
	k.run(entries[half:], attempt)
}

// planItem is one item of a built batch and the entries it answers.
type planItem struct {
	entries []*entry
	first   int // index of its first result
	n       int // results it has
	kind    entryKind
	// grouped query: the attribute rows are matched on, and whether it was
	// added to the caller's $select (and so is removed from the rows)
	match, added string
	grouped      bool
}

// build lays entries out as one batch: writes in arrival order, reads
// grouped by entity set, attribute and $select.
func (k *Coalescer) build(entries []*entry) (Batch, []planItem) {
	b := Batch{ContinueOnError: true}
	var plan []planItem
	pos := 0
	nextID := 1
	add := func(it BatchItem, p planItem) {
		b.Items = append(b.Items, it)
		p.first = pos
		pos += p.n
		plan = append(plan, p)
	}
	// Reads group by what their one query would ask: kind, entity set,
	// attribute matched, columns selected.
	type groupKey struct {
		kind           entryKind
		set, attr, sel string
		alone          bool
	}
	groups := map[groupKey][]*entry{}
	var order []groupKey
	for _, e := range entries {
		switch {
		case e.kind == kindOps && e.changeSet:
			ops := renumber(e.ops, nextID-1)
			nextID += len(ops)
			add(BatchItem{ChangeSet: ops}, planItem{entries: []*entry{e}, n: len(ops), kind: kindOps})
		case e.kind == kindOps:
			op := e.ops[0]
			add(BatchItem{Op: &op}, planItem{entries: []*entry{e}, n: 1, kind: kindOps})
		default:
			g := groupKey{e.kind, e.set, e.attr, strings.Join(e.sel, ","), e.alone}
			if _, ok := groups[g]; !ok {
				order = append(order, g)
			}
			groups[g] = append(groups[g], e)
		}
	}
	for _, g := range order {
		es := groups[g]
		if len(es) == 1 || es[0].alone {
			for _, e := range es {
				op := k.readOp(e)
				add(BatchItem{Op: &op}, planItem{entries: []*entry{e}, n: 1, kind: e.kind, match: matchAttr(e)})
			}
			continue
		}
		for _, chunk := range k.inChunks(es) {
			op, added := k.inOp(chunk)
			add(BatchItem{Op: &op}, planItem{entries: chunk, n: 1, kind: chunk[0].kind, match: matchAttr(chunk[0]), added: added, grouped: true})
		}
	}
	return b, plan
}

func matchAttr(e *entry) string {
	if e.kind == kindChildren {
		return "_" + e.attr + "_value"
	}
	return e.attr
}

// readOp is an entry's read as a request of its own: a retrieve by key, or
// the child query it was asked as.
func (k *Coalescer) readOp(e *entry) Op {
	h := http.Header{}
	h.Set("Accept", "application/json")
	if e.kind == kindKeyRead {
		q := url.Values{}
		if len(e.sel) > 0 {
			q.Set("$select", strings.Join(e.sel, ","))
		}
		return Op{Method: http.MethodGet, Path: withQuery(e.target().path(), q), Header: h}
	}
	maps.Copy(h, k.c.preferHeader())
	return Op{Method: http.MethodGet, Path: withQuery(e.set, Query{Select: e.sel, Filter: childFilter(e.attr, e.value)}.values()), Header: h}
}

func withQuery(path string, q url.Values) string {
	if len(q) == 0 {
		return path
	}
	return path + "?" + encodeQuery(q)
}

func childFilter(lookup, id string) string { return "_" + lookup + "_value eq " + id }

// inOp is one query answering every entry of a group:
// $filter=Microsoft.Dynamics.CRM.In(PropertyName='attr',PropertyValues=[…])
// ("In Function",
// https://learn.microsoft.com/power-apps/developer/data-platform/webapi/reference/in).
// The attribute rows are matched on joins the $select when the callers
// named columns without it; added names it so it can be taken out again.
func (k *Coalescer) inOp(es []*entry) (Op, string) {
	e := es[0]
	sel := e.sel
	match := matchAttr(e)
	added := ""
	if len(sel) > 0 && !slices.Contains(sel, match) {
		sel = append(slices.Clone(sel), match)
		added = match
	}
	h := http.Header{}
	h.Set("Accept", "application/json")
	maps.Copy(h, k.c.preferHeader())
	return Op{Method: http.MethodGet, Path: withQuery(e.set, Query{Select: sel, Filter: inFilter(e.attr, es)}.values()), Header: h}, added
}

func inFilter(attr string, es []*entry) string {
	vals := make([]string, len(es))
	for i, e := range es {
		vals[i] = e.value
	}
	return inOf(attr, vals)
}

// inOf is the Microsoft.Dynamics.CRM.In filter matching attr against
// vals, each value named once.
func inOf(attr string, vals []string) string {
	var b strings.Builder
	b.WriteString("Microsoft.Dynamics.CRM.In(PropertyName=")
	b.WriteString(quote(attr))
	b.WriteString(",PropertyValues=[")
	seen := map[string]bool{}
	first := true
	for _, v := range vals {
		if seen[v] {
			continue
		}
		seen[v] = true
		if !first {
			b.WriteString(",")
		}
		first = false
		b.WriteString(quote(v))
	}
	b.WriteString("])")
	return b.String()
}

// inChunks splits a group so that each query's URL stays within
// maxQueryURL: the query without values, plus each value as the URL
// carries it (quoted, escaped, and a comma).
func (k *Coalescer) inChunks(es []*entry) [][]*entry {
	if len(es) == 0 {
		return nil
	}
	one, _ := k.inOp(es[:1])
	base := len(k.c.root) + len(one.Path) - len(url.QueryEscape(quote(es[0].value)))
	var out [][]*entry
	start, size := 0, base
	seen := map[string]bool{}
	for i, e := range es {
		n := 0
		if !seen[e.value] {
			n = len(url.QueryEscape(quote(e.value))) + 1
		}
		if i > start && size+n > maxQueryURL {
			out = append(out, es[start:i])
			start, size = i, base
			clear(seen)
			n = len(url.QueryEscape(quote(e.value))) + 1
		}
		seen[e.value] = true
		size += n
	}
	return append(out, es[start:])
}

// renumber gives a change set's ops Content-IDs unique in the batch
// (offset + their 1-based place) and moves their "$n" references
// (request paths, @odata.bind values) along.
func renumber(ops []Op, offset int) []Op {
	out := make([]Op, len(ops))
	for i, op := range ops {
		local := op.ContentID
		if local == "" {
			local = strconv.Itoa(i + 1)
		}
		op.ContentID = shiftRef(local, offset)
		if strings.HasPrefix(op.Path, "$") {
			ref, rest, _ := strings.Cut(op.Path[1:], "/")
			op.Path = "$" + shiftRef(ref, offset)
			if rest != "" {
				op.Path += "/" + rest
			}
		}
		if offset > 0 && bytes.Contains(op.Body, []byte(`@odata.bind":"$`)) {
			op.Body = bindRef.ReplaceAllFunc(op.Body, func(m []byte) []byte {
				sm := bindRef.FindSubmatch(m)
				return []byte(`@odata.bind":"$` + shiftRef(string(sm[1]), offset) + `"`)
			})
		}
		out[i] = op
	}
	return out
}

var bindRef = regexp.MustCompile(`@odata\.bind":"\$([0-9]+)"`)

func shiftRef(id string, offset int) string {
	n, err := strconv.Atoi(id)
	if err != nil {
		return id
	}
	return strconv.Itoa(n + offset)
}

// retryable reports whether an item's answer says it was not executed
// (skipped, or throttled inside the batch) and for how long to wait.
func (p planItem) retryable(res []OpResult) (bool, time.Duration) {
	var wait time.Duration
	for _, r := range res {
		switch {
		case r.Skipped:
			return true, 0
		case r.Err != nil && r.Err.Class == ClassThrottled:
			wait = max(wait, r.Err.RetryAfter)
			return true, wait
		}
	}
	return false, 0
}

// answer hands each entry of the item its part of the results; alone
// reports that a grouped query was refused and its entries are to be sent
// again each on its own.
func (p planItem) answer(k *Coalescer, res []OpResult) (alone bool) {
	if p.kind == kindOps {
		p.entries[0].finishOps(res)
		return false
	}
	r := res[0]
	if r.Err != nil {
		if p.grouped && r.Err.Class == ClassRejected {
			// The query function (or the grouped query) was refused: ask
			// each caller's read on its own, as it was asked.
			for _, e := range p.entries {
				e.alone = true
			}
			return true
		}
		for _, e := range p.entries {
			e.finish(nil, nil, readError(e, r.Err))
		}
		return false
	}
	if !p.grouped {
		e := p.entries[0]
		if e.kind == kindKeyRead {
			var rec Record
			err := decodeJSON(readOpName(e), result{status: r.Status, header: r.Header, body: r.Body}, &rec)
			if err == nil && rec == nil {
				err = invalidResponse(readOpName(e), r.Status, "answer is not a JSON object")
			}
			e.finish(nil, []Record{rec}, err)
			return false
		}
		rows, err := k.collection(e, r)
		e.finish(nil, rows, err)
		return false
	}
	rows, err := k.collection(p.entries[0], r)
	if err != nil {
		for _, e := range p.entries {
			e.finish(nil, nil, err)
		}
		return false
	}
	for _, e := range p.entries {
		var mine []Record
		for _, row := range rows {
			if sameValue(row[p.match], e.value, e.kind == kindChildren) {
				c := maps.Clone(row)
				if p.added != "" && !e.byID {
					// A retrieve by primary id answers with the primary
					// id whatever $select names (powerapps-docs,
					// webapi/retrieve-entity-using-web-api.md, "Retrieve
					// specific properties": $select=name,revenue answers
					// accountid too), so a grouped read by id keeps it, as
					// its own request would have.
					delete(c, p.added)
				}
				mine = append(mine, c)
			}
		}
		e.finish(nil, mine, nil)
	}
	return false
}

// sameValue compares a row's value with the one asked for the way
// Dataverse compares them: GUIDs and alternate-key strings without regard
// to case (the default collation is case-insensitive).
func sameValue(v any, want string, guid bool) bool {
	s, ok := v.(string)
	if !ok {
		if v == nil {
			return false
		}
		s = fmt.Sprint(v)
	}
	if guid {
		return strings.EqualFold(s, want)
	}
	return s == want || strings.EqualFold(s, want)
}

// collection decodes a query answer and follows its @odata.nextLink, if
// any, with requests of its own.
func (k *Coalescer) collection(e *entry, r OpResult) ([]Record, error) {
	op := "querying " + e.set
	pg, hasValue, err := decodePage(op, result{status: r.Status, header: r.Header, body: r.Body})
	if err != nil {
		return nil, err
	}
	if !hasValue {
		return nil, invalidResponse(op, r.Status, "collection answer without a value array")
	}
	rows := pg.Value
	for link := pg.NextLink; link != ""; {
		next, err := k.c.page(e.ctx, op, link, k.c.preferHeader())
		if err != nil {
			return nil, err
		}
		rows = append(rows, next.Value...)
		link = next.NextLink
	}
	return rows, nil
}

func readOpName(e *entry) string {
	if e.kind == kindKeyRead {
		return "retrieving " + e.target().String()
	}
	return "querying " + e.set
}

// target is the row a key read asks for.
func (e *entry) target() Target {
	if e.byID {
		return ByID(e.set, e.value)
	}
	return ByKey(e.set, e.attr, e.value)
}

// readError is a read's error as a single request would have had it.
func readError(e *entry, err *Error) *Error {
	c := *err
	c.Op, c.Request, c.ContentID, c.RolledBack = readOpName(e), 0, "", false
	return &c
}

// opError is a single op's error as a single request would have had it.
func opError(op string, err *Error) *Error {
	c := *err
	c.Op, c.Request, c.ContentID, c.RolledBack = op, 0, "", false
	return &c
}

// Apply sends ops as one atomic change set, in a batch shared with other
// callers, and returns one result per op (per-op failures, and the
// roll-back of the others, are in the results). The error is about the
// batch as a whole. An op's Content-ID is its 1-based place in ops unless
// set; a later op refers to an earlier one's row as "$n" in its path or
// in an @odata.bind value. A change set whose first op carries If-Match or
// If-None-Match is sent again after a batch lost without an answer: that
// precondition refuses a change set that already ran.
func (k *Coalescer) Apply(ctx context.Context, ops []Op) ([]OpResult, error) {
	if len(ops) == 0 {
		return nil, nil
	}
	if len(ops) > k.max {
		return nil, &Error{Op: fmt.Sprintf("applying a change set of %d requests", len(ops)), Class: ClassRejected,
			Err: fmt.Errorf("a change set carries at most %d requests here", k.max)}
	}
	h := ops[0].Header
	e := &entry{kind: kindOps, ops: ops, changeSet: true,
		idempotent: h != nil && (h.Get("If-Match") != "" || h.Get("If-None-Match") != "")}
	if err := k.submit(ctx, e); err != nil {
		return nil, err
	}
	if e.err != nil {
		return nil, e.err
	}
	op := fmt.Sprintf("applying a change set of %d requests", len(ops))
	for _, r := range e.results {
		if r.Err != nil {
			r.Err.Op = op
		}
	}
	return e.results, nil
}

// single sends one op on its own (not in a change set) and returns its
// result, or its error as the single request would have returned it.
func (k *Coalescer) single(ctx context.Context, name string, op Op, idempotent bool) (OpResult, error) {
	e := &entry{kind: kindOps, ops: []Op{op}, idempotent: idempotent}
	if err := k.submit(ctx, e); err != nil {
		return OpResult{}, fmt.Errorf("%s: %w", name, err)
	}
	if e.err != nil {
		return OpResult{}, e.err
	}
	r := e.results[0]
	if r.Err != nil {
		return r, opError(name, r.Err)
	}
	return r, nil
}

// Retrieve reads one row. Reads by a one-attribute alternate key, or by
// primary key, are grouped with others of the same entity set, key and
// columns into one Microsoft.Dynamics.CRM.In query: a read inside a $batch
// costs as much execution time as a query of many rows.
func (k *Coalescer) Retrieve(ctx context.Context, t Target, sel ...string) (Record, error) {
	var e *entry
	if len(t.Key) == 1 {
		e = &entry{kind: kindKeyRead, set: t.Set, sel: sel}
		for a, v := range t.Key {
			e.attr, e.value = a, v
		}
	} else if len(t.Key) == 0 && t.ID != "" {
		if ti, err := k.tableOf(t.Set); err == nil {
			e = &entry{kind: kindKeyRead, set: t.Set, sel: sel, attr: ti.primaryID, value: strings.ToLower(t.ID), byID: true}
		}
	}
	if e != nil {
		name := "retrieving " + t.String()
		if err := k.submit(ctx, e); err != nil {
			return nil, fmt.Errorf("%s: %w", name, err)
		}
		if e.err != nil {
			return nil, e.err
		}
		switch len(e.rows) {
		case 0:
			return nil, &Error{Op: name, Status: http.StatusNotFound, Class: ClassNotFound,
				Message: "No row holds the key."}
		case 1:
			return e.rows[0], nil
		}
		return nil, invalidResponse(name, http.StatusOK, "%d rows hold one alternate key", len(e.rows))
	}
	q := url.Values{}
	if len(sel) > 0 {
		q.Set("$select", strings.Join(sel, ","))
	}
	h := http.Header{}
	h.Set("Accept", "application/json")
	name := "retrieving " + t.String()
	r, err := k.single(ctx, name, Op{Method: http.MethodGet, Path: withQuery(t.path(), q), Header: h}, true)
	if err != nil {
		return nil, err
	}
	var rec Record
	if err := decodeJSON(name, result{status: r.Status, header: r.Header, body: r.Body}, &rec); err != nil {
		return nil, err
	}
	if rec == nil {
		return nil, invalidResponse(name, r.Status, "answer is not a JSON object")
	}
	return rec, nil
}

// childQuery matches the query of one parent's child rows.
var childQuery = regexp.MustCompile(`^_([A-Za-z0-9_]+)_value eq ([0-9A-Fa-f]{8}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{12})$`)

// RetrieveMultiple calls fn for every row matching q. A query for the rows
// under one parent ($filter "_lookup_value eq <id>", no order or top) is
// grouped with others on the same lookup; any other query is sent as it
// is, on its own.
func (k *Coalescer) RetrieveMultiple(ctx context.Context, set string, q Query, fn func(Record) error) error {
	m := childQuery.FindStringSubmatch(q.Filter)
	if m == nil || q.OrderBy != "" || q.Top != 0 {
		return k.c.RetrieveMultiple(ctx, set, q, fn)
	}
	e := &entry{kind: kindChildren, set: set, attr: m[1], value: strings.ToLower(m[2]), sel: q.Select}
	if err := k.submit(ctx, e); err != nil {
		return fmt.Errorf("querying %s: %w", set, err)
	}
	if e.err != nil {
		return e.err
	}
	for _, r := range e.rows {
		if err := fn(r); err != nil {
			return err
		}
	}
	return nil
}

// Upsert creates or updates the row at t, in a shared batch.
func (k *Coalescer) Upsert(ctx context.Context, t Target, rec Record, o UpsertOptions) (UpsertResult, error) {
	name := "upserting " + t.String()
	op, err := UpsertOp(nil, t, rec, o)
	if err != nil {
		return UpsertResult{}, err
	}
	r, err := k.single(ctx, name, op, true)
	if err != nil {
		return UpsertResult{}, err
	}
	return UpsertResultOf(t, r)
}

// UpsertResultOf decodes the answer of an upsert op (UpsertOp) from a
// batch.
func UpsertResultOf(t Target, r OpResult) (UpsertResult, error) {
	out, err := upsertResult("upserting "+t.String(), result{status: r.Status, header: r.Header, body: r.Body})
	if err == nil && out.ID == "" {
		out.ID = idOf(t, out.Record)
	}
	return out, err
}

// Create inserts a row, in a shared batch, and returns its id. A create is
// never sent twice: after a batch lost without an answer the error is
// returned.
func (k *Coalescer) Create(ctx context.Context, set string, rec Record) (string, error) {
	name := "creating in " + set
	op, err := CreateOp(set, rec)
	if err != nil {
		return "", err
	}
	r, err := k.single(ctx, name, op, false)
	if err != nil {
		return "", err
	}
	id, ok := idFromEntityID(r.Header.Get("OData-EntityId"))
	if !ok {
		return "", invalidResponse(name, r.Status, "answer without a valid OData-EntityId header")
	}
	return id, nil
}

// Delete removes the row at t, in a shared batch.
func (k *Coalescer) Delete(ctx context.Context, t Target, etag string) error {
	_, err := k.single(ctx, "deleting "+t.String(), DeleteOp(t, etag), true)
	return err
}
