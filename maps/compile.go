package maps

import (
	"fmt"
	"maps"
	"reflect"
	"slices"
	"strconv"
	"strings"
	"sync"

	"github.com/fhirsync/fhirsync/maps/path"
)

// Set is a compiled, validated map set: every path and expression parsed
// once, every reference by name resolved. A Set is immutable and safe for
// concurrent use; the agent keeps using one for as long as it is current.
type Set struct {
	version int
	doc     *Document
	maps    []*Mapping
	byName  map[string]*Mapping
}

// Version is the number of the stored map version the set was compiled
// from (0 for a set compiled from a file). Decisions record it.
func (s *Set) Version() int { return s.version }

// Document returns the set's definition. Callers must not modify it.
func (s *Set) Document() *Document { return s.doc }

// Maps returns every entity map, enabled or not, in document order.
func (s *Set) Maps() []*Mapping { return s.maps }

// Map returns the entity map called name.
func (s *Set) Map(name string) (*Mapping, bool) {
	m, ok := s.byName[name]
	return m, ok
}

// ForFHIR returns the entity maps of a FHIR resource type, in document
// order. Several maps may share a type (telling their records apart with
// filters).
func (s *Set) ForFHIR(resourceType string) []*Mapping {
	var out []*Mapping
	for _, m := range s.maps {
		if m.def.FHIRType == resourceType {
			out = append(out, m)
		}
	}
	return out
}

// ForCRM returns the entity maps of a CRM entity (logical name).
func (s *Set) ForCRM(entity string) []*Mapping {
	var out []*Mapping
	for _, m := range s.maps {
		if m.def.CRMEntity == entity {
			out = append(out, m)
		}
	}
	return out
}

// Mapping is one compiled entity map; its ToCRM and ToFHIR methods are the
// mapping engine.
type Mapping struct {
	set        *Set
	def        *EntityMap
	attrs      []*attr
	expansions []*expansion
	fhirFilter fhirExpr
	// corrPath writes the CRM id under the correlation identifier system.
	corrPath *path.Path
	// keyPath reads the business key's identifier value, when the map has
	// a business key.
	keyPath *path.Path
	// signal is the compiled signal section (signal.go); nil: none.
	signal *compiledSignal

	// reads is what the mapping reads of the CRM and the index of its
	// definition by name, made on first use (reads.go): a mapping never
	// changes once compiled, and the agent asks for them per message.
	readsOnce sync.Once
	reads     *mappingReads
}

// Def returns the entity map's definition. Callers must not modify it.
func (m *Mapping) Def() *EntityMap { return m.def }

// Name returns the entity map's name.
func (m *Mapping) Name() string { return m.def.Name }

// Version returns the version of the set the mapping belongs to.
func (m *Mapping) Version() int { return m.set.version }

type attr struct {
	def  *AttributeMap
	path *path.Path // nil for a constant
	// alts are the primary path and its fallbacks, anchors their leading
	// elements (see AttributeMap.FallbackPaths); both nil without fallbacks.
	alts     []*path.Path
	anchors  []*path.Path
	fhirType string // R4 type of the element the path reaches
	vm       *valueMap
	lookup   *Mapping
	concept  *compiledConcept // a concept lookup (concept.go)
	nav      string
	expr     fhirExpr
	toCRM    bool
	toFHIR   bool

	// byType is a lookup by the reference's type (Lookup.ByType); lookup
	// is nil then.
	byType *byType
	// refType reads the Reference.type beside a lookup's reference,
	// refDisplay its Reference.display.
	refType, refDisplay *path.Path
}

type expansion struct {
	def     *ExpansionMap
	path    *path.Path
	attrs   []*attr
	key     []*attr
	exclude []Condition
	toCRM   bool
	toFHIR  bool
	// nested are the enabled expansions inside this one (ExpansionMap.
	// Expansions), relative to its item; parent is the expansion a nested
	// one sits in (nil at the top level).
	nested []*expansion
	parent *expansion
}

// expansionScope is where an expansion map sits: the CRM entity its
// parent lookup points at, the FHIR type its path starts from, the
// direction of the expansion around it (Both at the top level), its depth
// (1 at the top level) and the names taken in its entity map.
type expansionScope struct {
	owner   string
	ctxName string
	ctxType reflect.Type
	outer   Direction
	depth   int
	names   map[string]bool
}

type valueMap struct {
	def    *ValueMap
	toCRM  map[string]int
	toFHIR map[int]string
}

// CompileOptions configures validation.
type CompileOptions struct {
	// CRM, when set, checks CRM entities, attributes and types against a
	// metadata snapshot.
	CRM *CRMMetadata
}

// Compile validates doc and compiles it into a Set. Every problem is
// reported at once in a *ValidationError.
func Compile(doc *Document, opts CompileOptions) (*Set, error) {
	return compile(doc, 0, opts)
}

// Validate checks doc without keeping the compiled set.
func Validate(doc *Document, opts CompileOptions) error {
	_, err := compile(doc, 0, opts)
	return err
}

