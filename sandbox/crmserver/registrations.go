package crmserver

import (
	"fmt"
	"net/http"
	"slices"
	"strconv"
	"strings"

	"github.com/google/uuid"
)

// Service endpoint registrations, as Dataverse keeps them: a
// serviceendpoint row per destination and an sdkmessageprocessingstep row
// per message and table that posts to it. Sources (MicrosoftDocs/powerapps-docs):
//
//   - developer/data-platform/register-web-hook.md, "Query WebHook
//     registrations" (serviceendpoints?$filter=contract eq 8&$select=
//     serviceendpointid,name,authtype,url) and "Query steps registered for
//     a WebHook" (serviceendpoints(<id>)/serviceendpoint_sdkmessageprocessingstep
//     ?$select=…,mode,stage, and sdkmessageprocessingsteps(<id>) with
//     $expand=eventhandler_serviceendpoint($select=name),
//     sdkmessagefilterid($select=primaryobjecttypecode),sdkmessageid($select=name)).
//   - developer/data-platform/reference/entities/serviceendpoint.md: contract
//     choices 1 OneWay, 2 Queue, 3 Rest, 4 TwoWay, 5 Topic, 6 Queue
//     (Persistent), 7 Event Hub, 8 Webhook, 9 Event Grid; authtype 2 SAS
//     Key, 4 Webhook Key, 5 Http Header; messageformat 2 Json; namespaceaddress,
//     path, url.
//   - developer/data-platform/reference/entities/sdkmessageprocessingstep.md:
//     mode 0 Synchronous, 1 Asynchronous; stage 10 Pre-validation, 20
//     Pre-operation, 40 Post-operation; statecode 0 Enabled, 1 Disabled.
//
// The emulated endpoints post only the messages a step is registered for
// (publish); tests change the steps with AddStep and RemoveStep.

// Service endpoint contracts (serviceendpoint.contract).
const (
	ContractQueue   = 2
	ContractWebhook = 8
)

// SandboxNamespace is the namespaceaddress of the emulated Service Bus
// endpoint.
const SandboxNamespace = "sb://sandbox.servicebus.windows.net/"

type serviceEndpoint struct {
	id, name  string
	contract  int
	authType  int
	namespace string // namespaceaddress
	path      string // the queue, for a Service Bus contract
	url       string // a webhook's URL
}

// Step is a registered sdkmessageprocessingstep.
type Step struct {
	// ID is the sdkmessageprocessingstepid.
	ID string
	// Endpoint is the serviceendpointid the step posts to.
	Endpoint string
	// Entity is the table's logical name (sdkmessagefilter's
	// primaryobjecttypecode), Message the sdkmessage's name (Create).
	Entity, Message string
	// Stage is 40 (post-operation) and Mode 1 (asynchronous) for the
	// steps the sandbox registers.
	Stage, Mode int
	// Disabled is statecode 1.
	Disabled bool
}

// registerEndpoints builds the registrations the options describe: with
// Endpoint set, a Service Bus queue endpoint (path EndpointPath); with
// Webhook.URL set, a webhook endpoint; each with a Create, Update and
// Delete step for every entity of EndpointEntities (every entity when
// empty).
func (s *Server) registerEndpoints(entities []*Entity) {
	var eps []*serviceEndpoint
	if s.opts.Endpoint != nil {
		path := s.opts.EndpointPath
		if path == "" {
			path = "crm-changes"
		}
		eps = append(eps, &serviceEndpoint{id: registrationID("serviceendpoint", "servicebus"), name: "fhirsync " + path,
			contract: ContractQueue, authType: 2, namespace: SandboxNamespace, path: path})
	}
	if s.opts.Webhook.URL != "" {
		authType := 4
		if s.opts.Webhook.Header != "" {
			authType = 5
		}
		eps = append(eps, &serviceEndpoint{id: registrationID("serviceendpoint", "webhook"), name: "fhirsync webhook",
			contract: ContractWebhook, authType: authType, url: s.opts.Webhook.URL})
	}
	s.endpoints = eps
	names := s.opts.EndpointEntities
	if len(names) == 0 {
		for _, e := range entities {
			names = append(names, e.LogicalName)
		}
	}
	for _, n := range names {
		for _, m := range []string{"Create", "Update", "Delete"} {
			s.addStepLocked(n, m)
		}
	}
}

func registrationID(kind, name string) string {
	return uuid.NewSHA1(registrationSpace, []byte(kind+"/"+name)).String()
}

var registrationSpace = uuid.MustParse("5a0d6c1e-2f3b-4c7d-8e9f-a1b2c3d4e5f6")

func (s *Server) addStepLocked(entity, message string) {
	for _, ep := range s.endpoints {
		id := registrationID("step", ep.id+"/"+entity+"/"+message)
		if slices.ContainsFunc(s.steps, func(st Step) bool { return st.ID == id }) {
			continue
		}
		s.steps = append(s.steps, Step{ID: id, Endpoint: ep.id, Entity: entity, Message: message, Stage: 40, Mode: 1})
	}
}

