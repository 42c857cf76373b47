package admin

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"time"

	"gopkg.in/yaml.v3"

	"github.com/fhirsync/fhirsync/maps"
	"github.com/fhirsync/fhirsync/maps/fhirpath"
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

// apiFHIRElements is GET /api/v1/maps/fhir-elements: the R4 child
// elements of the element path reaches in resource type, for completing a
// FHIR path as it is typed. within is an expansion map's array path when
// path is relative to one of its items.
func (a *app) apiFHIRElements(w http.ResponseWriter, r *http.Request) {
	q := r.URL.Query()
	typ, within, parent := q.Get("type"), q.Get("within"), q.Get("path")
	if typ == "" {
		a.renderError(w, r, http.StatusBadRequest, "Name the FHIR resource type (type=Patient).")
		return
	}
	elType, els, err := maps.FHIRElements(typ, within, parent)
	if err != nil {
		a.renderError(w, r, http.StatusUnprocessableEntity, err.Error())
		return
	}
	if els == nil {
		els = []maps.FHIRElement{}
	}
	writeJSON(w, http.StatusOK, map[string]any{"type": typ, "within": within, "path": parent, "elementType": elType, "elements": els})
}

// evaluateRequest is the body of POST /api/v1/maps/evaluate.
type evaluateRequest struct {
	// Expression is the FHIRPath to evaluate.
	Expression string `json:"expression"`
	// Within is an expansion map's array path: Expression is then
	// evaluated on each of its items.
	Within string `json:"within,omitempty"`
	// Resource is the FHIR resource as JSON text. When empty, the sample
	// of entity map Map in version Version is used: the one called Sample,
	// or the first that holds a FHIR resource.
	Resource string `json:"resource,omitempty"`
	Version  int    `json:"version,omitempty"`
	Map      string `json:"map,omitempty"`
	Sample   string `json:"sample,omitempty"`
}

// apiEvaluate is POST /api/v1/maps/evaluate: a FHIRPath expression run by
// the maps' FHIRPath engine on a map's sample resource, answering the
// values it selects. An expression that does not compile or fails is
// answered 200 with its error: it is the result of evaluating it.
func (a *app) apiEvaluate(w http.ResponseWriter, r *http.Request) {
	var req evaluateRequest
	if !a.decodeJSON(w, r, &req) {
		return
	}
	if strings.TrimSpace(req.Expression) == "" {
		a.renderError(w, r, http.StatusBadRequest, "Send the expression to evaluate.")
		return
	}
	resource, sample := req.Resource, ""
	if strings.TrimSpace(resource) == "" {
		doc, _, err := a.data.maps.Version(r.Context(), req.Version)
		if errors.Is(err, maps.ErrNotFound) {
			a.renderError(w, r, http.StatusNotFound, "No such map version.")
			return
		}
		if err != nil {
			a.serverError(w, r, "reading a map version", err)
			return
		}
		if resource, sample = sampleResource(doc, req.Map, req.Sample); resource == "" {
			a.renderError(w, r, http.StatusNotFound, "The entity map has no sample with a FHIR resource to evaluate on; send one as resource.")
			return
		}
	}
	out := map[string]any{"expression": req.Expression, "sample": sample}
	values, err := evaluateOn([]byte(resource), req.Within, req.Expression)
	if err != nil {
		out["error"] = err.Error()
		out["values"] = []any{}
		writeJSON(w, http.StatusOK, out)
		return
	}
	out["values"], out["count"] = values, len(values)
	writeJSON(w, http.StatusOK, out)
}

// sampleResource is the FHIR resource of entity map m's sample called
// name (or its first holding one): a FHIR → CRM sample's input, a CRM →
// FHIR sample's base.
func sampleResource(doc *maps.Document, m, name string) (resource, sample string) {
	for _, em := range doc.EntityMaps {
		if em.Name != m {
			continue
		}
		for _, s := range em.Samples {
			if name != "" && s.Name != name {
				continue
			}
			switch {
			case s.Direction == maps.FHIRToCRM && strings.TrimSpace(s.Input) != "":
				return s.Input, s.Name
			case s.Direction == maps.CRMToFHIR && strings.TrimSpace(s.Base) != "":
				return s.Base, s.Name
			}
		}
	}
	return "", ""
}

