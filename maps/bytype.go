package maps

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"slices"
	"strings"

	"github.com/fhirsync/fhirsync/maps/path"
)

// ErrReferenceType means a reference names a resource type other than the
// one its lookup maps: looking its id up would search the wrong records.
var ErrReferenceType = errors.New("the reference names another resource type")

// ReferenceTypeError is a reference to a resource type that a lookup does
// not map. It names types and maps only, never ids, so it is safe to log.
type ReferenceTypeError struct {
	// Got is the reference's resource type; Want the types the lookup
	// takes; EntityMap the lookup's entity map ("" for a lookup by type).
	Got       string
	Want      []string
	EntityMap string
}

func (e *ReferenceTypeError) Error() string {
	if e.EntityMap != "" {
		return fmt.Sprintf("the reference is to a %s, but the lookup's entity map %q syncs %s", e.Got, e.EntityMap, strings.Join(e.Want, ", "))
	}
	return fmt.Sprintf("the reference is to a %s, which this lookup by type does not map (it maps %s)", e.Got, strings.Join(e.Want, ", "))
}

// Is makes a ReferenceTypeError match ErrReferenceType.
func (e *ReferenceTypeError) Is(target error) bool { return target == ErrReferenceType }

// SplitReference reads a literal reference's resource type and id:
// "Patient/123", "Patient/123/_history/2" and
// "https://example.org/fhir/Patient/123" are a Patient with id 123. A
// reference that names no type (a contained "#p1", a "urn:uuid:…", a bare
// id) gives typ "" and the reference itself as id.
func SplitReference(ref string) (typ, id string) {
	s := ref
	if i := strings.Index(s, "/_history/"); i >= 0 {
		s = s[:i]
	}
	parts := strings.Split(s, "/")
	n := len(parts)
	if n < 2 || parts[n-1] == "" || !resourceTypeName(parts[n-2]) {
		return "", ref
	}
	return parts[n-2], parts[n-1]
}

// resourceTypeName reports whether s has the form of a resource type name:
// a capital letter, then letters and digits.
func resourceTypeName(s string) bool {
	if s == "" || s[0] < 'A' || s[0] > 'Z' {
		return false
	}
	for i := 1; i < len(s); i++ {
		c := s[i]
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9') {
			return false
		}
	}
	return true
}

// byType is a compiled lookup by type (Lookup.ByType).
type byType struct {
	targets  []*byTypeTarget
	typeAttr string
	typeVM   *valueMap
	skip     bool // OtherTypes skip
}

// byTypeTarget is one resource type's lookup column.
type byTypeTarget struct {
	typ  string
	m    *Mapping
	attr string
	nav  string
}

func (b *byType) target(typ string) *byTypeTarget {
	for _, t := range b.targets {
		if t.typ == typ {
			return t
		}
	}
	return nil
}

func (b *byType) types() []string {
	out := make([]string, len(b.targets))
	for i, t := range b.targets {
		out[i] = t.typ
	}
	return out
}

