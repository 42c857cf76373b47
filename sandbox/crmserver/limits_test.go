package crmserver

import (
	"encoding/json"
	"fmt"
	"math"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
)

// The service-protection tests run on a simulated clock and call the
// handler directly. The documented figures they hold the sandbox to
// ("Service protection API limits",
// learn.microsoft.com/power-apps/developer/data-platform/api-limits):
// 6,000 requests and 1,200,000 ms of execution time per user in a
// five-minute sliding window, 52 concurrent requests, 429 with Retry-After
// and the codes 0x80072322, 0x80072321 and 0x80072326.

// fakeClock is a clock the test moves by hand.
type fakeClock struct {
	mu sync.Mutex
	t  time.Time
}

func newFakeClock() *fakeClock {
	return &fakeClock{t: time.Date(2026, 3, 2, 9, 0, 0, 0, time.UTC)}
}

func (c *fakeClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

func (c *fakeClock) Advance(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.t = c.t.Add(d)
}

const (
	userA  = "aaaaaaaa-0000-0000-0000-00000000000a"
	userB  = "bbbbbbbb-0000-0000-0000-00000000000b"
	tokenA = "token-a"
	tokenB = "token-b"
)

// limitedServer is a server with two application users, each with its own
// token, on clock.
func limitedServer(t *testing.T, l Limits, clock *fakeClock) *Server {
	t.Helper()
	s, err := New(Options{Limits: l, Now: clock.Now, Tokens: map[string]string{tokenA: userA, tokenB: userB}})
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// createOne sends one create as token.
func createOne(s *Server, token string, i int) *httptest.ResponseRecorder {
	r := httptest.NewRequest(http.MethodPost, APIPath+"contacts", strings.NewReader(fmt.Sprintf(`{"lastname":"L%d"}`, i)))
	r.Header.Set("Authorization", "Bearer "+token)
	r.Header.Set("Content-Type", "application/json")
	w := httptest.NewRecorder()
	s.ServeHTTP(w, r)
	return w
}

// createBatch sends one $batch holding a change set of n creates.
func createBatch(s *Server, token string, first, n int) *httptest.ResponseRecorder {
	var b strings.Builder
	b.WriteString("--batch_L\r\nContent-Type: multipart/mixed; boundary=changeset_L\r\n\r\n")
	for i := range n {
		fmt.Fprintf(&b, "--changeset_L\r\nContent-Type: application/http\r\nContent-Transfer-Encoding: binary\r\nContent-ID: %d\r\n\r\n", i+1)
		fmt.Fprintf(&b, "POST %scontacts HTTP/1.1\r\nContent-Type: application/json; type=entry\r\n\r\n{\"lastname\":\"L%d\"}\r\n", APIPath, first+i)
	}
	b.WriteString("--changeset_L--\r\n\r\n--batch_L--\r\n")
	r := httptest.NewRequest(http.MethodPost, APIPath+"$batch", strings.NewReader(b.String()))
	r.Header.Set("Authorization", "Bearer "+token)
	r.Header.Set("Content-Type", "multipart/mixed; boundary=batch_L")
	w := httptest.NewRecorder()
	s.ServeHTTP(w, r)
	return w
}

// whoAmI sends a WhoAmI as token.
func whoAmI(s *Server, token string) *httptest.ResponseRecorder {
	r := httptest.NewRequest(http.MethodGet, APIPath+"WhoAmI", nil)
	r.Header.Set("Authorization", "Bearer "+token)
	w := httptest.NewRecorder()
	s.ServeHTTP(w, r)
	return w
}

// refusal checks that w is a documented service-protection answer and
// returns its code and Retry-After.
func refusal(t *testing.T, w *httptest.ResponseRecorder) (code, message string, retryAfter int) {
	t.Helper()
	if w.Code != http.StatusTooManyRequests {
		t.Fatalf("status %d, want 429: %s", w.Code, w.Body)
	}
	var body map[string]map[string]string
	if err := json.Unmarshal(w.Body.Bytes(), &body); err != nil || len(body) != 1 || len(body["error"]) != 2 {
		t.Fatalf("429 body is not {\"error\":{\"code\",\"message\"}}: %s", w.Body)
	}
	ra, err := strconv.Atoi(w.Header().Get("Retry-After"))
	if err != nil || ra < 1 {
		t.Fatalf("Retry-After %q: want whole seconds, at least 1", w.Header().Get("Retry-After"))
	}
	return body["error"]["code"], body["error"]["message"], ra
}

// secondsUntil is the Retry-After that tells a client to come back at t.
func secondsUntil(now, t time.Time) int {
	return int(math.Ceil(t.Sub(now).Seconds()))
}

const (
	msgRequests      = "Number of requests exceeded the limit of 6000 over time window of 300 seconds."
	msgExecutionTime = "Combined execution time of incoming requests exceeded limit of 1,200,000  milliseconds over time window of 300 seconds. Decrease number of concurrent requests or reduce the duration of requests and try again later."
	msgConcurrent    = "Number of concurrent requests exceeded the limit of 52."
)

func TestRequestLimitCountsABatchOnce(t *testing.T) {
	t.Parallel()
	const operations = 7000
	tests := []struct {
		name         string
		batchSize    int // 0: single requests
		wantAdmitted int // operations
		wantRefused  int // requests
	}{
		{name: "7,000 single requests: refused after the 6,000th", wantAdmitted: 6000, wantRefused: 1000},
		{name: "the same 7,000 creates in batches of 100: none refused", batchSize: 100, wantAdmitted: operations},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			clock := newFakeClock()
			start := clock.Now()
			s := limitedServer(t, DataverseLimits(), clock)
			admitted, refused, firstRefused := 0, 0, 0
			for sent := 0; sent < operations; {
				n := max(tt.batchSize, 1)
				var w *httptest.ResponseRecorder
				if tt.batchSize == 0 {
					w = createOne(s, tokenA, sent)
				} else {
					w = createBatch(s, tokenA, sent, n)
				}
				if w.Code < 300 {
					admitted += n
				} else {
					code, msg, ra := refusal(t, w)
					if code != codeTooManyRequests || msg != msgRequests {
						t.Fatalf("operation %d refused with %s %q", sent+1, code, msg)
					}
					// the oldest requests leave the window 300 s after the first
					if want := secondsUntil(clock.Now(), start.Add(5*time.Minute)); ra != want {
						t.Fatalf("operation %d: Retry-After %d, want %d", sent+1, ra, want)
					}
					if refused == 0 {
						firstRefused = sent + 1
					}
					refused++
				}
				if sent == 0 && w.Header().Get(headerBurstRemaining) != "5999" {
					t.Fatalf("first answer: %s %q, want 5999", headerBurstRemaining, w.Header().Get(headerBurstRemaining))
				}
				sent += n
				clock.Advance(10 * time.Millisecond) // 70 s in all: one window
			}
			if admitted != tt.wantAdmitted || refused != tt.wantRefused {
				t.Fatalf("admitted %d operations, refused %d requests; want %d and %d", admitted, refused, tt.wantAdmitted, tt.wantRefused)
			}
			if tt.wantRefused > 0 && firstRefused != DataverseRequests+1 {
				t.Fatalf("first refused request is number %d, want %d", firstRefused, DataverseRequests+1)
			}
			if s.Count("contact") != tt.wantAdmitted {
				t.Fatalf("%d contacts created, want %d", s.Count("contact"), tt.wantAdmitted)
			}
			if st := s.Stats(); st.Throttled != int64(tt.wantRefused) {
				t.Fatalf("Stats.Throttled = %d, want %d", st.Throttled, tt.wantRefused)
			}
		})
	}
}

