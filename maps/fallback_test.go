package maps

import (
	"context"
	"encoding/json"
	"slices"
	"testing"

	"github.com/google/uuid"
)

// TestStarterFallbacksWriteBackToTheChosenElement checks that the starter
// maps' fallback paths read a person's name from the usual (or only) name
// when there is no official one, write changes back into that same name,
// and that clearing the name does not move the next name part onto another
// name.
func TestStarterFallbacksWriteBackToTheChosenElement(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	set := loadStarter(t)
	m, _ := set.Map("patient-contact")
	tests := []struct {
		name   string
		in     string
		record map[string]any // CRM values written back over the mapped record
		want   string         // the resource's name list after write-back
	}{
		{
			name:   "a changed last name goes into the usual name",
			in:     `{"resourceType":"Patient","id":"p","name":[{"use":"usual","family":"Old","given":["Ann"]}]}`,
			record: map[string]any{"lastname": "New"},
			want:   `[{"family":"New","given":["Ann"],"use":"usual"}]`,
		},
		{
			name:   "a name without use is the person's name",
			in:     `{"resourceType":"Patient","id":"p","name":[{"family":"Doe","given":["Jo"]}]}`,
			record: map[string]any{"firstname": "Joanna"},
			want:   `[{"family":"Doe","given":["Joanna"]}]`,
		},
		{
			name:   "clearing the usual name leaves the maiden name alone",
			in:     `{"resourceType":"Patient","id":"p","name":[{"use":"usual","family":"Doe","given":["Jo"]},{"use":"maiden","family":"Roe","given":["Jo"],"prefix":["Ms"]}]}`,
			record: map[string]any{"firstname": nil, "lastname": nil},
			want:   `[{"family":"Roe","given":["Jo"],"prefix":["Ms"],"use":"maiden"}]`,
		},
		{
			name:   "the official name wins over the usual one",
			in:     `{"resourceType":"Patient","id":"p","name":[{"use":"usual","given":["Jim"]},{"use":"official","family":"Chalmers","given":["Peter"]}]}`,
			record: map[string]any{"firstname": "Pete"},
			want:   `[{"given":["Jim"],"use":"usual"},{"family":"Chalmers","given":["Pete"],"use":"official"}]`,
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			res, err := DecodeJSON([]byte(tc.in))
			if err != nil {
				t.Fatal(err)
			}
			out, err := m.ToCRM(ctx, res, nil, nil)
			if err != nil {
				t.Fatalf("FHIR → CRM: %v", err)
			}
			if out.Record["lastname"] == nil && out.Record["firstname"] == nil {
				t.Fatalf("FHIR → CRM: no name reached the contact: %v", out.Record)
			}
			state := crmRecordStore(m, out, uuid.NewSHA1(uuid.NameSpaceURL, []byte(tc.name)).String())
			for k, v := range tc.record {
				if v == nil {
					delete(state.Record, k)
				} else {
					state.Record[k] = v
				}
			}
			back, err := m.ToFHIR(ctx, state, res, nil)
			if err != nil {
				t.Fatalf("CRM → FHIR: %v", err)
			}
			raw, _ := json.Marshal(back.Resource["name"])
			if string(raw) != tc.want {
				t.Fatalf("name after write-back =\n%s\nwant\n%s", raw, tc.want)
			}
		})
	}
}

