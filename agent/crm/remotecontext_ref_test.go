package crm

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"reflect"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"
	"unicode/utf8"

	"github.com/google/uuid"
)

// This file keeps the decoder as it was before it walked a token tape: it
// unmarshals each nesting level again with encoding/json. It is the
// reference FuzzDecodeMatchesReference and the benchmarks compare the
// tape walker against. It shares the unchanged pieces (rawContext, kvPair,
// invalid, validName and the result types) with remotecontext.go.

// refDecodeRemoteExecutionContext parses the JSON a service endpoint posts,
// with the WCF data-contract quirks: collections are arrays of
// {"key","value"}, typed values carry "__type" ("Entity:http://…",
// "EntityReference:…", "OptionSetValue:…", "Money:…"), and dates read
// "/Date(1700000000000)/" or "/Date(1700000000000+0000)/". Entity images
// may be missing (Dataverse drops them from large messages).
func refDecodeRemoteExecutionContext(b []byte) (*ExecutionContext, error) {
	b = bytes.TrimPrefix(b, []byte("\xef\xbb\xbf"))
	if len(b) > MaxContextBytes {
		return nil, invalid("%d bytes exceeds the %d-byte limit", len(b), MaxContextBytes)
	}
	if !utf8.Valid(b) {
		return nil, invalid("body is not valid UTF-8")
	}
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.UseNumber()
	var raw rawContext
	if err := dec.Decode(&raw); err != nil {
		return nil, invalid("%v", err)
	}
	if dec.More() {
		return nil, invalid("trailing data after the context")
	}
	x := &ExecutionContext{MessageName: raw.MessageName, PrimaryEntityName: raw.PrimaryEntityName,
		SecondaryEntityName: raw.SecondaryEntityName, CorrelationID: raw.CorrelationID, OperationID: raw.OperationID,
		OrganizationID: raw.OrganizationID, OrganizationName: raw.OrganizationName, BusinessUnitID: raw.BusinessUnitID,
		UserID: strings.ToLower(raw.UserID), InitiatingUserID: strings.ToLower(raw.InitiatingUserID),
		Depth: raw.Depth, Stage: raw.Stage, Mode: raw.Mode}
	if raw.RequestID != nil {
		x.RequestID = *raw.RequestID
	}
	if x.MessageName == "" {
		return nil, invalid("MessageName is missing")
	}
	if !validName(x.PrimaryEntityName) {
		return nil, invalid("PrimaryEntityName is missing or malformed")
	}
	id, err := uuid.Parse(raw.PrimaryEntityID)
	if err != nil {
		return nil, invalid("PrimaryEntityId is not a GUID")
	}
	x.PrimaryEntityID = id.String()
	if raw.OperationCreatedOn != nil {
		t, ok := refParseWCFDate(*raw.OperationCreatedOn)
		if !ok {
			return nil, invalid("OperationCreatedOn is not a /Date(…)/ value")
		}
		x.OperationCreatedOn = t
	}
	if x.InputParameters, err = refDecodeParams(raw.InputParameters, "InputParameters"); err != nil {
		return nil, err
	}
	if x.OutputParameters, err = refDecodeParams(raw.OutputParameters, "OutputParameters"); err != nil {
		return nil, err
	}
	if x.SharedVariables, err = refDecodeParams(raw.SharedVariables, "SharedVariables"); err != nil {
		return nil, err
	}
	if x.PreEntityImages, err = refDecodeImages(raw.PreEntityImages, "PreEntityImages"); err != nil {
		return nil, err
	}
	if x.PostEntityImages, err = refDecodeImages(raw.PostEntityImages, "PostEntityImages"); err != nil {
		return nil, err
	}
	switch t := x.InputParameters["Target"].(type) {
	case *Entity:
		x.Target = t
	case *EntityReference:
		x.TargetRef = t
	}
	p := bytes.TrimSpace(raw.ParentContext)
	x.HasParent = len(p) > 0 && !bytes.Equal(p, []byte("null"))
	return x, nil
}

var refWCFDate = regexp.MustCompile(`^/Date\((-?\d{1,15})([+-]\d{4})?\)/$`)

