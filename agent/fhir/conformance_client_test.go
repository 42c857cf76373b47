package fhir

import (
	"context"
	"encoding/json"
	"fmt"
	"net/url"
	"sort"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/fhirsync/fhirsync/sandbox/corpus"
)

// fhirExpectation is what a corpus resource is expected to do on a round
// trip through a server and the client. The zero value is the default:
// the server stores it and every read gives back every element unchanged
// apart from meta.versionId and meta.lastUpdated.
type fhirExpectation struct {
	// refusedBy names the targets that refuse the resource, with why.
	refusedBy map[string]string
}

// fhirExpectations holds every sample whose expectation is not the
// default, keyed by its path under testdata/conformance (a Bundle's
// entries by "<file>#<Type>/<id>"). A key that names no sample fails the
// test, so the table cannot go stale.
var fhirExpectations = map[string]fhirExpectation{}

// fhirSample is one resource of the corpus.
type fhirSample struct {
	name string // file, or file#Type/id for a Bundle entry
	res  Resource
}

// loadFHIRCorpus reads every FHIR resource of the public corpus (HL7's R4
// examples, US Core examples, each entry of the Synthea bundles, and the
// hand-changed copies; addresses in testdata/conformance/SOURCES.md).
func loadFHIRCorpus(t *testing.T) []fhirSample {
	t.Helper()
	rs, err := corpus.FHIR()
	if err != nil {
		t.Fatal(err)
	}
	out := make([]fhirSample, 0, len(rs))
	for _, r := range rs {
		res, err := decodeResource(r.JSON)
		if err != nil {
			t.Fatalf("decoding %s: %v", r.Key, err)
		}
		out = append(out, fhirSample{name: r.Key, res: res})
	}
	return out
}

// TestFHIRClientConformance loads every resource of the public corpus into
// each target server through the client and reads it back by read, vread,
// search by _id and instance history, then updates it with If-Match (and
// once more with the stale version, which must be a conflict). Adding a
// file to the corpus adds a case.
func TestFHIRClientConformance(t *testing.T) {
	t.Parallel()
	samples := loadFHIRCorpus(t)
	if len(samples) < 30 {
		t.Fatalf("the FHIR corpus holds %d resources, want at least 30", len(samples))
	}
	known := map[string]bool{}
	for _, s := range samples {
		known[s.name] = true
	}
	for name := range fhirExpectations {
		if !known[name] {
			t.Errorf("expectation for %s, which is not in the corpus", name)
		}
	}
	for _, tg := range targets() {
		t.Run(tg.name, func(t *testing.T) {
			t.Parallel()
			base := tg.start(t)
			c, err := New(Config{BaseURL: base, Timeout: 30 * time.Second})
			if err != nil {
				t.Fatal(err)
			}
			passed := 0
			for _, s := range samples {
				ok := t.Run(s.name, func(t *testing.T) {
					ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
					defer cancel()
					roundTrip(ctx, t, c, tg, s, fhirExpectations[s.name])
				})
				if ok {
					passed++
				}
			}
			t.Logf("%s: %d of %d corpus resources passed", tg.name, passed, len(samples))
		})
	}
}

