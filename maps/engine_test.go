package maps

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strings"
	"testing"
)

func obj(t *testing.T, s string) map[string]any {
	t.Helper()
	m, err := decodeObject([]byte(s))
	if err != nil {
		t.Fatalf("test JSON: %v", err)
	}
	return m
}

func patientMap(t *testing.T) *Mapping {
	t.Helper()
	m, ok := loadStarter(t).Map("patient-contact")
	if !ok {
		t.Fatal("no patient-contact map")
	}
	return m
}

const mrnSystem = "urn:oid:2.16.840.1.113883.19.5.99999.1"

func TestExpansionNeverDuplicatesRows(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	m := patientMap(t)
	res := obj(t, `{"resourceType":"Patient","id":"p1","identifier":[
		{"system":"`+mrnSystem+`","value":"A1","use":"usual"},
		{"system":"`+mrnSystem+`","value":"A1","use":"official"},
		{"system":"urn:other","value":"B2"},
		{"system":"urn:fhirsync:crm:contactid","value":"c-1"}]}`)
	cur := &CRMState{
		Record: map[string]any{"contactid": "c-1", "msemr_azurefhirid": "p1"},
		Children: map[string][]map[string]any{"medical-identifiers": {
			{"msemr_medicalidentifierid": "row-a", "statecode": json.Number("0"), "msemr_identifiersystem": mrnSystem, "msemr_identifiervalue": "A1", "msemr_identifieruse": json.Number("935000000")},
			{"msemr_medicalidentifierid": "row-old", "statecode": json.Number("0"), "msemr_identifiersystem": "urn:gone", "msemr_identifiervalue": "Z9"},
			{"msemr_medicalidentifierid": "row-inactive", "statecode": json.Number("1"), "msemr_identifiersystem": "urn:gone", "msemr_identifiervalue": "Z8"},
		}},
	}
	out, err := m.ToCRM(ctx, res, cur, nil)
	if err != nil {
		t.Fatal(err)
	}
	var ops []string
	for _, c := range out.Children {
		ops = append(ops, string(c.Op)+":"+c.ID)
	}
	// The first A1 matches row-a (unchanged: same use); the second A1
	// item shares its key but is an item of its own, and the key has one
	// row, so it gets a new row; B2 is new; Z9 is gone and is
	// deactivated; Z8 is already inactive; the correlation identifier is
	// excluded.
	want := []string{"create:", "create:", "deactivate:row-old"}
	if !slices.Equal(ops, want) {
		t.Fatalf("child changes = %v, want %v", ops, want)
	}
	if got := fmt.Sprint(out.Children[0].Record["msemr_identifieruse"]); got != "935000001" {
		t.Fatalf("the second A1 row's use = %v, want official (935000001)", got)
	}
	// Once the CRM holds a row per item, the same resource pairs each item
	// with its row and writes nothing: rows are never duplicated.
	done := &CRMState{Record: cur.Record, Children: map[string][]map[string]any{"medical-identifiers": {
		cur.Children["medical-identifiers"][0],
		{"msemr_medicalidentifierid": "row-a2", "statecode": json.Number("0"), "msemr_identifiersystem": mrnSystem, "msemr_identifiervalue": "A1", "msemr_identifieruse": json.Number("935000001")},
		{"msemr_medicalidentifierid": "row-b", "statecode": json.Number("0"), "msemr_identifiersystem": "urn:other", "msemr_identifiervalue": "B2"},
	}}}
	again, err := m.ToCRM(ctx, res, done, nil)
	if err != nil {
		t.Fatal(err)
	}
	if len(again.Children) != 0 {
		t.Fatalf("second pass wrote %d child changes, want none: %+v", len(again.Children), again.Children)
	}
	if got := out.Children[0].Record["msemr_contact@odata.bind"]; got != "/contacts(c-1)" {
		t.Fatalf("new row's parent link = %v", got)
	}
	if !slices.Contains(out.Changed, "medical-identifiers") {
		t.Fatalf("changed = %v, want the expansion listed", out.Changed)
	}

	// With delete policy, a removed item deletes its row.
	m.expansions[0].def = ptrCopy(m.expansions[0].def, func(x *ExpansionMap) { x.OnRemove = RemoveDelete })
	out, err = m.ToCRM(ctx, res, cur, nil)
	if err != nil {
		t.Fatal(err)
	}
	ops = ops[:0]
	for _, c := range out.Children {
		ops = append(ops, string(c.Op)+":"+c.ID)
	}
	want = []string{"create:", "create:", "delete:row-old", "delete:row-inactive"}
	if !slices.Equal(ops, want) {
		t.Fatalf("child changes with delete policy = %v, want %v", ops, want)
	}
}

