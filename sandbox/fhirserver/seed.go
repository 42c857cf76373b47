package fhirserver

import (
	"context"
	"fmt"

	"github.com/fhirsync/fhirsync/sandbox/synth"
)

// seed fills an empty store with synthetic resources.
func (s *Server) seed(ctx context.Context) error {
	if s.opts.Patients == 0 && s.opts.Encounters == 0 && s.opts.Observations == 0 {
		return nil
	}
	n, err := s.store.count(ctx)
	if err != nil {
		return fmt.Errorf("seeding the sandbox FHIR server: %w", err)
	}
	if n > 0 {
		return nil
	}
	g := synth.New(s.opts.Seed)
	g.Patients = max(s.opts.Patients, 1)
	var all []map[string]any
	if s.opts.Patients > 0 {
		for i := range g.Organizations {
			all = append(all, g.Organization(i))
		}
		for i := range g.Practitioners {
			all = append(all, g.Practitioner(i))
		}
		for i := range s.opts.Patients {
			all = append(all, g.Patient(i))
		}
	}
	for i := range s.opts.Encounters {
		all = append(all, g.Encounter(i))
	}
	for i := range s.opts.Observations {
		all = append(all, g.Observation(i))
	}
	const batch = 500
	for start := 0; start < len(all); start += batch {
		chunk := all[start:min(start+batch, len(all))]
		err := s.store.write(ctx, func(w *writer) error {
			for _, res := range chunk {
				// The generator's meta describes a history this store does
				// not have; versions start at 1 here.
				if m, ok := res["meta"].(map[string]any); ok {
					delete(m, "versionId")
					delete(m, "lastUpdated")
				}
				if _, err := w.put(ctx, res, "POST", 0); err != nil {
					return err
				}
			}
			return nil
		})
		if err != nil {
			return fmt.Errorf("seeding the sandbox FHIR server: %w", err)
		}
	}
	return nil
}
