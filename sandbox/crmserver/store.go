package crmserver

import (
	"encoding/json"
	"fmt"
	"math"
	"math/big"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"
	"unicode/utf8"

	"github.com/google/uuid"
)

// lookupValue is a stored lookup: the referenced row and its entity.
type lookupValue struct {
	ID     string
	Target string
}

type row struct {
	id         string
	attrs      rowAttrs // logical name → string, json.Number, bool, lookupValue, nil
	version    int64
	createdOn  time.Time
	modifiedOn time.Time
	createdBy  string
	modifiedBy string
}

func (r *row) clone() *row {
	c := *r
	c.attrs = slices.Clone(r.attrs)
	return &c
}

type tombstone struct {
	id      string
	version int64
}

type table struct {
	def   *Entity
	rows  map[string]*row
	keys  map[string]map[string]string // key logical name → joined values → id
	tombs []tombstone
	// lookups indexes rows by the target of each lookup attribute
	// (attribute → lower-case target id → row id → row), so the child-row
	// query `_parent_value eq <id>` does not scan the table.
	lookups map[string]map[string]map[string]*row
}

// index adds r to the lookup index.
func (tb *table) index(r *row) {
	for _, a := range r.attrs {
		name := a.name
		lv, ok := a.value.(lookupValue)
		if !ok || lv.ID == "" {
			continue
		}
		if tb.lookups == nil {
			tb.lookups = map[string]map[string]map[string]*row{}
		}
		byTarget := tb.lookups[name]
		if byTarget == nil {
			byTarget = map[string]map[string]*row{}
			tb.lookups[name] = byTarget
		}
		id := strings.ToLower(lv.ID)
		if byTarget[id] == nil {
			byTarget[id] = map[string]*row{}
		}
		byTarget[id][r.id] = r
	}
}

// unindex removes r from the lookup index.
func (tb *table) unindex(r *row) {
	for _, a := range r.attrs {
		name := a.name
		if lv, ok := a.value.(lookupValue); ok && lv.ID != "" {
			if rows := tb.lookups[name][strings.ToLower(lv.ID)]; rows != nil && rows[r.id] == r {
				delete(rows, r.id)
			}
		}
	}
}

// byLookup returns the rows whose lookup attribute points at id.
func (tb *table) byLookup(attr, id string) []*row {
	rows := tb.lookups[attr][strings.ToLower(id)]
	out := make([]*row, 0, len(rows))
	for _, r := range rows {
		out = append(out, r)
	}
	return out
}

// store holds every table in memory. One mutex serialises all writes, which
// also makes change sets atomic: a change set runs under the lock and undoes
// itself on failure.
type store struct {
	mu      sync.Mutex
	tables  map[string]*table // by logical name
	bySet   map[string]*table // by entity set name
	version int64
	// expiredBelow: delta tokens with a version below it are expired.
	expiredBelow int64
}

func newStore(entities []*Entity) (*store, error) {
	s := &store{tables: map[string]*table{}, bySet: map[string]*table{}}
	for _, e := range entities {
		if e.LogicalName == "" || e.EntitySetName == "" || e.PrimaryID == "" {
			return nil, fmt.Errorf("entity %q: logical name, entity set name and primary id are required", e.LogicalName)
		}
		if _, dup := s.tables[e.LogicalName]; dup {
			return nil, fmt.Errorf("entity %q defined twice", e.LogicalName)
		}
		if e.Attribute(e.PrimaryID) == nil {
			return nil, fmt.Errorf("entity %q: primary id attribute %q is not defined", e.LogicalName, e.PrimaryID)
		}
		for _, k := range e.Keys {
			for _, a := range k.Attributes {
				if e.Attribute(a) == nil {
					return nil, fmt.Errorf("entity %q: key %q names unknown attribute %q", e.LogicalName, k.LogicalName, a)
				}
			}
		}
		for _, r := range e.ManyToOne {
			if a := e.Attribute(r.Attribute); a == nil || !a.isLookup() {
				return nil, fmt.Errorf("entity %q: relationship %q names %q, which is not a lookup", e.LogicalName, r.SchemaName, r.Attribute)
			}
		}
		for _, a := range e.Attributes {
			a.entity = e.LogicalName
		}
		t := &table{def: e, rows: map[string]*row{}, keys: map[string]map[string]string{}}
		for _, k := range e.Keys {
			t.keys[k.LogicalName] = map[string]string{}
		}
		s.tables[e.LogicalName] = t
		s.bySet[e.EntitySetName] = t
	}
	return s, nil
}

