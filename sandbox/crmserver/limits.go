package crmserver

import (
	"fmt"
	"math"
	"net/http"
	"strconv"
	"sync"
	"time"
)

// Service protection as Dataverse documents it ("Service protection API
// limits", learn.microsoft.com/power-apps/developer/data-platform/api-limits):
// per user and per web server, within a five-minute sliding window, 6,000
// requests and 20 minutes (1,200 seconds) of combined execution time, and
// 52 concurrent requests; a request over a limit is answered 429 Too Many
// Requests with Retry-After in seconds and one of three error codes.

// Dataverse's documented default limits per user and web server.
const (
	// DataverseRequests is the number of requests per window.
	DataverseRequests = 6000
	// DataverseWindow is the sliding window of the request and
	// execution-time limits.
	DataverseWindow = 5 * time.Minute
	// DataverseExecutionTime is the combined execution time per window.
	DataverseExecutionTime = 20 * time.Minute
	// DataverseConcurrent is the number of concurrent requests ("52 or
	// higher").
	DataverseConcurrent = 52
)

// DefaultCostPerOperation is the execution time charged for one operation
// when Limits.CostPerOperation is zero. Dataverse measures the real time a
// request takes on its servers; the sandbox charges a fixed cost instead.
// 50 ms is an assumed figure for a create or update of one row without
// plug-ins, not a documented one. With it, 6,000 single requests use a
// quarter of the execution-time budget, while $batch requests reach that
// limit at 24,000 operations per window.
const DefaultCostPerOperation = 50 * time.Millisecond

// The error codes Dataverse's Web API returns for each limit (the "hex
// code" of the documentation).
const (
	codeTooManyRequests    = "0x80072322" // -2147015902
	codeExecutionTime      = "0x80072321" // -2147015903
	codeConcurrentRequests = "0x80072326" // -2147015898
)

// The response headers Dataverse documents for tracking the remaining
// limits ("intended for debugging purposes").
const (
	headerBurstRemaining = "x-ms-ratelimit-burst-remaining-xrm-requests"
	headerTimeRemaining  = "x-ms-ratelimit-time-remaining-xrm-requests"
)

// concurrentRetryAfter is the Retry-After of a request refused for
// concurrency. Dataverse does not document it; a request in flight usually
// ends within a second.
const concurrentRetryAfter = time.Second

// Limits are the service-protection limits, each applied to every
// authenticated user (the systemuserid of the bearer token) on its own.
// Zero fields are off, so the zero value has no limits; DataverseLimits
// returns Dataverse's documented defaults.
type Limits struct {
	// Requests is how many requests one user may make per Window. A $batch
	// is one request, whatever it holds. Zero or less: off.
	Requests int
	// Window is the sliding window of Requests and ExecutionTime: what
	// counts is what was admitted in the Window before now. Zero means
	// DataverseWindow.
	Window time.Duration
	// ExecutionTime is the combined execution time one user's requests may
	// use per Window. Zero or less: off.
	ExecutionTime time.Duration
	// CostPerOperation is the execution time charged for each operation:
	// a request on its own, or each request a $batch holds. Zero means
	// DefaultCostPerOperation.
	CostPerOperation time.Duration
	// CostPerRequest is charged once per HTTP request on top of its
	// operations (a $batch's own parsing and answering). Zero: nothing.
	CostPerRequest time.Duration
	// Concurrent caps one user's requests in flight at once. Zero or less:
	// off.
	Concurrent int
}

// DataverseLimits returns Dataverse's documented default limits, with
// DefaultCostPerOperation as the cost of an operation.
func DataverseLimits() Limits {
	return Limits{Requests: DataverseRequests, Window: DataverseWindow, ExecutionTime: DataverseExecutionTime,
		CostPerOperation: DefaultCostPerOperation, Concurrent: DataverseConcurrent}
}

func (l Limits) window() time.Duration {
	if l.Window > 0 {
		return l.Window
	}
	return DataverseWindow
}

// cost is the execution time charged for one request holding ops
// operations.
func (l Limits) cost(ops int) time.Duration {
	per := l.CostPerOperation
	if per == 0 {
		per = DefaultCostPerOperation
	}
	return l.CostPerRequest + time.Duration(max(ops, 1))*per
}

// limiter keeps every user's usage. Its lock is its own, apart from the
// server's.
type limiter struct {
	now func() time.Time

	mu     sync.Mutex
	limits Limits
	users  map[string]*usage

	// admitted, when set, runs after a request is admitted and before it is
	// executed; tests use it to hold requests in flight.
	admitted func()
}

// usage is one user's admitted requests in the window, oldest first, and
// requests in flight.
type usage struct {
	slots    []slot
	head     int // slots[:head] have left the window
	requests int // sum of slots[head:].requests
	spent    time.Duration
	inFlight int
}

// slot aggregates the requests admitted within a short span (a ten
// thousandth of the window) from at; they leave the window together, at
// at+window. It bounds the memory of a busy user to 10,000 slots.
type slot struct {
	at       time.Time
	requests int
	spent    time.Duration
}

func newLimiter(l Limits, now func() time.Time) *limiter {
	return &limiter{now: now, limits: l, users: map[string]*usage{}}
}

func (lm *limiter) set(l Limits) {
	lm.mu.Lock()
	defer lm.mu.Unlock()
	lm.limits = l
	lm.users = map[string]*usage{}
}

func (lm *limiter) user(id string) *usage {
	u := lm.users[id]
	if u == nil {
		u = &usage{}
		lm.users[id] = u
	}
	return u
}

