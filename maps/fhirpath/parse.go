package fhirpath

import (
	"errors"
	"strconv"
	"strings"

	"github.com/gofhir/fhirpath/types"
)

// errNotServed is returned by the fast evaluator's parser and evaluator for
// anything outside the subset it serves exactly; the caller then uses the
// gofhir engine.
var errNotServed = errors.New("not served by the fast evaluator")

// The fast evaluator's parser follows the FHIRPath grammar
// (https://hl7.org/fhirpath/N1/grammar.html) for the subset listed in
// fastFuncs and the operators below. Anything else — quantity literals,
// other functions, $index, $total, unknown external constants — makes
// parseFast fail, and the expression is served by the gofhir engine alone.

type nodeKind uint8

const (
	nLiteral nodeKind = iota // lit
	nThis                    // $this, or the input of a path's first step
	nRoot                    // %context, %resource, %rootResource
	nMember                  // left.name, or name on $this when left is nil
	nFunc                    // left.name(args), or name(args) on $this
	nIndex                   // left[right]
	nBinary                  // left op right
	nNegate                  // -left
	nIs                      // left is typeName
	nAs                      // left as typeName
)

type node struct {
	kind     nodeKind
	op       string
	name     string // member, function or type name
	left     *node
	right    *node
	args     []*node
	lit      types.Collection
	members  memberCache // nMember: model look-ups per object type
	typeName string      // ofType/is/as argument
}

type tokKind uint8

const (
	tEOF tokKind = iota
	tIdent
	tString
	tNumber
	tDate
	tDateTime
	tTime
	tSymbol
	tSpecial // $this, $index, $total, %name
)

type token struct {
	kind tokKind
	text string
}

func lex(s string) ([]token, error) {
	var out []token
	for i := 0; i < len(s); {
		c := s[i]
		switch {
		case c == ' ' || c == '\t' || c == '\n' || c == '\r':
			i++
		case strings.HasPrefix(s[i:], "//") || strings.HasPrefix(s[i:], "/*"):
			return nil, errNotServed
		case isIdentStart(c):
			j := i
			for j < len(s) && isIdentPart(s[j]) {
				j++
			}
			out = append(out, token{tIdent, s[i:j]})
			i = j
		case c == '\'':
			j := skipQuoted(s, i)
			if j > len(s) || j-i < 2 || s[j-1] != '\'' {
				return nil, errNotServed
			}
			out = append(out, token{tString, unquote(s[i:j])})
			i = j
		case c >= '0' && c <= '9':
			j := i
			for j < len(s) && isDigit(s[j]) {
				j++
			}
			if j+1 < len(s) && s[j] == '.' && isDigit(s[j+1]) {
				j++
				for j < len(s) && isDigit(s[j]) {
					j++
				}
			}
			out = append(out, token{tNumber, s[i:j]})
			i = j
		case c == '@':
			kind, n := lexTemporal(s[i+1:])
			if n == 0 {
				return nil, errNotServed
			}
			out = append(out, token{kind, s[i+1 : i+1+n]})
			i += 1 + n
		case c == '$' || c == '%':
			j := i + 1
			for j < len(s) && isIdentPart(s[j]) {
				j++
			}
			if j == i+1 {
				return nil, errNotServed
			}
			out = append(out, token{tSpecial, s[i:j]})
			i = j
		default:
			if i+1 < len(s) {
				switch two := s[i : i+2]; two {
				case "<=", ">=", "!=", "!~":
					out = append(out, token{tSymbol, two})
					i += 2
					continue
				}
			}
			if !strings.ContainsRune(".[](),=~<>+-*/&|", rune(c)) {
				return nil, errNotServed
			}
			out = append(out, token{tSymbol, s[i : i+1]})
			i++
		}
	}
	return append(out, token{kind: tEOF}), nil
}

