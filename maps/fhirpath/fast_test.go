package fhirpath

import (
	"bytes"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"testing"
)

// TestFastAgreesWithEngine runs every corpus expression (expressions.txt,
// the starter maps and the speed comparison's) on every synthetic resource
// by both routes — the fast evaluator on the decoded resource and the
// gofhir engine on its JSON text — and requires the same result, or an
// error from both. It also requires the fast evaluator to serve the
// expressions of the subset it is for, so that a silent fallback to the
// engine does not pass unnoticed.
func TestFastAgreesWithEngine(t *testing.T) {
	t.Parallel()
	resources := loadResources(t)
	var exprs []string
	seen := map[string]bool{}
	for _, c := range append(loadCorpus(t), starterCorpus(t)...) {
		if !seen[c.expr] {
			seen[c.expr] = true
			exprs = append(exprs, c.expr)
		}
	}
	for _, e := range speedExpressions {
		if !seen[e] {
			seen[e] = true
			exprs = append(exprs, e)
		}
	}
	served, evals := 0, 0
	for _, src := range exprs {
		e, err := Compile(src)
		if err != nil {
			continue // refused functions: nothing to evaluate
		}
		if e.fast != nil {
			served++
		}
		for _, r := range resources {
			evals += compareRoutes(t, e, r.name, r.doc)
		}
	}
	t.Logf("fast evaluator parses %d of %d expressions; %d evaluations served by it", served, len(exprs), evals)

	// Every expression and path of the starter maps is served, so that
	// maps built from them never encode a record for FHIRPath.
	for _, c := range starterCorpus(t) {
		if MustCompile(c.expr).fast == nil {
			t.Errorf("%s: the fast evaluator does not parse %q", c.origin, c.expr)
		}
	}
	for _, src := range append([]string{
		"period.start",
		"name.where(use='official').given[0]",
		"extension('http://example.org/ext/score').valueDecimal",
		"telecom.where(system='phone' and use='home').value",
		"status != 'entered-in-error'",
		"birthDate > @1970-01-01",
		"-multipleBirthInteger",
		"value is Quantity",
		"(value as Quantity).unit",
		"Patient.name.family",
		"%context.id",
	}, speedExpressions...) {
		if MustCompile(src).fast == nil {
			t.Errorf("the fast evaluator does not parse %q", src)
		}
	}
	pat := loadResources(t)
	for _, r := range pat {
		if r.name != "patient-full.json" {
			continue
		}
		for _, src := range []string{"name.given", "birthDate", "name.where(use = 'official').exists() and birthDate.exists()", "extension('http://example.org/ext/visits').valueInteger"} {
			_, ev := MustCompile(src).evalFast(r.doc)
			if ev == nil {
				t.Errorf("the fast evaluator hands %q on %s to the engine", src, r.name)
				continue
			}
			ev.release()
		}
	}
}

// compareRoutes evaluates e on doc by both routes and reports differences;
// it returns 1 when the fast evaluator served the evaluation.
func compareRoutes(t *testing.T, e *Expr, name string, doc map[string]any) int {
	t.Helper()
	want, werr := e.evalEngine(doc)
	got, gerr := e.EvalResource(doc)
	if (werr != nil) != (gerr != nil) {
		t.Errorf("%s on %s: fast route error %v, engine error %v", e.src, name, gerr, werr)
		return 0
	}
	if werr == nil && show(normalizeExact(got)) != show(normalizeExact(want)) {
		t.Errorf("%s on %s: fast route %s, engine %s", e.src, name, show(got), show(want))
	}
	wb, werr := e.EvalResourceBool(doc)
	b, _ := json.Marshal(doc)
	gb, gerr := e.EvalBool(b)
	if (werr != nil) != (gerr != nil) || wb != gb {
		t.Errorf("%s on %s: EvalResourceBool %v, %v; EvalBool %v, %v", e.src, name, wb, werr, gb, gerr)
	}
	if _, ev := e.evalFast(doc); ev != nil {
		ev.release()
		return 1
	}
	return 0
}

// normalizeExact makes results comparable without losing decimal text:
// only nil slices become empty ones.
func normalizeExact(v []any) []any {
	if v == nil {
		return []any{}
	}
	return v
}

