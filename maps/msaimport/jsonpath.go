package msaimport

import (
	"fmt"
	"strconv"
	"strings"
	"unicode/utf8"

	"github.com/fhirsync/fhirsync/maps/fhirpath"
	"github.com/fhirsync/fhirsync/maps/path"
)

// Translation is what Translate made of one JSONPath.
type Translation struct {
	// FHIRPath is the translated expression, relative to the resource (or
	// to the array item, for an expansion's attribute maps); empty when the
	// JSONPath has no translation.
	FHIRPath string
	// Writable says FHIRPath is in the path language (maps/path): it both
	// reads and writes. A translation that is not writable is a read-only
	// FHIRPath expression (a computed attribute, FHIR → CRM only).
	Writable bool
	// Reason says why there is no translation, or why it is read-only.
	Reason string
	// Notes are differences in meaning a reviewer should know about.
	Notes []string
}

// maxPathLen bounds a JSONPath; the agent's paths are a few dozen
// characters, and the bound keeps the parser's recursion shallow.
const maxPathLen = 4096

// maxFilterDepth bounds nested parentheses and negations in a filter.
const maxFilterDepth = 32

// Translate turns one of the agent's JSONPath selects into FHIRPath. It
// never fails: what it cannot translate comes back with an empty FHIRPath and
// the reason.
func Translate(jsonPath string) Translation {
	steps, err := parseJSONPath(jsonPath)
	if err != nil {
		return Translation{Reason: "not a JSONPath the agent could read: " + err.Error()}
	}
	return translate(steps)
}

// step kinds.
type stepKind int

const (
	stepName stepKind = iota
	stepIndex
	stepWildcard
	stepFilter
	stepSlice
	stepUnion
)

type step struct {
	kind       stepKind
	descendant bool // reached through ".." (recursive descent)
	name       string
	index      int
	slice      [2]*int // start, end; nil means omitted
	sliceStep  bool    // a step was given in the slice
	filter     *expr
}

// expr is a filter expression: an or of ands of terms.
type expr struct {
	or [][]*term
}

// term is one filter term: a comparison, an existence test, or a group.
type term struct {
	not   bool
	group *expr
	left  operand
	op    string // "" for an existence test
	right operand
}

// operand is @-relative path or a literal.
type operand struct {
	rel     []relStep // set for @...
	isRel   bool
	isRoot  bool // a $-rooted query inside a filter
	literal any  // string, json number text (numLit), bool, nil
	isLit   bool
}

type numLit string

type relStep struct {
	name    string
	index   int
	isIndex bool
}

type parser struct {
	s   string
	pos int
}

func (p *parser) errorf(format string, args ...any) error {
	return fmt.Errorf("column %d: %s", p.pos+1, fmt.Sprintf(format, args...))
}

func (p *parser) eof() bool { return p.pos >= len(p.s) }

func (p *parser) peek() byte {
	if p.eof() {
		return 0
	}
	return p.s[p.pos]
}

func (p *parser) spaces() {
	for !p.eof() && (p.s[p.pos] == ' ' || p.s[p.pos] == '\t') {
		p.pos++
	}
}

func (p *parser) accept(tok string) bool {
	if strings.HasPrefix(p.s[p.pos:], tok) {
		p.pos += len(tok)
		return true
	}
	return false
}

func parseJSONPath(s string) ([]step, error) {
	if len(s) > maxPathLen {
		return nil, fmt.Errorf("longer than %d characters", maxPathLen)
	}
	if !utf8.ValidString(s) {
		return nil, fmt.Errorf("not valid UTF-8")
	}
	p := &parser{s: strings.TrimSpace(s)}
	if p.eof() {
		return nil, fmt.Errorf("empty")
	}
	var steps []step
	switch {
	case p.accept("$"):
	case isNameStart(p.peek()):
		// The agent's paths start with "$"; a bare member name is read as
		// if it did.
		st, err := p.name()
		if err != nil {
			return nil, err
		}
		steps = append(steps, step{kind: stepName, name: st})
	default:
		return nil, p.errorf("expected '$'")
	}
	for !p.eof() {
		switch {
		case p.accept(".."):
			st, err := p.afterDot()
			if err != nil {
				return nil, err
			}
			st.descendant = true
			steps = append(steps, st)
		case p.accept("."):
			st, err := p.afterDot()
			if err != nil {
				return nil, err
			}
			steps = append(steps, st)
		case p.accept("["):
			st, err := p.bracket()
			if err != nil {
				return nil, err
			}
			steps = append(steps, st)
		default:
			return nil, p.errorf("unexpected %q", p.peek())
		}
	}
	return steps, nil
}

