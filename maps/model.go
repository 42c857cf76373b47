package maps

import "slices"

// FormatVersion is the version of the YAML map-set format this package
// reads and writes.
const FormatVersion = 1

// Document is a whole map set in its interchange form: what a YAML file
// holds, what a stored version holds and what the admin app edits. Maps refer
// to each other by name, never by database id, so a document moves between
// installations unchanged.
type Document struct {
	// Format is the document format version (FormatVersion).
	Format int `yaml:"format"`
	// ValueMaps are the option-set ↔ code tables attribute maps refer to.
	ValueMaps []ValueMap `yaml:"valueMaps,omitempty"`
	// EntityMaps pair CRM entities with FHIR resource types.
	EntityMaps []EntityMap `yaml:"entityMaps"`
}

// CRMEntities lists the CRM entities the entity maps cover, each once, in
// document order: the entities whose changes the CRM's service endpoint
// must post (one registered step per entity and message). Expansion-map
// child entities are not among them; their rows sync with their parent.
func (d *Document) CRMEntities() []string {
	var out []string
	for _, em := range d.EntityMaps {
		if em.CRMEntity != "" && !slices.Contains(out, em.CRMEntity) {
			out = append(out, em.CRMEntity)
		}
	}
	return out
}

// EntityMap pairs a CRM entity with a FHIR resource type (DESIGN.md §3).
type EntityMap struct {
	// Name identifies the map within its set; decisions record it.
	Name        string `yaml:"name"`
	Description string `yaml:"description,omitempty"`
	// Enabled false keeps the map in the set but makes the agent skip its
	// records with map_disabled. Omitted means true.
	Enabled *bool `yaml:"enabled,omitempty"`
	// CRMEntity is the entity's logical name (contact); CRMEntitySet its
	// Web API entity set name (contacts).
	CRMEntity    string `yaml:"crmEntity"`
	CRMEntitySet string `yaml:"crmEntitySet"`
	// CRMIDAttribute is the entity's primary key attribute; omitted means
	// CRMEntity + "id" (contactid).
	CRMIDAttribute string `yaml:"crmIdAttribute,omitempty"`
	// FHIRType is the FHIR R4 resource type (Patient).
	FHIRType string `yaml:"fhirType"`
	// FHIRToCRM and CRMToFHIR switch each direction and its operations.
	FHIRToCRM Flow `yaml:"fhirToCRM"`
	CRMToFHIR Flow `yaml:"crmToFHIR"`
	// Correlation says how records on the two sides find each other.
	Correlation Correlation `yaml:"correlation"`
	// FHIRFilter and CRMFilter, when set, restrict which records travel.
	FHIRFilter *FHIRFilter `yaml:"fhirFilter,omitempty"`
	CRMFilter  *CRMFilter  `yaml:"crmFilter,omitempty"`
	// CRMGate is the per-record sync gate: a condition on the CRM record
	// (e.g. msemr_syncenabled eq true) that must hold for the record to
	// sync in either direction. Unlike a filter, which chooses which map
	// applies, a closed gate means "this record opted out" and is decided
	// as record_gate_off.
	CRMGate *CRMFilter `yaml:"crmGate,omitempty"`
	// ConflictPolicy settles an attribute changed on both sides to
	// different values since the last sync; attribute maps may override
	// it. Omitted means last-writer-wins.
	ConflictPolicy ConflictPolicy `yaml:"conflictPolicy,omitempty"`
	// DeletePolicy says what a record's deletion on one side does to its
	// linked record on the other. Omitted means propagate.
	DeletePolicy DeletePolicy   `yaml:"deletePolicy,omitempty"`
	Attributes   []AttributeMap `yaml:"attributes"`
	Expansions   []ExpansionMap `yaml:"expansions,omitempty"`
	// Samples are the map's own test cases.
	Samples []Sample `yaml:"samples,omitempty"`
	// Stream, on an Observation map, aggregates device readings per
	// patient and code instead of sending each one (stream.go).
	Stream *Stream `yaml:"stream,omitempty"`
	// Signal makes the map raise a CRM activity for care coordinators
	// while the FHIR resource's signal holds (signal.go).
	Signal *Signal `yaml:"signal,omitempty"`
}

// Flow switches one direction of an entity map.
type Flow struct {
	Enabled bool `yaml:"enabled"`
	// Operations lists the operations allowed in this direction.
	Operations []Operation `yaml:"operations,flow"`
}

