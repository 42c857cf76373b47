package admin

import (
	"errors"
	"mime"
	"net/http"
	"time"
)

// Request body limits. Every route reads its body through one limit, set
// where the route is served (serveRoute), so no handler can read more and
// no two limits are nested.
const (
	// defaultBodyLimit bounds forms and JSON bodies of ordinary requests
	// (a sign-in, a role change, a redrive selection).
	defaultBodyLimit = 64 << 10
	// MaxMapSetBytes bounds a request that carries a whole map set or a
	// pasted record: the map import (upload, pasted text or JSON),
	// saving a version's YAML, validation and previews.
	MaxMapSetBytes = 4 << 20
	// multipartOverhead is room for the multipart framing and the other
	// form fields beside an uploaded map set.
	multipartOverhead = 64 << 10
	// formMemory is how much of a multipart body is held in memory; larger
	// files are spooled to temporary files, removed when the request ends.
	formMemory = 1 << 20
)

// mapSetRoutes carry a map set or a pasted record and get MaxMapSetBytes.
var mapSetRoutes = map[string]bool{
	"POST /maps/import":                       true,
	"POST /maps/versions/{id}":                true,
	"POST /maps/versions/{id}/preview":        true,
	"POST /api/v1/maps/validate":              true,
	"POST /api/v1/maps/import":                true,
	"POST /api/v1/maps/versions/{id}/preview": true,
	"POST /maps/versions/{id}/edit":           true,
	"POST /api/v1/maps/document":              true,
	"POST /api/v1/maps/samples":               true,
	"POST /api/v1/maps/evaluate":              true,
}

// streamRoutes write exports that may outlast the server's write timeout
// (the process sets one so a stalled client cannot hold a connection);
// they get streamWriteTimeout instead.
var streamRoutes = map[string]bool{
	"GET /logs/export":        true,
	"GET /api/v1/logs/export": true,
	"GET /audit/export":       true,
}

// streamWriteTimeout bounds one export.
const streamWriteTimeout = time.Hour

// bodyLimit is the largest body the route accepts.
func bodyLimit(pattern string) int64 {
	if mapSetRoutes[pattern] {
		return MaxMapSetBytes + multipartOverhead
	}
	return defaultBodyLimit
}

// serveRoute runs the route's handler with its body bounded. A form body
// is parsed here, on the request the handler receives, so every request
// copy made later shares the parsed form and its temporary files are
// removed when the handler returns, whatever the handler chain did (Go's
// server removes them only for the request it created).
func (a *app) serveRoute(rt route, w http.ResponseWriter, r *http.Request) {
	limit := bodyLimit(rt.pattern)
	if r.ContentLength > limit {
		a.tooLarge(w, r)
		return
	}
	r.Body = http.MaxBytesReader(w, r.Body, limit)
	if kind := formKind(r); kind != "" {
		var err error
		if kind == "multipart/form-data" {
			err = r.ParseMultipartForm(formMemory)
			if r.MultipartForm != nil {
				defer func() { _ = r.MultipartForm.RemoveAll() }()
			}
		} else {
			err = r.ParseForm()
		}
		var mbe *http.MaxBytesError
		switch {
		case errors.As(err, &mbe):
			a.tooLarge(w, r)
			return
		case err != nil:
			a.renderError(w, r, http.StatusBadRequest, "The form could not be read.")
			return
		}
	}
	if streamRoutes[rt.pattern] {
		// Not every ResponseWriter can (a test recorder); the server's
		// own timeout then stands.
		_ = http.NewResponseController(w).SetWriteDeadline(time.Now().Add(streamWriteTimeout))
	}
	rt.handler(w, r)
}

// formKind is the media type of the HTML form r carries in its body
// (url-encoded or multipart), or "" when it carries none.
func formKind(r *http.Request) string {
	if r.Method != http.MethodPost && r.Method != http.MethodPut && r.Method != http.MethodPatch {
		return ""
	}
	ct, _, err := mime.ParseMediaType(r.Header.Get("Content-Type"))
	if err != nil || (ct != "application/x-www-form-urlencoded" && ct != "multipart/form-data") {
		return ""
	}
	return ct
}

func (a *app) tooLarge(w http.ResponseWriter, r *http.Request) {
	// The rest of an oversized body is not read; close the connection
	// rather than drain it.
	w.Header().Set("Connection", "close")
	a.renderError(w, r, http.StatusRequestEntityTooLarge, "The request body is too large.")
}
