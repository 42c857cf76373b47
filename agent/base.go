package agent

import (
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"database/sql"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"hash"
	"math"
	"slices"
	"strings"
	"sync"
	"time"

	"gorm.io/gorm"

	"github.com/fhirsync/fhirsync/maps"
	"github.com/fhirsync/fhirsync/maps/path"
	"github.com/fhirsync/fhirsync/queues"
	"github.com/fhirsync/fhirsync/storage"
)

// The base state of a linked pair is what fhirsync last synced for each
// mapped attribute on each side: the common ancestor a three-way merge
// compares both sides' current values with. Values are not kept, only
// keyed hashes, so the base holds no PHI: HMAC-SHA256 under a key derived
// from the installation's sync-log key secret, over the link's identity,
// the attribute, the side and the value, truncated to baseHashSize bytes.
// The link's identity is in the hash so that equal values of two records
// (two patients born the same day) do not show as equal hashes.

// baseHashSize is the length kept of each HMAC-SHA256 digest: 128 bits,
// half the hash's output, the least RFC 2104 §5 recommends
// (https://www.rfc-editor.org/rfc/rfc2104#section-5), and ample for
// telling a changed value from an unchanged one.
const baseHashSize = 16

// baseEncoding is the first byte of an encoded base, its format version.
const baseEncoding byte = 1

// errNoBase means no base state is recorded for a link (never synced with
// the base on, or written for another pairing).
var errNoBase = errors.New("no base state")

// attrHash is the hashes of one attribute's last synced value on each side.
type attrHash struct {
	FHIR, CRM [baseHashSize]byte
}

// linkBase is the base state of one link.
type linkBase struct {
	EntityMap  string
	FHIRID     string
	CRMID      string
	MapVersion int
	// Attrs holds each attribute map's hashes by the attribute map's name.
	Attrs map[string]attrHash
	// FHIREditedAt and CRMEditedAt are when each side was last edited by
	// someone other than fhirsync (zero: not known): what last-writer-wins
	// compares, since fhirsync's own writes move a record's modified time
	// too.
	FHIREditedAt, CRMEditedAt time.Time
	UpdatedAt                 time.Time
}

// encodeBase packs attribute→hashes pairs in name order: the format byte,
// then per attribute a uvarint name length, the name and the two hashes.
func encodeBase(attrs map[string]attrHash) []byte {
	names := make([]string, 0, len(attrs))
	n := 1
	for name := range attrs {
		names = append(names, name)
		n += binary.MaxVarintLen16 + len(name) + 2*baseHashSize
	}
	slices.Sort(names)
	out := make([]byte, 0, n)
	out = append(out, baseEncoding)
	for _, name := range names {
		h := attrs[name]
		out = binary.AppendUvarint(out, uint64(len(name)))
		out = append(out, name...)
		out = append(out, h.FHIR[:]...)
		out = append(out, h.CRM[:]...)
	}
	return out
}

// decodeBase unpacks what encodeBase packed.
func decodeBase(b []byte) (map[string]attrHash, error) {
	if len(b) == 0 || b[0] != baseEncoding {
		return nil, fmt.Errorf("base state: unknown encoding")
	}
	b = b[1:]
	// An entry is its name's length, the name and two hashes: with names
	// of about fifteen bytes the map is made at about its final size
	// instead of growing.
	out := make(map[string]attrHash, len(b)/(2*baseHashSize+16))
	for len(b) > 0 {
		n, k := binary.Uvarint(b)
		if k <= 0 || uint64(len(b)-k) < n+2*baseHashSize {
			return nil, fmt.Errorf("base state: truncated entry")
		}
		b = b[k:]
		name := string(b[:n])
		b = b[n:]
		var h attrHash
		copy(h.FHIR[:], b[:baseHashSize])
		copy(h.CRM[:], b[baseHashSize:2*baseHashSize])
		b = b[2*baseHashSize:]
		out[name] = h
	}
	return out, nil
}