func roundTrip(ctx context.Context, t *testing.T, c *Client, tg target, s fhirSample, exp fhirExpectation) {
	in := s.res
	typ, id := in.Type(), in.ID()
	if !isTypeName(typ) || !isID(id) {
		t.Fatalf("sample has no resourceType or id (%q, %q)", typ, id)
	}
	stored, err := c.Update(ctx, clone(in), "")
	if reason, refused := exp.refusedBy[tg.name]; refused {
		if err == nil {
			t.Fatalf("stored, but expected to be refused: %s", reason)
		}
		wantClass(t, err, ClassRejected)
		return
	}
	if err != nil {
		t.Fatalf("storing: %v", err)
	}
	check := func(how string, got Resource) {
		t.Helper()
		if d := resourceDiff(in, got, tg.exactDecimals); d != "" {
			t.Errorf("%s: %s", how, d)
		}
	}
	check("stored", stored)
	v1 := stored.VersionID()
	if !tg.versionPattern.MatchString(v1) {
		t.Fatalf("version %q does not match %s", v1, tg.versionPattern)
	}

	got, err := c.Read(ctx, typ, id)
	if err != nil {
		t.Fatalf("read: %v", err)
	}
	check("read", got)
	if got.VersionID() != v1 {
		t.Errorf("read version %q, want %q", got.VersionID(), v1)
	}

	vr, err := c.VRead(ctx, typ, id, v1)
	if err != nil {
		t.Fatalf("vread: %v", err)
	}
	check("vread", vr)

	page, err := c.Search(ctx, typ, url.Values{"_id": {id}})
	if err != nil {
		t.Fatalf("search by _id: %v", err)
	}
	var matches []Resource
	for _, e := range page.Entries {
		if e.Resource != nil && e.SearchMode != "include" && e.SearchMode != "outcome" {
			matches = append(matches, e.Resource)
		}
	}
	if len(matches) != 1 {
		t.Fatalf("search by _id found %d resources, want 1", len(matches))
	}
	check("search by _id", matches[0])

	hist, err := c.InstanceHistory(ctx, typ, id)
	if err != nil {
		t.Fatalf("history: %v", err)
	}
	if len(hist.Entries) == 0 || hist.Entries[0].Resource == nil {
		t.Fatalf("history has no current version")
	}
	if hv := hist.Entries[0].Resource.VersionID(); hv != v1 {
		t.Errorf("newest history entry is version %q, want %q", hv, v1)
	}
	check("history", hist.Entries[0].Resource)

	// Version-aware update: the current version wins, the same version
	// sent again afterwards is a conflict (412), and nothing is lost.
	updated, err := c.Update(ctx, got, v1)
	if err != nil {
		t.Fatalf("update with If-Match %s: %v", v1, err)
	}
	if updated.VersionID() == v1 {
		t.Errorf("update with If-Match kept version %q", v1)
	}
	check("updated with If-Match", updated)
	_, err = c.Update(ctx, got, v1)
	wantClass(t, err, ClassConflict)
	after, err := c.Read(ctx, typ, id)
	if err != nil {
		t.Fatalf("read after update: %v", err)
	}
	check("read after update", after)
	if after.VersionID() != updated.VersionID() {
		t.Errorf("read after the refused update gives version %q, want %q", after.VersionID(), updated.VersionID())
	}
}

// clone deep-copies r through its JSON.
func clone(r Resource) Resource {
	b, err := json.Marshal(r)
	if err != nil {
		panic(err)
	}
	return mustResource(string(b))
}

// resourceDiff compares want and got apart from meta.versionId and
// meta.lastUpdated (a meta left empty by that is dropped) and returns the
// first difference, or "". With exactDecimals false, numbers compare by
// value (a JavaScript server writes 72.50 back as 72.5).
func resourceDiff(want, got Resource, exactDecimals bool) string {
	return diffValue("", stripMeta(map[string]any(want)), stripMeta(map[string]any(got)), exactDecimals)
}

func stripMeta(r map[string]any) map[string]any {
	cp := make(map[string]any, len(r))
	for k, v := range r {
		cp[k] = v
	}
	if m, ok := r["meta"].(map[string]any); ok {
		mm := map[string]any{}
		for k, v := range m {
			if k != "versionId" && k != "lastUpdated" {
				mm[k] = v
			}
		}
		if len(mm) == 0 {
			delete(cp, "meta")
		} else {
			cp["meta"] = mm
		}
	}
	return cp
}

