package admin

import (
	"context"
	"errors"
	"fmt"
	"math"
	"net/http"
	"strings"
	"sync"
	"time"

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

// login checks a local password under the throttle, then starts a
// session. The attempt is reserved against the (account, address) pair
// before the password is verified, so parallel guesses get no more
// verifications than sequential ones.
func (a *app) login(w http.ResponseWriter, r *http.Request) {
	ctx := r.Context()
	email := strings.ToLower(strings.TrimSpace(r.PostFormValue("email")))
	password, next := r.PostFormValue("password"), r.PostFormValue("next")
	if email == "" || password == "" {
		a.render(w, r, http.StatusBadRequest, "login", "Sign in", a.loginData(email, next, "Enter your email and password."))
		return
	}
	addr := clientAddr(r, a.proxies)
	key := loginKey(email, addr)
	until, err := a.throttle.reserve(ctx, key, accountLockAfter)
	if err != nil {
		a.serverError(w, r, "checking sign-in throttle", err)
		return
	}
	if !until.IsZero() {
		wait := int(math.Ceil(until.Sub(a.now()).Seconds()))
		if a.audits.allow(key, a.now()) {
			a.audit(ctx, a.attemptActor(ctx, email), "login.throttled", "", fmt.Sprintf("locked for %ds, address %s", wait, addr))
		}
		w.Header().Set("Retry-After", fmt.Sprint(wait))
		a.render(w, r, http.StatusTooManyRequests, "login", "Sign in",
			a.loginData(email, next, fmt.Sprintf("Too many failed sign-ins. Try again in %d seconds.", wait)))
		return
	}
	res, err := a.users.authenticate(ctx, email, password)
	if errors.Is(err, errBusy) {
		w.Header().Set("Retry-After", "1")
		a.render(w, r, http.StatusServiceUnavailable, "login", "Sign in",
			a.loginData(email, next, "Too many sign-ins are being checked right now. Try again in a moment."))
		return
	}
	if err != nil {
		a.serverError(w, r, "signing in", err)
		return
	}
	if !res.OK {
		who := unknownAccount
		if res.Known {
			who = auditActor(email)
		}
		a.audit(ctx, who, "login.failure", "", "method password, address "+addr)
		a.render(w, r, http.StatusUnauthorized, "login", "Sign in", a.loginData(email, next, "Email or password is wrong."))
		return
	}
	if err := a.throttle.reset(ctx, key); err != nil {
		a.log.Warn("resetting sign-in throttle", "error", err)
	}
	if err := a.signIn(ctx, w, r, res.User, "password"); err != nil {
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

// unknownAccount stands in the audit trail for an email no account has:
// what was typed there may be a password or a stranger's address, so it is
// not kept.
const unknownAccount = "unknown account"

// attemptActor names the account of a sign-in attempt for the audit trail.
func (a *app) attemptActor(ctx context.Context, email string) string {
	if _, err := a.users.ByEmail(ctx, email); err != nil {
		return unknownAccount
	}
	return auditActor(email)
}

// auditActor bounds an email for the audit trail.
func auditActor(email string) string {
	if email == "" {
		return "anonymous"
	}
	if len(email) > 200 {
		return email[:200]
	}
	return email
}

// auditLimiter lets one audit entry per key through each period, so a
// flood of refused attempts cannot flood the audit trail. Per process:
// with several replicas each may write one per period.
type auditLimiter struct {
	every time.Duration
	mu    sync.Mutex
	last  map[string]time.Time
}

// maxLimiterKeys bounds the limiter's memory; past it, expired keys are
// dropped, and if none has expired the oldest state is forgotten.
const maxLimiterKeys = 10000

// allow reports whether an entry for key may be written at now.
func (l *auditLimiter) allow(key string, now time.Time) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	if t, ok := l.last[key]; ok && now.Sub(t) < l.every {
		return false
	}
	if len(l.last) >= maxLimiterKeys {
		for k, t := range l.last {
			if now.Sub(t) >= l.every {
				delete(l.last, k)
			}
		}
		if len(l.last) >= maxLimiterKeys {
			clear(l.last)
		}
	}
	if l.last == nil {
		l.last = map[string]time.Time{}
	}
	l.last[key] = now
	return true
}
