// Package crm is the agent's Dataverse endpoint: a Web API client (OData v4,
// /api/data/v9.2/), the change-tracking feed that turns CRM changes into
// change notices, and the decoder for RemoteExecutionContext messages a
// Dataverse service endpoint posts to a queue.
//
// The client (New) does create, retrieve, retrieve-multiple with $select,
// $filter, $orderby, $top and @odata.nextLink paging, upsert by alternate
// key with If-Match / If-None-Match / ETags and Prefer:
// return=representation (201 created, 200 updated), delete, lookups through
// "nav@odata.bind", $batch with atomic change sets and
// odata.continue-on-error, change tracking with delta links, WhoAmI and
// EntityDefinitions metadata. It honours Retry-After on 429, caps requests
// in flight, retries idempotent requests after 5xx and network failures,
// and UpsertMany adapts its batch size to throttling. Authentication is
// azidentity (client secret, managed identity, default chain) with the
// organisation's "/.default" scope, a static bearer token, or none. The
// client may sign in as several application users, each with its own
// service-protection budget (users.go): its own requests in flight, under
// a limit that follows x-ms-dop-hint, and its own pause after a 429.
//
// A Coalescer (NewCoalescer) gathers the calls of concurrent callers into
// shared $batch requests; its API is the client's (Retrieve,
// RetrieveMultiple, Upsert, Create, Delete) plus Apply for one record's
// writes as one change set. Callers need nothing else for bulk messages:
// with CoalesceConfig.NoBulk unset, an Apply whose first op is an UpsertOp
// in CreateOnly mode by alternate key, followed by CreateOps of child rows
// that bind "$1", is sent with the other records of its batch as
// CreateMultiple messages (the parent's primary key assigned by the
// coalescer), and Upserts by id in UpdateOnly mode as UpdateMultiple;
// each caller still gets one result per op as the change set would have
// answered it, ETags included (bulk.go). Reads by alternate key or by
// primary key are grouped into Microsoft.Dynamics.CRM.In queries.
//
// Every failure is an *Error with a Class (rejected, conflict,
// unauthorized, throttled, unavailable, not_found, invalid_response),
// Retryable and RetryAfter, decided here once. An answer the Web API would
// not send (an HTML page, truncated JSON, a wrong content type, a missing
// header) is invalid_response, never a success; an answer Dataverse does
// send is never invalid_response: a $batch stopped at a failed request
// (an error status with a multipart body) and a failed change set (the
// failing request's answer alone) are decoded per request, each failure
// naming its position in the batch and its Content-ID, with the CRM's
// status, code, message and error annotations (Error.Details) kept. A 412
// is ClassConflict and not retried as the same request: the caller re-reads
// and writes again. Error texts elide quoted values from Dataverse
// messages, which may hold record data, and leave out the annotations.
//
// Feed polls one entity's changes under a database lease and keeps the
// delta link in feed_checkpoints; an expired token falls back to a full
// reconcile. DecodeRemoteExecutionContext reads the JSON message format
// with its WCF quirks and ExecutionContext.Notice builds the notice, with
// Initiator set so the agent can recognise its own writes. NewWebhook is the
// HTTP receiver for a Dataverse webhook service endpoint: it checks the
// key, refuses a body that does not decode, and queues the context
// unchanged where a Service Bus endpoint would have put it.
//
// The RemoteExecutionContext decoder reads JSON with a tokenizer of its own
// (remotecontext.go) rather than a library: what it accepts, how it matches
// field names and how it words a rejection must stay exactly what
// encoding/json does, because invalid_message decisions and the poison
// corpus depend on it, and a differential fuzz test holds it to the
// encoding/json-based reference. encoding/json itself re-scans every nested
// level (ten times the CPU on a typical Update with images), the fast JSON
// libraries accept and word things differently, and encoding/json/v2 needs
// GOEXPERIMENT=jsonv2 in this Go release.
//
// The package does not map records (package maps does) or decide what to
// do with a notice (package agent does).
package crm