// evaluateOn runs expr on resource, or on each item within selects.
func evaluateOn(resource []byte, within, expr string) ([]any, error) {
	if !json.Valid(resource) {
		return nil, errors.New("the sample resource is not valid JSON")
	}
	if within != "" {
		expr = "(" + within + ").select(" + expr + ")"
	}
	e, err := fhirpath.Compile(expr)
	if err != nil {
		return nil, err
	}
	return e.Eval(resource)
}

// documentRequest is the body of POST /api/v1/maps/document: a map set as
// YAML text or as its document (the YAML's structure in JSON).
type documentRequest struct {
	YAML     string          `json:"yaml,omitempty"`
	Document json.RawMessage `json:"document,omitempty"`
}

// apiMapDocument is POST /api/v1/maps/document: the structured editor's
// round trip. It turns YAML into the document the forms edit, or the
// forms' document into canonical YAML, and answers both with the
// validation problems (checked against the CRM's cached metadata when a
// CRM is configured). Text that cannot be read as a map set is 422 with
// its problems and lines.
func (a *app) apiMapDocument(w http.ResponseWriter, r *http.Request) {
	var req documentRequest
	if !a.decodeJSON(w, r, &req) {
		return
	}
	var data []byte
	switch {
	case len(req.Document) > 0 && !bytes.Equal(bytes.TrimSpace(req.Document), []byte("null")):
		var v any
		dec := json.NewDecoder(bytes.NewReader(req.Document))
		dec.UseNumber()
		if err := dec.Decode(&v); err != nil {
			a.renderError(w, r, http.StatusBadRequest, "The document is not valid JSON: "+err.Error())
			return
		}
		y, err := yaml.Marshal(yamlValue(v))
		if err != nil {
			a.renderError(w, r, http.StatusBadRequest, "The document cannot be written as YAML: "+err.Error())
			return
		}
		data = y
	case strings.TrimSpace(req.YAML) != "":
		data = []byte(req.YAML)
	default:
		a.renderError(w, r, http.StatusBadRequest, "Send yaml, or a document.")
		return
	}
	doc, err := maps.Parse(data)
	if ps, ok := problemsOf(err); ok {
		writeProblems(w, fmt.Sprintf("The map set cannot be read (%d problems).", len(ps)), ps)
		return
	}
	if err != nil {
		a.serverError(w, r, "reading a map set", err)
		return
	}
	canonical, err := maps.Export(doc)
	if err != nil {
		a.serverError(w, r, "exporting a map set", err)
		return
	}
	var tree any
	if err := yaml.Unmarshal(canonical, &tree); err != nil {
		a.serverError(w, r, "reading a map set back", err)
		return
	}
	unchecked, verr := a.crmCheck(r.Context(), doc, false)
	ps, isProblems := problemsOf(verr)
	if verr != nil && !isProblems {
		a.serverError(w, r, "validating maps", verr)
		return
	}
	if ps == nil {
		ps = []problemView{}
	}
	out := map[string]any{"yaml": string(canonical), "document": tree, "valid": len(ps) == 0, "problems": ps}
	if unchecked != "" {
		out["warning"] = unchecked
	}
	writeJSON(w, http.StatusOK, out)
}

// yamlValue turns a JSON value decoded with UseNumber into one the YAML
// encoder writes as the same YAML: numbers as numbers.
func yamlValue(v any) any {
	switch x := v.(type) {
	case map[string]any:
		for k, e := range x {
			x[k] = yamlValue(e)
		}
		return x
	case []any:
		for i, e := range x {
			x[i] = yamlValue(e)
		}
		return x
	case json.Number:
		if i, err := x.Int64(); err == nil {
			return i
		}
		if f, err := x.Float64(); err == nil {
			return f
		}
		return x.String()
	}
	return v
}

