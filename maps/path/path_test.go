package path

import (
	"bytes"
	"encoding/json"
	"errors"
	"os"
	"reflect"
	"strings"
	"testing"
)

func decode(t testing.TB, s string) map[string]any {
	t.Helper()
	d := json.NewDecoder(strings.NewReader(s))
	d.UseNumber()
	var m map[string]any
	if err := d.Decode(&m); err != nil {
		t.Fatalf("decoding %s: %v", s, err)
	}
	return m
}

func loadPatient(t testing.TB) map[string]any {
	t.Helper()
	b, err := os.ReadFile("testdata/patient.json")
	if err != nil {
		t.Fatal(err)
	}
	return decode(t, string(b))
}

func canon(t testing.TB, v any) string {
	t.Helper()
	var buf bytes.Buffer
	enc := json.NewEncoder(&buf)
	enc.SetEscapeHTML(false)
	if err := enc.Encode(v); err != nil {
		t.Fatal(err)
	}
	return strings.TrimSpace(buf.String())
}

func TestGetAll(t *testing.T) {
	t.Parallel()
	res := loadPatient(t)
	tests := []struct {
		name string
		path string
		want string // JSON of GetAll
	}{
		{"primitive", "birthDate", `["1980-02-29"]`},
		{"type qualifier", "Patient.gender", `["female"]`},
		{"wrong type qualifier", "Observation.status", `null`},
		{"boolean", "active", `[true]`},
		{"flattened", "name.given", `["Jo","Johanna","Maria","Third"]`},
		{"where", "name.where(use='official').given", `["Johanna","Maria","Third"]`},
		{"where then index over collection", "name.where(use='official').given[1]", `["Maria"]`},
		{"index over flattened collection", "name.given[3]", `["Third"]`},
		{"two conditions", "telecom.where(system='phone' and use='home').value", `["+41 2"]`},
		{"where with number", "telecom.where(rank=2).value", `["jo@example.org"]`},
		{"where on system", "identifier.where(system='urn:x').value", `["X-1","X-2"]`},
		{"dotted where", "identifier.where(type.coding.code='MR').value", `["MRN-7"]`},
		{"extension", "extension('http://example.org/ext/birthplace').valueString", `["Zürich"]`},
		{"extension decimal keeps text", "extension('http://example.org/ext/score').valueDecimal", `[1.50]`},
		{"indexes", "address[0].line[1]", `["Postfach"]`},
		{"index past end", "address[0].line[2]", `null`},
		{"nested coding", "maritalStatus.coding.where(system='http://terminology.hl7.org/CodeSystem/v3-MaritalStatus').code", `["M"]`},
		{"reference", "generalPractitioner[0].reference", `["Practitioner/pr1"]`},
		{"object", "meta", `[{"versionId":"3"}]`},
		{"missing", "deceasedBoolean", `null`},
		{"no match", "telecom.where(system='sms').value", `null`},
		{"through primitive", "gender.value", `null`},
		{"backbone lists", "contact.telecom.where(system='phone').value", `["c1","c2"]`},
		{"index after where", "contact.telecom.where(system='phone')[1].value", `["c2"]`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			p, err := Compile(tt.path)
			if err != nil {
				t.Fatal(err)
			}
			if got := canon(t, p.GetAll(res)); got != tt.want {
				t.Errorf("GetAll(%s) = %s, want %s", tt.path, got, tt.want)
			}
			v, ok := p.Get(res)
			var all []any
			json.Unmarshal([]byte(tt.want), &all)
			if ok != (len(all) > 0) {
				t.Fatalf("Get(%s) ok = %v, want %v", tt.path, ok, len(all) > 0)
			}
			if ok {
				if got, want := canon(t, v), canon(t, p.GetAll(res)[0]); got != want {
					t.Errorf("Get(%s) = %s, want the first of GetAll, %s", tt.path, got, want)
				}
			}
		})
	}
}

