package crmserver

import (
	"fmt"
	"math"
	"net/http"
	"slices"
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

// Execution-time cost model. Dataverse charges each request the time it
// really took on its servers; the sandbox, whose in-memory store answers in
// microseconds, charges a fixed time per kind of operation instead. The
// defaults come from the timings Microsoft publishes in the READMEs of the
// bulk-operation samples (github.com/microsoft/PowerApps-Samples,
// dataverse/orgsvc/CSharp-NETCore/BulkOperations and
// dataverse/webapi/CSharp-NETx/BulkOperations: 100 records of a standard
// table with no plug-ins, times in whole seconds as the client saw them):
//
//   - SimpleLoop, one request per record: 100 creates in 10 s, 100 updates
//     in 12 s (100-120 ms each, network round trip included).
//   - ExecuteMultiple, the records in one batch, applied one after another
//     on the server: 100 creates in 4 s, 100 updates in 4 s: 40 ms per
//     operation with the round trip spread over a hundred.
//   - CreateMultiple 100 in 1 s, UpdateMultiple 100 in 3 s (orgsvc and Web
//     API alike), UpsertMultiple 100 in 2 s (orgsvc) and 1 s (Web API).
//
// Reads are not timed in those samples. The only published measurement
// found is a client's walk of 275,000 email rows in pages of 5,000 with
// paging cookies in 1 min 31 s (markcarrington.dev, "Handling
// RetrieveMultiple Paging", 2019): 0.33 ms per row returned. The 10 ms per
// query request on top of it is an assumption, not a measurement.
const (
	// DefaultCostPerOperation is charged for a create, update, upsert or
	// delete, alone or inside a $batch (ExecuteMultiple: 40 ms).
	DefaultCostPerOperation = 40 * time.Millisecond
	// DefaultCostCreateMultipleRow is charged per record of a
	// CreateMultiple (100 in 1 s).
	DefaultCostCreateMultipleRow = 10 * time.Millisecond
	// DefaultCostUpdateMultipleRow is charged per record of an
	// UpdateMultiple (100 in 3 s).
	DefaultCostUpdateMultipleRow = 30 * time.Millisecond
	// DefaultCostUpsertMultipleRow is charged per record of an
	// UpsertMultiple (100 in 2 s, the slower of the two samples).
	DefaultCostUpsertMultipleRow = 20 * time.Millisecond
	// DefaultCostPerQuery is charged per read request (a retrieve, a query
	// page, a function such as WhoAmI): assumed.
	DefaultCostPerQuery = 10 * time.Millisecond
	// DefaultCostPerRowRead is charged per row a read returns (0.33 ms).
	DefaultCostPerRowRead = 330 * time.Microsecond
)

// DataverseDOPHint is the x-ms-dop-hint the sandbox answers by default:
// the RecommendedDegreesOfParallelism the parallel bulk-operation samples
// print (4) in their READMEs.
const DataverseDOPHint = 4

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
	// headerDOPHint is the recommended degree of parallelism, on every
	// answer ("Send parallel requests", Optimum degree of parallelism).
	headerDOPHint = "x-ms-dop-hint"
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
	// CostPerOperation is the execution time charged for each write
	// operation (create, update, upsert, delete), alone or inside a $batch.
	// Zero means DefaultCostPerOperation.
	CostPerOperation time.Duration
	// CostCreateMultipleRow, CostUpdateMultipleRow and CostUpsertMultipleRow
	// are charged per record of the bulk messages. Zero means the
	// Default… figure of each.
	CostCreateMultipleRow time.Duration
	CostUpdateMultipleRow time.Duration
	CostUpsertMultipleRow time.Duration
	// CostPerQuery is charged per read operation, CostPerRowRead per row it
	// returns. Zero means DefaultCostPerQuery, DefaultCostPerRowRead.
	CostPerQuery   time.Duration
	CostPerRowRead time.Duration
	// CostPerRequest is charged once per HTTP request on top of its
	// operations (a $batch's own parsing and answering). Zero: nothing.
	CostPerRequest time.Duration
	// CostMultiplier scales every cost above (2 charges twice the time).
	// Zero means 1.
	CostMultiplier float64
	// Concurrent caps one user's requests in flight at once. Zero or less:
	// off.
	Concurrent int
	// Exempt are systemuserids the limits do not apply to (their use is
	// still accounted). Dataverse has no such list; a test or bench uses it
	// for the people whose edits it replays, so that only the application
	// users under test are throttled.
	Exempt []string
}