func compile(doc *Document, version int, opts CompileOptions) (*Set, error) {
	c := &compiler{ps: &problems{}, opts: opts}
	set := c.compile(doc)
	if err := c.ps.err(); err != nil {
		return nil, err
	}
	set.version = version
	return set, nil
}

type compiler struct {
	ps        *problems
	opts      CompileOptions
	valueMaps map[string]*valueMap
}

func (c *compiler) compile(doc *Document) *Set {
	set := &Set{doc: doc, byName: map[string]*Mapping{}}
	if doc.Format != FormatVersion {
		c.ps.add(Problem{Field: "format"}, "format must be %d, got %d", FormatVersion, doc.Format)
	}
	c.valueMaps = map[string]*valueMap{}
	for i := range doc.ValueMaps {
		c.valueMap(&doc.ValueMaps[i])
	}
	for i := range doc.EntityMaps {
		def := &doc.EntityMaps[i]
		at := Problem{Map: def.Name}
		if def.Name == "" {
			c.ps.add(Problem{Field: fmt.Sprintf("entityMaps[%d].name", i)}, "name is required")
			continue
		}
		if _, dup := set.byName[def.Name]; dup {
			c.ps.add(at, "duplicate entity map name")
			continue
		}
		m := &Mapping{set: set, def: def}
		set.byName[def.Name] = m
		set.maps = append(set.maps, m)
	}
	for _, m := range set.maps {
		c.entityMap(set, m)
	}
	c.lookupCycles(set)
	return set
}

func (c *compiler) valueMap(def *ValueMap) {
	at := Problem{ValueMap: def.Name}
	if def.Name == "" {
		c.ps.add(Problem{Field: "valueMaps.name"}, "name is required")
		return
	}
	if _, dup := c.valueMaps[def.Name]; dup {
		c.ps.add(at, "duplicate value map name")
		return
	}
	vm := &valueMap{def: def, toCRM: map[string]int{}, toFHIR: map[int]string{}}
	c.valueMaps[def.Name] = vm
	if len(def.Entries) == 0 {
		c.ps.add(at, "a value map needs at least one entry")
	}
	for _, e := range def.Entries {
		if e.FHIR == "" {
			c.ps.add(withField(at, "entries"), "entry for option value %d has an empty code", e.CRM)
			continue
		}
		if prev, dup := vm.toCRM[e.FHIR]; dup && prev != e.CRM {
			c.ps.add(withField(at, "entries"), "code %q maps to both %d and %d", e.FHIR, prev, e.CRM)
		}
		vm.toCRM[e.FHIR] = e.CRM
		if _, seen := vm.toFHIR[e.CRM]; !seen {
			vm.toFHIR[e.CRM] = e.FHIR
		}
	}
	switch def.Unmapped {
	case "", UnmappedError, UnmappedSkip:
	case UnmappedDefault:
		if def.DefaultCRM == nil && def.DefaultFHIR == "" {
			c.ps.add(withField(at, "unmapped"), "unmapped: default needs defaultCRM or defaultFHIR")
		}
	default:
		c.ps.add(withField(at, "unmapped"), "unmapped must be error, skip or default, got %q", def.Unmapped)
	}
}

func withField(p Problem, f string) Problem { p.Field = f; return p }

const conflictPolicyProblem = "conflictPolicy must be last-writer-wins, fhir-wins, crm-wins or hold, got %q"

