// Package crmserver is a local, in-memory stand-in for the Dataverse Web
// API, for the demo, tests and benchmarks. New returns a Server, an
// http.Handler serving /api/data/v9.2/.
//
// It knows the starter entities (contact, account and the Cloud for
// Healthcare tables msemr_medicalidentifier, msemr_encounter and
// msemr_observation) with attributes, types, option sets, alternate keys
// (msemr_azurefhirid) and many-to-one relationships, served as
// EntityDefinitions. It implements the OData subset the agent uses:
// $select, $filter (eq ne gt ge lt le, and or not, contains, startswith,
// endswith), $orderby, $top and nextLink paging; create, retrieve, upsert
// by id or alternate key with ETags, If-Match and If-None-Match, delete;
// @odata.bind lookups; $batch with atomic change sets and Content-ID
// references; change tracking with delta links and $deletedEntity; WhoAmI;
// and the Dataverse error JSON.
//
// For tests it offers switchable service-protection limits (requests per
// window and concurrent requests per user, answered 429 with Retry-After),
// failure injection (FailFor, FailNext), expiry of change-tracking tokens,
// and a service-endpoint emulation that posts a RemoteExecutionContext
// message for every committed write, carrying the calling user (from the
// bearer token, or MSCRMCallerID) so echo detection can be tested. Seed and
// SeedSynth load rows, the latter from package synth.
//
// docs/sandbox-crm.md lists how it differs from real Dataverse. It is not
// a security boundary and keeps nothing on disk.
package crmserver
