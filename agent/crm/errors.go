package crm

import (
	"encoding/json"
	"errors"
	"fmt"
	"mime"
	"net/http"
	"regexp"
	"strconv"
	"strings"
	"time"
)

// Class is the kind of failure, as the agent's decisions need it.
type Class string

// Error classes.
const (
	// ClassRejected: the request was refused as invalid (4xx); retrying the
	// same request will not help.
	ClassRejected Class = "rejected"
	// ClassConflict: a precondition failed (412: ETag mismatch, key already
	// taken, create-only upsert of an existing row) or 409.
	ClassConflict Class = "conflict"
	// ClassUnauthorized: 401 or 403; never a success.
	ClassUnauthorized Class = "unauthorized"
	// ClassThrottled: 429 from service protection; retry after RetryAfter.
	ClassThrottled Class = "throttled"
	// ClassUnavailable: 5xx, 408, network failure or timeout; retry later.
	ClassUnavailable Class = "unavailable"
	// ClassNotFound: 404, the row (or key) does not exist.
	ClassNotFound Class = "not_found"
	// ClassInvalidResponse: the answer was not what the Web API sends (an
	// HTML page, truncated JSON, a wrong content type, a missing header).
	ClassInvalidResponse Class = "invalid_response"
)

// Sentinels matched with errors.Is against *Error.
var (
	// ErrNotFound matches errors of class not_found.
	ErrNotFound = errors.New("dataverse record not found")
	// ErrDeltaExpired matches an expired change-tracking token: the caller
	// must start over with a full reconcile.
	ErrDeltaExpired = errors.New("dataverse change tracking token expired")
)

// CodeExpiredVersionStamp is the Dataverse error code for an expired
// change-tracking token.
const CodeExpiredVersionStamp = "0x80044352"

// Error is a classified failure of one Web API call.
type Error struct {
	// Op says what was being done, e.g. "upserting contacts(msemr_azurefhirid=…)".
	Op string
	// Status is the HTTP status, 0 when no answer arrived.
	Status int
	// Code and Message come from the Dataverse error JSON, when there was one.
	Code    string
	Message string
	// Class is the kind of failure; Retryable says whether the same
	// request may succeed later; RetryAfter is the server's hint (0 = none).
	Class      Class
	Retryable  bool
	RetryAfter time.Duration
	// Err is the underlying transport or decoding error, if any.
	Err error
}

// quoted matches values Dataverse quotes in messages; they may hold record
// data, so they are elided from Error().
var quoted = regexp.MustCompile(`'[^']*'`)

func (e *Error) Error() string {
	var b strings.Builder
	b.WriteString("dataverse: ")
	if e.Op != "" {
		b.WriteString(e.Op)
		b.WriteString(": ")
	}
	if e.Status != 0 {
		b.WriteString(strconv.Itoa(e.Status))
		b.WriteString(" ")
	}
	b.WriteString(string(e.Class))
	if e.Code != "" {
		b.WriteString(" ")
		b.WriteString(e.Code)
	}
	if e.Message != "" {
		msg := quoted.ReplaceAllString(e.Message, "'…'")
		if len(msg) > 300 {
			msg = msg[:300] + "…"
		}
		b.WriteString(": ")
		b.WriteString(msg)
	}
	if e.Err != nil {
		b.WriteString(": ")
		b.WriteString(e.Err.Error())
	}
	return b.String()
}

func (e *Error) Unwrap() error { return e.Err }

// Is matches ErrNotFound and ErrDeltaExpired.
func (e *Error) Is(target error) bool {
	switch target {
	case ErrNotFound:
		return e.Class == ClassNotFound
	case ErrDeltaExpired:
		return e.Code == CodeExpiredVersionStamp ||
			strings.Contains(e.Message, "Version stamp associated with the client has expired")
	}
	return false
}

// AsError extracts the *Error in err's chain.
func AsError(err error) (*Error, bool) {
	var e *Error
	ok := errors.As(err, &e)
	return e, ok
}

func classify(status int) (Class, bool) {
	switch {
	case status == http.StatusUnauthorized || status == http.StatusForbidden:
		return ClassUnauthorized, false
	case status == http.StatusTooManyRequests:
		return ClassThrottled, true
	case status == http.StatusNotFound:
		return ClassNotFound, false
	case status == http.StatusPreconditionFailed || status == http.StatusConflict:
		return ClassConflict, false
	case status == http.StatusRequestTimeout || status >= 500:
		return ClassUnavailable, true
	case status >= 400:
		return ClassRejected, false
	}
	return ClassInvalidResponse, false
}

// parseRetryAfter reads seconds or an HTTP date.
func parseRetryAfter(v string, now time.Time) time.Duration {
	v = strings.TrimSpace(v)
	if v == "" {
		return 0
	}
	if n, err := strconv.ParseFloat(v, 64); err == nil && n >= 0 {
		return time.Duration(n * float64(time.Second))
	}
	if t, err := http.ParseTime(v); err == nil && t.After(now) {
		return t.Sub(now)
	}
	return 0
}

// isJSON reports whether a Content-Type is JSON.
func isJSON(ct string) bool {
	mt, _, err := mime.ParseMediaType(ct)
	return err == nil && (mt == "application/json" || strings.HasSuffix(mt, "+json"))
}

// errorFromResponse classifies a non-2xx answer. A body that is not the
// Dataverse error JSON is invalid_response, except for 401/403 and 429,
// whose status alone is decisive.
func errorFromResponse(op string, status int, h http.Header, body []byte) *Error {
	e := &Error{Op: op, Status: status, RetryAfter: parseRetryAfter(h.Get("Retry-After"), time.Now())}
	e.Class, e.Retryable = classify(status)
	if status < 400 {
		e.Class, e.Retryable = ClassInvalidResponse, false
		e.Err = fmt.Errorf("unexpected status %d", status)
		return e
	}
	var env struct {
		Error *struct {
			Code    string `json:"code"`
			Message string `json:"message"`
		} `json:"error"`
	}
	if len(body) > 0 && isJSON(h.Get("Content-Type")) && json.Unmarshal(body, &env) == nil && env.Error != nil {
		e.Code, e.Message = env.Error.Code, env.Error.Message
		return e
	}
	if len(body) == 0 || e.Class == ClassUnauthorized || e.Class == ClassThrottled {
		// Dataverse answers 401 with an empty body and WWW-Authenticate;
		// an empty body says nothing beyond the status.
		return e
	}
	retry := e.Retryable
	e.Class, e.Retryable = ClassInvalidResponse, retry
	e.Err = fmt.Errorf("status %d with a body that is not Dataverse error JSON (%s)", status, describeBody(h, body))
	return e
}

func describeBody(h http.Header, body []byte) string {
	ct := h.Get("Content-Type")
	if ct == "" {
		ct = "no content type"
	}
	return fmt.Sprintf("%s, %d bytes", ct, len(body))
}

func invalidResponse(op string, status int, format string, args ...any) *Error {
	return &Error{Op: op, Status: status, Class: ClassInvalidResponse, Err: fmt.Errorf(format, args...)}
}
