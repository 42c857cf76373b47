package msaimport

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"slices"
	"sort"
	"strconv"
	"strings"

	"github.com/fhirsync/fhirsync/maps"
)

// Options configures Convert.
type Options struct {
	// CRM, when set, is the target environment's metadata: attribute types
	// come from it, and maps of tables and columns it lacks are listed as
	// not imported instead of written.
	CRM *maps.CRMMetadata
}

// Status is what became of one of the agent's maps.
type Status string

// Statuses.
const (
	Translated    Status = "translated"     // written as an equivalent fhirsync map
	ReadOnly      Status = "read-only"      // written as a computed (FHIR → CRM) value; write-back lost
	NotTranslated Status = "not-translated" // left out; Reasons say why
)

// Item is the fate of one attribute map, or of a whole entity or expansion
// map (Attribute empty).
type Item struct {
	// EntityMap and Expansion name the fhirsync maps; Source the agent's
	// record (its name, or table and line).
	EntityMap string `json:"entityMap"`
	Expansion string `json:"expansion,omitempty"`
	Attribute string `json:"attribute,omitempty"`
	Source    string `json:"source"`
	JSONPath  string `json:"jsonPath,omitempty"`
	FHIRPath  string `json:"fhirPath,omitempty"`
	Status    Status `json:"status"`
	// Reasons say why the item is not translated or read-only; Notes are
	// differences a reviewer should check in what was translated.
	Reasons []string `json:"reasons,omitempty"`
	Notes   []string `json:"notes,omitempty"`
}

// Report lists what the import did with each of the agent's maps.
type Report struct {
	Items []Item `json:"items"`
}

// Counts returns how many attribute maps were translated (fully or
// read-only) and how many were not.
func (r *Report) Counts() (translated, readOnly, notTranslated int) {
	for _, it := range r.Items {
		if it.Attribute == "" {
			continue
		}
		switch it.Status {
		case Translated:
			translated++
		case ReadOnly:
			readOnly++
		case NotTranslated:
			notTranslated++
		}
	}
	return
}

// Write prints the report for a person: every item that is not plainly
// translated, then the counts.
func (r *Report) Write(w io.Writer) error {
	var b strings.Builder
	for _, it := range r.Items {
		if it.Status == Translated && len(it.Notes) == 0 {
			continue
		}
		where := "entity map " + it.EntityMap
		if it.Expansion != "" {
			where += " / expansion " + it.Expansion
		}
		if it.Attribute != "" {
			where += " / attribute " + it.Attribute
		}
		fmt.Fprintf(&b, "%s: %s (%s", it.Status, where, it.Source)
		if it.JSONPath != "" {
			fmt.Fprintf(&b, ", %s", it.JSONPath)
		}
		if it.FHIRPath != "" {
			fmt.Fprintf(&b, " -> %s", it.FHIRPath)
		}
		b.WriteString(")\n")
		for _, s := range it.Reasons {
			fmt.Fprintf(&b, "    reason: %s\n", s)
		}
		for _, s := range it.Notes {
			fmt.Fprintf(&b, "    note: %s\n", s)
		}
	}
	t, ro, nt := r.Counts()
	fmt.Fprintf(&b, "attribute maps: %d translated, %d read-only, %d not translated\n", t, ro, nt)
	_, err := io.WriteString(w, b.String())
	return err
}

// Convert turns the agent's entity and attribute maps into a fhirsync map
// set that validates (with opts.CRM when given), and a report of what it
// left out and why.
func Convert(entities []EntityMapRow, attributes []AttributeMapRow, opts Options) (*maps.Document, *Report, error) {
	c := &converter{opts: opts, report: &Report{}, names: map[string]bool{}}
	doc := c.build(entities, attributes)
	if err := c.settle(doc); err != nil {
		return nil, nil, err
	}
	return doc, c.report, nil
}

type converter struct {
	opts   Options
	report *Report
	names  map[string]bool
	// items indexes report items by map / expansion / attribute name.
	items     map[[3]string]int
	valueMaps []maps.ValueMap
}

