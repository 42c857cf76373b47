package admin

import (
	"context"
	"fmt"
	"net/http"
	"net/http/httptest"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/chromedp/cdproto/page"
	"github.com/chromedp/chromedp"

	"github.com/fhirsync/fhirsync/admin/browsertest"
	"github.com/fhirsync/fhirsync/logs"
	"github.com/fhirsync/fhirsync/storage/storagetest"
)

// showcase is an app with something on every page: published and draft
// maps, a day of decisions, a captured payload, dead letters, held
// conflicts, feed checkpoints. The accessibility walk and the
// screenshots use it.
type showcase struct {
	e *testEnv
	// Draft is the number of the draft map version; Published the one
	// before it.
	Draft, Published int
	// Failed is a failed decision; Captured one with a payload capture.
	Failed, Captured int64
	// Conflict is a held conflict.
	Conflict int64
}

// newShowcase seeds the app as admin@example.org (admin, PHI) sees it.
func newShowcase(t *testing.T) *showcase {
	t.Helper()
	db := storagetest.Open(t, "sqlite")
	store, err := logs.New(db, logs.Config{Capture: logs.CaptureConfig{Enabled: true, KeyID: "k1", Key: captureKey}}, nil)
	if err != nil {
		t.Fatal(err)
	}
	e := newTestEnv(t, db, AppConfig{}, withLogs(store))
	e.user("admin@example.org", RoleAdmin, true)
	s := &showcase{e: e, Published: starterDraft(t, e)}
	if _, err := e.app.data.maps.Publish(t.Context(), s.Published, "admin@example.org", "starter maps"); err != nil {
		t.Fatal(err)
	}
	doc, _, _ := e.app.data.maps.Version(t.Context(), s.Published)
	info, err := e.app.data.maps.CreateDraft(t.Context(), doc, "admin@example.org", "next")
	if err != nil {
		t.Fatal(err)
	}
	s.Draft = info.Number
	seedDemoLog(t, e.app.data.logs, e.clock.now())
	q := e.embedded("fhir-changes")
	for i := range 3 {
		deadLetter(t, q, fmt.Sprint("p", 100+i))
	}
	for _, f := range []string{"fhir:Patient", "fhir:Encounter", "crm:contact"} {
		if err := e.db.Exec("INSERT INTO feed_checkpoints (feed, position, updated_at) VALUES (?, ?, ?)", f, "x", e.clock.now().Add(-42*time.Second)).Error; err != nil {
			t.Fatal(err)
		}
	}
	s.Conflict, _ = holdConflicts(t, e.app.data.logs)
	page, err := e.app.data.logs.Search(t.Context(), logs.Filter{Outcome: logs.OutcomeFailed}, "", 1)
	if err != nil || len(page.Decisions) == 0 {
		t.Fatalf("no failed decision in the showcase: %v", err)
	}
	s.Failed = page.Decisions[0].ID
	d := &logs.Decision{Time: e.clock.now().Add(-time.Minute), Direction: logs.FHIRToCRM, EntityMap: "patient-contact",
		Source: logs.Ref{Type: "Patient", ID: "p9"}, Target: logs.Ref{Type: "contact", ID: "c9"},
		Outcome: logs.OutcomeSent, Reason: logs.ReasonCreated, ChangedFields: []string{"firstname", "lastname"},
		Snapshots: &logs.Snapshots{Source: []byte(`{"resourceType":"Patient","id":"p9","name":[{"family":"Hopper","given":["Grace"]}]}`),
			Target: []byte(`{"firstname":"Grace","lastname":"Hopper"}`)}}
	if err := store.Write(t.Context(), d); err != nil {
		t.Fatal(err)
	}
	s.Captured = d.ID
	return s
}