func TestSet(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name    string
		in      string
		path    string
		value   any
		want    string
		wantErr error
	}{
		{
			name: "create with discriminators", in: `{"resourceType":"Patient"}`,
			path: "name.where(use='official').given[0]", value: "Ann",
			want: `{"name":[{"given":["Ann"],"use":"official"}],"resourceType":"Patient"}`,
		},
		{
			name: "two discriminators", in: `{"resourceType":"Patient"}`,
			path: "telecom.where(system='phone' and use='home').value", value: "555",
			want: `{"resourceType":"Patient","telecom":[{"system":"phone","use":"home","value":"555"}]}`,
		},
		{
			name: "dotted discriminator follows the model", in: `{"resourceType":"Patient"}`,
			path: "identifier.where(type.coding.system='http://terminology.hl7.org/CodeSystem/v2-0203' and type.coding.code='MR').value", value: "7",
			want: `{"identifier":[{"type":{"coding":[{"code":"MR","system":"http://terminology.hl7.org/CodeSystem/v2-0203"}]},"value":"7"}],"resourceType":"Patient"}`,
		},
		{
			name: "extension", in: `{"resourceType":"Patient"}`,
			path: "extension('http://example.org/ext').valueString", value: "x",
			want: `{"extension":[{"url":"http://example.org/ext","valueString":"x"}],"resourceType":"Patient"}`,
		},
		{
			name: "single element is an object, repeating child an array", in: `{"resourceType":"Patient"}`,
			path: "maritalStatus.coding.where(system='s').code", value: "M",
			want: `{"maritalStatus":{"coding":[{"code":"M","system":"s"}]},"resourceType":"Patient"}`,
		},
		{
			name: "repeating primitive without index is an array", in: `{"resourceType":"Patient"}`,
			path: "address.line", value: "L1",
			want: `{"address":[{"line":["L1"]}],"resourceType":"Patient"}`,
		},
		{
			name: "typed discriminator literals", in: `{"resourceType":"Patient"}`,
			path: "telecom.where(rank=1 and system='phone').value", value: "1",
			want: `{"resourceType":"Patient","telecom":[{"rank":1,"system":"phone","value":"1"}]}`,
		},
		{
			name: "replace existing", in: `{"resourceType":"Patient","name":[{"use":"official","given":["A","B"]}]}`,
			path: "name.where(use='official').given[1]", value: "C",
			want: `{"name":[{"given":["A","C"],"use":"official"}],"resourceType":"Patient"}`,
		},
		{
			name: "append at the end", in: `{"resourceType":"Patient","name":[{"use":"official","given":["A"]}]}`,
			path: "name.where(use='official').given[1]", value: "B",
			want: `{"name":[{"given":["A","B"],"use":"official"}],"resourceType":"Patient"}`,
		},
		{
			name: "index beyond the end", in: `{"resourceType":"Patient","name":[{"use":"official","given":["A"]}]}`,
			path: "name.where(use='official').given[2]", value: "B", wantErr: ErrIndexBeyondEnd,
		},
		{
			name: "index beyond the end of a new element", in: `{"resourceType":"Patient"}`,
			path: "address[0].line[1]", value: "x", wantErr: ErrIndexBeyondEnd,
		},
		{
			name: "where adds a matching item", in: `{"resourceType":"Patient","telecom":[{"system":"email","value":"e"}]}`,
			path: "telecom.where(system='phone').value", value: "p",
			want: `{"resourceType":"Patient","telecom":[{"system":"email","value":"e"},{"system":"phone","value":"p"}]}`,
		},
		{
			name: "where picks the first match", in: `{"resourceType":"Patient","telecom":[{"system":"email","value":"e"},{"system":"phone","value":"1"},{"system":"phone","value":"2"}]}`,
			path: "telecom.where(system='phone').value", value: "p",
			want: `{"resourceType":"Patient","telecom":[{"system":"email","value":"e"},{"system":"phone","value":"p"},{"system":"phone","value":"2"}]}`,
		},
		{
			name: "keeps unrelated data", in: `{"resourceType":"Patient","id":"1","_birthDate":{"extension":[]},"name":[{"text":"t"}]}`,
			path: "name[0].family", value: "F",
			want: `{"_birthDate":{"extension":[]},"id":"1","name":[{"family":"F","text":"t"}],"resourceType":"Patient"}`,
		},
		{
			name: "whole list", in: `{"resourceType":"Patient","name":[{"given":["A","B"]}]}`,
			path: "name[0].given", value: []any{"C"},
			want: `{"name":[{"given":["C"]}],"resourceType":"Patient"}`,
		},
		{
			name: "object value into filtered element", in: `{"resourceType":"Patient"}`,
			path: "telecom.where(system='phone')", value: map[string]any{"value": "1"},
			want: `{"resourceType":"Patient","telecom":[{"system":"phone","value":"1"}]}`,
		},
		{
			name: "primitive into filtered element", in: `{"resourceType":"Patient"}`,
			path: "telecom.where(system='phone')", value: "1", wantErr: ErrShape,
		},
		{
			name: "single element does not take an index", in: `{"resourceType":"Patient"}`,
			path: "birthDate[1]", value: "2000-01-01", wantErr: ErrIndexBeyondEnd,
		},
		{
			name: "single element with index 0", in: `{"resourceType":"Patient"}`,
			path: "birthDate[0]", value: "2000-01-01",
			want: `{"birthDate":"2000-01-01","resourceType":"Patient"}`,
		},
		{
			name: "through a primitive", in: `{"resourceType":"Patient","gender":"male"}`,
			path: "gender.value", value: "x", wantErr: ErrShape,
		},
		{
			name: "list where R4 has one is refused", in: `{"resourceType":"Patient","name":{"family":"x"}}`,
			path: "name.family", value: "x", wantErr: ErrShape,
		},
		{
			name: "wrong resource type", in: `{"resourceType":"Observation"}`,
			path: "Patient.gender", value: "x", wantErr: ErrShape,
		},
		{
			name: "existing single element failing where", in: `{"resourceType":"Patient","maritalStatus":{"text":"x"}}`,
			path: "maritalStatus.where(text='y').text", value: "y", wantErr: ErrShape,
		},
		{
			name: "resourceType is not written", in: `{"resourceType":"Patient"}`,
			path: "resourceType", value: "Observation", wantErr: ErrShape,
		},
		{
			name: "writing the filter field", in: `{"resourceType":"Patient"}`,
			path: "name.where(given='x').given[1]", value: "y", wantErr: ErrShape,
		},
		{
			name: "contradicting filter", in: `{"resourceType":"Patient"}`,
			path: "name.where(use='a' and use='b').family", value: "y", wantErr: ErrShape,
		},
		{
			name: "unknown resource type falls back on the path", in: `{"resourceType":"Custom"}`,
			path: "a.where(k='v').b[0].c", value: "x",
			want: `{"a":[{"b":[{"c":"x"}],"k":"v"}],"resourceType":"Custom"}`,
		},
		{
			name: "backbone element", in: `{"resourceType":"Patient"}`,
			path: "contact.name.given", value: "G",
			want: `{"contact":[{"name":{"given":["G"]}}],"resourceType":"Patient"}`,
		},
		{
			name: "choice type value", in: `{"resourceType":"Observation"}`,
			path: "valueQuantity.value", value: json.Number("1.50"),
			want: `{"resourceType":"Observation","valueQuantity":{"value":1.50}}`,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			res := decode(t, tt.in)
			p := MustCompile(tt.path)
			err := p.Set(res, tt.value)
			if tt.wantErr != nil {
				if !errors.Is(err, tt.wantErr) {
					t.Fatalf("Set(%s) error = %v, want %v", tt.path, err, tt.wantErr)
				}
				if got := canon(t, res); got != canon(t, decode(t, tt.in)) {
					t.Errorf("failed Set changed the resource: %s", got)
				}
				return
			}
			if err != nil {
				t.Fatalf("Set(%s): %v", tt.path, err)
			}
			if got := canon(t, res); got != tt.want {
				t.Errorf("after Set(%s):\n got  %s\n want %s", tt.path, got, tt.want)
			}
			got, ok := p.Get(res)
			want := tt.value
			if l, isList := want.([]any); isList {
				want = l[0]
			}
			if !ok || (!isFiltered(p) && !reflect.DeepEqual(got, want)) {
				t.Errorf("Get after Set = %v, %v; want %v", got, ok, want)
			}
		})
	}
}

