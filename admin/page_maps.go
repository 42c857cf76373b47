package admin

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strconv"
	"strings"

	"github.com/fhirsync/fhirsync/maps"
)

// mapRow is one entity map in the maps list.
type mapRow struct {
	Name      string
	FHIRType  string
	CRMEntity string
	Version   int
	// Status is draft, published or disabled.
	Status string
}

type mapsListData struct {
	Versions []maps.VersionInfo
	// Publications is the publication history, each with its note.
	Publications []maps.Publication
	Maps         []mapRow
	CanEdit      bool
	Problems     []problemView
	Error        string
	Notice       string
	YAML         string
}

// problemView is a validation problem with its rendered location.
type problemView struct {
	maps.Problem
	Location string `json:"location"`
}

// problemsOf turns a validation error into problems; ok is false for any
// other error.
func problemsOf(err error) ([]problemView, bool) {
	var ve *maps.ValidationError
	if !errors.As(err, &ve) {
		return nil, false
	}
	out := make([]problemView, 0, len(ve.Problems))
	for _, p := range ve.Problems {
		out = append(out, problemView{Problem: p, Location: p.Location()})
	}
	return out, true
}

// mapRows lists the entity maps of the current publication and of the
// newest draft above it.
func (a *app) mapRows(r *http.Request, versions []maps.VersionInfo) ([]mapRow, error) {
	var rows []mapRow
	add := func(n int, draft bool) error {
		doc, _, err := a.data.maps.Version(r.Context(), n)
		if err != nil {
			return err
		}
		for i := range doc.EntityMaps {
			em := &doc.EntityMaps[i]
			st := "published"
			switch {
			case draft:
				st = "draft"
			case !em.IsEnabled():
				st = "disabled"
			}
			rows = append(rows, mapRow{Name: em.Name, FHIRType: em.FHIRType, CRMEntity: em.CRMEntity, Version: n, Status: st})
		}
		return nil
	}
	current := 0
	for _, v := range versions {
		if v.Current {
			current = v.Number
			if err := add(v.Number, false); err != nil {
				return nil, err
			}
		}
	}
	for _, v := range versions { // newest first: the first draft is the newest
		if v.Status == maps.StatusDraft && v.Number > current {
			return rows, add(v.Number, true)
		}
	}
	return rows, nil
}

func (a *app) mapsPage(w http.ResponseWriter, r *http.Request) {
	a.renderMaps(w, r, http.StatusOK, mapsListData{Notice: notices[r.URL.Query().Get("ok")]})
}

// listMaps reads the map versions and the entity maps of the newest ones,
// answering 500 itself when it cannot.
func (a *app) listMaps(w http.ResponseWriter, r *http.Request) ([]maps.VersionInfo, []mapRow, bool) {
	vs, err := a.data.maps.Versions(r.Context())
	if err != nil {
		a.serverError(w, r, "listing map versions", err)
		return nil, nil, false
	}
	rows, err := a.mapRows(r, vs)
	if err != nil {
		a.serverError(w, r, "listing entity maps", err)
		return nil, nil, false
	}
	return vs, rows, true
}

func (a *app) renderMaps(w http.ResponseWriter, r *http.Request, status int, d mapsListData) {
	vs, rows, ok := a.listMaps(w, r)
	if !ok {
		return
	}
	pubs, err := a.data.maps.Publications(r.Context())
	if err != nil {
		a.serverError(w, r, "listing map publications", err)
		return
	}
	u, _ := currentUser(r)
	d.Versions, d.Maps, d.CanEdit, d.Publications = vs, rows, u.can(permMapsEdit), pubs
	a.render(w, r, status, "maps", "Maps", d)
}

// importYAML reads a map set from an uploaded file or the pasted text.
func importYAML(r *http.Request) ([]byte, error) {
	if strings.HasPrefix(r.Header.Get("Content-Type"), "multipart/") {
		// serveRoute has parsed the form within the route's limit and
		// removes its temporary files.
		if f, _, err := r.FormFile("file"); err == nil {
			defer f.Close()
			b, err := io.ReadAll(io.LimitReader(f, MaxMapSetBytes+1))
			if err != nil {
				return nil, fmt.Errorf("reading the upload: %w", err)
			}
			if len(b) > MaxMapSetBytes {
				return nil, fmt.Errorf("the upload exceeds %d bytes", MaxMapSetBytes)
			}
			if len(bytes.TrimSpace(b)) > 0 {
				return b, nil
			}
		}
	}
	return []byte(r.PostFormValue("yaml")), nil
}