func (c *converter) add(it Item) {
	if c.items == nil {
		c.items = map[[3]string]int{}
	}
	c.items[[3]string{it.EntityMap, it.Expansion, it.Attribute}] = len(c.report.Items)
	c.report.Items = append(c.report.Items, it)
}

// mapName is the fhirsync name of an entity map: the FHIR type, and the
// table when it is not simply msemr_<type>.
func mapName(fhirType, entity string) string {
	t := kebab(fhirType)
	e := strings.TrimPrefix(entity, "msemr_")
	if e == strings.ToLower(fhirType) {
		return t
	}
	return t + "-" + strings.ReplaceAll(e, "_", "-")
}

func kebab(s string) string {
	var b strings.Builder
	for i, r := range s {
		if r >= 'A' && r <= 'Z' {
			if i > 0 {
				b.WriteByte('-')
			}
			r += 'a' - 'A'
		}
		b.WriteRune(r)
	}
	return b.String()
}

func (c *converter) unique(name string) string {
	n := name
	for i := 2; c.names[n]; i++ {
		n = fmt.Sprintf("%s-%d", name, i)
	}
	c.names[n] = true
	return n
}

func source(what string, line int, name string) string {
	if name != "" {
		return fmt.Sprintf("%s %q, line %d", what, name, line)
	}
	return fmt.Sprintf("%s line %d", what, line)
}

// root is an entity map being built with the agent's record it came from.
type root struct {
	row *EntityMapRow
	m   *maps.EntityMap
}

