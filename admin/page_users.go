package admin

import (
	"errors"
	"net/http"
	"strconv"
)

type usersData struct {
	Users []User
	Self  int64
	Form  NewUser
	Error string
}

func (a *app) usersPage(w http.ResponseWriter, r *http.Request) {
	a.renderUsers(w, r, http.StatusOK, NewUser{Role: RoleViewer}, "")
}

func (a *app) renderUsers(w http.ResponseWriter, r *http.Request, status int, form NewUser, msg string) {
	list, err := a.users.List(r.Context())
	if err != nil {
		a.serverError(w, r, "listing users", err)
		return
	}
	u, _ := currentUser(r)
	form.Password = ""
	a.render(w, r, status, "users", "Users", usersData{Users: list, Self: u.ID, Form: form, Error: msg})
}

// createUser adds a local user whose first password, typed by the admin,
// must be changed at first sign-in.
func (a *app) createUser(w http.ResponseWriter, r *http.Request) {
	n := NewUser{Email: r.PostFormValue("email"), Name: r.PostFormValue("name"), Role: Role(r.PostFormValue("role")),
		PHI: r.PostFormValue("phi") == "on", Password: r.PostFormValue("password"), MustChangePassword: true}
	if n.Password == "" {
		a.renderUsers(w, r, http.StatusBadRequest, n, "A first password is required.")
		return
	}
	if err := mayGrantPHI(r, n.PHI); err != nil {
		a.userChangeFailed(w, r, n, err)
		return
	}
	if _, err := a.users.Create(r.Context(), actor(r), n); err != nil {
		a.userChangeFailed(w, r, n, err)
		return
	}
	http.Redirect(w, r, "/users?done=created", http.StatusSeeOther)
}

func (a *app) setRole(w http.ResponseWriter, r *http.Request) {
	a.changeUser(w, r, "role", func(id int64) error {
		return a.users.SetRole(r.Context(), actor(r), id, Role(r.PostFormValue("role")))
	})
}

func (a *app) setPHI(w http.ResponseWriter, r *http.Request) {
	phi := r.PostFormValue("phi") == "on"
	a.changeUser(w, r, "phi", func(id int64) error {
		if err := mayGrantPHI(r, phi); err != nil {
			return err
		}
		return a.users.SetPHI(r.Context(), actor(r), id, phi)
	})
}

// ErrPHIGrant refuses a grant of the PHI permission by someone who does
// not hold it: otherwise any admin could give it to themselves.
var ErrPHIGrant = errors.New("only a user with the PHI permission can grant it")

// mayGrantPHI allows granting PHI (phi true) only to a signed-in user who
// has it; withdrawing it is always allowed.
func mayGrantPHI(r *http.Request, phi bool) error {
	if !phi {
		return nil
	}
	if u, ok := currentUser(r); ok && u.can(permPHI) {
		return nil
	}
	return ErrPHIGrant
}

func (a *app) setDisabled(w http.ResponseWriter, r *http.Request) {
	disabled := r.PostFormValue("disabled") == "true"
	done := "enabled"
	if disabled {
		done = "disabled"
	}
	a.changeUser(w, r, done, func(id int64) error {
		return a.users.SetDisabled(r.Context(), actor(r), id, disabled)
	})
}

// changeUser runs one change on the user named by the path and redirects
// back to the list.
func (a *app) changeUser(w http.ResponseWriter, r *http.Request, done string, change func(id int64) error) {
	id, err := strconv.ParseInt(r.PathValue("id"), 10, 64)
	if err != nil {
		a.renderError(w, r, http.StatusNotFound, "No such user.")
		return
	}
	if err := change(id); err != nil {
		a.userChangeFailed(w, r, NewUser{Role: RoleViewer}, err)
		return
	}
	http.Redirect(w, r, "/users?done="+done, http.StatusSeeOther)
}

// userChangeFailed shows the users page again with what went wrong.
func (a *app) userChangeFailed(w http.ResponseWriter, r *http.Request, form NewUser, err error) {
	status, msg := userErrorStatus(err)
	if status == http.StatusInternalServerError {
		a.serverError(w, r, "changing a user", err)
		return
	}
	a.renderUsers(w, r, status, form, msg)
}

// userErrorStatus maps a user store error to a status and a message that
// is safe to show.
func userErrorStatus(err error) (int, string) {
	switch {
	case errors.Is(err, ErrUserNotFound):
		return http.StatusNotFound, "No such user."
	case errors.Is(err, ErrEmailTaken):
		return http.StatusConflict, "Another user already has this email."
	case errors.Is(err, ErrPHIGrant):
		return http.StatusForbidden, "Only a user with the PHI permission can grant it."
	case errors.Is(err, ErrLastAdmin):
		return http.StatusConflict, "The last enabled admin cannot be demoted or disabled."
	case errors.Is(err, ErrInvalidUser):
		return http.StatusBadRequest, err.Error()
	}
	return http.StatusInternalServerError, ""
}
