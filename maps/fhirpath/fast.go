package fhirpath

import (
	"encoding/json"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"

	"github.com/gofhir/fhirpath/eval"
	"github.com/gofhir/fhirpath/types"
	"github.com/gofhir/models/r4"
)

// The fast evaluator runs a compiled expression on a resource decoded as
// generic JSON. It reproduces the gofhir engine's results exactly — the
// same R4 model look-ups for element types and choice elements, the same
// typing of JSON values, and the engine's own operator functions — and
// gives up (errNotServed) wherever it would have to guess: objects compared
// with objects, values of types encoding/json does not decode to, anything
// not parsed. Any error
// also sends the evaluation to the engine, so that errors are the engine's.

var model = r4.FHIRPathModel()

// object is an element or resource of the decoded resource. Its Type is the
// engine's: the type from the model, else resourceType, else a guess from
// the fields present (types.ObjectValue.Type).
type object struct {
	m        map[string]any
	explicit string
	typ      string // computed Type, "" until asked
}

func (o *object) Type() string {
	if o.typ == "" {
		o.typ = o.computeType()
	}
	return o.typ
}

func (o *object) computeType() string {
	if o.explicit != "" {
		return o.explicit
	}
	if rt, ok := o.m["resourceType"].(string); ok {
		return rt
	}
	return inferType(o.m)
}

// Equal and Equivalent are never reached: the evaluator hands objects to
// no comparison (it gives up instead), because the engine compares their
// JSON text, which a decoded map no longer has.
func (o *object) Equal(other types.Value) bool      { x, ok := other.(*object); return ok && x == o }
func (o *object) Equivalent(other types.Value) bool { return o.Equal(other) }
func (o *object) String() string {
	b, _ := json.Marshal(o.m)
	return string(b)
}
func (o *object) IsEmpty() bool { return false }

// inferType mirrors types.ObjectValue.inferType.
func inferType(m map[string]any) string {
	has := func(k string) bool { _, ok := m[k]; return ok }
	isArray := func(k string) bool { _, ok := m[k].([]any); return ok }
	isString := func(k string) bool { _, ok := m[k].(string); return ok }
	switch {
	case has("value") && (has("unit") || has("code") || has("system")):
		return "Quantity"
	case has("system") && has("code") && !has("value"):
		return "Coding"
	case isArray("coding"):
		return "CodeableConcept"
	case has("reference"):
		return "Reference"
	case has("start") || has("end"):
		return "Period"
	case has("system") && isString("value"):
		return "Identifier"
	case has("low") || has("high"):
		return "Range"
	case has("numerator") || has("denominator"):
		return "Ratio"
	case has("contentType"):
		return "Attachment"
	case has("family") || isArray("given"):
		return "HumanName"
	case has("city") || has("postalCode"):
		return "Address"
	case has("system") && has("use"):
		return "ContactPoint"
	case has("text") && (has("time") || has("authorReference") || has("authorString")):
		return "Annotation"
	}
	return "Object"
}

// prim is a string read from the resource: the engine's String (with its
// FHIR type, such as "uri" or "code"), or a date, dateTime or time kept as
// its text until an operator needs the engine's value — parsing costs more
// than the rest of a read. It lives in the evaluator's slab, so it costs no
// allocation of its own, and becomes the engine's value (plain) wherever
// the engine's operators are used.
type prim struct {
	s        string
	fhirType string
	kind     byte // 0 string, 'd' date, 't' dateTime, 'h' time
}

func (x *prim) value() types.Value {
	var v types.Value
	var err error
	switch x.kind {
	case 0:
		if x.fhirType != "" {
			return types.NewStringWithFHIRType(x.s, x.fhirType)
		}
		return types.NewString(x.s)
	case 'd':
		v, err = types.NewDate(x.s)
	case 't':
		v, err = types.NewDateTime(x.s)
	default:
		v, err = types.NewTime(x.s)
	}
	if err != nil {
		// The text was checked by the same pattern; unreachable.
		return types.NewString(x.s)
	}
	return v
}