// baseHasher computes the base state of a pair of records under a map.
type baseHasher struct {
	key []byte
	// paths caches the compiled FHIR paths of each attribute map per
	// published mapping (a mapping is immutable), so paths are compiled
	// once per map version, not per record.
	paths *sync.Map // *maps.Mapping → []baseAttr
	// macs holds keyed HMACs for reuse: keying one costs more than the
	// hash of a short value (RFC 2104 §4 notes the keyed state may be
	// kept; a reset HMAC restores it).
	macs *sync.Pool // of *keyedMAC
	// vals holds the slices read returns, for reuse once their reader
	// calls done: one a side of each message otherwise, a few KiB each.
	vals *sync.Pool // of *[]attrValues
}

// newBaseHasher derives the base-state key from secret (the sync log's key
// secret), so the two uses of the secret never produce comparable hashes.
// A nil hasher (no secret) keeps no base state.
func newBaseHasher(secret []byte) *baseHasher {
	if len(secret) == 0 {
		return nil
	}
	m := hmac.New(sha256.New, secret)
	m.Write([]byte("fhirsync base state v1"))
	key := m.Sum(nil)
	return &baseHasher{key: key, paths: &sync.Map{}, macs: &sync.Pool{New: func() any {
		return &keyedMAC{mac: hmac.New(sha256.New, key), buf: make([]byte, 0, 256)}
	}}, vals: &sync.Pool{New: func() any { return new([]attrValues) }}}
}

// baseAttr is an attribute map as the base reads it.
type baseAttr struct {
	name string
	// expansion: an expansion map, whose value on the FHIR side is the
	// list of items at its path and on the CRM side the child rows.
	expansion bool
	// nested are the expansion's nested expansion maps, whose rows count
	// as part of its CRM value.
	nested  []string
	crmAttr string
	lookup  string // navigation property of a lookup; "" otherwise
	fhir    []*path.Path

	// byType are the columns of a lookup by type; its CRM value is the
	// column that is set, with the id it holds.
	byType []maps.LookupTarget
}

func (h *baseHasher) attrs(m *maps.Mapping) []baseAttr {
	if v, ok := h.paths.Load(m); ok {
		return v.([]baseAttr)
	}
	em := m.Def()
	var out []baseAttr
	for _, a := range em.Attributes {
		if a.Enabled != nil && !*a.Enabled {
			continue
		}
		ba := baseAttr{name: a.Name, crmAttr: a.CRMAttribute}
		if a.Lookup.IsByType() {
			ba.byType = a.Lookup.ByType
		}
		// A concept is a lookup to its concept row (maps/concept.go).
		ba.lookup = a.NavigationProperty()
		for _, text := range append([]string{a.FHIRPath}, a.FallbackPaths...) {
			if text == "" {
				continue
			}
			// The map set compiled these paths when it was published.
			if p, err := path.Compile(text); err == nil {
				ba.fhir = append(ba.fhir, p)
			}
		}
		out = append(out, ba)
	}
	for _, x := range em.Expansions {
		if x.Enabled != nil && !*x.Enabled {
			continue
		}
		ba := baseAttr{name: x.Name, expansion: true, nested: nestedNames(x.Expansions)}
		if p, err := path.Compile(x.FHIRPath); err == nil {
			ba.fhir = append(ba.fhir, p)
		}
		out = append(out, ba)
	}
	h.paths.Store(m, out)
	return out
}

// nestedNames lists the names of the enabled expansion maps nested in xs,
// at any depth.
func nestedNames(xs []maps.ExpansionMap) []string {
	var out []string
	for _, n := range xs {
		if n.IsEnabled() {
			out = append(out, n.Name)
			out = append(out, nestedNames(n.Expansions)...)
		}
	}
	return out
}