func (c *converter) build(entities []EntityMapRow, attributes []AttributeMapRow) *maps.Document {
	doc := &maps.Document{Format: maps.FormatVersion}
	var roots []*root
	byRow := map[*EntityMapRow]*root{}
	for i := range entities {
		row := &entities[i]
		if row.Expand {
			continue
		}
		name := c.unique(mapName(row.FHIRType, row.Entity))
		if reason := c.missingTable(row.Entity); reason != "" {
			c.add(Item{EntityMap: name, Source: source("entity maps", row.Line, row.Name), Status: NotTranslated, Reasons: []string{reason}})
			continue
		}
		m := &maps.EntityMap{
			Name:         name,
			Description:  fmt.Sprintf("Imported from the FHIR Sync Agent's entity map %s.", strings.TrimSpace(row.Entity+" ↔ "+row.FHIRType)),
			CRMEntity:    row.Entity,
			CRMEntitySet: c.entitySet(row.Entity),
			FHIRType:     row.FHIRType,
			FHIRToCRM:    maps.Flow{Enabled: true, Operations: []maps.Operation{maps.OpCreate, maps.OpUpdate}},
			CRMToFHIR:    maps.Flow{Enabled: row.WriteBack, Operations: messages(row.Messages)},
			Correlation: maps.Correlation{
				CRMAttribute:         "msemr_azurefhirid",
				FHIRIdentifierSystem: "urn:fhirsync:crm:" + row.Entity + "id",
			},
		}
		if row.Disabled {
			off := false
			m.Enabled = &off
		}
		r := &root{row: row, m: m}
		roots = append(roots, r)
		byRow[row] = r
		c.add(Item{EntityMap: name, Source: source("entity maps", row.Line, row.Name), Status: Translated})
	}
	// Attribute maps go to their entity map.
	byEntityRow := map[*EntityMapRow][]*AttributeMapRow{}
	for i := range attributes {
		a := &attributes[i]
		em, reason := owner(entities, a)
		if em == nil {
			c.add(Item{EntityMap: a.Entity, Attribute: a.Attribute, Source: source("attribute maps", a.Line, ""), JSONPath: a.JSONPath, Status: NotTranslated, Reasons: []string{reason}})
			continue
		}
		byEntityRow[em] = append(byEntityRow[em], a)
	}
	for _, r := range roots {
		for _, a := range c.polymorphic(r.m.Name, "", byEntityRow[r.row]) {
			if am, ok := c.attribute(r.m.Name, "", r.m.CRMEntity, a, roots); ok {
				r.m.Attributes = append(r.m.Attributes, am)
			}
		}
	}
	// Expansion maps go to the root map of the same FHIR resource.
	for i := range entities {
		row := &entities[i]
		if !row.Expand {
			continue
		}
		var parents []*root
		for _, r := range roots {
			if r.row.FHIRType == row.FHIRType {
				parents = append(parents, r)
			}
		}
		xname := strings.TrimPrefix(row.Entity, "msemr_")
		src := source("entity maps", row.Line, row.Name)
		if len(parents) != 1 {
			reason := fmt.Sprintf("no imported root entity map for the FHIR resource %s to expand", row.FHIRType)
			if len(parents) > 1 {
				reason = fmt.Sprintf("%d root entity maps for the FHIR resource %s; the agent allows one", len(parents), row.FHIRType)
			}
			c.notImported(row.FHIRType, xname, src, reason, byEntityRow[row])
			continue
		}
		p := parents[0]
		var xnotes []string
		x, reasons := c.expansion(p.m, row, xname, &xnotes)
		if len(reasons) > 0 {
			c.notImported(p.m.Name, xname, src, strings.Join(reasons, "; "), byEntityRow[row])
			continue
		}
		c.add(Item{EntityMap: p.m.Name, Expansion: x.Name, Source: src, Status: Translated})
		for _, a := range c.polymorphic(p.m.Name, x.Name, byEntityRow[row]) {
			if am, ok := c.attribute(p.m.Name, x.Name, row.Entity, a, roots); ok {
				x.Attributes = append(x.Attributes, am)
			}
		}
		for _, am := range x.Attributes {
			if (am.Action == "" || am.Action == maps.ActionCopy) && am.CRMType != maps.TypeLookup {
				x.MatchKey = append(x.MatchKey, am.Name)
			}
		}
		if len(x.MatchKey) == 0 {
			for _, am := range x.Attributes {
				x.MatchKey = append(x.MatchKey, am.Name)
			}
		}
		it := &c.report.Items[c.items[[3]string{p.m.Name, x.Name, ""}]]
		it.Notes = append(xnotes, fmt.Sprintf("match key %v chosen from the translated attribute maps; removed items delete their rows", x.MatchKey))
		p.m.Expansions = append(p.m.Expansions, *x)
	}
	for _, r := range roots {
		doc.EntityMaps = append(doc.EntityMaps, *r.m)
	}
	return doc
}

// polymorphic lists, and leaves out, the lookups of one map that share a
// JSON path: the agent picked among them by the type of the referenced
// resource (a care team member is a Practitioner, a Patient, an
// Organization...), which one fhirsync lookup cannot do.
func (c *converter) polymorphic(mapName, xname string, attrs []*AttributeMapRow) []*AttributeMapRow {
	count := map[string]int{}
	for _, a := range attrs {
		if normalizeHeader(a.Action) == "lookup" && !a.Disabled {
			count[a.JSONPath]++
		}
	}
	out := attrs[:0:0]
	for _, a := range attrs {
		if n := count[a.JSONPath]; n > 1 && normalizeHeader(a.Action) == "lookup" && !a.Disabled {
			c.add(Item{EntityMap: mapName, Expansion: xname, Attribute: a.Attribute, Source: source("attribute maps", a.Line, ""), JSONPath: a.JSONPath, Status: NotTranslated,
				Reasons: []string{fmt.Sprintf("%d lookups share %s: the agent chose one by the referenced resource's type, and a fhirsync lookup resolves through one entity map, so none of them is carried over; map the reference by hand", n, a.JSONPath)}})
			continue
		}
		out = append(out, a)
	}
	return out
}

