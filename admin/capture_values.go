package admin

import (
	"context"
	"encoding/json"
	"strings"
)

// changedValue is one field a decision changed, with the value fhirsync
// wrote, read from the captured target payload. It carries PHI: only the
// capture page, behind the PHI permission, shows it.
type changedValue struct {
	Field string
	// Value is the JSON of the value written; Found is false when the
	// captured target does not hold the field (a removed value, or a
	// nested path the page does not resolve).
	Value string
	Found bool
}

// capturedChanges pairs the decision's changed fields with the values in
// its captured target: the CRM record written (its "record" object), or
// the FHIR resource written, looked up by the field's first path segment.
func (a *app) capturedChanges(ctx context.Context, id int64, target []byte) []changedValue {
	d, err := a.data.logs.Get(ctx, id)
	if err != nil || len(d.ChangedFields) == 0 {
		return nil
	}
	var t map[string]any
	if json.Unmarshal(target, &t) != nil {
		t = nil
	}
	if rec, ok := t["record"].(map[string]any); ok {
		t = rec
	}
	out := make([]changedValue, 0, len(d.ChangedFields))
	for _, f := range d.ChangedFields {
		key := f
		if i := strings.IndexAny(key, ".[("); i > 0 {
			key = key[:i]
		}
		v, ok := t[key]
		cv := changedValue{Field: f, Found: ok}
		if ok {
			b, _ := json.Marshal(v)
			cv.Value = string(b)
		}
		out = append(out, cv)
	}
	return out
}