// a11yExamples are the addresses the accessibility walk opens for a page
// route, beyond what it finds itself. The walk opens every GET page of
// the route table: a route without wildcards at its own path, a route
// with wildcards at the first link to it on the pages already opened.
// Add an entry when a page's wildcard is not linked from another page, or
// when a state of a page (a form error, a filter) deserves its own check.
func a11yExamples(s *showcase) map[string][]string {
	return map[string][]string{
		"GET /logs": {"/logs?record=Patient/p1", "/logs?from=yesterday&to=2026-13-01",
			"/logs?outcome=failed&reason=throttled"},
		"GET /logs/{id}":          {fmt.Sprint("/logs/", s.Failed), fmt.Sprint("/logs/", s.Captured)},
		"GET /logs/{id}/capture":  {fmt.Sprintf("/logs/%d/capture", s.Captured)},
		"GET /maps/versions/{id}": {fmt.Sprintf("/maps/versions/%d?map=patient-contact&attr=first-name", s.Draft)},
		"GET /conflicts/{id}":     {fmt.Sprint("/conflicts/", s.Conflict)},
		"GET /maps/diff":          {fmt.Sprintf("/maps/diff?a=%d&b=%d", s.Published, s.Draft)},
		// Not a route: the page every unknown address gets.
		"404": {"/no/such/page"},

		// The preview of a captured decision with the newest draft.
		"GET /maps/preview": {fmt.Sprintf("/maps/preview?decision=%d", s.Captured)},

		// The structured editor of the draft.
		"GET /maps/versions/{id}/edit": {fmt.Sprintf("/maps/versions/%d/edit?map=patient-contact", s.Draft)},

		// The publish confirmation of the draft.
		"GET /maps/versions/{id}/publish": {fmt.Sprintf("/maps/versions/%d/publish?note=next", s.Draft)},
	}
}

// a11yFlow is a page reached by doing something on another — a form
// posted, a result shown — which the walk of GET pages cannot reach.
type a11yFlow struct {
	name, path string
	then       []chromedp.Action
}

// a11yFlows are checked like pages: each opens path, runs then, and is
// checked when then is done. Add one for a page that a POST renders.
func a11yFlows(s *showcase) []a11yFlow {
	return []a11yFlow{
		{"redrive confirmation", "/deadletters", []chromedp.Action{
			chromedp.Click(`#redrive-form input[name=sel]`, chromedp.ByQuery),
			chromedp.Click("#redrive-selected", chromedp.ByID),
			chromedp.WaitVisible("#confirm-count", chromedp.ByID)}},
		{"map preview result", fmt.Sprintf("/maps/versions/%d/preview?map=patient-contact", s.Draft), []chromedp.Action{
			chromedp.WaitVisible("#preview-form", chromedp.ByID),
			setField("preview-input", `{"resourceType":"Patient","id":"p1","name":[{"use":"official","family":"Lovelace","given":["Ada"]}]}`),
			chromedp.Click("#preview", chromedp.ByID),
			chromedp.WaitVisible("#preview-result", chromedp.ByID)}},
		{"map preview of a logged decision", fmt.Sprintf("/maps/preview?decision=%d", s.Captured), []chromedp.Action{
			chromedp.WaitVisible("#preview-form", chromedp.ByID),
			chromedp.Click("#preview", chromedp.ByID),
			chromedp.WaitVisible("#preview-result", chromedp.ByID)}},
		{"map editor with the attribute picker and path completion open", fmt.Sprintf("/maps/versions/%d/edit?map=patient-contact", s.Draft), []chromedp.Action{
			leaveWithoutAsking(),
			chromedp.WaitVisible("#am-list", chromedp.ByID),
			press("#am-add"),
			chromedp.WaitVisible("#am-picker-filter", chromedp.ByID),
			chromedp.SendKeys("#am-0-fhirPath", "na", chromedp.ByID),
			chromedp.WaitVisible("#am-0-fhirPath-options li", chromedp.ByQuery)}},
		{"map editor asking before leaving", fmt.Sprintf("/maps/versions/%d/edit?map=patient-contact", s.Draft), []chromedp.Action{
			leaveWithoutAsking(),
			chromedp.WaitVisible("#ent-description", chromedp.ByID),
			chromedp.SendKeys("#ent-description", " edited", chromedp.ByID),
			chromedp.WaitVisible("#ed-dirty", chromedp.ByID),
			chromedp.Click("#back-to-version", chromedp.ByID),
			chromedp.WaitVisible("#leave-dialog", chromedp.ByID)}},
		{"decision search with a bad date", "/logs", []chromedp.Action{
			chromedp.SendKeys("#f-from", "tomorrow", chromedp.ByID),
			chromedp.Click("#search", chromedp.ByID),
			chromedp.WaitVisible("#filter-errors", chromedp.ByID)}},
	}
}

// leaveWithoutAsking answers the browser's "leave this page?" prompt
// (beforeunload) with leave, so the walk can go on from a page left with
// unsaved changes.
func leaveWithoutAsking() chromedp.Action {
	return chromedp.ActionFunc(func(ctx context.Context) error {
		chromedp.ListenTarget(ctx, func(ev any) {
			if _, ok := ev.(*page.EventJavascriptDialogOpening); ok {
				go func() { _ = chromedp.Run(ctx, page.HandleJavaScriptDialog(true)) }()
			}
		})
		return nil
	})
}