func isNameStart(c byte) bool {
	return c == '_' || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z')
}

func isNameChar(c byte) bool { return isNameStart(c) || (c >= '0' && c <= '9') || c == '-' }

func (p *parser) name() (string, error) {
	start := p.pos
	for !p.eof() && isNameChar(p.s[p.pos]) {
		p.pos++
	}
	if p.pos == start {
		return "", p.errorf("expected a member name")
	}
	return p.s[start:p.pos], nil
}

func (p *parser) afterDot() (step, error) {
	switch {
	case p.accept("*"):
		return step{kind: stepWildcard}, nil
	case p.accept("["):
		return p.bracket()
	}
	n, err := p.name()
	return step{kind: stepName, name: n}, err
}

// bracket parses what follows "[" up to and including "]".
func (p *parser) bracket() (step, error) {
	p.spaces()
	var st step
	switch c := p.peek(); {
	case c == '*':
		p.pos++
		st = step{kind: stepWildcard}
	case c == '?':
		p.pos++
		p.spaces()
		e, err := p.orExpr(0)
		if err != nil {
			return st, err
		}
		// [?(...)] is the usual spelling: the outer parentheses group
		// nothing.
		for len(e.or) == 1 && len(e.or[0]) == 1 && e.or[0][0].group != nil && !e.or[0][0].not {
			e = e.or[0][0].group
		}
		st = step{kind: stepFilter, filter: e}
	case c == '\'' || c == '"':
		var names []string
		for {
			s, err := p.str()
			if err != nil {
				return st, err
			}
			names = append(names, s)
			p.spaces()
			if !p.accept(",") {
				break
			}
			p.spaces()
		}
		if len(names) == 1 {
			st = step{kind: stepName, name: names[0]}
		} else {
			st = step{kind: stepUnion}
		}
	case c == '-' || c == ':' || (c >= '0' && c <= '9'):
		var err error
		if st, err = p.indexOrSlice(); err != nil {
			return st, err
		}
	default:
		return st, p.errorf("unexpected %q after '['", c)
	}
	p.spaces()
	if !p.accept("]") {
		return st, p.errorf("expected ']'")
	}
	return st, nil
}

func (p *parser) int() (int, bool, error) {
	start := p.pos
	p.accept("-")
	for !p.eof() && p.s[p.pos] >= '0' && p.s[p.pos] <= '9' {
		p.pos++
	}
	if p.pos == start {
		return 0, false, nil
	}
	n, err := strconv.Atoi(p.s[start:p.pos])
	if err != nil || n > 1<<20 || n < -(1<<20) {
		return 0, false, p.errorf("index %q out of range", p.s[start:p.pos])
	}
	return n, true, nil
}

func (p *parser) indexOrSlice() (step, error) {
	var parts [3]*int
	i := 0
	for {
		p.spaces()
		n, ok, err := p.int()
		if err != nil {
			return step{}, err
		}
		if ok {
			parts[i] = &n
		}
		p.spaces()
		if p.peek() == ',' && i == 0 && ok {
			// an index union: [0,1]
			for p.accept(",") {
				p.spaces()
				if _, ok, err := p.int(); err != nil || !ok {
					return step{}, p.errorf("expected an index in a union")
				}
				p.spaces()
			}
			return step{kind: stepUnion}, nil
		}
		if !p.accept(":") {
			break
		}
		i++
		if i > 2 {
			return step{}, p.errorf("a slice has at most three parts")
		}
	}
	if i == 0 {
		if parts[0] == nil {
			return step{}, p.errorf("expected an index")
		}
		return step{kind: stepIndex, index: *parts[0]}, nil
	}
	return step{kind: stepSlice, slice: [2]*int{parts[0], parts[1]}, sliceStep: parts[2] != nil}, nil
}

