package crm

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"net/url"
	"strings"
	"sync/atomic"
	"time"

	"github.com/Azure/azure-sdk-for-go/sdk/azcore"
	"github.com/Azure/azure-sdk-for-go/sdk/azidentity"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/fhirsync/fhirsync/internal/bufpool"
	fsmaps "github.com/fhirsync/fhirsync/maps"
)

// APIPath is the Web API service root below the organisation URL.
const APIPath = "/api/data/v9.2/"

// AuthMode selects how the client authenticates.
type AuthMode string

// Authentication modes.
const (
	AuthNone            AuthMode = "none"             // no Authorization header (sandbox)
	AuthBearer          AuthMode = "bearer"           // a static token (sandbox, tests)
	AuthClientSecret    AuthMode = "client_secret"    // Entra ID app registration
	AuthManagedIdentity AuthMode = "managed_identity" // Azure managed identity
	AuthDefault         AuthMode = "default"          // azidentity's default chain
)

// Limits from the Dataverse service-protection and $batch rules.
const (
	// MaxConcurrency is the per-user concurrent request limit ("Send
	// parallel requests", Service protection limits).
	MaxConcurrency = 52
	// MaxBatchSize is the number of requests one $batch may carry.
	MaxBatchSize = 1000
)

// Config configures a Client.
type Config struct {
	// URL is the organisation URL, e.g. https://contoso.crm.dynamics.com;
	// a URL that already contains /api/data/ is used as the service root.
	URL string
	// Users are the application users the client signs in as, each with
	// its own service-protection budget; requests are shared among them.
	// Empty means one user from Auth, Token, TenantID, ClientID,
	// ClientSecret and Credential below, which are then the only way to
	// give credentials.
	Users []User
	// Auth selects the authentication mode; empty means none.
	Auth AuthMode
	// Token is the static bearer token for AuthBearer.
	Token string
	// TenantID, ClientID and ClientSecret configure AuthClientSecret;
	// ClientID alone selects a user-assigned managed identity.
	TenantID     string
	ClientID     string
	ClientSecret string
	// Scope defaults to "<scheme>://<host>/.default" of URL.
	Scope string
	// Credential, when set, is used instead of building one from Auth.
	Credential azcore.TokenCredential
	// CallerID, when set, is sent as MSCRMCallerID (impersonation).
	CallerID string
	// HTTPClient defaults to a client with sensible transport timeouts.
	HTTPClient *http.Client
	// Timeout bounds one HTTP attempt; zero means 2 minutes (the Dataverse
	// request time-out).
	Timeout time.Duration
	// MaxConcurrency caps each user's requests in flight, at most 52.
	// Within the cap a user's limit follows the latest x-ms-dop-hint the
	// CRM answered with. Zero means no cap beyond 52: the hint alone
	// decides, and until one arrives the limit is 8.
	MaxConcurrency int
	// MaxRetries is how many times a throttled or unavailable request is
	// retried; zero means 5, negative means never.
	MaxRetries int
	// MaxRetryWait is the longest Retry-After the client will sleep; a
	// longer one is returned to the caller as a throttled error. Zero
	// means 5 minutes.
	MaxRetryWait time.Duration
	// BatchSize is the starting number of requests per $batch in
	// UpsertMany; zero means 100, at most 1000. It adapts to throttling.
	BatchSize int
	// PageSize is sent as Prefer: odata.maxpagesize; zero leaves the
	// server default (5000).
	PageSize int
	// Registerer, when set, receives the per-user request metrics.
	Registerer prometheus.Registerer
}

// Client talks to one Dataverse organisation. It is safe for concurrent use.
type Client struct {
	root      string // service root, ending in "/"
	http      *http.Client
	users     *users
	scope     string
	callerID  string
	timeout   time.Duration
	retries   int
	retryWait time.Duration
	pageSize  int
	batchMax  int
	batchSize atomic.Int64
	// bypass names the steps a write asks Dataverse to skip (bypass.go).
	bypass atomic.Pointer[bypass]
}

