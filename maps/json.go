package maps

import (
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"slices"
	"strconv"
	"unicode/utf16"
	"unicode/utf8"

	"github.com/fhirsync/fhirsync/internal/bufpool"
)

// DecodeJSON decodes a JSON object into the generic values the engine
// works on — map[string]any, []any, string, bool, json.Number and nil —
// exactly as encoding/json does with UseNumber (decimals keep their text;
// invalid UTF-8 becomes U+FFFD; a repeated key keeps its last value), but
// several times faster, since resources are decoded on every message.
func DecodeJSON(data []byte) (map[string]any, error) {
	d := jsonDecoder{data: data}
	d.space()
	v, err := d.value(0)
	if err != nil {
		return nil, err
	}
	d.space()
	if d.pos != len(d.data) {
		return nil, d.errorf("unexpected data after the top-level value")
	}
	m, ok := v.(map[string]any)
	if !ok {
		return nil, errors.New("decoding JSON: expected an object")
	}
	return m, nil
}

// maxJSONDepth matches encoding/json's nesting limit.
const maxJSONDepth = 10000

type jsonDecoder struct {
	data []byte
	pos  int
	kvs  []keyValue // members of the objects being decoded
	vals []any      // items of the arrays being decoded
}

type keyValue struct {
	k string
	v any
}

func (d *jsonDecoder) errorf(format string, args ...any) error {
	return fmt.Errorf("decoding JSON at offset %d: %s", d.pos, fmt.Sprintf(format, args...))
}

func (d *jsonDecoder) space() {
	for d.pos < len(d.data) {
		switch d.data[d.pos] {
		case ' ', '\t', '\n', '\r':
			d.pos++
		default:
			return
		}
	}
}

func (d *jsonDecoder) value(depth int) (any, error) {
	if depth > maxJSONDepth {
		return nil, d.errorf("nested too deeply")
	}
	if d.pos >= len(d.data) {
		return nil, d.errorf("unexpected end of input")
	}
	switch c := d.data[d.pos]; {
	case c == '{':
		return d.object(depth)
	case c == '[':
		return d.array(depth)
	case c == '"':
		return d.intern(commonValues)
	case c == 't':
		return true, d.literal("true")
	case c == 'f':
		return false, d.literal("false")
	case c == 'n':
		return nil, d.literal("null")
	case c == '-' || (c >= '0' && c <= '9'):
		return d.number()
	}
	return nil, d.errorf("invalid character looking for a value")
}

func (d *jsonDecoder) literal(lit string) error {
	if len(d.data)-d.pos < len(lit) || string(d.data[d.pos:d.pos+len(lit)]) != lit {
		return d.errorf("invalid literal")
	}
	d.pos += len(lit)
	return nil
}

// object and array collect members on the decoder's scratch stacks and
// allocate the map or slice once at its final size, which avoids growing
// (and rehashing) them member by member.
func (d *jsonDecoder) object(depth int) (any, error) {
	d.pos++ // {
	d.space()
	if d.pos < len(d.data) && d.data[d.pos] == '}' {
		d.pos++
		return map[string]any{}, nil
	}
	mark := len(d.kvs)
	defer func() { d.kvs = d.kvs[:mark] }()
	for {
		d.space()
		if d.pos >= len(d.data) || d.data[d.pos] != '"' {
			return nil, d.errorf("expected a string key")
		}
		k, err := d.intern(commonKeys)
		if err != nil {
			return nil, err
		}
		d.space()
		if d.pos >= len(d.data) || d.data[d.pos] != ':' {
			return nil, d.errorf("expected ':' after an object key")
		}
		d.pos++
		d.space()
		v, err := d.value(depth + 1)
		if err != nil {
			return nil, err
		}
		d.kvs = append(d.kvs, keyValue{k, v})
		d.space()
		if d.pos >= len(d.data) {
			return nil, d.errorf("unexpected end of input in an object")
		}
		switch d.data[d.pos] {
		case ',':
			d.pos++
		case '}':
			d.pos++
			members := d.kvs[mark:]
			m := make(map[string]any, len(members))
			for _, kv := range members {
				m[kv.k] = kv.v
			}
			return m, nil
		default:
			return nil, d.errorf("expected ',' or '}' in an object")
		}
	}
}

