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
	// groups lists, by map / expansion / lookup by type, the attribute
	// maps of the export it was made of.
	groups map[[3]string][]string
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
		r.m.Attributes = c.attributes(r.m.Name, "", r.m.CRMEntity, byEntityRow[r.row], roots)
	}
	// Expansion maps go to the expansion map their parent link points at
	// (the participant role expansion under the participant expansion), or
	// else to the root map of the same FHIR resource.
	b := &expansionBuilder{c: c, entities: entities, roots: roots, attrs: byEntityRow, nodes: map[*EntityMapRow]*xnode{}}
	var built []*xnode
	for i := range entities {
		if row := &entities[i]; row.Expand {
			if n := b.resolve(row); n != nil && !n.failed {
				built = append(built, n)
			}
		}
	}
	// Attach the deepest first: a parent takes its children's finished
	// copies.
	sort.SliceStable(built, func(i, j int) bool { return built[i].depth > built[j].depth })
	for _, n := range built {
		if n.parent != nil {
			n.parent.x.Expansions = append(n.parent.x.Expansions, *n.x)
		} else {
			n.root.m.Expansions = append(n.root.m.Expansions, *n.x)
		}
	}
	for _, r := range roots {
		doc.EntityMaps = append(doc.EntityMaps, *r.m)
	}
	return doc
}

// xnode is an expansion map being built: under a root map (parent nil) or
// under another expansion map.
type xnode struct {
	row    *EntityMapRow
	root   *root
	parent *xnode
	x      *maps.ExpansionMap
	// path names the expansion as validation does: "participant/role".
	path   string
	depth  int
	failed bool
}

type expansionBuilder struct {
	c        *converter
	entities []EntityMapRow
	roots    []*root
	attrs    map[*EntityMapRow][]*AttributeMapRow
	nodes    map[*EntityMapRow]*xnode
}

// parentExpansion finds the expansion map record an expansion map record's
// parent link points at: the expansion map of the table the parent link
// attribute targets (from the CRM metadata, or else the table the
// attribute is named after, as msemr_careteamparticipant is), preferring
// one of the same FHIR resource when several expand that table. Several
// it cannot choose among are answered as ambiguous (their names).
func (b *expansionBuilder) parentExpansion(row *EntityMapRow) (parent *EntityMapRow, ambiguous []string) {
	if row.ParentLink == "" {
		return nil, nil
	}
	var tables []string
	if b.c.opts.CRM != nil {
		tables = b.c.opts.CRM.LookupTargets(row.Entity, row.ParentLink)
	}
	if len(tables) == 0 {
		tables = []string{row.ParentLink}
	}
	var found, same []*EntityMapRow
	for i := range b.entities {
		e := &b.entities[i]
		if e != row && e.Expand && slices.Contains(tables, e.Entity) {
			found = append(found, e)
			if strings.EqualFold(e.FHIRType, row.FHIRType) {
				same = append(same, e)
			}
		}
	}
	switch {
	case len(found) == 1:
		return found[0], nil
	case len(same) == 1:
		return same[0], nil
	}
	for _, e := range found {
		ambiguous = append(ambiguous, e.Name)
	}
	return nil, ambiguous
}

