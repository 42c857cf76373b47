package crmserver

import (
	"encoding/json"
	"net/http"
	"strings"
	"testing"
)

// TestBypassStepIDsLeaveChangesUnposted: a write naming its step in
// MSCRM.BypassBusinessLogicExecutionStepIds (bare or quoted, as
// bypass-custom-business-logic.md prints it) is not posted to the service
// endpoint; naming another message's step changes nothing; a $batch part
// and CreateMultiple carry it too; more ids than the limit, a value that
// is not GUIDs and a caller without prvBypassCustomBusinessLogic are
// refused before anything is written.
func TestBypassStepIDsLeaveChangesUnposted(t *testing.T) {
	t.Parallel()
	q := &gatedQueue{}
	s, err := New(Options{Tokens: SandboxTokens(), Endpoint: q, EndpointEntities: []string{"contact"}})
	if err != nil {
		t.Fatal(err)
	}
	step := map[string]string{}
	for _, st := range s.Steps() {
		step[st.Message] = st.ID
	}
	if step["Create"] == "" || step["Update"] == "" || step["Delete"] == "" {
		t.Fatalf("steps %v", s.Steps())
	}
	posted := func() int {
		q.mu.Lock()
		defer q.mu.Unlock()
		return len(q.msgs)
	}
	create := func(name string, header ...string) (string, int) {
		t.Helper()
		w := send(s, AgentToken, http.MethodPost, "contacts", `{"lastname":"`+name+`"}`, header...)
		if w.Code != http.StatusNoContent {
			return w.Body.String(), w.Code
		}
		loc := w.Header().Get("OData-EntityId")
		return loc[strings.LastIndex(loc, "(")+1 : len(loc)-1], w.Code
	}

	id, code := create("Plain")
	if code != 204 || posted() != 1 {
		t.Fatalf("plain create: %d, %d posted; want 204, 1", code, posted())
	}
	if _, code = create("Bypassed", headerBypassStepIDs, step["Create"]); code != 204 || posted() != 1 {
		t.Errorf("create naming its step: %d, %d posted; want 204 and nothing more", code, posted())
	}
	quoted := `"` + strings.ToUpper(step["Create"]) + `, ` + step["Update"] + `"`
	if _, code = create("Quoted", headerBypassStepIDs, quoted); code != 204 || posted() != 1 {
		t.Errorf("create naming its step quoted: %d, %d posted; want 204 and nothing more", code, posted())
	}
	if _, code = create("Other", headerBypassStepIDs, step["Update"]); code != 204 || posted() != 2 {
		t.Errorf("create naming only the Update step: %d, %d posted; want 204, 2", code, posted())
	}
	w := send(s, AgentToken, http.MethodPatch, "contacts("+id+")", `{"firstname":"A"}`, "If-Match", "*", headerBypassStepIDs, step["Update"])
	if w.Code != 204 || posted() != 2 {
		t.Errorf("update naming its step: %d, %d posted; want 204, 2", w.Code, posted())
	}
	if st := s.Stats(); st.EndpointBypassed != 3 {
		t.Errorf("EndpointBypassed %d, want 3", st.EndpointBypassed)
	}

	body := "--batch_B\r\nContent-Type: multipart/mixed; boundary=changeset_B\r\n\r\n" +
		"--changeset_B\r\nContent-Type: application/http\r\nContent-Transfer-Encoding: binary\r\nContent-ID: 1\r\n\r\n" +
		"POST " + APIPath + "contacts HTTP/1.1\r\nContent-Type: application/json\r\n" + headerBypassStepIDs + ": " + step["Create"] + "\r\n\r\n{\"lastname\":\"InBatch\"}\r\n" +
		"--changeset_B\r\nContent-Type: application/http\r\nContent-Transfer-Encoding: binary\r\nContent-ID: 2\r\n\r\n" +
		"POST " + APIPath + "contacts HTTP/1.1\r\nContent-Type: application/json\r\n\r\n{\"lastname\":\"InBatchPosted\"}\r\n" +
		"--changeset_B--\r\n--batch_B--\r\n"
	r := send(s, AgentToken, http.MethodPost, "$batch", body, "Content-Type", "multipart/mixed; boundary=batch_B")
	if r.Code != 200 || posted() != 3 {
		t.Errorf("$batch with one part naming its step: %d, %d posted; want 200, 3: %s", r.Code, posted(), r.Body.String())
	}
	multi := `{"Targets":[{"@odata.type":"Microsoft.Dynamics.CRM.contact","lastname":"M1"},{"@odata.type":"Microsoft.Dynamics.CRM.contact","lastname":"M2"}]}`
	r = send(s, AgentToken, http.MethodPost, "contacts/Microsoft.Dynamics.CRM.CreateMultiple", multi, headerBypassStepIDs, step["Create"])
	if r.Code != 200 || posted() != 3 {
		t.Errorf("CreateMultiple naming the Create step: %d, %d posted; want 200, 3: %s", r.Code, posted(), r.Body.String())
	}

	rows := func() int {
		w := send(s, AgentToken, http.MethodGet, "contacts?$select=lastname", "")
		var out struct{ Value []any }
		_ = json.Unmarshal(w.Body.Bytes(), &out)
		return len(out.Value)
	}
	before := rows()
	refused := []struct {
		name, value, token, code string
		status                   int
	}{
		{"four ids, limit three", step["Create"] + "," + step["Update"] + "," + step["Delete"] + ",45e0c603-0d0b-466e-a286-d7fc1cda8361", AgentToken, "0x80040203", 400},
		{"not a GUID", "create-step", AgentToken, "0x80040203", 400},
	}
	for _, tt := range refused {
		w := send(s, tt.token, http.MethodPost, "contacts", `{"lastname":"Refused"}`, headerBypassStepIDs, tt.value)
		if w.Code != tt.status || !strings.Contains(w.Body.String(), tt.code) {
			t.Errorf("%s: %d %s; want %d %s", tt.name, w.Code, w.Body.String(), tt.status, tt.code)
		}
	}
	s.RevokePrivilege(AgentUserID, "prvBypassCustomBusinessLogic")
	w = send(s, AgentToken, http.MethodPost, "contacts", `{"lastname":"Refused"}`, headerBypassStepIDs, step["Create"])
	if w.Code != 403 || !strings.Contains(w.Body.String(), "0x80040220") || !strings.Contains(w.Body.String(), "is missing prvBypassCustomBusinessLogic privilege (Id=0ea552b0-a491-4470-9a1b-82068deccf66)") {
		t.Errorf("without the privilege: %d %s; want 403 0x80040220 naming prvBypassCustomBusinessLogic", w.Code, w.Body.String())
	}
	if _, code = create("StillWorks"); code != 204 {
		t.Errorf("a write without the header after the privilege was revoked: %d", code)
	}
	if got := rows(); got != before+1 {
		t.Errorf("%d contacts after the refusals, want %d (only the write without the header)", got, before+1)
	}
}
