package crm

import (
	"context"
	"fmt"
	"net/http"
	"net/url"
	"sort"
	"strconv"
	"strings"

	fsmaps "github.com/fhirsync/fhirsync/maps"
)

// Record is one row as the Web API renders it: attribute logical names to
// values (numbers stay json.Number), lookups read as "_name_value", and
// annotations such as "@odata.etag".
type Record map[string]any

// ETag returns the row's @odata.etag.
func (r Record) ETag() string {
	s, _ := r["@odata.etag"].(string)
	return s
}

// String returns a string attribute, "" when absent or not a string.
func (r Record) String(name string) string {
	s, _ := r[name].(string)
	return s
}

// Target addresses one row by its id or by an alternate key.
type Target struct {
	// Set is the entity set name, e.g. "contacts".
	Set string
	// ID is the primary key GUID; used when Key is empty.
	ID string
	// Key maps alternate-key attributes to their values.
	Key map[string]string
}

// ByID addresses a row by primary key.
func ByID(set, id string) Target { return Target{Set: set, ID: id} }

// ByKey addresses a row by a one-attribute alternate key, e.g.
// ByKey("contacts", "msemr_azurefhirid", "p1").
func ByKey(set, attr, value string) Target {
	return Target{Set: set, Key: map[string]string{attr: value}}
}

// path renders the resource path, e.g. contacts(msemr_azurefhirid='p1'),
// escaped for a URL.
func (t Target) path() string {
	if len(t.Key) == 0 {
		return t.Set + "(" + url.PathEscape(t.ID) + ")"
	}
	names := make([]string, 0, len(t.Key))
	for n := range t.Key {
		names = append(names, n)
	}
	sort.Strings(names)
	parts := make([]string, len(names))
	for i, n := range names {
		parts[i] = n + "=" + url.PathEscape(quote(t.Key[n]))
	}
	return t.Set + "(" + strings.Join(parts, ",") + ")"
}

// String names the target without key values (which may be PHI): the set
// and the key attribute names, or the id.
func (t Target) String() string {
	if len(t.Key) == 0 {
		return t.Set + "(" + t.ID + ")"
	}
	names := make([]string, 0, len(t.Key))
	for n := range t.Key {
		names = append(names, n+"=…")
	}
	sort.Strings(names)
	return t.Set + "(" + strings.Join(names, ",") + ")"
}

// quote renders an OData string literal.
func quote(s string) string { return "'" + strings.ReplaceAll(s, "'", "''") + "'" }

// Quote renders s as an OData string literal for $filter expressions.
func Quote(s string) string { return quote(s) }

// Bind renders an @odata.bind value: "/accounts(<id>)".
func Bind(set, id string) string { return "/" + set + "(" + id + ")" }

// BindKey renders an @odata.bind value by alternate key.
func BindKey(set, attr, value string) string {
	return "/" + ByKey(set, attr, value).path()
}

// idFromEntityID extracts the GUID from an OData-EntityId header value.
func idFromEntityID(v string) (string, bool) {
	i := strings.LastIndexByte(v, '(')
	if i < 0 || !strings.HasSuffix(v, ")") {
		return "", false
	}
	id := v[i+1 : len(v)-1]
	if len(id) != 36 || strings.Count(id, "-") != 4 {
		return "", false
	}
	return strings.ToLower(id), true
}

// whoAmI returns the systemuserid u acts as; the agent compares it with
// change initiators to recognise its own writes.
func (c *Client) whoAmI(ctx context.Context, u *user) (string, error) {
	op := "calling WhoAmI"
	res, err := c.send(ctx, op, call{method: http.MethodGet, url: c.url("WhoAmI", nil), idempotent: true, user: u})
	if err != nil {
		return "", err
	}
	var out struct {
		UserID string `json:"UserId"`
	}
	if err := decodeJSON(op, res, &out); err != nil {
		return "", err
	}
	if out.UserID == "" {
		return "", invalidResponse(op, res.status, "answer without UserId")
	}
	return out.UserID, nil
}

