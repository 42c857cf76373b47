package admin

import (
	"encoding/json"
	"strings"
	"testing"

	"github.com/fhirsync/fhirsync/storage/storagetest"
)

// conceptYAML is a map set whose Condition code is a concept lookup.
const conceptYAML = `format: 1
entityMaps:
  - name: condition
    crmEntity: msemr_condition
    crmEntitySet: msemr_conditions
    fhirType: Condition
    fhirToCRM: {enabled: true, operations: [create, update]}
    crmToFHIR: {enabled: false, operations: []}
    correlation: {crmAttribute: msemr_azurefhirid, fhirIdentifierSystem: "urn:x:condition"}
    attributes:
      - {name: code, crmAttribute: msemr_conditioncode, crmType: lookup, fhirPath: code, action: lookup, concept: {type: 935000023, systems: ["http://snomed.info/sct"], create: true}}
`

// TestEditorDocumentKeepsConcept: the structured editor's document API
// turns a concept lookup's YAML into the document and back without losing
// the concept section, and reports a concept section's problem by field.
func TestEditorDocumentKeepsConcept(t *testing.T) {
	t.Parallel()
	e := newTestEnv(t, storagetest.Open(t, "sqlite"), AppConfig{})
	c := e.as(e.user("viewer@example.org", RoleViewer, false))

	b, _ := json.Marshal(map[string]string{"yaml": conceptYAML})
	code, out := e.apiCall(c, "POST", "/api/v1/maps/document", string(b))
	if code != 200 || out["valid"] != true {
		t.Fatalf("yaml → document = %d valid=%v problems=%v", code, out["valid"], out["problems"])
	}
	document := out["document"].(map[string]any)
	attr := document["entityMaps"].([]any)[0].(map[string]any)["attributes"].([]any)[0].(map[string]any)
	concept, _ := attr["concept"].(map[string]any)
	if concept == nil || concept["create"] != true || concept["type"] == nil {
		t.Fatalf("document attribute = %v, want its concept section", attr)
	}
	canonical := out["yaml"].(string)
	if !strings.Contains(canonical, "concept:") || !strings.Contains(canonical, "935000023") || !strings.Contains(canonical, "http://snomed.info/sct") {
		t.Fatalf("canonical yaml lost the concept section:\n%s", canonical)
	}

	b, _ = json.Marshal(map[string]any{"document": document})
	code, back := e.apiCall(c, "POST", "/api/v1/maps/document", string(b))
	if code != 200 || back["yaml"] != canonical {
		t.Fatalf("document → yaml = %d, differs from the canonical YAML:\n%v", code, back["yaml"])
	}

	// The forms turn the lookup into a string: the problem names the field.
	attr["crmType"] = "string"
	b, _ = json.Marshal(map[string]any{"document": document})
	code, bad := e.apiCall(c, "POST", "/api/v1/maps/document", string(b))
	ps, _ := json.Marshal(bad["problems"])
	if code != 200 || bad["valid"] != false || !strings.Contains(string(ps), "action lookup needs crmType lookup, got string") {
		t.Errorf("concept lookup of type string = %d valid=%v problems=%s", code, bad["valid"], ps)
	}
}
