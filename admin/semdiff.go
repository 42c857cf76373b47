package admin

import (
	"encoding/json"
	"fmt"
	"reflect"
	"sort"

	"github.com/fhirsync/fhirsync/maps"
)

// semChange is one change between two parsed map sets: Kind is "added",
// "removed" or "changed"; What names the element ("entity map patient",
// "attribute map patient / birth-date", "value map gender"); Fields are
// the YAML keys that differ for a change.
type semChange struct {
	Kind   string   `json:"kind"`
	What   string   `json:"what"`
	Fields []string `json:"fields,omitempty"`
}

// semanticDiff compares two map sets element by element: value maps,
// entity maps (their settings: filters, policies, correlation, flow…),
// their attribute maps and expansion maps (and the expansions' attribute
// maps). Elements are matched by name; a nil document is empty.
func semanticDiff(from, to *maps.Document) []semChange {
	if from == nil {
		from = &maps.Document{}
	}
	if to == nil {
		to = &maps.Document{}
	}
	var out []semChange
	// expansion compares an expansion map's attribute maps and the
	// expansion maps nested in it.
	var expansion func(p string, xa, xb maps.ExpansionMap)
	expansion = func(p string, xa, xb maps.ExpansionMap) {
		diffNamed(&out, "attribute map", p, xa.Attributes, xb.Attributes, func(x maps.AttributeMap) string { return x.Name }, nil)
		diffNamed(&out, "expansion map", p, xa.Expansions, xb.Expansions, func(x maps.ExpansionMap) string { return x.Name }, expansion)
	}
	diffNamed(&out, "value map", "", from.ValueMaps, to.ValueMaps, func(v maps.ValueMap) string { return v.Name }, nil)
	diffNamed(&out, "entity map", "", from.EntityMaps, to.EntityMaps, func(m maps.EntityMap) string { return m.Name },
		func(prefix string, a, b maps.EntityMap) {
			diffNamed(&out, "attribute map", prefix, a.Attributes, b.Attributes, func(x maps.AttributeMap) string { return x.Name }, nil)
			diffNamed(&out, "expansion map", prefix, a.Expansions, b.Expansions, func(x maps.ExpansionMap) string { return x.Name }, expansion)
		})
	return out
}

// nested lists the fields whose elements are compared one by one, not as
// a changed field of their owner.
var nested = map[string]bool{"attributes": true, "expansions": true}

// diffNamed matches xs and ys by name, appending removed, added and
// changed elements; inner compares the children of an element in both.
func diffNamed[T any](out *[]semChange, kind, prefix string, xs, ys []T, name func(T) string, inner func(prefix string, a, b T)) {
	what := func(n string) string {
		if prefix == "" {
			return fmt.Sprintf("%s %s", kind, n)
		}
		return fmt.Sprintf("%s %s / %s", kind, prefix, n)
	}
	child := func(n string) string {
		if prefix == "" {
			return n
		}
		return prefix + " / " + n
	}
	inY := map[string]int{}
	for i, y := range ys {
		inY[name(y)] = i
	}
	inX := map[string]bool{}
	for _, x := range xs {
		n := name(x)
		inX[n] = true
		j, ok := inY[n]
		if !ok {
			*out = append(*out, semChange{Kind: "removed", What: what(n)})
			continue
		}
		if fs := changedFields(x, ys[j]); len(fs) > 0 {
			*out = append(*out, semChange{Kind: "changed", What: what(n), Fields: fs})
		}
		if inner != nil {
			inner(child(n), x, ys[j])
		}
	}
	for _, y := range ys {
		if n := name(y); !inX[n] {
			*out = append(*out, semChange{Kind: "added", What: what(n)})
		}
	}
}

// changedFields names the YAML keys whose values differ between a and b,
// leaving out the nested lists compared element by element.
func changedFields(a, b any) []string {
	fa, fb := yamlFields(a), yamlFields(b)
	keys := map[string]bool{}
	for k := range fa {
		keys[k] = true
	}
	for k := range fb {
		keys[k] = true
	}
	var out []string
	for k := range keys {
		if nested[k] {
			continue
		}
		if !reflect.DeepEqual(fa[k], fb[k]) {
			out = append(out, k)
		}
	}
	sort.Strings(out)
	return out
}

// yamlFields is v's struct fields by YAML key (zero values left out),
// each as its JSON form so that pointers and slices compare by value.
func yamlFields(v any) map[string]string {
	out := map[string]string{}
	rv := reflect.ValueOf(v)
	rt := rv.Type()
	for i := 0; i < rt.NumField(); i++ {
		f := rt.Field(i)
		if !f.IsExported() {
			continue
		}
		key := f.Name
		if tag := f.Tag.Get("yaml"); tag != "" {
			if n := splitTag(tag); n == "-" {
				continue
			} else if n != "" {
				key = n
			}
		}
		fv := rv.Field(i)
		if fv.IsZero() {
			continue
		}
		b, err := json.Marshal(fv.Interface())
		if err != nil {
			b = []byte(fmt.Sprint(fv.Interface()))
		}
		out[key] = string(b)
	}
	return out
}

func splitTag(tag string) string {
	for i := 0; i < len(tag); i++ {
		if tag[i] == ',' {
			return tag[:i]
		}
	}
	return tag
}
