package maps

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"reflect"
	"slices"
	"sort"
	"strings"
)

// SampleResult is the outcome of one sample or preview. Its three kinds of
// failure are kept apart: ParseError (the sample's own input is malformed),
// EvalError (the engine failed for a reason other than a mapping error) and
// Mismatches (the engine ran, but not as expected).
type SampleResult struct {
	Map    string `json:"map"`
	Sample string `json:"sample,omitempty"`
	// ParseError means the sample's JSON could not be read.
	ParseError error `json:"-"`
	// EvalError is an unexpected engine failure.
	EvalError error `json:"-"`
	// Decision is what happened: mapped, unchanged, filtered or
	// mapping_error; Filter and Attribute name the filter or attribute map.
	Decision  string `json:"decision,omitempty"`
	Filter    string `json:"filter,omitempty"`
	Attribute string `json:"attribute,omitempty"`
	// MappingError is the mapping error's message (decision mapping_error).
	MappingError string `json:"mappingError,omitempty"`
	// Output is the produced CRMResult or FHIR resource as JSON.
	Output  json.RawMessage `json:"output,omitempty"`
	Changed []string        `json:"changed,omitempty"`
	// Mismatches lists how the result differs from the sample's
	// expectation (empty for a preview).
	Mismatches []string `json:"mismatches,omitempty"`
}

// Passed reports whether the sample ran and met its expectation.
func (r SampleResult) Passed() bool {
	return r.ParseError == nil && r.EvalError == nil && len(r.Mismatches) == 0
}

// RunSamples runs every sample of every entity map in set, in document
// order. This is the one runner behind `go test`, `fhirsync maps test` and
// the admin preview.
func RunSamples(ctx context.Context, set *Set) []SampleResult {
	var out []SampleResult
	for _, m := range set.maps {
		for _, s := range m.def.Samples {
			out = append(out, RunSample(ctx, m, s))
		}
	}
	return out
}

// RunSample runs one sample against m, resolving lookups from the sample's
// own table.
func RunSample(ctx context.Context, m *Mapping, s Sample) SampleResult {
	r := Preview(ctx, m, PreviewInput{
		Direction: s.Direction,
		Input:     []byte(s.Input),
		Base:      []byte(s.Base),
		Current:   []byte(s.Current),
		Lookups:   sampleResolver{tableResolver(s.Lookups), NewMemoryConcepts()},
	})
	r.Sample = s.Name
	if r.ParseError != nil || r.EvalError != nil {
		return r
	}
	e := s.Expect
	if r.Decision != e.Decision {
		detail := ""
		if r.MappingError != "" {
			detail = " (" + r.MappingError + ")"
		}
		r.Mismatches = append(r.Mismatches, fmt.Sprintf("decision: got %s%s, want %s", r.Decision, detail, e.Decision))
	}
	if e.Filter != "" && r.Filter != e.Filter {
		r.Mismatches = append(r.Mismatches, fmt.Sprintf("filter: got %q, want %q", r.Filter, e.Filter))
	}
	if e.Attribute != "" && r.Attribute != e.Attribute {
		r.Mismatches = append(r.Mismatches, fmt.Sprintf("attribute: got %q, want %q", r.Attribute, e.Attribute))
	}
	if e.Changed != nil && !slices.Equal(r.Changed, e.Changed) {
		r.Mismatches = append(r.Mismatches, fmt.Sprintf("changed: got %v, want %v", r.Changed, e.Changed))
	}
	if e.Output != "" {
		want, err := decodeJSON([]byte(e.Output))
		if err != nil {
			r.ParseError = fmt.Errorf("expect.output: %w", err)
			return r
		}
		got, _ := decodeJSON(r.Output)
		if r.Output == nil {
			got = nil
		}
		r.Mismatches = append(r.Mismatches, jsonDiff("", got, want)...)
	}
	return r
}

