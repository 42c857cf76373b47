package path

import (
	"encoding/json"
	"strconv"
)

// Get returns the first value the path selects, in document order, and
// whether there is one. A path ending at a repeating element without [i]
// returns its first item. JSON null counts as absent. Objects and arrays are
// returned as they are in res, not copied.
func (p *Path) Get(res map[string]any) (any, bool) {
	if !p.rootMatches(res) {
		return nil, false
	}
	r := reader{p: p, first: true}
	r.visit(res, 0)
	return r.val, r.found
}

// GetAll returns every value the path selects, in document order, with
// repeating elements flattened as FHIRPath does. It returns nil when nothing
// matches.
func (p *Path) GetAll(res map[string]any) []any {
	if !p.rootMatches(res) {
		return nil
	}
	r := reader{p: p}
	r.visit(res, 0)
	return r.out
}

func (p *Path) rootMatches(res map[string]any) bool {
	if res == nil {
		return false
	}
	if p.root == "" {
		return true
	}
	rt, _ := res["resourceType"].(string)
	return rt == p.root
}

// reader walks a resource depth-first in document order. Because every item
// of step i is met in the order of the flattened FHIRPath collection, an index
// is applied by counting the items that pass step i's filter.
type reader struct {
	p      *Path
	counts [maxSteps]int
	first  bool // stop at the first value
	found  bool
	val    any
	out    []any
}

func (r *reader) done() bool { return r.first && r.found }

func (r *reader) visit(node map[string]any, i int) {
	st := &r.p.steps[i]
	v, ok := node[st.name]
	if !ok || v == nil {
		return
	}
	if arr, ok := v.([]any); ok {
		for _, it := range arr {
			if st.index >= 0 && r.counts[i] > st.index {
				return
			}
			r.item(it, i)
			if r.done() {
				return
			}
		}
		return
	}
	r.item(v, i)
}

func (r *reader) item(it any, i int) {
	if it == nil {
		return
	}
	st := &r.p.steps[i]
	if st.filtered() {
		m, ok := it.(map[string]any)
		if !ok || !st.matches(m) {
			return
		}
	}
	if st.index >= 0 {
		n := r.counts[i]
		r.counts[i]++
		if n != st.index {
			return
		}
	}
	if i == len(r.p.steps)-1 {
		if r.first {
			r.val, r.found = it, true
			return
		}
		r.out = append(r.out, it)
		return
	}
	if m, ok := it.(map[string]any); ok {
		r.visit(m, i+1)
	}
}

// matches reports whether item m passes the step's extension url and where()
// conditions.
func (s *step) matches(m map[string]any) bool {
	if s.ext != "" {
		if u, _ := m["url"].(string); u != s.ext {
			return false
		}
	}
	for i := range s.conds {
		if !s.conds[i].holds(m) {
			return false
		}
	}
	return true
}

// holds evaluates field = literal on item m with FHIRPath's rules: the field
// must select exactly one value, equal to the literal and of the same kind.
func (c *cond) holds(m map[string]any) bool {
	v, n := single(m, c.parts, nil, 0)
	if c.kind == Empty {
		return n == 0
	}
	return n == 1 && c.equal(v)
}

// single counts the values parts selects from m (stopping past two) and
// returns the first.
func single(m map[string]any, parts []string, first any, n int) (any, int) {
	v, ok := m[parts[0]]
	if !ok || v == nil {
		return first, n
	}
	one := func(x any) {
		if x == nil || n > 1 {
			return
		}
		if len(parts) == 1 {
			if n == 0 {
				first = x
			}
			n++
			return
		}
		if child, ok := x.(map[string]any); ok {
			first, n = single(child, parts[1:], first, n)
		}
	}
	if arr, ok := v.([]any); ok {
		for _, x := range arr {
			one(x)
		}
	} else {
		one(v)
	}
	return first, n
}

func (c *cond) equal(v any) bool {
	switch c.kind {
	case String:
		s, ok := v.(string)
		return ok && s == c.text
	case Bool:
		b, ok := v.(bool)
		return ok && b == (c.text == "true")
	case Number:
		switch x := v.(type) {
		case json.Number:
			f, err := strconv.ParseFloat(string(x), 64)
			return err == nil && f == c.num
		case float64:
			return x == c.num
		case int:
			return float64(x) == c.num
		case int64:
			return float64(x) == c.num
		}
	}
	return false
}

// literal is the JSON value of the condition's literal, as writing stores it.
func (c *cond) literal() any {
	switch c.kind {
	case Bool:
		return c.text == "true"
	case Number:
		return json.Number(c.text)
	}
	return c.text
}
