package maps_test

import (
	"slices"
	"testing"

	"github.com/fhirsync/fhirsync/maps"
	"github.com/fhirsync/fhirsync/maps/starter"
)

func TestCRMEntities(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name     string
		entities []string // CRMEntity of each entity map, in document order
		want     []string
	}{
		{name: "no entity maps", entities: nil, want: nil},
		{name: "one", entities: []string{"contact"}, want: []string{"contact"}},
		{name: "document order kept", entities: []string{"msemr_encounter", "contact", "account"}, want: []string{"msemr_encounter", "contact", "account"}},
		{name: "duplicates once, at first place", entities: []string{"contact", "account", "contact", "account", "msemr_observation"}, want: []string{"contact", "account", "msemr_observation"}},
		{name: "empty names skipped", entities: []string{"", "contact", "", "account"}, want: []string{"contact", "account"}},
		{name: "only empty names", entities: []string{"", ""}, want: nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			doc := &maps.Document{}
			for i, e := range tt.entities {
				doc.EntityMaps = append(doc.EntityMaps, maps.EntityMap{Name: string(rune('a' + i)), CRMEntity: e})
			}
			if got := doc.CRMEntities(); !slices.Equal(got, tt.want) {
				t.Fatalf("CRMEntities() = %q, want %q", got, tt.want)
			}
		})
	}
}

func TestStarterCRMEntities(t *testing.T) {
	t.Parallel()
	doc, _, err := maps.Import(starter.YAML(), maps.CompileOptions{})
	if err != nil {
		t.Fatalf("starter map set: %v", err)
	}
	got := doc.CRMEntities()
	if n := countOf(got, "contact"); n != 1 {
		t.Fatalf("CRMEntities() = %q: contact appears %d times, want once", got, n)
	}
	// Expansion-map children sync with their parent and are not registered.
	if slices.Contains(got, "msemr_medicalidentifier") {
		t.Fatalf("CRMEntities() = %q includes the expansion child msemr_medicalidentifier", got)
	}
	for _, e := range got {
		if countOf(got, e) != 1 || e == "" {
			t.Fatalf("CRMEntities() = %q: %q is empty or repeated", got, e)
		}
	}
}

func countOf(s []string, v string) int {
	n := 0
	for _, x := range s {
		if x == v {
			n++
		}
	}
	return n
}
