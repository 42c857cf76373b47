package main

import (
	"fmt"
	"reflect"
	"strings"
)

// setStringMap sets a map[string]string field from the environment form
// "id1=value1,id2=value2" (commas or newlines between entries, so a
// _FILE may hold one entry a line). Values may contain "=" (base64
// padding); only the first one separates. Messages never echo values.
func setStringMap(fv reflect.Value, s string) error {
	m := reflect.MakeMap(fv.Type())
	for _, entry := range strings.FieldsFunc(s, func(r rune) bool { return r == ',' || r == '\n' || r == '\r' }) {
		entry = strings.TrimSpace(entry)
		if entry == "" {
			continue
		}
		k, v, ok := strings.Cut(entry, "=")
		k, v = strings.TrimSpace(k), strings.TrimSpace(v)
		if !ok || k == "" || v == "" {
			return fmt.Errorf("entries must be written name=value, separated by commas or lines")
		}
		if m.MapIndex(reflect.ValueOf(k)).IsValid() {
			return fmt.Errorf("%q is given twice", k)
		}
		m.SetMapIndex(reflect.ValueOf(k), reflect.ValueOf(v))
	}
	fv.Set(m)
	return nil
}