func ptrCopy[T any](p *T, edit func(*T)) *T {
	c := *p
	edit(&c)
	return &c
}

func TestExpansionReactivatesAndUpdatesRows(t *testing.T) {
	t.Parallel()
	m := patientMap(t)
	res := obj(t, `{"resourceType":"Patient","identifier":[{"system":"`+mrnSystem+`","value":"A1","use":"official"}]}`)
	cur := &CRMState{Record: map[string]any{"contactid": "c-1"}, Children: map[string][]map[string]any{"medical-identifiers": {
		{"msemr_medicalidentifierid": "row-a", "statecode": json.Number("1"), "msemr_identifiersystem": mrnSystem, "msemr_identifiervalue": "A1", "msemr_identifieruse": json.Number("935000000")},
	}}}
	out, err := m.ToCRM(context.Background(), res, cur, nil)
	if err != nil {
		t.Fatal(err)
	}
	if len(out.Children) != 1 || out.Children[0].Op != ChildUpdate || out.Children[0].ID != "row-a" {
		t.Fatalf("children = %+v, want one update of row-a", out.Children)
	}
	rec := out.Children[0].Record
	if rec["statecode"] != 0 || rec["msemr_identifieruse"] != json.Number("935000001") {
		t.Fatalf("update record = %v", rec)
	}
}

func TestWriteBackRebuildsExpandedArray(t *testing.T) {
	t.Parallel()
	m := patientMap(t)
	base := obj(t, `{"resourceType":"Patient","id":"p1","identifier":[
		{"system":"`+mrnSystem+`","value":"A1","assigner":{"display":"kept"}},
		{"system":"urn:removed","value":"R1"},
		{"system":"urn:fhirsync:crm:contactid","value":"c-1"}]}`)
	src := CRMState{Record: map[string]any{"contactid": "c-1", "msemr_azurefhirid": "p1", "msemr_contacttype": json.Number("935000000")}, Children: map[string][]map[string]any{"medical-identifiers": {
		{"msemr_medicalidentifierid": "r1", "msemr_identifiersystem": mrnSystem, "msemr_identifiervalue": "A1", "msemr_identifieruse": json.Number("935000001")},
		{"msemr_medicalidentifierid": "r2", "msemr_identifiersystem": "urn:new", "msemr_identifiervalue": "N1"},
		{"msemr_medicalidentifierid": "r3", "statecode": json.Number("1"), "msemr_identifiersystem": "urn:inactive", "msemr_identifiervalue": "I1"},
	}}}
	out, err := m.ToFHIR(context.Background(), src, base, nil)
	if err != nil {
		t.Fatal(err)
	}
	raw, _ := json.Marshal(out.Resource["identifier"])
	want := `[{"assigner":{"display":"kept"},"system":"` + mrnSystem + `","use":"official","value":"A1"},{"system":"urn:fhirsync:crm:contactid","value":"c-1"},{"system":"urn:new","value":"N1"}]`
	if string(raw) != want {
		t.Fatalf("identifier =\n%s\nwant\n%s", raw, want)
	}
	if !slices.Contains(out.Changed, "identifier") {
		t.Fatalf("changed = %v", out.Changed)
	}
}