// of computes the base of the pair l from the FHIR resource and the CRM
// record as they stand after a sync. An attribute's FHIR value is read at
// its path (the first of its fallback paths whose value exists); a
// computed attribute has no FHIR path and its FHIR hash is that of null.
//
// known, when not nil, is the pair's base as read before the write
// (pairMerge.now), and unwritten the side the write left as it was: that
// side's hashes are taken from known instead of being read and computed
// again, when known is of the same pair and map version. prior, when not
// nil, is what the merge read that gave known (pairMerge.read): a value of
// the written side that is the same as it was read keeps the hash it had.
func (h *baseHasher) of(m *maps.Mapping, l link, res map[string]any, rec map[string]any, kids map[string][]map[string]any,
	known *linkBase, unwritten queues.Side, prior []attrValues) *linkBase {
	if known == nil || known.EntityMap != l.EntityMap || known.FHIRID != l.FHIRID || known.CRMID != l.CRMID ||
		known.MapVersion != m.Version() || len(known.Attrs) != len(h.attrs(m)) {
		unwritten, prior = "", nil
	}
	vals := h.readSides(m, l, res, rec, kids, unwritten, prior)
	defer h.done(vals)
	b := &linkBase{EntityMap: l.EntityMap, FHIRID: l.FHIRID, CRMID: l.CRMID, MapVersion: m.Version(), Attrs: make(map[string]attrHash, len(vals))}
	for _, v := range vals {
		switch unwritten {
		case queues.SideFHIR:
			v.h.FHIR = known.Attrs[v.name].FHIR
		case queues.SideCRM:
			v.h.CRM = known.Attrs[v.name].CRM
		}
		b.Attrs[v.name] = v.h
	}
	return b
}

// attrValues is one attribute's value on each side, as the base reads
// them, and their hashes.
type attrValues struct {
	name      string
	fhir, crm any
	h         attrHash
}

// read returns each attribute's values and hashes on both sides of l, in
// map order, then each expansion map's. kids are the CRM record's child
// rows by expansion; nil when not known (just written), and then an
// expansion's CRM hash is unknownHash. The caller hands the slice back
// with done once it has read it, and keeps none of it but the values.
func (h *baseHasher) read(m *maps.Mapping, l link, res map[string]any, rec map[string]any, kids map[string][]map[string]any) []attrValues {
	return h.readSides(m, l, res, rec, kids, "", nil)
}

// readSides is read leaving out one side (none when skip is ""): its
// values stay nil and its hashes zero. prior, when not nil, is what read
// returned for the same pair and mapping: a value the same as prior's
// keeps prior's hash instead of being hashed again.
func (h *baseHasher) readSides(m *maps.Mapping, l link, res map[string]any, rec map[string]any, kids map[string][]map[string]any, skip queues.Side, prior []attrValues) []attrValues {
	attrs := h.attrs(m)
	if len(prior) != len(attrs) {
		prior = nil
	}
	// hash is h.hash of one side's value, or the hash prior had for it.
	hash := func(i int, a *baseAttr, side queues.Side, v any) [baseHashSize]byte {
		if prior != nil && prior[i].name == a.name {
			was, sum := prior[i].fhir, prior[i].h.FHIR
			if side == queues.SideCRM {
				was, sum = prior[i].crm, prior[i].h.CRM
			}
			if sameValue(was, v) {
				return sum
			}
		}
		return h.hash(l, a.name, string(side), v)
	}
	out := (*h.vals.Get().(*[]attrValues))[:0]
	for i := range attrs {
		a := &attrs[i]
		if a.expansion {
			v := attrValues{name: a.name}
			if skip != queues.SideFHIR {
				if len(a.fhir) > 0 {
					if vs := a.fhir[0].GetAll(res); len(vs) > 0 {
						v.fhir = vs
					}
				}
				v.h.FHIR = hash(i, a, queues.SideFHIR, v.fhir)
			}
			if kids != nil && skip != queues.SideCRM {
				v.crm = sortedRows(kids[a.name])
				if len(a.nested) > 0 {
					// Rows nested under the expansion's rows change
					// its value too (the FHIR side's items hold them).
					all := []any{v.crm}
					for _, n := range a.nested {
						all = append(all, sortedRows(kids[n]))
					}
					v.crm = all
				}
				v.h.CRM = hash(i, a, queues.SideCRM, v.crm)
			}
			out = append(out, v)
			continue
		}
		v := attrValues{name: a.name}
		if skip != queues.SideFHIR {
			for _, p := range a.fhir {
				if vs := p.GetAll(res); len(vs) > 0 {
					v.fhir = vs
					break
				}
			}
			v.h.FHIR = hash(i, a, queues.SideFHIR, v.fhir)
		}
		if skip != queues.SideCRM {
			if len(a.byType) > 0 {
				v.crm = byTypeValue(rec, a.byType)
			} else if a.lookup != "" {
				v.crm = lookupValue(rec, a.crmAttr, a.lookup)
			} else {
				v.crm = rec[a.crmAttr]
			}
			v.h.CRM = hash(i, a, queues.SideCRM, v.crm)
		}
		out = append(out, v)
	}
	return out
}