// patternRE matches the paths a ServeMux pattern's path serves.
func patternRE(path string) *regexp.Regexp {
	path = strings.TrimSuffix(path, "{$}")
	segs := strings.Split(path, "/")
	for i, s := range segs {
		switch {
		case strings.HasPrefix(s, "{") && strings.HasSuffix(s, "...}"):
			segs[i] = ".+"
		case strings.HasPrefix(s, "{"):
			segs[i] = "[^/]+"
		default:
			segs[i] = regexp.QuoteMeta(s)
		}
	}
	return regexp.MustCompile("^" + strings.Join(segs, "/") + "$")
}

// pageRoutes are the route table's GET routes that answer with a page
// (not the API, static files or the sign-in pages, checked signed out).
func pageRoutes(a *app) []string {
	var out []string
	for _, rt := range a.routes {
		path, ok := strings.CutPrefix(rt.pattern, "GET ")
		if !ok || strings.HasPrefix(path, "/api/") || strings.HasPrefix(path, "/static/") || strings.HasPrefix(path, "/login") {
			continue
		}
		out = append(out, rt.pattern)
	}
	return out
}

// TestAccessibility opens every page of the app in chromium, at desktop
// width and at a phone's 375 px, and runs axe-core on each: no serious or
// critical violation, no sideways scrolling on the phone, and a working
// "Skip to content" link. The pages are the route table's, so a new page
// is checked without being listed; see a11yExamples for wildcards.
func TestAccessibility(t *testing.T) {
	axe := browsertest.LoadAxe(t)
	browser := browsertest.Start(t)
	s := newShowcase(t)
	e := s.e
	admin := e.as(e.user("a11y@example.org", RoleAdmin, true))
	examples := a11yExamples(s)

	// Pages to open, in order: fixed paths first, so that their links
	// can stand in for the wildcards.
	type visit struct {
		pattern, path string
		name          string
		then          []chromedp.Action
	}
	var fixed, wild []string
	for _, p := range pageRoutes(e.app) {
		if strings.Contains(p, "{") && !strings.HasSuffix(p, "{$}") {
			wild = append(wild, p)
		} else {
			fixed = append(fixed, p)
		}
	}
	var visits []visit
	for _, p := range fixed {
		visits = append(visits, visit{pattern: p, path: strings.TrimSuffix(strings.TrimPrefix(p, "GET "), "{$}")})
		if p == "GET /{$}" {
			visits[len(visits)-1].path = "/"
		}
	}
	for _, p := range append(append([]string{}, fixed...), "404") {
		for _, path := range examples[p] {
			visits = append(visits, visit{pattern: p, path: path})
		}
	}
	for _, f := range a11yFlows(s) {
		visits = append(visits, visit{pattern: "flow", path: f.path, name: f.name, then: f.then})
	}

	ctx := browser.Session(t, 10*time.Minute)
	if err := chromedp.Run(ctx, signIn(e.url, "a11y@example.org")); err != nil {
		t.Fatal(err)
	}
	var links []string
	check := func(v visit) {
		name := strings.TrimPrefix(v.path, "/")
		switch {
		case v.name != "":
			name = v.name
		case name == "":
			name = "dashboard"
		}
		t.Run(name, func(t *testing.T) {
			// Exports and other downloads are not pages.
			req, _ := http.NewRequest(http.MethodHead, e.url+v.path, nil)
			resp, err := admin.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			resp.Body.Close()
			if ct := resp.Header.Get("Content-Type"); !strings.HasPrefix(ct, "text/html") {
				t.Skipf("%s answers %s, not a page", v.path, ct)
			}
			for _, width := range []int64{1280, browsertest.PhoneWidth} {
				var hrefs []string
				var skip bool
				err := chromedp.Run(ctx,
					browsertest.Viewport(width, 900, width == browsertest.PhoneWidth),
					chromedp.Navigate(e.url+v.path),
					chromedp.WaitReady("body", chromedp.ByQuery),
					chromedp.Tasks(v.then),
					chromedp.Evaluate(`Array.from(document.querySelectorAll("a[href]"), a => a.getAttribute("href"))`, &hrefs),
					chromedp.Evaluate(`(() => { const a = document.querySelector("a[href]");
						return !!a && a.classList.contains("skip-link") && a.textContent === "Skip to content" &&
							!!document.getElementById(a.getAttribute("href").slice(1)); })()`, &skip),
				)
				if err != nil {
					t.Fatalf("opening %s at %d px: %v", v.path, width, err)
				}
				links = append(links, hrefs...)
				if !skip {
					t.Errorf("%s: the first link is not a working Skip to content link", v.path)
				}
				vs, err := axe.Check(ctx)
				if err != nil {
					t.Fatal(err)
				}
				for _, x := range vs {
					if x.Severe() {
						t.Errorf("%s at %d px: %s", v.path, width, x)
					} else {
						t.Logf("%s at %d px (not failing): %s (%s): %s", v.path, width, x.ID, x.Impact, x.Help)
					}
				}
				if width == browsertest.PhoneWidth {
					if w, err := browsertest.ScrollWidth(ctx); err != nil || w > browsertest.PhoneWidth {
						var wide []string
						_ = chromedp.Run(ctx, chromedp.Evaluate(wideElements, &wide))
						t.Errorf("%s at %d px is %d px wide (%v): it scrolls sideways; these stick out: %v", v.path, width, w, err, wide)
					}
				}
			}
		})
	}
	for _, v := range visits {
		check(v)
	}
	for _, p := range wild {
		paths := examples[p]
		if len(paths) == 0 {
			re := patternRE(strings.TrimPrefix(p, "GET "))
			for _, l := range links {
				if path, _, _ := strings.Cut(l, "?"); re.MatchString(path) && !slices.Contains(paths, l) {
					paths = append(paths, l)
					break
				}
			}
		}
		if len(paths) == 0 {
			t.Errorf("page %s is linked from no page the walk opened: give it an address in a11yExamples", p)
		}
		for _, path := range paths {
			check(visit{pattern: p, path: path})
		}
	}

	t.Run("signed out", func(t *testing.T) {
		ctx := browser.Session(t, 2*time.Minute)
		for _, path := range []string{"/login", "/no/such/page"} {
			for _, width := range []int64{1280, browsertest.PhoneWidth} {
				if err := chromedp.Run(ctx, browsertest.Viewport(width, 900, width == browsertest.PhoneWidth),
					chromedp.Navigate(e.url+path), chromedp.WaitReady("body", chromedp.ByQuery)); err != nil {
					t.Fatal(err)
				}
				vs, err := axe.Check(ctx)
				if err != nil {
					t.Fatal(err)
				}
				for _, x := range vs {
					if x.Severe() {
						t.Errorf("%s signed out at %d px: %s", path, width, x)
					}
				}
				if w, _ := browsertest.ScrollWidth(ctx); w > width {
					t.Errorf("%s signed out at %d px is %d px wide", path, width, w)
				}
			}
		}
	})
}