func TestTransforms(t *testing.T) {
	t.Parallel()
	vm := &valueMap{def: &ValueMap{Name: "g", Unmapped: UnmappedError}, toCRM: map[string]int{"male": 1}, toFHIR: map[int]string{1: "male"}}
	skipVM := &valueMap{def: &ValueMap{Name: "s", Unmapped: UnmappedSkip}, toCRM: map[string]int{"a": 1}, toFHIR: map[int]string{1: "a"}}
	defVM := &valueMap{def: &ValueMap{Name: "d", Unmapped: UnmappedDefault, DefaultCRM: new(9), DefaultFHIR: "z"}, toCRM: map[string]int{}, toFHIR: map[int]string{}}
	mk := func(typ CRMType, edit func(*AttributeMap)) *attr {
		a := &AttributeMap{Name: "x", CRMAttribute: "x", CRMType: typ}
		if edit != nil {
			edit(a)
		}
		return &attr{def: a}
	}
	tests := []struct {
		name    string
		a       *attr
		toCRM   bool
		in      any
		want    any
		wantErr string
	}{
		{name: "string", a: mk(TypeString, nil), toCRM: true, in: "Zoë", want: "Zoë"},
		{name: "string too long", a: mk(TypeString, func(a *AttributeMap) { a.MaxLength = 3 }), toCRM: true, in: "Zoëy", wantErr: "exceeds maxLength 3"},
		{name: "string truncated by characters", a: mk(TypeString, func(a *AttributeMap) { a.MaxLength = 3; a.LengthPolicy = LengthTruncate }), toCRM: true, in: "Zoëy", want: "Zoë"},
		{name: "memo", a: mk(TypeMemo, nil), toCRM: true, in: "line1\nline2", want: "line1\nline2"},
		{name: "int", a: mk(TypeInt, nil), toCRM: true, in: json.Number("42"), want: json.Number("42")},
		{name: "int from float64", a: mk(TypeInt, nil), toCRM: true, in: float64(42), want: json.Number("42")},
		{name: "int fractional", a: mk(TypeInt, nil), toCRM: true, in: json.Number("4.5"), wantErr: "fractional"},
		{name: "int out of range", a: mk(TypeInt, nil), toCRM: true, in: json.Number("3000000000"), wantErr: "32-bit"},
		{name: "decimal keeps text", a: mk(TypeDecimal, nil), toCRM: true, in: json.Number("72.50"), want: json.Number("72.50")},
		{name: "decimal high precision", a: mk(TypeDecimal, nil), toCRM: true, in: json.Number("0.10000000000000000000001"), want: json.Number("0.10000000000000000000001")},
		{name: "money", a: mk(TypeMoney, nil), toCRM: false, in: json.Number("19.9900"), want: json.Number("19.9900")},
		{name: "decimal not a number", a: mk(TypeDecimal, nil), toCRM: true, in: "abc", wantErr: "expected a decimal"},
		{name: "bool", a: mk(TypeBool, nil), toCRM: true, in: true, want: true},
		{name: "bool wrong type", a: mk(TypeBool, nil), toCRM: true, in: "true", wantErr: "expected a boolean"},
		{name: "date-only", a: mk(TypeDateOnly, nil), toCRM: true, in: "1984-03-07", want: "1984-03-07"},
		{name: "partial date", a: mk(TypeDateOnly, nil), toCRM: true, in: "1984-03", wantErr: "full date"},
		{name: "date-only from CRM date-time", a: mk(TypeDateOnly, nil), toCRM: false, in: "1984-03-07T00:00:00Z", want: "1984-03-07"},
		{name: "date-time to UTC", a: mk(TypeDateTimeUTC, nil), toCRM: true, in: "2024-05-01T10:15:00+02:00", want: "2024-05-01T08:15:00Z"},
		{name: "date-time from full date", a: mk(TypeDateTimeUTC, nil), toCRM: true, in: "2024-05-01", want: "2024-05-01T00:00:00Z"},
		{name: "date-time from year", a: mk(TypeDateTimeUTC, nil), toCRM: true, in: "2024", wantErr: "partial date"},
		{name: "date-time back", a: mk(TypeDateTimeUTC, nil), toCRM: false, in: "2024-05-01T08:15:00Z", want: "2024-05-01T08:15:00Z"},
		{name: "option set", a: &attr{def: &AttributeMap{Name: "g", CRMType: TypeOptionSet}, vm: vm}, toCRM: true, in: "male", want: json.Number("1")},
		{name: "option set gap", a: &attr{def: &AttributeMap{Name: "g", CRMType: TypeOptionSet}, vm: vm}, toCRM: true, in: "female", wantErr: `not in value map "g"`},
		{name: "option set back", a: &attr{def: &AttributeMap{Name: "g", CRMType: TypeOptionSet}, vm: vm}, toCRM: false, in: json.Number("1"), want: "male"},
		{name: "option set unknown value", a: &attr{def: &AttributeMap{Name: "g", CRMType: TypeOptionSet}, vm: vm}, toCRM: false, in: json.Number("7"), wantErr: "option value 7"},
		{name: "option set skip", a: &attr{def: &AttributeMap{Name: "s", CRMType: TypeOptionSet}, vm: skipVM}, toCRM: true, in: "b", wantErr: "skip"},
		{name: "option set default", a: &attr{def: &AttributeMap{Name: "d", CRMType: TypeOptionSet}, vm: defVM}, toCRM: true, in: "b", want: json.Number("9")},
		{name: "option set default back", a: &attr{def: &AttributeMap{Name: "d", CRMType: TypeOptionSet}, vm: defVM}, toCRM: false, in: json.Number("5"), want: "z"},
		{name: "multi-select", a: &attr{def: &AttributeMap{Name: "m", CRMType: TypeMultiSelect}, vm: skipVM}, toCRM: true, in: []any{"a", "b", "a"}, want: "1,1"},
		{name: "multi-select back", a: &attr{def: &AttributeMap{Name: "m", CRMType: TypeMultiSelect}, vm: skipVM}, toCRM: false, in: "1, 2", want: []any{"a"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			var got any
			var err error
			if tt.toCRM {
				got, err = tt.a.toCRMValue(tt.in)
			} else {
				got, err = tt.a.toFHIRValue(tt.in)
			}
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("err = %v, want %q", err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if !equalJSON(got, tt.want) {
				t.Fatalf("got %#v, want %#v", got, tt.want)
			}
		})
	}
}

func equalJSON(a, b any) bool {
	x, _ := json.Marshal(a)
	y, _ := json.Marshal(b)
	return string(x) == string(y)
}

func TestMappingErrorsNameTheAttributeAndHideValues(t *testing.T) {
	t.Parallel()
	m := patientMap(t)
	_, err := m.ToCRM(context.Background(), obj(t, `{"resourceType":"Patient","birthDate":"1984-13"}`), nil, nil)
	var me *MappingError
	if !errors.As(err, &me) || me.Map != "patient-contact" || me.Attribute != "birth-date" {
		t.Fatalf("err = %v, want a MappingError on birth-date", err)
	}
	if strings.Contains(err.Error(), "1984") {
		t.Fatalf("error text leaks the value: %v", err)
	}
	_, err = m.ToCRM(context.Background(), obj(t, `{"resourceType":"Patient","generalPractitioner":[{"reference":"Practitioner/x"}]}`), nil, tableResolver{})
	if !errors.As(err, &me) || me.Attribute != "general-practitioner" || !errors.Is(err, ErrUnresolvedLookup) {
		t.Fatalf("err = %v, want an unresolved lookup on general-practitioner", err)
	}
	_, err = m.ToCRM(context.Background(), obj(t, `{"resourceType":"Practitioner"}`), nil, nil)
	if !errors.As(err, &me) {
		t.Fatalf("wrong resource type: %v", err)
	}
}

func TestCRMFilter(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name string
		f    CRMFilter
		rec  map[string]any
		want bool
	}{
		{"eq number", CRMFilter{Attribute: "t", Operator: FilterEq, Values: []string{"935000000"}}, map[string]any{"t": json.Number("935000000")}, true},
		{"eq float", CRMFilter{Attribute: "t", Operator: FilterEq, Values: []string{"1"}}, map[string]any{"t": float64(1)}, true},
		{"eq null", CRMFilter{Attribute: "t", Operator: FilterEq, Values: []string{"1"}}, map[string]any{}, false},
		{"eq bool", CRMFilter{Attribute: "sync", Operator: FilterEq, Values: []string{"true"}}, map[string]any{"sync": true}, true},
		{"ne", CRMFilter{Attribute: "t", Operator: FilterNe, Values: []string{"1"}}, map[string]any{"t": json.Number("2")}, true},
		{"ne null", CRMFilter{Attribute: "t", Operator: FilterNe, Values: []string{"1"}}, map[string]any{"t": nil}, true},
		{"in", CRMFilter{Attribute: "t", Operator: FilterIn, Values: []string{"1", "2"}}, map[string]any{"t": json.Number("2")}, true},
		{"in miss", CRMFilter{Attribute: "t", Operator: FilterIn, Values: []string{"1", "2"}}, map[string]any{"t": json.Number("3")}, false},
		{"notnull", CRMFilter{Attribute: "t", Operator: FilterNotNull}, map[string]any{"t": "x"}, true},
	}
	for _, tt := range tests {
		if got := crmFilterPasses(&tt.f, tt.rec); got != tt.want {
			t.Errorf("%s: got %v, want %v", tt.name, got, tt.want)
		}
	}
}

