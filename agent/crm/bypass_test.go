package crm

import (
	"context"
	"net/http"
	"strings"
	"testing"

	"github.com/fhirsync/fhirsync/sandbox/crmserver"
)

// TestBypassStepsKeepsOwnWritesUnposted: with BypassSteps set from its
// endpoint's steps, the client's creates, upserts, updates, deletes, $batch
// parts and CreateMultiple name their steps and the sandbox CRM posts none
// of them, while another user's write is posted; each request names only
// its own table's and message's steps, within the limit; when the user
// loses prvBypassCustomBusinessLogic, the next write is refused once for
// it, sent again without the header, succeeds and is posted, and the
// bypass stays off.
func TestBypassStepsKeepsOwnWritesUnposted(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	const agentUser, human = "11111111-1111-1111-1111-111111111111", "22222222-2222-2222-2222-222222222222"
	q := &memQueue{}
	srv, c := sandbox(t, crmserver.Options{Tokens: map[string]string{"agent": agentUser, "human": human}, Endpoint: q,
		EndpointEntities: []string{"contact", "account"}, BypassStepLimit: 2}, Config{Auth: AuthBearer, Token: "agent"})
	other, err := New(Config{URL: strings.TrimSuffix(c.Root(), APIPath), Auth: AuthBearer, Token: "human"})
	if err != nil {
		t.Fatal(err)
	}
	posted := func() int {
		q.mu.Lock()
		defer q.mu.Unlock()
		return len(q.msgs)
	}
	steps := onlyEndpointSteps(t, c, 6)
	var offs []*Error
	if err := c.BypassSteps(ctx, steps, 2, func(e *Error) { offs = append(offs, e) }); err != nil || !c.Bypassing() {
		t.Fatalf("BypassSteps: %v (bypassing %v)", err, c.Bypassing())
	}
	stepOf := map[string]string{}
	for _, s := range steps {
		stepOf[s.Entity+" "+s.Message] = s.ID
	}
	// Each request names its own steps only.
	for _, tt := range []struct {
		method, path string
		header       http.Header
		want         []string
	}{
		{"POST", "contacts", nil, []string{"contact Create"}},
		{"PATCH", "contacts(msemr_azurefhirid='p')", nil, []string{"contact Create", "contact Update"}},
		{"PATCH", "accounts(00000000-0000-0000-0000-000000000001)", http.Header{"If-Match": {"*"}}, []string{"account Update"}},
		{"DELETE", "contacts(00000000-0000-0000-0000-000000000001)", nil, []string{"contact Delete"}},
		{"POST", "contacts/Microsoft.Dynamics.CRM.UpsertMultiple", nil, []string{"contact Create", "contact Update"}},
		{"GET", "contacts", nil, nil},
		{"POST", "msemr_medicalidentifiers", nil, nil},
	} {
		var want []string
		for _, w := range tt.want {
			want = append(want, stepOf[w])
		}
		if got := c.bypassHeader(tt.method, c.Root()+tt.path, tt.header); got != strings.Join(want, ",") {
			t.Errorf("%s %s: header %q, want %q", tt.method, tt.path, got, strings.Join(want, ","))
		}
	}

	id, err := c.Create(ctx, "contacts", Record{"lastname": "Own"})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.Upsert(ctx, ByKey("contacts", "msemr_azurefhirid", "pat-1"), Record{"lastname": "Lee"}, UpsertOptions{}); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Upsert(ctx, ByID("contacts", id), Record{"firstname": "A"}, UpsertOptions{Mode: UpdateOnly}); err != nil {
		t.Fatal(err)
	}
	op, err := CreateOp("accounts", Record{"name": "Clinic"})
	if err != nil {
		t.Fatal(err)
	}
	res, err := c.ExecuteBatch(ctx, Batch{Items: []BatchItem{{ChangeSet: []Op{op}}}})
	if err != nil || len(res) != 1 || res[0].Err != nil {
		t.Fatalf("batch: %v %v", res, err)
	}
	if err := c.Delete(ctx, ByID("contacts", id), ""); err != nil {
		t.Fatal(err)
	}
	if n := posted(); n != 0 {
		t.Errorf("%d of the bypassing client's writes posted, want none", n)
	}
	if _, err := other.Create(ctx, "contacts", Record{"lastname": "Theirs"}); err != nil {
		t.Fatal(err)
	}
	if n := posted(); n != 1 {
		t.Errorf("another user's create: %d posted, want 1", n)
	}
	if st := srv.Stats(); st.EndpointBypassed != 5 {
		t.Errorf("sandbox counted %d bypassed changes, want 5", st.EndpointBypassed)
	}

	srv.RevokePrivilege(agentUser, "prvBypassCustomBusinessLogic")
	if _, err := c.Create(ctx, "contacts", Record{"lastname": "AfterRevoke"}); err != nil {
		t.Fatalf("create after the privilege was revoked: %v", err)
	}
	if c.Bypassing() {
		t.Errorf("still bypassing after the refusal")
	}
	if len(offs) != 1 || offs[0].Status != 403 || offs[0].Code != "0x80040220" {
		t.Errorf("told of the refusal %v, want once, 403 0x80040220", offs)
	}
	if _, err := c.Create(ctx, "contacts", Record{"lastname": "AfterOff"}); err != nil || len(offs) != 1 {
		t.Errorf("a later create: %v, told %d times; want it sent without the header and no second call", err, len(offs))
	}
	if n := posted(); n != 3 {
		t.Errorf("creates after the refusal: %d posted in all, want 3 (their changes come back as without the bypass)", n)
	}
}

