package path

import (
	"encoding/json"
	"strings"
	"testing"
)

// TestEmptyCondition covers where(field.empty()): it selects items without
// the field, reads and writes them, and creates items without it.
func TestEmptyCondition(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name    string
		in      string
		path    string
		get     string // JSON of Get's value, "" when nothing is found
		set     any
		want    string // the resource after Set(set)
		canon   string
		wantErr bool
	}{
		{
			name: "selects the address without a use", path: "address.where(use.empty()).city",
			in:  `{"resourceType":"Patient","address":[{"use":"old","city":"A"},{"city":"B"}]}`,
			get: `"B"`, set: "C", canon: "address.where(use.empty()).city",
			want: `{"address":[{"city":"A","use":"old"},{"city":"C"}],"resourceType":"Patient"}`,
		},
		{
			name: "creates an item without the field", path: "address.where(use.empty()).line[0]",
			in:  `{"resourceType":"Patient","address":[{"use":"old","line":["A"]}]}`,
			get: "", set: "B", canon: "address.where(use.empty()).line[0]",
			want: `{"address":[{"line":["A"],"use":"old"},{"line":["B"]}],"resourceType":"Patient"}`,
		},
		{
			name: "joined with an equality", path: "telecom.where(system = 'phone' and use.empty()).value",
			in:  `{"resourceType":"Patient","telecom":[{"system":"phone","use":"home","value":"1"},{"system":"phone","value":"2"}]}`,
			get: `"2"`, set: nil, canon: "telecom.where(system='phone' and use.empty()).value",
			want: `{"resourceType":"Patient","telecom":[{"system":"phone","use":"home","value":"1"}]}`,
		},
		{
			name: "only empty() is a function here", path: "address.where(use.exists()).city", wantErr: true,
		},
		{
			name: "empty() needs a field", path: "address.where(empty()).city", wantErr: true,
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			p, err := Compile(tc.path)
			if tc.wantErr {
				if err == nil {
					t.Fatalf("Compile(%q) succeeded, want a syntax error", tc.path)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if p.String() != tc.canon {
				t.Errorf("String() = %q, want %q", p.String(), tc.canon)
			}
			var res map[string]any
			d := json.NewDecoder(strings.NewReader(tc.in))
			d.UseNumber()
			if err := d.Decode(&res); err != nil {
				t.Fatal(err)
			}
			v, ok := p.Get(res)
			got := ""
			if ok {
				raw, _ := json.Marshal(v)
				got = string(raw)
			}
			if got != tc.get {
				t.Errorf("Get = %s, want %s", got, tc.get)
			}
			if err := p.Set(res, tc.set); err != nil {
				t.Fatal(err)
			}
			raw, _ := json.Marshal(res)
			if string(raw) != tc.want {
				t.Errorf("after Set:\n%s\nwant\n%s", raw, tc.want)
			}
			if tc.set != nil {
				if v, ok := p.Get(res); !ok || v != tc.set {
					t.Errorf("the written value does not read back: %v, %v", v, ok)
				}
			}
		})
	}
}