func (x *prim) Type() string {
	switch x.kind {
	case 'd':
		return "Date"
	case 't':
		return "DateTime"
	case 'h':
		return "Time"
	}
	if x.fhirType != "" {
		return x.fhirType
	}
	return "String"
}
func (x *prim) Equal(other types.Value) bool      { return x.value().Equal(plain(other)) }
func (x *prim) Equivalent(other types.Value) bool { return x.value().Equivalent(plain(other)) }
func (x *prim) String() string                    { return x.value().String() }
func (x *prim) IsEmpty() bool                     { return false }

// text returns the engine's text of the value, without parsing when the
// text is already in the engine's form.
func (x *prim) text() string {
	switch x.kind {
	case 0, 'd':
		return x.s
	case 't':
		if canonicalDateTime(x.s) {
			return x.s
		}
	}
	return x.value().String()
}

// canonicalDateTime reports whether a dateTime that matched the pattern
// prints back as written: milliseconds absent or of three digits, and a
// zone other than +00:00 or -00:00.
func canonicalDateTime(s string) bool {
	if i := strings.IndexByte(s, '.'); i >= 0 {
		j := i + 1
		for j < len(s) && isDigit(s[j]) {
			j++
		}
		if j-i-1 != 3 {
			return false
		}
	}
	return !strings.HasSuffix(s, "+00:00") && !strings.HasSuffix(s, "-00:00")
}

// plain returns the engine's own value for v.
func plain(v types.Value) types.Value {
	if x, ok := v.(*prim); ok {
		return x.value()
	}
	return v
}

// plainAll returns col with the fast evaluator's own values replaced by
// the engine's.
func plainAll(col types.Collection) types.Collection {
	for i, v := range col {
		if _, ok := v.(*prim); ok {
			out := make(types.Collection, len(col))
			copy(out, col[:i])
			for j := i; j < len(col); j++ {
				out[j] = plain(col[j])
			}
			return out
		}
	}
	return col
}

// stringOf returns the text of a string (not a date) of either kind.
func stringOf(v types.Value) (string, bool) {
	switch x := v.(type) {
	case *prim:
		if x.kind == 0 {
			return x.s, true
		}
	case types.String:
		return x.Value(), true
	}
	return "", false
}

// The patterns of types.NewDate, NewDateTime and NewTime, checked by hand.

func isDate(s string) bool {
	switch len(s) {
	case 4:
		return digits(s, 4)
	case 7:
		return digits(s, 4) && s[4] == '-' && digits(s[5:], 2)
	case 10:
		return digits(s, 4) && s[4] == '-' && digits(s[5:], 2) && s[7] == '-' && digits(s[8:], 2)
	}
	return false
}

func isDateTime(s string) bool {
	if !digits(s, 4) {
		return false
	}
	// Every optional part may be the last one before the zone, and a zone
	// such as -01:00 can follow a month as well as a day, so the end is
	// tried at each step.
	n := 4
	if zoneOrEnd(s[n:]) {
		return true
	}
	for _, sep := range []byte{'-', '-', 'T', ':', ':'} {
		if len(s) < n+3 || s[n] != sep || !digits(s[n+1:], 2) {
			return false
		}
		n += 3
		if zoneOrEnd(s[n:]) {
			return true
		}
	}
	if len(s) < n+2 || s[n] != '.' || !isDigit(s[n+1]) {
		return false
	}
	n++
	for n < len(s) && isDigit(s[n]) {
		n++
	}
	return zoneOrEnd(s[n:])
}

func zoneOrEnd(rest string) bool {
	switch {
	case rest == "" || rest == "Z":
		return true
	case len(rest) == 6 && (rest[0] == '+' || rest[0] == '-') && digits(rest[1:], 2) && rest[3] == ':' && digits(rest[4:], 2):
		return true
	}
	return false
}

func isTime(s string) bool {
	s = strings.TrimPrefix(s, "T")
	return len(s) > 0 && lexTimeFormat(s) == len(s)
}

