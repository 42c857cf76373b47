package agent

import (
	"context"
	"errors"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/fhirsync/fhirsync/agent/crm"
	"github.com/fhirsync/fhirsync/logs"
	"github.com/fhirsync/fhirsync/maps"
	"github.com/fhirsync/fhirsync/maps/starter"
	"github.com/fhirsync/fhirsync/sandbox/crmserver"
)

// fixedLookups resolves every reference to one row and concepts through
// a concept cache, as the agent's resolver does.
type fixedLookups struct{ c *conceptCache }

func (fixedLookups) CRMID(context.Context, string, string) (string, bool, error) {
	return "c0000000-0000-4000-8000-000000000001", true, nil
}
func (fixedLookups) FHIRRef(context.Context, string, string) (string, bool, error) {
	return "", false, nil
}
func (l fixedLookups) ConceptID(ctx context.Context, want maps.ConceptRow, create bool) (string, bool, error) {
	return l.c.id(ctx, want, create)
}
func (l fixedLookups) Concept(ctx context.Context, id string) (maps.ConceptRow, bool, error) {
	return l.c.row(ctx, id)
}

// TestConceptCodeDifferingOnlyInCase: the sandbox CRM holds the SNOMED
// code "ML" of the Condition code type under the alternate key on
// msemr_code and msemr_type, which compares without regard to case as
// Dataverse's collation does. A Condition coded "mL" (another FHIR code)
// cannot have its own row: mapping it is a mapping_error decision, not
// retried, at the code attribute map, saying the CRM holds a code that
// differs only in case; the error itself (what a process log could show)
// names neither code, and nothing is created. From a cold cache (another
// process) it is the same.
func TestConceptCodeDifferingOnlyInCase(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	srv, err := crmserver.New(crmserver.Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { srv.Close() })
	hs := httptest.NewServer(srv)
	t.Cleanup(hs.Close)
	c, err := crm.New(crm.Config{URL: hs.URL})
	if err != nil {
		t.Fatal(err)
	}
	_, set, err := maps.Import(starter.YAML(), maps.CompileOptions{})
	if err != nil {
		t.Fatal(err)
	}
	m, ok := set.Map("condition")
	if !ok {
		t.Fatal("no condition map")
	}
	condition := func(code string) map[string]any {
		return map[string]any{"resourceType": "Condition", "id": "cond-1",
			"code":    map[string]any{"coding": []any{map[string]any{"system": "http://snomed.info/sct", "code": code, "display": "Synthetic"}}},
			"subject": map[string]any{"reference": "Patient/p-1"}}
	}

	warm := newConceptCache(c)
	if _, err := m.ToCRM(ctx, condition("ML"), nil, fixedLookups{warm}); err != nil {
		t.Fatalf("mapping the Condition coded ML: %v", err)
	}
	before := srv.Count(maps.ConceptEntity)
	for _, tc := range []struct {
		name  string
		cache *conceptCache
	}{{"warm cache", warm}, {"cold cache", newConceptCache(c)}} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := m.ToCRM(ctx, condition("mL"), nil, fixedLookups{tc.cache})
			var cce *maps.ConceptCaseError
			if !errors.As(err, &cce) {
				t.Fatalf("mapping the Condition coded mL: %v, want a concept case error", err)
			}
			if strings.Contains(err.Error(), "ML") || strings.Contains(err.Error(), "mL") {
				t.Errorf("the error names a code: %v", err)
			}
			if reasonForError(engineError(err)) != "mapping_error" {
				t.Errorf("reason = %s, want mapping_error", reasonForError(engineError(err)))
			}
			st := (&pipeline{}).mappingFailure(engineError(err))
			if st.outcome != logs.OutcomeDeadLettered || st.reason != "mapping_error" || !IsPermanent(st.err) {
				t.Errorf("decision = %s %s (permanent %v), want dead_lettered mapping_error, not retried", st.outcome, st.reason, IsPermanent(st.err))
			}
			for _, want := range []string{"code", `"mL"`, `"ML"`, "935000023", "only in case"} {
				if !strings.Contains(st.message, want) {
					t.Errorf("decision message %q does not say %s", st.message, want)
				}
			}
			if n := srv.Count(maps.ConceptEntity); n != before {
				t.Errorf("concept rows = %d, want %d (nothing created)", n, before)
			}
		})
	}
}