// importMaps stores an uploaded or pasted YAML map set as a new draft.
func (a *app) importMaps(w http.ResponseWriter, r *http.Request) {
	data, err := importYAML(r)
	if err != nil || len(bytes.TrimSpace(data)) == 0 {
		a.renderMaps(w, r, http.StatusBadRequest, mapsListData{Error: "Upload a YAML file or paste a map set."})
		return
	}
	info, unchecked, err := a.createDraft(r, data)
	if ps, ok := problemsOf(err); ok {
		a.renderMaps(w, r, http.StatusUnprocessableEntity, mapsListData{Problems: ps, YAML: string(data),
			Error: "The map set was not imported; fix these problems first."})
		return
	}
	if err != nil {
		a.serverError(w, r, "importing maps", err)
		return
	}
	ok := "imported"
	if unchecked != "" {
		ok = "imported-unchecked"
	}
	http.Redirect(w, r, fmt.Sprintf("/maps/versions/%d?ok=%s", info.Number, ok), http.StatusSeeOther)
}

// createDraft parses, validates (against the CRM's metadata too, when a
// CRM is configured) and stores data as a new draft, and records it.
// unchecked says why the CRM check could not be made.
func (a *app) createDraft(r *http.Request, data []byte) (info maps.VersionInfo, unchecked string, err error) {
	doc, err := maps.Parse(data)
	if err != nil {
		return maps.VersionInfo{}, "", err
	}
	if unchecked, err = a.crmCheck(r.Context(), doc, true); err != nil {
		return info, "", err
	}
	info, err = a.data.maps.CreateDraft(r.Context(), doc, actor(r), "imported")
	if err != nil {
		return info, "", err
	}
	a.record(r, "map.import", "map_version", strconv.Itoa(info.Number), "", fmt.Sprintf("draft %d, %d entity maps", info.Number, len(doc.EntityMaps)))
	return info, unchecked, nil
}

// versionNumber reads the {id} path value as a map version number.
func versionNumber(r *http.Request) (int, bool) {
	n, err := strconv.Atoi(r.PathValue("id"))
	return n, err == nil && n > 0
}

// pathVersion reads the {id} version number, answering 404 itself when
// it is not one.
func (a *app) pathVersion(w http.ResponseWriter, r *http.Request) (int, bool) {
	n, ok := versionNumber(r)
	if !ok {
		a.renderError(w, r, http.StatusNotFound, "No such map version.")
	}
	return n, ok
}

// loadVersion reads the {id} map version, answering 404 or 500 itself
// when it cannot.
func (a *app) loadVersion(w http.ResponseWriter, r *http.Request) (int, *maps.Document, maps.VersionInfo, bool) {
	n, ok := a.pathVersion(w, r)
	if !ok {
		return 0, nil, maps.VersionInfo{}, false
	}
	doc, info, err := a.data.maps.Version(r.Context(), n)
	if errors.Is(err, maps.ErrNotFound) {
		a.renderError(w, r, http.StatusNotFound, "No such map version.")
		return 0, nil, maps.VersionInfo{}, false
	}
	if err != nil {
		a.serverError(w, r, "reading a map version", err)
		return 0, nil, maps.VersionInfo{}, false
	}
	return n, doc, info, true
}

// editorData is the version page: the YAML editor, the attribute form,
// publish and rollback (the preview has its own page, page_preview.go).
type editorData struct {
	Info     maps.VersionInfo
	Versions []maps.VersionInfo
	YAML     string
	Maps     []mapRow
	Map      *maps.EntityMap
	Attr     *maps.AttributeMap
	CanEdit  bool // a draft, and the user holds maps.edit
	MayEdit  bool // the user holds maps.edit
	PHI      bool
	Problems []problemView
	Notice   string
	Error    string
	CRMTypes []maps.CRMType
	Dirs     []directionOption
}

// directionOption is one choice of an attribute map's direction, each
// offered once: both ways is the default, written as no direction.
type directionOption struct{ Value, Label string }

var directionOptions = []directionOption{
	{"", "Both ways (FHIR ↔ CRM)"},
	{string(maps.FHIRToCRM), "FHIR → CRM only"},
	{string(maps.CRMToFHIR), "CRM → FHIR only"},
}

