package path

import (
	"encoding/json"
	"fmt"
	"strconv"
	"strings"
	"unicode/utf8"
)

// SyntaxError reports why a path does not parse and where.
type SyntaxError struct {
	// Pos is the 0-based byte offset of the problem in Expr.
	Pos int
	// Msg says what was expected or found.
	Msg string
	// Expr is the path text.
	Expr string
}

// Error names the 1-based column of the problem.
func (e *SyntaxError) Error() string {
	return fmt.Sprintf("path %q: column %d: %s", e.Expr, e.Pos+1, e.Msg)
}

// maxIndex bounds [i] so that an index never overflows or asks for absurd
// growth.
const maxIndex = 1 << 20

// maxSteps bounds the number of steps, so that reading keeps its per-step
// counters on the stack.
const maxSteps = 32

type parser struct {
	src string
	pos int
}

func (p *parser) errorf(pos int, format string, args ...any) *SyntaxError {
	return &SyntaxError{Pos: pos, Msg: fmt.Sprintf(format, args...), Expr: p.src}
}

func (p *parser) skipSpace() {
	for p.pos < len(p.src) {
		switch p.src[p.pos] {
		case ' ', '\t', '\n', '\r':
			p.pos++
		default:
			return
		}
	}
}

func (p *parser) peek() byte {
	if p.pos < len(p.src) {
		return p.src[p.pos]
	}
	return 0
}

// describe names the text at pos for an error message.
func (p *parser) describe(pos int) string {
	if pos >= len(p.src) {
		return "end of path"
	}
	r, _ := utf8.DecodeRuneInString(p.src[pos:])
	return strconv.QuoteRune(r)
}

func isIdentStart(c byte) bool {
	return c == '_' || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z')
}

func isIdentPart(c byte) bool {
	return isIdentStart(c) || (c >= '0' && c <= '9')
}

func (p *parser) ident(what string) (string, error) {
	p.skipSpace()
	start := p.pos
	if !isIdentStart(p.peek()) {
		return "", p.errorf(start, "expected %s, found %s", what, p.describe(start))
	}
	for p.pos < len(p.src) && isIdentPart(p.src[p.pos]) {
		p.pos++
	}
	return p.src[start:p.pos], nil
}

func (p *parser) expect(c byte) error {
	p.skipSpace()
	if p.peek() != c {
		return p.errorf(p.pos, "expected %q, found %s", c, p.describe(p.pos))
	}
	p.pos++
	return nil
}

// parse reads: path = [ TypeName "." ] step { "." step }.
func (p *parser) parse() (root string, steps []step, err error) {
	p.skipSpace()
	if p.pos >= len(p.src) {
		return "", nil, p.errorf(p.pos, "empty path")
	}
	for {
		start := p.pos
		st, err := p.step()
		if err != nil {
			return "", nil, err
		}
		if len(steps) == 0 && root == "" && st.name[0] >= 'A' && st.name[0] <= 'Z' &&
			st.ext == "" && len(st.conds) == 0 && st.index < 0 {
			// A leading capitalised name is a resource type qualifier, as
			// in FHIRPath ("Patient.name"); FHIR element names are lower case.
			p.skipSpace()
			if p.peek() != '.' {
				return "", nil, p.errorf(start, "path %s names only a type; add an element, as in %s.id", st.name, st.name)
			}
			root = st.name
		} else {
			if len(steps) == maxSteps {
				return "", nil, p.errorf(start, "path has more than %d steps", maxSteps)
			}
			steps = append(steps, st)
		}
		p.skipSpace()
		if p.pos >= len(p.src) {
			return root, steps, nil
		}
		if p.peek() != '.' {
			return "", nil, p.errorf(p.pos, "expected '.', '[' or end of path, found %s", p.describe(p.pos))
		}
		p.pos++
	}
}

// step reads: ( "extension" "(" string ")" | name ) { ".where(" conds ")" } [ "[" index "]" ].
func (p *parser) step() (step, error) {
	st := step{index: -1}
	p.skipSpace()
	namePos := p.pos
	name, err := p.ident("an element name")
	if err != nil {
		return st, err
	}
	st.name = name
	p.skipSpace()
	if name == "where" {
		return st, p.errorf(namePos, "where() must follow an element, as in name.where(use='official')")
	}
	if p.peek() == '(' {
		if name != "extension" {
			return st, p.errorf(namePos, "function %s() is not part of the path language (only extension() and where() are); use a FHIRPath computed value for it", name)
		}
		p.pos++
		p.skipSpace()
		urlPos := p.pos
		url, err := p.str()
		if err != nil {
			return st, err
		}
		if url == "" {
			return st, p.errorf(urlPos, "extension url is empty")
		}
		st.ext = url
		if err := p.expect(')'); err != nil {
			return st, err
		}
	}
	for {
		save := p.pos
		p.skipSpace()
		if p.peek() != '.' {
			p.pos = save
			break
		}
		p.pos++
		p.skipSpace()
		if !strings.HasPrefix(p.src[p.pos:], "where") || (p.pos+5 < len(p.src) && isIdentPart(p.src[p.pos+5])) {
			p.pos = save
			break
		}
		p.pos += len("where")
		if err := p.expect('('); err != nil {
			return st, err
		}
		conds, err := p.conds()
		if err != nil {
			return st, err
		}
		st.conds = append(st.conds, conds...)
		if err := p.expect(')'); err != nil {
			return st, err
		}
	}
	p.skipSpace()
	if p.peek() == '[' {
		p.pos++
		p.skipSpace()
		start := p.pos
		for p.pos < len(p.src) && p.src[p.pos] >= '0' && p.src[p.pos] <= '9' {
			p.pos++
		}
		if start == p.pos {
			return st, p.errorf(start, "expected an index (0, 1, ...), found %s", p.describe(start))
		}
		n, err := strconv.Atoi(p.src[start:p.pos])
		if err != nil || n > maxIndex {
			return st, p.errorf(start, "index %s is too large (max %d)", p.src[start:p.pos], maxIndex)
		}
		if p.pos-start > 1 && p.src[start] == '0' {
			return st, p.errorf(start, "index %s has a leading zero", p.src[start:p.pos])
		}
		st.index = n
		if err := p.expect(']'); err != nil {
			return st, err
		}
		p.skipSpace()
		if p.peek() == '[' {
			return st, p.errorf(p.pos, "only one index per element")
		}
	}
	return st, nil
}

