package crmserver

import (
	"fmt"
	"strings"
	"unicode"

	"golang.org/x/text/runes"
	"golang.org/x/text/transform"
	"golang.org/x/text/unicode/norm"
)

// keyPart is one alternate key value as the key index holds and compares
// it. Dataverse stores rows in SQL tables whose collation follows the
// environment's base language ("Microsoft Dataverse language collations",
// learn.microsoft.com/power-platform/admin/language-collations,
// MicrosoftDocs/power-platform power-platform/admin/language-collations.md):
// case insensitive in every language ("Cafe" and "cafe" are the same word),
// and accent insensitive in most, English (United States, 1033) among them
// (_CI_AI: "cafe" and "café" are the same word; Finnish and Swedish, among
// a few others, are _CI_AS). The stand-in is such a 1033 environment. An
// alternate key is a unique index on its columns, so string key values that
// differ only in case or accents are one key: a second row with "ML" beside
// "ml", or "Jose" beside "José", is refused as a duplicate, and a key given
// as either finds the row. The row keeps the value as it was written.
func keyPart(v any) string {
	if s, ok := v.(string); ok {
		return collate(s)
	}
	return fmt.Sprint(v)
}

// collate is s as a _CI_AI collation compares it: lower-cased, and without
// the combining marks Unicode's canonical decomposition (NFD) splits off
// accented letters ("é" is "e" and U+0301). SQL Server's collations also
// equate some letters this leaves apart (ligatures, "ß" and "ss"); the
// stand-in does not.
func collate(s string) string {
	ascii := true
	for i := 0; i < len(s); i++ {
		if s[i] >= 0x80 {
			ascii = false
			break
		}
	}
	if ascii {
		return strings.ToLower(s)
	}
	t := transform.Chain(norm.NFD, runes.Remove(runes.In(unicode.Mn)), norm.NFC)
	out, _, err := transform.String(t, s)
	if err != nil {
		out = s
	}
	return strings.ToLower(out)
}
