package agent

import (
	"encoding/json"
	"math"
	"testing"
)

// The own-write and base hashes are stored: appendMarshal must write the
// very bytes json.Marshal writes, or hashes made before and after an
// upgrade would differ.
func TestAppendMarshalMatchesJSON(t *testing.T) {
	values := []any{
		nil, true, false, "", "plain text 123", "Müller", "a<b", "x&y", "q\"uote", `back\slash`, "tab\there", "line\u2028sep", "\x7f", "bad \xff utf-8",
		0.0, math.Copysign(0, -1), 1.0, -1.0, 42.5, 1e-6, 9.99e-7, 1e20, 1e21, 123456789012345678.0, 0.1 + 0.2, -3.25e-5,
		[]any{"a", 1.0, nil}, map[string]any{"b": 1.0, "a": []any{"x"}}, []any{},
	}
	for _, v := range values {
		want, err := json.Marshal(v)
		if err != nil {
			t.Fatalf("%#v: %v", v, err)
		}
		got, ok := appendMarshal([]byte("prefix"), v)
		if !ok || string(got) != "prefix"+string(want) {
			t.Errorf("appendMarshal(%#v) = %q, %v; json.Marshal writes %q", v, got, ok, want)
		}
	}
	for _, v := range []any{math.NaN(), math.Inf(1)} {
		if got, ok := appendMarshal([]byte("p"), v); ok || string(got) != "p" {
			t.Errorf("appendMarshal(%v) = %q, %v; want the input unchanged and false", v, got, ok)
		}
	}
}
