package maps

import (
	"encoding/json"
	"fmt"
	"maps"
	"math"
	"slices"
	"strconv"
	"strings"
	"unicode/utf8"
)

// CRMMetadata is a snapshot of Dataverse entity metadata, as returned by
// GET /api/data/v9.2/EntityDefinitions?$expand=Attributes,Keys (and, for
// option sets, the OptionSet of Picklist attributes). Validation uses it to check
// entity, attribute and type names when it is configured.
type CRMMetadata struct {
	entities map[string]*crmEntityMeta
}

type crmEntityMeta struct {
	LogicalName        string
	EntitySetName      string
	PrimaryIDAttribute string `json:"PrimaryIdAttribute"`
	Attributes         []crmAttributeMeta
	// Keys are the entity's alternate keys; nil when the snapshot was read
	// without them ($expand=Keys), empty when the entity has none.
	Keys  []crmKeyMeta
	attrs map[string]*crmAttributeMeta
}

type crmKeyMeta struct {
	LogicalName   string
	KeyAttributes []string
}

type crmAttributeMeta struct {
	LogicalName       string
	AttributeType     string
	AttributeTypeName *struct{ Value string }
	Format            string
	DateTimeBehavior  *struct{ Value string }
	MaxLength         int
	// Precision is how many decimal places a Decimal, Double or Money
	// column keeps; PrecisionSource (Money only) says whether that
	// Precision applies (0) or the organization's pricing precision (1) or
	// the record currency's precision (2) does. MinValue and MaxValue bound
	// numeric columns. Nil when the metadata does not say.
	Precision       *int
	PrecisionSource *int
	MinValue        *float64
	MaxValue        *float64
	Targets         []string
	OptionSet       *struct {
		Options []struct{ Value int }
	}
}

// ParseCRMMetadata reads an EntityDefinitions response: either
// {"value":[entity,...]} or a bare array of entities.
func ParseCRMMetadata(data []byte) (*CRMMetadata, error) {
	var list []*crmEntityMeta
	var wrapped struct {
		Value []*crmEntityMeta `json:"value"`
	}
	if err := json.Unmarshal(data, &wrapped); err == nil && wrapped.Value != nil {
		list = wrapped.Value
	} else if err := json.Unmarshal(data, &list); err != nil {
		return nil, fmt.Errorf("reading CRM metadata: %w", err)
	}
	md := &CRMMetadata{entities: map[string]*crmEntityMeta{}}
	for _, e := range list {
		if e == nil || e.LogicalName == "" {
			return nil, fmt.Errorf("reading CRM metadata: an entity has no LogicalName")
		}
		e.attrs = map[string]*crmAttributeMeta{}
		for i := range e.Attributes {
			e.attrs[e.Attributes[i].LogicalName] = &e.Attributes[i]
		}
		md.entities[e.LogicalName] = e
	}
	return md, nil
}

// crmTypeOf maps Dataverse metadata to this package's CRM types.
func (a *crmAttributeMeta) crmTypes() []CRMType {
	behavior := ""
	if a.DateTimeBehavior != nil {
		behavior = a.DateTimeBehavior.Value
	}
	switch a.AttributeType {
	case "String", "EntityName":
		return []CRMType{TypeString}
	case "Memo":
		return []CRMType{TypeMemo, TypeString}
	case "Integer", "BigInt":
		return []CRMType{TypeInt}
	case "Decimal", "Double":
		return []CRMType{TypeDecimal}
	case "Money":
		return []CRMType{TypeMoney, TypeDecimal}
	case "Boolean":
		return []CRMType{TypeBool}
	case "DateTime":
		if behavior == "DateOnly" || (behavior == "" && a.Format == "DateOnly") {
			return []CRMType{TypeDateOnly}
		}
		return []CRMType{TypeDateTimeUTC}
	case "Picklist", "State", "Status":
		return []CRMType{TypeOptionSet}
	case "Lookup", "Customer", "Owner":
		return []CRMType{TypeLookup}
	case "Uniqueidentifier":
		return []CRMType{TypeString}
	case "Virtual":
		if a.AttributeTypeName != nil && a.AttributeTypeName.Value == "MultiSelectPicklistType" {
			return []CRMType{TypeMultiSelect}
		}
	}
	return nil
}

