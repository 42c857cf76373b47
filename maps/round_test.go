package maps

import (
	"context"
	"encoding/json"
	"slices"
	"strings"
	"testing"
)

// roundDoc is a Location map whose latitude rounds to 2 places, longitude
// to 0, and altitude (no round) passes through as FHIR has it.
const roundDoc = `
format: 1
entityMaps:
  - name: location
    crmEntity: msemr_location
    crmEntitySet: msemr_locations
    fhirType: Location
    fhirToCRM: {enabled: true, operations: [create, update]}
    crmToFHIR: {enabled: true, operations: [create, update]}
    correlation: {crmAttribute: msemr_azurefhirid, fhirIdentifierSystem: "urn:fhirsync:crm:msemr_locationid"}
    attributes:
      - {name: latitude, crmAttribute: msemr_locationpositionlatitude, crmType: decimal, fhirPath: position.latitude, round: 2}
      - {name: longitude, crmAttribute: msemr_locationpositionlongitude, crmType: decimal, fhirPath: position.longitude, round: 0}
      - {name: altitude, crmAttribute: msemr_locationpositionaltitude, crmType: decimal, fhirPath: position.altitude}
`

func roundMapping(t *testing.T) *Mapping {
	t.Helper()
	return importedMap(t, []byte(roundDoc), "location")
}

func TestRoundWritesTheDeclaredPlaces(t *testing.T) {
	t.Parallel()
	m := roundMapping(t)
	ctx := context.Background()
	tests := []struct {
		name              string
		lat, long, alt    string
		wantLat, wantLong string
		wantAlt           string
	}{
		{name: "half rounds away from zero", lat: "42.345", long: "2.5", alt: "0.123456789012", wantLat: "42.35", wantLong: "3", wantAlt: "0.123456789012"},
		{name: "negative half rounds away from zero", lat: "-42.345", long: "-2.5", alt: "-1.5", wantLat: "-42.35", wantLong: "-3", wantAlt: "-1.5"},
		{name: "below half rounds down", lat: "42.25475478", long: "-83.6945691", alt: "0", wantLat: "42.25", wantLong: "-84", wantAlt: "0"},
		{name: "fewer places are kept as written", lat: "42.5", long: "7", alt: "12.50", wantLat: "42.5", wantLong: "7", wantAlt: "12.50"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			res := obj(t, `{"resourceType":"Location","id":"loc-1","position":{"latitude":`+tt.lat+`,"longitude":`+tt.long+`,"altitude":`+tt.alt+`}}`)
			out, err := m.ToCRM(ctx, res, nil, nil)
			if err != nil {
				t.Fatal(err)
			}
			for attr, want := range map[string]string{
				"msemr_locationpositionlatitude":  tt.wantLat,
				"msemr_locationpositionlongitude": tt.wantLong,
				"msemr_locationpositionaltitude":  tt.wantAlt,
			} {
				if got := out.Record[attr]; got != json.Number(want) {
					t.Errorf("%s = %#v, want %s", attr, got, want)
				}
			}
		})
	}
}

// The CRM holds the rounded value: the same resource writes nothing again,
// and write-back keeps the FHIR value's own places, while a value that
// changed in the CRM travels back.
func TestRoundComparesAtTheColumnsPlaces(t *testing.T) {
	t.Parallel()
	m := roundMapping(t)
	ctx := context.Background()
	res := obj(t, `{"resourceType":"Location","id":"loc-1","position":{"latitude":42.25475478,"longitude":-83.6945691}}`)
	stored := map[string]any{
		"msemr_locationid":                "c-1",
		"msemr_azurefhirid":               "loc-1",
		"msemr_locationpositionlatitude":  json.Number("42.25"),
		"msemr_locationpositionlongitude": json.Number("-84"),
	}
	again, err := m.ToCRM(ctx, res, &CRMState{Record: stored}, nil)
	if err != nil {
		t.Fatal(err)
	}
	if slices.Contains(again.Changed, "msemr_locationpositionlatitude") || slices.Contains(again.Changed, "msemr_locationpositionlongitude") {
		t.Fatalf("rounded values written again: changed %v", again.Changed)
	}

	back, err := m.ToFHIR(ctx, CRMState{Record: stored}, res, nil)
	if err != nil {
		t.Fatal(err)
	}
	if slices.Contains(back.ChangedAttributes, "latitude") || slices.Contains(back.ChangedAttributes, "longitude") {
		t.Fatalf("write-back replaced the FHIR value by its rounding: changed %v", back.ChangedAttributes)
	}
	pos, _ := back.Resource["position"].(map[string]any)
	if got := pos["latitude"]; got != json.Number("42.25475478") {
		t.Fatalf("latitude after write-back = %#v, want 42.25475478", got)
	}

	moved := map[string]any{}
	for k, v := range stored {
		moved[k] = v
	}
	moved["msemr_locationpositionlatitude"] = json.Number("42.26")
	back, err = m.ToFHIR(ctx, CRMState{Record: moved}, res, nil)
	if err != nil {
		t.Fatal(err)
	}
	pos, _ = back.Resource["position"].(map[string]any)
	if got := pos["latitude"]; got != json.Number("42.26") {
		t.Fatalf("latitude changed in the CRM came back as %#v, want 42.26", got)
	}
}

func TestRoundDeclarationIsChecked(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name, attr, want string
	}{
		{name: "on a string", attr: `{name: n, crmAttribute: msemr_name, crmType: string, fhirPath: name, round: 2}`, want: "round applies to decimal and money attributes only"},
		{name: "negative", attr: `{name: n, crmAttribute: msemr_locationpositionlatitude, crmType: decimal, fhirPath: position.latitude, round: -1}`, want: "round must be 0 to 10 decimal places, got -1"},
		{name: "more than Dataverse keeps", attr: `{name: n, crmAttribute: msemr_locationpositionlatitude, crmType: decimal, fhirPath: position.latitude, round: 11}`, want: "round must be 0 to 10 decimal places, got 11"},
		{name: "read only", attr: `{name: n, crmAttribute: msemr_locationpositionlatitude, crmType: decimal, fhirPath: position.latitude, direction: crm-to-fhir, round: 2}`, want: "round applies to values written to the CRM"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			doc := `
format: 1
entityMaps:
  - name: location
    crmEntity: msemr_location
    fhirType: Location
    fhirToCRM: {enabled: true, operations: [create, update]}
    crmToFHIR: {enabled: true, operations: [create, update]}
    correlation: {crmAttribute: msemr_azurefhirid, fhirIdentifierSystem: "urn:fhirsync:crm:msemr_locationid"}
    attributes:
      - ` + tt.attr + "\n"
			_, _, err := Import([]byte(doc), CompileOptions{})
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("err = %v, want %q", err, tt.want)
			}
		})
	}
}
