package maps

import (
	"context"
	"errors"
	"reflect"
	"strings"
	"testing"
)

// teamYAML is a care-team map whose participants hold their roles as
// nested rows; the validation cases edit it.
const teamYAML = `format: 1
entityMaps:
  - name: team
    crmEntity: msemr_careteam
    crmEntitySet: msemr_careteams
    fhirType: CareTeam
    fhirToCRM: {enabled: true, operations: [create, update]}
    crmToFHIR: {enabled: true, operations: [create, update]}
    correlation: {crmAttribute: msemr_azurefhirid, fhirIdentifierSystem: "urn:crm"}
    attributes:
      - {name: name, crmAttribute: msemr_name, crmType: string, fhirPath: name}
    expansions:
      - name: participants
        fhirPath: participant
        crmEntity: msemr_careteamparticipant
        crmEntitySet: msemr_careteamparticipants
        parentLookup: msemr_careteam
        matchKey: [start]
        onRemove: deactivate
        attributes:
          - {name: start, crmAttribute: msemr_periodstart, crmType: date-time, fhirPath: period.start}
        expansions:
          - name: roles
            fhirPath: role
            crmEntity: msemr_careteamparticipantrole
            crmEntitySet: msemr_careteamparticipantroles
            parentLookup: msemr_careteamparticipant
            matchKey: [code, display]
            onRemove: delete
            attributes:
              - {name: code, crmAttribute: msemr_code, crmType: string, fhirPath: "coding[0].code"}
              - {name: display, crmAttribute: msemr_display, crmType: string, fhirPath: "coding[0].display", fallbackPaths: [text]}
`

func TestNestedExpansionValidation(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name      string
		old, new  string
		old2      string // a second edit, when given: old2 gains new2
		new2      string
		wantField string
		wantMsg   string
	}{
		{name: "missing parent lookup", old: "            parentLookup: msemr_careteamparticipant\n", new: "",
			wantField: "parentLookup", wantMsg: `a nested expansion map needs parentLookup: the lookup of msemr_careteamparticipantrole that points at the msemr_careteamparticipant row of expansion map "participants"`},
		{name: "direction conflict", old: "        onRemove: deactivate\n", new: "        onRemove: deactivate\n        direction: fhir-to-crm\n",
			old2: "            onRemove: delete\n", new2: "            onRemove: delete\n            direction: crm-to-fhir\n",
			wantField: "direction", wantMsg: "direction conflict: crm-to-fhir inside an expansion map that only travels fhir-to-crm"},
		{name: "too deep", old: "fallbackPaths: [text]}\n", new: "fallbackPaths: [text]}\n            expansions:\n              - {name: codings, fhirPath: coding, crmEntity: x, crmEntitySet: xs, parentLookup: y, matchKey: [c], onRemove: delete, attributes: [{name: c, crmAttribute: c, crmType: string, fhirPath: code}]}\n",
			wantField: "expansions", wantMsg: `expansion maps nest at most 2 levels deep; "roles" is at level 2 and cannot hold expansion maps`},
		{name: "name taken by a top-level expansion", old: "          - name: roles\n", new: "          - name: participants\n",
			wantMsg: "duplicate expansion map name (names are unique across the entity map, nested ones included)"},
		{name: "an item attribute writes inside the nested array", old: "          - {name: start, crmAttribute: msemr_periodstart, crmType: date-time, fhirPath: period.start}\n",
			new:       "          - {name: start, crmAttribute: msemr_periodstart, crmType: date-time, fhirPath: period.start}\n          - {name: role-text, crmAttribute: msemr_description, crmType: string, fhirPath: \"role[0].text\"}\n",
			wantField: "fhirPath", wantMsg: `FHIR element role is rebuilt from the rows of this expansion map, and attribute map "role-text" of "participants" writes role[0].text inside it; make that attribute map fhir-to-crm`},
		{name: "path relative to the item", old: "            fhirPath: role\n", new: "            fhirPath: participant.role\n",
			wantField: "fhirPath", wantMsg: "path participant.role reaches no element"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			if !strings.Contains(teamYAML, tc.old) {
				t.Fatalf("case edits text the map does not have: %q", tc.old)
			}
			text := strings.Replace(teamYAML, tc.old, tc.new, 1)
			if tc.old2 != "" {
				text = strings.Replace(text, tc.old2, tc.new2, 1)
			}
			_, _, err := Import([]byte(text), CompileOptions{})
			var ve *ValidationError
			if !errors.As(err, &ve) {
				t.Fatalf("want a validation error, got %v", err)
			}
			for _, p := range ve.Problems {
				if strings.Contains(p.Message, tc.wantMsg) && p.Map == "team" && strings.HasPrefix(p.Expansion, "participants") && (tc.wantField == "" || p.Field == tc.wantField) {
					return
				}
			}
			t.Errorf("no problem %q on entity map team (field %q); got:\n%v", tc.wantMsg, tc.wantField, err)
		})
	}
}

