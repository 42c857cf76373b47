package admin

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"

	"github.com/fhirsync/fhirsync/logs"
)

// logsPageSize is the number of decisions on one page of the explorer.
const logsPageSize = 50

// logQuery is the explorer's filter as typed, kept to refill the form and
// to build every link on the page, so that paging and exports keep it.
type logQuery struct {
	Direction, Map, Outcome, Reason, From, To, Record, KeyName, KeyValue string
	// Match is "exact" for a record's timeline; empty searches by
	// case-insensitive prefix.
	Match string
	// Conflicts is "1" to show only decisions that name conflicts.
	Conflicts string
}

// values renders q as query parameters, leaving out empty ones.
func (q logQuery) values() url.Values {
	v := url.Values{}
	for k, s := range map[string]string{"direction": q.Direction, "map": q.Map, "outcome": q.Outcome, "reason": q.Reason,
		"from": q.From, "to": q.To, "record": q.Record, "match": q.Match, "key_name": q.KeyName, "key_value": q.KeyValue,
		"conflicts": q.Conflicts} {
		if s != "" {
			v.Set(k, s)
		}
	}
	return v
}

// Encode is the query string, for links.
func (q logQuery) Encode() string { return q.values().Encode() }

// link is path with q's filter and the extra parameters (name, value
// pairs). Templates take it whole as an href: html/template escapes a
// query string interpolated after "?" as one value, which turned "&" and
// "=" into data and dropped every filter.
func (q logQuery) link(path string, extra ...string) string {
	v := q.values()
	for i := 0; i+1 < len(extra); i += 2 {
		v.Set(extra[i], extra[i+1])
	}
	if len(v) == 0 {
		return path
	}
	return path + "?" + v.Encode()
}

// timeLayouts are the accepted forms of from and to, all UTC.
var timeLayouts = []string{time.RFC3339, "2006-01-02T15:04:05", "2006-01-02T15:04", "2006-01-02 15:04:05", "2006-01-02 15:04", "2006-01-02"}

func parseTime(s string) (time.Time, error) {
	for _, l := range timeLayouts {
		if t, err := time.Parse(l, s); err == nil {
			return t.UTC(), nil
		}
	}
	return time.Time{}, fmt.Errorf("%q is not a date and time; write it as 2006-01-02T15:04 or 2006-01-02 (UTC)", s)
}

// filterError lists what is wrong with a filter, by form field, so the
// explorer can say it beside the field.
type filterError struct {
	fields map[string]string // field name → problem
	order  []string
}

func (e *filterError) add(field, problem string) {
	if e.fields == nil {
		e.fields = map[string]string{}
	}
	if _, ok := e.fields[field]; !ok {
		e.order = append(e.order, field)
	}
	e.fields[field] = problem
}

func (e *filterError) Error() string {
	msgs := make([]string, len(e.order))
	for i, f := range e.order {
		msgs[i] = filterLabels[f] + ": " + e.fields[f]
	}
	return strings.Join(msgs, "; ")
}

// filterLabels name the filter fields as the form labels them.
var filterLabels = map[string]string{"from": "From (UTC)", "to": "To (UTC)", "conflicts": "Only with conflicts", "record": "Record",
	"direction": "Direction", "outcome": "Outcome", "reason": "Reason", "match": "Match"}

// parseRecord reads a record search: an id, or a reference such as
// Patient/123, a FHIR URL (https://…/Patient/123/_history/2) or an OData
// key (contacts(…) is not a type name, so it stays an id).
func parseRecord(s string) (typ, id string) {
	s = strings.TrimSpace(s)
	if i := strings.Index(s, "/_history/"); i >= 0 {
		s = s[:i]
	}
	s = strings.TrimSuffix(s, "/")
	i := strings.LastIndex(s, "/")
	if i < 0 {
		return "", s
	}
	head, id := s[:i], s[i+1:]
	if j := strings.LastIndex(head, "/"); j >= 0 {
		head = head[j+1:]
	}
	if !isTypeName(head) || id == "" {
		return "", s
	}
	return head, id
}

// isTypeName says whether s looks like a FHIR resource type or a CRM
// entity logical name.
func isTypeName(s string) bool {
	if s == "" || !(s[0] >= 'a' && s[0] <= 'z' || s[0] >= 'A' && s[0] <= 'Z') {
		return false
	}
	for _, c := range s {
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '_') {
			return false
		}
	}
	return true
}

