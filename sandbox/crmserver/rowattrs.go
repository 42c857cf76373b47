package crmserver

import (
	"slices"
	"strings"
)

// rowAttrs is a stored row's attributes: logical name and stored value
// (string, json.Number, bool, lookupValue or nil), sorted by name, one
// entry per attribute the row holds. A map per row cost a contact about
// 4 KB, most of it slack of the map's table; the sorted slice holds the
// same entries in a third of that, which matters at a million rows.
type rowAttrs []rowAttr

type rowAttr struct {
	name  string
	value any
}

// attrsOf makes the attributes of a row from m, with room for spare more
// without growing. Names that e defines share the definition's string
// instead of the request body's copy.
func attrsOf(e *Entity, m map[string]any, spare int) rowAttrs {
	out := make(rowAttrs, 0, len(m)+spare)
	for n, v := range m {
		if e != nil {
			if a := e.Attribute(n); a != nil {
				n = a.LogicalName
			}
		}
		out = append(out, rowAttr{name: n, value: v})
	}
	slices.SortFunc(out, func(a, b rowAttr) int { return strings.Compare(a.name, b.name) })
	return out
}

func (r rowAttrs) find(name string) (int, bool) {
	return slices.BinarySearchFunc(r, name, func(a rowAttr, n string) int { return strings.Compare(a.name, n) })
}

// lookup is the value of name and whether the row holds it.
func (r rowAttrs) lookup(name string) (any, bool) {
	if i, ok := r.find(name); ok {
		return r[i].value, true
	}
	return nil, false
}

// get is the value of name, nil when the row does not hold it.
func (r rowAttrs) get(name string) any {
	v, _ := r.lookup(name)
	return v
}

// set stores v as name's value. A row that must grow grows by one entry,
// not by append's doubling: rows are kept, and the slack would be kept
// with them.
func (r *rowAttrs) set(name string, v any) {
	i, ok := r.find(name)
	if ok {
		(*r)[i].value = v
		return
	}
	if len(*r) == cap(*r) {
		grown := make(rowAttrs, len(*r), len(*r)+1)
		copy(grown, *r)
		*r = grown
	}
	*r = slices.Insert(*r, i, rowAttr{name: name, value: v})
}

// toMap is the attributes as a new map.
func (r rowAttrs) toMap() map[string]any {
	m := make(map[string]any, len(r))
	for _, a := range r {
		m[a.name] = a.value
	}
	return m
}
