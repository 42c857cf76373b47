package crmserver

import (
	"encoding/json"
	"net/http"
	"strings"
	"testing"
)

// valuesEntity has one column of each bounded kind, with limits small
// enough to cross in a test.
func valuesEntity() *Entity {
	return &Entity{
		LogicalName: "new_bounded", EntitySetName: "new_boundeds", PrimaryID: "new_boundedid", PrimaryName: "new_name",
		Attributes: append(platformAttributes("new_boundedid"),
			str("new_name", 10),
			decimalPlaces("new_decimal", 2),
			&Attribute{LogicalName: "new_money", Type: TypeMoney, Precision: 2},
			&Attribute{LogicalName: "new_small", Type: TypeInteger, MinValue: 0, MaxValue: 100},
			integer("new_integer"),
			picklist("new_choice", Option{1, "One"}, Option{2, "Two"}),
		),
	}
}

func TestAttributeValuesAreValidatedAndRounded(t *testing.T) {
	t.Parallel()
	_, hs := newServer(t, Options{Entities: []*Entity{valuesEntity()}})
	cases := []struct {
		name     string
		body     string
		wantCode string // "" = created
		wantMsg  string
		wantAttr string // attribute to read back
		wantVal  string // its stored JSON value
	}{
		{name: "string at max length", body: `{"new_name":"0123456789"}`, wantAttr: "new_name", wantVal: `"0123456789"`},
		{name: "string one over max length", body: `{"new_name":"0123456789x"}`, wantCode: "0x80044331",
			wantMsg: "A validation error occurred.  The length of the 'new_name' attribute of the 'new_bounded' entity exceeded the maximum allowed length of '10'."},
		{name: "length counts characters, not bytes", body: `{"new_name":"ééééééééé€"}`, wantAttr: "new_name", wantVal: `"ééééééééé€"`},
		{name: "decimal within precision kept as written", body: `{"new_decimal":72.5}`, wantAttr: "new_decimal", wantVal: `72.5`},
		{name: "decimal rounded half away from zero", body: `{"new_decimal":1.005}`, wantAttr: "new_decimal", wantVal: `1.01`},
		{name: "negative decimal rounded half away from zero", body: `{"new_decimal":-2.675}`, wantAttr: "new_decimal", wantVal: `-2.68`},
		{name: "decimal rounded down", body: `{"new_decimal":3.14159}`, wantAttr: "new_decimal", wantVal: `3.14`},
		{name: "decimal in exponent form", body: `{"new_decimal":1.23456e2}`, wantAttr: "new_decimal", wantVal: `123.46`},
		{name: "decimal above its range", body: `{"new_decimal":100000000001}`, wantCode: "0x80044330",
			wantMsg: "A validation error occurred for new_bounded.new_decimal. The value 100000000001 of type System.Decimal is outside the valid range(-100000000000 to 100000000000)."},
		{name: "money rounded to its precision", body: `{"new_money":19.999}`, wantAttr: "new_money", wantVal: `20.00`},
		{name: "money below its range", body: `{"new_money":-922337203685478}`, wantCode: "0x80044330"},
		{name: "integer inside its range", body: `{"new_small":100}`, wantAttr: "new_small", wantVal: `100`},
		{name: "integer above its range", body: `{"new_small":101}`, wantCode: "0x80044330",
			wantMsg: "A validation error occurred for new_bounded.new_small. The value 101 of type System.Int32 is outside the valid range(0 to 100)."},
		{name: "integer beyond Int32 is a payload error", body: `{"new_integer":3000000000}`, wantCode: "0x80048d19"},
		{name: "unknown choice", body: `{"new_choice":3}`, wantCode: "0x8004431a",
			wantMsg: "A validation error occurred. The value 3 of 'new_choice' on record of type 'new_bounded' is outside the valid range. Accepted Values: 1,2"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			resp, b := do(t, "POST", hs.URL+APIPath+"new_boundeds", map[string]string{"Prefer": "return=representation"}, tc.body)
			if tc.wantCode != "" {
				if resp.StatusCode != http.StatusBadRequest || errorCode(t, b) != tc.wantCode {
					t.Fatalf("got %d %s, want 400 %s", resp.StatusCode, b, tc.wantCode)
				}
				if tc.wantMsg != "" && !strings.Contains(string(b), jsonString(t, tc.wantMsg)) {
					t.Errorf("message: got %s, want %q", b, tc.wantMsg)
				}
				return
			}
			if resp.StatusCode != http.StatusCreated {
				t.Fatalf("got %d %s, want 201", resp.StatusCode, b)
			}
			var got map[string]json.RawMessage
			if err := json.Unmarshal(b, &got); err != nil {
				t.Fatal(err)
			}
			if string(got[tc.wantAttr]) != tc.wantVal {
				t.Errorf("%s: got %s, want %s", tc.wantAttr, got[tc.wantAttr], tc.wantVal)
			}
		})
	}
}

