package maps

import (
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/shopspring/decimal"
)

// ErrUnresolvedLookup means a lookup's referenced record has no
// counterpart on the other side yet. The agent may retry later (the
// referenced record is often still on its way).
var ErrUnresolvedLookup = errors.New("referenced record has no counterpart on the other side")

// errSkip marks a value deliberately left unset (value map policy skip).
var errSkip = errors.New("skip")

// numberText returns the decimal text of a JSON number in any of the
// shapes decoders produce. Floats are formatted shortest-exact, so a
// float64 from a decoder without UseNumber still maps without noise.
func numberText(v any) (string, bool) {
	switch n := v.(type) {
	case json.Number:
		return string(n), true
	case float64:
		if math.IsInf(n, 0) || math.IsNaN(n) {
			return "", false
		}
		return strconv.FormatFloat(n, 'f', -1, 64), true
	case float32:
		return strconv.FormatFloat(float64(n), 'f', -1, 32), true
	case int:
		return strconv.Itoa(n), true
	case int64:
		return strconv.FormatInt(n, 10), true
	case int32:
		return strconv.FormatInt(int64(n), 10), true
	case uint64:
		return strconv.FormatUint(n, 10), true
	case string:
		if _, err := decimal.NewFromString(n); err == nil && n != "" {
			return n, true
		}
	}
	return "", false
}

func intValue(v any) (int64, error) {
	s, ok := numberText(v)
	if !ok {
		return 0, fmt.Errorf("expected an integer, got %s", kind(v))
	}
	if i, err := strconv.ParseInt(s, 10, 64); err == nil {
		return i, nil
	}
	d, err := decimal.NewFromString(s)
	if err != nil || !d.IsInteger() {
		return 0, fmt.Errorf("expected an integer, got a fractional number")
	}
	return d.IntPart(), nil
}

func decimalText(v any) (string, error) {
	s, ok := numberText(v)
	if !ok {
		return "", fmt.Errorf("expected a decimal, got %s", kind(v))
	}
	if _, err := decimal.NewFromString(s); err != nil {
		return "", fmt.Errorf("expected a decimal: malformed number")
	}
	return s, nil
}

// maxRound is the most decimal places a round may declare: Dataverse's
// Decimal Number column keeps 0 to 10 (DecimalAttributeMetadata
// MinSupportedPrecision and MaxSupportedPrecision,
// https://learn.microsoft.com/en-us/dotnet/api/microsoft.xrm.sdk.metadata.decimalattributemetadata),
// Money 0 to 4 and Double 0 to 5.
const maxRound = 10

// roundText rounds the decimal text s to places decimal places, half away
// from zero (2.345 → 2.35, -2.345 → -2.35), written with exactly places
// decimal places as the column keeps them (72.123456789012 to 10 places is
// 72.1234567890); nil places, or a value that already has no more places,
// is returned as it is. Microsoft does not document what the Web API does
// with a value that has more places than the column's Precision, so the
// value written is rounded here and does not depend on it.
func roundText(s string, places *int) string {
	r, _ := roundedText(s, places)
	return r
}

// roundedText is roundText that also reports whether places were dropped.
func roundedText(s string, places *int) (string, bool) {
	if places == nil {
		return s, false
	}
	d, err := decimal.NewFromString(s)
	if err != nil || -d.Exponent() <= int32(*places) {
		return s, false
	}
	return d.StringFixed(int32(*places)), true
}

// round rounds a decimal or money CRM value to the attribute's declared
// places and reports whether the FHIR value had more.
func (a *attr) round(v any) (any, bool) {
	d := a.def
	n, ok := v.(json.Number)
	if !ok || d.Round == nil || (d.CRMType != TypeDecimal && d.CRMType != TypeMoney) {
		return v, false
	}
	r, rounded := roundedText(n.String(), d.Round)
	return json.Number(r), rounded
}

// kind names a value's JSON type without revealing the value.
func kind(v any) string {
	switch v.(type) {
	case nil:
		return "null"
	case string:
		return "a string"
	case bool:
		return "a boolean"
	case map[string]any:
		return "an object"
	case []any:
		return "an array"
	}
	if _, ok := numberText(v); ok {
		return "a number"
	}
	return fmt.Sprintf("%T", v)
}

