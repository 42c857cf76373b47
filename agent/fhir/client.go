package fhir

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"mime"
	"net"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/Azure/azure-sdk-for-go/sdk/azcore"
	"github.com/Azure/azure-sdk-for-go/sdk/azcore/policy"
	"github.com/fhirsync/fhirsync/internal/bufpool"
	fsmaps "github.com/fhirsync/fhirsync/maps"
)

// Config configures a Client.
type Config struct {
	// BaseURL is the FHIR service base, e.g.
	// https://ws-fhir.fhir.azurehealthcareapis.com or http://127.0.0.1:8080/fhir.
	BaseURL string
	// Timeout bounds each request, including reading the body. Default 30s.
	Timeout time.Duration
	// BearerToken, when set, is sent as a static Authorization header.
	BearerToken string
	// Credential, when set, supplies tokens (azidentity for Azure Health
	// Data Services). At most one of BearerToken and Credential.
	Credential azcore.TokenCredential
	// Scope is the token scope; default "https://<host of BaseURL>/.default".
	Scope string
	// HTTPClient is the transport; default a client that keeps up to
	// MaxIdleConns connections to the server open between requests.
	HTTPClient *http.Client
	// MaxResponseBytes bounds a response body; default 32 MiB.
	MaxResponseBytes int64
	// UserAgent is sent with every request.
	UserAgent string
}

// MaxIdleConns is how many connections to the server the default transport
// keeps open between requests: one for each of the agent's default workers
// on its two queues.
const MaxIdleConns = 128

// Client talks FHIR R4 REST (JSON) to one server. It is safe for
// concurrent use. It does not retry: every failure is an *Error whose
// Class and Retryable fields let the caller decide.
type Client struct {
	base    *url.URL
	http    *http.Client
	timeout time.Duration
	maxBody int64
	ua      string
	auth    func(ctx context.Context) (string, error)
	now     func() time.Time
}

// New validates cfg and returns a client.
func New(cfg Config) (*Client, error) {
	var probs []string
	base, err := url.Parse(strings.TrimRight(cfg.BaseURL, "/"))
	if err != nil || (base.Scheme != "http" && base.Scheme != "https") || base.Host == "" {
		probs = append(probs, fmt.Sprintf("base URL %q is not an absolute http(s) URL", cfg.BaseURL))
	}
	if cfg.BearerToken != "" && cfg.Credential != nil {
		probs = append(probs, "set either a bearer token or a credential, not both")
	}
	if cfg.Timeout < 0 || cfg.MaxResponseBytes < 0 {
		probs = append(probs, "timeout and response limit must not be negative")
	}
	if len(probs) > 0 {
		return nil, fmt.Errorf("fhir client config: %s", strings.Join(probs, "; "))
	}
	c := &Client{base: base, http: cfg.HTTPClient, timeout: cfg.Timeout, maxBody: cfg.MaxResponseBytes,
		ua: cfg.UserAgent, now: time.Now}
	if c.http == nil {
		// Go's default transport keeps only two idle connections per
		// host: with the agent's workers sharing one server, every other
		// request would open a new connection.
		c.http = &http.Client{Transport: &http.Transport{
			Proxy:               http.ProxyFromEnvironment,
			DialContext:         (&net.Dialer{Timeout: 15 * time.Second, KeepAlive: 30 * time.Second}).DialContext,
			ForceAttemptHTTP2:   true,
			TLSHandshakeTimeout: 15 * time.Second,
			MaxIdleConnsPerHost: MaxIdleConns,
			IdleConnTimeout:     90 * time.Second,
		}}
	}
	if c.timeout == 0 {
		c.timeout = 30 * time.Second
	}
	if c.maxBody == 0 {
		c.maxBody = 32 << 20
	}
	if c.ua == "" {
		c.ua = "fhirsync"
	}
	switch {
	case cfg.BearerToken != "":
		tok := cfg.BearerToken
		c.auth = func(context.Context) (string, error) { return tok, nil }
	case cfg.Credential != nil:
		scope := cfg.Scope
		if scope == "" {
			scope = "https://" + base.Hostname() + "/.default"
		}
		c.auth = (&tokenCache{cred: cfg.Credential, scope: scope, now: time.Now}).token
	}
	return c, nil
}

