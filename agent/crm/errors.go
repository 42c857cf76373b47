package crm

import (
	"bytes"
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
	// Details are the error annotations Dataverse adds when asked with
	// Prefer: odata.include-annotations (help link, plug-in status, inner
	// message, trace text). Detail only: never part of Error().
	Details ErrorDetails
	// Request is the failing request's 1-based position in a $batch (0 when
	// the error is not about one request of a batch), ContentID its
	// Content-ID when it had one. The other requests of a failed change set
	// carry a copy of the failing request's error with RolledBack set: it
	// still names the request that failed.
	Request    int
	ContentID  string
	RolledBack bool
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

// ErrorDetails are the documented error annotations of the Dataverse error
// JSON (@Microsoft.PowerApps.CDS.*). TraceText and InnerMessage may quote
// plug-in output and record values; they are kept as detail only.
type ErrorDetails struct {
	OperationStatus string
	SubErrorCode    string
	HelpLink        string
	TraceText       string
	InnerMessage    string
}

func (e *Error) Error() string {
	var b strings.Builder
	b.WriteString("dataverse: ")
	if e.Op != "" {
		b.WriteString(e.Op)
		b.WriteString(": ")
	}
	if e.RolledBack {
		b.WriteString("rolled back because ")
	}
	if e.Request > 0 || e.ContentID != "" {
		b.WriteString("batch request")
		if e.Request > 0 {
			b.WriteString(" ")
			b.WriteString(strconv.Itoa(e.Request))
		}
		if e.ContentID != "" {
			b.WriteString(" (Content-ID ")
			b.WriteString(e.ContentID)
			b.WriteString(")")
		}
		if e.RolledBack {
			b.WriteString(" failed")
		}
		b.WriteString(": ")
	} else if e.RolledBack {
		b.WriteString("a request of its change set failed: ")
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
	if ct := h.Get("Content-Type"); len(body) > 0 && (ct == "" || isJSON(ct)) && decodeErrorJSON(body, e) {
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

// Error annotations Dataverse documents for the error JSON.
const (
	annOperationStatus = "@Microsoft.PowerApps.CDS.ErrorDetails.OperationStatus"
	annSubErrorCode    = "@Microsoft.PowerApps.CDS.ErrorDetails.SubErrorCode"
	annHelpLink        = "@Microsoft.PowerApps.CDS.HelpLink"
	annTraceText       = "@Microsoft.PowerApps.CDS.TraceText"
	annInnerMessage    = "@Microsoft.PowerApps.CDS.InnerError.Message"
)

// decodeErrorJSON reads {"error":{"code","message",annotations…}} into e
// and reports whether the body was a Dataverse error. It reads token by
// token and keeps what it read before a syntax error: an error body cut
// short or missing a comma (as printed in Microsoft's own example of the
// annotations) still names its code and message, and the status already
// decided the class.
func decodeErrorJSON(body []byte, e *Error) bool {
	dec := json.NewDecoder(bytes.NewReader(body))
	if t, err := dec.Token(); err != nil || t != json.Delim('{') {
		return false
	}
	for dec.More() {
		k, err := dec.Token()
		if err != nil {
			return false
		}
		if k != "error" {
			var skip json.RawMessage
			if dec.Decode(&skip) != nil {
				return false
			}
			continue
		}
		if t, err := dec.Token(); err != nil || t != json.Delim('{') {
			return false
		}
		found := false
		for dec.More() {
			k, err := dec.Token()
			if err != nil {
				return found
			}
			name, _ := k.(string)
			v, err := dec.Token()
			if err != nil {
				return found
			}
			if _, ok := v.(json.Delim); ok {
				// a nested object or array (innererror): skip it whole
				if !skipValue(dec) {
					return found
				}
				continue
			}
			s := scalarString(v)
			switch name {
			case "code":
				e.Code, found = s, true
			case "message":
				e.Message, found = s, true
			case annOperationStatus:
				e.Details.OperationStatus = s
			case annSubErrorCode:
				e.Details.SubErrorCode = s
			case annHelpLink:
				e.Details.HelpLink = s
			case annTraceText:
				e.Details.TraceText = s
			case annInnerMessage:
				e.Details.InnerMessage = s
			}
		}
		// an empty but complete error object is still Dataverse's shape
		_, err = dec.Token()
		return found || err == nil
	}
	return false
}

// skipValue reads past the rest of an object or array whose opening
// delimiter was just read.
func skipValue(dec *json.Decoder) bool {
	depth := 1
	for depth > 0 {
		t, err := dec.Token()
		if err != nil {
			return false
		}
		switch t {
		case json.Delim('{'), json.Delim('['):
			depth++
		case json.Delim('}'), json.Delim(']'):
			depth--
		}
	}
	return true
}

func scalarString(v any) string {
	switch x := v.(type) {
	case string:
		return x
	case float64:
		return strconv.FormatFloat(x, 'f', -1, 64)
	case bool:
		return strconv.FormatBool(x)
	}
	return ""
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
