package fhirpath

import (
	"bufio"
	"bytes"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"testing"

	"gopkg.in/yaml.v3"

	"github.com/fhirsync/fhirsync/maps/path"
)

// divergences lists the expressions on which this engine and fhirpath.js
// 5.2.0 are known to differ. Each one is described, with both results and
// how maps avoid it, in docs/fhirpath-divergences.md; the differential test
// fails on any other difference, and on an entry here that no longer
// diverges or that the document does not mention.
var divergences = map[string]string{
	// Refused by Compile: the engine counts bytes, not characters.
	"name.given.first().length()":          "length() counts bytes",
	"name.given.exists(length() > 3)":      "length() counts bytes",
	"name.given.where($this.length() = 2)": "length() counts bytes",
	"name.given.first().substring(1, 2)":   "substring() cuts bytes",
	"birthDate.toString().substring(0, 4)": "substring() cuts bytes",
	"name.given.first().indexOf('a')":      "indexOf() returns byte offsets",
	// String functions on several items: the engine uses the first item,
	// fhirpath.js reports the error FHIRPath requires.
	"name.family.upper()":             "string function on a collection",
	"name.family.lower()":             "string function on a collection",
	"name.family.startsWith('Æ')":     "string function on a collection",
	"name.family.endsWith('Müller')":  "string function on a collection",
	"name.family.contains('ø')":       "string function on a collection",
	`telecom.value.matches('^\\+41')`: "string function on a collection",
	"telecom.value.replace(' ', '')":  "string function on a collection",
	// Empty collections.
	"alias.single()":                      "single() of empty is an error",
	"component.valueQuantity.value.sum()": "sum() of empty is 0",
	"name.given.join(' ')":                "join() of empty is ''",
	// Arguments evaluated against the focus instead of the context.
	"name.given.union(name.family).count()":  "union() argument context",
	"name.given.combine(name.given).count()": "combine() argument context",
	// resourceType counted as a child element.
	"children().count()":        "children() includes resourceType",
	"descendants().count() > 5": "descendants() includes resourceType",
}

// corpusCase is one expression of the corpus; readPath marks the ones in
// the path language, which are also read with package maps/path.
type corpusCase struct {
	expr     string
	readPath bool
	origin   string
}

type resource struct {
	name string
	raw  []byte
	doc  map[string]any
}

type oracleCase struct {
	Expression string          `json:"expression"`
	Resource   json.RawMessage `json:"resource"`
}

type oracleResult struct {
	Result []any   `json:"result"`
	Error  *string `json:"error"`
}

// oracleDir returns the directory of the fhirpath.js oracle, or skips the
// test (fails it under FHIRSYNC_CI=1) when node or its packages are missing.
func oracleDir(t *testing.T) string {
	t.Helper()
	dir := "oracle"
	missing := ""
	if _, err := exec.LookPath("node"); err != nil {
		missing = "node is not installed (apt-get install nodejs npm)"
	} else if _, err := os.Stat(filepath.Join(dir, "node_modules", "fhirpath", "package.json")); err != nil {
		missing = "the oracle's packages are not installed (run `npm ci` in maps/fhirpath/oracle)"
	}
	if missing != "" {
		if os.Getenv("FHIRSYNC_CI") == "1" {
			t.Fatalf("fhirpath.js oracle unavailable: %s", missing)
		}
		t.Skipf("fhirpath.js oracle unavailable: %s", missing)
	}
	return dir
}

// runOracle evaluates the cases with fhirpath.js; extra arguments select a
// mode of oracle.js (--bench N).
func runOracle(t testing.TB, dir string, cases []oracleCase, extra ...string) []json.RawMessage {
	t.Helper()
	in, err := json.Marshal(cases)
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command("node", append([]string{"oracle.js"}, extra...)...)
	cmd.Dir = dir
	cmd.Stdin = bytes.NewReader(in)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("running oracle.js: %v\n%s", err, stderr.String())
	}
	var res []json.RawMessage
	if err := json.Unmarshal(out, &res); err != nil {
		t.Fatalf("decoding oracle output: %v", err)
	}
	if len(res) != len(cases) {
		t.Fatalf("oracle returned %d results for %d cases", len(res), len(cases))
	}
	return res
}

