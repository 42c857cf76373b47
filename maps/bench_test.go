package maps

import (
	"context"
	"encoding/json"
	"testing"
	"time"

	"github.com/google/uuid"

	"github.com/fhirsync/fhirsync/internal/proccpu"
	"github.com/fhirsync/fhirsync/sandbox/synth"
)

const benchRecords = 256

func decodeBench(b *testing.B, raw []byte) map[string]any {
	m, err := DecodeJSON(raw)
	if err != nil {
		b.Fatal(err)
	}
	return m
}

// decodeState turns a decoded {"record":…,"children":…} into a CRMState.
func stateOf(b *testing.B, raw []byte) CRMState {
	obj := decodeBench(b, raw)
	st := CRMState{Record: obj["record"].(map[string]any), Children: map[string][]map[string]any{}}
	if ch, ok := obj["children"].(map[string]any); ok {
		for name, rows := range ch {
			for _, r := range rows.([]any) {
				st.Children[name] = append(st.Children[name], r.(map[string]any))
			}
		}
	}
	return st
}

// report adds throughput per wall-clock second and per second of process
// CPU time; the second is the meaningful one on a shared machine.
func report(b *testing.B, n int, cpu0 time.Duration) {
	b.ReportMetric(float64(n)/b.Elapsed().Seconds(), "records/s")
	if cpu := proccpu.Used() - cpu0; cpu > 0 {
		b.ReportMetric(float64(n)/cpu.Seconds(), "records/cpu-s")
	}
}

// benchResolver answers lookups from a table, as the agent's correlation
// cache would.
func benchResolver(g *synth.Generator) *mapResolver {
	r := &mapResolver{ids: map[string]string{}, refs: map[string]string{}}
	add := func(ref string) {
		id := uuid.NewSHA1(uuid.NameSpaceURL, []byte(ref)).String()
		r.ids[ref], r.refs[id] = id, ref
	}
	for i := range g.Practitioners {
		add("Practitioner/" + synth.PractitionerID(i))
	}
	for i := range g.Organizations {
		add("Organization/" + synth.OrganizationID(i))
	}
	return r
}

type mapResolver struct{ ids, refs map[string]string }

func (m *mapResolver) CRMID(_ context.Context, _, ref string) (string, bool, error) {
	id, ok := m.ids[ref]
	return id, ok, nil
}

func (m *mapResolver) FHIRRef(_ context.Context, _, id string) (string, bool, error) {
	ref, ok := m.refs[id]
	return ref, ok, nil
}

// BenchmarkPatientToCRM maps synthetic Patients with the starter Patient
// map, FHIR → CRM, including JSON decoding of the resource and encoding of
// the CRM record and child rows.
func BenchmarkPatientToCRM(b *testing.B) {
	ctx := context.Background()
	m, _ := loadStarter(b).Map("patient-contact")
	g := synth.New(1)
	r := benchResolver(g)
	inputs := make([][]byte, benchRecords)
	for i := range inputs {
		inputs[i], _ = json.Marshal(g.Patient(i))
	}
	b.ReportAllocs()
	b.ResetTimer()
	n := 0
	cpu0 := proccpu.Used()
	for b.Loop() {
		res := decodeBench(b, inputs[n%benchRecords])
		out, err := m.ToCRM(ctx, res, nil, r)
		if err != nil {
			b.Fatal(err)
		}
		if _, err := EncodeJSON(out.Record); err != nil {
			b.Fatal(err)
		}
		for _, c := range out.Children {
			if _, err := EncodeJSON(c.Record); err != nil {
				b.Fatal(err)
			}
		}
		n++
	}
	report(b, n, cpu0)
}

// BenchmarkPatientToFHIR maps CRM contacts (with their identifier rows)
// back onto their current Patient, CRM → FHIR, including JSON decoding of
// the CRM state and the base resource and encoding of the result.
func BenchmarkPatientToFHIR(b *testing.B) {
	ctx := context.Background()
	m, _ := loadStarter(b).Map("patient-contact")
	g := synth.New(1)
	r := benchResolver(g)
	type pair struct{ state, base []byte }
	inputs := make([]pair, benchRecords)
	for i := range inputs {
		out, err := m.ToCRM(ctx, g.Patient(i), nil, r)
		if err != nil {
			b.Fatal(err)
		}
		st := crmRecordStore(m, out, uuid.NewSHA1(uuid.NameSpaceOID, []byte(synth.PatientID(i))).String())
		// Something to write back: the CRM edited the last name.
		st.Record["lastname"] = "Edited"
		inputs[i].state, _ = json.Marshal(st)
		inputs[i].base, _ = json.Marshal(g.Patient(i))
	}
	b.ReportAllocs()
	b.ResetTimer()
	n := 0
	cpu0 := proccpu.Used()
	for b.Loop() {
		in := inputs[n%benchRecords]
		st := stateOf(b, in.state)
		base := decodeBench(b, in.base)
		out, err := m.ToFHIR(ctx, st, base, r)
		if err != nil {
			b.Fatal(err)
		}
		if _, err := EncodeJSON(out.Resource); err != nil {
			b.Fatal(err)
		}
		n++
	}
	report(b, n, cpu0)
}
