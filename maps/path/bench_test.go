package path

import "testing"

var benchPaths = []string{
	"name.where(use='official').family",
	"name.where(use='official').given[1]",
	"telecom.where(system='phone' and use='home').value",
	"identifier.where(type.coding.code='MR').value",
	"extension('http://example.org/ext/birthplace').valueString",
	"address[0].line[1]",
	"maritalStatus.coding.where(system='http://terminology.hl7.org/CodeSystem/v3-MaritalStatus').code",
	"generalPractitioner[0].reference",
	"birthDate",
}

func BenchmarkGet(b *testing.B) {
	res := loadPatient(b)
	paths := make([]*Path, len(benchPaths))
	for i, s := range benchPaths {
		paths[i] = MustCompile(s)
	}
	b.ReportAllocs()
	for b.Loop() {
		for _, p := range paths {
			if _, ok := p.Get(res); !ok {
				b.Fatalf("%s: no value", p)
			}
		}
	}
}

func BenchmarkSet(b *testing.B) {
	paths := make([]*Path, len(benchPaths))
	vals := make([]any, len(benchPaths))
	src := loadPatient(b)
	for i, s := range benchPaths {
		paths[i] = MustCompile(s)
		vals[i], _ = paths[i].Get(src)
	}
	b.ReportAllocs()
	for b.Loop() {
		res := map[string]any{"resourceType": "Patient"}
		for i, p := range paths {
			if i == 1 || i == 5 {
				continue // [1] needs [0] first
			}
			if err := p.Set(res, vals[i]); err != nil {
				b.Fatal(err)
			}
		}
	}
}

func BenchmarkSetExisting(b *testing.B) {
	res := loadPatient(b)
	paths := make([]*Path, len(benchPaths))
	vals := make([]any, len(benchPaths))
	for i, s := range benchPaths {
		paths[i] = MustCompile(s)
		vals[i], _ = paths[i].Get(res)
	}
	b.ReportAllocs()
	for b.Loop() {
		for i, p := range paths {
			if err := p.Set(res, vals[i]); err != nil {
				b.Fatal(err)
			}
		}
	}
}
