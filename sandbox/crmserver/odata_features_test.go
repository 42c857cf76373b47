package crmserver

import (
	"encoding/json"
	"fmt"
	"net/http"
	"net/url"
	"strings"
	"testing"
)

func decodeObject(t *testing.T, b []byte) map[string]any {
	t.Helper()
	var m map[string]any
	if err := json.Unmarshal(b, &m); err != nil {
		t.Fatalf("decoding %s: %v", b, err)
	}
	return m
}

func TestCount(t *testing.T) {
	t.Parallel()
	srv, hs := newServer(t, Options{MaxPageSize: 2})
	rows := make([]map[string]any, 0, 5003)
	for i := range 5003 {
		rows = append(rows, map[string]any{"lastname": fmt.Sprintf("L%d", i), "firstname": map[bool]string{true: "Ann", false: "Bo"}[i < 3]})
	}
	if err := srv.Seed("contact", rows); err != nil {
		t.Fatal(err)
	}
	cases := []struct {
		name     string
		path     string
		prefer   string
		wantBody string         // for /$count
		want     map[string]any // annotations on a collection
	}{
		{name: "path count is plain text, capped at 5000", path: "contacts/$count", wantBody: "5000"},
		{name: "path count honours $filter", path: "contacts/$count?$filter=firstname%20eq%20'Ann'", wantBody: "3"},
		{name: "count=true with filter, whatever the page size", path: "contacts?$filter=firstname%20eq%20'Ann'&$count=true",
			want: map[string]any{"@odata.count": 3.0}},
		{name: "count=true is capped at 5000", path: "contacts?$select=lastname&$count=true",
			prefer: `odata.include-annotations="Microsoft.Dynamics.CRM.*"`,
			want: map[string]any{"@odata.count": 5000.0, "@Microsoft.Dynamics.CRM.totalrecordcount": 5000.0,
				"@Microsoft.Dynamics.CRM.totalrecordcountlimitexceeded": true}},
		{name: "total record count is -1 without $count", path: "contacts?$select=lastname&$top=1",
			prefer: `odata.include-annotations="Microsoft.Dynamics.CRM.totalrecordcount"`,
			want:   map[string]any{"@Microsoft.Dynamics.CRM.totalrecordcount": -1.0, "@odata.count": nil}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			hdr := map[string]string{}
			if tc.prefer != "" {
				hdr["Prefer"] = tc.prefer
			}
			resp, b := do(t, "GET", hs.URL+APIPath+tc.path, hdr, "")
			if resp.StatusCode != 200 {
				t.Fatalf("%d %s", resp.StatusCode, b)
			}
			if tc.wantBody != "" {
				if string(b) != tc.wantBody || !strings.HasPrefix(resp.Header.Get("Content-Type"), "text/plain") {
					t.Errorf("got %q (%s), want %q as text/plain", b, resp.Header.Get("Content-Type"), tc.wantBody)
				}
				return
			}
			m := decodeObject(t, b)
			for k, v := range tc.want {
				if m[k] != v {
					t.Errorf("%s: got %v, want %v", k, m[k], v)
				}
			}
		})
	}
}

// TestFilterCollation: $filter compares strings as an English (United
// States) environment's collation does, without regard to case or accents
// (keyfold.go): eq, the In function and contains find "Zoë Núñez" from
// plain letters, and a different letter still differs.
func TestFilterCollation(t *testing.T) {
	t.Parallel()
	srv, hs := newServer(t, Options{})
	if err := srv.Seed("contact", []map[string]any{{"firstname": "Zo\u00eb", "lastname": "N\u00fa\u00f1ez"}, {"firstname": "Zoe", "lastname": "Nunn"}}); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		filter string
		want   int
	}{
		{"lastname eq 'nunez'", 1},
		{"lastname eq 'N\u00daNEZ'", 1},
		{"Microsoft.Dynamics.CRM.In(PropertyName='lastname',PropertyValues=['NUNEZ','x'])", 1},
		{"contains(lastname,'\u00fa\u00f1e')", 1},
		{"contains(lastname,'u\u00f1')", 2},
		{"firstname eq 'zoe'", 2},
		{"lastname eq 'nanez'", 0},
	} {
		t.Run(tc.filter, func(t *testing.T) {
			resp, b := do(t, "GET", hs.URL+APIPath+"contacts/$count?$filter="+url.QueryEscape(tc.filter), nil, "")
			if resp.StatusCode != 200 {
				t.Fatalf("%d %s", resp.StatusCode, b)
			}
			if string(b) != fmt.Sprint(tc.want) {
				t.Errorf("%s rows, want %d", b, tc.want)
			}
		})
	}
}

