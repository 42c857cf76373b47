package agent

import (
	"context"
	"errors"
	"strings"
	"testing"

	"gorm.io/gorm"

	"github.com/fhirsync/fhirsync/agent/crm"
	"github.com/fhirsync/fhirsync/maps"
	"github.com/fhirsync/fhirsync/maps/starter"
	"github.com/fhirsync/fhirsync/storage/storagetest"
)

// countingCRM is a crmAPI that counts the reads the resolver makes and
// finds nothing.
type countingCRM struct {
	crmAPI
	reads int
}

func (c *countingCRM) Retrieve(context.Context, crm.Target, ...string) (crm.Record, error) {
	c.reads++
	return nil, &crm.Error{Status: 404, Code: "0x80040217", Message: "not found"}
}

// TestLookupResolverHonoursTheReferenceType: the resolver looks a
// reference up only through an entity map of the reference's own type. A
// Practitioner and a Patient with the same id are different records (both
// contacts, through different maps); a reference of another type than the
// map's is refused with a reference type error naming the types and the
// map, not the id, and nothing is looked up.
func TestLookupResolverHonoursTheReferenceType(t *testing.T) {
	t.Parallel()
	_, set, err := maps.Import(starter.YAML(), maps.CompileOptions{})
	if err != nil {
		t.Fatal(err)
	}
	byName := func(name string) (*maps.EntityMap, bool) {
		m, ok := set.Map(name)
		if !ok {
			return nil, false
		}
		return m.Def(), true
	}
	storagetest.Each(t, func(t *testing.T, db *gorm.DB) {
		ctx := context.Background()
		lk := links{db: db}
		for _, l := range []link{
			{EntityMap: "patient-contact", FHIRType: "Patient", FHIRID: "same-id-7", CRMEntity: "contact", CRMID: "c0000000-0000-4000-8000-00000000000a"},
			{EntityMap: "practitioner-contact", FHIRType: "Practitioner", FHIRID: "same-id-7", CRMEntity: "contact", CRMID: "c0000000-0000-4000-8000-00000000000b"},
		} {
			if err := lk.save(ctx, l); err != nil {
				t.Fatal(err)
			}
		}
		api := &countingCRM{}
		r := resolver{links: lk, crm: api, maps: byName, lookups: newLookupCache()}
		tests := []struct {
			name, entityMap, ref string
			want                 string
			wantErr              string
		}{
			{name: "a patient through patient-contact", entityMap: "patient-contact", ref: "Patient/same-id-7", want: "c0000000-0000-4000-8000-00000000000a"},
			{name: "a practitioner with the same id through practitioner-contact", entityMap: "practitioner-contact", ref: "Practitioner/same-id-7", want: "c0000000-0000-4000-8000-00000000000b"},
			{name: "a versioned reference", entityMap: "patient-contact", ref: "Patient/same-id-7/_history/3", want: "c0000000-0000-4000-8000-00000000000a"},
			{name: "an absolute reference", entityMap: "practitioner-contact", ref: "https://fhir.example.org/r4/Practitioner/same-id-7", want: "c0000000-0000-4000-8000-00000000000b"},
			{name: "a practitioner through patient-contact", entityMap: "patient-contact", ref: "Practitioner/same-id-7",
				wantErr: `the reference is to a Practitioner, but the lookup's entity map "patient-contact" syncs Patient`},
			{name: "a patient through practitioner-contact, cached or not", entityMap: "practitioner-contact", ref: "Patient/same-id-7",
				wantErr: `the reference is to a Patient, but the lookup's entity map "practitioner-contact" syncs Practitioner`},
			{name: "a group through patient-contact", entityMap: "patient-contact", ref: "Group/same-id-7",
				wantErr: `the reference is to a Group, but the lookup's entity map "patient-contact" syncs Patient`},
		}
		for _, tc := range tests {
			t.Run(tc.name, func(t *testing.T) {
				before := api.reads
				got, found, err := r.CRMID(ctx, tc.entityMap, tc.ref)
				if tc.wantErr != "" {
					var rte *maps.ReferenceTypeError
					if !errors.As(err, &rte) || !errors.Is(err, maps.ErrReferenceType) || err.Error() != tc.wantErr {
						t.Fatalf("CRMID = %q, %v, %v; want the error %q", got, found, err, tc.wantErr)
					}
					if strings.Contains(err.Error(), "same-id-7") {
						t.Errorf("the error names the id: %v", err)
					}
					if got != "" || found || api.reads != before {
						t.Errorf("answered %q (found %v) after %d reads for a reference of the wrong type", got, found, api.reads-before)
					}
					return
				}
				if err != nil || !found || got != tc.want {
					t.Fatalf("CRMID = %q, %v, %v; want %q", got, found, err, tc.want)
				}
			})
		}
	})
}

// TestReferenceTypeErrorIsAMappingDecision: the engine's error for a
// reference of the wrong type becomes the agent's mapping error naming the
// attribute map, not retried (a retry cannot change the type).
func TestReferenceTypeErrorIsAMappingDecision(t *testing.T) {
	t.Parallel()
	_, set, err := maps.Import(starter.YAML(), maps.CompileOptions{})
	if err != nil {
		t.Fatal(err)
	}
	m, _ := set.Map("encounter")
	_, err = m.ToCRM(context.Background(), map[string]any{"resourceType": "Encounter", "id": "e1", "status": "finished",
		"class": map[string]any{"code": "AMB"}, "subject": map[string]any{"reference": "Group/g-secret-3"}}, nil, nil)
	got := engineError(err)
	var me *mappingError
	if !errors.As(got, &me) {
		t.Fatalf("engineError(%v) = %T, want *mappingError", err, got)
	}
	if me.attribute != "patient" || me.retryable || !errors.Is(got, maps.ErrReferenceType) {
		t.Errorf("mapping error on %q, retryable %v (%v); want attribute map patient, not retryable", me.attribute, me.retryable, got)
	}
	if strings.Contains(got.Error(), "g-secret-3") {
		t.Errorf("the error names the id: %v", got)
	}
}

