package maps

import "slices"

// CRMSelect lists the CRM attributes the mapping reads or compares, in the
// Web API's read form (a lookup as "_name_value"), sorted: the $select of
// the agent's read of the current record. The slice is the mapping's own:
// callers must not modify it (an append copies it).
func (m *Mapping) CRMSelect() []string { return m.readsOf().crmSelect }

// CRMReadColumns is CRMSelect with the columns a read of the current
// record also needs, appended when not in it already: modifiedon and
// _modifiedby_value (when and by whom the record was last changed) and the
// business key's column. Shared as CRMSelect is.
func (m *Mapping) CRMReadColumns() []string { return m.readsOf().readColumns }

// AttributeNamed returns the definition's attribute map called name, or
// nil.
func (m *Mapping) AttributeNamed(name string) *AttributeMap { return m.readsOf().attrs[name] }

// CRMColumnsOf returns the CRM columns of the attribute map called name
// (AttributeMap.CRMAttributes), and whether there is one. Shared as
// CRMSelect is.
func (m *Mapping) CRMColumnsOf(name string) ([]string, bool) {
	cols, ok := m.readsOf().columns[name]
	return cols, ok
}

// ExpansionMapNamed returns the definition's top-level expansion map
// called name, or nil.
func (m *Mapping) ExpansionMapNamed(name string) *ExpansionMap { return m.readsOf().expansions[name] }

// mappingReads is what a mapping's readers ask for on every message,
// computed once (Mapping.readsOf).
type mappingReads struct {
	crmSelect, readColumns []string
	childQueries           []ChildQuery
	attrs                  map[string]*AttributeMap
	columns                map[string][]string
	expansions             map[string]*ExpansionMap
}

func (m *Mapping) readsOf() *mappingReads {
	m.readsOnce.Do(func() { m.reads = m.compileReads() })
	return m.reads
}

func (m *Mapping) compileReads() *mappingReads {
	r := &mappingReads{attrs: map[string]*AttributeMap{}, columns: map[string][]string{}, expansions: map[string]*ExpansionMap{}}
	seen := map[string]bool{m.def.idAttribute(): true, m.def.Correlation.CRMAttribute: true}
	if f := m.def.CRMFilter; f != nil {
		seen[f.Attribute] = true
	}
	if g := m.def.CRMGate; g != nil {
		seen[g.Attribute] = true
	}
	for _, a := range m.attrs {
		for _, n := range readNames(a) {
			seen[n] = true
		}
	}
	r.crmSelect = slices.Clip(sortedKeys(seen))
	cols := slices.Clone(r.crmSelect)
	extra := []string{"modifiedon", "_modifiedby_value"}
	if bk := m.def.Correlation.BusinessKey; bk != nil && bk.CRMAttribute != "" {
		extra = append(extra, bk.CRMAttribute)
	}
	for _, x := range extra {
		if !slices.Contains(cols, x) {
			cols = append(cols, x)
		}
	}
	r.readColumns = slices.Clip(cols)
	r.childQueries = slices.Clip(m.childQueries())
	for i := range m.def.Attributes {
		a := &m.def.Attributes[i]
		r.attrs[a.Name] = a
		r.columns[a.Name] = slices.Clip(a.CRMAttributes())
	}
	for i := range m.def.Expansions {
		x := &m.def.Expansions[i]
		r.expansions[x.Name] = x
	}
	return r
}

// ChildQuery says how to read an expansion map's current child rows:
// GET EntitySet?$select=Select&$filter=_ParentLookup_value eq {parent id}.
// A top-level expansion's parent is the record; a nested one's parents are
// the rows read for the expansion named Parent, each by its
// ParentIDAttribute, so its query runs once per such row and its rows
// (which carry "_ParentLookup_value") are gathered under its name.
type ChildQuery struct {
	Expansion    string
	EntitySet    string
	ParentLookup string
	Select       []string
	// Parent names the expansion whose rows are the parents; "" for the
	// record. Queries come parents first.
	Parent            string
	ParentIDAttribute string
}

// ChildQueries returns one ChildQuery per enabled expansion map, nested
// ones after their parent; the rows go into CRMState.Children under the
// expansion's name. Shared as CRMSelect is, with their Select lists.
func (m *Mapping) ChildQueries() []ChildQuery { return m.readsOf().childQueries }

func (m *Mapping) childQueries() []ChildQuery {
	out := make([]ChildQuery, 0, len(m.expansions))
	var add func(x *expansion)
	add = func(x *expansion) {
		seen := map[string]bool{x.def.idAttribute(): true}
		if x.def.OnRemove == RemoveDeactivate {
			seen["statecode"] = true
		}
		for _, a := range x.attrs {
			for _, n := range readNames(a) {
				seen[n] = true
			}
		}
		q := ChildQuery{Expansion: x.def.Name, EntitySet: x.def.CRMEntitySet, ParentLookup: x.def.ParentLookup}
		if x.parent != nil {
			seen["_"+x.def.ParentLookup+"_value"] = true
			q.Parent, q.ParentIDAttribute = x.parent.def.Name, x.parent.def.idAttribute()
		}
		q.Select = slices.Clip(sortedKeys(seen))
		out = append(out, q)
		for _, n := range x.nested {
			add(n)
		}
	}
	for _, x := range m.expansions {
		add(x)
	}
	return out
}

// readNames are the columns an attribute map reads, in the Web API's read
// form: a lookup by type reads each of its columns and its type column.
func readNames(a *attr) []string {
	if b := a.byType; b != nil {
		out := make([]string, 0, len(b.targets)+1)
		for _, t := range b.targets {
			out = append(out, "_"+t.attr+"_value")
		}
		if b.typeAttr != "" {
			out = append(out, b.typeAttr)
		}
		return out
	}
	return []string{readName(a)}
}

func readName(a *attr) string {
	if a.lookup != nil || a.concept != nil {
		return "_" + a.def.CRMAttribute + "_value"
	}
	return a.def.CRMAttribute
}

func sortedKeys(m map[string]bool) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		if k != "" {
			out = append(out, k)
		}
	}
	slices.Sort(out)
	return out
}

// ParentIDs returns the ids of the rows q's rows hang under, one query
// each: recordID for a top-level expansion, else the ids of the rows of
// q.Parent already in st (ChildQueries lists parents first).
func (q ChildQuery) ParentIDs(st *CRMState, recordID string) []string {
	if q.Parent == "" {
		if recordID == "" {
			return nil
		}
		return []string{recordID}
	}
	var out []string
	for _, row := range st.Children[q.Parent] {
		if id, _ := row[q.ParentIDAttribute].(string); id != "" {
			out = append(out, id)
		}
	}
	return out
}

// EachExpansion calls fn for each expansion map of the entity map, each
// before those nested in it, with the CRM entity its rows' parent lookup
// points at (the entity map's for a top-level one). The expansions nested
// in a disabled one are not visited; fn sees disabled ones themselves.
func (m *EntityMap) EachExpansion(fn func(x *ExpansionMap, parentEntity string)) {
	var walk func(xs []ExpansionMap, parent string)
	walk = func(xs []ExpansionMap, parent string) {
		for i := range xs {
			fn(&xs[i], parent)
			if xs[i].IsEnabled() {
				walk(xs[i].Expansions, xs[i].CRMEntity)
			}
		}
	}
	walk(m.Expansions, m.CRMEntity)
}
