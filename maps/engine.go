package maps

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
)

// LookupResolver finds the counterpart of a referenced record through an
// entity map's correlation. The agent implements it (reading its
// correlation store or querying the endpoints); the engine itself does no
// network I/O.
type LookupResolver interface {
	// CRMID returns the CRM record id (a GUID) correlated with fhirRef
	// ("Practitioner/123") under entityMap. found is false when there is
	// none yet.
	CRMID(ctx context.Context, entityMap, fhirRef string) (crmID string, found bool, err error)
	// FHIRRef returns the FHIR reference ("Practitioner/123") correlated
	// with the CRM record crmID under entityMap.
	FHIRRef(ctx context.Context, entityMap, crmID string) (fhirRef string, found bool, err error)
}

// CRMState is a CRM record and its child rows as read from the Web API.
type CRMState struct {
	// Record holds attribute values by logical name; lookups appear as
	// "_name_value" (as the Web API returns them) or "nav@odata.bind".
	Record map[string]any `json:"record"`
	// Children holds each expansion map's current child rows, by the
	// expansion map's name.
	Children map[string][]map[string]any `json:"children,omitempty"`
}

// CRMResult is the outcome of mapping a FHIR resource to the CRM.
type CRMResult struct {
	// Filtered names the filter that excluded the record; nothing else is
	// set then.
	Filtered string `json:"filtered,omitempty"`
	// Gated names the per-record gate that is closed on the current CRM
	// record; nothing else is set then.
	Gated string `json:"gated,omitempty"`
	// Record is the full CRM record to upsert: attributes by logical name,
	// lookups as "nav@odata.bind": "/entityset(id)" (or null to clear).
	Record map[string]any `json:"record,omitempty"`
	// Children are the child-row writes the expansion maps need.
	Children []ChildChange `json:"children,omitempty"`
	// Changed lists the CRM attributes (and expansion maps) whose value
	// differs from the current state, sorted; empty means unchanged.
	Changed []string `json:"changed"`
}

// ChildOp is a write to one child row.
type ChildOp string

// Child row operations.
const (
	ChildCreate     ChildOp = "create"
	ChildUpdate     ChildOp = "update"
	ChildDelete     ChildOp = "delete"
	ChildDeactivate ChildOp = "deactivate"
)

// ChildChange is one child-row write produced by an expansion map.
type ChildChange struct {
	Expansion string  `json:"expansion"`
	EntitySet string  `json:"entitySet"`
	Op        ChildOp `json:"op"`
	// ID is the existing row's id (update, delete, deactivate).
	ID string `json:"id,omitempty"`
	// ParentNavigation is the navigation property linking a new row to
	// its parent; Record carries "ParentNavigation@odata.bind" already
	// when the parent's id was known.
	ParentNavigation string         `json:"parentNavigation,omitempty"`
	Record           map[string]any `json:"record,omitempty"`
}

// FHIRResult is the outcome of mapping a CRM record to FHIR.
type FHIRResult struct {
	// Filtered names the filter that excluded the record.
	Filtered string `json:"filtered,omitempty"`
	// Gated names the per-record gate that is closed on the CRM record.
	Gated string `json:"gated,omitempty"`
	// Resource is the base resource with the mapped elements written.
	Resource map[string]any `json:"resource,omitempty"`
	// Changed lists the FHIR paths whose value changed, in map order;
	// empty means unchanged.
	Changed []string `json:"changed"`
}

func (m *Mapping) fail(x *expansion, a *attr, err error) error {
	me := &MappingError{Map: m.def.Name, Err: err}
	if x != nil {
		me.Expansion = x.def.Name
	}
	if a != nil {
		me.Attribute = a.def.Name
	}
	return me
}

