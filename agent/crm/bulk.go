package crm

import (
	"context"
	"crypto/rand"
	"encoding/json"
	"fmt"
	"maps"
	"net/http"
	"net/url"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/google/uuid"

	fsmaps "github.com/fhirsync/fhirsync/maps"
)

// Bulk messages. With bulk on (the default), a Coalescer sends the row
// writes of the records in one flush as the Dataverse bulk-operation
// messages, bound actions of the table's entity set, instead of one
// request per row ("Use bulk operation messages",
// https://learn.microsoft.com/power-apps/developer/data-platform/bulk-operations;
// Web API reference: .../webapi/reference/createmultiple,
// .../updatemultiple, .../upsertmultiple):
//
//	POST contacts/Microsoft.Dynamics.CRM.CreateMultiple
//	{"Targets":[{"@odata.type":"Microsoft.Dynamics.CRM.contact","contactid":"<guid>",…},…]}
//
// Each bulk message is one request inside the flush's $batch, and
// Dataverse's published sample timings make a record of CreateMultiple a
// quarter of a Create's execution time (docs/sandbox-crm.md). What goes
// in bulk:
//
//   - A record created by alternate key (Apply with an UpsertOp in
//     CreateOnly mode first, then CreateOps of its child rows): the parent
//     gets a primary key assigned here (Dataverse accepts a client-chosen
//     GUID on create) and goes in a CreateMultiple of its table; its child
//     rows bind to "/contacts(<guid>)" instead of "$1" and go in a
//     CreateMultiple of theirs, after the parents in the same $batch
//     (requests of a $batch run in order). A $batch answered without
//     knowing what ran (5xx, no answer) is sent again as UpsertMultiple of
//     the same GUIDs, which a second run leaves as the first left it.
//   - Updates by primary key without an ETag (UpsertOp in UpdateOnly mode
//     sent alone, e.g. the FHIR id written back), when a flush holds two
//     or more of one table: UpdateMultiple.
//
// A record updated under an ETag (If-Match) keeps its change set:
// UpdateMultiple has no per-row precondition (UpdateMultipleRequest's
// ConcurrencyBehavior is documented as a known issue that is not applied),
// and the agent's conflict handling depends on the 412.
//
// The bulk messages answer no ETags, so the flush's $batch ends with one
// query per table, $select=<primary key>,versionnumber filtered with
// Microsoft.Dynamics.CRM.In on the parents' ids: each caller gets the
// version its write made, as the PATCH's representation gave it.
//
// A bulk message on a standard table is all or nothing ("Any error that
// occurs in a bulk operation with a standard table causes the entire
// operation to roll back"). When one fails, the records in it are sent
// again split in two, until the failing message holds one record; that
// record's remaining writes then go as its own change set, as without
// bulk, and so it fails alone with the CRM's own error. A record whose
// parent was written but whose child rows failed gets the child's error
// (the parent's result stands); the agent's retry re-reads and writes the
// rest. A 429 answered for a bulk message pauses the user and sends the
// records again, as for any request of a batch.
//
// A record whose child rows bind to another Content-ID than "$1" (a
// nested expansion's row under a row created in the same change set)
// keeps its change set: the bulk messages carry no references between
// their rows.

// bulkRow is one row write of a record sent in a bulk message.
type bulkRow struct {
	op     int // index of the caller's op
	set    string
	update bool // UpdateMultiple of an existing row; else a new row
	rec    Record
	id     string            // primary key: assigned, or the row updated
	key    map[string]string // the alternate key a new parent is created by
	// bindsParent rows bind "$1", the parent created with them.
	bindsParent bool
	done        bool
	res         OpResult
}

// bulkState is a record's progress through bulk messages.
type bulkState struct {
	rows []*bulkRow
	// single is an update sent alone (not a change set).
	single bool
	// uncertain: a bulk message holding the record may have run; new rows
	// are sent as UpsertMultiple from now on.
	uncertain bool
	// off: the record's remaining writes go as a change set; sent names
	// the ops that change set holds.
	off  bool
	sent []int
	// refused names the table whose bulk message, holding this record
	// alone, was refused; if the record's change set then succeeds, the
	// table does not take the message and later records skip it.
	refused func()
}