// BaseURL returns the server base the client talks to.
func (c *Client) BaseURL() string { return c.base.String() }

// tokenCache keeps a credential's token until shortly before it expires;
// credentials cache too, but not all of them, and asking costs a lock.
type tokenCache struct {
	cred  azcore.TokenCredential
	scope string
	now   func() time.Time

	mu      sync.Mutex
	tok     string
	expires time.Time
}

func (t *tokenCache) token(ctx context.Context) (string, error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.tok != "" && t.now().Before(t.expires.Add(-2*time.Minute)) {
		return t.tok, nil
	}
	at, err := t.cred.GetToken(ctx, policy.TokenRequestOptions{Scopes: []string{t.scope}})
	if err != nil {
		return "", err
	}
	t.tok, t.expires = at.Token, at.ExpiresOn
	return t.tok, nil
}

// Read returns the current version of type/id.
func (c *Client) Read(ctx context.Context, typ, id string) (Resource, error) {
	r, _, err := c.doResource(ctx, call{op: "read " + typ + "/" + id, method: http.MethodGet,
		path: typ + "/" + id, want: typ})
	return r, err
}

// VRead returns version vid of type/id.
func (c *Client) VRead(ctx context.Context, typ, id, vid string) (Resource, error) {
	r, _, err := c.doResource(ctx, call{op: "vread " + typ + "/" + id + "/_history/" + vid, method: http.MethodGet,
		path: typ + "/" + id + "/_history/" + vid, want: typ})
	return r, err
}

// Capabilities returns the server's CapabilityStatement (GET /metadata).
func (c *Client) Capabilities(ctx context.Context) (Resource, error) {
	r, _, err := c.doResource(ctx, call{op: "capabilities", method: http.MethodGet, path: "metadata", want: "CapabilityStatement"})
	return r, err
}

// Create POSTs res and returns the stored resource with its server id and
// version.
func (c *Client) Create(ctx context.Context, res Resource) (Resource, error) {
	typ := res.Type()
	body, err := encode(res)
	if err != nil {
		return nil, fmt.Errorf("fhir create %s: %w", typ, err)
	}
	return c.create(ctx, typ, body)
}

// create POSTs an encoded resource of type typ.
func (c *Client) create(ctx context.Context, typ string, body []byte) (Resource, error) {
	r, _, err := c.doResource(ctx, call{op: "create " + typ, method: http.MethodPost, path: typ, body: body, want: typ})
	return r, err
}

// CreateIfNoneExist POSTs res with If-None-Exist: criteria (a search query
// such as identifier=sys|val): with no match the server creates it, with
// one match it answers with the existing resource and creates nothing,
// with several it refuses (ClassConflict, 412) — FHIR R4 conditional create
// (https://hl7.org/fhir/R4/http.html#ccreate). created reports whether the
// resource returned is new. R4 only says that on one match the server
// "ignores the post and returns 200 OK": the body may be the existing
// resource (HAPI, Medplum) or nothing, and then the resource is nil.
func (c *Client) CreateIfNoneExist(ctx context.Context, res Resource, criteria url.Values) (r Resource, created bool, err error) {
	typ := res.Type()
	op := "conditional create " + typ
	if !isTypeName(typ) || len(criteria) == 0 {
		return nil, false, fmt.Errorf("fhir %s: needs a resourceType and search criteria", op)
	}
	body, err := encode(res)
	if err != nil {
		return nil, false, fmt.Errorf("fhir %s: %w", op, err)
	}
	return c.createIfNoneExist(ctx, typ, body, criteria)
}

// createIfNoneExist POSTs an encoded resource of type typ with
// If-None-Exist: criteria.
func (c *Client) createIfNoneExist(ctx context.Context, typ string, body []byte, criteria url.Values) (r Resource, created bool, err error) {
	op := "conditional create " + typ
	h := http.Header{"If-None-Exist": {criteria.Encode()}}
	r, status, err := c.do(ctx, call{op: op, method: http.MethodPost, path: typ, body: body, header: h, want: typ, allowEmpty: true})
	if err != nil {
		return nil, false, err
	}
	if status == http.StatusCreated && r == nil {
		return nil, false, invalidResponse(op, status, "empty body where a %s was expected", typ)
	}
	return r, status == http.StatusCreated, nil
}