// rowsCRM is a crmAPI holding rows by id, counting the reads the resolver
// makes.
type rowsCRM struct {
	crmAPI
	rows  map[string]crm.Record
	reads int
}

func (c *rowsCRM) Retrieve(_ context.Context, t crm.Target, _ ...string) (crm.Record, error) {
	c.reads++
	if r, ok := c.rows[t.ID]; ok {
		return r, nil
	}
	return nil, &crm.Error{Status: 404, Code: "0x80040217", Message: "not found"}
}

// TestLookupResolverFHIRRefHonoursTheRowsMap: write-back resolves a
// lookup to a FHIR reference only through a row of the lookup's own
// entity map. patient-contact and practitioner-contact share the contact
// table and its correlation column; a practitioner lookup pointing at a
// patient's contact (linked under patient-contact) is a mapping error
// naming both resource types, not the id, whether the link or a cached
// pair says so, and never "Practitioner/<the patient's id>" read from the
// correlation column. A row linked under no map still falls back to that
// column.
func TestLookupResolverFHIRRefHonoursTheRowsMap(t *testing.T) {
	t.Parallel()
	_, set, err := maps.Import(starter.YAML(), maps.CompileOptions{})
	if err != nil {
		t.Fatal(err)
	}
	byName := func(name string) (*maps.EntityMap, bool) {
		m, ok := set.Map(name)
		if !ok {
			return nil, false
		}
		return m.Def(), true
	}
	sharing := func(entity string) []*maps.EntityMap {
		var out []*maps.EntityMap
		for _, m := range set.ForCRM(entity) {
			out = append(out, m.Def())
		}
		return out
	}
	const (
		patientRow      = "c0000000-0000-4000-8000-0000000000a1"
		practitionerRow = "c0000000-0000-4000-8000-0000000000b2"
		unlinkedRow     = "c0000000-0000-4000-8000-0000000000c3"
	)
	storagetest.Each(t, func(t *testing.T, db *gorm.DB) {
		ctx := context.Background()
		lk := links{db: db}
		for _, l := range []link{
			{EntityMap: "patient-contact", FHIRType: "Patient", FHIRID: "pat-secret-1", CRMEntity: "contact", CRMID: patientRow},
			{EntityMap: "practitioner-contact", FHIRType: "Practitioner", FHIRID: "dr-2", CRMEntity: "contact", CRMID: practitionerRow},
		} {
			if err := lk.save(ctx, l); err != nil {
				t.Fatal(err)
			}
		}
		api := &rowsCRM{rows: map[string]crm.Record{
			patientRow:      {"contactid": patientRow, "msemr_azurefhirid": "pat-secret-1"},
			practitionerRow: {"contactid": practitionerRow, "msemr_azurefhirid": "dr-2"},
			unlinkedRow:     {"contactid": unlinkedRow, "msemr_azurefhirid": "dr-3"},
		}}
		newResolver := func() resolver {
			return resolver{links: lk, crm: api, maps: byName, sharing: sharing, lookups: newLookupCache()}
		}
		wantTypeErr := `the reference is to a Patient, but the lookup's entity map "practitioner-contact" syncs Practitioner`
		checkTypeErr := func(t *testing.T, got string, found bool, err error) {
			t.Helper()
			var rte *maps.ReferenceTypeError
			if !errors.As(err, &rte) || err.Error() != wantTypeErr {
				t.Fatalf("FHIRRef = %q, %v, %v; want the error %q", got, found, err, wantTypeErr)
			}
			if strings.Contains(err.Error(), "pat-secret-1") || strings.Contains(err.Error(), patientRow) {
				t.Errorf("the error names an id: %v", err)
			}
		}

		t.Run("a patient's row through practitioner-contact", func(t *testing.T) {
			r := newResolver()
			got, found, err := r.FHIRRef(ctx, "practitioner-contact", patientRow)
			checkTypeErr(t, got, found, err)
		})
		t.Run("a patient's row through practitioner-contact, after patient-contact cached it", func(t *testing.T) {
			r := newResolver()
			if got, found, err := r.FHIRRef(ctx, "patient-contact", patientRow); err != nil || !found || got != "Patient/pat-secret-1" {
				t.Fatalf("through patient-contact: %q, %v, %v", got, found, err)
			}
			got, found, err := r.FHIRRef(ctx, "practitioner-contact", patientRow)
			checkTypeErr(t, got, found, err)
		})
		t.Run("a practitioner's row through practitioner-contact", func(t *testing.T) {
			r := newResolver()
			if got, found, err := r.FHIRRef(ctx, "practitioner-contact", practitionerRow); err != nil || !found || got != "Practitioner/dr-2" {
				t.Fatalf("FHIRRef = %q, %v, %v; want Practitioner/dr-2", got, found, err)
			}
		})
		t.Run("a row linked under no map falls back to the correlation column", func(t *testing.T) {
			r := newResolver()
			before := api.reads
			if got, found, err := r.FHIRRef(ctx, "practitioner-contact", unlinkedRow); err != nil || !found || got != "Practitioner/dr-3" || api.reads != before+1 {
				t.Fatalf("FHIRRef = %q, %v, %v after %d reads; want Practitioner/dr-3 after one", got, found, err, api.reads-before)
			}
		})
	})
}
