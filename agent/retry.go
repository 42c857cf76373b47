package agent

import (
	"errors"
	"math/rand/v2"
	"time"
)

// Retry classification is data attached to an error, decided once where the
// error is understood (an endpoint client, the mapper) and read once by the
// pipeline.

type permanentError struct{ err error }

func (e *permanentError) Error() string { return e.err.Error() }
func (e *permanentError) Unwrap() error { return e.err }

// Permanent marks err as not worth retrying: the same input will fail the
// same way (a 4xx, a mapping error, a malformed message).
func Permanent(err error) error {
	if err == nil {
		return nil
	}
	return &permanentError{err}
}

type retryAfterError struct {
	after time.Duration
	err   error
}

func (e *retryAfterError) Error() string { return e.err.Error() }
func (e *retryAfterError) Unwrap() error { return e.err }

// RetryAfter marks err as retryable no sooner than d (a 429 or 503 with
// Retry-After).
func RetryAfter(d time.Duration, err error) error {
	if err == nil {
		return nil
	}
	return &retryAfterError{after: d, err: err}
}

// IsPermanent reports whether err was marked Permanent. A lost
// optimistic-concurrency race (a 412 or 409 from either endpoint) never
// is, whatever the client said about sending the same request again: the
// next attempt re-reads the target and writes on top of its current
// version, so the message is retried like an outage until its attempts run
// out, and then dead-lettered as target_conflict.
func IsPermanent(err error) bool {
	var p *permanentError
	return errors.As(err, &p) && !isConflict(err)
}

// retryAfterOf returns the server's requested delay, if any.
func retryAfterOf(err error) (time.Duration, bool) {
	var r *retryAfterError
	if errors.As(err, &r) {
		return r.after, true
	}
	return 0, false
}

// Backoff computes retry delays: exponential from Base, capped at Max, with
// full jitter so replicas retrying the same outage spread out, and never
// shorter than a server's Retry-After.
type Backoff struct {
	Base time.Duration
	Max  time.Duration
	// rand returns a float in [0,1); nil uses math/rand/v2.
	rand func() float64
}

// Delay is the wait before attempt number attempt+1, given the error that
// ended attempt (attempt counts from 1).
func (b Backoff) Delay(attempt int, err error) time.Duration {
	base, maxD := b.Base, b.Max
	if base <= 0 {
		base = time.Second
	}
	if maxD <= 0 {
		maxD = 5 * time.Minute
	}
	exp := base
	for i := 1; i < attempt && exp < maxD; i++ {
		exp *= 2
	}
	exp = min(exp, maxD)
	r := b.rand
	if r == nil {
		r = rand.Float64
	}
	// Full jitter over [exp/2, exp): never zero, still spread.
	d := exp/2 + time.Duration(r()*float64(exp/2))
	if ra, ok := retryAfterOf(err); ok && ra > d {
		d = ra
	}
	return d
}
