package agent

import (
	"context"
	"errors"
	"fmt"
	"net"
	"regexp"
	"strings"

	"github.com/fhirsync/fhirsync/agent/crm"
	"github.com/fhirsync/fhirsync/agent/fhir"
	"github.com/fhirsync/fhirsync/logs"
	"github.com/fhirsync/fhirsync/maps"
	"github.com/fhirsync/fhirsync/queues"
)

// Endpoint error classes, as the endpoint adapters report them.
const (
	classRejected     = "rejected"         // 4xx: the target refused the request as sent
	classConflict     = "conflict"         // 409/412: optimistic concurrency lost
	classUnauthorized = "unauthorized"     // 401/403: never a success
	classThrottled    = "throttled"        // 429
	classUnavailable  = "unavailable"      // 5xx, network, timeout
	classNotFound     = "not_found"        // 404/410 where a record was expected
	classInvalid      = "invalid_response" // a body that is not what the API promises
)

// endpointError is a failure talking to the FHIR server or the CRM, with
// the class that decides its reason code. Adapters build it from the
// clients' own error types; the raw text stays in err (it may quote the
// server and is not logged).
type endpointError struct {
	class  string
	status int
	err    error
}

func (e *endpointError) Error() string {
	if e.status > 0 {
		return fmt.Sprintf("%s (HTTP %d): %v", e.class, e.status, e.err)
	}
	return fmt.Sprintf("%s: %v", e.class, e.err)
}

func (e *endpointError) Unwrap() error { return e.err }

// mappingError names the attribute map that failed. A retryable one (a
// lookup whose referenced record has not been synced yet) is tried again
// later; the others are dead-lettered at once.
type mappingError struct {
	attribute string
	retryable bool
	err       error
}

func (e *mappingError) Error() string { return "attribute map " + e.attribute + ": " + e.err.Error() }
func (e *mappingError) Unwrap() error { return e.err }

// reasonForError maps a failure to its reason code; whether it is retried
// is Permanent's business. Unclassified errors (the database, a bug)
// count as unavailable.
func reasonForError(err error) logs.ReasonCode {
	var ee *endpointError
	if errors.As(err, &ee) {
		switch ee.class {
		case classUnauthorized:
			return "unauthorized"
		case classThrottled:
			return "throttled"
		case classUnavailable:
			return "unavailable"
		case classConflict:
			return "target_conflict"
		case classRejected, classInvalid, classNotFound:
			return "target_rejected"
		}
	}
	var me *mappingError
	if errors.As(err, &me) {
		if me.retryable {
			return logs.ReasonMissingReference
		}
		return "mapping_error"
	}
	var sre *sharedRowError
	if errors.As(err, &sre) {
		return "mapping_error"
	}
	return "unavailable"
}

// isConflict reports whether err is a lost optimistic-concurrency race:
// the target changed between the agent's read and its write.
func isConflict(err error) bool {
	var ee *endpointError
	return errors.As(err, &ee) && ee.class == classConflict
}

// errorClass is the short, value-free class stored in an attempt.
func errorClass(err error) string {
	var ee *endpointError
	var ne net.Error
	switch {
	case err == nil:
		return ""
	case errors.As(err, &ee) && ee.status > 0:
		return fmt.Sprintf("http_%d", ee.status)
	case errors.As(err, &ee):
		return ee.class
	case errors.Is(err, context.DeadlineExceeded):
		return "timeout"
	case errors.As(err, &ne):
		return "network"
	}
	var me *mappingError
	var sre *sharedRowError
	switch {
	case errors.As(err, &me) && me.retryable:
		return "unresolved_lookup"
	case errors.As(err, &me), errors.As(err, &sre):
		return "mapping"
	}
	return "internal"
}

// targetErrorOf is the endpoint's own account of err — the Dataverse
// error JSON or the FHIR OperationOutcome — with its message redacted for
// the sync log (see redact), and the full message, which may quote record
// values and is kept only in a payload capture. Nil when no endpoint
// answered with an error body.
func targetErrorOf(err error, names map[string]bool) (*logs.TargetError, string) {
	var ce *crm.Error
	var fe *fhir.Error
	switch {
	case err == nil:
		return nil, ""
	case errors.As(err, &ce):
		if ce.Code == "" && ce.Message == "" {
			return nil, ""
		}
		return &logs.TargetError{Status: ce.Status, Code: truncate(ce.Code, 64), Message: truncate(redact(ce.Message, names), 900)}, ce.Message
	case errors.As(err, &fe):
		if fe.Outcome == "" {
			return nil, ""
		}
		return &logs.TargetError{Status: fe.Status, Code: truncate(outcomeCode(fe.Outcome), 64), Message: truncate(redact(fe.Outcome, names), 900)}, fe.Outcome
	}
	return nil, ""
}

// outcomeCode is the issue code of the first issue of an OperationOutcome
// as agent/fhir renders it ("severity code: text; …").
func outcomeCode(outcome string) string {
	first, _, _ := strings.Cut(outcome, ";")
	head, _, _ := strings.Cut(first, ":")
	f := strings.Fields(head)
	if len(f) < 2 {
		return ""
	}
	return f[1]
}