// notImported lists an expansion map and each of its attribute maps.
func (c *converter) notImported(mapName, xname, src, reason string, attrs []*AttributeMapRow) {
	c.add(Item{EntityMap: mapName, Expansion: xname, Source: src, Status: NotTranslated, Reasons: []string{reason}})
	for _, a := range attrs {
		c.add(Item{EntityMap: mapName, Expansion: xname, Attribute: a.Attribute, Source: source("attribute maps", a.Line, ""), JSONPath: a.JSONPath, Status: NotTranslated, Reasons: []string{"its expansion map is not imported"}})
	}
}

func (c *converter) expansion(parent *maps.EntityMap, row *EntityMapRow, xname string, notes *[]string) (*maps.ExpansionMap, []string) {
	var reasons []string
	if r := c.missingTable(row.Entity); r != "" {
		return nil, []string{r}
	}
	x := &maps.ExpansionMap{
		Name: xname, CRMEntity: row.Entity, CRMEntitySet: c.entitySet(row.Entity),
		ParentLookup: row.ParentLink, OnRemove: maps.RemoveDelete,
	}
	if row.Disabled {
		off := false
		x.Enabled = &off
	}
	switch tr := Translate(row.Element); {
	case row.Element == "":
		reasons = append(reasons, "the export names no FHIR element to expand (column Resource Element)")
	case !tr.Writable || strings.ContainsAny(tr.FHIRPath, "[("):
		reasons = append(reasons, fmt.Sprintf("the expanded element %q is not a plain element path", row.Element))
	default:
		x.FHIRPath = tr.FHIRPath
	}
	if x.ParentLookup == "" && c.opts.CRM != nil {
		// The lookup column of the child table that targets the parent's
		// table: the only one, or the one named after the parent
		// (msemr_contact, msemr_careteam).
		if l, ok := parentLink(c.opts.CRM.LookupsTo(row.Entity, parent.CRMEntity), parent.CRMEntity); ok {
			x.ParentLookup = l
			*notes = append(*notes, fmt.Sprintf("parent link attribute %s taken from the CRM metadata (the export names none)", l))
		}
	}
	if x.ParentLookup == "" {
		reasons = append(reasons, "the export names no parent link attribute (and the CRM metadata has no lookup from the child table to the parent's that is the only one or named after the parent)")
	} else if c.opts.CRM != nil {
		if _, ok := c.opts.CRM.AttributeType(row.Entity, x.ParentLookup); !ok {
			reasons = append(reasons, fmt.Sprintf("the parent link attribute %s.%s is not in the CRM metadata", row.Entity, x.ParentLookup))
		}
	}
	return x, reasons
}

func parentLink(cands []string, parent string) (string, bool) {
	if len(cands) == 1 {
		return cands[0], true
	}
	var named []string
	for _, l := range cands {
		if l == parent || l == "msemr_"+strings.TrimPrefix(parent, "msemr_") {
			named = append(named, l)
		}
	}
	if len(named) == 1 {
		return named[0], true
	}
	return "", false
}

func (c *converter) missingTable(entity string) string {
	if c.opts.CRM != nil && !c.opts.CRM.HasEntity(entity) {
		return fmt.Sprintf("the table %s is not in the CRM metadata", entity)
	}
	return ""
}

func (c *converter) entitySet(entity string) string {
	if c.opts.CRM != nil {
		if s, ok := c.opts.CRM.EntitySet(entity); ok {
			return s
		}
	}
	// Dataverse's default plural; check it against the environment.
	if strings.HasSuffix(entity, "s") {
		return entity + "es"
	}
	if strings.HasSuffix(entity, "y") && !strings.HasSuffix(entity, "ay") && !strings.HasSuffix(entity, "ey") {
		return strings.TrimSuffix(entity, "y") + "ies"
	}
	return entity + "s"
}

// messages reads Supported Messages: Create, Update or both.
func messages(s string) []maps.Operation {
	l := strings.ToLower(s)
	var ops []maps.Operation
	if strings.Contains(l, "create") || strings.Contains(l, "both") {
		ops = append(ops, maps.OpCreate)
	}
	if strings.Contains(l, "update") || strings.Contains(l, "both") {
		ops = append(ops, maps.OpUpdate)
	}
	if len(ops) == 0 {
		ops = []maps.Operation{maps.OpCreate, maps.OpUpdate}
	}
	return ops
}

