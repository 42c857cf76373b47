package crm

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"sync"
	"time"
	"unicode"
	"unicode/utf16"
	"unicode/utf8"

	"github.com/google/uuid"

	"github.com/fhirsync/fhirsync/queues"
)

// ErrInvalidContext wraps every RemoteExecutionContext decoding failure.
var ErrInvalidContext = errors.New("invalid RemoteExecutionContext")

// MaxContextBytes bounds a message body; Service Bus Premium allows large
// messages, and nothing a service endpoint posts is legitimately bigger.
const MaxContextBytes = 4 << 20

// maxValueDepth bounds nesting of typed values (entities inside entity
// collections inside parameters…).
const maxValueDepth = 16

// ExecutionContext is a RemoteExecutionContext a Dataverse service
// endpoint posted to a queue (JSON message format).
type ExecutionContext struct {
	MessageName         string // Create, Update, Delete, …
	PrimaryEntityName   string
	PrimaryEntityID     string
	SecondaryEntityName string
	CorrelationID       string
	RequestID           string
	OperationID         string
	OrganizationID      string
	OrganizationName    string
	BusinessUnitID      string
	// UserID is the user the step ran as; InitiatingUserID the user whose
	// request started the operation.
	UserID             string
	InitiatingUserID   string
	Depth              int
	Stage              int // 10 pre-validation, 20 pre-operation, 40 post-operation
	Mode               int // 0 synchronous, 1 asynchronous
	OperationCreatedOn time.Time

	InputParameters  map[string]any
	OutputParameters map[string]any
	SharedVariables  map[string]any
	PreEntityImages  map[string]*Entity
	PostEntityImages map[string]*Entity
	// Target is InputParameters["Target"] when it is an entity (Create,
	// Update); TargetRef when it is a reference (Delete).
	Target    *Entity
	TargetRef *EntityReference
	// HasParent is set when the message carried a ParentContext.
	HasParent bool
}

// Entity is a typed Entity value.
type Entity struct {
	LogicalName     string
	ID              string
	Attributes      map[string]any
	FormattedValues map[string]string
	RowVersion      string
}

// EntityReference is a typed EntityReference value (a lookup).
type EntityReference struct {
	LogicalName string
	ID          string
	Name        string
}

// OptionSetValue is a typed choice value.
type OptionSetValue struct{ Value int }

// Money is a typed currency value, kept exact.
type Money struct{ Value json.Number }

// EntityCollection is a typed list of entities.
type EntityCollection struct {
	EntityName string
	Entities   []*Entity
}

// UnknownValue keeps a typed value of a kind this decoder does not model.
type UnknownValue struct {
	Type string // the __type name before the ':' (e.g. "AliasedValue")
	Raw  json.RawMessage
}

type rawContext struct {
	MessageName         string
	PrimaryEntityName   string
	PrimaryEntityID     string `json:"PrimaryEntityId"`
	SecondaryEntityName string
	CorrelationID       string  `json:"CorrelationId"`
	RequestID           *string `json:"RequestId"`
	OperationID         string  `json:"OperationId"`
	OrganizationID      string  `json:"OrganizationId"`
	OrganizationName    string
	BusinessUnitID      string `json:"BusinessUnitId"`
	UserID              string `json:"UserId"`
	InitiatingUserID    string `json:"InitiatingUserId"`
	Depth               int
	Stage               int
	Mode                int
	OperationCreatedOn  *string
	InputParameters     json.RawMessage
	OutputParameters    json.RawMessage
	SharedVariables     json.RawMessage
	PreEntityImages     json.RawMessage
	PostEntityImages    json.RawMessage
	ParentContext       json.RawMessage
}

func invalid(format string, args ...any) error {
	return fmt.Errorf("%w: %s", ErrInvalidContext, fmt.Sprintf(format, args...))
}