// crmAttributeView is one CRM column as the attribute picker shows it.
type crmAttributeView struct {
	Name string `json:"name"`
	// Type is the CRM's AttributeType; MapType the attribute map type
	// that carries it ("" when none does).
	Type      string   `json:"type"`
	MapType   string   `json:"mapType"`
	Format    string   `json:"format,omitempty"`
	MaxLength int      `json:"maxLength,omitempty"`
	Precision *int     `json:"precision,omitempty"`
	MinValue  *float64 `json:"minValue,omitempty"`
	MaxValue  *float64 `json:"maxValue,omitempty"`
	Targets   []string `json:"targets,omitempty"`
	Options   []struct {
		Value int    `json:"value"`
		Label string `json:"label"`
	} `json:"options,omitempty"`
	Required       bool `json:"required"`
	ValidForCreate bool `json:"validForCreate"`
	ValidForUpdate bool `json:"validForUpdate"`
}

// apiCRMAttributes is GET /api/v1/maps/crm-attributes?entity=contact: the
// columns of a CRM table from its metadata (EntityDefinitions/Attributes),
// cached; the attribute picker lists them.
func (a *app) apiCRMAttributes(w http.ResponseWriter, r *http.Request) {
	name := r.URL.Query().Get("entity")
	if name == "" {
		a.renderError(w, r, http.StatusBadRequest, "Name the CRM table (entity=contact).")
		return
	}
	if a.data.crm == nil {
		a.renderError(w, r, http.StatusNotFound, "No CRM is configured, so its metadata cannot be read; type the attribute names.")
		return
	}
	m, at, err := a.data.crm.entityAt(r.Context(), name)
	if err != nil {
		a.log.Warn("reading CRM metadata for the attribute picker", "error", err)
		a.renderError(w, r, http.StatusServiceUnavailable, "The CRM's metadata could not be read; try again, or type the attribute names.")
		return
	}
	if m == nil {
		a.renderError(w, r, http.StatusNotFound, fmt.Sprintf("The CRM has no table %q.", name))
		return
	}
	attrs := make([]crmAttributeView, 0, len(m.Attributes))
	for _, x := range m.Attributes {
		v := crmAttributeView{Name: x.LogicalName, Type: x.Type, MapType: string(crmTypeOf(x)), Format: x.Format,
			MaxLength: x.MaxLength, Precision: x.Precision, MinValue: x.MinValue, MaxValue: x.MaxValue, Targets: x.Targets,
			Required: x.Required, ValidForCreate: x.ValidForCreate, ValidForUpdate: x.ValidForUpdate}
		for _, o := range x.Options {
			v.Options = append(v.Options, struct {
				Value int    `json:"value"`
				Label string `json:"label"`
			}{o.Value, o.Label})
		}
		attrs = append(attrs, v)
	}
	slices.SortFunc(attrs, func(x, y crmAttributeView) int { return strings.Compare(x.Name, y.Name) })
	lookups := []map[string]string{}
	for _, l := range m.Lookups {
		lookups = append(lookups, map[string]string{"attribute": l.Attribute, "target": l.Target, "navigation": l.NavigationProperty})
	}
	writeJSON(w, http.StatusOK, map[string]any{"entity": m.LogicalName, "entitySet": m.EntitySetName, "primaryId": m.PrimaryID,
		"readAt": at.UTC(), "attributes": attrs, "lookups": lookups})
}

// refreshRequest is the body of POST /api/v1/maps/crm-metadata/refresh.
type refreshRequest struct {
	// Entities are read again at once; the rest of the cache is dropped
	// and read when next needed.
	Entities []string `json:"entities,omitempty"`
}

