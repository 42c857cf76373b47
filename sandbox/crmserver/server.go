package crmserver

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"math"
	"net/http"
	"net/url"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/google/uuid"

	"github.com/fhirsync/fhirsync/queues"
)

// APIPath is the service root path of the Web API.
const APIPath = "/api/data/v9.2/"

// DefaultUserID is the systemuserid of requests when no tokens are
// configured and no MSCRMCallerID header is sent.
const DefaultUserID = "00000000-0000-0000-0000-00000000aaaa"

// sender is where the service-endpoint emulation posts
// RemoteExecutionContext messages (a queue). Send enqueues all msgs or
// returns an error.
type sender interface {
	Send(ctx context.Context, msgs ...queues.Message) error
}

// Options configures a Server. The zero value serves the default entities
// with no limits, no tokens and no service endpoint.
type Options struct {
	// Entities replaces DefaultEntities.
	Entities []*Entity
	// Tokens maps bearer tokens to systemuserids. When empty, any request
	// (with or without a token) is DefaultUserID. SandboxTokens gives
	// fhirsync's application user and a care coordinator.
	Tokens map[string]string
	// Limits are the initial service-protection limits (SetLimits changes
	// them at run time).
	Limits Limits
	// DOPHint is the x-ms-dop-hint header every answer carries, the
	// recommended degree of parallelism ("Send parallel requests",
	// learn.microsoft.com/power-apps/developer/data-platform/send-parallel-requests).
	// Zero means DataverseDOPHint; negative leaves the header out.
	DOPHint int
	// Endpoint, when set, receives a RemoteExecutionContext message for
	// every committed create, update and delete.
	Endpoint sender
	// EndpointEntities are the logical names of the entities with a step
	// registered on the service endpoint (Dataverse registers one step per
	// message and entity); changes to other entities are not posted. Empty
	// means every entity.
	EndpointEntities []string
	// EndpointPath is the queue the Service Bus endpoint posts to, as its
	// serviceendpoint row's path reads (registrations.go); empty means
	// crm-changes.
	EndpointPath string
	// EndpointAsync posts from a background worker, as Dataverse posts an
	// asynchronous step's messages from its async service: a write answers
	// without waiting for the post, and the messages that accumulated
	// meanwhile are posted together, in the order the writes ended. Close stops the
	// worker after posting what is pending. Off, each write posts before it
	// answers.
	EndpointAsync bool
	// Webhook, when its URL is set, is a webhook service endpoint that
	// receives the same contexts as Endpoint, posted over HTTP with the
	// documented headers (webhook.go). With both set, each context goes to
	// both.
	Webhook WebhookTarget
	// EndpointImages registers a PreImage and a PostImage on the emulated
	// step (Dataverse: images configured on the step registration).
	EndpointImages bool
	// BypassStepLimit is the organization's
	// BypassBusinessLogicExecutionStepIdsLimit: how many step ids one
	// request may name; zero means 3, the documented default.
	BypassStepLimit int
	// MaxContextBytes is the size above which the emulation cuts a message
	// down as Dataverse does (ParentContext, InputParameters and both
	// images removed, MessageMaxSizeExceeded set); zero means 192 KiB.
	MaxContextBytes int
	// DeltaTokenTTL is how long a change-tracking token stays valid; zero
	// means 7 days (the Dataverse default).
	DeltaTokenTTL time.Duration
	// MaxPageSize is the page size when the client asks for none; zero
	// means 5000.
	MaxPageSize int
	// OnWrite, when set, is called with every committed create, update
	// and delete, whatever the request that made it (a request on its own,
	// a $batch, a bulk message), after the store is unlocked and before the
	// service-endpoint post. It must not block for long.
	OnWrite func(Write)
	// Now is the clock; nil means time.Now.
	Now func() time.Time
	// Logger receives operational messages; nil discards them.
	Logger *slog.Logger
}

// Write is a committed write, as Options.OnWrite receives it.
type Write struct {
	// Message is Create, Update or Delete.
	Message string
	// Entity is the table's logical name, ID the row's primary key.
	Entity string
	ID     string
	// UserID is the user the write was made as (impersonated, if
	// MSCRMCallerID was sent); InitiatingUserID the authenticated user.
	UserID           string
	InitiatingUserID string
	// Attributes are the row's attributes after the write (nil after a
	// delete). They are the server's copy: read them, never change them.
	Attributes map[string]any
}

// Stats counts what the server did, for tests and the demo.
type Stats struct {
	Requests       int64 // HTTP requests received (a $batch counts once)
	Throttled      int64 // answered 429
	Injected       int64 // answered by failure injection
	EndpointSent   int64 // RemoteExecutionContext messages posted
	EndpointFailed int64 // posts the endpoint refused
	ImagesDropped  int64 // messages posted cut down for size (images, InputParameters and ParentContext removed)
	// EndpointBypassed counts changes not posted because the request that
	// made them named their steps in BypassBusinessLogicExecutionStepIds.
	EndpointBypassed int64
}

// Server is an in-memory Dataverse Web API. It is an http.Handler serving
// APIPath.
type Server struct {
	opts  Options
	st    *store
	now   func() time.Time
	log   *slog.Logger
	orgID string

	lim *limiter // service protection (limits.go)

	mu       sync.Mutex
	failTil  time.Time
	failCode int
	failN    int
	stats    Stats
	dopHint  string // x-ms-dop-hint value; "" leaves it out

	post *poster // nil unless EndpointAsync

	// Service endpoint registrations and revoked privileges
	// (registrations.go, privileges.go), guarded by mu.
	endpoints []*serviceEndpoint
	steps     []Step
	revoked   map[string][]string // systemuserid → lower-case privilege names
	depths    map[string]string   // "systemuserid/privilege name" (lower case) → depth other than Global
}