// DecodeRemoteExecutionContext parses the JSON a service endpoint posts,
// with the WCF data-contract quirks: collections are arrays of
// {"key","value"}, values whose declared type is object carry "__type"
// ("Entity:http://…", "EntityReference:…", "OptionSetValue:…", "Money:…"),
// while the entities of Pre/PostEntityImages and of an EntityCollection,
// declared as Entity, come without it and are read as entities by their
// place; members may come in any order (Dataverse writes them
// alphabetically, so MessageName can sit behind a large InputParameters);
// and dates read "/Date(1700000000000)/" or "/Date(1700000000000+0000)/".
// ParentContext, InputParameters and the images may be missing, empty or
// null (Dataverse drops them from messages above its size limit).
//
// What it accepts and how it reads each field is what encoding/json does
// when the body is decoded into rawContext (a json.Decoder with UseNumber,
// one value, trailing data rejected) and each collection and typed value
// is then unmarshalled level by level: field names match case-insensitively
// in the places a struct is decoded and exactly where a map is, the last of
// duplicate keys wins, and a field of the wrong type rejects the body. It
// does not decode that way, though: every level unmarshalled on its own
// scans its bytes again, and a nested value was scanned once per level it
// sits under. Instead the body is tokenised once into a tape (tokenize) and
// the levels are walked on the tape. Where a rejection carries
// encoding/json's wording (a syntax error, a field of the wrong type), the
// rejected bytes are handed to encoding/json to word it, so error texts stay
// as they were.
func DecodeRemoteExecutionContext(b []byte) (*ExecutionContext, error) {
	b = bytes.TrimPrefix(b, []byte("\xef\xbb\xbf"))
	if len(b) > MaxContextBytes {
		return nil, invalid("%d bytes exceeds the %d-byte limit", len(b), MaxContextBytes)
	}
	if !utf8.Valid(b) {
		return nil, invalid("body is not valid UTF-8")
	}
	d := decoders.Get().(*decoder)
	defer d.release()
	d.b = b
	ok, trailing := d.tokenize()
	if !ok || d.toks[0].kind != kindObject {
		return nil, contextJSONError(b)
	}
	var f [numContextFields]int32 // the token each field takes, -1 when absent
	for k := range f {
		f[k] = -1
	}
	var ints [3]int // Depth, Stage, Mode
	for m, i := int32(0), int32(1); m < d.toks[0].n; m++ {
		k, v := i, i+1
		i = d.toks[v].next
		field := d.contextField(k)
		if field < 0 {
			continue
		}
		switch kind := d.toks[v].kind; {
		case field >= fInputParameters: // json.RawMessage: any value, null included
			f[field] = v
		case field >= fDepth && field <= fMode:
			if kind == kindNull {
				continue
			}
			n, ok := d.int(v)
			if !ok {
				return nil, contextJSONError(b)
			}
			ints[field-fDepth] = n
		case kind == kindString:
			f[field] = v
		case kind == kindNull:
			// null leaves a string as it was and sets a *string to nil
			if field == fRequestID || field == fOperationCreatedOn {
				f[field] = -1
			}
		default:
			return nil, contextJSONError(b)
		}
	}
	if trailing {
		return nil, invalid("trailing data after the context")
	}
	x := &ExecutionContext{MessageName: d.str(f[fMessageName]), PrimaryEntityName: d.str(f[fPrimaryEntityName]),
		SecondaryEntityName: d.str(f[fSecondaryEntityName]), CorrelationID: d.str(f[fCorrelationID]),
		RequestID: d.str(f[fRequestID]), OperationID: d.str(f[fOperationID]), OrganizationID: d.str(f[fOrganizationID]),
		OrganizationName: d.str(f[fOrganizationName]), BusinessUnitID: d.str(f[fBusinessUnitID]),
		UserID: strings.ToLower(d.str(f[fUserID])), InitiatingUserID: strings.ToLower(d.str(f[fInitiatingUserID])),
		Depth: ints[0], Stage: ints[1], Mode: ints[2]}
	if x.MessageName == "" {
		return nil, invalid("MessageName is missing")
	}
	if !validName(x.PrimaryEntityName) {
		return nil, invalid("PrimaryEntityName is missing or malformed")
	}
	id, err := uuid.ParseBytes(d.strBytes(f[fPrimaryEntityID]))
	if err != nil {
		return nil, invalid("PrimaryEntityId is not a GUID")
	}
	x.PrimaryEntityID = id.String()
	if f[fOperationCreatedOn] >= 0 {
		t, ok := parseWCFDate(d.strBytes(f[fOperationCreatedOn]))
		if !ok {
			return nil, invalid("OperationCreatedOn is not a /Date(…)/ value")
		}
		x.OperationCreatedOn = t
	}
	if x.InputParameters, err = d.params(f[fInputParameters], "InputParameters"); err != nil {
		return nil, err
	}
	if x.OutputParameters, err = d.params(f[fOutputParameters], "OutputParameters"); err != nil {
		return nil, err
	}
	if x.SharedVariables, err = d.params(f[fSharedVariables], "SharedVariables"); err != nil {
		return nil, err
	}
	if x.PreEntityImages, err = d.images(f[fPreEntityImages], "PreEntityImages"); err != nil {
		return nil, err
	}
	if x.PostEntityImages, err = d.images(f[fPostEntityImages], "PostEntityImages"); err != nil {
		return nil, err
	}
	switch t := x.InputParameters["Target"].(type) {
	case *Entity:
		x.Target = t
	case *EntityReference:
		x.TargetRef = t
	}
	p := f[fParentContext]
	x.HasParent = p >= 0 && d.toks[p].kind != kindNull
	return x, nil
}

// contextJSONError words a rejection of the body as a whole (not JSON, not
// an object, a top-level field of the wrong type) the way json.Decoder
// does, by letting it decode the body into rawContext.
func contextJSONError(b []byte) error {
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.UseNumber()
	var raw rawContext
	if err := dec.Decode(&raw); err != nil {
		return invalid("%v", err)
	}
	if dec.More() {
		return invalid("trailing data after the context")
	}
	return invalid("MessageName is missing") // a JSON null
}

