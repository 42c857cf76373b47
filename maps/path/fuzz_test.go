package path

import (
	"bytes"
	"encoding/json"
	"errors"
	"reflect"
	"testing"
)

func FuzzCompile(f *testing.F) {
	for _, s := range []string{
		"name.where(use='official').given[0]",
		"telecom.where(system='phone' and use='home').value",
		"extension('http://example.org/ext').valueString",
		"identifier.where(type.coding.code='MR').value",
		"Patient.address[0].line[1]",
		`name.where(text='a\'b\\c\u00e9')`,
		"telecom.where(rank=-1.5 and x=true)",
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, expr string) {
		p, err := Compile(expr)
		if err != nil {
			var se *SyntaxError
			if !errors.As(err, &se) || se.Pos < 0 || se.Pos > len(expr) {
				t.Fatalf("Compile(%q) error %v is not a *SyntaxError with a position inside the text", expr, err)
			}
			return
		}
		q, err := Compile(p.String())
		if err != nil {
			t.Fatalf("canonical %q of %q does not compile: %v", p.String(), expr, err)
		}
		if q.String() != p.String() {
			t.Fatalf("canonical text is not stable: %q -> %q", p.String(), q.String())
		}
		if !reflect.DeepEqual(p.Segments(), q.Segments()) {
			t.Fatalf("segments differ after recompiling %q", p.String())
		}
	})
}

func FuzzSetGet(f *testing.F) {
	seeds := []struct{ expr, res, val string }{
		{"name.where(use='official').given[0]", `{"resourceType":"Patient"}`, "Ann"},
		{"name.where(use='official').given[1]", `{"resourceType":"Patient","name":[{"use":"official","given":["A"]}]}`, "B"},
		{"telecom.where(system='phone' and use='home').value", `{"resourceType":"Patient","telecom":[{"system":"phone"}]}`, "1"},
		{"extension('u').valueString", `{"resourceType":"Patient","extension":[{"url":"v"}]}`, "x"},
		{"identifier.where(type.coding.code='MR').value", `{"resourceType":"Patient","identifier":[{"type":{"coding":[{"code":"MR"},{"code":"X"}]}}]}`, "7"},
		{"address[0].line[1]", `{"resourceType":"Patient","address":[{"line":["a"]}]}`, "b"},
		{"contact.name.given", `{"resourceType":"Patient","contact":[{},{"name":{"given":["x"]}}]}`, "g"},
		{"a.b[0]", `{"a":[null,"s",{"b":[]}]}`, "x"},
	}
	for _, s := range seeds {
		f.Add(s.expr, []byte(s.res), s.val)
	}
	f.Fuzz(func(t *testing.T, expr string, resJSON []byte, val string) {
		p, err := Compile(expr)
		if err != nil {
			return
		}
		d := json.NewDecoder(bytes.NewReader(resJSON))
		d.UseNumber()
		var res map[string]any
		if d.Decode(&res) != nil || res == nil {
			return
		}
		before, _ := json.Marshal(res)
		if err := p.Set(res, val); err != nil {
			if after, _ := json.Marshal(res); !bytes.Equal(before, after) {
				t.Fatalf("Set(%s) failed (%v) but changed the resource:\n%s\n%s", p, err, before, after)
			}
			return
		}
		got, ok := p.Get(res)
		if !ok || got != val {
			after, _ := json.Marshal(res)
			t.Fatalf("Set(%s, %q) then Get = %v, %v\nbefore %s\nafter  %s", p, val, got, ok, before, after)
		}
		if err := p.Set(res, nil); err != nil {
			t.Fatalf("Set(%s, nil): %v", p, err)
		}
	})
}