func isFiltered(p *Path) bool { return p.steps[len(p.steps)-1].filtered() }

func TestSetNil(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name string
		in   string
		path string
		want string
	}{
		{
			name: "prunes emptied parents", in: `{"resourceType":"Patient","address":[{"line":["a"]}]}`,
			path: "address[0].line[0]", want: `{"resourceType":"Patient"}`,
		},
		{
			name: "keeps parents with other data", in: `{"resourceType":"Patient","address":[{"line":["a"],"city":"c"}]}`,
			path: "address[0].line[0]", want: `{"address":[{"city":"c"}],"resourceType":"Patient"}`,
		},
		{
			name: "removes one item of a list", in: `{"resourceType":"Patient","name":[{"given":["a","b","c"]}]}`,
			path: "name[0].given[1]", want: `{"name":[{"given":["a","c"]}],"resourceType":"Patient"}`,
		},
		{
			name: "item left with only its discriminators goes", in: `{"resourceType":"Patient","telecom":[{"system":"email","value":"e"},{"system":"phone","use":"home","value":"p"}]}`,
			path: "telecom.where(system='phone' and use='home').value", want: `{"resourceType":"Patient","telecom":[{"system":"email","value":"e"}]}`,
		},
		{
			name: "item with more than its discriminators stays", in: `{"resourceType":"Patient","telecom":[{"system":"phone","value":"p","rank":1}]}`,
			path: "telecom.where(system='phone').value", want: `{"resourceType":"Patient","telecom":[{"rank":1,"system":"phone"}]}`,
		},
		{
			name: "extension goes with its value", in: `{"resourceType":"Patient","extension":[{"url":"u","valueString":"x"}],"id":"1"}`,
			path: "extension('u').valueString", want: `{"id":"1","resourceType":"Patient"}`,
		},
		{
			name: "dotted discriminator", in: `{"resourceType":"Patient","identifier":[{"type":{"coding":[{"code":"MR"}]},"value":"1"}]}`,
			path: "identifier.where(type.coding.code='MR').value", want: `{"resourceType":"Patient"}`,
		},
		{
			name: "dotted discriminator with more data stays", in: `{"resourceType":"Patient","identifier":[{"type":{"text":"t","coding":[{"code":"MR"}]},"value":"1"}]}`,
			path: "identifier.where(type.coding.code='MR').value", want: `{"identifier":[{"type":{"coding":[{"code":"MR"}],"text":"t"}}],"resourceType":"Patient"}`,
		},
		{
			name: "missing is a no-op", in: `{"resourceType":"Patient","name":[{"family":"f"}]}`,
			path: "name.where(use='official').given[0]", want: `{"name":[{"family":"f"}],"resourceType":"Patient"}`,
		},
		{
			name: "first item without index", in: `{"resourceType":"Patient","name":[{"given":["a","b"]}]}`,
			path: "name.given", want: `{"name":[{"given":["b"]}],"resourceType":"Patient"}`,
		},
		{
			name: "single object", in: `{"resourceType":"Patient","maritalStatus":{"coding":[{"code":"M"}]}}`,
			path: "maritalStatus.coding[0].code", want: `{"resourceType":"Patient"}`,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			res := decode(t, tt.in)
			if err := MustCompile(tt.path).Set(res, nil); err != nil {
				t.Fatalf("Set(%s, nil): %v", tt.path, err)
			}
			if got := canon(t, res); got != tt.want {
				t.Errorf("after Set(%s, nil):\n got  %s\n want %s", tt.path, got, tt.want)
			}
		})
	}
}