// bulkPlanOf reports whether e's writes can go in bulk messages, and how.
func bulkPlanOf(e *entry) *bulkState {
	if e.kind != kindOps || len(e.ops) == 0 {
		return nil
	}
	minimal := func(w *opWrite) bool { return len(w.opts.Select) == 0 && !w.opts.FullRecord && w.opts.IfMatch == "" }
	p := e.ops[0].write
	if !e.changeSet {
		if p == nil || !p.upsert || len(p.target.Key) != 0 || p.target.ID == "" || p.opts.Mode != UpdateOnly || !minimal(p) {
			return nil
		}
		return &bulkState{single: true, rows: []*bulkRow{{set: p.target.Set, update: true, rec: p.rec, id: strings.ToLower(p.target.ID)}}}
	}
	if p == nil || !p.upsert || len(p.target.Key) == 0 || p.opts.Mode != CreateOnly || !minimal(p) {
		return nil
	}
	st := &bulkState{rows: []*bulkRow{{set: p.target.Set, rec: p.rec, id: newRowID(), key: p.target.Key}}}
	for i, op := range e.ops[1:] {
		w := op.write
		if w == nil || w.upsert || op.ContentID != "" {
			return nil
		}
		binds := false
		for k, v := range w.rec {
			s, ok := v.(string)
			if !ok || !strings.HasSuffix(k, "@odata.bind") || !strings.HasPrefix(s, "$") {
				continue
			}
			if s != "$1" {
				return nil
			}
			binds = true
		}
		st.rows = append(st.rows, &bulkRow{op: i + 1, set: w.set, rec: w.rec, id: newRowID(), bindsParent: binds})
	}
	return st
}

// newRowID is the primary key given to a row created in bulk. Dataverse
// lets a create name its row's primary key, though its own values "are
// optimized for best performance" ("Create a table row using the Web API",
// Set the primary key value:
// https://learn.microsoft.com/power-apps/developer/data-platform/webapi/create-entity-web-api#set-the-primary-key-value):
// its rows live in SQL Server, which orders uniqueidentifier values by
// their last six bytes first, so those carry the time in milliseconds and
// new rows land at the end of the index, as sequential GUIDs do. The rest
// is random (a version 4 layout).
func newRowID() string {
	var b [16]byte
	_, _ = rand.Read(b[:])
	ms := uint64(time.Now().UnixMilli())
	for i := range 6 {
		b[15-i] = byte(ms >> (8 * i))
	}
	b[6] = b[6]&0x0f | 0x40
	b[8] = b[8]&0x3f | 0x80
	return uuid.UUID(b).String()
}

// tableInfo is what a bulk message needs to know of a table.
type tableInfo struct {
	logical, primaryID string
}

// tables caches tableInfo by entity set.
type tables struct {
	mu sync.Mutex
	m  map[string]tableInfo
	// noBulk: sets whose bulk messages were refused for a record whose
	// change set then went through ("Not all standard tables support
	// these messages", bulk-operations, Availability).
	noBulk map[string]bool
}

func (t *tables) refuse(set string) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.noBulk == nil {
		t.noBulk = map[string]bool{}
	}
	t.noBulk[set] = true
}

func (t *tables) refused(set string) bool {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.noBulk[set]
}

// tableOf reads the logical name and primary key of the table behind set
// from EntityDefinitions, once.
func (k *Coalescer) tableOf(set string) (tableInfo, error) {
	k.tables.mu.Lock()
	ti, ok := k.tables.m[set]
	k.tables.mu.Unlock()
	if ok {
		return ti, nil
	}
	op := "reading the definition of " + set
	q := url.Values{}
	q.Set("$select", "LogicalName,PrimaryIdAttribute,EntitySetName")
	q.Set("$filter", "EntitySetName eq "+quote(set))
	res, err := k.c.send(context.Background(), op, call{method: http.MethodGet, url: k.c.url("EntityDefinitions", q), idempotent: true})
	if err != nil {
		return tableInfo{}, err
	}
	var out struct {
		Value []struct {
			LogicalName, PrimaryIdAttribute string
		} `json:"value"`
	}
	if err := decodeJSON(op, res, &out); err != nil {
		return tableInfo{}, err
	}
	if len(out.Value) != 1 || out.Value[0].LogicalName == "" || out.Value[0].PrimaryIdAttribute == "" {
		return tableInfo{}, invalidResponse(op, res.status, "%d definitions for one entity set", len(out.Value))
	}
	ti = tableInfo{logical: out.Value[0].LogicalName, primaryID: out.Value[0].PrimaryIdAttribute}
	k.tables.mu.Lock()
	if k.tables.m == nil {
		k.tables.m = map[string]tableInfo{}
	}
	k.tables.m[set] = ti
	k.tables.mu.Unlock()
	return ti, nil
}