// Allows reports whether the flow is on and permits op.
func (f Flow) Allows(op Operation) bool {
	if !f.Enabled {
		return false
	}
	for _, o := range f.Operations {
		if o == op {
			return true
		}
	}
	return false
}

// Operation is a change a direction may carry to its target.
type Operation string

// Operations.
const (
	OpCreate Operation = "create" // create the target record when none is correlated
	OpUpdate Operation = "update" // update a correlated target record
	OpDelete Operation = "delete" // delete the target when the source is deleted
)

// Correlation links records across the two sides.
type Correlation struct {
	// CRMAttribute holds the FHIR resource id on the CRM record and can be
	// used as an alternate key (msemr_azurefhirid).
	CRMAttribute string `yaml:"crmAttribute"`
	// FHIRIdentifierSystem is the identifier system under which the FHIR
	// resource carries the CRM record id.
	FHIRIdentifierSystem string `yaml:"fhirIdentifierSystem"`
	// BusinessKey, when set, links records created on both sides before
	// they were correlated: see BusinessKey.
	BusinessKey *BusinessKey `yaml:"businessKey,omitempty"`
}

// BusinessKey names a value both sides hold for the same real-world record,
// such as a medical record number. A FHIR resource with the identifier
// (FHIRIdentifierSystem, v) and a CRM record whose CRMAttribute equals v are
// the same record: the agent links them instead of creating a duplicate,
// finding the CRM record by alternate key and the FHIR resource by an
// identifier search. CRMAttribute must therefore be an alternate key of the
// entity (checked when CRM metadata with keys is configured).
type BusinessKey struct {
	// FHIRIdentifierSystem is the identifier system of the key on the FHIR
	// side (identifier.where(system = ...).value).
	FHIRIdentifierSystem string `yaml:"fhirIdentifierSystem"`
	// CRMAttribute is the CRM attribute holding the same value.
	CRMAttribute string `yaml:"crmAttribute"`
}

// FHIRFilter is a FHIRPath boolean; resources for which it is not true are
// skipped with the reason filtered, naming the filter.
type FHIRFilter struct {
	Name       string `yaml:"name"`
	Expression string `yaml:"expression"`
}

// CRMFilter is a condition on one CRM attribute (for instance a per-record
// "sync enabled" flag); records that fail it are skipped as filtered.
type CRMFilter struct {
	Name      string   `yaml:"name"`
	Attribute string   `yaml:"attribute"`
	Operator  FilterOp `yaml:"operator"`
	// Values are compared with the attribute's value in its text form
	// (true, 935000000, a string); eq and ne take one value, in several.
	Values []string `yaml:"values,omitempty,flow"`
}

// FilterOp is a CRM filter comparison.
type FilterOp string

// Filter operators.
const (
	FilterEq      FilterOp = "eq"      // attribute equals Values[0]
	FilterNe      FilterOp = "ne"      // attribute differs from Values[0] (null differs)
	FilterIn      FilterOp = "in"      // attribute equals one of Values
	FilterNotNull FilterOp = "notnull" // attribute has a value
)

// ConflictPolicy decides an attribute changed on both sides, to different
// values, since it was last synced.
type ConflictPolicy string

// Conflict policies.
const (
	ConflictLastWriter ConflictPolicy = "last-writer-wins" // the side modified last wins (default)
	ConflictFHIRWins   ConflictPolicy = "fhir-wins"        // the FHIR server is authoritative
	ConflictCRMWins    ConflictPolicy = "crm-wins"         // the CRM is authoritative
	ConflictHold       ConflictPolicy = "hold"             // neither side is written; a person decides
)

// Valid reports whether p is a known policy or empty (the default).
func (p ConflictPolicy) Valid() bool {
	switch p {
	case "", ConflictLastWriter, ConflictFHIRWins, ConflictCRMWins, ConflictHold:
		return true
	}
	return false
}

// OrDefault returns p, or last-writer-wins when p is empty.
func (p ConflictPolicy) OrDefault() ConflictPolicy {
	if p == "" {
		return ConflictLastWriter
	}
	return p
}

// DeletePolicy says what deleting a linked record on one side does to the
// record on the other side.
type DeletePolicy string

// Delete policies.
const (
	DeletePropagate  DeletePolicy = "propagate"  // delete the other side's record (default)
	DeleteDeactivate DeletePolicy = "deactivate" // CRM: statecode 1 / statuscode 2; FHIR: active false
	DeleteIgnore     DeletePolicy = "ignore"     // leave the other side's record as it is
)

