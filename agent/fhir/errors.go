package fhir

import (
	"errors"
	"fmt"
	"net/http"
	"strconv"
	"strings"
	"time"
)

// Class names what kind of failure an Error is, so the agent can pick a
// reason code and decide whether to retry without reading status codes.
type Class string

// Error classes.
const (
	// ClassRejected: the server refused the request as sent (400, 405, 422 and other 4xx).
	ClassRejected Class = "rejected"
	// ClassConflict: optimistic concurrency lost (412 on If-Match, 409), or a
	// conditional update matched more than one resource.
	ClassConflict Class = "conflict"
	// ClassUnauthorized: 401 or 403, or no token could be obtained. Never a success.
	ClassUnauthorized Class = "unauthorized"
	// ClassThrottled: 429; RetryAfter says when to come back.
	ClassThrottled Class = "throttled"
	// ClassUnavailable: 5xx, 408, network failures and timeouts.
	ClassUnavailable Class = "unavailable"
	// ClassNotFound: 404, the resource (or version) does not exist.
	ClassNotFound Class = "not_found"
	// ClassGone: 410, the resource was deleted.
	ClassGone Class = "gone"
	// ClassInvalidResponse: the server answered with something that is not
	// what FHIR promises (HTML, truncated JSON, a wrong content type, an
	// OperationOutcome or another resource type where a resource was expected).
	ClassInvalidResponse Class = "invalid_response"
)

// Sentinels for errors.Is; an *Error matches the sentinel of its class.
var (
	ErrConflict        = errors.New("fhir: version conflict")
	ErrNotFound        = errors.New("fhir: not found")
	ErrGone            = errors.New("fhir: gone")
	ErrUnauthorized    = errors.New("fhir: unauthorized")
	ErrInvalidResponse = errors.New("fhir: invalid response")
)

// Error is a failed FHIR interaction.
//
// Error() names the interaction, the status and the class only. Outcome
// holds the server's OperationOutcome text (issue diagnostics and details),
// which servers often fill with values from the request — names,
// identifiers, birth dates. It is kept for the decision detail, where PHI
// rules apply; callers must not write it to process logs.
type Error struct {
	// Op is the interaction, e.g. "read Patient/123" or "search Patient".
	Op string
	// Status is the HTTP status, or 0 when no response arrived.
	Status int
	// Class decides the reason code.
	Class Class
	// Retryable says whether the same request may succeed later.
	Retryable bool
	// RetryAfter is the server's Retry-After, when it sent one.
	RetryAfter time.Duration
	// Outcome is the OperationOutcome text. It may contain PHI; never log it.
	Outcome string
	// Err is the underlying cause (a network error, a JSON syntax error).
	Err error
}

func (e *Error) Error() string {
	var b strings.Builder
	b.WriteString("fhir ")
	b.WriteString(e.Op)
	b.WriteString(": ")
	b.WriteString(string(e.Class))
	if e.Status > 0 {
		fmt.Fprintf(&b, " (HTTP %d)", e.Status)
	}
	if e.Err != nil {
		b.WriteString(": ")
		b.WriteString(e.Err.Error())
	}
	return b.String()
}

func (e *Error) Unwrap() error { return e.Err }

// Is matches the sentinel of e's class.
func (e *Error) Is(target error) bool {
	switch target {
	case ErrConflict:
		return e.Class == ClassConflict
	case ErrNotFound:
		return e.Class == ClassNotFound
	case ErrGone:
		return e.Class == ClassGone
	case ErrUnauthorized:
		return e.Class == ClassUnauthorized
	case ErrInvalidResponse:
		return e.Class == ClassInvalidResponse
	}
	return false
}

// statusError classifies a non-2xx response.
func statusError(op string, resp *http.Response, outcome string, now time.Time) *Error {
	e := classifyStatus(op, resp.StatusCode, outcome)
	if e.Retryable {
		e.RetryAfter = parseRetryAfter(resp.Header.Get("Retry-After"), now)
	}
	return e
}

// classifyStatus turns a non-2xx status — of a response, or of one entry
// of a batch-response Bundle — into an *Error of its class.
func classifyStatus(op string, status int, outcome string) *Error {
	e := &Error{Op: op, Status: status, Outcome: outcome}
	switch s := status; {
	case s == http.StatusTooManyRequests:
		e.Class, e.Retryable = ClassThrottled, true
	case s == http.StatusUnauthorized || s == http.StatusForbidden:
		e.Class = ClassUnauthorized
	case s == http.StatusPreconditionFailed || s == http.StatusConflict:
		e.Class = ClassConflict
	case s == http.StatusNotFound:
		e.Class = ClassNotFound
	case s == http.StatusGone:
		e.Class = ClassGone
	case s == http.StatusRequestTimeout || s >= 500:
		e.Class, e.Retryable = ClassUnavailable, true
	default:
		e.Class = ClassRejected
	}
	return e
}

// parseRetryAfter reads delay-seconds or an HTTP date; garbage gives zero.
func parseRetryAfter(v string, now time.Time) time.Duration {
	v = strings.TrimSpace(v)
	if v == "" {
		return 0
	}
	if n, err := strconv.Atoi(v); err == nil {
		if n < 0 {
			return 0
		}
		return min(time.Duration(n)*time.Second, 24*time.Hour)
	}
	if t, err := http.ParseTime(v); err == nil {
		if d := t.Sub(now); d > 0 {
			return min(d, 24*time.Hour)
		}
	}
	return 0
}

func invalidResponse(op string, status int, format string, args ...any) *Error {
	return &Error{Op: op, Status: status, Class: ClassInvalidResponse, Err: fmt.Errorf(format, args...)}
}