func TestExecutionTimeLimit(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name      string
		limits    Limits
		batchSize int // 0: single requests
		// wantFirstRefused is the request (batch or single) the limit
		// refuses first: the one after the request that brought the
		// combined cost to 1,200 s or more.
		wantFirstRefused int
	}{
		{name: "default 40 ms per operation, batches of 100 (4 s each)", limits: DataverseLimits(), batchSize: 100,
			wantFirstRefused: 301}, // 300 × 4 s = 1,200 s
		{name: "twice the default cost, batches of 100 (8 s each)", limits: doubled(DataverseLimits()), batchSize: 100,
			wantFirstRefused: 151}, // 150 × 8 s = 1,200 s
		{name: "70 ms per operation and 25 ms per request, batches of 100 (7.025 s each)",
			limits:    Limits{Requests: 6000, ExecutionTime: 20 * time.Minute, CostPerOperation: 70 * time.Millisecond, CostPerRequest: 25 * time.Millisecond},
			batchSize: 100, wantFirstRefused: 172}, // 171 × 7.025 s = 1,201.275 s; 170 × 7.025 s = 1,194.25 s
		{name: "250 ms single requests trip it before the request limit",
			limits:           Limits{Requests: 6000, ExecutionTime: 20 * time.Minute, CostPerOperation: 250 * time.Millisecond},
			wantFirstRefused: 4801}, // 4,800 × 0.25 s = 1,200 s
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			// the expected trip point follows from the configured cost
			per := tt.limits.cost(max(tt.batchSize, 1))
			if want := int((tt.limits.ExecutionTime+per-1)/per) + 1; want != tt.wantFirstRefused {
				t.Fatalf("case is inconsistent: %s per request trips at request %d", per, want)
			}
			clock := newFakeClock()
			start := clock.Now()
			s := limitedServer(t, tt.limits, clock)
			n := max(tt.batchSize, 1)
			for i := 1; ; i++ {
				var w *httptest.ResponseRecorder
				if tt.batchSize == 0 {
					w = createOne(s, tokenA, i)
				} else {
					w = createBatch(s, tokenA, i*n, n)
				}
				if w.Code < 300 {
					if i >= tt.wantFirstRefused {
						t.Fatalf("request %d admitted, want refused from %d on", i, tt.wantFirstRefused)
					}
					clock.Advance(time.Millisecond)
					continue
				}
				if i != tt.wantFirstRefused {
					t.Fatalf("request %d refused (%s), want %d", i, w.Body, tt.wantFirstRefused)
				}
				code, msg, ra := refusal(t, w)
				if code != codeExecutionTime || msg != msgExecutionTime {
					t.Fatalf("refused with %s %q", code, msg)
				}
				if got := w.Header().Get(headerTimeRemaining); got != "0.00" {
					t.Fatalf("%s = %q, want 0.00", headerTimeRemaining, got)
				}
				// the first requests' cost leaves the window 300 s after them
				leave := start.Add(5 * time.Minute)
				if want := secondsUntil(clock.Now(), leave); ra != want {
					t.Fatalf("Retry-After %d, want %d", ra, want)
				}
				if s.Count("contact") != (tt.wantFirstRefused-1)*n {
					t.Fatalf("%d contacts, want %d", s.Count("contact"), (tt.wantFirstRefused-1)*n)
				}
				// other users are not limited by it
				if w := whoAmI(s, tokenB); w.Code != http.StatusOK {
					t.Fatalf("other user: %d", w.Code)
				}
				// refused until the cost leaves the window, then admitted
				clock.Advance(leave.Sub(clock.Now()) - time.Millisecond)
				if w := whoAmI(s, tokenA); w.Code != http.StatusTooManyRequests {
					t.Fatalf("1 ms before Retry-After ends: %d", w.Code)
				}
				clock.Advance(time.Millisecond)
				if w := whoAmI(s, tokenA); w.Code != http.StatusOK {
					t.Fatalf("when Retry-After ends: %d %s", w.Code, w.Body)
				}
				return
			}
		})
	}
}

