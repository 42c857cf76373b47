package fhirserver

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"time"
)

// Options configures a Server. The zero value is an empty in-memory server.
type Options struct {
	// Path is the SQLite file; "" keeps everything in memory.
	Path string
	// BaseURL is the external base used in fullUrl, Location and paging
	// links; "" derives http://<Host header> from each request, which is
	// right when the handler is served at the root.
	BaseURL string
	// Seed and Patients seed an empty store with synthetic data from
	// sandbox/synth: Patients patients plus the practitioners and
	// organizations they refer to, and Encounters and Observations of each.
	Seed         int64
	Patients     int
	Encounters   int
	Observations int
	// MaxBodyBytes bounds a request body; default 16 MiB.
	MaxBodyBytes int64
	// Logger receives request failures (never resource content); default
	// discards.
	Logger *slog.Logger
	// Now is the clock; default time.Now.
	Now func() time.Time
	// Clients maps bearer tokens to client identities (SandboxClients:
	// fhirsync and a care coordinator). A request with an unknown bearer
	// token is answered 401; one without a token is an anonymous person.
	// Empty accepts any request. The identity never changes what is
	// stored: a resource is kept as the client sent it.
	Clients map[string]string
}

// Server is a FHIR R4 JSON server for tests and demos. It is an
// http.Handler and safe for concurrent use.
type Server struct {
	opts  Options
	store *store
	log   *slog.Logger

	failMu     sync.Mutex
	failNext   int
	failStatus int
	outage     int

	writesMu sync.Mutex
	writes   map[string]int64 // write requests per client identity
}

// New opens (or creates) the store and seeds it when it is empty.
func New(opts Options) (*Server, error) {
	if opts.Now == nil {
		opts.Now = time.Now
	}
	if opts.MaxBodyBytes == 0 {
		opts.MaxBodyBytes = 16 << 20
	}
	if opts.Logger == nil {
		opts.Logger = slog.New(slog.DiscardHandler)
	}
	opts.BaseURL = strings.TrimRight(opts.BaseURL, "/")
	if opts.Patients < 0 || opts.Encounters < 0 || opts.Observations < 0 {
		return nil, errors.New("sandbox FHIR server: seed counts must not be negative")
	}
	st, err := openStore(opts.Path, opts.Now)
	if err != nil {
		return nil, err
	}
	s := &Server{opts: opts, store: st, log: opts.Logger}
	if err := s.seed(context.Background()); err != nil {
		st.close()
		return nil, err
	}
	return s, nil
}

// Close releases the store.
func (s *Server) Close() error { return s.store.close() }

// Serve answers requests on ln until ctx ends, then shuts down gracefully.
func (s *Server) Serve(ctx context.Context, ln net.Listener) error {
	hs := &http.Server{Handler: s, ReadHeaderTimeout: 10 * time.Second}
	errc := make(chan error, 1)
	go func() { errc <- hs.Serve(ln) }()
	select {
	case err := <-errc:
		return err
	case <-ctx.Done():
		sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		if err := hs.Shutdown(sctx); err != nil {
			return err
		}
		<-errc
		return nil
	}
}

// FailNext makes the next n requests fail with status (429 and 503 carry
// Retry-After: 1) without touching the store.
func (s *Server) FailNext(n, status int) {
	s.failMu.Lock()
	defer s.failMu.Unlock()
	s.failNext, s.failStatus = n, status
}

// SetOutage makes every request fail with status until it is called with
// 0, e.g. SetOutage(503) for an outage.
func (s *Server) SetOutage(status int) {
	s.failMu.Lock()
	defer s.failMu.Unlock()
	s.outage = status
}

func (s *Server) injectedFailure() int {
	s.failMu.Lock()
	defer s.failMu.Unlock()
	if s.outage != 0 {
		return s.outage
	}
	if s.failNext > 0 {
		s.failNext--
		return s.failStatus
	}
	return 0
}

// Count returns how many resources currently exist (not deleted).
func (s *Server) Count(ctx context.Context) (int, error) { return s.store.count(ctx) }

// fhirError is a failed interaction, answered with an OperationOutcome.
type fhirError struct {
	status int
	code   string // OperationOutcome issue code
	msg    string
}

func (e *fhirError) Error() string { return e.msg }

func errorf(status int, code, format string, args ...any) *fhirError {
	return &fhirError{status: status, code: code, msg: fmt.Sprintf(format, args...)}
}

// reply is a successful interaction.
type reply struct {
	status int
	body   []byte
	header http.Header
}