// DataverseLimits returns Dataverse's documented default limits, with the
// default costs.
func DataverseLimits() Limits {
	return Limits{Requests: DataverseRequests, Window: DataverseWindow, ExecutionTime: DataverseExecutionTime,
		CostPerOperation: DefaultCostPerOperation, Concurrent: DataverseConcurrent}
}

// DataverseLimitsOver returns Dataverse's documented limits scaled to a
// window of w: the same rates (6,000 requests and 1,200 s of execution time
// per 300 s, so 200 requests and 40 s per 10 s), the same 52 concurrent
// requests and the default costs. A short window lets a test or a bench see
// several windows pass; the rates a client can sustain are the documented
// ones, its bursts shorter.
func DataverseLimitsOver(w time.Duration) Limits {
	l := DataverseLimits()
	l.Window = w
	l.Requests = max(1, int(int64(DataverseRequests)*int64(w)/int64(DataverseWindow)))
	l.ExecutionTime = time.Duration(float64(DataverseExecutionTime) * (float64(w) / float64(DataverseWindow)))
	return l
}

func (l Limits) window() time.Duration {
	if l.Window > 0 {
		return l.Window
	}
	return DataverseWindow
}

// opKind is what an operation did, for its execution-time cost.
type opKind int

const (
	opWrite          opKind = iota // create, update, upsert, delete
	opRead                         // retrieve, query, function
	opCreateMultiple               // per record
	opUpdateMultiple               // per record
	opUpsertMultiple               // per record
)

// or returns d, or def when d is zero.
func or(d, def time.Duration) time.Duration {
	if d == 0 {
		return def
	}
	return d
}

func (l Limits) scale(d time.Duration) time.Duration {
	if l.CostMultiplier <= 0 || l.CostMultiplier == 1 {
		return d
	}
	return time.Duration(float64(d) * l.CostMultiplier)
}

// opCost is the execution time of one operation of kind k; n is the rows
// a read returned or the records of a bulk message.
func (l Limits) opCost(k opKind, n int) time.Duration {
	var d time.Duration
	switch k {
	case opRead:
		d = or(l.CostPerQuery, DefaultCostPerQuery) + time.Duration(n)*or(l.CostPerRowRead, DefaultCostPerRowRead)
	case opCreateMultiple:
		d = time.Duration(n) * or(l.CostCreateMultipleRow, DefaultCostCreateMultipleRow)
	case opUpdateMultiple:
		d = time.Duration(n) * or(l.CostUpdateMultipleRow, DefaultCostUpdateMultipleRow)
	case opUpsertMultiple:
		d = time.Duration(n) * or(l.CostUpsertMultipleRow, DefaultCostUpsertMultipleRow)
	default:
		d = or(l.CostPerOperation, DefaultCostPerOperation)
	}
	return l.scale(d)
}

// cost is the execution time charged for one request holding ops write
// operations.
func (l Limits) cost(ops int) time.Duration {
	return l.scale(l.CostPerRequest) + time.Duration(max(ops, 1))*l.opCost(opWrite, 0)
}

// requestCost is the per-request part of a request's cost.
func (l Limits) requestCost() time.Duration { return l.scale(l.CostPerRequest) }

// limiter keeps every user's usage. Its lock is its own, apart from the
// server's.
type limiter struct {
	now func() time.Time

	mu       sync.Mutex
	limits   Limits
	users    map[string]*usage
	accounts map[string]*Account

	// admitted, when set, runs after a request is admitted and before it is
	// executed; tests use it to hold requests in flight.
	admitted func()
}