// parseFHIRInstant reads a FHIR dateTime or instant. A full date means
// midnight UTC; partial dates (year, year-month) cannot become an instant.
func parseFHIRInstant(s string) (time.Time, error) {
	if len(s) == 10 {
		t, err := time.Parse(time.DateOnly, s)
		if err == nil {
			return t, nil
		}
	}
	if len(s) < 10 {
		return time.Time{}, fmt.Errorf("a partial date cannot become a date-time")
	}
	t, err := time.Parse(time.RFC3339Nano, s)
	if err != nil {
		return time.Time{}, fmt.Errorf("malformed dateTime")
	}
	return t, nil
}

func formatUTC(t time.Time) string {
	return t.UTC().Truncate(time.Second).Format("2006-01-02T15:04:05Z")
}

// dateOnly validates a full calendar date, accepting a date-time whose
// date part is taken as is (Dataverse may append T00:00:00Z).
func dateOnly(s string) (string, error) {
	if len(s) > 10 && s[10] == 'T' {
		s = s[:10]
	}
	if len(s) != 10 {
		return "", fmt.Errorf("a date-only attribute needs a full date (YYYY-MM-DD); partial dates are not mapped")
	}
	if _, err := time.Parse(time.DateOnly, s); err != nil {
		return "", fmt.Errorf("malformed date")
	}
	return s, nil
}

// toCRM converts a FHIR value into the CRM type of a (lookups aside).
func (a *attr) toCRMValue(v any) (any, error) {
	d := a.def
	switch d.CRMType {
	case TypeString, TypeMemo:
		s, ok := v.(string)
		if !ok {
			return nil, fmt.Errorf("expected a string, got %s", kind(v))
		}
		if d.MaxLength > 0 && utf8.RuneCountInString(s) > d.MaxLength {
			if d.LengthPolicy != LengthTruncate {
				return nil, fmt.Errorf("value of %d characters exceeds maxLength %d", utf8.RuneCountInString(s), d.MaxLength)
			}
			s = truncateRunes(s, d.MaxLength)
		}
		return s, nil
	case TypeInt:
		i, err := intValue(v)
		if err != nil {
			return nil, err
		}
		if i > math.MaxInt32 || i < math.MinInt32 {
			return nil, fmt.Errorf("integer out of the CRM's 32-bit range")
		}
		return json.Number(strconv.FormatInt(i, 10)), nil
	case TypeDecimal, TypeMoney:
		s, err := decimalText(v)
		if err != nil {
			return nil, err
		}
		return json.Number(s), nil // attrToCRM rounds it as declared
	case TypeBool:
		b, ok := v.(bool)
		if !ok {
			return nil, fmt.Errorf("expected a boolean, got %s", kind(v))
		}
		return b, nil
	case TypeDateOnly:
		s, ok := v.(string)
		if !ok {
			return nil, fmt.Errorf("expected a date, got %s", kind(v))
		}
		return dateOnly(s)
	case TypeDateTimeUTC:
		s, ok := v.(string)
		if !ok {
			return nil, fmt.Errorf("expected a dateTime, got %s", kind(v))
		}
		t, err := parseFHIRInstant(s)
		if err != nil {
			return nil, err
		}
		return formatUTC(t), nil
	case TypeOptionSet:
		code, err := codeText(v)
		if err != nil {
			return nil, err
		}
		n, err := a.vm.crmFor(code)
		if err != nil {
			return nil, err
		}
		return json.Number(strconv.Itoa(n)), nil
	case TypeMultiSelect:
		items, ok := v.([]any)
		if !ok {
			items = []any{v}
		}
		parts := make([]string, 0, len(items))
		for _, it := range items {
			code, err := codeText(it)
			if err != nil {
				return nil, err
			}
			n, err := a.vm.crmFor(code)
			if errors.Is(err, errSkip) {
				continue
			}
			if err != nil {
				return nil, err
			}
			parts = append(parts, strconv.Itoa(n))
		}
		if len(parts) == 0 {
			return nil, nil
		}
		return strings.Join(parts, ","), nil
	}
	return nil, fmt.Errorf("crmType %s cannot be copied", d.CRMType)
}

func codeText(v any) (string, error) {
	switch c := v.(type) {
	case string:
		return c, nil
	case bool:
		return strconv.FormatBool(c), nil
	}
	return "", fmt.Errorf("expected a code, got %s", kind(v))
}

func truncateRunes(s string, n int) string {
	i := 0
	for pos := range s {
		if i == n {
			return s[:pos]
		}
		i++
	}
	return s
}

