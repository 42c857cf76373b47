// Package corpus lists and reads the conformance corpus in
// testdata/conformance: public samples of what the real services send
// (Dataverse RemoteExecutionContexts and Web API answers, Azure Health Data
// Services events, HL7's R4 examples, US Core examples, Synthea bundles),
// each listed with its address in testdata/conformance/SOURCES.md.
//
// It owns finding the corpus from any package's tests, the file naming
// rules (hand-changed copies under modified/, named "<original>.<change>.<ext>")
// and splitting Bundles into their entries. It does not decode or judge
// samples: every conformance test states its own expectations.
package corpus

import (
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
)

// Dir returns the corpus directory, found from this source file so that
// tests of any package can use it.
func Dir() string {
	_, file, _, ok := runtime.Caller(0)
	if !ok {
		return filepath.Join("testdata", "conformance")
	}
	return filepath.Join(filepath.Dir(file), "..", "..", "testdata", "conformance")
}

// Files lists the samples under dirs (slash-separated, relative to Dir),
// as sorted slash-separated paths relative to Dir. Dot files and Markdown
// are left out; a directory that does not exist holds none.
func Files(dirs ...string) ([]string, error) {
	root := Dir()
	var files []string
	for _, dir := range dirs {
		err := filepath.WalkDir(filepath.Join(root, filepath.FromSlash(dir)), func(p string, d fs.DirEntry, err error) error {
			if err != nil {
				return err
			}
			if d.IsDir() || strings.HasPrefix(d.Name(), ".") || strings.EqualFold(filepath.Ext(d.Name()), ".md") {
				return nil
			}
			rel, err := filepath.Rel(root, p)
			if err != nil {
				return err
			}
			files = append(files, filepath.ToSlash(rel))
			return nil
		})
		if err != nil && !errors.Is(err, fs.ErrNotExist) {
			return nil, fmt.Errorf("listing the conformance corpus in %s: %w", dir, err)
		}
	}
	slices.Sort(files)
	return files, nil
}

// Read returns the sample at rel (slash-separated, relative to Dir).
func Read(rel string) ([]byte, error) {
	b, err := os.ReadFile(filepath.Join(Dir(), filepath.FromSlash(rel)))
	if err != nil {
		return nil, fmt.Errorf("reading conformance sample %s: %w", rel, err)
	}
	return b, nil
}

// Contexts lists the RemoteExecutionContext samples: every file under
// dataverse/contexts, and the hand-changed copies of one of them under
// modified/dataverse (the other files there are Web API answers).
func Contexts() ([]string, error) {
	published, err := Files("dataverse/contexts")
	if err != nil {
		return nil, err
	}
	changed, err := Files("modified/dataverse")
	if err != nil {
		return nil, err
	}
	files := slices.Clone(published)
	for _, rel := range changed {
		if slices.ContainsFunc(published, func(p string) bool { return ChangedFrom(rel, p) }) {
			files = append(files, rel)
		}
	}
	slices.Sort(files)
	return files, nil
}

// ChangedFrom reports whether rel is a hand-changed copy of original: it is
// named "<original without extension>.<change>.<extension>".
func ChangedFrom(rel, original string) bool {
	base := path.Base(original)
	stem := strings.TrimSuffix(base, path.Ext(base)) + "."
	name := path.Base(rel)
	return strings.HasPrefix(name, stem) && strings.Contains(name[len(stem):], ".")
}

// Resource is one FHIR resource of the corpus, as the JSON it was
// published with.
type Resource struct {
	// Key is the file (relative to Dir) or, for a Bundle entry,
	// "<file>#<Type>/<id>".
	Key string
	// JSON is the resource's own text, unchanged (decimals as written).
	JSON json.RawMessage
}

// FHIR lists every FHIR resource under fhir/ and modified/fhir/: a file
// holding a Bundle gives one Resource per entry (Synthea publishes each
// record as a transaction Bundle), any other file one Resource.
func FHIR() ([]Resource, error) {
	files, err := Files("fhir", "modified/fhir")
	if err != nil {
		return nil, err
	}
	var out []Resource
	for _, rel := range files {
		if path.Ext(rel) != ".json" {
			continue
		}
		b, err := Read(rel)
		if err != nil {
			return nil, err
		}
		var head struct {
			ResourceType string `json:"resourceType"`
			Entry        []struct {
				Resource json.RawMessage `json:"resource"`
			} `json:"entry"`
		}
		if err := json.Unmarshal(b, &head); err != nil {
			return nil, fmt.Errorf("decoding conformance sample %s: %w", rel, err)
		}
		if head.ResourceType != "Bundle" {
			out = append(out, Resource{Key: rel, JSON: b})
			continue
		}
		for i, e := range head.Entry {
			var id struct {
				ResourceType string `json:"resourceType"`
				ID           string `json:"id"`
			}
			if len(e.Resource) == 0 || json.Unmarshal(e.Resource, &id) != nil || id.ResourceType == "" {
				return nil, fmt.Errorf("conformance sample %s: entry %d holds no resource", rel, i)
			}
			out = append(out, Resource{Key: fmt.Sprintf("%s#%s/%s", rel, id.ResourceType, id.ID), JSON: e.Resource})
		}
	}
	return out, nil
}