func (d *jsonDecoder) array(depth int) (any, error) {
	d.pos++ // [
	d.space()
	if d.pos < len(d.data) && d.data[d.pos] == ']' {
		d.pos++
		return []any{}, nil
	}
	mark := len(d.vals)
	defer func() { d.vals = d.vals[:mark] }()
	for {
		d.space()
		v, err := d.value(depth + 1)
		if err != nil {
			return nil, err
		}
		d.vals = append(d.vals, v)
		d.space()
		if d.pos >= len(d.data) {
			return nil, d.errorf("unexpected end of input in an array")
		}
		switch d.data[d.pos] {
		case ',':
			d.pos++
		case ']':
			d.pos++
			return slices.Clone(d.vals[mark:]), nil
		default:
			return nil, d.errorf("expected ',' or ']' in an array")
		}
	}
}

func (d *jsonDecoder) number() (any, error) {
	start := d.pos
	p := d.pos
	n := len(d.data)
	if p < n && d.data[p] == '-' {
		p++
	}
	switch {
	case p < n && d.data[p] == '0':
		p++
	case p < n && d.data[p] >= '1' && d.data[p] <= '9':
		for p < n && d.data[p] >= '0' && d.data[p] <= '9' {
			p++
		}
	default:
		d.pos = p
		return nil, d.errorf("malformed number")
	}
	if p < n && d.data[p] == '.' {
		p++
		if p >= n || d.data[p] < '0' || d.data[p] > '9' {
			d.pos = p
			return nil, d.errorf("malformed number")
		}
		for p < n && d.data[p] >= '0' && d.data[p] <= '9' {
			p++
		}
	}
	if p < n && (d.data[p] == 'e' || d.data[p] == 'E') {
		p++
		if p < n && (d.data[p] == '+' || d.data[p] == '-') {
			p++
		}
		if p >= n || d.data[p] < '0' || d.data[p] > '9' {
			d.pos = p
			return nil, d.errorf("malformed number")
		}
		for p < n && d.data[p] >= '0' && d.data[p] <= '9' {
			p++
		}
	}
	d.pos = p
	return json.Number(d.data[start:p]), nil
}

// commonKeys holds element names that occur in nearly every FHIR resource
// or CRM record, so decoding them costs no allocation. It is never written
// after initialisation.
var commonKeys = func() map[string]string {
	m := map[string]string{}
	for _, k := range []string{"resourceType", "id", "meta", "versionId", "lastUpdated", "profile", "text", "status", "div",
		"extension", "url", "valueString", "valueDecimal", "valueCode", "valueAddress", "valueDateTime", "valueQuantity",
		"identifier", "use", "type", "system", "value", "code", "display", "coding", "period", "start", "end", "assigner",
		"name", "family", "given", "prefix", "suffix", "telecom", "rank", "gender", "birthDate", "address", "line", "city",
		"state", "postalCode", "country", "district", "maritalStatus", "communication", "language", "preferred",
		"generalPractitioner", "managingOrganization", "reference", "active", "contained", "contact", "relationship",
		"organization", "subject", "encounter", "effectiveDateTime", "unit", "category", "class", "participant",
		"individual", "serviceProvider", "record", "children", "statecode", "deceasedBoolean", "deceasedDateTime"} {
		m[k] = k
	}
	return m
}()

// commonValues holds codes that recur in most resources.
var commonValues = func() map[string]string {
	m := map[string]string{}
	for _, v := range []string{"official", "usual", "temp", "secondary", "old", "nickname", "maiden", "home", "work", "mobile",
		"phone", "email", "fax", "url", "both", "physical", "postal", "male", "female", "other", "unknown", "final",
		"finished", "amended", "preliminary", "in-progress", "planned", "Patient", "Practitioner", "Organization",
		"Encounter", "Observation", "http://terminology.hl7.org/CodeSystem/v2-0203", "MR", "urn:ietf:bcp:47", "US", "kg"} {
		m[v] = v
	}
	return m
}()

// intern reads a string, reusing it from table when it is there.
func (d *jsonDecoder) intern(table map[string]string) (string, error) {
	start := d.pos + 1
	for p := start; p < len(d.data) && p-start < 48; p++ {
		c := d.data[p]
		if c == '"' {
			if k, ok := table[string(d.data[start:p])]; ok {
				d.pos = p + 1
				return k, nil
			}
			break
		}
		if c == '\\' || c < 0x20 || c >= utf8.RuneSelf {
			break
		}
	}
	return d.str()
}

