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
	// bypass are the step ids the request that made the change asked to
	// skip (BypassBusinessLogicExecutionStepIds).
	bypass []string
}

const contracts = ":http://schemas.microsoft.com/xrm/2011/Contracts"

// A context is written by appending its JSON to a byte slice rather than by
// encoding map[string]any values with encoding/json: the endpoint posts one
// per change, and the map encoder sorts every object's keys and boxes every
// value, which costs several times as much CPU and a hundred times as many
// allocations. The bytes are those Dataverse's DataContractJsonSerializer
// writes: members in the ordinal order of their names, except "__type",
// which comes first; "__type" only on values whose declared type is object
// (InputParameters values, attribute values), not on the entities of
// Pre/PostEntityImages nor on OwningExtension, whose declared types say
// what they are; strings escaped as encoding/json escapes them (the
// serializer also writes "/" as "\/", which both read the same).
// docs/sandbox-crm.md cites the samples this follows.

// contextJSON builds the RemoteExecutionContext of an event. Without full,
// it leaves out the members Dataverse removes from a message above its size
// limit: ParentContext, InputParameters, PreEntityImages and
// PostEntityImages.
func (s *Server) contextJSON(ev event, full bool) ([]byte, error) {
	images := full && s.opts.EndpointImages
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
	// The sandbox's users have no Microsoft Entra object id.
	b = append(b, `,"Depth":1,"InitiatingUserAzureActiveDirectoryObjectId":"00000000-0000-0000-0000-000000000000","InitiatingUserId":`...)
	b = maps.AppendJSONString(b, ev.c.user)
	if full {
		b = append(b, `,"InputParameters":[{"key":"Target","value":`...)
		if ev.message == "Delete" {
			b = appendEntityRef(b, ev.entity.LogicalName, ev.id, true)
		} else if b, err = appendEntity(b, ev.entity, ev.id, ev.target, nil, true); err != nil {
			return nil, err
		}
		b = append(b, "}]"...)
	}
	b = append(b, `,"IsExecutingOffline":false,"IsInTransaction":false,"IsOfflinePlayback":false,"IsolationMode":1,"MessageName":`...)
	b = maps.AppendJSONString(b, ev.message)
	at := s.now()
	if ev.post != nil {
		at = ev.post.modifiedOn
	}
	b = append(b, `,"Mode":1,"OperationCreatedOn":`...)
	b = appendWCFDateOffset(b, at)
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
	b = appendEntityRef(b, "sdkmessageprocessingstep", "00000000-0000-0000-0000-0000000000e1", false)
	if full {
		b = append(b, `,"ParentContext":null,"PostEntityImages":[`...)
		if images && ev.post != nil {
			b = append(b, `{"key":"PostImage","value":`...)
			if b, err = appendEntity(b, ev.entity, ev.id, ev.post.attrs.toMap(), ev.post, false); err != nil {
				return nil, err
			}
			b = append(b, '}')
		}
		b = append(b, `],"PreEntityImages":[`...)
		if images && ev.pre != nil {
			b = append(b, `{"key":"PreImage","value":`...)
			if b, err = appendEntity(b, ev.entity, ev.id, ev.pre.attrs.toMap(), ev.pre, false); err != nil {
				return nil, err
			}
			b = append(b, '}')
		}
		b = append(b, ']')
	}
	b = append(b, `,"PrimaryEntityId":`...)
	b = maps.AppendJSONString(b, ev.id)
	b = append(b, `,"PrimaryEntityName":`...)
	b = maps.AppendJSONString(b, ev.entity.LogicalName)
	b = append(b, `,"RequestId":"`...)
	b = appendUUID(b, uuid.New())
	b = append(b, `","SecondaryEntityName":"none","SharedVariables":[],"Stage":40,"UserAzureActiveDirectoryObjectId":"00000000-0000-0000-0000-000000000000","UserId":`...)
	b = maps.AppendJSONString(b, ev.c.user)
	return append(b, '}'), nil
}