// New validates cfg and builds a client.
func New(cfg Config) (*Client, error) {
	var probs []string
	u, err := url.Parse(cfg.URL)
	if err != nil || (u.Scheme != "https" && u.Scheme != "http") || u.Host == "" {
		probs = append(probs, "URL must be an absolute http(s) URL")
	}
	if cfg.MaxConcurrency < 0 || cfg.MaxConcurrency > MaxConcurrency {
		probs = append(probs, fmt.Sprintf("MaxConcurrency must be between 1 and %d", MaxConcurrency))
	}
	if cfg.BatchSize < 0 || cfg.BatchSize > MaxBatchSize {
		probs = append(probs, fmt.Sprintf("BatchSize must be between 1 and %d", MaxBatchSize))
	}
	c := &Client{callerID: cfg.CallerID, timeout: cfg.Timeout, retries: cfg.MaxRetries,
		retryWait: cfg.MaxRetryWait, pageSize: cfg.PageSize, http: cfg.HTTPClient}
	c.users = buildUsers(cfg, &probs)
	if len(probs) > 0 {
		return nil, fmt.Errorf("dataverse client config: %s", strings.Join(probs, "; "))
	}
	if i := strings.Index(u.Path, "/api/data/"); i >= 0 {
		c.root = strings.TrimRight(cfg.URL, "/") + "/"
	} else {
		c.root = strings.TrimRight(u.Scheme+"://"+u.Host+u.Path, "/") + APIPath
	}
	c.scope = cfg.Scope
	if c.scope == "" {
		c.scope = u.Scheme + "://" + u.Host + "/.default"
	}
	if c.http == nil {
		c.http = &http.Client{Transport: &http.Transport{
			Proxy:               http.ProxyFromEnvironment,
			DialContext:         (&net.Dialer{Timeout: 15 * time.Second, KeepAlive: 30 * time.Second}).DialContext,
			TLSHandshakeTimeout: 15 * time.Second,
			MaxIdleConnsPerHost: MaxConcurrency * max(1, len(cfg.Users)),
			IdleConnTimeout:     90 * time.Second,
		}}
	}
	if c.timeout == 0 {
		c.timeout = 2 * time.Minute
	}
	if c.retries == 0 {
		c.retries = 5
	}
	if c.retries < 0 {
		c.retries = 0
	}
	if c.retryWait == 0 {
		c.retryWait = 5 * time.Minute
	}
	c.batchMax = cfg.BatchSize
	if c.batchMax == 0 {
		c.batchMax = 100
	}
	c.batchSize.Store(int64(c.batchMax))
	return c, nil
}

func newCredential(cfg User) (azcore.TokenCredential, error) {
	switch cfg.Auth {
	case AuthClientSecret:
		if cfg.TenantID == "" || cfg.ClientID == "" || cfg.ClientSecret == "" {
			return nil, errors.New("auth client_secret needs TenantID, ClientID and ClientSecret")
		}
		return azidentity.NewClientSecretCredential(cfg.TenantID, cfg.ClientID, cfg.ClientSecret, nil)
	case AuthManagedIdentity:
		o := &azidentity.ManagedIdentityCredentialOptions{}
		if cfg.ClientID != "" {
			o.ID = azidentity.ClientID(cfg.ClientID)
		}
		return azidentity.NewManagedIdentityCredential(o)
	default:
		return azidentity.NewDefaultAzureCredential(nil)
	}
}

// Root returns the service root URL, ending in "/".
func (c *Client) Root() string { return c.root }