var crmTypes = []maps.CRMType{maps.TypeString, maps.TypeMemo, maps.TypeInt, maps.TypeDecimal, maps.TypeMoney, maps.TypeBool,
	maps.TypeDateOnly, maps.TypeDateTimeUTC, maps.TypeOptionSet, maps.TypeMultiSelect, maps.TypeLookup}

var notices = map[string]string{
	"imported":           "Map set imported as a new draft.",
	"saved":              "Draft saved.",
	"imported-unchecked": "Map set imported as a new draft. The CRM's metadata could not be read, so its attributes were not checked against the CRM; publishing checks them.",
	"saved-unchecked":    "Draft saved. The CRM's metadata could not be read, so its attributes were not checked against the CRM; publishing checks them.",
	"published":          "Version published; the agent picks it up without a restart.",
	"rollback":           "Earlier version published again.",
	"draft":              "New draft created from this version.",
	"discarded":          "Draft discarded.",
}

func (a *app) versionPage(w http.ResponseWriter, r *http.Request) {
	a.renderVersion(w, r, http.StatusOK, nil, func(d *editorData) { d.Notice = notices[r.URL.Query().Get("ok")] })
}

// renderVersion shows version {id} with the entity map and attribute map
// chosen in the query (or the form); edit adjusts the data before rendering.
func (a *app) renderVersion(w http.ResponseWriter, r *http.Request, status int, doc *maps.Document, edit func(*editorData)) {
	n, stored, info, ok := a.loadVersion(w, r)
	if !ok {
		return
	}
	if doc == nil {
		doc = stored
	}
	vs, err := a.data.maps.Versions(r.Context())
	if err != nil {
		a.serverError(w, r, "listing map versions", err)
		return
	}
	y, err := maps.Export(doc)
	if err != nil {
		a.serverError(w, r, "exporting a map version", err)
		return
	}
	u, _ := currentUser(r)
	d := editorData{Info: info, Versions: vs, YAML: string(y), MayEdit: u.can(permMapsEdit), PHI: u.can(permPHI),
		CRMTypes: crmTypes, Dirs: directionOptions}
	d.CanEdit = d.MayEdit && info.Status == maps.StatusDraft
	for i := range doc.EntityMaps {
		em := &doc.EntityMaps[i]
		st := string(info.Status)
		if !em.IsEnabled() {
			st = "disabled"
		}
		d.Maps = append(d.Maps, mapRow{Name: em.Name, FHIRType: em.FHIRType, CRMEntity: em.CRMEntity, Version: n, Status: st})
	}
	mapName, attrName := r.FormValue("map"), r.FormValue("attr")
	if mapName == "" && len(doc.EntityMaps) > 0 {
		mapName = doc.EntityMaps[0].Name
	}
	d.Map, d.Attr = findAttribute(doc, mapName, attrName)
	if d.Map != nil && d.Attr == nil && len(d.Map.Attributes) > 0 && attrName == "" {
		d.Attr = &d.Map.Attributes[0]
	}
	if edit != nil {
		edit(&d)
	}
	a.render(w, r, status, "map_version", fmt.Sprintf("Map set version %d", n), d)
}

// findAttribute finds an entity map and one of its attribute maps by name.
func findAttribute(doc *maps.Document, mapName, attrName string) (*maps.EntityMap, *maps.AttributeMap) {
	for i := range doc.EntityMaps {
		em := &doc.EntityMaps[i]
		if em.Name != mapName {
			continue
		}
		for j := range em.Attributes {
			if em.Attributes[j].Name == attrName {
				return em, &em.Attributes[j]
			}
		}
		return em, nil
	}
	return nil, nil
}

// saveYAML replaces a draft with the edited YAML.
func (a *app) saveYAML(w http.ResponseWriter, r *http.Request) {
	n, _ := versionNumber(r)
	data := []byte(r.PostFormValue("yaml"))
	if len(bytes.TrimSpace(data)) == 0 {
		a.renderVersion(w, r, http.StatusBadRequest, nil, func(d *editorData) { d.Error = "The YAML is empty." })
		return
	}
	doc, err := maps.Parse(data)
	unchecked := ""
	if err == nil {
		unchecked, err = a.updateDraft(r, n, doc, "yaml edited")
	}
	a.afterSave(w, r, n, unchecked, err, func(d *editorData) { d.YAML = string(data) })
}

// attributeChange is an edit of one attribute map's main fields.
type attributeChange struct {
	FHIRPath     string         `json:"fhirPath"`
	CRMAttribute string         `json:"crmAttribute"`
	CRMType      maps.CRMType   `json:"crmType"`
	Direction    maps.Direction `json:"direction"`
	Enabled      bool           `json:"enabled"`
}

