package fhirpath

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"

	gofhirpath "github.com/gofhir/fhirpath"
	"github.com/gofhir/fhirpath/eval"
	"github.com/gofhir/fhirpath/types"
	"github.com/gofhir/models/r4"
)

// ErrNotBoolean is returned (wrapped) by EvalBool when the expression gives
// something other than empty or one boolean.
var ErrNotBoolean = errors.New("FHIRPath result is not a single boolean")

// Expr is a compiled FHIRPath expression. It is immutable and safe for
// concurrent use; compile it once per map version.
type Expr struct {
	src  string
	e    *gofhirpath.Expression
	fast *node // nil when the fast evaluator does not serve the expression
}

// Compile parses a FHIRPath expression. It refuses the few functions for which
// the engine gives wrong results (length, substring and indexOf count bytes,
// not characters; see docs/fhirpath-divergences.md).
func Compile(expr string) (*Expr, error) {
	if expr == "" {
		return nil, errors.New("compiling FHIRPath: empty expression")
	}
	e, err := gofhirpath.Compile(expr)
	if err != nil {
		return nil, fmt.Errorf("compiling FHIRPath %q: %w", expr, err)
	}
	if err := checkFunctions(expr); err != nil {
		return nil, err
	}
	fast, err := parseFast(expr)
	if err != nil {
		fast = nil // served by the engine alone
	}
	return &Expr{src: expr, e: e, fast: fast}, nil
}

// MustCompile is like Compile but panics on error. It is for expressions
// fixed in code.
func MustCompile(expr string) *Expr {
	e, err := Compile(expr)
	if err != nil {
		panic(err)
	}
	return e
}

// String returns the expression as written.
func (e *Expr) String() string { return e.src }

// Eval evaluates the expression against a resource given as its JSON text
// (the body as read from the FHIR server; no decoding is needed). The text
// must be valid JSON: only its being an object is checked. The result
// is a collection of generic JSON values: string, bool, json.Number (integers
// and decimals, with the decimal's text kept), map[string]any for elements
// that are objects; dates, times and quantities as their FHIRPath text.
// Evaluation failures are *EvalError, whose text holds no resource values.
func (e *Expr) Eval(resource []byte) ([]any, error) {
	col, err := e.eval(resource)
	if err != nil {
		return nil, err
	}
	out := make([]any, 0, len(col))
	for _, v := range col {
		x, err := toJSON(v)
		if err != nil {
			return nil, fmt.Errorf("evaluating FHIRPath %q: %w", e.src, err)
		}
		out = append(out, x)
	}
	return out, nil
}

// EvalBool evaluates a filter: an empty result is false, a single boolean is
// its value, and anything else (a string, several values) is an error
// wrapping ErrNotBoolean. It is stricter than FHIRPath's singleton rule, under
// which any single value counts as true, so that a filter such as "gender"
// written for "gender = 'female'" is reported instead of passing everything.
func (e *Expr) EvalBool(resource []byte) (bool, error) {
	col, err := e.eval(resource)
	if err != nil {
		return false, err
	}
	return e.boolOf(col)
}

// EvalResource is Eval for a resource already decoded as generic JSON,
// as DecodeJSON in package maps or encoding/json with UseNumber give it.
// It is the fast route: the expression runs on the decoded values, with no
// encoding. Expressions or values outside the fast evaluator's subset, and
// every evaluation error, go to the engine on the encoded resource, so the
// results and errors are the engine's either way. Objects in the result
// are the resource's own maps, not copies: do not modify them.
func (e *Expr) EvalResource(res map[string]any) ([]any, error) {
	if col, ev := e.evalFast(res); ev != nil {
		out := fastResult(col)
		ev.release()
		return out, nil
	}
	return e.evalEngine(res)
}

// EvalResourceBool is EvalBool for a resource decoded as generic JSON, by
// the same route as EvalResource.
func (e *Expr) EvalResourceBool(res map[string]any) (bool, error) {
	col, ev := e.evalFast(res)
	if ev == nil {
		b, err := marshal(res)
		if err != nil {
			return false, err
		}
		return e.EvalBool(b)
	}
	defer ev.release()
	return e.boolOf(col)
}

// boolOf reads a result as EvalBool does: empty is false, one Boolean is
// its value, anything else is ErrNotBoolean.
func (e *Expr) boolOf(col types.Collection) (bool, error) {
	switch len(col) {
	case 0:
		return false, nil
	case 1:
		if b, ok := col[0].(types.Boolean); ok {
			return b.Bool(), nil
		}
		return false, fmt.Errorf("FHIRPath %q gives a %s: %w", e.src, col[0].Type(), ErrNotBoolean)
	default:
		return false, fmt.Errorf("FHIRPath %q gives %d values: %w", e.src, len(col), ErrNotBoolean)
	}
}