// appendEntity appends an Entity with the attributes in attrs that e
// defines, in name order, then its primary id and, for an image of row r,
// the platform's modifiedon, modifiedby and versionnumber. typed writes its
// "__type", as for a value declared object (a Target); an image's entity
// has none.
func appendEntity(b []byte, e *Entity, id string, attrs map[string]any, r *row, typed bool) ([]byte, error) {
	var buf [96]string
	names := buf[:0]
	for n := range attrs {
		names = append(names, n)
	}
	slices.Sort(names)
	if typed {
		b = append(b, `{"__type":"Entity`+contracts+`","Attributes":[`...)
	} else {
		b = append(b, `{"Attributes":[`...)
	}
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
		b = appendEntityRef(b, "systemuser", r.modifiedBy, true)
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
	return append(b, '}'), nil
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
		b = append(b, `{"__type":"OptionSetValue`+contracts+`","Value":`...)
		b = strconv.AppendInt(b, n, 10)
		return append(b, '}'), nil
	case TypeMoney:
		b = append(b, `{"__type":"Money`+contracts+`","Value":`...)
		b, err := appendValue(b, v)
		if err != nil {
			return nil, err
		}
		return append(b, '}'), nil
	case TypeDateTime:
		s, _ := v.(string)
		if t, ok := storedTime(s); ok {
			return appendWCFDate(b, t), nil
		}
	case TypeLookup, TypeCustomer, TypeOwner:
		if lv, ok := v.(lookupValue); ok {
			return appendEntityRef(b, lv.Target, lv.ID, true), nil
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

// appendEntityRef appends an EntityReference, with its "__type" when typed
// (a value declared object).
func appendEntityRef(b []byte, logical, id string, typed bool) []byte {
	if typed {
		b = append(b, `{"__type":"EntityReference`+contracts+`","Id":`...)
	} else {
		b = append(b, `{"Id":`...)
	}
	b = maps.AppendJSONString(b, id)
	b = append(b, `,"KeyAttributes":[],"LogicalName":`...)
	b = maps.AppendJSONString(b, logical)
	return append(b, `,"Name":null,"RowVersion":null}`...)
}

// appendWCFDate appends a time the way the WCF DataContractJsonSerializer
// renders a UTC DateTime: milliseconds since 1970, no offset.
func appendWCFDate(b []byte, t time.Time) []byte {
	b = append(b, `"\/Date(`...)
	b = strconv.AppendInt(b, t.UnixMilli(), 10)
	return append(b, `)\/"`...)
}

// appendWCFDateOffset appends a time as the serializer renders a DateTime
// that is not marked UTC, with the server's offset (UTC here), as
// Dataverse writes OperationCreatedOn.
func appendWCFDateOffset(b []byte, t time.Time) []byte {
	b = append(b, `"\/Date(`...)
	b = strconv.AppendInt(b, t.UnixMilli(), 10)
	return append(b, `+0000)\/"`...)
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

// The application properties Dataverse adds to every message it posts
// (write-listener-application-azure-solution.md, "Filter messages"), and
// the one it adds to a message it truncated (azure-integration.md).
const (
	propOrganization      = "http://schemas.microsoft.com/xrm/2011/Claims/Organization"
	propUser              = "http://schemas.microsoft.com/xrm/2011/Claims/User"
	propInitiatingUser    = "http://schemas.microsoft.com/xrm/2011/Claims/InitiatingUser"
	propEntityLogicalName = "http://schemas.microsoft.com/xrm/2011/Claims/EntityLogicalName"
	propRequestName       = "http://schemas.microsoft.com/xrm/2011/Claims/RequestName"
	propMaxSizeExceeded   = "MessageMaxSizeExceeded"
)

// publish posts the committed events to the service endpoint, one message
// each. A message above MaxContextBytes goes without ParentContext,
// InputParameters and the images, marked MessageMaxSizeExceeded; one still
// above it is not sent (counted as failed), as Dataverse does.
func (s *Server) publish(ctx context.Context, events []event) {
	if s.opts.OnWrite != nil {
		for _, ev := range events {
			w := Write{Message: ev.message, Entity: ev.entity.LogicalName, ID: ev.id, UserID: ev.c.user, InitiatingUserID: ev.c.initiating}
			if ev.post != nil {
				w.Attributes = ev.post.attrs.toMap()
			}
			s.opts.OnWrite(w)
		}
	}
	if s.opts.Endpoint == nil || len(events) == 0 {
		return
	}
	msgs := make([]queues.Message, 0, len(events))
	dropped, failed, bypassed := 0, 0, 0
	steps := s.stepSet()
	for _, ev := range events {
		// Only what a step is registered for is posted (registrations.go),
		// unless the request bypassed it.
		ids := steps[[2]string{ev.entity.LogicalName, ev.message}]
		if len(ids) == 0 {
			continue
		}
		if bypassesAll(ev.bypass, ids) {
			bypassed++
			continue
		}
		body, err := s.contextJSON(ev, true)
		truncated := false
		if err == nil && len(body) > s.opts.MaxContextBytes {
			truncated = true
			body, err = s.contextJSON(ev, false)
			if err == nil && len(body) > s.opts.MaxContextBytes {
				err = fmt.Errorf("%d bytes without its parameters and images, above the %d-byte limit", len(body), s.opts.MaxContextBytes)
			}
		}
		if err != nil {
			failed++
			s.log.Error("encoding RemoteExecutionContext", "entity", ev.entity.LogicalName, "record_id", ev.id, "err", err)
			continue
		}
		props := map[string]string{
			propOrganization:      "sandbox",
			propUser:              ev.c.user,
			propInitiatingUser:    ev.c.user,
			propEntityLogicalName: ev.entity.LogicalName,
			propRequestName:       ev.message,
		}
		if truncated {
			dropped++
			props[propMaxSizeExceeded] = "true"
		}
		msgs = append(msgs, queues.Message{
			ID:         fmt.Sprintf("%s|%s|%s", ev.entity.LogicalName, ev.id, uuid.NewString()),
			Body:       body,
			Properties: props,
		})
	}
	if len(msgs) == 0 && dropped == 0 && failed == 0 && bypassed == 0 {
		return
	}
	s.mu.Lock()
	s.stats.EndpointBypassed += int64(bypassed)
	s.stats.ImagesDropped += int64(dropped)
	s.stats.EndpointFailed += int64(failed)
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