// apply writes c into attribute attr of entity map m in doc.
func (c attributeChange) apply(doc *maps.Document, m, attr string) error {
	_, am := findAttribute(doc, m, attr)
	if am == nil {
		return fmt.Errorf("%w: attribute map %q of entity map %q", maps.ErrNotFound, attr, m)
	}
	am.FHIRPath, am.CRMAttribute, am.CRMType, am.Direction = c.FHIRPath, c.CRMAttribute, c.CRMType, c.Direction
	if c.Enabled {
		am.Enabled = nil
	} else {
		off := false
		am.Enabled = &off
	}
	return nil
}

// saveAttribute applies the structured attribute form to a draft.
func (a *app) saveAttribute(w http.ResponseWriter, r *http.Request) {
	mapName, attr := r.PostFormValue("map"), r.PostFormValue("attr")
	if mapName == "" || attr == "" {
		a.renderError(w, r, http.StatusBadRequest, "Choose an entity map and an attribute map.")
		return
	}
	n, doc, info, ok := a.loadVersion(w, r)
	if !ok {
		return
	}
	if info.Status != maps.StatusDraft {
		a.renderError(w, r, http.StatusConflict, "Published versions cannot change; create a draft from this version.")
		return
	}
	c := attributeChange{FHIRPath: r.PostFormValue("fhirPath"), CRMAttribute: r.PostFormValue("crmAttribute"),
		CRMType: maps.CRMType(r.PostFormValue("crmType")), Direction: maps.Direction(r.PostFormValue("direction")),
		Enabled: r.PostFormValue("enabled") == "on"}
	if err := c.apply(doc, mapName, attr); err != nil {
		a.renderError(w, r, http.StatusNotFound, "No such attribute map in this version.")
		return
	}
	unchecked, err := a.updateDraft(r, n, doc, fmt.Sprintf("attribute map %s/%s edited", mapName, attr))
	a.afterSave(w, r, n, unchecked, err, func(d *editorData) {
		if em, am := findAttribute(doc, mapName, attr); am != nil {
			d.Map, d.Attr = em, am
		}
	})
}

// updateDraft checks doc against the CRM's metadata (when a CRM is
// configured), saves it over draft n and records the change. unchecked
// says why the CRM check could not be made; the draft is saved anyway.
func (a *app) updateDraft(r *http.Request, n int, doc *maps.Document, what string) (unchecked string, err error) {
	if unchecked, err = a.crmCheck(r.Context(), doc, true); err != nil {
		return "", err
	}
	info, err := a.data.maps.UpdateDraft(r.Context(), n, doc, actor(r), "")
	if err != nil {
		return "", err
	}
	a.record(r, "map.edit", "map_version", strconv.Itoa(n), "", what+", checksum "+info.Checksum)
	return unchecked, nil
}

// afterSave redirects after a successful save, or shows the problems.
func (a *app) afterSave(w http.ResponseWriter, r *http.Request, n int, unchecked string, err error, keep func(*editorData)) {
	if ps, ok := problemsOf(err); ok {
		a.renderVersion(w, r, http.StatusUnprocessableEntity, nil, func(d *editorData) {
			keep(d)
			d.Problems, d.Error = ps, "Not saved: the draft would not be valid."
		})
		return
	}
	if a.refuseDraftSave(w, r, err) {
		return
	}
	ok := "saved"
	if unchecked != "" {
		ok = "saved-unchecked"
	}
	http.Redirect(w, r, fmt.Sprintf("/maps/versions/%d?ok=%s&map=%s&attr=%s", n, ok,
		url.QueryEscape(r.PostFormValue("map")), url.QueryEscape(r.PostFormValue("attr"))), http.StatusSeeOther)
}

// publishVersion publishes a draft, or a published version again.
func (a *app) publishVersion(w http.ResponseWriter, r *http.Request) {
	a.publishing(w, r, false)
}

// rollbackVersion publishes an earlier published version again.
func (a *app) rollbackVersion(w http.ResponseWriter, r *http.Request) {
	a.publishing(w, r, true)
}