var (
	// quotedText is text an endpoint quotes: Dataverse in single quotes,
	// FHIR servers in either.
	quotedText = regexp.MustCompile(`'[^']*'|"[^"]*"|‘[^’]*’|“[^”]*”`)
	// valueWords are unquoted words that may be record values: anything
	// with a digit or an @ (dates, phone numbers, identifiers, e-mail
	// addresses), except record ids and hexadecimal error codes.
	valueWords = regexp.MustCompile(`[^\s,;()\[\]]*[0-9@][^\s,;()\[\]]*`)
	recordID   = regexp.MustCompile(`^(?i)[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}\.?$|^0x[0-9a-fA-F]+\.?$`)
	// lengthOf is Dataverse's "maximum allowed length of '100'": a column
	// size, not a value.
	lengthOf = regexp.MustCompile(`(?i)length of\s*$`)
)

// redact elides from an endpoint's message every value it may quote from
// the record, so that the message can be shown to users without the PHI
// permission: quoted text unless it is a name from the entity map (an
// attribute, an entity, a FHIR element — words of the map, not of the
// record), a value after "The value", and unquoted words with digits or
// an @ other than record ids and error codes.
func redact(msg string, names map[string]bool) string {
	msg = valueInMessage.ReplaceAllString(msg, "The value … of")
	var b strings.Builder
	last := 0
	for _, m := range quotedText.FindAllStringIndex(msg, -1) {
		b.WriteString(redactWords(msg[last:m[0]]))
		q := msg[m[0]:m[1]]
		open, close := q[:1], q[len(q)-1:]
		if r := []rune(q); len(r) >= 2 && r[0] > 127 {
			open, close = string(r[0]), string(r[len(r)-1])
		}
		inner := strings.TrimSuffix(strings.TrimPrefix(q, open), close)
		if isSchemaName(inner, names) || (isDigits(inner) && lengthOf.MatchString(msg[:m[0]])) {
			b.WriteString(q)
		} else {
			b.WriteString(open + "…" + close)
		}
		last = m[1]
	}
	b.WriteString(redactWords(msg[last:]))
	return b.String()
}

func redactWords(s string) string {
	return valueWords.ReplaceAllStringFunc(s, func(w string) string {
		if recordID.MatchString(w) {
			return w
		}
		return "…"
	})
}

// isSchemaName reports whether s is a name of the entity map or a dotted
// path of such names (Patient.birthDate, contact.lastname).
func isSchemaName(s string, names map[string]bool) bool {
	if s == "" || len(names) == 0 {
		return s == ""
	}
	for _, part := range strings.Split(s, ".") {
		if !names[strings.ToLower(part)] {
			return false
		}
	}
	return true
}

func isDigits(s string) bool {
	if s == "" {
		return false
	}
	for _, r := range s {
		if r < '0' || r > '9' {
			return false
		}
	}
	return true
}

// schemaNames are the words of an entity map that an endpoint's message
// may quote and that are not record data: entity and entity set names,
// FHIR resource types, attribute and element names, lower-cased.
func schemaNames(em *maps.EntityMap) map[string]bool {
	names := map[string]bool{}
	add := func(ss ...string) {
		for _, s := range ss {
			for _, w := range pathWords.FindAllString(s, -1) {
				names[strings.ToLower(w)] = true
			}
		}
	}
	add(em.Name, em.CRMEntity, em.CRMEntitySet, em.FHIRType, em.Correlation.CRMAttribute)
	addAttrs := func(as []maps.AttributeMap) {
		for _, a := range as {
			add(a.Name, a.FHIRPath)
			add(a.CRMAttributes()...)
			add(a.FallbackPaths...)
		}
	}
	addAttrs(em.Attributes)
	em.EachExpansion(func(x *maps.ExpansionMap, _ string) {
		add(x.Name, x.CRMEntity, x.CRMEntitySet, x.ParentLookup, x.ParentNavigation, x.FHIRPath)
		addAttrs(x.Attributes)
	})
	return names
}

// pathWords are the identifiers in a name or a path expression.
var pathWords = regexp.MustCompile(`[A-Za-z_][A-Za-z0-9_]*`)

// codeOf is the endpoint's own error code for a decision's sentence
// (" 0x80040265"), empty when it sent none. Codes are not record data.
func codeOf(err error) string {
	var ce *crm.Error
	var fe *fhir.Error
	switch {
	case errors.As(err, &ce) && ce.Code != "":
		return " " + truncate(ce.Code, 64)
	case errors.As(err, &fe) && fe.Outcome != "":
		if c := outcomeCode(fe.Outcome); c != "" {
			return " " + truncate(c, 64)
		}
	}
	return ""
}

// targetError is what the endpoint said about err, redacted with the
// names of the decision's entity map, for the decision's attempt. With
// payload capture on, the full message goes into the decision's sealed
// capture.
func (p *pipeline) targetError(ctx context.Context, d *logs.Decision, err error) *logs.TargetError {
	var names map[string]bool
	if set, serr := p.maps(ctx); serr == nil && d.EntityMap != "" {
		side := queues.SideFHIR
		if d.Direction == logs.CRMToFHIR {
			side = queues.SideCRM
		}
		for _, m := range set.candidates(side, d.Source.Type) {
			if m.Name() == d.EntityMap {
				names = schemaNames(m.Def())
			}
		}
	}
	te, full := targetErrorOf(err, names)
	if te != nil && full != "" && p.capture != nil {
		if d.Snapshots == nil {
			d.Snapshots = &logs.Snapshots{}
		}
		d.Snapshots.Error = []byte(full)
	}
	return te
}
