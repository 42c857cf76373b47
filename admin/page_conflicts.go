package admin

import (
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"slices"
	"strconv"

	"github.com/fhirsync/fhirsync/logs"
)

// conflictsPageSize is the number of held conflicts on one page.
const conflictsPageSize = 50

// conflictView is a held conflict with what the pages say about it.
type conflictView struct {
	logs.HeldConflict
}

// Subject names what conflicts: the attribute, or the whole record and
// the side that deleted it.
func (c conflictView) Subject() string {
	if c.DeleteConflict() {
		return fmt.Sprintf("whole record (deleted in %s)", sideLabel(c.DeletedSide))
	}
	return c.Attribute
}

// Outcome says in words what the resolution does.
func (c conflictView) Outcome() string {
	switch {
	case c.Resolution == "":
		return ""
	case c.DeleteConflict() && c.AppliesDelete():
		return "apply the delete"
	case c.DeleteConflict():
		return "keep the record"
	}
	return "take the " + sideLabel(c.Resolution) + " value"
}

func sideLabel(side string) string {
	if side == logs.SideFHIR {
		return "FHIR"
	}
	return "CRM"
}

// conflictChoice is one button of the resolution form.
type conflictChoice struct {
	Take, Label, ID string
}

// Choices are the resolution buttons: take either side's value or, for a
// delete conflict, apply the delete or keep the record.
func (c conflictView) Choices() []conflictChoice {
	if c.DeleteConflict() {
		other := logs.SideCRM
		if c.DeletedSide == logs.SideCRM {
			other = logs.SideFHIR
		}
		return []conflictChoice{{c.DeletedSide, "Apply the delete", "apply-delete"}, {other, "Keep the record", "keep-record"}}
	}
	return []conflictChoice{{logs.SideFHIR, "Take FHIR value", "take-fhir"}, {logs.SideCRM, "Take CRM value", "take-crm"}}
}

// conflictID reads the {id} path value.
// conflictID is the held conflict's id in the path; when there is none it
// answers 404 and reports false.
func (a *app) conflictID(w http.ResponseWriter, r *http.Request) (int64, bool) {
	id, err := strconv.ParseInt(r.PathValue("id"), 10, 64)
	if err != nil || id <= 0 {
		a.renderError(w, r, http.StatusNotFound, "No such held conflict.")
		return 0, false
	}
	return id, true
}

// loadConflict reads the held conflict the path names; when it cannot it
// answers the error and reports false.
func (a *app) loadConflict(w http.ResponseWriter, r *http.Request) (logs.HeldConflict, bool) {
	id, ok := a.conflictID(w, r)
	if !ok {
		return logs.HeldConflict{}, false
	}
	c, err := a.data.logs.Conflict(r.Context(), id)
	if err != nil {
		a.conflictsError(w, r, err)
		return logs.HeldConflict{}, false
	}
	return c, true
}

// conflictsError maps a held-conflict error to what the user can fix.
func (a *app) conflictsError(w http.ResponseWriter, r *http.Request, err error) {
	switch {
	case errors.Is(err, logs.ErrNotFound):
		a.renderError(w, r, http.StatusNotFound, "No such held conflict.")
	case errors.Is(err, logs.ErrBadFilter):
		a.renderError(w, r, http.StatusBadRequest, "A filter value is not valid: "+err.Error())
	case errors.Is(err, logs.ErrInvalidConflict):
		a.renderError(w, r, http.StatusBadRequest, "Choose the FHIR or the CRM side.")
	case errors.Is(err, logs.ErrConflictState):
		a.renderError(w, r, http.StatusConflict, "This conflict cannot be resolved now: "+err.Error()+".")
	case errors.Is(err, logs.ErrForbidden):
		a.renderError(w, r, http.StatusForbidden, "Your account does not hold the PHI permission.")
	default:
		a.serverError(w, r, "reading held conflicts", err)
	}
}

// conflictStatusFilter reads ?status=; empty means open and resolved.
func conflictStatusFilter(r *http.Request) (string, error) {
	s := r.URL.Query().Get("status")
	if s != "" && !slices.Contains(logs.ConflictStatuses(), s) {
		return "", fmt.Errorf("%w: status must be one of open, resolved, applied, superseded", logs.ErrBadFilter)
	}
	return s, nil
}

