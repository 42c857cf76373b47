// Package synth generates deterministic synthetic FHIR R4 resources and
// Dataverse-style CRM records for demos, tests and benchmarks.
//
// A Generator built from a seed always yields the same record for the same
// index, independently of the order or number of calls, so a sandbox server,
// a test and a benchmark can each ask for "Patient 17" and get identical
// content. Records are plain JSON-shaped values (map[string]any, []any,
// string, bool, json.Number), as produced by encoding/json with UseNumber:
// decimals are json.Number so their text (trailing zeros included) survives
// encoding.
//
// The data is fictional but shaped like real records: several names with
// different uses, non-ASCII text, telecom of every kind, addresses,
// identifiers (MRN, national ids), extensions carrying decimals, contained
// resources and, at random, missing fields. It contains no real person's
// data.
package synth