// sameValue reports whether a and b are the same decoded value, so that
// appendValue writes the same bytes for each: the same types all the way
// down, nil apart from empty, numbers bit for bit. A type it does not
// know counts as different (the value is then hashed again). It is
// stricter than the path engine's equality, which takes a nil list for
// an empty one: a hash kept for a value must be that value's.
func sameValue(a, b any) bool {
	switch x := a.(type) {
	case nil:
		return b == nil
	case string:
		return equalAs(x, b)
	case bool:
		return equalAs(x, b)
	case json.Number:
		return equalAs(x, b)
	case float64:
		y, ok := b.(float64)
		return ok && math.Float64bits(x) == math.Float64bits(y)
	case int:
		return equalAs(x, b)
	case int64:
		return equalAs(x, b)
	case []string:
		y, ok := b.([]string)
		return ok && (x == nil) == (y == nil) && slices.Equal(x, y)
	case []any:
		y, ok := b.([]any)
		if !ok || (x == nil) != (y == nil) || len(x) != len(y) {
			return false
		}
		for i := range x {
			if !sameValue(x[i], y[i]) {
				return false
			}
		}
		return true
	case map[string]any:
		y, ok := b.(map[string]any)
		if !ok || (x == nil) != (y == nil) || len(x) != len(y) {
			return false
		}
		for k, xv := range x {
			yv, ok := y[k]
			if !ok || !sameValue(xv, yv) {
				return false
			}
		}
		return true
	}
	return false
}

// equalAs reports whether b is a T equal to x.
func equalAs[T comparable](x T, b any) bool {
	y, ok := b.(T)
	return ok && x == y
}

// done takes back a slice read returned, cleared so the pool holds no
// record's values.
func (h *baseHasher) done(vals []attrValues) {
	clear(vals)
	vals = vals[:0]
	h.vals.Put(&vals)
}

// keyedMAC is a keyed HMAC with a buffer for its input, reused.
type keyedMAC struct {
	mac hash.Hash
	buf []byte
}

// hash is the keyed hash of one side's value of an attribute of l.
func (h *baseHasher) hash(l link, attr, side string, v any) [baseHashSize]byte {
	k := h.macs.Get().(*keyedMAC)
	defer h.macs.Put(k)
	b := k.buf[:0]
	for _, s := range []string{l.EntityMap, l.FHIRID, attr, side} {
		b = append(b, s...)
		b = append(b, 0)
	}
	b = appendValue(b, v)
	k.buf = b
	k.mac.Reset()
	k.mac.Write(b)
	var sum [sha256.Size]byte
	var out [baseHashSize]byte
	copy(out[:], k.mac.Sum(sum[:0]))
	return out
}