// resolve builds the expansion map of an entity map record marked Expand,
// its parent first; a failed node is listed as not translated.
func (b *expansionBuilder) resolve(row *EntityMapRow) *xnode {
	if n, ok := b.nodes[row]; ok {
		return n // nil while row's own parents are being resolved: a cycle
	}
	b.nodes[row] = nil
	c := b.c
	xname := strings.TrimPrefix(row.Entity, "msemr_")
	src := source("entity maps", row.Line, row.Name)
	n := &xnode{row: row, depth: 1, path: xname}
	fail := func(mapName, reason string) *xnode {
		n.failed = true
		c.notImported(mapName, n.path, src, reason, b.attrs[row])
		b.nodes[row] = n
		return n
	}
	var parentEntity string
	pr, ambiguous := b.parentExpansion(row)
	if len(ambiguous) > 0 {
		// Not a top-level expansion: its rows hang under rows of one of
		// these, and the export does not say which.
		return fail(row.FHIRType, fmt.Sprintf("its parent link %s points at the rows of several expansion maps (%s); the export does not say which is its parent", row.ParentLink, strings.Join(ambiguous, ", ")))
	}
	if pr != nil {
		pn := b.resolve(pr)
		if pn == nil {
			return fail(row.FHIRType, fmt.Sprintf("its parent link %s leads back to it through other expansion maps (a cycle)", row.ParentLink))
		}
		n.parent, n.root, n.depth = pn, pn.root, pn.depth+1
		n.path = pn.path + "/" + xname
		mapName := pr.FHIRType
		if pn.root != nil {
			mapName = pn.root.m.Name
		}
		switch {
		case pn.failed:
			return fail(mapName, fmt.Sprintf("its parent expansion map %s (%s) is not imported", pn.path, pr.Entity))
		case n.depth > maps.MaxExpansionDepth:
			return fail(mapName, fmt.Sprintf("it would be an expansion map %d levels deep (%s), and fhirsync's expansion maps nest at most %d levels (maps.MaxExpansionDepth)", n.depth, n.path, maps.MaxExpansionDepth))
		}
		parentEntity = pn.x.CRMEntity
	} else {
		var parents []*root
		for _, r := range b.roots {
			if r.row.FHIRType == row.FHIRType {
				parents = append(parents, r)
			}
		}
		if len(parents) != 1 {
			reason := fmt.Sprintf("no imported root entity map for the FHIR resource %s to expand", row.FHIRType)
			if len(parents) > 1 {
				reason = fmt.Sprintf("%d root entity maps for the FHIR resource %s; the agent allows one", len(parents), row.FHIRType)
			}
			return fail(row.FHIRType, reason)
		}
		n.root = parents[0]
		parentEntity = n.root.m.CRMEntity
	}
	mapName := n.root.m.Name
	var xnotes []string
	x, reasons := c.expansion(parentEntity, row, xname, &xnotes)
	if len(reasons) > 0 {
		return fail(mapName, strings.Join(reasons, "; "))
	}
	n.x = x
	if n.parent != nil {
		xnotes = append(xnotes, fmt.Sprintf("nested in the expansion map %s, whose rows its parent link %s points at", n.parent.path, x.ParentLookup))
	}
	c.add(Item{EntityMap: mapName, Expansion: n.path, Source: src, Status: Translated})
	x.Attributes = c.attributes(mapName, n.path, row.Entity, b.attrs[row], b.roots)
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
	it := &c.report.Items[c.items[[3]string{mapName, n.path, ""}]]
	it.Notes = append(xnotes, fmt.Sprintf("match key %v chosen from the translated attribute maps; removed items delete their rows", x.MatchKey))
	b.nodes[row] = n
	return n
}

// attributes translates the attribute maps of one entity or expansion
// map. Lookups that share a JSON path become one lookup by type.
func (c *converter) attributes(mapName, xname, entity string, rows []*AttributeMapRow, roots []*root) []maps.AttributeMap {
	groups := map[string][]*AttributeMapRow{}
	for _, a := range rows {
		if k := lookupGroupKey(a); k != "" {
			groups[k] = append(groups[k], a)
		}
	}
	// names holds the attribute map names taken: the columns', and those
	// of the lookups by type made so far (actor[0] and actor[1] are both
	// "actor").
	names := map[string]bool{}
	for _, a := range rows {
		names[a.Attribute] = true
	}
	var out []maps.AttributeMap
	done := map[string]bool{}
	for _, a := range rows {
		if k := lookupGroupKey(a); k != "" && len(groups[k]) > 1 {
			if !done[k] {
				done[k] = true
				if am, ok := c.lookupByType(mapName, xname, entity, groups[k], names, roots); ok {
					out = append(out, am)
				}
			}
			continue
		}
		if am, ok := c.attribute(mapName, xname, entity, a, roots); ok {
			out = append(out, am)
		}
	}
	return out
}

