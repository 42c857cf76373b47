package synth

import (
	"bytes"
	"encoding/json"
	"reflect"
	"regexp"
	"testing"
	"unicode/utf8"
)

func TestDeterministic(t *testing.T) {
	t.Parallel()
	a, b := New(42), New(42)
	// Ask in different orders: records depend only on (seed, index).
	_ = b.Patient(9)
	for i := range 50 {
		if !reflect.DeepEqual(a.Patient(i), b.Patient(i)) {
			t.Fatalf("Patient(%d) differs between two generators with the same seed", i)
		}
		if !reflect.DeepEqual(a.Contact(i), b.Contact(i)) {
			t.Fatalf("Contact(%d) differs between two generators with the same seed", i)
		}
	}
	if reflect.DeepEqual(New(1).Patient(3), New(2).Patient(3)) {
		t.Fatal("different seeds produced the same patient")
	}
}

var fhirID = regexp.MustCompile(`^[A-Za-z0-9\-.]{1,64}$`)

func TestRecordsAreValidJSONShapes(t *testing.T) {
	t.Parallel()
	g := New(7)
	kinds := map[string]func(int) map[string]any{
		"Patient": g.Patient, "Practitioner": g.Practitioner, "Organization": g.Organization,
		"Encounter": g.Encounter, "Observation": g.Observation,
	}
	for want, gen := range kinds {
		for i := range 200 {
			res := gen(i)
			if res["resourceType"] != want {
				t.Fatalf("%s(%d): resourceType %v", want, i, res["resourceType"])
			}
			if id, _ := res["id"].(string); !fhirID.MatchString(id) {
				t.Fatalf("%s(%d): invalid id %q", want, i, id)
			}
			raw, err := json.Marshal(res)
			if err != nil {
				t.Fatalf("%s(%d): %v", want, i, err)
			}
			if !utf8.Valid(raw) {
				t.Fatalf("%s(%d): invalid UTF-8", want, i)
			}
			dec := json.NewDecoder(bytes.NewReader(raw))
			dec.UseNumber()
			var back map[string]any
			if err := dec.Decode(&back); err != nil {
				t.Fatal(err)
			}
			if !reflect.DeepEqual(back, normalize(res)) {
				t.Fatalf("%s(%d) does not survive a JSON round trip", want, i)
			}
		}
	}
}

// normalize turns typed slices/maps into the generic shapes a decoder makes.
func normalize(v any) any {
	raw, _ := json.Marshal(v)
	dec := json.NewDecoder(bytes.NewReader(raw))
	dec.UseNumber()
	var out any
	_ = dec.Decode(&out)
	return out
}

func TestPatientVariety(t *testing.T) {
	t.Parallel()
	g := New(1)
	seen := map[string]int{}
	for i := range 1000 {
		p := g.Patient(i)
		for k := range p {
			seen[k]++
		}
		raw, _ := json.Marshal(p)
		if bytes.ContainsFunc(raw, func(r rune) bool { return r > 127 }) {
			seen["non-ascii"]++
		}
		if bytes.Contains(raw, []byte(`"valueDecimal":`)) {
			seen["decimal-extension"]++
		}
	}
	for _, k := range []string{"name", "telecom", "address", "identifier", "extension", "contained", "_birthDate", "non-ascii", "decimal-extension", "maritalStatus", "generalPractitioner", "communication"} {
		if seen[k] == 0 {
			t.Errorf("no patient among 1000 has %s", k)
		}
	}
	for _, k := range []string{"name", "gender", "birthDate", "telecom", "address"} {
		if seen[k] == 1000 {
			t.Errorf("every patient has %s; some should miss it", k)
		}
	}
}

func TestDecimalKeepsTrailingZeros(t *testing.T) {
	t.Parallel()
	if got := decimal(7250, 2); got != "72.50" {
		t.Fatalf("decimal(7250, 2) = %s, want 72.50", got)
	}
	if got := decimal(36600, 1); got != "366.0" {
		t.Fatalf("decimal(36600, 1) = %s, want 366.0", got)
	}
}
