package maps

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"sync"
	"unicode/utf8"

	"github.com/google/uuid"

	"github.com/fhirsync/fhirsync/maps/path"
)

// A concept lookup maps a coded FHIR element (a CodeableConcept) to a
// lookup to a row of the data model's concept table, msemr_codeableconcept,
// and back: an attribute map of action lookup with a concept section
// (AttributeMap.Concept) instead of lookup.entityMap.
//
// The Dynamics 365 healthcare data model (Microsoft Cloud for Healthcare,
// formerly the Healthcare data model) stores most coded elements as such
// lookups: Condition.code is msemr_condition.msemr_conditioncode,
// Procedure.code msemr_procedure.msemr_codeableconcept, the medication of a
// MedicationRequest msemr_medicationrequest.msemr_medicationtypecodeableconcept,
// DiagnosticReport.code msemr_diagnosticreport.msemr_code, categories and
// specialties the lookup of their child rows (Common Data Model entity files
// under github.com/microsoft/CDM schemaDocuments/Healthcare/, rendered at
// https://learn.microsoft.com/common-data-model/schema/core/industrycommon/healthcare/).
// The retired FHIR Sync Agent filled them through attribute maps of action
// type Lookup (https://learn.microsoft.com/dynamics365/industry/healthcare/data-integration-toolkit-attribute-maps);
// maps/starter/SOURCES.md says what is and is not documented of how it did.

// The concept table and its columns, as Foundational/Commoncore/
// CodeableConcept.cdm.json of the data model defines them: the primary key
// msemr_codeableconceptid; msemr_code (text, 100, required), "Code defined
// by a terminology system"; msemr_name (text, 100, required), the primary
// name; msemr_text (text, 2000), "Plain text representation of the
// concept"; msemr_type, a choice of what the concept codes (935000023
// Condition Code, 935000104 Procedure Code, 935000076 Medication Code…).
// The table has no column for the code system and the data model defines
// no alternate key on it.
const (
	ConceptEntity     = "msemr_codeableconcept"
	ConceptEntitySet  = "msemr_codeableconcepts"
	ConceptIDColumn   = "msemr_codeableconceptid"
	ConceptCodeColumn = "msemr_code"
	ConceptNameColumn = "msemr_name"
	ConceptTextColumn = "msemr_text"
	ConceptTypeColumn = "msemr_type"
)

// Concept column lengths (CodeableConcept.cdm.json maximumLength).
const (
	conceptCodeLength = 100
	conceptNameLength = 100
	conceptTextLength = 2000
)

// Concept configures a concept lookup (action lookup with a concept
// section): which concept rows a coded element resolves to, and whether a
// missing row is created.
//
// A row is found by its code and type (msemr_code and msemr_type), the
// two columns the data model gives a concept besides its names: the code
// system is not stored, so the map names the systems it accepts. FHIR→CRM,
// the coding chosen is the first whose system is listed, in the order of
// Systems (any coding with a code when Systems is empty); a concept with
// only a text resolves to no row and clears the lookup. CRM→FHIR, the row's
// code becomes a coding of the first system listed, its name the display
// and its text the concept's text; a resource whose concept already holds
// a coding that resolves to the same row keeps its codings as they are.
type Concept struct {
	// Type is the msemr_type option value of the rows (935000023 for
	// Condition Code); omitted means rows without a type.
	Type *int `yaml:"type,omitempty" json:"type,omitempty"`
	// Systems are the code systems whose codings resolve, in order of
	// preference; the first is the system written back.
	Systems []string `yaml:"systems,omitempty,flow" json:"systems,omitempty"`
	// Create makes a row (code, name, text and type from the resource) when
	// none has the code and type; without it an unknown code is a mapping
	// error, for tables an administrator curates.
	Create bool `yaml:"create,omitempty" json:"create,omitempty"`
	// Navigation is the single-valued navigation property used for
	// "nav@odata.bind"; omitted means the CRM attribute name.
	Navigation string `yaml:"navigation,omitempty" json:"navigation,omitempty"`
}

// ConceptRow is a concept table row: what a coded element resolves to, and
// what write-back reads back.
type ConceptRow struct {
	// ID is the row's msemr_codeableconceptid (empty for a row to create).
	ID string
	// Code, Name and Text are msemr_code, msemr_name and msemr_text.
	Code, Name, Text string
	// Type is msemr_type; nil means none.
	Type *int
}