// slide drops the slots that left the window ending at now.
func (u *usage) slide(now time.Time, window time.Duration) {
	for u.head < len(u.slots) && !u.slots[u.head].at.Add(window).After(now) {
		u.requests -= u.slots[u.head].requests
		u.spent -= u.slots[u.head].spent
		u.head++
	}
	if u.head == len(u.slots) {
		u.slots, u.head = u.slots[:0], 0
	} else if u.head > 1024 && u.head > len(u.slots)/2 {
		u.slots = append(u.slots[:0], u.slots[u.head:]...)
		u.head = 0
	}
}

// until is how long until the slots leaving the window bring the measure
// m (of the slots in it, totalling total) below limit.
func (u *usage) until(now time.Time, window time.Duration, total, limit int64, m func(slot) int64) time.Duration {
	for _, s := range u.slots[u.head:] {
		total -= m(s)
		if total < limit {
			return s.at.Add(window).Sub(now)
		}
	}
	return window
}

func (u *usage) record(now time.Time, window, cost time.Duration) {
	if n := len(u.slots); n > u.head && now.Sub(u.slots[n-1].at) < window/10000 {
		u.slots[n-1].requests++
		u.slots[n-1].spent += cost
	} else {
		u.slots = append(u.slots, slot{at: now, requests: 1, spent: cost})
	}
	u.requests++
	u.spent += cost
}

// admit applies the service-protection limits to one request of user
// holding ops operations (1 for a request on its own, the number of
// requests a $batch holds). It returns the function that ends the request
// or the 429 answer. A request is refused when the user's admitted
// requests or execution time in the window before it have reached their
// limit, or when the user has Concurrent requests in flight. Refused
// requests are not counted.
func (s *Server) admit(user string, ops int) (func(), *apiError) {
	lm := s.lim
	lm.mu.Lock()
	l := lm.limits
	u := lm.user(user)
	now := lm.now()
	w := l.window()
	u.slide(now, w)
	var refused *apiError
	if l.Requests > 0 && u.requests >= l.Requests {
		refused = &apiError{status: http.StatusTooManyRequests, code: codeTooManyRequests,
			message:    fmt.Sprintf("Number of requests exceeded the limit of %d over time window of %d seconds.", l.Requests, int(w.Seconds())),
			retryAfter: u.until(now, w, int64(u.requests), int64(l.Requests), func(s slot) int64 { return int64(s.requests) })}
	}
	if l.ExecutionTime > 0 && u.spent >= l.ExecutionTime {
		retry := u.until(now, w, int64(u.spent), int64(l.ExecutionTime), func(s slot) int64 { return int64(s.spent) })
		if refused == nil {
			refused = &apiError{status: http.StatusTooManyRequests, code: codeExecutionTime,
				// The documentation's text, two spaces before "milliseconds" included.
				message: fmt.Sprintf("Combined execution time of incoming requests exceeded limit of %s  milliseconds over time window of %d seconds. Decrease number of concurrent requests or reduce the duration of requests and try again later.",
					groupThousands(strconv.FormatInt(l.ExecutionTime.Milliseconds(), 10)), int(w.Seconds())),
				retryAfter: retry}
		}
		// not admitted before both limits clear
		refused.retryAfter = max(refused.retryAfter, retry)
	}
	if refused == nil && l.Concurrent > 0 && u.inFlight >= l.Concurrent {
		refused = &apiError{status: http.StatusTooManyRequests, code: codeConcurrentRequests,
			message:    fmt.Sprintf("Number of concurrent requests exceeded the limit of %d.", l.Concurrent),
			retryAfter: concurrentRetryAfter}
	}
	if refused != nil {
		lm.mu.Unlock()
		s.mu.Lock()
		s.stats.Throttled++
		s.mu.Unlock()
		return nil, refused
	}
	if l.Requests > 0 || l.ExecutionTime > 0 {
		u.record(now, w, l.cost(ops))
	}
	u.inFlight++
	hook := lm.admitted
	lm.mu.Unlock()
	if hook != nil {
		hook()
	}
	return func() {
		lm.mu.Lock()
		u.inFlight--
		lm.mu.Unlock()
	}, nil
}

// SetLimits switches service-protection limits at run time and forgets
// every user's usage.
func (s *Server) SetLimits(l Limits) {
	s.lim.set(l)
}

// limitHeaders sets the documented x-ms-ratelimit-* headers: the requests
// and the execution time (in seconds, as "1,199.46") user has left in the
// window, for the limits that are on.
func (s *Server) limitHeaders(h http.Header, user string) {
	lm := s.lim
	lm.mu.Lock()
	defer lm.mu.Unlock()
	l := lm.limits
	if l.Requests <= 0 && l.ExecutionTime <= 0 {
		return
	}
	u := lm.user(user)
	u.slide(lm.now(), l.window())
	if l.Requests > 0 {
		h.Set(headerBurstRemaining, strconv.Itoa(max(l.Requests-u.requests, 0)))
	}
	if l.ExecutionTime > 0 {
		left := max(l.ExecutionTime-u.spent, 0)
		h.Set(headerTimeRemaining, formatSeconds(left))
	}
}

// formatSeconds writes d in seconds with two decimals and thousands
// separators, as Dataverse writes x-ms-ratelimit-time-remaining-xrm-requests.
func formatSeconds(d time.Duration) string {
	cents := int64(math.Round(d.Seconds() * 100))
	return fmt.Sprintf("%s.%02d", groupThousands(strconv.FormatInt(cents/100, 10)), cents%100)
}

// groupThousands puts a comma between every three digits of a
// non-negative integer.
func groupThousands(digits string) string {
	if len(digits) <= 3 {
		return digits
	}
	head := len(digits) % 3
	if head == 0 {
		head = 3
	}
	out := digits[:head]
	for i := head; i < len(digits); i += 3 {
		out += "," + digits[i:i+3]
	}
	return out
}
