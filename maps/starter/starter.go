// Package starter holds the starter map set: entity, attribute and
// expansion maps between FHIR R4 and Dataverse with the Microsoft Cloud for
// Healthcare schema (msemr_* names), each map with its sample cases. It is
// plain data; package maps parses, validates and runs it.
package starter

import _ "embed"

//go:embed starter.yaml
var starterYAML []byte

// YAML returns the starter map set as YAML. The slice is a copy.
func YAML() []byte { return append([]byte(nil), starterYAML...) }