// str reads a string, taking the fast path when it has no escapes, no
// control characters and valid UTF-8.
func (d *jsonDecoder) str() (string, error) {
	d.pos++ // opening quote
	start := d.pos
	for p := start; p < len(d.data); p++ {
		c := d.data[p]
		switch {
		case c == '"':
			d.pos = p + 1
			return string(d.data[start:p]), nil
		case c == '\\' || c < 0x20 || c >= utf8.RuneSelf:
			return d.slowStr(start)
		}
	}
	d.pos = len(d.data)
	return "", d.errorf("unterminated string")
}

func (d *jsonDecoder) slowStr(start int) (string, error) {
	buf := make([]byte, 0, 32)
	p := start
	for p < len(d.data) {
		c := d.data[p]
		switch {
		case c == '"':
			d.pos = p + 1
			return string(buf), nil
		case c < 0x20:
			d.pos = p
			return "", d.errorf("control character in a string")
		case c == '\\':
			p++
			if p >= len(d.data) {
				d.pos = p
				return "", d.errorf("unterminated string")
			}
			switch e := d.data[p]; e {
			case '"', '\\', '/':
				buf = append(buf, e)
				p++
			case 'b':
				buf = append(buf, '\b')
				p++
			case 'f':
				buf = append(buf, '\f')
				p++
			case 'n':
				buf = append(buf, '\n')
				p++
			case 'r':
				buf = append(buf, '\r')
				p++
			case 't':
				buf = append(buf, '\t')
				p++
			case 'u':
				r, ok := hex4(d.data, p+1)
				if !ok {
					d.pos = p
					return "", d.errorf("malformed \\u escape")
				}
				p += 5
				if utf16.IsSurrogate(r) {
					r2, ok2 := rune(-1), false
					if p+1 < len(d.data) && d.data[p] == '\\' && d.data[p+1] == 'u' {
						r2, ok2 = hex4(d.data, p+2)
					}
					if dec := utf16.DecodeRune(r, r2); ok2 && dec != utf8.RuneError {
						r = dec
						p += 6
					} else {
						r = utf8.RuneError
					}
				}
				buf = utf8.AppendRune(buf, r)
			default:
				d.pos = p
				return "", d.errorf("invalid escape")
			}
		case c < utf8.RuneSelf:
			buf = append(buf, c)
			p++
		default:
			r, size := utf8.DecodeRune(d.data[p:])
			if r == utf8.RuneError && size == 1 {
				buf = utf8.AppendRune(buf, utf8.RuneError)
			} else {
				buf = append(buf, d.data[p:p+size]...)
			}
			p += size
		}
	}
	d.pos = p
	return "", d.errorf("unterminated string")
}

func hex4(b []byte, p int) (rune, bool) {
	if p+4 > len(b) {
		return 0, false
	}
	var r rune
	for _, c := range b[p : p+4] {
		switch {
		case c >= '0' && c <= '9':
			c -= '0'
		case c >= 'a' && c <= 'f':
			c = c - 'a' + 10
		case c >= 'A' && c <= 'F':
			c = c - 'A' + 10
		default:
			return 0, false
		}
		r = r*16 + rune(c)
	}
	return r, true
}

// EncodeJSON encodes generic values exactly as encoding/json.Marshal does
// (object keys sorted, HTML characters and U+2028/U+2029 escaped, invalid
// UTF-8 as U+FFFD), without reflection for the generic shapes.
//
// The encoding is made in a reused buffer and copied out at its size: a
// buffer grown by doubling would cost up to twice the encoding's size, and
// a fixed first size too much for the small ones.
func EncodeJSON(v any) ([]byte, error) {
	p := encodeBuffers.Get()
	b, err := appendJSON(*p, v)
	if err != nil {
		encodeBuffers.Put(p, *p)
		return nil, err
	}
	out := bufpool.Clone(b)
	encodeBuffers.Put(p, b)
	return out, nil
}

// AppendJSON appends v as EncodeJSON encodes it; on an error b is
// returned as it was.
func AppendJSON(b []byte, v any) ([]byte, error) {
	out, err := appendJSON(b, v)
	if err != nil {
		return b, err
	}
	return out, nil
}