func TestIfNoneMatchOnRetrieve(t *testing.T) {
	t.Parallel()
	_, hs := newServer(t, Options{})
	resp, _ := do(t, "POST", hs.URL+APIPath+"contacts", nil, `{"lastname":"Lee"}`)
	loc := resp.Header.Get("OData-EntityId")
	etag := resp.Header.Get("ETag")
	cases := []struct {
		name       string
		ifNoneMach string
		prefer     string
		wantStatus int
	}{
		{name: "matching etag", ifNoneMach: etag, wantStatus: http.StatusNotModified},
		{name: "matching etag with annotations asked for", ifNoneMach: etag, prefer: `odata.include-annotations="*"`, wantStatus: http.StatusOK},
		{name: "stale etag", ifNoneMach: `W/"999"`, wantStatus: http.StatusOK},
		{name: "null, as clients send it", ifNoneMach: "null", wantStatus: http.StatusOK},
		{name: "no header", wantStatus: http.StatusOK},
	}
	if etag == `W/"999"` {
		t.Fatal("the test's stale etag is the row's etag")
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			hdr := map[string]string{}
			if tc.ifNoneMach != "" {
				hdr["If-None-Match"] = tc.ifNoneMach
			}
			if tc.prefer != "" {
				hdr["Prefer"] = tc.prefer
			}
			resp, b := do(t, "GET", loc+"?$select=lastname", hdr, "")
			if resp.StatusCode != tc.wantStatus {
				t.Fatalf("got %d %s, want %d", resp.StatusCode, b, tc.wantStatus)
			}
			if tc.wantStatus == http.StatusNotModified && (len(b) != 0 || resp.Header.Get("ETag") != etag) {
				t.Errorf("304 with body %q, ETag %q", b, resp.Header.Get("ETag"))
			}
		})
	}
}

