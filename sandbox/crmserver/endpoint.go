package crmserver

import (
	"context"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"slices"
	"strconv"
	"sync"
	"time"

	"github.com/google/uuid"

	"github.com/fhirsync/fhirsync/maps"
	"github.com/fhirsync/fhirsync/queues"
)

// event is a committed write, posted to the service endpoint.
type event struct {
	message   string // Create, Update, Delete
	entity    *Entity
	id        string
	target    map[string]any // the attributes the request set
	pre, post *row
	c         *call
}

const contracts = ":http://schemas.microsoft.com/xrm/2011/Contracts"

// A context is written by appending its JSON to a byte slice rather than by
// encoding map[string]any values with encoding/json: the endpoint posts one
// per change, and the map encoder sorts every object's keys and boxes every
// value, which costs several times as much CPU and a hundred times as many
// allocations. The bytes are those of the map encoding: members come in the
// byte order of their names (so "__type" comes last), strings are escaped as
// encoding/json escapes them, and values of types not written here go
// through encoding/json.

// contextJSON builds the RemoteExecutionContext of an event.
func (s *Server) contextJSON(ev event, withImages bool) ([]byte, error) {
	images := withImages && s.opts.EndpointImages
	// Room for the members and about 128 bytes an attribute, so a typical
	// context is written without growing the slice.
	size := 1536 + 128*len(ev.target)
	if images && ev.pre != nil {
		size += 128 * len(ev.pre.attrs)
	}
	if images && ev.post != nil {
		size += 128 * len(ev.post.attrs)
	}
	b := make([]byte, 0, size)
	var err error
	b = append(b, `{"BusinessUnitId":"00000000-0000-0000-0000-0000000000b1","CorrelationId":`...)
	b = maps.AppendJSONString(b, ev.c.correlation)
	b = append(b, `,"Depth":1,"InitiatingUserId":`...)
	b = maps.AppendJSONString(b, ev.c.user)
	b = append(b, `,"InputParameters":[{"key":"Target","value":`...)
	if ev.message == "Delete" {
		b = appendEntityRef(b, ev.entity.LogicalName, ev.id)
	} else if b, err = appendEntity(b, ev.entity, ev.id, ev.target, nil); err != nil {
		return nil, err
	}
	b = append(b, `}],"IsExecutingOffline":false,"IsInTransaction":false,"IsOfflinePlayback":false,"IsolationMode":1,"MessageName":`...)
	b = maps.AppendJSONString(b, ev.message)
	at := s.now()
	if ev.post != nil {
		at = ev.post.modifiedOn
	}
	b = append(b, `,"Mode":1,"OperationCreatedOn":`...)
	b = appendWCFDate(b, at)
	b = append(b, `,"OperationId":"`...)
	b = appendUUID(b, uuid.New())
	b = append(b, `","OrganizationId":`...)
	b = maps.AppendJSONString(b, s.orgID)
	b = append(b, `,"OrganizationName":"sandbox","OutputParameters":[`...)
	if ev.message == "Create" {
		b = append(b, `{"key":"id","value":`...)
		b = maps.AppendJSONString(b, ev.id)
		b = append(b, '}')
	}
	b = append(b, `],"OwningExtension":`...)
	b = appendEntityRef(b, "sdkmessageprocessingstep", "00000000-0000-0000-0000-0000000000e1")
	b = append(b, `,"ParentContext":null,"PostEntityImages":[`...)
	if images && ev.post != nil {
		b = append(b, `{"key":"PostImage","value":`...)
		if b, err = appendEntity(b, ev.entity, ev.id, ev.post.attrs, ev.post); err != nil {
			return nil, err
		}
		b = append(b, '}')
	}
	b = append(b, `],"PreEntityImages":[`...)
	if images && ev.pre != nil {
		b = append(b, `{"key":"PreImage","value":`...)
		if b, err = appendEntity(b, ev.entity, ev.id, ev.pre.attrs, ev.pre); err != nil {
			return nil, err
		}
		b = append(b, '}')
	}
	b = append(b, `],"PrimaryEntityId":`...)
	b = maps.AppendJSONString(b, ev.id)
	b = append(b, `,"PrimaryEntityName":`...)
	b = maps.AppendJSONString(b, ev.entity.LogicalName)
	b = append(b, `,"RequestId":"`...)
	b = appendUUID(b, uuid.New())
	b = append(b, `","SecondaryEntityName":"none","SharedVariables":[],"Stage":40,"UserId":`...)
	b = maps.AppendJSONString(b, ev.c.user)
	return append(b, '}'), nil
}