func TestNestedExpansionValidMapCompiles(t *testing.T) {
	t.Parallel()
	_, set, err := Import([]byte(teamYAML), CompileOptions{})
	if err != nil {
		t.Fatal(err)
	}
	m, _ := set.Map("team")
	qs := m.ChildQueries()
	if len(qs) != 2 || qs[1].Expansion != "roles" || qs[1].Parent != "participants" || qs[1].ParentIDAttribute != "msemr_careteamparticipantid" {
		t.Fatalf("child queries %+v: want roles read under each participant row", qs)
	}
	if !contains(qs[1].Select, "_msemr_careteamparticipant_value") {
		t.Errorf("roles select %v lacks the parent lookup, which groups rows by participant", qs[1].Select)
	}
}

func contains(xs []string, s string) bool {
	for _, x := range xs {
		if x == s {
			return true
		}
	}
	return false
}

func teamMapping(t *testing.T) *Mapping {
	t.Helper()
	_, set, err := Import([]byte(teamYAML), CompileOptions{})
	if err != nil {
		t.Fatal(err)
	}
	m, _ := set.Map("team")
	return m
}

func decode(t *testing.T, s string) map[string]any {
	t.Helper()
	v, err := DecodeJSON([]byte(s))
	if err != nil {
		t.Fatal(err)
	}
	return v
}

const (
	teamID  = "11111111-1111-1111-1111-111111111111"
	partA   = "aaaaaaaa-0000-0000-0000-000000000001"
	partB   = "aaaaaaaa-0000-0000-0000-000000000002"
	roleA1  = "bbbbbbbb-0000-0000-0000-000000000001"
	roleA2  = "bbbbbbbb-0000-0000-0000-000000000002"
	roleB1  = "bbbbbbbb-0000-0000-0000-000000000003"
	teamRes = `{"resourceType":"CareTeam","id":"t1","name":"Ward 3","participant":[
		{"period":{"start":"2024-01-01T00:00:00Z"},"role":[{"coding":[{"code":"nurse","display":"Nurse"}]},{"text":"night shift"}]},
		{"period":{"start":"2024-02-01T00:00:00Z"},"role":[{"text":"adviser"}]}]}`
)

// teamState is the CRM holding teamRes as synced: two participants, the
// first with two roles, the second with one.
func teamState() *CRMState {
	return &CRMState{
		Record: map[string]any{"msemr_careteamid": teamID, "msemr_azurefhirid": "t1", "msemr_name": "Ward 3"},
		Children: map[string][]map[string]any{
			"participants": {
				{"msemr_careteamparticipantid": partA, "msemr_periodstart": "2024-01-01T00:00:00Z", "statecode": 0},
				{"msemr_careteamparticipantid": partB, "msemr_periodstart": "2024-02-01T00:00:00Z", "statecode": 0},
			},
			"roles": {
				{"msemr_careteamparticipantroleid": roleA1, "_msemr_careteamparticipant_value": partA, "msemr_code": "nurse", "msemr_display": "Nurse"},
				{"msemr_careteamparticipantroleid": roleA2, "_msemr_careteamparticipant_value": partA, "msemr_display": "night shift"},
				{"msemr_careteamparticipantroleid": roleB1, "_msemr_careteamparticipant_value": partB, "msemr_display": "adviser"},
			},
		},
	}
}

func brief(cs []ChildChange) []string {
	var out []string
	for _, c := range cs {
		s := c.Expansion + " " + string(c.Op)
		if c.ID != "" {
			s += " " + c.ID
		}
		if c.Parent > 0 {
			s += " under #" + string(rune('0'+c.Parent))
		}
		for k, v := range c.Record {
			if strings.HasSuffix(k, "@odata.bind") && k != "msemr_careteam@odata.bind" {
				s += " " + k + "=" + v.(string)
			}
		}
		out = append(out, s)
	}
	return out
}

