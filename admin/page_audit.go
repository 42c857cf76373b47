package admin

import (
	"errors"
	"fmt"
	"net/http"

	"github.com/fhirsync/fhirsync/logs"
)

type auditData struct {
	Filter logs.AuditFilter
	Page   logs.AuditPage
}

// auditFilter reads the audit trail filter from the query string.
func auditFilter(r *http.Request) logs.AuditFilter {
	q := r.URL.Query()
	return logs.AuditFilter{Actor: q.Get("actor"), Action: q.Get("action"), ObjectType: q.Get("object_type"), ObjectID: q.Get("object_id")}
}

func (a *app) auditPage(w http.ResponseWriter, r *http.Request) {
	f := auditFilter(r)
	page, err := a.users.audit.Audit(r.Context(), f, r.URL.Query().Get("after"), 50)
	if err != nil {
		a.auditFailed(w, r, err)
		return
	}
	a.render(w, r, http.StatusOK, "audit", "Audit trail", auditData{Filter: f, Page: page})
}

// auditExport streams the filtered audit trail as CSV or NDJSON. The
// export itself is recorded.
func (a *app) auditExport(w http.ResponseWriter, r *http.Request) {
	format := logs.CSV
	if q := r.URL.Query().Get("format"); q != "" {
		var err error
		if format, err = logs.ParseFormat(q); err != nil {
			a.renderError(w, r, http.StatusBadRequest, "The export format must be csv or ndjson.")
			return
		}
	}
	f := auditFilter(r)
	a.audit(r.Context(), actor(r), "audit.export", "", fmt.Sprintf("format %s, actor %q, action %q", format, f.Actor, f.Action))
	ctype := map[logs.Format]string{logs.CSV: "text/csv; charset=utf-8", logs.NDJSON: "application/x-ndjson"}[format]
	w.Header().Set("Content-Type", ctype)
	w.Header().Set("Content-Disposition", fmt.Sprintf(`attachment; filename="fhirsync-audit.%s"`, format))
	if _, err := a.users.audit.ExportAudit(r.Context(), w, format, f); err != nil {
		// The status is sent; the truncated file is all the client can get.
		a.log.Error("exporting the audit trail", "error", err)
	}
}

func (a *app) auditFailed(w http.ResponseWriter, r *http.Request, err error) {
	if errors.Is(err, logs.ErrBadCursor) {
		a.renderError(w, r, http.StatusBadRequest, "The page cursor is not valid.")
		return
	}
	a.serverError(w, r, "reading the audit trail", err)
}