// bulkEntries takes from live the entries sent in bulk messages this
// time; the others are returned as rest. Updates sent alone go in bulk
// only when two or more of one table are at hand.
func (k *Coalescer) bulkEntries(live []*entry) (bulk, rest []*entry) {
	singles := map[string]int{}
	for _, e := range live {
		if e.bulk != nil && !e.bulk.off && e.bulk.single {
			singles[e.bulk.rows[0].set]++
		}
	}
	known := map[string]bool{}
	ok := func(set string) bool {
		v, seen := known[set]
		if !seen {
			_, err := k.tableOf(set)
			v = err == nil && !k.tables.refused(set)
			known[set] = v
		}
		return v
	}
	for _, e := range live {
		st := e.bulk
		if st == nil || st.off || (st.single && singles[st.rows[0].set] < 2) {
			if st != nil && !st.off {
				e.bulk = nil
			}
			rest = append(rest, e)
			continue
		}
		all := true
		for _, r := range st.rows {
			if !r.done && !ok(r.set) {
				all = false
			}
		}
		if !all {
			if anyDone(st) {
				k.goAlone(e)
			} else {
				e.bulk = nil
			}
			rest = append(rest, e)
			continue
		}
		bulk = append(bulk, e)
	}
	return bulk, rest
}

func anyDone(st *bulkState) bool {
	return slices.ContainsFunc(st.rows, func(r *bulkRow) bool { return r.done })
}

// bulkMsg is one bulk message of a built batch.
type bulkMsg struct {
	set, action string
	rows        []*bulkRow
	owners      []*entry // the entry of each row
	at          int      // index of its result
}

// bulkRead is the version query of one table.
type bulkRead struct {
	set string
	pk  string
	at  int
}

// bulkPlan is the bulk part of a built batch.
type bulkPlan struct {
	entries []*entry
	msgs    []*bulkMsg
	reads   []bulkRead
	broken  map[*entry]bool // in a message that could not be encoded
}

// buildBulk appends the bulk messages for entries to b, parents first,
// then child rows, then the version queries; first is the index of the
// first result they will have.
func (k *Coalescer) buildBulk(entries []*entry, b *Batch, first int) *bulkPlan {
	bp := &bulkPlan{entries: entries}
	if len(entries) == 0 {
		return bp
	}
	byKey := map[string]*bulkMsg{}
	var parents, children []*bulkMsg
	readIDs := map[string][]string{}
	var readOrder []string
	for _, e := range entries {
		st := e.bulk
		for i, r := range st.rows {
			if r.done {
				continue
			}
			action := "CreateMultiple"
			switch {
			case r.update:
				action = "UpdateMultiple"
			case st.uncertain:
				action = "UpsertMultiple"
			}
			key := fmt.Sprintf("%t|%s|%s", i > 0, r.set, action)
			m := byKey[key]
			if m == nil {
				m = &bulkMsg{set: r.set, action: action}
				byKey[key] = m
				if i == 0 {
					parents = append(parents, m)
				} else {
					children = append(children, m)
				}
			}
			m.rows = append(m.rows, r)
			m.owners = append(m.owners, e)
			if i == 0 {
				if _, ok := readIDs[r.set]; !ok {
					readOrder = append(readOrder, r.set)
				}
				readIDs[r.set] = append(readIDs[r.set], r.id)
			}
		}
	}
	pos := first
	for _, m := range append(parents, children...) {
		op, err := k.bulkOp(m)
		if err != nil {
			// A row that does not encode: its records go as change sets,
			// where the same error is theirs alone.
			if bp.broken == nil {
				bp.broken = map[*entry]bool{}
			}
			for _, e := range m.owners {
				bp.broken[e] = true
			}
			continue
		}
		m.at = pos
		pos++
		b.Items = append(b.Items, BatchItem{Op: &op})
		bp.msgs = append(bp.msgs, m)
	}
	for _, set := range readOrder {
		ti, _ := k.tableOf(set)
		ids := readIDs[set]
		for len(ids) > 0 {
			n := min(len(ids), 400) // 400 GUIDs keep the URL near 20,000 characters
			op := k.versionQuery(set, ti.primaryID, ids[:n])
			b.Items = append(b.Items, BatchItem{Op: &op})
			bp.reads = append(bp.reads, bulkRead{set: set, pk: ti.primaryID, at: pos})
			pos++
			ids = ids[n:]
		}
	}
	return bp
}

