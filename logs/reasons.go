package logs

import "slices"

// Outcome is how a message ended. Every message ends in exactly one.
type Outcome string

const (
	// OutcomeSent means the change was written to the target.
	OutcomeSent Outcome = "sent"
	// OutcomeSkipped means the message was deliberately not written; the
	// reason says which rule decided so.
	OutcomeSkipped Outcome = "skipped"
	// OutcomeHeld means part of the change met a conflicting change on the
	// other side and waits for a person (see the held conflicts); the rest
	// of the change was written and ChangedFields names it.
	OutcomeHeld Outcome = "held"
	// OutcomeFailed means the attempt failed and the message will be retried.
	OutcomeFailed Outcome = "failed"
	// OutcomeDeadLettered means the message was given up on and moved to the
	// dead-letter queue, where an operator can inspect and redrive it.
	OutcomeDeadLettered Outcome = "dead_lettered"
)

// Outcomes lists every outcome in display order.
func Outcomes() []Outcome {
	return []Outcome{OutcomeSent, OutcomeSkipped, OutcomeHeld, OutcomeFailed, OutcomeDeadLettered}
}

func (o Outcome) valid() bool { return slices.Contains(Outcomes(), o) }

// Direction is which way a message travels.
type Direction string

const (
	// FHIRToCRM carries a FHIR change to the CRM.
	FHIRToCRM Direction = "fhir_to_crm"
	// CRMToFHIR carries a CRM change back to the FHIR server (write-back).
	CRMToFHIR Direction = "crm_to_fhir"
)

func (d Direction) valid() bool { return d == FHIRToCRM || d == CRMToFHIR }

// ReasonCode is a stable code from the closed registry returned by
// Reasons. Admins see the code, its meaning and its suggested action
// first; raw error text is never the reason.
type ReasonCode string