// fromJSON mirrors the engine's typing of a JSON value whose element type
// is not known (jsonValueToFHIRValue). ok is false for a value the fast
// evaluator cannot type as the engine would (a type encoding/json does not
// decode to).
func (ev *evaluator) fromJSON(v any) (types.Value, bool) {
	switch x := v.(type) {
	case string:
		// Strings that look like dates or dateTimes become them.
		if len(x) >= 4 && digits(x, 4) {
			if len(x) <= 10 && isDate(x) {
				return ev.prim(x, "", 'd'), true
			}
			if (strings.ContainsAny(x, "TZ") || (len(x) > 10 && (x[10] == '+' || x[10] == '-'))) && isDateTime(x) {
				return ev.prim(x, "", 't'), true
			}
		}
		return ev.prim(x, "", 0), true
	case json.Number:
		s := string(x)
		if !strings.ContainsAny(s, ".eE") {
			if i, err := strconv.ParseInt(s, 10, 64); err == nil {
				return types.NewInteger(i), true
			}
		}
		d, err := types.NewDecimal(s)
		if err != nil {
			return nil, true
		}
		return d, true
	case bool:
		if x {
			return types.TrueCollection[0], true
		}
		return types.FalseCollection[0], true
	case map[string]any:
		return ev.object(x, ""), true
	case float64:
		// From a decoder without UseNumber: the engine's route encodes the
		// resource, so the number is read as encoding/json writes it.
		b, err := json.Marshal(x)
		if err != nil {
			return nil, false
		}
		return ev.fromJSON(json.Number(b))
	case nil, []any:
		return nil, true
	}
	return nil, false
}

// fromJSONTyped mirrors jsonValueToFHIRValueWithType: fhirType is the
// element's type from the model.
func (ev *evaluator) fromJSONTyped(v any, fhirType string) (types.Value, bool) {
	switch x := v.(type) {
	case string:
		switch strings.ToLower(fhirType) {
		case "date":
			if isDate(x) {
				return ev.prim(x, "", 'd'), true
			}
		case "datetime", "instant":
			if isDateTime(x) {
				return ev.prim(x, "", 't'), true
			}
		case "time":
			if isTime(x) {
				return ev.prim(x, "", 'h'), true
			}
		case "uri", "url", "canonical", "oid", "uuid", "id", "code", "markdown", "base64binary":
			return ev.prim(x, fhirType, 0), true
		}
		return ev.prim(x, "", 0), true
	case map[string]any:
		if fhirType != "" {
			return ev.object(x, fhirType), true
		}
	}
	return ev.fromJSON(v)
}

// field appends the values of field of m to out, typed by fhirType ("" for
// the engine's guesses), as the engine's GetCollection(WithType) does.
func (ev *evaluator) field(out types.Collection, m map[string]any, name, fhirType string) (types.Collection, bool) {
	v, ok := m[name]
	if !ok {
		return out, true
	}
	if arr, isArr := v.([]any); isArr {
		if out == nil {
			out = ev.coll(len(arr))
		}
		for _, e := range arr {
			x, ok := ev.convert(e, fhirType)
			if !ok {
				return out, false
			}
			if x != nil {
				out = append(out, x)
			}
		}
		return out, true
	}
	x, ok := ev.convert(v, fhirType)
	if !ok {
		return out, false
	}
	if x != nil {
		if out == nil {
			return ev.one(x), true
		}
		out = append(out, x)
	}
	return out, true
}

func (ev *evaluator) convert(v any, fhirType string) (types.Value, bool) {
	if fhirType == "" {
		return ev.fromJSON(v)
	}
	return ev.fromJSONTyped(v, fhirType)
}

// memberInfo is what the model says about one member name on one object
// type: the element's type and, for a choice element, its type suffixes.
type memberInfo struct {
	objType  string
	path     string
	fhirType string
	choices  []string // field names (name + suffix) and their types, in pairs
}

// memberCache holds the memberInfo of a member node per object type; it is
// copied on write, so readers need no lock.
type memberCache struct {
	p atomic.Pointer[[]*memberInfo]
}