// TestFastEdgeCases compares the routes on small resources made to reach
// the engine's typing rules: strings that look like dates, zones that
// follow a month, choice elements, decimals and integers, nulls.
func TestFastEdgeCases(t *testing.T) {
	t.Parallel()
	docs := []string{
		`{"resourceType":"Patient","id":"2024-01","birthDate":"1974-12","name":[{"family":"2024-01-01T10:00:00.1234+00:00","given":["2020","x",null]}],"multipleBirthInteger":3}`,
		`{"resourceType":"Observation","id":"o","status":"final","valueDateTime":"2024-01-01T10:00:00.5Z","effectiveDateTime":"2024-01-01-01:00","issued":"2024-03-01T00:00:00.000+00:00"}`,
		`{"resourceType":"Observation","status":"final","valueQuantity":{"value":1.50,"unit":"kg"},"component":[{"valueQuantity":{"value":2}},{"valueString":"1990"}]}`,
		`{"resourceType":"Patient","deceasedBoolean":true,"extension":[{"url":"u","valueInteger":9007199254740993},{"url":"u","valueDecimal":1e3},{"url":5},{"url":"u","valueString":"2024-01-01T10:00:00.1234+00:00"},{"url":"u","valueCode":"2024-01-01-01:00"}],"active":false}`,
		`{"resourceType":"Encounter","period":{"start":"2024-02-29T08:00:00+01:00","end":"2024-02-29"},"class":{"code":"AMB"}}`,
	}
	exprs := []string{
		"id", "birthDate", "name.family", "name.given", "name.given[1]", "value", "effective", "issued",
		"valueDateTime > @2023", "effectiveDateTime", "value.value * 2", "component.value", "component.value.ofType(Quantity).value",
		"extension('u').value", "extension.value", "extension.url", "deceased", "deceased is boolean", "active.not()",
		"period.start < period.end", "period.start", "period.end = @2024-02-29", "birthDate = @1974-12", "name.given.first() + 1",
		"name.given.skip(1)", "name.given.take(2)", "name.given.tail()", "name.given.last()", "iif(active, 1, 2)",
		"class.code | 'AMB'", "name.given = name.given", "name = name", "name.family & '-'", "-multipleBirthInteger",
		"Observation.status", "Patient.id", "Resource.id", "id in ('o' | 'x')", "extension.all(url = 'u')", "(value as Quantity).value",
		"component.exists(value.exists())", "name.given.where($this = '2020')", "%resource.id", "valueQuantity.value div 1",
		"extension('u').valueString", "extension('u').valueCode", "extension('u').valueString > @2024", "extension('u').valueString & 'x'", "birthDate & 'x'", "extension('u').value is DateTime",
	}
	served := 0
	// Each resource decoded with json.Number and with float64 numbers.
	for _, useNumber := range []bool{true, false} {
		for i, d := range docs {
			var doc map[string]any
			dec := json.NewDecoder(bytes.NewReader([]byte(d)))
			if useNumber {
				dec.UseNumber()
			}
			if err := dec.Decode(&doc); err != nil {
				t.Fatal(err)
			}
			for _, src := range exprs {
				served += compareRoutes(t, MustCompile(src), fmt.Sprintf("doc%d (UseNumber %v)", i, useNumber), doc)
			}
		}
	}
	if total := 2 * len(docs) * len(exprs); served < total/2 {
		t.Errorf("the fast evaluator served %d of %d evaluations", served, total)
	}
	t.Logf("the fast evaluator served %d of %d evaluations", served, 2*len(docs)*len(exprs))
}

// FuzzFastAgreesWithEngine checks that the fast route and the engine agree
// on arbitrary expressions over the synthetic resources. Seeds are in
// testdata/fuzz.
func FuzzFastAgreesWithEngine(f *testing.F) {
	for _, s := range []string{"name.given", "birthDate > @1970", "telecom.where(system = 'phone').count() > 1"} {
		f.Add(s)
	}
	files, _ := filepath.Glob("testdata/resources/*.json")
	var docs []map[string]any
	for _, file := range files {
		raw, err := os.ReadFile(file)
		if err != nil {
			f.Fatal(err)
		}
		dec := json.NewDecoder(bytes.NewReader(raw))
		dec.UseNumber()
		var doc map[string]any
		if err := dec.Decode(&doc); err != nil {
			f.Fatal(err)
		}
		docs = append(docs, doc)
	}
	f.Fuzz(func(t *testing.T, src string) {
		e, err := Compile(src)
		if err != nil || e.fast == nil {
			return
		}
		for i, doc := range docs {
			compareRoutes(t, e, filepath.Base(files[i]), doc)
		}
	})
}
