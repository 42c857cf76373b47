package medplum_test

import (
	"encoding/json"
	"io"
	"net/http"
	"strings"
	"testing"

	"github.com/fhirsync/fhirsync/sandbox/medplum"
)

func call(t *testing.T, method, u, body string) (int, map[string]any) {
	t.Helper()
	req, err := http.NewRequest(method, u, strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	if body != "" {
		req.Header.Set("Content-Type", "application/fhir+json")
	}
	res, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer res.Body.Close()
	b, _ := io.ReadAll(res.Body)
	var m map[string]any
	if len(b) > 0 {
		if err := json.Unmarshal(b, &m); err != nil {
			t.Fatalf("%s %s: %v: %s", method, u, err, b)
		}
	}
	return res.StatusCode, m
}

func versions(t *testing.T, bundle map[string]any) []string {
	t.Helper()
	var out []string
	entries, _ := bundle["entry"].([]any)
	for _, e := range entries {
		resp := e.(map[string]any)["response"].(map[string]any)
		out = append(out, resp["etag"].(string))
	}
	return out
}

// TestWrapperFillsRouterGaps checks what server.js adds to the router:
// history at every level in a stable order, deletions in history, and
// /metadata.
func TestWrapperFillsRouterGaps(t *testing.T) {
	t.Parallel()
	base := medplum.Start(t)
	st, p := call(t, "POST", base+"/Patient", `{"resourceType":"Patient","active":true}`)
	if st != 201 {
		t.Fatalf("create: %d", st)
	}
	id := p["id"].(string)
	p["active"] = false
	b, _ := json.Marshal(p)
	if st, _ := call(t, "PUT", base+"/Patient/"+id, string(b)); st != 200 {
		t.Fatalf("update: %d", st)
	}

	// The router's own instance history reverses its array on each call;
	// the wrapper's answer is the same every time, newest first.
	_, h1 := call(t, "GET", base+"/Patient/"+id+"/_history", "")
	_, h2 := call(t, "GET", base+"/Patient/"+id+"/_history", "")
	v1, v2 := versions(t, h1), versions(t, h2)
	if len(v1) != 2 || strings.Join(v1, ",") != strings.Join(v2, ",") {
		t.Fatalf("instance history changed between calls: %v then %v", v1, v2)
	}
	first := h1["entry"].([]any)[0].(map[string]any)
	if first["request"].(map[string]any)["method"] != "PUT" {
		t.Errorf("newest entry is %v, want the update", first["request"])
	}

	if st, _ := call(t, "DELETE", base+"/Patient/"+id, ""); st != 200 {
		t.Fatalf("delete: %d", st)
	}
	for _, path := range []string{"/Patient/_history", "/_history"} {
		st, h := call(t, "GET", base+path+"?_since=2000-01-01T00:00:00Z&_count=2", "")
		if st != 200 || h["type"] != "history" {
			t.Fatalf("%s: %d %v", path, st, h["type"])
		}
		entries := h["entry"].([]any)
		e0 := entries[0].(map[string]any)
		if e0["request"].(map[string]any)["method"] != "DELETE" || e0["resource"] != nil {
			t.Errorf("%s: newest entry %v, want the deletion without a resource", path, e0)
		}
		var next string
		for _, l := range h["link"].([]any) {
			if l.(map[string]any)["relation"] == "next" {
				next = l.(map[string]any)["url"].(string)
			}
		}
		if len(entries) != 2 || next == "" {
			t.Fatalf("%s: %d entries, next %q; want a page of 2 and a next link", path, len(entries), next)
		}
		_, page2 := call(t, "GET", next, "")
		if n := len(page2["entry"].([]any)); n != 1 {
			t.Errorf("%s page 2: %d entries, want the create", path, n)
		}
	}
	if st, cs := call(t, "GET", base+"/metadata", ""); st != 200 || cs["resourceType"] != "CapabilityStatement" {
		t.Errorf("metadata: %d %v", st, cs["resourceType"])
	}
	if st, _ := call(t, "GET", base+"/Patient/_history?_since=garbage", ""); st != 400 {
		t.Errorf("bad _since: %d, want 400", st)
	}
}