func loadResources(t testing.TB) []resource {
	t.Helper()
	files, err := filepath.Glob("testdata/resources/*.json")
	if err != nil || len(files) == 0 {
		t.Fatalf("no synthetic resources in testdata/resources: %v", err)
	}
	sort.Strings(files)
	var out []resource
	for _, f := range files {
		raw, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		var compact bytes.Buffer
		if err := json.Compact(&compact, raw); err != nil {
			t.Fatalf("%s: %v", f, err)
		}
		d := json.NewDecoder(bytes.NewReader(raw))
		d.UseNumber()
		var doc map[string]any
		if err := d.Decode(&doc); err != nil {
			t.Fatalf("%s: %v", f, err)
		}
		out = append(out, resource{name: filepath.Base(f), raw: compact.Bytes(), doc: doc})
	}
	return out
}

func loadCorpus(t testing.TB) []corpusCase {
	t.Helper()
	f, err := os.Open("testdata/expressions.txt")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var out []corpusCase
	sc := bufio.NewScanner(f)
	for n := 1; sc.Scan(); n++ {
		line := strings.TrimSpace(sc.Text())
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		c := corpusCase{expr: line, origin: fmt.Sprintf("expressions.txt:%d", n)}
		if rest, ok := strings.CutPrefix(line, "path:"); ok {
			c.expr, c.readPath = strings.TrimSpace(rest), true
		}
		out = append(out, c)
	}
	if err := sc.Err(); err != nil {
		t.Fatal(err)
	}
	return out
}

// starterCorpus collects the FHIRPath expressions (filters and computed
// values) and the attribute paths of the starter maps in ../starter, when
// that folder has maps. Paths inside an expansion are joined to the
// expansion's path so that they can be read from the resource.
func starterCorpus(t testing.TB) []corpusCase {
	t.Helper()
	files, _ := filepath.Glob("../starter/*.yaml")
	sort.Strings(files)
	var out []corpusCase
	seen := map[string]bool{}
	add := func(c corpusCase) {
		key := fmt.Sprint(c.readPath, c.expr)
		if !seen[key] {
			seen[key] = true
			out = append(out, c)
		}
	}
	for _, file := range files {
		raw, err := os.ReadFile(file)
		if err != nil {
			t.Fatal(err)
		}
		var doc any
		if err := yaml.Unmarshal(raw, &doc); err != nil {
			t.Fatalf("%s: %v", file, err)
		}
		origin := "starter/" + filepath.Base(file)
		var walk func(v any, prefix string)
		walk = func(v any, prefix string) {
			switch x := v.(type) {
			case map[string]any:
				if e, ok := x["expression"].(string); ok && e != "" {
					add(corpusCase{expr: e, origin: origin})
				}
				p, _ := x["fhirPath"].(string)
				if p != "" {
					add(corpusCase{expr: prefix + p, readPath: true, origin: origin})
				}
				for k, child := range x {
					if k == "attributes" && x["matchKey"] != nil && p != "" {
						walk(child, prefix+p+".")
						continue
					}
					walk(child, prefix)
				}
			case []any:
				for _, child := range x {
					walk(child, prefix)
				}
			}
		}
		walk(doc, "")
	}
	sort.Slice(out, func(i, j int) bool { return out[i].expr < out[j].expr })
	return out
}

// normalize turns a result into comparable JSON: numbers become their
// shortest float text (fhirpath.js has no exact decimals, so 1.50 and 1.5
// are the same result).
func normalize(v any) any {
	switch x := v.(type) {
	case map[string]any:
		m := make(map[string]any, len(x))
		for k, e := range x {
			m[k] = normalize(e)
		}
		return m
	case []any:
		l := make([]any, len(x))
		for i, e := range x {
			l[i] = normalize(e)
		}
		return l
	case json.Number:
		if f, err := strconv.ParseFloat(string(x), 64); err == nil {
			return "num:" + strconv.FormatFloat(f, 'g', -1, 64)
		}
		return "num:" + string(x)
	case float64:
		return "num:" + strconv.FormatFloat(x, 'g', -1, 64)
	}
	return v
}

func show(v any) string {
	b, _ := json.Marshal(v)
	return string(b)
}

