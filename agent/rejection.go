package agent

import (
	"errors"
	"fmt"
	"regexp"
	"strings"

	"github.com/fhirsync/fhirsync/agent/crm"
	"github.com/fhirsync/fhirsync/logs"
)

// A CRM validation error names the attribute whose value the CRM cannot
// hold. These are Dataverse's codes for it and where each message names
// the attribute.
var validationAttribute = map[string]*regexp.Regexp{
	// StringLengthTooLong: "The length of the 'x' attribute of the 'e'
	// entity exceeded the maximum allowed length of 'n'."
	"0x80044331": regexp.MustCompile(`length of the '([A-Za-z0-9_]+)' attribute`),
	// A number outside the column's range: "A validation error occurred
	// for e.x. The value v of type T is outside the valid range(lo to hi)."
	"0x80044330": regexp.MustCompile(`occurred for [A-Za-z0-9_]+\.([A-Za-z0-9_]+)\.`),
	// PicklistValueOutOfRange: "The value v of 'x' on record of type 'e'
	// is outside the valid range. Accepted Values: …"
	"0x8004431a": regexp.MustCompile(`of '([A-Za-z0-9_]+)' on record of type`),
}

// valueInMessage is the record value a CRM message quotes; it may be PHI
// and never reaches a decision.
var valueInMessage = regexp.MustCompile(`(?i)\bThe value \S+ of\b`)

// rejection turns the CRM's refusal of a value into the decision that
// ends the message: dead-lettered target_rejected, naming the attribute
// and keeping the CRM's code and message (without the value). Retrying
// cannot help — the same value is refused again — so it is never retried.
// Nil when err is not such a refusal.
func rejection(err error) *step {
	ce, ok := crm.AsError(err)
	if !ok || ce.Class != crm.ClassRejected {
		return nil
	}
	re := validationAttribute[strings.ToLower(ce.Code)]
	if re == nil {
		return nil
	}
	m := re.FindStringSubmatch(ce.Message)
	if m == nil {
		return nil
	}
	attr := m[1]
	msg := valueInMessage.ReplaceAllString(ce.Message, "The value … of")
	st := &step{outcome: logs.OutcomeDeadLettered, reason: "target_rejected", subject: attr,
		message: truncate(fmt.Sprintf("The CRM cannot hold the value mapped to %s: %s %s", attr, ce.Code, msg), 900),
		err:     Permanent(err)}
	var ee *endpointError
	if !errors.As(err, &ee) {
		st.err = Permanent(&endpointError{class: classRejected, status: ce.Status, err: err})
	}
	return st
}

// missingRow is Dataverse's message for a row a request names that does
// not exist (code 0x80040217); the entity leads it.
var missingRow = regexp.MustCompile(`^([A-Za-z0-9_]+) With Id = [0-9A-Fa-f-]+ Does Not Exist`)

// missingReference turns the CRM's refusal of a write that binds a
// lookup to a row it does not have ("account With Id = … Does Not
// Exist", where account is not the entity written) into a failed
// missing_reference step naming the referenced entity: retried like an
// unresolved lookup, since the row may be on its way (or its link is
// stale and the next attempt resolves it again), and dead-lettered with
// the same reason when the attempts run out. Nil for other errors.
func missingReference(err error, target string) *step {
	ce, ok := crm.AsError(err)
	if !ok || ce.Code != "0x80040217" {
		return nil
	}
	m := missingRow.FindStringSubmatch(ce.Message)
	if m == nil || strings.EqualFold(m[1], target) {
		return nil
	}
	st := &step{outcome: logs.OutcomeFailed, reason: logs.ReasonMissingReference, subject: m[1],
		message: fmt.Sprintf("The CRM has no %s row that the write refers to (%s); retried until it exists.", m[1], ce.Code),
		// Retryable: not the Permanent the client's classification gave.
		err: &endpointError{class: classNotFound, status: ce.Status, err: ce}}
	return st
}

// roundedNote says which mapped values the CRM holds rounded, for a
// decision's sentence: rounded by the CRM to its column's precision, or
// rounded before writing as the map declares (declared); empty when none.
// The auditor reads here why the CRM's value differs from FHIR's.
func roundedNote(rounded, declared []string) string {
	var note string
	if len(declared) > 0 {
		note += " The map declares " + strings.Join(declared, ", ") + "; written and compared at the rounded value."
	}
	if len(rounded) > 0 {
		note += " The CRM keeps " + strings.Join(rounded, ", ") + " rounded to its column's precision; compared at that precision."
	}
	return note
}
