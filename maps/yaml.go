package maps

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"regexp"
	"slices"
	"strconv"

	"gopkg.in/yaml.v3"
)

// maxDocumentSize bounds an imported map set; real sets are a few hundred
// kilobytes at most.
const maxDocumentSize = 8 << 20

// Parse reads a YAML map set without validating its content. Malformed
// YAML and unknown fields are reported as a *ValidationError with lines.
func Parse(data []byte) (*Document, error) {
	if len(data) > maxDocumentSize {
		return nil, &ValidationError{Problems: []Problem{{Message: fmt.Sprintf("map set is larger than %d bytes", maxDocumentSize)}}}
	}
	dec := yaml.NewDecoder(bytes.NewReader(data))
	dec.KnownFields(true)
	var doc Document
	if err := dec.Decode(&doc); err != nil {
		if errors.Is(err, io.EOF) {
			return nil, &ValidationError{Problems: []Problem{{Message: "the map set is empty"}}}
		}
		return nil, yamlProblems(err)
	}
	var extra any
	if err := dec.Decode(&extra); !errors.Is(err, io.EOF) {
		return nil, &ValidationError{Problems: []Problem{{Message: "a map set file holds exactly one YAML document"}}}
	}
	canonicalize(&doc)
	return &doc, nil
}

// Import parses and validates a YAML map set, returning the document and
// its compiled set.
func Import(data []byte, opts CompileOptions) (*Document, *Set, error) {
	doc, err := Parse(data)
	if err != nil {
		return nil, nil, err
	}
	set, err := Compile(doc, opts)
	if err != nil {
		return doc, nil, err
	}
	return doc, set, nil
}

// Export writes doc as canonical YAML: the same document always gives the
// same bytes, and Export(Parse(Export(d))) == Export(d).
func Export(doc *Document) ([]byte, error) {
	c := cloneDocument(doc)
	canonicalize(c)
	var buf bytes.Buffer
	enc := yaml.NewEncoder(&buf)
	enc.SetIndent(2)
	if err := enc.Encode(c); err != nil {
		return nil, fmt.Errorf("encoding map set: %w", err)
	}
	if err := enc.Close(); err != nil {
		return nil, fmt.Errorf("encoding map set: %w", err)
	}
	return buf.Bytes(), nil
}

var yamlLine = regexp.MustCompile(`line (\d+): (.*)`)

func yamlProblems(err error) error {
	var te *yaml.TypeError
	if errors.As(err, &te) {
		ps := make([]Problem, 0, len(te.Errors))
		for _, e := range te.Errors {
			ps = append(ps, lineProblem(e))
		}
		return &ValidationError{Problems: ps}
	}
	return &ValidationError{Problems: []Problem{lineProblem(err.Error())}}
}

func lineProblem(msg string) Problem {
	if m := yamlLine.FindStringSubmatch(msg); m != nil {
		n, _ := strconv.Atoi(m[1])
		return Problem{Line: n, Message: "malformed YAML: " + m[2]}
	}
	return Problem{Message: "malformed YAML: " + msg}
}

// canonicalize removes spellings that mean the same as the canonical form
// (enabled: true is the default), so export is stable.
func canonicalize(doc *Document) {
	on := func(b **bool) {
		if *b != nil && **b {
			*b = nil
		}
	}
	for i := range doc.EntityMaps {
		m := &doc.EntityMaps[i]
		on(&m.Enabled)
		for j := range m.Attributes {
			on(&m.Attributes[j].Enabled)
		}
		var expansions func(xs []ExpansionMap)
		expansions = func(xs []ExpansionMap) {
			for j := range xs {
				x := &xs[j]
				on(&x.Enabled)
				for k := range x.Attributes {
					on(&x.Attributes[k].Enabled)
				}
				expansions(x.Expansions)
			}
		}
		expansions(m.Expansions)
	}
}

// cloneDocument copies the parts canonicalize may change, so exporting a
// shared document (such as a Set's) never writes to it.
func cloneDocument(doc *Document) *Document {
	c := *doc
	c.EntityMaps = slices.Clone(doc.EntityMaps)
	for i := range c.EntityMaps {
		m := &c.EntityMaps[i]
		m.Attributes = slices.Clone(m.Attributes)
		m.Expansions = cloneExpansions(m.Expansions)
	}
	return &c
}

func cloneExpansions(xs []ExpansionMap) []ExpansionMap {
	xs = slices.Clone(xs)
	for j := range xs {
		xs[j].Attributes = slices.Clone(xs[j].Attributes)
		xs[j].Expansions = cloneExpansions(xs[j].Expansions)
	}
	return xs
}