// Update PUTs res to its type/id. With ifMatch set (a version id), the
// server applies it only if the current version is still ifMatch; a lost
// race is an *Error with Class ClassConflict (errors.Is(err, ErrConflict)).
func (c *Client) Update(ctx context.Context, res Resource, ifMatch string) (Resource, error) {
	typ, id := res.Type(), res.ID()
	op := "update " + typ + "/" + id
	if !isTypeName(typ) || !isID(id) {
		return nil, fmt.Errorf("fhir %s: resource needs a resourceType and an id", op)
	}
	body, err := encode(res)
	if err != nil {
		return nil, fmt.Errorf("fhir %s: %w", op, err)
	}
	return c.update(ctx, typ, id, body, ifMatch)
}

// update PUTs an encoded resource to typ/id, with If-Match when ifMatch is
// set.
func (c *Client) update(ctx context.Context, typ, id string, body []byte, ifMatch string) (Resource, error) {
	op := "update " + typ + "/" + id
	h := http.Header{}
	if ifMatch != "" {
		h.Set("If-Match", `W/"`+ifMatch+`"`)
	}
	r, _, err := c.doResource(ctx, call{op: op, method: http.MethodPut, path: typ + "/" + id, body: body, header: h, want: typ})
	return r, err
}

// ConditionalUpdate PUTs res to type?criteria (e.g. identifier=sys|val):
// no match creates, one match updates it, several matches fail with
// ClassConflict (412). It reports whether the server created the resource.
func (c *Client) ConditionalUpdate(ctx context.Context, res Resource, criteria url.Values) (Resource, bool, error) {
	typ := res.Type()
	op := "conditional update " + typ
	if !isTypeName(typ) || len(criteria) == 0 {
		return nil, false, fmt.Errorf("fhir %s: needs a resourceType and search criteria", op)
	}
	body, err := encode(res)
	if err != nil {
		return nil, false, fmt.Errorf("fhir %s: %w", op, err)
	}
	r, status, err := c.doResource(ctx, call{op: op, method: http.MethodPut, path: typ, query: criteria, body: body, want: typ})
	return r, status == http.StatusCreated, err
}

// Delete deletes type/id. Servers differ on deleting what does not exist:
// some answer 204, others 404 (an *Error with ClassNotFound).
func (c *Client) Delete(ctx context.Context, typ, id string) error {
	_, _, err := c.do(ctx, call{op: "delete " + typ + "/" + id, method: http.MethodDelete, path: typ + "/" + id, allowEmpty: true})
	return err
}

// Transaction posts a transaction (or batch) Bundle and returns the
// response Bundle. For a batch, individual entries may have failed: check
// each Entry's Status.
func (c *Client) Transaction(ctx context.Context, bundle Resource) (*Page, error) {
	body, err := encode(bundle)
	if err != nil {
		return nil, fmt.Errorf("fhir transaction: %w", err)
	}
	r, _, err := c.doResource(ctx, call{op: "transaction", method: http.MethodPost, body: body, want: "Bundle"})
	if err != nil {
		return nil, err
	}
	return c.page("transaction", r)
}

// Search runs a type-level search and returns its first page.
func (c *Client) Search(ctx context.Context, typ string, q url.Values) (*Page, error) {
	op := "search " + typ
	r, _, err := c.doResource(ctx, call{op: op, method: http.MethodGet, path: typ, query: q, want: "Bundle"})
	if err != nil {
		return nil, err
	}
	return c.page(op, r)
}

// History returns the first page of changes since since (inclusive) for one
// resource type, or for the whole server when typ is "". A zero since
// asks for the whole history. count (when > 0) sets _count.
func (c *Client) History(ctx context.Context, typ string, since time.Time, count int) (*Page, error) {
	path, op := "_history", "history"
	if typ != "" {
		path, op = typ+"/_history", "history "+typ
	}
	q := url.Values{}
	if !since.IsZero() {
		q.Set("_since", since.UTC().Truncate(time.Millisecond).Format(instantLayout))
	}
	if count > 0 {
		q.Set("_count", strconv.Itoa(count))
	}
	r, _, err := c.doResource(ctx, call{op: op, method: http.MethodGet, path: path, query: q, want: "Bundle"})
	if err != nil {
		return nil, err
	}
	return c.page(op, r)
}