// The registered reason codes (DESIGN.md §4).
const (
	// ReasonCreated: the target record was created.
	ReasonCreated ReasonCode = "created"
	// ReasonUpdated: the target record was updated.
	ReasonUpdated ReasonCode = "updated"
	// ReasonDeleted: the target record was deleted or deactivated.
	ReasonDeleted ReasonCode = "deleted"
	// ReasonConflictResolved: a person's resolution of a held conflict was
	// written.
	ReasonConflictResolved ReasonCode = "conflict_resolved"
	// ReasonDeactivated: the target was deactivated instead of deleted, by
	// the entity map's delete policy.
	ReasonDeactivated ReasonCode = "deactivated"

	// ReasonNoEntityMap: no entity map covers the record's type.
	ReasonNoEntityMap ReasonCode = "no_entity_map"
	// ReasonMapDisabled: the entity map exists but is disabled.
	ReasonMapDisabled ReasonCode = "map_disabled"
	// ReasonDirectionOff: the entity map does not sync in this direction.
	ReasonDirectionOff ReasonCode = "direction_off"
	// ReasonOperationOff: the operation (create, update, delete) is off for
	// this direction.
	ReasonOperationOff ReasonCode = "operation_off"
	// ReasonRecordGateOff: the record's own sync flag is off.
	ReasonRecordGateOff ReasonCode = "record_gate_off"
	// ReasonFiltered: the entity map's filter excluded the record; the
	// decision's ReasonSubject names the filter.
	ReasonFiltered ReasonCode = "filtered"
	// ReasonOwnWriteEcho: the change was fhirsync's own write coming back.
	ReasonOwnWriteEcho ReasonCode = "own_write_echo"
	// ReasonStaleVersion: a newer version was already processed.
	ReasonStaleVersion ReasonCode = "stale_version"
	// ReasonUnchanged: no mapped value differs at the target.
	ReasonUnchanged ReasonCode = "unchanged"
	// ReasonSourceGone: the source record no longer exists.
	ReasonSourceGone ReasonCode = "source_gone"
	// ReasonConflictDeferred: the record's only changes conflict with the
	// target's, and the policy keeps the target's value; the target's own
	// change carries it the other way.
	ReasonConflictDeferred ReasonCode = "conflict_deferred"
	// ReasonDeleteIgnored: the entity map's delete policy is ignore.
	ReasonDeleteIgnored ReasonCode = "delete_ignored"
	// ReasonDeleteOverruled: a delete met an edit on the other side and the
	// conflict policy keeps the edit.
	ReasonDeleteOverruled ReasonCode = "delete_overruled"
	// ReasonChildRow: the change is to a child row that an expansion map
	// writes with its parent record (fhirsync's own writes of child rows
	// come back this way); ReasonSubject names the expansion map.
	ReasonChildRow ReasonCode = "child_row"
	// ReasonAggregated: a device reading was folded into its window's
	// aggregate instead of being sent on its own (docs/device-streams.md).
	ReasonAggregated ReasonCode = "aggregated"
	// ReasonWithinRange: a device-stream window's readings all lay inside
	// the stream's threshold range, so its aggregate was not sent.
	ReasonWithinRange ReasonCode = "within_range"
	// ReasonDuplicateReading: a device reading repeated the key's previous
	// value, or the same reading (id and version) came again.
	ReasonDuplicateReading ReasonCode = "duplicate_reading"
	// ReasonRateLimited: the patient's aggregates reached the stream's
	// rate limit for the period, so this window's was not sent.
	ReasonRateLimited ReasonCode = "rate_limited"

	// ReasonSignalOpened: a signal (a Flag, a RiskAssessment above its
	// threshold) raised a CRM activity for care coordinators, or reopened
	// a closed one (docs/signals.md).
	ReasonSignalOpened ReasonCode = "signal_opened"
	// ReasonSignalUpdated: a raised signal changed and its open activity
	// was updated.
	ReasonSignalUpdated ReasonCode = "signal_updated"
	// ReasonSignalClosed: a signal was lowered (the Flag ended, the risk
	// fell) and its activity was closed.
	ReasonSignalClosed ReasonCode = "signal_closed"
	// ReasonBelowSignalThreshold: the resource does not raise its
	// signal and there is no open activity to close.
	ReasonBelowSignalThreshold ReasonCode = "below_signal_threshold"

	// ReasonConflictHeld: an attribute changed on both sides is held for a
	// person; the record's other changes were written (ChangedFields names
	// them).
	ReasonConflictHeld ReasonCode = "conflict_held"
	// ReasonDeleteHeld: a delete on one side met an edit on the other and
	// waits for a person.
	ReasonDeleteHeld ReasonCode = "delete_held"

	// ReasonInvalidMessage: the message could not be understood.
	ReasonInvalidMessage ReasonCode = "invalid_message"
	// ReasonMappingError: a map could not be applied; ReasonSubject names
	// the attribute map.
	ReasonMappingError ReasonCode = "mapping_error"
	// ReasonMissingReference: a lookup names a record that has no
	// counterpart at the target yet; ReasonSubject names the attribute map
	// (or the entity the target reported missing).
	ReasonMissingReference ReasonCode = "missing_reference"
	// ReasonTargetRejected: the target refused the write (4xx); the
	// decision's TargetError keeps the target's own code and message.
	ReasonTargetRejected ReasonCode = "target_rejected"
	// ReasonTargetConflict: the target kept reporting a version conflict
	// (412) after retries.
	ReasonTargetConflict ReasonCode = "target_conflict"
	// ReasonUnauthorized: the target refused our credentials (401/403).
	ReasonUnauthorized ReasonCode = "unauthorized"
	// ReasonThrottled: the target asked us to slow down (429).
	ReasonThrottled ReasonCode = "throttled"
	// ReasonUnavailable: the target or source could not be reached (5xx,
	// network, timeout).
	ReasonUnavailable ReasonCode = "unavailable"
	// ReasonAttemptsExhausted: the message failed too many times.
	ReasonAttemptsExhausted ReasonCode = "attempts_exhausted"
)

// Reason describes one registered reason code for people: what it means
// and what to do about it.
type Reason struct {
	// Code is the stable code stored in decisions.
	Code ReasonCode `json:"code"`
	// Outcomes are the outcomes a decision with this code may have.
	Outcomes []Outcome `json:"outcomes"`
	// Meaning says in one sentence what happened.
	Meaning string `json:"meaning"`
	// Action suggests what an admin or operator should do, if anything.
	Action string `json:"action"`
}

