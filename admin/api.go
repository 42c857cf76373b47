package admin

import (
	"bytes"
	_ "embed"
	"encoding/json"
	"errors"
	"net/http"
	"strconv"
)

// openAPI describes every /api/ route; a test keeps it in step with the
// route table.
//
//go:embed openapi.json
var openAPI []byte

func (a *app) apiDocument(w http.ResponseWriter, _ *http.Request) {
	w.Header().Set("Content-Type", "application/json")
	_, _ = w.Write(openAPI)
}

// sessionInfo is GET /api/v1/session: who is signed in and what they may do.
type sessionInfo struct {
	User        User     `json:"user"`
	Permissions []string `json:"permissions"`
}

func (a *app) apiSession(w http.ResponseWriter, r *http.Request) {
	u, _ := currentUser(r)
	info := sessionInfo{User: u, Permissions: []string{}}
	for _, p := range append(rolePerms[u.Role], permPHI) {
		if u.can(p) {
			info.Permissions = append(info.Permissions, string(p))
		}
	}
	writeJSON(w, http.StatusOK, info)
}

func (a *app) apiListUsers(w http.ResponseWriter, r *http.Request) {
	list, err := a.users.List(r.Context())
	if err != nil {
		a.serverError(w, r, "listing users", err)
		return
	}
	writeJSON(w, http.StatusOK, map[string]any{"users": list})
}

// userRequest is the body of POST /api/v1/users.
type userRequest struct {
	Email    string `json:"email"`
	Name     string `json:"name"`
	Role     Role   `json:"role"`
	PHI      bool   `json:"phi"`
	Password string `json:"password"`
}

func (a *app) apiCreateUser(w http.ResponseWriter, r *http.Request) {
	var req userRequest
	if !a.decodeJSON(w, r, &req) {
		return
	}
	if err := mayGrantPHI(r, req.PHI); err != nil {
		a.apiUserError(w, r, err)
		return
	}
	u, err := a.users.Create(r.Context(), actor(r), NewUser{Email: req.Email, Name: req.Name, Role: req.Role,
		PHI: req.PHI, Password: req.Password, MustChangePassword: req.Password != ""})
	if err != nil {
		a.apiUserError(w, r, err)
		return
	}
	w.Header().Set("Location", "/api/v1/users/"+strconv.FormatInt(u.ID, 10))
	writeJSON(w, http.StatusCreated, u)
}

// userPatch is the body of PATCH /api/v1/users/{id}; absent fields stay.
type userPatch struct {
	Role     *Role `json:"role"`
	PHI      *bool `json:"phi"`
	Disabled *bool `json:"disabled"`
}

func (a *app) apiPatchUser(w http.ResponseWriter, r *http.Request) {
	id, err := strconv.ParseInt(r.PathValue("id"), 10, 64)
	if err != nil {
		a.renderError(w, r, http.StatusNotFound, "No such user.")
		return
	}
	var p userPatch
	if !a.decodeJSON(w, r, &p) {
		return
	}
	if p.PHI != nil {
		if err := mayGrantPHI(r, *p.PHI); err != nil {
			a.apiUserError(w, r, err)
			return
		}
	}
	ctx, who := r.Context(), actor(r)
	if p.Role != nil {
		err = a.users.SetRole(ctx, who, id, *p.Role)
	}
	if err == nil && p.PHI != nil {
		err = a.users.SetPHI(ctx, who, id, *p.PHI)
	}
	if err == nil && p.Disabled != nil {
		err = a.users.SetDisabled(ctx, who, id, *p.Disabled)
	}
	var u User
	if err == nil {
		u, err = a.users.Get(ctx, id)
	}
	if err != nil {
		a.apiUserError(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, u)
}

func (a *app) apiUserError(w http.ResponseWriter, r *http.Request, err error) {
	status, msg := userErrorStatus(err)
	if status == http.StatusInternalServerError {
		a.serverError(w, r, "changing a user", err)
		return
	}
	a.renderError(w, r, status, msg)
}

func (a *app) apiAudit(w http.ResponseWriter, r *http.Request) {
	page, err := a.users.audit.Audit(r.Context(), auditFilter(r), r.URL.Query().Get("after"), 100)
	if err != nil {
		a.auditFailed(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, page)
}

// decodeJSON reads a JSON object body, refusing unknown fields and a
// bare null (which would leave v as its zero value and pass for {}). The
// body is already bounded by its route's limit (serveRoute).
func (a *app) decodeJSON(w http.ResponseWriter, r *http.Request, v any) bool {
	var raw json.RawMessage
	err := json.NewDecoder(r.Body).Decode(&raw)
	if err == nil && bytes.Equal(bytes.TrimSpace(raw), []byte("null")) {
		err = errors.New("the body is null; send a JSON object")
	}
	if err == nil {
		dec := json.NewDecoder(bytes.NewReader(raw))
		dec.DisallowUnknownFields()
		err = dec.Decode(v)
	}
	if err != nil {
		var mbe *http.MaxBytesError
		if errors.As(err, &mbe) {
			a.tooLarge(w, r)
			return false
		}
		a.renderError(w, r, http.StatusBadRequest, "The request body is not valid JSON for this endpoint: "+err.Error())
		return false
	}
	return true
}