func (vm *valueMap) crmFor(code string) (int, error) {
	if n, ok := vm.toCRM[code]; ok {
		return n, nil
	}
	switch vm.def.Unmapped {
	case UnmappedSkip:
		return 0, errSkip
	case UnmappedDefault:
		if vm.def.DefaultCRM != nil {
			return *vm.def.DefaultCRM, nil
		}
		return 0, errSkip
	}
	return 0, fmt.Errorf("code is not in value map %q", vm.def.Name)
}

func (vm *valueMap) fhirFor(n int) (string, error) {
	if c, ok := vm.toFHIR[n]; ok {
		return c, nil
	}
	switch vm.def.Unmapped {
	case UnmappedSkip:
		return "", errSkip
	case UnmappedDefault:
		if vm.def.DefaultFHIR != "" {
			return vm.def.DefaultFHIR, nil
		}
		return "", errSkip
	}
	return "", fmt.Errorf("option value %d is not in value map %q", n, vm.def.Name)
}

// toFHIRValue converts a CRM value into the FHIR element type of a.
func (a *attr) toFHIRValue(v any) (any, error) {
	d := a.def
	switch d.CRMType {
	case TypeString, TypeMemo:
		s, ok := v.(string)
		if !ok {
			return nil, fmt.Errorf("expected a string, got %s", kind(v))
		}
		return s, nil
	case TypeInt:
		i, err := intValue(v)
		if err != nil {
			return nil, err
		}
		return json.Number(strconv.FormatInt(i, 10)), nil
	case TypeDecimal, TypeMoney:
		s, err := decimalText(v)
		if err != nil {
			return nil, err
		}
		return json.Number(s), nil
	case TypeBool:
		b, ok := v.(bool)
		if !ok {
			return nil, fmt.Errorf("expected a boolean, got %s", kind(v))
		}
		return b, nil
	case TypeDateOnly:
		s, ok := v.(string)
		if !ok {
			return nil, fmt.Errorf("expected a date, got %s", kind(v))
		}
		return dateOnly(s)
	case TypeDateTimeUTC:
		s, ok := v.(string)
		if !ok {
			return nil, fmt.Errorf("expected a date-time, got %s", kind(v))
		}
		t, err := time.Parse(time.RFC3339Nano, s)
		if err != nil {
			return nil, fmt.Errorf("malformed date-time")
		}
		return formatUTC(t), nil
	case TypeOptionSet:
		n, err := intValue(v)
		if err != nil {
			return nil, err
		}
		code, err := a.vm.fhirFor(int(n))
		if err != nil {
			return nil, err
		}
		return a.fhirCode(code), nil
	case TypeMultiSelect:
		s, ok := v.(string)
		if !ok {
			return nil, fmt.Errorf("expected comma-separated option values, got %s", kind(v))
		}
		var out []any
		for part := range strings.SplitSeq(s, ",") {
			n, err := strconv.Atoi(strings.TrimSpace(part))
			if err != nil {
				return nil, fmt.Errorf("malformed multi-select value")
			}
			code, err := a.vm.fhirFor(n)
			if errors.Is(err, errSkip) {
				continue
			}
			if err != nil {
				return nil, err
			}
			out = append(out, a.fhirCode(code))
		}
		if len(out) == 0 {
			return nil, nil
		}
		return out, nil
	}
	return nil, fmt.Errorf("crmType %s cannot be copied", d.CRMType)
}

func (a *attr) fhirCode(code string) any {
	if a.fhirType == "boolean" {
		if b, err := strconv.ParseBool(code); err == nil {
			return b
		}
	}
	return code
}

// parseDefault reads a default written in YAML text into the CRM value
// it stands for.
func parseDefault(t CRMType, s string) (any, error) {
	switch t {
	case TypeString, TypeMemo:
		return s, nil
	case TypeInt, TypeOptionSet:
		if _, err := strconv.ParseInt(s, 10, 32); err != nil {
			return nil, fmt.Errorf("default %q is not an integer", s)
		}
		return json.Number(s), nil
	case TypeDecimal, TypeMoney:
		if _, err := decimal.NewFromString(s); err != nil {
			return nil, fmt.Errorf("default %q is not a decimal", s)
		}
		return json.Number(s), nil
	case TypeBool:
		b, err := strconv.ParseBool(s)
		if err != nil {
			return nil, fmt.Errorf("default %q is not true or false", s)
		}
		return b, nil
	case TypeDateOnly:
		return dateOnly(s)
	case TypeDateTimeUTC:
		tm, err := time.Parse(time.RFC3339, s)
		if err != nil {
			return nil, fmt.Errorf("default %q is not an RFC 3339 date-time", s)
		}
		return formatUTC(tm), nil
	case TypeMultiSelect:
		for part := range strings.SplitSeq(s, ",") {
			if _, err := strconv.Atoi(strings.TrimSpace(part)); err != nil {
				return nil, fmt.Errorf("default %q is not a list of option values", s)
			}
		}
		return s, nil
	}
	return nil, fmt.Errorf("crmType %s takes no default", t)
}