// Create inserts a row and returns its id.
func (c *Client) Create(ctx context.Context, set string, rec Record) (string, error) {
	op := "creating in " + set
	body, err := fsmaps.EncodeJSON(map[string]any(rec))
	if err != nil {
		return "", fmt.Errorf("%s: encoding: %w", op, err)
	}
	res, err := c.send(ctx, op, call{method: http.MethodPost, url: c.url(set, nil), body: body})
	if err != nil {
		return "", err
	}
	id, ok := idFromEntityID(res.header.Get("OData-EntityId"))
	if !ok {
		return "", invalidResponse(op, res.status, "answer without a valid OData-EntityId header")
	}
	return id, nil
}

// Retrieve reads one row; sel limits the attributes. A missing row is an
// error matching ErrNotFound.
func (c *Client) Retrieve(ctx context.Context, t Target, sel ...string) (Record, error) {
	op := "retrieving " + t.String()
	q := url.Values{}
	if len(sel) > 0 {
		q.Set("$select", strings.Join(sel, ","))
	}
	res, err := c.send(ctx, op, call{method: http.MethodGet, url: c.url(t.path(), q), idempotent: true})
	if err != nil {
		return nil, err
	}
	var rec Record
	if err := decodeJSON(op, res, &rec); err != nil {
		return nil, err
	}
	if rec == nil {
		return nil, invalidResponse(op, res.status, "answer is not a JSON object")
	}
	return rec, nil
}

// Query is a retrieve-multiple request.
type Query struct {
	Select  []string
	Filter  string // OData $filter, e.g. "msemr_azurefhirid eq 'p1'"
	OrderBy string // e.g. "modifiedon desc"
	Top     int
}

func (q Query) values() url.Values {
	v := url.Values{}
	if len(q.Select) > 0 {
		v.Set("$select", strings.Join(q.Select, ","))
	}
	if q.Filter != "" {
		v.Set("$filter", q.Filter)
	}
	if q.OrderBy != "" {
		v.Set("$orderby", q.OrderBy)
	}
	if q.Top > 0 {
		v.Set("$top", strconv.Itoa(q.Top))
	}
	return v
}

type page struct {
	Value     []Record `json:"value"`
	NextLink  string   `json:"@odata.nextLink"`
	DeltaLink string   `json:"@odata.deltaLink"`
}

// RetrieveMultiple calls fn for every row matching q, following
// @odata.nextLink across pages. An error from fn stops the walk and is
// returned.
func (c *Client) RetrieveMultiple(ctx context.Context, set string, q Query, fn func(Record) error) error {
	op := "querying " + set
	link := c.url(set, q.values())
	for link != "" {
		pg, err := c.page(ctx, op, link, c.preferHeader())
		if err != nil {
			return err
		}
		for _, r := range pg.Value {
			if err := fn(r); err != nil {
				return err
			}
		}
		link = pg.NextLink
	}
	return nil
}

func (c *Client) page(ctx context.Context, op, link string, h http.Header) (page, error) {
	if !c.sameService(link) {
		return page{}, invalidResponse(op, 0, "paging link points outside the service root")
	}
	res, err := c.send(ctx, op, call{method: http.MethodGet, url: link, header: h, idempotent: true})
	if err != nil {
		return page{}, err
	}
	pg, hasValue, err := decodePage(op, res)
	if err != nil {
		return page{}, err
	}
	if !hasValue {
		return page{}, invalidResponse(op, res.status, "collection answer without a value array")
	}
	return pg, nil
}

// UpsertMode chooses what an upsert may do.
type UpsertMode int

const (
	// UpsertAny creates the row or updates it.
	UpsertAny UpsertMode = iota
	// UpdateOnly sends If-Match: * so a missing row is a not_found error.
	UpdateOnly
	// CreateOnly sends If-None-Match: * so an existing row is a conflict.
	CreateOnly
)