// logFilter reads the explorer's filter from the query string. A record
// is searched by case-insensitive prefix, or exactly with match=exact;
// either way the timeline takes in the records linked to it. The error is
// a *filterError.
func logFilter(r *http.Request) (logQuery, logs.Filter, error) {
	v := r.URL.Query()
	q := logQuery{Direction: v.Get("direction"), Map: strings.TrimSpace(v.Get("map")), Outcome: v.Get("outcome"), Reason: v.Get("reason"),
		From: strings.TrimSpace(v.Get("from")), To: strings.TrimSpace(v.Get("to")), Record: strings.TrimSpace(v.Get("record")),
		KeyName: strings.TrimSpace(v.Get("key_name")), KeyValue: strings.TrimSpace(v.Get("key_value"))}
	f := logs.Filter{Direction: logs.Direction(q.Direction), EntityMap: q.Map, Outcome: logs.Outcome(q.Outcome),
		Reason: logs.ReasonCode(q.Reason), MessageID: v.Get("message_id")}
	var bad filterError
	switch v.Get("match") {
	case "", "prefix":
		f.RecordPrefix = true
	case "exact":
		q.Match = "exact"
	default:
		bad.add("match", "must be prefix or exact")
	}
	if q.Record != "" {
		f.RecordType, f.Record = parseRecord(q.Record)
		f.Linked = true
	} else {
		f.RecordPrefix = false
	}
	switch v.Get("conflicts") {
	case "":
	case "1", "true", "on":
		q.Conflicts, f.Conflicts = "1", true
	default:
		bad.add("conflicts", "must be 1 or left out")
	}
	var err error
	if q.From != "" {
		if f.From, err = parseTime(q.From); err != nil {
			bad.add("from", err.Error())
		}
	}
	if q.To != "" {
		if f.To, err = parseTime(q.To); err != nil {
			bad.add("to", err.Error())
		}
	}
	if !f.From.IsZero() && !f.To.IsZero() && !f.From.Before(f.To) {
		bad.add("to", "must be later than From")
	}
	if q.KeyValue != "" {
		if q.KeyName == "" {
			q.KeyName = "mrn"
		}
		f.BusinessKey = logs.BusinessKey{Name: q.KeyName, Value: q.KeyValue}
	}
	if len(bad.order) > 0 {
		return q, f, &bad
	}
	return q, f, nil
}

// logsError maps a query error to what the user can fix.
func (a *app) logsError(w http.ResponseWriter, r *http.Request, err error) {
	switch {
	case errors.Is(err, logs.ErrBadCursor):
		a.renderError(w, r, http.StatusBadRequest, "The page cursor is not valid.")
	case errors.Is(err, logs.ErrBadFilter):
		a.renderError(w, r, http.StatusBadRequest, "A filter value is not valid: "+err.Error())
	case errors.Is(err, logs.ErrKeysOff):
		a.renderError(w, r, http.StatusBadRequest, "Business keys are not recorded here (logs.key_secret is not set); search by record id instead.")
	case errors.Is(err, logs.ErrNotFound):
		a.renderError(w, r, http.StatusNotFound, "No such decision.")
	default:
		a.serverError(w, r, "reading the sync log", err)
	}
}

type logsData struct {
	Query     logQuery
	Page      logs.Page
	After     string
	Outcomes  []logs.Outcome
	Reasons   []logs.Reason
	Policy    policyView
	CanExport bool
	Timeline  bool
	// Errors are the filter's problems by field; the table is left out
	// while there are any.
	Errors    map[string]string
	ErrorList []fieldProblem
	// Links carry the filter: exports, the first page and the next.
	ExportCSV, ExportNDJSON, First, Next string
	// Replay is the replay form filled with this filter, for holders of
	// replay.send when a filter is set.
	Replay string
}

// fieldProblem is one line of the form's error summary; Anchor is the
// id of the field it links to.
type fieldProblem struct{ Label, Problem, Anchor string }

// policyView states the retention policy in words.
type policyView struct {
	Decisions string
	Capture   string
	Keys      string
}

func (a *app) policy() policyView {
	p := a.data.logs.Policy()
	v := policyView{Decisions: fmt.Sprintf("Decisions are kept for %s, then pruned (schedule %s, UTC).", days(p.MaxAge), p.Schedule),
		Capture: "Payload capture is off: no record values are stored.",
		Keys:    "Business keys are not recorded; search by record id."}
	if p.CaptureEnabled {
		v.Capture = fmt.Sprintf("Payload capture is on: snapshots are encrypted and kept for %s, visible only with the PHI permission.", days(p.CaptureMaxAge))
	}
	if p.BusinessKeys {
		v.Keys = "Business keys are recorded as keyed hashes, never in clear."
	}
	return v
}

