package maps

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"sort"
	"strings"
	"testing"

	"github.com/google/uuid"
	"github.com/shopspring/decimal"

	"github.com/fhirsync/fhirsync/maps/path"
	"github.com/fhirsync/fhirsync/sandbox/corpus"
)

// conformanceExpect states, for the corpus resources whose round trip is not
// plain equality, what happens instead and why. The key is the file
// (relative to testdata/conformance) and, for a bundle entry, "#Type/id";
// the map name follows after "@" when the expectation concerns one map only.
// Every resource without an entry is expected to map FHIR → CRM without
// error and to come back unchanged (see TestConformanceStarterRoundTrip).
var conformanceExpect = map[string]conformanceCase{
	"modified/fhir/patient-example-partial-birthdate.json": {
		mappingError: "birth-date",
		why: "a year-month birthDate cannot be held by the contact's date-only birthdate; the record is refused with a decision naming the attribute map, " +
			"rather than written without the date (a write-back would then erase the FHIR value)",
	},
	"modified/fhir/observation-example-body-temperature-trailing-zero.json": {
		why: "36.50 keeps its text through the CRM and back (checked by the exact JSON comparison of the create from the CRM record)",
	},
	// The entries below expect the default result; they say what the sample
	// exercises.
	"fhir/r4/patient-example.json": {
		why: "official, usual and maiden names: the official one is the contact's; the others, the old phone and the birth-time extension stay as they are",
	},
	"fhir/us-core/patient-example.json": {
		why: "names 'old' and 'usual' and no official one: the usual name is the contact's (fallback path); the old address (with a period) is left, the address without a use is mapped",
	},
	"fhir/r4/patient-example-xds.json": {
		why: "a name and an address without a use: both reach the contact through the fallback paths and are written back to the same elements",
	},
	"fhir/r4/observation-example-f001-glucose.json": {
		why: "effectivePeriod instead of effectiveDateTime: effectivePeriod.start is the CRM's effective date and written back there",
	},
	"fhir/r4/observation-example-body-height.json": {
		why: "value 66.89999999999999 keeps its full text (the CRM record here holds what it was given; a CRM decimal precision smaller than the value's is the CRM's limit, not the map's)",
	},
	"fhir/r4/observation-example-bloodpressure.json": {
		why: "a date-only effectiveDateTime: write-back keeps '2012-09-17' (the CRM's midnight-UTC instant is the same date), never a midnight instant; the components have no CRM place and stay",
	},
	"fhir/us-core/Observation-average-blood-pressure.json": {
		why: "an effectivePeriod with milliseconds: the CRM holds whole seconds; write-back keeps the FHIR text",
	},
	"fhir/r4/observation-example-10minute-apgar-score.json": {
		filtered: "subject-not-contained",
		why:      "its subject is a Patient contained in the Observation (#newborn): a contained resource has no identity of its own, so there is no contact for msemr_patient",
	},
	"fhir/r4/patient-example-f001-pieter.json": {
		why: "its second identifier has a system and no value: no medical identifier row is made for it, the rest of the patient maps, and write-back keeps the item as it is",
	},
}

// conformanceCase is the expected result of one corpus resource under one
// starter map.
type conformanceCase struct {
	// filtered names the FHIR filter expected to exclude the resource.
	filtered string
	// mappingError names the attribute map whose mapping error is expected
	// (FHIR → CRM fails, nothing is written).
	mappingError string
	// freshLoss lists attribute maps whose element a resource created from
	// the CRM record alone cannot reproduce, with the reason; a write-back
	// onto the current resource still keeps them.
	freshLoss map[string]string
	// why says in a sentence why the resource is expected to behave so.
	why string
}

// corpusResource is one FHIR resource of the corpus.
type corpusResource struct {
	key string // file, or file#Type/id for a bundle entry
	res map[string]any
}

// loadFHIRCorpus reads the public FHIR R4 samples (HL7's official R4
// examples, US Core examples, each entry of the Synthea bundles, and the
// hand-changed copies); testdata/conformance/SOURCES.md names the address
// of each.
func loadFHIRCorpus(t *testing.T) []corpusResource {
	t.Helper()
	rs, err := corpus.FHIR()
	if err != nil {
		t.Fatal(err)
	}
	if len(rs) < 30 {
		t.Fatalf("the FHIR corpus holds %d resources, want at least 30", len(rs))
	}
	out := make([]corpusResource, 0, len(rs))
	for _, r := range rs {
		res, err := DecodeJSON(r.JSON)
		if err != nil {
			t.Fatalf("decoding %s: %v", r.Key, err)
		}
		out = append(out, corpusResource{key: r.Key, res: res})
	}
	return out
}