func (c *compiler) crmEntity(at Problem, entity, entitySet string) {
	md := c.opts.CRM
	if md == nil || entity == "" {
		return
	}
	e, ok := md.entities[entity]
	if !ok {
		c.ps.add(withField(at, "crmEntity"), "CRM metadata has no entity %q", entity)
		if near := closest(entity, slices.Collect(maps.Keys(md.entities))); near != "" {
			c.ps.fix("did you mean %q?", near)
		}
		return
	}
	if entitySet != "" && e.EntitySetName != "" && e.EntitySetName != entitySet {
		c.ps.add(withField(at, "crmEntitySet"), "entity %s has entity set %q, not %q", entity, e.EntitySetName, entitySet)
		c.ps.fix("set crmEntitySet to %q", e.EntitySetName)
	}
}

func (c *compiler) crmAttr(entity, attribute string) (*crmAttributeMeta, bool, bool) {
	md := c.opts.CRM
	if md == nil || entity == "" || attribute == "" {
		return nil, false, false
	}
	e, ok := md.entities[entity]
	if !ok {
		return nil, false, false // reported by crmEntity
	}
	a, ok := e.attrs[attribute]
	return a, ok, true
}

// crmMaxLength checks a string attribute map's maxLength against the
// attribute's own limit: a longer value would be rejected by the CRM.
func (c *compiler) crmMaxLength(at Problem, entity string, a *AttributeMap) {
	m, ok, checked := c.crmAttr(entity, a.CRMAttribute)
	if !checked || !ok || m.MaxLength <= 0 || (a.CRMType != TypeString && a.CRMType != TypeMemo) {
		return
	}
	if a.MaxLength > m.MaxLength {
		c.ps.add(withField(at, "maxLength"), "maxLength %d exceeds the CRM attribute's limit of %d", a.MaxLength, m.MaxLength)
		c.ps.fix("set maxLength to %d or less", m.MaxLength)
	}
}

func (c *compiler) crmAttribute(at Problem, entity, attribute string, typ CRMType) {
	a, ok, checked := c.crmAttr(entity, attribute)
	if !checked {
		return
	}
	if !ok {
		c.ps.add(withField(at, "crmAttribute"), "CRM entity %s has no attribute %q", entity, attribute)
		if near := closest(attribute, slices.Collect(maps.Keys(c.opts.CRM.entities[entity].attrs))); near != "" {
			c.ps.fix("did you mean %q?", near)
		}
		return
	}
	if typ == "" {
		return
	}
	types := a.crmTypes()
	if !slices.Contains(types, typ) {
		c.ps.add(withField(at, "crmType"), "type mismatch: CRM attribute %s.%s is %s, the map says %s", entity, attribute, a.AttributeType, typ)
		if len(types) > 0 {
			c.ps.fix("set crmType to %s, or choose an attribute of type %s", types[0], typ)
		}
	}
}

func (c *compiler) crmLookupTarget(at Problem, entity, attribute, target string) {
	a, ok, checked := c.crmAttr(entity, attribute)
	if !checked || !ok || len(a.Targets) == 0 || target == "" {
		return
	}
	if !slices.Contains(a.Targets, target) {
		c.ps.add(withField(at, "crmAttribute"), "lookup %s.%s targets %s, not %s", entity, attribute, strings.Join(a.Targets, ", "), target)
		c.ps.fix("point the lookup at an entity map of %s, or choose a lookup attribute that targets %s", strings.Join(a.Targets, " or "), target)
	}
}

func (c *compiler) crmOptions(at Problem, entity, attribute string, vm *valueMap) {
	a, ok, checked := c.crmAttr(entity, attribute)
	if !checked || !ok || a.OptionSet == nil || len(a.OptionSet.Options) == 0 {
		return
	}
	valid := map[int]bool{}
	for _, o := range a.OptionSet.Options {
		valid[o.Value] = true
	}
	var values []string
	for _, o := range a.OptionSet.Options {
		values = append(values, strconv.Itoa(o.Value))
	}
	for _, e := range vm.def.Entries {
		if !valid[e.CRM] {
			c.ps.add(withField(at, "valueMap"), "value map %q uses option value %d, which %s.%s does not define", vm.def.Name, e.CRM, entity, attribute)
			c.ps.fix("use one of the option values %s", strings.Join(values, ", "))
		}
	}
}

// fhirMaxLength is the longest value a FHIR element of type typ can hold,
// in characters, when the specification bounds it (codes from a required
// binding by the longest code); 0 means unbounded (a string holds up to
// 1 MB).
func fhirMaxLength(typ string, codes []string) int {
	switch typ {
	case "id":
		return 64
	case "uuid":
		return len("urn:uuid:") + 36
	case "code":
		n := 0
		for _, c := range codes {
			n = max(n, utf8.RuneCountInString(c))
		}
		return n
	}
	return 0
}