func TestFHIRFilterAndComputed(t *testing.T) {
	t.Parallel()
	set := loadStarter(t)
	enc, _ := set.Map("encounter")
	out, err := enc.ToCRM(context.Background(), obj(t, `{"resourceType":"Encounter","status":"entered-in-error"}`), nil, nil)
	if err != nil || out.Filtered != "not-entered-in-error" || out.Record != nil {
		t.Fatalf("filtered encounter: %+v, %v", out, err)
	}
	obs, _ := set.Map("observation")
	out, err = obs.ToCRM(context.Background(), obj(t, `{"resourceType":"Observation","status":"final","code":{"coding":[{"system":"http://loinc.org","code":"8867-4","display":"Heart rate"}]},"subject":{"reference":"Patient/p"}}`), nil, tableResolver{"Patient/p": "c-1"})
	if err != nil {
		t.Fatal(err)
	}
	if out.Record["msemr_name"] != "Heart rate" {
		t.Fatalf("computed msemr_name = %v", out.Record["msemr_name"])
	}
}

func TestRunnerKeepsErrorsApart(t *testing.T) {
	t.Parallel()
	m := patientMap(t)
	ctx := context.Background()
	bad := RunSample(ctx, m, Sample{Name: "bad json", Direction: FHIRToCRM, Input: `{"resourceType":`, Expect: Expect{Decision: DecisionMapped}})
	if bad.ParseError == nil || bad.EvalError != nil || bad.Passed() {
		t.Fatalf("malformed input: %+v", bad)
	}
	wrong := RunSample(ctx, m, Sample{Name: "wrong", Direction: FHIRToCRM, Input: `{"resourceType":"Patient","gender":"male"}`,
		Expect: Expect{Decision: DecisionMapped, Output: `{"record":{"gendercode":2}}`}})
	if wrong.ParseError != nil || wrong.EvalError != nil || wrong.Passed() || len(wrong.Mismatches) == 0 {
		t.Fatalf("mismatching sample: %+v", wrong)
	}
	if !strings.Contains(strings.Join(wrong.Mismatches, "\n"), "record.gendercode: got 1, want 2") {
		t.Fatalf("mismatches = %v", wrong.Mismatches)
	}
	me := RunSample(ctx, m, Sample{Name: "error", Direction: FHIRToCRM, Input: `{"resourceType":"Patient","gender":"robot"}`,
		Expect: Expect{Decision: DecisionMapped}})
	if me.Decision != DecisionMappingError || me.Attribute != "gender" || me.EvalError != nil || me.Passed() {
		t.Fatalf("mapping error result: %+v", me)
	}
}

func TestReadsForTheAgent(t *testing.T) {
	t.Parallel()
	m := patientMap(t)
	sel := m.CRMSelect()
	for _, want := range []string{"contactid", "msemr_azurefhirid", "msemr_contacttype", "firstname", "_msemr_generalpractitioner_value", "_parentcustomerid_value"} {
		if !slices.Contains(sel, want) {
			t.Errorf("CRMSelect lacks %s: %v", want, sel)
		}
	}
	q := m.ChildQueries()
	if len(q) != 1 || q[0].EntitySet != "msemr_medicalidentifiers" || q[0].ParentLookup != "msemr_contact" ||
		!slices.Contains(q[0].Select, "statecode") || !slices.Contains(q[0].Select, "msemr_medicalidentifierid") {
		t.Fatalf("ChildQueries = %+v", q)
	}
}
