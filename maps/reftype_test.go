package maps

import (
	"context"
	"reflect"
	"testing"

	"github.com/fhirsync/fhirsync/maps/starter"
)

// importedMap is the entity map name of the map set doc.
func importedMap(t *testing.T, doc []byte, name string) *Mapping {
	t.Helper()
	_, set, err := Import(doc, CompileOptions{})
	if err != nil {
		t.Fatal(err)
	}
	m, ok := set.Map(name)
	if !ok {
		t.Fatalf("no %s map", name)
	}
	return m
}

// starterPatientMap is the starter map set's patient-contact map.
func starterPatientMap(t *testing.T) *Mapping {
	t.Helper()
	return importedMap(t, starter.YAML(), "patient-contact")
}

// TestPlainLookupClearedTakesItsReferenceType: when the CRM clears a plain
// lookup (the starter patient map's general practitioner and managing
// organization), write-back removes the reference and the Reference.type
// beside it, and the Reference when nothing else is left in it, as it does
// for a lookup by type; a Reference left holding only its type would still
// say the element refers to a Practitioner.
func TestPlainLookupClearedTakesItsReferenceType(t *testing.T) {
	t.Parallel()
	m := starterPatientMap(t)
	// A patient contact (the map's filter) with sync on (its gate), whose
	// general practitioner and organization lookups are empty.
	rec := map[string]any{"contactid": "c1", "msemr_azurefhirid": "p1", "lastname": "Cleared", "msemr_contacttype": 935000000,
		"msemr_syncenabled": true, "_msemr_generalpractitioner_value": nil, "_parentcustomerid_value": nil}
	for _, tc := range []struct {
		name, field, before string
		want                any // the field afterwards; nil: none
	}{
		{"a typed reference that held nothing else", "generalPractitioner", `[{"type":"Practitioner","reference":"Practitioner/d1"}]`, nil},
		{"a typed reference with a display", "generalPractitioner", `[{"type":"Practitioner","reference":"Practitioner/d1","display":"Dr One"}]`,
			[]any{map[string]any{"display": "Dr One"}}},
		{"a second practitioner the map does not hold", "generalPractitioner", `[{"type":"Practitioner","reference":"Practitioner/d1"},{"reference":"Practitioner/d2"}]`,
			[]any{map[string]any{"reference": "Practitioner/d2"}}},
		{"a typed organization", "managingOrganization", `{"type":"Organization","reference":"Organization/o1"}`, nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			base, err := decodeObject([]byte(`{"resourceType":"Patient","id":"p1","name":[{"family":"Cleared"}],"` + tc.field + `":` + tc.before + `}`))
			if err != nil {
				t.Fatal(err)
			}
			out, err := m.ToFHIR(context.Background(), CRMState{Record: rec}, base, tableResolver{})
			if err != nil {
				t.Fatal(err)
			}
			if out.Filtered != "" || out.Gated != "" {
				t.Fatalf("filtered %q, gated %q: the record must be one the map writes back", out.Filtered, out.Gated)
			}
			got, has := out.Resource[tc.field]
			if tc.want == nil && has {
				t.Errorf("%s = %v, want none", tc.field, got)
			}
			if tc.want != nil && !reflect.DeepEqual(got, tc.want) {
				t.Errorf("%s = %v, want %v", tc.field, got, tc.want)
			}
		})
	}
}

// TestPlainLookupChangedDropsTheOldDisplay: when the CRM points a lookup at
// another record, write-back writes the new reference and removes the
// Reference.display, which named the record referred to before; a lookup
// left as it was keeps its display.
func TestPlainLookupChangedDropsTheOldDisplay(t *testing.T) {
	t.Parallel()
	m := starterPatientMap(t)
	r := tableResolver{"Practitioner/d1": "cd1", "Practitioner/d3": "cd3"}
	before := `[{"type":"Practitioner","reference":"Practitioner/d1","display":"Dr One"}]`
	for _, tc := range []struct {
		name, gp string
		want     []any
	}{
		{"changed to another practitioner", "cd3", []any{map[string]any{"type": "Practitioner", "reference": "Practitioner/d3"}}},
		{"left as it was", "cd1", []any{map[string]any{"type": "Practitioner", "reference": "Practitioner/d1", "display": "Dr One"}}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			rec := map[string]any{"contactid": "c1", "msemr_azurefhirid": "p1", "lastname": "Changed", "msemr_contacttype": 935000000,
				"msemr_syncenabled": true, "_msemr_generalpractitioner_value": tc.gp}
			base, err := decodeObject([]byte(`{"resourceType":"Patient","id":"p1","name":[{"family":"Changed"}],"generalPractitioner":` + before + `}`))
			if err != nil {
				t.Fatal(err)
			}
			out, err := m.ToFHIR(context.Background(), CRMState{Record: rec}, base, r)
			if err != nil {
				t.Fatal(err)
			}
			if out.Filtered != "" || out.Gated != "" {
				t.Fatalf("filtered %q, gated %q: the record must be one the map writes back", out.Filtered, out.Gated)
			}
			if got := out.Resource["generalPractitioner"]; !reflect.DeepEqual(got, tc.want) {
				t.Errorf("generalPractitioner = %v, want %v", got, tc.want)
			}
		})
	}
}