func appendJSON(b []byte, v any) ([]byte, error) {
	switch x := v.(type) {
	case nil:
		return append(b, "null"...), nil
	case string:
		return appendString(b, x), nil
	case bool:
		return strconv.AppendBool(b, x), nil
	case int:
		return strconv.AppendInt(b, int64(x), 10), nil
	case int64:
		return strconv.AppendInt(b, x, 10), nil
	case []string:
		return appendList(b, x, func(b []byte, s string) ([]byte, error) { return appendString(b, s), nil })
	case json.Number:
		if x == "" {
			return append(b, '0'), nil
		}
		if !validNumber(string(x)) {
			return nil, fmt.Errorf("encoding JSON: invalid number literal")
		}
		return append(b, x...), nil
	case map[string]any:
		if x == nil {
			return append(b, "null"...), nil
		}
		if len(x) == 0 {
			return append(b, "{}"...), nil
		}
		var stack [32]string
		keys := stack[:0]
		for k := range x {
			keys = append(keys, k)
		}
		slices.Sort(keys)
		b = append(b, '{')
		for i, k := range keys {
			if i > 0 {
				b = append(b, ',')
			}
			b = appendString(b, k)
			b = append(b, ':')
			var err error
			if b, err = appendJSON(b, x[k]); err != nil {
				return nil, err
			}
		}
		return append(b, '}'), nil
	case []any:
		return appendList(b, x, appendJSON)
	case float64:
		if math.IsInf(x, 0) || math.IsNaN(x) {
			return nil, fmt.Errorf("encoding JSON: unsupported float value")
		}
	}
	raw, err := json.Marshal(v)
	if err != nil {
		return nil, err
	}
	return append(b, raw...), nil
}

// appendList appends xs as a JSON array (null when nil), each element
// written by elem.
func appendList[T any](b []byte, xs []T, elem func([]byte, T) ([]byte, error)) ([]byte, error) {
	if xs == nil {
		return append(b, "null"...), nil
	}
	b = append(b, '[')
	for i, e := range xs {
		if i > 0 {
			b = append(b, ',')
		}
		var err error
		if b, err = elem(b, e); err != nil {
			return nil, err
		}
	}
	return append(b, ']'), nil
}

// AppendJSONString appends s as a JSON string, escaped exactly as
// encoding/json.Marshal escapes it.
func AppendJSONString(b []byte, s string) []byte { return appendString(b, s) }

// ValidJSONNumber reports whether s is a JSON number literal, the check
// encoding/json makes before writing a json.Number.
func ValidJSONNumber(s string) bool { return validNumber(s) }

func validNumber(s string) bool {
	d := jsonDecoder{data: []byte(s)}
	_, err := d.number()
	return err == nil && d.pos == len(s)
}

const hexDigits = "0123456789abcdef"

func appendString(b []byte, s string) []byte {
	b = append(b, '"')
	start := 0
	for i := 0; i < len(s); {
		c := s[i]
		if c < utf8.RuneSelf {
			if c >= 0x20 && c != '"' && c != '\\' && c != '<' && c != '>' && c != '&' {
				i++
				continue
			}
			b = append(b, s[start:i]...)
			switch c {
			case '"', '\\':
				b = append(b, '\\', c)
			case '\b':
				b = append(b, '\\', 'b')
			case '\f':
				b = append(b, '\\', 'f')
			case '\n':
				b = append(b, '\\', 'n')
			case '\r':
				b = append(b, '\\', 'r')
			case '\t':
				b = append(b, '\\', 't')
			default:
				b = append(b, '\\', 'u', '0', '0', hexDigits[c>>4], hexDigits[c&0xF])
			}
			i++
			start = i
			continue
		}
		r, size := utf8.DecodeRuneInString(s[i:])
		if r == utf8.RuneError && size == 1 {
			b = append(b, s[start:i]...)
			b = append(b, `\ufffd`...)
			i += size
			start = i
			continue
		}
		if r == '\u2028' || r == '\u2029' {
			b = append(b, s[start:i]...)
			b = append(b, '\\', 'u', '2', '0', '2', hexDigits[r&0xF])
			i += size
			start = i
			continue
		}
		i += size
	}
	b = append(b, s[start:]...)
	return append(b, '"')
}

// encodeBuffers are EncodeJSON's buffers.
var encodeBuffers bufpool.Pool