func (c *memberCache) get(objType, name string) *memberInfo {
	if l := c.p.Load(); l != nil {
		for _, mi := range *l {
			if mi.objType == objType {
				return mi
			}
		}
	}
	path := model.ResolvePath(objType + "." + name)
	mi := &memberInfo{objType: objType, path: path, fhirType: model.TypeOf(path)}
	for _, suffix := range model.ChoiceTypes(path) {
		mi.choices = append(mi.choices, name+strings.ToUpper(suffix[:1])+suffix[1:], suffix)
	}
	for {
		old := c.p.Load()
		var l []*memberInfo
		if old != nil {
			if len(*old) >= 16 {
				return mi // an unusual spread of types: do not grow further
			}
			l = append(l, *old...)
		}
		l = append(l, mi)
		if c.p.CompareAndSwap(old, &l) {
			return mi
		}
	}
}

// polymorphicSuffixes is the engine's list of choice suffixes tried when
// the model knows no choice element of that name.
var polymorphicSuffixes = []string{
	"Boolean", "Integer", "Integer64", "Decimal", "String", "Code", "Id", "Uri", "Url", "Canonical",
	"Base64Binary", "Instant", "Date", "DateTime", "Time", "Oid", "Uuid", "Markdown", "PositiveInt", "UnsignedInt",
	"Quantity", "CodeableConcept", "Coding", "Range", "Period", "Ratio", "RatioRange",
	"Identifier", "Reference", "Attachment", "HumanName", "Address", "ContactPoint",
	"Timing", "Signature", "Annotation", "SampledData", "Age", "Distance", "Duration",
	"Count", "Money", "MoneyQuantity", "SimpleQuantity",
	"Meta", "Dosage", "ContactDetail", "Contributor", "DataRequirement", "Expression",
	"ParameterDefinition", "RelatedArtifact", "TriggerDefinition", "UsageContext",
}

// navigate mirrors the engine's navigateMember.
func (ev *evaluator) navigate(n *node, input types.Collection) (types.Collection, error) {
	var out types.Collection
	name := n.name
	for _, item := range input {
		obj, ok := item.(*object)
		if !ok {
			continue
		}
		typ := obj.Type()
		if name[0] >= 'A' && name[0] <= 'Z' && eval.IsSubtypeOfWithModel(typ, name, model) {
			out = append(out, obj)
			continue
		}
		mi := n.members.get(typ, name)
		before := len(out)
		if mi.fhirType != "" {
			if out, ok = ev.field(out, obj.m, name, mi.fhirType); !ok {
				return nil, errNotServed
			}
		}
		if len(out) == before {
			if out, ok = ev.field(out, obj.m, name, ""); !ok {
				return nil, errNotServed
			}
		}
		if len(out) > before {
			continue
		}
		if len(mi.choices) > 0 {
			for i := 0; i < len(mi.choices); i += 2 {
				if out, ok = ev.field(out, obj.m, mi.choices[i], mi.choices[i+1]); !ok {
					return nil, errNotServed
				}
				if len(out) > before {
					break
				}
			}
			continue
		}
		// The engine's fallback: name followed by any known type suffix.
		// Look for a key with that prefix first, which is rarely there.
		found := false
		for k := range obj.m {
			if len(k) > len(name) && strings.HasPrefix(k, name) {
				found = true
				break
			}
		}
		if !found {
			continue
		}
		for _, suffix := range polymorphicSuffixes {
			if out, ok = ev.field(out, obj.m, name+suffix, suffix); !ok {
				return nil, errNotServed
			}
			if len(out) > before {
				break
			}
		}
	}
	return out, nil
}

// evaluator holds one evaluation's state. The values it makes live in its
// slabs, and evaluators are pooled: nothing of an evaluation may be kept
// after its result has been converted (fastResult, EvalResourceBool).
type evaluator struct {
	root  types.Collection
	rootV [1]types.Value
	objs  []object
	prims []prim
	vals  []types.Value // backing of collections
}

// coll returns an empty collection with room for n values.
func (ev *evaluator) coll(n int) types.Collection {
	if cap(ev.vals)-len(ev.vals) < n {
		ev.vals = make([]types.Value, 0, max(64, 2*cap(ev.vals), n))
	}
	l := len(ev.vals)
	ev.vals = ev.vals[:l+n]
	return ev.vals[l : l : l+n]
}

// one returns the collection of v.
func (ev *evaluator) one(v types.Value) types.Collection {
	return append(ev.coll(1), v)
}