// call is one HTTP exchange to make.
type call struct {
	method string
	url    string // absolute
	header http.Header
	body   []byte
	// idempotent calls are retried after 5xx and network failures; all
	// calls are retried after 429, which means "not executed".
	idempotent bool
	// noRetry returns throttling to the caller (UpsertMany adapts itself).
	noRetry bool
	// notModified accepts 304 Not Modified as an answer (a conditional
	// retrieve).
	notModified bool
	// user, when set, is the only user the call may be sent as.
	user *user
	// batch marks a $batch: a multipart answer is returned for decoding
	// whatever its status, because Dataverse answers a batch that stopped
	// at a failed request with that request's error status and the
	// answers so far. Such a batch was partly executed and is never
	// retried as a whole.
	batch bool
}

type result struct {
	status int
	header http.Header
	body   []byte
}

// send makes the call, retrying what may be retried, and returns a 2xx
// result or a classified *Error.
//
// Each attempt goes out as one of the client's users. A 429 pauses that
// user (observe); the call is then sent again at once as another user that
// is free, even a noRetry call, since a 429 means nothing was executed.
// Only when every user is paused does the call wait, or for noRetry return
// the throttled error with RetryAfter until the first user resumes.
func (c *Client) send(ctx context.Context, op string, cl call) (result, error) {
	failovers := 0
	for attempt := 0; ; {
		u, err := c.users.acquire(ctx, cl.user)
		if err != nil {
			return result{}, fmt.Errorf("%s: %w", op, err)
		}
		res, err := c.once(ctx, u, op, cl)
		c.users.release(u)
		if err == nil {
			return res, nil
		}
		e, ok := AsError(err)
		if ok && !cl.batch && c.noteBypassRefusal(e) {
			// Refused only for the bypass header, which is now off.
			continue
		}
		if !ok || !e.Retryable {
			return res, err
		}
		if e.Class == ClassThrottled {
			wait := c.users.resumeIn(cl.user)
			if wait == 0 && cl.user == nil && failovers < len(c.users.list) {
				failovers++
				continue
			}
			if len(c.users.list) > 1 && cl.user == nil {
				e.RetryAfter = wait
			}
			if cl.noRetry || attempt >= c.retries || wait > c.retryWait {
				return res, err
			}
			attempt++
			continue // acquire waits out the pause
		}
		if cl.noRetry || attempt >= c.retries || !cl.idempotent {
			return res, err
		}
		wait := e.RetryAfter
		if wait == 0 {
			wait = backoff(attempt)
		}
		if wait > c.retryWait {
			return res, err
		}
		t := time.NewTimer(wait)
		select {
		case <-ctx.Done():
			t.Stop()
			return res, fmt.Errorf("%s: waiting to retry: %w", op, ctx.Err())
		case <-t.C:
		}
		attempt++
	}
}

func backoff(attempt int) time.Duration {
	d := 200 * time.Millisecond << min(attempt, 6)
	return d/2 + rand.N(d/2+1)
}

