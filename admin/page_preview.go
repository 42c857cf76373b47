package admin

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"strconv"
	"strings"

	"github.com/fhirsync/fhirsync/logs"
	"github.com/fhirsync/fhirsync/maps"
)

// previewData is the preview page: the form on one side, the result
// beside it.
type previewData struct {
	Info    maps.VersionInfo
	Maps    []mapRow
	PHI     bool
	Form    previewForm
	Preview *previewView
	Error   string
}

// previewForm is what the preview form holds.
type previewForm struct {
	Map        string `json:"map"`
	Direction  string `json:"direction"`
	Input      string `json:"input"`
	Current    string `json:"current"`
	DecisionID int64  `json:"decision_id,omitempty"`
}

// previewView is a preview's result for people and for the API.
type previewView struct {
	Map          string   `json:"map"`
	Decision     string   `json:"decision"`
	Outcome      string   `json:"outcome,omitempty"`
	Reason       string   `json:"reason,omitempty"`
	Meaning      string   `json:"meaning,omitempty"`
	Filter       string   `json:"filter,omitempty"`
	Attribute    string   `json:"attribute,omitempty"`
	MappingError string   `json:"mapping_error,omitempty"`
	InputError   string   `json:"input_error,omitempty"`
	Output       string   `json:"output,omitempty"`
	Changed      []string `json:"changed"`
	// Diff shows each changed CRM attribute's current and mapped value
	// (FHIR → CRM with a current state only).
	Diff   []fieldChange `json:"diff,omitempty"`
	Source string        `json:"source,omitempty"` // "pasted" or "decision N"
}

// fieldChange is one changed target field, values as JSON text.
type fieldChange struct {
	Field  string `json:"field"`
	Before string `json:"before"`
	After  string `json:"after"`
}

// recordDiff pairs the changed CRM attributes' values in the current
// state and in the mapped output.
func recordDiff(current, output []byte, changed []string) []fieldChange {
	var cur, out struct {
		Record map[string]json.RawMessage `json:"record"`
	}
	if json.Unmarshal(current, &cur) != nil || json.Unmarshal(output, &out) != nil {
		return nil
	}
	show := func(v json.RawMessage, ok bool) string {
		if !ok {
			return "(absent)"
		}
		return string(v)
	}
	var diff []fieldChange
	for _, f := range changed {
		before, inCur := cur.Record[f]
		after, inOut := out.Record[f]
		if !inCur && !inOut {
			continue // an expansion map's name, not an attribute
		}
		diff = append(diff, fieldChange{Field: f, Before: show(before, inCur), After: show(after, inOut)})
	}
	return diff
}

// previewError is a preview request that cannot run; status says why.
type previewError struct {
	status int
	msg    string
}

func (e *previewError) Error() string { return e.msg }

// runPreview maps one pasted or logged record with entity map f.Map of
// version n using the one sample runner.
func (a *app) runPreview(r *http.Request, n int, f previewForm) (*previewView, error) {
	doc, _, err := a.data.maps.Version(r.Context(), n)
	if errors.Is(err, maps.ErrNotFound) {
		return nil, &previewError{http.StatusNotFound, "No such map version."}
	}
	if err != nil {
		return nil, err
	}
	set, err := maps.Compile(doc, maps.CompileOptions{})
	if err != nil {
		return nil, &previewError{http.StatusUnprocessableEntity, "This version does not validate; fix it before previewing."}
	}
	m, ok := set.Map(f.Map)
	if !ok {
		return nil, &previewError{http.StatusNotFound, "No such entity map in this version."}
	}
	dir := maps.Direction(f.Direction)
	if dir != maps.FHIRToCRM && dir != maps.CRMToFHIR {
		return nil, &previewError{http.StatusBadRequest, "Choose a direction: fhir-to-crm or crm-to-fhir."}
	}
	in := maps.PreviewInput{Direction: dir, Input: []byte(f.Input)}
	if dir == maps.FHIRToCRM {
		in.Current = []byte(f.Current)
	} else {
		in.Base = []byte(f.Current)
	}
	source := "pasted record"
	if f.DecisionID != 0 {
		u, _ := currentUser(r)
		if !u.can(permPHI) {
			return nil, &previewError{http.StatusForbidden, "Previewing a logged record shows its payload, which needs the PHI permission; paste a record instead."}
		}
		c, err := a.data.logs.ReadCapture(r.Context(), principal{u}, f.DecisionID)
		switch {
		case errors.Is(err, logs.ErrNotFound):
			return nil, &previewError{http.StatusNotFound, fmt.Sprintf("Decision %d has no captured payload (capture is off, or it has expired).", f.DecisionID)}
		case errors.Is(err, logs.ErrUnknownKey), errors.Is(err, logs.ErrWrongKey), errors.Is(err, logs.ErrTampered):
			return nil, &previewError{http.StatusConflict, "The captured payload cannot be opened: " + err.Error() + "."}
		case err != nil:
			return nil, err
		}
		in.Input = c.Snapshots.Source
		if dir == maps.CRMToFHIR {
			in.Input = asCRMState(c.Snapshots.Source)
			in.Base = c.Snapshots.Target
		} else if len(c.Snapshots.Target) > 0 {
			in.Current = asCRMState(c.Snapshots.Target)
		}
		source = fmt.Sprintf("captured payload of decision %d", f.DecisionID)
	} else if strings.TrimSpace(f.Input) == "" {
		return nil, &previewError{http.StatusBadRequest, "Paste a FHIR resource or a CRM record to preview."}
	} else if dir == maps.CRMToFHIR {
		in.Input = asCRMState(in.Input)
	}
	res := maps.Preview(r.Context(), m, in)
	v := &previewView{Map: res.Map, Decision: res.Decision, Filter: res.Filter, Attribute: res.Attribute,
		MappingError: res.MappingError, Changed: res.Changed, Source: source}
	if v.Changed == nil {
		v.Changed = []string{}
	}
	if res.ParseError != nil {
		v.InputError = res.ParseError.Error()
	}
	if res.EvalError != nil {
		v.InputError = "The engine failed: " + res.EvalError.Error()
	}
	if dir == maps.FHIRToCRM && len(bytes.TrimSpace(in.Current)) > 0 && len(res.Output) > 0 {
		v.Diff = recordDiff(in.Current, res.Output, res.Changed)
	}
	if len(res.Output) > 0 {
		var buf bytes.Buffer
		if json.Indent(&buf, res.Output, "", "  ") == nil {
			v.Output = buf.String()
		} else {
			v.Output = string(res.Output)
		}
	}
	outcome, reason := previewDecision(res.Decision, len(bytes.TrimSpace(in.Current)) > 0 || len(bytes.TrimSpace(in.Base)) > 0)
	v.Outcome, v.Reason = string(outcome), string(reason)
	if rs, ok := logs.LookupReason(reason); ok {
		v.Meaning = rs.Meaning
	}
	return v, nil
}

