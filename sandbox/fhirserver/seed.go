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
	// The resources in seeding order, each made when its batch is written:
	// the generator derives every record from its index alone, so making
	// them one batch at a time gives the same store as making them all
	// first, without holding a million patients' maps at once.
	type part struct {
		n    int
		make func(int) map[string]any
	}
	var parts []part
	if s.opts.Patients > 0 {
		parts = append(parts, part{g.Organizations, g.Organization}, part{g.Practitioners, g.Practitioner}, part{s.opts.Patients, g.Patient})
	}
	parts = append(parts, part{s.opts.Encounters, g.Encounter}, part{s.opts.Observations, g.Observation})
	total := 0
	for _, p := range parts {
		total += p.n
	}
	// at is the resource with seeding position i.
	at := func(i int) map[string]any {
		for _, p := range parts {
			if i < p.n {
				return p.make(i)
			}
			i -= p.n
		}
		return nil
	}
	const batch = 500
	for start := 0; start < total; start += batch {
		end := min(start+batch, total)
		err := s.store.write(ctx, func(w *writer) error {
			for i := start; i < end; i++ {
				res := at(i)
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
