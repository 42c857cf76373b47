package admin

import (
	"errors"
	"fmt"
	"net/http"
	"strconv"
	"strings"

	"github.com/fhirsync/fhirsync/maps"
)

// apiMaps is GET /api/v1/maps: every version and the publication history.
func (a *app) apiMaps(w http.ResponseWriter, r *http.Request) {
	vs, rows, ok := a.listMaps(w, r)
	if !ok {
		return
	}
	pubs, err := a.data.maps.Publications(r.Context())
	if err != nil {
		a.serverError(w, r, "listing publications", err)
		return
	}
	type entity struct {
		Name      string `json:"name"`
		FHIRType  string `json:"fhirType"`
		CRMEntity string `json:"crmEntity"`
		Version   int    `json:"version"`
		Status    string `json:"status"`
	}
	ems := []entity{}
	for _, m := range rows {
		ems = append(ems, entity(m))
	}
	if pubs == nil {
		pubs = []maps.Publication{}
	}
	if vs == nil {
		vs = []maps.VersionInfo{}
	}
	writeJSON(w, http.StatusOK, map[string]any{"versions": vs, "publications": pubs, "entity_maps": ems})
}

// apiVersion is GET /api/v1/maps/versions/{id}: a version with its
// content as YAML.
func (a *app) apiVersion(w http.ResponseWriter, r *http.Request) {
	_, doc, info, ok := a.loadVersion(w, r)
	if !ok {
		return
	}
	y, err := maps.Export(doc)
	if err != nil {
		a.serverError(w, r, "exporting a map version", err)
		return
	}
	writeJSON(w, http.StatusOK, map[string]any{"version": info, "yaml": string(y)})
}

// validateRequest is the body of POST /api/v1/maps/validate: either a
// whole YAML map set, or one attribute map change applied to a stored
// version.
type validateRequest struct {
	YAML      string           `json:"yaml,omitempty"`
	Version   int              `json:"version,omitempty"`
	Map       string           `json:"map,omitempty"`
	Attribute string           `json:"attribute,omitempty"`
	Change    *attributeChange `json:"change,omitempty"`
}

func (a *app) apiValidate(w http.ResponseWriter, r *http.Request) {
	var req validateRequest
	if !a.decodeJSON(w, r, &req) {
		return
	}
	var doc *maps.Document
	var err error
	switch {
	case strings.TrimSpace(req.YAML) != "":
		doc, err = maps.Parse([]byte(req.YAML))
	case req.Version > 0:
		doc, _, err = a.data.maps.Version(r.Context(), req.Version)
		if errors.Is(err, maps.ErrNotFound) {
			a.renderError(w, r, http.StatusNotFound, "No such map version.")
			return
		}
		if err != nil {
			a.serverError(w, r, "reading a map version", err)
			return
		}
		if req.Change != nil {
			if err := req.Change.apply(doc, req.Map, req.Attribute); err != nil {
				a.renderError(w, r, http.StatusNotFound, "No such attribute map in this version.")
				return
			}
		}
	default:
		a.renderError(w, r, http.StatusBadRequest, "Send yaml, or a version (with an optional attribute map change).")
		return
	}
	unchecked := ""
	if err == nil {
		unchecked, err = a.crmCheck(r.Context(), doc, false)
	}
	ps, isProblems := problemsOf(err)
	if err != nil && !isProblems {
		a.serverError(w, r, "validating maps", err)
		return
	}
	if ps == nil {
		ps = []problemView{}
	}
	out := map[string]any{"valid": len(ps) == 0, "problems": ps}
	if unchecked != "" {
		out["warning"] = unchecked
	}
	writeJSON(w, http.StatusOK, out)
}

func (a *app) apiPreview(w http.ResponseWriter, r *http.Request) {
	n, ok := a.pathVersion(w, r)
	if !ok {
		return
	}
	var f previewForm
	if !a.decodeJSON(w, r, &f) {
		return
	}
	if f.Map == "" {
		a.renderError(w, r, http.StatusBadRequest, "Name the entity map to preview (map).")
		return
	}
	v, err := a.runPreview(r, n, f)
	var pe *previewError
	if errors.As(err, &pe) {
		a.renderError(w, r, pe.status, pe.msg)
		return
	}
	if err != nil {
		a.serverError(w, r, "previewing a map", err)
		return
	}
	writeJSON(w, http.StatusOK, v)
}

// noteRequest is the body of publish and rollback.
type noteRequest struct {
	Note string `json:"note"`
	// OverrideReason publishes a draft whose samples fail; the audit
	// trail records it with the failing samples.
	OverrideReason string `json:"override_reason,omitempty"`
}

func (a *app) apiPublish(w http.ResponseWriter, r *http.Request)  { a.apiPublishing(w, r, false) }
func (a *app) apiRollback(w http.ResponseWriter, r *http.Request) { a.apiPublishing(w, r, true) }

func (a *app) apiPublishing(w http.ResponseWriter, r *http.Request, rollback bool) {
	n, ok := a.pathVersion(w, r)
	if !ok {
		return
	}
	var req noteRequest
	if !a.decodeJSON(w, r, &req) {
		return
	}
	info, status, msg, ps, fails, err := a.publish(r, n, rollback, req.Note, strings.TrimSpace(req.OverrideReason))
	if err != nil {
		a.serverError(w, r, "publishing maps", err)
		return
	}
	if len(fails) > 0 {
		writeJSON(w, status, map[string]any{
			"error":           map[string]string{"code": "unprocessable_entity", "message": "Not published: " + msg},
			"failing_samples": fails})
		return
	}
	if len(ps) > 0 {
		writeProblems(w, "Not published: "+msg, ps)
		return
	}
	if status != 0 {
		a.renderError(w, r, status, msg)
		return
	}
	writeJSON(w, http.StatusOK, info)
}

// importRequest is the body of POST /api/v1/maps/import.
type importRequest struct {
	YAML string `json:"yaml"`
}

func (a *app) apiImport(w http.ResponseWriter, r *http.Request) {
	var req importRequest
	if !a.decodeJSON(w, r, &req) {
		return
	}
	if strings.TrimSpace(req.YAML) == "" {
		a.renderError(w, r, http.StatusBadRequest, "Send the map set as yaml.")
		return
	}
	info, unchecked, err := a.createDraft(r, []byte(req.YAML))
	if ps, ok := problemsOf(err); ok {
		writeProblems(w, fmt.Sprintf("The map set has %d problem(s).", len(ps)), ps)
		return
	}
	if err != nil {
		a.serverError(w, r, "importing maps", err)
		return
	}
	w.Header().Set("Location", "/api/v1/maps/versions/"+strconv.Itoa(info.Number))
	writeJSON(w, http.StatusCreated, struct {
		maps.VersionInfo
		// Warning says why the map set was not checked against the CRM.
		Warning string `json:"warning,omitempty"`
	}{info, unchecked})
}

// writeProblems answers 422 with the validation problems, each with its
// location and suggested fix.
func writeProblems(w http.ResponseWriter, msg string, ps []problemView) {
	writeJSON(w, http.StatusUnprocessableEntity, map[string]any{
		"error":    map[string]string{"code": "unprocessable_entity", "message": msg},
		"problems": ps})
}
