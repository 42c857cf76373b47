package msaimport

import (
	"bytes"
	"encoding/csv"
	"errors"
	"fmt"
	"io"
	"strings"
	"unicode"
)

// EntityMapRow is one record of the agent's entity maps, as exported.
type EntityMapRow struct {
	Line int
	// Name is the record's name ("contact ↔ Patient"), which attribute
	// maps refer to through Update Service Entity Map.
	Name     string
	Entity   string
	FHIRType string
	Disabled bool
	// WriteBack is Enable Write Back to FHIR; Messages its Supported
	// Messages (Create, Update or both).
	WriteBack bool
	Messages  string
	// Expand marks an expansion map; ParentLink is its parent link
	// attribute and Element the repeating FHIR element it expands.
	Expand     bool
	ParentLink string
	Element    string
}

// AttributeMapRow is one record of the agent's attribute maps, as exported.
type AttributeMapRow struct {
	Line      int
	EntityMap string // Update Service Entity Map (the entity map's name)
	Entity    string // Entity Name
	FHIRType  string // Azure FHIR Resource, when the export has the column
	Attribute string // Attribute Name
	Type      string // Attribute Type, when the export has the column
	Action    string // Action Type
	JSONPath  string // the FHIR element's JSONPath select
	Create    string // the create JSON
	Default   string // Default Value
	ValueMap  string // Value Map: "crm=fhir; ..."
	LookupMap string // Lookup Entity Map
	// TypeAttribute is the choice column recording the referenced
	// resource's type beside several lookups on one path (Type Attribute,
	// assumed); the lookup's Value Map then gives its option value.
	TypeAttribute string
	Disabled      bool
	WriteBack     bool // Enable Writeback to FHIR (default yes)
	Required      bool // FHIR Required Attribute
}

// columns lists, per field, the header spellings accepted (compared
// without case, spaces or punctuation).
var entityColumns = map[string][]string{
	"name":       {"name", "entitymap", "entitymapname"},
	"entity":     {"entityname", "entity", "dataverseentity", "dataversetable"},
	"fhir":       {"azurefhirresource", "codeazurefhirresource", "fhirresource"},
	"disabled":   {"disable", "isdisabled", "disabled"},
	"writeback":  {"enablewritebacktofhir", "writebacktofhir", "enablewriteback"},
	"messages":   {"supportedmessages"},
	"expand":     {"expand", "isexpand", "expansion"},
	"parentlink": {"parentlinkattribute", "parentlink"},
	"element":    {"resourceelement", "fhirelement", "expandelement", "fhirelementjsonpath"},
}

var attributeColumns = map[string][]string{
	"entitymap": {"updateserviceentitymap", "entitymap"},
	"entity":    {"entityname", "entity"},
	"fhir":      {"azurefhirresource", "codeazurefhirresource", "fhirresource"},
	"attribute": {"attributename", "attribute", "dataverseattribute"},
	"type":      {"attributetype"},
	"action":    {"actiontype", "action"},
	"jsonpath":  {"fhirelementjsonpath", "fhirelementmap", "fhirelement", "fhirjsonpath", "jsonpath", "fhirelementpath"},
	"create":    {"createjson", "fhircreatejson"},
	"default":   {"defaultvalue", "default"},
	"valuemap":  {"valuemap", "valuemaps", "mappedvalues"},
	"lookupmap": {"lookupentitymap", "lookupentity"},
	"typeattr":  {"typeattribute", "lookuptypeattribute"},
	"disabled":  {"disable", "isdisabled", "disabled"},
	"writeback": {"enablewritebacktofhir", "writebacktofhir"},
	"required":  {"fhirrequiredattribute", "required"},
}

func normalizeHeader(h string) string {
	var b strings.Builder
	for _, r := range strings.ToLower(h) {
		if unicode.IsLetter(r) || unicode.IsDigit(r) {
			b.WriteRune(r)
		}
	}
	return b.String()
}

// table is a CSV export with its header resolved to fields.
type table struct {
	what  string
	cols  map[string]int
	rows  [][]string
	lines []int
}

func (t *table) get(row int, field string) string {
	i, ok := t.cols[field]
	if !ok || i >= len(t.rows[row]) {
		return ""
	}
	return strings.TrimSpace(t.rows[row][i])
}

func (t *table) has(field string) bool { _, ok := t.cols[field]; return ok }

// readTable reads an export: the app's Export to Excel workbook (.xlsx,
// its first sheet), or that sheet saved as CSV (comma or semicolon
// separated, as Excel saves it in the user's locale; UTF-8 with or without
// a byte-order mark).
func readTable(what string, data []byte, columns map[string][]string, required ...string) (*table, error) {
	var (
		records [][]string
		lines   []int
		err     error
	)
	if isZip(data) {
		records, lines, err = readXLSX(data)
	} else {
		records, lines, err = readCSV(data)
	}
	if err != nil {
		return nil, fmt.Errorf("%s: %w", what, err)
	}
	if len(records) == 0 {
		return nil, fmt.Errorf("%s: the file is empty", what)
	}
	header := records[0]
	t := &table{what: what, cols: map[string]int{}}
	for i, h := range header {
		n := normalizeHeader(h)
		for field, names := range columns {
			for _, name := range names {
				if n == name {
					if _, dup := t.cols[field]; !dup {
						t.cols[field] = i
					}
				}
			}
		}
	}
	var missing []string
	for _, f := range required {
		if !t.has(f) {
			missing = append(missing, fmt.Sprintf("%q", columns[f][0]))
		}
	}
	if len(missing) > 0 {
		return nil, fmt.Errorf("%s: no column for %s among %q", what, strings.Join(missing, ", "), header)
	}
	for i, rec := range records[1:] {
		if strings.TrimSpace(strings.Join(rec, "")) == "" {
			continue
		}
		t.rows = append(t.rows, rec)
		t.lines = append(t.lines, lines[i+1])
	}
	return t, nil
}

