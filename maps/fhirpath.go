package maps

import (
	"encoding/json"
	"fmt"
	"strconv"

	"github.com/fhirsync/fhirsync/maps/fhirpath"
)

// fhirExpr is a compiled read-only FHIRPath expression (filters and
// computed values).
type fhirExpr interface {
	// evalBool reports whether the expression is true for res; an empty
	// result is false, anything but one boolean an error.
	evalBool(res map[string]any) (bool, error)
	// evalText returns the first result in its text form; ok is false for
	// an empty result.
	evalText(res map[string]any) (s string, ok bool, err error)
}

// fhirpathExpr evaluates on the record as decoded (EvalResource), which
// the fast evaluator of maps/fhirpath serves without encoding it again.
type fhirpathExpr struct {
	e *fhirpath.Expr
}

func compileFHIRPath(expr string) (fhirExpr, error) {
	if expr == "" {
		return nil, fmt.Errorf("expression is required")
	}
	e, err := fhirpath.Compile(expr)
	if err != nil {
		return nil, fmt.Errorf("FHIRPath: %v", err)
	}
	return fhirpathExpr{e: e}, nil
}

func (f fhirpathExpr) evalBool(res map[string]any) (bool, error) {
	return f.e.EvalResourceBool(res)
}

func (f fhirpathExpr) evalText(res map[string]any) (string, bool, error) {
	vals, err := f.e.EvalResource(res)
	if err != nil || len(vals) == 0 {
		return "", false, err
	}
	switch v := vals[0].(type) {
	case string:
		return v, true, nil
	case json.Number:
		return string(v), true, nil
	case bool:
		return strconv.FormatBool(v), true, nil
	}
	return "", false, fmt.Errorf("computed value is an element, not a primitive")
}