func TestNestedExpansionCreate(t *testing.T) {
	t.Parallel()
	m := teamMapping(t)
	out, err := m.ToCRM(context.Background(), decode(t, teamRes), nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	want := []string{"participants create", "roles create under #1", "roles create under #1", "participants create", "roles create under #4"}
	if got := brief(out.Children); !reflect.DeepEqual(got, want) {
		t.Fatalf("children %v, want %v", got, want)
	}
	if d := out.Children[2].Record["msemr_display"]; d != "night shift" {
		t.Errorf("a role with text only: display %v, want its text", d)
	}
	if !contains(out.Changed, "roles") || !contains(out.Changed, "participants") || !reflect.DeepEqual(out.ChangedAttributes, []string{"name", "participants"}) {
		t.Errorf("changed %v / attributes %v", out.Changed, out.ChangedAttributes)
	}
}

func TestNestedExpansionUnchanged(t *testing.T) {
	t.Parallel()
	m := teamMapping(t)
	out, err := m.ToCRM(context.Background(), decode(t, teamRes), teamState(), nil)
	if err != nil {
		t.Fatal(err)
	}
	if len(out.Children) != 0 || len(out.Changed) != 0 {
		t.Fatalf("an unchanged team wrote %v (changed %v)", brief(out.Children), out.Changed)
	}
}

func TestNestedExpansionChangedRole(t *testing.T) {
	t.Parallel()
	m := teamMapping(t)
	res := decode(t, strings.Replace(teamRes, `{"text":"adviser"}`, `{"text":"lead"}`, 1))
	out, err := m.ToCRM(context.Background(), res, teamState(), nil)
	if err != nil {
		t.Fatal(err)
	}
	// The participant stays; its old role row goes and the new one binds
	// to the participant's existing row.
	want := []string{"roles create msemr_careteamparticipant@odata.bind=/msemr_careteamparticipants(" + partB + ")", "roles delete " + roleB1}
	if got := brief(out.Children); !reflect.DeepEqual(got, want) {
		t.Fatalf("children %v, want %v", got, want)
	}
}

func TestNestedExpansionRemovedRole(t *testing.T) {
	t.Parallel()
	m := teamMapping(t)
	res := decode(t, strings.Replace(teamRes, `,{"text":"night shift"}`, ``, 1))
	out, err := m.ToCRM(context.Background(), res, teamState(), nil)
	if err != nil {
		t.Fatal(err)
	}
	if got, want := brief(out.Children), []string{"roles delete " + roleA2}; !reflect.DeepEqual(got, want) {
		t.Fatalf("children %v, want %v", got, want)
	}
}

func TestNestedExpansionRemovedParticipant(t *testing.T) {
	t.Parallel()
	m := teamMapping(t)
	res := decode(t, teamRes)
	res["participant"] = res["participant"].([]any)[1:]
	out, err := m.ToCRM(context.Background(), res, teamState(), nil)
	if err != nil {
		t.Fatal(err)
	}
	// Its roles go first (onRemove delete), then the participant row is
	// deactivated (onRemove deactivate); the other participant is untouched.
	want := []string{"roles delete " + roleA1, "roles delete " + roleA2, "participants deactivate " + partA}
	if got := brief(out.Children); !reflect.DeepEqual(got, want) {
		t.Fatalf("children %v, want %v", got, want)
	}
}

func TestNestedExpansionToFHIR(t *testing.T) {
	t.Parallel()
	m := teamMapping(t)
	ctx := context.Background()
	// Onto the resource as synced: nothing changes.
	back, err := m.ToFHIR(ctx, *teamState(), decode(t, teamRes), nil)
	if err != nil {
		t.Fatal(err)
	}
	if len(back.Changed) != 1 || back.Changed[0] != "identifier.where(system='urn:crm').value" {
		t.Fatalf("write-back onto the synced resource changed %v", back.Changed)
	}
	// Onto nothing: every participant comes back with its own roles.
	fresh, err := m.ToFHIR(ctx, *teamState(), nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	got, _ := EncodeJSON(fresh.Resource["participant"])
	want := `[{"period":{"start":"2024-01-01T00:00:00Z"},"role":[{"coding":[{"code":"nurse","display":"Nurse"}]},{"coding":[{"display":"night shift"}]}]},{"period":{"start":"2024-02-01T00:00:00Z"},"role":[{"coding":[{"display":"adviser"}]}]}]`
	if string(got) != want {
		t.Errorf("participants\n got %s\nwant %s", got, want)
	}
	// A role row removed in the CRM leaves its participant's role array.
	st := teamState()
	st.Children["roles"] = st.Children["roles"][:2]
	back, err = m.ToFHIR(ctx, *st, decode(t, teamRes), nil)
	if err != nil {
		t.Fatal(err)
	}
	p2 := back.Resource["participant"].([]any)[1].(map[string]any)
	if _, has := p2["role"]; has || !contains(back.Changed, "participant") {
		t.Errorf("role row removed in the CRM: participant %v, changed %v", p2, back.Changed)
	}
	// And mapping the written-back resource again against the CRM's
	// state reports no change: the round trip is closed.
	again, err := m.ToCRM(ctx, back.Resource, st, nil)
	if err != nil {
		t.Fatal(err)
	}
	if len(again.Children) != 0 {
		t.Errorf("second FHIR → CRM wrote %v", brief(again.Children))
	}
}

func TestNestedExpansionYAMLRoundTrip(t *testing.T) {
	t.Parallel()
	doc, _, err := Import([]byte(teamYAML), CompileOptions{})
	if err != nil {
		t.Fatal(err)
	}
	out, err := Export(doc)
	if err != nil {
		t.Fatal(err)
	}
	doc2, _, err := Import(out, CompileOptions{})
	if err != nil {
		t.Fatalf("re-import: %v\n%s", err, out)
	}
	if !reflect.DeepEqual(doc, doc2) || len(doc2.EntityMaps[0].Expansions[0].Expansions) != 1 {
		t.Errorf("nested expansion lost in export:\n%s", out)
	}
}