func readCSV(data []byte) ([][]string, []int, error) {
	data = bytes.TrimPrefix(data, []byte("\xef\xbb\xbf"))
	if len(bytes.TrimSpace(data)) == 0 {
		return nil, nil, nil
	}
	first, _, _ := bytes.Cut(data, []byte("\n"))
	r := csv.NewReader(bytes.NewReader(data))
	if bytes.Count(first, []byte(";")) > bytes.Count(first, []byte(",")) {
		r.Comma = ';'
	}
	r.FieldsPerRecord = -1
	var records [][]string
	var lines []int
	for {
		rec, err := r.Read()
		if errors.Is(err, io.EOF) {
			return records, lines, nil
		}
		if err != nil {
			return nil, nil, err
		}
		line, _ := r.FieldPos(0)
		records = append(records, rec)
		lines = append(lines, line)
	}
}

// yes reads a Dataverse Yes/No column as exported (Yes, No, True, False,
// 1, 0); empty is def.
// flagCol is a yes/no column of a row, where its value goes and its
// value when the cell is empty.
type flagCol struct {
	col string
	dst *bool
	def bool
}

// flags reads row i's yes/no columns into their destinations, answering
// an error naming the sheet (what), line and column for each cell that is
// not yes or no.
func (t *table) flags(i int, what string, line int, fs ...flagCol) []error {
	var errs []error
	for _, f := range fs {
		v, err := yes(t.get(i, f.col), f.def)
		if err != nil {
			errs = append(errs, fmt.Errorf("%s line %d: %s: %w", what, line, f.col, err))
		}
		*f.dst = v
	}
	return errs
}

func yes(s string, def bool) (bool, error) {
	switch strings.ToLower(strings.TrimSpace(s)) {
	case "":
		return def, nil
	case "yes", "true", "1", "y":
		return true, nil
	case "no", "false", "0", "n":
		return false, nil
	}
	return false, fmt.Errorf("%q is not Yes or No", s)
}

// ReadEntityMaps reads the entity maps export.
func ReadEntityMaps(data []byte) ([]EntityMapRow, error) {
	t, err := readTable("entity maps", data, entityColumns, "entity", "fhir")
	if err != nil {
		return nil, err
	}
	out := make([]EntityMapRow, 0, len(t.rows))
	for i := range t.rows {
		row := EntityMapRow{
			Line: t.lines[i], Name: t.get(i, "name"), Entity: strings.ToLower(t.get(i, "entity")),
			FHIRType: t.get(i, "fhir"), Messages: t.get(i, "messages"),
			ParentLink: strings.ToLower(t.get(i, "parentlink")), Element: t.get(i, "element"),
		}
		errs := t.flags(i, "entity maps", row.Line,
			flagCol{"disabled", &row.Disabled, false}, flagCol{"writeback", &row.WriteBack, false}, flagCol{"expand", &row.Expand, false})
		if row.Entity == "" || row.FHIRType == "" {
			errs = append(errs, fmt.Errorf("entity maps line %d: the entity name and the Azure FHIR resource are required", row.Line))
		}
		if err := errors.Join(errs...); err != nil {
			return nil, err
		}
		out = append(out, row)
	}
	return out, nil
}

// ReadAttributeMaps reads the attribute maps export.
func ReadAttributeMaps(data []byte) ([]AttributeMapRow, error) {
	t, err := readTable("attribute maps", data, attributeColumns, "attribute", "action", "jsonpath")
	if err != nil {
		return nil, err
	}
	if !t.has("entity") && !t.has("entitymap") {
		return nil, fmt.Errorf("attribute maps: neither an Entity Name nor an Update Service Entity Map column")
	}
	out := make([]AttributeMapRow, 0, len(t.rows))
	for i := range t.rows {
		row := AttributeMapRow{
			Line: t.lines[i], EntityMap: t.get(i, "entitymap"), Entity: strings.ToLower(t.get(i, "entity")),
			FHIRType: t.get(i, "fhir"), Attribute: strings.ToLower(t.get(i, "attribute")), Type: t.get(i, "type"),
			Action: t.get(i, "action"), JSONPath: t.get(i, "jsonpath"), Create: t.get(i, "create"),
			Default: t.get(i, "default"), ValueMap: t.get(i, "valuemap"), LookupMap: t.get(i, "lookupmap"),
			TypeAttribute: strings.ToLower(t.get(i, "typeattr")),
		}
		errs := t.flags(i, "attribute maps", row.Line,
			flagCol{"disabled", &row.Disabled, false}, flagCol{"writeback", &row.WriteBack, true}, flagCol{"required", &row.Required, false})
		if row.Attribute == "" {
			errs = append(errs, fmt.Errorf("attribute maps line %d: the attribute name is required", row.Line))
		}
		if err := errors.Join(errs...); err != nil {
			return nil, err
		}
		out = append(out, row)
	}
	return out, nil
}
