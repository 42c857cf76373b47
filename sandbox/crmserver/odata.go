package crmserver

import (
	"encoding/json"
	"fmt"
	"sort"
	"strconv"
	"strings"
	"time"
	"unicode"
)

// This file holds the OData subset: $filter (eq ne gt ge lt le, and or not,
// parentheses, contains/startswith/endswith), $orderby, $select and key
// segments such as contacts(msemr_azurefhirid='p1').

type token struct {
	kind string // ident, string, literal, (, ), ",", eof
	text string
}

func tokenize(s string) ([]token, error) {
	var out []token
	for i := 0; i < len(s); {
		c := s[i]
		switch {
		case c == ' ' || c == '\t':
			i++
		case c == '(' || c == ')' || c == ',':
			out = append(out, token{kind: string(c)})
			i++
		case c == '\'':
			var b strings.Builder
			j := i + 1
			for {
				if j >= len(s) {
					return nil, fmt.Errorf("unterminated string literal")
				}
				if s[j] == '\'' {
					if j+1 < len(s) && s[j+1] == '\'' {
						b.WriteByte('\'')
						j += 2
						continue
					}
					break
				}
				b.WriteByte(s[j])
				j++
			}
			out = append(out, token{kind: "string", text: b.String()})
			i = j + 1
		case c == '_' || unicode.IsLetter(rune(c)) || c >= '0' && c <= '9' || c == '-':
			j := i
			for j < len(s) && (s[j] == '_' || s[j] == '.' || s[j] == ':' || s[j] == '-' || s[j] == '+' ||
				unicode.IsLetter(rune(s[j])) || s[j] >= '0' && s[j] <= '9') {
				j++
			}
			w := s[i:j]
			kind := "ident"
			if c >= '0' && c <= '9' || c == '-' {
				kind = "literal"
			}
			out = append(out, token{kind: kind, text: w})
			i = j
		default:
			return nil, fmt.Errorf("unexpected character %q", c)
		}
	}
	return append(out, token{kind: "eof"}), nil
}

type filterNode interface {
	eval(get func(string) any) bool
}

type andNode struct{ l, r filterNode }
type orNode struct{ l, r filterNode }
type notNode struct{ x filterNode }
type cmpNode struct {
	attr string
	op   string
	lit  any // string, json.Number, bool, nil
}
type funcNode struct {
	fn, attr, arg string
}

func (n andNode) eval(g func(string) any) bool { return n.l.eval(g) && n.r.eval(g) }
func (n orNode) eval(g func(string) any) bool  { return n.l.eval(g) || n.r.eval(g) }
func (n notNode) eval(g func(string) any) bool { return !n.x.eval(g) }
func (n funcNode) eval(g func(string) any) bool {
	s, ok := g(n.attr).(string)
	if !ok {
		return false
	}
	s, arg := strings.ToLower(s), strings.ToLower(n.arg)
	switch n.fn {
	case "contains":
		return strings.Contains(s, arg)
	case "startswith":
		return strings.HasPrefix(s, arg)
	default:
		return strings.HasSuffix(s, arg)
	}
}

func (n cmpNode) eval(g func(string) any) bool {
	c, ok := compare(g(n.attr), n.lit)
	switch n.op {
	case "eq":
		return ok && c == 0
	case "ne":
		return !ok || c != 0
	case "gt":
		return ok && c > 0
	case "ge":
		return ok && c >= 0
	case "lt":
		return ok && c < 0
	case "le":
		return ok && c <= 0
	}
	return false
}

// compare orders a stored value against a literal; ok is false when they
// are not comparable (null against a value, mismatched types).
func compare(v, lit any) (int, bool) {
	if v == nil || lit == nil {
		if v == nil && lit == nil {
			return 0, true
		}
		return 0, false
	}
	if lv, isLookup := v.(lookupValue); isLookup {
		v = lv.ID
	}
	switch l := lit.(type) {
	case json.Number:
		n, ok := v.(json.Number)
		if !ok {
			return 0, false
		}
		a, err1 := n.Float64()
		b, err2 := l.Float64()
		if err1 != nil || err2 != nil {
			return 0, false
		}
		return cmpFloat(a, b), true
	case bool:
		b, ok := v.(bool)
		if !ok {
			return 0, false
		}
		if b == l {
			return 0, true
		}
		if !b {
			return -1, true
		}
		return 1, true
	case string:
		s, ok := v.(string)
		if !ok {
			return 0, false
		}
		if ta, ok := parseTime(s); ok {
			if tb, ok := parseTime(l); ok {
				return ta.Compare(tb), true
			}
		}
		return strings.Compare(strings.ToLower(s), strings.ToLower(l)), true
	}
	return 0, false
}

