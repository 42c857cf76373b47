package fhirserver

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"strings"

	"github.com/google/uuid"
)

// bundleEntry is one request of a transaction or batch.
type bundleEntry struct {
	index       int
	fullURL     string
	method      string
	typ, id     string
	query       url.Values // conditional update criteria
	ifMatch     string
	ifNoneExist string
	resource    map[string]any
	assignedID  string // for creates referenced by urn:uuid
}

// entryResult is what an entry produced.
type entryResult struct {
	rec     record
	status  int
	deleted bool
	err     *fhirError
}

// bundle processes a transaction (atomically) or a batch (entry by entry).
// minimal (Prefer: return=minimal) leaves the resources out of the
// entries of creates, updates and deletes, keeping their response
// (status, location, etag, lastModified); a read's entry keeps the
// resource it read, which is that entry's answer, not a copy of what was
// sent.
func (s *Server) bundle(ctx context.Context, base string, body []byte, minimal bool) (reply, error) {
	b, err := decodeJSON(body)
	if err != nil {
		return reply{}, err
	}
	if rt, _ := b["resourceType"].(string); rt != "Bundle" {
		return reply{}, errorf(http.StatusBadRequest, "invalid", "POST to the base needs a Bundle")
	}
	btype, _ := b["type"].(string)
	if btype != "transaction" && btype != "batch" {
		return reply{}, errorf(http.StatusBadRequest, "invalid", "Bundle.type must be transaction or batch")
	}
	raw, _ := b["entry"].([]any)
	entries := make([]*bundleEntry, 0, len(raw))
	for i, it := range raw {
		e, err := parseEntry(i, it)
		if err != nil {
			if btype == "transaction" {
				return reply{}, err
			}
			entries = append(entries, &bundleEntry{index: i, method: "INVALID"})
			continue
		}
		entries = append(entries, e)
	}
	results := make([]entryResult, len(entries))
	if btype == "transaction" {
		err := s.store.write(ctx, func(w *writer) error {
			return s.runTransaction(ctx, w, entries, results)
		})
		if err != nil {
			return reply{}, err
		}
	} else {
		// Each entry succeeds or fails on its own (R4 http.html#transaction:
		// "The success or failure of one change SHOULD not alter the success
		// or failure or resulting content of another change"); they commit
		// together.
		// Reads are answered after the writes have committed, from the
		// store as any read sees it: a batch of reads takes no write
		// transaction.
		var fns []func(w *writer) error
		var at, reads []int
		for i, e := range entries {
			switch e.method {
			case "INVALID":
				results[i] = entryResult{err: errorf(http.StatusBadRequest, "invalid", "entry %d is not a valid request", i)}
				continue
			case "GET":
				reads = append(reads, i)
				continue
			}
			at = append(at, i)
			fns = append(fns, func(w *writer) error {
				res, err := s.runEntry(ctx, w, e)
				results[i] = res
				return err
			})
		}
		for k, err := range s.store.writeEach(ctx, fns) {
			var fe *fhirError
			switch {
			case errors.As(err, &fe):
				results[at[k]] = entryResult{err: fe}
			case err != nil:
				return reply{}, err
			}
		}
		for _, i := range reads {
			rec, err := readCurrent(ctx, s.store.reader(), entries[i].typ, entries[i].id)
			var fe *fhirError
			switch {
			case errors.As(err, &fe):
				results[i] = entryResult{err: fe}
			case err != nil:
				return reply{}, err
			default:
				results[i] = entryResult{rec: rec, status: http.StatusOK}
			}
		}
	}
	out := newBundle(btype+"-response", s.opts.Now())
	for i, r := range results {
		e := resultEntry(base, r)
		if minimal && entries[i].method != "GET" {
			e.Resource = nil
		}
		out.Entry = append(out.Entry, e)
	}
	body, err = encodeJSON(out)
	if err != nil {
		return reply{}, err
	}
	return reply{status: http.StatusOK, body: body}, nil
}

func resultEntry(base string, r entryResult) entryJSON {
	if r.err != nil {
		return entryJSON{Response: &responseJSON{Status: fmt.Sprintf("%d %s", r.err.status, http.StatusText(r.err.status)),
			Outcome: outcome("error", r.err.code, r.err.msg)}}
	}
	e := entryJSON{Response: &responseJSON{Status: fmt.Sprintf("%d %s", r.status, http.StatusText(r.status))}}
	if r.deleted {
		return e
	}
	e.FullURL = base + "/" + r.rec.typ + "/" + r.rec.id
	e.Resource = r.rec.body
	e.Response.Etag = r.rec.etag()
	e.Response.LastModified = r.rec.lastUpdated.Format(tsLayout)
	if r.status == http.StatusCreated {
		e.Response.Location = r.rec.versionRef()
	}
	return e
}

