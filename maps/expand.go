package maps

import (
	"context"
	"fmt"
	"strings"
)

// arrayAt finds the array an expansion path names: the object holding it
// and the key. With create it makes the missing parents. Expansion paths
// are plain element names (checked at compile).
func (x *expansion) arrayAt(res map[string]any, create bool) (map[string]any, string) {
	segs := x.path.Segments()
	obj := res
	for _, s := range segs[:len(segs)-1] {
		next, ok := obj[s.Name].(map[string]any)
		if !ok {
			if !create {
				return nil, ""
			}
			next = map[string]any{}
			obj[s.Name] = next
		}
		obj = next
	}
	return obj, segs[len(segs)-1].Name
}

func (x *expansion) items(res map[string]any) []any {
	obj, key := x.arrayAt(res, false)
	if obj == nil {
		return nil
	}
	arr, _ := obj[key].([]any)
	return arr
}

func (x *expansion) excluded(item map[string]any) bool {
	for _, c := range x.exclude {
		if v, ok := item[c.Field].(string); ok && v == c.Value {
			return true
		}
	}
	return false
}

// mappable reports whether an array item carries every value the
// expansion requires (a valid Identifier may have a system and no value).
// Items that do not are left alone in both directions: no child row is made
// for them, and write-back keeps them as they are.
func (x *expansion) mappable(item map[string]any) bool {
	for _, a := range x.attrs {
		if !a.def.Required || a.path == nil || a.expr != nil {
			continue
		}
		if v, ok := a.path.Get(item); !ok || v == nil {
			return false
		}
	}
	return true
}

// crmKey is the match key of a CRM child row.
func (x *expansion) crmKey(row map[string]any) string {
	var b strings.Builder
	for _, k := range x.key {
		b.WriteString(keyText(k.def.CRMType, row[k.def.CRMAttribute]))
		b.WriteByte(0x1f)
	}
	return b.String()
}

func rowID(row map[string]any, attr string) string {
	s, _ := row[attr].(string)
	return s
}

func inactive(row map[string]any) bool {
	s, ok := numberText(row["statecode"])
	return ok && s != "0"
}

// childParent is what a set of child rows hangs under: the rows of the
// expansion there now, the parent row's id and entity set (a new row binds
// to it), or, when the parent row is created by the same result, the
// 1-based place of its create among the result's Children. A top-level
// expansion's parent is the record: its id when it exists, else nothing
// (the writer binds new rows to the record it creates).
type childParent struct {
	rows   []map[string]any
	id     string
	set    string
	change int
}

// rowsUnder returns the rows of the nested expansion n whose parent
// lookup points at the row parentID, in the order read.
func rowsUnder(children map[string][]map[string]any, n *expansion, parentID string) []map[string]any {
	if parentID == "" {
		return nil
	}
	var out []map[string]any
	for _, row := range children[n.def.Name] {
		if strings.EqualFold(lookupID(row, n.def.ParentLookup, n.def.parentNavigation()), parentID) {
			out = append(out, row)
		}
	}
	return out
}