// lookupByType validates and compiles an attribute map's Lookup.ByType.
func (c *compiler) lookupByType(set *Set, at Problem, a *AttributeMap, crmEntity string) *byType {
	l := a.Lookup
	bt := &byType{typeAttr: l.TypeAttribute, skip: l.OtherTypes == OtherTypesSkip}
	if l.EntityMap != "" || l.Navigation != "" {
		c.ps.add(withField(at, "lookup.entityMap"), "a lookup by type names its entity maps and navigation properties in lookup.byType; leave lookup.entityMap and lookup.navigation empty")
	}
	if a.CRMAttribute != "" {
		c.ps.add(withField(at, "crmAttribute"), "a lookup by type names its columns in lookup.byType; leave crmAttribute empty")
	}
	if a.Default != "" {
		c.ps.add(withField(at, "default"), "a lookup by type takes no default")
	}
	switch l.OtherTypes {
	case "", OtherTypesError, OtherTypesSkip:
	default:
		c.ps.add(withField(at, "lookup.otherTypes"), "lookup.otherTypes must be error or skip, got %q", l.OtherTypes)
	}
	types, cols, navs := map[string]bool{}, map[string]bool{}, map[string]bool{}
	for i, t := range l.ByType {
		field := fmt.Sprintf("lookup.byType[%d]", i)
		switch {
		case t.Type == "":
			c.ps.add(withField(at, field+".type"), "type is required: the FHIR resource type whose references this column holds")
		case !knownResourceType(t.Type):
			c.ps.add(withField(at, field+".type"), "unknown FHIR R4 resource type %q", t.Type)
		case types[t.Type]:
			c.ps.add(withField(at, field+".type"), "type %s is listed twice; a reference of one type goes to one column", t.Type)
		}
		types[t.Type] = true
		switch {
		case t.CRMAttribute == "":
			c.ps.add(withField(at, field+".crmAttribute"), "crmAttribute is required")
		case cols[t.CRMAttribute]:
			c.ps.add(withField(at, field+".crmAttribute"), "column %s is listed twice; each type needs its own lookup column", t.CRMAttribute)
		case t.CRMAttribute == l.TypeAttribute:
			c.ps.add(withField(at, field+".crmAttribute"), "column %s is also the type attribute", t.CRMAttribute)
		}
		cols[t.CRMAttribute] = true
		if nav := t.NavigationProperty(); nav != "" {
			if navs[nav] {
				// Each column is bound through its own navigation
				// property; a shared one would be bound and cleared at once.
				c.ps.add(withField(at, field+".navigation"), "navigation property %s is listed twice; each column is written through its own", nav)
			}
			navs[nav] = true
		}
		target, ok := set.byName[t.EntityMap]
		switch {
		case t.EntityMap == "":
			c.ps.add(withField(at, field+".entityMap"), "entityMap is required")
			continue
		case !ok:
			c.ps.add(withField(at, field+".entityMap"), "unknown entity map %q", t.EntityMap)
			if near := closest(t.EntityMap, slices.Collect(maps.Keys(set.byName))); near != "" {
				c.ps.fix("did you mean %q?", near)
			}
			continue
		case t.Type != "" && target.def.FHIRType != t.Type:
			c.ps.add(withField(at, field+".entityMap"), "entity map %q syncs %s, not %s", t.EntityMap, target.def.FHIRType, t.Type)
			continue
		}
		if t.CRMAttribute != "" {
			c.crmAttribute(withField(at, field+".crmAttribute"), crmEntity, t.CRMAttribute, TypeLookup)
			c.crmLookupTarget(at, crmEntity, t.CRMAttribute, target.def.CRMEntity)
		}
		bt.targets = append(bt.targets, &byTypeTarget{typ: t.Type, m: target, attr: t.CRMAttribute, nav: t.NavigationProperty()})
	}
	if (l.TypeAttribute == "") != (l.TypeValueMap == "") {
		c.ps.add(withField(at, "lookup.typeValueMap"), "lookup.typeAttribute and lookup.typeValueMap go together: the value map gives the type column its option value")
		return bt
	}
	if l.TypeValueMap == "" {
		return bt
	}
	vm, ok := c.valueMaps[l.TypeValueMap]
	if !ok {
		c.ps.add(withField(at, "lookup.typeValueMap"), "unknown value map %q", l.TypeValueMap)
		return bt
	}
	bt.typeVM = vm
	if vm.def.Unmapped == "" || vm.def.Unmapped == UnmappedError {
		for _, t := range l.ByType {
			if _, ok := vm.toCRM[t.Type]; !ok && t.Type != "" {
				c.ps.add(withField(at, "lookup.typeValueMap"), "value map %q has no option value for %s", vm.def.Name, t.Type)
			}
		}
	}
	c.crmAttribute(withField(at, "lookup.typeAttribute"), crmEntity, l.TypeAttribute, TypeOptionSet)
	c.crmOptions(at, crmEntity, l.TypeAttribute, vm)
	return bt
}

// byTypeFieldsUnused refuses the fields only a lookup by type reads on a
// lookup through one entity map, where they would be silently ignored (a
// type column never written, otherTypes never applied).
func (c *compiler) byTypeFieldsUnused(at Problem, l *Lookup) {
	if l == nil {
		return
	}
	for _, f := range []struct{ field, value string }{
		{"lookup.typeAttribute", l.TypeAttribute}, {"lookup.typeValueMap", l.TypeValueMap}, {"lookup.otherTypes", string(l.OtherTypes)},
	} {
		if f.value != "" {
			c.ps.add(withField(at, f.field), "%s is only used by a lookup by type (lookup.byType)", f.field)
		}
	}
}