func TestSetEmptyListRemovesAll(t *testing.T) {
	t.Parallel()
	res := decode(t, `{"resourceType":"Patient","name":[{"given":["a","b"],"family":"f"}]}`)
	if err := MustCompile("name[0].given").Set(res, []any{}); err != nil {
		t.Fatal(err)
	}
	if got, want := canon(t, res), `{"name":[{"family":"f"}],"resourceType":"Patient"}`; got != want {
		t.Errorf("got %s, want %s", got, want)
	}
}

func TestCompileIn(t *testing.T) {
	t.Parallel()
	item := map[string]any{}
	if err := MustCompile("given").Set(item, "a"); err != nil {
		t.Fatal(err)
	}
	if got := canon(t, item); got != `{"given":"a"}` {
		t.Errorf("without a context, an unknown element is single: got %s", got)
	}
	item = map[string]any{}
	p, err := CompileIn("HumanName", "given")
	if err != nil {
		t.Fatal(err)
	}
	if err := p.Set(item, "a"); err != nil {
		t.Fatal(err)
	}
	if got := canon(t, item); got != `{"given":["a"]}` {
		t.Errorf("in HumanName, given repeats: got %s", got)
	}
	item = map[string]any{}
	p, _ = CompileIn("Patient.contact", "telecom.where(system='phone').value")
	if err := p.Set(item, "1"); err != nil {
		t.Fatal(err)
	}
	if got := canon(t, item); got != `{"telecom":[{"system":"phone","value":"1"}]}` {
		t.Errorf("in Patient.contact: got %s", got)
	}
}