// UpsertOptions tunes Upsert.
type UpsertOptions struct {
	Mode UpsertMode
	// IfMatch is an ETag for optimistic concurrency (update only; a
	// changed row is a conflict error).
	IfMatch string
	// Select names the attributes of the representation returned. When
	// empty, the representation is minimal (the key attributes and
	// versionnumber; Dataverse always adds the primary key) unless
	// FullRecord is set.
	Select []string
	// FullRecord returns every attribute of the written row.
	FullRecord bool
}

// UpsertResult says what an upsert did.
type UpsertResult struct {
	ID      string
	ETag    string
	Created bool // 201 Created; false means an existing row was updated (200)
	Record  Record
}

func upsertCall(c *Client, t Target, body []byte, o UpsertOptions) call {
	h := http.Header{}
	h.Set("Prefer", "return=representation")
	switch {
	case o.IfMatch != "":
		h.Set("If-Match", o.IfMatch)
	case o.Mode == UpdateOnly:
		h.Set("If-Match", "*")
	case o.Mode == CreateOnly:
		h.Set("If-None-Match", "*")
	}
	q := url.Values{}
	sel := o.Select
	if len(sel) == 0 && !o.FullRecord {
		for n := range t.Key {
			sel = append(sel, n)
		}
		sort.Strings(sel)
		sel = append(sel, "versionnumber")
	}
	if len(sel) > 0 {
		q.Set("$select", strings.Join(sel, ","))
	}
	return call{method: http.MethodPatch, url: c.url(t.path(), q), header: h, body: body, idempotent: true}
}

// Upsert creates or updates the row at t (PATCH with Prefer:
// return=representation) and reports which happened.
func (c *Client) Upsert(ctx context.Context, t Target, rec Record, o UpsertOptions) (UpsertResult, error) {
	op := "upserting " + t.String()
	body, err := fsmaps.EncodeJSON(map[string]any(rec))
	if err != nil {
		return UpsertResult{}, fmt.Errorf("%s: encoding: %w", op, err)
	}
	res, err := c.send(ctx, op, upsertCall(c, t, body, o))
	if err != nil {
		return UpsertResult{}, err
	}
	out, err := upsertResult(op, res)
	if err == nil && out.ID == "" {
		out.ID = idOf(t, out.Record)
	}
	return out, err
}

// idOf finds the row id when the answer carried no OData-EntityId: the
// target's id, or the one GUID-valued "<name>id" column of the
// representation (Dataverse always includes the primary key).
func idOf(t Target, r Record) string {
	if len(t.Key) == 0 {
		return strings.ToLower(t.ID)
	}
	found := ""
	for k, v := range r {
		s, ok := v.(string)
		if !ok || strings.HasPrefix(k, "_") || strings.HasPrefix(k, "@") || !strings.HasSuffix(k, "id") {
			continue
		}
		if _, ok := idFromEntityID("(" + s + ")"); ok {
			if found != "" {
				return ""
			}
			found = strings.ToLower(s)
		}
	}
	return found
}

func upsertResult(op string, res result) (UpsertResult, error) {
	out := UpsertResult{ETag: res.header.Get("ETag")}
	switch res.status {
	case http.StatusCreated:
		out.Created = true
	case http.StatusOK:
	default:
		return out, invalidResponse(op, res.status, "upsert answered %d, want 201 or 200 with a representation", res.status)
	}
	if err := decodeJSON(op, res, &out.Record); err != nil {
		return out, err
	}
	if out.Record == nil {
		return out, invalidResponse(op, res.status, "representation is not a JSON object")
	}
	if e := out.Record.ETag(); e != "" {
		out.ETag = e
	}
	if id, ok := idFromEntityID(res.header.Get("OData-EntityId")); ok {
		out.ID = id
	}
	return out, nil
}

// Delete removes the row at t; etag, when set, must match (If-Match).
func (c *Client) Delete(ctx context.Context, t Target, etag string) error {
	op := "deleting " + t.String()
	h := http.Header{}
	if etag != "" {
		h.Set("If-Match", etag)
	}
	_, err := c.send(ctx, op, call{method: http.MethodDelete, url: c.url(t.path(), nil), header: h, idempotent: true})
	return err
}
