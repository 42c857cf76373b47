package fhirserver

import (
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"

	"github.com/google/uuid"
)

// Bundle JSON, with stored resources passed through as raw bytes.
type bundleJSON struct {
	ResourceType string      `json:"resourceType"`
	ID           string      `json:"id,omitempty"`
	Meta         *metaJSON   `json:"meta,omitempty"`
	Type         string      `json:"type"`
	Total        *int        `json:"total,omitempty"`
	Link         []linkJSON  `json:"link,omitempty"`
	Entry        []entryJSON `json:"entry,omitempty"`
}

type metaJSON struct {
	LastUpdated string `json:"lastUpdated"`
}

type linkJSON struct {
	Relation string `json:"relation"`
	URL      string `json:"url"`
}

type entryJSON struct {
	FullURL  string          `json:"fullUrl,omitempty"`
	Resource json.RawMessage `json:"resource,omitempty"`
	Search   *searchJSON     `json:"search,omitempty"`
	Request  *requestJSON    `json:"request,omitempty"`
	Response *responseJSON   `json:"response,omitempty"`
}

type searchJSON struct {
	Mode string `json:"mode"`
}

type requestJSON struct {
	Method string `json:"method"`
	URL    string `json:"url"`
}

type responseJSON struct {
	Status       string         `json:"status"`
	Location     string         `json:"location,omitempty"`
	Etag         string         `json:"etag,omitempty"`
	LastModified string         `json:"lastModified,omitempty"`
	Outcome      map[string]any `json:"outcome,omitempty"`
}

func newBundle(typ string, now time.Time) bundleJSON {
	return bundleJSON{ResourceType: "Bundle", ID: uuid.NewString(), Type: typ,
		Meta: &metaJSON{LastUpdated: now.UTC().Format(tsLayout)}}
}

// resourceReply answers with a stored version and its headers.
func resourceReply(status int, base string, r record) reply {
	h := http.Header{}
	h.Set("ETag", r.etag())
	h.Set("Last-Modified", r.lastUpdated.UTC().Format(http.TimeFormat))
	if status == http.StatusCreated {
		h.Set("Location", base+"/"+r.versionRef())
	}
	return reply{status: status, body: r.body, header: h}
}

func (s *Server) read(ctx context.Context, typ, id string) (reply, error) {
	r, err := readCurrent(ctx, s.store.reader(), typ, id)
	if err != nil {
		return reply{}, err
	}
	return resourceReply(http.StatusOK, "", r), nil
}

// readCurrent is the read interaction, alone or as an entry of a batch or
// transaction, through q: the current version of typ/id; 404 when it never
// existed, 410 when its current version is a deletion (R4 http.html#read).
func readCurrent(ctx context.Context, q querier, typ, id string) (record, error) {
	r, err := current(ctx, q, typ, id)
	if errors.Is(err, errNoRecord) {
		return r, errorf(http.StatusNotFound, "not-found", "%s/%s is not known", typ, id)
	}
	if err != nil {
		return r, err
	}
	if r.deleted {
		return r, errorf(http.StatusGone, "deleted", "%s/%s was deleted", typ, id)
	}
	return r, nil
}

func (s *Server) vread(ctx context.Context, typ, id, vid string) (reply, error) {
	v, err := strconv.ParseInt(vid, 10, 64)
	if err != nil || v < 1 {
		return reply{}, errorf(http.StatusNotFound, "not-found", "%s/%s has no version %q", typ, id, vid)
	}
	r, err := s.store.version(ctx, typ, id, v)
	if errors.Is(err, errNoRecord) {
		return reply{}, errorf(http.StatusNotFound, "not-found", "%s/%s has no version %d", typ, id, v)
	}
	if err != nil {
		return reply{}, err
	}
	if r.deleted {
		return reply{}, errorf(http.StatusGone, "deleted", "version %d of %s/%s is a deletion", v, typ, id)
	}
	return resourceReply(http.StatusOK, "", r), nil
}

// parseResource decodes a request body and checks its type (and id, when
// the URL names one).
func parseResource(body []byte, typ string) (map[string]any, error) {
	res, err := decodeJSON(body)
	if err != nil {
		return nil, err
	}
	rt, _ := res["resourceType"].(string)
	if rt != typ {
		return nil, errorf(http.StatusBadRequest, "invalid", "resourceType %q does not match the URL's %s", truncate(rt, 64), typ)
	}
	if id, ok := res["id"]; ok {
		if s, _ := id.(string); !isID(s) {
			return nil, errorf(http.StatusBadRequest, "invalid", "id is not a valid FHIR id")
		}
	}
	return res, nil
}