func (a *app) publishing(w http.ResponseWriter, r *http.Request, rollback bool) {
	n, ok := a.pathVersion(w, r)
	if !ok {
		return
	}
	note, override := r.PostFormValue("note"), strings.TrimSpace(r.PostFormValue("override_reason"))
	info, status, msg, ps, fails, err := a.publish(r, n, rollback, note, override)
	if err != nil {
		a.serverError(w, r, "publishing maps", err)
		return
	}
	if len(fails) > 0 {
		a.renderPublishConfirm(w, r, status, func(d *confirmData) { d.Note, d.Override, d.Error = note, override, "Not published: "+msg })
		return
	}
	if len(ps) > 0 {
		a.renderVersion(w, r, status, nil, func(d *editorData) { d.Problems, d.Error = ps, "Not published: "+msg })
		return
	}
	if status != 0 {
		a.renderError(w, r, status, msg)
		return
	}
	done := "published"
	if rollback {
		done = "rollback"
	}
	http.Redirect(w, r, fmt.Sprintf("/maps/versions/%d?ok=%s", info.Number, done), http.StatusSeeOther)
}

// publish publishes (or rolls back to) version n and records it. A
// refusal comes back as a status and a message, with the problems when
// the version does not validate; err is for failures.
//
// Publishing (not rolling back) checks the version against the CRM's
// metadata when a CRM is configured, and is refused when that metadata
// cannot be read: a version the CRM was never asked about is what
// dead-letters every record. Rolling back publishes a version that was
// published before and is not held up by the CRM being unreachable.
//
// Publishing also runs the samples the map set carries: when one fails it
// is refused (422, the failures returned) unless override gives a reason,
// which the audit trail records with the failing samples.
func (a *app) publish(r *http.Request, n int, rollback bool, note, override string) (maps.VersionInfo, int, string, []problemView, []sampleFailure, error) {
	before := "no version current"
	if vs, err := a.data.maps.Versions(r.Context()); err == nil {
		for _, v := range vs {
			if v.Current {
				before = fmt.Sprintf("version %d current", v.Number)
			}
		}
	}
	var info maps.VersionInfo
	action := "map.publish"
	doc, vi, err := a.data.maps.Version(r.Context(), n)
	if errors.Is(err, maps.ErrNotFound) {
		return info, http.StatusNotFound, "No such map version.", nil, nil, nil
	}
	if err != nil {
		return info, 0, "", nil, nil, err
	}
	if rollback {
		if vi.Status != maps.StatusPublished {
			return info, http.StatusConflict, "Only a published version can be rolled back to; publish a draft instead.", nil, nil, nil
		}
		action = "map.rollback"
		info, err = a.data.maps.Rollback(r.Context(), n, actor(r), note)
	} else {
		unchecked, cerr := a.crmCheck(r.Context(), doc, true)
		if ps, ok := problemsOf(cerr); ok {
			return info, http.StatusUnprocessableEntity, fmt.Sprintf("version %d does not fit the CRM (%d problems).", n, len(ps)), ps, nil, nil
		}
		if cerr != nil {
			return info, 0, "", nil, nil, cerr
		}
		if unchecked != "" {
			return info, http.StatusServiceUnavailable, "Not published: " + unchecked + " Publishing checks every attribute map against the CRM; try again when the CRM answers.", nil, nil, nil
		}
		fails, runs := failingSamples(r.Context(), doc)
		if len(fails) > 0 && override == "" {
			return info, http.StatusUnprocessableEntity, fmt.Sprintf("%d of the map set's %d sample tests fail; fix them, or give a reason to publish anyway.", len(fails), runs), nil, fails, nil
		}
		info, err = a.data.maps.Publish(r.Context(), n, actor(r), note)
		if err == nil && len(fails) > 0 {
			var names []string
			for _, f := range fails {
				names = append(names, f.Map+"/"+f.Sample)
			}
			a.record(r, "map.publish_override", "map_version", strconv.Itoa(n), fmt.Sprintf("%d of %d sample tests failing: %s", len(fails), runs, strings.Join(names, ", ")),
				"published anyway: "+override)
		}
	}
	if ps, ok := problemsOf(err); ok {
		return info, http.StatusUnprocessableEntity, fmt.Sprintf("version %d is not valid (%d problems).", n, len(ps)), ps, nil, nil
	}
	switch {
	case errors.Is(err, maps.ErrNotFound):
		return info, http.StatusNotFound, "No such map version.", nil, nil, nil
	case err != nil:
		return info, 0, "", nil, nil, err
	}
	a.record(r, action, "map_version", strconv.Itoa(n), before, fmt.Sprintf("version %d current", n))
	return info, 0, "", nil, nil, nil
}

