// Package fhirserver is a FHIR R4 server for tests, benchmarks and
// `fhirsync demo`: JSON over HTTP, stored in SQLite (a file, or memory).
//
// It supports create (with If-None-Exist), read, vread, update with
// If-Match, update-as-create, conditional update, delete (recorded as a
// version, so reads answer 410 Gone), search by _id, identifier and
// _lastUpdated (eq/gt/lt/ge/le) with _count and next links, _history with
// _since and _count at instance, type and system level (newest first, paged
// with a stable cursor), transaction (atomic, urn:uuid references
// resolved) and batch bundles, and a CapabilityStatement at /metadata.
// Version ids are integers; meta.lastUpdated has millisecond precision and
// never goes backwards; responses carry ETag, Last-Modified and Location;
// errors are OperationOutcomes.
//
// FailNext and SetOutage inject failures so clients' retry and outage
// handling can be tested. New with Options.Patients seeds an empty store
// from sandbox/synth.
//
// It is not a validating server: it checks that a body is a JSON object of
// the URL's resource type with a valid id, nothing more. The ways it
// differs from real servers are listed in docs/sandbox-fhir.md.
package fhirserver