// ConceptResolver finds the concept table rows of coded elements, and
// creates them where a map allows. A LookupResolver that also implements
// ConceptResolver serves concept lookups; the agent's does, caching what
// it resolves.
type ConceptResolver interface {
	// ConceptID returns the id of the row with want's code and type
	// (matched exactly, code case and all). When there is none and create
	// is set, it creates one from want and returns its id; found is false
	// only when there is none and create is not set. A CRM that refuses
	// the row because it holds the code in another case answers a
	// *ConceptCaseError.
	ConceptID(ctx context.Context, want ConceptRow, create bool) (id string, found bool, err error)
	// Concept reads the row id; found is false when there is none.
	Concept(ctx context.Context, id string) (row ConceptRow, found bool, err error)
}

// ErrUnknownConcept means a coded element's code and type match no concept
// row and the attribute map does not create rows.
var ErrUnknownConcept = errors.New("no concept row has the code and type, and the map does not create rows")

// ConceptCaseError means the CRM holds a concept row whose code differs
// from a coded element's only in case, and refused a row for the
// element's code. FHIR codes are case-sensitive ("ML" and "mL" are two
// codes), but Dataverse compares text as its SQL collation does, without
// regard to case in every language ("Microsoft Dataverse language
// collations", MicrosoftDocs/power-platform
// power-platform/admin/language-collations.md), so the alternate key on
// msemr_code and msemr_type (maps/starter/SOURCES.md) holds one of the
// two. Retrying cannot change that: it is a mapping error. Error names
// neither code (it may reach a process log); Detail does, for the
// decision.
type ConceptCaseError struct {
	// Code is the coded element's code; Held the code of the row the CRM
	// holds; Type the concept type (msemr_type), nil for none.
	Code, Held string
	Type       *int
}

func (e *ConceptCaseError) Error() string {
	return fmt.Sprintf("the CRM already holds a %s row of %s whose code differs from this code only in case, and its alternate key on %s and %s, which compares without regard to case, cannot hold both",
		ConceptEntity, e.typeText(), ConceptCodeColumn, ConceptTypeColumn)
}

// Detail is Error naming the two codes, for the decision's message (a
// code is not patient data).
func (e *ConceptCaseError) Detail() string {
	return fmt.Sprintf("the CRM already holds the %s code %q of %s, which differs from the code %q only in case, and its alternate key on %s and %s, which compares without regard to case, cannot hold both",
		ConceptEntity, e.Held, e.typeText(), e.Code, ConceptCodeColumn, ConceptTypeColumn)
}

func (e *ConceptCaseError) typeText() string {
	if e.Type == nil {
		return "no type"
	}
	return "type " + strconv.Itoa(*e.Type)
}

// CaseVariant returns, of the rows a ConceptFilter query answered, one
// whose code differs from want's only in case (the smallest id, as
// ChooseConceptRow picks), when no row has want's code exactly.
func CaseVariant(rows []ConceptRow, want ConceptRow) (ConceptRow, bool) {
	if _, exact := ChooseConceptRow(rows, want); exact {
		return ConceptRow{}, false
	}
	return smallestID(rows, func(r ConceptRow) bool { return strings.EqualFold(r.Code, want.Code) && sameType(want.Type, r.Type) })
}

// compiledConcept is an attribute map's concept section, compiled.
type compiledConcept struct {
	def *Concept
	// self is set when the attribute map's path is "coding" inside an
	// expansion whose array items are CodeableConcepts: the item is the
	// concept.
	self bool
}

// concept checks the concept section of attribute map a, an action
// lookup that resolves through the concept table.
func (c *compiler) concept(at Problem, a *AttributeMap, ca *attr) {
	if a.CRMType != TypeLookup {
		c.ps.add(withField(at, "crmType"), "action lookup needs crmType lookup, got %s", a.CRMType)
	}
	if a.Lookup != nil {
		c.ps.add(withField(at, "concept"), "a lookup resolves through lookup.entityMap or through concept, not both")
		c.ps.fix("remove lookup: a coded element's row is found in %s by its code and type", ConceptEntity)
	}
	for i, s := range a.Concept.Systems {
		if strings.TrimSpace(s) == "" {
			c.ps.add(withField(at, fmt.Sprintf("concept.systems[%d]", i)), "a code system must not be empty")
		}
	}
	if len(a.Concept.Systems) != len(slicesCompact(a.Concept.Systems)) {
		c.ps.add(withField(at, "concept.systems"), "a code system is listed twice")
	}
	if a.Default != "" {
		c.ps.add(withField(at, "default"), "a concept lookup takes no default: a concept row is found by its code")
	}
	if len(a.FallbackPaths) > 0 {
		c.ps.add(withField(at, "fallbackPaths"), "fallback paths apply to copied values, not to a concept lookup")
	}
	if a.FHIRPath == "" {
		c.ps.add(withField(at, "fhirPath"), "a concept lookup needs a fhirPath to a CodeableConcept (code, category[0]), or coding inside an expansion of CodeableConcepts")
	}
	if a.Concept.Type != nil {
		c.conceptType(at, *a.Concept.Type)
	}
	ca.concept = &compiledConcept{def: a.Concept}
	ca.nav = a.NavigationProperty()
}

