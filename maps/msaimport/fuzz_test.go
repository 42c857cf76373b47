package msaimport

import (
	"bytes"
	"encoding/json"
	"reflect"
	"testing"

	"github.com/theory/jsonpath"

	"github.com/fhirsync/fhirsync/maps/fhirpath"
	"github.com/fhirsync/fhirsync/maps/path"
)

// differentialPatient is the resource the translator's output is checked on:
// written by hand, with the elements the agent's default maps select
// (names, telecoms, identifiers, addresses, an extension).
const differentialPatient = `{
  "resourceType": "Patient",
  "id": "p1",
  "active": true,
  "gender": "female",
  "birthDate": "1974-12-25",
  "name": [
    {"use": "official", "family": "Chalmers", "given": ["Peter", "James"]},
    {"use": "usual", "given": ["Jim"]},
    {"use": "maiden", "family": "Windsor", "given": ["Peter", "James"], "period": {"end": "2002"}}
  ],
  "telecom": [
    {"use": "home"},
    {"system": "phone", "value": "(03) 5555 6473", "use": "work", "rank": 1},
    {"system": "phone", "value": "(03) 3410 5613", "use": "mobile", "rank": 2},
    {"system": "email", "value": "p@example.org"}
  ],
  "identifier": [
    {"use": "usual", "type": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v2-0203", "code": "MR"}], "text": "MR"}, "system": "urn:oid:1.2.36.146.595.217.0.1", "value": "12345"},
    {"system": "urn:ssn", "value": "999-99-9999"}
  ],
  "address": [
    {"use": "home", "line": ["534 Erewhon St", "Unit 2"], "city": "PleasantVille", "postalCode": "3999", "period": {"start": "1974-12-25"}},
    {"city": "Nowhere"}
  ],
  "extension": [
    {"url": "http://x/y", "valueString": "ext"},
    {"url": "http://x/z", "valueBoolean": true}
  ],
  "communication": [{"language": {"text": "Dutch"}, "preferred": true}, {"language": {"text": "English"}}],
  "contact": [{"name": {"family": "du Marché", "given": ["Bénédicte"]}}]
}`

// translateSeeds are the fuzz target's seeds beside those in
// testdata/fuzz/FuzzTranslate.
var translateSeeds = []string{
	"$.name[0].given[0]", "$.name[?(@.use=='official')].family", "$.telecom[?(@.system=='phone' && @.use=='work')].value",
	"$.identifier[?(@.system=='urn:ssn')].value", "$.extension[?(@.url=='http://x/y')].valueString", "$..family",
	"$.address[?(!@.use)].city", "$.address[0].line[1]", "$.name[-1].family", "$.name[1:3].family", "$.name[*].family",
	"$.telecom[?(@.rank < 2)].value", "$.communication[?(@.preferred==true)].language.text", "$['gender']",
	"$.identifier[?(@.type.text=='MR')].value", "$.telecom[?(@.system=='phone' || @.system=='email')].value",
}

// FuzzTranslate checks that Translate never panics, that what it translates
// compiles, and that on differentialPatient the translation selects what
// the JSONPath selects (by github.com/theory/jsonpath, an RFC 9535
// implementation), where the JSONPath selects anything and the
// translation carries no note about a difference in meaning.
func FuzzTranslate(f *testing.F) {
	for _, s := range translateSeeds {
		f.Add(s)
	}
	res := decode(f, differentialPatient)
	f.Fuzz(func(t *testing.T, in string) {
		tr := Translate(in)
		if tr.FHIRPath == "" {
			if tr.Reason == "" {
				t.Fatalf("Translate(%q): no translation and no reason", in)
			}
			return
		}
		expr, err := fhirpath.Compile(tr.FHIRPath)
		if err != nil {
			t.Fatalf("Translate(%q) = %q, which does not compile: %v", in, tr.FHIRPath, err)
		}
		if tr.Writable {
			if _, err := path.Compile(tr.FHIRPath); err != nil {
				t.Fatalf("Translate(%q) = %q is marked writable but the path language refuses it: %v", in, tr.FHIRPath, err)
			}
		}
		if len(tr.Notes) > 0 {
			return
		}
		jp, err := jsonpath.Parse(in)
		if err != nil {
			return // outside RFC 9535 (the .NET dialect is looser): no oracle
		}
		want := flatten(jp.Select(res))
		if len(want) == 0 {
			return // JSONPath member names do not step into arrays; FHIRPath does
		}
		got, err := expr.EvalResource(res)
		if err != nil {
			return
		}
		if !sameJSON(t, got, want) {
			t.Fatalf("Translate(%q) = %q selects %v; the JSONPath selects %v", in, tr.FHIRPath, got, want)
		}
	})
}

// TestTranslateAgreesWithJSONPath runs the differential check of
// FuzzTranslate on its seeds and states that each of them selects something,
// so that the check is not vacuous.
func TestTranslateAgreesWithJSONPath(t *testing.T) {
	t.Parallel()
	res := decode(t, differentialPatient)
	for _, in := range translateSeeds {
		tr := Translate(in)
		if tr.FHIRPath == "" || len(tr.Notes) > 0 {
			continue
		}
		jp, err := jsonpath.Parse(in)
		if err != nil {
			continue
		}
		want := flatten(jp.Select(res))
		got, err := fhirpath.MustCompile(tr.FHIRPath).EvalResource(res)
		if err != nil {
			t.Fatalf("%s (%s): %v", in, tr.FHIRPath, err)
		}
		if len(want) == 0 || !sameJSON(t, got, want) {
			t.Errorf("%s: FHIRPath %s selects %v, JSONPath %v", in, tr.FHIRPath, got, want)
		}
	}
}

func decode(tb testing.TB, s string) map[string]any {
	tb.Helper()
	dec := json.NewDecoder(bytes.NewReader([]byte(s)))
	dec.UseNumber()
	var m map[string]any
	if err := dec.Decode(&m); err != nil {
		tb.Fatal(err)
	}
	return m
}

// flatten spreads selected arrays into their items, as FHIRPath
// collections are flat.
func flatten(nodes []any) []any {
	var out []any
	for _, n := range nodes {
		if a, ok := n.([]any); ok {
			out = append(out, a...)
			continue
		}
		out = append(out, n)
	}
	return out
}

func sameJSON(t *testing.T, a, b []any) bool {
	t.Helper()
	enc := func(v []any) any {
		raw, err := json.Marshal(v)
		if err != nil {
			t.Fatal(err)
		}
		var out any
		if err := json.Unmarshal(raw, &out); err != nil {
			t.Fatal(err)
		}
		return out
	}
	return reflect.DeepEqual(enc(a), enc(b))
}
