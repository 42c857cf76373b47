// Package fhirpath evaluates the read-only FHIRPath of maps: entity map
// filters and computed attribute values. It wraps github.com/gofhir/fhirpath
// with the FHIR R4 model of github.com/gofhir/models/r4 behind a small API:
// Compile once per map version, then evaluate per record.
//
// Two routes lead to the same results. Eval and EvalBool hand the resource's
// JSON text to the engine. EvalResource and EvalResourceBool, which maps use,
// take the resource already decoded as generic JSON and run the expression
// with the package's own fast evaluator; where it cannot give the engine's
// answer exactly, they encode the resource and ask the engine. Results come
// back as generic JSON values (see Expr.Eval).
//
// Writing is not FHIRPath's job here: attribute paths that read and write are
// the path language of package maps/path, a strict subset of FHIRPath.
//
// # Why a hand-written evaluator
//
// Every record passes through the map's filter and computed values, and the
// engine was the slowest step of a read: over the 105 expressions of
// TestCompareSpeed it runs at a tenth of the speed of fhirpath.js (median
// ratio 0.09x; tens of µs for a plain period.start), while maps/path reads
// run about a hundred times faster than fhirpath.js. The engine re-reads
// the JSON text for every member it visits (and for a missing one, for each
// of some fifty choice-type suffixes) and walks an ANTLR parse tree; and the
// record, already decoded by the agent, had to be encoded again to give it
// that text. The other Go FHIRPath libraries evaluate their own form of a
// resource — protocol buffers, generated structs — so they too would cost a
// conversion per record; none reads the generic JSON the agent holds.
//
// The fast evaluator is therefore written here, for the subset maps use:
// navigation with the R4 model's element types and choice elements
// (value[x]), indexers, where, exists, all, select, count, empty, first,
// last, tail, skip, take, not, iif, ofType, extension(url), is and as,
// comparisons, boolean logic, arithmetic, string concatenation, and string,
// number, boolean and date/time literals. It does not reinvent FHIRPath's
// semantics: it types every JSON value as the engine does and applies the
// engine's own operator functions (package eval), and it gives up — handing
// the evaluation to the engine — on anything else: other functions and
// syntax, objects compared with objects (the engine compares their JSON
// text), values of types encoding/json does not decode to, and every
// evaluation error, so errors are always the engine's.
// TestFastAgreesWithEngine compares the two routes on the whole corpus,
// TestFastEdgeCases on resources made for the engine's typing rules, and
// FuzzFastAgreesWithEngine on generated expressions. On the same 105
// expressions the fast route (EvalResource) runs at a median of about ten
// times the speed of fhirpath.js.
//
// # Agreement with the reference implementation
//
// The differential test runs a corpus of expressions, and every expression of
// the starter maps, through the route maps use and through fhirpath.js 5.2.0
// (the oracle in oracle/, installed with npm ci) on synthetic resources, and
// fails on any difference not described in docs/fhirpath-divergences.md.
// Compile refuses the functions whose results the engine gets wrong on
// ordinary data (length, substring and indexOf count bytes rather than
// characters).
//
// Evaluation errors are *EvalError, whose text names the expression and the
// kind of failure but no resource values, so it is safe for process logs.
package fhirpath