// TestCorrelationIdentifierIsHiddenFromAttributeMaps checks that an
// attribute map reading identifier[0] never sees the correlation identifier
// fhirsync adds, in either direction.
func TestCorrelationIdentifierIsHiddenFromAttributeMaps(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	set := loadStarter(t)
	m, _ := set.Map("encounter")
	r := newFakeResolver()
	tests := []struct {
		name      string
		in        string
		wantVisit any
	}{
		{"no identifier of its own", `{"resourceType":"Encounter","id":"e","status":"finished","class":{"code":"AMB"},"subject":{"reference":"Patient/p"},
			"identifier":[{"system":"urn:fhirsync:crm:msemr_encounterid","value":"5e000000-0000-4000-8000-000000000001"}]}`, nil},
		{"its own identifier after the correlation one", `{"resourceType":"Encounter","id":"e","status":"finished","class":{"code":"AMB"},"subject":{"reference":"Patient/p"},
			"identifier":[{"system":"urn:fhirsync:crm:msemr_encounterid","value":"5e000000-0000-4000-8000-000000000001"},{"value":"V-1"}]}`, "V-1"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			res, err := DecodeJSON([]byte(tc.in))
			if err != nil {
				t.Fatal(err)
			}
			out, err := m.ToCRM(ctx, res, nil, r)
			if err != nil {
				t.Fatal(err)
			}
			if got := out.Record["msemr_encounteridentifier"]; got != tc.wantVisit {
				t.Fatalf("visit number = %v, want %v", got, tc.wantVisit)
			}
			state := CRMState{Record: map[string]any{"msemr_encounterid": "5e000000-0000-4000-8000-000000000001"}}
			for k, v := range out.Record {
				if v != nil {
					state.Record[k] = v
				}
			}
			before, _ := EncodeJSON(res)
			back, err := m.ToFHIR(ctx, state, res, r)
			if err != nil {
				t.Fatal(err)
			}
			after, _ := EncodeJSON(back.Resource)
			if string(after) != string(before) || len(back.Changed) != 0 {
				t.Fatalf("write-back changed %v:\n%s\nwant\n%s", back.Changed, after, before)
			}
		})
	}
}

// TestTruncatedValueKeepsTheFullFHIRText checks that an attribute with the
// truncate length policy does not shorten the FHIR value on write-back: the
// CRM holds a shortened view of it, and mapping again reports no change.
func TestTruncatedValueKeepsTheFullFHIRText(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	set := loadStarter(t)
	m, _ := set.Map("patient-contact")
	tests := []struct {
		name        string
		suffix      string
		crmSuffix   any // what the CRM holds after a person's edit; nil keeps the mapped value
		wantSuffix  string
		wantChanged bool
	}{
		{name: "unchanged long suffix", suffix: "Dipl.-Ing. (FH)", wantSuffix: "Dipl.-Ing. (FH)"},
		{name: "short suffix", suffix: "MSc", wantSuffix: "MSc"},
		{name: "edited in the CRM", suffix: "Dipl.-Ing. (FH)", crmSuffix: "PhD", wantSuffix: "PhD", wantChanged: true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			res, err := DecodeJSON([]byte(`{"resourceType":"Patient","id":"p","name":[{"use":"official","family":"Doe","suffix":["` + tc.suffix + `"]}]}`))
			if err != nil {
				t.Fatal(err)
			}
			out, err := m.ToCRM(ctx, res, nil, nil)
			if err != nil {
				t.Fatal(err)
			}
			state := crmRecordStore(m, out, uuid.NewSHA1(uuid.NameSpaceURL, []byte(tc.name)).String())
			if tc.crmSuffix != nil {
				state.Record["suffix"] = tc.crmSuffix
			}
			back, err := m.ToFHIR(ctx, state, res, nil)
			if err != nil {
				t.Fatal(err)
			}
			got := back.Resource["name"].([]any)[0].(map[string]any)["suffix"].([]any)[0]
			if got != tc.wantSuffix {
				t.Fatalf("suffix after write-back = %q, want %q", got, tc.wantSuffix)
			}
			if changed := slices.Contains(back.Changed, "name.where(use='official').suffix[0]"); changed != tc.wantChanged {
				t.Fatalf("changed = %v, want the suffix changed %v", back.Changed, tc.wantChanged)
			}
			again, err := m.ToCRM(ctx, back.Resource, &state, nil)
			if err != nil {
				t.Fatal(err)
			}
			if len(again.Changed) != 0 {
				t.Fatalf("mapping the written-back resource again reports changes %v", again.Changed)
			}
		})
	}
}
