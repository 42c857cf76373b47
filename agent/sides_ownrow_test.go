package agent

import (
	"context"
	"encoding/json"
	"errors"
	"strings"
	"testing"

	"github.com/fhirsync/fhirsync/agent/crm"
	"github.com/fhirsync/fhirsync/maps"
	"github.com/fhirsync/fhirsync/maps/starter"
)

// TestOwnRowNamesTheMapWhoseFilterAdmitsIt covers the branch of the
// shared-table check the end-to-end tests do not reach: a row linked under
// no map, refused by this map's filter and admitted by another map's of
// the same table, is refused naming that map (and this map's filter). A
// row the map's own filter admits, or one with no contact type, is the
// record's own.
func TestOwnRowNamesTheMapWhoseFilterAdmitsIt(t *testing.T) {
	_, set, err := maps.Import(starter.YAML(), maps.CompileOptions{})
	if err != nil {
		t.Fatal(err)
	}
	def := func(name string) *maps.EntityMap {
		m, ok := set.Map(name)
		if !ok {
			t.Fatalf("the starter set has no map %s", name)
		}
		return m.Def()
	}
	practitioner, patient := def("practitioner-contact"), def("patient-contact")
	sharing := func(table string) []*maps.EntityMap {
		if table != "contact" {
			return nil
		}
		return []*maps.EntityMap{patient, practitioner}
	}
	// No contactid in the row: no link is looked up, so no database is
	// needed; only the filters decide.
	row := func(contactType any) crm.Record {
		r := crm.Record{"msemr_azurefhirid": "x1"}
		if contactType != nil {
			r["msemr_contacttype"] = contactType
		}
		return r
	}
	ctx := context.Background()

	err = ownRow(ctx, links{}, sharing, practitioner, row(json.Number("935000000")))
	var shared *sharedRowError
	if !errors.As(err, &shared) {
		t.Fatalf("a patient's contact for a Practitioner: %v, want a shared-row error", err)
	}
	if shared.ownerMap != "patient-contact" || shared.ownerType != "Patient" || shared.filter != "practitioner-contacts" {
		t.Errorf("error names owner %q (%q), filter %q; want patient-contact (Patient), practitioner-contacts", shared.ownerMap, shared.ownerType, shared.filter)
	}
	for _, want := range []string{"a Patient's (entity map patient-contact)", "excluded by filter practitioner-contacts", "entity map practitioner-contact does not write it"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("message %q lacks %q", err.Error(), want)
		}
	}

	// A type no map admits: refused by the filter alone, no owner named.
	err = ownRow(ctx, links{}, sharing, practitioner, row(json.Number("935000009")))
	if !errors.As(err, &shared) || shared.ownerMap != "" || shared.filter != "practitioner-contacts" {
		t.Errorf("a contact of another type: %v, want refused by practitioner-contacts with no owner", err)
	}

	for name, r := range map[string]crm.Record{
		"the map's own type": row(json.Number("935000001")),
		"no contact type":    row(nil),
		"an empty one":       row(""),
	} {
		if err := ownRow(ctx, links{}, sharing, practitioner, r); err != nil {
			t.Errorf("%s: %v, want the record's own row", name, err)
		}
	}
}