// The fields of rawContext, in its order, and their JSON names.
const (
	fMessageName = iota
	fPrimaryEntityName
	fPrimaryEntityID
	fSecondaryEntityName
	fCorrelationID
	fRequestID // *string
	fOperationID
	fOrganizationID
	fOrganizationName
	fBusinessUnitID
	fUserID
	fInitiatingUserID
	fDepth // ints
	fStage
	fMode
	fOperationCreatedOn // *string
	fInputParameters    // json.RawMessage from here on
	fOutputParameters
	fSharedVariables
	fPreEntityImages
	fPostEntityImages
	fParentContext
	numContextFields
)

var contextFieldNames = [numContextFields]string{"MessageName", "PrimaryEntityName", "PrimaryEntityId",
	"SecondaryEntityName", "CorrelationId", "RequestId", "OperationId", "OrganizationId", "OrganizationName",
	"BusinessUnitId", "UserId", "InitiatingUserId", "Depth", "Stage", "Mode", "OperationCreatedOn",
	"InputParameters", "OutputParameters", "SharedVariables", "PreEntityImages", "PostEntityImages", "ParentContext"}

// contextField is the rawContext field the key at token k fills, or -1.
func (d *decoder) contextField(k int32) int {
	key := d.strBytes(k)
	for f, name := range contextFieldNames {
		if string(key) == name {
			return f
		}
	}
	for f, name := range contextFieldNames {
		if equalFold(key, name) {
			return f
		}
	}
	return -1
}

func validName(s string) bool {
	if s == "" || len(s) > 64 {
		return false
	}
	for _, r := range s {
		if !(r == '_' || r >= '0' && r <= '9' || r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z') {
			return false
		}
	}
	return true
}

// parseWCFDate reads "/Date(ms)/" or "/Date(ms+hhmm)/" (up to 15 digits
// of milliseconds, an optional sign; the offset four digits); the offset
// only says how the sender displayed it, the milliseconds are UTC.
func parseWCFDate(s []byte) (time.Time, bool) {
	s, ok := bytes.CutPrefix(s, []byte("/Date("))
	if !ok {
		return time.Time{}, false
	}
	if s, ok = bytes.CutSuffix(s, []byte(")/")); !ok {
		return time.Time{}, false
	}
	digits := 0
	if len(s) > 0 && s[0] == '-' {
		digits = 1
	}
	start := digits
	for digits < len(s) && isDigit(s[digits]) {
		digits++
	}
	if digits == start || digits-start > 15 {
		return time.Time{}, false
	}
	if off := s[digits:]; len(off) > 0 {
		if len(off) != 5 || off[0] != '+' && off[0] != '-' || !isDigit(off[1]) || !isDigit(off[2]) ||
			!isDigit(off[3]) || !isDigit(off[4]) {
			return time.Time{}, false
		}
	}
	ms, err := strconv.ParseInt(string(s[:digits]), 10, 64)
	if err != nil {
		return time.Time{}, false
	}
	return time.UnixMilli(ms).UTC(), true
}

func isDigit(c byte) bool { return '0' <= c && c <= '9' }

// kvPair is one entry of a WCF collection as encoding/json reads it; it
// words the errors of a collection that does not fit it.
type kvPair struct {
	Key   *string         `json:"key"`
	Value json.RawMessage `json:"value"`
}

// kv checks the WCF collection at token i (-1 when absent): an array of
// {"key","value"}, null or absent meaning empty. It returns the array's
// token, or -1 when empty.
func (d *decoder) kv(i int32, what string) (int32, error) {
	if i < 0 || d.toks[i].kind == kindNull {
		return -1, nil
	}
	t := d.toks[i]
	if t.kind != kindArray {
		return -1, invalid("%s is not an array of key/value pairs", what)
	}
	misfit, keyless := false, false
	for e, el := int32(0), i+1; e < t.n; e, el = e+1, d.toks[el].next {
		switch d.toks[el].kind {
		case kindNull:
			keyless = true
		case kindObject:
			k, _, ok := d.pair(el)
			misfit = misfit || !ok
			keyless = keyless || k < 0
		default:
			misfit = true
		}
	}
	if misfit {
		return -1, invalid("%s: %v", what, jsonError(d.b[t.start:t.end], &[]kvPair{}))
	}
	if keyless {
		return -1, invalid("%s has an entry without a key", what)
	}
	return i, nil
}

// pair reads the object at token obj as a kvPair: the key's string token
// (-1 when absent or null), the value's token (-1 when absent), and false
// when a key is not a string.
func (d *decoder) pair(obj int32) (key, value int32, ok bool) {
	key, value, ok = -1, -1, true
	for m, i := int32(0), obj+1; m < d.toks[obj].n; m++ {
		k, v := i, i+1
		i = d.toks[v].next
		switch {
		case d.keyFold(k, "key"):
			switch d.toks[v].kind {
			case kindString:
				key = v
			case kindNull:
				key = -1
			default:
				ok = false
			}
		case d.keyFold(k, "value"):
			value = v
		}
	}
	return key, value, ok
}

