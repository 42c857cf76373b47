package maps_test

import (
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/fhirsync/fhirsync/maps"
	"github.com/fhirsync/fhirsync/maps/starter"
)

func starterSet(t testing.TB) *maps.Set {
	t.Helper()
	_, set, err := maps.Import(starter.YAML(), maps.CompileOptions{})
	if err != nil {
		t.Fatalf("starter map set: %v", err)
	}
	return set
}

// TestStarterSamples runs every sample case shipped with the starter maps.
func TestStarterSamples(t *testing.T) {
	t.Parallel()
	set := starterSet(t)
	results := maps.RunSamples(context.Background(), set)
	if len(results) < 10 {
		t.Fatalf("only %d starter samples", len(results))
	}
	perMap := map[string]int{}
	for _, r := range results {
		perMap[r.Map]++
		t.Run(r.Map+"/"+r.Sample, func(t *testing.T) {
			if r.ParseError != nil {
				t.Fatalf("sample does not parse: %v", r.ParseError)
			}
			if r.EvalError != nil {
				t.Fatalf("evaluation error: %v", r.EvalError)
			}
			for _, m := range r.Mismatches {
				t.Error(m)
			}
		})
	}
	for _, m := range set.Maps() {
		if perMap[m.Name()] == 0 {
			t.Errorf("entity map %s ships no samples", m.Name())
		}
	}
}

// starterExample reads one of HL7's R4 examples kept for the starter maps.
func starterExample(t *testing.T, file string) map[string]any {
	t.Helper()
	b, err := os.ReadFile(filepath.Join("testdata/hl7-r4", file))
	if err != nil {
		t.Fatal(err)
	}
	res, err := maps.DecodeJSON(b)
	if err != nil {
		t.Fatal(err)
	}
	return res
}

// TestStarterSignalMaps evaluates the starter signal maps' signal
// sections on HL7's examples: risk-signal is raised by a final
// RiskAssessment with a probability of at least 0.7 or a high qualitative
// risk (HL7's prognosis example is moderate, its genetic one at most
// 0.0017: neither raises it); flag-signal by an active Flag through the
// day its period ends (HL7's flag example is inactive). Both ship
// disabled; enabled together with patient-contact (and the starter's flag
// and risk-assessment maps left off) the set compiles, while flag-signal
// beside the starter flag map is refused.
func TestStarterSignalMaps(t *testing.T) {
	t.Parallel()
	set := starterSet(t)
	now := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	eval := func(name string, res map[string]any, at time.Time) maps.SignalState {
		t.Helper()
		m, ok := set.Map(name)
		if !ok {
			t.Fatalf("no starter map %s", name)
		}
		if m.Def().Signal == nil {
			t.Fatalf("%s has no signal section", name)
		}
		if d := m.Def(); d.IsEnabled() || d.Signal == nil || !d.Signal.Owner.Patient || d.Signal.PatientMap != "patient-contact" || d.Correlation.CRMAttribute != "fhirsync_signalsource" {
			t.Errorf("%s: enabled %v, owner %+v, patientMap %q, correlation %q; want disabled, owned by the contact's owner through patient-contact, keyed by fhirsync_signalsource",
				name, d.IsEnabled(), d.Signal.Owner, d.Signal.PatientMap, d.Correlation.CRMAttribute)
		}
		st, ok, err := m.Signal(res, at)
		if err != nil || !ok {
			t.Fatalf("%s: signal %v, %v", name, ok, err)
		}
		return st
	}
	setRisk := func(res map[string]any, code string) map[string]any {
		p := res["prediction"].([]any)[0].(map[string]any)
		p["qualitativeRisk"].(map[string]any)["coding"].([]any)[0].(map[string]any)["code"] = code
		return res
	}

	prognosis := starterExample(t, "riskassessment-example-prognosis.json")
	if st := eval("risk-signal", prognosis, now); st.Raised || !strings.Contains(st.Why, "0.7") || !strings.Contains(st.Why, "high") {
		t.Errorf("HL7 prognosis (moderate risk): raised %v (%s), want lowered naming 0.7 and high", st.Raised, st.Why)
	}
	if st := eval("risk-signal", prognosis, now); st.Patient != "Patient/example" {
		t.Errorf("patient %q, want Patient/example", st.Patient)
	}
	if st := eval("risk-signal", setRisk(starterExample(t, "riskassessment-example-prognosis.json"), "high"), now); !st.Raised {
		t.Errorf("prognosis with a high qualitative risk: lowered (%s)", st.Why)
	}
	prelim := setRisk(starterExample(t, "riskassessment-example-prognosis.json"), "high")
	prelim["status"] = "preliminary"
	if st := eval("risk-signal", prelim, now); st.Raised {
		t.Error("a preliminary high risk raised the signal; the map says status = 'final'")
	}
	genetic := starterExample(t, "riskassessment-example.json")
	if st := eval("risk-signal", genetic, now); st.Raised {
		t.Error("HL7 genetic example (probabilities below 0.002) raised the signal")
	}
	genetic["prediction"].([]any)[3].(map[string]any)["probabilityDecimal"] = json.Number("0.7")
	if st := eval("risk-signal", genetic, now); !st.Raised {
		t.Errorf("a prediction of exactly 0.7: lowered (%s)", st.Why)
	}

	flag := starterExample(t, "flag-example.json")
	if st := eval("flag-signal", flag, now); st.Raised {
		t.Error("HL7 flag example (inactive) raised the signal")
	}
	flag["status"] = "active"
	if st := eval("flag-signal", flag, time.Date(2016, 12, 1, 23, 0, 0, 0, time.UTC)); !st.Raised {
		t.Errorf("active Flag on the day its period ends: lowered (%s)", st.Why)
	}
	if st := eval("flag-signal", flag, time.Date(2016, 12, 2, 0, 0, 0, 0, time.UTC)); st.Raised {
		t.Error("active Flag the day after its period ended raised the signal")
	}
	delete(flag, "period")
	if st := eval("flag-signal", flag, now); !st.Raised || st.Patient != "Patient/example" {
		t.Errorf("active Flag without an end: raised %v (%s), patient %q", st.Raised, st.Why, st.Patient)
	}

	enable := func(names ...string) error {
		doc, err := maps.Parse(starter.YAML())
		if err != nil {
			t.Fatal(err)
		}
		for i := range doc.EntityMaps {
			if slices.Contains(names, doc.EntityMaps[i].Name) {
				doc.EntityMaps[i].Enabled = nil
			}
		}
		_, err = maps.Compile(doc, maps.CompileOptions{})
		return err
	}
	if err := enable("risk-signal", "flag-signal"); err != nil {
		t.Errorf("starter set with risk-signal and flag-signal enabled: %v", err)
	}
	if err := enable("flag-signal", "flag"); err == nil || !strings.Contains(err.Error(), "only enabled one") {
		t.Errorf("flag-signal beside the flag map: %v, want refused", err)
	}
}