// New builds a server.
func New(opts Options) (*Server, error) {
	ents := opts.Entities
	if ents == nil {
		ents = DefaultEntities()
	}
	// The registrations follow the options as given, before the webhook
	// joins Endpoint.
	reg := &Server{opts: opts}
	reg.registerEndpoints(ents)
	opts, err := withWebhook(opts)
	if err != nil {
		return nil, err
	}
	st, err := newStore(ents)
	if err != nil {
		return nil, fmt.Errorf("crmserver: %w", err)
	}
	if opts.MaxContextBytes == 0 {
		opts.MaxContextBytes = 192 << 10
	}
	if opts.DeltaTokenTTL == 0 {
		opts.DeltaTokenTTL = 7 * 24 * time.Hour
	}
	if opts.MaxPageSize == 0 {
		opts.MaxPageSize = 5000
	}
	s := &Server{opts: opts, st: st, now: opts.Now, log: opts.Logger, orgID: uuid.NewString(),
		endpoints: reg.endpoints, steps: reg.steps}
	s.SetDOPHint(opts.DOPHint)
	if s.now == nil {
		s.now = time.Now
	}
	s.lim = newLimiter(opts.Limits, s.now)
	if s.log == nil {
		s.log = slog.New(slog.DiscardHandler)
	}
	if opts.Endpoint != nil && opts.EndpointAsync {
		s.post = newPoster(s)
	}
	return s, nil
}

// Close stops the asynchronous service-endpoint worker once it has posted
// what is pending. It is safe to call more than once, and a no-op without
// EndpointAsync.
func (s *Server) Close() error {
	if s.post != nil {
		s.post.close()
	}
	return nil
}

// FailFor answers every request with status (e.g. 503) and a Dataverse
// error body for d, with Retry-After set to the time left.
func (s *Server) FailFor(status int, d time.Duration) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.failCode, s.failTil, s.failN = status, s.now().Add(d), 0
}

// FailNext answers the next n requests with status.
func (s *Server) FailNext(n, status int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.failCode, s.failN, s.failTil = status, n, time.Time{}
}

// ExpireDeltaTokens makes every change-tracking token issued so far
// expired, as if the retention period had passed.
func (s *Server) ExpireDeltaTokens() {
	s.st.mu.Lock()
	defer s.st.mu.Unlock()
	// Tick the version so tokens issued from now on are newer than the cut.
	s.st.version++
	s.st.expiredBelow = s.st.version
}

// SetDOPHint changes the x-ms-dop-hint of the answers from now on, as
// Options.DOPHint sets it: zero means DataverseDOPHint, negative none.
func (s *Server) SetDOPHint(n int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	switch {
	case n == 0:
		s.dopHint = strconv.Itoa(DataverseDOPHint)
	case n > 0:
		s.dopHint = strconv.Itoa(n)
	default:
		s.dopHint = ""
	}
}

// Stats returns a snapshot of the counters.
func (s *Server) Stats() Stats {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.stats
}

// Count returns how many rows an entity holds.
func (s *Server) Count(logicalName string) int {
	s.st.mu.Lock()
	defer s.st.mu.Unlock()
	if tb := s.st.tables[logicalName]; tb != nil {
		return len(tb.rows)
	}
	return 0
}

// apiError is a Dataverse error answer.
type apiError struct {
	status     int
	code       string
	message    string
	retryAfter time.Duration
}

func (e *apiError) Error() string { return e.code + ": " + e.message }

func errBadRequest(code, msg string) *apiError {
	return &apiError{status: http.StatusBadRequest, code: code, message: msg}
}

func errNotFound(entity, id string) *apiError {
	return &apiError{status: http.StatusNotFound, code: "0x80040217", message: fmt.Sprintf("%s With Id = %s Does Not Exist", entity, id)}
}

func errKeyNotFound(entity string) *apiError {
	return &apiError{status: http.StatusNotFound, code: "0x80040217", message: fmt.Sprintf("A record with the specified key values does not exist in %s entity", entity)}
}

func errDuplicateKey() *apiError {
	return &apiError{status: http.StatusPreconditionFailed, code: "0x80040237", message: "A record with matching key values already exists."}
}

// errDuplicateEntityKey is Dataverse's refusal of a create or update that
// would give a second row the values of an alternate key: 412 Precondition
// Failed (the status "Compose HTTP requests and handle errors" lists for
// duplicate records,
// learn.microsoft.com/power-apps/developer/data-platform/webapi/compose-http-requests-handle-errors)
// with DuplicateRecordEntityKey, 0x80060892, not the DuplicateRecord code
// 0x80040237 that errDuplicateKey answers for a taken primary key or
// If-None-Match: * on an existing row (Web service error codes,
// learn.microsoft.com/power-apps/developer/data-platform/reference/web-service-error-codes).
func errDuplicateEntityKey(k Key) *apiError {
	return &apiError{status: http.StatusPreconditionFailed, code: "0x80060892",
		message: fmt.Sprintf("A record that has the attribute values %s already exists. The entity key %s requires that this set of attributes contains unique values. Select unique values and try again.",
			strings.Join(k.Attributes, ", "), k.LogicalName)}
}

func errVersionMismatch() *apiError {
	return &apiError{status: http.StatusPreconditionFailed, code: "0x80060882", message: "The version of the existing record doesn't match the RowVersion property provided."}
}

// response is one answer, written to the wire or into a $batch part.
type response struct {
	status int
	header http.Header
	body   []byte

	// What the operation did, for its execution-time cost (limits.go):
	// rows a read returned; for a bulk message its kind and records.
	rows    int
	bulk    opKind
	records int
}