// tx collects undo steps and the events to publish after commit.
type tx struct {
	s      *store
	undo   []func()
	events []event
}

func (t *tx) rollback() {
	for i := len(t.undo) - 1; i >= 0; i-- {
		t.undo[i]()
	}
	t.undo, t.events = nil, nil
}

func (t *tx) nextVersion() int64 {
	t.s.version++
	t.undo = append(t.undo, func() { t.s.version-- })
	return t.s.version
}

// keyValue is k's joined values as get gives them, strings without regard
// to case (keyPart); ok is false when one is absent.
func keyValue(k Key, get func(string) any) (string, bool) {
	parts := make([]string, len(k.Attributes))
	for i, a := range k.Attributes {
		v := get(a)
		if v == nil {
			return "", false
		}
		parts[i] = keyPart(v)
	}
	return strings.Join(parts, "\x00"), true
}

// mapGet reads m as keyValue and checkKeys do.
func mapGet(m map[string]any) func(string) any {
	return func(n string) any { return m[n] }
}

// checkKeys reports a duplicate alternate key value held by another row.
func (tb *table) checkKeys(id string, get func(string) any) *apiError {
	for _, k := range tb.def.Keys {
		kv, ok := keyValue(k, get)
		if !ok {
			continue
		}
		if other, taken := tb.keys[k.LogicalName][kv]; taken && other != id {
			return errDuplicateEntityKey(k)
		}
	}
	return nil
}

// put stores r (new or replacing old) keeping the key index in step.
func (t *tx) put(tb *table, old, r *row) {
	for _, k := range tb.def.Keys {
		idx := tb.keys[k.LogicalName]
		if old != nil {
			if kv, ok := keyValue(k, old.attrs.get); ok {
				delete(idx, kv)
			}
		}
		if kv, ok := keyValue(k, r.attrs.get); ok {
			idx[kv] = r.id
		}
	}
	if old != nil {
		tb.unindex(old)
	}
	tb.index(r)
	tb.rows[r.id] = r
	t.undo = append(t.undo, func() {
		tb.unindex(r)
		if old != nil {
			tb.index(old)
		}
		for _, k := range tb.def.Keys {
			idx := tb.keys[k.LogicalName]
			if kv, ok := keyValue(k, r.attrs.get); ok {
				delete(idx, kv)
			}
			if old != nil {
				if kv, ok := keyValue(k, old.attrs.get); ok {
					idx[kv] = old.id
				}
			}
		}
		if old != nil {
			tb.rows[old.id] = old
		} else {
			delete(tb.rows, r.id)
		}
	})
}

func (t *tx) remove(tb *table, old *row, version int64) {
	for _, k := range tb.def.Keys {
		if kv, ok := keyValue(k, old.attrs.get); ok {
			delete(tb.keys[k.LogicalName], kv)
		}
	}
	tb.unindex(old)
	delete(tb.rows, old.id)
	n := len(tb.tombs)
	tb.tombs = append(tb.tombs, tombstone{id: old.id, version: version})
	t.undo = append(t.undo, func() {
		tb.tombs = tb.tombs[:n]
		tb.rows[old.id] = old
		tb.index(old)
		for _, k := range tb.def.Keys {
			if kv, ok := keyValue(k, old.attrs.get); ok {
				tb.keys[k.LogicalName][kv] = old.id
			}
		}
	})
}

// findByKey resolves an alternate key (attribute → literal) to a row.
func (tb *table) findByKey(kv map[string]any) (*row, *apiError) {
	names := make([]string, 0, len(kv))
	for n := range kv {
		names = append(names, n)
	}
	k := tb.def.keyFor(names)
	if k == nil {
		return nil, errBadRequest("0x80060892", fmt.Sprintf("The key attributes specified for %s do not match any alternate key defined for the entity.", tb.def.LogicalName))
	}
	norm := map[string]any{}
	for n, v := range kv {
		a := tb.def.Attribute(n)
		nv, err := normalize(a, v)
		if err != nil {
			return nil, err
		}
		norm[n] = nv
	}
	s, _ := keyValue(*k, mapGet(norm))
	id, ok := tb.keys[k.LogicalName][s]
	if !ok {
		return nil, nil
	}
	return tb.rows[id], nil
}