// appendEntity appends an Entity with the attributes in attrs that e
// defines, in name order, then its primary id and, for an image of row r,
// the platform's modifiedon, modifiedby and versionnumber.
func appendEntity(b []byte, e *Entity, id string, attrs map[string]any, r *row) ([]byte, error) {
	var buf [96]string
	names := buf[:0]
	for n := range attrs {
		names = append(names, n)
	}
	slices.Sort(names)
	b = append(b, `{"Attributes":[`...)
	var err error
	for _, n := range names {
		a := e.Attribute(n)
		if a == nil {
			continue
		}
		b = append(b, `{"key":`...)
		b = maps.AppendJSONString(b, n)
		b = append(b, `,"value":`...)
		if b, err = appendTypedValue(b, a, attrs[n]); err != nil {
			return nil, err
		}
		b = append(b, "},"...)
	}
	b = append(b, `{"key":`...)
	b = maps.AppendJSONString(b, e.PrimaryID)
	b = append(b, `,"value":`...)
	b = maps.AppendJSONString(b, id)
	b = append(b, '}')
	if r != nil {
		b = append(b, `,{"key":"modifiedon","value":`...)
		b = appendWCFDate(b, r.modifiedOn)
		b = append(b, `},{"key":"modifiedby","value":`...)
		b = appendEntityRef(b, "systemuser", r.modifiedBy)
		b = append(b, `},{"key":"versionnumber","value":`...)
		b = strconv.AppendInt(b, r.version, 10)
		b = append(b, '}')
	}
	b = append(b, `],"EntityState":null,"FormattedValues":[],"Id":`...)
	b = maps.AppendJSONString(b, id)
	b = append(b, `,"KeyAttributes":[],"LogicalName":`...)
	b = maps.AppendJSONString(b, e.LogicalName)
	b = append(b, `,"RelatedEntities":[],"RowVersion":`...)
	if r != nil {
		b = append(b, '"')
		b = strconv.AppendInt(b, r.version, 10)
		b = append(b, '"')
	} else {
		b = append(b, "null"...)
	}
	return append(b, `,"__type":"Entity`+contracts+`"}`...), nil
}

// appendTypedValue appends an attribute value as the WCF serializer types
// it: option sets as OptionSetValue, money as Money, dates as WCF dates and
// lookups as EntityReference. Anything else is written as stored.
func appendTypedValue(b []byte, a *Attribute, v any) ([]byte, error) {
	if v == nil {
		return append(b, "null"...), nil
	}
	switch a.Type {
	case TypePicklist, TypeState, TypeStatus:
		n, _ := v.(json.Number).Int64()
		b = append(b, `{"Value":`...)
		b = strconv.AppendInt(b, n, 10)
		return append(b, `,"__type":"OptionSetValue`+contracts+`"}`...), nil
	case TypeMoney:
		b = append(b, `{"Value":`...)
		b, err := appendValue(b, v)
		if err != nil {
			return nil, err
		}
		return append(b, `,"__type":"Money`+contracts+`"}`...), nil
	case TypeDateTime:
		s, _ := v.(string)
		if t, ok := storedTime(s); ok {
			return appendWCFDate(b, t), nil
		}
	case TypeLookup, TypeCustomer, TypeOwner:
		if lv, ok := v.(lookupValue); ok {
			return appendEntityRef(b, lv.Target, lv.ID), nil
		}
	}
	return appendValue(b, v)
}

// storedTime parses a stored DateTime value as parseTime does. A date-only
// value cannot be RFC 3339, so it is parsed as a date straight away rather
// than after a failed RFC 3339 parse, whose error allocates.
func storedTime(s string) (time.Time, bool) {
	if len(s) != len("2006-01-02") {
		return parseTime(s)
	}
	if s[4] != '-' {
		return time.Time{}, false
	}
	t, err := time.Parse("2006-01-02", s)
	return t, err == nil
}

// appendEntityRef appends an EntityReference.
func appendEntityRef(b []byte, logical, id string) []byte {
	b = append(b, `{"Id":`...)
	b = maps.AppendJSONString(b, id)
	b = append(b, `,"KeyAttributes":[],"LogicalName":`...)
	b = maps.AppendJSONString(b, logical)
	return append(b, `,"Name":null,"RowVersion":null,"__type":"EntityReference`+contracts+`"}`...)
}

// appendWCFDate appends a time the way the WCF DataContractJsonSerializer
// renders it.
func appendWCFDate(b []byte, t time.Time) []byte {
	b = append(b, `"\/Date(`...)
	b = strconv.AppendInt(b, t.UnixMilli(), 10)
	return append(b, `)\/"`...)
}

// appendUUID appends u in its canonical lower-case form.
func appendUUID(b []byte, u uuid.UUID) []byte {
	b = hex.AppendEncode(b, u[0:4])
	b = append(b, '-')
	b = hex.AppendEncode(b, u[4:6])
	b = append(b, '-')
	b = hex.AppendEncode(b, u[6:8])
	b = append(b, '-')
	b = hex.AppendEncode(b, u[8:10])
	b = append(b, '-')
	return hex.AppendEncode(b, u[10:])
}