func TestCompileErrors(t *testing.T) {
	t.Parallel()
	tests := []struct {
		expr    string
		wantPos int // 1-based column
		wantMsg string
	}{
		{"", 1, "empty path"},
		{"   ", 4, "empty path"},
		{"name.", 6, "expected an element name"},
		{".name", 1, "expected an element name"},
		{"a..b", 3, "expected an element name"},
		{"name[x]", 6, "expected an index"},
		{"name[-1]", 6, "expected an index"},
		{"name[01]", 6, "leading zero"},
		{"name[0", 7, "expected ']'"},
		{"name[0][1]", 8, "only one index"},
		{"name[99999999999]", 6, "too large"},
		{"name.where(use='official'", 26, "expected ')'"},
		{"name.where(use)", 15, "expected '='"},
		{"name.where(use!='x')", 15, "expected '='"},
		{"name.where(use='x' or use='y')", 20, "expected ')'"},
		{"name.where(use=official)", 16, "expected a literal"},
		{"name.where(use=)", 16, "expected a literal"},
		{"name.where(use=1.)", 16, "malformed number"},
		{"name.where(use='x)", 16, "unterminated string"},
		{`name.where(use='\q')`, 17, `unknown escape`},
		{"name.first()", 6, "function first() is not part of the path language"},
		{"where(use='x')", 1, "where() must follow an element"},
		{"extension(url)", 11, "expected a quoted string"},
		{"extension('')", 11, "extension url is empty"},
		{"name given", 6, "expected '.', '[' or end of path"},
		{"name.given + 'x'", 12, "expected '.', '[' or end of path"},
		{"Patient", 1, "names only a type"},
		{"name.é", 6, "expected an element name, found 'é'"},
		{"name.where", 11, "expected '('"},
		{strings.Repeat("a.", 32) + "b", 65, "more than 32 steps"},
	}
	for _, tt := range tests {
		t.Run(tt.expr, func(t *testing.T) {
			t.Parallel()
			_, err := Compile(tt.expr)
			var se *SyntaxError
			if !errors.As(err, &se) {
				t.Fatalf("Compile(%q) error = %v, want a *SyntaxError", tt.expr, err)
			}
			if se.Pos+1 != tt.wantPos || !strings.Contains(se.Msg, tt.wantMsg) {
				t.Errorf("Compile(%q) = column %d %q, want column %d %q", tt.expr, se.Pos+1, se.Msg, tt.wantPos, tt.wantMsg)
			}
			if !strings.Contains(se.Error(), "column ") {
				t.Errorf("Error() = %q does not name the column", se.Error())
			}
		})
	}
}