// conceptType checks a concept's type against the CRM metadata's options
// of msemr_type: a value it does not define finds no row and fails every
// create.
func (c *compiler) conceptType(at Problem, typ int) {
	ma, ok, checked := c.crmAttr(ConceptEntity, ConceptTypeColumn)
	if !checked || !ok || ma.OptionSet == nil || len(ma.OptionSet.Options) == 0 {
		return
	}
	for _, o := range ma.OptionSet.Options {
		if o.Value == typ {
			return
		}
	}
	c.ps.add(withField(at, "concept.type"), "concept type %d is not an option value of %s.%s", typ, ConceptEntity, ConceptTypeColumn)
}

func slicesCompact(s []string) []string {
	out := slices.Clone(s)
	slices.Sort(out)
	return slices.Compact(out)
}

// conceptPath checks what a concept attribute's path reaches: a single
// CodeableConcept, or "coding" of an expansion item that is one.
func (c *compiler) conceptPath(at Problem, ca *attr, ctxPath string, inItem bool, el r4Element) {
	segs := ca.path.Segments()
	last := segs[len(segs)-1]
	switch {
	case inItem && len(segs) == 1 && last.Name == "coding" && last.Index < 0 && len(last.Where) == 0 && ctxPath == "CodeableConcept":
		ca.concept.self = true
	case el.Type != "CodeableConcept":
		c.ps.add(withField(at, "fhirPath"), "a concept lookup needs a path to a CodeableConcept (or coding inside an expansion of CodeableConcepts); %s reaches a %s", ca.def.FHIRPath, el.Type)
	case el.Many && last.Index < 0 && len(last.Where) == 0:
		c.ps.add(withField(at, "fhirPath"), "%s repeats: name one CodeableConcept ([0]), or map the array with an expansion", ca.def.FHIRPath)
	}
}

// object returns the CodeableConcept the attribute reads on src, or nil.
func (cc *compiledConcept) object(a *attr, src map[string]any) map[string]any {
	if cc.self {
		return src
	}
	v, ok := a.path.Get(src)
	if !ok {
		return nil
	}
	m, _ := v.(map[string]any)
	return m
}

// pick chooses the coding of concept obj that resolves to a row and
// returns the row it asks for; ok is false when no coding qualifies.
func (cc *compiledConcept) pick(obj map[string]any) (ConceptRow, bool) {
	if obj == nil {
		return ConceptRow{}, false
	}
	codings, _ := obj["coding"].([]any)
	usable := func(c map[string]any, system string) bool {
		code, _ := c["code"].(string)
		if code == "" {
			return false
		}
		if system == "" {
			return true
		}
		s, _ := c["system"].(string)
		return s == system
	}
	var chosen map[string]any
	systems := cc.def.Systems
	if len(systems) == 0 {
		systems = []string{""}
	}
search:
	for _, sys := range systems {
		for _, it := range codings {
			if c, ok := it.(map[string]any); ok && usable(c, sys) {
				chosen = c
				break search
			}
		}
	}
	if chosen == nil {
		return ConceptRow{}, false
	}
	code, _ := chosen["code"].(string)
	name, _ := chosen["display"].(string)
	if name == "" {
		name = code
	}
	text, _ := obj["text"].(string)
	return ConceptRow{
		Code: code,
		Name: truncateRunes(name, conceptNameLength),
		Text: truncateRunes(text, conceptTextLength),
		Type: cc.def.Type,
	}, true
}

// system is the code system written back: the first listed.
func (cc *compiledConcept) system() string {
	if len(cc.def.Systems) == 0 {
		return ""
	}
	return cc.def.Systems[0]
}