// TestBypassStepsNameBulkMessageSteps: Dataverse merges the pipelines of
// Create and CreateMultiple, Update and UpdateMultiple (bulk-operations.md,
// "Message pipelines merged"), so a step registered on a bulk message runs
// for the single write as well, and the other way round. Each write names
// the steps of its single messages first, then those of their bulk
// counterparts, within the limit; a delete does not name DeleteMultiple's.
func TestBypassStepsNameBulkMessageSteps(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	srv, c := sandbox(t, crmserver.Options{Tokens: map[string]string{"agent": "11111111-1111-1111-1111-111111111111"}, Endpoint: &memQueue{},
		EndpointEntities: []string{"contact"}}, Config{Auth: AuthBearer, Token: "agent"})
	for _, m := range []string{"CreateMultiple", "UpdateMultiple", "UpsertMultiple", "DeleteMultiple"} {
		srv.AddStep("contact", m)
	}
	steps := onlyEndpointSteps(t, c, 7)
	if err := c.BypassSteps(ctx, steps, 3, nil); err != nil {
		t.Fatal(err)
	}
	stepOf := map[string]string{}
	for _, s := range steps {
		stepOf[s.Message] = s.ID
	}
	for _, tt := range []struct {
		method, path string
		header       http.Header
		want         []string
	}{
		{"POST", "contacts", nil, []string{"Create", "CreateMultiple"}},
		{"POST", "contacts/Microsoft.Dynamics.CRM.CreateMultiple", nil, []string{"Create", "CreateMultiple"}},
		{"POST", "contacts/Microsoft.Dynamics.CRM.UpdateMultiple", nil, []string{"Update", "UpdateMultiple"}},
		{"PATCH", "contacts(00000000-0000-0000-0000-000000000001)", http.Header{"If-Match": {"*"}}, []string{"Update", "UpdateMultiple"}},
		{"PATCH", "contacts(00000000-0000-0000-0000-000000000001)", http.Header{"If-None-Match": {"*"}}, []string{"Create", "CreateMultiple"}},
		// Three named at most: the single messages' steps come first.
		{"PATCH", "contacts(msemr_azurefhirid='p')", nil, []string{"Create", "Update", "CreateMultiple"}},
		{"POST", "contacts/Microsoft.Dynamics.CRM.UpsertMultiple", nil, []string{"Create", "Update", "UpsertMultiple"}},
		{"DELETE", "contacts(00000000-0000-0000-0000-000000000001)", nil, []string{"Delete"}},
	} {
		var want []string
		for _, w := range tt.want {
			want = append(want, stepOf[w])
		}
		if got := c.bypassHeader(tt.method, c.Root()+tt.path, tt.header); got != strings.Join(want, ",") {
			t.Errorf("%s %s: header %q, want the steps of %v (%q)", tt.method, tt.path, got, tt.want, strings.Join(want, ","))
		}
	}
	// The sandbox accepts the header of a create naming both steps.
	if _, err := c.Create(ctx, "contacts", Record{"lastname": "Bulk"}); err != nil {
		t.Fatal(err)
	}
}

// onlyEndpointSteps lists the steps of the CRM's one service endpoint,
// which must number n.
func onlyEndpointSteps(t *testing.T, c *Client, n int) []Step {
	t.Helper()
	ctx := context.Background()
	eps, err := c.ServiceEndpoints(ctx)
	if err != nil || len(eps) != 1 {
		t.Fatalf("endpoints %v, %v", eps, err)
	}
	steps, err := c.EndpointSteps(ctx, eps[0].ID)
	if err != nil || len(steps) != n {
		t.Fatalf("steps %v, %v; want %d", steps, err, n)
	}
	return steps
}
