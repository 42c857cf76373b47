package maps_test

import (
	"testing"

	"github.com/fhirsync/fhirsync/maps"
)

func TestNavigationProperty(t *testing.T) {
	t.Parallel()
	byType := &maps.Lookup{ByType: []maps.LookupTarget{{Type: "Location", EntityMap: "location", CRMAttribute: "msemr_actorlocation"}}}
	tests := []struct {
		name string
		a    maps.AttributeMap
		want string
	}{
		{name: "lookup without navigation", a: maps.AttributeMap{CRMAttribute: "msemr_generalpractitioner", Lookup: &maps.Lookup{EntityMap: "practitioner-contact"}}, want: "msemr_generalpractitioner"},
		{name: "lookup with navigation", a: maps.AttributeMap{CRMAttribute: "parentcustomerid", Lookup: &maps.Lookup{EntityMap: "organization-account", Navigation: "parentcustomerid_account"}}, want: "parentcustomerid_account"},
		{name: "concept without navigation", a: maps.AttributeMap{CRMAttribute: "msemr_code", Concept: &maps.Concept{}}, want: "msemr_code"},
		{name: "concept with navigation", a: maps.AttributeMap{CRMAttribute: "msemr_code", Concept: &maps.Concept{Navigation: "msemr_Code"}}, want: "msemr_Code"},
		{name: "lookup by type", a: maps.AttributeMap{Lookup: byType}, want: ""},
		{name: "no lookup", a: maps.AttributeMap{CRMAttribute: "lastname"}, want: ""},
	}
	for _, tt := range tests {
		if got := tt.a.NavigationProperty(); got != tt.want {
			t.Errorf("%s: NavigationProperty() = %q, want %q", tt.name, got, tt.want)
		}
	}
	targets := []struct {
		t    maps.LookupTarget
		want string
	}{
		{t: maps.LookupTarget{CRMAttribute: "msemr_actorlocation"}, want: "msemr_actorlocation"},
		{t: maps.LookupTarget{CRMAttribute: "msemr_actorpractitioner", Navigation: "msemr_ActorPractitioner"}, want: "msemr_ActorPractitioner"},
	}
	for _, tt := range targets {
		if got := tt.t.NavigationProperty(); got != tt.want {
			t.Errorf("target %s: NavigationProperty() = %q, want %q", tt.t.CRMAttribute, got, tt.want)
		}
	}
}
