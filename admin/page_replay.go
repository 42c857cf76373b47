package admin

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"net/http"
	"net/url"
	"slices"
	"strconv"
	"strings"

	"github.com/fhirsync/fhirsync/agent"
	"github.com/fhirsync/fhirsync/logs"
	"github.com/fhirsync/fhirsync/queues"
)

// Replayer sends records through the agent again; *agent.Replayer is one.
// A dry run (opts.DryRun) sends nothing and says what would happen.
type Replayer interface {
	// Records replays records named side:Type/id.
	Records(ctx context.Context, refs []string, opts agent.ReplayOptions) (agent.ReplayResult, error)
	// FromLog replays the source records of the decisions a query matches.
	FromLog(ctx context.Context, q agent.LogQuery, opts agent.ReplayOptions) (agent.ReplayResult, error)
}

// replayLimit bounds the records one replay from the admin app sends.
const replayLimit = 5000

// replayForm is the replay form as typed: records one a line, or a sync
// log filter (the explorer's fields) with a time range.
type replayForm struct {
	Mode    string // "records" or "filter"
	Records string
	Query   logQuery
}

// values renders the form for hidden fields and links.
func (f replayForm) values() url.Values {
	v := f.Query.values()
	v.Set("mode", f.Mode)
	if f.Records != "" {
		v.Set("records", f.Records)
	}
	return v
}

// Fields are the form's values as name/value pairs, sorted, for the
// hidden inputs of the confirmation.
func (f replayForm) Fields() [][2]string {
	v := f.values()
	var out [][2]string
	for _, k := range slices.Sorted(maps.Keys(v)) {
		out = append(out, [2]string{k, v.Get(k)})
	}
	return out
}

// recordRef reads one line of the records box: side:Type/id, or Type/id
// (a capitalised type is a FHIR resource type, a lower-case one a CRM
// entity), or a FHIR URL.
func recordRef(line string) (string, error) {
	line = strings.TrimSpace(line)
	if side, rest, ok := strings.Cut(line, ":"); ok && (side == string(queues.SideFHIR) || side == string(queues.SideCRM)) {
		if _, err := agent.ParseRecordRef(side + ":" + rest); err != nil {
			return "", err
		}
		return side + ":" + rest, nil
	}
	typ, id := parseRecord(line)
	if typ == "" {
		return "", fmt.Errorf("%q: write it as Patient/123, contact/<id>, fhir:Type/id or crm:entity/id", clipText(line, 80))
	}
	side := queues.SideCRM
	if typ[0] >= 'A' && typ[0] <= 'Z' {
		side = queues.SideFHIR
	}
	ref := string(side) + ":" + typ + "/" + id
	if _, err := agent.ParseRecordRef(ref); err != nil {
		return "", err
	}
	return ref, nil
}

func clipText(s string, n int) string {
	if len(s) > n {
		return strings.ToValidUTF8(s[:n], "") + "…"
	}
	return s
}

// readReplayForm reads the form from values (the query string of GET
// /replay, the body of the POSTs) into what a replay needs: refs or a log
// query. Problems are said per field.
func readReplayForm(v url.Values) (replayForm, []string, *agent.LogQuery, *filterError) {
	f := replayForm{Mode: v.Get("mode"), Records: strings.TrimSpace(v.Get("records"))}
	var bad filterError
	if f.Mode == "" {
		f.Mode = "filter"
		if f.Records != "" {
			f.Mode = "records"
		}
	}
	q, filter, err := logFilter(&http.Request{URL: &url.URL{RawQuery: v.Encode()}})
	f.Query = q
	var fe *filterError
	if errors.As(err, &fe) {
		bad = *fe
	}
	switch f.Mode {
	case "records":
		var refs []string
		for _, line := range strings.Split(f.Records, "\n") {
			if strings.TrimSpace(line) == "" {
				continue
			}
			ref, err := recordRef(line)
			if err != nil {
				bad.add("records", err.Error())
				break
			}
			refs = append(refs, ref)
		}
		if len(refs) == 0 && bad.fields["records"] == "" {
			bad.add("records", "name at least one record")
		}
		if len(refs) > replayLimit {
			bad.add("records", fmt.Sprintf("at most %d records at once", replayLimit))
		}
		if len(bad.order) > 0 {
			return f, nil, nil, &bad
		}
		return f, refs, nil, nil
	case "filter":
		// A replay takes the records the filter names, not their linked
		// records on the other side.
		filter.Linked = false
		filter.RecordPrefix = filter.Record != "" && v.Get("match") == "prefix"
		if q == (logQuery{}) {
			bad.add("outcome", "choose at least one filter (an outcome, a reason, a map, a record or a time range)")
		}
		if len(bad.order) > 0 {
			return f, nil, nil, &bad
		}
		return f, nil, &agent.LogQuery{Filter: filter, Limit: replayLimit}, nil
	default:
		bad.add("mode", "must be records or filter")
		return f, nil, nil, &bad
	}
}

type replayData struct {
	Form     replayForm
	Problems map[string]string
	Error    string
	Notice   string
	Outcomes []logs.Outcome
	Reasons  []logs.Reason
	Maps     []string
	// Plan is the dry run's result; nil before one.
	Plan *agent.ReplayResult
	// Available is false when this process cannot replay.
	Available bool
}

func (a *app) replayData(f replayForm) replayData {
	d := replayData{Form: f, Outcomes: logs.Outcomes(), Reasons: logs.Reasons(), Available: a.data.replay != nil}
	if set, err := a.data.maps.Current(context.Background()); err == nil {
		for _, m := range set.Maps() {
			d.Maps = append(d.Maps, m.Name())
		}
	}
	return d
}