// str parses a quoted string with JSON-style escapes; either quote works.
func (p *parser) str() (string, error) {
	q := p.peek()
	if q != '\'' && q != '"' {
		return "", p.errorf("expected a string")
	}
	p.pos++
	var b strings.Builder
	for {
		if p.eof() {
			return "", p.errorf("unterminated string")
		}
		c := p.s[p.pos]
		switch {
		case c == q:
			p.pos++
			return b.String(), nil
		case c == '\\':
			p.pos++
			if p.eof() {
				return "", p.errorf("unterminated string")
			}
			e := p.s[p.pos]
			p.pos++
			switch e {
			case '\'', '"', '\\', '/':
				b.WriteByte(e)
			case 'n':
				b.WriteByte('\n')
			case 't':
				b.WriteByte('\t')
			case 'r':
				b.WriteByte('\r')
			case 'b':
				b.WriteByte('\b')
			case 'f':
				b.WriteByte('\f')
			case 'u':
				if p.pos+4 > len(p.s) {
					return "", p.errorf("short \\u escape")
				}
				n, err := strconv.ParseUint(p.s[p.pos:p.pos+4], 16, 16)
				if err != nil {
					return "", p.errorf("bad \\u escape")
				}
				p.pos += 4
				b.WriteRune(rune(n))
			default:
				return "", p.errorf("unknown escape \\%c", e)
			}
		default:
			b.WriteByte(c)
			p.pos++
		}
	}
}

func (p *parser) orExpr(depth int) (*expr, error) {
	if depth > maxFilterDepth {
		return nil, p.errorf("filter nested too deeply")
	}
	e := &expr{}
	for {
		and, err := p.andExpr(depth)
		if err != nil {
			return nil, err
		}
		e.or = append(e.or, and)
		p.spaces()
		if !p.accept("||") {
			return e, nil
		}
		p.spaces()
	}
}

func (p *parser) andExpr(depth int) ([]*term, error) {
	var and []*term
	for {
		t, err := p.term(depth)
		if err != nil {
			return nil, err
		}
		and = append(and, t)
		p.spaces()
		if !p.accept("&&") {
			return and, nil
		}
		p.spaces()
	}
}

func (p *parser) term(depth int) (*term, error) {
	if depth > maxFilterDepth {
		return nil, p.errorf("filter nested too deeply")
	}
	p.spaces()
	if p.peek() == '!' && !strings.HasPrefix(p.s[p.pos:], "!=") {
		p.pos++
		t, err := p.term(depth + 1)
		if err != nil {
			return nil, err
		}
		return &term{not: true, group: &expr{or: [][]*term{{t}}}}, nil
	}
	if p.accept("(") {
		e, err := p.orExpr(depth + 1)
		if err != nil {
			return nil, err
		}
		p.spaces()
		if !p.accept(")") {
			return nil, p.errorf("expected ')'")
		}
		return &term{group: e}, nil
	}
	left, err := p.operand()
	if err != nil {
		return nil, err
	}
	p.spaces()
	for _, op := range []string{"==", "!=", "<=", ">=", "=~", "<", ">"} {
		if p.accept(op) {
			p.spaces()
			right, err := p.operand()
			if err != nil {
				return nil, err
			}
			return &term{left: left, op: op, right: right}, nil
		}
	}
	return &term{left: left}, nil
}