// InstanceHistory returns the first page of type/id's versions.
func (c *Client) InstanceHistory(ctx context.Context, typ, id string) (*Page, error) {
	op := "history " + typ + "/" + id
	r, _, err := c.doResource(ctx, call{op: op, method: http.MethodGet, path: typ + "/" + id + "/_history", want: "Bundle"})
	if err != nil {
		return nil, err
	}
	return c.page(op, r)
}

// ErrNoNextPage is returned by NextPage on the last page.
var ErrNoNextPage = errors.New("fhir: no next page")

// NextPage follows p's next link. The link must point at the same server
// as the base URL, so a token is never sent elsewhere.
func (c *Client) NextPage(ctx context.Context, p *Page) (*Page, error) {
	if p.Next == "" {
		return nil, ErrNoNextPage
	}
	op := p.op + " (next page)"
	u, err := url.Parse(p.Next)
	if err != nil {
		return nil, invalidResponse(op, 0, "next link is not a URL")
	}
	if u.Host == "" {
		u = c.base.ResolveReference(u)
	}
	if u.Scheme != c.base.Scheme || u.Host != c.base.Host {
		return nil, invalidResponse(op, 0, "next link points at another server (%s)", u.Host)
	}
	r, _, err := c.doResource(ctx, call{op: op, method: http.MethodGet, abs: u, want: "Bundle"})
	if err != nil {
		return nil, err
	}
	return c.page(p.op, r)
}

// Each calls fn for every entry of first and the pages after it, stopping
// at the first error.
func (c *Client) Each(ctx context.Context, first *Page, fn func(Entry) error) error {
	for p := first; ; {
		for _, e := range p.Entries {
			if err := fn(e); err != nil {
				return err
			}
		}
		if p.Next == "" {
			return nil
		}
		next, err := c.NextPage(ctx, p)
		if err != nil {
			return err
		}
		p = next
	}
}

// Page is one page of a search, history or transaction-response Bundle.
type Page struct {
	// Bundle is the whole Bundle as received.
	Bundle Resource
	// Type is Bundle.type (searchset, history, transaction-response, ...).
	Type    string
	Entries []Entry
	// Next is link[relation=next].url, "" on the last page.
	Next string
	// Total is Bundle.total, or -1 when the server did not say.
	Total int

	op string
}

// page checks a Bundle's shape and extracts its entries.
func (c *Client) page(op string, b Resource) (*Page, error) { return parsePage(op, b) }

// parsePage checks a Bundle's shape and extracts its entries.
func parsePage(op string, b Resource) (*Page, error) {
	p := &Page{Bundle: b, Total: -1, op: op}
	p.Type, _ = b["type"].(string)
	if n, ok := b["total"].(json.Number); ok {
		if v, err := n.Int64(); err == nil {
			p.Total = int(v)
		}
	}
	if links, ok := b["link"]; ok {
		arr, ok := links.([]any)
		if !ok {
			return nil, invalidResponse(op, 0, "Bundle.link is not an array")
		}
		for _, l := range arr {
			lm, ok := l.(map[string]any)
			if !ok {
				return nil, invalidResponse(op, 0, "Bundle.link item is not an object")
			}
			if rel, _ := lm["relation"].(string); rel == "next" {
				p.Next, _ = lm["url"].(string)
			}
		}
	}
	raw, ok := b["entry"]
	if !ok {
		return p, nil
	}
	arr, ok := raw.([]any)
	if !ok {
		return nil, invalidResponse(op, 0, "Bundle.entry is not an array")
	}
	p.Entries = make([]Entry, 0, len(arr))
	for i, item := range arr {
		em, ok := item.(map[string]any)
		if !ok {
			return nil, invalidResponse(op, 0, "Bundle.entry[%d] is not an object", i)
		}
		var e Entry
		e.FullURL, _ = em["fullUrl"].(string)
		if r, ok := em["resource"]; ok {
			rm, ok := r.(map[string]any)
			if !ok || !isTypeName(Resource(rm).Type()) {
				return nil, invalidResponse(op, 0, "Bundle.entry[%d].resource is not a resource", i)
			}
			e.Resource = Resource(rm)
		}
		if s, ok := em["search"].(map[string]any); ok {
			e.SearchMode, _ = s["mode"].(string)
		}
		if rq, ok := em["request"].(map[string]any); ok {
			e.Method, _ = rq["method"].(string)
			e.URL, _ = rq["url"].(string)
		}
		if rs, ok := em["response"].(map[string]any); ok {
			e.Status, _ = rs["status"].(string)
			e.Location, _ = rs["location"].(string)
			e.ETag, _ = rs["etag"].(string)
			if lm, _ := rs["lastModified"].(string); lm != "" {
				e.LastModified, _ = parseInstant(lm)
			}
			if o, ok := rs["outcome"].(map[string]any); ok {
				e.Outcome = Resource(o)
			}
		}
		p.Entries = append(p.Entries, e)
	}
	return p, nil
}

