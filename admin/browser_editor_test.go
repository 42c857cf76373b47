package admin

import (
	"context"
	"fmt"
	"log/slog"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/chromedp/cdproto/input"
	"github.com/chromedp/cdproto/page"
	"github.com/chromedp/chromedp"
	"github.com/chromedp/chromedp/kb"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/fhirsync/fhirsync/admin/browsertest"
	"github.com/fhirsync/fhirsync/agent"
	"github.com/fhirsync/fhirsync/agent/crm"
	"github.com/fhirsync/fhirsync/agent/fhir"
	"github.com/fhirsync/fhirsync/maps"
	"github.com/fhirsync/fhirsync/queues"
	"github.com/fhirsync/fhirsync/sandbox/fhirserver"
	"github.com/fhirsync/fhirsync/storage/storagetest"
)

// activeID is the id of the focused element.
func activeID(ctx context.Context) string {
	var id string
	_ = chromedp.Run(ctx, chromedp.Evaluate(`document.activeElement ? document.activeElement.id : ""`, &id))
	return id
}

// tabTo presses Tab (Shift+Tab when back) until the element with id has
// the focus, as a keyboard user moves through the page.
func tabTo(id string, back bool) chromedp.ActionFunc {
	return func(ctx context.Context) error {
		var mods []chromedp.KeyOption
		if back {
			mods = append(mods, chromedp.KeyModifiers(input.ModifierShift))
		}
		for range 600 {
			if activeID(ctx) == id {
				return nil
			}
			if err := chromedp.KeyEvent(kb.Tab, mods...).Do(ctx); err != nil {
				return err
			}
		}
		return fmt.Errorf("Tab never reached #%s (focus is on #%s)", id, activeID(ctx))
	}
}

// waitFocus waits until the element with id has the focus.
func waitFocus(id string) chromedp.Action {
	return poll(fmt.Sprintf(`document.activeElement && document.activeElement.id === %q`, id))
}

// poll waits until expr is true; the editor's round trips can be slow on
// a busy machine, so it waits longer than chromedp's default. It checks
// every 50 ms on a timer rather than in chromedp's default
// requestAnimationFrame callback: a page the browser stops drawing frames
// for never runs that callback again, so the check and its own timeout
// both stopped and the test hung until its session's deadline.
func poll(expr string) chromedp.Action {
	return chromedp.Poll(expr, nil, chromedp.WithPollingInterval(50*time.Millisecond), chromedp.WithPollingTimeout(90*time.Second))
}

// press activates the button sel names from the keyboard: focus, then
// Enter. The editor's live results (a path's value on the sample, the
// samples' outcome) arrive a moment after it opens or after an edit and
// push the buttons below them down (Save draft is below the samples), so
// a mouse click aimed where a button was a moment before can land on
// another one; the keyboard needs no coordinates.
func press(sel string) chromedp.Action {
	return chromedp.Tasks{
		chromedp.WaitVisible(sel, chromedp.ByQuery),
		chromedp.Focus(sel, chromedp.ByQuery),
		chromedp.KeyEvent(kb.Enter),
	}
}

// step runs actions as one named step, so that a failure says which step
// it was.
func step(name string, actions ...chromedp.Action) chromedp.Action {
	return chromedp.ActionFunc(func(ctx context.Context) error {
		if err := chromedp.Tasks(actions).Do(ctx); err != nil {
			return fmt.Errorf("%s: %w", name, err)
		}
		return nil
	})
}

