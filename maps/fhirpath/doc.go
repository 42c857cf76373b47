// Package fhirpath evaluates the read-only FHIRPath of maps: entity map
// filters and computed attribute values. It wraps github.com/gofhir/fhirpath
// with the FHIR R4 model of github.com/gofhir/models/r4 behind a small API:
// Compile once per map version, then Eval or EvalBool per record.
//
// Resources are passed as their JSON text, which is what the engine reads;
// EvalResource and EvalResourceBool accept generic JSON maps and encode them
// first. Results come back as generic JSON values (see Expr.Eval).
//
// Writing is not FHIRPath's job here: attribute paths that read and write are
// the path language of package maps/path, a strict subset of FHIRPath.
//
// # Agreement with the reference implementation
//
// The differential test runs a corpus of expressions, and every expression of
// the starter maps, through this engine and through fhirpath.js 5.2.0 (the
// oracle in oracle/, installed with npm ci) on synthetic resources, and fails
// on any difference not described in docs/fhirpath-divergences.md. Compile
// refuses the functions whose results the engine gets wrong on ordinary data
// (length, substring and indexOf count bytes rather than characters).
//
// Evaluation errors are *EvalError, whose text names the expression and the
// kind of failure but no resource values, so it is safe for process logs.
package fhirpath
