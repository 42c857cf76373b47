package crm

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"regexp"
	"strconv"
	"strings"
	"time"
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
// {"key","value"}, typed values carry "__type" ("Entity:http://…",
// "EntityReference:…", "OptionSetValue:…", "Money:…"), and dates read
// "/Date(1700000000000)/" or "/Date(1700000000000+0000)/". Entity images
// may be missing (Dataverse drops them from large messages).
func DecodeRemoteExecutionContext(b []byte) (*ExecutionContext, error) {
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
		t, ok := parseWCFDate(*raw.OperationCreatedOn)
		if !ok {
			return nil, invalid("OperationCreatedOn is not a /Date(…)/ value")
		}
		x.OperationCreatedOn = t
	}
	if x.InputParameters, err = decodeParams(raw.InputParameters, "InputParameters"); err != nil {
		return nil, err
	}
	if x.OutputParameters, err = decodeParams(raw.OutputParameters, "OutputParameters"); err != nil {
		return nil, err
	}
	if x.SharedVariables, err = decodeParams(raw.SharedVariables, "SharedVariables"); err != nil {
		return nil, err
	}
	if x.PreEntityImages, err = decodeImages(raw.PreEntityImages, "PreEntityImages"); err != nil {
		return nil, err
	}
	if x.PostEntityImages, err = decodeImages(raw.PostEntityImages, "PostEntityImages"); err != nil {
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

var wcfDate = regexp.MustCompile(`^/Date\((-?\d{1,15})([+-]\d{4})?\)/$`)

// parseWCFDate reads "/Date(ms)/" or "/Date(ms+hhmm)/"; the offset only
// says how the sender displayed it, the milliseconds are UTC.
func parseWCFDate(s string) (time.Time, bool) {
	m := wcfDate.FindStringSubmatch(s)
	if m == nil {
		return time.Time{}, false
	}
	ms, err := strconv.ParseInt(m[1], 10, 64)
	if err != nil {
		return time.Time{}, false
	}
	return time.UnixMilli(ms).UTC(), true
}

type kvPair struct {
	Key   *string         `json:"key"`
	Value json.RawMessage `json:"value"`
}

// decodeKV reads a WCF collection: an array of {"key","value"} (null or
// absent means empty).
func decodeKV(raw json.RawMessage, what string) ([]kvPair, error) {
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

func decodeParams(raw json.RawMessage, what string) (map[string]any, error) {
	pairs, err := decodeKV(raw, what)
	if err != nil {
		return nil, err
	}
	out := make(map[string]any, len(pairs))
	for _, p := range pairs {
		v, err := decodeValue(p.Value, 0)
		if err != nil {
			return nil, invalid("%s[%s]: %v", what, *p.Key, err)
		}
		out[*p.Key] = v
	}
	return out, nil
}

func decodeImages(raw json.RawMessage, what string) (map[string]*Entity, error) {
	pairs, err := decodeKV(raw, what)
	if err != nil {
		return nil, err
	}
	out := make(map[string]*Entity, len(pairs))
	for _, p := range pairs {
		v, err := decodeValue(p.Value, 0)
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

// decodeValue turns one WCF JSON value into a Go value: string,
// time.Time (for /Date(…)/), json.Number, bool, nil, []any, *Entity,
// *EntityReference, OptionSetValue, Money, *EntityCollection,
// UnknownValue, or map[string]any for an untyped object.
func decodeValue(raw json.RawMessage, depth int) (any, error) {
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
		name, _, _ := strings.Cut(typ, ":")
		switch name {
		case "":
			out := map[string]any{}
			for k, v := range obj {
				dv, err := decodeValue(v, depth+1)
				if err != nil {
					return nil, err
				}
				out[k] = dv
			}
			return out, nil
		case "Entity":
			return decodeEntity(obj, depth)
		case "EntityReference":
			return decodeRef(obj)
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
				ev, err := decodeValue(er, depth+1)
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
			v, err := decodeValue(it, depth+1)
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
			if t, ok := parseWCFDate(s); ok {
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

func decodeEntity(obj map[string]json.RawMessage, depth int) (*Entity, error) {
	e := &Entity{Attributes: map[string]any{}, FormattedValues: map[string]string{}}
	if err := unmarshalOpt(obj["LogicalName"], &e.LogicalName); err != nil {
		return nil, errors.New("Entity LogicalName is not a string")
	}
	var id string
	if err := unmarshalOpt(obj["Id"], &id); err != nil {
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
	if err := unmarshalOpt(obj["RowVersion"], &rv); err != nil {
		return nil, errors.New("Entity RowVersion is not a string")
	}
	if rv != nil {
		e.RowVersion = *rv
	}
	pairs, err := decodeKV(obj["Attributes"], "Attributes")
	if err != nil {
		return nil, err
	}
	for _, p := range pairs {
		v, err := decodeValue(p.Value, depth+1)
		if err != nil {
			return nil, fmt.Errorf("attribute %s: %w", *p.Key, err)
		}
		e.Attributes[*p.Key] = v
	}
	fv, err := decodeKV(obj["FormattedValues"], "FormattedValues")
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

func decodeRef(obj map[string]json.RawMessage) (*EntityReference, error) {
	r := &EntityReference{}
	var id string
	var name *string
	if unmarshalOpt(obj["LogicalName"], &r.LogicalName) != nil || unmarshalOpt(obj["Id"], &id) != nil ||
		unmarshalOpt(obj["Name"], &name) != nil {
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

func unmarshalOpt(raw json.RawMessage, out any) error {
	if len(raw) == 0 {
		return nil
	}
	return json.Unmarshal(raw, out)
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
