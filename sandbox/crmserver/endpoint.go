package crmserver

import (
	"context"
	"encoding/json"
	"fmt"
	"slices"
	"strconv"
	"sync"
	"time"

	"github.com/google/uuid"

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

// wcfDate renders a time the way the WCF DataContractJsonSerializer does.
type wcfDate time.Time

func (d wcfDate) MarshalJSON() ([]byte, error) {
	return []byte(`"\/Date(` + strconv.FormatInt(time.Time(d).UnixMilli(), 10) + `)\/"`), nil
}

type kv struct {
	Key   string `json:"key"`
	Value any    `json:"value"`
}

func entityRef(logical, id string) map[string]any {
	return map[string]any{"__type": "EntityReference" + contracts, "Id": id, "KeyAttributes": []kv{},
		"LogicalName": logical, "Name": nil, "RowVersion": nil}
}

// typedValue renders an attribute value as the WCF serializer types it.
func typedValue(a *Attribute, v any) any {
	if v == nil {
		return nil
	}
	switch a.Type {
	case TypePicklist, TypeState, TypeStatus:
		n, _ := v.(json.Number).Int64()
		return map[string]any{"__type": "OptionSetValue" + contracts, "Value": n}
	case TypeMoney:
		return map[string]any{"__type": "Money" + contracts, "Value": v}
	case TypeDateTime:
		s, _ := v.(string)
		if t, ok := parseTime(s); ok {
			return wcfDate(t)
		}
	case TypeLookup, TypeCustomer, TypeOwner:
		if lv, ok := v.(lookupValue); ok {
			return entityRef(lv.Target, lv.ID)
		}
	}
	return v
}

func (s *Server) entityJSON(e *Entity, id string, attrs map[string]any, r *row) map[string]any {
	names := make([]string, 0, len(attrs))
	for n := range attrs {
		names = append(names, n)
	}
	slices.Sort(names)
	list := []kv{}
	for _, n := range names {
		a := e.Attribute(n)
		if a == nil {
			continue
		}
		list = append(list, kv{Key: n, Value: typedValue(a, attrs[n])})
	}
	list = append(list, kv{Key: e.PrimaryID, Value: id})
	var rowVersion any
	if r != nil {
		list = append(list,
			kv{Key: "modifiedon", Value: wcfDate(r.modifiedOn)},
			kv{Key: "modifiedby", Value: entityRef("systemuser", r.modifiedBy)},
			kv{Key: "versionnumber", Value: r.version})
		rowVersion = strconv.FormatInt(r.version, 10)
	}
	return map[string]any{"__type": "Entity" + contracts, "Attributes": list, "EntityState": nil,
		"FormattedValues": []kv{}, "Id": id, "KeyAttributes": []kv{}, "LogicalName": e.LogicalName,
		"RelatedEntities": []kv{}, "RowVersion": rowVersion}
}

// contextJSON builds the RemoteExecutionContext of an event.
func (s *Server) contextJSON(ev event, withImages bool) ([]byte, error) {
	var target any
	if ev.message == "Delete" {
		target = entityRef(ev.entity.LogicalName, ev.id)
	} else {
		target = s.entityJSON(ev.entity, ev.id, ev.target, nil)
	}
	pre, post := []kv{}, []kv{}
	if withImages && s.opts.EndpointImages {
		if ev.pre != nil {
			pre = append(pre, kv{Key: "PreImage", Value: s.entityJSON(ev.entity, ev.id, ev.pre.attrs, ev.pre)})
		}
		if ev.post != nil {
			post = append(post, kv{Key: "PostImage", Value: s.entityJSON(ev.entity, ev.id, ev.post.attrs, ev.post)})
		}
	}
	outputs := []kv{}
	if ev.message == "Create" {
		outputs = append(outputs, kv{Key: "id", Value: ev.id})
	}
	at := s.now()
	if ev.post != nil {
		at = ev.post.modifiedOn
	}
	ctx := map[string]any{
		"BusinessUnitId":      "00000000-0000-0000-0000-0000000000b1",
		"CorrelationId":       ev.c.correlation,
		"Depth":               1,
		"InitiatingUserId":    ev.c.user,
		"InputParameters":     []kv{{Key: "Target", Value: target}},
		"IsExecutingOffline":  false,
		"IsInTransaction":     false,
		"IsOfflinePlayback":   false,
		"IsolationMode":       1,
		"MessageName":         ev.message,
		"Mode":                1,
		"OperationCreatedOn":  wcfDate(at),
		"OperationId":         uuid.NewString(),
		"OrganizationId":      s.orgID,
		"OrganizationName":    "sandbox",
		"OutputParameters":    outputs,
		"OwningExtension":     entityRef("sdkmessageprocessingstep", "00000000-0000-0000-0000-0000000000e1"),
		"ParentContext":       nil,
		"PostEntityImages":    post,
		"PreEntityImages":     pre,
		"PrimaryEntityId":     ev.id,
		"PrimaryEntityName":   ev.entity.LogicalName,
		"RequestId":           uuid.NewString(),
		"SecondaryEntityName": "none",
		"SharedVariables":     []kv{},
		"Stage":               40,
		"UserId":              ev.c.user,
	}
	return json.Marshal(ctx)
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