// once makes one HTTP exchange as u, which holds a slot for it.
func (c *Client) once(ctx context.Context, u *user, op string, cl call) (result, error) {
	actx, cancel := context.WithTimeout(ctx, c.timeout)
	defer cancel()
	var body io.Reader
	if cl.body != nil {
		body = bytes.NewReader(cl.body)
	}
	req, err := http.NewRequestWithContext(actx, cl.method, cl.url, body)
	if err != nil {
		return result{}, &Error{Op: op, Class: ClassRejected, Err: err}
	}
	for k, v := range cl.header {
		req.Header[k] = v
	}
	req.Header.Set("OData-Version", "4.0")
	req.Header.Set("OData-MaxVersion", "4.0")
	if req.Header.Get("Accept") == "" {
		req.Header.Set("Accept", "application/json")
	}
	if cl.body != nil && req.Header.Get("Content-Type") == "" {
		req.Header.Set("Content-Type", "application/json; charset=utf-8")
	}
	if c.callerID != "" {
		req.Header.Set("MSCRMCallerID", c.callerID)
	}
	if !cl.batch {
		if v := c.bypassHeader(cl.method, cl.url, req.Header); v != "" {
			req.Header.Set(HeaderBypassStepIDs, v)
		}
	}
	auth, err := u.authorization(ctx, c.scope)
	if err != nil {
		return result{}, err
	}
	if auth != "" {
		req.Header.Set("Authorization", auth)
	}
	u.m.requests.Inc()
	resp, err := c.http.Do(req)
	if err != nil {
		if ctx.Err() != nil {
			return result{}, fmt.Errorf("%s: %w", op, ctx.Err())
		}
		return result{}, &Error{Op: op, Class: ClassUnavailable, Retryable: true, Err: err}
	}
	defer resp.Body.Close()
	c.users.observe(u, resp.StatusCode, resp.Header)
	b, err := answerBuffers.ReadAll(io.LimitReader(resp.Body, 256<<20))
	if err != nil {
		if ctx.Err() != nil {
			return result{}, fmt.Errorf("%s: %w", op, ctx.Err())
		}
		return result{}, &Error{Op: op, Status: resp.StatusCode, Class: ClassUnavailable, Retryable: true,
			Err: fmt.Errorf("reading the response: %w", err)}
	}
	res := result{status: resp.StatusCode, header: resp.Header, body: b}
	if cl.batch && resp.StatusCode != http.StatusTooManyRequests {
		if h, ok := innerThrottle(b); ok {
			c.users.observe(u, http.StatusTooManyRequests, h)
		}
	}
	if resp.StatusCode == http.StatusNotModified && cl.notModified {
		return res, nil
	}
	if resp.StatusCode < 200 || resp.StatusCode > 299 {
		if cl.batch && resp.StatusCode < 500 && isMultipartAnswer(resp.Header, b) {
			return res, nil
		}
		if len(c.users.list) > 1 && (resp.StatusCode == http.StatusUnauthorized || resp.StatusCode == http.StatusForbidden) {
			op += " as CRM user " + u.label
		}
		return res, errorFromResponse(op, resp.StatusCode, resp.Header, b)
	}
	return res, nil
}

// decodeJSON decodes a 2xx JSON body, classifying anything else as
// invalid_response. A body without a Content-Type is decoded as JSON:
// Microsoft's documentation prints many answers without that header, and
// the body decides; a body declared as something else is refused.
//
// Rows (a *Record) are decoded by the map engine's decoder
// (maps.DecodeJSON: the values encoding/json gives with UseNumber, in a
// fraction of its time and memory), as decodePage decodes collections;
// other answers by encoding/json.
func decodeJSON(op string, res result, out any) error {
	if err := checkJSONType(op, res); err != nil {
		return err
	}
	if rec, ok := out.(*Record); ok {
		m, err := decodeObject(op, res)
		*rec = m
		return err
	}
	dec := json.NewDecoder(bytes.NewReader(res.body))
	dec.UseNumber()
	if err := dec.Decode(out); err != nil {
		return invalidResponse(op, res.status, "decoding the JSON answer: %v", err)
	}
	if dec.More() {
		return invalidResponse(op, res.status, "trailing data after the JSON answer")
	}
	return nil
}

// checkJSONType refuses a body declared as something other than JSON; one
// without a Content-Type is taken as JSON (see decodeJSON).
func checkJSONType(op string, res result) error {
	if ct := res.header.Get("Content-Type"); ct != "" && !isJSON(ct) {
		return invalidResponse(op, res.status, "expected JSON, got %s", describeBody(res.header, res.body))
	}
	return nil
}

// decodeObject decodes a 2xx JSON body that should be an object; a body
// of null is no object (nil, no error), as encoding/json decodes it into a
// map.
func decodeObject(op string, res result) (map[string]any, error) {
	if bytes.Equal(bytes.TrimSpace(res.body), []byte("null")) {
		return nil, nil
	}
	m, err := fsmaps.DecodeJSON(res.body)
	if err != nil {
		return nil, invalidResponse(op, res.status, "decoding the JSON answer: %v", err)
	}
	return m, nil
}

