package maps

import "slices"

// CRMSelect lists the CRM attributes the mapping reads or compares, in the
// Web API's read form (a lookup as "_name_value"), sorted: the $select of
// the agent's read of the current record.
func (m *Mapping) CRMSelect() []string {
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
	return sortedKeys(seen)
}

// ChildQuery says how to read an expansion map's current child rows:
// GET EntitySet?$select=Select&$filter=_ParentLookup_value eq {parent id}.
type ChildQuery struct {
	Expansion    string
	EntitySet    string
	ParentLookup string
	Select       []string
}

// ChildQueries returns one ChildQuery per enabled expansion map; the rows
// go into CRMState.Children under the expansion's name.
func (m *Mapping) ChildQueries() []ChildQuery {
	out := make([]ChildQuery, 0, len(m.expansions))
	for _, x := range m.expansions {
		seen := map[string]bool{x.def.idAttribute(): true}
		if x.def.OnRemove == RemoveDeactivate {
			seen["statecode"] = true
		}
		for _, a := range x.attrs {
			for _, n := range readNames(a) {
				seen[n] = true
			}
		}
		out = append(out, ChildQuery{Expansion: x.def.Name, EntitySet: x.def.CRMEntitySet, ParentLookup: x.def.ParentLookup, Select: sortedKeys(seen)})
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
	if a.lookup != nil {
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