// Allows reports whether a decision with outcome o may carry this reason.
func (r Reason) Allows(o Outcome) bool { return slices.Contains(r.Outcomes, o) }

var (
	sentOnly   = []Outcome{OutcomeSent}
	skipOnly   = []Outcome{OutcomeSkipped}
	heldOnly   = []Outcome{OutcomeHeld}
	failOrDead = []Outcome{OutcomeFailed, OutcomeDeadLettered}
	deadOnly   = []Outcome{OutcomeDeadLettered}
)

// registry is the closed set. The schema's CHECK constraint on
// sync_decisions repeats it; reasons_test.go keeps the two in step.
var registry = []Reason{
	{ReasonCreated, sentOnly, "The target record did not exist and was created.", "None."},
	{ReasonUpdated, sentOnly, "The target record was updated with the changed mapped fields.", "None."},
	{ReasonDeleted, sentOnly, "The source record was deleted and the target record was deleted or deactivated.", "None."},
	{ReasonConflictResolved, sentOnly, "A person resolved a held conflict and the chosen value (or the delete) was written to the other side.", "None; the audit trail names who resolved it."},
	{ReasonDeactivated, sentOnly, "The source record was deleted and, by the entity map's delete policy, the target record was deactivated instead of deleted.", "None; change the entity map's delete policy if records should be deleted."},

	{ReasonNoEntityMap, skipOnly, "No entity map pairs this record's type with a type on the other side.", "Create and publish an entity map for the type if it should sync."},
	{ReasonMapDisabled, skipOnly, "The entity map for this record type exists but is disabled.", "Enable the entity map if the record type should sync."},
	{ReasonDirectionOff, skipOnly, "The entity map does not sync in this direction.", "Turn the direction on in the entity map if changes should travel this way."},
	{ReasonOperationOff, skipOnly, "The entity map does not allow this operation (create, update or delete) in this direction.", "Allow the operation in the entity map if it should sync."},
	{ReasonRecordGateOff, skipOnly, "The record's own sync flag is off, so it is kept out of the sync.", "Turn the record's sync flag on in the CRM if it should sync."},
	{ReasonFiltered, skipOnly, "The entity map's filter excluded the record (the decision names the filter).", "Check the named filter if the record should have been sent."},
	{ReasonOwnWriteEcho, skipOnly, "The change was fhirsync's own write coming back; sending it again would loop.", "None; this is loop prevention working."},
	{ReasonStaleVersion, skipOnly, "A newer version of the record was already processed.", "None; the newer version carries the change."},
	{ReasonUnchanged, skipOnly, "No mapped value differs at the target, so nothing was written.", "None; check the attribute maps if a change was expected to travel."},
	{ReasonSourceGone, skipOnly, "The source record no longer exists when it was re-read.", "None; a delete notice for the record follows or has already been processed."},
	{ReasonConflictDeferred, skipOnly, "The record's only changes conflict with changes made on the target side, and the conflict policy keeps the target's values; the decision's conflicts name them.", "None; the target side's own change carries its values the other way. Change the conflict policy if this side should win."},
	{ReasonDeleteIgnored, skipOnly, "The source record was deleted, and the entity map's delete policy is to ignore deletes.", "None; change the entity map's delete policy if deletes should travel."},
	{ReasonDeleteOverruled, skipOnly, "The source record was deleted while the target record was edited, and the conflict policy keeps the edit; the target record stays.", "None if the edit should win; otherwise delete the target record by hand or change the conflict policy."},
	{ReasonChildRow, skipOnly, "The change is to a child row that an expansion map (named in the decision) writes together with its parent record; fhirsync's own writes of child rows come back this way.", "None; child rows travel with their parent record. To send a change made to a child row alone, replay its parent record."},

	{ReasonAggregated, skipOnly, "Device readings were folded into their window's aggregate, which was sent in their place (a stream map's window decision counts them).", "None; the window's decision names the aggregate sent. Shorten the stream's window if readings should reach the CRM sooner."},
	{ReasonWithinRange, skipOnly, "Every reading of the device-stream window lay inside the stream's threshold range, so no aggregate was sent.", "None; change the stream's threshold if in-range readings should reach the CRM."},
	{ReasonDuplicateReading, skipOnly, "Device readings repeated the previous value of their patient and code, or the same reading (id and version) arrived again; they were dropped.", "None; turn the stream's dropRepeats off if repeated values should count."},
	{ReasonRateLimited, skipOnly, "The patient's aggregates reached the stream's rate limit for the period, so this window's aggregate was not sent.", "None if the limit is meant; raise the stream's rateLimit if more aggregates should reach the CRM."},

	{ReasonSignalOpened, sentOnly, "A signal (a Flag, or a RiskAssessment above its threshold) raised a CRM activity regarding the patient's contact for care coordinators, or reopened its closed activity.", "None; the activity is in the CRM, owned as the map's signal says."},
	{ReasonSignalUpdated, sentOnly, "A raised signal changed and its open CRM activity was updated.", "None."},
	{ReasonSignalClosed, sentOnly, "A signal was lowered (the Flag ended or the risk fell below the threshold) and its CRM activity was closed.", "None; change the map's signal section if activities should stay open."},
	{ReasonBelowSignalThreshold, skipOnly, "The resource does not raise its signal (its condition is false, it ended, or its risk is below the threshold) and no open activity needed closing.", "None; change the map's signal threshold if such resources should reach care coordinators."},

	{ReasonConflictHeld, heldOnly, "An attribute changed on both sides to different values and is held for a person; the record's other changes were written (the changed fields name them).", "Open the conflict on the Conflicts page and take the FHIR or the CRM value."},
	{ReasonDeleteHeld, heldOnly, "The record was deleted on one side while it was edited on the other; the delete waits for a person.", "Open the conflict on the Conflicts page and apply the delete or keep the record."},

	{ReasonInvalidMessage, failOrDead, "The message could not be understood (malformed, unknown type or too large).", "Inspect the dead letter; fix the sender or discard the message."},
	{ReasonMappingError, failOrDead, "A map could not be applied to the record (the decision names the attribute map).", "Fix the named attribute map, test it in the preview, publish, then redrive."},
	{ReasonMissingReference, failOrDead, "A lookup names a record that the target does not have yet: not synced so far, or gone from the target (the decision names the attribute map, or the entity the target could not find); the message is retried until it is there.", "None if the referenced record is on its way; otherwise sync or fix the referenced record (search the log for it), then redrive."},
	{ReasonTargetRejected, failOrDead, "The target refused the write as invalid (HTTP 4xx); the decision keeps the target's own error code and message.", "Look up the target's error code and message shown with the decision, correct the map or the source data, then redrive."},
	{ReasonTargetConflict, failOrDead, "The target kept reporting a version conflict (HTTP 412) after retries.", "Redrive; if it recurs, look for another writer updating the same record."},
	{ReasonUnauthorized, failOrDead, "The target refused fhirsync's credentials (HTTP 401 or 403); never counted as success.", "Check the application user's credentials and permissions, then redrive."},
	{ReasonThrottled, failOrDead, "The target asked fhirsync to slow down (HTTP 429).", "None if it clears; otherwise lower concurrency or raise the service limits."},
	{ReasonUnavailable, failOrDead, "The target or source could not be reached (HTTP 5xx, network error or timeout).", "Check the endpoint's health and network; failed messages retry on their own."},
	{ReasonAttemptsExhausted, deadOnly, "The message failed on every allowed attempt and was dead-lettered.", "Read the attempts for the cause, fix it, then redrive the dead letter."},
}

// Reasons returns the registry in display order. The slice is a copy.
func Reasons() []Reason {
	out := make([]Reason, len(registry))
	for i, r := range registry {
		r.Outcomes = slices.Clone(r.Outcomes)
		out[i] = r
	}
	return out
}

// LookupReason returns the registered reason for code.
func LookupReason(code ReasonCode) (Reason, bool) {
	for _, r := range registry {
		if r.Code == code {
			r.Outcomes = slices.Clone(r.Outcomes)
			return r, true
		}
	}
	return Reason{}, false
}