// refParseWCFDate reads "/Date(ms)/" or "/Date(ms+hhmm)/"; the offset only
// says how the sender displayed it, the milliseconds are UTC.
func refParseWCFDate(s string) (time.Time, bool) {
	m := refWCFDate.FindStringSubmatch(s)
	if m == nil {
		return time.Time{}, false
	}
	ms, err := strconv.ParseInt(m[1], 10, 64)
	if err != nil {
		return time.Time{}, false
	}
	return time.UnixMilli(ms).UTC(), true
}

// refDecodeKV reads a WCF collection: an array of {"key","value"} (null or
// absent means empty).
func refDecodeKV(raw json.RawMessage, what string) ([]kvPair, error) {
	raw = bytes.TrimSpace(raw)
	if len(raw) == 0 || bytes.Equal(raw, []byte("null")) {
		return nil, nil
	}
	if raw[0] != '[' {
		return nil, invalid("%s is not an array of key/value pairs", what)
	}
	var pairs []kvPair
	if err := json.Unmarshal(raw, &pairs); err != nil {
		return nil, invalid("%s: %v", what, err)
	}
	for _, p := range pairs {
		if p.Key == nil {
			return nil, invalid("%s has an entry without a key", what)
		}
	}
	return pairs, nil
}

func refDecodeParams(raw json.RawMessage, what string) (map[string]any, error) {
	pairs, err := refDecodeKV(raw, what)
	if err != nil {
		return nil, err
	}
	out := make(map[string]any, len(pairs))
	for _, p := range pairs {
		v, err := refDecodeValue(p.Value, 0)
		if err != nil {
			return nil, invalid("%s[%s]: %v", what, *p.Key, err)
		}
		out[*p.Key] = v
	}
	return out, nil
}

func refDecodeImages(raw json.RawMessage, what string) (map[string]*Entity, error) {
	pairs, err := refDecodeKV(raw, what)
	if err != nil {
		return nil, err
	}
	out := make(map[string]*Entity, len(pairs))
	for _, p := range pairs {
		v, err := refDecodeEntityValue(p.Value, 0)
		if err != nil {
			return nil, invalid("%s[%s]: %v", what, *p.Key, err)
		}
		e, ok := v.(*Entity)
		if !ok {
			return nil, invalid("%s[%s] is not an Entity", what, *p.Key)
		}
		out[*p.Key] = e
	}
	return out, nil
}

// refDecodeValue turns one WCF JSON value into a Go value: string,
// time.Time (for /Date(…)/), json.Number, bool, nil, []any, *Entity,
// *EntityReference, OptionSetValue, Money, *EntityCollection,
// UnknownValue, or map[string]any for an untyped object.
func refDecodeValue(raw json.RawMessage, depth int) (any, error) {
	if depth > maxValueDepth {
		return nil, errors.New("values nested too deeply")
	}
	raw = bytes.TrimSpace(raw)
	if len(raw) == 0 {
		return nil, nil
	}
	switch raw[0] {
	case '{':
		var obj map[string]json.RawMessage
		if err := json.Unmarshal(raw, &obj); err != nil {
			return nil, err
		}
		var typ string
		if t, ok := obj["__type"]; ok {
			if err := json.Unmarshal(t, &typ); err != nil {
				return nil, errors.New("__type is not a string")
			}
		}
		name, namespace, _ := strings.Cut(typ, ":")
		if v, ok := obj["__value"]; ok && namespace == "#System" {
			return refDecodeValue(v, depth+1)
		}
		switch name {
		case "":
			out := map[string]any{}
			for k, v := range obj {
				dv, err := refDecodeValue(v, depth+1)
				if err != nil {
					return nil, err
				}
				out[k] = dv
			}
			return out, nil
		case "Entity":
			return refDecodeEntity(obj, depth)
		case "EntityReference":
			return refDecodeRef(obj)
		case "OptionSetValue":
			var v struct{ Value *int }
			if err := json.Unmarshal(raw, &v); err != nil || v.Value == nil {
				return nil, errors.New("OptionSetValue without an integer Value")
			}
			return OptionSetValue{Value: *v.Value}, nil
		case "Money":
			dec := json.NewDecoder(bytes.NewReader(raw))
			dec.UseNumber()
			var v struct{ Value *json.Number }
			if err := dec.Decode(&v); err != nil || v.Value == nil {
				return nil, errors.New("Money without a numeric Value")
			}
			return Money{Value: *v.Value}, nil
		case "EntityCollection":
			var v struct {
				EntityName string
				Entities   []json.RawMessage
			}
			if err := json.Unmarshal(raw, &v); err != nil {
				return nil, errors.New("malformed EntityCollection")
			}
			ec := &EntityCollection{EntityName: v.EntityName}
			for _, er := range v.Entities {
				ev, err := refDecodeEntityValue(er, depth+1)
				if err != nil {
					return nil, err
				}
				e, ok := ev.(*Entity)
				if !ok {
					return nil, errors.New("EntityCollection holds a value that is not an Entity")
				}
				ec.Entities = append(ec.Entities, e)
			}
			return ec, nil
		}
		return UnknownValue{Type: name, Raw: append(json.RawMessage(nil), raw...)}, nil
	case '[':
		var items []json.RawMessage
		if err := json.Unmarshal(raw, &items); err != nil {
			return nil, err
		}
		out := make([]any, 0, len(items))
		for _, it := range items {
			v, err := refDecodeValue(it, depth+1)
			if err != nil {
				return nil, err
			}
			out = append(out, v)
		}
		return out, nil
	case '"':
		var s string
		if err := json.Unmarshal(raw, &s); err != nil {
			return nil, err
		}
		if strings.HasPrefix(s, "/Date(") {
			if t, ok := refParseWCFDate(s); ok {
				return t, nil
			}
		}
		return s, nil
	}
	dec := json.NewDecoder(bytes.NewReader(raw))
	dec.UseNumber()
	var v any
	if err := dec.Decode(&v); err != nil {
		return nil, err
	}
	return v, nil
}