// TestConformanceStarterRoundTrip maps every resource of the public FHIR
// corpus (files and bundle entries) with every starter map of its resource
// type, FHIR → CRM → FHIR, and checks the stated result:
//
//   - FHIR → CRM gives the expected decision (mapped, unless the table says
//     filtered or a mapping error);
//   - written back onto the resource as the agent does (read-modify-write on
//     the current version), the CRM record changes nothing but the
//     correlation identifier: every element, mapped or not, is unchanged —
//     no added defaults, decimals with their text, dates with their
//     precision, every name, telecom and identifier kept;
//   - written onto an empty resource (a create from the CRM alone), every
//     mapped element is reproduced with the same JSON value; date-times are
//     the one exception by design, as the CRM holds an instant in UTC: they
//     come back as the same instant (time zone offset, date-only precision
//     and fractions of a second are the FHIR side's presentation, kept by
//     the write-back above);
//   - mapping the written-back resource again against the stored CRM record
//     reports no change (no update loop).
func TestConformanceStarterRoundTrip(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	set := loadStarter(t)
	resources := loadFHIRCorpus(t)
	r := newFakeResolver()
	passed := map[string]int{}
	seen := map[string]int{}
	used := map[string]bool{}
	for _, c := range resources {
		rt, _ := c.res["resourceType"].(string)
		for _, m := range set.ForFHIR(rt) {
			name := c.key + "@" + m.Name()
			want, ok := conformanceExpect[name]
			if ok {
				used[name] = true
			} else if want, ok = conformanceExpect[c.key]; ok {
				used[c.key] = true
			}
			seen[rt]++
			t.Run(name, func(t *testing.T) {
				if conformanceRoundTrip(ctx, t, m, c, want, r) {
					passed[rt]++
				}
			})
		}
	}
	for k := range conformanceExpect {
		if !used[k] {
			t.Errorf("expectation %q names no corpus resource", k)
		}
	}
	types := make([]string, 0, len(seen))
	for k := range seen {
		types = append(types, k)
	}
	sort.Strings(types)
	for _, k := range types {
		t.Logf("%s: %d of %d corpus resources give their stated round-trip result", k, passed[k], seen[k])
	}
	for _, k := range []string{"Patient", "Practitioner", "Organization", "Encounter", "Observation"} {
		if seen[k] < 5 {
			t.Errorf("the corpus holds %d %s resources, want at least 5", seen[k], k)
		}
	}
}

