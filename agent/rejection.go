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

// roundedNote says which mapped values the CRM holds rounded, for a
// decision's sentence; empty when none.
func roundedNote(rounded []string) string {
	if len(rounded) == 0 {
		return ""
	}
	return " The CRM keeps " + strings.Join(rounded, ", ") + " rounded to its column's precision; compared at that precision."
}