// owner finds the entity map record an attribute map belongs to.
func owner(entities []EntityMapRow, a *AttributeMapRow) (*EntityMapRow, string) {
	if a.EntityMap != "" {
		for i := range entities {
			if strings.EqualFold(entities[i].Name, a.EntityMap) {
				return &entities[i], ""
			}
		}
	}
	var found []*EntityMapRow
	for i := range entities {
		e := &entities[i]
		if e.Entity == a.Entity && (a.FHIRType == "" || strings.EqualFold(e.FHIRType, a.FHIRType)) {
			found = append(found, e)
		}
	}
	switch len(found) {
	case 1:
		return found[0], ""
	case 0:
		return nil, fmt.Sprintf("no entity map %q for table %s in the entity maps export", a.EntityMap, a.Entity)
	}
	return nil, fmt.Sprintf("table %s has %d entity maps; the export's Update Service Entity Map (%q) names none of them", a.Entity, len(found), a.EntityMap)
}

var actionNames = map[string]maps.Action{
	"copydata": maps.ActionCopy, "copy": maps.ActionCopy,
	"setdefaultvalue": maps.ActionDefault, "defaultvalue": maps.ActionDefault,
	"mappedvalue": maps.ActionValueMap, "valuemap": maps.ActionValueMap,
	"lookup": maps.ActionLookup,
}

var typeNames = map[string]maps.CRMType{
	"string": maps.TypeString, "singlelineoftext": maps.TypeString, "text": maps.TypeString, "uniqueidentifier": maps.TypeString,
	"memo": maps.TypeMemo, "multiplelinesoftext": maps.TypeMemo,
	"integer": maps.TypeInt, "wholenumber": maps.TypeInt, "decimal": maps.TypeDecimal, "decimalnumber": maps.TypeDecimal,
	"money": maps.TypeMoney, "currency": maps.TypeMoney, "boolean": maps.TypeBool, "twooptions": maps.TypeBool, "yesno": maps.TypeBool,
	"dateonly": maps.TypeDateOnly, "datetime": maps.TypeDateTimeUTC, "dateandtime": maps.TypeDateTimeUTC,
	"picklist": maps.TypeOptionSet, "optionset": maps.TypeOptionSet, "choice": maps.TypeOptionSet,
	"lookup": maps.TypeLookup, "customer": maps.TypeLookup, "owner": maps.TypeLookup,
	"multiselectpicklist": maps.TypeMultiSelect, "choices": maps.TypeMultiSelect,
}