// textToCRM converts a computed FHIRPath result (its text form) into the
// CRM type.
func (a *attr) textToCRM(s string) (any, error) {
	switch a.def.CRMType {
	case TypeString, TypeMemo:
		return a.toCRMValue(s)
	case TypeBool:
		b, err := strconv.ParseBool(s)
		if err != nil {
			return nil, fmt.Errorf("computed value is not a boolean")
		}
		return b, nil
	case TypeInt, TypeDecimal, TypeMoney:
		return a.toCRMValue(json.Number(s))
	case TypeOptionSet, TypeMultiSelect:
		return a.toCRMValue(s)
	}
	return a.toCRMValue(s)
}

// equalValue compares two values of a CRM type, or of the FHIR type that
// type maps to, by meaning rather than text: 72.5 equals 72.50, instants
// are compared in UTC, GUIDs ignore case.
func equalValue(t CRMType, x, y any) bool {
	if x == nil || y == nil {
		return isNull(x) && isNull(y)
	}
	switch t {
	case TypeInt, TypeDecimal, TypeMoney, TypeOptionSet:
		xs, ok1 := numberText(x)
		ys, ok2 := numberText(y)
		if !ok1 || !ok2 {
			return false
		}
		if xs == ys {
			return true
		}
		xd, err1 := decimal.NewFromString(xs)
		yd, err2 := decimal.NewFromString(ys)
		return err1 == nil && err2 == nil && xd.Equal(yd)
	case TypeDateTimeUTC:
		xs, ok1 := x.(string)
		ys, ok2 := y.(string)
		if !ok1 || !ok2 {
			return false
		}
		if xs == ys {
			return true
		}
		xt, err1 := parseFHIRInstant(xs)
		yt, err2 := parseFHIRInstant(ys)
		return err1 == nil && err2 == nil && xt.Truncate(time.Second).Equal(yt.Truncate(time.Second))
	case TypeDateOnly:
		xs, ok1 := x.(string)
		ys, ok2 := y.(string)
		if !ok1 || !ok2 {
			return false
		}
		xd, err1 := dateOnly(xs)
		yd, err2 := dateOnly(ys)
		return err1 == nil && err2 == nil && xd == yd
	case TypeLookup:
		xs, ok1 := x.(string)
		ys, ok2 := y.(string)
		return ok1 && ok2 && strings.EqualFold(xs, ys)
	case TypeMultiSelect:
		if xs, ok := x.([]any); ok {
			ys, ok := y.([]any)
			if !ok || len(xs) != len(ys) {
				return false
			}
			for i := range xs {
				if xs[i] != ys[i] {
					return false
				}
			}
			return true
		}
		xs, ok1 := x.(string)
		ys, ok2 := y.(string)
		return ok1 && ok2 && sameOptionList(xs, ys)
	}
	return x == y
}

func isNull(v any) bool {
	switch x := v.(type) {
	case nil:
		return true
	case string:
		return x == ""
	}
	return false
}

func sameOptionList(x, y string) bool {
	count := map[string]int{}
	for p := range strings.SplitSeq(x, ",") {
		count[strings.TrimSpace(p)]++
	}
	for p := range strings.SplitSeq(y, ",") {
		count[strings.TrimSpace(p)]--
	}
	for _, n := range count {
		if n != 0 {
			return false
		}
	}
	return true
}

// keyText renders a CRM value canonically for match keys.
func keyText(t CRMType, v any) string {
	if v == nil {
		return "\x00"
	}
	if s, ok := v.(string); ok && t != TypeLookup {
		return s
	}
	switch t {
	case TypeInt, TypeDecimal, TypeMoney, TypeOptionSet:
		if s, ok := numberText(v); ok {
			if d, err := decimal.NewFromString(s); err == nil {
				return d.String()
			}
			return s
		}
	case TypeLookup:
		if s, ok := v.(string); ok {
			return strings.ToLower(s)
		}
	}
	return fmt.Sprint(v)
}
