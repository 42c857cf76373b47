package admin

import (
	_ "embed"
	"strings"
	"sync"
	"unicode"
)

// commonPasswordList is the list of refused passwords, one a line,
// "#" starting a comment; see the file's header for where it comes from.
//
//go:embed common_passwords.txt
var commonPasswordList string

// commonPasswords is commonPasswordList as a set of lower-case entries.
var commonPasswords = sync.OnceValue(func() map[string]bool {
	set := map[string]bool{}
	for _, line := range strings.Split(commonPasswordList, "\n") {
		if line = strings.TrimSpace(line); line != "" && !strings.HasPrefix(line, "#") {
			set[strings.ToLower(line)] = true
		}
	}
	return set
})

// isCommonPassword reports whether pw is on the list (ignoring case), is a
// listed word followed only by digits and symbols, or is one short unit
// repeated ("abcabcabcabc") or a run of consecutive characters
// ("123456789012", "abcdefghijkl").
func isCommonPassword(pw string) bool {
	lower := strings.ToLower(pw)
	set := commonPasswords()
	if set[lower] {
		return true
	}
	base := strings.TrimRightFunc(lower, func(r rune) bool { return unicode.IsDigit(r) || unicode.IsPunct(r) || unicode.IsSymbol(r) })
	if base != lower && set[base] {
		return true
	}
	return repeatsUnit(lower) || isRun(lower)
}

// repeatsUnit reports whether s is a unit of at most four characters
// repeated.
func repeatsUnit(s string) bool {
	r := []rune(s)
	for n := 1; n <= 4 && n < len(r); n++ {
		if len(r)%n != 0 {
			continue
		}
		same := true
		for i := n; i < len(r) && same; i++ {
			same = r[i] == r[i-n]
		}
		if same {
			return true
		}
	}
	return false
}

// isRun reports whether every character of s is one more (or one less)
// than the one before, digits wrapping from 9 to 0.
func isRun(s string) bool {
	r := []rune(s)
	if len(r) < 2 {
		return false
	}
	step := func(a, b rune, d rune) bool {
		if a+d == b {
			return true
		}
		return (d == 1 && a == '9' && b == '0') || (d == -1 && a == '0' && b == '9')
	}
	for _, d := range []rune{1, -1} {
		ok := true
		for i := 1; i < len(r) && ok; i++ {
			ok = step(r[i-1], r[i], d)
		}
		if ok {
			return true
		}
	}
	return false
}
