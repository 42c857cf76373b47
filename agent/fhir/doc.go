// Package fhir is fhirsync's side of a FHIR R4 server: a REST client and
// the three change feeds that turn FHIR changes into queue notices.
//
// The client (New) speaks FHIR JSON over net/http: read, vread, search with
// paging, _history?_since= at type and system level, create, update with
// If-Match, conditional update, delete and transaction bundles, with no
// authentication, a static bearer token, or an azcore.TokenCredential
// (azidentity) for Azure Health Data Services. Resources stay generic JSON
// (Resource, numbers as json.Number), so decimals keep their exact text and
// elements fhirsync does not map survive a read-modify-write. The client
// never retries; every failure is an *Error whose Class and Retryable
// fields the agent turns into a reason code and a retry decision. Bodies
// that are not what FHIR promises — HTML, truncated JSON, a wrong content
// type, an OperationOutcome where a resource was expected — are
// ClassInvalidResponse errors, never successes.
//
// A Batcher (NewBatcher) sits in front of the client for the agent: where
// the server's CapabilityStatement lists batch, it sends the reads,
// creates, conditional creates, updates and deletes of concurrent callers
// as batch Bundles, and gives each caller what its single request would
// have — except that a batched write answers with the stored resource's
// type, id and meta (versionId, lastUpdated) only: the writes go in a
// Bundle of their own with Prefer: return=minimal, whose answer R4 gives
// as "just the Bundle.entry.response populated for each entry"
// (http.html#return), and the id and version come from
// response.location, fullUrl and response.etag. The reads go in another
// Bundle, so their entries keep their resources.
//
// Error.Outcome holds the server's OperationOutcome text, which can quote
// request values (names, identifiers, dates). Error() leaves it out; do not
// log Outcome.
//
// The feeds produce queues.Notice values (Side fhir) on a queue through the
// small sender interface:
//   - Poller: _history polling per resource type on a cron schedule, with an
//     overlap window re-read and de-duplicated by (type, id, versionId), a
//     checkpoint in feed_checkpoints and a storage.Lease per feed, so among
//     processes sharing a database one polls each feed at a time. It is the
//     source of truth; the other two feeds are triggers.
//   - DecodeEvents: Azure Health Data Services FHIR events (Event Grid or
//     CloudEvents schema) as they arrive on a queue. The workspace's DICOM
//     events are ErrUnsupportedEvent, not malformed.
//   - NewRestHook: an http.Handler for R4 rest-hook subscription
//     notifications, id-only or with the resource.
//
// The package does not map resources, decide what to sync or settle queue
// messages; that is package agent's job.
package fhir
