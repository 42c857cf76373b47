package maps

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"reflect"
	"slices"
	"strings"
	"unicode/utf8"

	"github.com/fhirsync/fhirsync/maps/path"
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
	// ChangedAttributes names the attribute maps (then the expansion maps)
	// whose mapped value differs from the current state, in map order:
	// what a field-level merge compares.
	ChangedAttributes []string `json:"changedAttributes,omitempty"`
	// Rounded lists the CRM attributes whose FHIR value had more decimal
	// places than the attribute map's round declares: the record holds
	// the value rounded, and Changed compares it rounded. Child rows'
	// attributes are not listed.
	Rounded []string `json:"rounded,omitempty"`
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
	ParentNavigation string `json:"parentNavigation,omitempty"`
	// Parent, on a create of a nested expansion's row whose parent row is
	// created by the same result, is the 1-based place of that parent's
	// create among CRMResult.Children: the writer binds the new row to
	// the row that create made (in a change set, by its Content-ID). 0
	// means the parent exists (Record binds to it already) or is the
	// record itself.
	Parent int            `json:"parent,omitempty"`
	Record map[string]any `json:"record,omitempty"`
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
	// ChangedAttributes names the attribute maps whose mapped value
	// differs from the base resource, in map order.
	ChangedAttributes []string `json:"changedAttributes,omitempty"`
}

// Except names attribute maps (and expansion maps) a mapping leaves out:
// the target keeps its current values for them. A field-level merge uses it for the attributes
// whose change must not travel in this direction (changed only on the
// target, a conflict the target wins, or a conflict held for a person).
type Except map[string]bool

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

// FHIRFiltered is ToCRM's first check, alone: the name of the entity map's
// FHIR filter when it excludes res, "" when the map takes res. The error is
// ToCRM's for a resource of another type or a filter that cannot be
// evaluated.
func (m *Mapping) FHIRFiltered(res map[string]any) (string, error) {
	if rt, _ := res["resourceType"].(string); rt != m.def.FHIRType {
		return "", m.fail(nil, nil, fmt.Errorf("resource type %q does not match the map's %s", rt, m.def.FHIRType))
	}
	if f := m.def.FHIRFilter; f != nil && m.fhirFilter != nil {
		ok, err := m.fhirFilter.evalBool(res)
		if err != nil {
			return "", m.fail(nil, nil, fmt.Errorf("filter %q: %w", f.Name, err))
		}
		if !ok {
			return f.Name, nil
		}
	}
	return "", nil
}

// CRMFiltered is ToFHIR's first check, alone: the name of the entity map's
// CRM filter when it excludes rec, "" when the map takes rec.
func (m *Mapping) CRMFiltered(rec map[string]any) string {
	if f := m.def.CRMFilter; f != nil && !crmFilterPasses(f, rec) {
		return f.Name
	}
	return ""
}

// ToCRM maps a FHIR resource to a CRM record. cur is the CRM record's
// current state (nil when it does not exist yet); the diff in the result
// is taken against it. The resource is only read.
func (m *Mapping) ToCRM(ctx context.Context, res map[string]any, cur *CRMState, r LookupResolver) (*CRMResult, error) {
	return m.ToCRMExcept(ctx, res, cur, r, nil)
}