// replayPage is the replay form, filled from the query string, so that a
// filtered log view can link to "replay these".
func (a *app) replayPage(w http.ResponseWriter, r *http.Request) {
	v := r.URL.Query()
	f := replayForm{Mode: v.Get("mode"), Records: v.Get("records")}
	if f.Mode == "" {
		f.Mode = "filter"
		if f.Records != "" {
			f.Mode = "records"
		}
	}
	f.Query, _, _ = logFilter(r)
	d := a.replayData(f)
	if v.Get("ok") == "sent" {
		d.Notice = fmt.Sprintf("%s record(s) sent to the agent again. The replay is in the audit trail; each record gets a new decision in the sync log.", v.Get("n"))
	}
	a.render(w, r, http.StatusOK, "replay", "Replay", d)
}

// replayPreview is the dry run: which records, which maps, the decision
// each would get. Nothing is sent; the dry run is audited.
func (a *app) replayPreview(w http.ResponseWriter, r *http.Request) {
	a.replayRun(w, r, true)
}

// replayPost sends the replay the dry run showed.
func (a *app) replayPost(w http.ResponseWriter, r *http.Request) {
	a.replayRun(w, r, false)
}

func (a *app) replayRun(w http.ResponseWriter, r *http.Request, dry bool) {
	if err := r.ParseForm(); err != nil {
		a.renderError(w, r, http.StatusBadRequest, "The form could not be read.")
		return
	}
	f, refs, q, bad := readReplayForm(r.PostForm)
	d := a.replayData(f)
	if bad != nil {
		d.Problems, d.Error = bad.fields, bad.Error()
		a.render(w, r, http.StatusBadRequest, "replay", "Replay", d)
		return
	}
	if a.data.replay == nil {
		d.Error = "Replay is not available in this process: it has no queues to send to."
		a.render(w, r, http.StatusServiceUnavailable, "replay", "Replay", d)
		return
	}
	if !dry && r.PostFormValue("confirm") != "yes" {
		d.Error = "Run the dry run and confirm it first."
		a.render(w, r, http.StatusBadRequest, "replay", "Replay", d)
		return
	}
	res, err := a.runReplay(r, refs, q, dry)
	switch {
	case errors.Is(err, logs.ErrBadFilter), errors.Is(err, agent.ErrBadRecordRef):
		d.Error = err.Error()
		a.render(w, r, http.StatusBadRequest, "replay", "Replay", d)
		return
	case err != nil && (dry || res.Sent == 0):
		a.serverError(w, r, "replaying", err)
		return
	case err != nil:
		a.log.Error("replay partly sent", "sent", res.Sent, "records", len(res.Refs), "error", err)
	}
	if dry {
		d.Plan = &res
		a.render(w, r, http.StatusOK, "replay", "Replay: dry run", d)
		return
	}
	http.Redirect(w, r, "/replay?ok=sent&n="+strconv.Itoa(res.Sent), http.StatusSeeOther)
}

// replayRequest is the body of POST /api/v1/replay: records, or a filter
// with the log explorer's field names (outcome, reason, map, direction,
// record, match, from, to, key_name, key_value).
type replayRequest struct {
	Records []string          `json:"records"`
	Filter  map[string]string `json:"filter"`
	// DryRun says what would be sent and sends nothing.
	DryRun bool `json:"dry_run"`
}

func (a *app) apiReplay(w http.ResponseWriter, r *http.Request) {
	var req replayRequest
	if !a.decodeJSON(w, r, &req) {
		return
	}
	v := url.Values{}
	switch {
	case len(req.Records) > 0 && len(req.Filter) > 0:
		a.renderError(w, r, http.StatusBadRequest, "Give records or a filter, not both.")
		return
	case len(req.Records) > 0:
		v.Set("mode", "records")
		v.Set("records", strings.Join(req.Records, "\n"))
	default:
		v.Set("mode", "filter")
		for k, s := range req.Filter {
			v.Set(k, s)
		}
	}
	_, refs, q, bad := readReplayForm(v)
	if bad != nil {
		a.renderError(w, r, http.StatusBadRequest, bad.Error())
		return
	}
	if a.data.replay == nil {
		a.renderError(w, r, http.StatusServiceUnavailable, "Replay is not available in this process: it has no queues to send to.")
		return
	}
	res, err := a.runReplay(r, refs, q, req.DryRun)
	switch {
	case errors.Is(err, logs.ErrBadFilter), errors.Is(err, agent.ErrBadRecordRef):
		a.renderError(w, r, http.StatusBadRequest, err.Error())
		return
	case err != nil && (req.DryRun || res.Sent == 0):
		a.serverError(w, r, "replaying", err)
		return
	}
	if res.Refs == nil {
		res.Refs = []string{}
	}
	writeJSON(w, http.StatusOK, map[string]any{"records": res.Refs, "sent": res.Sent, "truncated": res.Truncated,
		"dry_run": res.DryRun, "plans": res.Plans})
}

// runReplay replays the records refs names or, when refs is nil, the
// records the log query q finds, as the signed-in user.
func (a *app) runReplay(r *http.Request, refs []string, q *agent.LogQuery, dryRun bool) (agent.ReplayResult, error) {
	opts := agent.ReplayOptions{Actor: actor(r), DryRun: dryRun}
	if refs != nil {
		return a.data.replay.Records(r.Context(), refs, opts)
	}
	return a.data.replay.FromLog(r.Context(), *q, opts)
}
