package fhirserver

import (
	"encoding/json"
	"reflect"
	"testing"
)

// TestSandboxClients checks the two client identities: fhirsync's token,
// the care coordinator's and none are accepted, an unknown token is not,
// each write counts for its caller, and what a client sends in meta is
// stored as sent, never marked by the server.
func TestSandboxClients(t *testing.T) {
	t.Parallel()
	s, base := newTest(t, Options{Clients: SandboxClients()})
	tests := []struct {
		name   string
		auth   string // Authorization header; "" sends none
		meta   string // meta the client sends; "" sends none
		status int
		client string
	}{
		{name: "fhirsync", auth: "Bearer " + AgentToken, status: 201, client: AgentClient},
		{name: "coordinator", auth: "Bearer " + CoordinatorToken, status: 201, client: CoordinatorClient},
		{name: "coordinator with its own meta", auth: "Bearer " + CoordinatorToken, status: 201, client: CoordinatorClient,
			meta: `{"source":"#bedside-tablet","tag":[{"system":"http://example.org/tags","code":"reviewed"}]}`},
		{name: "no token", auth: "", status: 201, client: Anonymous},
		{name: "unknown token", auth: "Bearer someone-else", status: 401},
		{name: "not a bearer token", auth: "Basic dXNlcjpwYXNz", status: 401},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			before := s.Writes(tt.client)
			body := `{"resourceType":"Patient","gender":"female"}`
			if tt.meta != "" {
				body = `{"resourceType":"Patient","gender":"female","meta":` + tt.meta + `}`
			}
			var hdr []string
			if tt.auth != "" {
				hdr = []string{"Authorization", tt.auth}
			}
			r := do(t, "POST", base+"/Patient", body, hdr...)
			if r.status != tt.status {
				t.Fatalf("status %d, want %d: %v", r.status, tt.status, r.body)
			}
			if tt.status != 201 {
				if r.body["resourceType"] != "OperationOutcome" || r.header.Get("WWW-Authenticate") == "" {
					t.Errorf("refusal lacks an OperationOutcome or WWW-Authenticate: %v %v", r.header, r.body)
				}
				return
			}
			if got := s.Writes(tt.client); got != before+1 {
				t.Errorf("writes by %s = %d, want %d", tt.client, got, before+1)
			}
			// The stored meta is what the client sent plus the version.
			stored := do(t, "GET", base+"/Patient/"+r.body["id"].(string), "").body["meta"].(map[string]any)
			delete(stored, "versionId")
			delete(stored, "lastUpdated")
			want := map[string]any{}
			if tt.meta != "" {
				if err := json.Unmarshal([]byte(tt.meta), &want); err != nil {
					t.Fatal(err)
				}
			}
			if !reflect.DeepEqual(stored, want) {
				t.Errorf("stored meta %v, want %v", stored, want)
			}
		})
	}
	if s.Writes(AgentClient) != 1 || s.Writes(CoordinatorClient) != 2 || s.Writes(Anonymous) != 1 {
		t.Errorf("writes: fhirsync %d, coordinator %d, anonymous %d; want 1, 2, 1",
			s.Writes(AgentClient), s.Writes(CoordinatorClient), s.Writes(Anonymous))
	}
	// Reads are not writes.
	do(t, "GET", base+"/Patient", "", "Authorization", "Bearer "+AgentToken)
	if s.Writes(AgentClient) != 1 {
		t.Errorf("a search counted as a write")
	}
}