// PreviewInput is one record to map for a preview or sample.
type PreviewInput struct {
	Direction Direction
	// Input is a FHIR resource (fhir-to-crm) or a CRMState (crm-to-fhir).
	Input []byte
	// Base is the FHIR resource write-back starts from (crm-to-fhir).
	Base []byte
	// Current is the target's current state: a CRMState (fhir-to-crm) —
	// for crm-to-fhir the base is the current state.
	Current []byte
	// Lookups resolves lookups; nil fails any lookup.
	Lookups LookupResolver
}

// Preview maps one pasted or logged record with m and reports the output
// and the decision, without writing anywhere.
func Preview(ctx context.Context, m *Mapping, in PreviewInput) SampleResult {
	r := SampleResult{Map: m.def.Name}
	input, err := decodeObject(in.Input)
	if err != nil {
		r.ParseError = fmt.Errorf("input: %w", err)
		return r
	}
	var res any
	switch in.Direction {
	case FHIRToCRM:
		var cur *CRMState
		if len(bytes.TrimSpace(in.Current)) > 0 {
			cur, err = decodeState(in.Current)
			if err != nil {
				r.ParseError = fmt.Errorf("current: %w", err)
				return r
			}
		}
		out, err := m.ToCRM(ctx, input, cur, in.Lookups)
		if !r.settle(err) {
			return r
		}
		r.Filter, r.Changed = out.Filtered+out.Gated, out.Changed
		res = crmOutput{Record: out.Record, Children: out.Children}
		r.Decision = decisionOf(out.Filtered, out.Gated, out.Changed, cur != nil)
	case CRMToFHIR:
		state, err := decodeState(in.Input)
		if err != nil {
			r.ParseError = fmt.Errorf("input: %w", err)
			return r
		}
		var base map[string]any
		if len(bytes.TrimSpace(in.Base)) > 0 {
			if base, err = decodeObject(in.Base); err != nil {
				r.ParseError = fmt.Errorf("base: %w", err)
				return r
			}
		}
		out, err := m.ToFHIR(ctx, *state, base, in.Lookups)
		if !r.settle(err) {
			return r
		}
		r.Filter, r.Changed, res = out.Filtered+out.Gated, out.Changed, out.Resource
		r.Decision = decisionOf(out.Filtered, out.Gated, out.Changed, base != nil)
	default:
		r.ParseError = fmt.Errorf("direction must be fhir-to-crm or crm-to-fhir, got %q", in.Direction)
		return r
	}
	if r.Decision != DecisionFiltered && r.Decision != DecisionGateOff {
		raw, err := json.Marshal(res)
		if err != nil {
			r.EvalError = fmt.Errorf("encoding output: %w", err)
			return r
		}
		r.Output = raw
	}
	return r
}

// crmOutput is the shape of a FHIR→CRM preview's output.
type crmOutput struct {
	Record   map[string]any `json:"record"`
	Children []ChildChange  `json:"children,omitempty"`
}

// settle records a mapping error as a decision, anything else as an
// evaluation error; it reports whether mapping succeeded.
func (r *SampleResult) settle(err error) bool {
	if err == nil {
		return true
	}
	var me *MappingError
	if errors.As(err, &me) {
		r.Decision, r.Attribute, r.MappingError = DecisionMappingError, me.Attribute, err.Error()
		if me.Attribute == "" {
			r.Attribute = me.Expansion
		}
		return false
	}
	r.EvalError = err
	return false
}

func decisionOf(filtered, gated string, changed []string, hadTarget bool) string {
	switch {
	case filtered != "":
		return DecisionFiltered
	case gated != "":
		return DecisionGateOff
	case hadTarget && len(changed) == 0:
		return DecisionUnchanged
	}
	return DecisionMapped
}

func decodeJSON(data []byte) (any, error) {
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.UseNumber()
	var v any
	if err := dec.Decode(&v); err != nil {
		return nil, err
	}
	if dec.More() {
		return nil, fmt.Errorf("trailing data after the JSON value")
	}
	return v, nil
}

