package maps

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"

	"github.com/fhirsync/fhirsync/maps/starter"
)

// starterWithPatientLinks compiles the starter set with the Patient map's
// patient-links expansion enabled, as an administrator would enable it.
func starterWithPatientLinks(t *testing.T) *Mapping {
	t.Helper()
	doc, err := Parse(starter.YAML())
	if err != nil {
		t.Fatal(err)
	}
	found := false
	for i := range doc.EntityMaps {
		em := &doc.EntityMaps[i]
		if em.Name != "patient-contact" {
			continue
		}
		for j := range em.Expansions {
			if x := &em.Expansions[j]; x.Name == "patient-links" {
				if x.IsEnabled() {
					t.Fatal("patient-links ships enabled; SOURCES.md and the map say it ships disabled")
				}
				on := true
				x.Enabled = &on
				found = true
			}
		}
	}
	if !found {
		t.Fatal("the starter Patient map has no patient-links expansion")
	}
	set, err := Compile(doc, CompileOptions{})
	if err != nil {
		t.Fatalf("starter set with patient links enabled: %v", err)
	}
	m, ok := set.Map("patient-contact")
	if !ok {
		t.Fatal("no patient-contact map")
	}
	return m
}

// patientsOnly resolves a patient-contact lookup only for a reference to
// a Patient, as the CRM has contacts for patients and none for a
// RelatedPerson; other lookups resolve as fakeResolver's.
type patientsOnly struct{ *fakeResolver }

func (p patientsOnly) CRMID(ctx context.Context, entityMap, ref string) (string, bool, error) {
	if entityMap == "patient-contact" && !strings.HasPrefix(ref, "Patient/") {
		return "", false, nil
	}
	return p.fakeResolver.CRMID(ctx, entityMap, ref)
}

// TestStarterPatientLinksRoundTrip enables the Patient link expansion
// (msemr_contactlink, the retired agent's "Patient link expansion map")
// and runs HL7's linked examples through it: pat1 and pat2 link to each
// other (seealso) and round-trip losslessly, each link a msemr_contactlink
// row with the other contact and the link type; mom links to a
// RelatedPerson, a type the link's lookup (patient-contact) does not sync,
// and is a mapping error on the link that names the types, decided before
// any look-up.
func TestStarterPatientLinksRoundTrip(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	m := starterWithPatientLinks(t)
	byFile := map[string]hl7Example{}
	for _, ex := range hl7Examples(t)["Patient"] {
		byFile[ex.file] = ex
	}
	for _, tc := range []struct {
		file, other string
		wantErr     bool
	}{
		{file: "patient-example-a.json", other: "Patient/pat2"},
		{file: "patient-example-b.json", other: "Patient/pat1"},
		{file: "patient-example-mom.json", other: "RelatedPerson/newborn-mom", wantErr: true},
	} {
		t.Run(tc.file, func(t *testing.T) {
			ex, ok := byFile[tc.file]
			if !ok {
				t.Fatalf("HL7 example %s missing", tc.file)
			}
			r := patientsOnly{newFakeResolver()}
			out, err := m.ToCRM(ctx, ex.resource(t), nil, r)
			if tc.wantErr {
				var me *MappingError
				if !errors.As(err, &me) || me.Expansion != "patient-links" || me.Attribute != "other" || !errors.Is(err, ErrReferenceType) {
					t.Fatalf("error = %v, want a reference type mismatch on patient-links / other", err)
				}
				if msg := err.Error(); !strings.Contains(msg, "RelatedPerson") || strings.Contains(msg, "newborn-mom") {
					t.Errorf("error %q should name the type and not the id", msg)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			want, _, _ := r.CRMID(ctx, "patient-contact", tc.other)
			var links []string
			for _, ch := range out.Children {
				if ch.Expansion == "patient-links" {
					links = append(links, fmt.Sprintf("%s %s %v %v", ch.Op, ch.EntitySet, ch.Record["msemr_name"], ch.Record["msemr_link@odata.bind"]))
				}
			}
			wantLinks := []string{"create msemr_contactlinks seealso /contacts(" + want + ")"}
			if strings.Join(links, "|") != strings.Join(wantLinks, "|") {
				t.Fatalf("link rows = %v, want %v", links, wantLinks)
			}
			loss, err := roundTripHL7(ctx, m, func() map[string]any { return ex.resource(t) }, r)
			if err != nil || loss != "" {
				t.Fatalf("round trip: loss %q, error %v", loss, err)
			}
		})
	}
}