// normalize checks v against a's type and returns the stored form.
func normalize(a *Attribute, v any) (any, *apiError) {
	if v == nil {
		return nil, nil
	}
	bad := func(want string) *apiError {
		return errBadRequest("0x80048d19", fmt.Sprintf("Error identified in Payload provided by the user for Entity :'', Cannot convert the literal to the expected type '%s' for attribute %s.", want, a.LogicalName))
	}
	switch a.Type {
	case TypeString, TypeMemo:
		s, ok := v.(string)
		if !ok {
			return nil, bad("Edm.String")
		}
		if a.MaxLength > 0 && utf8.RuneCountInString(s) > a.MaxLength {
			return nil, errStringTooLong(a)
		}
		return s, nil
	case TypeInteger, TypeBigInt, TypePicklist, TypeState, TypeStatus:
		n, ok := toNumber(v)
		if !ok {
			return nil, bad("Edm.Int32")
		}
		i, err := n.Int64()
		if err != nil || (a.Type != TypeBigInt && (i > math.MaxInt32 || i < math.MinInt32)) {
			return nil, bad("Edm.Int32")
		}
		if len(a.Options) > 0 && !a.hasOption(int(i)) {
			return nil, errOptionOutOfRange(a, strconv.FormatInt(i, 10))
		}
		if lo, hi, ok := a.valueRange(); ok && (float64(i) < lo || float64(i) > hi) {
			return nil, errOutOfRange(a, "System.Int32", strconv.FormatInt(i, 10), lo, hi)
		}
		return json.Number(strconv.FormatInt(i, 10)), nil
	case TypeDecimal, TypeDouble, TypeMoney:
		n, ok := toNumber(v)
		if !ok {
			return nil, bad("Edm.Decimal")
		}
		if _, err := n.Float64(); err != nil {
			return nil, bad("Edm.Decimal")
		}
		if a.Type == TypeDouble {
			return n, nil
		}
		r, ok := new(big.Rat).SetString(n.String())
		if !ok {
			return nil, bad("Edm.Decimal")
		}
		if lo, hi, ok := a.valueRange(); ok {
			if r.Cmp(new(big.Rat).SetFloat64(lo)) < 0 || r.Cmp(new(big.Rat).SetFloat64(hi)) > 0 {
				typ := "System.Decimal"
				if a.Type == TypeMoney {
					typ = "Microsoft.Xrm.Sdk.Money"
				}
				return nil, errOutOfRange(a, typ, n.String(), lo, hi)
			}
		}
		return roundDecimal(n, a.Precision), nil
	case TypeBoolean:
		b, ok := v.(bool)
		if !ok {
			return nil, bad("Edm.Boolean")
		}
		return b, nil
	case TypeMultiSelect:
		s, ok := v.(string)
		if !ok {
			return nil, bad("Edm.String")
		}
		for _, p := range strings.Split(s, ",") {
			i, err := strconv.Atoi(strings.TrimSpace(p))
			if err != nil || !a.hasOption(i) {
				return nil, errOptionOutOfRange(a, strings.TrimSpace(p))
			}
		}
		return s, nil
	case TypeDateTime:
		s, ok := v.(string)
		if !ok {
			return nil, bad("Edm.DateTimeOffset")
		}
		if a.DateOnly {
			if t, err := time.Parse("2006-01-02", s); err == nil {
				return t.Format("2006-01-02"), nil
			}
			if t, err := time.Parse(time.RFC3339Nano, s); err == nil {
				return t.UTC().Format("2006-01-02"), nil
			}
			return nil, bad("Edm.Date")
		}
		t, err := time.Parse(time.RFC3339Nano, s)
		if err != nil {
			if t2, err2 := time.Parse("2006-01-02", s); err2 == nil {
				t = t2
			} else {
				return nil, bad("Edm.DateTimeOffset")
			}
		}
		return t.UTC().Truncate(time.Second).Format("2006-01-02T15:04:05Z"), nil
	case TypeUniqueidentifier:
		s, ok := v.(string)
		if !ok {
			return nil, bad("Edm.Guid")
		}
		u, err := uuid.Parse(s)
		if err != nil {
			return nil, bad("Edm.Guid")
		}
		return u.String(), nil
	case TypeLookup, TypeCustomer, TypeOwner:
		if lv, ok := v.(lookupValue); ok {
			return lv, nil
		}
		return nil, errBadRequest("0x80048d19", fmt.Sprintf("Lookup attribute %s must be set through its navigation property with @odata.bind.", a.LogicalName))
	}
	return nil, bad(string(a.Type))
}

