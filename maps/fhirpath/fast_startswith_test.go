package fhirpath

import (
	"encoding/json"
	"testing"
)

// TestFastStartsWithAgreesWithEngine runs startsWith by both routes on
// resources the synthetic corpus lacks (a contained subject, a missing
// reference, several given names) and requires the same result; the
// single-string cases must be served by the fast evaluator.
func TestFastStartsWithAgreesWithEngine(t *testing.T) {
	t.Parallel()
	docs := map[string]string{
		"contained subject": `{"resourceType":"Observation","id":"o1","contained":[{"resourceType":"Patient","id":"p1"}],"subject":{"reference":"#p1"}}`,
		"patient subject":   `{"resourceType":"Observation","id":"o2","subject":{"reference":"Patient/123"}}`,
		"no reference":      `{"resourceType":"Observation","id":"o3","subject":{"display":"someone"}}`,
		"no subject":        `{"resourceType":"Observation","id":"o4"}`,
		"several names":     `{"resourceType":"Patient","id":"p2","name":[{"given":["Ann","Bea"]}]}`,
	}
	tests := []struct {
		expr   string
		served []string // docs the fast evaluator must answer itself
	}{
		{expr: "subject.where(reference.startsWith('#')).empty()", served: []string{"contained subject", "patient subject", "no reference", "no subject"}},
		{expr: "subject.reference.startsWith('Patient/')", served: []string{"contained subject", "patient subject", "no reference", "no subject"}},
		{expr: "subject.reference.startsWith('')", served: []string{"contained subject", "patient subject"}},
		{expr: "name.given.first().startsWith('An')", served: []string{"several names"}},
		{expr: "name.given.startsWith('An')"},
	}
	for _, tt := range tests {
		e, err := Compile(tt.expr)
		if err != nil {
			t.Fatalf("%s: %v", tt.expr, err)
		}
		if e.fast == nil {
			t.Fatalf("the fast evaluator does not parse %q", tt.expr)
		}
		for name, src := range docs {
			var doc map[string]any
			if err := json.Unmarshal([]byte(src), &doc); err != nil {
				t.Fatal(err)
			}
			compareRoutes(t, e, name, doc)
		}
		for _, name := range tt.served {
			var doc map[string]any
			if err := json.Unmarshal([]byte(docs[name]), &doc); err != nil {
				t.Fatal(err)
			}
			if _, ev := e.evalFast(doc); ev == nil {
				t.Errorf("%s on %s: not served by the fast evaluator", tt.expr, name)
			} else {
				ev.release()
			}
		}
	}
}
