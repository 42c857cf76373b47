package maps_test

import (
	"context"
	"testing"

	"github.com/fhirsync/fhirsync/maps"
	"github.com/fhirsync/fhirsync/maps/starter"
)

func starterSet(t testing.TB) *maps.Set {
	t.Helper()
	_, set, err := maps.Import(starter.YAML(), maps.CompileOptions{})
	if err != nil {
		t.Fatalf("starter map set: %v", err)
	}
	return set
}

// TestStarterSamples runs every sample case shipped with the starter maps.
func TestStarterSamples(t *testing.T) {
	t.Parallel()
	set := starterSet(t)
	results := maps.RunSamples(context.Background(), set)
	if len(results) < 10 {
		t.Fatalf("only %d starter samples", len(results))
	}
	perMap := map[string]int{}
	for _, r := range results {
		perMap[r.Map]++
		t.Run(r.Map+"/"+r.Sample, func(t *testing.T) {
			if r.ParseError != nil {
				t.Fatalf("sample does not parse: %v", r.ParseError)
			}
			if r.EvalError != nil {
				t.Fatalf("evaluation error: %v", r.EvalError)
			}
			for _, m := range r.Mismatches {
				t.Error(m)
			}
		})
	}
	for _, m := range set.Maps() {
		if perMap[m.Name()] == 0 {
			t.Errorf("entity map %s ships no samples", m.Name())
		}
	}
}