func newHeader() http.Header {
	h := http.Header{}
	h.Set("OData-Version", "4.0")
	return h
}

func (e *apiError) response() response {
	h := newHeader()
	h.Set("Content-Type", "application/json; odata.metadata=minimal")
	if e.retryAfter > 0 {
		h.Set("Retry-After", strconv.Itoa(int(math.Ceil(e.retryAfter.Seconds()))))
	}
	b, _ := json.Marshal(map[string]any{"error": map[string]any{"code": e.code, "message": e.message}})
	return response{status: e.status, header: h, body: b}
}

func jsonResponse(status int, v any) response {
	h := newHeader()
	h.Set("Content-Type", "application/json; odata.metadata=minimal")
	b, err := json.Marshal(v)
	if err != nil {
		return (&apiError{status: 500, code: "0x80040216", message: "encoding the response failed"}).response()
	}
	return response{status: status, header: h, body: b}
}

func writeResponse(w http.ResponseWriter, r response) {
	for k, v := range r.header {
		w.Header()[k] = v
	}
	w.WriteHeader(r.status)
	_, _ = w.Write(r.body)
}

// call is what every operation of one HTTP request shares.
type call struct {
	ctx         context.Context
	base        string // absolute service root, ending in "/"
	user        string // the effective user (impersonated, if MSCRMCallerID was sent)
	initiating  string // the authenticated user
	correlation string
	contentIDs  map[string]string // "$1" → "contacts(<id>)" inside a change set
}

// request is one operation: a top-level request or a $batch part.
type request struct {
	method string
	path   string // relative to the service root, decoded
	query  url.Values
	header http.Header
	body   []byte
}

// ServeHTTP answers Web API requests under APIPath.
func (s *Server) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	s.mu.Lock()
	s.stats.Requests++
	dop := s.dopHint
	s.mu.Unlock()
	if dop != "" {
		w.Header().Set(headerDOPHint, dop)
	}
	if !strings.HasPrefix(r.URL.Path, APIPath) {
		writeResponse(w, (&apiError{status: 404, code: "0x80060888", message: "Resource not found for the segment '" + r.URL.Path + "'."}).response())
		return
	}
	user, initiating, ok := s.identify(r)
	if !ok {
		w.Header().Set("WWW-Authenticate", `Bearer authorization_uri=https://login.microsoftonline.com/common/oauth2/authorize`)
		w.WriteHeader(http.StatusUnauthorized)
		return
	}
	if e := s.injected(); e != nil {
		writeResponse(w, e.response())
		return
	}
	body, err := io.ReadAll(io.LimitReader(r.Body, 128<<20))
	if err != nil {
		writeResponse(w, errBadRequest("0x80048d19", "reading the request body failed").response())
		return
	}
	scheme := "http"
	if r.TLS != nil {
		scheme = "https"
	}
	c := &call{ctx: r.Context(), base: scheme + "://" + r.Host + APIPath, user: user, initiating: initiating,
		correlation: uuid.NewString()}
	req := &request{method: r.Method, path: strings.TrimPrefix(r.URL.Path, APIPath), query: r.URL.Query(), header: r.Header, body: body}
	if req.path == "$batch" && r.Method == http.MethodPost {
		resp := s.serveBatch(c, req)
		s.limitHeaders(w.Header(), initiating)
		writeResponse(w, resp)
		return
	}
	// Service protection counts the authenticated user's requests.
	tk, e := s.admit(initiating)
	if e != nil {
		s.limitHeaders(w.Header(), initiating)
		writeResponse(w, e.response())
		return
	}
	resp := s.runOne(c, req)
	tk.end(costOf(s.Limits(), req, resp))
	resp = withErrorAnnotations(nil, req.header, resp)
	s.limitHeaders(w.Header(), initiating)
	writeResponse(w, resp)
}

// identify returns the effective and the authenticated user.
func (s *Server) identify(r *http.Request) (user, initiating string, ok bool) {
	initiating = DefaultUserID
	if len(s.opts.Tokens) > 0 {
		tok, found := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer ")
		if !found {
			return "", "", false
		}
		id, known := s.opts.Tokens[strings.TrimSpace(tok)]
		if !known {
			return "", "", false
		}
		initiating = id
	}
	user = initiating
	if c := r.Header.Get("MSCRMCallerID"); c != "" {
		if u, err := uuid.Parse(c); err == nil {
			user = u.String()
		}
	}
	return user, initiating, true
}

func (s *Server) injected() *apiError {
	s.mu.Lock()
	defer s.mu.Unlock()
	now := s.now()
	active := false
	var retry time.Duration
	switch {
	case s.failN > 0:
		s.failN--
		active, retry = true, time.Second
	case now.Before(s.failTil):
		active, retry = true, s.failTil.Sub(now)
	}
	if !active {
		return nil
	}
	s.stats.Injected++
	// Statuses that Dataverse answers with a specific error get its code
	// and message, so a client test sees what the real service sends.
	switch s.failCode {
	case http.StatusPreconditionFailed:
		return errVersionMismatch()
	case http.StatusTooManyRequests:
		return &apiError{status: s.failCode, code: codeTooManyRequests,
			message: "Number of requests exceeded the limit of 6000 over time window of 300 seconds.", retryAfter: retry}
	}
	return &apiError{status: s.failCode, code: "0x80040216", message: "The service is temporarily unavailable (injected failure).", retryAfter: retry}
}

// runOne executes a single request in its own transaction.
func (s *Server) runOne(c *call, req *request) response {
	s.st.mu.Lock()
	t := &tx{s: s.st}
	resp := s.exec(c, req, t)
	if resp.status >= 400 {
		t.rollback()
	}
	events := t.events
	s.st.mu.Unlock()
	s.publish(c.ctx, events)
	return resp
}

