package maps_test

import (
	"strings"
	"testing"
	"time"

	"github.com/fhirsync/fhirsync/maps"
)

// signalYAML is a patient map and a RiskAssessment signal map.
const signalYAML = `format: 1
entityMaps:
  - name: patient-contact
    crmEntity: contact
    crmEntitySet: contacts
    fhirType: Patient
    fhirToCRM: {enabled: true, operations: [create, update]}
    crmToFHIR: {enabled: false}
    correlation: {crmAttribute: msemr_azurefhirid, fhirIdentifierSystem: "urn:x:contactid"}
    attributes:
      - {name: last, crmAttribute: lastname, crmType: string, fhirPath: "name[0].family"}
  - name: risk-signal
    crmEntity: task
    crmEntitySet: tasks
    crmIdAttribute: activityid
    fhirType: RiskAssessment
    fhirToCRM: {enabled: true, operations: [create, update]}
    crmToFHIR: {enabled: false}
    correlation: {crmAttribute: fhirsync_signalsource, fhirIdentifierSystem: "urn:x:taskid"}
    signal:
      when: "status = 'final'"
      endsAt: "occurrencePeriod.end"
      probability: {path: prediction.probabilityDecimal, atLeast: 0.7}
      risk: {path: prediction.qualitativeRisk.coding.code, codes: [high]}
      owner: {patient: true}
      patientMap: patient-contact
    attributes:
      - {name: subject, crmAttribute: subject, crmType: string, action: computed, expression: "'Risk'", direction: fhir-to-crm}
`

func TestSignalEvaluation(t *testing.T) {
	t.Parallel()
	_, set, err := maps.Import([]byte(signalYAML), maps.CompileOptions{})
	if err != nil {
		t.Fatal(err)
	}
	m, _ := set.Map("risk-signal")
	now := time.Date(2026, 12, 6, 12, 0, 0, 0, time.UTC)
	ra := func(extra string) map[string]any {
		res, err := maps.DecodeJSON([]byte(`{"resourceType":"RiskAssessment","status":"final","subject":{"reference":"Patient/p1"}` + extra + `}`))
		if err != nil {
			t.Fatal(err)
		}
		return res
	}
	tests := []struct {
		name   string
		res    map[string]any
		raised bool
		why    string
	}{
		{"probability above", ra(`,"prediction":[{"probabilityDecimal":0.2},{"probabilityDecimal":0.81}]`), true, ""},
		{"probability at the threshold", ra(`,"prediction":[{"probabilityDecimal":0.7}]`), true, ""},
		{"probability below", ra(`,"prediction":[{"probabilityDecimal":0.69}]`), false, "no probability reaches 0.7"},
		{"qualitative high", ra(`,"prediction":[{"qualitativeRisk":{"coding":[{"code":"high"}]}}]`), true, ""},
		{"qualitative low", ra(`,"prediction":[{"qualitativeRisk":{"coding":[{"code":"low"}]}}]`), false, "qualitative risk"},
		{"not final", func() map[string]any {
			r := ra(`,"prediction":[{"probabilityDecimal":0.9}]`)
			r["status"] = "preliminary"
			return r
		}(), false, "when"},
		{"ended yesterday", ra(`,"occurrencePeriod":{"end":"2026-12-05"},"prediction":[{"probabilityDecimal":0.9}]`), false, "ended"},
		{"ends today: in force through the day", ra(`,"occurrencePeriod":{"end":"2026-12-06"},"prediction":[{"probabilityDecimal":0.9}]`), true, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			st, ok, err := m.Signal(tt.res, now)
			if err != nil || !ok {
				t.Fatalf("Signal: ok %v, err %v", ok, err)
			}
			if st.Raised != tt.raised || !strings.Contains(st.Why, tt.why) || st.Patient != "Patient/p1" {
				t.Errorf("got raised %v why %q patient %q, want raised %v why containing %q", st.Raised, st.Why, st.Patient, tt.raised, tt.why)
			}
			if strings.Contains(st.Why, "0.69") || strings.Contains(st.Why, "0.81") {
				t.Errorf("why %q carries the record's value", st.Why)
			}
		})
	}
}

func TestSignalValidation(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name, from, to, want string
	}{
		{"no owner", "owner: {patient: true}", "owner: {}", "exactly one of owner.team"},
		{"two owners", "owner: {patient: true}", "owner: {patient: true, team: 5e1a0000-0000-4000-8000-0000000be7c0}", "exactly one"},
		{"team not a guid", "owner: {patient: true}", "owner: {team: care}", "is not a GUID"},
		{"unknown patient map", "patientMap: patient-contact", "patientMap: nobody", `no entity map named "nobody"`},
		{"threshold out of range", "atLeast: 0.7", "atLeast: 70", "between 0 and 1"},
		{"no codes", "codes: [high]", "codes: []", "list the qualitative risk codes"},
		{"bad FHIRPath", "when: \"status = 'final'\"", "when: \"status = = 'final'\"", "signal.when"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			doc := strings.Replace(signalYAML, tt.from, tt.to, 1)
			if doc == signalYAML {
				t.Fatalf("%q not in the YAML", tt.from)
			}
			_, _, err := maps.Import([]byte(doc), maps.CompileOptions{})
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("error %v, want one containing %q", err, tt.want)
			}
		})
	}
	pair := strings.Replace(signalYAML, "patientMap: patient-contact", "patientMap: patient-contact\n      close: {statecode: 1, statuscode: 6}", 1)
	if _, _, err := maps.Import([]byte(pair), maps.CompileOptions{}); err == nil || !strings.Contains(err.Error(), "not a valid pair for task") {
		t.Errorf("close 1/6: error %v, want an invalid pair", err)
	}
	second := strings.Replace(signalYAML, "  - name: risk-signal", `  - name: risk-record
    crmEntity: msemr_riskassessment
    crmEntitySet: msemr_riskassessments
    fhirType: RiskAssessment
    fhirToCRM: {enabled: true, operations: [create, update]}
    crmToFHIR: {enabled: false}
    correlation: {crmAttribute: msemr_azurefhirid, fhirIdentifierSystem: "urn:x:raid"}
    attributes:
      - {name: status, crmAttribute: msemr_name, crmType: string, fhirPath: status}
  - name: risk-signal`, 1)
	if _, _, err := maps.Import([]byte(second), maps.CompileOptions{}); err == nil || !strings.Contains(err.Error(), "must be the only enabled one") {
		t.Errorf("a second RiskAssessment map: error %v, want the signal map refused", err)
	}
}
