package crmserver

import (
	"encoding/json"
	"testing"
)

// TestTaskStateStatusPairs: a task opens as Not Started, closes as
// Completed (statecode 1, statuscode 5), takes the state's default status
// when only the state is set, and refuses a status of another state.
func TestTaskStateStatusPairs(t *testing.T) {
	t.Parallel()
	_, hs := newServer(t, Options{Tokens: SandboxTokens()})
	h := map[string]string{"Content-Type": "application/json", "Prefer": "return=representation", "Authorization": "Bearer " + AgentToken}
	read := func(id string) map[string]any {
		t.Helper()
		resp, b := do(t, "GET", hs.URL+APIPath+"tasks("+id+")?$select=statecode,statuscode,_ownerid_value,_owninguser_value,_owningteam_value,_regardingobjectid_value", map[string]string{"Authorization": "Bearer " + AgentToken, "Prefer": `odata.include-annotations="*"`}, "")
		if resp.StatusCode != 200 {
			t.Fatalf("reading task: %d %s", resp.StatusCode, b)
		}
		var m map[string]any
		if err := json.Unmarshal(b, &m); err != nil {
			t.Fatal(err)
		}
		return m
	}
	resp, b := do(t, "POST", hs.URL+APIPath+"contacts", h, `{"lastname":"Regarding"}`)
	if resp.StatusCode != 201 {
		t.Fatalf("creating contact: %d %s", resp.StatusCode, b)
	}
	var contact struct{ Contactid string }
	_ = json.Unmarshal(b, &contact)
	resp, b = do(t, "POST", hs.URL+APIPath+"teams", h, `{"name":"Care coordinators"}`)
	if resp.StatusCode != 201 {
		t.Fatalf("creating team: %d %s", resp.StatusCode, b)
	}
	var team struct{ Teamid string }
	_ = json.Unmarshal(b, &team)

	resp, b = do(t, "POST", hs.URL+APIPath+"tasks", h, `{"subject":"Call the patient","regardingobjectid_contact_task@odata.bind":"/contacts(`+contact.Contactid+`)","ownerid@odata.bind":"/teams(`+team.Teamid+`)"}`)
	if resp.StatusCode != 201 {
		t.Fatalf("creating task: %d %s", resp.StatusCode, b)
	}
	var task struct{ Activityid string }
	_ = json.Unmarshal(b, &task)
	got := read(task.Activityid)
	if got["statecode"] != 0.0 || got["statuscode"] != 2.0 {
		t.Errorf("new task state/status = %v/%v, want 0/2 (Open, Not Started)", got["statecode"], got["statuscode"])
	}
	if got["_regardingobjectid_value"] != contact.Contactid || got["_regardingobjectid_value@Microsoft.Dynamics.CRM.lookuplogicalname"] != "contact" {
		t.Errorf("regarding = %v (%v), want contact %s", got["_regardingobjectid_value"], got["_regardingobjectid_value@Microsoft.Dynamics.CRM.lookuplogicalname"], contact.Contactid)
	}
	if got["_owningteam_value"] != team.Teamid || got["_owninguser_value"] != nil {
		t.Errorf("owning team/user = %v/%v, want the team", got["_owningteam_value"], got["_owninguser_value"])
	}
	if got["_ownerid_value"] != team.Teamid || got["_ownerid_value@Microsoft.Dynamics.CRM.lookuplogicalname"] != "team" {
		t.Errorf("owner = %v (%v), want team %s", got["_ownerid_value"], got["_ownerid_value@Microsoft.Dynamics.CRM.lookuplogicalname"], team.Teamid)
	}

	steps := []struct {
		name       string
		body       string
		wantStatus int
		state, st  float64
	}{
		{"completed with another state's status", `{"statecode":1,"statuscode":2}`, 400, 0, 2},
		{"open with the completed status", `{"statuscode":5}`, 400, 0, 2},
		{"in progress", `{"statuscode":3}`, 204, 0, 3},
		{"closed as completed", `{"statecode":1,"statuscode":5}`, 204, 1, 5},
		{"reopened, state only: default status", `{"statecode":0}`, 204, 0, 2},
		{"canceled, state only", `{"statecode":2}`, 204, 2, 6},
		{"unknown state", `{"statecode":3}`, 400, 2, 6},
	}
	for _, s := range steps {
		resp, b := do(t, "PATCH", hs.URL+APIPath+"tasks("+task.Activityid+")", map[string]string{"Content-Type": "application/json", "Authorization": "Bearer " + AgentToken, "If-Match": "*"}, s.body)
		if resp.StatusCode != s.wantStatus {
			t.Errorf("%s: status %d, want %d: %s", s.name, resp.StatusCode, s.wantStatus, b)
		}
		got := read(task.Activityid)
		if got["statecode"] != s.state || got["statuscode"] != s.st {
			t.Errorf("%s: state/status = %v/%v, want %v/%v", s.name, got["statecode"], got["statuscode"], s.state, s.st)
		}
	}

	// A contact created without an owner is owned by the calling user.
	resp, b = do(t, "GET", hs.URL+APIPath+"contacts("+contact.Contactid+")?$select=_ownerid_value,_owninguser_value,_owningteam_value", map[string]string{"Authorization": "Bearer " + AgentToken}, "")
	var c map[string]any
	_ = json.Unmarshal(b, &c)
	if resp.StatusCode != 200 || c["_ownerid_value"] != AgentUserID || c["_owninguser_value"] != AgentUserID || c["_owningteam_value"] != nil {
		t.Errorf("contact owner = %v (%d), want the creating user %s", c["_ownerid_value"], resp.StatusCode, AgentUserID)
	}
}