// ServeHTTP routes FHIR interactions.
func (s *Server) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if st := s.injectedFailure(); st != 0 {
		if st == http.StatusTooManyRequests || st == http.StatusServiceUnavailable {
			w.Header().Set("Retry-After", "1")
		}
		writeOutcome(w, &fhirError{status: st, code: "transient", msg: "failure injected by the sandbox"})
		return
	}
	client, ok := s.identify(r)
	if !ok {
		// Issue type "login" (R4 CodeSystem issue-type,
		// https://hl7.org/fhir/r4/codesystem-issue-type.html): the client
		// needs to authenticate.
		w.Header().Set("WWW-Authenticate", `Bearer realm="fhirsync sandbox"`)
		writeOutcome(w, errorf(http.StatusUnauthorized, "login", "unknown bearer token"))
		return
	}
	rep, err := s.route(r)
	if err == nil && r.Method != http.MethodGet && r.Method != http.MethodHead {
		s.countWrite(client)
	}
	if err != nil {
		var fe *fhirError
		if !errors.As(err, &fe) {
			if r.Context().Err() == nil {
				s.log.Error("sandbox FHIR request failed", "method", r.Method, "path", r.URL.Path, "err", err)
			}
			fe = &fhirError{status: http.StatusInternalServerError, code: "exception", msg: "internal error"}
		}
		writeOutcome(w, fe)
		return
	}
	if (r.Method == http.MethodPost || r.Method == http.MethodPut) && strings.Trim(r.URL.Path, "/") != "" && rep.body != nil {
		rep = applyPrefer(rep, r.Header.Values("Prefer"))
	}
	for k, v := range rep.header {
		w.Header()[k] = v
	}
	if rep.body != nil {
		w.Header().Set("Content-Type", "application/fhir+json; charset=utf-8")
		w.WriteHeader(rep.status)
		_, _ = w.Write(rep.body)
		return
	}
	w.WriteHeader(rep.status)
}

func (s *Server) route(r *http.Request) (reply, error) {
	ctx := r.Context()
	seg := strings.Split(strings.Trim(r.URL.Path, "/"), "/")
	if len(seg) == 1 && seg[0] == "" {
		seg = nil
	}
	base := s.baseURL(r)
	bad := func() (reply, error) {
		return reply{}, errorf(http.StatusNotFound, "not-supported", "unknown path %s", r.URL.Path)
	}
	method := func(allowed ...string) error {
		for _, m := range allowed {
			if r.Method == m {
				return nil
			}
		}
		return errorf(http.StatusMethodNotAllowed, "not-supported", "%s is not supported on %s", r.Method, r.URL.Path)
	}
	switch {
	case len(seg) == 0:
		if err := method(http.MethodPost); err != nil {
			return reply{}, err
		}
		body, err := s.readBody(r)
		if err != nil {
			return reply{}, err
		}
		return s.bundle(ctx, base, body, prefersMinimal(r.Header.Values("Prefer")))
	case len(seg) == 1 && seg[0] == "metadata":
		if err := method(http.MethodGet); err != nil {
			return reply{}, err
		}
		return reply{status: http.StatusOK, body: capabilityStatement(s.opts.Now())}, nil
	case len(seg) == 1 && seg[0] == "_history":
		if err := method(http.MethodGet); err != nil {
			return reply{}, err
		}
		return s.history(ctx, base, r.URL.Path, "", "", r.URL.Query())
	}
	typ := seg[0]
	if !isTypeName(typ) {
		return bad()
	}
	switch len(seg) {
	case 1:
		switch r.Method {
		case http.MethodGet:
			return s.search(ctx, base, typ, r.URL.Query())
		case http.MethodPost:
			body, err := s.readBody(r)
			if err != nil {
				return reply{}, err
			}
			return s.create(ctx, base, typ, body, r.Header.Get("If-None-Exist"))
		case http.MethodPut:
			body, err := s.readBody(r)
			if err != nil {
				return reply{}, err
			}
			return s.conditionalUpdate(ctx, base, typ, r.URL.Query(), body, r.Header.Get("If-Match"))
		}
		return reply{}, method()
	case 2:
		if seg[1] == "_history" {
			if err := method(http.MethodGet); err != nil {
				return reply{}, err
			}
			return s.history(ctx, base, r.URL.Path, typ, "", r.URL.Query())
		}
		id := seg[1]
		if !isID(id) {
			return bad()
		}
		switch r.Method {
		case http.MethodGet:
			return s.read(ctx, typ, id)
		case http.MethodPut:
			body, err := s.readBody(r)
			if err != nil {
				return reply{}, err
			}
			return s.update(ctx, base, typ, id, body, r.Header.Get("If-Match"))
		case http.MethodDelete:
			return s.delete(ctx, typ, id, r.Header.Get("If-Match"))
		}
		return reply{}, method()
	case 3:
		if seg[2] != "_history" || !isID(seg[1]) {
			return bad()
		}
		if err := method(http.MethodGet); err != nil {
			return reply{}, err
		}
		return s.history(ctx, base, r.URL.Path, typ, seg[1], r.URL.Query())
	case 4:
		if seg[2] != "_history" || !isID(seg[1]) {
			return bad()
		}
		if err := method(http.MethodGet); err != nil {
			return reply{}, err
		}
		return s.vread(ctx, typ, seg[1], seg[3])
	}
	return bad()
}

