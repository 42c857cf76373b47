package fhirpath

import (
	"bytes"
	"encoding/json"
	"testing"
)

var benchExpressions = []string{
	"gender",
	"period.start",
	"name.where(use = 'official').given[0]",
	"name.where(use = 'official').exists() and birthDate.exists()",
	"telecom.where(system = 'phone').count() > 1",
	"birthDate > @1970-01-01",
}

// BenchmarkEval times the engine on the JSON text (Eval) and the fast
// route on the decoded resource (EvalResource) side by side.
func BenchmarkEval(b *testing.B) {
	raw := readResource(b, "patient-full.json")
	d := json.NewDecoder(bytes.NewReader(raw))
	d.UseNumber()
	var doc map[string]any
	if err := d.Decode(&doc); err != nil {
		b.Fatal(err)
	}
	for _, expr := range benchExpressions {
		e := MustCompile(expr)
		b.Run("Eval/"+expr, func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				if _, err := e.Eval(raw); err != nil {
					b.Fatal(err)
				}
			}
		})
		b.Run("EvalResource/"+expr, func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				if _, err := e.EvalResource(doc); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