// conds reads: cond { "and" cond }, cond = field "=" literal.
func (p *parser) conds() ([]cond, error) {
	var out []cond
	for {
		c, err := p.cond()
		if err != nil {
			return nil, err
		}
		out = append(out, c)
		p.skipSpace()
		if strings.HasPrefix(p.src[p.pos:], "and") && (p.pos+3 >= len(p.src) || !isIdentPart(p.src[p.pos+3])) {
			p.pos += 3
			continue
		}
		return out, nil
	}
}

func (p *parser) cond() (cond, error) {
	var c cond
	for {
		partPos := p.pos
		part, err := p.ident("a field name")
		if err != nil {
			return c, err
		}
		p.skipSpace()
		if p.peek() == '(' {
			if part != "empty" || len(c.parts) == 0 {
				return c, p.errorf(partPos, "where() supports field = literal and field.empty(), joined by 'and'")
			}
			p.pos++
			if err := p.expect(')'); err != nil {
				return c, err
			}
			c.field = strings.Join(c.parts, ".")
			c.kind = Empty
			return c, nil
		}
		c.parts = append(c.parts, part)
		p.skipSpace()
		if p.peek() != '.' {
			break
		}
		p.pos++
	}
	c.field = strings.Join(c.parts, ".")
	p.skipSpace()
	if p.peek() != '=' {
		return c, p.errorf(p.pos, "expected '=' (where() supports field = literal joined by 'and'), found %s", p.describe(p.pos))
	}
	p.pos++
	p.skipSpace()
	start := p.pos
	switch ch := p.peek(); {
	case ch == '\'':
		s, err := p.str()
		if err != nil {
			return c, err
		}
		c.kind, c.text = String, s
	case ch == '-' || (ch >= '0' && ch <= '9'):
		p.pos++
		for p.pos < len(p.src) && (p.src[p.pos] >= '0' && p.src[p.pos] <= '9' || p.src[p.pos] == '.') {
			p.pos++
		}
		text := p.src[start:p.pos]
		f, err := strconv.ParseFloat(text, 64)
		if err != nil || !json.Valid([]byte(text)) {
			return c, p.errorf(start, "malformed number %q", text)
		}
		c.kind, c.text, c.num = Number, text, f
	case isIdentStart(ch):
		word, _ := p.ident("a literal")
		if word != "true" && word != "false" {
			return c, p.errorf(start, "expected a literal ('text', a number, true or false), found %s", word)
		}
		c.kind, c.text = Bool, word
	default:
		return c, p.errorf(start, "expected a literal ('text', a number, true or false), found %s", p.describe(start))
	}
	return c, nil
}

// str reads a single-quoted FHIRPath string with its escapes.
func (p *parser) str() (string, error) {
	p.skipSpace()
	start := p.pos
	if p.peek() != '\'' {
		return "", p.errorf(start, "expected a quoted string, found %s", p.describe(start))
	}
	p.pos++
	var b strings.Builder
	for {
		if p.pos >= len(p.src) {
			return "", p.errorf(start, "unterminated string")
		}
		c := p.src[p.pos]
		switch c {
		case '\'':
			p.pos++
			return b.String(), nil
		case '\\':
			if p.pos+1 >= len(p.src) {
				return "", p.errorf(p.pos, "unterminated escape")
			}
			e := p.src[p.pos+1]
			p.pos += 2
			switch e {
			case '\'', '"', '`', '\\', '/':
				b.WriteByte(e)
			case 'n':
				b.WriteByte('\n')
			case 'r':
				b.WriteByte('\r')
			case 't':
				b.WriteByte('\t')
			case 'f':
				b.WriteByte('\f')
			case 'u':
				if p.pos+4 > len(p.src) {
					return "", p.errorf(p.pos-2, `\u needs four hex digits`)
				}
				n, err := strconv.ParseUint(p.src[p.pos:p.pos+4], 16, 32)
				if err != nil {
					return "", p.errorf(p.pos-2, `\u needs four hex digits`)
				}
				b.WriteRune(rune(n))
				p.pos += 4
			default:
				return "", p.errorf(p.pos-2, "unknown escape \\%c", e)
			}
		default:
			r, n := utf8.DecodeRuneInString(p.src[p.pos:])
			if r == utf8.RuneError && n <= 1 {
				return "", p.errorf(p.pos, "string is not valid UTF-8")
			}
			b.WriteString(p.src[p.pos : p.pos+n])
			p.pos += n
		}
	}
}