// call describes one HTTP interaction.
type call struct {
	op     string
	method string
	path   string     // relative to the base
	abs    *url.URL   // or an absolute URL (next links)
	query  url.Values // added to path
	body   []byte
	header http.Header
	// want is the resourceType a successful body must have.
	want string
	// allowEmpty accepts a 2xx without a body (delete).
	allowEmpty bool
}

// doResource performs c and insists on a resource of c.want in the body.
func (c *Client) doResource(ctx context.Context, cl call) (Resource, int, error) {
	r, status, err := c.do(ctx, cl)
	if err != nil {
		return nil, status, err
	}
	if r == nil {
		return nil, status, invalidResponse(cl.op, status, "empty body where a %s was expected", cl.want)
	}
	return r, status, nil
}

// do performs the request and classifies every way it can go wrong.
func (c *Client) do(ctx context.Context, cl call) (Resource, int, error) {
	ctx, cancel := context.WithTimeout(ctx, c.timeout)
	defer cancel()
	u := cl.abs
	if u == nil {
		ref := &url.URL{Path: cl.path}
		if len(cl.query) > 0 {
			ref.RawQuery = cl.query.Encode()
		}
		u = c.base.JoinPath(ref.Path)
		u.RawQuery = ref.RawQuery
	}
	var body io.Reader
	if cl.body != nil {
		body = bytes.NewReader(cl.body)
	}
	req, err := http.NewRequestWithContext(ctx, cl.method, u.String(), body)
	if err != nil {
		return nil, 0, fmt.Errorf("fhir %s: building request: %w", cl.op, err)
	}
	for k, v := range cl.header {
		req.Header[k] = v
	}
	req.Header.Set("Accept", "application/fhir+json")
	req.Header.Set("User-Agent", c.ua)
	if cl.body != nil {
		req.Header.Set("Content-Type", "application/fhir+json")
		if req.Header.Get("Prefer") == "" {
			req.Header.Set("Prefer", "return=representation")
		}
	}
	if c.auth != nil {
		tok, err := c.auth(ctx)
		if err != nil {
			return nil, 0, &Error{Op: cl.op, Class: ClassUnauthorized, Err: fmt.Errorf("getting a token: %w", err)}
		}
		req.Header.Set("Authorization", "Bearer "+tok)
	}
	resp, err := c.http.Do(req)
	if err != nil {
		if ctxErr := context.Cause(ctx); ctxErr != nil && errors.Is(err, context.Canceled) {
			return nil, 0, fmt.Errorf("fhir %s: %w", cl.op, ctxErr)
		}
		return nil, 0, &Error{Op: cl.op, Class: ClassUnavailable, Retryable: true, Err: err}
	}
	defer resp.Body.Close()
	// Nothing keeps the body past this call: the decoder copies every
	// string and number out of it, and errors quote the OperationOutcome's
	// text as a new string; so it is read into a pooled buffer.
	buf := bodyBuffers.Get()
	raw, err := bufpool.ReadFrom(*buf, io.LimitReader(resp.Body, c.maxBody+1))
	defer bodyBuffers.Put(buf, raw)
	if err != nil {
		return nil, resp.StatusCode, &Error{Op: cl.op, Status: resp.StatusCode, Class: ClassUnavailable, Retryable: true,
			Err: fmt.Errorf("reading the response: %w", err)}
	}
	if int64(len(raw)) > c.maxBody {
		return nil, resp.StatusCode, invalidResponse(cl.op, resp.StatusCode, "response larger than %d bytes", c.maxBody)
	}
	if resp.StatusCode < 200 || resp.StatusCode > 299 {
		return nil, resp.StatusCode, statusError(cl.op, resp, outcomeText(raw), c.now())
	}
	if len(bytes.TrimSpace(raw)) == 0 {
		if cl.allowEmpty {
			return nil, resp.StatusCode, nil
		}
		return nil, resp.StatusCode, invalidResponse(cl.op, resp.StatusCode, "empty body")
	}
	if !isJSONType(resp.Header.Get("Content-Type")) {
		return nil, resp.StatusCode, invalidResponse(cl.op, resp.StatusCode, "content type %q is not FHIR JSON",
			truncate(resp.Header.Get("Content-Type"), 80))
	}
	r, err := decodeResource(raw)
	if err != nil {
		return nil, resp.StatusCode, invalidResponse(cl.op, resp.StatusCode, "decoding the body: %v", err)
	}
	if cl.allowEmpty && r.Type() == "OperationOutcome" {
		return nil, resp.StatusCode, nil
	}
	if r.Type() != cl.want && cl.want != "" {
		e := invalidResponse(cl.op, resp.StatusCode, "expected a %s, got %q", cl.want, truncate(r.Type(), 64))
		if r.Type() == "OperationOutcome" {
			e.Outcome = outcomeText(raw)
		}
		return nil, resp.StatusCode, e
	}
	return r, resp.StatusCode, nil
}