func parseEntry(i int, it any) (*bundleEntry, error) {
	m, _ := it.(map[string]any)
	req, _ := m["request"].(map[string]any)
	if req == nil {
		return nil, errorf(http.StatusBadRequest, "invalid", "entry %d has no request", i)
	}
	e := &bundleEntry{index: i}
	e.fullURL, _ = m["fullUrl"].(string)
	e.method, _ = req["method"].(string)
	rawURL, _ := req["url"].(string)
	e.ifMatch, _ = req["ifMatch"].(string)
	e.ifNoneExist, _ = req["ifNoneExist"].(string)
	path, query, _ := strings.Cut(strings.TrimPrefix(rawURL, "/"), "?")
	seg := strings.Split(path, "/")
	if !isTypeName(seg[0]) || len(seg) > 2 || len(seg) == 2 && !isID(seg[1]) {
		return nil, errorf(http.StatusBadRequest, "invalid", "entry %d: request.url must be Type, Type/id or Type?criteria", i)
	}
	e.typ = seg[0]
	if len(seg) == 2 {
		e.id = seg[1]
	}
	if query != "" {
		q, err := url.ParseQuery(query)
		if err != nil {
			return nil, errorf(http.StatusBadRequest, "invalid", "entry %d: request.url has a malformed query", i)
		}
		e.query = q
	}
	if r, ok := m["resource"].(map[string]any); ok {
		e.resource = r
	}
	switch e.method {
	case "POST":
		if e.id != "" || e.resource == nil {
			return nil, errorf(http.StatusBadRequest, "invalid", "entry %d: POST needs a resource and a type URL", i)
		}
	case "PUT":
		if e.resource == nil || (e.id == "") == (e.query == nil) {
			return nil, errorf(http.StatusBadRequest, "invalid", "entry %d: PUT needs a resource and Type/id or Type?criteria", i)
		}
	case "DELETE", "GET":
		if e.id == "" {
			return nil, errorf(http.StatusBadRequest, "invalid", "entry %d: %s needs Type/id", i, e.method)
		}
	default:
		return nil, errorf(http.StatusBadRequest, "not-supported", "entry %d: method %q is not supported", i, e.method)
	}
	if e.resource != nil {
		if rt, _ := e.resource["resourceType"].(string); rt != e.typ {
			return nil, errorf(http.StatusBadRequest, "invalid", "entry %d: resourceType does not match request.url", i)
		}
	}
	return e, nil
}

// runTransaction processes entries in FHIR's order (DELETE, POST, PUT,
// GET) and resolves urn:uuid references to the ids creates receive. Any
// failure aborts the whole transaction.
func (s *Server) runTransaction(ctx context.Context, w *writer, entries []*bundleEntry, results []entryResult) error {
	refs := map[string]string{}
	run := func(e *bundleEntry) error {
		res, err := s.runEntry(ctx, w, e)
		if err != nil {
			var fe *fhirError
			if errors.As(err, &fe) {
				return &fhirError{status: fe.status, code: fe.code, msg: fmt.Sprintf("entry %d: %s", e.index, fe.msg)}
			}
			return err
		}
		results[e.index] = res
		return nil
	}
	for _, e := range entries {
		if e.method == "DELETE" {
			if err := run(e); err != nil {
				return err
			}
		}
	}
	// Conditional creates resolve to whatever they find; run them first so
	// their references are known.
	for _, e := range entries {
		if e.method == "POST" && e.ifNoneExist != "" {
			if err := run(e); err != nil {
				return err
			}
			if strings.HasPrefix(e.fullURL, "urn:uuid:") {
				refs[e.fullURL] = results[e.index].rec.typ + "/" + results[e.index].rec.id
			}
		}
	}
	for _, e := range entries {
		if e.method == "POST" && e.ifNoneExist == "" {
			e.assignedID = uuid.NewString()
			if strings.HasPrefix(e.fullURL, "urn:uuid:") {
				refs[e.fullURL] = e.typ + "/" + e.assignedID
			}
		}
	}
	for _, e := range entries {
		if e.resource != nil && len(refs) > 0 {
			rewriteRefs(e.resource, refs)
		}
	}
	for _, method := range []string{"POST", "PUT", "GET"} {
		for _, e := range entries {
			if e.method == method && !(method == "POST" && e.ifNoneExist != "") {
				if err := run(e); err != nil {
					return err
				}
			}
		}
	}
	return nil
}

// runEntry performs one entry inside w.
func (s *Server) runEntry(ctx context.Context, w *writer, e *bundleEntry) (entryResult, error) {
	switch e.method {
	case "POST":
		rec, created, err := s.doCreate(ctx, w, e.typ, e.resource, e.ifNoneExist, e.assignedID)
		if err != nil {
			return entryResult{}, err
		}
		if created {
			return entryResult{rec: rec, status: http.StatusCreated}, nil
		}
		return entryResult{rec: rec, status: http.StatusOK}, nil
	case "PUT":
		var rec record
		var created bool
		var err error
		if e.query != nil {
			rec, created, err = s.doConditionalUpdate(ctx, w, e.typ, e.query, e.resource, e.ifMatch)
		} else {
			if rid, _ := e.resource["id"].(string); rid != e.id {
				return entryResult{}, errorf(http.StatusBadRequest, "invalid", "the resource's id must match request.url")
			}
			rec, created, err = doUpdate(ctx, w, e.typ, e.id, e.resource, e.ifMatch)
		}
		if err != nil {
			return entryResult{}, err
		}
		if created {
			return entryResult{rec: rec, status: http.StatusCreated}, nil
		}
		return entryResult{rec: rec, status: http.StatusOK}, nil
	case "DELETE":
		if _, _, err := doDelete(ctx, w, e.typ, e.id, e.ifMatch); err != nil {
			return entryResult{}, err
		}
		return entryResult{status: http.StatusNoContent, deleted: true}, nil
	case "GET":
		// Inside a transaction, as the read interaction answers.
		rec, err := readCurrent(ctx, w.tx, e.typ, e.id)
		if err != nil {
			return entryResult{}, err
		}
		return entryResult{rec: rec, status: http.StatusOK}, nil
	}
	return entryResult{}, errorf(http.StatusBadRequest, "invalid", "entry %d is not a valid request", e.index)
}

// rewriteRefs replaces reference values that name a urn:uuid of the bundle.
func rewriteRefs(v any, refs map[string]string) {
	switch x := v.(type) {
	case map[string]any:
		for k, val := range x {
			if s, ok := val.(string); ok && k == "reference" {
				if to, ok := refs[s]; ok {
					x[k] = to
				}
				continue
			}
			rewriteRefs(val, refs)
		}
	case []any:
		for _, it := range x {
			rewriteRefs(it, refs)
		}
	}
}