// bulkOp renders a bulk message: every target names its type with
// @odata.type and its row by primary key (an UpsertMultiple target also
// by @odata.id, the row's own reference).
func (k *Coalescer) bulkOp(m *bulkMsg) (Op, error) {
	ti, err := k.tableOf(m.set)
	if err != nil {
		return Op{}, err
	}
	// Each target is the row's record with, over it, the parent's bind
	// for "$1", the alternate key's columns it lacks, its type and its
	// primary key (and its id, for an upsert), written straight into the
	// body, keys sorted as EncodeJSON sorts them, without a copy of the
	// record.
	b := append(bulkBuffer(m), `{"Targets":[`...)
	var over []field
	for i, r := range m.rows {
		over = over[:0]
		if r.bindsParent {
			parent := m.owners[i].bulk.rows[0]
			for a, v := range r.rec {
				if s, ok := v.(string); ok && s == "$1" && strings.HasSuffix(a, "@odata.bind") {
					over = append(over, field{a, Bind(parent.set, parent.id)})
				}
			}
		}
		for a, v := range r.key {
			if _, ok := r.rec[a]; !ok {
				over = append(over, field{a, v})
			}
		}
		over = append(over, field{"@odata.type", "Microsoft.Dynamics.CRM." + ti.logical}, field{ti.primaryID, r.id})
		if m.action == "UpsertMultiple" {
			over = append(over, field{"@odata.id", m.set + "(" + r.id + ")"})
		}
		if i > 0 {
			b = append(b, ',')
		}
		if b, err = appendTarget(b, r.rec, over); err != nil {
			return Op{}, fmt.Errorf("encoding %s for %s: %w", m.action, m.set, err)
		}
	}
	body := append(b, "]}"...)
	h := http.Header{}
	h.Set("Accept", "application/json")
	return Op{Method: http.MethodPost, Path: m.set + "/Microsoft.Dynamics.CRM." + m.action, Header: h, Body: body}, nil
}

// field is a column and the value a bulk message's target gives it.
type field struct {
	name  string
	value any
}

// appendTarget appends rec, with the fields of over in place of (or
// beside) its own, as one JSON object whose keys are sorted.
func appendTarget(b []byte, rec Record, over []field) ([]byte, error) {
	var stack [48]string
	names := stack[:0]
	for a := range rec {
		if !slices.ContainsFunc(over, func(f field) bool { return f.name == a }) {
			names = append(names, a)
		}
	}
	for _, f := range over {
		if !slices.Contains(names, f.name) {
			names = append(names, f.name)
		}
	}
	slices.Sort(names)
	b = append(b, '{')
	for i, a := range names {
		if i > 0 {
			b = append(b, ',')
		}
		b = fsmaps.AppendJSONString(b, a)
		b = append(b, ':')
		v, found := any(nil), false
		for j := len(over) - 1; j >= 0; j-- {
			if over[j].name == a {
				v, found = over[j].value, true
				break
			}
		}
		if !found {
			v = rec[a]
		}
		var err error
		if b, err = fsmaps.AppendJSON(b, v); err != nil {
			return nil, err
		}
	}
	return append(b, '}'), nil
}

