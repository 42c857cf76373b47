// Package maps owns what decides which data travels between the FHIR server
// and the CRM, and how: entity, attribute and expansion maps (DESIGN.md §3),
// their versions in the database, their YAML interchange format, their
// validation, and the mapping engine. It does no network I/O; the agent
// gives it records and a LookupResolver, and gets back records and diffs.
//
// # Model
//
// A Document is a whole map set: value maps (option-set value ↔ code) and
// entity maps. An EntityMap pairs a CRM entity with a FHIR resource type and
// holds AttributeMaps (one CRM attribute ↔ one FHIR element, addressed with
// the path language of package maps/path) and ExpansionMaps (the items of a
// FHIR array ↔ child CRM rows, paired by a match key; an ExpansionMap may
// hold ExpansionMaps of its own, an array inside each item whose rows hang
// under the item's row, two levels at most). Maps refer to each
// other by name, so a Document moves between installations as YAML
// (Parse, Import, Export; export is canonical and stable).
//
// # Compiling and validating
//
// Compile validates a Document and turns it into a Set: every path and
// FHIRPath expression parsed once, every name resolved. Validation reports
// every problem at once, each with its location (entity map / expansion map
// / attribute map / field): paths and element types against the R4 element
// definitions of github.com/gofhir/models/r4, value-map coverage of required
// bindings, duplicate targets, direction conflicts, lookup cycles between
// entity maps and, given a Dataverse metadata snapshot (ParseCRMMetadata),
// CRM entities, attributes, types, lookup targets and option values.
//
// # Versions
//
// A Store (New) keeps versions in the project database (migration
// 0002_maps, with the policy columns of 0013_map_policies): drafts can be edited, published versions are immutable
// (enforced by the schema too), and every publication is recorded, so a
// rollback is a new publication of an older version. Current returns the
// compiled Set of the newest publication with its version number; Watch
// delivers a new Set whenever any process sharing the database publishes,
// so the agent never needs a restart.
//
// # Policies
//
// These fields of an entity map tell the agent how to settle what the
// mapping alone cannot (the agent applies them; docs/conflicts.md):
//
//   - conflictPolicy (last-writer-wins, the default; fhir-wins; crm-wins;
//     hold) settles an attribute changed on both sides since the last sync.
//     An attribute map that travels both ways may set its own
//     conflictPolicy, for its attribute only (AttributeMap.Policy).
//   - deletePolicy (DeletePolicy) says what a deletion on one side does to
//     the linked record on the other: propagate (the default) deletes it,
//     deactivate sets statecode 1 / statuscode 2 on a CRM record and
//     active false on a FHIR resource, ignore leaves it. The direction's
//     delete operation must still be allowed. deactivate is refused when
//     CRM deletions travel to a FHIR type without an active element
//     (HasActive).
//   - correlation.businessKey (BusinessKey: fhirIdentifierSystem and
//     crmAttribute, both required) names a value both sides hold for the
//     same record, such as a medical record number: a resource with the
//     identifier (system, v) and a CRM record whose crmAttribute is v are
//     linked rather than duplicated. The agent finds the CRM record by
//     alternate key, so crmAttribute must be an alternate key of its own;
//     with CRM metadata read with $expand=Keys this is checked. The key's
//     system and attribute must differ from the correlation's, which carry
//     the other side's record id. Mapping.BusinessKeyValue reads the value
//     from a resource.
//
// For example:
//
//	correlation:
//	  crmAttribute: msemr_azurefhirid
//	  fhirIdentifierSystem: urn:fhirsync:crm:contactid
//	  businessKey:
//	    fhirIdentifierSystem: urn:oid:1.2.36.146.595.217.0.1
//	    crmAttribute: msemr_medicalrecordnumber
//	conflictPolicy: hold
//	deletePolicy: deactivate
//
// # Engine
//
// Mapping.ToCRM maps a FHIR resource to the full CRM record to upsert
// (lookups as "nav@odata.bind", child-row writes from expansion maps) and
// Mapping.ToFHIR maps a CRM record onto the target's current resource,
// keeping everything the map does not mention (extensions, contained
// resources, unknown elements, the text of decimals that did not change).
// Both return the target fields whose value changed; an empty list means the
// agent records unchanged. A record excluded by an entity map's filter comes
// back with the filter's name (reason filtered); a failure is a
// *MappingError naming the attribute map (reason mapping_error). Values never
// appear in errors.
//
// The correlation identifier (the FHIR identifier that holds the CRM id) is
// the engine's own bookkeeping: attribute and expansion maps do not see it,
// so identifier[0] is the resource's first identifier of its own, and
// write-back leaves it where it was. An attribute map's FallbackPaths pick
// another element when the primary one is absent (the usual name when there
// is no official one); the choice is made on the resource as read, before
// any write. Expansion items lacking a required value (an Identifier with a
// system and no value) map to no row and are kept as they are on write-back.
// The starter maps' round trip over public FHIR samples (HL7 R4 examples,
// US Core, Synthea; testdata/conformance) is TestConformanceStarterRoundTrip.
//
// CRMSelect and ChildQueries tell the agent which attributes and child rows
// to read before mapping; DecodeJSON and EncodeJSON are the fast generic
// JSON codec the engine's values are shaped for (encoding/json with
// UseNumber gives the same values).
//
// Types follow Dataverse: strings and memos (with a max-length policy),
// integers, decimals and money (exact: json.Number text, never float64),
// booleans, date-only and UTC date-time, option sets and multi-selects
// (through value maps with an unmapped policy), lookups (through another
// entity map's correlation; a reference of another resource type than that
// map's is a mapping error, never looked up) and computed values
// (read-only FHIRPath). A reference that may name several resource types
// maps through a lookup by type (Lookup.ByType, bytype.go): its type
// chooses the entity map and one of several CRM lookup columns.
// A coded element (a CodeableConcept) maps through a concept lookup
// (AttributeMap.Concept, concept.go) to a row of the data model's
// msemr_codeableconcept table, found by code and type and created where
// the map allows, through a LookupResolver that is also a ConceptResolver.
//
// # Samples
//
// Each entity map can carry sample cases. RunSamples / RunSample / Preview
// are the one runner behind `go test`, `fhirsync maps test` and the admin
// preview; they keep a sample's parse errors, unexpected evaluation errors
// and mismatches apart.
//
// The starter map set (Microsoft Cloud for Healthcare names) is in package
// maps/starter.
package maps