// attribute translates one attribute map; false means it is listed as not
// translated.
func (c *converter) attribute(mapName, xname, entity string, a *AttributeMapRow, roots []*root) (maps.AttributeMap, bool) {
	it := Item{EntityMap: mapName, Expansion: xname, Attribute: a.Attribute, Source: source("attribute maps", a.Line, ""), JSONPath: a.JSONPath}
	fail := func(reason string) (maps.AttributeMap, bool) {
		it.Status = NotTranslated
		it.Reasons = append(it.Reasons, reason)
		c.add(it)
		return maps.AttributeMap{}, false
	}
	am := maps.AttributeMap{Name: a.Attribute, CRMAttribute: a.Attribute, Required: a.Required}
	if a.Disabled {
		off := false
		am.Enabled = &off
	}
	action, ok := actionNames[normalizeHeader(a.Action)]
	if !ok {
		return fail(fmt.Sprintf("action type %q is not one the agent documents (Copy Data, Set Default Value, Mapped Value, Lookup)", a.Action))
	}
	// The attribute's CRM type.
	switch {
	case c.opts.CRM != nil:
		t, ok := c.opts.CRM.AttributeType(entity, a.Attribute)
		if !ok {
			return fail(fmt.Sprintf("the column %s.%s is not in the CRM metadata", entity, a.Attribute))
		}
		am.CRMType = t
		if n := c.opts.CRM.MaxLength(entity, a.Attribute); n > 0 && (t == maps.TypeString || t == maps.TypeMemo) {
			// An overlong value fails its record by name rather than
			// losing characters silently.
			am.MaxLength, am.LengthPolicy = n, maps.LengthError
		}
	case a.Type != "":
		t, ok := typeNames[normalizeHeader(a.Type)]
		if !ok {
			return fail(fmt.Sprintf("attribute type %q has no fhirsync type", a.Type))
		}
		am.CRMType = t
	default:
		switch action {
		case maps.ActionLookup:
			am.CRMType = maps.TypeLookup
		case maps.ActionValueMap:
			am.CRMType = maps.TypeOptionSet
		default:
			am.CRMType = maps.TypeString
		}
		it.Notes = append(it.Notes, fmt.Sprintf("CRM type %s guessed from the action; give --crm-metadata to read it from the environment", am.CRMType))
	}
	if !a.WriteBack {
		am.Direction = maps.FHIRToCRM
	}
	// The path.
	var tr Translation
	if a.JSONPath != "" && action != maps.ActionDefault {
		tr = Translate(a.JSONPath)
		it.Notes = append(it.Notes, tr.Notes...)
		if tr.FHIRPath == "" {
			return fail(tr.Reason)
		}
		it.FHIRPath = tr.FHIRPath
	}
	switch action {
	case maps.ActionDefault:
		if a.Default == "" {
			return fail("Set Default Value without a default value in the export")
		}
		// "Always set a default value in Dataverse" (the attribute maps
		// page): a constant, written FHIR → CRM.
		am.Action = maps.ActionDefault
		am.Default = a.Default
		am.Direction = maps.FHIRToCRM
		if a.JSONPath != "" {
			it.Notes = append(it.Notes, fmt.Sprintf("the JSON path %s is not used: Set Default Value always sets the value", a.JSONPath))
		}
	case maps.ActionValueMap:
		vm, err := parseValueMap(a.ValueMap)
		if err != nil {
			return fail(err.Error())
		}
		am.Action = maps.ActionValueMap
		am.ValueMap = c.valueMapName(mapName, xname, a.Attribute)
		c.valueMaps = append(c.valueMaps, maps.ValueMap{Name: am.ValueMap, Description: "Imported from the agent's Mapped Value of " + entity + "." + a.Attribute + ".", Entries: vm})
	case maps.ActionLookup:
		target, reason := lookupTarget(c, entity, a, tr.FHIRPath, roots)
		if target == "" {
			return fail(reason)
		}
		am.Action = maps.ActionLookup
		am.Lookup = &maps.Lookup{EntityMap: target}
	}
	if a.JSONPath == "" && action != maps.ActionDefault {
		return fail("no FHIR element JSON path")
	}
	if tr.FHIRPath != "" {
		if tr.Writable {
			am.FHIRPath = tr.FHIRPath
		} else {
			if action != maps.ActionCopy {
				return fail(tr.Reason + "; a read-only FHIRPath can only be a copied (computed) value, not a " + string(action))
			}
			am.Action = maps.ActionComputed
			am.Expression = tr.FHIRPath
			am.Direction = maps.FHIRToCRM
			it.Status = ReadOnly
			it.Reasons = append(it.Reasons, tr.Reason+": imported as a computed value, FHIR → CRM only")
		}
	}
	if tr.Writable && a.Create != "" {
		it.Notes = append(it.Notes, createNotes(a.Create, tr.FHIRPath)...)
	}
	if it.Status == "" {
		it.Status = Translated
	}
	c.add(it)
	return am, true
}

func (c *converter) valueMapName(mapName, xname, attr string) string {
	n := mapName + "-" + attr
	if xname != "" {
		n = mapName + "-" + xname + "-" + attr
	}
	return n
}