// AddStep registers an asynchronous post-operation step for message
// (Create, Update, Delete, Assign…) on entity on every service endpoint.
func (s *Server) AddStep(entity, message string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.addStepLocked(entity, message)
}

// RemoveStep unregisters the steps for message on entity from every
// service endpoint; changes of that kind are no longer posted.
func (s *Server) RemoveStep(entity, message string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.steps = slices.DeleteFunc(s.steps, func(st Step) bool { return st.Entity == entity && st.Message == message })
}

// Steps returns the registered steps.
func (s *Server) Steps() []Step {
	s.mu.Lock()
	defer s.mu.Unlock()
	return slices.Clone(s.steps)
}

// stepSet is the ids of the enabled steps of each (entity, message) pair,
// for publish.
func (s *Server) stepSet() map[[2]string][]string {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make(map[[2]string][]string, len(s.steps))
	for _, st := range s.steps {
		if !st.Disabled {
			k := [2]string{st.Entity, st.Message}
			out[k] = append(out[k], st.ID)
		}
	}
	return out
}

func (ep *serviceEndpoint) json() map[string]any {
	m := map[string]any{
		"serviceendpointid": ep.id, "name": ep.name, "contract": ep.contract, "authtype": ep.authType,
		"messageformat": 2, "connectionmode": 1, "userclaim": 1, "description": nil,
		"namespaceaddress": nil, "path": nil, "url": nil, "solutionnamespace": nil,
	}
	if ep.namespace != "" {
		m["namespaceaddress"] = ep.namespace
		m["solutionnamespace"] = strings.TrimSuffix(strings.TrimPrefix(strings.TrimPrefix(ep.namespace, "sb://"), "https://"), "/")
	}
	if ep.path != "" {
		m["path"] = ep.path
	}
	if ep.url != "" {
		m["url"] = ep.url
	}
	return m
}

func (st Step) json(ep *serviceEndpoint, expand map[string]map[string]bool) map[string]any {
	state := 0
	if st.Disabled {
		state = 1
	}
	out := map[string]any{
		"sdkmessageprocessingstepid": st.ID,
		"name":                       fmt.Sprintf("%s: %s of %s", ep.name, st.Message, st.Entity),
		"description":                nil, "filteringattributes": nil, "asyncautodelete": false,
		"mode": st.Mode, "stage": st.Stage, "rank": 1, "statecode": state, "statuscode": state + 1,
		"supporteddeployment":        0,
		"_eventhandler_value":        ep.id,
		"_sdkmessagefilterid_value":  registrationID("sdkmessagefilter", st.Entity+"/"+st.Message),
		"_sdkmessageid_value":        registrationID("sdkmessage", st.Message),
		"_plugintypeid_value":        nil,
		"_impersonatinguserid_value": nil,
	}
	for nav, sel := range expand {
		var v map[string]any
		switch nav {
		case "eventhandler_serviceendpoint":
			v = ep.json()
		case "sdkmessagefilterid":
			v = map[string]any{"sdkmessagefilterid": registrationID("sdkmessagefilter", st.Entity+"/"+st.Message),
				"primaryobjecttypecode": st.Entity, "secondaryobjecttypecode": "none", "iscustomprocessingstepallowed": true}
		case "sdkmessageid":
			v = map[string]any{"sdkmessageid": registrationID("sdkmessage", st.Message), "name": st.Message}
		case "plugintypeid":
			out["plugintypeid"] = nil
			continue
		}
		out[nav] = selectColumns(v, sel, primaryKeyOf(nav))
	}
	return out
}

func primaryKeyOf(nav string) string {
	switch nav {
	case "eventhandler_serviceendpoint":
		return "serviceendpointid"
	case "sdkmessagefilterid":
		return "sdkmessagefilterid"
	case "sdkmessageid":
		return "sdkmessageid"
	}
	return "sdkmessageprocessingstepid"
}

// selectColumns keeps the selected columns and the primary key, as $select
// does on a row.
func selectColumns(m map[string]any, sel map[string]bool, key string) map[string]any {
	if sel == nil || m == nil {
		return m
	}
	for k := range m {
		if k != key && !sel[k] {
			delete(m, k)
		}
	}
	return m
}

// parseExpand reads $expand=nav($select=a,b),nav2 into nav → selected
// columns (nil: all).
func parseExpand(v string) (map[string]map[string]bool, *apiError) {
	out := map[string]map[string]bool{}
	depth, start := 0, 0
	for i := 0; i <= len(v); i++ {
		switch {
		case i < len(v) && v[i] == '(':
			depth++
		case i < len(v) && v[i] == ')':
			depth--
		case i == len(v) || v[i] == ',' && depth == 0:
			part := strings.TrimSpace(v[start:i])
			start = i + 1
			if part == "" {
				continue
			}
			nav, opts, _ := strings.Cut(part, "(")
			nav = strings.TrimSpace(nav)
			switch nav {
			case "eventhandler_serviceendpoint", "sdkmessagefilterid", "sdkmessageid", "plugintypeid":
			default:
				return nil, errBadRequest("0x80060888", fmt.Sprintf("Could not find a property named '%s' on type 'Microsoft.Dynamics.CRM.sdkmessageprocessingstep'.", nav))
			}
			opts = strings.TrimSuffix(opts, ")")
			var sel map[string]bool
			for _, o := range strings.Split(opts, ";") {
				if s, ok := strings.CutPrefix(strings.TrimSpace(o), "$select="); ok {
					sel = selectSet(s)
				}
			}
			out[nav] = sel
		}
	}
	return out, nil
}