// Valid reports whether p is a known policy or empty (the default).
func (p DeletePolicy) Valid() bool {
	switch p {
	case "", DeletePropagate, DeleteDeactivate, DeleteIgnore:
		return true
	}
	return false
}

// OrDefault returns p, or propagate when p is empty.
func (p DeletePolicy) OrDefault() DeletePolicy {
	if p == "" {
		return DeletePropagate
	}
	return p
}

// Policy is the conflict policy that applies to the attribute map within
// entity map m: its own ConflictPolicy when set, else m's, else
// last-writer-wins.
func (a *AttributeMap) Policy(m *EntityMap) ConflictPolicy {
	if a.ConflictPolicy != "" {
		return a.ConflictPolicy
	}
	return m.ConflictPolicy.OrDefault()
}

// AttributeMap maps one CRM attribute to one FHIR element.
type AttributeMap struct {
	// Name identifies the attribute map within its entity or expansion map;
	// mapping errors name it.
	Name string `yaml:"name"`
	// Enabled false ignores the attribute map; omitted means true.
	Enabled      *bool   `yaml:"enabled,omitempty"`
	CRMAttribute string  `yaml:"crmAttribute"`
	CRMType      CRMType `yaml:"crmType"`
	// FHIRPath is a path-language path relative to the resource (or to the
	// array item, inside an expansion map). It may be empty only for a
	// FHIR→CRM default (a constant).
	FHIRPath string `yaml:"fhirPath,omitempty"`
	// FallbackPaths are tried in order when FHIRPath's leading element (the
	// part up to and including its first where() or [i] step) selects nothing
	// in the resource at hand: the first path whose leading element exists is
	// used to read and to write. Attribute maps that share the same list pick
	// the same element, so a person's name parts all come from the official
	// name, else the usual one, else the first ("name.where(use = 'usual')
	// .given[0]", "name[0].given[0]"), and write back to that same element.
	FallbackPaths []string  `yaml:"fallbackPaths,omitempty"`
	Direction     Direction `yaml:"direction,omitempty"`
	Action        Action    `yaml:"action,omitempty"`
	// Default is used, in the target's type, when the source has no value.
	Default string `yaml:"default,omitempty"`
	// ValueMap names the set's value map (action valueMap).
	ValueMap string `yaml:"valueMap,omitempty"`
	// Lookup configures action lookup.
	Lookup *Lookup `yaml:"lookup,omitempty"`
	// Concept makes action lookup resolve through the data model's concept
	// table instead of an entity map (concept.go).
	Concept *Concept `yaml:"concept,omitempty"`
	// Expression is the FHIRPath expression of action computed.
	Expression string `yaml:"expression,omitempty"`
	// Required makes a missing source value a mapping error.
	Required bool `yaml:"required,omitempty"`
	// MaxLength limits string and memo values; LengthPolicy says what an
	// overlong value does.
	MaxLength    int          `yaml:"maxLength,omitempty"`
	LengthPolicy LengthPolicy `yaml:"lengthPolicy,omitempty"`
	// Round, on a decimal or money attribute, is the number of decimal
	// places a FHIR value keeps when written to the CRM, rounded half away
	// from zero (2.345 to 2 places is 2.35, -2.345 is -2.35); nil leaves the
	// value as FHIR has it. A FHIR decimal may carry any number of places
	// and a CRM column keeps its Precision, so validation against CRM
	// metadata asks for a round no larger than that Precision. Values read
	// back from the CRM are not rounded; a FHIR value that rounds to the
	// CRM's is kept as it is.
	Round *int `yaml:"round,omitempty"`
	// ConflictPolicy overrides the entity map's conflict policy for this
	// attribute; only attribute maps that travel both ways may set it
	// (a one-way attribute has one source, which always wins).
	ConflictPolicy ConflictPolicy `yaml:"conflictPolicy,omitempty"`
}

