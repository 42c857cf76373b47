package fhirpath

import (
	"fmt"
	"strings"
)

// refused lists the functions Compile rejects because the engine gives
// wrong results for them on ordinary data (see docs/fhirpath-divergences.md),
// with what to write instead.
var refused = map[string]string{
	"length":    "it counts bytes, not characters, so non-ASCII text gives wrong lengths; use toChars().count(), or exists()/empty() to test for text",
	"substring": "it cuts at byte offsets and splits non-ASCII characters; use startsWith(), endsWith(), contains() or matches()",
	"indexOf":   "it returns byte offsets, which are wrong for non-ASCII text; use contains() or matches()",
}

// checkFunctions returns an error naming the first refused function called
// in expr. It scans tokens, skipping string literals, delimited identifiers
// and comments, and treats an identifier followed by "(" as a call.
func checkFunctions(expr string) error {
	for i := 0; i < len(expr); {
		c := expr[i]
		switch {
		case c == '\'' || c == '`':
			i = skipQuoted(expr, i)
		case strings.HasPrefix(expr[i:], "//"):
			if j := strings.IndexByte(expr[i:], '\n'); j >= 0 {
				i += j + 1
			} else {
				i = len(expr)
			}
		case strings.HasPrefix(expr[i:], "/*"):
			if j := strings.Index(expr[i+2:], "*/"); j >= 0 {
				i += j + 4
			} else {
				i = len(expr)
			}
		case isIdentStart(c):
			start := i
			for i < len(expr) && isIdentPart(expr[i]) {
				i++
			}
			name := expr[start:i]
			j := i
			for j < len(expr) && (expr[j] == ' ' || expr[j] == '\t' || expr[j] == '\n' || expr[j] == '\r') {
				j++
			}
			if j < len(expr) && expr[j] == '(' {
				if why, bad := refused[name]; bad {
					return fmt.Errorf("FHIRPath %q: %s() is not allowed in maps: %s", expr, name, why)
				}
			}
		default:
			i++
		}
	}
	return nil
}

// skipQuoted returns the index after the quoted token starting at i.
func skipQuoted(s string, i int) int {
	q := s[i]
	for i++; i < len(s); i++ {
		switch s[i] {
		case '\\':
			i++
		case q:
			return i + 1
		}
	}
	return len(s)
}

func isIdentStart(c byte) bool {
	return c == '_' || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z')
}

func isIdentPart(c byte) bool {
	return isIdentStart(c) || (c >= '0' && c <= '9')
}