// draftFrom copies a version into a new draft.
func (a *app) draftFrom(w http.ResponseWriter, r *http.Request) {
	n, doc, _, ok := a.loadVersion(w, r)
	if !ok {
		return
	}
	info, err := a.data.maps.CreateDraft(r.Context(), doc, actor(r), fmt.Sprintf("from version %d", n))
	if err != nil {
		a.serverError(w, r, "creating a draft", err)
		return
	}
	a.record(r, "map.draft", "map_version", strconv.Itoa(info.Number), "", fmt.Sprintf("draft %d from version %d", info.Number, n))
	http.Redirect(w, r, fmt.Sprintf("/maps/versions/%d?ok=draft", info.Number), http.StatusSeeOther)
}

// exportVersion downloads a version as canonical YAML.
func (a *app) exportVersion(w http.ResponseWriter, r *http.Request) {
	n, doc, _, ok := a.loadVersion(w, r)
	if !ok {
		return
	}
	y, err := maps.Export(doc)
	if err != nil {
		a.serverError(w, r, "exporting maps", err)
		return
	}
	w.Header().Set("Content-Type", "application/yaml; charset=utf-8")
	w.Header().Set("Content-Disposition", fmt.Sprintf(`attachment; filename="fhirsync-maps-v%d.yaml"`, n))
	_, _ = w.Write(y)
}

// diffData is two versions' YAML compared line by line.
type diffData struct {
	Versions []maps.VersionInfo
	A, B     int
	Lines    []diffLine
	Changes  int
	// Semantic lists the map set's elements added, removed and changed.
	Semantic []semChange
	Error    string
}

func (a *app) diffPage(w http.ResponseWriter, r *http.Request) {
	vs, err := a.data.maps.Versions(r.Context())
	if err != nil {
		a.serverError(w, r, "listing map versions", err)
		return
	}
	d := diffData{Versions: vs}
	q := r.URL.Query()
	if q.Get("a") == "" || q.Get("b") == "" {
		if len(vs) >= 2 {
			d.A, d.B = vs[1].Number, vs[0].Number
		}
	} else {
		d.A, _ = strconv.Atoi(q.Get("a"))
		d.B, _ = strconv.Atoi(q.Get("b"))
	}
	if d.A != 0 && d.A == d.B {
		d.Error = fmt.Sprintf("Version %d compared with itself has no differences; choose two different versions.", d.A)
		a.render(w, r, http.StatusBadRequest, "map_diff", "Compare map versions", d)
		return
	}
	if d.A != 0 && d.B != 0 {
		lines, changes, err := a.versionDiff(r, d.A, d.B)
		if errors.Is(err, maps.ErrNotFound) {
			a.renderError(w, r, http.StatusNotFound, "No such map version.")
			return
		}
		if err != nil {
			a.serverError(w, r, "comparing map versions", err)
			return
		}
		d.Lines, d.Semantic = lines, changes
		for _, l := range lines {
			if l.Op != " " {
				d.Changes++
			}
		}
	}
	a.render(w, r, http.StatusOK, "map_diff", "Compare map versions", d)
}

// versionDiff is the line diff of the YAML exports of versions x and y,
// and what changes between them element by element.
func (a *app) versionDiff(r *http.Request, x, y int) ([]diffLine, []semChange, error) {
	var texts [2]string
	var docs [2]*maps.Document
	for i, n := range []int{x, y} {
		doc, _, err := a.data.maps.Version(r.Context(), n)
		if err != nil {
			return nil, nil, err
		}
		b, err := maps.Export(doc)
		if err != nil {
			return nil, nil, err
		}
		texts[i], docs[i] = string(b), doc
	}
	return lineDiff(texts[0], texts[1]), semanticDiff(docs[0], docs[1]), nil
}

// refuseDraftSave answers a draft save that failed for a reason other than
// the draft's own problems (no such version, a published version, the
// database); it says whether it answered.
func (a *app) refuseDraftSave(w http.ResponseWriter, r *http.Request, err error) bool {
	switch {
	case err == nil:
		return false
	case errors.Is(err, maps.ErrNotFound):
		a.renderError(w, r, http.StatusNotFound, "No such map version.")
	case errors.Is(err, maps.ErrImmutable):
		a.renderError(w, r, http.StatusConflict, "Published versions cannot change; create a draft from this version.")
	default:
		a.serverError(w, r, "saving a draft", err)
	}
	return true
}