// appendValue appends v in one canonical form: a tag byte, then the
// value. Strings and lists of strings (most mapped values) are written
// directly; anything else as JSON, whose map keys are sorted.
func appendValue(b []byte, v any) []byte {
	switch x := v.(type) {
	case nil:
		return append(b, 'n')
	case string:
		return append(append(b, 's'), x...)
	case []any:
		start := len(b)
		b = append(b, 'l')
		for _, e := range x {
			s, ok := e.(string)
			if !ok {
				return appendJSON(b[:start], x)
			}
			b = binary.AppendUvarint(b, uint64(len(s)))
			b = append(b, s...)
		}
		return b
	}
	return appendJSON(b, v)
}

func appendJSON(b []byte, v any) []byte {
	b, _ = maps.AppendJSON(append(b, 'j'), v)
	return b
}

// byTypeValue is a lookup by type's CRM value: "column=id" for each of
// its columns that is set (one, on a record fhirsync wrote), or nil.
func byTypeValue(rec map[string]any, targets []maps.LookupTarget) any {
	var out []any
	for _, t := range targets {
		if id, ok := lookupValue(rec, t.CRMAttribute, t.NavigationProperty()).(string); ok {
			out = append(out, t.CRMAttribute+"="+id)
		}
	}
	if len(out) == 0 {
		return nil
	}
	return out
}

// lookupValue is a lookup's target id in either the Web API read shape
// ("_attr_value") or the write shape ("nav@odata.bind": "/set(id)", read
// by maps.BoundID; a bind that names no GUID, or null, is nil). The write
// shape wins: it is what was just written over a record read in the read
// shape.
func lookupValue(rec map[string]any, attribute, nav string) any {
	if v, ok := rec[nav+"@odata.bind"]; ok {
		s, _ := v.(string)
		if id, ok := maps.BoundID(s); ok {
			return id
		}
		return nil
	}
	if v, ok := rec["_"+attribute+"_value"].(string); ok && v != "" {
		return strings.ToLower(v)
	}
	return nil
}

// saveBasesTx records bs inside the caller's transaction (the one that
// records the decisions). A base written for the same CRM record under
// another FHIR id (a re-paired record) is dropped with it.
func saveBasesTx(tx *gorm.DB, bs []*linkBase) error {
	now := time.Now().UTC()
	sqlite := storage.DialectOf(tx) == storage.SQLite
	const del = `DELETE FROM agent_link_base WHERE entity_map = ? AND crm_id = ? AND fhir_id <> ?`
	const ins = `INSERT INTO agent_link_base (entity_map, fhir_id, crm_id, map_version, hashes, updated_at, fhir_edited_at, crm_edited_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)
		ON CONFLICT (entity_map, fhir_id) DO UPDATE SET crm_id = excluded.crm_id, map_version = excluded.map_version, hashes = excluded.hashes, updated_at = excluded.updated_at,
		fhir_edited_at = excluded.fhir_edited_at, crm_edited_at = excluded.crm_edited_at`
	if sqlite && distinctCRM(bs) {
		return saveBasesSQLite(tx, bs, now)
	}
	for _, b := range bs {
		enc := encodeBase(b.Attrs)
		fAt, cAt := nullTime(b.FHIREditedAt), nullTime(b.CRMEditedAt)
		if sqlite {
			if _, err := storage.Direct(tx).Exec(del, b.EntityMap, b.CRMID, b.FHIRID); err != nil {
				return err
			}
			if _, err := storage.Direct(tx).Exec(ins, b.EntityMap, b.FHIRID, b.CRMID, b.MapVersion, enc, now, fAt, cAt); err != nil {
				return err
			}
			continue
		}
		if err := tx.Exec(del, b.EntityMap, b.CRMID, b.FHIRID).Error; err != nil {
			return err
		}
		if err := tx.Exec(ins, b.EntityMap, b.FHIRID, b.CRMID, b.MapVersion, enc, now, fAt, cAt).Error; err != nil {
			return err
		}
	}
	return nil
}

