package crmserver

import (
	"encoding/json"
	"strings"
	"testing"
)

// TestSandboxUsers holds the sandbox's two users apart: each token is its
// own systemuserid in WhoAmI, on the rows it writes and in the service
// endpoint's messages, and a request with neither token is refused.
func TestSandboxUsers(t *testing.T) {
	t.Parallel()
	if AgentToken == CoordinatorToken || AgentUserID == CoordinatorUserID {
		t.Fatal("the agent and the care coordinator share a token or a systemuserid")
	}
	q := &captureQueue{}
	_, hs := newServer(t, Options{Tokens: SandboxTokens(), Endpoint: q})
	bearer := func(tok string) map[string]string {
		h := map[string]string{"Content-Type": "application/json", "Prefer": "return=representation"}
		if tok != "" {
			h["Authorization"] = "Bearer " + tok
		}
		return h
	}

	whoami := []struct {
		name, token string
		status      int
		user        string
	}{
		{name: "agent", token: AgentToken, status: 200, user: AgentUserID},
		{name: "coordinator", token: CoordinatorToken, status: 200, user: CoordinatorUserID},
		{name: "no token", token: "", status: 401},
		{name: "unknown token", token: "someone-else", status: 401},
	}
	for _, tt := range whoami {
		t.Run("whoami/"+tt.name, func(t *testing.T) {
			resp, b := do(t, "GET", hs.URL+APIPath+"WhoAmI", bearer(tt.token), "")
			if resp.StatusCode != tt.status {
				t.Fatalf("status %d, want %d: %s", resp.StatusCode, tt.status, b)
			}
			if tt.status != 200 {
				return
			}
			var w struct{ UserId string }
			if err := json.Unmarshal(b, &w); err != nil {
				t.Fatalf("decoding WhoAmI: %v", err)
			}
			if w.UserId != tt.user {
				t.Errorf("UserId = %s, want %s", w.UserId, tt.user)
			}
		})
	}

	// fhirsync creates a contact; the coordinator then edits it by hand.
	resp, b := do(t, "POST", hs.URL+APIPath+"contacts", bearer(AgentToken), `{"lastname":"Agentwritten"}`)
	if resp.StatusCode != 201 {
		t.Fatalf("creating as the agent: %d %s", resp.StatusCode, b)
	}
	var created map[string]any
	if err := json.Unmarshal(b, &created); err != nil {
		t.Fatal(err)
	}
	id, _ := created["contactid"].(string)
	resp, b = do(t, "PATCH", hs.URL+APIPath+"contacts("+id+")", bearer(CoordinatorToken), `{"jobtitle":"Coordinator"}`)
	if resp.StatusCode != 200 {
		t.Fatalf("updating as the coordinator: %d %s", resp.StatusCode, b)
	}
	var updated map[string]any
	if err := json.Unmarshal(b, &updated); err != nil {
		t.Fatal(err)
	}
	if updated["_createdby_value"] != AgentUserID || updated["_modifiedby_value"] != CoordinatorUserID {
		t.Errorf("createdby %v, modifiedby %v; want the agent, then the coordinator", updated["_createdby_value"], updated["_modifiedby_value"])
	}

	q.mu.Lock()
	defer q.mu.Unlock()
	var users []string
	for _, m := range q.msgs {
		users = append(users, m.Properties[propRequestName]+" by "+m.Properties[propInitiatingUser])
	}
	want := "Create by " + AgentUserID + ", Update by " + CoordinatorUserID
	if got := strings.Join(users, ", "); got != want {
		t.Errorf("endpoint messages: %s, want %s", got, want)
	}
}
