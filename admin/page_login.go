package admin

import (
	"context"
	"fmt"
	"math"
	"net"
	"net/http"
	"strings"

	"github.com/fhirsync/fhirsync/logs"
)

type loginData struct {
	Email     string
	Next      string
	Error     string
	OIDCLabel string // empty when OIDC is off
}

func (a *app) loginData(email, next, msg string) loginData {
	d := loginData{Email: email, Next: safeNext(next), Error: msg}
	if a.oidc != nil {
		d.OIDCLabel = a.cfg.OIDC.label()
	}
	return d
}

func (a *app) loginPage(w http.ResponseWriter, r *http.Request) {
	if _, ok := currentUser(r); ok {
		http.Redirect(w, r, safeNext(r.URL.Query().Get("next")), http.StatusSeeOther)
		return
	}
	a.render(w, r, http.StatusOK, "login", "Sign in", a.loginData("", r.URL.Query().Get("next"), ""))
}

// login checks a local password under the per-account and per-address
// throttle, then starts a session.
func (a *app) login(w http.ResponseWriter, r *http.Request) {
	ctx := r.Context()
	email := strings.ToLower(strings.TrimSpace(r.PostFormValue("email")))
	password, next := r.PostFormValue("password"), r.PostFormValue("next")
	if email == "" || password == "" {
		a.render(w, r, http.StatusBadRequest, "login", "Sign in", a.loginData(email, next, "Enter your email and password."))
		return
	}
	ip := clientIP(r)
	until, err := a.throttle.lockedUntil(ctx, accountKey(email), ipKey(ip))
	if err != nil {
		a.serverError(w, r, "checking sign-in throttle", err)
		return
	}
	if !until.IsZero() {
		wait := int(math.Ceil(until.Sub(a.now()).Seconds()))
		a.audit(ctx, auditActor(email), "login.throttled", "", fmt.Sprintf("locked for %ds", wait))
		w.Header().Set("Retry-After", fmt.Sprint(wait))
		a.render(w, r, http.StatusTooManyRequests, "login", "Sign in",
			a.loginData(email, next, fmt.Sprintf("Too many failed sign-ins. Try again in %d seconds.", wait)))
		return
	}
	u, ok, err := a.users.authenticate(ctx, email, password)
	if err != nil {
		a.serverError(w, r, "signing in", err)
		return
	}
	if !ok {
		for key, after := range map[string]int{accountKey(email): accountLockAfter, ipKey(ip): ipLockAfter} {
			if err := a.throttle.fail(ctx, key, after); err != nil {
				a.log.Warn("counting a failed sign-in", "error", err)
			}
		}
		a.audit(ctx, auditActor(email), "login.failure", "", "method password")
		a.render(w, r, http.StatusUnauthorized, "login", "Sign in", a.loginData(email, next, "Email or password is wrong."))
		return
	}
	if err := a.throttle.reset(ctx, accountKey(email)); err != nil {
		a.log.Warn("resetting sign-in throttle", "error", err)
	}
	if err := a.signIn(ctx, w, r, u, "password"); err != nil {
		a.serverError(w, r, "starting a session", err)
		return
	}
	http.Redirect(w, r, safeNext(next), http.StatusSeeOther)
}

// signIn starts a session for u and records it.
func (a *app) signIn(ctx context.Context, w http.ResponseWriter, r *http.Request, u User, method string) error {
	if err := a.sessions.start(ctx, w, r, u.ID); err != nil {
		return err
	}
	if err := a.users.touchLogin(ctx, u.ID); err != nil {
		a.log.Warn("recording last sign-in", "user_id", u.ID, "error", err)
	}
	a.audit(ctx, u.Email, "login.success", fmt.Sprint(u.ID), "method "+method)
	return nil
}

func (a *app) logout(w http.ResponseWriter, r *http.Request) {
	if err := a.sessions.end(w, r); err != nil {
		a.serverError(w, r, "signing out", err)
		return
	}
	u, _ := currentUser(r)
	a.audit(r.Context(), u.Email, "logout", fmt.Sprint(u.ID), "")
	http.Redirect(w, r, "/login", http.StatusSeeOther)
}

// audit records a sign-in event; a failure to record is logged, never
// shown, so the trail cannot be used to probe accounts.
func (a *app) audit(ctx context.Context, who, action, userID, after string) {
	e := logs.AuditEntry{At: a.now(), Actor: who, Action: action, ObjectType: "user", ObjectID: userID, After: after}
	if userID == "" {
		e.ObjectType = ""
	}
	if err := a.users.audit.AppendAudit(ctx, e); err != nil {
		a.log.Error("recording to the audit trail", "action", action, "error", err)
	}
}

// auditActor bounds an attempted email for the audit trail.
func auditActor(email string) string {
	if email == "" {
		return "anonymous"
	}
	if len(email) > 200 {
		return email[:200]
	}
	return email
}

// clientIP is the peer address. Proxies are not trusted: behind one, all
// clients share its address for the per-address throttle.
func clientIP(r *http.Request) string {
	host, _, err := net.SplitHostPort(r.RemoteAddr)
	if err != nil {
		return r.RemoteAddr
	}
	return host
}
