package maps

import (
	"slices"
	"strings"
	"testing"
)

func TestFHIRElements(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name, resource, within, parent string
		wantType                       string
		want                           []string // names that must be offered, with their type after ":"
		wantErr                        string
	}{
		{name: "resource", resource: "Patient", wantType: "Patient", want: []string{"name:HumanName", "birthDate:date", "deceasedBoolean:boolean", "gender:code"}},
		{name: "datatype", resource: "Patient", parent: "name", wantType: "HumanName", want: []string{"given:string", "family:string", "use:code"}},
		{name: "through where and index", resource: "Patient", parent: "name.where(use = 'official')", wantType: "HumanName", want: []string{"given:string"}},
		{name: "backbone", resource: "Patient", parent: "contact", wantType: "BackboneElement", want: []string{"relationship:CodeableConcept", "name:HumanName"}},
		{name: "inside a backbone", resource: "Patient", parent: "contact.name", wantType: "HumanName", want: []string{"family:string"}},
		{name: "expansion item", resource: "Patient", within: "identifier", wantType: "Identifier", want: []string{"system:uri", "value:string", "type:CodeableConcept"}},
		{name: "expansion item child", resource: "Patient", within: "identifier", parent: "type", wantType: "CodeableConcept", want: []string{"coding:Coding", "text:string"}},
		{name: "unknown element", resource: "Patient", parent: "nmae", wantErr: `resource Patient has no element "nmae"`},
		{name: "unknown resource", resource: "Patientt", wantErr: "not an R4 resource type"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			typ, els, err := FHIRElements(tt.resource, tt.within, tt.parent)
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("error = %v, want %q", err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if typ != tt.wantType {
				t.Errorf("type = %q, want %q", typ, tt.wantType)
			}
			var got []string
			for _, e := range els {
				got = append(got, e.Name+":"+e.Type)
				if strings.HasPrefix(e.Name, "_") {
					t.Errorf("offers %s", e.Name)
				}
			}
			for _, w := range tt.want {
				if !slices.Contains(got, w) {
					t.Errorf("elements %v lack %s", got, w)
				}
			}
			if !slices.IsSortedFunc(els, func(a, b FHIRElement) int { return strings.Compare(a.Name, b.Name) }) {
				t.Error("elements are not sorted by name")
			}
		})
	}
	_, els, _ := FHIRElements("Patient", "", "")
	for _, e := range els {
		if e.Name == "gender" && !slices.Contains(e.Codes, "female") {
			t.Errorf("gender codes = %v", e.Codes)
		}
		if e.Name == "name" && !e.Many {
			t.Error("Patient.name does not repeat")
		}
	}
}