func (p *parser) operand() (operand, error) {
	switch c := p.peek(); {
	case c == '@' || c == '$':
		p.pos++
		o := operand{isRel: c == '@', isRoot: c == '$'}
		for {
			switch {
			case p.accept("."):
				n, err := p.name()
				if err != nil {
					return o, err
				}
				o.rel = append(o.rel, relStep{name: n})
			case p.peek() == '[':
				p.pos++
				p.spaces()
				if c := p.peek(); c == '\'' || c == '"' {
					n, err := p.str()
					if err != nil {
						return o, err
					}
					o.rel = append(o.rel, relStep{name: n})
				} else {
					n, ok, err := p.int()
					if err != nil {
						return o, err
					}
					if !ok {
						return o, p.errorf("expected an index or a quoted name")
					}
					o.rel = append(o.rel, relStep{index: n, isIndex: true})
				}
				p.spaces()
				if !p.accept("]") {
					return o, p.errorf("expected ']'")
				}
			default:
				return o, nil
			}
		}
	case c == '\'' || c == '"':
		s, err := p.str()
		return operand{isLit: true, literal: s}, err
	case c == '-' || (c >= '0' && c <= '9'):
		start := p.pos
		p.accept("-")
		digits := 0
		for !p.eof() && ((p.s[p.pos] >= '0' && p.s[p.pos] <= '9') || p.s[p.pos] == '.') {
			p.pos++
			digits++
		}
		txt := p.s[start:p.pos]
		if _, err := strconv.ParseFloat(txt, 64); err != nil || digits == 0 || strings.HasSuffix(txt, ".") || strings.Count(txt, ".") > 1 {
			return operand{}, p.errorf("bad number %q", txt)
		}
		return operand{isLit: true, literal: numLit(txt)}, nil
	case p.accept("true"):
		return operand{isLit: true, literal: true}, nil
	case p.accept("false"):
		return operand{isLit: true, literal: false}, nil
	case p.accept("null"):
		return operand{isLit: true, literal: nil}, nil
	}
	return operand{}, p.errorf("expected @, a literal or '('")
}

// unsupported is a JSONPath feature without a translation.
type unsupported string

func (u unsupported) Error() string { return string(u) }

