package maps

import (
	"bytes"
	"encoding/json"
	"math"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// The own-write and base hashes are stored: AppendJSON must write the
// very bytes json.Marshal writes, or hashes made before and after an
// upgrade would differ.
func TestAppendJSONMatchesMarshal(t *testing.T) {
	values := []any{
		nil, true, false, "", "plain text 123", "Müller", "a<b", "x&y", "q\"uote", `back\slash`, "tab\there", "line\u2028sep", "\x7f", "bad \xff utf-8",
		0.0, math.Copysign(0, -1), 1.0, -1.0, 42.5, 1e-6, 9.99e-7, 1e20, 1e21, 123456789012345678.0, 0.1 + 0.2, -3.25e-5,
		[]any{"a", 1.0, nil}, map[string]any{"b": 1.0, "a": []any{"x"}}, []any{}, []any(nil), map[string]any{}, map[string]any(nil),
		json.Number("0"), json.Number("-0"), json.Number("1.50"), json.Number("1e5"), json.Number("-2.5E-3"), json.Number(""),
		map[string]any{"z<": "a&b", "é": json.Number("12"), "a": map[string]any{"c": []any{true, nil, "x\u2029"}}, "": false},
		map[string]any{"given": []any{"Ann", "Marie"}, "use": "official"},
		[]any{map[string]string{"b": "2", "a": "1"}, []string{"x"}, 3, int64(-4), uint8(5)},
		[]any{[]string{}, []string(nil), []string{"a<b", "é", "q\""}, 0, -1, math.MaxInt64, math.MinInt64, int64(math.MinInt64)},
		map[string]any{"k01": 1.0, "k02": 2.0, "k03": 3.0, "k04": 4.0, "k05": 5.0, "k06": 6.0, "k07": 7.0, "k08": 8.0,
			"k09": 9.0, "k10": 10.0, "k11": 11.0, "k12": 12.0, "k13": 13.0, "k14": 14.0, "k15": 15.0, "k16": 16.0, "k17": 17.0},
	}
	for _, v := range values {
		want, err := json.Marshal(v)
		if err != nil {
			t.Fatalf("%#v: %v", v, err)
		}
		got, err := AppendJSON([]byte("prefix"), v)
		if err != nil || string(got) != "prefix"+string(want) {
			t.Errorf("AppendJSON(%#v) = %q, %v; json.Marshal writes %q", v, got, err, want)
		}
	}
	for _, v := range []any{math.NaN(), math.Inf(1), json.Number("01"), json.Number("1."), json.Number(" 1"), json.Number("0x1"),
		[]any{"a", math.NaN()}, map[string]any{"a": 1.0, "b": map[string]any{"c": math.Inf(-1)}}} {
		if _, err := json.Marshal(v); err == nil {
			t.Fatalf("json.Marshal(%#v) succeeds; the case is meant to be unencodable", v)
		}
		if got, err := AppendJSON([]byte("p"), v); err == nil || string(got) != "p" {
			t.Errorf("AppendJSON(%#v) = %q, %v; want the input unchanged and an error", v, got, err)
		}
	}
}

// BenchmarkAppendJSON compares AppendJSON with json.Marshal on the
// values the base state hashes most: a Patient's names and telecoms as
// decoded (json.Number).
func BenchmarkAppendJSON(b *testing.B) {
	var v any
	d := json.NewDecoder(strings.NewReader(`[{"use":"official","family":"Chalmers","given":["Peter","James"]},{"use":"usual","given":["Jim"]},` +
		`{"system":"phone","value":"(03) 5555 6473","use":"work","rank":1}]`))
	d.UseNumber()
	if err := d.Decode(&v); err != nil {
		b.Fatal(err)
	}
	b.Run("AppendJSON", func(b *testing.B) {
		var buf []byte
		for b.Loop() {
			buf, _ = AppendJSON(buf[:0], v)
		}
	})
	b.Run("json.Marshal", func(b *testing.B) {
		for b.Loop() {
			if _, err := json.Marshal(v); err != nil {
				b.Fatal(err)
			}
		}
	})
}

// BenchmarkDecodeJSON compares DecodeJSON with encoding/json (UseNumber)
// on HL7's example Patient, as the FHIR client decodes every resource it
// reads.
func BenchmarkDecodeJSON(b *testing.B) {
	data, err := os.ReadFile(filepath.Join("..", "testdata", "conformance", "fhir", "r4", "patient-example.json"))
	if err != nil {
		b.Fatal(err)
	}
	b.Run("DecodeJSON", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			if _, err := DecodeJSON(data); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("encoding/json", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			d := json.NewDecoder(bytes.NewReader(data))
			d.UseNumber()
			var m map[string]any
			if err := d.Decode(&m); err != nil {
				b.Fatal(err)
			}
		}
	})
}