func (s *Server) create(ctx context.Context, base, typ string, body []byte, ifNoneExist string) (reply, error) {
	res, err := parseResource(body, typ)
	if err != nil {
		return reply{}, err
	}
	var rec record
	var created bool
	err = s.store.write(ctx, func(w *writer) error {
		var err error
		rec, created, err = s.doCreate(ctx, w, typ, res, ifNoneExist, "")
		return err
	})
	if err != nil {
		return reply{}, err
	}
	if !created {
		return resourceReply(http.StatusOK, base, rec), nil
	}
	return resourceReply(http.StatusCreated, base, rec), nil
}

// doCreate stores res under id (a new one when ""); with ifNoneExist
// (search criteria) an existing single match is returned instead.
func (s *Server) doCreate(ctx context.Context, w *writer, typ string, res map[string]any, ifNoneExist, id string) (record, bool, error) {
	if ifNoneExist != "" {
		q, err := url.ParseQuery(strings.TrimPrefix(ifNoneExist, typ+"?"))
		if err != nil {
			return record{}, false, errorf(http.StatusBadRequest, "invalid", "If-None-Exist is not a query")
		}
		sq, err := parseSearch(typ, q, true)
		if err != nil {
			return record{}, false, err
		}
		sq.count = 2
		matches, _, err := s.store.search(ctx, w.tx, sq, false)
		if err != nil {
			return record{}, false, err
		}
		if len(matches) > 1 {
			return record{}, false, errorf(http.StatusPreconditionFailed, "multiple-matches", "If-None-Exist matched several %s resources", typ)
		}
		if len(matches) == 1 {
			return matches[0], false, nil
		}
	}
	if id == "" {
		id = uuid.NewString()
	}
	res["id"] = id
	rec, err := w.put(ctx, res, "POST", 0)
	return rec, true, err
}

func (s *Server) update(ctx context.Context, base, typ, id string, body []byte, ifMatch string) (reply, error) {
	res, err := parseResource(body, typ)
	if err != nil {
		return reply{}, err
	}
	if rid, _ := res["id"].(string); rid != id {
		return reply{}, errorf(http.StatusBadRequest, "invalid", "the resource's id must match the URL's id %s", id)
	}
	var rec record
	var created bool
	err = s.store.write(ctx, func(w *writer) error {
		var err error
		rec, created, err = doUpdate(ctx, w, typ, id, res, ifMatch)
		return err
	})
	if err != nil {
		return reply{}, err
	}
	if created {
		return resourceReply(http.StatusCreated, base, rec), nil
	}
	return resourceReply(http.StatusOK, base, rec), nil
}

// checkIfMatch evaluates an If-Match header against the current version
// of typ/id (live reports whether one exists and is not deleted). FHIR R4
// (http.html#concurrency): "If the version id given in the If-Match header
// does not match, the server returns a 412 Precondition Failed status code
// instead of updating the resource." Where no current version exists,
// RFC 9110 section 13.1.1 makes the condition false as well: no entity tag
// can match, so the answer is 412 too.
func checkIfMatch(ifMatch string, live bool, cur record, typ, id string) error {
	if ifMatch == "" {
		return nil
	}
	want, ok := parseVersion(ifMatch)
	if !ok {
		return errorf(http.StatusBadRequest, "invalid", "If-Match is not a version (expected W/\"<versionId>\")")
	}
	if !live {
		return errorf(http.StatusPreconditionFailed, "conflict",
			"version conflict on %s/%s: If-Match %d names a version, but no current version exists", typ, id, want)
	}
	if cur.version != want {
		return errorf(http.StatusPreconditionFailed, "conflict",
			"version conflict on %s/%s: If-Match %d is not the current version %d", typ, id, want, cur.version)
	}
	return nil
}

// doUpdate stores res as the next version of typ/id (creating it when it
// does not exist), honouring If-Match.
func doUpdate(ctx context.Context, w *writer, typ, id string, res map[string]any, ifMatch string) (record, bool, error) {
	res["id"] = id
	cur, err := current(ctx, w.tx, typ, id)
	exists := err == nil
	if err != nil && !errors.Is(err, errNoRecord) {
		return record{}, false, err
	}
	if err := checkIfMatch(ifMatch, exists && !cur.deleted, cur, typ, id); err != nil {
		return record{}, false, err
	}
	method := "PUT"
	created := !exists || cur.deleted
	if !exists {
		method = "POST"
	}
	rec, err := w.put(ctx, res, method, cur.version)
	return rec, created, err
}

