package maps

import (
	"context"
	"fmt"
	"reflect"
	"slices"
	"strings"
	"sync"
	"testing"

	"github.com/google/uuid"

	"github.com/fhirsync/fhirsync/maps/starter"
	"github.com/fhirsync/fhirsync/sandbox/synth"
)

// fakeResolver correlates any reference with a GUID derived from it, and
// back, as a correlation store would.
type fakeResolver struct {
	mu    sync.Mutex
	byID  map[string]string
	calls int
	// Concept rows live in memory, created as the maps allow.
	*MemoryConcepts
}

func newFakeResolver() *fakeResolver {
	return &fakeResolver{byID: map[string]string{}, MemoryConcepts: NewMemoryConcepts()}
}

func (f *fakeResolver) CRMID(_ context.Context, entityMap, ref string) (string, bool, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.calls++
	id := uuid.NewSHA1(uuid.NameSpaceURL, []byte(entityMap+"|"+ref)).String()
	f.byID[id] = ref
	return id, true, nil
}

func (f *fakeResolver) FHIRRef(_ context.Context, _ string, id string) (string, bool, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.calls++
	ref, ok := f.byID[strings.ToLower(id)]
	return ref, ok, nil
}

func loadStarter(t testing.TB) *Set {
	t.Helper()
	_, set, err := Import(starter.YAML(), CompileOptions{})
	if err != nil {
		t.Fatalf("starter map set: %v", err)
	}
	return set
}

// crmRecordStore plays the CRM: it stores a mapped record (nulls dropped,
// id as given) and its created child rows (each given an id derived from
// the record's, active), and returns them as a read would.
func crmRecordStore(m *Mapping, res *CRMResult, id string) CRMState {
	rec := map[string]any{m.def.idAttribute(): id}
	for k, v := range res.Record {
		if v != nil {
			rec[k] = v
		}
	}
	st := CRMState{Record: rec, Children: map[string][]map[string]any{}}
	ids := make([]string, len(res.Children))
	for i, ch := range res.Children {
		if ch.Op != ChildCreate {
			continue
		}
		x := m.expansionNamed(ch.Expansion)
		ids[i] = uuid.NewSHA1(uuid.NameSpaceURL, fmt.Appendf(nil, "%s|%d", id, i)).String()
		row := map[string]any{x.def.idAttribute(): ids[i], "statecode": 0}
		for k, v := range ch.Record {
			if v != nil {
				row[k] = v
			}
		}
		if ch.Parent > 0 {
			// A nested row, created under the row of an earlier create.
			row["_"+x.def.ParentLookup+"_value"] = ids[ch.Parent-1]
		}
		st.Children[ch.Expansion] = append(st.Children[ch.Expansion], row)
	}
	return st
}