// expandToCRM pairs array items with the current child rows by match key
// and appends to out the writes that bring the rows in line: creates for
// new items, updates for changed ones, deletes or deactivations for rows
// whose item is gone. Items that share a key pair with that key's rows in
// order: the n-th such item with the n-th row. A FHIR array may repeat an
// item exactly (R4 arrays are ordered lists, not sets, and HL7's own
// examples repeat an identifier), and the rows hold each repeat, so a
// resource created from the CRM has them all; an unchanged array still
// pairs every item with its row and never adds one.
//
// The expansions nested in x follow each item's own write: the rows
// under an existing row are paired with the item's inner array the same
// way; under a row created here, every inner item is a create naming the
// parent's create (ChildChange.Parent). The rows under a removed row are
// removed first, by their own onRemove, then the row itself.
func (m *Mapping) expandToCRM(ctx context.Context, x *expansion, res map[string]any, p childParent, children map[string][]map[string]any, out *[]ChildChange, r LookupResolver) error {
	rows := p.rows
	byKey := make(map[string][]int, len(rows))
	for i, row := range rows {
		k := x.crmKey(row)
		byKey[k] = append(byKey[k], i)
	}
	used := make([]bool, len(rows))
	nav := x.def.parentNavigation()
	for _, it := range x.items(res) {
		item, ok := it.(map[string]any)
		if !ok || x.excluded(item) || !x.mappable(item) {
			continue
		}
		rec := make(map[string]any, len(x.attrs)+1)
		var changed []string
		i, exists := -1, false
		// Map the key first to find the row, then the rest against it.
		for _, a := range x.key {
			if err := m.attrToCRM(ctx, x, a, item, rec, nil, &changed, nil, r); err != nil {
				return err
			}
		}
		k := x.crmKey(rec)
		var current map[string]any
		if free := byKey[k]; len(free) > 0 {
			i, exists = free[0], true
			byKey[k] = free[1:]
			current = rows[i]
			used[i] = true
		}
		changed = changed[:0]
		for _, a := range x.attrs {
			if !a.toCRM {
				continue
			}
			if err := m.attrToCRM(ctx, x, a, item, rec, current, &changed, nil, r); err != nil {
				return err
			}
		}
		inner := childParent{set: x.def.CRMEntitySet}
		switch {
		case !exists:
			c := ChildChange{Expansion: x.def.Name, EntitySet: x.def.CRMEntitySet, Op: ChildCreate, ParentNavigation: nav, Record: rec, Parent: p.change}
			if p.id != "" {
				rec[nav+"@odata.bind"] = "/" + p.set + "(" + p.id + ")"
			}
			*out = append(*out, c)
			inner.change = len(*out)
		case x.def.OnRemove == RemoveDeactivate && inactive(current):
			rec["statecode"] = 0
			*out = append(*out, ChildChange{Expansion: x.def.Name, EntitySet: x.def.CRMEntitySet, Op: ChildUpdate, ID: rowID(current, x.def.idAttribute()), Record: rec})
		case len(changed) > 0:
			*out = append(*out, ChildChange{Expansion: x.def.Name, EntitySet: x.def.CRMEntitySet, Op: ChildUpdate, ID: rowID(current, x.def.idAttribute()), Record: rec})
		}
		if exists {
			inner.id = rowID(current, x.def.idAttribute())
		}
		for _, n := range x.nested {
			if !n.toCRM {
				continue
			}
			inner.rows = rowsUnder(children, n, inner.id)
			if err := m.expandToCRM(ctx, n, item, inner, children, out, r); err != nil {
				return err
			}
		}
	}
	for i, row := range rows {
		if !used[i] {
			x.removeRow(row, children, out)
		}
	}
	return nil
}

// removeRow appends the writes that remove a row whose item is gone: the
// rows nested under it first (each by its own expansion's onRemove), then
// the row by x's.
func (x *expansion) removeRow(row map[string]any, children map[string][]map[string]any, out *[]ChildChange) {
	id := rowID(row, x.def.idAttribute())
	for _, n := range x.nested {
		if !n.toCRM {
			continue
		}
		for _, nr := range rowsUnder(children, n, id) {
			n.removeRow(nr, children, out)
		}
	}
	switch {
	case x.def.OnRemove == RemoveDelete:
		*out = append(*out, ChildChange{Expansion: x.def.Name, EntitySet: x.def.CRMEntitySet, Op: ChildDelete, ID: id})
	case !inactive(row):
		*out = append(*out, ChildChange{Expansion: x.def.Name, EntitySet: x.def.CRMEntitySet, Op: ChildDeactivate, ID: id,
			Record: map[string]any{"statecode": 1}})
	}
}