func (d *decoder) params(i int32, what string) (map[string]any, error) {
	arr, err := d.kv(i, what)
	if err != nil {
		return nil, err
	}
	out := make(map[string]any, d.count(arr))
	for e, el := int32(0), arr+1; e < d.count(arr); e, el = e+1, d.toks[el].next {
		k, v, _ := d.pair(el)
		dv, err := d.value(v, 0)
		if err != nil {
			return nil, invalid("%s[%s]: %v", what, d.str(k), err)
		}
		out[d.str(k)] = dv
	}
	return out, nil
}

func (d *decoder) images(i int32, what string) (map[string]*Entity, error) {
	arr, err := d.kv(i, what)
	if err != nil {
		return nil, err
	}
	out := make(map[string]*Entity, d.count(arr))
	for e, el := int32(0), arr+1; e < d.count(arr); e, el = e+1, d.toks[el].next {
		k, v, _ := d.pair(el)
		dv, err := d.entityValue(v, 0)
		if err != nil {
			return nil, invalid("%s[%s]: %v", what, d.str(k), err)
		}
		img, ok := dv.(*Entity)
		if !ok {
			return nil, invalid("%s[%s] is not an Entity", what, d.str(k))
		}
		out[d.str(k)] = img
	}
	return out, nil
}

// value turns the WCF JSON value at token i (-1 when absent) into a Go
// value: string, time.Time (for /Date(…)/), json.Number, bool, nil, []any,
// *Entity, *EntityReference, OptionSetValue, Money, *EntityCollection,
// UnknownValue, or map[string]any for an untyped object.
func (d *decoder) value(i int32, depth int) (any, error) {
	if depth > maxValueDepth {
		return nil, errors.New("values nested too deeply")
	}
	if i < 0 {
		return nil, nil
	}
	switch t := d.toks[i]; t.kind {
	case kindObject:
		return d.object(i, depth)
	case kindArray:
		out := make([]any, 0, t.n)
		for e, el := int32(0), i+1; e < t.n; e, el = e+1, d.toks[el].next {
			v, err := d.value(el, depth+1)
			if err != nil {
				return nil, err
			}
			out = append(out, v)
		}
		return out, nil
	case kindString:
		s := d.strBytes(i)
		if bytes.HasPrefix(s, []byte("/Date(")) {
			if tm, ok := parseWCFDate(s); ok {
				return tm, nil
			}
		}
		return string(s), nil
	case kindNumber:
		return json.Number(d.b[t.start:t.end]), nil
	case kindTrue:
		return true, nil
	case kindFalse:
		return false, nil
	}
	return nil, nil
}

// entityValue reads the value at token i where the data contract declares
// an Entity: the value of an entity image and an element of an
// EntityCollection's Entities. DataContractJsonSerializer writes "__type"
// only where the declared type does not say what a value is, so Dataverse
// writes these entities without it; an object with no type name is read as
// an Entity by its place. A value that names a type is read as that type.
func (d *decoder) entityValue(i int32, depth int) (any, error) {
	if depth > maxValueDepth {
		return nil, errors.New("values nested too deeply")
	}
	if i >= 0 && d.toks[i].kind == kindObject {
		name, _, err := d.typeName(i)
		if err != nil {
			return nil, err
		}
		if len(name) == 0 {
			return d.entity(i, depth)
		}
	}
	return d.value(i, depth)
}

// typeName is the type an object's "__type" names, the part before the ':'
// ("Entity" for "Entity:http://…"), and its namespace, the part after;
// "__type" is matched exactly, the last one winning, and both are empty
// when it is absent or null.
func (d *decoder) typeName(obj int32) (name, namespace []byte, err error) {
	typ := int32(-1)
	for m, i := int32(0), obj+1; m < d.toks[obj].n; m++ {
		if d.keyIs(i, "__type") {
			typ = i + 1
		}
		i = d.toks[i+1].next
	}
	if typ < 0 {
		return nil, nil, nil
	}
	switch d.toks[typ].kind {
	case kindString:
		name, namespace, _ = bytes.Cut(d.strBytes(typ), []byte(":"))
		return name, namespace, nil
	case kindNull:
		return nil, nil, nil
	}
	return nil, nil, errors.New("__type is not a string")
}