// TestBrowserEditorAddFromPickerAndPublish: in Chromium, an editor adds
// an attribute map for the CRM's nickname column from the attribute
// picker (fed by the sandbox CRM's metadata), completes its FHIR path
// from the R4 definitions, sees what it selects in the map's sample, lets
// the sample expect the new output, saves and publishes — without
// touching the YAML. The sync agent, on the published version, then
// writes a Patient's nickname to the sandbox CRM's contact.
func TestBrowserEditorAddFromPickerAndPublish(t *testing.T) {
	axe := browsertest.LoadAxe(t)
	browser := browsertest.Start(t)
	e := newTestEnv(t, storagetest.Open(t, "sqlite"), AppConfig{})
	crmFake := withSandboxCRM(t, e)
	e.user("editor@example.org", RoleEditor, false)
	n := starterDraft(t, e)
	doc, _, err := e.app.data.maps.Version(t.Context(), n)
	if err != nil {
		t.Fatal(err)
	}
	added := len(doc.EntityMaps[0].Attributes) // the new attribute map's index
	path := fmt.Sprintf("am-%d-fhirPath", added)

	var pickerRow, hint, evaluated, yaml, samples, status string
	ctx := browser.Session(t, 5*time.Minute)
	err = chromedp.Run(ctx,
		signIn(e.url, "editor@example.org"),
		chromedp.Navigate(fmt.Sprintf("%s/maps/versions/%d/edit?map=patient-contact", e.url, n)),
		chromedp.WaitVisible("#am-list", chromedp.ByID),
		press("#am-add"),
		chromedp.WaitVisible("#am-picker-filter", chromedp.ByID),
		chromedp.SendKeys("#am-picker-filter", "nick", chromedp.ByID),
		chromedp.WaitVisible("#am-pick-nickname", chromedp.ByID),
		chromedp.Text(`#am-picker-table tr[data-attribute="nickname"]`, &pickerRow, chromedp.ByQuery),
		press("#am-pick-nickname"),
		waitFocus(path),
		chromedp.Text(fmt.Sprintf("#am-%d-crm", added), &hint, chromedp.ByID),
		// Completion: "name.where(use = 'nickname').gi" offers given.
		chromedp.SendKeys("#"+path, "nam", chromedp.ByID),
		poll(fmt.Sprintf(`Array.from(document.querySelectorAll("#%s-options li .fp-name")).map(li => li.textContent).join() === "name"`, path)),
		chromedp.KeyEvent(kb.ArrowDown),
		chromedp.KeyEvent(kb.Enter),
		chromedp.SendKeys("#"+path, ".where(use = 'nickname').gi", chromedp.ByID),
		poll(fmt.Sprintf(`Array.from(document.querySelectorAll("#%s-options li .fp-name")).some(li => li.textContent === "given")`, path)),
		chromedp.KeyEvent(kb.ArrowDown),
		chromedp.KeyEvent(kb.Enter),
		chromedp.SendKeys("#"+path, "[0]", chromedp.ByID),
		poll(fmt.Sprintf(`document.getElementById("%s-result").textContent.includes("Tóta")`, path)),
		chromedp.Text("#"+path+"-result", &evaluated, chromedp.ByID),
		// The forms wrote the YAML.
		poll(`document.getElementById("ed-yaml").value.includes("fhirPath: name.where(use = 'nickname').given[0]")`),
		chromedp.Value("#ed-yaml", &yaml, chromedp.ByID),
		// The starter sample did not expect the new field; it is told to.
		poll(`(document.getElementById("ed-samples-summary") || {textContent: ""}).textContent.includes("fail")`),
		chromedp.Click(`#ed-sample-results li[data-sample="patient to contact"] button`, chromedp.ByQuery),
		poll(`(document.getElementById("ed-samples-summary") || {textContent: ""}).textContent.includes("All ")`),
		chromedp.Text("#ed-samples-summary", &samples, chromedp.ByID),
	)
	if err != nil {
		var state string
		_ = chromedp.Run(ctx, chromedp.Evaluate(`document.getElementById("ed-status").textContent + " | " +
			(document.getElementById("ed-sample-results") || {textContent: ""}).textContent + " | " +
			document.getElementById("ed-yaml").value.split("\n").filter(l => l.includes("nickname")).join(" / ")`, &state))
		t.Fatalf("%v; the editor shows: %s", err, state)
	}
	if !strings.Contains(pickerRow, "String") || !strings.Contains(pickerRow, "max length 100") {
		t.Errorf("the picker shows nickname as %q, want its type and length from the CRM", pickerRow)
	}
	if !strings.Contains(hint, "String") || !strings.Contains(hint, "max length 100") {
		t.Errorf("beside the CRM attribute: %q", hint)
	}
	if !strings.Contains(evaluated, `selects 1 value: "Tóta"`) {
		t.Errorf("live evaluation on the sample: %q", evaluated)
	}
	for _, want := range []string{"crmAttribute: nickname", "fhirPath: name.where(use = 'nickname').given[0]", "maxLength: 100"} {
		if !strings.Contains(yaml, want) {
			t.Errorf("the YAML kept in step lacks %q:\n%s", want, yaml)
		}
	}
	if !strings.Contains(samples, "All") {
		t.Errorf("samples after expecting the new result: %q", samples)
	}
	vs, err := axe.Check(ctx)
	if err != nil {
		t.Fatal(err)
	}
	for _, v := range vs {
		if v.Severe() {
			t.Errorf("editor with the picker used: %s", v)
		}
	}

	err = chromedp.Run(ctx,
		press("#ed-save"),
		chromedp.WaitVisible("#notice", chromedp.ByID),
		chromedp.Click("#editor-publish", chromedp.ByID),
		chromedp.WaitVisible("#confirm-publish-form", chromedp.ByID),
		chromedp.Click("#confirm-publish", chromedp.ByID),
		chromedp.WaitVisible("#notice", chromedp.ByID),
		chromedp.Text("#version-status", &status, chromedp.ByID),
	)
	if err != nil {
		t.Fatal(err)
	}
	if status != "published" {
		t.Fatalf("after publishing, version %d is %q", n, status)
	}
	set, err := e.app.data.maps.Current(t.Context())
	if err != nil || set.Version() != n {
		t.Fatalf("current set = %v, %v; want version %d", set, err, n)
	}
	m, _ := set.Map("patient-contact")
	var am *maps.AttributeMap
	for i := range m.Def().Attributes {
		if m.Def().Attributes[i].CRMAttribute == "nickname" {
			am = &m.Def().Attributes[i]
		}
	}
	if am == nil || am.Name != "nickname" || am.CRMType != maps.TypeString || am.MaxLength != 100 {
		t.Fatalf("the published version's nickname attribute map = %+v", am)
	}
	syncsNickname(t, e, crmFake.client)
}

