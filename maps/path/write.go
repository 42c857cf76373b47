package path

import (
	"encoding/json"
	"errors"
	"fmt"
)

// ErrIndexBeyondEnd is returned (wrapped) by Set when [i] is more than one past
// the end of a list: writing appends only at the end, it never pads.
var ErrIndexBeyondEnd = errors.New("index beyond the end of the list")

// ErrShape is returned (wrapped) by Set when the data has a shape the path
// cannot write through: a primitive where an object is needed, a single value
// where R4 has a list, or an existing single element that fails its where().
var ErrShape = errors.New("resource shape does not fit the path")

// Set writes v at the path in res, creating missing elements and giving every
// item it creates for a filtered step its discriminators (the extension url
// and the where() fields). Lists follow R4: an element that repeats is written
// as a JSON array even when it has one item.
//
// A nil v removes the selected element and then every parent that the removal
// leaves empty, or holding only the discriminators of its where()/extension()
// step; an element that still holds other data is never removed. Removing a
// missing element is not an error.
//
// A []any v written to a repeating element without [i] or where() replaces the
// whole list (an empty list removes it). Set never writes partially: when it
// returns an error res is unchanged.
func (p *Path) Set(res map[string]any, v any) error {
	if res == nil {
		return fmt.Errorf("path %s: nil resource", p.text)
	}
	ctx := p.ctx
	if p.root != "" {
		rt, _ := res["resourceType"].(string)
		if rt != p.root {
			return fmt.Errorf("path %s: resource type is %q, not %s: %w", p.text, rt, p.root, ErrShape)
		}
		ctx = p.root
	} else if ctx == "" {
		ctx, _ = res["resourceType"].(string)
	}
	if p.steps[0].name == "resourceType" {
		return fmt.Errorf("path %s: resourceType is not written by paths: %w", p.text, ErrShape)
	}
	for i := range p.steps {
		if p.steps[i].selfRef {
			return fmt.Errorf("path %s: the path writes the field its filter selects on, so the written element could not be read back: %w", p.text, ErrShape)
		}
	}
	pl := p.planFor(ctx)
	if v == nil {
		p.remove(res, pl, false)
		return nil
	}
	if l, ok := v.([]any); ok && len(l) == 0 {
		p.remove(res, pl, true)
		return nil
	}
	return p.write(res, v, pl)
}

// repeats decides whether step i is a list: the data decides first, then the
// R4 model, then (for elements the model does not know) the path itself.
func (p *Path) repeats(i int, sp *stepPlan, cur any) bool {
	if _, ok := cur.([]any); ok {
		return true
	}
	if sp.known {
		return sp.e.many
	}
	st := &p.steps[i]
	return cur == nil && (st.index >= 0 || st.filtered())
}

func (p *Path) write(res map[string]any, v any, pl *plan) error {
	node := res
	last := len(p.steps) - 1
	for i := range p.steps {
		st, sp := &p.steps[i], &pl.steps[i]
		cur := node[st.name]
		if cur != nil && sp.known && sp.e.many {
			if _, ok := cur.([]any); !ok {
				return fmt.Errorf("path %s: %s holds a single value where R4 has a list: %w", p.text, st.name, ErrShape)
			}
		}
		if p.repeats(i, sp, cur) {
			arr, _ := cur.([]any)
			if i == last && st.index < 0 && !st.filtered() {
				if l, ok := v.([]any); ok {
					node[st.name] = l
					return nil
				}
			}
			pos, count := st.find(arr)
			if pos >= 0 {
				if i == last {
					val, err := p.leaf(v, st, sp)
					if err != nil {
						return err
					}
					arr[pos] = val
					return nil
				}
				child, ok := arr[pos].(map[string]any)
				if !ok {
					return fmt.Errorf("path %s: item %d of %s is not an object: %w", p.text, pos, st.name, ErrShape)
				}
				node = child
				continue
			}
			if k := max(st.index, 0); k > count {
				return fmt.Errorf("path %s: cannot write %s[%d], the list has %d matching item(s); writing appends only at the end: %w",
					p.text, st.name, k, count, ErrIndexBeyondEnd)
			}
			item, err := p.create(i, v, pl)
			if err != nil {
				return err
			}
			node[st.name] = append(arr, item)
			return nil
		}
		if st.index > 0 {
			return fmt.Errorf("path %s: %s does not repeat, so [%d] can never be written: %w", p.text, st.name, st.index, ErrIndexBeyondEnd)
		}
		if cur != nil && st.filtered() {
			if m, ok := cur.(map[string]any); !ok || !st.matches(m) {
				return fmt.Errorf("path %s: %s exists and does not match its filter: %w", p.text, st.name, ErrShape)
			}
		}
		if cur == nil {
			item, err := p.create(i, v, pl)
			if err != nil {
				return err
			}
			node[st.name] = item
			return nil
		}
		if i == last {
			val, err := p.leaf(v, st, sp)
			if err != nil {
				return err
			}
			node[st.name] = val
			return nil
		}
		child, ok := cur.(map[string]any)
		if !ok {
			return fmt.Errorf("path %s: %s is not an object: %w", p.text, st.name, ErrShape)
		}
		node = child
	}
	return nil
}

