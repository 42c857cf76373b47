package maps

import (
	"strings"

	"github.com/google/uuid"
)

// IsGUID reports whether s is a GUID in the form Dataverse writes row ids:
// 36 characters, hexadecimal digits (either case) in groups of 8-4-4-4-12
// separated by hyphens. The other forms uuid.Validate takes (braces,
// "urn:uuid:", no hyphens) are not ids the Web API writes or reads.
func IsGUID(s string) bool { return len(s) == 36 && uuid.Validate(s) == nil }

// BoundID returns the row id an "@odata.bind" value names, in lower case:
// the GUID between the last parentheses of "/entityset(id)" or of an
// absolute URL "https://org.crm.dynamics.com/api/data/v9.2/entityset(id)",
// both of which the Web API takes (Microsoft Learn, "Associate and
// disassociate table rows using the Web API", powerapps-docs
// powerapps-docs/developer/data-platform/webapi/associate-disassociate-entities-using-web-api.md).
// The GUID may stand in braces, as .NET formats them. ok is false for a
// bind that names no GUID: by alternate key ("/contacts(msemr_azurefhirid='p1')"),
// a Content-ID reference ("$1"), or not a bind at all.
func BoundID(bind string) (id string, ok bool) {
	i := strings.LastIndexByte(bind, '(')
	if i < 0 || !strings.HasSuffix(bind, ")") {
		return "", false
	}
	s := bind[i+1 : len(bind)-1]
	if len(s) == 38 && s[0] == '{' && s[37] == '}' {
		s = s[1:37]
	}
	if !IsGUID(s) {
		return "", false
	}
	return strings.ToLower(s), true
}