func diffValue(path string, want, got any, exactDecimals bool) string {
	switch w := want.(type) {
	case map[string]any:
		g, ok := got.(map[string]any)
		if !ok {
			return fmt.Sprintf("%s: got %s, want an object", orRoot(path), short(got))
		}
		keys := make([]string, 0, len(w)+len(g))
		for k := range w {
			keys = append(keys, k)
		}
		for k := range g {
			if _, ok := w[k]; !ok {
				keys = append(keys, k)
			}
		}
		sort.Strings(keys)
		for _, k := range keys {
			wv, wok := w[k]
			gv, gok := g[k]
			switch {
			case !gok:
				return fmt.Sprintf("%s: missing, want %s", orRoot(path+"."+k), short(wv))
			case !wok:
				return fmt.Sprintf("%s: added %s", orRoot(path+"."+k), short(gv))
			}
			if d := diffValue(path+"."+k, wv, gv, exactDecimals); d != "" {
				return d
			}
		}
		return ""
	case []any:
		g, ok := got.([]any)
		if !ok || len(g) != len(w) {
			return fmt.Sprintf("%s: got %s, want %s", orRoot(path), short(got), short(want))
		}
		for i := range w {
			if d := diffValue(path+"["+strconv.Itoa(i)+"]", w[i], g[i], exactDecimals); d != "" {
				return d
			}
		}
		return ""
	case json.Number:
		g, ok := got.(json.Number)
		if ok && g == w {
			return ""
		}
		if ok && !exactDecimals {
			wf, err1 := w.Float64()
			gf, err2 := g.Float64()
			if err1 == nil && err2 == nil && wf == gf {
				return ""
			}
		}
		return fmt.Sprintf("%s: got %s, want %s", orRoot(path), short(got), w)
	default:
		if want != got {
			return fmt.Sprintf("%s: got %s, want %s", orRoot(path), short(got), short(want))
		}
		return ""
	}
}

func orRoot(p string) string {
	if p == "" {
		return "(resource)"
	}
	return strings.TrimPrefix(p, ".")
}

// short renders a value for a failure message (corpus data is public
// example data, never PHI).
func short(v any) string {
	b, _ := json.Marshal(v)
	if len(b) > 120 {
		return string(b[:120]) + "…"
	}
	return string(b)
}

// TestResourceDiff holds the comparison the conformance test relies on.
func TestResourceDiff(t *testing.T) {
	t.Parallel()
	base := `{"resourceType":"Patient","id":"p","meta":{"versionId":"1","lastUpdated":"2020-01-01T00:00:00Z","profile":["x"]},"extension":[{"url":"u","valueDecimal":72.50}],"contained":[{"resourceType":"Organization","id":"o"}]}`
	tests := []struct {
		name  string
		got   string
		exact bool
		want  string // substring of the difference; "" for equal
	}{
		{name: "other version and time", got: strings.NewReplacer(`"1"`, `"7"`, `2020`, `2026`).Replace(base), exact: true},
		{name: "decimal text changed", got: strings.Replace(base, "72.50", "72.5", 1), exact: true, want: "extension[0].valueDecimal"},
		{name: "decimal by value", got: strings.Replace(base, "72.50", "72.5", 1), exact: false},
		{name: "decimal value changed", got: strings.Replace(base, "72.50", "72.51", 1), exact: false, want: "valueDecimal"},
		{name: "profile dropped", got: strings.Replace(base, `,"profile":["x"]`, "", 1), exact: true, want: "meta: missing"},
		{name: "contained dropped", got: strings.Replace(base, `,"contained":[{"resourceType":"Organization","id":"o"}]`, "", 1), exact: true, want: "contained: missing"},
		{name: "element added", got: strings.Replace(base, `"id":"p"`, `"id":"p","active":true`, 1), exact: true, want: "active: added"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			d := resourceDiff(mustResource(base), mustResource(tt.got), tt.exact)
			if (tt.want == "") != (d == "") || !strings.Contains(d, tt.want) {
				t.Errorf("diff %q, want %q", d, tt.want)
			}
		})
	}
}