func days(d time.Duration) string {
	if d >= 24*time.Hour && d%(24*time.Hour) == 0 {
		n := int(d / (24 * time.Hour))
		if n == 1 {
			return "1 day"
		}
		return fmt.Sprintf("%d days", n)
	}
	return d.String()
}

func (a *app) logsPage(w http.ResponseWriter, r *http.Request) {
	u, _ := currentUser(r)
	q, f, err := logFilter(r)
	data := logsData{Query: q, Outcomes: logs.Outcomes(), Reasons: logs.Reasons(), Policy: a.policy(),
		CanExport: u.can(permLogsExport), Timeline: f.Record != "" || f.BusinessKey.Value != ""}
	var bad *filterError
	if errors.As(err, &bad) {
		data.Errors = bad.fields
		for _, f := range bad.order {
			p := fieldProblem{Label: filterLabels[f], Problem: bad.fields[f]}
			if f == "from" || f == "to" {
				p.Anchor = "f-" + f
			}
			data.ErrorList = append(data.ErrorList, p)
		}
		a.render(w, r, http.StatusBadRequest, "logs", "Sync logs", data)
		return
	}
	data.After = r.URL.Query().Get("after")
	data.Page, err = a.data.logs.Search(r.Context(), f, data.After, logsPageSize)
	if err != nil {
		a.logsError(w, r, err)
		return
	}
	data.ExportCSV, data.ExportNDJSON = q.link("/logs/export", "format", "csv"), q.link("/logs/export", "format", "ndjson")
	data.First = q.link("/logs")
	if u.can(permReplay) && q.Encode() != "" {
		data.Replay = q.link("/replay", "mode", "filter")
	}
	if data.Page.Next != "" {
		data.Next = q.link("/logs", "after", data.Page.Next)
	}
	a.render(w, r, http.StatusOK, "logs", "Sync logs", data)
}

// decisionID reads the {id} path value.
func decisionID(r *http.Request) (int64, bool) {
	id, err := strconv.ParseInt(r.PathValue("id"), 10, 64)
	return id, err == nil && id > 0
}

// decisionView is a decision with its reason explained.
type decisionView struct {
	logs.Decision
	Meaning string `json:"meaning"`
	Action  string `json:"suggested_action"`
}

func (a *app) decision(r *http.Request) (decisionView, error) {
	id, ok := decisionID(r)
	if !ok {
		return decisionView{}, logs.ErrNotFound
	}
	d, err := a.data.logs.Get(r.Context(), id)
	if err != nil {
		return decisionView{}, err
	}
	v := decisionView{Decision: d}
	if rs, ok := logs.LookupReason(d.Reason); ok {
		v.Meaning, v.Action = rs.Meaning, rs.Action
	}
	return v, nil
}

type decisionData struct {
	D      decisionView
	PHI    bool
	Policy policyView
	// TraceURL is the tracing backend's page of the decision's trace;
	// empty when it has none or admin.trace_url is not set.
	TraceURL string
}

// traceIDPlaceholder is where admin.trace_url puts a trace id.
const traceIDPlaceholder = "{trace_id}"

// traceLink fills a trace URL template with a trace id (hex, which needs
// no escaping).
func traceLink(template, traceID string) string {
	return strings.ReplaceAll(template, traceIDPlaceholder, url.QueryEscape(traceID))
}

func (a *app) decisionPage(w http.ResponseWriter, r *http.Request) {
	v, err := a.decision(r)
	if err != nil {
		a.logsError(w, r, err)
		return
	}
	u, _ := currentUser(r)
	data := decisionData{D: v, PHI: u.can(permPHI), Policy: a.policy()}
	if v.TraceID != "" && a.cfg.TraceURL != "" {
		data.TraceURL = traceLink(a.cfg.TraceURL, v.TraceID)
	}
	a.render(w, r, http.StatusOK, "decision", fmt.Sprintf("Decision %d", v.ID), data)
}

type captureData struct {
	ID             int64
	CapturedAt     time.Time
	Source, Target string
	// Error is the endpoint's whole error message, values included.
	Error string
	// Changes are the decision's changed fields with the values written.
	Changes []changedValue
}

