package maps

import (
	"errors"
	"fmt"
	"strings"
)

// ErrNotFound means the asked-for map version, entity map or sample does
// not exist.
var ErrNotFound = errors.New("not found")

// ErrImmutable means a change was attempted on a published map version.
var ErrImmutable = errors.New("published map versions are immutable")

// Problem is one validation finding and where it is.
type Problem struct {
	// Line is the YAML line, when known (0 otherwise).
	Line int `json:"line,omitempty"`
	// Map, Expansion, Attribute and ValueMap name the element at fault,
	// from the outside in; Field is the property within it.
	Map       string `json:"map,omitempty"`
	Expansion string `json:"expansion,omitempty"`
	Attribute string `json:"attribute,omitempty"`
	ValueMap  string `json:"valueMap,omitempty"`
	Field     string `json:"field,omitempty"`
	Message   string `json:"message"`
	// Fix suggests a correction, when one is known ("did you mean
	// \"birthdate\"?").
	Fix string `json:"fix,omitempty"`
}

// Location renders where the problem is, e.g.
// `entity map "patient-contact" / attribute map "gender" / fhirPath`.
func (p Problem) Location() string {
	var parts []string
	if p.Line > 0 {
		parts = append(parts, fmt.Sprintf("line %d", p.Line))
	}
	if p.ValueMap != "" {
		parts = append(parts, fmt.Sprintf("value map %q", p.ValueMap))
	}
	if p.Map != "" {
		parts = append(parts, fmt.Sprintf("entity map %q", p.Map))
	}
	if p.Expansion != "" {
		parts = append(parts, fmt.Sprintf("expansion map %q", p.Expansion))
	}
	if p.Attribute != "" {
		parts = append(parts, fmt.Sprintf("attribute map %q", p.Attribute))
	}
	if p.Field != "" {
		parts = append(parts, p.Field)
	}
	if len(parts) == 0 {
		return "map set"
	}
	return strings.Join(parts, " / ")
}

func (p Problem) String() string {
	if p.Fix != "" {
		return p.Location() + ": " + p.Message + " (" + p.Fix + ")"
	}
	return p.Location() + ": " + p.Message
}

// ValidationError lists every problem found in a map set at once.
type ValidationError struct {
	Problems []Problem
}

func (e *ValidationError) Error() string {
	if len(e.Problems) == 1 {
		return "invalid map set: " + e.Problems[0].String()
	}
	var b strings.Builder
	fmt.Fprintf(&b, "invalid map set: %d problems", len(e.Problems))
	for _, p := range e.Problems {
		b.WriteString("\n  ")
		b.WriteString(p.String())
	}
	return b.String()
}

// MappingError is a failure to map one record. It names the entity map and
// the attribute (or expansion) map, which the agent records with the reason
// code mapping_error. Its message never contains field values.
type MappingError struct {
	Map       string
	Expansion string
	Attribute string
	Err       error
}

func (e *MappingError) Error() string {
	loc := fmt.Sprintf("entity map %q", e.Map)
	if e.Expansion != "" {
		loc += fmt.Sprintf(" / expansion map %q", e.Expansion)
	}
	if e.Attribute != "" {
		loc += fmt.Sprintf(" / attribute map %q", e.Attribute)
	}
	return "mapping " + loc + ": " + e.Err.Error()
}

func (e *MappingError) Unwrap() error { return e.Err }

// problems collects findings with a current location.
type problems struct {
	list []Problem
}

func (ps *problems) add(at Problem, format string, args ...any) {
	at.Message = fmt.Sprintf(format, args...)
	ps.list = append(ps.list, at)
}

// fix sets the suggested correction of the problem added last.
func (ps *problems) fix(format string, args ...any) {
	if n := len(ps.list); n > 0 {
		ps.list[n-1].Fix = fmt.Sprintf(format, args...)
	}
}

func (ps *problems) err() error {
	if len(ps.list) == 0 {
		return nil
	}
	return &ValidationError{Problems: ps.list}
}