var evaluators = sync.Pool{New: func() any { return new(evaluator) }}

func (ev *evaluator) object(m map[string]any, explicit string) *object {
	if len(ev.objs) == cap(ev.objs) {
		// A new slab; the values in the old one stay where they are.
		ev.objs = make([]object, 0, max(16, 2*cap(ev.objs)))
	}
	ev.objs = append(ev.objs, object{m: m, explicit: explicit})
	return &ev.objs[len(ev.objs)-1]
}

func (ev *evaluator) prim(s, fhirType string, kind byte) *prim {
	if len(ev.prims) == cap(ev.prims) {
		ev.prims = make([]prim, 0, max(32, 2*cap(ev.prims)))
	}
	ev.prims = append(ev.prims, prim{s: s, fhirType: fhirType, kind: kind})
	return &ev.prims[len(ev.prims)-1]
}

// release clears the evaluator, so that the pool holds no resource data,
// and returns it to the pool.
func (ev *evaluator) release() {
	clear(ev.objs)
	clear(ev.prims)
	clear(ev.vals)
	ev.objs, ev.prims, ev.vals = ev.objs[:0], ev.prims[:0], ev.vals[:0]
	ev.root, ev.rootV[0] = nil, nil
	evaluators.Put(ev)
}

func (ev *evaluator) eval(n *node, this types.Collection) (types.Collection, error) {
	switch n.kind {
	case nLiteral:
		return n.lit, nil
	case nThis:
		return this, nil
	case nRoot:
		return ev.root, nil
	case nMember:
		in := this
		if n.left != nil {
			var err error
			if in, err = ev.eval(n.left, this); err != nil {
				return nil, err
			}
		}
		return ev.navigate(n, in)
	case nFunc:
		in := this
		if n.left != nil {
			var err error
			if in, err = ev.eval(n.left, this); err != nil {
				return nil, err
			}
		}
		return ev.call(n, in)
	case nIndex:
		base, err := ev.eval(n.left, this)
		if err != nil {
			return nil, err
		}
		idx, err := ev.eval(n.right, this)
		if err != nil || len(idx) == 0 {
			return nil, err
		}
		i, ok := idx[0].(types.Integer)
		if !ok {
			return nil, errNotServed
		}
		if k := i.Value(); k < 0 || k >= int64(len(base)) {
			return nil, nil
		} else {
			return ev.one(base[k]), nil
		}
	case nNegate:
		col, err := ev.eval(n.left, this)
		if err != nil || len(col) == 0 {
			return col, err
		}
		if len(col) != 1 {
			return nil, errNotServed
		}
		if n.op == "+" {
			return col, nil
		}
		v, err := eval.Negate(plain(col[0]))
		if err != nil {
			return nil, errNotServed
		}
		return ev.one(v), nil
	case nIs, nAs:
		col, err := ev.eval(n.left, this)
		if err != nil || len(col) == 0 {
			return nil, err
		}
		if n.kind == nIs {
			if len(col) != 1 {
				return nil, errNotServed
			}
			return boolCol(eval.TypeMatchesWithModel(col[0].Type(), n.typeName, model)), nil
		}
		return ofType(col, n.typeName), nil
	case nBinary:
		return ev.binary(n, this)
	}
	return nil, errNotServed
}

func boolCol(b bool) types.Collection {
	if b {
		return types.TrueCollection
	}
	return types.FalseCollection
}

func ofType(col types.Collection, typeName string) types.Collection {
	var out types.Collection
	for _, v := range col {
		if eval.TypeMatchesWithModel(v.Type(), typeName, model) {
			out = append(out, v)
		}
	}
	return out
}

func hasObject(col types.Collection) bool {
	for _, v := range col {
		if _, ok := v.(*object); ok {
			return true
		}
	}
	return false
}