// lookupGroupKey is what lookups sharing a JSON path share: the path's
// translation (so $.member.reference and $['member']['reference'] agree),
// else the path itself; "" for what is not an enabled lookup with a path.
func lookupGroupKey(a *AttributeMapRow) string {
	if normalizeHeader(a.Action) != "lookup" || a.Disabled || a.JSONPath == "" {
		return ""
	}
	if tr := Translate(a.JSONPath); tr.FHIRPath != "" {
		return tr.FHIRPath
	}
	return a.JSONPath
}

// notImported lists an expansion map and each of its attribute maps.
func (c *converter) notImported(mapName, xname, src, reason string, attrs []*AttributeMapRow) {
	c.add(Item{EntityMap: mapName, Expansion: xname, Source: src, Status: NotTranslated, Reasons: []string{reason}})
	for _, a := range attrs {
		c.add(Item{EntityMap: mapName, Expansion: xname, Attribute: a.Attribute, Source: source("attribute maps", a.Line, ""), JSONPath: a.JSONPath, Status: NotTranslated, Reasons: []string{"its expansion map is not imported"}})
	}
}

func (c *converter) expansion(parentEntity string, row *EntityMapRow, xname string, notes *[]string) (*maps.ExpansionMap, []string) {
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
		if l, ok := parentLink(c.opts.CRM.LookupsTo(row.Entity, parentEntity), parentEntity); ok {
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
		target, _, reason := lookupTarget(c, entity, a, tr.FHIRPath, roots)
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
		n = mapName + "-" + strings.ReplaceAll(xname, "/", "-") + "-" + attr
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
// (generalPractitioner → Practitioner). When it cannot choose among
// imported maps of the target table it answers them as cands.
func lookupTarget(c *converter, entity string, a *AttributeMapRow, fhirPath string, roots []*root) (target string, cands []*root, reason string) {
	if a.LookupMap != "" {
		for _, r := range roots {
			if strings.EqualFold(r.row.Name, a.LookupMap) {
				return r.m.Name, nil, ""
			}
		}
		return "", nil, fmt.Sprintf("the lookup's entity map %q is not imported", a.LookupMap)
	}
	var targets []string
	if c.opts.CRM != nil {
		targets = c.opts.CRM.LookupTargets(entity, a.Attribute)
	}
	if len(targets) == 0 {
		return "", nil, "a lookup whose target table is unknown: give --crm-metadata or a Lookup Entity Map column"
	}
	for _, r := range roots {
		if slices.Contains(targets, r.m.CRMEntity) {
			cands = append(cands, r)
		}
	}
	if len(cands) == 1 {
		return cands[0].m.Name, nil, ""
	}
	elem := strings.ToLower(strings.NewReplacer(".reference", "", "[0]", "").Replace(fhirPath) + " " + a.Attribute)
	var named []*root
	for _, r := range cands {
		if strings.Contains(elem, strings.ToLower(r.m.FHIRType)) {
			named = append(named, r)
		}
	}
	if len(named) == 1 {
		return named[0].m.Name, nil, ""
	}
	if len(cands) == 0 {
		return "", nil, fmt.Sprintf("no imported entity map for the lookup's target table (%s)", strings.Join(targets, ", "))
	}
	return "", cands, fmt.Sprintf("the lookup may refer to any of %s; the export does not say which", strings.Join(rootNames(cands), ", "))
}

func rootNames(rs []*root) []string {
	names := make([]string, 0, len(rs))
	for _, r := range rs {
		names = append(names, r.m.Name)
	}
	sort.Strings(names)
	return names
}

// lookupByType carries several Lookup attribute maps on one JSON path (the
// care team participant's member: msemr_memberpatient,
// msemr_memberpractioner, ...) over as one lookup by type. The agent chose
// the column by the referenced resource's type; here each column's type is
// the FHIR resource of the entity map its lookup resolves through. A
// column whose target cannot be told apart from the others' (two maps of
// one table, both taken) is listed as not translated; the rest still
// convert. A reference of a type no column takes is kept as it is
// (otherTypes: skip), as the agent had no column to write it to.
func (c *converter) lookupByType(mapName, xname, entity string, group []*AttributeMapRow, names map[string]bool, roots []*root) (maps.AttributeMap, bool) {
	items := make([]Item, len(group))
	for i, a := range group {
		items[i] = Item{EntityMap: mapName, Expansion: xname, Attribute: a.Attribute, Source: source("attribute maps", a.Line, ""), JSONPath: a.JSONPath}
	}
	tr := Translate(group[0].JSONPath)
	failAll := func(reason string) (maps.AttributeMap, bool) {
		for i := range items {
			items[i].Status = NotTranslated
			items[i].Reasons = append(items[i].Reasons, reason)
			c.add(items[i])
		}
		return maps.AttributeMap{}, false
	}
	switch {
	case tr.FHIRPath == "":
		return failAll(tr.Reason)
	case !tr.Writable:
		return failAll(tr.Reason + "; a read-only FHIRPath can only be a copied (computed) value, not a lookup")
	}
	// Each column's entity map: first those the export or the metadata
	// settle, then the undecided ones among the maps not yet taken.
	reasons := make([]string, len(group))
	chosen := make([]*root, len(group))
	undecided := make([][]*root, len(group))
	for i, a := range group {
		if c.opts.CRM != nil {
			t, ok := c.opts.CRM.AttributeType(entity, a.Attribute)
			switch {
			case !ok:
				reasons[i] = fmt.Sprintf("the column %s.%s is not in the CRM metadata", entity, a.Attribute)
				continue
			case t != maps.TypeLookup:
				reasons[i] = fmt.Sprintf("the column %s.%s is a %s, not a lookup", entity, a.Attribute, t)
				continue
			}
		}
		target, cands, reason := lookupTarget(c, entity, a, tr.FHIRPath, roots)
		if target == "" {
			reasons[i], undecided[i] = reason, cands
			continue
		}
		for _, r := range roots {
			if r.m.Name == target {
				chosen[i] = r
			}
		}
	}
	taken := func(r *root) bool { return slices.Contains(chosen, r) }
	for i, cands := range undecided {
		if len(cands) == 0 {
			continue
		}
		var free []*root
		for _, r := range cands {
			if !taken(r) {
				free = append(free, r)
			}
		}
		switch len(free) {
		case 1:
			chosen[i], reasons[i] = free[0], ""
			items[i].Notes = append(items[i].Notes, fmt.Sprintf("entity map %s chosen as the only imported map of the column's table that the other lookups on %s do not take", free[0].m.Name, group[i].JSONPath))
		case 0:
			reasons[i] = fmt.Sprintf("the column's table is synced by %s, and the other lookups on %s already take them; no imported entity map is left for the resource type it holds", strings.Join(rootNames(cands), ", "), group[i].JSONPath)
		}
	}
	// One column per type.
	byType := map[string]int{}
	am := maps.AttributeMap{Name: byTypeName(tr.FHIRPath, names), CRMType: maps.TypeLookup, FHIRPath: tr.FHIRPath, Action: maps.ActionLookup,
		Lookup: &maps.Lookup{OtherTypes: maps.OtherTypesSkip}}
	var cols, parts []string
	writeBack, required := 0, 0
	for i, a := range group {
		r := chosen[i]
		if r == nil {
			continue
		}
		if j, dup := byType[r.m.FHIRType]; dup {
			chosen[i], reasons[i] = nil, fmt.Sprintf("%s references already go to %s (entity map %s); a reference of one type goes to one column", r.m.FHIRType, group[j].Attribute, r.m.Name)
			continue
		}
		byType[r.m.FHIRType] = i
		am.Lookup.ByType = append(am.Lookup.ByType, maps.LookupTarget{Type: r.m.FHIRType, EntityMap: r.m.Name, CRMAttribute: a.Attribute})
		cols = append(cols, a.Attribute)
		parts = append(parts, r.m.FHIRType+" → "+a.Attribute)
		if a.WriteBack {
			writeBack++
		}
		if a.Required {
			required++
		}
	}
	if len(cols) == 0 {
		for i := range items {
			items[i].Status = NotTranslated
			items[i].Reasons = append(items[i].Reasons, reasons[i])
			c.add(items[i])
		}
		return maps.AttributeMap{}, false
	}
	var notes []string
	if writeBack < len(cols) {
		am.Direction = maps.FHIRToCRM
		if writeBack > 0 {
			notes = append(notes, "some of the lookups are written back to FHIR and some not; the lookup by type goes fhir-to-crm")
		}
	}
	am.Required = required == len(cols)
	if required > 0 && !am.Required {
		notes = append(notes, "some of the lookups are FHIR required attributes and some not; the lookup by type is not required")
	}
	notes = append(notes, c.typeColumn(mapName, xname, entity, group, chosen, &am)...)
	summary := fmt.Sprintf("one of %d lookups on %s, carried over together as the lookup by type %q (%s; a reference of another type is kept as it is and sets no column)", len(group), group[0].JSONPath, am.Name, strings.Join(parts, ", "))
	var translated []string
	for i := range items {
		if chosen[i] == nil {
			items[i].Status = NotTranslated
			items[i].Reasons = append(items[i].Reasons, reasons[i])
			items[i].Notes = nil
			items[i].Reasons[len(items[i].Reasons)-1] += fmt.Sprintf("; the other lookups on the path are carried over as the lookup by type %q", am.Name)
		} else {
			items[i].Status = Translated
			items[i].FHIRPath = tr.FHIRPath
			items[i].Notes = append(append(append(items[i].Notes, summary), notes...), tr.Notes...)
			translated = append(translated, group[i].Attribute)
		}
		c.add(items[i])
	}
	if c.groups == nil {
		c.groups = map[[3]string][]string{}
	}
	c.groups[[3]string{mapName, xname, am.Name}] = translated
	return am, true
}

// byTypeName names a lookup by type after its element (member.reference →
// member), unless an attribute map of the same map already has the name,
// and takes the name in names.
func byTypeName(fhirPath string, names map[string]bool) string {
	p := strings.TrimSuffix(fhirPath, ".reference")
	if i := strings.LastIndex(p, "."); i >= 0 {
		p = p[i+1:]
	}
	if i := strings.IndexAny(p, "[("); i >= 0 {
		p = p[:i]
	}
	if p == "" || p == "reference" {
		p = "reference"
	}
	name := kebab(p)
	if names[name] {
		name += "-by-type"
		for i := 2; names[name]; i++ {
			name = fmt.Sprintf("%s-by-type-%d", kebab(p), i)
		}
	}
	names[name] = true
	return name
}

// typeColumn adds the type column of a lookup by type when the export
// names one (Type Attribute, assumed) with each column's option value in
// its Value Map ("935000002=Patient"), and says why not when it cannot.
func (c *converter) typeColumn(mapName, xname, entity string, group []*AttributeMapRow, chosen []*root, am *maps.AttributeMap) []string {
	var attr string
	var entries []maps.ValueMapEntry
	for i, a := range group {
		if a.TypeAttribute == "" {
			continue
		}
		if attr != "" && attr != a.TypeAttribute {
			return []string{fmt.Sprintf("the lookups name different type attributes (%s, %s); no type column is written", attr, a.TypeAttribute)}
		}
		attr = a.TypeAttribute
		if chosen[i] == nil || a.ValueMap == "" {
			continue
		}
		vm, err := parseValueMap(a.ValueMap)
		if err != nil {
			return []string{fmt.Sprintf("the type attribute %s is not written: %s", attr, err)}
		}
		for _, e := range vm {
			if !slices.ContainsFunc(entries, func(x maps.ValueMapEntry) bool { return x.FHIR == e.FHIR }) {
				entries = append(entries, e)
			}
		}
	}
	if attr == "" {
		return nil
	}
	for _, t := range am.Lookup.ByType {
		if !slices.ContainsFunc(entries, func(x maps.ValueMapEntry) bool { return x.FHIR == t.Type }) {
			return []string{fmt.Sprintf("the type attribute %s is not written: no Value Map entry gives the option value of %s (\"935000002=%s\")", attr, t.Type, t.Type)}
		}
	}
	if c.opts.CRM != nil {
		if t, ok := c.opts.CRM.AttributeType(entity, attr); !ok || t != maps.TypeOptionSet {
			return []string{fmt.Sprintf("the type attribute %s.%s is not a choice column in the CRM metadata; it is not written", entity, attr)}
		}
	}
	am.Lookup.TypeAttribute = attr
	am.Lookup.TypeValueMap = c.valueMapName(mapName, xname, attr)
	c.valueMaps = append(c.valueMaps, maps.ValueMap{Name: am.Lookup.TypeValueMap, System: "http://hl7.org/fhir/resource-types",
		Description: "Imported from the Value Map entries of the agent's lookups on " + group[0].JSONPath + ": the referenced resource type ↔ " + entity + "." + attr + ".", Entries: entries})
	return nil
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
	var mark func(m, x, a string)
	mark = func(m, x, a string) {
		if rows, ok := c.groups[[3]string{m, x, a}]; ok {
			// A lookup by type: the attribute maps it was made of.
			for _, r := range rows {
				mark(m, x, r)
			}
			return
		}
		// Every item still in the set under the name: validation names
		// an attribute map, and the drop removes each of that name (two
		// attribute maps of the export on one column).
		marked := false
		for i := range c.report.Items {
			if it := &c.report.Items[i]; it.EntityMap == m && it.Expansion == x && it.Attribute == a && it.Status != NotTranslated {
				it.Status = NotTranslated
				it.Reasons = append(it.Reasons, reason)
				marked = true
			}
		}
		if marked {
			return
		}
		if i, ok := c.items[[3]string{m, x, a}]; ok {
			it := &c.report.Items[i]
			it.Status = NotTranslated
			it.Reasons = append(it.Reasons, reason)
			return
		}
		c.add(Item{EntityMap: m, Expansion: x, Attribute: a, Source: "validation", Status: NotTranslated, Reasons: []string{reason}})
	}
	// markExpansion lists a dropped expansion map with what it held.
	var markExpansion func(m, path string, x *maps.ExpansionMap)
	markExpansion = func(m, path string, x *maps.ExpansionMap) {
		mark(m, path, "")
		for _, a := range x.Attributes {
			mark(m, path, a.Name)
		}
		for i := range x.Expansions {
			markExpansion(m, path+"/"+x.Expansions[i].Name, &x.Expansions[i])
		}
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
			if xs, j := findExpansion(&m.Expansions, p.Expansion); xs != nil {
				x := &(*xs)[j]
				x.Attributes = slices.DeleteFunc(x.Attributes, func(a maps.AttributeMap) bool { return a.Name == p.Attribute })
				x.MatchKey = slices.DeleteFunc(x.MatchKey, func(k string) bool { return k == p.Attribute })
				if len(x.Attributes) == 0 {
					dropped := *x
					*xs = slices.Delete(*xs, j, j+1)
					markExpansion(m.Name, p.Expansion, &dropped)
				}
			}
			mark(m.Name, p.Expansion, p.Attribute)
		case p.Expansion != "":
			if xs, j := findExpansion(&m.Expansions, p.Expansion); xs != nil {
				dropped := (*xs)[j]
				*xs = slices.Delete(*xs, j, j+1)
				markExpansion(m.Name, p.Expansion, &dropped)
			} else {
				mark(m.Name, p.Expansion, "")
			}
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

// findExpansion finds an expansion map by validation's name for it
// ("participants/roles" for a nested one): the slice holding it and its
// index, or nil.
func findExpansion(xs *[]maps.ExpansionMap, path string) (*[]maps.ExpansionMap, int) {
	head, rest, nested := strings.Cut(path, "/")
	for j := range *xs {
		if (*xs)[j].Name == head {
			if !nested {
				return xs, j
			}
			return findExpansion(&(*xs)[j].Expansions, rest)
		}
	}
	return nil, -1
}