// expandToFHIR rebuilds the array from the child rows: items whose key
// matches a row (the n-th item of a key with its n-th row) are updated in place (keeping their unmapped elements),
// items without a row are removed, rows without an item are appended, and
// excluded items stay as they are. It reports whether anything changed.
//
// The expansions nested in x are rebuilt the same way inside each item
// from the rows under the item's row (children holds every expansion's
// rows, by name).
func (m *Mapping) expandToFHIR(ctx context.Context, x *expansion, rows []map[string]any, base map[string]any, children map[string][]map[string]any, r LookupResolver) (bool, error) {
	active := make([]map[string]any, 0, len(rows))
	for _, row := range rows {
		if !inactive(row) {
			active = append(active, row)
		}
	}
	byKey := make(map[string][]int, len(active))
	for i, row := range active {
		k := x.crmKey(row)
		byKey[k] = append(byKey[k], i)
	}
	used := make([]bool, len(active))
	old := x.items(base)
	next := make([]any, 0, len(old)+len(active))
	changed := false
	for _, it := range old {
		item, ok := it.(map[string]any)
		if !ok || x.excluded(item) || !x.mappable(item) {
			next = append(next, it)
			continue
		}
		rec := map[string]any{}
		var ignore []string
		for _, a := range x.key {
			if err := m.attrToCRM(ctx, x, a, item, rec, nil, &ignore, nil, r); err != nil {
				return false, err
			}
		}
		k := x.crmKey(rec)
		free := byKey[k]
		if len(free) == 0 {
			// The row is gone, or the item repeats a key more often than
			// the CRM has rows for it: drop the item.
			changed = true
			continue
		}
		i := free[0]
		byKey[k] = free[1:]
		used[i] = true
		for _, a := range x.attrs {
			if !a.toFHIR || a.path == nil || a.expr != nil {
				continue
			}
			ch, err := m.attrToFHIR(ctx, x, a, nil, active[i], item, r)
			if err != nil {
				return false, err
			}
			changed = changed || ch
		}
		ch, err := m.nestedToFHIR(ctx, x, active[i], item, children, r)
		if err != nil {
			return false, err
		}
		changed = changed || ch
		next = append(next, item)
	}
	for i, row := range active {
		if used[i] {
			continue
		}
		item := map[string]any{}
		for _, a := range x.attrs {
			if !a.toFHIR || a.path == nil || a.expr != nil {
				continue
			}
			if _, err := m.attrToFHIR(ctx, x, a, nil, row, item, r); err != nil {
				return false, err
			}
		}
		if _, err := m.nestedToFHIR(ctx, x, row, item, children, r); err != nil {
			return false, err
		}
		if len(item) == 0 {
			return false, m.fail(x, nil, fmt.Errorf("a child row maps to an empty item"))
		}
		next = append(next, item)
		changed = true
	}
	if !changed {
		return false, nil
	}
	obj, key := x.arrayAt(base, len(next) > 0)
	if obj == nil {
		return false, nil
	}
	if len(next) == 0 {
		delete(obj, key)
	} else {
		obj[key] = next
	}
	return true, nil
}

// nestedToFHIR rebuilds the arrays of x's nested expansions inside item
// from the rows under row, and reports whether any changed.
func (m *Mapping) nestedToFHIR(ctx context.Context, x *expansion, row, item map[string]any, children map[string][]map[string]any, r LookupResolver) (bool, error) {
	changed := false
	id := rowID(row, x.def.idAttribute())
	for _, n := range x.nested {
		if !n.toFHIR {
			continue
		}
		ch, err := m.expandToFHIR(ctx, n, rowsUnder(children, n, id), item, children, r)
		if err != nil {
			return false, err
		}
		changed = changed || ch
	}
	return changed, nil
}

// expansionNamed finds an enabled expansion of m by name, nested ones
// included; nil when there is none.
func (m *Mapping) expansionNamed(name string) *expansion {
	var find func(xs []*expansion) *expansion
	find = func(xs []*expansion) *expansion {
		for _, x := range xs {
			if x.def.Name == name {
				return x
			}
			if n := find(x.nested); n != nil {
				return n
			}
		}
		return nil
	}
	return find(m.expansions)
}
