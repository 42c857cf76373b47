package fhirpath

import "testing"

func BenchmarkEval(b *testing.B) {
	pat := readResource(b, "patient-full.json")
	for _, expr := range []string{
		"gender",
		"name.where(use = 'official').exists() and birthDate.exists()",
		"telecom.where(system = 'phone').count() > 1",
	} {
		e := MustCompile(expr)
		b.Run(expr, func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				if _, err := e.Eval(pat); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
