package maps

import (
	"bytes"
	"encoding/json"
	"reflect"
	"testing"

	"github.com/fhirsync/fhirsync/sandbox/synth"
)

func stdDecode(data []byte) (map[string]any, error) {
	var v map[string]any
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.UseNumber()
	if err := dec.Decode(&v); err != nil {
		return nil, err
	}
	if dec.InputOffset() != int64(len(bytes.TrimRight(data, " \t\r\n"))) {
		return nil, errTrailing
	}
	if v == nil {
		return nil, errTrailing
	}
	return v, nil
}

var errTrailing = &json.SyntaxError{}

func TestJSONMatchesEncodingJSON(t *testing.T) {
	t.Parallel()
	g := synth.New(3)
	docs := [][]byte{
		[]byte(`{"a":"\u00e9\ud83d\ude00\ud800x\/\b\f\n\r\t\"\\","b":[1,-0.5,2e10,1E-3,0],"c":{"d":null,"e":true,"f":false},"g":[],"h":{}}`),
		[]byte("{\"bad\":\"\xff\xfe ok\",\"html\":\"<a & b>\",\"ls\":\"\u2028\u2029\",\"ctl\":\"\\u0001\"}"),
		[]byte(`{"dup":1,"dup":2}`),
	}
	for i := range 300 {
		for _, r := range []map[string]any{g.Patient(i), g.Observation(i), g.Encounter(i)} {
			raw, _ := json.Marshal(r)
			docs = append(docs, raw)
		}
	}
	for _, d := range docs {
		want, err := stdDecode(d)
		if err != nil {
			t.Fatalf("test document invalid: %v", err)
		}
		got, err := DecodeJSON(d)
		if err != nil {
			t.Fatalf("DecodeJSON(%.60s): %v", d, err)
		}
		if !reflect.DeepEqual(got, want) {
			t.Fatalf("DecodeJSON(%.60s) differs from encoding/json", d)
		}
		enc, err := EncodeJSON(got)
		if err != nil {
			t.Fatal(err)
		}
		std, _ := json.Marshal(got)
		if !bytes.Equal(enc, std) {
			t.Fatalf("EncodeJSON differs from json.Marshal:\n%s\n%s", enc, std)
		}
	}
}

func TestDecodeJSONRejectsMalformed(t *testing.T) {
	t.Parallel()
	for _, s := range []string{``, `[]`, `{`, `{"a"}`, `{"a":}`, `{"a":01}`, `{"a":1.}`, `{"a":-}`, `{"a":1e}`, `{"a":tru}`, "{\"a\":\"\x01\"}", `{"a":"\x"}`, `{"a":"\u12"}`, `{"a":1}x`, `{"a":[1,]}`, `{"a":1,}`, `{'a':1}`} {
		if _, err := DecodeJSON([]byte(s)); err == nil {
			t.Errorf("DecodeJSON(%q) succeeded", s)
		}
	}
}

// FuzzDecodeJSON checks DecodeJSON and EncodeJSON against encoding/json.
func FuzzDecodeJSON(f *testing.F) {
	f.Add([]byte(`{"a":[1,2.50,"x\u00e9"],"b":{"c":null}}`))
	f.Add([]byte("{\"s\":\"\xff\\ud800\"}"))
	raw, _ := json.Marshal(synth.New(1).Patient(1))
	f.Add(raw)
	f.Fuzz(func(t *testing.T, data []byte) {
		want, werr := stdDecode(data)
		got, gerr := DecodeJSON(data)
		if (werr == nil) != (gerr == nil) {
			t.Fatalf("encoding/json error %v, DecodeJSON error %v", werr, gerr)
		}
		if werr != nil {
			return
		}
		if !reflect.DeepEqual(got, want) {
			t.Fatalf("decoded values differ")
		}
		enc, err := EncodeJSON(got)
		std, serr := json.Marshal(got)
		if (err == nil) != (serr == nil) || !bytes.Equal(enc, std) {
			t.Fatalf("encodings differ:\n%s\n%s", enc, std)
		}
	})
}
