package maps_test

import (
	"strings"
	"testing"
	"time"

	"github.com/fhirsync/fhirsync/maps"
)

// streamMapYAML is an Observation map with a stream section, as
// docs/device-streams.md shows it.
const streamMapYAML = `format: 1
entityMaps:
  - name: device-vitals
    crmEntity: msemr_observation
    crmEntitySet: msemr_observations
    fhirType: Observation
    fhirToCRM: {enabled: true, operations: [create, update]}
    crmToFHIR: {enabled: false}
    correlation:
      crmAttribute: msemr_azurefhirid
      fhirIdentifierSystem: urn:fhirsync:crm:msemr_observationid
    stream:
      window: 5m
      aggregate: mean
      threshold: {low: 50, high: 120}
      dropRepeats: true
      rateLimit: {sends: 12, per: 1h}
    attributes:
      - name: value
        crmAttribute: msemr_valuequantity
        crmType: decimal
        fhirPath: valueQuantity.value
      - name: max
        crmAttribute: fs_maxvalue
        crmType: decimal
        fhirPath: extension('urn:fhirsync:stream:max').valueDecimal
`

func TestStreamSectionParsesAndRoundTrips(t *testing.T) {
	t.Parallel()
	doc, set, err := maps.Import([]byte(streamMapYAML), maps.CompileOptions{})
	if err != nil {
		t.Fatal(err)
	}
	m, _ := set.Map("device-vitals")
	s := m.Def().Stream
	if s == nil {
		t.Fatal("stream section not read")
	}
	if s.Window.D() != 5*time.Minute || s.Aggregate != maps.AggregateMean || !s.DropRepeats {
		t.Errorf("stream = %+v", s)
	}
	if s.Threshold == nil || *s.Threshold.Low != 50 || *s.Threshold.High != 120 {
		t.Errorf("threshold = %+v", s.Threshold)
	}
	if !s.Threshold.Outside(49.9) || s.Threshold.Outside(50) || s.Threshold.Outside(120) || !s.Threshold.Outside(120.5) {
		t.Error("Outside does not treat the bounds as inside the range")
	}
	if s.RateLimit == nil || s.RateLimit.Sends != 12 || s.RateLimit.Per.D() != time.Hour {
		t.Errorf("rateLimit = %+v", s.RateLimit)
	}
	out, err := maps.Export(doc)
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"window: 5m0s", "aggregate: mean", "per: 1h0m0s", "dropRepeats: true"} {
		if !strings.Contains(string(out), want) {
			t.Errorf("export lacks %q:\n%s", want, out)
		}
	}
	if _, _, err := maps.Import(out, maps.CompileOptions{}); err != nil {
		t.Errorf("exported document does not import again: %v", err)
	}
}

func TestStreamSectionValidation(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name    string
		edit    func(string) string
		wantErr string
	}{
		{"valid", func(s string) string { return s }, ""},
		{"window missing", func(s string) string { return strings.Replace(s, "      window: 5m\n", "", 1) }, "window must be between 1s and 24h"},
		{"window too long", func(s string) string { return strings.Replace(s, "window: 5m", "window: 48h", 1) }, "window must be between 1s and 24h"},
		{"window fraction", func(s string) string { return strings.Replace(s, "window: 5m", "window: 1500ms", 1) }, "whole seconds"},
		{"window not a duration", func(s string) string { return strings.Replace(s, "window: 5m", "window: five minutes", 1) }, "write it as 30s"},
		{"unknown aggregate", func(s string) string { return strings.Replace(s, "aggregate: mean", "aggregate: median", 1) }, `unknown aggregate "median"`},
		{"threshold upside down", func(s string) string { return strings.Replace(s, "{low: 50, high: 120}", "{low: 130, high: 120}", 1) }, "above high"},
		{"threshold empty", func(s string) string { return strings.Replace(s, "{low: 50, high: 120}", "{}", 1) }, "needs low, high or both"},
		{"rate limit zero", func(s string) string { return strings.Replace(s, "sends: 12", "sends: 0", 1) }, "rateLimit.sends must be at least 1"},
		{"write-back on", func(s string) string {
			return strings.Replace(s, "crmToFHIR: {enabled: false}", "crmToFHIR: {enabled: true, operations: [update]}", 1)
		}, "turn crmToFHIR off"},
		{"not an Observation", func(s string) string { return strings.Replace(s, "fhirType: Observation", "fhirType: Condition", 1) }, "a stream needs fhirType Observation"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			_, _, err := maps.Import([]byte(tt.edit(streamMapYAML)), maps.CompileOptions{})
			if tt.wantErr == "" {
				if err != nil {
					t.Fatalf("unexpected error: %v", err)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
				t.Fatalf("err = %v, want it to contain %q", err, tt.wantErr)
			}
		})
	}
}