// exec runs one operation: it checks the optional parameter
// BypassBusinessLogicExecutionStepIds (bypass.go), routes the operation
// and marks the events it committed with the steps they bypass. The store
// lock is held.
func (s *Server) exec(c *call, req *request, t *tx) response {
	var skip []string
	if v := req.header.Get(headerBypassStepIDs); v != "" {
		ids, e := s.bypassSteps(c, v)
		if e != nil {
			return e.response()
		}
		skip = ids
	}
	start := len(t.events)
	resp := s.route(c, req, t)
	for i := start; i < len(t.events); i++ {
		t.events[i].bypass = skip
	}
	return resp
}

// route routes one operation. The store lock is held.
func (s *Server) route(c *call, req *request, t *tx) response {
	p := req.path
	if strings.HasPrefix(p, "$") && c.contentIDs != nil {
		ref, rest, _ := strings.Cut(p, "/")
		if target, ok := c.contentIDs[ref]; ok {
			p = target
			if rest != "" {
				p += "/" + rest
			}
		}
	}
	switch {
	case p == "WhoAmI" || p == "WhoAmI()":
		if req.method != http.MethodGet {
			return errMethod()
		}
		return jsonResponse(200, map[string]any{"@odata.context": c.base + "$metadata#Microsoft.Dynamics.CRM.WhoAmIResponse",
			"BusinessUnitId": "00000000-0000-0000-0000-0000000000b1", "UserId": c.user, "OrganizationId": s.orgID})
	case strings.HasPrefix(p, "EntityDefinitions"):
		return s.metadata(c, req, p)
	case strings.HasPrefix(p, "serviceendpoints") || strings.HasPrefix(p, "sdkmessageprocessingsteps"):
		return s.registrations(c, req, p)
	case strings.HasPrefix(p, "systemusers(") && strings.HasSuffix(p, ")/Microsoft.Dynamics.CRM.RetrieveUserPrivileges()"):
		return s.userPrivileges(c, req, strings.TrimSuffix(strings.TrimPrefix(p, "systemusers("), ")/Microsoft.Dynamics.CRM.RetrieveUserPrivileges()"))
	}
	if set, ok := strings.CutSuffix(p, "/$count"); ok {
		if tb := s.st.bySet[set]; tb != nil {
			if e := s.denied(c.user, tb.def, "Read"); e != nil {
				return e.response()
			}
			return s.countRows(tb, req)
		}
	}
	if set, message, ok := strings.Cut(p, "/"+bulkAction); ok && !strings.Contains(set, "(") {
		if tb := s.st.bySet[set]; tb != nil {
			if e := s.denied(c.user, tb.def, bulkRights[message]...); e != nil {
				return e.response()
			}
			return s.bulk(c, t, tb, req, message)
		}
	}
	set, keySeg := p, ""
	if i := strings.IndexByte(p, '('); i >= 0 {
		if !strings.HasSuffix(p, ")") {
			return errSegment(p)
		}
		set, keySeg = p[:i], p[i+1:len(p)-1]
	}
	tb := s.st.bySet[set]
	if tb == nil {
		return errSegment(set)
	}
	if keySeg == "" {
		switch req.method {
		case http.MethodGet:
			if e := s.denied(c.user, tb.def, "Read"); e != nil {
				return e.response()
			}
			return s.list(c, tb, req)
		case http.MethodPost:
			if e := s.denied(c.user, tb.def, "Create"); e != nil {
				return e.response()
			}
			return s.create(c, t, tb, req)
		}
		return errMethod()
	}
	id, key, err := parseKeySegment(keySeg)
	if err != nil {
		return errBadRequest("0x80060888", fmt.Sprintf("Bad Request - Error in query syntax: %v", err)).response()
	}
	var existing *row
	if key != nil {
		r, e := tb.findByKey(key)
		if e != nil {
			return e.response()
		}
		existing = r
	} else {
		existing = tb.rows[id]
	}
	right := map[string]string{http.MethodGet: "Read", http.MethodPatch: "Write", http.MethodDelete: "Delete"}[req.method]
	if req.method == http.MethodPatch && existing == nil {
		right = "Create" // an upsert that creates
	}
	if e := s.denied(c.user, tb.def, right); right != "" && e != nil {
		return e.response()
	}
	switch req.method {
	case http.MethodGet:
		if existing == nil {
			return notFound(tb, id, key).response()
		}
		sel, e := parseSelect(tb.def, req.query.Get("$select"))
		if e != nil {
			return e.response()
		}
		// Conditional retrieval: never with $expand or annotations, whose
		// values can come from other rows.
		if m := req.header.Get("If-None-Match"); (m == "*" || m == etag(existing)) && !req.query.Has("$expand") && !wantAnnotations(prefer(req.header)).any() {
			h := newHeader()
			h.Set("ETag", etag(existing))
			return response{status: http.StatusNotModified, header: h}
		}
		out := s.rowJSON(tb, existing, sel)
		out["@odata.context"] = c.base + "$metadata#" + tb.def.EntitySetName + "/$entity"
		ann := wantAnnotations(prefer(req.header))
		s.annotate(tb, existing, out, ann)
		resp := jsonResponse(200, out)
		resp.rows = 1
		resp.header.Set("ETag", etag(existing))
		if ann.any() {
			resp.header.Add("Preference-Applied", ann.applied())
		}
		return resp
	case http.MethodPatch:
		return s.upsert(c, t, tb, req, existing, id, key)
	case http.MethodDelete:
		if existing == nil {
			return notFound(tb, id, key).response()
		}
		if m := req.header.Get("If-Match"); m != "" && m != "*" && m != etag(existing) {
			return errVersionMismatch().response()
		}
		s.deleteRow(c, t, tb, existing)
		return response{status: 204, header: newHeader()}
	}
	return errMethod()
}

