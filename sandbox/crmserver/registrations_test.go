package crmserver

import (
	"context"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"sync"
	"testing"

	"github.com/fhirsync/fhirsync/queues"
)

// getJSON GETs a path under the service root as the agent's user.
func getJSON(t *testing.T, base, path string) (int, map[string]any) {
	t.Helper()
	req, _ := http.NewRequest(http.MethodGet, base+APIPath+strings.ReplaceAll(path, " ", "%20"), nil)
	req.Header.Set("Authorization", "Bearer "+AgentToken)
	res, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer res.Body.Close()
	var out map[string]any
	_ = json.NewDecoder(res.Body).Decode(&out)
	return res.StatusCode, out
}

// TestRetrieveUserPrivileges: the function bound to systemuser lists a
// RolePrivilege per table privilege, with the PrivilegeId the table
// definition's Privileges give; a revoked privilege is left out for that
// user only.
func TestRetrieveUserPrivileges(t *testing.T) {
	t.Parallel()
	s, err := New(Options{Tokens: SandboxTokens()})
	if err != nil {
		t.Fatal(err)
	}
	hs := httptest.NewServer(s)
	t.Cleanup(hs.Close)

	status, def := getJSON(t, hs.URL, "EntityDefinitions(LogicalName='contact')?$select=LogicalName,Privileges")
	if status != 200 {
		t.Fatalf("definition: %d %v", status, def)
	}
	ids := map[string]string{} // name → id
	for _, p := range def["Privileges"].([]any) {
		p := p.(map[string]any)
		ids[p["Name"].(string)] = p["PrivilegeId"].(string)
	}
	for _, n := range []string{"prvCreateContact", "prvReadContact", "prvWriteContact", "prvDeleteContact", "prvAppendContact", "prvAppendToContact"} {
		if ids[n] == "" {
			t.Errorf("contact's definition lacks %s: %v", n, def["Privileges"])
		}
	}
	if _, ok := def["Attributes"]; ok {
		t.Errorf("$select=LogicalName,Privileges returned Attributes")
	}

	var readAccountDepth string
	held := func(user string) map[string]string {
		t.Helper()
		status, out := getJSON(t, hs.URL, "systemusers("+user+")/Microsoft.Dynamics.CRM.RetrieveUserPrivileges()")
		if status != 200 {
			t.Fatalf("RetrieveUserPrivileges: %d %v", status, out)
		}
		if !strings.HasSuffix(out["@odata.context"].(string), "$metadata#Microsoft.Dynamics.CRM.RetrieveUserPrivilegesResponse") {
			t.Errorf("context %v", out["@odata.context"])
		}
		m := map[string]string{}
		for _, p := range out["RolePrivileges"].([]any) {
			p := p.(map[string]any)
			if p["PrivilegeName"] == "prvReadAccount" && user == AgentUserID {
				readAccountDepth = p["Depth"].(string)
			}
			if p["PrivilegeName"] != "prvReadAccount" && p["Depth"] != "Global" || p["BusinessUnitId"] == "" {
				t.Errorf("privilege %v", p)
			}
			m[p["PrivilegeName"].(string)] = p["PrivilegeId"].(string)
		}
		return m
	}
	before := held(AgentUserID)
	if before["prvWriteContact"] != ids["prvWriteContact"] {
		t.Errorf("prvWriteContact: user holds %q, definition says %q", before["prvWriteContact"], ids["prvWriteContact"])
	}
	s.SetPrivilegeDepth(AgentUserID, "prvReadAccount", "Basic")
	held(AgentUserID)
	if readAccountDepth != "Basic" {
		t.Errorf("prvReadAccount at depth %q after SetPrivilegeDepth Basic", readAccountDepth)
	}
	s.SetPrivilegeDepth(AgentUserID, "prvReadAccount", "Global")
	s.RevokePrivilege(AgentUserID, "prvWriteContact")
	if _, ok := held(AgentUserID)["prvWriteContact"]; ok {
		t.Errorf("revoked prvWriteContact still listed")
	}
	if _, ok := held(CoordinatorUserID)["prvWriteContact"]; !ok {
		t.Errorf("revoking the agent's privilege took the coordinator's too")
	}
	if len(held(AgentUserID)) != len(before)-1 {
		t.Errorf("revoking one privilege changed %d", len(before)-len(held(AgentUserID)))
	}
	// Enforced as Dataverse does: the agent may no longer update a
	// contact; the coordinator still may, and the agent still reads.
	do := func(method, path, token, body string) (int, string) {
		t.Helper()
		req, _ := http.NewRequest(method, hs.URL+APIPath+path, strings.NewReader(body))
		req.Header.Set("Authorization", "Bearer "+token)
		req.Header.Set("Content-Type", "application/json")
		res, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer res.Body.Close()
		b, _ := io.ReadAll(res.Body)
		return res.StatusCode, string(b)
	}
	if st, body := do(http.MethodPost, "contacts", AgentToken, `{"lastname":"Priv","msemr_azurefhirid":"p-1"}`); st != 204 {
		t.Fatalf("create: %d %s", st, body)
	}
	st, body := do(http.MethodPatch, "contacts(msemr_azurefhirid='p-1')", AgentToken, `{"firstname":"Ann"}`)
	if st != 403 || !strings.Contains(body, `"0x80040220"`) || !strings.Contains(body, "is missing prvWriteContact privilege (Id="+ids["prvWriteContact"]+")") {
		t.Errorf("update without prvWriteContact: %d %s", st, body)
	}
	if st, body := do(http.MethodPatch, "contacts(msemr_azurefhirid='p-1')", CoordinatorToken, `{"firstname":"Ann"}`); st != 204 {
		t.Errorf("the coordinator's update: %d %s", st, body)
	}
	if st, body := do(http.MethodGet, "contacts(msemr_azurefhirid='p-1')?$select=firstname", AgentToken, ""); st != 200 {
		t.Errorf("read with prvReadContact: %d %s", st, body)
	}
	s.GrantPrivilege(AgentUserID, "prvWriteContact")
	if st, body := do(http.MethodPatch, "contacts(msemr_azurefhirid='p-1')", AgentToken, `{"firstname":"Bo"}`); st != 204 {
		t.Errorf("update after the grant: %d %s", st, body)
	}
	s.RevokePrivilege(AgentUserID, "prvCreateContact")
	if st, body := do(http.MethodPost, "contacts/Microsoft.Dynamics.CRM.CreateMultiple", AgentToken,
		`{"Targets":[{"@odata.type":"Microsoft.Dynamics.CRM.contact","lastname":"Bulk"}]}`); st != 403 || !strings.Contains(body, "prvCreateContact") {
		t.Errorf("CreateMultiple without prvCreateContact: %d %s", st, body)
	}
	s.GrantPrivilege(AgentUserID, "prvCreateContact")
	if _, ok := held(AgentUserID)["prvWriteContact"]; !ok {
		t.Errorf("granted prvWriteContact not listed")
	}
	if status, _ := getJSON(t, hs.URL, "systemusers(not-a-guid)/Microsoft.Dynamics.CRM.RetrieveUserPrivileges()"); status != 400 {
		t.Errorf("a key that is not a GUID: %d, want 400", status)
	}
}