// wideElements names the innermost elements that reach past the right
// edge of the viewport, to say what makes a page scroll sideways.
const wideElements = `Array.from(document.querySelectorAll("body *"))
	.filter(el => el.getBoundingClientRect().right > innerWidth + 1 &&
		!Array.from(el.children).some(c => c.getBoundingClientRect().right > innerWidth + 1))
	.slice(0, 8)
	.map(el => el.tagName.toLowerCase() + (el.id ? "#" + el.id : "") +
		(el.className && typeof el.className === "string" ? "." + el.className.trim().split(/\s+/).join(".") : "") +
		" (right edge " + Math.round(el.getBoundingClientRect().right) + " px)")`

// TestAxeFindsViolations keeps the accessibility walk honest: on a page
// with a missing form label and text that cannot be read, axe reports
// serious violations through the same path the walk uses.
func TestAxeFindsViolations(t *testing.T) {
	axe := browsertest.LoadAxe(t)
	browser := browsertest.Start(t)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "text/html; charset=utf-8")
		fmt.Fprint(w, `<!doctype html><html lang="en"><head><title>bad</title></head><body><main>
			<input type="text" name="q"><p style="color:#ccc;background:#fff">pale text</p>
			<div style="width:900px">wide</div></main></body></html>`)
	}))
	t.Cleanup(srv.Close)
	ctx := browser.Session(t, time.Minute)
	if err := chromedp.Run(ctx, browsertest.Viewport(browsertest.PhoneWidth, 800, true), chromedp.Navigate(srv.URL+"/")); err != nil {
		t.Fatal(err)
	}
	vs, err := axe.Check(ctx)
	if err != nil {
		t.Fatal(err)
	}
	var severe []string
	for _, v := range vs {
		if v.Severe() {
			severe = append(severe, v.ID)
		}
	}
	if !slices.Contains(severe, "label") || !slices.Contains(severe, "color-contrast") {
		t.Errorf("axe reported %v as serious or critical, want label and color-contrast", severe)
	}
	if w, err := browsertest.ScrollWidth(ctx); err != nil || w <= browsertest.PhoneWidth {
		t.Errorf("scroll width of a 900 px page = %d (%v), want more than %d", w, err, browsertest.PhoneWidth)
	}
}
