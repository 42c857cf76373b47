package maps_test

import (
	"errors"
	"strings"
	"testing"

	"github.com/fhirsync/fhirsync/maps"
)

// withPolicies sets the patient map's conflictPolicy and the last-name
// attribute map's override in the base map set.
func withPolicies(entity, attribute string) string {
	src := base
	if entity != "" {
		src = strings.Replace(src, "    attributes:\n      - name: last-name\n        crmAttribute: lastname\n        crmType: string\n        fhirPath: name.where",
			"    conflictPolicy: "+entity+"\n    attributes:\n      - name: last-name\n        crmAttribute: lastname\n        crmType: string\n        fhirPath: name.where", 1)
	}
	if attribute != "" {
		src = strings.Replace(src, "fhirPath: name.where(use='official').family\n",
			"fhirPath: name.where(use='official').family\n        conflictPolicy: "+attribute+"\n", 1)
	}
	return src
}

func TestConflictPolicyResolution(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name              string
		entity, attribute string
		wantLastName      maps.ConflictPolicy
		wantGender        maps.ConflictPolicy
	}{
		{name: "nothing set: last-writer-wins", wantLastName: maps.ConflictLastWriter, wantGender: maps.ConflictLastWriter},
		{name: "entity policy applies to every attribute", entity: "crm-wins", wantLastName: maps.ConflictCRMWins, wantGender: maps.ConflictCRMWins},
		{name: "attribute override wins over the entity", entity: "fhir-wins", attribute: "hold", wantLastName: maps.ConflictHold, wantGender: maps.ConflictFHIRWins},
		{name: "override without an entity policy", attribute: "crm-wins", wantLastName: maps.ConflictCRMWins, wantGender: maps.ConflictLastWriter},
		{name: "hold on the entity", entity: "hold", wantLastName: maps.ConflictHold, wantGender: maps.ConflictHold},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			src := withPolicies(tt.entity, tt.attribute)
			if (tt.entity != "" || tt.attribute != "") && src == base {
				t.Fatal("the edit did not apply")
			}
			doc, _, err := maps.Import([]byte(src), maps.CompileOptions{})
			if err != nil {
				t.Fatal(err)
			}
			m := &doc.EntityMaps[0]
			if got := m.Attributes[0].Policy(m); got != tt.wantLastName {
				t.Errorf("last-name policy = %q, want %q", got, tt.wantLastName)
			}
			if got := m.Attributes[1].Policy(m); got != tt.wantGender {
				t.Errorf("gender policy = %q, want %q", got, tt.wantGender)
			}
			// The override survives export and import.
			out, err := maps.Export(doc)
			if err != nil {
				t.Fatal(err)
			}
			if tt.attribute != "" && !strings.Contains(string(out), "conflictPolicy: "+tt.attribute) {
				t.Fatalf("export lost the attribute override:\n%s", out)
			}
			back, _, err := maps.Import(out, maps.CompileOptions{})
			if err != nil {
				t.Fatalf("exported set does not import: %v", err)
			}
			if got := back.EntityMaps[0].Attributes[0].ConflictPolicy; got != maps.ConflictPolicy(tt.attribute) {
				t.Fatalf("after the round trip the override is %q, want %q", got, tt.attribute)
			}
		})
	}
}

func TestBadConflictPolicies(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name    string
		src     string
		want    maps.Problem
		wantMsg string
	}{
		{name: "unknown entity policy", src: withPolicies("newest-wins", ""),
			want: maps.Problem{Map: "patient", Field: "conflictPolicy"}, wantMsg: `got "newest-wins"`},
		{name: "unknown attribute policy", src: withPolicies("", "fhir_wins"),
			want: maps.Problem{Map: "patient", Attribute: "last-name", Field: "conflictPolicy"}, wantMsg: `got "fhir_wins"`},
		{name: "override on a one-way attribute",
			src:     strings.Replace(withPolicies("", "crm-wins"), "        conflictPolicy: crm-wins\n", "        conflictPolicy: crm-wins\n        direction: fhir-to-crm\n", 1),
			want:    maps.Problem{Map: "patient", Attribute: "last-name", Field: "conflictPolicy"},
			wantMsg: "travel both ways"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			_, _, err := maps.Import([]byte(tt.src), maps.CompileOptions{})
			var ve *maps.ValidationError
			if !errors.As(err, &ve) {
				t.Fatalf("Import = %v, want a *ValidationError", err)
			}
			for _, p := range ve.Problems {
				loc := p
				loc.Message = ""
				if loc == tt.want && strings.Contains(p.Message, tt.wantMsg) {
					return
				}
			}
			t.Fatalf("no problem at %s containing %q; got:\n%v", tt.want.Location(), tt.wantMsg, err)
		})
	}
}
