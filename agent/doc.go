// Package agent owns the sync pipeline: receive a change notice, check the
// gates (entity map, enabled, direction, operation, per-record gate, filter),
// re-read the source, skip own-write echoes and stale notices, map, read the
// target, diff, write, and end every message in exactly one decision written
// to the sync log — then settle the message, in one place.
//
// It also owns correlation (the link cache between FHIR ids and CRM ids,
// rebuildable from the keys the maps name), loop prevention (the versions
// the agent itself wrote), retries (classification as data: Permanent,
// RetryAfter; exponential backoff with jitter), replay, backfill and the
// scheduled reconcile, and the agent's metrics.
//
// Endpoint clients live beside it: agent/fhir (FHIR R4 REST and its change
// feeds) and agent/crm (Dataverse Web API, change tracking and the
// RemoteExecutionContext decoder). It does not own map semantics (maps),
// queue transports (queues) or the decision store (logs).
package agent
