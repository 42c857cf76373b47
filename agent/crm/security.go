package crm

import (
	"context"
	"fmt"
	"net/http"
	"net/url"
	"strings"
)

// What fhirsync reads to check a Dataverse environment before traffic
// flows (fhirsync doctor): the application users' privileges on the
// mapped tables and the service-endpoint steps that post their changes.
// Request and answer shapes follow Microsoft's Web API reference
// (MicrosoftDocs/powerapps-docs, developer/data-platform/webapi/reference:
// retrieveuserprivileges, roleprivilege, securityprivilegemetadata) and
// "Register a WebHook" (developer/data-platform/register-web-hook.md:
// "Query WebHook registrations", "Query steps registered for a WebHook").

// Privilege is one of a table's security privileges, from its definition.
type Privilege struct {
	// ID is the PrivilegeId, Name e.g. prvCreateContact.
	ID, Name string
	// Type is the PrivilegeType: Create, Read, Write, Delete, Assign,
	// Share, Append or AppendTo.
	Type string
}

// TablePrivileges reads the Privileges of a table's definition.
func (c *Client) TablePrivileges(ctx context.Context, logicalName string) ([]Privilege, error) {
	op := "reading the privileges of " + logicalName
	q := url.Values{}
	q.Set("$select", "LogicalName,Privileges")
	path := "EntityDefinitions(LogicalName=" + url.PathEscape(quote(logicalName)) + ")"
	res, err := c.send(ctx, op, call{method: http.MethodGet, url: c.url(path, q), idempotent: true})
	if err != nil {
		return nil, err
	}
	var raw struct {
		Privileges *[]struct {
			ID   string `json:"PrivilegeId"`
			Name string `json:"Name"`
			Type string `json:"PrivilegeType"`
		} `json:"Privileges"`
	}
	if err := decodeJSON(op, res, &raw); err != nil {
		return nil, err
	}
	if raw.Privileges == nil {
		return nil, invalidResponse(op, res.status, "table definition without Privileges")
	}
	out := make([]Privilege, 0, len(*raw.Privileges))
	for _, p := range *raw.Privileges {
		out = append(out, Privilege{ID: strings.ToLower(p.ID), Name: p.Name, Type: p.Type})
	}
	return out, nil
}

// UserPrivileges is what one application user holds.
type UserPrivileges struct {
	// Label names the user as metrics do; UserID is its systemuserid.
	Label, UserID string
	// Depth maps each held PrivilegeId (lower case) to its depth: Basic,
	// Local, Deep, Global or RecordFilter.
	Depth map[string]string
}

// UserPrivileges asks, as each of the client's users, who it is (WhoAmI)
// and which privileges it holds (systemusers(<id>)/Microsoft.Dynamics.CRM.RetrieveUserPrivileges()),
// in configuration order.
func (c *Client) UserPrivileges(ctx context.Context) ([]UserPrivileges, error) {
	out := make([]UserPrivileges, 0, len(c.users.list))
	for _, u := range c.users.list {
		id := u.id
		if id == "" {
			var err error
			if id, err = c.whoAmI(ctx, u); err != nil {
				return nil, fmt.Errorf("asking who CRM user %s is: %w", u.label, err)
			}
		}
		id = strings.ToLower(id)
		op := "retrieving the privileges of CRM user " + u.label
		path := "systemusers(" + url.PathEscape(id) + ")/Microsoft.Dynamics.CRM.RetrieveUserPrivileges()"
		res, err := c.send(ctx, op, call{method: http.MethodGet, url: c.url(path, nil), idempotent: true, user: u})
		if err != nil {
			return nil, err
		}
		var raw struct {
			RolePrivileges *[]struct {
				Depth       string `json:"Depth"`
				PrivilegeID string `json:"PrivilegeId"`
			} `json:"RolePrivileges"`
		}
		if err := decodeJSON(op, res, &raw); err != nil {
			return nil, err
		}
		if raw.RolePrivileges == nil {
			return nil, invalidResponse(op, res.status, "answer without RolePrivileges")
		}
		up := UserPrivileges{Label: u.label, UserID: id, Depth: map[string]string{}}
		for _, p := range *raw.RolePrivileges {
			up.Depth[strings.ToLower(p.PrivilegeID)] = p.Depth
		}
		out = append(out, up)
	}
	return out, nil
}