// ToCRM maps a FHIR resource to a CRM record. cur is the CRM record's
// current state (nil when it does not exist yet); the diff in the result
// is taken against it. The resource is only read.
func (m *Mapping) ToCRM(ctx context.Context, res map[string]any, cur *CRMState, r LookupResolver) (*CRMResult, error) {
	if rt, _ := res["resourceType"].(string); rt != m.def.FHIRType {
		return nil, m.fail(nil, nil, fmt.Errorf("resource type %q does not match the map's %s", rt, m.def.FHIRType))
	}
	if f := m.def.FHIRFilter; f != nil && m.fhirFilter != nil {
		ok, err := m.fhirFilter.evalBool(res)
		if err != nil {
			return nil, m.fail(nil, nil, fmt.Errorf("filter %q: %w", f.Name, err))
		}
		if !ok {
			return &CRMResult{Filtered: f.Name, Changed: []string{}}, nil
		}
	}
	if g := m.def.CRMGate; g != nil && cur != nil && !crmFilterPasses(g, cur.Record) {
		return &CRMResult{Gated: g.Name, Changed: []string{}}, nil
	}
	var current map[string]any
	if cur != nil {
		current = cur.Record
	}
	out := &CRMResult{Record: make(map[string]any, len(m.attrs)+2), Changed: []string{}}
	if id, ok := res["id"].(string); ok && id != "" {
		key := m.def.Correlation.CRMAttribute
		out.Record[key] = id
		if current == nil || !equalValue(TypeString, current[key], id) {
			out.Changed = append(out.Changed, key)
		}
	}
	for _, a := range m.attrs {
		if !a.toCRM {
			continue
		}
		if err := m.attrToCRM(ctx, nil, a, res, out.Record, current, &out.Changed, r); err != nil {
			return nil, err
		}
	}
	for _, x := range m.expansions {
		if !x.toCRM {
			continue
		}
		changes, err := m.expandToCRM(ctx, x, res, cur, r)
		if err != nil {
			return nil, err
		}
		if len(changes) > 0 {
			out.Children = append(out.Children, changes...)
			out.Changed = append(out.Changed, x.def.Name)
		}
	}
	slices.Sort(out.Changed)
	out.Changed = slices.Compact(out.Changed)
	return out, nil
}

// attrToCRM maps one attribute into rec and notes a difference from
// current in changed.
func (m *Mapping) attrToCRM(ctx context.Context, x *expansion, a *attr, src, rec, current map[string]any, changed *[]string, r LookupResolver) error {
	d := a.def
	var (
		v       any
		present bool
	)
	switch {
	case a.expr != nil:
		s, ok, err := a.expr.evalText(src)
		if err != nil {
			return m.fail(x, a, err)
		}
		if ok {
			cv, err := a.textToCRM(s)
			if err != nil {
				return m.fail(x, a, err)
			}
			v, present = cv, cv != nil
		}
	case a.path == nil:
		// A constant: only the default applies.
	case a.def.CRMType == TypeMultiSelect:
		all := a.path.GetAll(src)
		if len(all) > 0 {
			cv, err := a.toCRMValue(all)
			if err != nil {
				return m.fail(x, a, err)
			}
			v, present = cv, cv != nil
		}
	default:
		fv, ok := a.path.Get(src)
		if ok && fv != nil {
			if a.lookup != nil {
				return m.lookupToCRM(ctx, x, a, fv, rec, current, changed, r)
			}
			cv, err := a.toCRMValue(fv)
			if errors.Is(err, errSkip) {
				return nil
			}
			if err != nil {
				return m.fail(x, a, err)
			}
			v, present = cv, cv != nil
		}
	}
	if !present {
		switch {
		case d.Default != "":
			dv, err := parseDefault(d.CRMType, d.Default)
			if err != nil {
				return m.fail(x, a, err)
			}
			v = dv
		case d.Required:
			return m.fail(x, a, fmt.Errorf("required value is missing"))
		case a.lookup != nil:
			return m.lookupToCRM(ctx, x, a, nil, rec, current, changed, r)
		}
	}
	rec[d.CRMAttribute] = v
	if current == nil {
		if v != nil {
			*changed = append(*changed, d.CRMAttribute)
		}
	} else if !equalValue(d.CRMType, current[d.CRMAttribute], v) {
		*changed = append(*changed, d.CRMAttribute)
	}
	return nil
}