// distinctCRM reports whether no two of bs name the same CRM record (or
// the same pair) under one entity map: then deleting the bases of every
// re-paired CRM record first and inserting all of bs after does what the
// two statements per base in order do.
func distinctCRM(bs []*linkBase) bool {
	seen := make(map[string]bool, 2*len(bs))
	for _, b := range bs {
		c, f := "c\x00"+b.EntityMap+"\x00"+b.CRMID, "f\x00"+b.EntityMap+"\x00"+b.FHIRID
		if seen[c] || seen[f] {
			return false
		}
		seen[c], seen[f] = true, true
	}
	return true
}

// baseParams is the columns of one base row as saveBasesSQLite inserts it.
const baseParams = 8

// baseChunks are the row counts of saveBasesSQLite's statements, largest
// first; fixed, so each statement text stays prepared.
var baseChunks = []int{16, 8, 4, 2, 1}

// Statements of saveBasesSQLite by row count: the deletion of bases left
// under another FHIR id by re-paired CRM records, the update of bases kept
// by the same pair, and the upsert of the others.
//
// The update leaves crm_id out of its SET list: SQLite rewrites the entry
// of every index holding a column the statement assigns, even to the value
// it had, so an upsert setting crm_id = excluded.crm_id writes a page of
// agent_link_base_crm for each base it refreshes. Most saves refresh the
// base of a pair that exists; the upsert after the update then finds the
// same crm_id and, by its WHERE, writes nothing.
var delBaseSQL, updBaseSQL, insBaseSQL = func() (del, upd, ins map[int]string) {
	del, upd, ins = map[int]string{}, map[int]string{}, map[int]string{}
	for _, n := range baseChunks {
		v3 := "(?, ?, ?)" + strings.Repeat(", (?, ?, ?)", n-1)
		del[n] = storage.KeepPrepared(`DELETE FROM agent_link_base WHERE rowid IN (SELECT b.rowid FROM (VALUES ` + v3 + `) AS v
			JOIN agent_link_base b ON b.entity_map = v.column1 AND b.crm_id = v.column2 AND b.fhir_id <> v.column3)`)
		g := "(?" + strings.Repeat(", ?", baseParams-1) + ")"
		rows := g + strings.Repeat(", "+g, n-1)
		upd[n] = storage.KeepPrepared(`UPDATE agent_link_base AS b SET map_version = v.column4, hashes = v.column5, updated_at = v.column6,
			fhir_edited_at = v.column7, crm_edited_at = v.column8
			FROM (VALUES ` + rows + `) AS v WHERE b.entity_map = v.column1 AND b.fhir_id = v.column2 AND b.crm_id = v.column3`)
		ins[n] = storage.KeepPrepared(`INSERT INTO agent_link_base (entity_map, fhir_id, crm_id, map_version, hashes, updated_at, fhir_edited_at, crm_edited_at) VALUES ` +
			rows + `
		ON CONFLICT (entity_map, fhir_id) DO UPDATE SET crm_id = excluded.crm_id, map_version = excluded.map_version, hashes = excluded.hashes, updated_at = excluded.updated_at,
		fhir_edited_at = excluded.fhir_edited_at, crm_edited_at = excluded.crm_edited_at
		WHERE agent_link_base.crm_id IS NOT excluded.crm_id`)
	}
	return del, upd, ins
}()

// saveBasesSQLite is saveBasesTx on SQLite for bases of distinct CRM
// records and pairs, in multi-row statements.
func saveBasesSQLite(tx *gorm.DB, bs []*linkBase, now time.Time) error {
	// del binds the deletion's (entity map, CRM id, FHIR id) rows; rows
	// binds the base rows the update and the upsert both take.
	var del, rows []any
	for len(bs) > 0 {
		n := 1
		for _, c := range baseChunks {
			if c <= len(bs) {
				n = c
				break
			}
		}
		del, rows = del[:0], rows[:0]
		for _, b := range bs[:n] {
			del = append(del, b.EntityMap, b.CRMID, b.FHIRID)
			rows = append(rows, b.EntityMap, b.FHIRID, b.CRMID, b.MapVersion, encodeBase(b.Attrs), now, nullTime(b.FHIREditedAt), nullTime(b.CRMEditedAt))
		}
		if _, err := storage.Direct(tx).Exec(delBaseSQL[n], del...); err != nil {
			return err
		}
		if _, err := storage.Direct(tx).Exec(updBaseSQL[n], rows...); err != nil {
			return err
		}
		if _, err := storage.Direct(tx).Exec(insBaseSQL[n], rows...); err != nil {
			return err
		}
		bs = bs[n:]
	}
	return nil
}