// Service endpoint contracts (serviceendpoint.contract choices).
const (
	ContractOneWay          = 1
	ContractQueue           = 2
	ContractRest            = 3
	ContractTwoWay          = 4
	ContractTopic           = 5
	ContractPersistentQueue = 6
	ContractEventHub        = 7
	ContractWebhook         = 8
	ContractEventGrid       = 9
)

// ServiceEndpoint is a registered serviceendpoint row.
type ServiceEndpoint struct {
	ID, Name string
	Contract int
	// NamespaceAddress (sb://…/) and Path (the queue or topic) for Service
	// Bus contracts; URL for a webhook.
	NamespaceAddress, Path, URL string
}

// ServiceEndpoints lists the environment's service endpoints.
func (c *Client) ServiceEndpoints(ctx context.Context) ([]ServiceEndpoint, error) {
	op := "listing service endpoints"
	q := url.Values{}
	q.Set("$select", "serviceendpointid,name,contract,namespaceaddress,path,url")
	res, err := c.send(ctx, op, call{method: http.MethodGet, url: c.url("serviceendpoints", q), idempotent: true})
	if err != nil {
		return nil, err
	}
	var raw struct {
		Value *[]struct {
			ID        string  `json:"serviceendpointid"`
			Name      string  `json:"name"`
			Contract  int     `json:"contract"`
			Namespace *string `json:"namespaceaddress"`
			Path      *string `json:"path"`
			URL       *string `json:"url"`
		} `json:"value"`
	}
	if err := decodeJSON(op, res, &raw); err != nil {
		return nil, err
	}
	if raw.Value == nil {
		return nil, invalidResponse(op, res.status, "answer without a value array")
	}
	out := make([]ServiceEndpoint, 0, len(*raw.Value))
	for _, e := range *raw.Value {
		out = append(out, ServiceEndpoint{ID: strings.ToLower(e.ID), Name: e.Name, Contract: e.Contract,
			NamespaceAddress: deref(e.Namespace), Path: deref(e.Path), URL: deref(e.URL)})
	}
	return out, nil
}

func deref(s *string) string {
	if s == nil {
		return ""
	}
	return *s
}

// Step is a registered sdkmessageprocessingstep.
type Step struct {
	ID, Name string
	// Entity is the sdkmessagefilter's primaryobjecttypecode (a table's
	// logical name, "none" for messages without one); Message the
	// sdkmessage's name (Create, Update, Delete…).
	Entity, Message string
	// Stage is 10 (pre-validation), 20 (pre-operation) or 40
	// (post-operation); Mode 0 synchronous, 1 asynchronous.
	Stage, Mode int
	// Enabled is statecode 0.
	Enabled bool
}

// EndpointSteps lists the steps registered for a service endpoint, with
// their table and message.
func (c *Client) EndpointSteps(ctx context.Context, endpointID string) ([]Step, error) {
	op := "listing the steps of service endpoint " + endpointID
	q := url.Values{}
	q.Set("$select", "sdkmessageprocessingstepid,name,mode,stage,statecode")
	q.Set("$expand", "sdkmessagefilterid($select=primaryobjecttypecode),sdkmessageid($select=name)")
	path := "serviceendpoints(" + url.PathEscape(endpointID) + ")/serviceendpoint_sdkmessageprocessingstep"
	res, err := c.send(ctx, op, call{method: http.MethodGet, url: c.url(path, q), idempotent: true})
	if err != nil {
		return nil, err
	}
	var raw struct {
		Value *[]struct {
			ID     string `json:"sdkmessageprocessingstepid"`
			Name   string `json:"name"`
			Mode   int    `json:"mode"`
			Stage  int    `json:"stage"`
			State  int    `json:"statecode"`
			Filter *struct {
				Entity string `json:"primaryobjecttypecode"`
			} `json:"sdkmessagefilterid"`
			Message *struct {
				Name string `json:"name"`
			} `json:"sdkmessageid"`
		} `json:"value"`
	}
	if err := decodeJSON(op, res, &raw); err != nil {
		return nil, err
	}
	if raw.Value == nil {
		return nil, invalidResponse(op, res.status, "answer without a value array")
	}
	out := make([]Step, 0, len(*raw.Value))
	for _, s := range *raw.Value {
		st := Step{ID: strings.ToLower(s.ID), Name: s.Name, Stage: s.Stage, Mode: s.Mode, Enabled: s.State == 0}
		if s.Filter != nil {
			st.Entity = s.Filter.Entity
		}
		if s.Message != nil {
			st.Message = s.Message.Name
		}
		out = append(out, st)
	}
	return out, nil
}