func (m *Mapping) lookupToCRM(ctx context.Context, x *expansion, a *attr, fv any, rec, current map[string]any, changed *[]string, r LookupResolver) error {
	d := a.def
	bind := a.nav + "@odata.bind"
	var id string
	if fv != nil {
		ref, ok := fv.(string)
		if !ok {
			return m.fail(x, a, fmt.Errorf("expected a reference string, got %s", kind(fv)))
		}
		if r == nil {
			return m.fail(x, a, fmt.Errorf("no lookup resolver configured"))
		}
		crmID, found, err := r.CRMID(ctx, a.lookup.def.Name, ref)
		if err != nil {
			return m.fail(x, a, fmt.Errorf("resolving lookup through %q: %w", a.lookup.def.Name, err))
		}
		if !found {
			return m.fail(x, a, fmt.Errorf("lookup through %q: %w", a.lookup.def.Name, ErrUnresolvedLookup))
		}
		id = crmID
		rec[bind] = "/" + a.lookup.def.CRMEntitySet + "(" + id + ")"
	} else {
		if d.Required {
			return m.fail(x, a, fmt.Errorf("required value is missing"))
		}
		rec[bind] = nil
	}
	if current == nil {
		if id != "" {
			*changed = append(*changed, d.CRMAttribute)
		}
		return nil
	}
	if old := lookupID(current, d.CRMAttribute, a.nav); !strings.EqualFold(old, id) {
		*changed = append(*changed, d.CRMAttribute)
	}
	return nil
}

// lookupID reads a lookup's target id from a CRM record in either the
// Web API read shape ("_attr_value") or the write shape ("nav@odata.bind").
func lookupID(rec map[string]any, attribute, nav string) string {
	if v, ok := rec["_"+attribute+"_value"].(string); ok {
		return v
	}
	if v, ok := rec[nav+"@odata.bind"].(string); ok {
		if i := strings.LastIndexByte(v, '('); i >= 0 && strings.HasSuffix(v, ")") {
			return strings.Trim(v[i+1:len(v)-1], "'")
		}
	}
	return ""
}

// ToFHIR maps a CRM record onto base, a FHIR resource (the target's current
// version, or nil to start from an empty resource). base is modified in
// place and returned; everything the map does not mention — extensions,
// contained resources, unknown elements, the text of unchanged decimals —
// is kept. Unchanged values are not rewritten, so Changed lists exactly the
// paths whose value differs.
func (m *Mapping) ToFHIR(ctx context.Context, src CRMState, base map[string]any, r LookupResolver) (*FHIRResult, error) {
	if f := m.def.CRMFilter; f != nil && !crmFilterPasses(f, src.Record) {
		return &FHIRResult{Filtered: f.Name, Changed: []string{}}, nil
	}
	if g := m.def.CRMGate; g != nil && !crmFilterPasses(g, src.Record) {
		return &FHIRResult{Gated: g.Name, Changed: []string{}}, nil
	}
	if base == nil {
		base = map[string]any{"resourceType": m.def.FHIRType}
	} else if rt, _ := base["resourceType"].(string); rt != m.def.FHIRType {
		return nil, m.fail(nil, nil, fmt.Errorf("base resource type %q does not match the map's %s", rt, m.def.FHIRType))
	}
	out := &FHIRResult{Resource: base, Changed: []string{}}
	if _, has := base["id"]; !has {
		if id, ok := src.Record[m.def.Correlation.CRMAttribute].(string); ok && id != "" {
			base["id"] = id
			out.Changed = append(out.Changed, "id")
		}
	}
	if m.corrPath != nil {
		if id, ok := src.Record[m.def.idAttribute()].(string); ok && id != "" {
			if old, _ := m.corrPath.Get(base); !equalValue(TypeLookup, old, id) {
				if err := m.corrPath.Set(base, id); err != nil {
					return nil, m.fail(nil, nil, fmt.Errorf("writing the correlation identifier: %w", err))
				}
				out.Changed = append(out.Changed, m.corrPath.String())
			}
		}
	}
	for _, a := range m.attrs {
		if !a.toFHIR || a.path == nil || a.expr != nil {
			continue
		}
		ch, err := m.attrToFHIR(ctx, nil, a, src.Record, base, r)
		if err != nil {
			return nil, err
		}
		if ch {
			out.Changed = append(out.Changed, a.path.String())
		}
	}
	for _, x := range m.expansions {
		if !x.toFHIR {
			continue
		}
		ch, err := m.expandToFHIR(ctx, x, src.Children[x.def.Name], base, r)
		if err != nil {
			return nil, err
		}
		if ch {
			out.Changed = append(out.Changed, x.def.FHIRPath)
		}
	}
	return out, nil
}

