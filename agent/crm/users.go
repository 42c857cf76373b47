package crm

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/Azure/azure-sdk-for-go/sdk/azcore"
	"github.com/Azure/azure-sdk-for-go/sdk/azcore/policy"
	"github.com/prometheus/client_golang/prometheus"
)

// Dataverse applies its service-protection limits to each user on its own
// ("Service protection API limits",
// https://learn.microsoft.com/power-apps/developer/data-platform/api-limits):
// 6,000 requests and 20 minutes of execution time per five minutes, and 52
// concurrent requests. A client with several application users therefore
// has several budgets. The client keeps one per user: its own requests in
// flight under its own concurrency limit, and its own pause after a 429.
// Each request goes to the least loaded user that is not paused; a request
// refused with 429 is sent again at once through another user when one is
// free, because the refused user's wait grows if it keeps sending.

// User is one application user the client signs in as.
type User struct {
	// Name labels the user in metrics and errors; it must not be a
	// secret. Empty means ClientID, else "user1", "user2"… by position.
	Name string
	// Auth selects the authentication mode; empty means none.
	Auth AuthMode
	// Token is the static bearer token for AuthBearer.
	Token string
	// TenantID, ClientID and ClientSecret configure AuthClientSecret;
	// ClientID alone selects a user-assigned managed identity.
	TenantID     string
	ClientID     string
	ClientSecret string
	// Credential, when set, is used instead of building one from Auth.
	Credential azcore.TokenCredential
	// UserID, when set, is the user's systemuserid: UserIDs returns it
	// without asking WhoAmI.
	UserID string
}

// DOPHintHeader is the response header in which Dataverse recommends a
// degree of parallelism for the environment ("Send parallel requests",
// https://learn.microsoft.com/power-apps/developer/data-platform/send-parallel-requests).
const DOPHintHeader = "x-ms-dop-hint"

// The response headers in which Dataverse reports what is left of a
// user's service-protection budget in the current window ("Service
// protection API limits", How to track remaining limits): requests as an
// integer, execution time in seconds as "1,199.46".
const (
	RequestsRemainingHeader = "x-ms-ratelimit-burst-remaining-xrm-requests"
	TimeRemainingHeader     = "x-ms-ratelimit-time-remaining-xrm-requests"
)

// defaultConcurrency is each user's limit before the first x-ms-dop-hint
// arrives when no cap is configured (and for good when none ever does).
const defaultConcurrency = 8

// user is one application user's credential and budget.
type user struct {
	index  int
	label  string
	id     string // configured systemuserid, "" to ask WhoAmI
	static string
	cred   azcore.TokenCredential

	tokMu sync.Mutex
	tok   azcore.AccessToken

	// guarded by users.mu
	inFlight int
	limit    int
	paused   time.Time // no request is sent before this instant
	strikes  int       // 429s in a row without Retry-After, for the back-off

	m userMetrics
}

func (u *user) authorization(ctx context.Context, scope string) (string, error) {
	if u.static != "" {
		return "Bearer " + u.static, nil
	}
	if u.cred == nil {
		return "", nil
	}
	u.tokMu.Lock()
	defer u.tokMu.Unlock()
	if u.tok.Token != "" && time.Until(u.tok.ExpiresOn) > 2*time.Minute {
		return "Bearer " + u.tok.Token, nil
	}
	tok, err := u.cred.GetToken(ctx, policy.TokenRequestOptions{Scopes: []string{scope}})
	if err != nil {
		return "", &Error{Op: "getting a token for CRM user " + u.label, Class: ClassUnauthorized, Err: err}
	}
	u.tok = tok
	return "Bearer " + tok.Token, nil
}

// users shares requests among the client's users.
type users struct {
	mu      sync.Mutex
	list    []*user
	cap     int // the configured per-user cap; 0 follows the hint up to MaxConcurrency
	next    int // where the next search starts, so equal loads take turns
	waiters int
	wake    chan struct{} // closed when a slot frees, a limit rises or a user is picked
	now     func() time.Time
}

