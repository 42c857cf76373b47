// Package jsonenc writes JSON values as encoding/json's Marshal writes
// them — byte for byte — without reflection for what a decoded JSON
// document holds: nil, bool, string, float64, json.Number, []any,
// []map[string]any and map[string]any (keys sorted, as Marshal sorts
// them). Anything else is handed to json.Marshal.
//
// The agent stores keyed hashes of encoded values (the base state of a
// linked pair, the values of its own writes), so an encoder that wrote
// other bytes — another escaping of "<", another float format — would
// make every stored hash differ after an upgrade. The faster JSON
// libraries (goccy/go-json, segmentio/encoding, sonic) aim at
// compatibility but do not promise identical bytes, so the few cases the
// agent encodes on every record are written here and checked against
// encoding/json by a table test and a fuzz target.
package jsonenc

import (
	"encoding/json"
	"math"
	"slices"
	"strconv"
)

// Append appends the bytes json.Marshal writes for v — the same
// bytes, as hashes of them are stored — writing what a decoded JSON
// document holds (null, booleans, strings, json.Number, float64 in the
// range Marshal writes without an exponent, []any and map[string]any, keys
// sorted) itself, without reflection; anything else, and strings Marshal
// escapes, go through json.Marshal. TestAppendMatchesMarshal and FuzzAppendMatchesMarshal
// compare the two. ok is false when v cannot
// be encoded; b is then unchanged.
func Append(b []byte, v any) (_ []byte, ok bool) {
	start := len(b)
	switch x := v.(type) {
	case nil:
		return append(b, "null"...), true
	case bool:
		return strconv.AppendBool(b, x), true
	case string:
		return appendString(b, x), true
	case float64:
		// encoding/json writes 'f' format between 1e-6 and 1e21.
		if a := math.Abs(x); x == 0 || (a >= 1e-6 && a < 1e21) {
			return strconv.AppendFloat(b, x, 'f', -1, 64), true
		}
	case json.Number:
		if x == "" {
			return append(b, '0'), true // as Marshal writes an empty Number
		}
		if plainNumber(string(x)) {
			return append(b, x...), true
		}
	case []any:
		if x == nil {
			return append(b, "null"...), true
		}
		b = append(b, '[')
		for i, e := range x {
			if i > 0 {
				b = append(b, ',')
			}
			if b, ok = Append(b, e); !ok {
				return b[:start], false
			}
		}
		return append(b, ']'), true
	case []map[string]any:
		if x == nil {
			return append(b, "null"...), true
		}
		b = append(b, '[')
		for i, e := range x {
			if i > 0 {
				b = append(b, ',')
			}
			if b, ok = Append(b, e); !ok {
				return b[:start], false
			}
		}
		return append(b, ']'), true
	case map[string]any:
		if x == nil {
			return append(b, "null"...), true
		}
		var keys [16]string
		ks := keys[:0]
		for k := range x {
			ks = append(ks, k)
		}
		slices.Sort(ks)
		b = append(b, '{')
		for i, k := range ks {
			if i > 0 {
				b = append(b, ',')
			}
			b = appendString(b, k)
			b = append(b, ':')
			if b, ok = Append(b, x[k]); !ok {
				return b[:start], false
			}
		}
		return append(b, '}'), true
	}
	j, err := json.Marshal(v)
	if err != nil {
		return b[:start], false
	}
	return append(b, j...), true
}

// appendString appends s as json.Marshal writes it.
func appendString(b []byte, s string) []byte {
	if plainString(s) {
		b = append(b, '"')
		b = append(b, s...)
		return append(b, '"')
	}
	j, _ := json.Marshal(s) // a string always encodes
	return append(b, j...)
}

// plainNumber reports whether s is a number as JSON writes it
// (RFC 8259 section 6), which Marshal copies as it is.
func plainNumber(s string) bool {
	i := 0
	if i < len(s) && s[i] == '-' {
		i++
	}
	digits := func() int {
		n := 0
		for i < len(s) && s[i] >= '0' && s[i] <= '9' {
			i, n = i+1, n+1
		}
		return n
	}
	switch {
	case i < len(s) && s[i] == '0':
		i++
	case digits() == 0:
		return false
	}
	if i < len(s) && s[i] == '.' {
		i++
		if digits() == 0 {
			return false
		}
	}
	if i < len(s) && (s[i] == 'e' || s[i] == 'E') {
		i++
		if i < len(s) && (s[i] == '+' || s[i] == '-') {
			i++
		}
		if digits() == 0 {
			return false
		}
	}
	return i == len(s)
}

// plainString reports whether json.Marshal writes s as it is between
// quotes: printable ASCII without the characters it escapes.
func plainString(s string) bool {
	for i := 0; i < len(s); i++ {
		c := s[i]
		if c < 0x20 || c > 0x7e || c == '"' || c == '\\' || c == '<' || c == '>' || c == '&' {
			return false
		}
	}
	return true
}

// Marshal returns what json.Marshal returns for v.
func Marshal(v any) ([]byte, error) {
	if b, ok := Append(nil, v); ok {
		return b, nil
	}
	return json.Marshal(v) // for its error
}