// attrToFHIR writes one attribute into dst and reports whether it changed.
func (m *Mapping) attrToFHIR(ctx context.Context, x *expansion, a *attr, rec, dst map[string]any, r LookupResolver) (bool, error) {
	d := a.def
	var (
		v   any
		err error
	)
	if a.lookup != nil {
		if id := lookupID(rec, d.CRMAttribute, a.nav); id != "" {
			if r == nil {
				return false, m.fail(x, a, fmt.Errorf("no lookup resolver configured"))
			}
			ref, found, err := r.FHIRRef(ctx, a.lookup.def.Name, id)
			if err != nil {
				return false, m.fail(x, a, fmt.Errorf("resolving lookup through %q: %w", a.lookup.def.Name, err))
			}
			if !found {
				return false, m.fail(x, a, fmt.Errorf("lookup through %q: %w", a.lookup.def.Name, ErrUnresolvedLookup))
			}
			v = ref
		}
	} else if cv := rec[d.CRMAttribute]; cv != nil {
		v, err = a.toFHIRValue(cv)
		if errors.Is(err, errSkip) {
			return false, nil
		}
		if err != nil {
			return false, m.fail(x, a, err)
		}
	}
	if v == nil && d.Default != "" && a.lookup == nil {
		dv, err := parseDefault(d.CRMType, d.Default)
		if err != nil {
			return false, m.fail(x, a, err)
		}
		if v, err = a.toFHIRValue(dv); err != nil && !errors.Is(err, errSkip) {
			return false, m.fail(x, a, err)
		}
	}
	if v == nil && d.Required {
		return false, m.fail(x, a, fmt.Errorf("required value is missing"))
	}
	var old any
	if d.CRMType == TypeMultiSelect {
		if all := a.path.GetAll(dst); len(all) > 0 {
			old = all
		}
	} else {
		old, _ = a.path.Get(dst)
	}
	if a.equalFHIR(old, v) {
		return false, nil
	}
	if err := a.path.Set(dst, v); err != nil {
		return false, m.fail(x, a, fmt.Errorf("writing %s: %w", a.path, err))
	}
	return true, nil
}

// equalFHIR compares two FHIR-side values of a by meaning.
func (a *attr) equalFHIR(x, y any) bool {
	switch a.def.CRMType {
	case TypeOptionSet, TypeString, TypeMemo, TypeBool:
		if x == nil || y == nil {
			return x == nil && y == nil
		}
		return x == y
	case TypeLookup:
		xs, _ := x.(string)
		ys, _ := y.(string)
		return xs == ys
	}
	return equalValue(a.def.CRMType, x, y)
}

func crmFilterPasses(f *CRMFilter, rec map[string]any) bool {
	v, has := rec[f.Attribute]
	text := ""
	if has && v != nil {
		if s, ok := numberText(v); ok {
			text = s
		} else {
			text = fmt.Sprint(v)
		}
	}
	null := !has || v == nil
	switch f.Operator {
	case FilterNotNull:
		return !null
	case FilterEq:
		return !null && text == f.Values[0]
	case FilterNe:
		return null || text != f.Values[0]
	case FilterIn:
		return !null && slices.Contains(f.Values, text)
	}
	return false
}