type captured struct {
	mu   sync.Mutex
	msgs []queues.Message
}

func (c *captured) Send(_ context.Context, msgs ...queues.Message) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.msgs = append(c.msgs, msgs...)
	return nil
}

// TestServiceEndpointRegistrations runs the queries register-web-hook.md
// documents against the registrations of a Service Bus endpoint and a
// webhook, and shows that a removed step stops its posts.
func TestServiceEndpointRegistrations(t *testing.T) {
	t.Parallel()
	q := &captured{}
	hook := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {}))
	t.Cleanup(hook.Close)
	s, err := New(Options{Tokens: SandboxTokens(), Endpoint: q, EndpointEntities: []string{"contact"}, EndpointPath: "crm-in",
		Webhook: WebhookTarget{URL: hook.URL + "/hooks/dataverse", Header: "x-key", Key: "k"}})
	if err != nil {
		t.Fatal(err)
	}
	hs := httptest.NewServer(s)
	t.Cleanup(hs.Close)

	// "Query WebHook registrations".
	status, out := getJSON(t, hs.URL, "serviceendpoints?$filter=contract eq 8&$select=serviceendpointid,name,authtype,url")
	if status != 200 {
		t.Fatalf("webhooks: %d %v", status, out)
	}
	hooks := out["value"].([]any)
	if len(hooks) != 1 {
		t.Fatalf("want one webhook, got %v", hooks)
	}
	wh := hooks[0].(map[string]any)
	if wh["url"] != hook.URL+"/hooks/dataverse" || wh["authtype"] != float64(5) || wh["contract"] != nil {
		t.Errorf("webhook row %v (authtype 5 Http Header; contract not selected)", wh)
	}
	_, all := getJSON(t, hs.URL, "serviceendpoints?$select=name,contract,namespaceaddress,path")
	var queue map[string]any
	for _, v := range all["value"].([]any) {
		if v := v.(map[string]any); v["contract"] == float64(ContractQueue) {
			queue = v
		}
	}
	if queue == nil || queue["path"] != "crm-in" || queue["namespaceaddress"] != SandboxNamespace {
		t.Fatalf("Service Bus endpoint row %v", all["value"])
	}

	// "Query steps registered for a WebHook", with the step's table and
	// message expanded.
	id := wh["serviceendpointid"].(string)
	status, out = getJSON(t, hs.URL, "serviceendpoints("+id+")/serviceendpoint_sdkmessageprocessingstep?$select=sdkmessageprocessingstepid,name,mode,stage&$expand=sdkmessagefilterid($select=primaryobjecttypecode),sdkmessageid($select=name)")
	if status != 200 {
		t.Fatalf("steps: %d %v", status, out)
	}
	var msgs []string
	var stepID string
	for _, v := range out["value"].([]any) {
		st := v.(map[string]any)
		if st["mode"] != float64(1) || st["stage"] != float64(40) {
			t.Errorf("step %v: want mode 1 (asynchronous), stage 40", st)
		}
		if _, ok := st["statecode"]; ok {
			t.Errorf("statecode returned without being selected")
		}
		f := st["sdkmessagefilterid"].(map[string]any)
		if f["primaryobjecttypecode"] != "contact" {
			t.Errorf("step of %v", f)
		}
		msgs = append(msgs, st["sdkmessageid"].(map[string]any)["name"].(string))
		stepID = st["sdkmessageprocessingstepid"].(string)
	}
	slices.Sort(msgs)
	if strings.Join(msgs, ",") != "Create,Delete,Update" {
		t.Errorf("steps for messages %v, want Create, Delete, Update", msgs)
	}
	status, one := getJSON(t, hs.URL, "sdkmessageprocessingsteps("+stepID+")?$select=name,mode,stage&$expand=eventhandler_serviceendpoint($select=name),sdkmessagefilterid($select=primaryobjecttypecode),sdkmessageid($select=name)")
	if status != 200 || one["eventhandler_serviceendpoint"].(map[string]any)["name"] != wh["name"] {
		t.Errorf("one step: %d %v", status, one)
	}

	// A contact created with every step registered is posted; after the
	// Create step is removed, the next one is not.
	create := func() {
		t.Helper()
		req, _ := http.NewRequest(http.MethodPost, hs.URL+APIPath+"contacts", strings.NewReader(`{"lastname":"Step"}`))
		req.Header.Set("Authorization", "Bearer "+AgentToken)
		req.Header.Set("Content-Type", "application/json")
		res, err := http.DefaultClient.Do(req)
		if err != nil || res.StatusCode != 204 {
			t.Fatalf("create: %v %v", err, res)
		}
		res.Body.Close()
	}
	create()
	s.RemoveStep("contact", "Create")
	create()
	q.mu.Lock()
	n := len(q.msgs)
	q.mu.Unlock()
	if n != 1 {
		t.Errorf("posted %d messages, want 1 (the create before its step was removed)", n)
	}
	_, out = getJSON(t, hs.URL, "sdkmessageprocessingsteps?$filter=_eventhandler_value eq "+id+"&$select=name&$expand=sdkmessageid($select=name)")
	if len(out["value"].([]any)) != 2 {
		t.Errorf("after removing the Create step: %v", out["value"])
	}
}
