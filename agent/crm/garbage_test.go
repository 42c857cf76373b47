package crm

import (
	"context"
	"net/http"
	"net/http/httptest"
	"testing"
)

// TestGarbageIsClassified feeds the client answers no Dataverse would send
// and checks each becomes a classified error, never a success or a panic.
func TestGarbageIsClassified(t *testing.T) {
	t.Parallel()
	type answer struct {
		status int
		ctype  string
		body   string
		header map[string]string
	}
	html := "<html><body><h1>502 Bad Gateway</h1></body></html>"
	tests := []struct {
		name      string
		ans       answer
		call      func(*Client) error
		class     Class
		retryable bool
	}{
		{name: "HTML page with 200 on read", ans: answer{200, "text/html", html, nil}, call: retrieve, class: ClassInvalidResponse},
		{name: "HTML page with 502", ans: answer{502, "text/html", html, nil}, call: retrieve, class: ClassInvalidResponse, retryable: true},
		{name: "truncated JSON", ans: answer{200, "application/json", `{"contactid":"a`, nil}, call: retrieve, class: ClassInvalidResponse},
		{name: "JSON array instead of object", ans: answer{200, "application/json", `[1,2]`, nil}, call: retrieve, class: ClassInvalidResponse},
		{name: "null body", ans: answer{200, "application/json", `null`, nil}, call: retrieve, class: ClassInvalidResponse},
		{name: "trailing garbage", ans: answer{200, "application/json", `{"a":1} {"b":2}`, nil}, call: retrieve, class: ClassInvalidResponse},
		{name: "JSON with wrong content type", ans: answer{200, "text/plain", `{"contactid":"x"}`, nil}, call: retrieve, class: ClassInvalidResponse},
		{name: "no content type and not JSON", ans: answer{200, "", `contactid=x`, nil}, call: retrieve, class: ClassInvalidResponse},
		{name: "collection without value", ans: answer{200, "application/json", `{"@odata.context":"x"}`, nil}, call: list, class: ClassInvalidResponse},
		{name: "nextLink to another host", ans: answer{200, "application/json", `{"value":[],"@odata.nextLink":"https://evil.example/api/data/v9.2/contacts"}`, nil}, call: list, class: ClassInvalidResponse},
		{name: "create without OData-EntityId", ans: answer{204, "", "", nil}, call: create, class: ClassInvalidResponse},
		{name: "create with a bad OData-EntityId", ans: answer{204, "", "", map[string]string{"OData-EntityId": "http://x/contacts(nope)"}}, call: create, class: ClassInvalidResponse},
		{name: "upsert 204 without representation", ans: answer{204, "", "", nil}, call: upsert, class: ClassInvalidResponse},
		{name: "upsert 200 with HTML", ans: answer{200, "text/html", html, nil}, call: upsert, class: ClassInvalidResponse},
		{name: "batch answered with JSON", ans: answer{200, "application/json", `{"value":[]}`, nil}, call: batch, class: ClassInvalidResponse},
		{name: "batch answered with a broken multipart", ans: answer{200, "multipart/mixed; boundary=b", "--b\r\nContent-Type: application/http\r\n\r\nnot http\r\n--b--", nil}, call: batch, class: ClassInvalidResponse},
		{name: "batch answered with too few parts", ans: answer{200, "multipart/mixed; boundary=b", "--b--", nil}, call: batch, class: ClassInvalidResponse},
		{name: "delta without deltaLink", ans: answer{200, "application/json", `{"value":[]}`, nil}, call: changes, class: ClassInvalidResponse},
		{name: "deleted entity without id", ans: answer{200, "application/json", `{"value":[{"@odata.context":"x/$deletedEntity","reason":"deleted"}],"@odata.deltaLink":"x"}`, nil}, call: changes, class: ClassInvalidResponse},
		{name: "WhoAmI without UserId", ans: answer{200, "application/json", `{}`, nil}, call: whoami, class: ClassInvalidResponse},
		{name: "metadata without names", ans: answer{200, "application/json", `{"Attributes":[]}`, nil}, call: metadata, class: ClassInvalidResponse},
		{name: "401 with empty body", ans: answer{401, "", "", map[string]string{"WWW-Authenticate": "Bearer"}}, call: retrieve, class: ClassUnauthorized},
		{name: "403 with HTML", ans: answer{403, "text/html", html, nil}, call: retrieve, class: ClassUnauthorized},
		{name: "429 with no body", ans: answer{429, "", "", map[string]string{"Retry-After": "3600"}}, call: retrieve, class: ClassThrottled, retryable: true},
		{name: "error JSON 400", ans: answer{400, "application/json", `{"error":{"code":"0x80048d19","message":"bad"}}`, nil}, call: create, class: ClassRejected},
		{name: "error JSON 404", ans: answer{404, "application/json; odata.metadata=minimal", `{"error":{"code":"0x80040217","message":"missing"}}`, nil}, call: retrieve, class: ClassNotFound},
		{name: "error JSON 412", ans: answer{412, "application/json", `{"error":{"code":"0x80060882","message":"version"}}`, nil}, call: upsert, class: ClassConflict},
		{name: "error JSON 500", ans: answer{500, "application/json", `{"error":{"code":"0x80040216","message":"boom"}}`, nil}, call: create, class: ClassUnavailable, retryable: true},
		{name: "400 with HTML", ans: answer{400, "text/html", html, nil}, call: create, class: ClassInvalidResponse},
		{name: "200 for a DELETE with a Dataverse error inside", ans: answer{302, "text/html", html, nil}, call: del, class: ClassInvalidResponse},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			hs := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				if tt.ans.ctype != "" {
					w.Header().Set("Content-Type", tt.ans.ctype)
				}
				for k, v := range tt.ans.header {
					w.Header().Set(k, v)
				}
				w.WriteHeader(tt.ans.status)
				_, _ = w.Write([]byte(tt.ans.body))
			}))
			defer hs.Close()
			c, err := New(Config{URL: hs.URL, MaxRetries: -1})
			if err != nil {
				t.Fatal(err)
			}
			c.http.CheckRedirect = func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }
			err = tt.call(c)
			if err == nil {
				t.Fatal("garbage was taken as a success")
			}
			e := wantClass(t, err, tt.class)
			if e.Retryable != tt.retryable {
				t.Fatalf("retryable = %v, want %v (%v)", e.Retryable, tt.retryable, err)
			}
		})
	}
}