func TestFormattedValueAnnotations(t *testing.T) {
	t.Parallel()
	_, hs := newServer(t, Options{Entities: append(DefaultEntities(), valuesEntity())})
	resp, b := do(t, "POST", hs.URL+APIPath+"accounts", nil, `{"name":"Northwind Clinic"}`)
	if resp.StatusCode != 204 {
		t.Fatalf("%d %s", resp.StatusCode, b)
	}
	acct := resp.Header.Get("OData-EntityId")
	acct = acct[strings.LastIndex(acct, "/")+1:]
	resp, b = do(t, "POST", hs.URL+APIPath+"contacts", nil, `{"lastname":"Lee","gendercode":2,"donotemail":true,"birthdate":"1990-07-04",
		"numberofchildren":1234,"parentcustomerid_account@odata.bind":"/`+acct+`"}`)
	if resp.StatusCode != 204 {
		t.Fatalf("%d %s", resp.StatusCode, b)
	}
	contact := resp.Header.Get("OData-EntityId")
	if resp, b = do(t, "POST", hs.URL+APIPath+"new_boundeds", nil, `{"new_money":1234.5,"new_decimal":-0.5}`); resp.StatusCode != 204 {
		t.Fatalf("%d %s", resp.StatusCode, b)
	}
	bounded := resp.Header.Get("OData-EntityId")
	const fv = "@OData.Community.Display.V1.FormattedValue"
	cases := []struct {
		name    string
		url     string
		prefer  string
		want    map[string]any
		applied string
	}{
		{name: "all annotations", url: contact + "?$select=gendercode,donotemail,birthdate,numberofchildren,_parentcustomerid_value",
			prefer: `odata.include-annotations="*"`, applied: `odata.include-annotations="*"`,
			want: map[string]any{"gendercode" + fv: "Female", "donotemail" + fv: "Yes", "birthdate" + fv: "7/4/1990",
				"numberofchildren" + fv: "1,234", "_parentcustomerid_value" + fv: "Northwind Clinic",
				"_parentcustomerid_value@Microsoft.Dynamics.CRM.lookuplogicalname":            "account",
				"_parentcustomerid_value@Microsoft.Dynamics.CRM.associatednavigationproperty": "parentcustomerid_account"}},
		{name: "formatted values only", url: contact + "?$select=gendercode,_parentcustomerid_value",
			prefer: `odata.include-annotations="OData.Community.Display.V1.FormattedValue"`,
			want: map[string]any{"gendercode" + fv: "Female", "_parentcustomerid_value" + fv: "Northwind Clinic",
				"_parentcustomerid_value@Microsoft.Dynamics.CRM.lookuplogicalname": nil}},
		{name: "lookup annotations only", url: contact + "?$select=gendercode,_parentcustomerid_value",
			prefer: `odata.include-annotations="Microsoft.Dynamics.CRM.associatednavigationproperty,Microsoft.Dynamics.CRM.lookuplogicalname"`,
			want:   map[string]any{"gendercode" + fv: nil, "_parentcustomerid_value@Microsoft.Dynamics.CRM.lookuplogicalname": "account"}},
		{name: "no preference, no annotations", url: contact + "?$select=gendercode",
			want: map[string]any{"gendercode" + fv: nil}},
		{name: "money with currency symbol, decimal with its precision", url: bounded,
			prefer: `odata.include-annotations="*"`,
			want:   map[string]any{"new_money" + fv: "$1,234.50", "new_decimal" + fv: "-0.50"}},
		{name: "dates in a collection", url: hs.URL + APIPath + "contacts?$select=createdon",
			prefer: `odata.include-annotations="*"`},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			hdr := map[string]string{}
			if tc.prefer != "" {
				hdr["Prefer"] = tc.prefer
			}
			resp, b := do(t, "GET", tc.url, hdr, "")
			if resp.StatusCode != 200 {
				t.Fatalf("%d %s", resp.StatusCode, b)
			}
			m := decodeObject(t, b)
			if vals, ok := m["value"].([]any); ok {
				m = vals[0].(map[string]any)
				created, _ := m["createdon"].(string)
				f, _ := m["createdon"+fv].(string)
				if !strings.HasSuffix(f, " AM") && !strings.HasSuffix(f, " PM") || !strings.HasPrefix(created, "20") {
					t.Errorf("createdon %q formatted as %q", created, f)
				}
			}
			for k, v := range tc.want {
				if m[k] != v {
					t.Errorf("%s: got %v, want %v", k, m[k], v)
				}
			}
			if tc.applied != "" && resp.Header.Get("Preference-Applied") != tc.applied {
				t.Errorf("Preference-Applied: got %q, want %q", resp.Header.Get("Preference-Applied"), tc.applied)
			}
			if tc.prefer == "" && resp.Header.Get("Preference-Applied") != "" {
				t.Errorf("Preference-Applied %q without a preference", resp.Header.Get("Preference-Applied"))
			}
		})
	}
}

