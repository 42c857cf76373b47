package fhirpath

import (
	"bufio"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"os/exec"
	"slices"
	"strconv"
	"strings"
	"testing"
	"text/tabwriter"
	"time"

	"github.com/fhirsync/fhirsync/maps/path"
)

// speedExpressions are the FHIRPath (not path-language) reads timed by
// TestCompareSpeed besides every path of the corpus and the starter maps.
var speedExpressions = []string{
	"name.where(use = 'official').exists() and birthDate.exists()",
	"telecom.where(system = 'phone').count() > 1",
	"identifier.where(system = 'urn:x').exists()",
	"status != 'entered-in-error'",
	"code.coding.where(system = 'http://loinc.org').display.first()",
	"name.select(given.first() + ' ' + family)",
	"birthDate > @1970-01-01",
	"value.ofType(Quantity).value",
	"iif(active, 'yes', 'no')",
	"extension.where(url = 'http://example.org/ext/flag').value",
}

// TestCompareSpeed runs the same read expressions on the same records
// through fhirpath.js and through this project's routes — EvalResource (the
// fast evaluator on the decoded resource, as maps call it), the gofhir
// engine's Eval on the JSON text, and maps/path for path-language reads —
// in one run, alternating per expression and resource, and prints a table
// of median ns/op and the ratios. It only measures; it asserts nothing
// about time. Run it with
//
//	FHIRSYNC_COMPARE_SPEED=1 go test ./maps/fhirpath -run TestCompareSpeed -v
func TestCompareSpeed(t *testing.T) {
	if os.Getenv("FHIRSYNC_COMPARE_SPEED") != "1" {
		t.Skip("set FHIRSYNC_COMPARE_SPEED=1 to compare speed with fhirpath.js")
	}
	dir := oracleDir(t)
	resources := loadResources(t)

	type row struct {
		expr     string
		isPath   bool
		js, path []float64 // ns/op per resource: fhirpath.js, maps/path
		engine   []float64 // the gofhir engine on the JSON text (Eval)
		fast     []float64 // EvalResource on the decoded resource
		served   bool      // the fast evaluator parses the expression
	}
	var rows []*row
	seen := map[string]bool{}
	for _, c := range append(loadCorpus(t), starterCorpus(t)...) {
		if c.readPath && !seen[c.expr] {
			seen[c.expr] = true
			rows = append(rows, &row{expr: c.expr, isPath: true})
		}
	}
	for _, c := range starterCorpus(t) {
		if !c.readPath && !seen[c.expr] {
			seen[c.expr] = true
			rows = append(rows, &row{expr: c.expr})
		}
	}
	for _, e := range speedExpressions {
		if !seen[e] {
			seen[e] = true
			rows = append(rows, &row{expr: e})
		}
	}

	// Each row is timed by fhirpath.js and by this package's routes in
	// turn, resource by resource, so that a busy spell of the shared
	// machine falls on all of them alike.
	js := startOracleServer(t, dir, 5)
	for _, r := range rows {
		e := MustCompile(r.expr)
		r.served = e.fast != nil
		var p *path.Path
		if r.isPath {
			p = path.MustCompile(r.expr)
		}
		for _, res := range resources {
			r.js = append(r.js, js.bench(t, r.expr, res.raw))
			r.engine = append(r.engine, timeIt(func() { _, _ = e.Eval(res.raw) }))
			r.fast = append(r.fast, timeIt(func() { _, _ = e.EvalResource(res.doc) }))
			if p != nil {
				r.path = append(r.path, timeIt(func() { _ = p.GetAll(res.doc) }))
			}
		}
	}

	var b strings.Builder
	w := tabwriter.NewWriter(&b, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(w, "expression\tfast\tfhirpath.js ns/op\tEvalResource ns/op\tratio\tengine Eval ns/op\tratio\tmaps/path ns/op\tratio\t")
	var pathRatios, engineRatios, fastRatios []float64
	for _, r := range rows {
		js, eng, fast := median(r.js), median(r.engine), median(r.fast)
		engineRatios = append(engineRatios, js/eng)
		fastRatios = append(fastRatios, js/fast)
		served := "no"
		if r.served {
			served = "yes"
		}
		extra := "\t\t"
		if r.isPath {
			pt := median(r.path)
			extra = fmt.Sprintf("%.0f\t%.1fx\t", pt, js/pt)
			pathRatios = append(pathRatios, js/pt)
		}
		fmt.Fprintf(w, "%s\t%s\t%.0f\t%.0f\t%.1fx\t%.0f\t%.2fx\t%s\n", shorten(r.expr, 60), served, js, fast, js/fast, eng, js/eng, extra)
	}
	w.Flush()
	t.Logf("medians over %d synthetic resources per expression (JSON decoding excluded for fhirpath.js, EvalResource and maps/path; the engine's Eval reads JSON text):\n%s", len(resources), b.String())
	t.Logf("median speed-up over fhirpath.js on %d expressions: EvalResource (fast evaluator, engine fallback) %.1fx; engine Eval on JSON text %.2fx; maps/path %.1fx on %d path reads",
		len(rows), median(fastRatios), median(engineRatios), median(pathRatios), len(pathRatios))
}

// oracleServer is oracle.js --serve: it times one case per request.
type oracleServer struct {
	in  io.Writer
	out *bufio.Reader
}

func startOracleServer(t *testing.T, dir string, rounds int) *oracleServer {
	t.Helper()
	cmd := exec.Command("node", "oracle.js", "--serve", strconv.Itoa(rounds))
	cmd.Dir = dir
	cmd.Stderr = os.Stderr
	in, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatalf("starting oracle.js: %v", err)
	}
	t.Cleanup(func() {
		in.Close()
		_ = cmd.Wait()
	})
	return &oracleServer{in: in, out: bufio.NewReader(out)}
}

func (o *oracleServer) bench(t *testing.T, expr string, resource json.RawMessage) float64 {
	t.Helper()
	line, err := json.Marshal(oracleCase{Expression: expr, Resource: resource})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := o.in.Write(append(line, '\n')); err != nil {
		t.Fatalf("writing to oracle.js: %v", err)
	}
	reply, err := o.out.ReadBytes('\n')
	if err != nil {
		t.Fatalf("reading from oracle.js: %v", err)
	}
	var b struct {
		NsPerOp float64 `json:"nsPerOp"`
		Error   string  `json:"error"`
	}
	if err := json.Unmarshal(reply, &b); err != nil {
		t.Fatal(err)
	}
	if b.Error != "" {
		t.Fatalf("fhirpath.js cannot run %s: %s", expr, b.Error)
	}
	return b.NsPerOp
}

// timeIt returns the median ns per call of f over five rounds of at least
// two milliseconds each.
func timeIt(f func()) float64 {
	n := 1
	for {
		start := time.Now()
		for range n {
			f()
		}
		if time.Since(start) > 2*time.Millisecond || n > 1<<20 {
			break
		}
		n *= 2
	}
	samples := make([]float64, 5)
	for i := range samples {
		start := time.Now()
		for range n {
			f()
		}
		samples[i] = float64(time.Since(start).Nanoseconds()) / float64(n)
	}
	return median(samples)
}

func median(xs []float64) float64 {
	if len(xs) == 0 {
		return 0
	}
	s := slices.Clone(xs)
	slices.Sort(s)
	if len(s)%2 == 1 {
		return s[len(s)/2]
	}
	return (s[len(s)/2-1] + s[len(s)/2]) / 2
}

func shorten(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[:n-3] + "..."
}