// base loads the base state of l, for the three-way merge; errNoBase when
// none is recorded for this pairing.
func (s links) base(ctx context.Context, l link) (*linkBase, error) {
	var r baseRow
	const q = `SELECT crm_id, map_version, hashes, updated_at, fhir_edited_at, crm_edited_at FROM agent_link_base WHERE entity_map = ? AND fhir_id = ?`
	err := queryRow(ctx, s.db, q, l.EntityMap, l.FHIRID).Scan(r.dest()...)
	if errors.Is(err, sql.ErrNoRows) {
		return nil, errNoBase
	}
	if err != nil {
		return nil, fmt.Errorf("reading the base state of %s %s: %w", l.EntityMap, l.FHIRID, err)
	}
	return r.read(l.EntityMap, l.FHIRID).of(l)
}

// byCRMWithBase is byCRM that also reads, in the same statement, the base
// state recorded under the link's FHIR id: the one read of the agent's
// database a CRM→FHIR message makes before it locks its pair.
func (s links) byCRMWithBase(ctx context.Context, entityMap, crmID string) (link, *baseRead, error) {
	var l link
	var r baseRow
	const q = `SELECT l.entity_map, l.fhir_type, l.fhir_id, l.crm_entity, l.crm_id, l.fhir_version, l.crm_version, l.updated_at,
		b.crm_id, b.map_version, b.hashes, b.updated_at, b.fhir_edited_at, b.crm_edited_at
		FROM agent_links l LEFT JOIN agent_link_base b ON b.entity_map = l.entity_map AND b.fhir_id = l.fhir_id
		WHERE l.entity_map = ? AND l.crm_id = ?`
	err := queryRow(ctx, s.db, q, entityMap, crmID).Scan(append(l.dest(), r.dest()...)...)
	if errors.Is(err, sql.ErrNoRows) {
		return link{}, nil, errNoLink
	}
	if err != nil {
		return link{}, nil, err
	}
	return l, r.read(l.EntityMap, l.FHIRID), nil
}

// baseRow is a row of agent_link_base as scanned, every column nullable
// (a LEFT JOIN finds none).
type baseRow struct {
	crmID         sql.NullString
	mapVersion    sql.NullInt64
	enc           []byte
	updatedAt     sql.NullTime
	fhirAt, crmAt sql.NullTime
}

func (r *baseRow) dest() []any {
	return []any{&r.crmID, &r.mapVersion, &r.enc, &r.updatedAt, &r.fhirAt, &r.crmAt}
}

// read is the base the row holds for entityMap and fhirID.
func (r *baseRow) read(entityMap, fhirID string) *baseRead {
	br := &baseRead{entityMap: entityMap, fhirID: fhirID, crmID: r.crmID.String}
	if !r.crmID.Valid {
		return br
	}
	b := &linkBase{EntityMap: entityMap, FHIRID: fhirID, CRMID: r.crmID.String, MapVersion: int(r.mapVersion.Int64),
		UpdatedAt: r.updatedAt.Time, FHIREditedAt: r.fhirAt.Time, CRMEditedAt: r.crmAt.Time}
	var err error
	if b.Attrs, err = decodeBase(r.enc); err != nil {
		br.err = fmt.Errorf("reading the base state of %s %s: %w", entityMap, fhirID, err)
		return br
	}
	br.b = b
	return br
}