// refDecodeEntityValue reads a value where the data contract declares an
// Entity (an entity image, an element of EntityCollection.Entities): an
// object without a type name is an Entity, as Dataverse writes them.
func refDecodeEntityValue(raw json.RawMessage, depth int) (any, error) {
	if depth > maxValueDepth {
		return nil, errors.New("values nested too deeply")
	}
	if t := bytes.TrimSpace(raw); len(t) > 0 && t[0] == '{' {
		var obj map[string]json.RawMessage
		if err := json.Unmarshal(t, &obj); err != nil {
			return nil, err
		}
		var typ string
		if tt, ok := obj["__type"]; ok {
			if err := json.Unmarshal(tt, &typ); err != nil {
				return nil, errors.New("__type is not a string")
			}
		}
		if name, _, _ := strings.Cut(typ, ":"); name == "" {
			return refDecodeEntity(obj, depth)
		}
	}
	return refDecodeValue(raw, depth)
}

func refDecodeEntity(obj map[string]json.RawMessage, depth int) (*Entity, error) {
	e := &Entity{Attributes: map[string]any{}, FormattedValues: map[string]string{}}
	if err := refUnmarshalOpt(obj["LogicalName"], &e.LogicalName); err != nil {
		return nil, errors.New("Entity LogicalName is not a string")
	}
	var id string
	if err := refUnmarshalOpt(obj["Id"], &id); err != nil {
		return nil, errors.New("Entity Id is not a string")
	}
	if id != "" {
		u, err := uuid.Parse(id)
		if err != nil {
			return nil, errors.New("Entity Id is not a GUID")
		}
		e.ID = u.String()
	}
	var rv *string
	if err := refUnmarshalOpt(obj["RowVersion"], &rv); err != nil {
		return nil, errors.New("Entity RowVersion is not a string")
	}
	if rv != nil {
		e.RowVersion = *rv
	}
	pairs, err := refDecodeKV(obj["Attributes"], "Attributes")
	if err != nil {
		return nil, err
	}
	for _, p := range pairs {
		v, err := refDecodeValue(p.Value, depth+1)
		if err != nil {
			return nil, fmt.Errorf("attribute %s: %w", *p.Key, err)
		}
		e.Attributes[*p.Key] = v
	}
	fv, err := refDecodeKV(obj["FormattedValues"], "FormattedValues")
	if err != nil {
		return nil, err
	}
	for _, p := range fv {
		var s string
		if json.Unmarshal(p.Value, &s) == nil {
			e.FormattedValues[*p.Key] = s
		}
	}
	return e, nil
}