// registrations serves serviceendpoints, serviceendpoints(<id>),
// serviceendpoints(<id>)/serviceendpoint_sdkmessageprocessingstep,
// sdkmessageprocessingsteps and sdkmessageprocessingsteps(<id>), read only,
// with $select, $expand on steps and the $filter forms "contract eq N" on
// endpoints and "_eventhandler_value eq <id>" on steps.
func (s *Server) registrations(c *call, req *request, p string) response {
	if req.method != http.MethodGet {
		return errMethod()
	}
	sel := selectSet(req.query.Get("$select"))
	expand, e := parseExpand(req.query.Get("$expand"))
	if e != nil {
		return e.response()
	}
	s.mu.Lock()
	eps := slices.Clone(s.endpoints)
	steps := slices.Clone(s.steps)
	s.mu.Unlock()
	endpoint := func(id string) *serviceEndpoint {
		for _, ep := range eps {
			if ep.id == id {
				return ep
			}
		}
		return nil
	}
	set, key, _ := strings.Cut(p, "(")
	key, sub, _ := strings.Cut(key, ")")
	sub = strings.TrimPrefix(sub, "/")
	if key != "" {
		if _, err := uuid.Parse(key); err != nil {
			return errBadRequest("0x80060888", "Bad Request - Error in query syntax: the key must be a GUID.").response()
		}
		key = strings.ToLower(key)
	}
	filter := strings.TrimSpace(req.query.Get("$filter"))
	list := func(ctx string, vals []any) response {
		resp := jsonResponse(200, map[string]any{"@odata.context": c.base + "$metadata#" + ctx, "value": vals})
		resp.rows = len(vals)
		return resp
	}
	switch {
	case set == "serviceendpoints" && key == "":
		want := -1
		if filter != "" {
			n, ok := strings.CutPrefix(filter, "contract eq ")
			v, err := strconv.Atoi(strings.TrimSpace(n))
			if !ok || err != nil {
				return errBadRequest("0x80060888", "The sandbox filters serviceendpoints by \"contract eq N\" only.").response()
			}
			want = v
		}
		vals := []any{}
		for _, ep := range eps {
			if want < 0 || ep.contract == want {
				vals = append(vals, selectColumns(ep.json(), sel, "serviceendpointid"))
			}
		}
		return list("serviceendpoints", vals)
	case set == "serviceendpoints":
		ep := endpoint(key)
		if ep == nil {
			return errNotFound("serviceendpoint", key).response()
		}
		switch sub {
		case "":
			out := selectColumns(ep.json(), sel, "serviceendpointid")
			out["@odata.context"] = c.base + "$metadata#serviceendpoints/$entity"
			return jsonResponse(200, out)
		case "serviceendpoint_sdkmessageprocessingstep":
			vals := []any{}
			for _, st := range steps {
				if st.Endpoint == ep.id {
					vals = append(vals, selectColumns(st.json(ep, expand), withExpanded(sel, expand), "sdkmessageprocessingstepid"))
				}
			}
			return list("sdkmessageprocessingsteps", vals)
		}
		return errSegment(sub)
	case set == "sdkmessageprocessingsteps" && key == "":
		handler := ""
		if filter != "" {
			v, ok := strings.CutPrefix(filter, "_eventhandler_value eq ")
			if !ok {
				return errBadRequest("0x80060888", "The sandbox filters sdkmessageprocessingsteps by \"_eventhandler_value eq <id>\" only.").response()
			}
			handler = strings.ToLower(strings.Trim(strings.TrimSpace(v), "'"))
		}
		vals := []any{}
		for _, st := range steps {
			if handler == "" || st.Endpoint == handler {
				vals = append(vals, selectColumns(st.json(endpoint(st.Endpoint), expand), withExpanded(sel, expand), "sdkmessageprocessingstepid"))
			}
		}
		return list("sdkmessageprocessingsteps", vals)
	case set == "sdkmessageprocessingsteps" && sub == "":
		for _, st := range steps {
			if st.ID == key {
				out := selectColumns(st.json(endpoint(st.Endpoint), expand), withExpanded(sel, expand), "sdkmessageprocessingstepid")
				out["@odata.context"] = c.base + "$metadata#sdkmessageprocessingsteps/$entity"
				return jsonResponse(200, out)
			}
		}
		return errNotFound("sdkmessageprocessingstep", key).response()
	}
	return errSegment(p)
}

// withExpanded adds the expanded navigation properties to a $select.
func withExpanded(sel map[string]bool, expand map[string]map[string]bool) map[string]bool {
	if sel == nil {
		return nil
	}
	out := make(map[string]bool, len(sel)+len(expand))
	for k := range sel {
		out[k] = true
	}
	for k := range expand {
		out[k] = true
	}
	return out
}