func (c *compiler) entityMap(set *Set, m *Mapping) {
	def := m.def
	at := Problem{Map: def.Name}
	req := func(field, v string) {
		if v == "" {
			c.ps.add(withField(at, field), "%s is required", field)
		}
	}
	req("crmEntity", def.CRMEntity)
	req("crmEntitySet", def.CRMEntitySet)
	req("correlation.crmAttribute", def.Correlation.CRMAttribute)
	req("correlation.fhirIdentifierSystem", def.Correlation.FHIRIdentifierSystem)
	var resType reflect.Type
	if def.FHIRType == "" {
		c.ps.add(withField(at, "fhirType"), "fhirType is required")
	} else if !knownResourceType(def.FHIRType) {
		c.ps.add(withField(at, "fhirType"), "unknown FHIR R4 resource type %q", def.FHIRType)
	} else {
		resType, _ = resourceGoType(def.FHIRType)
	}
	for name, f := range map[string]Flow{"fhirToCRM": def.FHIRToCRM, "crmToFHIR": def.CRMToFHIR} {
		for _, op := range f.Operations {
			if op != OpCreate && op != OpUpdate && op != OpDelete {
				c.ps.add(withField(at, name+".operations"), "unknown operation %q (create, update, delete)", op)
			}
		}
	}
	if !def.ConflictPolicy.Valid() {
		c.ps.add(withField(at, "conflictPolicy"), conflictPolicyProblem, def.ConflictPolicy)
	}
	c.deletePolicy(at, def)
	c.stream(def)
	c.signal(set, m)
	c.businessKey(at, m, resType)
	if f := def.FHIRFilter; f != nil {
		if f.Name == "" {
			c.ps.add(withField(at, "fhirFilter.name"), "a filter needs a name")
		}
		e, err := compileFHIRPath(f.Expression)
		if err != nil {
			c.ps.add(withField(at, "fhirFilter.expression"), "%v", err)
		}
		m.fhirFilter = e
	}
	for _, cf := range []struct {
		f     *CRMFilter
		field string
	}{{def.CRMFilter, "crmFilter"}, {def.CRMGate, "crmGate"}} {
		f := cf.f
		if f == nil {
			continue
		}
		if f.Name == "" {
			c.ps.add(withField(at, cf.field+".name"), "a %s needs a name", cf.field)
		}
		if f.Attribute == "" {
			c.ps.add(withField(at, cf.field+".attribute"), "attribute is required")
		}
		switch f.Operator {
		case FilterEq, FilterNe:
			if len(f.Values) != 1 {
				c.ps.add(withField(at, cf.field+".values"), "operator %s takes exactly one value", f.Operator)
			}
		case FilterIn:
			if len(f.Values) == 0 {
				c.ps.add(withField(at, cf.field+".values"), "operator in takes at least one value")
			}
		case FilterNotNull:
		default:
			c.ps.add(withField(at, cf.field+".operator"), "operator must be eq, ne, in or notnull, got %q", f.Operator)
		}
		c.crmAttribute(at, def.CRMEntity, f.Attribute, "")
	}
	c.crmEntity(at, def.CRMEntity, def.CRMEntitySet)
	if sys := def.Correlation.FHIRIdentifierSystem; sys != "" && resType != nil {
		if strings.ContainsAny(sys, "'\\") {
			c.ps.add(withField(at, "correlation.fhirIdentifierSystem"), "the identifier system must not contain quotes or backslashes")
		} else if _, ok := jsonFields(resType)["identifier"]; ok {
			p, err := path.Compile("identifier.where(system='" + sys + "').value")
			if err != nil {
				c.ps.add(withField(at, "correlation.fhirIdentifierSystem"), "%v", err)
			}
			m.corrPath = p
		}
	}

	targets := targetSet{crm: map[string]string{}, fhir: map[string]string{}}
	names := map[string]bool{}
	for i := range def.Attributes {
		a := &def.Attributes[i]
		aat := at
		aat.Attribute = a.Name
		if a.Name == "" {
			c.ps.add(withField(at, fmt.Sprintf("attributes[%d].name", i)), "name is required")
			continue
		}
		if names[a.Name] {
			c.ps.add(aat, "duplicate attribute map name")
			continue
		}
		names[a.Name] = true
		ca := c.attribute(set, aat, a, def.FHIRType, resType, def.CRMEntity, Both, false)
		if ca == nil || !a.IsEnabled() {
			continue
		}
		targets.check(c, aat, ca)
		m.attrs = append(m.attrs, ca)
	}
	xnames := map[string]bool{}
	for i := range def.Expansions {
		x := &def.Expansions[i]
		xat := at
		xat.Expansion = x.Name
		if x.Name == "" {
			c.ps.add(withField(at, fmt.Sprintf("expansions[%d].name", i)), "name is required")
			continue
		}
		if xnames[x.Name] {
			c.ps.add(xat, "duplicate expansion map name")
			continue
		}
		xnames[x.Name] = true
		ce := c.expansion(set, xat, x, expansionScope{owner: def.CRMEntity, ctxName: def.FHIRType, ctxType: resType, outer: Both, depth: 1, names: xnames})
		if ce != nil && x.IsEnabled() {
			if prev, dup := targets.fhir[ce.path.String()]; dup {
				c.ps.add(withField(xat, "fhirPath"), "FHIR element %s is already written by %s", ce.path, prev)
			}
			targets.fhir[ce.path.String()] = "expansion map " + strconv.Quote(x.Name)
			m.expansions = append(m.expansions, ce)
		}
	}
	samples := map[string]bool{}
	for i, s := range def.Samples {
		sat := withField(at, fmt.Sprintf("samples[%d]", i))
		if s.Name == "" {
			c.ps.add(sat, "a sample needs a name")
		} else if samples[s.Name] {
			c.ps.add(sat, "duplicate sample name %q", s.Name)
		}
		samples[s.Name] = true
		if s.Direction != FHIRToCRM && s.Direction != CRMToFHIR {
			c.ps.add(sat, "sample direction must be fhir-to-crm or crm-to-fhir, got %q", s.Direction)
		}
		switch s.Expect.Decision {
		case DecisionMapped, DecisionUnchanged, DecisionFiltered, DecisionMappingError:
		default:
			c.ps.add(sat, "expect.decision must be mapped, unchanged, filtered or mapping_error, got %q", s.Expect.Decision)
		}
	}
}

// targetSet detects two attribute maps writing the same target field.
type targetSet struct {
	crm, fhir map[string]string
}