// crmFHIRLength checks that a string or memo attribute written from FHIR
// can hold what the FHIR element can: either the element is bounded within
// the CRM's limit, or the map declares a maxLength (with lengthPolicy
// error, the record fails naming the attribute map; with truncate, the
// value is cut). Without either the CRM rejects the record.
func (c *compiler) crmFHIRLength(at Problem, entity string, a *AttributeMap, el r4Element, toCRM bool) {
	m, ok, checked := c.crmAttr(entity, a.CRMAttribute)
	if !checked || !ok || !toCRM || m.MaxLength <= 0 || a.MaxLength > 0 || (a.CRMType != TypeString && a.CRMType != TypeMemo) {
		return
	}
	if a.Action.orCopy() != ActionCopy && a.Action.orCopy() != ActionDefault {
		return
	}
	bound := fhirMaxLength(el.Type, el.Codes)
	if bound > 0 && bound <= m.MaxLength {
		return
	}
	can := "any length"
	if bound > 0 {
		can = fmt.Sprintf("up to %d characters", bound)
	}
	c.ps.add(withField(at, "maxLength"), "FHIR %s at %s can hold %s; CRM attribute %s.%s holds %d", el.Type, a.FHIRPath, can, entity, a.CRMAttribute, m.MaxLength)
	c.ps.fix("declare maxLength: %d with lengthPolicy: truncate (or error, to fail such records by name)", m.MaxLength)
}

// fhirIntRange is the range of a FHIR R4 integer type
// (https://hl7.org/fhir/R4/datatypes.html#primitive: integer is a signed
// 32-bit number, positiveInt from 1, unsignedInt from 0); ok is false for
// other types.
func fhirIntRange(typ string) (lo, hi float64, ok bool) {
	switch typ {
	case "integer":
		return math.MinInt32, math.MaxInt32, true
	case "positiveInt":
		return 1, math.MaxInt32, true
	case "unsignedInt":
		return 0, math.MaxInt32, true
	}
	return 0, 0, false
}

// crmFHIRNumber checks that an integer column can hold what the FHIR
// element can: a FHIR integer type written to an Integer column must fit
// the column's MinValue..MaxValue (IntegerAttributeMetadata MinValue and
// MaxValue,
// https://learn.microsoft.com/en-us/dotnet/api/microsoft.xrm.sdk.metadata.integerattributemetadata),
// and a BigInt column read into a FHIR integer must not hold more than 32
// bits. A FHIR decimal has no bound on its places
// (https://hl7.org/fhir/R4/datatypes.html#decimal), so a FHIR decimal
// written to a Decimal, Double or Money column needs a round no larger
// than the places the column keeps (see columnPlaces).
func (c *compiler) crmFHIRNumber(at Problem, entity string, a *AttributeMap, el r4Element, toCRM, toFHIR bool) {
	m, ok, checked := c.crmAttr(entity, a.CRMAttribute)
	if !checked || !ok {
		return
	}
	if act := a.Action.orCopy(); act != ActionCopy && act != ActionDefault {
		return
	}
	where := fmt.Sprintf("%s.%s", entity, a.CRMAttribute)
	switch m.AttributeType {
	case "Integer", "BigInt":
		lo, hi, ok := fhirIntRange(el.Type)
		if !ok {
			return
		}
		if toCRM && ((m.MinValue != nil && *m.MinValue > lo) || (m.MaxValue != nil && *m.MaxValue < hi)) {
			c.ps.add(withField(at, "crmAttribute"), "FHIR %s at %s can hold %.0f to %.0f; CRM attribute %s accepts %s to %s, and refuses the rest", el.Type, a.FHIRPath, lo, hi, where, bound(m.MinValue), bound(m.MaxValue))
			c.ps.fix("widen the column's range to at least %.0f to %.0f, or choose a column that has it", lo, hi)
		}
		if toFHIR && m.AttributeType == "BigInt" {
			c.ps.add(withField(at, "crmAttribute"), "CRM attribute %s is a 64-bit BigInt; FHIR %s at %s holds 32 bits (up to %.0f)", where, el.Type, a.FHIRPath, hi)
			c.ps.fix("set direction: fhir-to-crm, or choose an Integer column")
		}
	case "Decimal", "Double", "Money":
		if !toCRM || el.Type != "decimal" {
			return
		}
		places, known, what := columnPlaces(m)
		if !known {
			return
		}
		switch {
		case a.Round == nil:
			c.ps.add(withField(at, "round"), "FHIR decimal at %s can hold any number of decimal places; CRM attribute %s keeps %s", a.FHIRPath, where, what)
		case *a.Round > places:
			c.ps.add(withField(at, "round"), "round: %d keeps more decimal places than CRM attribute %s keeps (%s)", *a.Round, where, what)
		default:
			return
		}
		c.ps.fix("declare round: %d or choose a column with more precision", places)
	}
}

