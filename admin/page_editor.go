package admin

import (
	"bytes"
	"fmt"
	"net/http"
	"net/url"

	"github.com/fhirsync/fhirsync/maps"
)

// structuredEditorData is the structured editor of a draft: the forms are
// built in the browser (editor.js) from the YAML, which the page carries
// and which is what is saved, so the page also works as a plain YAML
// editor without scripts.
type structuredEditorData struct {
	Info maps.VersionInfo
	YAML string
	// Map is the entity map to open first.
	Map string
	// CRM says CRM metadata can be read (the attribute picker and the
	// refresh button).
	CRM      bool
	Problems []problemView
	Notice   string
	Error    string
	// Sections are the editor's parts, in page order, for the table of
	// contents.
	Sections []editorSection
}

// editorSection is one part of the structured editor.
type editorSection struct{ ID, Label string }

var editorSections = []editorSection{
	{"ed-entity", "Entity settings"},
	{"ed-attributes", "Attribute maps"},
	{"ed-expansions", "Expansion maps"},
	{"ed-valuemaps", "Value maps"},
	{"ed-samples", "Samples"},
	{"ed-yaml-section", "YAML"},
}

// editorPage is GET /maps/versions/{id}/edit.
func (a *app) editorPage(w http.ResponseWriter, r *http.Request) {
	a.renderEditor(w, r, http.StatusOK, "", func(d *structuredEditorData) { d.Notice = notices[r.URL.Query().Get("ok")] })
}

// renderEditor shows the structured editor of draft {id}; yaml, when not
// empty, replaces the stored text (a refused save keeps what was sent).
func (a *app) renderEditor(w http.ResponseWriter, r *http.Request, status int, yaml string, edit func(*structuredEditorData)) {
	_, doc, info, ok := a.loadVersion(w, r)
	if !ok {
		return
	}
	if info.Status != maps.StatusDraft {
		a.renderError(w, r, http.StatusConflict, fmt.Sprintf("Version %d is %s and cannot change; create a draft from it to edit.", info.Number, info.Status))
		return
	}
	if yaml == "" {
		y, err := maps.Export(doc)
		if err != nil {
			a.serverError(w, r, "exporting a map version", err)
			return
		}
		yaml = string(y)
	}
	d := structuredEditorData{Info: info, YAML: yaml, Map: r.FormValue("map"), CRM: a.data.crm != nil, Sections: editorSections}
	if d.Map == "" && len(doc.EntityMaps) > 0 {
		d.Map = doc.EntityMaps[0].Name
	}
	if edit != nil {
		edit(&d)
	}
	a.render(w, r, status, "map_editor", fmt.Sprintf("Edit draft %d", info.Number), d)
}

// editorSave is POST /maps/versions/{id}/edit: the editor's YAML replaces
// the draft, through the same validation (and CRM check) as every save.
func (a *app) editorSave(w http.ResponseWriter, r *http.Request) {
	n, ok := a.pathVersion(w, r)
	if !ok {
		return
	}
	data := []byte(r.PostFormValue("yaml"))
	if len(bytes.TrimSpace(data)) == 0 {
		a.renderEditor(w, r, http.StatusBadRequest, "", func(d *structuredEditorData) { d.Error = "Not saved: the YAML is empty." })
		return
	}
	doc, err := maps.Parse(data)
	unchecked := ""
	if err == nil {
		unchecked, err = a.updateDraft(r, n, doc, "edited in the structured editor")
	}
	if ps, ok := problemsOf(err); ok {
		a.renderEditor(w, r, http.StatusUnprocessableEntity, string(data), func(d *structuredEditorData) {
			d.Problems, d.Error = ps, fmt.Sprintf("Not saved: the draft would not be valid (%d problems).", len(ps))
		})
		return
	}
	if a.refuseDraftSave(w, r, err) {
		return
	}
	done := "saved"
	if unchecked != "" {
		done = "saved-unchecked"
	}
	http.Redirect(w, r, fmt.Sprintf("/maps/versions/%d/edit?ok=%s&map=%s", n, done, url.QueryEscape(r.PostFormValue("map"))), http.StatusSeeOther)
}
