package path

import (
	"strings"
	"sync"

	"github.com/gofhir/models/r4"
)

//go:generate go run ./internal/genelements -o elements_gen.go

// elem describes one element of the R4 model for writing: typ is the context
// of its children ("" for primitives) and many says it is a JSON array.
type elem struct {
	typ  string
	many bool
}

// elements parses elementsData once, on first use.
var elements = sync.OnceValue(func() map[string]elem {
	m := make(map[string]elem, strings.Count(elementsData, "\n"))
	for line := range strings.Lines(elementsData) {
		f := strings.Fields(line)
		if len(f) < 2 {
			continue
		}
		e := elem{many: len(f) == 3}
		if f[1] != "-" {
			e.typ = f[1]
		}
		m[f[0]] = e
	}
	return m
})

// lookup returns the element name of context ctx. known is false when the
// model does not describe it (unknown context or element), in which case
// writing falls back on the shape of the data and the path.
func lookup(ctx, name string) (e elem, known bool) {
	if ctx == "" {
		return elem{}, false
	}
	key := ctx + "." + name
	if e, ok := elements()[key]; ok {
		return e, true
	}
	// A primitive that does not repeat is not in the table; the FHIRPath
	// model still knows it.
	if r4.FHIRPathModel().TypeOf(key) != "" {
		return elem{}, true
	}
	return elem{}, false
}

// stepPlan is what the model says about one step for one context.
type stepPlan struct {
	known bool
	e     elem
	// disc is the JSON shape of the step's discriminators (url and where()
	// fields) that writing gives an item it creates; nil when unfiltered.
	disc map[string]any
	// discOK says an item holding just disc passes the step's filter (false
	// for contradictions such as where(use='a' and use='b')).
	discOK bool
}

// plan is the model information of a path for one context type, computed
// once and cached on the Path.
type plan struct {
	ctx   string
	steps []stepPlan
}

func (p *Path) planFor(ctx string) *plan {
	if pl := p.plan.Load(); pl != nil && pl.ctx == ctx {
		return pl
	}
	pl := &plan{ctx: ctx, steps: make([]stepPlan, len(p.steps))}
	cur := ctx
	for i := range p.steps {
		st := &p.steps[i]
		e, known := lookup(cur, st.name)
		sp := stepPlan{known: known, e: e, discOK: true}
		if st.filtered() {
			sp.disc = discriminators(st, e.typ)
			sp.discOK = st.matches(sp.disc)
		}
		pl.steps[i] = sp
		cur = e.typ
	}
	p.plan.Store(pl)
	return pl
}

// discriminators builds the object that an item created for a filtered step
// starts with: {"url": ...} for extension('url') and the where() fields, with
// arrays where the model says a field repeats.
func discriminators(st *step, itemType string) map[string]any {
	m := map[string]any{}
	if st.ext != "" {
		m["url"] = st.ext
	}
	for _, c := range st.conds {
		if c.kind == Empty {
			continue // an absent field is written by not writing it
		}
		node := m
		cur := itemType
		for j, part := range c.parts {
			e, known := lookup(cur, part)
			cur = e.typ
			if j == len(c.parts)-1 {
				v := c.literal()
				if known && e.many {
					node[part] = []any{v}
				} else {
					node[part] = v
				}
				break
			}
			child, _ := firstObject(node[part])
			if child == nil {
				child = map[string]any{}
				if known && e.many {
					node[part] = []any{child}
				} else {
					node[part] = child
				}
			}
			node = child
		}
	}
	return m
}

// firstObject returns v as an object, or the first item of v when v is an
// array whose first item is an object.
func firstObject(v any) (map[string]any, bool) {
	switch x := v.(type) {
	case map[string]any:
		return x, true
	case []any:
		if len(x) > 0 {
			m, ok := x[0].(map[string]any)
			return m, ok
		}
	}
	return nil, false
}