// evalFast runs the fast evaluator. A nil evaluator means the engine must
// answer instead; otherwise the caller releases it after reading col.
func (e *Expr) evalFast(res map[string]any) (types.Collection, *evaluator) {
	if e.fast == nil || res == nil {
		return nil, nil
	}
	col, ev, err := evalFast(e.fast, res)
	if err != nil {
		return nil, nil
	}
	return col, ev
}

// evalEngine is the engine's route for a decoded resource: encode, then
// Eval.
func (e *Expr) evalEngine(res map[string]any) ([]any, error) {
	b, err := marshal(res)
	if err != nil {
		return nil, err
	}
	return e.Eval(b)
}

func marshal(res map[string]any) ([]byte, error) {
	b, err := json.Marshal(res)
	if err != nil {
		return nil, fmt.Errorf("encoding resource for FHIRPath: %w", err)
	}
	return b, nil
}

// fastResult gives the fast evaluator's values in Eval's form.
func fastResult(col types.Collection) []any {
	out := make([]any, 0, len(col))
	for _, v := range col {
		switch x := v.(type) {
		case *object:
			out = append(out, x.m)
		case *prim:
			out = append(out, x.text())
		case types.Boolean:
			out = append(out, x.Bool())
		case types.String:
			out = append(out, x.Value())
		case types.Integer:
			out = append(out, json.Number(strconv.FormatInt(x.Value(), 10)))
		case types.Decimal:
			out = append(out, json.Number(x.String()))
		default:
			out = append(out, v.String())
		}
	}
	return out
}

func (e *Expr) eval(resource []byte) (types.Collection, error) {
	// Full validation would cost as much as the evaluation itself; the
	// caller has the body from a server or from encoding/json. An object is
	// all that is checked, because the engine reads anything else as empty.
	if !isObject(resource) {
		return nil, fmt.Errorf("evaluating FHIRPath %q: resource is not a JSON object", e.src)
	}
	ctx := eval.NewContext(resource)
	// The R4 model makes choice elements (value[x]) and type tests (is, as,
	// ofType) follow the R4 definitions rather than the engine's guesses.
	ctx.SetModel(r4.FHIRPathModel())
	col, err := e.e.EvaluateWithContext(ctx)
	if err != nil {
		return nil, newEvalError(e.src, err)
	}
	return col, nil
}

// EvalError is an evaluation failure. Its text names the expression and the
// kind of failure only, because the engine's own message may quote values of
// the resource; the engine's error, with that message, is available through
// errors.Unwrap for places allowed to show resource data.
type EvalError struct {
	// Expr is the expression that failed.
	Expr string
	// Kind is the engine's failure category, such as "TypeError" or
	// "SingletonExpectedError".
	Kind string
	err  error
}

func newEvalError(expr string, err error) *EvalError {
	ee := &EvalError{Expr: expr, Kind: "EvaluationError", err: err}
	var inner *eval.EvalError
	if errors.As(err, &inner) {
		ee.Kind = inner.Type.String()
	}
	return ee
}

// Error names the expression and the kind of failure.
func (e *EvalError) Error() string {
	return fmt.Sprintf("evaluating FHIRPath %q: %s", e.Expr, e.Kind)
}

// Unwrap returns the engine's error.
func (e *EvalError) Unwrap() error { return e.err }

func isObject(b []byte) bool {
	b = bytes.TrimSpace(b)
	return len(b) >= 2 && b[0] == '{' && b[len(b)-1] == '}'
}

func toJSON(v types.Value) (any, error) {
	switch x := v.(type) {
	case types.Boolean:
		return x.Bool(), nil
	case types.String:
		return x.Value(), nil
	case types.Integer:
		return json.Number(strconv.FormatInt(x.Value(), 10)), nil
	case types.Decimal:
		return json.Number(x.String()), nil
	case *types.ObjectValue:
		d := json.NewDecoder(bytes.NewReader(x.Data()))
		d.UseNumber()
		var out any
		if err := d.Decode(&out); err != nil {
			return nil, fmt.Errorf("decoding a %s result: %w", x.Type(), err)
		}
		return out, nil
	default:
		// Date, DateTime, Time and Quantity: their FHIRPath text.
		return v.String(), nil
	}
}