// TestRoundTripSyntheticPatients maps 1,000 synthetic patients FHIR → CRM →
// FHIR with the starter Patient map and checks that (a) written back onto
// the original, every element — mapped or not — is unchanged and only the
// correlation identifier is added; (b) written onto an empty resource, every
// mapped element is reproduced; (c) mapping the result again against the
// stored CRM record reports no change.
func TestRoundTripSyntheticPatients(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	set := loadStarter(t)
	m, _ := set.Map("patient-contact")
	g := synth.New(20261121)
	r := newFakeResolver()
	corr := "identifier.where(system='urn:fhirsync:crm:contactid').value"
	mappedSeen := map[string]int{}
	for i := range 1000 {
		orig := g.Patient(i)
		out, err := m.ToCRM(ctx, g.Patient(i), nil, r)
		if err != nil {
			t.Fatalf("patient %d: FHIR → CRM: %v", i, err)
		}
		contactID := uuid.NewSHA1(uuid.NameSpaceOID, []byte(synth.PatientID(i))).String()
		state := crmRecordStore(m, out, contactID)

		// (a) onto the original.
		back, err := m.ToFHIR(ctx, state, g.Patient(i), r)
		if err != nil {
			t.Fatalf("patient %d: CRM → FHIR: %v", i, err)
		}
		if !slices.Equal(back.Changed, []string{corr}) {
			t.Fatalf("patient %d: write-back onto the original changed %v, want only the correlation identifier", i, back.Changed)
		}
		ids := back.Resource["identifier"].([]any)
		last := ids[len(ids)-1].(map[string]any)
		if last["system"] != "urn:fhirsync:crm:contactid" || last["value"] != contactID {
			t.Fatalf("patient %d: correlation identifier %v", i, last)
		}
		back.Resource["identifier"] = ids[:len(ids)-1]
		if !reflect.DeepEqual(back.Resource, orig) {
			t.Fatalf("patient %d: write-back onto the original lost or changed data:\n%s", i, strings.Join(jsonDiff("", back.Resource, orig), "\n"))
		}

		// (b) onto an empty resource: every mapped element is reproduced.
		fresh, err := m.ToFHIR(ctx, state, nil, r)
		if err != nil {
			t.Fatalf("patient %d: CRM → new FHIR: %v", i, err)
		}
		for _, a := range m.attrs {
			if !a.toFHIR || a.path == nil {
				continue
			}
			want, wok := a.path.Get(orig)
			got, gok := a.path.Get(fresh.Resource)
			if wok != gok || !a.equalFHIR(got, want) {
				t.Fatalf("patient %d: attribute map %s: element %s not reproduced (present %v, want %v)", i, a.def.Name, a.path, gok, wok)
			}
			if wok {
				mappedSeen[a.def.Name]++
			}
		}
		x := m.expansions[0]
		var wantIDs []any
		for _, it := range x.items(orig) {
			if !x.excluded(it.(map[string]any)) {
				wantIDs = append(wantIDs, it)
			}
		}
		gotIDs := x.items(fresh.Resource)
		gotIDs = slices.DeleteFunc(slices.Clone(gotIDs), func(it any) bool { return x.excluded(it.(map[string]any)) })
		if len(gotIDs) != len(wantIDs) {
			t.Fatalf("patient %d: %d identifiers reproduced, want %d", i, len(gotIDs), len(wantIDs))
		}
		for j := range wantIDs {
			for _, a := range x.attrs {
				want, wok := a.path.Get(wantIDs[j].(map[string]any))
				got, gok := a.path.Get(gotIDs[j].(map[string]any))
				if wok != gok || !a.equalFHIR(got, want) {
					t.Fatalf("patient %d: identifier %d: %s not reproduced", i, j, a.def.Name)
				}
			}
		}

		// (c) mapping the written-back resource again changes nothing.
		again, err := m.ToCRM(ctx, back.Resource, &state, r)
		if err != nil {
			t.Fatalf("patient %d: second FHIR → CRM: %v", i, err)
		}
		if len(again.Changed) != 0 || len(again.Children) != 0 {
			t.Fatalf("patient %d: unchanged patient reported changes %v", i, again.Changed)
		}
	}
	for _, a := range m.attrs {
		if a.toFHIR && a.path != nil && mappedSeen[a.def.Name] == 0 {
			t.Errorf("no synthetic patient exercised attribute map %s", a.def.Name)
		}
	}
}

// TestStarterMapsAcceptSyntheticData maps every kind of synthetic resource
// with its starter map in both directions and checks that writing the
// result back onto the original changes nothing but the correlation
// identifier.
func TestStarterMapsAcceptSyntheticData(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	set := loadStarter(t)
	g := synth.New(99)
	r := newFakeResolver()
	kinds := []struct {
		mapName string
		gen     func(int) map[string]any
	}{
		{"practitioner-contact", g.Practitioner},
		{"organization-account", g.Organization},
		{"encounter", g.Encounter},
		{"observation", g.Observation},
	}
	for _, k := range kinds {
		m, _ := set.Map(k.mapName)
		for i := range 200 {
			out, err := m.ToCRM(ctx, k.gen(i), nil, r)
			if err != nil {
				t.Fatalf("%s %d: %v", k.mapName, i, err)
			}
			if out.Filtered != "" || !m.def.CRMToFHIR.Enabled {
				continue
			}
			rec := map[string]any{m.def.idAttribute(): fmt.Sprintf("00000000-0000-4000-8000-%012d", i)}
			for key, v := range out.Record {
				rec[key] = v
			}
			back, err := m.ToFHIR(ctx, CRMState{Record: rec}, k.gen(i), r)
			if err != nil {
				t.Fatalf("%s %d: back: %v", k.mapName, i, err)
			}
			if len(back.Changed) != 1 || !strings.HasPrefix(back.Changed[0], "identifier.where(system=") {
				t.Fatalf("%s %d: write-back of an unchanged record changed %v", k.mapName, i, back.Changed)
			}
		}
	}
}
