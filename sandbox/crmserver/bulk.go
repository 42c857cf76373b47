package crmserver

import (
	"bytes"
	"encoding/json"
	"fmt"
	"net/http"
	"strings"
)

// The bulk-operation messages as bound actions of an entity set ("Use bulk
// operation messages",
// learn.microsoft.com/power-apps/developer/data-platform/bulk-operations;
// Web API reference: .../webapi/reference/createmultiple, updatemultiple,
// upsertmultiple):
//
//	POST contacts/Microsoft.Dynamics.CRM.CreateMultiple
//	{"Targets":[{"@odata.type":"Microsoft.Dynamics.CRM.contact","firstname":"A"},…]}
//
// Every target names its type with @odata.type. An UpdateMultiple target
// carries its primary key; an UpsertMultiple target its primary key or an
// @odata.id naming it by alternate key ("contacts(msemr_azurefhirid='p1')").
// CreateMultiple answers 200 with the new rows' Ids in the order of the
// targets; UpdateMultiple and UpsertMultiple answer 204 (the Web API
// reference of UpsertMultiple: "The UpsertMultiple action returns 204
// NoContent. The UpsertMultipleResponse complex type is not returned."). On a standard table the message is one transaction:
// the first target that fails fails the whole message, nothing is written
// and the answer is that target's error (the documentation: "Any error
// that occurs within one operation in these APIs causes the entire
// operation to fail"). The sandbox offers the messages on every table;
// Dataverse on the tables that support them (most do, including contact).

// bulkAction is the prefix of a bound action's segment.
const bulkAction = "Microsoft.Dynamics.CRM."

// bulkKinds maps the bulk messages to their cost kind.
var bulkKinds = map[string]opKind{
	"CreateMultiple": opCreateMultiple,
	"UpdateMultiple": opUpdateMultiple,
	"UpsertMultiple": opUpsertMultiple,
}

// bulk executes a bulk message on tb inside t. The store lock is held.
func (s *Server) bulk(c *call, t *tx, tb *table, req *request, message string) response {
	kind, ok := bulkKinds[message]
	if !ok {
		return errSegment(bulkAction + message)
	}
	if req.method != http.MethodPost {
		return errMethod()
	}
	var body struct {
		Targets []map[string]json.RawMessage `json:"Targets"`
	}
	dec := json.NewDecoder(bytes.NewReader(req.body))
	dec.UseNumber()
	if err := dec.Decode(&body); err != nil || body.Targets == nil {
		return errBadRequest("0x80048d19", "Error identified in Payload provided by the user: the body must be an object with a Targets collection.").response()
	}
	out := response{}
	ids := make([]string, 0, len(body.Targets))
	wantType := bulkAction + tb.def.LogicalName
	for i, target := range body.Targets {
		fail := func(r response) response {
			r.bulk, r.records = kind, len(body.Targets)
			return r
		}
		var typ string
		if raw, ok := target["@odata.type"]; !ok || json.Unmarshal(raw, &typ) != nil || strings.TrimPrefix(typ, "#") != wantType {
			return fail(errBadRequest("0x80048d19", fmt.Sprintf("Targets[%d]: the @odata.type annotation must be %s.", i, wantType)).response())
		}
		var ref string
		if raw, ok := target["@odata.id"]; ok {
			if json.Unmarshal(raw, &ref) != nil {
				return fail(errBadRequest("0x80048d19", fmt.Sprintf("Targets[%d]: @odata.id must be a string.", i)).response())
			}
			delete(target, "@odata.id")
		}
		b, err := json.Marshal(target)
		if err != nil {
			return fail(errBadRequest("0x80048d19", fmt.Sprintf("Targets[%d] is not a JSON object.", i)).response())
		}
		one := &request{method: http.MethodPost, path: tb.def.EntitySetName, header: http.Header{}, body: b}
		var resp response
		if kind == opCreateMultiple {
			resp = s.create(c, t, tb, one)
		} else {
			resp = s.bulkWrite(c, t, tb, one, target, ref, kind == opUpdateMultiple)
		}
		if resp.status >= 400 {
			return fail(resp)
		}
		loc := resp.header.Get("OData-EntityId")
		if i := strings.LastIndexByte(loc, '('); i >= 0 && strings.HasSuffix(loc, ")") {
			ids = append(ids, loc[i+1:len(loc)-1])
		}
	}
	if kind != opCreateMultiple {
		out = response{status: http.StatusNoContent, header: newHeader()}
	} else {
		out = jsonResponse(http.StatusOK, map[string]any{
			"@odata.context": c.base + "$metadata#Microsoft.Dynamics.CRM." + message + "Response",
			"Ids":            ids})
	}
	out.bulk, out.records = kind, len(body.Targets)
	return out
}

// bulkWrite updates (updateOnly) or upserts one target named by its primary
// key in the body or by ref, an @odata.id.
func (s *Server) bulkWrite(c *call, t *tx, tb *table, one *request, target map[string]json.RawMessage, ref string, updateOnly bool) response {
	var id string
	var key map[string]any
	if raw, ok := target[tb.def.PrimaryID]; ok {
		if json.Unmarshal(raw, &id) != nil || id == "" {
			return errBadRequest("0x80048d19", "The primary key value must be a GUID string.").response()
		}
		id = strings.ToLower(id)
	} else if ref != "" {
		if i := strings.Index(ref, APIPath); i >= 0 {
			ref = ref[i+len(APIPath):]
		}
		ref = strings.TrimPrefix(ref, "/")
		i := strings.IndexByte(ref, '(')
		if i < 0 || !strings.HasSuffix(ref, ")") || ref[:i] != tb.def.EntitySetName {
			return errBadRequest("0x80048d19", "@odata.id must name a row of "+tb.def.EntitySetName+".").response()
		}
		var err error
		if id, key, err = parseKeySegment(ref[i+1 : len(ref)-1]); err != nil {
			return errBadRequest("0x80060888", fmt.Sprintf("Bad Request - Error in query syntax: %v", err)).response()
		}
	} else {
		return errBadRequest("0x80040203", fmt.Sprintf("%s: a target needs its primary key or an @odata.id.", tb.def.LogicalName)).response()
	}
	var existing *row
	if key != nil {
		r, e := tb.findByKey(key)
		if e != nil {
			return e.response()
		}
		existing = r
	} else {
		existing = tb.rows[id]
	}
	if updateOnly {
		one.header.Set("If-Match", "*")
	}
	one.method = http.MethodPatch
	return s.upsert(c, t, tb, one, existing, id, key)
}
