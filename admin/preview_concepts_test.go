package admin

import (
	"context"
	"strings"
	"testing"

	"github.com/fhirsync/fhirsync/agent/crm"
	"github.com/fhirsync/fhirsync/maps"
)

// conceptRows is a CRMRecordReader holding msemr_codeableconcept rows; it
// answers a filter as Dataverse does, without regard to case.
type conceptRows []crm.Record

func (c conceptRows) Retrieve(_ context.Context, t crm.Target, _ ...string) (crm.Record, error) {
	for _, r := range c {
		if strings.EqualFold(r.String(maps.ConceptIDColumn), t.ID) {
			return r, nil
		}
	}
	return nil, &crm.Error{Status: 404, Class: crm.ClassNotFound}
}

func (c conceptRows) RetrieveMultiple(_ context.Context, _ string, q crm.Query, fn func(crm.Record) error) error {
	for _, r := range c {
		typ := int(r[maps.ConceptTypeColumn].(int))
		if strings.EqualFold(q.Filter, maps.ConceptFilter(maps.ConceptRow{Code: r.String(maps.ConceptCodeColumn), Type: &typ})) {
			if err := fn(r); err != nil {
				return err
			}
		}
	}
	return nil
}

// TestPreviewConceptsReadTheCRM: a preview binds a concept lookup to the
// CRM's row of the code and type (exact code: "abc" is not "ABC"), and
// shows a row the map would create with its placeholder id, written
// nowhere; write-back reads either.
func TestPreviewConceptsReadTheCRM(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	const existing = "0a0b0c0d-0000-0000-0000-000000000001"
	l := previewLookups{crm: conceptRows{
		{maps.ConceptIDColumn: existing, maps.ConceptCodeColumn: "ABC", maps.ConceptNameColumn: "Upper", maps.ConceptTypeColumn: 935000023},
	}, MemoryConcepts: maps.NewMemoryConcepts()}
	typ := 935000023
	id, found, err := l.ConceptID(ctx, maps.ConceptRow{Code: "ABC", Name: "x", Type: &typ}, true)
	if err != nil || !found || id != existing {
		t.Fatalf("existing row = %q %v %v, want %s", id, found, err, existing)
	}
	id, found, err = l.ConceptID(ctx, maps.ConceptRow{Code: "abc", Name: "lower", Type: &typ}, false)
	if err != nil || found {
		t.Fatalf("another code's case without create = %q %v %v, want not found", id, found, err)
	}
	id, found, _ = l.ConceptID(ctx, maps.ConceptRow{Code: "abc", Name: "lower", Type: &typ}, true)
	if !found || id != maps.MemoryConceptID(&typ, "abc") {
		t.Fatalf("a row the map would create = %q %v, want its placeholder id", id, found)
	}
	if row, ok, _ := l.Concept(ctx, id); !ok || row.Name != "lower" {
		t.Errorf("placeholder row = %+v %v", row, ok)
	}
	if row, ok, err := l.Concept(ctx, existing); err != nil || !ok || row.Code != "ABC" || row.Type == nil || *row.Type != typ {
		t.Errorf("CRM row = %+v %v %v", row, ok, err)
	}
}
