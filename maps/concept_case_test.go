package maps

import (
	"strings"
	"testing"
)

// TestCaseVariant: of the rows a concept query answered (Dataverse
// compares the code without regard to case), CaseVariant finds one whose
// code differs from the wanted code only in case, the smallest id of
// several, and none when a row has the code exactly.
func TestCaseVariant(t *testing.T) {
	t.Parallel()
	typ := 935000023
	tests := []struct {
		name   string
		rows   []ConceptRow
		want   string // id; "" for none
		exists bool
	}{
		{name: "no rows"},
		{name: "the code exactly", rows: []ConceptRow{{ID: "b", Code: "ML", Type: &typ}, {ID: "a", Code: "mL", Type: &typ}}},
		{name: "one variant", rows: []ConceptRow{{ID: "b", Code: "ML", Type: &typ}}, want: "b", exists: true},
		{name: "the smallest id of two variants", rows: []ConceptRow{{ID: "d", Code: "ML", Type: &typ}, {ID: "C", Code: "ml", Type: &typ}}, want: "C", exists: true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			got, ok := CaseVariant(tc.rows, ConceptRow{Code: "mL", Type: &typ})
			if ok != tc.exists || got.ID != tc.want {
				t.Errorf("CaseVariant = %+v, %v; want id %q, %v", got, ok, tc.want, tc.exists)
			}
		})
	}
	e := &ConceptCaseError{Code: "mL", Held: "ML", Type: &typ}
	if strings.Contains(e.Error(), "ML") || strings.Contains(e.Error(), "mL") || !strings.Contains(e.Error(), "type 935000023") {
		t.Errorf("Error() = %q: want the type and neither code", e.Error())
	}
	if d := e.Detail(); !strings.Contains(d, `"ML"`) || !strings.Contains(d, `"mL"`) {
		t.Errorf("Detail() = %q: want both codes", d)
	}
}
