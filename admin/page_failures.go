package admin

import (
	"errors"
	"net/http"
	"net/url"
	"strconv"

	"github.com/fhirsync/fhirsync/logs"
)

// failuresMaxOpened bounds the payload captures one view of the failures
// page opens for a PHI holder (one per error code and group), each an
// entry in the audit trail.
const failuresMaxOpened = 20

// failureGroupView is one group of the failures page with what the page
// says about it.
type failureGroupView struct {
	logs.FailureGroup
	Meaning, Action string
	// LogsURL is the sync log filtered to the group's decisions.
	LogsURL string
	Errors  []failureErrorView
}

// failureErrorView is one endpoint error code of a group.
type failureErrorView struct {
	logs.FailureError
	// Full is the endpoint's whole message, values included, opened from
	// the payload capture for a PHI holder; empty otherwise.
	Full string
	// Note says why the whole message is not shown, when it is not.
	Note string
}

type failuresData struct {
	logs.Failures
	Groups []failureGroupView
	// Map and Reason are the filter.
	Map, Reason string
	Reasons     []logs.Reason
	PHI         bool
}

// failuresPage lists what is failing now: the records whose latest
// decision is failed or dead-lettered, grouped by reason, entity map and
// direction, with the endpoints' own error codes and messages. Messages
// are shown redacted; a PHI holder also sees the whole message when
// payload capture kept it (each opening audited).
func (a *app) failuresPage(w http.ResponseWriter, r *http.Request) {
	q := r.URL.Query()
	f := logs.FailureFilter{EntityMap: q.Get("map"), Reason: logs.ReasonCode(q.Get("reason")), Examples: 10}
	if f.Reason != "" {
		if _, ok := logs.LookupReason(f.Reason); !ok {
			a.renderError(w, r, http.StatusBadRequest, "Unknown reason code; choose one from the list.")
			return
		}
	}
	res, err := a.data.logs.FailingNow(r.Context(), f)
	if err != nil {
		a.serverError(w, r, "listing failures", err)
		return
	}
	u, _ := currentUser(r)
	d := failuresData{Failures: res, Map: f.EntityMap, Reason: string(f.Reason), PHI: u.can(permPHI)}
	for _, rs := range logs.Reasons() {
		if rs.Allows(logs.OutcomeFailed) || rs.Allows(logs.OutcomeDeadLettered) {
			d.Reasons = append(d.Reasons, rs)
		}
	}
	opened := 0
	for _, g := range res.Groups {
		gv := failureGroupView{FailureGroup: g}
		if rs, ok := logs.LookupReason(g.Reason); ok {
			gv.Meaning, gv.Action = rs.Meaning, rs.Action
		}
		lq := url.Values{"reason": {string(g.Reason)}, "map": {g.EntityMap}, "direction": {string(g.Direction)}}
		gv.LogsURL = "/logs?" + lq.Encode()
		for _, e := range g.Errors {
			ev := failureErrorView{FailureError: e}
			switch {
			case e.Code == "" && e.Message == "":
			case !d.PHI:
				ev.Note = "Values in the message are hidden: showing them needs the PHI permission."
			case opened >= failuresMaxOpened:
				ev.Note = "Open the decision to see the whole message."
			default:
				opened++
				ev.Full, ev.Note = a.fullTargetMessage(r, u, e.Decision)
			}
			gv.Errors = append(gv.Errors, ev)
		}
		d.Groups = append(d.Groups, gv)
	}
	a.render(w, r, http.StatusOK, "failures", "Failing now", d)
}

// apiFailures is the failures page as JSON. Messages are redacted for
// every role: the whole message is read one decision at a time, audited,
// through the capture.
func (a *app) apiFailures(w http.ResponseWriter, r *http.Request) {
	q := r.URL.Query()
	f := logs.FailureFilter{EntityMap: q.Get("map"), Reason: logs.ReasonCode(q.Get("reason"))}
	if f.Reason != "" {
		if _, ok := logs.LookupReason(f.Reason); !ok {
			a.renderError(w, r, http.StatusBadRequest, "Unknown reason code.")
			return
		}
	}
	res, err := a.data.logs.FailingNow(r.Context(), f)
	if err != nil {
		a.serverError(w, r, "listing failures", err)
		return
	}
	if res.Groups == nil {
		res.Groups = []logs.FailureGroup{}
	}
	writeJSON(w, http.StatusOK, res)
}

// fullTargetMessage opens the endpoint's whole message of decision id
// from its payload capture, for a PHI holder; the sync log records the
// reading in the audit trail. When it cannot, it says why.
func (a *app) fullTargetMessage(r *http.Request, u User, id int64) (full, note string) {
	c, err := a.data.logs.ReadCapture(r.Context(), principal{u}, id)
	switch {
	case errors.Is(err, logs.ErrNotFound):
		return "", "The whole message is kept only while payload capture is on (logs.capture.enabled); this one was not captured or has expired."
	case errors.Is(err, logs.ErrUnknownKey), errors.Is(err, logs.ErrWrongKey), errors.Is(err, logs.ErrTampered):
		return "", "The captured message cannot be opened: " + err.Error() + "."
	case err != nil:
		a.log.Error("reading a payload capture", "decision_id", strconv.FormatInt(id, 10), "error", err)
		return "", "The captured message could not be read; the process log has details."
	case len(c.Snapshots.Error) == 0:
		return "", "The payload capture of this decision holds no error message."
	}
	return string(c.Snapshots.Error), ""
}