func jsonString(t *testing.T, s string) string {
	b, err := json.Marshal(s)
	if err != nil {
		t.Fatal(err)
	}
	return strings.Trim(string(b), `"`)
}

func TestRoundDecimal(t *testing.T) {
	t.Parallel()
	cases := []struct {
		name   string
		in     string
		places int
		want   string
	}{
		{name: "fits", in: "72.50", places: 2, want: "72.50"},
		{name: "integer", in: "7", places: 0, want: "7"},
		{name: "to none", in: "7.5", places: 0, want: "8"},
		{name: "half away from zero", in: "0.125", places: 2, want: "0.13"},
		{name: "negative half", in: "-0.125", places: 2, want: "-0.13"},
		{name: "negative to zero", in: "-0.001", places: 2, want: "0.00"},
		{name: "ten places", in: "1.234567890123", places: 10, want: "1.2345678901"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			if got := roundDecimal(json.Number(tc.in), tc.places); string(got) != tc.want {
				t.Errorf("roundDecimal(%s, %d) = %s, want %s", tc.in, tc.places, got, tc.want)
			}
		})
	}
}

func TestAttributeMetadataEndpoints(t *testing.T) {
	t.Parallel()
	_, hs := newServer(t, Options{})
	base := hs.URL + APIPath + "EntityDefinitions(LogicalName='contact')"
	type attr = map[string]any
	get := func(t *testing.T, url string) map[string]any {
		t.Helper()
		resp, b := do(t, "GET", url, nil, "")
		if resp.StatusCode != 200 {
			t.Fatalf("GET %s: %d %s", url, resp.StatusCode, b)
		}
		var m map[string]any
		if err := json.Unmarshal(b, &m); err != nil {
			t.Fatal(err)
		}
		return m
	}
	values := func(m map[string]any) map[string]attr {
		out := map[string]attr{}
		for _, v := range m["value"].([]any) {
			a := v.(map[string]any)
			out[a["LogicalName"].(string)] = a
		}
		return out
	}
	cases := []struct {
		name  string
		url   string
		check func(t *testing.T, m map[string]any)
	}{
		{name: "string cast with select", url: base + "/Attributes/Microsoft.Dynamics.CRM.StringAttributeMetadata?$select=LogicalName,MaxLength",
			check: func(t *testing.T, m map[string]any) {
				as := values(m)
				if as["firstname"]["MaxLength"] != 50.0 || as["msemr_azurefhirid"]["MaxLength"] != 100.0 {
					t.Errorf("MaxLength: firstname %v, msemr_azurefhirid %v", as["firstname"]["MaxLength"], as["msemr_azurefhirid"]["MaxLength"])
				}
				if _, ok := as["gendercode"]; ok {
					t.Error("the String cast listed a picklist")
				}
				if _, ok := as["firstname"]["AttributeType"]; ok {
					t.Error("$select=LogicalName,MaxLength returned AttributeType")
				}
				if as["firstname"]["@odata.type"] != "#Microsoft.Dynamics.CRM.StringAttributeMetadata" || as["firstname"]["MetadataId"] == nil {
					t.Errorf("type annotation or MetadataId missing: %v", as["firstname"])
				}
			}},
		{name: "unqualified cast", url: base + "/Attributes/StringAttributeMetadata?$select=LogicalName",
			check: func(t *testing.T, m map[string]any) {
				if len(values(m)) < 20 {
					t.Errorf("%d string attributes", len(values(m)))
				}
			}},
		{name: "picklist cast with option set", url: base + "/Attributes/Microsoft.Dynamics.CRM.PicklistAttributeMetadata?$select=LogicalName&$expand=OptionSet($select=Options)",
			check: func(t *testing.T, m map[string]any) {
				g := values(m)["gendercode"]
				opts := g["OptionSet"].(map[string]any)["Options"].([]any)
				first := opts[0].(map[string]any)
				label := first["Label"].(map[string]any)["UserLocalizedLabel"].(map[string]any)["Label"]
				if len(opts) != 4 || first["Value"] != 1.0 || label != "Male" {
					t.Errorf("gendercode options: %v", opts)
				}
			}},
		{name: "decimal precision and range", url: hs.URL + APIPath + "EntityDefinitions(LogicalName='msemr_observation')/Attributes/Microsoft.Dynamics.CRM.DecimalAttributeMetadata",
			check: func(t *testing.T, m map[string]any) {
				q := values(m)["msemr_valuequantity"]
				if q["Precision"] != 10.0 || q["MinValue"] != -1e11 || q["MaxValue"] != 1e11 {
					t.Errorf("msemr_valuequantity: %v", q)
				}
			}},
		{name: "integer range", url: base + "/Attributes(LogicalName='numberofchildren')",
			check: func(t *testing.T, m map[string]any) {
				if m["MinValue"] != -2147483648.0 || m["MaxValue"] != 2147483647.0 || m["AttributeType"] != "Integer" {
					t.Errorf("numberofchildren: %v", m)
				}
			}},
		{name: "lookup targets", url: base + "/Attributes(LogicalName='parentcustomerid')",
			check: func(t *testing.T, m map[string]any) {
				ts, _ := m["Targets"].([]any)
				if len(ts) != 2 || ts[0] != "account" || ts[1] != "contact" {
					t.Errorf("parentcustomerid targets: %v", m["Targets"])
				}
			}},
		{name: "attributes filtered by name, MetadataId selected", url: hs.URL + APIPath + "EntityDefinitions(" + metadataID("contact") + ")/Attributes?$filter=LogicalName%20eq%20'gendercode'&$select=MetadataId",
			check: func(t *testing.T, m map[string]any) {
				vs := m["value"].([]any)
				if len(vs) != 1 {
					t.Fatalf("%d attributes, want 1", len(vs))
				}
				a := vs[0].(map[string]any)
				if a["MetadataId"] != metadataID("contact.gendercode") || a["@odata.type"] != "#Microsoft.Dynamics.CRM.PicklistAttributeMetadata" || a["LogicalName"] != nil {
					t.Errorf("got %v", a)
				}
			}},
		{name: "entities filtered by name", url: hs.URL + APIPath + "EntityDefinitions?$filter=LogicalName%20eq%20'account'&$select=MetadataId",
			check: func(t *testing.T, m map[string]any) {
				vs := m["value"].([]any)
				if len(vs) != 1 || vs[0].(map[string]any)["MetadataId"] != metadataID("account") || vs[0].(map[string]any)["Attributes"] != nil {
					t.Errorf("got %v", vs)
				}
			}},
		{name: "global option set of one attribute", url: base + "/Attributes(LogicalName='gendercode')/Microsoft.Dynamics.CRM.PicklistAttributeMetadata?$select=LogicalName&$expand=GlobalOptionSet($select=Options)",
			check: func(t *testing.T, m map[string]any) {
				g, _ := m["GlobalOptionSet"].(map[string]any)
				if opts, _ := g["Options"].([]any); len(opts) != 4 || m["OptionSet"] != nil {
					t.Errorf("got %v", m)
				}
			}},
		{name: "entity by MetadataId", url: hs.URL + APIPath + "EntityDefinitions(" + metadataID("contact") + ")",
			check: func(t *testing.T, m map[string]any) {
				if m["LogicalName"] != "contact" || m["MetadataId"] != metadataID("contact") {
					t.Errorf("got %v %v", m["LogicalName"], m["MetadataId"])
				}
			}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			tc.check(t, get(t, tc.url))
		})
	}
	if resp, b := do(t, "GET", base+"/Attributes(LogicalName='nosuch')", nil, ""); resp.StatusCode != 404 {
		t.Errorf("unknown attribute: %d %s", resp.StatusCode, b)
	}
}
