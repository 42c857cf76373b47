package crmserver

import (
	"regexp"
	"testing"

	"github.com/fhirsync/fhirsync/maps"
	"github.com/fhirsync/fhirsync/maps/starter"
)

// TestStarterMapsMatchEntityDefinitions validates the starter map set
// against the sandbox's EntityDefinitions: every CRM entity, attribute,
// type, lookup target and option value the maps use must exist here.
func TestStarterMapsMatchEntityDefinitions(t *testing.T) {
	t.Parallel()
	_, hs := newServer(t, Options{})
	resp, body := do(t, "GET", hs.URL+APIPath+"EntityDefinitions?$expand=Attributes", nil, "")
	if resp.StatusCode != 200 {
		t.Fatalf("EntityDefinitions: %d %s", resp.StatusCode, body)
	}
	md, err := maps.ParseCRMMetadata(body)
	if err != nil {
		t.Fatal(err)
	}
	doc, err := maps.Parse(starter.YAML())
	if err != nil {
		t.Fatal(err)
	}
	if err := maps.Validate(doc, maps.CompileOptions{CRM: md}); err != nil {
		t.Fatalf("starter maps do not fit the sandbox entities:\n%v", err)
	}
}

// TestStarterMapsBindKnownNavigationProperties checks that every
// navigation property the starter maps bind (in lookups and in their
// sample outputs) is a many-to-one relationship of some sandbox entity.
func TestStarterMapsBindKnownNavigationProperties(t *testing.T) {
	t.Parallel()
	navs := map[string]bool{}
	for _, e := range DefaultEntities() {
		for _, r := range e.ManyToOne {
			navs[r.NavigationProperty] = true
		}
	}
	y := starter.YAML()
	pats := []*regexp.Regexp{
		regexp.MustCompile(`"([A-Za-z0-9_]+)@odata\.bind"`),
		regexp.MustCompile(`(?m)^\s*navigation:\s*([A-Za-z0-9_]+)\s*$`),
		regexp.MustCompile(`(?m)^\s*parentLookup:\s*([A-Za-z0-9_]+)\s*$`),
		regexp.MustCompile(`"parentNavigation":\s*"([A-Za-z0-9_]+)"`),
	}
	seen := 0
	for _, re := range pats {
		for _, m := range re.FindAllSubmatch(y, -1) {
			seen++
			if !navs[string(m[1])] {
				t.Errorf("starter maps bind %q, which no sandbox entity defines", m[1])
			}
		}
	}
	if seen == 0 {
		t.Fatal("found no navigation properties in the starter maps")
	}
}