// Lookup maps a FHIR reference to a CRM lookup through another entity map's
// correlation. A reference names its resource type ("Patient/123"), and a
// lookup through EntityMap only takes references of that map's FHIR type:
// another type is a mapping error, never a look-up among the wrong records.
//
// A reference that may point at several resource types (Appointment's
// participant actor, a Schedule's actor) maps with ByType instead: one CRM
// lookup column per type, as the healthcare data model has them. FHIR→CRM
// the reference's type chooses the column, which is set while the others
// are cleared (and TypeAttribute, when given, gets the type's option value
// through TypeValueMap); CRM→FHIR the reference is rebuilt from whichever
// column is set, and several set is a mapping error. The attribute map's
// crmAttribute is then empty: its columns are the targets'.
type Lookup struct {
	// EntityMap names the entity map of the referenced records.
	EntityMap string `yaml:"entityMap,omitempty"`
	// Navigation is the single-valued navigation property used for
	// "nav@odata.bind"; omitted means the CRM attribute name.
	Navigation string `yaml:"navigation,omitempty"`
	// ByType lists the lookup columns by the referenced resource type.
	ByType []LookupTarget `yaml:"byType,omitempty"`
	// TypeAttribute is an option-set column recording the referenced type
	// (msemr_participantactortype); TypeValueMap translates resource types
	// (its FHIR codes) to its option values. Both or neither.
	TypeAttribute string `yaml:"typeAttribute,omitempty"`
	TypeValueMap  string `yaml:"typeValueMap,omitempty"`
	// OtherTypes says what a reference of a type ByType does not list
	// does. Omitted means error.
	OtherTypes OtherTypes `yaml:"otherTypes,omitempty"`
}

// LookupTarget is one resource type of a lookup by type and the CRM lookup
// column that holds references of that type.
type LookupTarget struct {
	// Type is the FHIR resource type (Patient); it must be EntityMap's.
	Type string `yaml:"type" json:"type"`
	// EntityMap names the entity map of records of that type: Patient and
	// Practitioner may both sync to contact, through different maps.
	EntityMap    string `yaml:"entityMap" json:"entityMap"`
	CRMAttribute string `yaml:"crmAttribute" json:"crmAttribute"`
	// Navigation is the column's single-valued navigation property;
	// omitted means CRMAttribute.
	Navigation string `yaml:"navigation,omitempty" json:"navigation,omitempty"`
}

// OtherTypes is a lookup by type's policy for a reference of a type it
// does not list.
type OtherTypes string

// Policies for references of unlisted types.
const (
	// OtherTypesError makes such a reference a mapping error (default).
	OtherTypesError OtherTypes = "error"
	// OtherTypesSkip clears every column FHIR→CRM and, CRM→FHIR when no
	// column is set, keeps the FHIR reference as it is: the CRM has no
	// place for it, and write-back must not remove it.
	OtherTypesSkip OtherTypes = "skip"
)

// IsByType reports whether the lookup chooses its column by the reference's
// resource type.
func (l *Lookup) IsByType() bool { return l != nil && len(l.ByType) > 0 }

// CRMAttributes lists the CRM columns the attribute map reads and writes:
// its CRMAttribute, or, for a lookup by type, each target's column and the
// type column.
func (a *AttributeMap) CRMAttributes() []string {
	if !a.Lookup.IsByType() {
		return []string{a.CRMAttribute}
	}
	out := make([]string, 0, len(a.Lookup.ByType)+1)
	for _, t := range a.Lookup.ByType {
		out = append(out, t.CRMAttribute)
	}
	if a.Lookup.TypeAttribute != "" {
		out = append(out, a.Lookup.TypeAttribute)
	}
	return out
}

// NavigationProperty is the single-valued navigation property the
// attribute map writes its lookup through ("nav@odata.bind"): its
// concept's or its lookup's Navigation when set, else CRMAttribute. It is
// "" for an attribute map that maps no lookup, and for a lookup by type,
// whose columns each have their own (LookupTarget.NavigationProperty).
func (a *AttributeMap) NavigationProperty() string {
	switch {
	case a.Concept != nil:
		return navigationOf(a.Concept.Navigation, a.CRMAttribute)
	case a.Lookup.IsByType():
		return ""
	case a.Lookup != nil:
		return navigationOf(a.Lookup.Navigation, a.CRMAttribute)
	}
	return ""
}

// NavigationProperty is the single-valued navigation property the target's
// column is written through: Navigation when set, else CRMAttribute.
func (t LookupTarget) NavigationProperty() string {
	return navigationOf(t.Navigation, t.CRMAttribute)
}

// navigationOf is the rule every lookup's navigation property follows: the
// one the map names, else the column's logical name, which is the
// navigation property's name unless the relationship says otherwise
// (contact's parentcustomerid is written through parentcustomerid_account).
func navigationOf(nav, column string) string {
	if nav != "" {
		return nav
	}
	return column
}