// parseValueMap reads "crm=fhir; crm=fhir" (option value = FHIR code).
func parseValueMap(s string) ([]maps.ValueMapEntry, error) {
	if strings.TrimSpace(s) == "" {
		return nil, errors.New("Mapped Value without value map entries in the export (column Value Map, \"1=male; 2=female\")")
	}
	var out []maps.ValueMapEntry
	for _, part := range strings.FieldsFunc(s, func(r rune) bool { return r == ';' || r == '\n' }) {
		k, v, ok := strings.Cut(part, "=")
		n, err := strconv.Atoi(strings.TrimSpace(k))
		if !ok || err != nil || strings.TrimSpace(v) == "" {
			return nil, fmt.Errorf("value map entry %q is not option value = FHIR code", strings.TrimSpace(part))
		}
		out = append(out, maps.ValueMapEntry{CRM: n, FHIR: strings.TrimSpace(v)})
	}
	return out, nil
}

// lookupTarget picks the entity map a lookup refers to: the one the export
// names, or the only imported map of the lookup's target table, or among
// several the one whose FHIR type the element is named after
// (generalPractitioner → Practitioner).
func lookupTarget(c *converter, entity string, a *AttributeMapRow, fhirPath string, roots []*root) (string, string) {
	if a.LookupMap != "" {
		for _, r := range roots {
			if strings.EqualFold(r.row.Name, a.LookupMap) {
				return r.m.Name, ""
			}
		}
		return "", fmt.Sprintf("the lookup's entity map %q is not imported", a.LookupMap)
	}
	var targets []string
	if c.opts.CRM != nil {
		targets = c.opts.CRM.LookupTargets(entity, a.Attribute)
	}
	var cands []*root
	for _, r := range roots {
		if len(targets) == 0 || slices.Contains(targets, r.m.CRMEntity) {
			cands = append(cands, r)
		}
	}
	if len(targets) == 0 {
		return "", "a lookup whose target table is unknown: give --crm-metadata or a Lookup Entity Map column"
	}
	if len(cands) == 1 {
		return cands[0].m.Name, ""
	}
	elem := strings.ToLower(strings.NewReplacer(".reference", "", "[0]", "").Replace(fhirPath) + " " + a.Attribute)
	var named []*root
	for _, r := range cands {
		if strings.Contains(elem, strings.ToLower(r.m.FHIRType)) {
			named = append(named, r)
		}
	}
	if len(named) == 1 {
		return named[0].m.Name, ""
	}
	names := make([]string, 0, len(cands))
	for _, r := range cands {
		names = append(names, r.m.Name)
	}
	sort.Strings(names)
	if len(names) == 0 {
		return "", fmt.Sprintf("no imported entity map for the lookup's target table (%s)", strings.Join(targets, ", "))
	}
	return "", fmt.Sprintf("the lookup may refer to any of %s; the export does not say which", strings.Join(names, ", "))
}

// createNotes compares the create JSON with what fhirsync's path writes: the
// path language creates the elements on the path and the where()
// discriminators; any other constant in the create JSON is not carried.
func createNotes(create, fhirPath string) []string {
	var v any
	if err := json.Unmarshal([]byte(create), &v); err != nil {
		return []string{"the create JSON does not parse, so what it set on creation is not known: " + err.Error()}
	}
	var leaves []string
	var walk func(prefix string, v any)
	walk = func(prefix string, v any) {
		switch x := v.(type) {
		case map[string]any:
			keys := make([]string, 0, len(x))
			for k := range x {
				keys = append(keys, k)
			}
			sort.Strings(keys)
			for _, k := range keys {
				p := k
				if prefix != "" {
					p = prefix + "." + k
				}
				walk(p, x[k])
			}
		case []any:
			for _, e := range x {
				walk(prefix, e)
			}
		case string:
			if x != "" && !strings.Contains(x, "{") {
				leaves = append(leaves, prefix+"="+x)
			}
		case float64, bool:
			leaves = append(leaves, fmt.Sprintf("%s=%v", prefix, x))
		}
	}
	walk("", v)
	var out []string
	for _, l := range leaves {
		field, val, _ := strings.Cut(l, "=")
		last := field[strings.LastIndex(field, ".")+1:]
		if strings.Contains(fhirPath, last+" = '"+val+"'") || strings.Contains(fhirPath, last+" = "+val) ||
			strings.Contains(fhirPath, "extension('"+val+"')") || strings.HasSuffix(fhirPath, last) {
			continue
		}
		out = append(out, fmt.Sprintf("the create JSON sets %s to %q, which fhirsync does not set when it creates the element", field, val))
	}
	return out
}