func (ev *evaluator) binary(n *node, this types.Collection) (types.Collection, error) {
	l, err := ev.eval(n.left, this)
	if err != nil {
		return nil, err
	}
	r, err := ev.eval(n.right, this)
	if err != nil {
		return nil, err
	}
	switch n.op {
	case "and", "or", "xor", "implies":
		l, r = plainAll(l), plainAll(r)
		switch n.op {
		case "and":
			return eval.And(l, r), nil
		case "or":
			return eval.Or(l, r), nil
		case "xor":
			return eval.Xor(l, r), nil
		}
		return eval.Implies(l, r), nil
	case "&":
		// eval.Concatenate: a first item that is not a string counts as
		// empty text.
		var a, b string
		if len(l) > 0 {
			a, _ = stringOf(l[0])
		}
		if len(r) > 0 {
			b, _ = stringOf(r[0])
		}
		return types.Collection{types.NewString(a + b)}, nil
	}
	if (n.op == "=" || n.op == "!=") && len(l) == 1 && len(r) == 1 {
		// String equality, the commonest criterion, without conversion:
		// the engine's String.Equal compares the texts only.
		if a, ok := stringOf(l[0]); ok {
			if b, ok := stringOf(r[0]); ok {
				return boolCol((a == b) == (n.op == "=")), nil
			}
		}
	}
	if hasObject(l) || hasObject(r) {
		// The engine compares, adds or unites objects by their JSON text.
		return nil, errNotServed
	}
	l, r = plainAll(l), plainAll(r)
	switch n.op {
	case "=":
		return eval.Equal(l, r), nil
	case "!=":
		return eval.NotEqual(l, r), nil
	case "~":
		return eval.Equivalent(l, r), nil
	case "!~":
		return eval.NotEquivalent(l, r), nil
	case "|":
		return eval.Union(l, r), nil
	case "in":
		return eval.In(l, r), nil
	case "contains":
		return eval.Contains(l, r), nil
	}
	// Arithmetic and ordering: empty gives empty, more than one an error.
	if len(l) == 0 || len(r) == 0 {
		return nil, nil
	}
	if len(l) != 1 || len(r) != 1 {
		return nil, errNotServed
	}
	var res types.Collection
	var v types.Value
	switch n.op {
	case "<":
		res, err = eval.LessThan(l[0], r[0])
	case "<=":
		res, err = eval.LessOrEqual(l[0], r[0])
	case ">":
		res, err = eval.GreaterThan(l[0], r[0])
	case ">=":
		res, err = eval.GreaterOrEqual(l[0], r[0])
	case "+":
		v, err = eval.Add(l[0], r[0])
	case "-":
		v, err = eval.Subtract(l[0], r[0])
	case "*":
		v, err = eval.Multiply(l[0], r[0])
	case "/":
		v, err = eval.Divide(l[0], r[0])
	case "div":
		v, err = eval.IntegerDivide(l[0], r[0])
	case "mod":
		v, err = eval.Modulo(l[0], r[0])
	default:
		return nil, errNotServed
	}
	if err != nil {
		return nil, errNotServed
	}
	if res != nil {
		return res, nil
	}
	if v == nil {
		return nil, errNotServed
	}
	return ev.one(v), nil
}

// truthy is the engine's test of a criterion: a first item that is true.
func truthy(col types.Collection) bool {
	if len(col) == 0 {
		return false
	}
	b, ok := col[0].(types.Boolean)
	return ok && b.Bool()
}

