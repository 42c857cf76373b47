package crmserver

import (
	"fmt"

	"github.com/fhirsync/fhirsync/sandbox/synth"
)

// SeedUserID is the systemuserid recorded on seeded rows.
const SeedUserID = "00000000-0000-0000-0000-00000000beef"

// Seed inserts rows of an entity as the Web API would render them (the
// primary key included or generated; read-only columns ignored). Seeding
// posts nothing to the service endpoint. It is all or nothing.
func (s *Server) Seed(logicalName string, rows []map[string]any) error {
	s.st.mu.Lock()
	defer s.st.mu.Unlock()
	tb := s.st.tables[logicalName]
	if tb == nil {
		return fmt.Errorf("seeding: unknown entity %q", logicalName)
	}
	c := &call{user: SeedUserID, initiating: SeedUserID}
	t := &tx{s: s.st}
	for i, body := range rows {
		changes, e := s.applyBody(c, tb, body, true)
		if e != nil {
			t.rollback()
			return fmt.Errorf("seeding %s row %d: %s", logicalName, i, e.message)
		}
		id, _ := changes[tb.def.PrimaryID].(string)
		delete(changes, tb.def.PrimaryID)
		if id == "" {
			id = newID()
		}
		if tb.rows[id] != nil {
			t.rollback()
			return fmt.Errorf("seeding %s row %d: id already present", logicalName, i)
		}
		if _, e := s.insert(c, t, tb, id, changes); e != nil {
			t.rollback()
			return fmt.Errorf("seeding %s row %d: %s", logicalName, i, e.message)
		}
	}
	return nil
}

// SeedSynth inserts accounts and contacts from the synthetic data
// generator.
func (s *Server) SeedSynth(g *synth.Generator, contacts, accounts int) error {
	acc := make([]map[string]any, accounts)
	for i := range acc {
		acc[i] = g.Account(i)
	}
	if err := s.Seed("account", acc); err != nil {
		return err
	}
	con := make([]map[string]any, contacts)
	for i := range con {
		con[i] = g.Contact(i)
	}
	return s.Seed("contact", con)
}