// apiRefreshCRM is POST /api/v1/maps/crm-metadata/refresh: the cached CRM
// metadata is dropped and the named tables are read again, so a column
// just added in the CRM can be mapped. Recorded in the audit trail.
func (a *app) apiRefreshCRM(w http.ResponseWriter, r *http.Request) {
	var req refreshRequest
	if !a.decodeJSON(w, r, &req) {
		return
	}
	if a.data.crm == nil {
		a.renderError(w, r, http.StatusNotFound, "No CRM is configured, so there is no metadata to refresh.")
		return
	}
	a.data.crm.refresh()
	type read struct {
		Entity     string    `json:"entity"`
		Found      bool      `json:"found"`
		Attributes int       `json:"attributes"`
		ReadAt     time.Time `json:"readAt"`
	}
	out := []read{}
	var names []string
	for _, name := range req.Entities {
		if name == "" || slices.Contains(names, name) {
			continue
		}
		names = append(names, name)
		m, at, err := a.data.crm.entityAt(r.Context(), name)
		if err != nil {
			a.log.Warn("refreshing CRM metadata", "error", err)
			a.record(r, "map.crm_metadata_refresh", "crm_metadata", strings.Join(names, ","), "", "failed: the CRM's metadata could not be read")
			a.renderError(w, r, http.StatusServiceUnavailable, fmt.Sprintf("The CRM's metadata of %s could not be read; try again later.", name))
			return
		}
		n := 0
		if m != nil {
			n = len(m.Attributes)
		}
		out = append(out, read{Entity: name, Found: m != nil, Attributes: n, ReadAt: at.UTC()})
	}
	what := "cache dropped"
	if len(names) > 0 {
		what += "; read again: " + strings.Join(names, ", ")
	}
	a.record(r, "map.crm_metadata_refresh", "crm_metadata", strings.Join(names, ","), "", what)
	writeJSON(w, http.StatusOK, map[string]any{"refreshed": out})
}

// samplesRequest is the body of POST /api/v1/maps/samples.
type samplesRequest struct {
	// YAML is the map set as edited (not necessarily saved).
	YAML string `json:"yaml"`
	// Map names the entity map whose samples run; empty runs every map's.
	Map string `json:"map,omitempty"`
}

// sampleView is one sample's run for the editor.
type sampleView struct {
	Map          string          `json:"map"`
	Sample       string          `json:"sample"`
	Direction    maps.Direction  `json:"direction"`
	Passed       bool            `json:"passed"`
	Decision     string          `json:"decision,omitempty"`
	Filter       string          `json:"filter,omitempty"`
	Attribute    string          `json:"attribute,omitempty"`
	MappingError string          `json:"mappingError,omitempty"`
	Output       json.RawMessage `json:"output,omitempty"`
	Changed      []string        `json:"changed,omitempty"`
	Mismatches   []string        `json:"mismatches,omitempty"`
	Error        string          `json:"error,omitempty"`
}

// apiSamples is POST /api/v1/maps/samples: the samples of a map set as
// edited, run by the one sample runner, each with its output and how it
// differs from what the sample expects. A map set that does not validate
// is 422 with its problems.
func (a *app) apiSamples(w http.ResponseWriter, r *http.Request) {
	var req samplesRequest
	if !a.decodeJSON(w, r, &req) {
		return
	}
	if strings.TrimSpace(req.YAML) == "" {
		a.renderError(w, r, http.StatusBadRequest, "Send the map set as yaml.")
		return
	}
	doc, err := maps.Parse([]byte(req.YAML))
	var set *maps.Set
	if err == nil {
		set, err = maps.Compile(doc, maps.CompileOptions{})
	}
	if ps, ok := problemsOf(err); ok {
		writeProblems(w, fmt.Sprintf("The samples cannot run: the map set has %d problem(s).", len(ps)), ps)
		return
	}
	if err != nil {
		a.serverError(w, r, "compiling maps", err)
		return
	}
	out := []sampleView{}
	for _, m := range set.Maps() {
		def := m.Def()
		if req.Map != "" && def.Name != req.Map {
			continue
		}
		for _, s := range def.Samples {
			res := maps.RunSample(r.Context(), m, s)
			v := sampleView{Map: def.Name, Sample: s.Name, Direction: s.Direction, Passed: res.Passed(), Decision: res.Decision,
				Filter: res.Filter, Attribute: res.Attribute, MappingError: res.MappingError, Output: res.Output,
				Changed: res.Changed, Mismatches: res.Mismatches}
			if res.ParseError != nil {
				v.Error = "The sample cannot be read: " + res.ParseError.Error()
			}
			if res.EvalError != nil {
				v.Error = "The engine failed: " + res.EvalError.Error()
			}
			out = append(out, v)
		}
	}
	writeJSON(w, http.StatusOK, map[string]any{"results": out})
}
