package agent

import (
	"context"
	"errors"
	"fmt"
	"net"

	"github.com/fhirsync/fhirsync/logs"
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
	if errors.As(err, &me) {
		if me.retryable {
			return "unresolved_lookup"
		}
		return "mapping"
	}
	return "internal"
}