// object reads an object by its "__type" (see typeName; no type name means
// untyped).
func (d *decoder) object(obj int32, depth int) (any, error) {
	n := d.toks[obj].n
	name, namespace, err := d.typeName(obj)
	if err != nil {
		return nil, err
	}
	if string(namespace) == "#System" {
		// A .NET primitive in a slot declared object, wrapped so that its
		// type survives: {"__type":"Guid:#System","__value":"…"}, or
		// "DateTime:#System" around a /Date(…)/ string.
		if v := d.members(obj, "__value")[0]; v >= 0 {
			return d.value(v, depth+1)
		}
	}
	switch string(name) {
	case "":
		out := make(map[string]any, n)
		var failed map[string]error // by key; only a key's last value counts
		for m, i := int32(0), obj+1; m < n; m++ {
			k, v := d.str(i), i+1
			i = d.toks[v].next
			dv, err := d.value(v, depth+1)
			if err != nil {
				if failed == nil {
					failed = map[string]error{}
				}
				failed[k] = err
				continue
			}
			delete(failed, k)
			out[k] = dv
		}
		for _, err := range failed {
			return nil, err
		}
		return out, nil
	case "Entity":
		return d.entity(obj, depth)
	case "EntityReference":
		return d.ref(obj)
	case "OptionSetValue":
		// as unmarshalling into struct{ Value *int }
		var v int
		set, ok := false, true
		for m, i := int32(0), obj+1; m < n; m++ {
			if d.keyFold(i, "Value") {
				switch d.toks[i+1].kind {
				case kindNumber:
					iv, isInt := d.int(i + 1)
					v, set, ok = iv, true, ok && isInt
				case kindNull:
					set = false
				default:
					ok = false
				}
			}
			i = d.toks[i+1].next
		}
		if !ok || !set {
			return nil, errors.New("OptionSetValue without an integer Value")
		}
		return OptionSetValue{Value: v}, nil
	case "Money":
		// as decoding into struct{ Value *json.Number }, which takes a
		// number, or a string holding one
		var v []byte
		set, ok := false, true
		for m, i := int32(0), obj+1; m < n; m++ {
			if d.keyFold(i, "Value") {
				switch t := d.toks[i+1]; t.kind {
				case kindNumber:
					v, set = d.b[t.start:t.end], true
				case kindString:
					v, set = d.strBytes(i+1), true
					ok = ok && validNumber(v)
				case kindNull:
					set = false
				default:
					ok = false
				}
			}
			i = d.toks[i+1].next
		}
		if !ok || !set {
			return nil, errors.New("Money without a numeric Value")
		}
		return Money{Value: json.Number(v)}, nil
	case "EntityCollection":
		// as unmarshalling into struct{ EntityName string; Entities []json.RawMessage }
		entityName, entities, ok := int32(-1), int32(-1), true
		for m, i := int32(0), obj+1; m < n; m++ {
			switch kind := d.toks[i+1].kind; {
			case d.keyFold(i, "EntityName"):
				if kind == kindString {
					entityName = i + 1
				} else if kind != kindNull {
					ok = false
				}
			case d.keyFold(i, "Entities"):
				switch kind {
				case kindArray:
					entities = i + 1
				case kindNull:
					entities = -1
				default:
					ok = false
				}
			}
			i = d.toks[i+1].next
		}
		if !ok {
			return nil, errors.New("malformed EntityCollection")
		}
		ec := &EntityCollection{EntityName: d.str(entityName)}
		for e, el := int32(0), entities+1; e < d.count(entities); e, el = e+1, d.toks[el].next {
			ev, err := d.entityValue(el, depth+1)
			if err != nil {
				return nil, err
			}
			en, ok := ev.(*Entity)
			if !ok {
				return nil, errors.New("EntityCollection holds a value that is not an Entity")
			}
			ec.Entities = append(ec.Entities, en)
		}
		return ec, nil
	}
	t := d.toks[obj]
	return UnknownValue{Type: string(name), Raw: append(json.RawMessage(nil), d.b[t.start:t.end]...)}, nil
}

// members returns the tokens of the last values of an object's keys that
// match names exactly (-1 for a key not there).
func (d *decoder) members(obj int32, names ...string) [5]int32 {
	out := [5]int32{-1, -1, -1, -1, -1}
	for m, i := int32(0), obj+1; m < d.toks[obj].n; m++ {
		for j, name := range names {
			if d.keyIs(i, name) {
				out[j] = i + 1
				break
			}
		}
		i = d.toks[i+1].next
	}
	return out
}

// optString reads the string at token i the way unmarshalling into a
// string does: absent or null leaves it empty, and anything but a string
// is refused.
func (d *decoder) optString(i int32) ([]byte, bool) {
	if i < 0 {
		return nil, true
	}
	switch d.toks[i].kind {
	case kindString:
		return d.strBytes(i), true
	case kindNull:
		return nil, true
	}
	return nil, false
}