// maxMoneyPlaces is the most decimal places a Money column keeps, whatever
// its precision source: a column's own Precision, the organization's
// pricing decimal precision and a currency's precision each range from 0
// to 4 (https://learn.microsoft.com/en-us/dynamics365/sales/decimal-precision-currency-pricing).
const maxMoneyPlaces = 4

// columnPlaces is how many decimal places a Decimal, Double or Money
// column keeps, whether the metadata says (known), and the places in
// words for a problem. A Decimal or Double column keeps its Precision
// (unknown when the metadata leaves it out). A Money column's
// PrecisionSource
// (https://learn.microsoft.com/en-us/dotnet/api/microsoft.xrm.sdk.metadata.moneyattributemetadata.precisionsource)
// says where its places come from: 0, the column's Precision (at most
// 4); 1, the organization's pricing decimal precision; 2 (also when the
// metadata leaves it out, as the property defaults to 2), the precision
// of each record's currency. Entity metadata holds neither of the last
// two, and they can change without the column changing, so for sources 1
// and 2 a round of at most 4 places is accepted: the CRM may keep fewer,
// and then rounds the value again to its own places.
func columnPlaces(m *crmAttributeMeta) (places int, known bool, what string) {
	if m.AttributeType != "Money" {
		if m.Precision == nil {
			return 0, false, ""
		}
		return *m.Precision, true, fmt.Sprintf("%d decimal places (Precision)", *m.Precision)
	}
	source := 2
	if m.PrecisionSource != nil {
		source = *m.PrecisionSource
	}
	switch source {
	case 0:
		if m.Precision == nil {
			return maxMoneyPlaces, true, fmt.Sprintf("at most %d decimal places (Money)", maxMoneyPlaces)
		}
		p := min(*m.Precision, maxMoneyPlaces)
		return p, true, fmt.Sprintf("%d decimal places (Precision)", p)
	case 1:
		return maxMoneyPlaces, true, fmt.Sprintf("the organization's pricing decimal precision, at most %d decimal places", maxMoneyPlaces)
	default:
		return maxMoneyPlaces, true, fmt.Sprintf("its record currency's precision, at most %d decimal places", maxMoneyPlaces)
	}
}

// bound renders a metadata bound, "any" when absent.
func bound(v *float64) string {
	if v == nil {
		return "any"
	}
	return strconv.FormatFloat(*v, 'f', -1, 64)
}

// closest returns the candidate nearest to name by edit distance, when it
// is near enough to be a likely misspelling (or contains name, or is
// contained in it); "" otherwise.
func closest(name string, candidates []string) string {
	slices.Sort(candidates)
	best, bestD := "", -1
	for _, cand := range candidates {
		d := editDistance(strings.ToLower(name), strings.ToLower(cand))
		if bestD < 0 || d < bestD {
			best, bestD = cand, d
		}
	}
	if best == "" {
		return ""
	}
	if bestD <= max(2, utf8.RuneCountInString(name)/3) {
		return best
	}
	for _, cand := range candidates {
		if len(name) >= 4 && (strings.Contains(cand, name) || strings.Contains(name, cand)) {
			return cand
		}
	}
	return ""
}

// editDistance is the Levenshtein distance between a and b, in runes.
func editDistance(a, b string) int {
	ra, rb := []rune(a), []rune(b)
	prev := make([]int, len(rb)+1)
	cur := make([]int, len(rb)+1)
	for j := range prev {
		prev[j] = j
	}
	for i := 1; i <= len(ra); i++ {
		cur[0] = i
		for j := 1; j <= len(rb); j++ {
			cost := 1
			if ra[i-1] == rb[j-1] {
				cost = 0
			}
			cur[j] = min(prev[j]+1, cur[j-1]+1, prev[j-1]+cost)
		}
		prev, cur = cur, prev
	}
	return prev[len(rb)]
}
