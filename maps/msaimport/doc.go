// Package msaimport reads the map definitions of Microsoft's retired FHIR
// Sync Agent for Dynamics 365 — entity maps, attribute maps with their
// JSONPath selects and create JSON, expansion maps — as the agent's
// administration app (Sync admin for FHIR, later the Data integration
// toolkit) exports them, and writes a fhirsync map set (package maps) with a
// report of what it could not carry over, attribute by attribute, and why.
// It owns no storage and no network I/O; `fhirsync maps import-msa` is its
// command.
//
// # What the agent's maps were
//
// Microsoft documents the maps at
//
//   - https://learn.microsoft.com/dynamics365/industry/healthcare/data-integration-toolkit-entity-maps
//     (entity map fields: Disable, Enable Write Back to FHIR, Azure FHIR
//     Resource, Supported Messages, Expand);
//   - https://learn.microsoft.com/dynamics365/industry/healthcare/data-integration-toolkit-attribute-maps
//     (attribute map fields: Disable, Enable Writeback to FHIR, FHIR
//     Required Attribute, Update Service Entity Map, Entity Name, Attribute
//     Name, Action Type = Copy Data, Set Default Value, Mapped Value or
//     Lookup; and "Export to Excel" from the command bar);
//   - https://learn.microsoft.com/dynamics365/industry/healthcare/data-integration-toolkit-expansion-maps
//     (expansion maps: an entity map with Expand set, a parent link
//     attribute, and attribute maps whose JSONPath is relative to the array
//     item, e.g. msemr_medicalidentifier with $.system, $.coding[0].code,
//     $.value);
//   - https://learn.microsoft.com/dynamics365/industry/healthcare/use-data-integration-toolkit-maps
//     (examples; entity maps are named "msemr_encounter ↔ Encounter").
//
// # Input
//
// The documented export is the app's Export to Excel of the Entity Maps and
// Attribute Maps views; this package reads those workbooks (.xlsx, the first
// sheet, by the SpreadsheetML parts of ECMA-376: xlsx.go) and the same
// sheets saved as CSV (comma or semicolon separated, UTF-8). Columns are found by their display
// names, compared without case or punctuation, with the spellings the
// documentation and the app's views use ("Code (Azure FHIR Resource)",
// "Is Disabled?"). Columns the published pages do not name, but which the
// app's records hold, are read under the names docs/import-msa.md lists
// (FHIR Element JSON Path, Create JSON, Default Value, Value Map, Lookup
// Entity Map, Type Attribute, Parent Link Attribute, Resource Element). The JSON of the
// Dataverse records is not read: the published pages do not name the map
// tables' columns.
//
// # JSONPath
//
// Translate turns a JSONPath into FHIRPath: member names, [n], ['name'],
// [*], filters of comparisons joined by && and || (with !, existence
// tests and parentheses), [-1] and forward slices. What fits the path
// language of package maps/path (names, [n], where() with field = literal
// joined by and, extension('url')) is written as a path that reads and
// writes; other translatable filters become read-only FHIRPath (a computed
// value, FHIR → CRM only); recursive descent ($..x), unions, negative
// indexes other than -1, member wildcards, regular expressions ( =~, a .NET
// extension), null and root references in filters are not translated.
//
// The parser is written here rather than taken from a library. The Go
// JSONPath module the module proxy serves here, github.com/theory/jsonpath
// (RFC 9535), was tried: it parses, but its syntax tree keeps the operands
// of a filter's comparisons unexported (CompExpr, SingularQueryExpr), so a
// translator cannot read "@.system == 'x'" out of it; and the agent's paths
// are of the older .NET (Newtonsoft) dialect, which RFC 9535 does not
// accept in full (=~). The tests use that library as an oracle instead:
// FuzzTranslate checks, on a sample Patient, that each translation without
// a note selects what the JSONPath selects wherever the JSONPath selects
// anything (it found that != and ! must keep JSONPath's "true" for a
// missing member: iif(..., false, true)).
//
// # Output
//
// Several Lookup attribute maps of one map on one JSON path (the care team
// participant's member columns, all on $.member.reference: the agent chose
// the column by the referenced resource's type) become one lookup by type,
// each column typed by the FHIR resource of the entity map its lookup
// resolves to. An expansion map whose parent link points at another
// expansion map's table (the care team participant role expansion map under
// the participant one) becomes a nested expansion; deeper than
// maps.MaxExpansionDepth it is listed as not translated.
//
// Convert builds the map set and then validates it (with the target CRM's
// metadata when given): whatever validation refuses — a column the CRM does
// not have, a path that reaches no R4 element, two maps writing one element —
// is left out and listed with validation's message, until the set is valid.
// The Report lists every entity, expansion and attribute map with its
// status: translated, read-only (a computed value) or not translated, with
// reasons and review notes.
package msaimport