func (s *Server) conditionalUpdate(ctx context.Context, base, typ string, q url.Values, body []byte, ifMatch string) (reply, error) {
	res, err := parseResource(body, typ)
	if err != nil {
		return reply{}, err
	}
	var rec record
	var created bool
	err = s.store.write(ctx, func(w *writer) error {
		var err error
		rec, created, err = s.doConditionalUpdate(ctx, w, typ, q, res, ifMatch)
		return err
	})
	if err != nil {
		return reply{}, err
	}
	if created {
		return resourceReply(http.StatusCreated, base, rec), nil
	}
	return resourceReply(http.StatusOK, base, rec), nil
}

// doConditionalUpdate follows FHIR R4 http.html#cond-update: no match and
// no id creates; no match with an id is an update-as-create of that id
// (R4 has no 409 case; later versions added one); one
// match updates it (400 when the body names another id); several matches
// answer 412. ifMatch, when set, must name the matched resource's current
// version.
func (s *Server) doConditionalUpdate(ctx context.Context, w *writer, typ string, q url.Values, res map[string]any, ifMatch string) (record, bool, error) {
	sq, err := parseSearch(typ, q, true)
	if err != nil {
		return record{}, false, err
	}
	sq.count = 2
	matches, _, err := s.store.search(ctx, w.tx, sq, false)
	if err != nil {
		return record{}, false, err
	}
	bodyID, _ := res["id"].(string)
	switch len(matches) {
	case 0:
		if err := checkIfMatch(ifMatch, false, record{}, typ, bodyID); err != nil {
			return record{}, false, err
		}
		if bodyID == "" {
			res["id"] = uuid.NewString()
			rec, err := w.put(ctx, res, "POST", 0)
			return rec, true, err
		}
		// R4 has no conflict case here (later versions answer 409 when
		// the id exists): the body's id is updated, or created.
		return doUpdate(ctx, w, typ, bodyID, res, "")
	case 1:
		if bodyID != "" && bodyID != matches[0].id {
			return record{}, false, errorf(http.StatusBadRequest, "invalid", "the resource's id does not match the resource the criteria found")
		}
		return doUpdate(ctx, w, typ, matches[0].id, res, ifMatch)
	}
	return record{}, false, errorf(http.StatusPreconditionFailed, "multiple-matches", "the criteria matched several %s resources", typ)
}

func (s *Server) delete(ctx context.Context, typ, id, ifMatch string) (reply, error) {
	var rec record
	var written bool
	err := s.store.write(ctx, func(w *writer) error {
		var err error
		rec, written, err = doDelete(ctx, w, typ, id, ifMatch)
		return err
	})
	if err != nil {
		return reply{}, err
	}
	// FHIR R4 http.html#delete: "servers MAY include an ETag on the delete
	// response to allow version contention management when a resource is
	// brought back to life."
	h := http.Header{}
	if written {
		h.Set("ETag", rec.etag())
	}
	return reply{status: http.StatusNoContent, header: h}, nil
}

// doDelete records a deletion; deleting what does not exist (or is
// already deleted) changes nothing and succeeds, unless ifMatch names a
// version (see checkIfMatch). It returns the deletion's version and
// whether one was written.
func doDelete(ctx context.Context, w *writer, typ, id, ifMatch string) (record, bool, error) {
	cur, err := current(ctx, w.tx, typ, id)
	if err != nil && !errors.Is(err, errNoRecord) {
		return record{}, false, err
	}
	live := err == nil && !cur.deleted
	if err := checkIfMatch(ifMatch, live, cur, typ, id); err != nil {
		return record{}, false, err
	}
	if !live {
		return record{}, false, nil
	}
	rec, err := w.remove(ctx, typ, id, cur.version)
	return rec, err == nil, err
}

const (
	defaultCount = 50
	maxCount     = 1000
)

