package path

import (
	"strconv"
	"strings"
	"sync/atomic"
)

// Path is a compiled path. It is immutable apart from an internal cache and
// safe for concurrent use; compile it once and use it for every record.
type Path struct {
	text  string
	root  string // leading resource type qualifier ("Patient.name"), or ""
	ctx   string // context bound by CompileIn, or ""
	steps []step
	plan  atomic.Pointer[plan]
}

// Segment is one step of a path, as exposed for validation against R4 element
// definitions.
type Segment struct {
	// Name is the JSON element name ("name", "given", "extension").
	Name string
	// Extension is the extension url when the step is extension('url'); Name
	// is then "extension".
	Extension string
	// Index is the [i] index, or -1 when the step has none.
	Index int
	// Where holds the conditions of where(), all of which must hold.
	Where []Cond
}

// Cond is one equality condition of a where() filter: Field = Value.
type Cond struct {
	// Field is the element compared, relative to the filtered item; it may be
	// dotted ("type.coding.code").
	Field string
	// Value is the literal's text: the unquoted string, "true"/"false" or
	// the number as written.
	Value string
	// Kind says which literal Value holds; the zero value is a string.
	Kind Kind
}

// Kind is the type of a where() literal.
type Kind uint8

const (
	// String is a quoted string literal ('official').
	String Kind = iota
	// Bool is true or false.
	Bool
	// Number is an integer or decimal literal (2, 1.5, -3).
	Number
	// Empty is the condition field.empty(): the item has no such field
	// (address.where(use.empty()) selects addresses without a use). Value
	// is "" then; items created for the step do not get the field.
	Empty
)

type step struct {
	name  string
	ext   string // extension url, for extension('url')
	index int    // -1 = none
	conds []cond
	// selfRef marks a filtered step whose next step writes a field its
	// filter reads (name.where(given='x').given): such paths read but do
	// not write.
	selfRef bool
}

type cond struct {
	field string
	parts []string // field split on "."
	kind  Kind
	text  string // literal text (unquoted string, true/false, number)
	num   float64
}

// filtered reports whether the step selects items by extension url or where().
func (s *step) filtered() bool { return s.ext != "" || len(s.conds) > 0 }

// Compile parses expr. Errors are *SyntaxError and name the position.
func Compile(expr string) (*Path, error) {
	return compile(expr, "")
}

// CompileIn parses expr as a path relative to an element of the R4 type or
// backbone path typeName ("Identifier", "HumanName", "Patient.contact"). It is
// for paths inside an array item, such as the element attribute maps of an
// expansion map, where the item carries no resourceType to learn which of its
// elements repeat.
func CompileIn(typeName, expr string) (*Path, error) {
	return compile(expr, typeName)
}

// MustCompile is like Compile but panics if expr does not parse. It is for
// paths fixed in code.
func MustCompile(expr string) *Path {
	p, err := Compile(expr)
	if err != nil {
		panic(err)
	}
	return p
}

func compile(expr, ctx string) (*Path, error) {
	ps := parser{src: expr}
	root, steps, err := ps.parse()
	if err != nil {
		return nil, err
	}
	for i := 0; i+1 < len(steps); i++ {
		next := steps[i+1].name
		if steps[i].ext != "" && next == "url" {
			steps[i].selfRef = true
		}
		for _, c := range steps[i].conds {
			if c.parts[0] == next {
				steps[i].selfRef = true
			}
		}
	}
	p := &Path{root: root, ctx: ctx, steps: steps}
	p.text = p.canonical()
	return p, nil
}

// String returns the canonical text of the path; compiling it again gives an
// equivalent path with the same String.
func (p *Path) String() string { return p.text }

// Type returns the leading resource type qualifier ("Patient" for
// "Patient.name.family"), or "" when the path has none.
func (p *Path) Type() string { return p.root }

// Segments returns the steps of the path (without the type qualifier). The
// result is a copy.
func (p *Path) Segments() []Segment {
	out := make([]Segment, len(p.steps))
	for i, st := range p.steps {
		seg := Segment{Name: st.name, Extension: st.ext, Index: st.index}
		for _, c := range st.conds {
			seg.Where = append(seg.Where, Cond{Field: c.field, Value: c.text, Kind: c.kind})
		}
		out[i] = seg
	}
	return out
}

func (p *Path) canonical() string {
	var b strings.Builder
	if p.root != "" {
		b.WriteString(p.root)
		b.WriteByte('.')
	}
	for i, st := range p.steps {
		if i > 0 {
			b.WriteByte('.')
		}
		if st.ext != "" {
			b.WriteString("extension(")
			writeQuoted(&b, st.ext)
			b.WriteByte(')')
		} else {
			b.WriteString(st.name)
		}
		if len(st.conds) > 0 {
			b.WriteString(".where(")
			for j, c := range st.conds {
				if j > 0 {
					b.WriteString(" and ")
				}
				b.WriteString(c.field)
				if c.kind == Empty {
					b.WriteString(".empty()")
					continue
				}
				b.WriteByte('=')
				if c.kind == String {
					writeQuoted(&b, c.text)
				} else {
					b.WriteString(c.text)
				}
			}
			b.WriteByte(')')
		}
		if st.index >= 0 {
			b.WriteByte('[')
			b.WriteString(strconv.Itoa(st.index))
			b.WriteByte(']')
		}
	}
	return b.String()
}

// writeQuoted writes s as a FHIRPath single-quoted string.
func writeQuoted(b *strings.Builder, s string) {
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
			if r < 0x20 || r == 0x7f || r == 0xfffd {
				b.WriteString(`\u`)
				h := strconv.FormatInt(int64(r), 16)
				b.WriteString(strings.Repeat("0", 4-len(h)))
				b.WriteString(h)
				continue
			}
			b.WriteRune(r)
		}
	}
	b.WriteByte('\'')
}