func (t targetSet) check(c *compiler, at Problem, a *attr) {
	label := "attribute map " + strconv.Quote(a.def.Name)
	if a.toCRM {
		for _, key := range a.def.CRMAttributes() {
			if prev, dup := t.crm[key]; dup {
				c.ps.add(withField(at, "crmAttribute"), "duplicate target: CRM attribute %s is already written by %s", key, prev)
			}
			t.crm[key] = label
		}
	}
	if a.toFHIR && a.path != nil {
		key := a.path.String()
		if prev, dup := t.fhir[key]; dup {
			c.ps.add(withField(at, "fhirPath"), "duplicate target: FHIR element %s is already written by %s", key, prev)
		}
		t.fhir[key] = label
	}
}

func (c *compiler) attribute(set *Set, at Problem, a *AttributeMap, ctxPath string, ctxType reflect.Type, crmEntity string, outer Direction, inItem bool) *attr {
	ca := &attr{def: a}
	dir := a.Direction.orBoth()
	switch dir {
	case Both, FHIRToCRM, CRMToFHIR:
	default:
		c.ps.add(withField(at, "direction"), "direction must be both, fhir-to-crm or crm-to-fhir, got %q", a.Direction)
		return nil
	}
	if outer != Both && dir != outer && dir != Both {
		c.ps.add(withField(at, "direction"), "direction conflict: %s inside an expansion map that only travels %s", dir, outer)
	}
	ca.toCRM = dir.toCRM() && outer.toCRM()
	ca.toFHIR = dir.toFHIR() && outer.toFHIR()
	byType := a.Action.orCopy() == ActionLookup && a.Lookup.IsByType()
	if a.CRMAttribute == "" && !byType {
		c.ps.add(withField(at, "crmAttribute"), "crmAttribute is required")
	}
	if _, ok := compatible[a.CRMType]; !ok {
		c.ps.add(withField(at, "crmType"), "unknown crmType %q", a.CRMType)
		return nil
	}
	action := a.Action.orCopy()
	switch a.LengthPolicy {
	case "", LengthError, LengthTruncate:
	default:
		c.ps.add(withField(at, "lengthPolicy"), "lengthPolicy must be error or truncate, got %q", a.LengthPolicy)
	}
	if a.MaxLength < 0 {
		c.ps.add(withField(at, "maxLength"), "maxLength must not be negative")
	}
	if !a.ConflictPolicy.Valid() {
		c.ps.add(withField(at, "conflictPolicy"), conflictPolicyProblem, a.ConflictPolicy)
	} else if a.ConflictPolicy != "" && !(ca.toCRM && ca.toFHIR) {
		c.ps.add(withField(at, "conflictPolicy"), "conflictPolicy applies to attribute maps that travel both ways; a one-way attribute's source always wins")
	}
	if (a.MaxLength > 0 || a.LengthPolicy != "") && a.CRMType != TypeString && a.CRMType != TypeMemo {
		c.ps.add(withField(at, "maxLength"), "maxLength and lengthPolicy apply to string and memo attributes only")
	}
	if a.Round != nil {
		switch {
		case a.CRMType != TypeDecimal && a.CRMType != TypeMoney:
			c.ps.add(withField(at, "round"), "round applies to decimal and money attributes only")
		case *a.Round < 0 || *a.Round > maxRound:
			c.ps.add(withField(at, "round"), "round must be 0 to %d decimal places, got %d", maxRound, *a.Round)
		case !ca.toCRM:
			c.ps.add(withField(at, "round"), "round applies to values written to the CRM; this attribute map travels crm-to-fhir only")
			c.ps.fix("remove round")
		}
	}
	switch action {
	case ActionCopy:
		if a.CRMType == TypeOptionSet || a.CRMType == TypeMultiSelect {
			c.ps.add(withField(at, "action"), "an %s attribute needs action valueMap", a.CRMType)
		}
		if a.CRMType == TypeLookup {
			c.ps.add(withField(at, "action"), "a lookup attribute needs action lookup")
		}
	case ActionDefault:
		if a.Default == "" {
			c.ps.add(withField(at, "default"), "action default needs a default value")
		}
		if a.FHIRPath == "" && dir != FHIRToCRM {
			c.ps.add(withField(at, "direction"), "direction conflict: a constant (default without fhirPath) can only travel fhir-to-crm")
		}
	case ActionValueMap:
		if a.CRMType != TypeOptionSet && a.CRMType != TypeMultiSelect {
			c.ps.add(withField(at, "crmType"), "action valueMap needs crmType option-set or multi-select, got %s", a.CRMType)
		}
		vm, ok := c.valueMaps[a.ValueMap]
		if !ok {
			c.ps.add(withField(at, "valueMap"), "unknown value map %q", a.ValueMap)
		}
		ca.vm = vm
	case ActionLookup:
		if a.Concept != nil {
			c.concept(at, a, ca) // concept.go
			break
		}
		if a.CRMType != TypeLookup {
			c.ps.add(withField(at, "crmType"), "action lookup needs crmType lookup, got %s", a.CRMType)
		}
		if !byType {
			c.byTypeFieldsUnused(at, a.Lookup) // bytype.go
		}
		if byType {
			ca.byType = c.lookupByType(set, at, a, crmEntity)
		} else if a.Lookup == nil || a.Lookup.EntityMap == "" {
			c.ps.add(withField(at, "lookup.entityMap"), "action lookup needs lookup.entityMap (or lookup.byType)")
		} else if target, ok := set.byName[a.Lookup.EntityMap]; !ok {
			c.ps.add(withField(at, "lookup.entityMap"), "unknown entity map %q", a.Lookup.EntityMap)
			if near := closest(a.Lookup.EntityMap, slices.Collect(maps.Keys(set.byName))); near != "" {
				c.ps.fix("did you mean %q?", near)
			} else {
				c.ps.fix("add an entity map for the referenced records, or name one of this set's entity maps")
			}
		} else {
			ca.lookup = target
			ca.nav = a.NavigationProperty()
		}
	case ActionComputed:
		if dir != FHIRToCRM {
			c.ps.add(withField(at, "direction"), "direction conflict: computed values are read-only and travel fhir-to-crm only")
		}
		if a.FHIRPath != "" {
			c.ps.add(withField(at, "fhirPath"), "a computed attribute takes an expression, not a fhirPath")
		}
		e, err := compileFHIRPath(a.Expression)
		if err != nil {
			c.ps.add(withField(at, "expression"), "%v", err)
		}
		ca.expr = e
	default:
		c.ps.add(withField(at, "action"), "action must be copy, default, valueMap, lookup or computed, got %q", a.Action)
		return nil
	}
	if action != ActionComputed && a.Expression != "" {
		c.ps.add(withField(at, "expression"), "expression is only used by action computed")
	}
	if action != ActionValueMap && a.ValueMap != "" {
		c.ps.add(withField(at, "valueMap"), "valueMap is only used by action valueMap")
	}
	if a.Default != "" {
		if err := checkDefault(a, ca.vm); err != nil {
			c.ps.add(withField(at, "default"), "%v", err)
		}
	}
	if !byType {
		c.crmAttribute(at, crmEntity, a.CRMAttribute, a.CRMType)
	}
	c.crmMaxLength(at, crmEntity, a)
	if ca.lookup != nil {
		c.crmLookupTarget(at, crmEntity, a.CRMAttribute, ca.lookup.def.CRMEntity)
	}
	if ca.concept != nil {
		c.crmLookupTarget(at, crmEntity, a.CRMAttribute, ConceptEntity)
	}
	if action != ActionLookup && a.Concept != nil {
		c.ps.add(withField(at, "concept"), "concept is only used by action lookup")
	}
	if ca.vm != nil {
		c.crmOptions(at, crmEntity, a.CRMAttribute, ca.vm)
	}
	if a.FHIRPath == "" {
		if action != ActionComputed && !(action == ActionDefault && dir == FHIRToCRM) {
			c.ps.add(withField(at, "fhirPath"), "fhirPath is required")
		}
		return ca
	}
	var (
		p   *path.Path
		err error
	)
	if inItem && ctxPath != "" {
		p, err = path.CompileIn(ctxPath, a.FHIRPath)
	} else {
		p, err = path.Compile(a.FHIRPath)
	}
	if err != nil {
		c.ps.add(withField(at, "fhirPath"), "%v", err)
		return nil
	}
	ca.path = p
	if p.Type() != "" && (inItem || p.Type() != ctxPath) {
		c.ps.add(withField(at, "fhirPath"), "path %s is qualified with %s; paths are relative to %s", a.FHIRPath, p.Type(), describe(ctxPath))
		return nil
	}
	if ctxType == nil {
		return ca // the resource type is already reported
	}
	el, err := resolveR4(ctxPath, ctxType, p.Segments())
	if err != nil {
		c.ps.add(withField(at, "fhirPath"), "path %s reaches no element: %v", a.FHIRPath, err)
		return ca
	}
	ca.fhirType = el.Type
	if ca.concept != nil {
		c.conceptPath(at, ca, ctxPath, inItem, el)
		return ca
	}
	c.crmFHIRLength(at, crmEntity, a, el, ca.toCRM)
	c.crmFHIRNumber(at, crmEntity, a, el, ca.toCRM, ca.toFHIR)
	if !slices.Contains(compatible[a.CRMType], el.Type) {
		c.ps.add(withField(at, "crmType"), "type mismatch: CRM %s cannot carry FHIR %s (at %s)", a.CRMType, el.Type, a.FHIRPath)
	}
	if action == ActionLookup && !strings.HasSuffix(p.String(), ".reference") {
		c.ps.add(withField(at, "fhirPath"), "a lookup path must end at a Reference's .reference element")
	} else if action == ActionLookup {
		ca.refType = c.besideReference(at, a.FHIRPath, ctxPath, inItem, "type")
		ca.refDisplay = c.besideReference(at, a.FHIRPath, ctxPath, inItem, "display")
	}
	if a.CRMType == TypeMultiSelect && !el.Many {
		c.ps.add(withField(at, "fhirPath"), "a multi-select attribute needs a repeating element")
	}
	if ca.vm != nil && el.Codes != nil {
		c.binding(at, ca, el.Codes)
	}
	if len(a.FallbackPaths) > 0 {
		c.fallbacks(at, ca, ctxPath, ctxType, inItem, el.Type)
	}
	return ca
}