// settle validates the document, drops what validation refuses (listing
// it), and repeats until the set validates.
func (c *converter) settle(doc *maps.Document) error {
	doc.ValueMaps = c.valueMaps
	for round := 0; round < 10; round++ {
		_, err := maps.Compile(doc, maps.CompileOptions{CRM: c.opts.CRM})
		if err == nil {
			return nil
		}
		var ve *maps.ValidationError
		if !errors.As(err, &ve) {
			return err
		}
		for _, p := range ve.Problems {
			c.drop(doc, p)
		}
	}
	_, err := maps.Compile(doc, maps.CompileOptions{CRM: c.opts.CRM})
	return err
}

// drop removes the element a problem is about and lists it.
func (c *converter) drop(doc *maps.Document, p maps.Problem) {
	reason := "refused by validation: " + p.Message
	if p.Fix != "" {
		reason += " (" + p.Fix + ")"
	}
	mark := func(m, x, a string) {
		if i, ok := c.items[[3]string{m, x, a}]; ok {
			it := &c.report.Items[i]
			it.Status = NotTranslated
			it.Reasons = append(it.Reasons, reason)
			return
		}
		c.add(Item{EntityMap: m, Expansion: x, Attribute: a, Source: "validation", Status: NotTranslated, Reasons: []string{reason}})
	}
	if p.ValueMap != "" && p.Map == "" {
		// A value map problem: drop the attribute maps that use it.
		for i := range doc.EntityMaps {
			m := &doc.EntityMaps[i]
			m.Attributes = slices.DeleteFunc(m.Attributes, func(a maps.AttributeMap) bool {
				if a.ValueMap == p.ValueMap {
					mark(m.Name, "", a.Name)
					return true
				}
				return false
			})
		}
		doc.ValueMaps = slices.DeleteFunc(doc.ValueMaps, func(v maps.ValueMap) bool { return v.Name == p.ValueMap })
		return
	}
	for i := range doc.EntityMaps {
		m := &doc.EntityMaps[i]
		if m.Name != p.Map {
			continue
		}
		switch {
		case p.Expansion != "" && p.Attribute != "":
			for j := range m.Expansions {
				x := &m.Expansions[j]
				if x.Name == p.Expansion {
					x.Attributes = slices.DeleteFunc(x.Attributes, func(a maps.AttributeMap) bool { return a.Name == p.Attribute })
					x.MatchKey = slices.DeleteFunc(x.MatchKey, func(k string) bool { return k == p.Attribute })
					if len(x.Attributes) == 0 {
						m.Expansions = slices.Delete(m.Expansions, j, j+1)
						mark(m.Name, p.Expansion, "")
					}
					break
				}
			}
			mark(m.Name, p.Expansion, p.Attribute)
		case p.Expansion != "":
			m.Expansions = slices.DeleteFunc(m.Expansions, func(x maps.ExpansionMap) bool { return x.Name == p.Expansion })
			mark(m.Name, p.Expansion, "")
		case p.Attribute != "":
			m.Attributes = slices.DeleteFunc(m.Attributes, func(a maps.AttributeMap) bool { return a.Name == p.Attribute })
			mark(m.Name, "", p.Attribute)
		default:
			doc.EntityMaps = slices.Delete(doc.EntityMaps, i, i+1)
			mark(p.Map, "", "")
		}
		return
	}
}
