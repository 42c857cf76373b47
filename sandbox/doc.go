// Package sandbox holds local stand-ins for the systems fhirsync connects:
// a FHIR R4 server and a Dataverse-style CRM endpoint, together with the
// deterministic synthetic data (package sandbox/synth) they are seeded from.
// They serve `fhirsync demo`, tests and benchmarks; nothing in production
// depends on them.
package sandbox
