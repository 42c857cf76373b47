package maps

import (
	"testing"

	"github.com/fhirsync/fhirsync/maps/starter"
)

// TestFilteredChoosesTheMap: FHIRFiltered and CRMFiltered, the checks the
// agent runs alone to choose among the entity maps of one FHIR type or CRM
// table, exclude a starter sample's input from its own map exactly when
// the sample expects the decision filtered, naming the filter it expects;
// and among the starter maps sharing a type, the samples' inputs are taken
// by one map and excluded by another (the contact table's patient and
// practitioner maps), so the choice is exercised both ways.
func TestFilteredChoosesTheMap(t *testing.T) {
	t.Parallel()
	_, set, err := Import(starter.YAML(), CompileOptions{})
	if err != nil {
		t.Fatal(err)
	}
	filteredBy := func(m *Mapping, s Sample) string {
		t.Helper()
		if s.Direction == CRMToFHIR {
			st, err := decodeState([]byte(s.Input))
			if err != nil {
				t.Fatalf("%s: %v", s.Name, err)
			}
			return m.CRMFiltered(st.Record)
		}
		res, err := decodeObject([]byte(s.Input))
		if err != nil {
			t.Fatalf("%s: %v", s.Name, err)
		}
		name, err := m.FHIRFiltered(res)
		if err != nil {
			t.Fatalf("%s on %s: %v", m.Name(), s.Name, err)
		}
		return name
	}
	chosen := 0 // inputs one map of their type takes and another excludes
	for _, from := range set.maps {
		for _, s := range from.def.Samples {
			name := filteredBy(from, s)
			if want := s.Expect.Decision == "filtered"; (name != "") != want {
				t.Errorf("%s/%s: filtered by %q, want filtered %v", from.Name(), s.Name, name, want)
			}
			if s.Expect.Filter != "" && name != s.Expect.Filter {
				t.Errorf("%s/%s: filtered by %q, want %q", from.Name(), s.Name, name, s.Expect.Filter)
			}
			takes, excludes := name == "", name != ""
			for _, m := range set.maps {
				same := m.def.FHIRType == from.def.FHIRType
				if s.Direction == CRMToFHIR {
					same = m.def.CRMEntity == from.def.CRMEntity
				}
				if m == from || !same {
					continue
				}
				if filteredBy(m, s) == "" {
					takes = true
				} else {
					excludes = true
				}
			}
			if takes && excludes {
				chosen++
			}
		}
	}
	if chosen == 0 {
		t.Fatal("no starter sample is taken by one map of its type and excluded by another")
	}
	t.Logf("%d samples taken by one map of their type and excluded by another", chosen)
}
