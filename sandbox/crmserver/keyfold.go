package crmserver

import (
	"fmt"
	"strings"
)

// keyPart is one alternate key value as the key index holds and compares
// it. Dataverse stores rows in SQL tables whose collation is case
// insensitive in every language ("Cafe" and "cafe" are the same word:
// "Microsoft Dataverse language collations",
// learn.microsoft.com/power-platform/admin/language-collations,
// MicrosoftDocs/power-platform power-platform/admin/language-collations.md),
// and an alternate key is a unique index on its columns, so string key
// values that differ only in case are one key: a second row with "ML"
// beside "ml" is refused as a duplicate, and a key given as "ML" finds the
// row holding "ml". The row keeps the value as it was written. (Most
// languages' collations are accent insensitive too; the stand-in does not
// fold accents.)
func keyPart(v any) string {
	if s, ok := v.(string); ok {
		return strings.ToLower(s)
	}
	return fmt.Sprint(v)
}
