package crm

import (
	"context"
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/fhirsync/fhirsync/queues"
	"github.com/fhirsync/fhirsync/sandbox/crmserver"
)

func readSample(t testing.TB, name string) []byte {
	t.Helper()
	b, err := os.ReadFile(filepath.Join("testdata", "remotecontext", name))
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func TestDecodeRemoteExecutionContextSamples(t *testing.T) {
	t.Parallel()
	const contact = "5f1e9a3b-2c4d-ee11-be6e-000d3a5b8f21"
	tests := []struct {
		file      string
		message   string
		entity    string
		id        string
		event     queues.Event
		version   string
		initiator string
		changedAt time.Time
		pre, post bool
		check     func(t *testing.T, x *ExecutionContext)
	}{
		{file: "create_contact.json", message: "Create", entity: "contact", id: contact, event: queues.EventCreated,
			version: "915244", initiator: "7c5e1a2b-3d4f-ee11-be6e-000d3a5b8f21", changedAt: time.UnixMilli(1700000000000).UTC(), post: true,
			check: func(t *testing.T, x *ExecutionContext) {
				a := x.Target.Attributes
				if a["firstname"] != "Ann" || a["gendercode"] != (OptionSetValue{Value: 2}) || a["numberofchildren"] != json.Number("2") || a["donotphone"] != false {
					t.Fatalf("target attributes = %#v", a)
				}
				if a["creditlimit"] != (Money{Value: "1250.50"}) {
					t.Fatalf("money = %#v", a["creditlimit"])
				}
				if bd, ok := a["birthdate"].(time.Time); !ok || bd.Format("2006-01-02") != "1980-03-01" {
					t.Fatalf("birthdate = %#v", a["birthdate"])
				}
				ref, ok := a["parentcustomerid"].(*EntityReference)
				if !ok || ref.LogicalName != "account" || ref.ID != "1b2c3d4e-5f60-ee11-be6e-000d3a5b8f21" {
					t.Fatalf("lookup = %#v", a["parentcustomerid"])
				}
				if x.OutputParameters["id"] != contact || x.SharedVariables["IsAutoTransact"] != true || x.Stage != 40 || x.Depth != 1 {
					t.Fatalf("context = %+v", x)
				}
				if x.PostEntityImages["PostImage"].FormattedValues["modifiedon"] != "11/14/2023 10:13 PM" {
					t.Fatalf("formatted values = %v", x.PostEntityImages["PostImage"].FormattedValues)
				}
			}},
		{file: "update_contact_images.json", message: "Update", entity: "contact", id: contact, event: queues.EventUpdated,
			version: "915301", initiator: "8d6f2b3c-4e50-ee11-be6e-000d3a5b8f21", changedAt: time.UnixMilli(1700000123456).UTC(), pre: true, post: true,
			check: func(t *testing.T, x *ExecutionContext) {
				if x.UserID != "0b7a3c4d-5e61-ee11-be6e-000d3a5b8f21" || !x.HasParent || x.RequestID != "" || x.Depth != 2 {
					t.Fatalf("context = %+v", x)
				}
				if v, present := x.PreEntityImages["PreImage"].Attributes["telephone1"]; !present || v != nil {
					t.Fatalf("pre image null attribute = %v, %v", v, present)
				}
				if x.InputParameters["ConcurrencyBehavior"] != json.Number("0") {
					t.Fatalf("parameters = %v", x.InputParameters)
				}
			}},
		{file: "delete_contact.json", message: "Delete", entity: "contact", id: contact, event: queues.EventDeleted,
			initiator: "7c5e1a2b-3d4f-ee11-be6e-000d3a5b8f21", changedAt: time.UnixMilli(1700000200000).UTC(), pre: true,
			check: func(t *testing.T, x *ExecutionContext) {
				if x.Target != nil || x.TargetRef == nil || x.TargetRef.ID != contact || x.TargetRef.LogicalName != "contact" {
					t.Fatalf("delete target = %+v / %+v", x.Target, x.TargetRef)
				}
			}},
		{file: "update_images_dropped.json", message: "Update", entity: "msemr_observation", id: "6a7b8c9d-0e1f-ee11-be6e-000d3a5b8f21",
			event: queues.EventUpdated, initiator: "7c5e1a2b-3d4f-ee11-be6e-000d3a5b8f21", changedAt: time.UnixMilli(1700000300000).UTC()},
		{file: "update_untyped_images_large.json", message: "Update", entity: "contact", id: contact, event: queues.EventUpdated,
			version: "915400", initiator: "8d6f2b3c-4e50-ee11-be6e-000d3a5b8f21", changedAt: time.UnixMilli(1700000500000).UTC(), pre: true, post: true,
			check: func(t *testing.T, x *ExecutionContext) {
				post, pre := x.PostEntityImages["PostImage"], x.PreEntityImages["PreImage"]
				if post.LogicalName != "contact" || post.ID != contact || post.Attributes["gendercode"] != (OptionSetValue{Value: 2}) ||
					post.FormattedValues["gendercode"] != "Female" || len(post.Attributes["description"].(string)) != 5000 {
					t.Fatalf("untyped post image = %+v", post)
				}
				if ref, ok := post.Attributes["parentcustomerid"].(*EntityReference); !ok || ref.Name != "Clinic" {
					t.Fatalf("post image lookup = %#v", post.Attributes["parentcustomerid"])
				}
				if pre.RowVersion != "915301" || pre.Attributes["gendercode"] != (OptionSetValue{Value: 1}) {
					t.Fatalf("untyped pre image = %+v", pre)
				}
				ec, ok := x.InputParameters["Related"].(*EntityCollection)
				if !ok || len(ec.Entities) != 2 || ec.Entities[0].ID != contact || ec.Entities[1].Attributes["fullname"] != "Ann Lee" {
					t.Fatalf("untyped collection entities = %#v", x.InputParameters["Related"])
				}
			}},
		{file: "assign_account.json", message: "Assign", entity: "account", id: "1b2c3d4e-5f60-ee11-be6e-000d3a5b8f21",
			event: queues.EventChanged, initiator: "9f8e7d6c-5b4a-ee11-be6e-000d3a5b8f21", changedAt: time.UnixMilli(1700000400000).UTC(),
			check: func(t *testing.T, x *ExecutionContext) {
				ec, ok := x.InputParameters["Related"].(*EntityCollection)
				if !ok || len(ec.Entities) != 1 || ec.EntityName != "account" {
					t.Fatalf("entity collection = %#v", x.InputParameters["Related"])
				}
				if u, ok := x.InputParameters["Filter"].(UnknownValue); !ok || u.Type != "AliasedValue" {
					t.Fatalf("unknown typed value = %#v", x.InputParameters["Filter"])
				}
			}},
	}
	for _, tt := range tests {
		t.Run(tt.file, func(t *testing.T) {
			t.Parallel()
			x, err := DecodeRemoteExecutionContext(readSample(t, tt.file))
			if err != nil {
				t.Fatal(err)
			}
			if x.MessageName != tt.message || x.PrimaryEntityName != tt.entity || x.PrimaryEntityID != tt.id {
				t.Fatalf("decoded %s %s %s", x.MessageName, x.PrimaryEntityName, x.PrimaryEntityID)
			}
			if (len(x.PreEntityImages) > 0) != tt.pre || (len(x.PostEntityImages) > 0) != tt.post {
				t.Fatalf("images pre=%d post=%d", len(x.PreEntityImages), len(x.PostEntityImages))
			}
			n, err := x.Notice()
			if err != nil {
				t.Fatal(err)
			}
			if n.Side != queues.SideCRM || n.Type != tt.entity || n.ID != tt.id || n.Event != tt.event || n.Version != tt.version ||
				n.Initiator != tt.initiator || !n.ChangedAt.Equal(tt.changedAt) || n.Origin != OriginEndpoint || n.CorrelationID != x.CorrelationID {
				t.Fatalf("notice = %+v", n)
			}
			if _, err := n.Message(); err != nil {
				t.Fatal(err)
			}
			if tt.check != nil {
				tt.check(t, x)
			}
		})
	}
}

func TestDecodeRemoteExecutionContextRejects(t *testing.T) {
	t.Parallel()
	base := string(readSample(t, "delete_contact.json"))
	tests := []struct {
		name string
		body string
	}{
		{name: "not JSON", body: "<Message/>"},
		{name: "empty", body: ""},
		{name: "array", body: "[]"},
		{name: "truncated", body: base[:len(base)/2]},
		{name: "trailing data", body: base + "{}"},
		{name: "no message name", body: strings.Replace(base, `"MessageName":"Delete"`, `"MessageName":""`, 1)},
		{name: "entity name with a slash", body: strings.Replace(base, `"PrimaryEntityName":"contact"`, `"PrimaryEntityName":"con/tact"`, 1)},
		{name: "id not a GUID", body: strings.Replace(base, `"PrimaryEntityId":"5f1e9a3b-2c4d-ee11-be6e-000d3a5b8f21"`, `"PrimaryEntityId":"17"`, 1)},
		{name: "parameters as an object", body: strings.Replace(base, `"InputParameters":[`, `"InputParameters":{"x":[`, 1)},
		{name: "pair without key", body: strings.Replace(base, `"SharedVariables":[]`, `"SharedVariables":[{"value":1}]`, 1)},
		{name: "image typed as a reference", body: strings.Replace(base, `"PostEntityImages":[]`, `"PostEntityImages":[{"key":"PostImage","value":{"__type":"EntityReference:x","Id":"5f1e9a3b-2c4d-ee11-be6e-000d3a5b8f21","LogicalName":"contact"}}]`, 1)},
		{name: "untyped image with a bad id", body: strings.Replace(base, `"PostEntityImages":[]`, `"PostEntityImages":[{"key":"PostImage","value":{"Attributes":[],"Id":"nope","LogicalName":"contact"}}]`, 1)},
		{name: "untyped image with attributes as an object", body: strings.Replace(base, `"PostEntityImages":[]`, `"PostEntityImages":[{"key":"PostImage","value":{"Attributes":{"a":1}}}]`, 1)},
		{name: "collection of option sets", body: strings.Replace(base, `"SharedVariables":[]`, `"SharedVariables":[{"key":"c","value":{"__type":"EntityCollection:x","Entities":[{"__type":"OptionSetValue:x","Value":1}]}}]`, 1)},
		{name: "collection with a null entity", body: strings.Replace(base, `"SharedVariables":[]`, `"SharedVariables":[{"key":"c","value":{"__type":"EntityCollection:x","Entities":[null]}}]`, 1)},
		{name: "image that is not an entity", body: strings.Replace(base, `"PostEntityImages":[]`, `"PostEntityImages":[{"key":"PostImage","value":"x"}]`, 1)},
		{name: "malformed date", body: strings.Replace(base, `\/Date(1700000200000+0100)\/`, `\/Date(soon)\/`, 1)},
		{name: "option set without value", body: strings.Replace(base, `"SharedVariables":[]`, `"SharedVariables":[{"key":"o","value":{"__type":"OptionSetValue:x"}}]`, 1)},
		{name: "reference with a bad id", body: strings.Replace(base, `"Id":"5f1e9a3b-2c4d-ee11-be6e-000d3a5b8f21","KeyAttributes":[],"LogicalName":"contact","Name":null`, `"Id":"nope","KeyAttributes":[],"LogicalName":"contact","Name":null`, 1)},
		{name: "too deep", body: strings.Replace(base, `"SharedVariables":[]`, `"SharedVariables":[{"key":"d","value":`+strings.Repeat("[", 40)+strings.Repeat("]", 40)+`}]`, 1)},
		{name: "invalid UTF-8", body: strings.Replace(base, `"Stage":40`, "\"Stage\":40,\"X\":\"\xff\"", 1)},
		{name: "oversize", body: strings.Replace(base, `"SharedVariables":[]`, `"SharedVariables":[{"key":"big","value":"`+strings.Repeat("a", MaxContextBytes)+`"}]`, 1)},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			_, err := DecodeRemoteExecutionContext([]byte(tt.body))
			if !errors.Is(err, ErrInvalidContext) {
				t.Fatalf("err = %v, want ErrInvalidContext", err)
			}
		})
	}
	// a byte-order mark is tolerated
	if _, err := DecodeRemoteExecutionContext(append([]byte("\xef\xbb\xbf"), base...)); err != nil {
		t.Fatalf("BOM: %v", err)
	}
}