// asCRMState wraps a bare CRM record as {"record": …} unless it already
// has that shape.
func asCRMState(b []byte) []byte {
	var probe map[string]json.RawMessage
	if json.Unmarshal(b, &probe) != nil {
		return b
	}
	if _, ok := probe["record"]; ok {
		return b
	}
	out, err := json.Marshal(map[string]json.RawMessage{"record": b})
	if err != nil {
		return b
	}
	return out
}

// previewDecision is the sync log decision the agent would record for a
// preview's result.
func previewDecision(decision string, exists bool) (logs.Outcome, logs.ReasonCode) {
	switch decision {
	case maps.DecisionMapped:
		if exists {
			return logs.OutcomeSent, logs.ReasonUpdated
		}
		return logs.OutcomeSent, logs.ReasonCreated
	case maps.DecisionUnchanged:
		return logs.OutcomeSkipped, logs.ReasonUnchanged
	case maps.DecisionFiltered:
		return logs.OutcomeSkipped, logs.ReasonFiltered
	case maps.DecisionMappingError:
		return logs.OutcomeFailed, logs.ReasonMappingError
	}
	return "", ""
}

// previewGet shows the preview form of version {id}; ?map= chooses the
// entity map and ?decision= fills in a logged decision's id (the log
// explorer's "Preview with current draft" link).
func (a *app) previewGet(w http.ResponseWriter, r *http.Request) {
	q := r.URL.Query()
	f := previewForm{Map: q.Get("map"), Direction: q.Get("direction")}
	if s := strings.TrimSpace(q.Get("decision")); s != "" {
		if id, err := strconv.ParseInt(s, 10, 64); err == nil && id > 0 {
			f.DecisionID = id
		}
	}
	a.renderPreview(w, r, http.StatusOK, f, nil, "")
}

// previewPage runs a preview from the preview page's form.
func (a *app) previewPage(w http.ResponseWriter, r *http.Request) {
	n, ok := a.pathVersion(w, r)
	if !ok {
		return
	}
	f := previewForm{Map: r.PostFormValue("map"), Direction: r.PostFormValue("direction"), Input: r.PostFormValue("input"),
		Current: r.PostFormValue("current")}
	if s := strings.TrimSpace(r.PostFormValue("decision_id")); s != "" {
		id, err := strconv.ParseInt(s, 10, 64)
		if err != nil || id <= 0 {
			a.renderPreview(w, r, http.StatusBadRequest, f, nil, "The decision id must be a number.")
			return
		}
		f.DecisionID = id
	}
	if f.Map == "" {
		a.renderError(w, r, http.StatusBadRequest, "Choose an entity map to preview.")
		return
	}
	v, err := a.runPreview(r, n, f)
	var pe *previewError
	if errors.As(err, &pe) {
		if pe.status == http.StatusNotFound && strings.HasPrefix(pe.msg, "No such map version") {
			a.renderError(w, r, pe.status, pe.msg)
			return
		}
		a.renderPreview(w, r, pe.status, f, nil, pe.msg)
		return
	}
	if err != nil {
		a.serverError(w, r, "previewing a map", err)
		return
	}
	a.renderPreview(w, r, http.StatusOK, f, v, "")
}

// renderPreview shows the preview page of version {id} with form f and,
// when one ran, its result v.
func (a *app) renderPreview(w http.ResponseWriter, r *http.Request, status int, f previewForm, v *previewView, msg string) {
	n, doc, info, ok := a.loadVersion(w, r)
	if !ok {
		return
	}
	u, _ := currentUser(r)
	d := previewData{Info: info, PHI: u.can(permPHI), Form: f, Preview: v, Error: msg}
	for i := range doc.EntityMaps {
		em := &doc.EntityMaps[i]
		d.Maps = append(d.Maps, mapRow{Name: em.Name, FHIRType: em.FHIRType, CRMEntity: em.CRMEntity, Version: n, Status: string(info.Status)})
	}
	if d.Form.Map == "" && len(doc.EntityMaps) > 0 {
		d.Form.Map = doc.EntityMaps[0].Name
	}
	if d.Form.Direction == "" {
		d.Form.Direction = string(maps.FHIRToCRM)
	}
	a.render(w, r, status, "preview", fmt.Sprintf("Preview with map set version %d", n), d)
}