func notFound(tb *table, id string, key map[string]any) *apiError {
	if key != nil {
		return errKeyNotFound(tb.def.LogicalName)
	}
	return errNotFound(tb.def.LogicalName, id)
}

func errMethod() response {
	return (&apiError{status: 405, code: "0x8006088a", message: "The requested method is not allowed on this resource."}).response()
}

func errSegment(seg string) response {
	return (&apiError{status: 404, code: "0x80060888", message: "Resource not found for the segment '" + seg + "'."}).response()
}

func etag(r *row) string { return `W/"` + strconv.FormatInt(r.version, 10) + `"` }

// prefer parses the Prefer headers into preference → value.
func prefer(h http.Header) map[string]string {
	out := map[string]string{}
	for _, line := range h.Values("Prefer") {
		for _, p := range splitPreferences(line) {
			k, v, _ := strings.Cut(strings.TrimSpace(p), "=")
			if k != "" {
				out[strings.ToLower(k)] = strings.Trim(v, `"`)
			}
		}
	}
	return out
}

// parseSelect returns the selected attribute names, nil meaning all.
func parseSelect(e *Entity, s string) (map[string]bool, *apiError) {
	if s == "" {
		return nil, nil
	}
	out := map[string]bool{}
	for _, n := range strings.Split(s, ",") {
		n = strings.TrimSpace(n)
		name := n
		if strings.HasPrefix(n, "_") && strings.HasSuffix(n, "_value") {
			name = strings.TrimSuffix(strings.TrimPrefix(n, "_"), "_value")
		}
		if e.Attribute(name) == nil {
			return nil, errBadRequest("0x80060888", fmt.Sprintf("Could not find a property named '%s' on type 'Microsoft.Dynamics.CRM.%s'.", n, e.LogicalName))
		}
		out[name] = true
	}
	return out, nil
}

// attrValue reads an attribute of r, including the platform columns.
func attrValue(e *Entity, r *row, name string) any {
	switch name {
	case e.PrimaryID:
		return r.id
	case "createdon":
		return r.createdOn.UTC().Format("2006-01-02T15:04:05Z")
	case "modifiedon":
		return r.modifiedOn.UTC().Format("2006-01-02T15:04:05Z")
	case "createdby":
		return lookupValue{ID: r.createdBy, Target: "systemuser"}
	case "modifiedby":
		return lookupValue{ID: r.modifiedBy, Target: "systemuser"}
	case "versionnumber":
		return json.Number(strconv.FormatInt(r.version, 10))
	}
	return r.attrs.get(name)
}

// filterValue reads a $filter operand ("_x_value" names a lookup's id).
func filterValue(e *Entity, r *row, name string) any {
	if strings.HasPrefix(name, "_") && strings.HasSuffix(name, "_value") {
		name = strings.TrimSuffix(strings.TrimPrefix(name, "_"), "_value")
	}
	v := attrValue(e, r, name)
	if lv, ok := v.(lookupValue); ok {
		return lv.ID
	}
	return v
}

func knownFilterName(e *Entity) func(string) bool {
	return func(n string) bool {
		if strings.HasPrefix(n, "_") && strings.HasSuffix(n, "_value") {
			a := e.Attribute(strings.TrimSuffix(strings.TrimPrefix(n, "_"), "_value"))
			return a != nil && a.isLookup()
		}
		a := e.Attribute(n)
		return a != nil && !a.isLookup()
	}
}

func (s *Server) rowJSON(tb *table, r *row, sel map[string]bool) map[string]any {
	out := map[string]any{"@odata.etag": etag(r)}
	for _, a := range tb.def.Attributes {
		if sel != nil && !sel[a.LogicalName] && a.LogicalName != tb.def.PrimaryID {
			continue
		}
		v := attrValue(tb.def, r, a.LogicalName)
		if a.isLookup() {
			if lv, ok := v.(lookupValue); ok && lv.ID != "" {
				out["_"+a.LogicalName+"_value"] = lv.ID
			} else {
				out["_"+a.LogicalName+"_value"] = nil
			}
			continue
		}
		out[a.LogicalName] = v
	}
	return out
}

// decodeBody parses a JSON object body keeping numbers exact.
func decodeBody(b []byte) (map[string]any, *apiError) {
	if len(bytes.TrimSpace(b)) == 0 {
		return map[string]any{}, nil
	}
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.UseNumber()
	var m map[string]any
	if err := dec.Decode(&m); err != nil || m == nil {
		return nil, errBadRequest("0x80048d19", "Error identified in Payload provided by the user: the body is not a JSON object.")
	}
	return m, nil
}

// applyBody validates a write body and returns the attribute changes.
func (s *Server) applyBody(c *call, tb *table, body map[string]any, creating bool) (map[string]any, *apiError) {
	changes := map[string]any{}
	for k, v := range body {
		if nav, ok := strings.CutSuffix(k, "@odata.bind"); ok {
			rel := s.navigationFor(tb.def, nav, v)
			if rel == nil {
				return nil, errBadRequest("0x80060888", fmt.Sprintf("An undeclared property '%s' which only has property annotations in the payload but no property value was found in the payload.", nav))
			}
			if v == nil {
				changes[rel.Attribute] = nil
				continue
			}
			ref, isString := v.(string)
			if !isString {
				return nil, errBadRequest("0x80048d19", fmt.Sprintf("The value of %s must be a string.", k))
			}
			lv, e := s.resolveBind(c, rel, ref)
			if e != nil {
				return nil, e
			}
			changes[rel.Attribute] = lv
			continue
		}
		if strings.HasPrefix(k, "@") || strings.Contains(k, "@odata.") {
			continue // instance annotations such as @odata.type or @odata.etag
		}
		a := tb.def.Attribute(k)
		if a == nil {
			return nil, errBadRequest("0x80060888", fmt.Sprintf("Could not find a property named '%s' on type 'Microsoft.Dynamics.CRM.%s'.", k, tb.def.LogicalName))
		}
		if a.ReadOnly || (a.LogicalName == tb.def.PrimaryID && !creating) {
			continue // Dataverse ignores values for columns not valid for the operation
		}
		nv, e := normalize(a, v)
		if e != nil {
			return nil, e
		}
		changes[k] = nv
	}
	return changes, nil
}

