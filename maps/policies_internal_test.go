package maps

import (
	"reflect"
	"testing"

	"github.com/gofhir/models/r4"
)

// TestActiveTableMatchesR4: the table of resource types deactivate can set
// active on is exactly the R4 types whose active element is a boolean.
func TestActiveTableMatchesR4(t *testing.T) {
	t.Parallel()
	seen := 0
	for _, typ := range r4.AllResourceTypes() {
		rt, ok := resourceGoType(typ)
		if !ok {
			t.Fatalf("no Go type for %s", typ)
		}
		f, has := jsonFields(rt)["active"]
		isBool := has && (f.Type.Kind() == reflect.Bool || (f.Type.Kind() == reflect.Pointer && f.Type.Elem().Kind() == reflect.Bool))
		if isBool != HasActive(typ) {
			t.Errorf("%s: R4 has a boolean active element: %v; table says %v", typ, isBool, HasActive(typ))
		}
		if isBool {
			seen++
		}
	}
	if seen != len(fhirActive) {
		t.Errorf("%d R4 types have active, the table lists %d", seen, len(fhirActive))
	}
	for _, typ := range []string{"Location", "Device", "Endpoint", "CareTeam", "InsurancePlan"} {
		if HasActive(typ) {
			t.Errorf("%s has a status, not active", typ)
		}
	}
}