func TestStringAndSegments(t *testing.T) {
	t.Parallel()
	tests := []struct {
		in   string
		want string
		segs []Segment
	}{
		{"name . where( use = 'official' ) . given [ 0 ]", "name.where(use='official').given[0]", []Segment{
			{Name: "name", Index: -1, Where: []Cond{{Field: "use", Value: "official"}}},
			{Name: "given", Index: 0},
		}},
		{"telecom.where(system='phone').where(use='home').value", "telecom.where(system='phone' and use='home').value", []Segment{
			{Name: "telecom", Index: -1, Where: []Cond{{Field: "system", Value: "phone"}, {Field: "use", Value: "home"}}},
			{Name: "value", Index: -1},
		}},
		{`extension('http://x.org/a\'b').valueString`, `extension('http://x.org/a\'b').valueString`, []Segment{
			{Name: "extension", Extension: "http://x.org/a'b", Index: -1},
			{Name: "valueString", Index: -1},
		}},
		{"identifier.where(type.coding.code='MR' and period.end=false and rank=-1.5).value", "identifier.where(type.coding.code='MR' and period.end=false and rank=-1.5).value", []Segment{
			{Name: "identifier", Index: -1, Where: []Cond{{Field: "type.coding.code", Value: "MR"}, {Field: "period.end", Value: "false", Kind: Bool}, {Field: "rank", Value: "-1.5", Kind: Number}}},
			{Name: "value", Index: -1},
		}},
		{"Patient.address[0].line[1]", "Patient.address[0].line[1]", []Segment{
			{Name: "address", Index: 0}, {Name: "line", Index: 1},
		}},
		{`name.where(text='\u00e9\n')`, `name.where(text='é\n')`, []Segment{
			{Name: "name", Index: -1, Where: []Cond{{Field: "text", Value: "é\n"}}},
		}},
	}
	for _, tt := range tests {
		t.Run(tt.in, func(t *testing.T) {
			t.Parallel()
			p, err := Compile(tt.in)
			if err != nil {
				t.Fatal(err)
			}
			if p.String() != tt.want {
				t.Errorf("String() = %s, want %s", p.String(), tt.want)
			}
			if !reflect.DeepEqual(p.Segments(), tt.segs) {
				t.Errorf("Segments() = %+v, want %+v", p.Segments(), tt.segs)
			}
		})
	}
}

func TestConcurrentUse(t *testing.T) {
	t.Parallel()
	p := MustCompile("name.where(use='official').given[0]")
	done := make(chan struct{})
	for i := 0; i < 4; i++ {
		go func() {
			defer func() { done <- struct{}{} }()
			for j := 0; j < 200; j++ {
				res := map[string]any{"resourceType": []string{"Patient", "Practitioner"}[j%2]}
				if err := p.Set(res, "x"); err != nil {
					t.Error(err)
					return
				}
				if v, _ := p.Get(res); v != "x" {
					t.Errorf("Get = %v", v)
					return
				}
			}
		}()
	}
	for i := 0; i < 4; i++ {
		<-done
	}
}

func TestElementsTable(t *testing.T) {
	t.Parallel()
	tests := []struct {
		ctx, name string
		want      elem
		known     bool
	}{
		{"Patient", "name", elem{typ: "HumanName", many: true}, true},
		{"HumanName", "given", elem{many: true}, true},
		{"HumanName", "family", elem{}, true},
		{"Patient", "maritalStatus", elem{typ: "CodeableConcept"}, true},
		{"Patient", "contact", elem{typ: "Patient.contact", many: true}, true},
		{"Patient.contact", "telecom", elem{typ: "ContactPoint", many: true}, true},
		{"Questionnaire.item", "item", elem{typ: "Questionnaire.item", many: true}, true},
		{"Observation", "valueQuantity", elem{typ: "Quantity"}, true},
		{"Extension", "url", elem{}, true},
		{"Patient", "nonsense", elem{}, false},
		{"", "name", elem{}, false},
	}
	for _, tt := range tests {
		e, known := lookup(tt.ctx, tt.name)
		if e != tt.want || known != tt.known {
			t.Errorf("lookup(%q, %q) = %+v, %v; want %+v, %v", tt.ctx, tt.name, e, known, tt.want, tt.known)
		}
	}
}