// baseRead is what agent_link_base held under one entity map and FHIR id
// when it was read: the base b, recorded for the CRM id crmID, or the
// error decoding it; all empty when nothing.
type baseRead struct {
	entityMap, fhirID, crmID string
	b                        *linkBase
	err                      error
}

// errBaseNotRead means a baseRead is not about the pair asked for (or
// there is none): the base is to be read.
var errBaseNotRead = errors.New("base state not read")

// of is what links.base would return for l from what was read:
// errBaseNotRead when r is nil or about another FHIR record.
func (r *baseRead) of(l link) (*linkBase, error) {
	switch {
	case r == nil || r.entityMap != l.EntityMap || r.fhirID != l.FHIRID:
		return nil, errBaseNotRead
	case r.crmID != l.CRMID || (r.b == nil && r.err == nil):
		return nil, errNoBase
	case r.err != nil:
		return nil, r.err
	}
	return r.b, nil
}

// removeBase forgets the base of the link of entityMap and fhirID.
func removeBase(tx *gorm.DB, entityMap, fhirID string) error {
	return tx.Exec(`DELETE FROM agent_link_base WHERE entity_map = ? AND fhir_id = ?`, entityMap, fhirID).Error
}

// baseAfter is the base of the pair a sent decision leaves: the source as
// read and the target as written (w), under mapping m; nil when the base
// is off or the output is not what the flow writes.
//
// mg, when not nil, is this message's merge: the source side was read for
// it and is not written, so its hashes are taken from there.
func (p *pipeline) baseAfter(f *flow, m *maps.Mapping, src record, cur *record, out mapped, w written, mg *pairMerge) *linkBase {
	if p.base == nil {
		return nil
	}
	em := m.Def()
	l := link{EntityMap: em.Name}
	var res, rec map[string]any
	var kids map[string][]map[string]any // nil: the CRM rows just written are not known
	if f.side == queues.SideFHIR {
		l.FHIRID, l.CRMID = src.ID, w.ID
		cr, ok := out.Data.(*maps.CRMResult)
		if !ok {
			return nil
		}
		res = src.Data
		// The CRM record now holds what it held, with the written values
		// over it.
		rec = map[string]any{}
		if st := crmState(cur); st != nil {
			for k, v := range st.Record {
				rec[k] = v
			}
		}
		for k, v := range cr.Record {
			rec[k] = v
		}
	} else {
		l.CRMID, l.FHIRID = src.ID, w.ID
		r, ok := out.Data.(map[string]any)
		if !ok {
			return nil
		}
		res = r
		rec, kids = crmParts(&src)
	}
	if l.FHIRID == "" || l.CRMID == "" {
		return nil
	}
	var known *linkBase
	var prior []attrValues
	if mg != nil {
		known, prior = mg.now, mg.read
	}
	return p.base.of(m, l, res, rec, kids, known, f.side, prior)
}

// nullTime is t for a nullable column: NULL when zero, else UTC.
func nullTime(t time.Time) any {
	if t.IsZero() {
		return nil
	}
	return t.UTC()
}

// unknownHash stands for a side's hash that is not known: the child rows
// of a CRM record fhirsync has just written. The next merge of the pair
// takes that side as unchanged and learns its hash.
var unknownHash [baseHashSize]byte

// sortedRows is a list of child rows in a stable order (by their JSON),
// as a generic list; nil when there are none.
func sortedRows(rows []map[string]any) any {
	if len(rows) == 0 {
		return nil
	}
	type keyed struct {
		k string
		r map[string]any
	}
	ks := make([]keyed, len(rows))
	var buf []byte
	for i, r := range rows {
		buf, _ = maps.AppendJSON(buf[:0], r)
		ks[i] = keyed{string(buf), r}
	}
	slices.SortFunc(ks, func(a, b keyed) int { return strings.Compare(a.k, b.k) })
	out := make([]any, len(ks))
	for i, k := range ks {
		out[i] = k.r
	}
	return out
}