// translate builds the FHIRPath of a parsed JSONPath.
func translate(steps []step) Translation {
	var tr Translation
	var b strings.Builder
	// last is the kind of the previous step, to know what an index or a
	// filter applies to.
	const (
		atRoot = iota
		atName
		atIndexed
		atFiltered
	)
	state := atRoot
	fanOut := "" // a step that selected several items, for the per-item note
	readOnly := ""
	for _, st := range steps {
		if st.descendant {
			return Translation{Reason: "recursive descent (..) finds a member at any depth; FHIRPath has no expression that reads it in the same order, and a map cannot write it"}
		}
		switch st.kind {
		case stepName:
			if !validName(st.name) {
				return Translation{Reason: fmt.Sprintf("member name %q is not a FHIR element name", st.name)}
			}
			if state != atRoot {
				b.WriteByte('.')
			}
			b.WriteString(st.name)
			state = atName
		case stepIndex:
			switch {
			case state != atName:
				return Translation{Reason: "an index that does not follow a member name selects inside a selected item (nested arrays do not occur in FHIR JSON)"}
			case st.index == -1:
				b.WriteString(".last()")
				readOnly = "[-1] (the last item) is last() in FHIRPath, which the path language cannot write"
			case st.index < 0:
				return Translation{Reason: fmt.Sprintf("a negative index [%d] counts from the end; FHIRPath has last() for [-1] only", st.index)}
			default:
				fmt.Fprintf(&b, "[%d]", st.index)
			}
			if fanOut != "" {
				tr.Notes = append(tr.Notes, fmt.Sprintf("after %s JSONPath indexes within each selected item and FHIRPath across all of them: the same when one item is selected", fanOut))
				fanOut = ""
			}
			state = atIndexed
		case stepWildcard:
			if state != atName {
				return Translation{Reason: "a wildcard over an object's members has no FHIRPath equivalent an attribute map can use"}
			}
			// name[*] is every item of name: FHIRPath's name.
			fanOut = "[*]"
			state = atFiltered
		case stepSlice:
			if state != atName || st.sliceStep {
				return Translation{Reason: "a slice with a step, or that does not follow a member name, has no FHIRPath equivalent"}
			}
			start, end := 0, -1
			if st.slice[0] != nil {
				start = *st.slice[0]
			}
			if st.slice[1] != nil {
				end = *st.slice[1]
			}
			if start < 0 || (st.slice[1] != nil && end < start) {
				return Translation{Reason: "a slice counted from the end has no FHIRPath equivalent"}
			}
			if start > 0 {
				fmt.Fprintf(&b, ".skip(%d)", start)
			}
			if end >= 0 {
				fmt.Fprintf(&b, ".take(%d)", end-start)
			}
			readOnly = "a slice is skip()/take() in FHIRPath, which the path language cannot write"
			fanOut = "a slice"
			state = atFiltered
		case stepUnion:
			return Translation{Reason: "a union ([a,b]) selects several members; an attribute map reads one element"}
		case stepFilter:
			if state != atName && state != atFiltered {
				return Translation{Reason: "a filter that does not follow a member name filters an object's members, which FHIRPath cannot express"}
			}
			cond, err := filterFHIRPath(st.filter, 0)
			if err != nil {
				return Translation{Reason: err.Error()}
			}
			if url, ok := extensionURL(steps, st); ok && strings.HasSuffix(b.String(), "extension") {
				s := strings.TrimSuffix(b.String(), "extension")
				b.Reset()
				b.WriteString(s)
				b.WriteString("extension(" + quote(url) + ")")
			} else {
				b.WriteString(".where(" + cond + ")")
			}
			fanOut = "a filter"
			state = atFiltered
		}
	}
	if state == atRoot {
		return Translation{Reason: "the path selects the whole resource, not an element"}
	}
	tr.FHIRPath = b.String()
	if _, err := fhirpath.Compile(tr.FHIRPath); err != nil {
		return Translation{Reason: fmt.Sprintf("the translation %q is not FHIRPath the engine accepts: %v", tr.FHIRPath, err)}
	}
	if _, err := path.Compile(tr.FHIRPath); err == nil && readOnly == "" {
		tr.Writable = true
	} else if readOnly != "" {
		tr.Reason = readOnly
	} else {
		tr.Reason = "the filter uses more than field = literal joined by and, which the path language cannot write"
	}
	return tr
}

// extensionURL reports whether filter step st is [?(@.url == 'u')], which
// on an extension step is FHIRPath's extension('u').
func extensionURL(_ []step, st step) (string, bool) {
	e := st.filter
	if len(e.or) != 1 || len(e.or[0]) != 1 {
		return "", false
	}
	t := e.or[0][0]
	if t.not || t.group != nil || t.op != "==" {
		return "", false
	}
	rel, lit := t.left, t.right
	if rel.isLit {
		rel, lit = lit, rel
	}
	s, ok := lit.literal.(string)
	if !rel.isRel || len(rel.rel) != 1 || rel.rel[0].name != "url" || !lit.isLit || !ok {
		return "", false
	}
	return s, true
}

var fhirpathKeywords = map[string]bool{
	"and": true, "or": true, "xor": true, "implies": true, "div": true, "mod": true,
	"in": true, "contains": true, "is": true, "as": true, "true": true, "false": true,
}

// validName reports whether n can be a FHIR JSON element name.
func validName(n string) bool {
	if n == "" || !isNameStart(n[0]) || fhirpathKeywords[n] {
		return false
	}
	for i := 0; i < len(n); i++ {
		if c := n[i]; !isNameStart(c) && (c < '0' || c > '9') {
			return false
		}
	}
	return true
}

func quote(s string) string {
	var b strings.Builder
	b.WriteByte('\'')
	for _, r := range s {
		switch r {
		case '\'':
			b.WriteString(`\'`)
		case '\\':
			b.WriteString(`\\`)
		case '\n':
			b.WriteString(`\n`)
		case '\r':
			b.WriteString(`\r`)
		case '\t':
			b.WriteString(`\t`)
		case '\f':
			b.WriteString(`\f`)
		default:
			if r < 0x20 {
				fmt.Fprintf(&b, `\u%04x`, r)
			} else {
				b.WriteRune(r)
			}
		}
	}
	b.WriteByte('\'')
	return b.String()
}