// unquote removes the quotes of a string literal and replaces its escapes
// the way the gofhir engine does, so that both routes see the same text.
func unquote(s string) string {
	s = s[1 : len(s)-1]
	if !strings.Contains(s, `\`) {
		return s
	}
	s = strings.ReplaceAll(s, "\\'", "'")
	s = strings.ReplaceAll(s, "\\\\", "\\")
	s = strings.ReplaceAll(s, "\\n", "\n")
	s = strings.ReplaceAll(s, "\\r", "\r")
	s = strings.ReplaceAll(s, "\\t", "\t")
	return s
}

func isDigit(c byte) bool { return c >= '0' && c <= '9' }

func digits(s string, n int) bool {
	if len(s) < n {
		return false
	}
	for i := range n {
		if !isDigit(s[i]) {
			return false
		}
	}
	return true
}

// lexTemporal reads a date, dateTime or time literal after '@' by the
// grammar's DATE, DATETIME and TIME rules and returns its kind and length.
func lexTemporal(s string) (tokKind, int) {
	if strings.HasPrefix(s, "T") {
		n := lexTimeFormat(s[1:])
		if n == 0 {
			return tEOF, 0
		}
		return tTime, 1 + n
	}
	if !digits(s, 4) {
		return tEOF, 0
	}
	n := 4
	if len(s) > n+2 && s[n] == '-' && digits(s[n+1:], 2) {
		n += 3
		if len(s) > n+2 && s[n] == '-' && digits(s[n+1:], 2) {
			n += 3
		}
	}
	if n >= len(s) || s[n] != 'T' {
		return tDate, n
	}
	n++ // 'T'
	t := lexTimeFormat(s[n:])
	if t == 0 {
		return tDateTime, n
	}
	n += t
	if n < len(s) && s[n] == 'Z' {
		return tDateTime, n + 1
	}
	if len(s) >= n+6 && (s[n] == '+' || s[n] == '-') && digits(s[n+1:], 2) && s[n+3] == ':' && digits(s[n+4:], 2) {
		return tDateTime, n + 6
	}
	return tDateTime, n
}

func lexTimeFormat(s string) int {
	if !digits(s, 2) {
		return 0
	}
	n := 2
	if len(s) > n+2 && s[n] == ':' && digits(s[n+1:], 2) {
		n += 3
		if len(s) > n+2 && s[n] == ':' && digits(s[n+1:], 2) {
			n += 3
			if len(s) > n+1 && s[n] == '.' && isDigit(s[n+1]) {
				n++
				for n < len(s) && isDigit(s[n]) {
					n++
				}
			}
		}
	}
	return n
}

type parser struct {
	toks []token
	pos  int
}

// parseFast parses expr for the fast evaluator, or fails with errNotServed.
func parseFast(expr string) (*node, error) {
	toks, err := lex(expr)
	if err != nil {
		return nil, err
	}
	p := &parser{toks: toks}
	n, err := p.expression(0)
	if err != nil {
		return nil, err
	}
	if p.peek().kind != tEOF {
		return nil, errNotServed
	}
	return n, nil
}

func (p *parser) peek() token { return p.toks[p.pos] }
func (p *parser) next() token {
	t := p.toks[p.pos]
	if t.kind != tEOF {
		p.pos++
	}
	return t
}

// Binary operator precedence, loosest first, as in the FHIRPath grammar.
var precedence = map[string]int{
	"implies": 1,
	"or":      2, "xor": 2,
	"and": 3,
	"in":  4, "contains": 4,
	"=": 5, "~": 5, "!=": 5, "!~": 5,
	"<": 6, ">": 6, "<=": 6, ">=": 6,
	"|":  7,
	"is": 8, "as": 8,
	"+": 9, "-": 9, "&": 9,
	"*": 10, "/": 10, "div": 10, "mod": 10,
}

// operator returns the binary operator at the current token, if any.
func (p *parser) operator() (string, int) {
	t := p.peek()
	if t.kind != tSymbol && t.kind != tIdent {
		return "", 0
	}
	prec, ok := precedence[t.text]
	if !ok {
		return "", 0
	}
	return t.text, prec
}

func (p *parser) expression(minPrec int) (*node, error) {
	left, err := p.unary()
	if err != nil {
		return nil, err
	}
	for {
		op, prec := p.operator()
		if prec == 0 || prec <= minPrec {
			return left, nil
		}
		p.next()
		if op == "is" || op == "as" {
			name, err := p.typeSpecifier()
			if err != nil {
				return nil, err
			}
			kind := nIs
			if op == "as" {
				kind = nAs
			}
			left = &node{kind: kind, left: left, typeName: name}
			continue
		}
		right, err := p.expression(prec)
		if err != nil {
			return nil, err
		}
		left = &node{kind: nBinary, op: op, left: left, right: right}
	}
}

// typeSpecifier reads a (possibly qualified) type name; its text is what
// the gofhir engine matches, so it is kept as written.
func (p *parser) typeSpecifier() (string, error) {
	t := p.next()
	if t.kind != tIdent {
		return "", errNotServed
	}
	name := t.text
	for p.peek().kind == tSymbol && p.peek().text == "." {
		p.next()
		t := p.next()
		if t.kind != tIdent {
			return "", errNotServed
		}
		name += "." + t.text
	}
	return name, nil
}

func (p *parser) unary() (*node, error) {
	if t := p.peek(); t.kind == tSymbol && (t.text == "-" || t.text == "+") {
		p.next()
		operand, err := p.unary()
		if err != nil {
			return nil, err
		}
		if t.text == "+" {
			return &node{kind: nNegate, op: "+", left: operand}, nil
		}
		return &node{kind: nNegate, op: "-", left: operand}, nil
	}
	return p.postfix()
}

func (p *parser) postfix() (*node, error) {
	n, err := p.term()
	if err != nil {
		return nil, err
	}
	for {
		t := p.peek()
		if t.kind != tSymbol {
			return n, nil
		}
		switch t.text {
		case ".":
			p.next()
			inv, err := p.invocation(n)
			if err != nil {
				return nil, err
			}
			n = inv
		case "[":
			p.next()
			idx, err := p.expression(0)
			if err != nil {
				return nil, err
			}
			if t := p.next(); t.kind != tSymbol || t.text != "]" {
				return nil, errNotServed
			}
			n = &node{kind: nIndex, left: n, right: idx}
		default:
			return n, nil
		}
	}
}

func (p *parser) term() (*node, error) {
	t := p.peek()
	switch t.kind {
	case tString:
		p.next()
		return &node{kind: nLiteral, lit: types.Collection{types.NewString(t.text)}}, nil
	case tNumber:
		p.next()
		if nt := p.peek(); nt.kind == tString || (nt.kind == tIdent && precedence[nt.text] == 0) {
			return nil, errNotServed // a quantity literal
		}
		if !strings.Contains(t.text, ".") {
			if i, err := strconv.ParseInt(t.text, 10, 64); err == nil {
				return &node{kind: nLiteral, lit: types.Collection{types.NewInteger(i)}}, nil
			}
		}
		d, err := types.NewDecimal(t.text)
		if err != nil {
			return nil, errNotServed
		}
		return &node{kind: nLiteral, lit: types.Collection{d}}, nil
	case tDate:
		p.next()
		d, err := types.NewDate(t.text)
		if err != nil {
			return nil, errNotServed
		}
		return &node{kind: nLiteral, lit: types.Collection{d}}, nil
	case tDateTime:
		p.next()
		d, err := types.NewDateTime(t.text)
		if err != nil {
			return nil, errNotServed
		}
		return &node{kind: nLiteral, lit: types.Collection{d}}, nil
	case tTime:
		p.next()
		d, err := types.NewTime(t.text)
		if err != nil {
			return nil, errNotServed
		}
		return &node{kind: nLiteral, lit: types.Collection{d}}, nil
	case tSpecial:
		p.next()
		switch t.text {
		case "$this":
			return &node{kind: nThis}, nil
		case "%context", "%resource", "%rootResource":
			return &node{kind: nRoot}, nil
		}
		return nil, errNotServed
	case tSymbol:
		switch t.text {
		case "(":
			p.next()
			n, err := p.expression(0)
			if err != nil {
				return nil, err
			}
			if t := p.next(); t.kind != tSymbol || t.text != ")" {
				return nil, errNotServed
			}
			return n, nil
		case "{":
			return nil, errNotServed
		}
		return nil, errNotServed
	case tIdent:
		switch t.text {
		case "true", "false":
			p.next()
			return &node{kind: nLiteral, lit: types.Collection{types.NewBoolean(t.text == "true")}}, nil
		}
		if precedence[t.text] != 0 {
			return nil, errNotServed // a keyword used as a name
		}
		return p.invocation(nil)
	}
	return nil, errNotServed
}

// invocation reads a member or a function call on left (nil: on $this).
func (p *parser) invocation(left *node) (*node, error) {
	t := p.next()
	switch t.kind {
	case tIdent:
	case tSpecial:
		if t.text == "$this" && left == nil {
			return &node{kind: nThis}, nil
		}
		return nil, errNotServed
	default:
		return nil, errNotServed
	}
	if nt := p.peek(); nt.kind == tSymbol && nt.text == "(" {
		p.next()
		var args []*node
		if nt := p.peek(); nt.kind == tSymbol && nt.text == ")" {
			p.next()
		} else {
			for {
				a, err := p.expression(0)
				if err != nil {
					return nil, err
				}
				args = append(args, a)
				nt := p.next()
				if nt.kind == tSymbol && nt.text == ")" {
					break
				}
				if nt.kind != tSymbol || nt.text != "," {
					return nil, errNotServed
				}
			}
		}
		arity, ok := fastFuncs[t.text]
		if !ok || len(args) < arity[0] || len(args) > arity[1] {
			return nil, errNotServed
		}
		n := &node{kind: nFunc, name: t.text, left: left, args: args}
		if t.text == "ofType" {
			name, ok := typeArg(args[0])
			if !ok {
				return nil, errNotServed
			}
			n.typeName = name
		}
		return n, nil
	}
	return &node{kind: nMember, name: t.text, left: left}, nil
}

// typeArg returns the text of a type specifier given as a function
// argument (ofType(Quantity), ofType(FHIR.string)).
func typeArg(n *node) (string, bool) {
	switch {
	case n.kind == nMember && n.left == nil:
		return n.name, true
	case n.kind == nMember && n.left != nil:
		prefix, ok := typeArg(n.left)
		return prefix + "." + n.name, ok
	}
	return "", false
}

// fastFuncs are the functions the fast evaluator serves, with their
// minimum and maximum argument counts.
var fastFuncs = map[string][2]int{
	"where":      {1, 1},
	"exists":     {0, 1},
	"all":        {1, 1},
	"select":     {1, 1},
	"empty":      {0, 0},
	"count":      {0, 0},
	"first":      {0, 0},
	"last":       {0, 0},
	"tail":       {0, 0},
	"skip":       {1, 1},
	"take":       {1, 1},
	"not":        {0, 0},
	"iif":        {2, 3},
	"ofType":     {1, 1},
	"extension":  {1, 1},
	"startsWith": {1, 1},
}