// ExpansionMap maps the items of a FHIR array to child CRM rows.
type ExpansionMap struct {
	Name    string `yaml:"name"`
	Enabled *bool  `yaml:"enabled,omitempty"`
	// FHIRPath is the repeating element (identifier).
	FHIRPath string `yaml:"fhirPath"`
	// Exclude leaves array items that match any condition out of the
	// expansion (and untouched on write-back).
	Exclude        []Condition `yaml:"exclude,omitempty"`
	Direction      Direction   `yaml:"direction,omitempty"`
	CRMEntity      string      `yaml:"crmEntity"`
	CRMEntitySet   string      `yaml:"crmEntitySet"`
	CRMIDAttribute string      `yaml:"crmIdAttribute,omitempty"`
	// ParentLookup is the child's lookup attribute pointing at the parent
	// record; ParentNavigation its navigation property (omitted: the same).
	ParentLookup     string `yaml:"parentLookup"`
	ParentNavigation string `yaml:"parentNavigation,omitempty"`
	// MatchKey names the element attribute maps whose values pair an item
	// with a row, so an update never duplicates a row.
	MatchKey []string `yaml:"matchKey,flow"`
	// OnRemove says what happens to rows whose item disappeared.
	OnRemove RemovePolicy `yaml:"onRemove"`
	// Attributes are relative to the array item.
	Attributes []AttributeMap `yaml:"attributes"`
	// Expansions are expansions inside this one: arrays within each item
	// (CareTeam.participant.role) whose rows are children of the item's
	// row. Their FHIRPath is relative to this expansion's item and their
	// ParentLookup points at this expansion's row. They may not nest
	// further (MaxExpansionDepth).
	Expansions []ExpansionMap `yaml:"expansions,omitempty"`
}

// MaxExpansionDepth is how deep expansion maps nest: an entity map's
// expansion (depth 1) may hold expansions (depth 2), which may hold none.
// Every level is one more round of child-row reads per record (the rows
// under each parent row) and one more Content-ID hop in a change set; two
// levels cover the retired agent's deepest map (care team → participant →
// participant role).
const MaxExpansionDepth = 2

// Condition is an equality test on a field of an array item.
type Condition struct {
	Field string `yaml:"field"`
	Value string `yaml:"value"`
}

// RemovePolicy says what removing an array item does to its child row.
type RemovePolicy string

// Remove policies.
const (
	RemoveDelete     RemovePolicy = "delete"     // delete the row
	RemoveDeactivate RemovePolicy = "deactivate" // set statecode 1 (inactive)
)

// ValueMap translates option-set values to codes and back.
type ValueMap struct {
	Name        string `yaml:"name"`
	Description string `yaml:"description,omitempty"`
	// System is the FHIR code system (or value set) of the codes; it is
	// used to check coverage of required bindings.
	System  string          `yaml:"system,omitempty"`
	Entries []ValueMapEntry `yaml:"entries"`
	// Unmapped says what an unlisted value does.
	Unmapped Unmapped `yaml:"unmapped,omitempty"`
	// DefaultCRM and DefaultFHIR are used by Unmapped default.
	DefaultCRM  *int   `yaml:"defaultCRM,omitempty"`
	DefaultFHIR string `yaml:"defaultFHIR,omitempty"`
}

// ValueMapEntry pairs an option-set value with a code. Several codes may
// share a value; CRM→FHIR then uses the first entry.
type ValueMapEntry struct {
	CRM  int    `yaml:"crm"`
	FHIR string `yaml:"fhir"`
}

// Unmapped is a value map's policy for values it does not list.
type Unmapped string

// Unmapped policies.
const (
	UnmappedError   Unmapped = "error"   // a mapping error (default)
	UnmappedSkip    Unmapped = "skip"    // leave the target field unset
	UnmappedDefault Unmapped = "default" // use DefaultCRM / DefaultFHIR
)

// CRMType is a Dataverse attribute type.
type CRMType string

// CRM attribute types.
const (
	TypeString      CRMType = "string"
	TypeMemo        CRMType = "memo"
	TypeInt         CRMType = "int"
	TypeDecimal     CRMType = "decimal"
	TypeMoney       CRMType = "money"
	TypeBool        CRMType = "bool"
	TypeDateOnly    CRMType = "date-only"    // a calendar date, no time zone
	TypeDateTimeUTC CRMType = "date-time"    // an instant, stored in UTC
	TypeOptionSet   CRMType = "option-set"   // one int option value
	TypeMultiSelect CRMType = "multi-select" // comma-separated option values
	TypeLookup      CRMType = "lookup"       // a reference to another record
)