func TestConcurrentRequestLimit(t *testing.T) {
	t.Parallel()
	const requests = DataverseConcurrent + 1
	clock := newFakeClock()
	s := limitedServer(t, DataverseLimits(), clock)
	entered := make(chan struct{}, requests)
	release := make(chan struct{})
	setHook := func(f func()) {
		s.lim.mu.Lock()
		defer s.lim.mu.Unlock()
		s.lim.admitted = f
	}
	setHook(func() {
		entered <- struct{}{}
		<-release
	})
	answers := make(chan *httptest.ResponseRecorder, requests)
	for range requests {
		go func() { answers <- whoAmI(s, tokenA) }()
	}
	// 52 requests are held in flight; the 53rd is answered at once
	refusedAnswer := <-answers
	for range DataverseConcurrent {
		<-entered
	}
	code, msg, ra := refusal(t, refusedAnswer)
	if code != codeConcurrentRequests || msg != msgConcurrent || ra != 1 {
		t.Fatalf("refused with %s %q, Retry-After %d", code, msg, ra)
	}
	// another user has its own 52
	setHook(nil)
	if w := whoAmI(s, tokenB); w.Code != http.StatusOK {
		t.Fatalf("other user while user A has 52 in flight: %d", w.Code)
	}
	close(release)
	for range DataverseConcurrent {
		if w := <-answers; w.Code != http.StatusOK {
			t.Fatalf("held request answered %d", w.Code)
		}
	}
	if st := s.Stats(); st.Throttled != 1 {
		t.Fatalf("Stats.Throttled = %d, want 1", st.Throttled)
	}
	// the ended requests no longer count
	if w := whoAmI(s, tokenA); w.Code != http.StatusOK {
		t.Fatalf("after the held requests ended: %d", w.Code)
	}
}

func TestLimitsPerUser(t *testing.T) {
	t.Parallel()
	clock := newFakeClock()
	s := limitedServer(t, DataverseLimits(), clock)
	steps := []struct {
		name     string
		token    string
		requests int
		wantOK   int
	}{
		{name: "user A uses its 6,000", token: tokenA, requests: 6001, wantOK: 6000},
		{name: "user B still has its own 6,000", token: tokenB, requests: 6001, wantOK: 6000},
		{name: "user A is still refused", token: tokenA, requests: 1, wantOK: 0},
	}
	for _, st := range steps {
		ok := 0
		for range st.requests {
			w := whoAmI(s, st.token)
			if w.Code == http.StatusOK {
				ok++
			} else if code, _, _ := refusal(t, w); code != codeTooManyRequests {
				t.Fatalf("%s: refused with %s", st.name, code)
			}
		}
		if ok != st.wantOK {
			t.Fatalf("%s: %d admitted, want %d", st.name, ok, st.wantOK)
		}
	}
}