// filterFHIRPath renders a filter as a FHIRPath boolean relative to the
// filtered item.
func filterFHIRPath(e *expr, depth int) (string, error) {
	if depth > maxFilterDepth {
		return "", unsupported("filter nested too deeply")
	}
	ors := make([]string, 0, len(e.or))
	for _, and := range e.or {
		parts := make([]string, 0, len(and))
		for _, t := range and {
			s, err := termFHIRPath(t, depth)
			if err != nil {
				return "", err
			}
			parts = append(parts, s)
		}
		s := strings.Join(parts, " and ")
		if len(e.or) > 1 && len(and) > 1 {
			s = "(" + s + ")"
		}
		ors = append(ors, s)
	}
	return strings.Join(ors, " or "), nil
}

func termFHIRPath(t *term, depth int) (string, error) {
	if t.group != nil {
		if g := t.group; t.not && len(g.or) == 1 && len(g.or[0]) == 1 && g.or[0][0].op == "" && g.or[0][0].group == nil && g.or[0][0].left.isRel {
			// !@.x is x.empty(), which the path language writes.
			s, err := operandFHIRPath(g.or[0][0].left)
			if err != nil {
				return "", err
			}
			return s + ".empty()", nil
		}
		inner, err := filterFHIRPath(t.group, depth+1)
		if err != nil {
			return "", err
		}
		if t.not {
			// JSONPath's ! of a test on a missing member is true;
			// FHIRPath's not() of an empty result is empty, which
			// where() drops. iif() treats empty as false.
			return "iif(" + inner + ", false, true)", nil
		}
		return "(" + inner + ")", nil
	}
	left, err := operandFHIRPath(t.left)
	if err != nil {
		return "", err
	}
	if t.op == "" {
		if !t.left.isRel {
			return "", unsupported("a filter term that is a literal alone")
		}
		return left + ".exists()", nil
	}
	if t.left.isLit && t.right.isLit {
		return "", unsupported("a filter comparing two literals")
	}
	if t.op == "=~" {
		return "", unsupported("the =~ regular-expression match of the .NET JSONPath dialect; its regular expressions differ from FHIRPath's matches()")
	}
	right, err := operandFHIRPath(t.right)
	if err != nil {
		return "", err
	}
	switch t.op {
	case "==":
		return left + " = " + right, nil
	case "!=":
		// A missing member differs from every value in JSONPath; in
		// FHIRPath the comparison is empty, so where() would drop it.
		return "iif(" + left + " = " + right + ", false, true)", nil
	}
	return left + " " + t.op + " " + right, nil
}

func operandFHIRPath(o operand) (string, error) {
	switch {
	case o.isRoot:
		return "", unsupported("a filter that refers to the resource root ($) inside a filter")
	case o.isRel:
		if len(o.rel) == 0 {
			return "", unsupported("a filter on the item's own value (@) compares a whole element")
		}
		var b strings.Builder
		for i, r := range o.rel {
			if r.isIndex {
				switch {
				case i == 0:
					return "", unsupported("an index on the filtered item itself")
				case r.index < 0:
					return "", unsupported("a negative index in a filter")
				}
				fmt.Fprintf(&b, "[%d]", r.index)
				continue
			}
			if !validName(r.name) {
				return "", unsupported(fmt.Sprintf("member name %q in a filter is not a FHIR element name", r.name))
			}
			if i > 0 {
				b.WriteByte('.')
			}
			b.WriteString(r.name)
		}
		return b.String(), nil
	}
	switch v := o.literal.(type) {
	case string:
		return quote(v), nil
	case numLit:
		return string(v), nil
	case bool:
		return strconv.FormatBool(v), nil
	}
	return "", unsupported("null in a filter: FHIR JSON has no null values")
}