var bg = context.Background()

func retrieve(c *Client) error {
	_, err := c.Retrieve(bg, ByID("contacts", "00000000-0000-0000-0000-000000000001"))
	return err
}
func list(c *Client) error {
	return c.RetrieveMultiple(bg, "contacts", Query{}, func(Record) error { return nil })
}
func create(c *Client) error { _, err := c.Create(bg, "contacts", Record{"lastname": "x"}); return err }
func upsert(c *Client) error {
	_, err := c.Upsert(bg, ByKey("contacts", "msemr_azurefhirid", "p"), Record{"lastname": "x"}, UpsertOptions{})
	return err
}
func del(c *Client) error {
	return c.Delete(bg, ByID("contacts", "00000000-0000-0000-0000-000000000001"), "")
}
func batch(c *Client) error {
	op, _ := CreateOp("contacts", Record{"lastname": "x"})
	_, err := c.ExecuteBatch(bg, Batch{Items: []BatchItem{{Op: &op}}})
	return err
}
func changes(c *Client) error {
	_, err := c.Changes(bg, ChangeQuery{Set: "contacts", PrimaryID: "contactid"}, func(Change) error { return nil })
	return err
}
func whoami(c *Client) error   { _, err := c.WhoAmI(bg); return err }
func metadata(c *Client) error { _, err := c.EntityDefinition(bg, "contact"); return err }