func FuzzDecodeRemoteExecutionContext(f *testing.F) {
	addContextSeeds(f)
	f.Fuzz(func(t *testing.T, b []byte) {
		x, err := DecodeRemoteExecutionContext(b)
		if err != nil {
			if !errors.Is(err, ErrInvalidContext) {
				t.Fatalf("error does not wrap ErrInvalidContext: %v", err)
			}
			return
		}
		if x.MessageName == "" || x.PrimaryEntityName == "" || x.PrimaryEntityID == "" {
			t.Fatalf("accepted a context without identity: %+v", x)
		}
		n, err := x.Notice()
		if err != nil {
			if !errors.Is(err, ErrInvalidContext) {
				t.Fatalf("notice error does not wrap ErrInvalidContext: %v", err)
			}
			return
		}
		m, err := n.Message()
		if err != nil {
			t.Fatalf("a valid notice does not encode: %v", err)
		}
		back, err := queues.DecodeNotice(m.Body)
		if err != nil || back.ID != n.ID || back.Type != n.Type || back.Event != n.Event {
			t.Fatalf("notice does not round-trip: %+v, %v", back, err)
		}
	})
}

// TestServiceEndpointEmulation writes through the client and decodes what
// the sandbox's service endpoint posted, checking that the agent can tell
// its own writes from other users' by Initiator.
func TestServiceEndpointEmulation(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	const agentUser, human = "11111111-1111-1111-1111-111111111111", "22222222-2222-2222-2222-222222222222"
	q := &memQueue{}
	srv, c := sandbox(t, crmserver.Options{Tokens: map[string]string{"agent": agentUser, "human": human}, Endpoint: q, EndpointImages: true},
		Config{Auth: AuthBearer, Token: "agent"})
	other, err := New(Config{URL: strings.TrimSuffix(c.Root(), APIPath), Auth: AuthBearer, Token: "human"})
	if err != nil {
		t.Fatal(err)
	}
	me, _ := c.WhoAmI(ctx)
	acc, err := c.Create(ctx, "accounts", Record{"name": "Clinic"})
	if err != nil {
		t.Fatal(err)
	}
	res, err := c.Upsert(ctx, ByKey("contacts", "msemr_azurefhirid", "pat-1"), Record{"lastname": "Lee", "gendercode": 2,
		"birthdate": "1980-03-01", "parentcustomerid_account@odata.bind": Bind("accounts", acc)}, UpsertOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := other.Upsert(ctx, ByID("contacts", res.ID), Record{"firstname": "Ann"}, UpsertOptions{Mode: UpdateOnly}); err != nil {
		t.Fatal(err)
	}
	if err := other.Delete(ctx, ByID("contacts", res.ID), ""); err != nil {
		t.Fatal(err)
	}
	q.mu.Lock()
	msgs := append([]queues.Message(nil), q.msgs...)
	q.mu.Unlock()
	if len(msgs) != 4 {
		t.Fatalf("%d messages posted, want 4", len(msgs))
	}
	want := []struct {
		entity, message string
		event           queues.Event
		initiator       string
		pre, post       bool
	}{
		{"account", "Create", queues.EventCreated, me, false, true},
		{"contact", "Create", queues.EventCreated, me, false, true},
		{"contact", "Update", queues.EventUpdated, human, true, true},
		{"contact", "Delete", queues.EventDeleted, human, true, false},
	}
	for i, m := range msgs {
		x, err := DecodeRemoteExecutionContext(m.Body)
		if err != nil {
			t.Fatalf("message %d: %v", i, err)
		}
		n, err := x.Notice()
		if err != nil {
			t.Fatal(err)
		}
		w := want[i]
		if n.Type != w.entity || x.MessageName != w.message || n.Event != w.event || n.Initiator != w.initiator ||
			(len(x.PreEntityImages) > 0) != w.pre || (len(x.PostEntityImages) > 0) != w.post || n.ChangedAt.IsZero() {
			t.Fatalf("message %d: %+v / %+v", i, n, x)
		}
		if m.Properties["http://schemas.microsoft.com/xrm/2011/Claims/EntityLogicalName"] != w.entity {
			t.Fatalf("message %d properties = %v", i, m.Properties)
		}
		if i == 1 {
			a := x.Target.Attributes
			ref, _ := a["parentcustomerid"].(*EntityReference)
			if a["gendercode"] != (OptionSetValue{Value: 2}) || ref == nil || ref.ID != acc || a["msemr_azurefhirid"] != "pat-1" {
				t.Fatalf("create target = %#v", a)
			}
			if bd, ok := a["birthdate"].(time.Time); !ok || bd.Format("2006-01-02") != "1980-03-01" {
				t.Fatalf("birthdate = %#v", a["birthdate"])
			}
			if n.Version == "" || n.Version != strings.Trim(strings.TrimPrefix(res.ETag, "W/"), `"`) {
				t.Fatalf("version %q, etag %q", n.Version, res.ETag)
			}
		}
		if i == 2 {
			if _, has := x.Target.Attributes["lastname"]; has || x.Target.Attributes["firstname"] != "Ann" {
				t.Fatalf("update target carries more than the change: %v", x.Target.Attributes)
			}
		}
	}

	// a row above the size limit is posted without its parameters and
	// images, as Dataverse posts it, and still gives its notice
	if _, err := c.Create(ctx, "contacts", Record{"lastname": "Big", "description": strings.Repeat("x", 100_000)}); err != nil {
		t.Fatal(err)
	}
	q.mu.Lock()
	last := q.msgs[len(q.msgs)-1]
	q.mu.Unlock()
	x, err := DecodeRemoteExecutionContext(last.Body)
	if err != nil {
		t.Fatal(err)
	}
	if len(x.PostEntityImages) != 0 || srv.Stats().ImagesDropped != 1 || x.Target != nil || last.Properties["MessageMaxSizeExceeded"] == "" {
		t.Fatalf("large message kept its images or target: post=%d dropped=%d target=%v", len(x.PostEntityImages), srv.Stats().ImagesDropped, x.Target != nil)
	}
	if n, err := x.Notice(); err != nil || n.Event != queues.EventCreated || n.Type != "contact" {
		t.Fatalf("notice of a truncated context = %+v, %v", n, err)
	}
}