func (d *decoder) entity(obj int32, depth int) (*Entity, error) {
	f := d.members(obj, "LogicalName", "Id", "RowVersion", "Attributes", "FormattedValues")
	e := &Entity{}
	name, ok := d.optString(f[0])
	if !ok {
		return nil, errors.New("Entity LogicalName is not a string")
	}
	e.LogicalName = string(name)
	id, ok := d.optString(f[1])
	if !ok {
		return nil, errors.New("Entity Id is not a string")
	}
	if len(id) > 0 {
		u, err := uuid.ParseBytes(id)
		if err != nil {
			return nil, errors.New("Entity Id is not a GUID")
		}
		e.ID = u.String()
	}
	rv, ok := d.optString(f[2])
	if !ok {
		return nil, errors.New("Entity RowVersion is not a string")
	}
	e.RowVersion = string(rv)
	attrs, err := d.kv(f[3], "Attributes")
	if err != nil {
		return nil, err
	}
	e.Attributes = make(map[string]any, d.count(attrs))
	for a, el := int32(0), attrs+1; a < d.count(attrs); a, el = a+1, d.toks[el].next {
		k, v, _ := d.pair(el)
		dv, err := d.value(v, depth+1)
		if err != nil {
			return nil, fmt.Errorf("attribute %s: %w", d.str(k), err)
		}
		e.Attributes[d.str(k)] = dv
	}
	fv, err := d.kv(f[4], "FormattedValues")
	if err != nil {
		return nil, err
	}
	e.FormattedValues = make(map[string]string, d.count(fv))
	for a, el := int32(0), fv+1; a < d.count(fv); a, el = a+1, d.toks[el].next {
		k, v, _ := d.pair(el)
		// a value that is not a string (or null, read as "") is left out
		if s, ok := d.optString(v); ok && v >= 0 {
			e.FormattedValues[d.str(k)] = string(s)
		}
	}
	return e, nil
}

func (d *decoder) ref(obj int32) (*EntityReference, error) {
	f := d.members(obj, "LogicalName", "Id", "Name")
	name, ok1 := d.optString(f[0])
	id, ok2 := d.optString(f[1])
	display, ok3 := d.optString(f[2])
	if !ok1 || !ok2 || !ok3 {
		return nil, errors.New("malformed EntityReference")
	}
	u, err := uuid.ParseBytes(id)
	if err != nil {
		return nil, errors.New("EntityReference Id is not a GUID")
	}
	return &EntityReference{LogicalName: string(name), ID: u.String(), Name: string(display)}, nil
}

// jsonError is the error encoding/json reports unmarshalling raw into v;
// it is only asked once the walker knows raw does not fit v.
func jsonError(raw []byte, v any) error {
	if err := json.Unmarshal(raw, v); err != nil {
		return err
	}
	return errors.New("malformed JSON")
}

// decoder holds the tape of one body: its tokens in document order, each
// container followed by its contents, so a walk can step over a value of
// any size in one move (token.next).
type decoder struct {
	b     []byte
	toks  []token
	stack []int32 // open containers while tokenising
}

type token struct {
	start, end int32 // the value's bytes in b; a string's include its quotes
	next       int32 // the token after this value and everything inside it
	n          int32 // an object's members or an array's elements
	kind       byte
	escaped    bool // a string holding a backslash
}

const (
	kindNull byte = iota + 1
	kindFalse
	kindTrue
	kindNumber
	kindString
	kindObject
	kindArray
)

// maxNestingDepth is encoding/json's limit on nested objects and arrays.
const maxNestingDepth = 10000

var decoders = sync.Pool{New: func() any { return new(decoder) }}

func (d *decoder) release() {
	if cap(d.toks) > 1<<16 {
		return // a rare huge body; do not keep its tape
	}
	d.b, d.toks, d.stack = nil, d.toks[:0], d.stack[:0]
	decoders.Put(d)
}

// tokenize puts the first JSON value in d.b on the tape, checking it as
// json.Decoder does (RFC 8259 syntax, encoding/json's nesting limit). It
// reports whether the value is well-formed, and whether something other
// than ']' or '}' follows it (which json.Decoder.More counts as another
// value).
func (d *decoder) tokenize() (ok, trailing bool) {
	b := d.b
	i := skipSpace(b, 0)
	for {
		// a value starts at i
		if i >= len(b) {
			return false, false
		}
		if n := len(d.stack); n > 0 && d.toks[d.stack[n-1]].kind == kindArray {
			d.toks[d.stack[n-1]].n++
		}
		if c := b[i]; c == '{' || c == '[' {
			if len(d.stack) == maxNestingDepth {
				return false, false
			}
			kind, closer := kindObject, byte('}')
			if c == '[' {
				kind, closer = kindArray, ']'
			}
			d.stack = append(d.stack, int32(len(d.toks)))
			d.toks = append(d.toks, token{kind: kind, start: int32(i)})
			if i = skipSpace(b, i+1); i < len(b) && b[i] == closer {
				i = d.close(i)
			} else {
				if kind == kindObject {
					if i, ok = d.key(i); !ok {
						return false, false
					}
				}
				continue
			}
		} else {
			if i, ok = d.scalar(i); !ok {
				return false, false
			}
			i = skipSpace(b, i)
		}
		// after a value, i is at the next byte that is not space
		for {
			n := len(d.stack)
			if n == 0 {
				return true, i < len(b) && b[i] != ']' && b[i] != '}'
			}
			if i >= len(b) {
				return false, false
			}
			kind := d.toks[d.stack[n-1]].kind
			if b[i] == ',' {
				i = skipSpace(b, i+1)
				if kind == kindObject {
					if i, ok = d.key(i); !ok {
						return false, false
					}
				}
				break
			}
			if kind == kindObject && b[i] == '}' || kind == kindArray && b[i] == ']' {
				i = d.close(i)
				continue
			}
			return false, false
		}
	}
}