// conformanceRoundTrip runs one resource through one map and reports
// whether every check passed.
func conformanceRoundTrip(ctx context.Context, t *testing.T, m *Mapping, c corpusResource, want conformanceCase, r LookupResolver) bool {
	t.Helper()
	orig := c.res
	out, err := m.ToCRM(ctx, path.DeepCopy(orig).(map[string]any), nil, r)
	if want.mappingError != "" {
		var me *MappingError
		if !errors.As(err, &me) || me.Attribute != want.mappingError {
			t.Errorf("FHIR → CRM: got %v, want a mapping error of attribute map %s (%s)", err, want.mappingError, want.why)
			return false
		}
		return true
	}
	if err != nil {
		t.Errorf("FHIR → CRM: %v", err)
		return false
	}
	if out.Filtered != want.filtered {
		t.Errorf("FHIR → CRM: filtered by %q, want %q", out.Filtered, want.filtered)
		return false
	}
	if out.Filtered != "" {
		return true
	}
	state := crmRecordStore(m, out, uuid.NewSHA1(uuid.NameSpaceURL, []byte(c.key)).String())
	ok := true
	if a := attrNamed(m, "address-line1"); a != nil {
		// Every line of the address the map chose, up to the two the starter
		// maps hold, reaches the CRM.
		view := m.withoutCorrelation(orig)
		if p := a.pathFor(view); p != nil {
			anchor, err := compileAddress(p.String())
			if err != nil {
				t.Fatal(err)
			}
			if addr, found := anchor.Get(view); found {
				lines, _ := addr.(map[string]any)["line"].([]any)
				for i, attr := range []string{"address1_line1", "address1_line2"} {
					if i < len(lines) && out.Record[attr] == nil {
						t.Errorf("FHIR → CRM: address line %d did not reach %s", i+1, attr)
						ok = false
					}
				}
			}
		}
	}
	for _, cv := range coverageChecks {
		if cv.applies(orig) && hasAttribute(m, cv.attrs[0]) && !slices.ContainsFunc(cv.attrs, func(k string) bool { return out.Record[k] != nil }) {
			t.Errorf("FHIR → CRM: the resource has %s, the CRM record none of %v", cv.what, cv.attrs)
			ok = false
		}
	}

	// As the agent writes back: onto the current resource.
	back, err := m.ToFHIR(ctx, state, path.DeepCopy(orig).(map[string]any), r)
	if err != nil {
		t.Errorf("CRM → FHIR onto the current resource: %v", err)
		return false
	}
	got := back.Resource
	if m.corrPath != nil {
		if !slices.Equal(back.Changed, []string{m.corrPath.String()}) {
			t.Errorf("write-back onto the current resource changed %v, want only the correlation identifier", back.Changed)
			ok = false
		}
		got = path.DeepCopy(got).(map[string]any)
		if err := m.corrPath.Set(got, nil); err != nil {
			t.Fatalf("removing the correlation identifier: %v", err)
		}
	} else if len(back.Changed) != 0 {
		t.Errorf("write-back onto the current resource changed %v", back.Changed)
		ok = false
	}
	if d := jsonDiff("", got, orig); len(d) > 0 {
		t.Errorf("write-back onto the current resource lost or changed data:\n%s", strings.Join(d, "\n"))
		ok = false
	}

	// A create from the CRM record alone.
	fresh, err := m.ToFHIR(ctx, state, nil, r)
	if err != nil {
		t.Errorf("CRM → new FHIR resource: %v", err)
		return false
	}
	ov, fv := m.withoutCorrelation(orig), m.withoutCorrelation(fresh.Resource)
	for _, a := range m.attrs {
		if !a.toFHIR || a.path == nil || a.expr != nil {
			continue
		}
		if _, lost := want.freshLoss[a.def.Name]; lost {
			continue
		}
		w, wok := a.pathFor(ov).Get(ov)
		g, gok := a.pathFor(fv).Get(fv)
		if a.def.Round != nil && wok {
			// A declared rounding is what the CRM keeps: a resource
			// created from the CRM alone has the rounded value.
			w = roundedJSON(w, *a.def.Round)
		}
		same := wok == gok && (!wok || jsonEqualExact(g, w))
		if !same && a.def.CRMType == TypeDateTimeUTC && wok == gok {
			same = equalValue(TypeDateTimeUTC, g, w)
		}
		if !same {
			t.Errorf("new resource: attribute map %s: %s is %s, want %s", a.def.Name, a.path, short(g), short(w))
			ok = false
		}
	}
	for _, x := range m.expansions {
		if !x.toFHIR {
			continue
		}
		if _, lost := want.freshLoss[x.def.Name]; lost {
			continue
		}
		wantItems := mappableItems(x, x.items(orig))
		gotItems := mappableItems(x, x.items(fresh.Resource))
		if len(gotItems) != len(wantItems) {
			t.Errorf("new resource: expansion %s: %d items, want %d", x.def.Name, len(gotItems), len(wantItems))
			ok = false
			continue
		}
		for j := range wantItems {
			for _, a := range x.attrs {
				w, wok := a.path.Get(wantItems[j])
				g, gok := a.path.Get(gotItems[j])
				same := wok == gok && (!wok || jsonEqualExact(g, w))
				if !same && a.def.CRMType == TypeDateTimeUTC && wok == gok {
					same = equalValue(TypeDateTimeUTC, g, w)
				}
				if !same {
					t.Errorf("new resource: expansion %s item %d: %s is %s, want %s", x.def.Name, j, a.path, short(g), short(w))
					ok = false
				}
			}
		}
	}

	// The written-back resource maps to the stored record unchanged.
	again, err := m.ToCRM(ctx, back.Resource, &state, r)
	if err != nil {
		t.Errorf("second FHIR → CRM: %v", err)
		return false
	}
	if len(again.Changed) != 0 || len(again.Children) != 0 {
		t.Errorf("second FHIR → CRM of an unchanged resource reports changes %v (%d child writes)", again.Changed, len(again.Children))
		ok = false
	}
	return ok
}