// Direction says which way an attribute or expansion map travels.
type Direction string

// Directions.
const (
	Both      Direction = "both"        // both ways (default)
	FHIRToCRM Direction = "fhir-to-crm" // FHIR → CRM only
	CRMToFHIR Direction = "crm-to-fhir" // CRM → FHIR only (write-back)
)

// Action is what an attribute map does with the value.
type Action string

// Actions.
const (
	ActionCopy     Action = "copy"     // convert and copy (default)
	ActionDefault  Action = "default"  // write Default when the source is empty; a constant when FHIRPath is empty
	ActionValueMap Action = "valueMap" // translate through ValueMap
	ActionLookup   Action = "lookup"   // reference ↔ lookup through Lookup.EntityMap (or Lookup.ByType)
	ActionComputed Action = "computed" // FHIRPath Expression, FHIR → CRM only
)

// LengthPolicy is what an overlong string does.
type LengthPolicy string

// Length policies.
const (
	LengthError    LengthPolicy = "error"    // a mapping error (default)
	LengthTruncate LengthPolicy = "truncate" // cut to MaxLength characters
)

// Sample is one test case of an entity map: an input, and the output or
// decision it must produce. Inputs and outputs are JSON text so numbers keep
// their exact text.
type Sample struct {
	Name      string    `yaml:"name"`
	Direction Direction `yaml:"direction"`
	// Lookups answers the lookup resolver: FHIR reference ↔ CRM id.
	Lookups map[string]string `yaml:"lookups,omitempty"`
	// Input is a FHIR resource (fhir-to-crm) or a CRM state
	// {"record":{...},"children":{"expansion":[...]}} (crm-to-fhir).
	Input string `yaml:"input"`
	// Base is the FHIR resource write-back starts from (crm-to-fhir);
	// Current is the target's current state, for the diff.
	Base    string `yaml:"base,omitempty"`
	Current string `yaml:"current,omitempty"`
	Expect  Expect `yaml:"expect"`
}

// Expect is a sample's expected result.
type Expect struct {
	// Decision is mapped, unchanged, filtered or mapping_error.
	Decision string `yaml:"decision"`
	// Filter names the filter for decision filtered; Attribute names the
	// attribute map for decision mapping_error.
	Filter    string `yaml:"filter,omitempty"`
	Attribute string `yaml:"attribute,omitempty"`
	// Output is the expected CRM result {"record":..,"children":[..]} or
	// FHIR resource, as JSON.
	Output string `yaml:"output,omitempty"`
	// Changed lists the fields expected in the diff, when given.
	Changed []string `yaml:"changed,omitempty,flow"`
}

// Sample decisions.
const (
	DecisionMapped       = "mapped"
	DecisionUnchanged    = "unchanged"
	DecisionFiltered     = "filtered"
	DecisionGateOff      = "record_gate_off"
	DecisionMappingError = "mapping_error"
)

func enabled(b *bool) bool { return b == nil || *b }

// IsEnabled reports whether the entity map is enabled.
func (m *EntityMap) IsEnabled() bool { return enabled(m.Enabled) }

// IsEnabled reports whether the attribute map is enabled.
func (a *AttributeMap) IsEnabled() bool { return enabled(a.Enabled) }

// IsEnabled reports whether the expansion map is enabled.
func (x *ExpansionMap) IsEnabled() bool { return enabled(x.Enabled) }

func (d Direction) orBoth() Direction {
	if d == "" {
		return Both
	}
	return d
}

func (a Action) orCopy() Action {
	if a == "" {
		return ActionCopy
	}
	return a
}

// toCRM / toFHIR report whether a direction carries values that way.
func (d Direction) toCRM() bool  { return d.orBoth() != CRMToFHIR }
func (d Direction) toFHIR() bool { return d.orBoth() != FHIRToCRM }

// IDAttribute is the CRM entity's primary key attribute: CRMIDAttribute,
// or the entity's logical name followed by "id".
func (m *EntityMap) IDAttribute() string { return m.idAttribute() }

func (m *EntityMap) idAttribute() string {
	if m.CRMIDAttribute != "" {
		return m.CRMIDAttribute
	}
	return m.CRMEntity + "id"
}

func (x *ExpansionMap) idAttribute() string {
	if x.CRMIDAttribute != "" {
		return x.CRMIDAttribute
	}
	return x.CRMEntity + "id"
}

func (x *ExpansionMap) parentNavigation() string {
	return navigationOf(x.ParentNavigation, x.ParentLookup)
}