// besideReference compiles the path of the Reference's element field
// beside a lookup's reference (…actor.reference → …actor.type).
func (c *compiler) besideReference(at Problem, text, ctxPath string, inItem bool, field string) *path.Path {
	typeText := strings.TrimSuffix(text, "reference") + field
	var (
		p   *path.Path
		err error
	)
	if inItem && ctxPath != "" {
		p, err = path.CompileIn(ctxPath, typeText)
	} else {
		p, err = path.Compile(typeText)
	}
	if err != nil {
		c.ps.add(withField(at, "fhirPath"), "the Reference.%s beside %s: %v", field, text, err)
		return nil
	}
	return p
}

// referenceType is the resource type a lookup's reference names: its
// Reference.type when present, else the type in the reference text ("" when
// neither names one). A Reference.type that contradicts the text is an
// error.
func (a *attr) referenceType(src map[string]any, ref string) (string, error) {
	typ, _ := SplitReference(ref)
	if a.refType == nil || src == nil {
		return typ, nil
	}
	v, ok := a.refType.Get(src)
	s, _ := v.(string)
	if !ok || s == "" {
		return typ, nil
	}
	// Reference.type is a URI: a type name, or a StructureDefinition URL.
	if i := strings.LastIndexByte(s, '/'); i >= 0 {
		s = s[i+1:]
	}
	if typ != "" && typ != s {
		return "", fmt.Errorf("the reference's Reference.type %s and the type in its reference, %s, differ", s, typ)
	}
	return s, nil
}

// checkReferenceType fails a single-entity-map lookup given a reference of
// another resource type, before anything is looked up.
func (m *Mapping) checkReferenceType(x *expansion, a *attr, src map[string]any, ref string) error {
	typ, err := a.referenceType(src, ref)
	if err != nil {
		return m.fail(x, a, err)
	}
	if typ != "" && typ != a.lookup.def.FHIRType {
		return m.fail(x, a, &ReferenceTypeError{Got: typ, Want: []string{a.lookup.def.FHIRType}, EntityMap: a.lookup.def.Name})
	}
	return nil
}

// byTypeToCRM maps a reference (fv; nil when absent) through a lookup by
// type: the column of its type is bound, every other column cleared, and
// the type column set.
func (m *Mapping) byTypeToCRM(ctx context.Context, x *expansion, a *attr, fv any, src, rec, current map[string]any, changed *[]string, r LookupResolver) error {
	b := a.byType
	var (
		chosen  *byTypeTarget
		id, typ string
	)
	if fv != nil {
		ref, ok := fv.(string)
		if !ok {
			return m.fail(x, a, fmt.Errorf("expected a reference string, got %s", kind(fv)))
		}
		t, err := a.referenceType(src, ref)
		if err != nil {
			return m.fail(x, a, err)
		}
		typ = t
		chosen = b.target(typ)
		contained := strings.HasPrefix(ref, "#")
		if contained {
			// A resource contained in this one ("#loc1"), whatever its
			// Reference.type: no entity map syncs it, so no column holds it.
			chosen = nil
		}
		switch {
		case contained && !b.skip && typ != "":
			return m.fail(x, a, fmt.Errorf("the reference is to a contained resource, which no entity map syncs (the lookup by type maps %s)", strings.Join(b.types(), ", ")))
		case chosen == nil && !b.skip && typ == "":
			return m.fail(x, a, fmt.Errorf("the reference names no resource type, and a lookup by type needs one (it maps %s)", strings.Join(b.types(), ", ")))
		case chosen == nil && !b.skip:
			return m.fail(x, a, &ReferenceTypeError{Got: typ, Want: b.types()})
		case chosen != nil:
			if r == nil {
				return m.fail(x, a, fmt.Errorf("no lookup resolver configured"))
			}
			crmID, found, err := r.CRMID(ctx, chosen.m.def.Name, ref)
			if err != nil {
				return m.fail(x, a, fmt.Errorf("resolving lookup through %q: %w", chosen.m.def.Name, err))
			}
			if !found {
				return m.fail(x, a, fmt.Errorf("lookup through %q: %w", chosen.m.def.Name, ErrUnresolvedLookup))
			}
			id = crmID
		}
	} else if a.def.Required {
		return m.fail(x, a, fmt.Errorf("required value is missing"))
	}
	for _, t := range b.targets {
		bind := t.nav + "@odata.bind"
		want := ""
		if t == chosen {
			want = id
			rec[bind] = "/" + t.m.def.CRMEntitySet + "(" + id + ")"
		} else {
			rec[bind] = nil
		}
		if current == nil {
			if want != "" {
				*changed = append(*changed, t.attr)
			}
		} else if !strings.EqualFold(lookupID(current, t.attr, t.nav), want) {
			*changed = append(*changed, t.attr)
		}
	}
	if b.typeAttr == "" {
		return nil
	}
	var v any
	if typ != "" {
		n, err := b.typeVM.crmFor(typ)
		switch {
		case err == nil:
			v = n
		case errors.Is(err, errSkip) || chosen == nil:
			// A type the value map does not know: the type column is
			// left empty (a listed type always has a value; validation
			// checks it).
		default:
			return m.fail(x, a, fmt.Errorf("type column %s: %w", b.typeAttr, err))
		}
	}
	rec[b.typeAttr] = v
	if current == nil {
		if v != nil {
			*changed = append(*changed, b.typeAttr)
		}
	} else if !equalValue(TypeOptionSet, current[b.typeAttr], v) {
		*changed = append(*changed, b.typeAttr)
	}
	return nil
}