// parseSearch reads the supported search parameters. Conditions (for
// conditional update and create) take no paging parameters.
func parseSearch(typ string, q url.Values, condition bool) (searchQuery, error) {
	sq := searchQuery{typ: typ, count: defaultCount}
	var unknown []string
	for name, vals := range q {
		for _, v := range vals {
			switch name {
			case "_id":
				for _, id := range strings.Split(v, ",") {
					sq.ids = append(sq.ids, strings.TrimSpace(id))
				}
			case "identifier":
				for _, tok := range splitTokens(v) {
					if sys, val, ok := strings.Cut(tok, "|"); ok {
						if sys == "" && val == "" {
							return sq, errorf(http.StatusBadRequest, "invalid", "identifier token is empty")
						}
						sq.identifiers = append(sq.identifiers, [2]string{sys, val})
					} else {
						sq.identifiers = append(sq.identifiers, [2]string{"\x00", tok})
					}
				}
			case "_lastUpdated":
				bs, err := parseDateParam(v)
				if err != nil {
					return sq, err
				}
				sq.lastUpdated = append(sq.lastUpdated, bs...)
			case "_count", "_offset":
				if condition {
					unknown = append(unknown, name)
					continue
				}
				n, err := strconv.Atoi(v)
				if err != nil || n < 0 {
					return sq, errorf(http.StatusBadRequest, "invalid", "%s must be a non-negative integer", name)
				}
				if name == "_count" {
					sq.count = min(n, maxCount)
				} else {
					sq.offset = n
				}
			case "_format", "_pretty", "_total", "_summary":
				// Accepted and ignored: JSON only, totals always given.
			default:
				unknown = append(unknown, name)
			}
		}
	}
	if len(unknown) > 0 {
		return sq, errorf(http.StatusBadRequest, "not-supported",
			"unsupported search parameters: %s (supported: _id, identifier, _lastUpdated, _count)", strings.Join(unknown, ", "))
	}
	if condition && len(sq.ids) == 0 && len(sq.identifiers) == 0 && len(sq.lastUpdated) == 0 {
		return sq, errorf(http.StatusBadRequest, "invalid", "conditional interactions need search criteria")
	}
	return sq, nil
}

// splitTokens splits an OR list on commas not escaped with a backslash.
func splitTokens(v string) []string {
	var out []string
	var cur strings.Builder
	for i := 0; i < len(v); i++ {
		switch {
		case v[i] == '\\' && i+1 < len(v):
			i++
			cur.WriteByte(v[i])
		case v[i] == ',':
			out = append(out, cur.String())
			cur.Reset()
		default:
			cur.WriteByte(v[i])
		}
	}
	return append(out, cur.String())
}

// parseDateParam turns a date search value with an optional prefix into
// bounds over the value's precision: ge2024-01-01 means >= its start,
// gt means >= the end of its precision, lt < start, le < end, eq both.
func parseDateParam(v string) ([]bound, error) {
	prefix := "eq"
	if len(v) > 2 && v[0] >= 'a' && v[0] <= 'z' {
		prefix, v = v[:2], v[2:]
	}
	lo, hi, err := instantRange(v)
	if err != nil {
		return nil, errorf(http.StatusBadRequest, "invalid", "_lastUpdated value is not a date or instant")
	}
	switch prefix {
	case "eq":
		return []bound{{">=", lo}, {"<", hi}}, nil
	case "ge":
		return []bound{{">=", lo}}, nil
	case "gt", "sa":
		return []bound{{">=", hi}}, nil
	case "le":
		return []bound{{"<", hi}}, nil
	case "lt", "eb":
		return []bound{{"<", lo}}, nil
	}
	return nil, errorf(http.StatusBadRequest, "not-supported", "_lastUpdated prefix %q is not supported", prefix)
}

// instantRange returns the interval a date/dateTime/instant covers at its
// precision (stored times have millisecond precision).
func instantRange(v string) (time.Time, time.Time, error) {
	layouts := []struct {
		layout string
		span   func(time.Time) time.Time
	}{
		{"2006", func(t time.Time) time.Time { return t.AddDate(1, 0, 0) }},
		{"2006-01", func(t time.Time) time.Time { return t.AddDate(0, 1, 0) }},
		{"2006-01-02", func(t time.Time) time.Time { return t.AddDate(0, 0, 1) }},
		{"2006-01-02T15:04Z07:00", func(t time.Time) time.Time { return t.Add(time.Minute) }},
		{"2006-01-02T15:04:05Z07:00", func(t time.Time) time.Time { return t.Add(time.Second) }},
	}
	for _, l := range layouts {
		if t, err := time.Parse(l.layout, v); err == nil {
			return t.UTC(), l.span(t).UTC(), nil
		}
	}
	t, err := time.Parse(time.RFC3339Nano, v)
	if err != nil {
		return time.Time{}, time.Time{}, err
	}
	lo := t.UTC().Truncate(time.Millisecond)
	return lo, lo.Add(time.Millisecond), nil
}