// decodeOracle reads one oracle result with json.Number for numbers.
func decodeOracle(t testing.TB, raw json.RawMessage) oracleResult {
	t.Helper()
	d := json.NewDecoder(bytes.NewReader(raw))
	d.UseNumber()
	var r oracleResult
	if err := d.Decode(&r); err != nil {
		t.Fatalf("decoding oracle result %s: %v", raw, err)
	}
	return r
}

func TestDifferentialFHIRPathJS(t *testing.T) {
	dir := oracleDir(t)
	resources := loadResources(t)
	corpus := loadCorpus(t)
	starter := starterCorpus(t)
	t.Logf("corpus: %d expressions from expressions.txt, %d from the starter maps, on %d resources", len(corpus), len(starter), len(resources))
	if len(corpus) < 100 {
		t.Fatalf("corpus has %d expressions, want at least 100", len(corpus))
	}
	corpus = append(corpus, starter...)

	var cases []oracleCase
	for _, c := range corpus {
		for _, r := range resources {
			cases = append(cases, oracleCase{Expression: c.expr, Resource: r.raw})
		}
	}
	js := runOracle(t, dir, cases)

	diverged := map[string]bool{}
	compared, agreeErr := 0, 0
	for i, c := range corpus {
		expr, cerr := Compile(c.expr)
		var p *path.Path
		if c.readPath {
			var err error
			if p, err = path.Compile(c.expr); err != nil {
				t.Errorf("%s: %q is marked as a path but does not compile: %v", c.origin, c.expr, err)
			}
		}
		for j, r := range resources {
			want := decodeOracle(t, js[i*len(resources)+j])
			var got []any
			var gerr error
			if cerr != nil {
				gerr = cerr
			} else {
				// The route maps use: the fast evaluator on the decoded
				// resource, the engine where it does not serve.
				got, gerr = expr.EvalResource(r.doc)
			}
			compared++
			switch {
			case want.Error != nil && gerr != nil:
				agreeErr++
				continue
			case want.Error != nil || gerr != nil:
				jsText, goText := "result "+show(want.Result), "result "+show(got)
				if want.Error != nil {
					jsText = "error: " + *want.Error
				}
				if gerr != nil {
					goText = "error: " + errorDetail(gerr)
				}
				diverge(t, diverged, c, r.name, goText, jsText)
			case show(normalize(toAnySlice(got))) != show(normalize(toAnySlice(want.Result))):
				diverge(t, diverged, c, r.name, show(got), show(want.Result))
			}
			if p != nil && want.Error == nil {
				if g := p.GetAll(r.doc); show(normalize(toAnySlice(g))) != show(normalize(toAnySlice(want.Result))) {
					t.Errorf("%s: maps/path reads %s on %s as %s, fhirpath.js as %s", c.origin, c.expr, r.name, show(g), show(want.Result))
				}
			}
		}
	}
	t.Logf("compared %d evaluations (%d where both engines report an error)", compared, agreeErr)

	doc, err := os.ReadFile(filepath.Join("..", "..", "docs", "fhirpath-divergences.md"))
	if err != nil {
		t.Fatalf("reading the divergence document: %v", err)
	}
	for e := range divergences {
		if !diverged[e] {
			t.Errorf("allow-listed divergence %q no longer diverges; remove it from the allow-list and docs/fhirpath-divergences.md", e)
		}
		if !bytes.Contains(doc, []byte("`"+e+"`")) {
			t.Errorf("allow-listed divergence %q is not described in docs/fhirpath-divergences.md", e)
		}
	}
}

func toAnySlice(v []any) []any {
	if v == nil {
		return []any{}
	}
	return v
}

func errorDetail(err error) string {
	return err.Error()
}

func diverge(t *testing.T, seen map[string]bool, c corpusCase, resName, goResult, jsResult string) {
	t.Helper()
	seen[c.expr] = true
	if _, ok := divergences[c.expr]; ok {
		t.Logf("documented divergence %s on %s: ours %s, fhirpath.js %s", c.expr, resName, goResult, jsResult)
		return
	}
	t.Errorf("%s: undocumented divergence for %s on %s:\n  ours:        %s\n  fhirpath.js: %s", c.origin, c.expr, resName, goResult, jsResult)
}