// fallbacks compiles an attribute map's fallback paths: each must reach an
// element of the same R4 type as the primary path.
func (c *compiler) fallbacks(at Problem, ca *attr, ctxPath string, ctxType reflect.Type, inItem bool, elType string) {
	a := ca.def
	if a.Action.orCopy() == ActionLookup || a.CRMType == TypeMultiSelect {
		c.ps.add(withField(at, "fallbackPaths"), "fallback paths apply to single values, not to lookups or multi-select attributes")
		return
	}
	compileIn := func(text string) (*path.Path, error) {
		if inItem && ctxPath != "" {
			return path.CompileIn(ctxPath, text)
		}
		return path.Compile(text)
	}
	alts := []*path.Path{ca.path}
	for i, text := range a.FallbackPaths {
		field := fmt.Sprintf("fallbackPaths[%d]", i)
		p, err := compileIn(text)
		if err != nil {
			c.ps.add(withField(at, field), "%v", err)
			return
		}
		if p.Type() != "" {
			c.ps.add(withField(at, field), "path %s is qualified with %s; paths are relative to %s", text, p.Type(), describe(ctxPath))
			return
		}
		el, err := resolveR4(ctxPath, ctxType, p.Segments())
		if err != nil {
			c.ps.add(withField(at, field), "path %s reaches no element: %v", text, err)
			return
		}
		if el.Type != elType {
			c.ps.add(withField(at, field), "path %s reaches a FHIR %s, the fhirPath a %s", text, el.Type, elType)
			return
		}
		alts = append(alts, p)
	}
	anchors := make([]*path.Path, len(alts))
	for i, p := range alts {
		ap, err := compileIn(anchorText(p.Segments()))
		if err != nil {
			c.ps.add(withField(at, "fallbackPaths"), "leading element of %s: %v", p, err)
			return
		}
		anchors[i] = ap
	}
	ca.alts, ca.anchors = alts, anchors
}