func (s *Server) baseURL(r *http.Request) string {
	if s.opts.BaseURL != "" {
		return s.opts.BaseURL
	}
	scheme := "http"
	if r.TLS != nil {
		scheme = "https"
	}
	return scheme + "://" + r.Host
}

func (s *Server) readBody(r *http.Request) ([]byte, error) {
	b, err := io.ReadAll(io.LimitReader(r.Body, s.opts.MaxBodyBytes+1))
	if err != nil {
		return nil, errorf(http.StatusBadRequest, "structure", "reading the request body: %v", err)
	}
	if int64(len(b)) > s.opts.MaxBodyBytes {
		return nil, errorf(http.StatusRequestEntityTooLarge, "too-costly", "request body exceeds %d bytes", s.opts.MaxBodyBytes)
	}
	return b, nil
}

// decodeJSON parses one JSON object with exact numbers.
func decodeJSON(b []byte) (map[string]any, error) {
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.UseNumber()
	var m map[string]any
	if err := dec.Decode(&m); err != nil {
		return nil, errorf(http.StatusBadRequest, "structure", "body is not a JSON object: %v", err)
	}
	if m == nil {
		return nil, errorf(http.StatusBadRequest, "structure", "body is null")
	}
	if _, err := dec.Token(); err != io.EOF {
		return nil, errorf(http.StatusBadRequest, "structure", "trailing data after the resource")
	}
	return m, nil
}

func encodeJSON(v any) ([]byte, error) {
	var buf bytes.Buffer
	enc := json.NewEncoder(&buf)
	enc.SetEscapeHTML(false)
	if err := enc.Encode(v); err != nil {
		return nil, err
	}
	return bytes.TrimRight(buf.Bytes(), "\n"), nil
}

func writeOutcome(w http.ResponseWriter, fe *fhirError) {
	body, _ := encodeJSON(outcome("error", fe.code, fe.msg))
	w.Header().Set("Content-Type", "application/fhir+json; charset=utf-8")
	w.WriteHeader(fe.status)
	_, _ = w.Write(body)
}

func outcome(severity, code, msg string) map[string]any {
	return map[string]any{
		"resourceType": "OperationOutcome",
		"issue":        []any{map[string]any{"severity": severity, "code": code, "diagnostics": msg}},
	}
}

// applyPrefer honours the return preference on create and update. FHIR R4
// http.html#return: "Prefer: return=minimal ... asks to return no body.
// Prefer: return=representation asks to return the full resource.
// Prefer: return=OperationOutcome asks the server to return an
// OperationOutcome resource containing hints and warnings about the
// operation rather than the full resource. Servers SHOULD honor this
// header." Without the header the sandbox returns the resource.
func applyPrefer(rep reply, prefer []string) reply {
	switch returnPreference(prefer) {
	case "minimal":
		rep.body = nil
	case "OperationOutcome":
		body, err := encodeJSON(outcome("information", "informational", "the interaction succeeded"))
		if err == nil {
			rep.body = body
		}
	}
	return rep
}

// returnPreference is the first return preference of the Prefer headers
// ("minimal", "representation", "OperationOutcome"; "" when none).
func returnPreference(prefer []string) string {
	for _, p := range prefer {
		for _, part := range strings.Split(p, ",") {
			k, v, _ := strings.Cut(strings.TrimSpace(part), "=")
			if strings.EqualFold(strings.TrimSpace(k), "return") {
				return strings.Trim(strings.TrimSpace(v), `"`)
			}
		}
	}
	return ""
}

// prefersMinimal reports whether a batch or transaction asks for
// return=minimal: R4 http.html#return, for create, update, patch and
// transaction, "In the case of transactions this means returning a Bundle
// with just the Bundle.entry.response populated for each entry, and not
// the Bundle.entry.resource values."
func prefersMinimal(prefer []string) bool { return returnPreference(prefer) == "minimal" }

// isTypeName reports whether s looks like a FHIR resource type name.
func isTypeName(s string) bool {
	if s == "" || len(s) > 64 || s[0] < 'A' || s[0] > 'Z' {
		return false
	}
	for _, c := range s {
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z') {
			return false
		}
	}
	return true
}

// isID reports whether s is a valid FHIR id.
func isID(s string) bool {
	if s == "" || len(s) > 64 {
		return false
	}
	for _, c := range s {
		if !(c == '-' || c == '.' || c >= '0' && c <= '9' || c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z') {
			return false
		}
	}
	return true
}

// parseVersion reads If-Match forms W/"3", "3" and 3.
func parseVersion(h string) (int64, bool) {
	h = strings.TrimPrefix(strings.TrimSpace(h), "W/")
	v, err := strconv.ParseInt(strings.Trim(h, `"`), 10, 64)
	return v, err == nil && v > 0
}