func refDecodeRef(obj map[string]json.RawMessage) (*EntityReference, error) {
	r := &EntityReference{}
	var id string
	var name *string
	if refUnmarshalOpt(obj["LogicalName"], &r.LogicalName) != nil || refUnmarshalOpt(obj["Id"], &id) != nil ||
		refUnmarshalOpt(obj["Name"], &name) != nil {
		return nil, errors.New("malformed EntityReference")
	}
	u, err := uuid.Parse(id)
	if err != nil {
		return nil, errors.New("EntityReference Id is not a GUID")
	}
	r.ID = u.String()
	if name != nil {
		r.Name = *name
	}
	return r, nil
}

func refUnmarshalOpt(raw json.RawMessage, out any) error {
	if len(raw) == 0 {
		return nil
	}
	return json.Unmarshal(raw, out)
}

// FuzzDecodeMatchesReference holds DecodeRemoteExecutionContext to the
// reference decoder: the same inputs accepted, equal results (times are
// built by time.UnixMilli(…).UTC() on both sides, so reflect.DeepEqual
// compares them exactly), and the same error text.
func FuzzDecodeMatchesReference(f *testing.F) {
	addContextSeeds(f)
	old, err := filepath.Glob(filepath.Join("testdata", "fuzz", "FuzzDecodeRemoteExecutionContext", "*"))
	if err != nil || len(old) == 0 {
		f.Fatalf("no corpus of FuzzDecodeRemoteExecutionContext: %v", err)
	}
	for _, name := range old {
		f.Add(readCorpusEntry(f, name))
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		got, err := DecodeRemoteExecutionContext(b)
		want, wantErr := refDecodeRemoteExecutionContext(b)
		if (err == nil) != (wantErr == nil) {
			t.Fatalf("err = %v, reference err = %v", err, wantErr)
		}
		if err != nil {
			if !errors.Is(err, ErrInvalidContext) {
				t.Fatalf("error does not wrap ErrInvalidContext: %v", err)
			}
			if err.Error() != wantErr.Error() && !refMaySay(b, err.Error()) {
				t.Fatalf("err = %q, reference err = %q", err, wantErr)
			}
			return
		}
		if !reflect.DeepEqual(got, want) {
			t.Fatalf("decoded\n%#v\nreference decoded\n%#v", got, want)
		}
	})
}

// refMaySay reports whether the reference decoder words its error for b as
// msg on some run: with two bad members in an untyped object it reports
// whichever it meets first in map order.
func refMaySay(b []byte, msg string) bool {
	for range 200 {
		if _, err := refDecodeRemoteExecutionContext(b); err != nil && err.Error() == msg {
			return true
		}
	}
	return false
}

// readCorpusEntry reads a []byte fuzz corpus file ("go test fuzz v1").
func readCorpusEntry(t testing.TB, name string) []byte {
	t.Helper()
	raw, err := os.ReadFile(name)
	if err != nil {
		t.Fatal(err)
	}
	header, lit, _ := strings.Cut(strings.TrimSpace(string(raw)), "\n")
	lit, ok := strings.CutPrefix(lit, "[]byte(")
	lit, ok2 := strings.CutSuffix(lit, ")")
	s, err := strconv.Unquote(lit)
	if header != "go test fuzz v1" || !ok || !ok2 || err != nil {
		t.Fatalf("%s is not a []byte corpus entry: %v", name, err)
	}
	return []byte(s)
}

// TestContextFieldNamesFollowRawContext keeps the walker's field table in
// step with rawContext, whose decoding it reproduces.
func TestContextFieldNamesFollowRawContext(t *testing.T) {
	t.Parallel()
	rt := reflect.TypeFor[rawContext]()
	if rt.NumField() != numContextFields {
		t.Fatalf("rawContext has %d fields, the walker knows %d", rt.NumField(), numContextFields)
	}
	for i := range rt.NumField() {
		sf := rt.Field(i)
		name := sf.Name
		if tag, ok := sf.Tag.Lookup("json"); ok {
			name = tag
		}
		if contextFieldNames[i] != name {
			t.Errorf("field %d is %q in rawContext, %q in contextFieldNames", i, name, contextFieldNames[i])
		}
	}
}