// decodeResource parses one JSON object, keeping numbers exact, and
// rejects trailing data. It uses the map engine's decoder (fsmaps.DecodeJSON:
// the values encoding/json gives with UseNumber, in a fraction of its time
// and memory, common element names shared), since every message reads at
// least one resource.
func decodeResource(b []byte) (Resource, error) {
	if bytes.Equal(bytes.TrimSpace(b), []byte("null")) {
		return nil, errors.New("body is null")
	}
	m, err := fsmaps.DecodeJSON(b)
	if err != nil {
		return nil, err
	}
	if !isTypeName(Resource(m).Type()) {
		return nil, errors.New("no resourceType")
	}
	return Resource(m), nil
}

// encode marshals a resource without escaping <, > and &, which FHIR
// narrative uses.
func encode(r Resource) ([]byte, error) {
	if !isTypeName(r.Type()) {
		return nil, errors.New("resource has no resourceType")
	}
	// The map engine's encoder writes what encoding/json.Marshal writes
	// (HTML characters escaped, as a batch Bundle's entries always were),
	// without reflection.
	return fsmaps.EncodeJSON(map[string]any(r))
}

func isJSONType(ct string) bool {
	mt, _, err := mime.ParseMediaType(ct)
	if err != nil {
		return false
	}
	switch mt {
	case "application/fhir+json", "application/json", "application/json+fhir":
		return true
	}
	return false
}

// outcomeText extracts the issue texts of an OperationOutcome body, or ""
// when the body is not one.
func outcomeText(b []byte) string {
	var oo struct {
		ResourceType string `json:"resourceType"`
		Issue        []struct {
			Severity    string `json:"severity"`
			Code        string `json:"code"`
			Diagnostics string `json:"diagnostics"`
			Details     struct {
				Text string `json:"text"`
			} `json:"details"`
		} `json:"issue"`
	}
	if json.Unmarshal(b, &oo) != nil || oo.ResourceType != "OperationOutcome" {
		return ""
	}
	var parts []string
	for _, is := range oo.Issue {
		s := is.Severity + " " + is.Code
		for _, t := range []string{is.Details.Text, is.Diagnostics} {
			if t != "" {
				s += ": " + t
			}
		}
		parts = append(parts, s)
	}
	return truncate(strings.Join(parts, "; "), 2048)
}

func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[:n] + "…"
}

// bodyBuffers hold response bodies while they are decoded.
var bodyBuffers bufpool.Pool
