package browsertest

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"testing"

	cdpruntime "github.com/chromedp/cdproto/runtime"
	"github.com/chromedp/chromedp"
)

// Axe is axe-core, the accessibility engine, ready to inject into pages.
// Its version is pinned in axe/package-lock.json; `npm ci` in axe/
// installs it (.ci/run does).
type Axe struct {
	script string
}

// LoadAxe reads axe-core's script. When it is not installed the test is
// skipped with a message saying how to install it, unless FHIRSYNC_CI=1,
// in which case it fails.
func LoadAxe(t testing.TB) *Axe {
	t.Helper()
	_, file, _, _ := runtime.Caller(0)
	dir := filepath.Join(filepath.Dir(file), "axe")
	path := filepath.Join(dir, "node_modules", "axe-core", "axe.min.js")
	b, err := os.ReadFile(path)
	if err != nil {
		if os.Getenv("FHIRSYNC_CI") == "1" {
			t.Fatalf("axe-core is required in CI but %s cannot be read (%v): run npm ci in admin/browsertest/axe", path, err)
		}
		t.Skipf("accessibility test skipped: axe-core is not installed (run npm ci in admin/browsertest/axe)")
	}
	return &Axe{script: string(b)}
}

// Violation is one axe rule a page breaks, with the elements that break it.
type Violation struct {
	ID      string `json:"id"`
	Impact  string `json:"impact"` // minor, moderate, serious or critical
	Help    string `json:"help"`
	HelpURL string `json:"helpUrl"`
	Nodes   []struct {
		Target  []any  `json:"target"`
		Summary string `json:"failureSummary"`
		HTML    string `json:"html"`
	} `json:"nodes"`
}

// Severe says whether v is serious or critical.
func (v Violation) Severe() bool { return v.Impact == "serious" || v.Impact == "critical" }

func (v Violation) String() string {
	var b strings.Builder
	fmt.Fprintf(&b, "%s (%s): %s <%s>", v.ID, v.Impact, v.Help, v.HelpURL)
	for i, n := range v.Nodes {
		if i == 5 {
			fmt.Fprintf(&b, "\n    … and %d more", len(v.Nodes)-i)
			break
		}
		fmt.Fprintf(&b, "\n    %v %s\n      %s", n.Target, n.HTML, strings.ReplaceAll(n.Summary, "\n", "\n      "))
	}
	return b.String()
}

// Check injects axe into the current page of ctx, unless it is there
// already, and runs the WCAG 2.x A and AA rules and axe's best practices
// on the whole document. It returns every violation, of any impact.
func (a *Axe) Check(ctx context.Context) ([]Violation, error) {
	var loaded bool
	if err := chromedp.Run(ctx, chromedp.Evaluate(`typeof window.axe === "object"`, &loaded)); err != nil {
		return nil, fmt.Errorf("looking for axe: %w", err)
	}
	if !loaded {
		// DevTools evaluation is not bound by the page's
		// Content-Security-Policy, which allows no inline script.
		if err := chromedp.Run(ctx, chromedp.Evaluate(a.script, nil)); err != nil {
			return nil, fmt.Errorf("injecting axe: %w", err)
		}
	}
	var out string
	err := chromedp.Run(ctx, chromedp.Evaluate(`axe.run(document, {
			runOnly: {type: "tag", values: ["wcag2a", "wcag2aa", "wcag21a", "wcag21aa", "wcag22aa", "best-practice"]},
			resultTypes: ["violations"]
		}).then(r => JSON.stringify(r.violations))`, &out,
		func(p *cdpruntime.EvaluateParams) *cdpruntime.EvaluateParams { return p.WithAwaitPromise(true) }))
	if err != nil {
		return nil, fmt.Errorf("running axe: %w", err)
	}
	var vs []Violation
	if err := json.Unmarshal([]byte(out), &vs); err != nil {
		return nil, fmt.Errorf("reading axe's results: %w", err)
	}
	return vs, nil
}
