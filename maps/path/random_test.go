package path

import (
	"encoding/json"
	"math/rand/v2"
	"strconv"
	"strings"
	"testing"
)

// TestSetGetRandom is a deterministic companion of FuzzSetGet: it builds
// paths and resources from a small vocabulary, so that most of them meet,
// and checks that a successful Set is read back by Get, that a failed Set
// leaves the resource unchanged and that Set(nil) prunes back to the original
// when the path wrote into absent elements only.
func TestSetGetRandom(t *testing.T) {
	t.Parallel()
	rng := rand.New(rand.NewPCG(1, 2))
	names := []string{"name", "given", "telecom", "value", "use", "system", "line", "address", "coding", "code", "type", "a", "b", "identifier", "maritalStatus", "contact"}
	conds := []string{"use='x'", "system='y'", "type.coding.code='MR'", "rank=1", "use='x' and system='y'", "a.b=true"}
	var randValue func(depth int) any
	randValue = func(depth int) any {
		switch k := rng.IntN(6); {
		case depth > 2 || k == 0:
			return []any{"x", "y", "MR", nil}[rng.IntN(4)]
		case k == 1:
			return json.Number(strconv.Itoa(rng.IntN(3)))
		case k == 2 || k == 3:
			m := map[string]any{}
			for range rng.IntN(4) {
				m[names[rng.IntN(len(names))]] = randValue(depth + 1)
			}
			return m
		default:
			l := []any{}
			for range rng.IntN(3) {
				l = append(l, randValue(depth+1))
			}
			return l
		}
	}
	ok, failed := 0, 0
	for i := 0; i < 20000; i++ {
		var b strings.Builder
		if rng.IntN(4) == 0 {
			b.WriteString("Patient.")
		}
		for j := range 1 + rng.IntN(3) {
			if j > 0 {
				b.WriteByte('.')
			}
			if rng.IntN(8) == 0 {
				b.WriteString("extension('u')")
			} else {
				b.WriteString(names[rng.IntN(len(names))])
			}
			if rng.IntN(3) == 0 {
				b.WriteString(".where(" + conds[rng.IntN(len(conds))] + ")")
			}
			if rng.IntN(3) == 0 {
				b.WriteString("[" + strconv.Itoa(rng.IntN(3)) + "]")
			}
		}
		p, err := Compile(b.String())
		if err != nil {
			t.Fatalf("generated path %q: %v", b.String(), err)
		}
		res, _ := randValue(0).(map[string]any)
		if res == nil {
			res = map[string]any{}
		}
		switch rng.IntN(3) {
		case 0:
			res["resourceType"] = "Patient"
		case 1:
			res["resourceType"] = "Custom"
		}
		before, _ := json.Marshal(res)
		val := "v" + strconv.Itoa(i)
		if err := p.Set(res, val); err != nil {
			failed++
			if after, _ := json.Marshal(res); string(after) != string(before) {
				t.Fatalf("Set(%s) failed (%v) but changed %s to %s", p, err, before, after)
			}
			continue
		}
		ok++
		if got, found := p.Get(res); !found || got != val {
			after, _ := json.Marshal(res)
			t.Fatalf("Set(%s) then Get = %v, %v\nbefore %s\nafter  %s", p, got, found, before, after)
		}
		if _, had := p.Get(decodeJSON(t, before)); !had {
			// The write created everything it needed, so removing it
			// must prune back to the original resource.
			if err := p.Set(res, nil); err != nil {
				t.Fatal(err)
			}
			if after, _ := json.Marshal(res); !sameJSON(t, before, after) {
				t.Fatalf("Set(%s) then Set(nil) did not restore\nbefore %s\nafter  %s", p, before, after)
			}
		}
	}
	t.Logf("%d writes succeeded, %d were refused", ok, failed)
	if ok < 5000 {
		t.Errorf("only %d of 20000 generated writes succeeded (%d failed); the generator no longer exercises Set", ok, failed)
	}
}

func decodeJSON(t *testing.T, b []byte) map[string]any {
	return decode(t, string(b))
}

// sameJSON compares two objects, ignoring members that are null, [] or {}
// (they count as absent, so a write may replace them and a removal prune
// them; FHIR JSON allows none of them).
func sameJSON(t *testing.T, a, b []byte) bool {
	return canon(t, dropNulls(decodeJSON(t, a))) == canon(t, dropNulls(decodeJSON(t, b)))
}

func dropNulls(v any) any {
	switch x := v.(type) {
	case map[string]any:
		for k, e := range x {
			e = dropNulls(e)
			if isEmpty(e) {
				delete(x, k)
			} else {
				x[k] = e
			}
		}
	case []any:
		out := x[:0]
		for _, e := range x {
			if e = dropNulls(e); !isEmpty(e) {
				out = append(out, e)
			}
		}
		return out
	}
	return v
}

func isEmpty(v any) bool {
	switch x := v.(type) {
	case nil:
		return true
	case map[string]any:
		return len(x) == 0
	case []any:
		return len(x) == 0
	}
	return false
}