// roundDecimal keeps at most places decimal places of n, rounding half
// away from zero; a value that already fits is returned as written.
func roundDecimal(n json.Number, places int) json.Number {
	str := n.String()
	if strings.ContainsAny(str, "eE") {
		r, ok := new(big.Rat).SetString(str)
		if !ok {
			return n
		}
		str = strings.TrimRight(strings.TrimRight(r.FloatString(places+1), "0"), ".")
		if str == "" || str == "-" {
			str = "0"
		}
	}
	dot := strings.IndexByte(str, '.')
	if dot < 0 || len(str)-dot-1 <= places {
		return json.Number(str)
	}
	r, _ := new(big.Rat).SetString(str)
	out := r.FloatString(places)
	if out == "-0" || strings.HasPrefix(out, "-0.") && strings.Trim(out[3:], "0") == "" {
		out = out[1:]
	}
	return json.Number(out)
}

// errStringTooLong is StringLengthTooLong (0x80044331), with the message
// Dataverse returns at run time: it names the attribute, the entity and
// the limit, never the value.
func errStringTooLong(a *Attribute) *apiError {
	return errBadRequest("0x80044331", fmt.Sprintf("A validation error occurred.  The length of the '%s' attribute of the '%s' entity exceeded the maximum allowed length of '%d'.", a.LogicalName, a.entity, a.MaxLength))
}

// errOptionOutOfRange is PicklistValueOutOfRange (0x8004431A).
func errOptionOutOfRange(a *Attribute, value string) *apiError {
	vals := make([]string, len(a.Options))
	for i, o := range a.Options {
		vals[i] = strconv.Itoa(o.Value)
	}
	return errBadRequest("0x8004431a", fmt.Sprintf("A validation error occurred. The value %s of '%s' on record of type '%s' is outside the valid range. Accepted Values: %s", value, a.LogicalName, a.entity, strings.Join(vals, ",")))
}

// errOutOfRange answers a number outside the attribute's MinValue and
// MaxValue.
func errOutOfRange(a *Attribute, typ, value string, lo, hi float64) *apiError {
	return errBadRequest("0x80044330", fmt.Sprintf("A validation error occurred for %s.%s. The value %s of type %s is outside the valid range(%s to %s).", a.entity, a.LogicalName, value, typ,
		strconv.FormatFloat(lo, 'f', -1, 64), strconv.FormatFloat(hi, 'f', -1, 64)))
}

func toNumber(v any) (json.Number, bool) {
	switch n := v.(type) {
	case json.Number:
		return n, true
	case float64:
		return json.Number(strconv.FormatFloat(n, 'f', -1, 64)), true
	case int:
		return json.Number(strconv.Itoa(n)), true
	case int64:
		return json.Number(strconv.FormatInt(n, 10)), true
	}
	return "", false
}

// inCandidates answers Microsoft.Dynamics.CRM.In on the primary id, a
// lookup or a one-column alternate key from the indexes, as the database
// would; ok is false for any other column.
func (tb *table) inCandidates(in inNode) (map[string]*row, bool) {
	if a := tb.def.Attribute(in.attr); a != nil && a.isLookup() {
		out := map[string]*row{}
		for _, v := range in.vals {
			s, _ := v.(string)
			for _, r := range tb.byLookup(in.attr, s) {
				out[r.id] = r
			}
		}
		return out, true
	}
	if in.attr != tb.def.PrimaryID && tb.def.keyFor([]string{in.attr}) == nil {
		return nil, false
	}
	out := make(map[string]*row, len(in.vals))
	for _, v := range in.vals {
		var r *row
		if in.attr == tb.def.PrimaryID {
			s, _ := v.(string)
			r = tb.rows[strings.ToLower(s)]
		} else if found, e := tb.findByKey(map[string]any{in.attr: v}); e == nil {
			r = found
		}
		if r != nil {
			out[r.id] = r
		}
	}
	return out, true
}