// bulkBuffer is an empty buffer the size of m's body: its rows' records
// as their own ops encoded them, and room for what each target adds.
func bulkBuffer(m *bulkMsg) []byte {
	n := 16
	for i, r := range m.rows {
		n += 160
		if ops := m.owners[i].ops; r.op >= 0 && r.op < len(ops) {
			n += len(ops[r.op].Body)
		}
	}
	return make([]byte, 0, n)
}

// versionQuery reads the versions the writes made.
func (k *Coalescer) versionQuery(set, pk string, ids []string) Op {
	h := http.Header{}
	h.Set("Accept", "application/json")
	maps.Copy(h, k.c.preferHeader())
	return Op{Method: http.MethodGet, Path: withQuery(set, Query{Select: []string{pk, "versionnumber"}, Filter: inOf(pk, ids)}.values()), Header: h}
}

// bulkOutcome is what answering the bulk part of a batch leaves to do.
type bulkOutcome struct {
	again []*entry // throttled or not run: send again after wait
	wait  time.Duration
	split []*entry // in a failed message with other records: send again in halves
	alone []*entry // isolated: their remaining writes go as change sets
}

// What answering leaves to do with a record; the greater wins.
const (
	bulkFine  = iota
	bulkAgain // throttled or skipped
	bulkAlone // in a failed message of its own
	bulkSplit // in a failed message with other records
)

// answerBulk reads the bulk messages' answers, finishes the records whose
// writes are all done, and sorts the others.
func (k *Coalescer) answerBulk(bp *bulkPlan, results []OpResult) bulkOutcome {
	var out bulkOutcome
	if len(bp.entries) == 0 {
		return out
	}
	versions := map[string]Record{}
	for _, rd := range bp.reads {
		r := results[rd.at]
		if r.Err != nil {
			continue
		}
		pg, _, err := decodePage("querying "+rd.set, result{status: r.Status, header: r.Header, body: r.Body})
		if err != nil {
			continue
		}
		rows := pg.Value
		for link := pg.NextLink; link != ""; {
			next, err := k.c.page(context.Background(), "querying "+rd.set, link, k.c.preferHeader())
			if err != nil {
				break
			}
			rows = append(rows, next.Value...)
			link = next.NextLink
		}
		for _, row := range rows {
			if id, ok := row[rd.pk].(string); ok {
				versions[rd.set+"\x00"+strings.ToLower(id)] = row
			}
		}
	}
	state := map[*entry]int{}
	mark := func(e *entry, s int) { state[e] = max(state[e], s) }
	for e := range bp.broken {
		mark(e, bulkAlone)
	}
	for _, m := range bp.msgs {
		r := results[m.at]
		switch {
		case r.Skipped:
			for _, e := range m.owners {
				mark(e, bulkAgain)
			}
			continue
		case r.Err != nil && r.Err.Class == ClassThrottled:
			out.wait = max(out.wait, r.Err.RetryAfter)
			for _, e := range m.owners {
				mark(e, bulkAgain)
			}
			continue
		case r.Err != nil:
			one := true
			for _, e := range m.owners {
				if e != m.owners[0] {
					one = false
				}
				if r.Err.Status >= 500 || r.Err.Class == ClassUnavailable {
					e.bulk.uncertain = true
				}
			}
			for _, e := range m.owners {
				if one {
					mark(e, bulkAlone)
				} else {
					mark(e, bulkSplit)
				}
			}
			if one && r.Err.Status >= 400 && r.Err.Status < 500 {
				set := m.set
				m.owners[0].bulk.refused = func() { k.tables.refuse(set) }
			}
			continue
		}
		ids := k.bulkIDs(m, r)
		for i, row := range m.rows {
			row.done = true
			if ids != nil && ids[i] != "" {
				row.id = ids[i]
			}
			row.res = k.rowResult(m.set, row, m.owners[i].bulk.rows[0] == row, versions)
		}
	}
	for _, e := range bp.entries {
		switch state[e] {
		case bulkFine:
			if !slices.ContainsFunc(e.bulk.rows, func(r *bulkRow) bool { return !r.done }) {
				e.finishOps(nil)
			} else {
				// a message it needed did not go (a row that did not
				// encode): its remaining writes go as a change set
				out.alone = append(out.alone, e)
			}
		case bulkAgain:
			out.again = append(out.again, e)
		case bulkAlone:
			out.alone = append(out.alone, e)
		case bulkSplit:
			out.split = append(out.split, e)
		}
	}
	for _, e := range out.alone {
		k.goAlone(e)
	}
	return out
}