// Account is what one user (a systemuserid) has used of the server since
// it started or since ResetAccounts, whether limits are on or not: the
// sandbox's accounting, which the bench reads to report requests and
// execution time per record.
type Account struct {
	// Requests is the HTTP requests admitted (a $batch counts once).
	Requests int64 `json:"requests"`
	// Operations is the operations they held: 1 for a request on its own,
	// each request inside a $batch, each record of a CreateMultiple,
	// UpdateMultiple or UpsertMultiple.
	Operations int64 `json:"operations"`
	// ExecutionTime is the execution time charged (the cost model above).
	ExecutionTime time.Duration `json:"execution_time_ns"`
	// Throttled is the requests refused with 429 by service protection.
	Throttled int64 `json:"throttled"`
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

// slot aggregates the requests admitted, and the execution time charged,
// within a short span (a ten thousandth of the window) from at; they leave
// the window together, at at+window. It bounds the memory of a busy user to
// 10,000 slots.
type slot struct {
	at       time.Time
	requests int
	spent    time.Duration
}

func newLimiter(l Limits, now func() time.Time) *limiter {
	return &limiter{now: now, limits: l, users: map[string]*usage{}, accounts: map[string]*Account{}}
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

func (lm *limiter) account(id string) *Account {
	a := lm.accounts[id]
	if a == nil {
		a = &Account{}
		lm.accounts[id] = a
	}
	return a
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

func (u *usage) record(now time.Time, window time.Duration, requests int, cost time.Duration) {
	if n := len(u.slots); n > u.head && now.Sub(u.slots[n-1].at) < window/10000 {
		u.slots[n-1].requests += requests
		u.slots[n-1].spent += cost
	} else {
		u.slots = append(u.slots, slot{at: now, requests: requests, spent: cost})
	}
	u.requests += requests
	u.spent += cost
}

// ticket is an admitted request. end charges what it did and ends it.
type ticket struct {
	lm   *limiter
	user string
	u    *usage
	once sync.Once
}

// end charges the request's operations and their execution time (on top
// of the limits' per-request cost) to its user and takes it out of the
// requests in flight. Only the first call counts.
func (t *ticket) end(ops int, cost time.Duration) {
	t.once.Do(func() {
		lm := t.lm
		lm.mu.Lock()
		defer lm.mu.Unlock()
		l := lm.limits
		cost += l.requestCost()
		a := lm.account(t.user)
		a.Operations += int64(ops)
		a.ExecutionTime += cost
		t.u.inFlight--
		if (l.Requests > 0 || l.ExecutionTime > 0) && lm.users[t.user] == t.u {
			t.u.record(lm.now(), l.window(), 0, cost)
		}
	})
}

// admit applies the service-protection limits to one request of user. It
// returns the admitted request, whose end charges its cost once it has
// run, or the 429 answer. A request is refused when the user's admitted
// requests or execution time in the window before it have reached their
// limit, or when the user has Concurrent requests in flight. Refused
// requests are not counted; Dataverse, like the sandbox, measures a
// request's execution time once it has run, so a request is admitted
// while the budget is not yet spent and may take it past the limit.
func (s *Server) admit(user string) (*ticket, *apiError) {
	lm := s.lim
	lm.mu.Lock()
	l := lm.limits
	u := lm.user(user)
	now := lm.now()
	w := l.window()
	u.slide(now, w)
	var refused *apiError
	if slices.Contains(l.Exempt, user) {
		l = Limits{}
	}
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
		lm.account(user).Throttled++
		lm.mu.Unlock()
		s.mu.Lock()
		s.stats.Throttled++
		s.mu.Unlock()
		return nil, refused
	}
	if l.Requests > 0 || l.ExecutionTime > 0 {
		u.record(now, w, 1, 0)
	}
	lm.account(user).Requests++
	u.inFlight++
	hook := lm.admitted
	lm.mu.Unlock()
	if hook != nil {
		hook()
	}
	return &ticket{lm: lm, user: user, u: u}, nil
}

// Accounts returns every user's account, by systemuserid.
func (s *Server) Accounts() map[string]Account {
	lm := s.lim
	lm.mu.Lock()
	defer lm.mu.Unlock()
	out := make(map[string]Account, len(lm.accounts))
	for id, a := range lm.accounts {
		out[id] = *a
	}
	return out
}

// ResetAccounts sets every user's account back to zero.
func (s *Server) ResetAccounts() {
	lm := s.lim
	lm.mu.Lock()
	defer lm.mu.Unlock()
	lm.accounts = map[string]*Account{}
}

// Limits returns the service-protection limits in force.
func (s *Server) Limits() Limits {
	s.lim.mu.Lock()
	defer s.lim.mu.Unlock()
	return s.lim.limits
}

// costOf is the operations one executed operation counts for and the
// execution time it is charged under l.
func costOf(l Limits, req *request, resp response) (int, time.Duration) {
	switch {
	case resp.bulk != opWrite:
		return resp.records, l.opCost(resp.bulk, resp.records)
	case req.method == http.MethodGet:
		return 1, l.opCost(opRead, resp.rows)
	}
	return 1, l.opCost(opWrite, 0)
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