func TestAlternateKeyUpsert(t *testing.T) {
	t.Parallel()
	_, hs := newServer(t, Options{})
	url := func(key string) string {
		return hs.URL + APIPath + "contacts(msemr_azurefhirid='" + key + "')"
	}
	get := func(t *testing.T, key string) map[string]any {
		t.Helper()
		resp, b := do(t, "GET", url(key)+"?$select=lastname,msemr_azurefhirid", nil, "")
		if resp.StatusCode != 200 {
			t.Fatalf("GET by key %s: %d %s", key, resp.StatusCode, b)
		}
		return decodeObject(t, b)
	}
	type step struct {
		method, url, body string
		hdr               map[string]string
		wantStatus        int
		wantCode          string
	}
	cases := []struct {
		name  string
		steps []step
		check func(t *testing.T)
	}{
		{name: "upsert creates then updates", steps: []step{
			{method: "PATCH", url: url("p1"), body: `{"lastname":"A"}`, wantStatus: 204},
			{method: "PATCH", url: url("p1"), body: `{"lastname":"B"}`, hdr: map[string]string{"Prefer": "return=representation"}, wantStatus: 200},
		}, check: func(t *testing.T) {
			if m := get(t, "p1"); m["lastname"] != "B" {
				t.Errorf("lastname %v", m["lastname"])
			}
		}},
		{name: "create reports 201 with return=representation", steps: []step{
			{method: "PATCH", url: url("p2"), body: `{"lastname":"A"}`, hdr: map[string]string{"Prefer": "return=representation"}, wantStatus: 201},
		}},
		{name: "update-only of a missing key is 404", steps: []step{
			{method: "PATCH", url: url("p3"), body: `{"lastname":"A"}`, hdr: map[string]string{"If-Match": "*"}, wantStatus: 404, wantCode: "0x80040217"},
		}},
		{name: "create-only of an existing key is 412", steps: []step{
			{method: "PATCH", url: url("p4"), body: `{"lastname":"A"}`, wantStatus: 204},
			{method: "PATCH", url: url("p4"), body: `{"lastname":"B"}`, hdr: map[string]string{"If-None-Match": "*"}, wantStatus: 412, wantCode: "0x80040237"},
		}},
		{name: "key value in the body of an update is dropped", steps: []step{
			{method: "PATCH", url: url("p5"), body: `{"lastname":"A"}`, wantStatus: 204},
			{method: "PATCH", url: url("p5"), body: `{"lastname":"B","msemr_azurefhirid":"other"}`, wantStatus: 204},
		}, check: func(t *testing.T) {
			if m := get(t, "p5"); m["msemr_azurefhirid"] != "p5" || m["lastname"] != "B" {
				t.Errorf("got %v", m)
			}
		}},
		{name: "key value in the body of a create wins", steps: []step{
			{method: "PATCH", url: url("p6"), body: `{"lastname":"A","msemr_azurefhirid":"p6-body"}`, wantStatus: 204},
		}, check: func(t *testing.T) {
			if m := get(t, "p6-body"); m["lastname"] != "A" {
				t.Errorf("got %v", m)
			}
		}},
		{name: "key of another row is a duplicate", steps: []step{
			{method: "PATCH", url: url("p7"), body: `{"lastname":"A"}`, wantStatus: 204},
			{method: "POST", url: hs.URL + APIPath + "contacts", body: `{"lastname":"B","msemr_azurefhirid":"p7"}`, wantStatus: 412, wantCode: "0x80060892"},
		}},
		// Dataverse compares key values as its SQL collation does, without
		// regard to case (keyfold.go).
		{name: "a key differing only in case is a duplicate", steps: []step{
			{method: "PATCH", url: url("p8"), body: `{"lastname":"A"}`, wantStatus: 204},
			{method: "POST", url: hs.URL + APIPath + "contacts", body: `{"lastname":"B","msemr_azurefhirid":"P8"}`, wantStatus: 412, wantCode: "0x80060892"},
		}},
		{name: "a key finds its row whatever the case", steps: []step{
			{method: "PATCH", url: url("p9"), body: `{"lastname":"A"}`, wantStatus: 204},
			{method: "PATCH", url: url("P9"), body: `{"lastname":"B"}`, hdr: map[string]string{"If-Match": "*"}, wantStatus: 204},
		}, check: func(t *testing.T) {
			if m := get(t, "p9"); m["lastname"] != "B" || m["msemr_azurefhirid"] != "p9" {
				t.Errorf("got %v", m)
			}
		}},
		// An English (United States) environment's collation is accent
		// insensitive too (_CI_AI).
		{name: "a key differing only in accents is a duplicate", steps: []step{
			{method: "PATCH", url: url("p10-jose"), body: `{"lastname":"A"}`, wantStatus: 204},
			{method: "POST", url: hs.URL + APIPath + "contacts", body: `{"lastname":"B","msemr_azurefhirid":"p10-Jos\u00e9"}`, wantStatus: 412, wantCode: "0x80060892"},
		}},
		{name: "a key finds its row whatever the accents", steps: []step{
			{method: "PATCH", url: url("p11-ren%C3%A9e"), body: `{"lastname":"A"}`, wantStatus: 204},
			{method: "PATCH", url: url("p11-RENEE"), body: `{"lastname":"B"}`, hdr: map[string]string{"If-Match": "*"}, wantStatus: 204},
		}, check: func(t *testing.T) {
			if m := get(t, "p11-renee"); m["lastname"] != "B" || m["msemr_azurefhirid"] != "p11-ren\u00e9e" {
				t.Errorf("got %v", m)
			}
		}},
		{name: "attributes that are not an alternate key", steps: []step{
			{method: "PATCH", url: hs.URL + APIPath + "contacts(lastname='A')", body: `{"firstname":"X"}`, wantStatus: 400, wantCode: "0x80060892"},
		}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			for i, s := range tc.steps {
				resp, b := do(t, s.method, s.url, s.hdr, s.body)
				if resp.StatusCode != s.wantStatus {
					t.Fatalf("step %d: got %d %s, want %d", i, resp.StatusCode, b, s.wantStatus)
				}
				if s.wantCode != "" && errorCode(t, b) != s.wantCode {
					t.Fatalf("step %d: code %s, want %s", i, errorCode(t, b), s.wantCode)
				}
			}
			if tc.check != nil {
				tc.check(t)
			}
		})
	}
}