// bulkIDs reads the Ids a CreateMultiple or UpsertMultiple answered, if
// any (UpsertMultiple answers 204 No Content on the Web API).
func (k *Coalescer) bulkIDs(m *bulkMsg, r OpResult) []string {
	if m.action == "UpdateMultiple" || len(r.Body) == 0 {
		return nil
	}
	var out struct {
		IDs []string `json:"Ids"`
	}
	if json.Unmarshal(r.Body, &out) != nil || len(out.IDs) != len(m.rows) {
		return nil
	}
	for i, id := range out.IDs {
		out.IDs[i] = strings.ToLower(id)
	}
	return out.IDs
}

// rowResult is the answer the row's own request would have had: a
// parent's (or an update's) representation with its ETag, read back by
// the version query; a child row's 204 with its OData-EntityId.
func (k *Coalescer) rowResult(set string, row *bulkRow, parent bool, versions map[string]Record) OpResult {
	h := http.Header{}
	h.Set("OData-EntityId", k.c.root+set+"("+row.id+")")
	if !parent {
		return OpResult{Status: http.StatusNoContent, Header: h}
	}
	rep := Record{}
	if v, ok := versions[set+"\x00"+row.id]; ok {
		rep = maps.Clone(v)
	}
	for a, v := range row.key {
		rep[a] = v
	}
	if etag := rep.ETag(); etag != "" {
		h.Set("ETag", etag)
	}
	body, _ := json.Marshal(rep)
	h.Set("Content-Type", "application/json; odata.metadata=minimal")
	status := http.StatusCreated
	if row.update {
		status = http.StatusOK
	}
	return OpResult{Status: status, Header: h, Body: body}
}

// goAlone turns e's remaining writes into a change set (or its single
// op): child rows of a parent already written bind to it by id.
func (k *Coalescer) goAlone(e *entry) {
	st := e.bulk
	if st.off {
		return
	}
	st.off = true
	parent := st.rows[0]
	var ops []Op
	st.sent = st.sent[:0]
	for _, r := range st.rows {
		if r.done {
			continue
		}
		op := e.ops[r.op]
		if r.bindsParent && parent.done {
			rec := maps.Clone(r.rec)
			for a, v := range rec {
				if s, ok := v.(string); ok && s == "$1" && strings.HasSuffix(a, "@odata.bind") {
					rec[a] = Bind(parent.set, parent.id)
				}
			}
			if c, err := CreateOp(r.set, rec); err == nil {
				op = c
			}
		}
		ops = append(ops, op)
		st.sent = append(st.sent, r.op)
	}
	if !parent.done && !st.single {
		h := e.ops[0].Header
		e.idempotent = h != nil && (h.Get("If-Match") != "" || h.Get("If-None-Match") != "")
	} else if !st.single {
		e.idempotent = false
	}
	e.ops = ops
}

// finishOps answers a write entry: res are the results of the ops it sent
// last; a record that went in bulk has the results of its bulk rows in the
// others' places.
func (e *entry) finishOps(res []OpResult) {
	st := e.bulk
	if st == nil {
		e.finish(res, nil, nil)
		return
	}
	out := make([]OpResult, len(st.rows))
	for i, r := range st.rows {
		if r.done {
			out[i] = r.res
		}
	}
	if st.off {
		ok := len(res) == len(st.sent)
		for i, at := range st.sent {
			if i < len(res) {
				out[at] = res[i]
				ok = ok && res[i].Err == nil
			}
		}
		if ok && st.refused != nil {
			st.refused()
		}
	}
	e.finish(out, nil, nil)
}