// byTypeToFHIR rebuilds the reference of a lookup by type from the column
// that is set on rec. keep reports that the FHIR reference at p must stay
// as it is: no column is set and dst's reference is of a type the lookup
// skips (or is to a contained resource).
func (m *Mapping) byTypeToFHIR(ctx context.Context, x *expansion, a *attr, p *path.Path, rec, dst map[string]any, r LookupResolver) (v any, keep bool, err error) {
	b := a.byType
	var (
		set []string
		hit *byTypeTarget
		id  string
	)
	for _, t := range b.targets {
		if tid := lookupID(rec, t.attr, t.nav); tid != "" {
			set = append(set, t.attr)
			hit, id = t, tid
		}
	}
	switch {
	case len(set) > 1:
		return nil, false, m.fail(x, a, fmt.Errorf("lookup columns %s are all set; a reference names one record", strings.Join(set, ", ")))
	case hit == nil:
		if b.skip {
			if old, ok := p.Get(dst); ok {
				ref, _ := old.(string)
				typ, terr := a.referenceType(dst, ref)
				if terr != nil || b.target(typ) == nil || strings.HasPrefix(ref, "#") {
					return nil, true, nil
				}
			}
		}
		return nil, false, nil
	}
	if r == nil {
		return nil, false, m.fail(x, a, fmt.Errorf("no lookup resolver configured"))
	}
	ref, found, err := r.FHIRRef(ctx, hit.m.def.Name, id)
	if err != nil {
		return nil, false, m.fail(x, a, fmt.Errorf("resolving lookup through %q: %w", hit.m.def.Name, err))
	}
	if !found {
		return nil, false, m.fail(x, a, fmt.Errorf("lookup through %q: %w", hit.m.def.Name, ErrUnresolvedLookup))
	}
	if typ, _ := SplitReference(ref); typ != "" && typ != hit.typ {
		return nil, false, m.fail(x, a, &ReferenceTypeError{Got: typ, Want: []string{hit.typ}, EntityMap: hit.m.def.Name})
	}
	return ref, false, nil
}

// fixReference keeps the elements beside a lookup's rewritten reference
// (prev before, ref now) true to it: its Reference.type (fixReferenceType),
// and its Reference.display, which goes when the reference changed from one
// record to another: it named the record referred to before. Attributes
// other than lookups have neither path, and nothing is done.
func (a *attr) fixReference(dst map[string]any, prev, ref any) error {
	if err := a.fixReferenceType(dst, ref); err != nil {
		return fmt.Errorf("writing the Reference.type: %w", err)
	}
	if a.refDisplay != nil && prev != nil && ref != nil {
		if err := a.refDisplay.Set(dst, nil); err != nil {
			return fmt.Errorf("removing the Reference.display: %w", err)
		}
	}
	return nil
}

// fixReferenceType keeps a Reference.type beside a rewritten reference
// true: when dst has one that names another type, it is set to the new
// reference's type. When the reference was removed (ref nil: the CRM
// cleared the lookup), its Reference.type goes too, and with it a
// Reference that it leaves empty: a type left behind would still say the
// element refers to a resource of that type.
func (a *attr) fixReferenceType(dst map[string]any, ref any) error {
	if a.refType == nil {
		return nil
	}
	if ref == nil {
		return a.refType.Set(dst, nil)
	}
	s, ok := ref.(string)
	if !ok {
		return nil
	}
	old, has := a.refType.Get(dst)
	os, _ := old.(string)
	if !has || os == "" {
		return nil
	}
	typ, _ := SplitReference(s)
	if typ == "" || os == typ || strings.HasSuffix(os, "/"+typ) {
		return nil
	}
	return a.refType.Set(dst, typ)
}
