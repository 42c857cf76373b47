package fhirpath

import (
	"bytes"
	"encoding/json"
	"testing"
	"time"

	"github.com/fhirsync/fhirsync/internal/proccpu"
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
// route on the decoded resource (EvalResource) side by side. cpu-ns/op is
// the process's CPU time per evaluation, the meaningful figure on a shared
// machine.
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
			cpu0 := proccpu.Used()
			for b.Loop() {
				if _, err := e.Eval(raw); err != nil {
					b.Fatal(err)
				}
			}
			reportCPU(b, cpu0)
		})
		b.Run("EvalResource/"+expr, func(b *testing.B) {
			b.ReportAllocs()
			cpu0 := proccpu.Used()
			for b.Loop() {
				if _, err := e.EvalResource(doc); err != nil {
					b.Fatal(err)
				}
			}
			reportCPU(b, cpu0)
		})
	}
}

func reportCPU(b *testing.B, cpu0 time.Duration) {
	if cpu := proccpu.Used() - cpu0; cpu > 0 {
		b.ReportMetric(float64(cpu.Nanoseconds())/float64(b.N), "cpu-ns/op")
	}
}
