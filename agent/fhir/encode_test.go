package fhir

import (
	"encoding/json"
	"testing"
)

// TestEncodeWritesWhatMarshalWrites: a resource's body and a batch
// Bundle are the bytes encoding/json.Marshal writes for them (HTML
// characters escaped, keys sorted), written without reflection.
func TestEncodeWritesWhatMarshalWrites(t *testing.T) {
	t.Parallel()
	pat := Resource{"resourceType": "Patient", "id": "p1",
		"text":                 map[string]any{"status": "generated", "div": `<div xmlns="http://www.w3.org/1999/xhtml">Ann &amp; "Bo" Lee</div>`},
		"name":                 []any{map[string]any{"family": "Müller", "given": []any{"Ann", "Marie"}}},
		"birthDate":            "1980-03-01",
		"active":               true,
		"multipleBirthInteger": json.Number("2"),
	}
	raw, err := encode(pat)
	if err != nil {
		t.Fatal(err)
	}
	want, err := json.Marshal(map[string]any(pat))
	if err != nil {
		t.Fatal(err)
	}
	if string(raw) != string(want) {
		t.Errorf("encode =\n%s\njson.Marshal =\n%s", raw, want)
	}
	if _, err := encode(Resource{"id": "x"}); err == nil {
		t.Errorf("a resource without resourceType was encoded")
	}

	entries := []bundleEntry{
		{FullURL: "urn:uuid:0b6e4f1c-3c0d-4f9a-9d51-2f1f3c1b7a10", Resource: raw, Request: bundleRequest{Method: "POST", URL: "Patient", IfNoneExist: "identifier=urn:oid:1.2.36|12345&_tag=a<b"}},
		{Resource: raw, Request: bundleRequest{Method: "PUT", URL: "Patient/p1", IfMatch: `W/"3"`}},
		{Request: bundleRequest{Method: "DELETE", URL: "Patient/p2"}},
	}
	want, err = json.Marshal(struct {
		ResourceType string        `json:"resourceType"`
		Type         string        `json:"type"`
		Entry        []bundleEntry `json:"entry"`
	}{"Bundle", "batch", entries})
	if err != nil {
		t.Fatal(err)
	}
	if got := batchBundle(entries); string(got) != string(want) {
		t.Errorf("batchBundle =\n%s\njson.Marshal =\n%s", got, want)
	}
}