// appendValue appends a stored value: string, json.Number, bool, nil, or
// (through encoding/json) anything else.
func appendValue(b []byte, v any) ([]byte, error) {
	switch v := v.(type) {
	case nil:
		return append(b, "null"...), nil
	case string:
		return maps.AppendJSONString(b, v), nil
	case bool:
		return strconv.AppendBool(b, v), nil
	case json.Number:
		if v == "" {
			return append(b, '0'), nil // as encoding/json writes an empty Number
		}
		if maps.ValidJSONNumber(string(v)) {
			return append(b, v...), nil
		}
	}
	j, err := json.Marshal(v)
	if err != nil {
		return nil, err
	}
	return append(b, j...), nil
}

// publish posts the committed events to the service endpoint, one message
// each, dropping the images of a message above MaxContextBytes.
func (s *Server) publish(ctx context.Context, events []event) {
	if s.opts.Endpoint == nil || len(events) == 0 {
		return
	}
	msgs := make([]queues.Message, 0, len(events))
	dropped := 0
	for _, ev := range events {
		if len(s.opts.EndpointEntities) > 0 && !slices.Contains(s.opts.EndpointEntities, ev.entity.LogicalName) {
			continue
		}
		body, err := s.contextJSON(ev, true)
		if err == nil && len(body) > s.opts.MaxContextBytes {
			dropped++
			body, err = s.contextJSON(ev, false)
		}
		if err != nil {
			s.log.Error("encoding RemoteExecutionContext", "entity", ev.entity.LogicalName, "record_id", ev.id, "err", err)
			continue
		}
		msgs = append(msgs, queues.Message{
			ID:   fmt.Sprintf("%s|%s|%s", ev.entity.LogicalName, ev.id, uuid.NewString()),
			Body: body,
			Properties: map[string]string{
				"http://schemas.microsoft.com/xrm/2011/Claims/EntityLogicalName": ev.entity.LogicalName,
				"http://schemas.microsoft.com/xrm/2011/Claims/RequestName":       ev.message,
				"http://schemas.microsoft.com/xrm/2011/Claims/Organization":      "sandbox",
			},
		})
	}
	if len(msgs) == 0 && dropped == 0 {
		return
	}
	s.mu.Lock()
	s.stats.ImagesDropped += int64(dropped)
	s.mu.Unlock()
	if s.post != nil {
		s.post.add(msgs)
		return
	}
	s.send(context.WithoutCancel(ctx), msgs)
}

// send posts msgs to the endpoint and counts the result.
func (s *Server) send(ctx context.Context, msgs []queues.Message) {
	if len(msgs) == 0 {
		return
	}
	err := s.opts.Endpoint.Send(ctx, msgs...)
	s.mu.Lock()
	if err != nil {
		s.stats.EndpointFailed += int64(len(msgs))
	} else {
		s.stats.EndpointSent += int64(len(msgs))
	}
	s.mu.Unlock()
	if err != nil {
		s.log.Warn("service endpoint refused messages", "count", len(msgs), "err", err)
	}
}

// poster is the asynchronous service-endpoint worker: writes add their
// messages, and the worker posts everything pending in one Send.
type poster struct {
	s       *Server
	mu      sync.Mutex
	pending []queues.Message
	wake    chan struct{}
	stop    chan struct{}
	done    chan struct{}
	once    sync.Once
}

// maxPost bounds the messages of one Send.
const maxPost = 500

func newPoster(s *Server) *poster {
	p := &poster{s: s, wake: make(chan struct{}, 1), stop: make(chan struct{}), done: make(chan struct{})}
	go p.run()
	return p
}

func (p *poster) add(msgs []queues.Message) {
	p.mu.Lock()
	p.pending = append(p.pending, msgs...)
	p.mu.Unlock()
	select {
	case p.wake <- struct{}{}:
	default:
	}
}

func (p *poster) run() {
	defer close(p.done)
	for {
		stopping := false
		select {
		case <-p.wake:
		case <-p.stop:
			stopping = true
		}
		for {
			p.mu.Lock()
			batch := p.pending[:min(len(p.pending), maxPost)]
			p.pending = p.pending[len(batch):]
			if len(p.pending) == 0 {
				p.pending = nil
			}
			p.mu.Unlock()
			if len(batch) == 0 {
				break
			}
			p.s.send(context.Background(), batch)
		}
		if stopping {
			return
		}
	}
}

func (p *poster) close() {
	p.once.Do(func() { close(p.stop) })
	<-p.done
}