// close ends the innermost container at its closing byte b[i] and returns
// where the next byte that is not space is.
func (d *decoder) close(i int) int {
	n := len(d.stack)
	t := &d.toks[d.stack[n-1]]
	t.end, t.next = int32(i+1), int32(len(d.toks))
	d.stack = d.stack[:n-1]
	return skipSpace(d.b, i+1)
}

// key reads an object member's key at i and its ':', returning where its
// value starts.
func (d *decoder) key(i int) (int, bool) {
	if i >= len(d.b) || d.b[i] != '"' {
		return i, false
	}
	d.toks[d.stack[len(d.stack)-1]].n++
	i, ok := d.string(i)
	if !ok {
		return i, false
	}
	if i = skipSpace(d.b, i); i >= len(d.b) || d.b[i] != ':' {
		return i, false
	}
	return skipSpace(d.b, i+1), true
}

func (d *decoder) scalar(i int) (int, bool) {
	b := d.b
	switch c := b[i]; {
	case c == '"':
		return d.string(i)
	case c == '-' || isDigit(c):
		j, ok := scanNumber(b, i)
		if ok {
			d.toks = append(d.toks, token{kind: kindNumber, start: int32(i), end: int32(j), next: int32(len(d.toks) + 1)})
		}
		return j, ok
	}
	for _, lit := range [...]struct {
		text string
		kind byte
	}{{"null", kindNull}, {"true", kindTrue}, {"false", kindFalse}} {
		if bytes.HasPrefix(b[i:], []byte(lit.text)) {
			j := i + len(lit.text)
			d.toks = append(d.toks, token{kind: lit.kind, start: int32(i), end: int32(j), next: int32(len(d.toks) + 1)})
			return j, true
		}
	}
	return i, false
}

// string reads a string at b[i] == '"'.
func (d *decoder) string(i int) (int, bool) {
	b := d.b
	escaped := false
	j := i + 1
	for ; j < len(b); j++ {
		c := b[j]
		if c == '"' {
			d.toks = append(d.toks, token{kind: kindString, start: int32(i), end: int32(j + 1), next: int32(len(d.toks) + 1), escaped: escaped})
			return j + 1, true
		}
		if c < ' ' {
			return j, false
		}
		if c == '\\' {
			escaped = true
			if j++; j >= len(b) {
				return j, false
			}
			switch b[j] {
			case '"', '\\', '/', 'b', 'f', 'n', 'r', 't':
			case 'u':
				if j+4 >= len(b) || hexDigit(b[j+1]) < 0 || hexDigit(b[j+2]) < 0 || hexDigit(b[j+3]) < 0 || hexDigit(b[j+4]) < 0 {
					return j, false
				}
				j += 4
			default:
				return j, false
			}
		}
	}
	return j, false
}

// scanNumber returns where the JSON number at b[i] ends.
func scanNumber(b []byte, i int) (int, bool) {
	if i < len(b) && b[i] == '-' {
		i++
	}
	switch {
	case i < len(b) && b[i] == '0':
		i++
	case i < len(b) && '1' <= b[i] && b[i] <= '9':
		for i++; i < len(b) && isDigit(b[i]); i++ {
		}
	default:
		return i, false
	}
	if i < len(b) && b[i] == '.' {
		if i++; i >= len(b) || !isDigit(b[i]) {
			return i, false
		}
		for i++; i < len(b) && isDigit(b[i]); i++ {
		}
	}
	if i < len(b) && (b[i] == 'e' || b[i] == 'E') {
		if i++; i < len(b) && (b[i] == '+' || b[i] == '-') {
			i++
		}
		if i >= len(b) || !isDigit(b[i]) {
			return i, false
		}
		for i++; i < len(b) && isDigit(b[i]); i++ {
		}
	}
	return i, true
}

// validNumber reports whether s is a JSON number, as json.Number requires
// of a string it is decoded from.
func validNumber(s []byte) bool {
	end, ok := scanNumber(s, 0)
	return ok && end == len(s)
}

func skipSpace(b []byte, i int) int {
	for i < len(b) && (b[i] == ' ' || b[i] == '\n' || b[i] == '\r' || b[i] == '\t') {
		i++
	}
	return i
}

func hexDigit(c byte) rune {
	switch {
	case '0' <= c && c <= '9':
		return rune(c - '0')
	case 'a' <= c && c <= 'f':
		return rune(c - 'a' + 10)
	case 'A' <= c && c <= 'F':
		return rune(c - 'A' + 10)
	}
	return -1
}

// count is the number of members or elements of the container at token i
// (0 for -1).
func (d *decoder) count(i int32) int32 {
	if i < 0 {
		return 0
	}
	return d.toks[i].n
}

// int reads the number at token i as encoding/json fills an int: an
// integer in range, no fraction or exponent.
func (d *decoder) int(i int32) (int, bool) {
	t := d.toks[i]
	n, err := strconv.ParseInt(string(d.b[t.start:t.end]), 10, strconv.IntSize)
	return int(n), err == nil
}