// anchorText renders a path's leading element: its steps up to and
// including the first step with where() or [i] (the whole path when there
// is none).
func anchorText(segs []path.Segment) string {
	var b strings.Builder
	for i, s := range segs {
		if i > 0 {
			b.WriteByte('.')
		}
		if s.Extension != "" {
			b.WriteString("extension(")
			b.WriteString(quoteLiteral(s.Extension))
			b.WriteByte(')')
		} else {
			b.WriteString(s.Name)
		}
		if len(s.Where) > 0 {
			b.WriteString(".where(")
			for j, c := range s.Where {
				if j > 0 {
					b.WriteString(" and ")
				}
				b.WriteString(c.Field)
				if c.Kind == path.Empty {
					b.WriteString(".empty()")
					continue
				}
				b.WriteString(" = ")
				if c.Kind == path.String {
					b.WriteString(quoteLiteral(c.Value))
				} else {
					b.WriteString(c.Value)
				}
			}
			b.WriteByte(')')
		}
		if s.Index >= 0 {
			fmt.Fprintf(&b, "[%d]", s.Index)
		}
		if s.Extension != "" || len(s.Where) > 0 || s.Index >= 0 {
			break
		}
	}
	return b.String()
}

func quoteLiteral(s string) string {
	return "'" + strings.NewReplacer(`\`, `\\`, `'`, `\'`).Replace(s) + "'"
}

// pathFor returns the path an attribute reads and writes on res: the
// primary path, or the first fallback whose leading element exists there.
func (a *attr) pathFor(res map[string]any) *path.Path {
	for i, an := range a.anchors {
		if _, ok := an.Get(res); ok {
			return a.alts[i]
		}
	}
	return a.path
}

// binding checks a value map against a required binding: every code the
// FHIR side may send must be mapped (unless the map deliberately skips or
// defaults), and no code the map produces may fall outside the binding.
func (c *compiler) binding(at Problem, a *attr, codes []string) {
	vm := a.vm
	if a.toCRM && (vm.def.Unmapped == "" || vm.def.Unmapped == UnmappedError) {
		var missing []string
		for _, code := range codes {
			if _, ok := vm.toCRM[code]; !ok {
				missing = append(missing, code)
			}
		}
		if len(missing) > 0 {
			c.ps.add(withField(at, "valueMap"), "value map %q does not cover the required binding of %s: missing %s", vm.def.Name, a.def.FHIRPath, strings.Join(missing, ", "))
		}
	}
	if a.toFHIR {
		for _, e := range vm.def.Entries {
			if !slices.Contains(codes, e.FHIR) {
				c.ps.add(withField(at, "valueMap"), "value map %q produces code %q, which the required binding of %s does not allow", vm.def.Name, e.FHIR, a.def.FHIRPath)
			}
		}
	}
}

func (c *compiler) expansion(set *Set, at Problem, x *ExpansionMap, sc expansionScope) *expansion {
	ce := &expansion{def: x, exclude: x.Exclude}
	dir := x.Direction.orBoth()
	switch dir {
	case Both, FHIRToCRM, CRMToFHIR:
	default:
		c.ps.add(withField(at, "direction"), "direction must be both, fhir-to-crm or crm-to-fhir, got %q", x.Direction)
		return nil
	}
	if sc.outer != Both && dir != sc.outer && dir != Both {
		c.ps.add(withField(at, "direction"), "direction conflict: %s inside an expansion map that only travels %s", dir, sc.outer)
	}
	if sc.outer != Both {
		dir = sc.outer
	}
	ce.toCRM, ce.toFHIR = dir.toCRM(), dir.toFHIR()
	for field, v := range map[string]string{"crmEntity": x.CRMEntity, "crmEntitySet": x.CRMEntitySet, "parentLookup": x.ParentLookup, "fhirPath": x.FHIRPath} {
		if v == "" && (field != "parentLookup" || sc.depth == 1) { // a nested one says more (nestedExpansions)
			c.ps.add(withField(at, field), "%s is required", field)
		}
	}
	switch x.OnRemove {
	case RemoveDelete, RemoveDeactivate:
	default:
		c.ps.add(withField(at, "onRemove"), "onRemove must be delete or deactivate, got %q", x.OnRemove)
	}
	c.crmEntity(at, x.CRMEntity, x.CRMEntitySet)
	c.crmAttribute(at, x.CRMEntity, x.ParentLookup, TypeLookup)
	c.crmLookupTarget(at, x.CRMEntity, x.ParentLookup, sc.owner)
	if x.FHIRPath == "" {
		return nil
	}
	p, err := path.Compile(x.FHIRPath)
	if err != nil {
		c.ps.add(withField(at, "fhirPath"), "%v", err)
		return nil
	}
	ce.path = p
	itemPath, itemType := "", reflect.Type(nil)
	if sc.ctxType != nil {
		el, err := resolveR4(sc.ctxName, sc.ctxType, p.Segments())
		switch {
		case err != nil:
			c.ps.add(withField(at, "fhirPath"), "path %s reaches no element: %v", x.FHIRPath, err)
		case !el.Many:
			c.ps.add(withField(at, "fhirPath"), "an expansion needs a repeating element; %s does not repeat", x.FHIRPath)
		default:
			itemPath, itemType = el.Type, el.goType
			if el.Type == "BackboneElement" || el.Type == "Element" {
				itemPath = sc.ctxName + "." + strings.Join(segNames(p.Segments()), ".")
			}
		}
		for i, s := range p.Segments() {
			if s.Index >= 0 || len(s.Where) > 0 || s.Extension != "" || (i < len(p.Segments())-1 && c.repeats(sc.ctxName, sc.ctxType, p.Segments()[:i+1])) {
				c.ps.add(withField(at, "fhirPath"), "an expansion path is plain, non-repeating element names down to the array (no index, where() or extension())")
				break
			}
		}
	}
	if itemType != nil {
		for _, cond := range x.Exclude {
			if _, ok := jsonFields(itemType)[cond.Field]; !ok {
				c.ps.add(withField(at, "exclude"), "%s has no element %q", itemPath, cond.Field)
			}
		}
	}
	names := map[string]*attr{}
	targets := targetSet{crm: map[string]string{}, fhir: map[string]string{}}
	for i := range x.Attributes {
		a := &x.Attributes[i]
		aat := at
		aat.Attribute = a.Name
		if a.Name == "" {
			c.ps.add(withField(at, fmt.Sprintf("attributes[%d].name", i)), "name is required")
			continue
		}
		if _, dup := names[a.Name]; dup {
			c.ps.add(aat, "duplicate attribute map name")
			continue
		}
		ca := c.attribute(set, aat, a, itemPath, itemType, x.CRMEntity, dir, true)
		names[a.Name] = ca
		if ca == nil || !a.IsEnabled() {
			continue
		}
		if a.CRMAttribute == x.ParentLookup {
			c.ps.add(withField(aat, "crmAttribute"), "duplicate target: %s is the expansion's parent lookup", a.CRMAttribute)
		}
		targets.check(c, aat, ca)
		ce.attrs = append(ce.attrs, ca)
	}
	if len(x.MatchKey) == 0 {
		c.ps.add(withField(at, "matchKey"), "an expansion needs a match key so updates never duplicate rows")
	}
	for _, k := range x.MatchKey {
		ca, ok := names[k]
		switch {
		case !ok:
			c.ps.add(withField(at, "matchKey"), "match key %q names no attribute map of this expansion", k)
		case ca == nil:
		case ca.path == nil || ca.def.Action.orCopy() != ActionCopy || ca.def.Direction.orBoth() != Both || !ca.def.IsEnabled():
			c.ps.add(withField(at, "matchKey"), "match key %q must be an enabled copy attribute map travelling both ways", k)
		default:
			ce.key = append(ce.key, ca)
		}
	}
	c.nestedExpansions(set, at, ce, sc, itemPath, itemType, targets)
	return ce
}

// nestedExpansions compiles the expansions inside ce (ExpansionMap.
// Expansions): their paths start at ce's item, their parent lookup points
// at ce's rows, and they travel at most the way ce does.
func (c *compiler) nestedExpansions(set *Set, at Problem, ce *expansion, sc expansionScope, itemPath string, itemType reflect.Type, targets targetSet) {
	x := ce.def
	if len(x.Expansions) == 0 {
		return
	}
	if sc.depth >= MaxExpansionDepth {
		c.ps.add(withField(at, "expansions"), "expansion maps nest at most %d levels deep; %q is at level %d and cannot hold expansion maps", MaxExpansionDepth, x.Name, sc.depth)
		return
	}
	for i := range x.Expansions {
		n := &x.Expansions[i]
		nat := at
		nat.Expansion = at.Expansion + "/" + n.Name
		if n.Name == "" {
			c.ps.add(withField(at, fmt.Sprintf("expansions[%d].name", i)), "name is required")
			continue
		}
		if sc.names[n.Name] {
			c.ps.add(nat, "duplicate expansion map name (names are unique across the entity map, nested ones included)")
			continue
		}
		sc.names[n.Name] = true
		if n.ParentLookup == "" {
			c.ps.add(withField(nat, "parentLookup"), "a nested expansion map needs parentLookup: the lookup of %s that points at the %s row of expansion map %q", orUnnamed(n.CRMEntity), orUnnamed(x.CRMEntity), x.Name)
		}
		ne := c.expansion(set, nat, n, expansionScope{owner: x.CRMEntity, ctxName: itemPath, ctxType: itemType,
			outer: ce.dir(), depth: sc.depth + 1, names: sc.names})
		if ne == nil || !n.IsEnabled() || !x.IsEnabled() {
			continue
		}
		if ne.path != nil {
			key := ne.path.String()
			if prev, dup := targets.fhir[key]; dup {
				c.ps.add(withField(nat, "fhirPath"), "FHIR element %s is already written by %s", key, prev)
			}
			targets.fhir[key] = "expansion map " + strconv.Quote(n.Name)
			if ne.toFHIR {
				// Write-back rebuilds the nested array from its rows; an
				// attribute map of the item writing inside it would
				// fight it.
				first := ne.path.Segments()[0].Name
				for _, a := range ce.attrs {
					if a.toFHIR && a.path != nil && a.path.Segments()[0].Name == first {
						c.ps.add(withField(nat, "fhirPath"), "FHIR element %s is rebuilt from the rows of this expansion map, and attribute map %q of %q writes %s inside it; make that attribute map fhir-to-crm", key, a.def.Name, x.Name, a.path)
					}
				}
			}
		}
		ne.parent = ce
		ce.nested = append(ce.nested, ne)
	}
}

// dir is the direction an expansion travels, after its parent's.
func (x *expansion) dir() Direction {
	switch {
	case x.toCRM && x.toFHIR:
		return Both
	case x.toCRM:
		return FHIRToCRM
	}
	return CRMToFHIR
}

func orUnnamed(s string) string {
	if s == "" {
		return "the child entity"
	}
	return s
}

func segNames(segs []path.Segment) []string {
	out := make([]string, len(segs))
	for i, s := range segs {
		out[i] = s.Name
	}
	return out
}

// lookupCycles reports lookups that form a cycle between different entity
// maps: neither side could then be created before the other. A map that
// looks up its own records (a hierarchy such as Organization.partOf) is
// allowed.
func (c *compiler) lookupCycles(set *Set) {
	edges := map[string][]string{}
	for _, m := range set.maps {
		for _, a := range m.attrs {
			if a.lookup != nil && a.lookup != m {
				edges[m.def.Name] = append(edges[m.def.Name], a.lookup.def.Name)
			}
			if a.byType != nil {
				for _, t := range a.byType.targets {
					if t.m != m {
						edges[m.def.Name] = append(edges[m.def.Name], t.m.def.Name)
					}
				}
			}
		}
	}
	const (
		white = iota
		grey
		black
	)
	color := map[string]int{}
	var stack []string
	reported := map[string]bool{}
	var visit func(n string)
	visit = func(n string) {
		color[n] = grey
		stack = append(stack, n)
		for _, next := range edges[n] {
			switch color[next] {
			case white:
				visit(next)
			case grey:
				i := slices.Index(stack, next)
				cycle := append(slices.Clone(stack[i:]), next)
				key := strings.Join(cycle, ">")
				if !reported[key] {
					reported[key] = true
					c.ps.add(Problem{Map: n, Field: "lookup"}, "lookup cycle: %s", strings.Join(cycle, " → "))
				}
			}
		}
		stack = stack[:len(stack)-1]
		color[n] = black
	}
	for _, m := range set.maps {
		if color[m.def.Name] == white {
			visit(m.def.Name)
		}
	}
}

func checkDefault(a *AttributeMap, vm *valueMap) error {
	_, err := parseDefault(a.CRMType, a.Default)
	return err
}

func (c *compiler) repeats(ctx string, t reflect.Type, segs []path.Segment) bool {
	el, err := resolveR4(ctx, t, segs)
	return err == nil && el.Many
}
