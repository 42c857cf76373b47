package corpus

import (
	"strings"
	"testing"
)

// TestEverySampleHasASource holds the corpus to its rule: every file is
// listed in SOURCES.md by its path, so its public address is known.
func TestEverySampleHasASource(t *testing.T) {
	t.Parallel()
	sources, err := Read("SOURCES.md")
	if err != nil {
		t.Fatal(err)
	}
	files, err := Files(".")
	if err != nil {
		t.Fatal(err)
	}
	if len(files) < 60 {
		t.Fatalf("the corpus holds %d files, want at least 60", len(files))
	}
	for _, f := range files {
		if !strings.Contains(string(sources), "`"+f+"`") {
			t.Errorf("%s is not listed in SOURCES.md", f)
		}
	}
}

func TestContexts(t *testing.T) {
	t.Parallel()
	files, err := Contexts()
	if err != nil {
		t.Fatal(err)
	}
	var published, changed int
	for _, f := range files {
		switch {
		case strings.HasPrefix(f, "dataverse/contexts/"):
			published++
		case strings.HasPrefix(f, "modified/dataverse/"):
			changed++
		default:
			t.Errorf("%s is not a context sample", f)
		}
		if strings.HasSuffix(f, ".response.http") || strings.HasSuffix(f, ".request.http") {
			t.Errorf("%s is a Web API message, not a context", f)
		}
	}
	if published == 0 || changed == 0 {
		t.Fatalf("%d published and %d changed contexts, want some of each", published, changed)
	}
}

func TestChangedFrom(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name, rel, original string
		want                bool
	}{
		{name: "changed copy", rel: "modified/dataverse/a-b.large.json", original: "dataverse/contexts/a-b.json", want: true},
		{name: "another sample", rel: "modified/dataverse/a-bc.large.json", original: "dataverse/contexts/a-b.json", want: false},
		{name: "same name is not a change", rel: "modified/dataverse/a-b.json", original: "dataverse/contexts/a-b.json", want: false},
	}
	for _, tt := range tests {
		if got := ChangedFrom(tt.rel, tt.original); got != tt.want {
			t.Errorf("%s: ChangedFrom(%s, %s) = %v, want %v", tt.name, tt.rel, tt.original, got, tt.want)
		}
	}
}

func TestFHIRSplitsBundles(t *testing.T) {
	t.Parallel()
	rs, err := FHIR()
	if err != nil {
		t.Fatal(err)
	}
	seen := map[string]bool{}
	var entries int
	for _, r := range rs {
		if seen[r.Key] {
			t.Errorf("%s listed twice", r.Key)
		}
		seen[r.Key] = true
		if strings.Contains(r.Key, "#") {
			entries++
		}
		if strings.Contains(string(r.JSON[:min(len(r.JSON), 200)]), `"resourceType": "Bundle"`) {
			t.Errorf("%s is a Bundle, want its entries", r.Key)
		}
	}
	if entries == 0 || len(rs) == entries {
		t.Fatalf("%d resources, %d of them Bundle entries: want both kinds", len(rs), entries)
	}
}