// strBytes is the unquoted text of the string token i (nil for -1); it
// aliases the body unless the string holds escapes.
func (d *decoder) strBytes(i int32) []byte {
	if i < 0 {
		return nil
	}
	t := d.toks[i]
	s := d.b[t.start+1 : t.end-1]
	if t.escaped {
		return unescape(s)
	}
	return s
}

// str is the string token i as a string ("" for -1).
func (d *decoder) str(i int32) string {
	return string(d.strBytes(i))
}

// keyIs reports whether the key at token k is name, exactly (as a map
// key is looked up).
func (d *decoder) keyIs(k int32, name string) bool {
	t := d.toks[k]
	if !t.escaped {
		return string(d.b[t.start+1:t.end-1]) == name
	}
	return string(d.strBytes(k)) == name
}

// keyFold reports whether the key at token k names the struct field name
// the way encoding/json matches them: equal under Unicode case folding.
func (d *decoder) keyFold(k int32, name string) bool {
	return equalFold(d.strBytes(k), name)
}

// equalFold is bytes.EqualFold for an ASCII name, without converting it.
func equalFold(s []byte, name string) bool {
	if len(s) == len(name) {
		for i := 0; i < len(s); i++ {
			c, n := s[i], name[i]
			if c == n {
				continue
			}
			if c >= utf8.RuneSelf {
				return bytes.EqualFold(s, []byte(name))
			}
			if lc := c | 0x20; lc != n|0x20 || lc < 'a' || lc > 'z' {
				return false
			}
		}
		return true
	}
	for _, c := range s {
		if c >= utf8.RuneSelf {
			// 'ſ' folds to 's', 'K' (Kelvin) to 'k'
			return bytes.EqualFold(s, []byte(name))
		}
	}
	return false
}

// unescape decodes the inside of a JSON string with escapes, as
// encoding/json does: a lone or mismatched surrogate becomes U+FFFD.
func unescape(s []byte) []byte {
	out := make([]byte, 0, len(s))
	for r := 0; r < len(s); {
		c := s[r]
		if c != '\\' {
			out = append(out, c)
			r++
			continue
		}
		r++
		switch s[r] {
		case 'b':
			out = append(out, '\b')
		case 'f':
			out = append(out, '\f')
		case 'n':
			out = append(out, '\n')
		case 'r':
			out = append(out, '\r')
		case 't':
			out = append(out, '\t')
		case 'u':
			rr := getu4(s[r-1:])
			r += 5
			if utf16.IsSurrogate(rr) {
				if dec := utf16.DecodeRune(rr, getu4(s[r:])); dec != unicode.ReplacementChar {
					out = utf8.AppendRune(out, dec)
					r += 6
					continue
				}
				rr = unicode.ReplacementChar
			}
			out = utf8.AppendRune(out, rr)
			continue
		default: // '"', '\\', '/'
			out = append(out, s[r])
		}
		r++
	}
	return out
}

// getu4 decodes \uXXXX at the start of s, or returns -1.
func getu4(s []byte) rune {
	if len(s) < 6 || s[0] != '\\' || s[1] != 'u' {
		return -1
	}
	var r rune
	for _, c := range s[2:6] {
		h := hexDigit(c)
		if h < 0 {
			return -1
		}
		r = r*16 + h
	}
	return r
}

// Initiator is the user whose request caused the change: InitiatingUserId,
// or UserId when that is absent. The agent compares it with its own user
// to recognise its writes.
func (x *ExecutionContext) Initiator() string {
	if x.InitiatingUserID != "" && x.InitiatingUserID != uuid.Nil.String() {
		return x.InitiatingUserID
	}
	return x.UserID
}

// RowVersion is the row version after the change, from the post image or
// the target, when either carries one.
func (x *ExecutionContext) RowVersion() string {
	for _, img := range x.PostEntityImages {
		if img.RowVersion != "" {
			return img.RowVersion
		}
	}
	if x.Target != nil {
		return x.Target.RowVersion
	}
	return ""
}

// Notice builds the change notice for the context (Side crm, origin
// "crm-endpoint"): Create → created, Update → updated, Delete → deleted,
// any other message → changed.
func (x *ExecutionContext) Notice() (queues.Notice, error) {
	ev := queues.EventChanged
	switch x.MessageName {
	case "Create":
		ev = queues.EventCreated
	case "Update":
		ev = queues.EventUpdated
	case "Delete":
		ev = queues.EventDeleted
	}
	n := queues.Notice{V: queues.NoticeVersion, Side: queues.SideCRM, Type: x.PrimaryEntityName, ID: x.PrimaryEntityID,
		Version: x.RowVersion(), Event: ev, Origin: "crm-endpoint", ChangedAt: x.OperationCreatedOn,
		CorrelationID: x.CorrelationID, Initiator: x.Initiator()}
	if len(n.CorrelationID) > 128 {
		n.CorrelationID = ""
	}
	if err := n.Validate(); err != nil {
		return queues.Notice{}, fmt.Errorf("%w: %v", ErrInvalidContext, err)
	}
	return n, nil
}