// conceptToCRM resolves the attribute's concept to a row id and binds the
// lookup in rec, noting a difference from current in changed.
func (m *Mapping) conceptToCRM(ctx context.Context, x *expansion, a *attr, src, rec, current map[string]any, changed *[]string, r LookupResolver) error {
	d := a.def
	cc := a.concept
	bind := a.nav + "@odata.bind"
	var id string
	if want, ok := cc.pick(cc.object(a, src)); ok {
		if utf8.RuneCountInString(want.Code) > conceptCodeLength {
			return m.fail(x, a, fmt.Errorf("the code is longer than the %d characters %s.%s holds", conceptCodeLength, ConceptEntity, ConceptCodeColumn))
		}
		cr, has := r.(ConceptResolver)
		if r == nil || !has {
			return m.fail(x, a, fmt.Errorf("no concept resolver configured"))
		}
		got, found, err := cr.ConceptID(ctx, want, cc.def.Create)
		if err != nil {
			return m.fail(x, a, fmt.Errorf("resolving the concept row: %w", err))
		}
		if !found {
			return m.fail(x, a, ErrUnknownConcept)
		}
		id = got
		rec[bind] = "/" + ConceptEntitySet + "(" + id + ")"
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

// conceptToFHIR rebuilds the attribute's concept in dst from the row the
// CRM record's lookup names, and reports whether dst changed. A concept
// that already resolves to that row is kept as it is (its other codings,
// displays and text included); a cleared lookup removes a concept that
// resolved to a row and keeps one that never did (text only, or codings
// of systems the map does not take).
func (m *Mapping) conceptToFHIR(ctx context.Context, x *expansion, a *attr, p *path.Path, rec, dst map[string]any, r LookupResolver) (bool, error) {
	d := a.def
	cc := a.concept
	if p == nil {
		p = a.path
	}
	var obj map[string]any
	if cc.self {
		obj = dst
	} else if v, ok := p.Get(dst); ok {
		obj, _ = v.(map[string]any)
	}
	old, had := cc.pick(obj)
	id := lookupID(rec, d.CRMAttribute, a.nav)
	if id == "" {
		if d.Required {
			return false, m.fail(x, a, fmt.Errorf("required value is missing"))
		}
		if !had || cc.self {
			return false, nil
		}
		if err := p.Set(dst, nil); err != nil {
			return false, m.fail(x, a, fmt.Errorf("writing %s: %w", p, err))
		}
		return true, nil
	}
	cr, has := r.(ConceptResolver)
	if r == nil || !has {
		return false, m.fail(x, a, fmt.Errorf("no concept resolver configured"))
	}
	row, found, err := cr.Concept(ctx, id)
	if err != nil {
		return false, m.fail(x, a, fmt.Errorf("reading the concept row: %w", err))
	}
	if !found {
		return false, m.fail(x, a, fmt.Errorf("the concept row the lookup names: %w", ErrUnresolvedLookup))
	}
	if had && old.Code == row.Code && sameType(old.Type, row.Type) {
		return false, nil
	}
	coding := map[string]any{"code": row.Code}
	if sys := cc.system(); sys != "" {
		coding["system"] = sys
	}
	if row.Name != "" && row.Name != row.Code {
		coding["display"] = row.Name
	}
	if cc.self {
		dst["coding"] = []any{coding}
		if row.Text != "" {
			dst["text"] = row.Text
		} else {
			delete(dst, "text")
		}
		return true, nil
	}
	next := map[string]any{"coding": []any{coding}}
	if row.Text != "" {
		next["text"] = row.Text
	}
	if err := p.Set(dst, next); err != nil {
		return false, m.fail(x, a, fmt.Errorf("writing %s: %w", p, err))
	}
	return true, nil
}

// sameType compares two msemr_type values; a row read without its type
// (nil) matches any.
func sameType(want, got *int) bool {
	return want == nil || got == nil || *want == *got
}

// ConceptKey is the text a concept row is cached and de-duplicated under:
// its type and its code, exactly.
func ConceptKey(typ *int, code string) string {
	t := ""
	if typ != nil {
		t = strconv.Itoa(*typ)
	}
	return t + "|" + code
}

// MemoryConcepts is a ConceptResolver holding its concept table in memory:
// what samples, previews and tests resolve concepts with, where no CRM is
// written. A row's id is derived from its type and code, so the same
// concept gets the same id in every run; a row is only there once created
// (or added with Put). Safe for concurrent use.
type MemoryConcepts struct {
	mu   sync.Mutex
	rows map[string]ConceptRow // by id
	ids  map[string]string     // ConceptKey → id
}

// NewMemoryConcepts returns an empty concept table.
func NewMemoryConcepts() *MemoryConcepts {
	return &MemoryConcepts{rows: map[string]ConceptRow{}, ids: map[string]string{}}
}

// MemoryConceptID is the id MemoryConcepts gives the row of a type and code.
func MemoryConceptID(typ *int, code string) string {
	return uuid.NewSHA1(uuid.NameSpaceURL, []byte(ConceptEntity+"|"+ConceptKey(typ, code))).String()
}

// Put adds row (its ID derived when empty) and returns its id.
func (mc *MemoryConcepts) Put(row ConceptRow) string {
	mc.mu.Lock()
	defer mc.mu.Unlock()
	if row.ID == "" {
		row.ID = MemoryConceptID(row.Type, row.Code)
	}
	mc.rows[strings.ToLower(row.ID)] = row
	mc.ids[ConceptKey(row.Type, row.Code)] = row.ID
	return row.ID
}

// ConceptID finds the row of want's type and code, creating it when asked.
func (mc *MemoryConcepts) ConceptID(_ context.Context, want ConceptRow, create bool) (string, bool, error) {
	mc.mu.Lock()
	id, ok := mc.ids[ConceptKey(want.Type, want.Code)]
	mc.mu.Unlock()
	if ok {
		return id, true, nil
	}
	if !create {
		return "", false, nil
	}
	want.ID = ""
	return mc.Put(want), true, nil
}

// Concept reads a row by id.
func (mc *MemoryConcepts) Concept(_ context.Context, id string) (ConceptRow, bool, error) {
	mc.mu.Lock()
	defer mc.mu.Unlock()
	row, ok := mc.rows[strings.ToLower(id)]
	return row, ok, nil
}

// Len is the number of rows.
func (mc *MemoryConcepts) Len() int {
	mc.mu.Lock()
	defer mc.mu.Unlock()
	return len(mc.rows)
}

// ConceptColumns is the $select of a concept row read.
func ConceptColumns() []string {
	return []string{ConceptIDColumn, ConceptCodeColumn, ConceptNameColumn, ConceptTextColumn, ConceptTypeColumn}
}

// ConceptFilter is the OData $filter that finds the concept rows of want's
// code and type (msemr_code eq '…' and msemr_type eq N, or eq null for no
// type). Dataverse compares strings without regard to case: pass what it
// answers through ChooseConceptRow.
func ConceptFilter(want ConceptRow) string {
	f := ConceptCodeColumn + " eq '" + strings.ReplaceAll(want.Code, "'", "''") + "'"
	if want.Type != nil {
		return f + " and " + ConceptTypeColumn + " eq " + strconv.Itoa(*want.Type)
	}
	return f + " and " + ConceptTypeColumn + " eq null"
}

// ConceptRowOf reads a concept row from a Web API record.
func ConceptRowOf(rec map[string]any) ConceptRow {
	str := func(k string) string { s, _ := rec[k].(string); return s }
	row := ConceptRow{ID: str(ConceptIDColumn), Code: str(ConceptCodeColumn), Name: str(ConceptNameColumn), Text: str(ConceptTextColumn)}
	if v := rec[ConceptTypeColumn]; v != nil {
		if s, ok := numberText(v); ok {
			if n, err := strconv.Atoi(s); err == nil {
				row.Type = &n
			}
		}
	}
	return row
}

// ChooseConceptRow picks, of the rows a ConceptFilter query answered, the
// one with want's code exactly (FHIR codes are case-sensitive); of several
// (made before an alternate key existed) the one with the smallest id, so
// every reader picks the same.
func ChooseConceptRow(rows []ConceptRow, want ConceptRow) (ConceptRow, bool) {
	return smallestID(rows, func(r ConceptRow) bool { return r.Code == want.Code })
}

// smallestID is, of the rows with an id that keep accepts, the one whose
// id sorts first (ids compared without case).
func smallestID(rows []ConceptRow, keep func(ConceptRow) bool) (ConceptRow, bool) {
	var best ConceptRow
	found := false
	for _, r := range rows {
		if r.ID == "" || !keep(r) {
			continue
		}
		if !found || strings.ToLower(r.ID) < strings.ToLower(best.ID) {
			best, found = r, true
		}
	}
	return best, found
}