// ToCRMExcept is ToCRM leaving out the attribute maps named in skip: the
// record holds no value for them, so an update leaves them as they are.
func (m *Mapping) ToCRMExcept(ctx context.Context, res map[string]any, cur *CRMState, r LookupResolver, skip Except) (*CRMResult, error) {
	if name, err := m.FHIRFiltered(res); err != nil {
		return nil, err
	} else if name != "" {
		return &CRMResult{Filtered: name, Changed: []string{}}, nil
	}
	if g := m.def.CRMGate; g != nil && cur != nil && !crmFilterPasses(g, cur.Record) {
		return &CRMResult{Gated: g.Name, Changed: []string{}}, nil
	}
	var current map[string]any
	if cur != nil {
		current = cur.Record
	}
	id, _ := res["id"].(string)
	res = m.withoutCorrelation(res)
	out := &CRMResult{Record: make(map[string]any, len(m.attrs)+2), Changed: []string{}}
	if id != "" {
		key := m.def.Correlation.CRMAttribute
		out.Record[key] = id
		if current == nil || !equalValue(TypeString, current[key], id) {
			out.Changed = append(out.Changed, key)
		}
	}
	for _, a := range m.attrs {
		if !a.toCRM || skip[a.def.Name] {
			continue
		}
		before := len(out.Changed)
		if err := m.attrToCRM(ctx, nil, a, res, out.Record, current, &out.Changed, &out.Rounded, r); err != nil {
			return nil, err
		}
		if len(out.Changed) > before {
			out.ChangedAttributes = append(out.ChangedAttributes, a.def.Name)
		}
	}
	var (
		children map[string][]map[string]any
		top      = childParent{set: m.def.CRMEntitySet}
	)
	if cur != nil {
		children = cur.Children
		top.id = rowID(cur.Record, m.def.idAttribute())
	}
	for _, x := range m.expansions {
		if !x.toCRM || skip[x.def.Name] {
			continue
		}
		before := len(out.Children)
		top.rows = children[x.def.Name]
		if err := m.expandToCRM(ctx, x, res, top, children, &out.Children, r); err != nil {
			return nil, err
		}
		if len(out.Children) > before {
			// The nested expansions' rows travel with x's: x names the
			// change for a merge; Changed names each expansion written.
			for _, c := range out.Children[before:] {
				out.Changed = append(out.Changed, c.Expansion)
			}
			out.ChangedAttributes = append(out.ChangedAttributes, x.def.Name)
		}
	}
	slices.Sort(out.Changed)
	out.Changed = slices.Compact(out.Changed)
	return out, nil
}