func parseTime(s string) (time.Time, bool) {
	if len(s) < 10 || s[4] != '-' {
		return time.Time{}, false
	}
	if t, err := time.Parse(time.RFC3339Nano, s); err == nil {
		return t, true
	}
	if t, err := time.Parse("2006-01-02", s); err == nil {
		return t, true
	}
	return time.Time{}, false
}

func cmpFloat(a, b float64) int {
	switch {
	case a < b:
		return -1
	case a > b:
		return 1
	}
	return 0
}

type filterParser struct {
	toks  []token
	pos   int
	known func(string) bool
}

// parseFilter parses a $filter expression; known reports whether an
// attribute name (or _lookup_value) exists.
func parseFilter(s string, known func(string) bool) (filterNode, error) {
	toks, err := tokenize(s)
	if err != nil {
		return nil, err
	}
	p := &filterParser{toks: toks, known: known}
	n, err := p.or(0)
	if err != nil {
		return nil, err
	}
	if p.peek().kind != "eof" {
		return nil, fmt.Errorf("unexpected %q after expression", p.peek().text)
	}
	return n, nil
}

func (p *filterParser) peek() token { return p.toks[p.pos] }
func (p *filterParser) next() token { t := p.toks[p.pos]; p.pos++; return t }

func (p *filterParser) or(depth int) (filterNode, error) {
	if depth > 50 {
		return nil, fmt.Errorf("expression nested too deeply")
	}
	l, err := p.and(depth)
	if err != nil {
		return nil, err
	}
	for p.peek().kind == "ident" && p.peek().text == "or" {
		p.next()
		r, err := p.and(depth)
		if err != nil {
			return nil, err
		}
		l = orNode{l, r}
	}
	return l, nil
}

func (p *filterParser) and(depth int) (filterNode, error) {
	l, err := p.unary(depth)
	if err != nil {
		return nil, err
	}
	for p.peek().kind == "ident" && p.peek().text == "and" {
		p.next()
		r, err := p.unary(depth)
		if err != nil {
			return nil, err
		}
		l = andNode{l, r}
	}
	return l, nil
}

func (p *filterParser) unary(depth int) (filterNode, error) {
	t := p.next()
	switch {
	case t.kind == "(":
		n, err := p.or(depth + 1)
		if err != nil {
			return nil, err
		}
		if p.next().kind != ")" {
			return nil, fmt.Errorf("missing )")
		}
		return n, nil
	case t.kind == "ident" && t.text == "not":
		x, err := p.unary(depth + 1)
		if err != nil {
			return nil, err
		}
		return notNode{x}, nil
	case t.kind == "ident" && (t.text == "contains" || t.text == "startswith" || t.text == "endswith"):
		if p.next().kind != "(" {
			return nil, fmt.Errorf("%s: missing (", t.text)
		}
		a := p.next()
		if a.kind != "ident" || !p.known(a.text) {
			return nil, unknownProperty(a.text)
		}
		if p.next().kind != "," {
			return nil, fmt.Errorf("%s: missing ,", t.text)
		}
		s := p.next()
		if s.kind != "string" {
			return nil, fmt.Errorf("%s: second argument must be a string", t.text)
		}
		if p.next().kind != ")" {
			return nil, fmt.Errorf("%s: missing )", t.text)
		}
		return funcNode{fn: t.text, attr: a.text, arg: s.text}, nil
	case t.kind == "ident":
		if !p.known(t.text) {
			return nil, unknownProperty(t.text)
		}
		op := p.next()
		switch op.text {
		case "eq", "ne", "gt", "ge", "lt", "le":
		default:
			return nil, fmt.Errorf("expected a comparison operator after %s", t.text)
		}
		lit, err := literal(p.next())
		if err != nil {
			return nil, err
		}
		return cmpNode{attr: t.text, op: op.text, lit: lit}, nil
	}
	return nil, fmt.Errorf("unexpected %q", t.text+t.kind)
}