func TestRequestWindowSlides(t *testing.T) {
	t.Parallel()
	clock := newFakeClock()
	start := clock.Now()
	s := limitedServer(t, Limits{Requests: DataverseRequests}, clock) // Window zero: five minutes
	send := func(n int) (ok int, last *httptest.ResponseRecorder) {
		for range n {
			last = whoAmI(s, tokenA)
			if last.Code == http.StatusOK {
				ok++
			}
		}
		return ok, last
	}
	steps := []struct {
		name           string
		at             time.Duration // since start
		requests       int
		wantOK         int
		wantRetryAfter int    // of the last answer, when refused
		wantBurst      string // of the last answer, when admitted
	}{
		{name: "3,000 at 0 s", at: 0, requests: 3000, wantOK: 3000, wantBurst: "3000"},
		{name: "3,000 at 100 s", at: 100 * time.Second, requests: 3000, wantOK: 3000, wantBurst: "0"},
		{name: "at 200 s the window is full until the first 3,000 leave at 300 s", at: 200 * time.Second, requests: 1, wantRetryAfter: 100},
		{name: "1 ms before 300 s", at: 5*time.Minute - time.Millisecond, requests: 1, wantRetryAfter: 1},
		// a fixed window would admit 6,000 here; the sliding one only what left it
		{name: "at 300 s the first 3,000 have left", at: 5 * time.Minute, requests: 3001, wantOK: 3000, wantRetryAfter: 100},
		{name: "at 400 s the second 3,000 have left; the next leave at 600 s", at: 400 * time.Second, requests: 3001, wantOK: 3000, wantRetryAfter: 200},
	}
	for _, st := range steps {
		clock.Advance(start.Add(st.at).Sub(clock.Now()))
		ok, last := send(st.requests)
		if ok != st.wantOK {
			t.Fatalf("%s: %d admitted, want %d", st.name, ok, st.wantOK)
		}
		if st.wantRetryAfter > 0 {
			if _, _, ra := refusal(t, last); ra != st.wantRetryAfter {
				t.Fatalf("%s: Retry-After %d, want %d", st.name, ra, st.wantRetryAfter)
			}
		} else if last.Header().Get(headerBurstRemaining) != st.wantBurst {
			t.Fatalf("%s: %s = %q", st.name, headerBurstRemaining, last.Header().Get(headerBurstRemaining))
		}
	}
}

func TestRateLimitHeaders(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name          string
		limits        Limits
		wantBurst     string
		wantTime      string
		wantNoHeaders bool
	}{
		{name: "documented limits after one read (10 ms, no rows)", limits: DataverseLimits(), wantBurst: "5999", wantTime: "1,199.99"},
		{name: "requests only", limits: Limits{Requests: 600, Window: 10 * time.Second}, wantBurst: "599"},
		{name: "no limits", wantNoHeaders: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			s := limitedServer(t, tt.limits, newFakeClock())
			w := whoAmI(s, tokenA)
			if w.Code != http.StatusOK {
				t.Fatalf("status %d", w.Code)
			}
			burst, tm := w.Header().Get(headerBurstRemaining), w.Header().Get(headerTimeRemaining)
			if tt.wantNoHeaders {
				if burst != "" || tm != "" {
					t.Fatalf("headers without limits: %q %q", burst, tm)
				}
				return
			}
			if burst != tt.wantBurst || tm != tt.wantTime {
				t.Fatalf("burst %q time %q, want %q %q", burst, tm, tt.wantBurst, tt.wantTime)
			}
		})
	}
}

func doubled(l Limits) Limits {
	l.CostMultiplier = 2
	return l
}

func TestFormatSeconds(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name string
		d    time.Duration
		want string
	}{
		{name: "the whole budget", d: 20 * time.Minute, want: "1,200.00"},
		{name: "as in Microsoft's sample answer", d: 1199460 * time.Millisecond, want: "1,199.46"},
		{name: "rounded to hundredths", d: 999996 * time.Millisecond, want: "1,000.00"},
		{name: "under a second", d: 50 * time.Millisecond, want: "0.05"},
		{name: "nothing left", d: 0, want: "0.00"},
	}
	for _, tt := range tests {
		if got := formatSeconds(tt.d); got != tt.want {
			t.Errorf("%s: formatSeconds(%s) = %q, want %q", tt.name, tt.d, got, tt.want)
		}
	}
}
