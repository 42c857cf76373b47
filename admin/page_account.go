package admin

import (
	"errors"
	"net/http"
)

type passwordData struct {
	Local bool
	Error string
}

func (a *app) passwordPage(w http.ResponseWriter, r *http.Request) {
	u, _ := currentUser(r)
	a.render(w, r, http.StatusOK, "password", "Change password", passwordData{Local: u.Local})
}

// changePassword lets a local user replace their password; it ends their
// other sessions and starts a fresh one.
func (a *app) changePassword(w http.ResponseWriter, r *http.Request) {
	u, _ := currentUser(r)
	fail := func(status int, msg string) {
		a.render(w, r, status, "password", "Change password", passwordData{Local: u.Local, Error: msg})
	}
	if !u.Local {
		fail(http.StatusBadRequest, "Your account signs in through your organisation; its password is managed there.")
		return
	}
	current, next := r.PostFormValue("current"), r.PostFormValue("new")
	if next != r.PostFormValue("confirm") {
		fail(http.StatusBadRequest, "The new passwords do not match.")
		return
	}
	if next == current {
		fail(http.StatusBadRequest, "Choose a password different from the current one.")
		return
	}
	if res, err := a.users.authenticate(r.Context(), u.Email, current); errors.Is(err, errBusy) {
		w.Header().Set("Retry-After", "1")
		fail(http.StatusServiceUnavailable, "Too many sign-ins are being checked right now. Try again in a moment.")
		return
	} else if err != nil {
		a.serverError(w, r, "checking password", err)
		return
	} else if !res.OK {
		fail(http.StatusBadRequest, "The current password is wrong.")
		return
	}
	err := a.users.SetPassword(r.Context(), u.Email, u.ID, next, false)
	if errors.Is(err, ErrInvalidUser) {
		fail(http.StatusBadRequest, passwordPolicyMessage(err))
		return
	}
	if err != nil {
		a.serverError(w, r, "changing password", err)
		return
	}
	if err := a.sessions.start(r.Context(), w, r, u.ID); err != nil {
		a.serverError(w, r, "starting a session", err)
		return
	}
	http.Redirect(w, r, "/?done=password", http.StatusSeeOther)
}
