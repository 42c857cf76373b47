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

// expandToCRM pairs array items with the current child rows by match key
// and returns the writes that bring the rows in line: creates for new
// items, updates for changed ones, deletes or deactivations for rows whose
// item is gone. Items that share a key pair with that key's rows in order:
// the n-th such item with the n-th row. A FHIR array may repeat an item
// exactly (R4 arrays are ordered lists, not sets, and HL7's own examples
// repeat an identifier), and the rows hold each repeat, so a resource
// created from the CRM has them all; an unchanged array still pairs every
// item with its row and never adds one.
func (m *Mapping) expandToCRM(ctx context.Context, x *expansion, res map[string]any, cur *CRMState, r LookupResolver) ([]ChildChange, error) {
	var rows []map[string]any
	parentID := ""
	if cur != nil {
		rows = cur.Children[x.def.Name]
		parentID = rowID(cur.Record, m.def.idAttribute())
	}
	byKey := make(map[string][]int, len(rows))
	for i, row := range rows {
		k := x.crmKey(row)
		byKey[k] = append(byKey[k], i)
	}
	used := make([]bool, len(rows))
	var out []ChildChange
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
				return nil, err
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
				return nil, err
			}
		}
		switch {
		case !exists:
			if parentID != "" {
				rec[nav+"@odata.bind"] = "/" + m.def.CRMEntitySet + "(" + parentID + ")"
			}
			out = append(out, ChildChange{Expansion: x.def.Name, EntitySet: x.def.CRMEntitySet, Op: ChildCreate, ParentNavigation: nav, Record: rec})
		case x.def.OnRemove == RemoveDeactivate && inactive(current):
			rec["statecode"] = 0
			out = append(out, ChildChange{Expansion: x.def.Name, EntitySet: x.def.CRMEntitySet, Op: ChildUpdate, ID: rowID(current, x.def.idAttribute()), Record: rec})
		case len(changed) > 0:
			out = append(out, ChildChange{Expansion: x.def.Name, EntitySet: x.def.CRMEntitySet, Op: ChildUpdate, ID: rowID(current, x.def.idAttribute()), Record: rec})
		}
	}
	for i, row := range rows {
		if used[i] {
			continue
		}
		id := rowID(row, x.def.idAttribute())
		switch {
		case x.def.OnRemove == RemoveDelete:
			out = append(out, ChildChange{Expansion: x.def.Name, EntitySet: x.def.CRMEntitySet, Op: ChildDelete, ID: id})
		case !inactive(row):
			out = append(out, ChildChange{Expansion: x.def.Name, EntitySet: x.def.CRMEntitySet, Op: ChildDeactivate, ID: id,
				Record: map[string]any{"statecode": 1}})
		}
	}
	return out, nil
}

// expandToFHIR rebuilds the array from the child rows: items whose key
// matches a row (the n-th item of a key with its n-th row) are updated in place (keeping their unmapped elements),
// items without a row are removed, rows without an item are appended, and
// excluded items stay as they are. It reports whether anything changed.
func (m *Mapping) expandToFHIR(ctx context.Context, x *expansion, rows []map[string]any, base map[string]any, r LookupResolver) (bool, error) {
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