// buildUsers validates the configured users and makes their budgets.
func buildUsers(cfg Config, scopeProbs *[]string) *users {
	list := cfg.Users
	if len(list) == 0 {
		list = []User{{Auth: cfg.Auth, Token: cfg.Token, TenantID: cfg.TenantID, ClientID: cfg.ClientID,
			ClientSecret: cfg.ClientSecret, Credential: cfg.Credential}}
	} else if cfg.Auth != "" && cfg.Auth != AuthNone || cfg.Token != "" || cfg.ClientSecret != "" || cfg.Credential != nil {
		*scopeProbs = append(*scopeProbs, "set Users or Auth (with its Token, ClientSecret or Credential), not both")
	}
	us := &users{cap: cfg.MaxConcurrency, wake: make(chan struct{}), now: time.Now}
	limit := cfg.MaxConcurrency
	if limit == 0 {
		limit = defaultConcurrency
	}
	m := newClientMetrics(cfg.Registerer)
	seen := map[string]bool{}
	for i, cu := range list {
		u := &user{index: i, label: cu.Name, id: strings.ToLower(cu.UserID), limit: limit}
		if u.label == "" {
			u.label = cu.ClientID
		}
		if u.label == "" {
			u.label = "user" + strconv.Itoa(i+1)
		}
		prefix := ""
		if len(cfg.Users) > 0 {
			prefix = "user " + u.label + ": "
			if seen[u.label] {
				*scopeProbs = append(*scopeProbs, fmt.Sprintf("two users are labelled %q: give them distinct names", u.label))
			}
			seen[u.label] = true
		}
		switch cu.Auth {
		case "", AuthNone:
		case AuthBearer:
			if cu.Token == "" {
				*scopeProbs = append(*scopeProbs, prefix+"auth bearer needs Token")
			}
			u.static = cu.Token
		case AuthClientSecret, AuthManagedIdentity, AuthDefault:
			if cu.Credential == nil {
				cred, err := newCredential(cu)
				if err != nil {
					*scopeProbs = append(*scopeProbs, prefix+err.Error())
				}
				u.cred = cred
			}
		default:
			*scopeProbs = append(*scopeProbs, fmt.Sprintf("%sunknown auth mode %q", prefix, cu.Auth))
		}
		if cu.Credential != nil {
			u.cred = cu.Credential
		}
		u.m = m.forUser(u.label)
		u.m.limit.Set(float64(u.limit))
		us.list = append(us.list, u)
	}
	return us
}

// acquire takes a request slot of a user: pin when it is set, else the
// least loaded user (in flight over limit) that is not paused. It waits
// while every candidate is paused or full.
func (us *users) acquire(ctx context.Context, pin *user) (*user, error) {
	for {
		us.mu.Lock()
		now := us.now()
		var best *user
		var resume time.Time
		n := len(us.list)
		for i := range n {
			u := us.list[(us.next+i)%n]
			if pin != nil && u != pin {
				continue
			}
			if u.paused.After(now) {
				if resume.IsZero() || u.paused.Before(resume) {
					resume = u.paused
				}
				continue
			}
			if u.inFlight >= u.limit {
				continue
			}
			if best == nil || u.inFlight*best.limit < best.inFlight*u.limit {
				best = u
			}
		}
		if best != nil {
			best.inFlight++
			us.next = (best.index + 1) % n
			us.mu.Unlock()
			best.m.inFlight.Inc()
			return best, nil
		}
		us.waiters++
		wake := us.wake
		us.mu.Unlock()
		var timer *time.Timer
		var fire <-chan time.Time
		if !resume.IsZero() {
			timer = time.NewTimer(resume.Sub(now))
			fire = timer.C
		}
		var err error
		select {
		case <-wake:
		case <-fire:
		case <-ctx.Done():
			err = ctx.Err()
		}
		if timer != nil {
			timer.Stop()
		}
		us.mu.Lock()
		us.waiters--
		us.mu.Unlock()
		if err != nil {
			return nil, err
		}
	}
}

// release gives back u's slot.
func (us *users) release(u *user) {
	us.mu.Lock()
	u.inFlight--
	us.broadcastLocked()
	us.mu.Unlock()
	u.m.inFlight.Dec()
}

func (us *users) broadcastLocked() {
	if us.waiters > 0 {
		close(us.wake)
		us.wake = make(chan struct{})
	}
}

// observe takes what an answer says about u's budget: the recommended
// degree of parallelism, and on 429 how long u must wait. A 429 without
// Retry-After pauses u for a growing back-off.
func (us *users) observe(u *user, status int, h http.Header) {
	us.mu.Lock()
	defer us.mu.Unlock()
	if v := strings.TrimSpace(h.Get(RequestsRemainingHeader)); v != "" {
		if n, err := strconv.Atoi(v); err == nil && n >= 0 {
			u.m.requestsLeft(float64(n))
		}
	}
	if v := strings.ReplaceAll(strings.TrimSpace(h.Get(TimeRemainingHeader)), ",", ""); v != "" {
		if secs, err := strconv.ParseFloat(v, 64); err == nil && secs >= 0 {
			u.m.timeLeft(secs)
		}
	}
	if v := h.Get(DOPHintHeader); v != "" {
		if hint, err := strconv.Atoi(strings.TrimSpace(v)); err == nil && hint > 0 {
			limit := min(hint, MaxConcurrency)
			if us.cap > 0 {
				limit = min(hint, us.cap)
			}
			if limit != u.limit {
				if limit > u.limit {
					us.broadcastLocked()
				}
				u.limit = limit
				u.m.limit.Set(float64(limit))
			}
		}
	}
	if status != http.StatusTooManyRequests {
		if status < 400 {
			u.strikes = 0
		}
		return
	}
	u.m.throttled.Inc()
	now := us.now()
	wait := parseRetryAfter(h.Get("Retry-After"), now)
	if wait <= 0 {
		wait = backoff(u.strikes)
		u.strikes++
	}
	until := now.Add(wait)
	if until.After(u.paused) {
		from := u.paused
		if from.Before(now) {
			from = now
		}
		u.m.paused.Add(until.Sub(from).Seconds())
		u.paused = until
	}
}

