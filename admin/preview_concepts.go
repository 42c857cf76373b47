package admin

import (
	"context"
	"errors"
	"fmt"

	"github.com/fhirsync/fhirsync/agent/crm"
	"github.com/fhirsync/fhirsync/maps"
)

// ConceptID finds a concept lookup's row in the CRM's msemr_codeableconcept
// table, read-only, as the agent finds it (maps.ConceptFilter,
// maps.ChooseConceptRow). A row the map would create is not created: the
// preview shows it with the id maps.MemoryConceptID gives it.
func (l previewLookups) ConceptID(ctx context.Context, want maps.ConceptRow, create bool) (string, bool, error) {
	var rows []maps.ConceptRow
	err := l.crm.RetrieveMultiple(ctx, maps.ConceptEntitySet, crm.Query{Select: maps.ConceptColumns(), Filter: maps.ConceptFilter(want)},
		func(r crm.Record) error {
			rows = append(rows, maps.ConceptRowOf(r))
			return nil
		})
	if err != nil {
		return "", false, fmt.Errorf("finding a %s row: %w", maps.ConceptEntity, err)
	}
	if row, ok := maps.ChooseConceptRow(rows, want); ok {
		return row.ID, true, nil
	}
	return l.MemoryConcepts.ConceptID(ctx, want, create)
}

// Concept reads a concept row: one the preview would have created, else
// the CRM's.
func (l previewLookups) Concept(ctx context.Context, id string) (maps.ConceptRow, bool, error) {
	if row, ok, _ := l.MemoryConcepts.Concept(ctx, id); ok {
		return row, true, nil
	}
	if !crmIDPattern.MatchString(id) {
		return maps.ConceptRow{}, false, nil
	}
	rec, err := l.crm.Retrieve(ctx, crm.ByID(maps.ConceptEntitySet, id), maps.ConceptColumns()...)
	if errors.Is(err, crm.ErrNotFound) {
		return maps.ConceptRow{}, false, nil
	}
	if err != nil {
		return maps.ConceptRow{}, false, fmt.Errorf("reading %s row %s: %w", maps.ConceptEntity, id, err)
	}
	row := maps.ConceptRowOf(rec)
	if row.ID == "" {
		row.ID = id
	}
	return row, true, nil
}