// decodePage decodes a collection answer (value, @odata.nextLink,
// @odata.deltaLink); hasValue is false when the answer has no value
// member.
func decodePage(op string, res result) (pg page, hasValue bool, err error) {
	if err := checkJSONType(op, res); err != nil {
		return pg, false, err
	}
	m, err := decodeObject(op, res)
	if err != nil || m == nil {
		return pg, false, err
	}
	for _, l := range []struct {
		name string
		to   *string
	}{{"@odata.nextLink", &pg.NextLink}, {"@odata.deltaLink", &pg.DeltaLink}} {
		switch v := m[l.name].(type) {
		case nil:
		case string:
			*l.to = v
		default:
			return pg, false, invalidResponse(op, res.status, "decoding the JSON answer: %s is not a string", l.name)
		}
	}
	v, hasValue := m["value"]
	switch items := v.(type) {
	case nil:
		return pg, false, nil
	case []any:
		pg.Value = make([]Record, len(items))
		for i, it := range items {
			switch row := it.(type) {
			case nil:
			case map[string]any:
				pg.Value[i] = row
			default:
				return pg, false, invalidResponse(op, res.status, "decoding the JSON answer: value item %d is not an object", i)
			}
		}
	default:
		return pg, false, invalidResponse(op, res.status, "decoding the JSON answer: value is not an array")
	}
	return pg, hasValue, nil
}

func (c *Client) url(path string, q url.Values) string {
	u := c.root + path
	if len(q) > 0 {
		u += "?" + encodeQuery(q)
	}
	return u
}

// encodeQuery encodes OData system query options keeping "$" and "," readable.
func encodeQuery(q url.Values) string {
	s := q.Encode()
	s = strings.ReplaceAll(s, "%24", "$")
	s = strings.ReplaceAll(s, "%2C", ",")
	return s
}

// sameService reports whether an absolute link (nextLink, deltaLink) points
// at this client's service root, so a token is never sent elsewhere.
func (c *Client) sameService(link string) bool {
	return strings.HasPrefix(link, c.root)
}

func (c *Client) preferHeader(extra ...string) http.Header {
	h := http.Header{}
	prefs := extra
	if c.pageSize > 0 {
		prefs = append(prefs, fmt.Sprintf("odata.maxpagesize=%d", c.pageSize))
	}
	if len(prefs) > 0 {
		h.Set("Prefer", strings.Join(prefs, ","))
	}
	return h
}

// RetrieveIfChanged reads one row unless its version is still etag
// (If-None-Match): changed is false, and rec nil, when Dataverse answers
// 304 Not Modified ("Perform conditional operations using the Web API",
// Conditional retrievals). An empty etag always reads.
func (c *Client) RetrieveIfChanged(ctx context.Context, t Target, etag string, sel ...string) (rec Record, changed bool, err error) {
	op := "retrieving " + t.String() + " if changed"
	q := url.Values{}
	if len(sel) > 0 {
		q.Set("$select", strings.Join(sel, ","))
	}
	h := http.Header{}
	if etag != "" {
		h.Set("If-None-Match", etag)
	}
	res, err := c.send(ctx, op, call{method: http.MethodGet, url: c.url(t.path(), q), header: h, idempotent: true, notModified: etag != ""})
	if err != nil {
		return nil, false, err
	}
	if res.status == http.StatusNotModified {
		return nil, false, nil
	}
	if err := decodeJSON(op, res, &rec); err != nil {
		return nil, false, err
	}
	if rec == nil {
		return nil, false, invalidResponse(op, res.status, "answer is not a JSON object")
	}
	return rec, true, nil
}

// answerBuffers are the buffers answers, and the parts of $batch answers,
// are read in before they are copied out at their size.
var answerBuffers bufpool.Pool