type propertyError string

func (e propertyError) Error() string { return string(e) }

func unknownProperty(name string) error {
	return propertyError(fmt.Sprintf("Could not find a property named '%s'.", name))
}

func literal(t token) (any, error) {
	switch t.kind {
	case "string":
		return t.text, nil
	case "ident":
		switch t.text {
		case "true":
			return true, nil
		case "false":
			return false, nil
		case "null":
			return nil, nil
		}
		if len(t.text) == 36 && strings.Count(t.text, "-") == 4 {
			return strings.ToLower(t.text), nil
		}
	case "literal":
		if _, err := strconv.ParseFloat(t.text, 64); err == nil {
			return json.Number(t.text), nil
		}
		if _, ok := parseTime(t.text); ok {
			return t.text, nil
		}
		if len(t.text) == 36 && strings.Count(t.text, "-") == 4 {
			return strings.ToLower(t.text), nil
		}
	}
	return nil, fmt.Errorf("unsupported literal %q", t.text)
}

type orderTerm struct {
	attr string
	desc bool
}

func parseOrderBy(s string, known func(string) bool) ([]orderTerm, error) {
	var out []orderTerm
	for _, part := range strings.Split(s, ",") {
		f := strings.Fields(part)
		if len(f) == 0 || len(f) > 2 || !known(f[0]) {
			return nil, fmt.Errorf("invalid $orderby term %q", strings.TrimSpace(part))
		}
		t := orderTerm{attr: f[0]}
		if len(f) == 2 {
			switch f[1] {
			case "asc":
			case "desc":
				t.desc = true
			default:
				return nil, fmt.Errorf("invalid $orderby direction %q", f[1])
			}
		}
		out = append(out, t)
	}
	return out, nil
}

func sortRows(rows []*row, terms []orderTerm, get func(*row, string) any, primary string) {
	sort.SliceStable(rows, func(i, j int) bool {
		for _, t := range terms {
			a, b := get(rows[i], t.attr), get(rows[j], t.attr)
			if a == nil && b == nil {
				continue
			}
			if a == nil || b == nil {
				// nulls sort first ascending, as in SQL Server
				return (a == nil) != t.desc
			}
			c, ok := compare(a, b)
			if !ok || c == 0 {
				continue
			}
			return (c < 0) != t.desc
		}
		return rows[i].id < rows[j].id
	})
}

// parseKeySegment parses the inside of "set(...)": a bare GUID, or
// comma-separated name=literal pairs.
func parseKeySegment(s string) (id string, key map[string]any, err error) {
	if !strings.Contains(s, "=") {
		if len(s) != 36 || strings.Count(s, "-") != 4 {
			return "", nil, fmt.Errorf("invalid key %q", s)
		}
		return strings.ToLower(s), nil, nil
	}
	key = map[string]any{}
	for _, pair := range splitOutsideQuotes(s, ',') {
		eq := strings.IndexByte(pair, '=')
		if eq <= 0 {
			return "", nil, fmt.Errorf("invalid key segment")
		}
		name := strings.TrimSpace(pair[:eq])
		vt, err := tokenize(strings.TrimSpace(pair[eq+1:]))
		if err != nil || len(vt) != 2 {
			return "", nil, fmt.Errorf("invalid key value for %s", name)
		}
		v, err := literal(vt[0])
		if err != nil || v == nil {
			return "", nil, fmt.Errorf("invalid key value for %s", name)
		}
		key[name] = v
	}
	return "", key, nil
}

func splitOutsideQuotes(s string, sep byte) []string {
	var out []string
	in := false
	start := 0
	for i := 0; i < len(s); i++ {
		switch {
		case s[i] == '\'':
			in = !in
		case s[i] == sep && !in:
			out = append(out, s[start:i])
			start = i + 1
		}
	}
	return append(out, s[start:])
}