// resumeIn is how long until pin, or any user when pin is nil, is no
// longer paused; zero when one is not paused now.
func (us *users) resumeIn(pin *user) time.Duration {
	us.mu.Lock()
	defer us.mu.Unlock()
	now := us.now()
	var wait time.Duration = -1
	for _, u := range us.list {
		if pin != nil && u != pin {
			continue
		}
		d := max(u.paused.Sub(now), 0)
		if wait < 0 || d < wait {
			wait = d
		}
	}
	return max(wait, 0)
}

// UserIDs returns the systemuserid of every user the client signs in as,
// in configuration order: a configured User.UserID as given, the others
// asked with WhoAmI as that user. The agent takes a change made by any of
// them for its own.
func (c *Client) UserIDs(ctx context.Context) ([]string, error) {
	ids := make([]string, len(c.users.list))
	for i, u := range c.users.list {
		if u.id != "" {
			ids[i] = u.id
			continue
		}
		id, err := c.whoAmI(ctx, u)
		if err != nil {
			return nil, fmt.Errorf("asking who CRM user %s is: %w", u.label, err)
		}
		ids[i] = strings.ToLower(id)
	}
	return ids, nil
}

// WhoAmI returns the systemuserid of the client's first user; UserIDs
// returns every user's.
func (c *Client) WhoAmI(ctx context.Context) (string, error) {
	u := c.users.list[0]
	if u.id != "" {
		return u.id, nil
	}
	return c.whoAmI(ctx, u)
}

// UserLabels returns the users' labels (metrics' user label) in
// configuration order.
func (c *Client) UserLabels() []string {
	out := make([]string, len(c.users.list))
	for i, u := range c.users.list {
		out[i] = u.label
	}
	return out
}

// userMetrics are one user's series.
type userMetrics struct {
	requests, throttled, paused prometheus.Counter
	limit, inFlight             prometheus.Gauge
	// requestsLeft and timeLeft set the budget gauges; their series
	// appear with the first reading, so a user Dataverse has not yet
	// reported on does not read as exhausted.
	requestsLeft, timeLeft func(float64)
}

// clientMetrics are the client's Prometheus series, by user label.
type clientMetrics struct {
	requests, throttled, paused *prometheus.CounterVec
	limit, inFlight             *prometheus.GaugeVec
	requestsLeft, timeLeft      *prometheus.GaugeVec
}

func newClientMetrics(reg prometheus.Registerer) *clientMetrics {
	m := &clientMetrics{
		requests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "fhirsync_crm_requests_total", Help: "HTTP requests sent to Dataverse, by application user (a $batch is one).",
		}, []string{"user"}),
		throttled: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "fhirsync_crm_throttled_total", Help: "Dataverse answers 429 Too Many Requests (service protection), by application user.",
		}, []string{"user"}),
		paused: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "fhirsync_crm_paused_seconds_total", Help: "Seconds an application user was paused by Retry-After or back-off after a 429.",
		}, []string{"user"}),
		limit: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "fhirsync_crm_concurrency_limit", Help: "Requests an application user may have in flight: the latest x-ms-dop-hint, capped by crm.max_concurrency.",
		}, []string{"user"}),
		inFlight: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "fhirsync_crm_in_flight", Help: "Requests an application user has in flight.",
		}, []string{"user"}),
		requestsLeft: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "fhirsync_crm_budget_requests_remaining", Help: "Requests an application user has left in the current service-protection window, as Dataverse last reported (x-ms-ratelimit-burst-remaining-xrm-requests).",
		}, []string{"user"}),
		timeLeft: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "fhirsync_crm_budget_time_remaining_seconds", Help: "Execution time an application user has left in the current service-protection window, as Dataverse last reported (x-ms-ratelimit-time-remaining-xrm-requests).",
		}, []string{"user"}),
	}
	if reg == nil {
		return m
	}
	m.requests = register(reg, m.requests)
	m.throttled = register(reg, m.throttled)
	m.paused = register(reg, m.paused)
	m.limit = register(reg, m.limit)
	m.inFlight = register(reg, m.inFlight)
	m.requestsLeft = register(reg, m.requestsLeft)
	m.timeLeft = register(reg, m.timeLeft)
	return m
}

// register registers c, or returns the collector already registered under
// its name (a second client in the same process shares the series).
func register[T prometheus.Collector](reg prometheus.Registerer, c T) T {
	if err := reg.Register(c); err != nil {
		var are prometheus.AlreadyRegisteredError
		if errors.As(err, &are) {
			if existing, ok := are.ExistingCollector.(T); ok {
				return existing
			}
		}
	}
	return c
}

func (m *clientMetrics) forUser(label string) userMetrics {
	return userMetrics{requests: m.requests.WithLabelValues(label), throttled: m.throttled.WithLabelValues(label),
		paused: m.paused.WithLabelValues(label), limit: m.limit.WithLabelValues(label), inFlight: m.inFlight.WithLabelValues(label),
		requestsLeft: func(v float64) { m.requestsLeft.WithLabelValues(label).Set(v) },
		timeLeft:     func(v float64) { m.timeLeft.WithLabelValues(label).Set(v) }}
}