// create builds the new item for step i and everything below it, holding v at
// the end. It checks the remaining steps first so that a failing write leaves
// the resource untouched.
func (p *Path) create(i int, v any, pl *plan) (any, error) {
	last := len(p.steps) - 1
	for j := i + 1; j <= last; j++ {
		if st := &p.steps[j]; st.index > 0 {
			return nil, fmt.Errorf("path %s: cannot write %s[%d] into a new element; writing appends only at the end: %w",
				p.text, st.name, st.index, ErrIndexBeyondEnd)
		}
	}
	for j := i; j <= last; j++ {
		if !pl.steps[j].discOK {
			return nil, fmt.Errorf("path %s: the filter of %s contradicts itself, no item can be created for it: %w", p.text, p.steps[j].name, ErrShape)
		}
	}
	if i == last {
		return p.leaf(v, &p.steps[i], &pl.steps[i])
	}
	item := newItem(&pl.steps[i])
	node := item
	for j := i + 1; j <= last; j++ {
		st, sp := &p.steps[j], &pl.steps[j]
		if j == last {
			val, err := p.leaf(v, st, sp)
			if err != nil {
				return nil, err
			}
			if p.repeats(j, sp, nil) {
				if l, ok := val.([]any); !ok || st.index >= 0 || st.filtered() {
					val = []any{val}
				} else {
					val = l
				}
			}
			node[st.name] = val
			break
		}
		child := newItem(sp)
		if p.repeats(j, sp, nil) {
			node[st.name] = []any{child}
		} else {
			node[st.name] = child
		}
		node = child
	}
	return item, nil
}

// leaf is the value stored for the last step: v itself, or for a filtered step
// an object holding v's fields plus the discriminators.
func (p *Path) leaf(v any, st *step, sp *stepPlan) (any, error) {
	if !st.filtered() {
		return v, nil
	}
	m, ok := v.(map[string]any)
	if !ok {
		return nil, fmt.Errorf("path %s: a value written to a filtered element must be an object: %w", p.text, ErrShape)
	}
	out := make(map[string]any, len(m)+len(sp.disc))
	for k, x := range sp.disc {
		out[k] = DeepCopy(x)
	}
	for k, x := range m {
		out[k] = x
	}
	if !st.matches(out) {
		return nil, fmt.Errorf("path %s: the value written contradicts its filter: %w", p.text, ErrShape)
	}
	return out, nil
}

func newItem(sp *stepPlan) map[string]any {
	if sp.disc == nil {
		return map[string]any{}
	}
	return DeepCopy(sp.disc).(map[string]any)
}

// find returns the position in arr of the item the step selects (the
// index-th item passing the filter, the first when there is no index) and,
// when there is none, how many items pass the filter.
func (s *step) find(arr []any) (pos, count int) {
	k := max(s.index, 0)
	for i, it := range arr {
		if it == nil {
			continue
		}
		if s.filtered() {
			m, ok := it.(map[string]any)
			if !ok || !s.matches(m) {
				continue
			}
		}
		if count == k {
			return i, count
		}
		count++
	}
	return -1, count
}

// link is one step of the chain to the element being removed.
type link struct {
	parent map[string]any
	key    string
	pos    int // position in the parent's list, -1 for a single element
	item   any
}

func (p *Path) remove(res map[string]any, pl *plan, all bool) {
	var buf [maxSteps]link
	chain := buf[:0]
	node := res
	last := len(p.steps) - 1
	for i := range p.steps {
		st := &p.steps[i]
		cur := node[st.name]
		if cur == nil {
			return
		}
		l := link{parent: node, key: st.name, pos: -1, item: cur}
		if arr, ok := cur.([]any); ok {
			if !(i == last && all) {
				pos, _ := st.find(arr)
				if pos < 0 {
					return
				}
				l.pos, l.item = pos, arr[pos]
			}
		} else {
			if st.index > 0 {
				return
			}
			if st.filtered() {
				if m, ok := cur.(map[string]any); !ok || !st.matches(m) {
					return
				}
			}
		}
		chain = append(chain, l)
		if i < last {
			child, ok := l.item.(map[string]any)
			if !ok {
				return
			}
			node = child
		}
	}
	detach(chain[last])
	for i := last - 1; i >= 0; i-- {
		m, _ := chain[i].item.(map[string]any)
		if len(m) > 0 && !(p.steps[i].filtered() && jsonEqual(m, pl.steps[i].disc)) {
			return
		}
		detach(chain[i])
	}
}

// detach removes a link's item from its parent, dropping a list it empties.
func detach(l link) {
	if l.pos < 0 {
		delete(l.parent, l.key)
		return
	}
	arr, _ := l.parent[l.key].([]any)
	if len(arr) <= 1 {
		delete(l.parent, l.key)
		return
	}
	out := make([]any, 0, len(arr)-1)
	out = append(out, arr[:l.pos]...)
	out = append(out, arr[l.pos+1:]...)
	l.parent[l.key] = out
}

// DeepCopy copies a decoded JSON value (maps and lists all the way down;
// strings, numbers, booleans and nil are shared, being immutable).
func DeepCopy(v any) any {
	switch x := v.(type) {
	case map[string]any:
		m := make(map[string]any, len(x))
		for k, e := range x {
			m[k] = DeepCopy(e)
		}
		return m
	case []any:
		l := make([]any, len(x))
		for i, e := range x {
			l[i] = DeepCopy(e)
		}
		return l
	}
	return v
}

// jsonEqual compares generic JSON values structurally.
func jsonEqual(a, b any) bool {
	switch x := a.(type) {
	case map[string]any:
		y, ok := b.(map[string]any)
		if !ok || len(x) != len(y) {
			return false
		}
		for k, e := range x {
			f, ok := y[k]
			if !ok || !jsonEqual(e, f) {
				return false
			}
		}
		return true
	case []any:
		y, ok := b.([]any)
		if !ok || len(x) != len(y) {
			return false
		}
		for i := range x {
			if !jsonEqual(x[i], y[i]) {
				return false
			}
		}
		return true
	case json.Number:
		y, ok := b.(json.Number)
		return ok && x == y
	case string:
		y, ok := b.(string)
		return ok && x == y
	case bool:
		y, ok := b.(bool)
		return ok && x == y
	case nil:
		return b == nil
	}
	return false
}
