package admin

import (
	"bytes"
	"embed"
	"encoding/json"
	"fmt"
	"html/template"
	"io/fs"
	"net/http"
	"path"
	"strings"
	"time"
)

//go:embed templates/*.html
var templateFiles embed.FS

//go:embed static
var staticFiles embed.FS

// pages holds one parsed template set per page, each with the layout.
type pages map[string]*template.Template

var templateFuncs = template.FuncMap{
	"roles": func() []Role { return Roles },
	"when": func(t any) string {
		switch v := t.(type) {
		case time.Time:
			return v.UTC().Format("2006-01-02 15:04:05Z")
		case *time.Time:
			if v != nil {
				return v.UTC().Format("2006-01-02 15:04:05Z")
			}
		}
		return "—"
	},
}

// parsePages parses every template at start-up, so a broken template
// stops the process instead of failing a request.
func parsePages() (pages, error) {
	layout, err := template.New("layout.html").Funcs(templateFuncs).ParseFS(templateFiles, "templates/layout.html")
	if err != nil {
		return nil, fmt.Errorf("parsing the admin layout: %w", err)
	}
	files, err := fs.Glob(templateFiles, "templates/*.html")
	if err != nil {
		return nil, err
	}
	ps := pages{}
	for _, f := range files {
		name := strings.TrimSuffix(path.Base(f), ".html")
		if name == "layout" {
			continue
		}
		t, err := template.Must(layout.Clone()).ParseFS(templateFiles, f)
		if err != nil {
			return nil, fmt.Errorf("parsing admin page %s: %w", name, err)
		}
		ps[name] = t
	}
	return ps, nil
}

// view is what every page template receives.
type view struct {
	Title  string
	User   *User
	Nav    []navItem
	Active string
	Flash  string
	Data   any
}

// render writes page with data; the page is rendered to a buffer first so
// a template error becomes a clean 500.
func (a *app) render(w http.ResponseWriter, r *http.Request, status int, page, title string, data any) {
	v := view{Title: title, Active: r.URL.Path, Data: data, Flash: flashes[r.URL.Query().Get("done")]}
	if u, ok := currentUser(r); ok {
		v.User, v.Nav = &u, a.nav(u)
	}
	t, ok := a.pages[page]
	if !ok {
		a.serverError(w, r, "rendering", fmt.Errorf("no page template %q", page))
		return
	}
	var buf bytes.Buffer
	if err := t.ExecuteTemplate(&buf, "layout", v); err != nil {
		a.serverError(w, r, "rendering "+page, err)
		return
	}
	w.Header().Set("Content-Type", "text/html; charset=utf-8")
	w.WriteHeader(status)
	_, _ = buf.WriteTo(w)
}

// flashes are the fixed messages a POST-redirect-GET may show (?done=…).
var flashes = map[string]string{
	"created":  "User created.",
	"role":     "Role changed.",
	"phi":      "PHI permission changed.",
	"disabled": "User disabled.",
	"enabled":  "User enabled.",
	"password": "Password changed.",
	"conflict": "Resolution recorded. The sync agent writes it to the other side on its next pass; the audit trail names you.",
}

// apiError is the JSON error body.
type apiError struct {
	Error struct {
		Code    string `json:"code"`
		Message string `json:"message"`
	} `json:"error"`
}

// renderError is the one way a handler reports a failure: a JSON error on
// the API, an error page otherwise.
func (a *app) renderError(w http.ResponseWriter, r *http.Request, status int, msg string) {
	if isAPI(r) {
		var e apiError
		e.Error.Code = strings.ReplaceAll(strings.ToLower(http.StatusText(status)), " ", "_")
		e.Error.Message = msg
		writeJSON(w, status, e)
		return
	}
	a.render(w, r, status, "error", http.StatusText(status), msg)
}

// serverError logs err for operators and shows a generic 500.
func (a *app) serverError(w http.ResponseWriter, r *http.Request, doing string, err error) {
	a.log.Error("admin request failed", "doing", doing, "method", r.Method, "path", r.URL.Path, "error", err)
	if isAPI(r) {
		var e apiError
		e.Error.Code, e.Error.Message = "internal_server_error", "Something went wrong; the process log has details."
		writeJSON(w, http.StatusInternalServerError, e)
		return
	}
	// The error page itself must not fail again.
	if t, ok := a.pages["error"]; ok {
		var buf bytes.Buffer
		if t.ExecuteTemplate(&buf, "layout", view{Title: "Error", Data: "Something went wrong; the process log has details."}) == nil {
			w.Header().Set("Content-Type", "text/html; charset=utf-8")
			w.WriteHeader(http.StatusInternalServerError)
			_, _ = buf.WriteTo(w)
			return
		}
	}
	http.Error(w, "internal server error", http.StatusInternalServerError)
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	_ = enc.Encode(v)
}

// static serves the embedded CSS and images.
func (a *app) static(w http.ResponseWriter, r *http.Request) {
	sub, _ := fs.Sub(staticFiles, "static")
	w.Header().Set("Cache-Control", "public, max-age=3600")
	http.StripPrefix("/static/", http.FileServerFS(sub)).ServeHTTP(w, r)
}