// resolveBind turns "/accounts(<id>)", "accounts(key='v')", a full URL or a
// "$1" content-id reference into a lookup value.
func (s *Server) resolveBind(c *call, rel *Relationship, ref string) (lookupValue, *apiError) {
	if i := strings.Index(ref, APIPath); i >= 0 {
		ref = ref[i+len(APIPath):]
	}
	ref = strings.TrimPrefix(ref, "/")
	if u, err := url.PathUnescape(ref); err == nil {
		ref = u
	}
	if strings.HasPrefix(ref, "$") && c.contentIDs != nil {
		if p, ok := c.contentIDs[ref]; ok {
			ref = p
		}
	}
	i := strings.IndexByte(ref, '(')
	if i < 0 || !strings.HasSuffix(ref, ")") {
		return lookupValue{}, errBadRequest("0x80048d19", "The @odata.bind value is not an entity reference.")
	}
	target := s.st.bySet[ref[:i]]
	if target == nil || target.def.LogicalName != rel.Target {
		return lookupValue{}, errBadRequest("0x80048d19", fmt.Sprintf("The @odata.bind value for %s must reference %s.", rel.NavigationProperty, rel.Target))
	}
	id, key, err := parseKeySegment(ref[i+1 : len(ref)-1])
	if err != nil {
		return lookupValue{}, errBadRequest("0x80048d19", "The @odata.bind key is malformed.")
	}
	var r *row
	if key != nil {
		var e *apiError
		if r, e = target.findByKey(key); e != nil {
			return lookupValue{}, e
		}
		if r == nil {
			return lookupValue{}, errKeyNotFound(target.def.LogicalName)
		}
	} else if r = target.rows[id]; r == nil {
		return lookupValue{}, errNotFound(target.def.LogicalName, id)
	}
	return lookupValue{ID: r.id, Target: target.def.LogicalName}, nil
}

func (s *Server) create(c *call, t *tx, tb *table, req *request) response {
	body, e := decodeBody(req.body)
	if e != nil {
		return e.response()
	}
	changes, e := s.applyBody(c, tb, body, true)
	if e != nil {
		return e.response()
	}
	if e := s.activityWrite(c, tb, nil, changes); e != nil {
		return e.response()
	}
	id, _ := changes[tb.def.PrimaryID].(string)
	delete(changes, tb.def.PrimaryID)
	if id == "" {
		id = uuid.NewString()
	} else if tb.rows[id] != nil {
		return errDuplicateKey().response()
	}
	r, e := s.insert(c, t, tb, id, changes)
	if e != nil {
		return e.response()
	}
	return s.writeAnswer(c, tb, req, r, http.StatusCreated)
}

func (s *Server) insert(c *call, t *tx, tb *table, id string, changes map[string]any) (*row, *apiError) {
	for _, a := range tb.def.Attributes {
		if a.Required && changes[a.LogicalName] == nil {
			return nil, errBadRequest("0x80040200", fmt.Sprintf("The attribute %s is required.", a.LogicalName))
		}
	}
	if err := tb.checkKeys(id, mapGet(changes)); err != nil {
		return nil, err
	}
	now := s.now().UTC().Truncate(time.Second)
	// Room for fullname, statecode and statuscode.
	r := &row{id: id, attrs: attrsOf(tb.def, changes, 3), version: t.nextVersion(), createdOn: now, modifiedOn: now, createdBy: c.user, modifiedBy: c.user}
	computeFullName(tb, r)
	if _, ok := r.attrs.lookup("statecode"); !ok && tb.def.Attribute("statecode") != nil {
		r.attrs.set("statecode", json.Number("0"))
		r.attrs.set("statuscode", json.Number("1"))
	}
	t.put(tb, nil, r)
	// The Target is what was created, the platform's defaults included.
	t.events = append(t.events, event{message: "Create", entity: tb.def, id: id, target: r.attrs.toMap(), post: r.clone(), c: c})
	return r, nil
}

func computeFullName(tb *table, r *row) {
	if tb.def.LogicalName != "contact" {
		return
	}
	var parts []string
	for _, n := range []string{"firstname", "middlename", "lastname"} {
		if v, ok := r.attrs.get(n).(string); ok && v != "" {
			parts = append(parts, v)
		}
	}
	if len(parts) == 0 {
		r.attrs.set("fullname", nil)
		return
	}
	r.attrs.set("fullname", strings.Join(parts, " "))
}