func decodeObject(data []byte) (map[string]any, error) {
	v, err := decodeJSON(data)
	if err != nil {
		return nil, err
	}
	m, ok := v.(map[string]any)
	if !ok {
		return nil, fmt.Errorf("expected a JSON object")
	}
	return m, nil
}

func decodeState(data []byte) (*CRMState, error) {
	obj, err := decodeObject(data)
	if err != nil {
		return nil, err
	}
	st := &CRMState{}
	rec, ok := obj["record"].(map[string]any)
	if !ok {
		return nil, fmt.Errorf(`expected {"record": {...}, "children": {...}}`)
	}
	st.Record = rec
	if ch, ok := obj["children"].(map[string]any); ok {
		st.Children = map[string][]map[string]any{}
		for name, rows := range ch {
			list, ok := rows.([]any)
			if !ok {
				return nil, fmt.Errorf("children.%s: expected an array of rows", name)
			}
			for _, row := range list {
				rm, ok := row.(map[string]any)
				if !ok {
					return nil, fmt.Errorf("children.%s: expected an array of rows", name)
				}
				st.Children[name] = append(st.Children[name], rm)
			}
		}
	}
	return st, nil
}

// jsonDiff lists where got differs from want (numbers compare by text).
func jsonDiff(at string, got, want any) []string {
	const limit = 20
	var out []string
	var walk func(at string, g, w any)
	walk = func(at string, g, w any) {
		if len(out) >= limit {
			return
		}
		name := at
		if name == "" {
			name = "(root)"
		}
		switch wv := w.(type) {
		case map[string]any:
			gv, ok := g.(map[string]any)
			if !ok {
				out = append(out, fmt.Sprintf("%s: got %s, want an object", name, short(g)))
				return
			}
			keys := make([]string, 0, len(wv)+len(gv))
			for k := range wv {
				keys = append(keys, k)
			}
			for k := range gv {
				if _, ok := wv[k]; !ok {
					keys = append(keys, k)
				}
			}
			sort.Strings(keys)
			for _, k := range keys {
				gk, gok := gv[k]
				wk, wok := wv[k]
				switch {
				case !gok:
					out = append(out, fmt.Sprintf("%s: missing, want %s", join(at, k), short(wk)))
				case !wok:
					out = append(out, fmt.Sprintf("%s: unexpected %s", join(at, k), short(gk)))
				default:
					walk(join(at, k), gk, wk)
				}
			}
		case []any:
			gv, ok := g.([]any)
			if !ok || len(gv) != len(wv) {
				out = append(out, fmt.Sprintf("%s: got %s, want %s", name, short(g), short(w)))
				return
			}
			for i := range wv {
				walk(fmt.Sprintf("%s[%d]", at, i), gv[i], wv[i])
			}
		default:
			if !reflect.DeepEqual(g, w) {
				out = append(out, fmt.Sprintf("%s: got %s, want %s", name, short(g), short(w)))
			}
		}
	}
	walk(at, got, want)
	return out
}

func join(at, k string) string {
	if at == "" {
		return k
	}
	return at + "." + k
}

func short(v any) string {
	raw, _ := json.Marshal(v)
	s := string(raw)
	if len(s) > 120 {
		s = s[:117] + "..."
	}
	return strings.TrimSpace(s)
}

// sampleResolver is a sample's resolver: its lookups table, and a concept
// table that starts empty and creates the rows the maps may create (with
// the ids MemoryConceptID gives them).
type sampleResolver struct {
	tableResolver
	*MemoryConcepts
}

// tableResolver resolves lookups from a sample's table of FHIR reference →
// CRM id (entity maps are not distinguished).
type tableResolver map[string]string

func (t tableResolver) CRMID(_ context.Context, _ string, ref string) (string, bool, error) {
	id, ok := t[ref]
	return id, ok, nil
}

func (t tableResolver) FHIRRef(_ context.Context, _ string, id string) (string, bool, error) {
	for ref, v := range t {
		if strings.EqualFold(v, id) {
			return ref, true, nil
		}
	}
	return "", false, nil
}