// syncsNickname runs the sync agent on the published maps against the
// sandbox FHIR server and the sandbox CRM: a Patient with a nickname
// becomes a contact whose nickname column holds it.
func syncsNickname(t *testing.T, e *testEnv, cc *crm.Client) {
	t.Helper()
	fs, err := fhirserver.New(fhirserver.Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { fs.Close() })
	fh := httptest.NewServer(fs)
	t.Cleanup(fh.Close)
	fc, err := fhir.New(fhir.Config{BaseURL: fh.URL})
	if err != nil {
		t.Fatal(err)
	}
	p, err := fc.Create(t.Context(), fhir.Resource{"resourceType": "Patient", "gender": "female",
		"name": []any{map[string]any{"use": "official", "family": "Hopper", "given": []any{"Grace"}},
			map[string]any{"use": "nickname", "given": []any{"Amazing Grace"}}}})
	if err != nil {
		t.Fatal(err)
	}
	users, err := cc.UserIDs(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	fq, cq := e.embedded("fhir-changes"), e.embedded("crm-changes")
	a, err := agent.New(agent.Config{Workers: 1, CRMUserID: users[0]}, agent.Deps{DB: e.db, Maps: e.app.data.maps, FHIR: fc, CRM: cc,
		Logs: e.app.data.logs, FHIRChanges: fq, CRMChanges: cq, Registry: prometheus.NewRegistry(), Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(t.Context())
	done := make(chan error, 1)
	go func() { done <- a.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		<-done
	})
	<-a.Ready()
	msg, err := queues.Notice{V: queues.NoticeVersion, Side: queues.SideFHIR, Type: "Patient", ID: p.ID(), Event: queues.EventCreated, Origin: "rest-hook"}.Message()
	if err != nil {
		t.Fatal(err)
	}
	if err := fq.Send(t.Context(), msg); err != nil {
		t.Fatal(err)
	}
	var rec crm.Record
	for range 200 {
		rec, err = cc.Retrieve(t.Context(), crm.ByKey("contacts", "msemr_azurefhirid", p.ID()), "nickname", "firstname")
		if err == nil {
			break
		}
		time.Sleep(50 * time.Millisecond)
	}
	if err != nil || rec["nickname"] != "Amazing Grace" || rec["firstname"] != "Grace" {
		t.Errorf("after the agent synced Patient/%s with the published maps, the contact is %v (%v); want nickname Amazing Grace", p.ID(), rec, err)
	}
}

// TestBrowserEditorUnsavedChangeGuard: with an unsaved edit, an in-app
// link opens a dialog instead of leaving; "Stay" keeps the page and the
// edit, the browser's own prompt (beforeunload) comes up for any other
// navigation, and "Leave without saving" leaves with the draft unchanged.
// Without changes, links leave at once.
func TestBrowserEditorUnsavedChangeGuard(t *testing.T) {
	browser := browsertest.Start(t)
	e := newTestEnv(t, storagetest.Open(t, "sqlite"), AppConfig{})
	e.user("editor@example.org", RoleEditor, false)
	n := starterDraft(t, e)
	edit := fmt.Sprintf("%s/maps/versions/%d/edit", e.url, n)
	ctx := browser.Session(t, 4*time.Minute)

	prompts := make(chan string, 4)
	chromedp.ListenTarget(ctx, func(ev any) {
		if d, ok := ev.(*page.EventJavascriptDialogOpening); ok {
			prompts <- string(d.Type)
			go func() { _ = chromedp.Run(ctx, page.HandleJavaScriptDialog(false)) }() // stay
		}
	})

	var path, desc string
	var open, dirty bool
	err := chromedp.Run(ctx,
		signIn(e.url, "editor@example.org"),
		chromedp.Navigate(edit),
		chromedp.WaitVisible("#ent-description", chromedp.ByID),
		// No change yet: the link leaves at once.
		chromedp.Click("#back-to-version", chromedp.ByID),
		chromedp.WaitVisible("#version-info", chromedp.ByID),
		chromedp.Navigate(edit),
		chromedp.WaitVisible("#ent-description", chromedp.ByID),
		chromedp.SendKeys("#ent-description", " (edited)", chromedp.ByID),
		chromedp.WaitVisible("#ed-dirty", chromedp.ByID),
		chromedp.Click("#back-to-version", chromedp.ByID),
		poll(`document.getElementById("leave-dialog").open`),
		chromedp.Evaluate(`location.pathname`, &path),
	)
	if err != nil {
		t.Fatal(err)
	}
	if path != fmt.Sprintf("/maps/versions/%d/edit", n) {
		t.Fatalf("the link left for %s with unsaved changes", path)
	}
	err = chromedp.Run(ctx,
		chromedp.Click("#leave-stay", chromedp.ByID),
		poll(`!document.getElementById("leave-dialog").open`),
		waitFocus("back-to-version"),
		chromedp.Value("#ent-description", &desc, chromedp.ByID),
		// Any other navigation gets the browser's own prompt.
		chromedp.Evaluate(`location.href = "/maps"; true`, nil),
	)
	if err != nil {
		t.Fatal(err)
	}
	select {
	case kind := <-prompts:
		if kind != "beforeunload" {
			t.Errorf("prompt %q, want beforeunload", kind)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("leaving by script with unsaved changes raised no beforeunload prompt")
	}
	err = chromedp.Run(ctx,
		chromedp.Sleep(300*time.Millisecond),
		chromedp.Evaluate(`location.pathname`, &path),
		chromedp.Evaluate(`!document.getElementById("ed-dirty").hidden`, &dirty),
	)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.HasSuffix(desc, "(edited)") || !dirty || !strings.HasSuffix(path, "/edit") {
		t.Fatalf("after staying: description %q, dirty %v, at %s", desc, dirty, path)
	}
	err = chromedp.Run(ctx,
		chromedp.Click("#back-to-version", chromedp.ByID),
		poll(`document.getElementById("leave-dialog").open`),
		chromedp.Evaluate(`document.getElementById("leave-dialog").open`, &open),
		chromedp.Click("#leave-go", chromedp.ByID),
		chromedp.WaitVisible("#version-info", chromedp.ByID),
		chromedp.Evaluate(`location.pathname`, &path),
	)
	if err != nil {
		t.Fatal(err)
	}
	if path != fmt.Sprintf("/maps/versions/%d", n) {
		t.Errorf("leaving without saving went to %s", path)
	}
	doc, _, _ := e.app.data.maps.Version(t.Context(), n)
	if strings.Contains(doc.EntityMaps[0].Description, "(edited)") {
		t.Errorf("the unsaved edit was stored: %q", doc.EntityMaps[0].Description)
	}
	select {
	case kind := <-prompts:
		t.Errorf("a %s prompt came up although the dialog had been answered", kind)
	default:
	}
}

// TestBrowserEditorKeyboardOnly: from the top of the page, with the
// keyboard alone, an editor opens the attribute picker, adds an
// attribute map, moves it up twice with its Move up button (the focus
// stays on it, the move is announced), and saves; the stored draft has
// the new attribute map in the new place.
func TestBrowserEditorKeyboardOnly(t *testing.T) {
	browser := browsertest.Start(t)
	e := newTestEnv(t, storagetest.Open(t, "sqlite"), AppConfig{})
	withSandboxCRM(t, e)
	e.user("editor@example.org", RoleEditor, false)
	n := starterDraft(t, e)
	doc, _, _ := e.app.data.maps.Version(t.Context(), n)
	added := len(doc.EntityMaps[0].Attributes)
	before := doc.EntityMaps[0].Attributes[added-2].Name // two places up

	var announced, label string
	ctx := browser.Session(t, 6*time.Minute)
	err := chromedp.Run(ctx,
		signIn(e.url, "editor@example.org"),
		chromedp.Navigate(fmt.Sprintf("%s/maps/versions/%d/edit", e.url, n)),
		chromedp.WaitVisible("#am-list", chromedp.ByID),
		tabTo("am-add", false),
		chromedp.KeyEvent(kb.Enter),
		waitFocus("am-picker-filter"),
		chromedp.KeyEvent("telephone3"),
		chromedp.WaitVisible("#am-pick-telephone3", chromedp.ByID),
		tabTo("am-pick-telephone3", false),
		chromedp.KeyEvent(kb.Enter),
		waitFocus(fmt.Sprintf("am-%d-fhirPath", added)),
		chromedp.KeyEvent("telecom.where(system = 'pager').value"),
		tabTo(fmt.Sprintf("am-up-%d", added), true),
		chromedp.KeyEvent(kb.Enter),
		waitFocus(fmt.Sprintf("am-up-%d", added-1)),
		chromedp.KeyEvent(" "),
		waitFocus(fmt.Sprintf("am-up-%d", added-2)),
		chromedp.Text("#ed-announce", &announced, chromedp.ByID),
		chromedp.AttributeValue(fmt.Sprintf("#am-up-%d", added-2), "aria-label", &label, nil, chromedp.ByID),
		poll(`document.getElementById("ed-yaml").value.indexOf("name: telephone3") > 0`),
		chromedp.Sleep(500*time.Millisecond), // the last round trip
		tabTo("ed-save", false),
		chromedp.KeyEvent(kb.Enter),
		chromedp.WaitVisible("#notice", chromedp.ByID),
	)
	if err != nil {
		t.Fatal(err)
	}
	if label != "Move up telephone3" {
		t.Errorf("the focused button is %q, want the moved attribute map's Move up", label)
	}
	if !strings.Contains(announced, fmt.Sprintf("telephone3 moved to position %d of %d", added-1, added+1)) {
		t.Errorf("announced %q", announced)
	}
	doc, _, _ = e.app.data.maps.Version(t.Context(), n)
	attrs := doc.EntityMaps[0].Attributes
	if len(attrs) != added+1 || attrs[added-2].CRMAttribute != "telephone3" || attrs[added-1].Name != before ||
		attrs[added-2].FHIRPath != "telecom.where(system = 'pager').value" {
		var names []string
		for _, a := range attrs {
			names = append(names, a.Name)
		}
		t.Errorf("stored attribute maps %v; want telephone3 before %s", names, before)
	}
}

// TestBrowserEditorRefusesNonexistentAttribute: in the editor, a CRM
// attribute the CRM does not have is shown beside its field with the
// suggested fix as it is typed; saving anyway is refused with the
// problem's location, the text sent stays on the page marked unsaved,
// and the stored draft keeps the old attribute.
func TestBrowserEditorRefusesNonexistentAttribute(t *testing.T) {
	browser := browsertest.Start(t)
	e := newTestEnv(t, storagetest.Open(t, "sqlite"), AppConfig{})
	withSandboxCRM(t, e)
	e.user("editor@example.org", RoleEditor, false)
	n := starterDraft(t, e)

	var beside, listed, yaml string
	var dirty bool
	ctx := browser.Session(t, 4*time.Minute)
	err := chromedp.Run(ctx,
		signIn(e.url, "editor@example.org"),
		chromedp.Navigate(fmt.Sprintf("%s/maps/versions/%d/edit?map=patient-contact", e.url, n)),
		chromedp.WaitVisible("#am-list", chromedp.ByID),
		press("#am-edit-1"),
		chromedp.WaitVisible("#am-1-crmAttribute", chromedp.ByID),
		clearField("am-1-crmAttribute"),
		chromedp.SendKeys("#am-1-crmAttribute", "firstnam", chromedp.ByID),
		chromedp.WaitVisible("#am-1-crmAttribute-problem", chromedp.ByID),
		chromedp.Text("#am-1-crmAttribute-problem", &beside, chromedp.ByID),
		poll(`document.getElementById("ed-yaml").value.includes("crmAttribute: firstnam\n")`),
		press("#ed-save"),
		chromedp.WaitVisible("#problems", chromedp.ByID),
		chromedp.Text("#problems", &listed, chromedp.ByID),
		chromedp.Value("#ed-yaml", &yaml, chromedp.ByID),
		chromedp.WaitVisible("#am-list", chromedp.ByID),
		chromedp.Evaluate(`!document.getElementById("ed-dirty").hidden`, &dirty),
	)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(beside, `did you mean "firstname"?`) {
		t.Errorf("beside the field: %q", beside)
	}
	if !strings.Contains(listed, `entity map "patient-contact" / attribute map "first-name" / crmAttribute`) || !strings.Contains(listed, `has no attribute "firstnam"`) {
		t.Errorf("the refused save lists %q", listed)
	}
	if !strings.Contains(yaml, "crmAttribute: firstnam\n") || !dirty {
		t.Errorf("after the refusal the page holds the text sent (%v) and is marked unsaved (%v)", strings.Contains(yaml, "firstnam\n"), dirty)
	}
	doc, _, _ := e.app.data.maps.Version(t.Context(), n)
	if _, am := findAttribute(doc, "patient-contact", "first-name"); am.CRMAttribute != "firstname" {
		t.Errorf("the refused edit was stored: %q", am.CRMAttribute)
	}
}

// TestBrowserEditorYAMLToForms: text typed into the YAML rebuilds the
// forms once it can be read; YAML that cannot be read lists its problem
// with the line and leaves the forms as they were.
func TestBrowserEditorYAMLToForms(t *testing.T) {
	browser := browsertest.Start(t)
	e := newTestEnv(t, storagetest.Open(t, "sqlite"), AppConfig{})
	e.user("editor@example.org", RoleEditor, false)
	n := starterDraft(t, e)

	var list, problems, status, desc string
	ctx := browser.Session(t, 4*time.Minute)
	edit := func(from, to string) chromedp.Action {
		return chromedp.Evaluate(fmt.Sprintf(`(() => { const a = document.getElementById("ed-yaml");
			a.value = a.value.replace(%q, %q); a.dispatchEvent(new Event("input")); })()`, from, to), nil)
	}
	err := chromedp.Run(ctx,
		signIn(e.url, "editor@example.org"),
		chromedp.Navigate(fmt.Sprintf("%s/maps/versions/%d/edit?map=patient-contact", e.url, n)),
		chromedp.WaitVisible("#am-list", chromedp.ByID),
		edit("- name: first-name\n", "- name: given-name\n"),
		poll(`document.getElementById("am-list").textContent.includes("given-name")`),
		chromedp.Text("#am-list", &list, chromedp.ByID),
		edit("format: 1\n", "format: 1\nbogus: [\n"),
		chromedp.WaitVisible("#ed-yaml-problems", chromedp.ByID),
		chromedp.Text("#ed-yaml-problems", &problems, chromedp.ByID),
		chromedp.Text("#ed-yaml-status", &status, chromedp.ByID),
		chromedp.Value("#ent-description", &desc, chromedp.ByID),
	)
	if err != nil {
		t.Fatal(err)
	}
	if strings.Contains(list, "first-name") {
		t.Errorf("the attribute list still shows first-name: %q", list)
	}
	if !strings.Contains(problems, "line ") || !strings.Contains(status, "last readable version") {
		t.Errorf("unreadable YAML: problems %q, status %q", problems, status)
	}
	if desc == "" {
		t.Error("the forms were emptied by unreadable YAML")
	}
}

// TestBrowserEditorRoundField: a decimal attribute map's form shows the
// places it rounds to (the starter Observation value rounds to 10);
// changing the number changes the YAML and the stored draft.
func TestBrowserEditorRoundField(t *testing.T) {
	browser := browsertest.Start(t)
	e := newTestEnv(t, storagetest.Open(t, "sqlite"), AppConfig{})
	e.user("editor@example.org", RoleEditor, false)
	n := starterDraft(t, e)
	doc, _, err := e.app.data.maps.Version(t.Context(), n)
	if err != nil {
		t.Fatal(err)
	}
	i := -1
	for _, em := range doc.EntityMaps {
		if em.Name != "observation" {
			continue
		}
		for j, a := range em.Attributes {
			if a.Name == "value" {
				i = j
			}
		}
	}
	if i < 0 {
		t.Fatal("the starter observation map has no value attribute map")
	}
	field := fmt.Sprintf("am-%d-round", i)

	var shown, yaml string
	ctx := browser.Session(t, 4*time.Minute)
	err = chromedp.Run(ctx,
		step("signing in", signIn(e.url, "editor@example.org")),
		step("opening the editor",
			chromedp.Navigate(fmt.Sprintf("%s/maps/versions/%d/edit?map=observation", e.url, n)),
			chromedp.WaitVisible("#am-list", chromedp.ByID)),
		step("opening the attribute map",
			press(fmt.Sprintf("#am-edit-%d", i)),
			chromedp.WaitVisible("#"+field, chromedp.ByID),
			chromedp.Value("#"+field, &shown, chromedp.ByID)),
		step("typing 4",
			clearField(field),
			chromedp.SendKeys("#"+field, "4", chromedp.ByID)),
		step("waiting for the YAML to round to 4",
			poll(`document.getElementById("ed-yaml").value.includes("round: 4\n")`),
			chromedp.Value("#ed-yaml", &yaml, chromedp.ByID)),
		step("saving",
			press("#ed-save"),
			chromedp.WaitVisible("#notice", chromedp.ByID)),
	)
	if err != nil {
		t.Fatal(err)
	}
	if shown != "10" {
		t.Errorf("the round field shows %q, want the starter map's 10", shown)
	}
	if strings.Contains(yaml, "round: 10\n") {
		t.Errorf("the YAML still rounds to 10 after the form said 4")
	}
	doc, _, _ = e.app.data.maps.Version(t.Context(), n)
	if _, am := findAttribute(doc, "observation", "value"); am.Round == nil || *am.Round != 4 {
		t.Errorf("stored round %v, want 4", am.Round)
	}
}