// capturePage shows a decision's captured payloads. The route needs the
// PHI permission; the sync log records every read in the audit trail.
func (a *app) capturePage(w http.ResponseWriter, r *http.Request) {
	id, ok := decisionID(r)
	if !ok {
		a.renderError(w, r, http.StatusNotFound, "No such decision.")
		return
	}
	u, _ := currentUser(r)
	c, err := a.data.logs.ReadCapture(r.Context(), principal{u}, id)
	switch {
	case errors.Is(err, logs.ErrNotFound):
		a.renderError(w, r, http.StatusNotFound, "This decision has no captured payload (capture is off, or it has expired).")
		return
	case errors.Is(err, logs.ErrForbidden):
		a.renderError(w, r, http.StatusForbidden, "Your account does not hold the PHI permission.")
		return
	case errors.Is(err, logs.ErrUnknownKey), errors.Is(err, logs.ErrWrongKey), errors.Is(err, logs.ErrTampered):
		a.renderError(w, r, http.StatusConflict, "The captured payload cannot be opened: "+err.Error()+".")
		return
	case err != nil:
		a.serverError(w, r, "reading a payload capture", err)
		return
	}
	a.render(w, r, http.StatusOK, "capture", fmt.Sprintf("Captured payload of decision %d", id),
		captureData{ID: id, CapturedAt: c.CapturedAt, Source: prettyJSON(c.Snapshots.Source), Target: prettyJSON(c.Snapshots.Target), Error: string(c.Snapshots.Error),
			Changes: a.capturedChanges(r.Context(), id, c.Snapshots.Target)})
}

// prettyJSON indents JSON, or returns the bytes as text.
func prettyJSON(b []byte) string {
	var buf bytes.Buffer
	if json.Indent(&buf, b, "", "  ") == nil {
		return buf.String()
	}
	return string(b)
}

// logsExport streams the filtered decisions as CSV or NDJSON, and records
// the export.
func (a *app) logsExport(w http.ResponseWriter, r *http.Request) {
	format := logs.CSV
	if s := r.URL.Query().Get("format"); s != "" {
		var err error
		if format, err = logs.ParseFormat(s); err != nil {
			a.renderError(w, r, http.StatusBadRequest, "The export format must be csv or ndjson.")
			return
		}
	}
	q, f, err := logFilter(r)
	if err != nil {
		a.renderError(w, r, http.StatusBadRequest, err.Error())
		return
	}
	if f.BusinessKey.Value != "" && !a.data.logs.Policy().BusinessKeys {
		a.logsError(w, r, logs.ErrKeysOff)
		return
	}
	summary := q.values()
	summary.Del("key_value") // an identifier: PHI stays out of the trail
	a.record(r, "logs.export", "", "", "", fmt.Sprintf("format %s, filter %s", format, summary.Encode()))
	ctype := map[logs.Format]string{logs.CSV: "text/csv; charset=utf-8", logs.NDJSON: "application/x-ndjson"}[format]
	w.Header().Set("Content-Type", ctype)
	w.Header().Set("Content-Disposition", fmt.Sprintf(`attachment; filename="fhirsync-decisions.%s"`, format))
	if _, err := a.data.logs.Export(r.Context(), w, format, f); err != nil {
		// The status is sent; the truncated file is all the client can get.
		a.log.Error("exporting the sync log", "error", err)
	}
}

func (a *app) apiLogs(w http.ResponseWriter, r *http.Request) {
	_, f, err := logFilter(r)
	if err != nil {
		a.renderError(w, r, http.StatusBadRequest, err.Error())
		return
	}
	limit := logsPageSize
	if s := r.URL.Query().Get("limit"); s != "" {
		if limit, err = strconv.Atoi(s); err != nil || limit < 1 || limit > logs.MaxPageSize {
			a.renderError(w, r, http.StatusBadRequest, fmt.Sprintf("limit must be 1 to %d.", logs.MaxPageSize))
			return
		}
	}
	page, err := a.data.logs.Search(r.Context(), f, r.URL.Query().Get("after"), limit)
	if err != nil {
		a.logsError(w, r, err)
		return
	}
	if page.Decisions == nil {
		page.Decisions = []logs.Decision{}
	}
	writeJSON(w, http.StatusOK, page)
}

func (a *app) apiDecision(w http.ResponseWriter, r *http.Request) {
	v, err := a.decision(r)
	if err != nil {
		a.logsError(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, v)
}