// listConflicts reads one page of held conflicts from the query string
// (status, after, limit) and returns the cursor of the next page, 0 on the
// last.
func (a *app) listConflicts(r *http.Request, limit int) (list []logs.HeldConflict, status string, after, next int64, err error) {
	if status, err = conflictStatusFilter(r); err != nil {
		return nil, "", 0, 0, err
	}
	if s := r.URL.Query().Get("after"); s != "" {
		if after, err = strconv.ParseInt(s, 10, 64); err != nil || after < 0 {
			return nil, "", 0, 0, fmt.Errorf("%w: after must be a conflict id", logs.ErrBadFilter)
		}
	}
	list, err = a.data.logs.Conflicts(r.Context(), status, after, limit+1)
	if err != nil {
		return nil, "", 0, 0, err
	}
	if len(list) > limit {
		list = list[:limit]
		next = list[limit-1].ID
	}
	return list, status, after, next, nil
}

type conflictsData struct {
	Conflicts []conflictView
	Status    string
	Statuses  []string
	After     int64
	Next      int64
}

func (a *app) conflictsPage(w http.ResponseWriter, r *http.Request) {
	list, status, after, next, err := a.listConflicts(r, conflictsPageSize)
	if err != nil {
		a.conflictsError(w, r, err)
		return
	}
	d := conflictsData{Status: status, Statuses: logs.ConflictStatuses(), After: after, Next: next}
	for _, c := range list {
		d.Conflicts = append(d.Conflicts, conflictView{c})
	}
	a.render(w, r, http.StatusOK, "conflicts", "Conflicts", d)
}

// sideValue is what the detail page shows of one side's value.
type sideValue struct {
	Shown bool
	Text  string // the value when Shown, else why it is not shown
}

type conflictData struct {
	C          conflictView
	FHIR, CRM  sideValue
	CanResolve bool
}

// conflictValues opens c's values for u when u holds the PHI permission
// and they were kept; otherwise it says why they are not shown. Every
// opening is recorded in the audit trail by the sync log.
func (a *app) conflictValues(r *http.Request, u User, c logs.HeldConflict) (fhir, crm sideValue) {
	why := func(s string) (sideValue, sideValue) { return sideValue{Text: s}, sideValue{Text: s} }
	switch {
	case !u.can(permPHI):
		return why("Hidden: viewing values needs the PHI permission.")
	case !c.ValuesKept && (c.Status == logs.ConflictApplied || c.Status == logs.ConflictSuperseded):
		return why("Not kept: the values are dropped once the conflict is settled.")
	case !c.ValuesKept:
		return why("Not kept: values are stored, encrypted, only when payload capture keys are configured (logs.capture.key).")
	}
	fv, cv, err := a.data.logs.ConflictValues(r.Context(), principal{u}, c.ID)
	switch {
	case errors.Is(err, logs.ErrValuesNotKept):
		return why("Not kept: the values are no longer stored.")
	case errors.Is(err, logs.ErrUnknownKey), errors.Is(err, logs.ErrWrongKey), errors.Is(err, logs.ErrTampered):
		return why("The stored values cannot be opened: " + err.Error() + ".")
	case err != nil:
		a.log.Error("reading held conflict values", "conflict_id", c.ID, "error", err)
		return why("The values could not be read; the process log has details.")
	}
	return sideValue{Shown: true, Text: valueText(fv)}, sideValue{Shown: true, Text: valueText(cv)}
}

// valueText renders a value for people: text as it is, anything else as
// indented JSON, a missing value as such.
func valueText(v any) string {
	switch x := v.(type) {
	case nil:
		return "(no value)"
	case string:
		return x
	}
	b, err := json.MarshalIndent(v, "", "  ")
	if err != nil {
		return fmt.Sprint(v)
	}
	return string(b)
}

func (a *app) conflictPage(w http.ResponseWriter, r *http.Request) {
	c, ok := a.loadConflict(w, r)
	if !ok {
		return
	}
	u, _ := currentUser(r)
	d := conflictData{C: conflictView{c}, CanResolve: u.can(permConflictsResolve) && c.Status == logs.ConflictOpen}
	d.FHIR, d.CRM = a.conflictValues(r, u, c)
	a.render(w, r, http.StatusOK, "conflict", fmt.Sprintf("Conflict %d", c.ID), d)
}

