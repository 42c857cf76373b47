package msaimport

import (
	"strings"
	"testing"
)

func TestTranslate(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name     string
		in       string
		want     string // "" = not translated
		writable bool
		reason   string // a part of Reason, when set
		note     bool   // a note is expected
	}{
		{name: "member chain", in: "$.a.b", want: "a.b", writable: true},
		{name: "index then member", in: "$.name[0].given[0]", want: "name[0].given[0]", writable: true},
		{name: "bracket names", in: "$['name'][0]['family']", want: "name[0].family", writable: true},
		{name: "double-quoted bracket name", in: `$["birthDate"]`, want: "birthDate", writable: true},
		{name: "no dollar", in: "gender", want: "gender", writable: true},
		{name: "spaces around", in: "  $.gender ", want: "gender", writable: true},
		{name: "expansion item", in: "$.coding[0].code", want: "coding[0].code", writable: true},
		{name: "filter equals", in: "$.a[?(@.system=='x')].value", want: "a.where(system = 'x').value", writable: true},
		{name: "filter without parens", in: "$.a[?@.system=='x'].value", want: "a.where(system = 'x').value", writable: true},
		{name: "filter and", in: `$.telecom[?(@.system=="phone" && @.use=="home")].value`, want: "telecom.where(system = 'phone' and use = 'home').value", writable: true},
		{name: "filter literal first", in: "$.a[?('x' == @.system)].value", want: "a.where('x' = system).value", writable: false},
		{name: "filter dotted field", in: "$.identifier[?(@.type.coding[0].code=='MR')].value", want: "identifier.where(type.coding[0].code = 'MR').value", writable: false},
		{name: "filter nested field", in: "$.identifier[?(@.type.text=='MR')].value", want: "identifier.where(type.text = 'MR').value", writable: true},
		{name: "filter bool", in: "$.communication[?(@.preferred==true)].language.text", want: "communication.where(preferred = true).language.text", writable: true},
		{name: "filter then index", in: "$.name[?(@.use=='official')].given[0]", want: "name.where(use = 'official').given[0]", writable: true, note: true},
		{name: "extension by url", in: "$.extension[?(@.url=='http://x/y')].valueString", want: "extension('http://x/y').valueString", writable: true},
		{name: "filter not-exists", in: "$.address[?(!@.use)].city", want: "address.where(use.empty()).city", writable: true},
		{name: "filter exists", in: "$.address[?(@.period)].city", want: "address.where(period.exists()).city", reason: "path language"},
		{name: "filter or", in: "$.telecom[?(@.system=='phone' || @.system=='sms')].value", want: "telecom.where(system = 'phone' or system = 'sms').value", reason: "path language"},
		{name: "filter not equal", in: "$.name[?(@.use!='old')].family", want: "name.where(iif(use = 'old', false, true)).family", reason: "path language"},
		{name: "filter negated group", in: "$.name[?(!(@.use=='old' || @.use=='maiden'))].family", want: "name.where(iif((use = 'old' or use = 'maiden'), false, true)).family", reason: "path language"},
		{name: "filter less", in: "$.component[?(@.valueQuantity.value < 5)].code.text", want: "component.where(valueQuantity.value < 5).code.text", reason: "path language"},
		{name: "last item", in: "$.name[-1].family", want: "name.last().family", reason: "last()"},
		{name: "slice", in: "$.name[1:3].family", want: "name.skip(1).take(2).family", reason: "slice"},
		{name: "wildcard", in: "$.name[*].family", want: "name.family", writable: true},
		{name: "wildcard then index", in: "$.name[*].given[0]", want: "name.given[0]", writable: true, note: true},
		{name: "dot wildcard", in: "$.name.*", want: "name", writable: true},
		{name: "root wildcard", in: "$.*", reason: "wildcard over an object"},
		{name: "descendant", in: "$..x", reason: "recursive descent"},
		{name: "descendant later", in: "$.contact..family", reason: "recursive descent"},
		{name: "negative index", in: "$.name[-2].family", reason: "negative index"},
		{name: "union", in: "$.name[0,1].family", reason: "union"},
		{name: "name union", in: "$['a','b']", reason: "union"},
		{name: "root only", in: "$", reason: "whole resource"},
		{name: "regex", in: "$.a[?(@.system =~ /x/)].value", reason: "not a JSONPath"},
		{name: "null literal", in: "$.a[?(@.system == null)].value", reason: "null"},
		{name: "root in filter", in: "$.a[?(@.system == $.b)].value", reason: "root"},
		{name: "index on root", in: "$[0]", reason: "index"},
		{name: "keyword name", in: "$.text.div", reason: "not a FHIR element name"},
		{name: "dash name", in: "$.foo-bar", reason: "not a FHIR element name"},
		{name: "unterminated", in: "$.a[?(@.b=='x)]", reason: "not a JSONPath"},
		{name: "empty", in: "", reason: "not a JSONPath"},
		{name: "trailing dot", in: "$.a.", reason: "not a JSONPath"},
		{name: "quote in literal", in: `$.a[?(@.b=="it's")].c`, want: `a.where(b = 'it\'s').c`, writable: true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			got := Translate(tc.in)
			if got.FHIRPath != tc.want {
				t.Fatalf("Translate(%q).FHIRPath = %q, want %q (reason %q)", tc.in, got.FHIRPath, tc.want, got.Reason)
			}
			if got.Writable != tc.writable {
				t.Errorf("Translate(%q).Writable = %v, want %v (reason %q)", tc.in, got.Writable, tc.writable, got.Reason)
			}
			if tc.reason != "" && !strings.Contains(got.Reason, tc.reason) {
				t.Errorf("Translate(%q).Reason = %q, want it to mention %q", tc.in, got.Reason, tc.reason)
			}
			if tc.want == "" && got.Reason == "" {
				t.Errorf("Translate(%q): no translation and no reason", tc.in)
			}
			if (len(got.Notes) > 0) != tc.note {
				t.Errorf("Translate(%q).Notes = %q, want notes: %v", tc.in, got.Notes, tc.note)
			}
		})
	}
}