// coverageChecks are data a record must not lose on its way to the CRM
// when the map has somewhere to put it: a person with a name is not a
// nameless contact, a current address or phone is not dropped because of
// its use (or lack of one).
var coverageChecks = []struct {
	what    string
	attrs   []string // the CRM attributes that can hold it; the first must be mapped
	applies func(res map[string]any) bool
}{
	{"a person's name", []string{"lastname", "firstname"}, func(res map[string]any) bool {
		return slices.ContainsFunc(items(res, "name"), func(n map[string]any) bool { return n["family"] != nil || n["given"] != nil })
	}},
	{"a current address", []string{"address1_city", "address1_line1", "address1_postalcode", "address1_country"}, func(res map[string]any) bool {
		return slices.ContainsFunc(items(res, "address"), func(a map[string]any) bool {
			return a["use"] != "old" && a["period"] == nil && (a["city"] != nil || a["line"] != nil || a["postalCode"] != nil || a["country"] != nil)
		})
	}},
	{"a current phone number", []string{"telephone1", "telephone2", "mobilephone"}, func(res map[string]any) bool {
		return slices.ContainsFunc(items(res, "telecom"), func(c map[string]any) bool {
			return c["system"] == "phone" && c["value"] != nil && c["use"] != "old" && c["use"] != "temp" && c["period"] == nil
		})
	}},
	{"an effective time", []string{"msemr_effectivedatetime"}, func(res map[string]any) bool {
		p, _ := res["effectivePeriod"].(map[string]any)
		return res["effectiveDateTime"] != nil || (p != nil && p["start"] != nil)
	}},
	{"an email address", []string{"emailaddress1"}, func(res map[string]any) bool {
		return slices.ContainsFunc(items(res, "telecom"), func(c map[string]any) bool { return c["system"] == "email" && c["value"] != nil })
	}},
}

func items(res map[string]any, key string) []map[string]any {
	list, _ := res[key].([]any)
	out := make([]map[string]any, 0, len(list))
	for _, it := range list {
		if m, ok := it.(map[string]any); ok {
			out = append(out, m)
		}
	}
	return out
}

func attrNamed(m *Mapping, name string) *attr {
	for _, a := range m.attrs {
		if a.def.Name == name && a.toCRM && a.path != nil {
			return a
		}
	}
	return nil
}

// compileAddress compiles the address element of an address line path.
func compileAddress(linePath string) (*path.Path, error) {
	i := strings.LastIndex(linePath, ".line[")
	if i < 0 {
		return nil, fmt.Errorf("%s is not an address line path", linePath)
	}
	return path.Compile(linePath[:i])
}

func hasAttribute(m *Mapping, crmAttribute string) bool {
	return slices.ContainsFunc(m.attrs, func(a *attr) bool { return a.def.CRMAttribute == crmAttribute && a.toCRM })
}

// mappableItems are the expansion's array items that map to child rows.
func mappableItems(x *expansion, items []any) []map[string]any {
	var out []map[string]any
	for _, it := range items {
		m, ok := it.(map[string]any)
		if ok && !x.excluded(m) && x.mappable(m) {
			out = append(out, m)
		}
	}
	return out
}

// jsonEqualExact compares generic JSON values including the text of
// numbers (1.50 is not 1.5).
func jsonEqualExact(a, b any) bool {
	ea, err1 := EncodeJSON(a)
	eb, err2 := EncodeJSON(b)
	return err1 == nil && err2 == nil && string(ea) == string(eb)
}

// roundedJSON is a JSON number with more than places decimal places
// rounded half away from zero to places, as an attribute map's round
// declaration writes it to the CRM (with exactly places decimal places);
// other values are returned as they are.
func roundedJSON(v any, places int) any {
	n, ok := numberText(v)
	if !ok {
		return v
	}
	d, err := decimal.NewFromString(n)
	if err != nil || -d.Exponent() <= int32(places) {
		return v
	}
	return json.Number(d.StringFixed(int32(places)))
}
