package maps_test

import (
	"testing"

	"github.com/fhirsync/fhirsync/maps"
)

// TestBoundID pins the one reading of an @odata.bind value's id. Two
// readings came before it: the echo hash's (a GUID, spaces and braces
// trimmed) and the base state's (whatever stood between the last
// parentheses, single quotes trimmed, in lower case). Where they differed
// the stricter one is kept: a bind the agent writes names a GUID, and a
// non-GUID id (an alternate key) never equals the GUID the column reads
// back as, so the looser reading bought nothing. Braces stay accepted, as
// the echo tests write them.
func TestBoundID(t *testing.T) {
	t.Parallel()
	const g = "6f1a2b3c-0000-4000-8000-00000000aa01"
	tests := []struct {
		name string
		bind string
		// echoBefore and baseBefore are what the two earlier readings
		// gave ("" for none).
		echoBefore, baseBefore string
		want                   string
		wantOK                 bool
	}{
		{name: "relative", bind: "/contacts(" + g + ")", echoBefore: g, baseBefore: g, want: g, wantOK: true},
		{name: "absolute URL", bind: "https://org.crm.dynamics.com/api/data/v9.2/contacts(" + g + ")", echoBefore: g, baseBefore: g, want: g, wantOK: true},
		{name: "upper case", bind: "/contacts(6F1A2B3C-0000-4000-8000-00000000AA01)", echoBefore: g, baseBefore: g, want: g, wantOK: true},
		{name: "braces", bind: "/contacts({" + g + "})", echoBefore: g, baseBefore: "{" + g + "}", want: g, wantOK: true},
		{name: "spaces", bind: "/contacts( " + g + " )", echoBefore: g, baseBefore: " " + g + " "},
		{name: "one brace", bind: "/contacts({" + g + ")", echoBefore: g, baseBefore: "{" + g},
		{name: "quoted", bind: "/contacts('" + g + "')", baseBefore: g},
		{name: "alternate key", bind: "/contacts(msemr_azurefhirid='p1')", baseBefore: "msemr_azurefhirid='p1"},
		{name: "not a GUID", bind: "/accounts(a1)", baseBefore: "a1"},
		{name: "GUID without hyphens", bind: "/contacts(6f1a2b3c000040008000" + "00000000aa01)", baseBefore: "6f1a2b3c00004000800000000000aa01"},
		{name: "urn:uuid", bind: "/contacts(urn:uuid:" + g + ")", baseBefore: "urn:uuid:" + g},
		{name: "content-id reference", bind: "$1"},
		{name: "empty", bind: ""},
		{name: "no closing parenthesis", bind: "/contacts(" + g},
	}
	for _, tt := range tests {
		got, ok := maps.BoundID(tt.bind)
		if got != tt.want || ok != tt.wantOK {
			t.Errorf("%s: BoundID(%q) = %q, %v, want %q, %v (before: echo %q, base %q)", tt.name, tt.bind, got, ok, tt.want, tt.wantOK, tt.echoBefore, tt.baseBefore)
		}
	}
}

func TestIsGUID(t *testing.T) {
	t.Parallel()
	tests := []struct {
		s    string
		want bool
	}{
		{s: "6f1a2b3c-0000-4000-8000-00000000aa01", want: true},
		{s: "6F1A2B3C-0000-4000-8000-00000000AA01", want: true},
		{s: "00000000-0000-0000-0000-000000000000", want: true},
		{s: "{6f1a2b3c-0000-4000-8000-00000000aa01}"},
		{s: "urn:uuid:6f1a2b3c-0000-4000-8000-00000000aa01"},
		{s: "6f1a2b3c000040008000" + "00000000aa01"},
		{s: "6f1a2b3c-0000-4000-8000-00000000aa0g"},
		{s: "6f1a2b3c_0000-4000-8000-00000000aa01"},
		{s: " 6f1a2b3c-0000-4000-8000-00000000aa01"},
		{s: ""},
	}
	for _, tt := range tests {
		if got := maps.IsGUID(tt.s); got != tt.want {
			t.Errorf("IsGUID(%q) = %v, want %v", tt.s, got, tt.want)
		}
	}
}