func (s *Server) upsert(c *call, t *tx, tb *table, req *request, existing *row, id string, key map[string]any) response {
	ifMatch, ifNone := req.header.Get("If-Match"), req.header.Get("If-None-Match")
	switch {
	case ifNone == "*" && existing != nil:
		return errDuplicateKey().response()
	case ifMatch != "" && existing == nil:
		return notFound(tb, id, key).response()
	case ifMatch != "" && ifMatch != "*" && ifMatch != etag(existing):
		return errVersionMismatch().response()
	}
	body, e := decodeBody(req.body)
	if e != nil {
		return e.response()
	}
	changes, e := s.applyBody(c, tb, body, existing == nil)
	if e != nil {
		return e.response()
	}
	if e := s.activityWrite(c, tb, existing, changes); e != nil {
		return e.response()
	}
	delete(changes, tb.def.PrimaryID)
	// Upsert by alternate key: an existing row keeps its key values (the
	// body's are dropped); a new row takes the body's key values, even
	// when they differ from the URL's, and the URL's otherwise.
	if existing != nil {
		for n := range key {
			delete(changes, n)
		}
	}
	if existing == nil {
		if key != nil {
			for n, v := range key {
				if _, inBody := changes[n]; inBody {
					continue
				}
				nv, e := normalize(tb.def.Attribute(n), v)
				if e != nil {
					return e.response()
				}
				changes[n] = nv
			}
			id = uuid.NewString()
		}
		r, e := s.insert(c, t, tb, id, changes)
		if e != nil {
			return e.response()
		}
		return s.writeAnswer(c, tb, req, r, http.StatusCreated)
	}
	next := existing.clone()
	changed := map[string]any{}
	for k, v := range changes {
		changed[k] = v
		next.attrs.set(k, v)
	}
	if err := tb.checkKeys(existing.id, next.attrs.get); err != nil {
		return err.response()
	}
	next.version = t.nextVersion()
	next.modifiedOn = s.now().UTC().Truncate(time.Second)
	next.modifiedBy = c.user
	computeFullName(tb, next)
	t.put(tb, existing, next)
	t.events = append(t.events, event{message: "Update", entity: tb.def, id: existing.id, target: changed, pre: existing.clone(), post: next.clone(), c: c})
	return s.writeAnswer(c, tb, req, next, http.StatusOK)
}

// writeAnswer answers a create or update: 204 with OData-EntityId, or the
// representation (201 created / 200 updated) when asked for.
func (s *Server) writeAnswer(c *call, tb *table, req *request, r *row, repStatus int) response {
	loc := c.base + tb.def.EntitySetName + "(" + r.id + ")"
	if _, ok := prefer(req.header)["return"]; ok && prefer(req.header)["return"] == "representation" {
		sel, e := parseSelect(tb.def, req.query.Get("$select"))
		if e != nil {
			return e.response()
		}
		out := s.rowJSON(tb, r, sel)
		out["@odata.context"] = c.base + "$metadata#" + tb.def.EntitySetName + "/$entity"
		resp := jsonResponse(repStatus, out)
		resp.header.Set("Preference-Applied", "return=representation")
		resp.header.Set("OData-EntityId", loc)
		resp.header.Set("ETag", etag(r))
		return resp
	}
	h := newHeader()
	h.Set("OData-EntityId", loc)
	h.Set("Location", loc)
	h.Set("ETag", etag(r))
	return response{status: http.StatusNoContent, header: h}
}

func (s *Server) deleteRow(c *call, t *tx, tb *table, r *row) {
	v := t.nextVersion()
	t.remove(tb, r, v)
	t.events = append(t.events, event{message: "Delete", entity: tb.def, id: r.id, pre: r.clone(), c: c})
}

// lookupFilter is the child-row query shape `_attr_value eq <guid>`,
// answered from the lookup index.
var lookupFilter = regexp.MustCompile(`^\s*_([a-z0-9_]+)_value eq ([0-9A-Fa-f]{8}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{12})\s*$`)

func (s *Server) list(c *call, tb *table, req *request) response {
	q := req.query
	prefs := prefer(req.header)
	sel, e := parseSelect(tb.def, q.Get("$select"))
	if e != nil {
		return e.response()
	}
	pageSize := s.opts.MaxPageSize
	if v, err := strconv.Atoi(prefs["odata.maxpagesize"]); err == nil && v > 0 && v < pageSize {
		pageSize = v
	}
	_, tracking := prefs["odata.track-changes"]
	if tracking || q.Has("$deltatoken") {
		return s.delta(c, tb, req, sel, pageSize)
	}
	ann := wantAnnotations(prefs)
	var rows []*row
	var filter filterNode
	if f := q.Get("$filter"); f != "" {
		n, err := parseFilter(withAliases(f, q), knownFilterName(tb.def))
		if err != nil {
			return errBadRequest("0x80060888", "Invalid $filter: "+err.Error()).response()
		}
		filter = n
	}
	candidates := tb.rows
	if m := lookupFilter.FindStringSubmatch(q.Get("$filter")); m != nil {
		if a := tb.def.Attribute(m[1]); a != nil && a.isLookup() {
			candidates = map[string]*row{}
			for _, r := range tb.byLookup(m[1], m[2]) {
				candidates[r.id] = r
			}
		}
	}
	if in, ok := filter.(inNode); ok {
		if c, ok := tb.inCandidates(in); ok {
			candidates = c
		}
	}
	for _, r := range candidates {
		if filter == nil || filter.eval(func(n string) any { return filterValue(tb.def, r, n) }) {
			rows = append(rows, r)
		}
	}
	var terms []orderTerm
	if o := q.Get("$orderby"); o != "" {
		t, err := parseOrderBy(o, knownFilterName(tb.def))
		if err != nil {
			return errBadRequest("0x80060888", err.Error()).response()
		}
		terms = t
	}
	sortRows(rows, terms, func(r *row, n string) any { return filterValue(tb.def, r, n) }, tb.def.PrimaryID)
	matched := len(rows)
	if t := q.Get("$top"); t != "" {
		n, err := strconv.Atoi(t)
		if err != nil || n < 0 {
			return errBadRequest("0x80060888", "Invalid $top").response()
		}
		if n < len(rows) {
			rows = rows[:n]
		}
	}
	offset := 0
	if st := q.Get("$skiptoken"); st != "" {
		n, err := strconv.Atoi(st)
		if err != nil || n < 0 {
			return errBadRequest("0x80060888", "Invalid $skiptoken").response()
		}
		offset = min(n, len(rows))
	}
	end := min(offset+pageSize, len(rows))
	out := map[string]any{"@odata.context": c.base + "$metadata#" + tb.def.EntitySetName}
	vals := make([]any, 0, end-offset)
	for _, r := range rows[offset:end] {
		rj := s.rowJSON(tb, r, sel)
		s.annotate(tb, r, rj, ann)
		vals = append(vals, rj)
	}
	out["value"] = vals
	if end < len(rows) {
		nq := cloneValues(q)
		nq.Set("$skiptoken", strconv.Itoa(end))
		out["@odata.nextLink"] = c.base + tb.def.EntitySetName + "?" + encodeQuery(nq)
	}
	addCount(out, q, ann, matched)
	resp := jsonResponse(200, out)
	resp.rows = len(vals)
	if ann.any() {
		resp.header.Add("Preference-Applied", ann.applied())
	}
	if _, ok := prefs["odata.maxpagesize"]; ok {
		resp.header.Add("Preference-Applied", "odata.maxpagesize="+strconv.Itoa(pageSize))
	}
	return resp
}