// resolveConflictPost records the signed-in user's choice and returns to
// the conflict.
func (a *app) resolveConflictPost(w http.ResponseWriter, r *http.Request) {
	if err := r.ParseForm(); err != nil {
		a.renderError(w, r, http.StatusBadRequest, "The form could not be read.")
		return
	}
	take := r.PostFormValue("take")
	if take != logs.SideFHIR && take != logs.SideCRM {
		a.renderError(w, r, http.StatusBadRequest, "Choose the FHIR or the CRM side.")
		return
	}
	id, ok := a.conflictID(w, r)
	if !ok {
		return
	}
	if err := a.data.logs.ResolveConflict(r.Context(), id, take, actor(r)); err != nil {
		a.conflictsError(w, r, err)
		return
	}
	http.Redirect(w, r, fmt.Sprintf("/conflicts/%d?done=conflict", id), http.StatusSeeOther)
}

// apiConflicts is GET /api/v1/conflicts?status=&after=&limit=.
func (a *app) apiConflicts(w http.ResponseWriter, r *http.Request) {
	limit := conflictsPageSize
	if s := r.URL.Query().Get("limit"); s != "" {
		n, err := strconv.Atoi(s)
		if err != nil || n < 1 || n >= logs.MaxPageSize {
			a.renderError(w, r, http.StatusBadRequest, fmt.Sprintf("limit must be 1 to %d.", logs.MaxPageSize-1))
			return
		}
		limit = n
	}
	list, _, _, next, err := a.listConflicts(r, limit)
	if err != nil {
		a.conflictsError(w, r, err)
		return
	}
	if list == nil {
		list = []logs.HeldConflict{}
	}
	body := map[string]any{"conflicts": list}
	if next != 0 {
		body["next"] = next
	}
	writeJSON(w, http.StatusOK, body)
}

func (a *app) apiConflict(w http.ResponseWriter, r *http.Request) {
	c, ok := a.loadConflict(w, r)
	if !ok {
		return
	}
	writeJSON(w, http.StatusOK, c)
}

// apiConflictValues is GET /api/v1/conflicts/{id}/values: both sides'
// values, for holders of the PHI permission; every read is audited.
func (a *app) apiConflictValues(w http.ResponseWriter, r *http.Request) {
	id, ok := a.conflictID(w, r)
	if !ok {
		return
	}
	u, _ := currentUser(r)
	fv, cv, err := a.data.logs.ConflictValues(r.Context(), principal{u}, id)
	switch {
	case errors.Is(err, logs.ErrValuesNotKept):
		a.renderError(w, r, http.StatusNotFound, "The values of this conflict were not kept: they are stored only when payload capture keys are configured, and dropped once the conflict is settled.")
		return
	case errors.Is(err, logs.ErrUnknownKey), errors.Is(err, logs.ErrWrongKey), errors.Is(err, logs.ErrTampered):
		a.renderError(w, r, http.StatusConflict, "The stored values cannot be opened: "+err.Error()+".")
		return
	case err != nil:
		a.conflictsError(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, map[string]any{"id": id, "fhir": fv, "crm": cv})
}

// resolveRequest is the body of POST /api/v1/conflicts/{id}/resolve.
type resolveRequest struct {
	Take string `json:"take"`
}

func (a *app) apiResolveConflict(w http.ResponseWriter, r *http.Request) {
	var req resolveRequest
	if !a.decodeJSON(w, r, &req) {
		return
	}
	if req.Take != logs.SideFHIR && req.Take != logs.SideCRM {
		a.renderError(w, r, http.StatusBadRequest, `take must be "fhir" or "crm".`)
		return
	}
	id, ok := a.conflictID(w, r)
	if !ok {
		return
	}
	if err := a.data.logs.ResolveConflict(r.Context(), id, req.Take, actor(r)); err != nil {
		a.conflictsError(w, r, err)
		return
	}
	c, err := a.data.logs.Conflict(r.Context(), id)
	if err != nil {
		a.conflictsError(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, c)
}