// attrToCRM maps one attribute into rec and notes a difference from
// current in changed.
//
// A value its round declaration shortened is named in rounded (when not
// nil), so the caller can say that the CRM holds it rounded.
func (m *Mapping) attrToCRM(ctx context.Context, x *expansion, a *attr, src, rec, current map[string]any, changed, rounded *[]string, r LookupResolver) error {
	if a.concept != nil {
		return m.conceptToCRM(ctx, x, a, src, rec, current, changed, r)
	}
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
		fv, ok := a.pathFor(src).Get(src)
		if ok && fv != nil {
			if a.lookup != nil {
				return m.lookupToCRM(ctx, x, a, fv, src, rec, current, changed, r)
			}
			if a.byType != nil {
				return m.byTypeToCRM(ctx, x, a, fv, src, rec, current, changed, r)
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
			return m.lookupToCRM(ctx, x, a, nil, src, rec, current, changed, r)
		case a.byType != nil:
			return m.byTypeToCRM(ctx, x, a, nil, src, rec, current, changed, r)
		}
	}
	if rv, ok := a.round(v); ok {
		v = rv
		if rounded != nil {
			*rounded = append(*rounded, d.CRMAttribute)
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

func (m *Mapping) lookupToCRM(ctx context.Context, x *expansion, a *attr, fv any, src, rec, current map[string]any, changed *[]string, r LookupResolver) error {
	d := a.def
	bind := a.nav + "@odata.bind"
	var id string
	if fv != nil {
		ref, ok := fv.(string)
		if !ok {
			return m.fail(x, a, fmt.Errorf("expected a reference string, got %s", kind(fv)))
		}
		if err := m.checkReferenceType(x, a, src, ref); err != nil {
			return err
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
	return m.ToFHIRExcept(ctx, src, base, r, nil)
}

// ToFHIRExcept is ToFHIR leaving out the attribute maps named in skip:
// base keeps its values for them.
func (m *Mapping) ToFHIRExcept(ctx context.Context, src CRMState, base map[string]any, r LookupResolver, skip Except) (*FHIRResult, error) {
	if name := m.CRMFiltered(src.Record); name != "" {
		return &FHIRResult{Filtered: name, Changed: []string{}}, nil
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
	// The correlation identifier is fhirsync's own bookkeeping: attribute
	// and expansion maps do not see it (identifier[0] means the resource's
	// first identifier of its own), and it goes back where it was.
	held := m.holdCorrelation(base)
	if len(held) == 0 && m.corrPath != nil {
		// A new correlation identifier goes after the identifiers the
		// resource has now, before any an expansion map adds.
		if id, ok := src.Record[m.def.idAttribute()].(string); ok && id != "" {
			ids, _ := base["identifier"].([]any)
			held = []heldItem{{before: slices.Clone(ids), item: map[string]any{"system": m.def.Correlation.FHIRIdentifierSystem}}}
		}
	}
	corrAt := len(out.Changed)
	// Fallback paths are chosen on the resource as it was read, before any
	// write, so that clearing one name part cannot move the next to
	// another name.
	var chosen []*path.Path
	for _, a := range m.attrs {
		var p *path.Path
		if a.toFHIR && a.path != nil && a.expr == nil && !skip[a.def.Name] {
			p = a.pathFor(base)
		}
		chosen = append(chosen, p)
	}
	for i, a := range m.attrs {
		if chosen[i] == nil {
			continue
		}
		ch, err := m.attrToFHIR(ctx, nil, a, chosen[i], src.Record, base, r)
		if err != nil {
			return nil, err
		}
		if ch {
			out.Changed = append(out.Changed, chosen[i].String())
			out.ChangedAttributes = append(out.ChangedAttributes, a.def.Name)
		}
	}
	for _, x := range m.expansions {
		if !x.toFHIR || skip[x.def.Name] {
			continue
		}
		ch, err := m.expandToFHIR(ctx, x, src.Children[x.def.Name], base, src.Children, r)
		if err != nil {
			return nil, err
		}
		if ch {
			out.Changed = append(out.Changed, x.def.FHIRPath)
			out.ChangedAttributes = append(out.ChangedAttributes, x.def.Name)
		}
	}
	m.restoreCorrelation(base, held)
	if m.corrPath != nil {
		if id, ok := src.Record[m.def.idAttribute()].(string); ok && id != "" {
			if old, _ := m.corrPath.Get(base); !equalValue(TypeLookup, old, id) {
				if err := m.corrPath.Set(base, id); err != nil {
					return nil, m.fail(nil, nil, fmt.Errorf("writing the correlation identifier: %w", err))
				}
				out.Changed = slices.Insert(out.Changed, corrAt, m.corrPath.String())
			}
		}
	}
	return out, nil
}

// heldItem is a correlation identifier taken out of a resource's
// identifier list, with the identifiers that preceded it (to put it back
// after the last of them still there).
type heldItem struct {
	before []any
	item   any
}

// isCorrelation reports whether an identifier item carries the map's
// correlation identifier system.
func (m *Mapping) isCorrelation(it any) bool {
	sys := m.def.Correlation.FHIRIdentifierSystem
	item, ok := it.(map[string]any)
	return ok && sys != "" && item["system"] == sys
}

// withoutCorrelation returns res as attribute maps see it: without the
// correlation identifiers. res is not modified; a shallow copy is made only
// when there is something to hide.
func (m *Mapping) withoutCorrelation(res map[string]any) map[string]any {
	ids, _ := res["identifier"].([]any)
	if !slices.ContainsFunc(ids, m.isCorrelation) {
		return res
	}
	view := make(map[string]any, len(res))
	for k, v := range res {
		view[k] = v
	}
	rest := slices.DeleteFunc(slices.Clone(ids), m.isCorrelation)
	if len(rest) == 0 {
		delete(view, "identifier")
	} else {
		view["identifier"] = rest
	}
	return view
}

// holdCorrelation takes the correlation identifiers out of res's
// identifier list (in place) and returns them with their positions.
func (m *Mapping) holdCorrelation(res map[string]any) []heldItem {
	ids, _ := res["identifier"].([]any)
	var held []heldItem
	rest := make([]any, 0, len(ids))
	for i, it := range ids {
		if m.isCorrelation(it) {
			held = append(held, heldItem{before: slices.Clone(ids[:i]), item: it})
			continue
		}
		rest = append(rest, it)
	}
	if len(held) == 0 {
		return nil
	}
	if len(rest) == 0 {
		delete(res, "identifier")
	} else {
		res["identifier"] = rest
	}
	return held
}

// restoreCorrelation puts held correlation identifiers back after the
// last identifier that preceded them and is still in the list (first when
// none is), so write-back does not move them.
func (m *Mapping) restoreCorrelation(res map[string]any, held []heldItem) {
	if len(held) == 0 {
		return
	}
	ids, _ := res["identifier"].([]any)
	for _, h := range held {
		pos := 0
	search:
		for j := len(h.before) - 1; j >= 0; j-- {
			for k, it := range ids {
				if sameItem(it, h.before[j]) {
					pos = k + 1
					break search
				}
			}
		}
		ids = slices.Insert(ids, pos, h.item)
	}
	res["identifier"] = ids
}

// sameItem reports whether two identifier items are the same object.
func sameItem(x, y any) bool {
	xm, ok1 := x.(map[string]any)
	ym, ok2 := y.(map[string]any)
	if ok1 && ok2 {
		return reflect.ValueOf(xm).UnsafePointer() == reflect.ValueOf(ym).UnsafePointer()
	}
	return false
}

// attrToFHIR writes one attribute into dst at p (nil: the path the
// attribute chooses on dst) and reports whether it changed.
func (m *Mapping) attrToFHIR(ctx context.Context, x *expansion, a *attr, p *path.Path, rec, dst map[string]any, r LookupResolver) (bool, error) {
	if a.concept != nil {
		return m.conceptToFHIR(ctx, x, a, p, rec, dst, r)
	}
	d := a.def
	if p == nil {
		p = a.pathFor(dst)
	}
	var (
		v   any
		err error
	)
	if a.byType != nil {
		var keep bool
		if v, keep, err = m.byTypeToFHIR(ctx, x, a, p, rec, dst, r); err != nil || keep {
			return false, err
		}
	} else if a.lookup != nil {
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
	if v == nil && d.Default != "" && a.lookup == nil && a.byType == nil {
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
		if all := p.GetAll(dst); len(all) > 0 {
			old = all
		}
	} else {
		old, _ = p.Get(dst)
	}
	if a.equalFHIR(old, v) || a.truncatedFrom(old, v) || a.roundedFrom(old, v) {
		return false, nil
	}
	if err := p.Set(dst, v); err != nil {
		return false, m.fail(x, a, fmt.Errorf("writing %s: %w", p, err))
	}
	if err := a.fixReference(dst, old, v); err != nil {
		return false, m.fail(x, a, fmt.Errorf("beside %s: %w", p, err))
	}
	return true, nil
}

// truncatedFrom reports whether the CRM value v is what the attribute's
// truncate policy made of the FHIR value old: the CRM holds a shortened
// view of it, so write-back keeps the full FHIR text.
func (a *attr) truncatedFrom(old, v any) bool {
	d := a.def
	if d.LengthPolicy != LengthTruncate || d.MaxLength <= 0 {
		return false
	}
	os, ok1 := old.(string)
	vs, ok2 := v.(string)
	return ok1 && ok2 && utf8.RuneCountInString(os) > d.MaxLength && truncateRunes(os, d.MaxLength) == vs
}

// roundedFrom reports whether the CRM value v is what the attribute's
// round made of the FHIR value old: compared at the places the CRM keeps,
// they are the same, so write-back keeps the FHIR value's own places.
func (a *attr) roundedFrom(old, v any) bool {
	d := a.def
	if d.Round == nil || (d.CRMType != TypeDecimal && d.CRMType != TypeMoney) || !a.toCRM {
		return false
	}
	os, ok1 := numberText(old)
	vs, ok2 := numberText(v)
	if !ok1 || !ok2 {
		return false
	}
	return equalValue(d.CRMType, json.Number(roundText(os, d.Round)), json.Number(vs))
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

// Admits reports whether the CRM record rec passes the filter; a nil
// filter admits every record. An attribute absent from rec counts as
// null.
func (f *CRMFilter) Admits(rec map[string]any) bool {
	return f == nil || crmFilterPasses(f, rec)
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