func cloneValues(q url.Values) url.Values {
	out := url.Values{}
	for k, v := range q {
		out[k] = slices.Clone(v)
	}
	return out
}

const tokenTimeLayout = "01/02/2006 15:04:05"

func (s *Server) deltaToken(version int64) string {
	return strconv.FormatInt(version, 10) + "!" + s.now().UTC().Format(tokenTimeLayout)
}

type change struct {
	version int64
	r       *row
	deleted string
}

// delta answers a change-tracking request: the initial snapshot or the
// changes since a token, oldest first, paged by version.
func (s *Server) delta(c *call, tb *table, req *request, sel map[string]bool, pageSize int) response {
	q := req.query
	if !tb.def.ChangeTracking {
		return errBadRequest("0x80072491", fmt.Sprintf("Change tracking is not enabled for entity %s.", tb.def.LogicalName)).response()
	}
	for _, p := range []string{"$filter", "$orderby", "$top", "$expand"} {
		if q.Has(p) {
			return errBadRequest("0x80060888", p+" is not supported with change tracking.").response()
		}
	}
	var from int64
	if tok := q.Get("$deltatoken"); tok != "" {
		vs, ts, ok := strings.Cut(tok, "!")
		v, err := strconv.ParseInt(vs, 10, 64)
		issued, terr := time.Parse(tokenTimeLayout, ts)
		if !ok || err != nil || terr != nil || v < 0 {
			return errBadRequest("0x80044353", "The change tracking token is not valid.").response()
		}
		if v < s.st.expiredBelow || s.now().Sub(issued) > s.opts.DeltaTokenTTL {
			return errBadRequest("0x80044352", "Version stamp associated with the client has expired. Please perform a full sync.").response()
		}
		from = v
	}
	to := s.st.version
	var after int64
	if st := q.Get("$skiptoken"); st != "" {
		a, b, ok := strings.Cut(st, "-")
		av, err1 := strconv.ParseInt(a, 10, 64)
		bv, err2 := strconv.ParseInt(b, 10, 64)
		if !ok || err1 != nil || err2 != nil {
			return errBadRequest("0x80060888", "Invalid $skiptoken").response()
		}
		after, to = av, bv
	}
	lo := max(from, after)
	var changes []change
	for _, r := range tb.rows {
		if r.version > lo && r.version <= to {
			changes = append(changes, change{version: r.version, r: r})
		}
	}
	if from > 0 {
		for _, tomb := range tb.tombs {
			if tomb.version > lo && tomb.version <= to {
				changes = append(changes, change{version: tomb.version, deleted: tomb.id})
			}
		}
	}
	slices.SortFunc(changes, func(a, b change) int { return int(a.version - b.version) })
	vals := []any{}
	more := len(changes) > pageSize
	if more {
		changes = changes[:pageSize]
	}
	for _, ch := range changes {
		if ch.r != nil {
			vals = append(vals, s.rowJSON(tb, ch.r, sel))
			continue
		}
		vals = append(vals, map[string]any{"@odata.context": c.base + "$metadata#" + tb.def.EntitySetName + "/$deletedEntity",
			"id": ch.deleted, "reason": "deleted"})
	}
	out := map[string]any{"@odata.context": c.base + "$metadata#" + tb.def.EntitySetName + "/$delta", "value": vals}
	base := url.Values{}
	if v := q.Get("$select"); v != "" {
		base.Set("$select", v)
	}
	if more {
		nq := cloneValues(base)
		if q.Has("$deltatoken") {
			nq.Set("$deltatoken", q.Get("$deltatoken"))
		}
		nq.Set("$skiptoken", strconv.FormatInt(changes[len(changes)-1].version, 10)+"-"+strconv.FormatInt(to, 10))
		out["@odata.nextLink"] = c.base + tb.def.EntitySetName + "?" + encodeQuery(nq)
	} else {
		nq := cloneValues(base)
		nq.Set("$deltatoken", s.deltaToken(to))
		out["@odata.deltaLink"] = c.base + tb.def.EntitySetName + "?" + encodeQuery(nq)
	}
	resp := jsonResponse(200, out)
	resp.rows = len(vals)
	resp.header.Set("Preference-Applied", "odata.track-changes")
	return resp
}

func newID() string { return uuid.NewString() }

// encodeQuery encodes query options keeping "$" and "," readable, as
// Dataverse renders its links.
func encodeQuery(q url.Values) string {
	s := q.Encode()
	s = strings.ReplaceAll(s, "%24", "$")
	return strings.ReplaceAll(s, "%2C", ",")
}
