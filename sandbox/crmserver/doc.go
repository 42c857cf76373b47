// Package crmserver is a local, in-memory stand-in for the Dataverse Web
// API, for the demo, tests and benchmarks. New returns a Server, an
// http.Handler serving /api/data/v9.2/.
//
// It knows the starter entities (contact, account and the Cloud for
// Healthcare tables msemr_medicalidentifier, msemr_encounter and
// msemr_observation) with attributes, types, option sets, alternate keys
// (msemr_azurefhirid) and many-to-one relationships, served as
// EntityDefinitions with their attribute metadata (MaxLength, Precision,
// MinValue/MaxValue, option sets, typed casts). It validates values as
// Dataverse does: strings longer than MaxLength, numbers out of range and
// unknown choices are refused with Dataverse's codes; decimals and money
// are rounded to the column's precision. It implements the OData subset
// the agent uses: $select, $filter (eq ne gt ge lt le, and or not,
// contains, startswith, endswith), $orderby, $top, $count and nextLink
// paging; formatted-value and lookup annotations under Prefer:
// odata.include-annotations; create, retrieve (304 on a matching
// If-None-Match), upsert by id or alternate key with ETags, If-Match and
// If-None-Match, delete; @odata.bind lookups; $batch with atomic change
// sets, Content-ID references, the 400 multipart answer of a failed change
// set and Prefer: odata.continue-on-error; change tracking with delta
// links and $deletedEntity; WhoAmI; and the Dataverse error JSON with its
// annotations.
//
// Service protection follows Microsoft's documented limits, per user over
// a sliding window: requests (a $batch counts once), combined execution
// time (a configured cost per request and per operation) and concurrent
// requests, answered 429 with the documented codes and Retry-After
// (limits.go). For tests it also offers failure injection (FailFor,
// FailNext), expiry of change-tracking tokens, and a service-endpoint
// emulation that posts a RemoteExecutionContext for every committed
// write, serialised as Dataverse writes it (members in alphabetical order,
// no __type on image entities, the context cut down above
// MaxContextBytes), carrying the calling user (from the bearer token, or
// MSCRMCallerID) so echo detection can be tested; the same contexts go to
// a queue (a Service Bus endpoint), to a webhook URL with Dataverse's
// headers and key (Options.Webhook), or to both. Seed and SeedSynth load
// rows, the latter from package synth.
//
// docs/sandbox-crm.md lists how it differs from real Dataverse. It is not
// a security boundary and keeps nothing on disk.
package crmserver