func (ev *evaluator) call(n *node, in types.Collection) (types.Collection, error) {
	switch n.name {
	case "where", "select", "all":
		var out types.Collection
		if n.name == "where" {
			out = ev.coll(len(in))
		}
		// One $this for all items: a criterion's result is read, or
		// copied by select, before the next item replaces it.
		this := ev.coll(1)[:1]
		for _, item := range in {
			this[0] = item
			c, err := ev.eval(n.args[0], this)
			if err != nil {
				return nil, err
			}
			switch n.name {
			case "where":
				if truthy(c) {
					out = append(out, item)
				}
			case "select":
				out = append(out, c...)
			case "all":
				if len(c) == 0 {
					return types.FalseCollection, nil
				}
				if b, ok := c[0].(types.Boolean); ok && !b.Bool() {
					return types.FalseCollection, nil
				}
			}
		}
		if n.name == "all" {
			return types.TrueCollection, nil
		}
		return out, nil
	case "exists":
		if len(n.args) == 0 {
			return boolCol(len(in) > 0), nil
		}
		this := ev.coll(1)[:1]
		for _, item := range in {
			this[0] = item
			c, err := ev.eval(n.args[0], this)
			if err != nil {
				return nil, err
			}
			if truthy(c) {
				return types.TrueCollection, nil
			}
		}
		return types.FalseCollection, nil
	case "empty":
		return boolCol(len(in) == 0), nil
	case "count":
		return ev.one(types.GetInteger(int64(len(in)))), nil
	case "first":
		if len(in) == 0 {
			return nil, nil
		}
		return in[:1:1], nil
	case "last":
		if len(in) == 0 {
			return nil, nil
		}
		return in[len(in)-1:], nil
	case "tail":
		if len(in) <= 1 {
			return nil, nil
		}
		return in[1:], nil
	case "skip", "take":
		a, err := ev.eval(n.args[0], in)
		if err != nil || len(a) == 0 {
			return nil, errNotServed
		}
		i, ok := a[0].(types.Integer)
		if !ok {
			return nil, errNotServed
		}
		k := int(i.Value())
		if n.name == "skip" {
			if k <= 0 {
				return in, nil
			}
			if k >= len(in) {
				return nil, nil
			}
			return in[k:], nil
		}
		if k <= 0 {
			return nil, nil
		}
		if k >= len(in) {
			return in, nil
		}
		return in[:k:k], nil
	case "not":
		if len(in) == 0 {
			return nil, nil
		}
		if b, ok := in[0].(types.Boolean); ok {
			return boolCol(!b.Bool()), nil
		}
		return nil, nil
	case "iif":
		c, err := ev.eval(n.args[0], in)
		if err != nil {
			return nil, err
		}
		if truthy(c) {
			return ev.eval(n.args[1], in)
		}
		if len(n.args) > 2 {
			return ev.eval(n.args[2], in)
		}
		return nil, nil
	case "ofType":
		return ofType(in, n.typeName), nil
	case "startsWith":
		// FHIRPath 5.6.3 (https://hl7.org/fhirpath/N1/#startswithprefix--string--boolean):
		// empty input or prefix gives empty; the engine's answer for
		// several items or a non-string one is left to the engine.
		if len(in) == 0 {
			return nil, nil
		}
		if len(in) != 1 {
			return nil, errNotServed
		}
		s, ok := stringOf(in[0])
		if !ok {
			return nil, errNotServed
		}
		a, err := ev.eval(n.args[0], in)
		if err != nil {
			return nil, err
		}
		if len(a) == 0 {
			return nil, nil
		}
		prefix, ok := stringOf(a[0])
		if len(a) != 1 || !ok {
			return nil, errNotServed
		}
		return boolCol(strings.HasPrefix(s, prefix)), nil
	case "extension":
		a, err := ev.eval(n.args[0], in)
		if err != nil {
			return nil, err
		}
		var url string
		if len(a) > 0 {
			if s, ok := stringOf(a[0]); ok {
				url = s
			}
		}
		if url == "" {
			return nil, nil
		}
		var out types.Collection
		for _, item := range in {
			obj, ok := item.(*object)
			if !ok {
				continue
			}
			exts, ok := ev.field(nil, obj.m, "extension", "")
			if !ok {
				return nil, errNotServed
			}
			for _, e := range exts {
				ext, ok := e.(*object)
				if !ok {
					continue
				}
				u, ok := ev.fromJSON(ext.m["url"])
				if !ok {
					return nil, errNotServed
				}
				if s, ok := u.(*prim); ok && s.kind == 0 && s.s == url {
					out = append(out, ext)
				}
			}
		}
		return out, nil
	}
	return nil, errNotServed
}

// evalFast runs n on res with an evaluator from the pool, which the caller
// releases once it has converted the result; errNotServed (or any error)
// means the engine must be asked instead.
func evalFast(n *node, res map[string]any) (types.Collection, *evaluator, error) {
	ev := evaluators.Get().(*evaluator)
	ev.rootV[0] = ev.object(res, "")
	ev.root = ev.rootV[:]
	col, err := ev.eval(n, ev.root)
	if err != nil {
		ev.release()
		return nil, nil, err
	}
	return col, ev, nil
}