func (s *Server) search(ctx context.Context, base, typ string, q url.Values) (reply, error) {
	sq, err := parseSearch(typ, q, false)
	if err != nil {
		return reply{}, err
	}
	recs, total, err := s.store.search(ctx, s.store.db, sq, true)
	if err != nil {
		return reply{}, err
	}
	b := newBundle("searchset", s.opts.Now())
	b.Total = &total
	self := cloneValues(q)
	b.Link = append(b.Link, linkJSON{Relation: "self", URL: base + "/" + typ + "?" + self.Encode()})
	if sq.offset+len(recs) < total && len(recs) > 0 {
		next := cloneValues(q)
		next.Set("_offset", strconv.Itoa(sq.offset+len(recs)))
		next.Set("_count", strconv.Itoa(sq.count))
		b.Link = append(b.Link, linkJSON{Relation: "next", URL: base + "/" + typ + "?" + next.Encode()})
	}
	for _, r := range recs {
		b.Entry = append(b.Entry, entryJSON{FullURL: base + "/" + typ + "/" + r.id, Resource: r.body, Search: &searchJSON{Mode: "match"}})
	}
	body, err := encodeJSON(b)
	if err != nil {
		return reply{}, err
	}
	return reply{status: http.StatusOK, body: body}, nil
}

// history answers instance, type and system history, newest first. Paging
// uses a cursor on the change sequence, so pages stay stable while writes
// continue.
func (s *Server) history(ctx context.Context, base, path, typ, id string, q url.Values) (reply, error) {
	hq := historyQuery{typ: typ, id: id, limit: defaultCount}
	for name, vals := range q {
		v := vals[len(vals)-1]
		switch name {
		case "_since":
			t, err := time.Parse(time.RFC3339Nano, v)
			if err != nil {
				return reply{}, errorf(http.StatusBadRequest, "invalid", "_since must be an instant with a time zone")
			}
			hq.since = t
		case "_count":
			n, err := strconv.Atoi(v)
			if err != nil || n < 1 {
				return reply{}, errorf(http.StatusBadRequest, "invalid", "_count must be a positive integer")
			}
			hq.limit = min(n, maxCount)
		case "_cursor":
			n, err := strconv.ParseInt(v, 10, 64)
			if err != nil || n < 1 {
				return reply{}, errorf(http.StatusBadRequest, "invalid", "_cursor is malformed")
			}
			hq.before = n
		case "_format", "_pretty":
		default:
			return reply{}, errorf(http.StatusBadRequest, "not-supported", "unsupported history parameter %s (supported: _since, _count)", name)
		}
	}
	count := hq.limit
	hq.limit++
	recs, err := s.store.history(ctx, hq)
	if err != nil {
		return reply{}, err
	}
	if id != "" && len(recs) == 0 && hq.before == 0 && hq.since.IsZero() {
		return reply{}, errorf(http.StatusNotFound, "not-found", "%s/%s is not known", typ, id)
	}
	b := newBundle("history", s.opts.Now())
	b.Link = append(b.Link, linkJSON{Relation: "self", URL: base + path + "?" + q.Encode()})
	if len(recs) > count {
		recs = recs[:count]
		next := cloneValues(q)
		next.Set("_count", strconv.Itoa(count))
		next.Set("_cursor", strconv.FormatInt(recs[len(recs)-1].seq, 10))
		b.Link = append(b.Link, linkJSON{Relation: "next", URL: base + path + "?" + next.Encode()})
	}
	for _, r := range recs {
		e := entryJSON{FullURL: base + "/" + r.typ + "/" + r.id,
			Request:  &requestJSON{Method: r.method, URL: r.typ + "/" + r.id},
			Response: &responseJSON{Etag: r.etag(), LastModified: r.lastUpdated.Format(tsLayout)}}
		switch r.method {
		case "POST":
			e.Request.URL = r.typ
			e.Response.Status = "201 Created"
		case "PUT":
			e.Response.Status = "200 OK"
		case "DELETE":
			e.Response.Status = "204 No Content"
		}
		if !r.deleted {
			e.Resource = r.body
		}
		b.Entry = append(b.Entry, e)
	}
	body, err := encodeJSON(b)
	if err != nil {
		return reply{}, err
	}
	return reply{status: http.StatusOK, body: body}, nil
}

func cloneValues(q url.Values) url.Values {
	out := url.Values{}
	for k, v := range q {
		if k == "_cursor" || k == "_offset" {
			continue
		}
		out[k] = append([]string(nil), v...)
	}
	return out
}

func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[:n] + "…"
}
