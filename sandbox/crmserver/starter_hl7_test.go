package crmserver

import (
	"encoding/json"
	"regexp"
	"strings"
	"testing"

	"github.com/fhirsync/fhirsync/maps"
	"github.com/fhirsync/fhirsync/maps/starter"
)

// TestStarterHL7SamplesWriteToSandbox writes the CRM records the starter
// maps' HL7-example samples expect (record, then child rows bound to it)
// through the Web API, as the agent would: the sandbox must accept every
// column, option value, length and navigation property the maps produce.
// Lookup targets are seeded first with the ids the samples bind.
func TestStarterHL7SamplesWriteToSandbox(t *testing.T) {
	t.Parallel()
	s, hs := newServer(t, Options{})
	bySet := map[string]*Entity{}
	for _, e := range DefaultEntities() {
		bySet[e.EntitySetName] = e
	}
	doc, err := maps.Parse(starter.YAML())
	if err != nil {
		t.Fatal(err)
	}
	bind := regexp.MustCompile(`^/([A-Za-z0-9_]+)\(([0-9a-f-]{36})\)$`)
	seeded := map[string]bool{}
	seed := func(t *testing.T, ref string) {
		m := bind.FindStringSubmatch(ref)
		if m == nil {
			t.Fatalf("binding %q is not /set(id)", ref)
		}
		e := bySet[m[1]]
		if e == nil {
			t.Fatalf("binding %q names no sandbox entity set", ref)
		}
		if seeded[e.LogicalName+m[2]] {
			return
		}
		seeded[e.LogicalName+m[2]] = true
		row := map[string]any{e.PrimaryID: m[2]}
		if a := e.Attribute(e.PrimaryName); a != nil && a.Type == TypeString && !a.ReadOnly {
			row[e.PrimaryName] = "seeded"
		}
		for _, a := range e.Attributes {
			if a.Required && a.Type == TypeString && !a.ReadOnly && row[a.LogicalName] == nil {
				row[a.LogicalName] = "seeded " + m[2] // msemr_codeableconcept's msemr_code
			}
		}
		if err := s.Seed(e.LogicalName, []map[string]any{row}); err != nil {
			t.Fatalf("seeding %s: %v", ref, err)
		}
	}
	binds := func(t *testing.T, rec map[string]any) {
		for k, v := range rec {
			if ref, ok := v.(string); ok && strings.HasSuffix(k, "@odata.bind") {
				seed(t, ref)
			}
		}
	}
	ran := 0
	for _, em := range doc.EntityMaps {
		for _, sm := range em.Samples {
			if !strings.HasPrefix(sm.Name, "HL7 example ") || sm.Expect.Decision != maps.DecisionMapped {
				continue
			}
			ran++
			var out struct {
				Record   map[string]any `json:"record"`
				Children []struct {
					EntitySet        string         `json:"entitySet"`
					ParentNavigation string         `json:"parentNavigation"`
					Parent           int            `json:"parent"`
					Record           map[string]any `json:"record"`
				} `json:"children"`
			}
			if err := json.Unmarshal([]byte(sm.Expect.Output), &out); err != nil {
				t.Fatalf("%s / %s: %v", em.Name, sm.Name, err)
			}
			binds(t, out.Record)
			body, _ := json.Marshal(out.Record)
			resp, b := do(t, "POST", hs.URL+APIPath+em.CRMEntitySet, map[string]string{"Content-Type": "application/json"}, string(body))
			if resp.StatusCode != 204 && resp.StatusCode != 201 {
				t.Errorf("%s / %s: creating the %s record = %d %s", em.Name, sm.Name, em.CRMEntity, resp.StatusCode, b)
				continue
			}
			parent := strings.TrimPrefix(resp.Header.Get("OData-EntityId"), hs.URL+APIPath)
			// A nested row (a participant's role) binds to the row its
			// parent create made (maps.ChildChange.Parent).
			made := make([]string, len(out.Children))
			for i, ch := range out.Children {
				binds(t, ch.Record)
				ch.Record[ch.ParentNavigation+"@odata.bind"] = "/" + parent
				if ch.Parent > 0 {
					ch.Record[ch.ParentNavigation+"@odata.bind"] = "/" + made[ch.Parent-1]
				}
				body, _ := json.Marshal(ch.Record)
				resp, b := do(t, "POST", hs.URL+APIPath+ch.EntitySet, map[string]string{"Content-Type": "application/json"}, string(body))
				if resp.StatusCode != 204 && resp.StatusCode != 201 {
					t.Errorf("%s / %s: child %d in %s = %d %s", em.Name, sm.Name, i, ch.EntitySet, resp.StatusCode, b)
				}
				made[i] = strings.TrimPrefix(resp.Header.Get("OData-EntityId"), hs.URL+APIPath)
			}
		}
	}
	if ran < 23 {
		t.Fatalf("%d HL7-example samples written, want at least 23", ran)
	}
}
