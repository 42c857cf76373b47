package crmserver

import (
	"bufio"
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"mime"
	"mime/multipart"
	"net/http"
	"strings"
	"testing"
)

// answerPart is one part of a $batch answer: a response, or a change set's
// responses.
type answerPart struct {
	contentID string
	status    int
	body      string
	changeSet []answerPart
}

func (p answerPart) String() string {
	if p.changeSet != nil {
		return fmt.Sprintf("changeset%v", p.changeSet)
	}
	if p.contentID != "" {
		return fmt.Sprintf("%d(id %s)", p.status, p.contentID)
	}
	return fmt.Sprint(p.status)
}

func readAnswer(t *testing.T, ctype string, body []byte) []answerPart {
	t.Helper()
	mt, params, err := mime.ParseMediaType(ctype)
	if err != nil || mt != "multipart/mixed" {
		t.Fatalf("answer type %q, want multipart/mixed: %s", ctype, body)
	}
	var read func(r io.Reader, boundary string) []answerPart
	read = func(r io.Reader, boundary string) []answerPart {
		mr := multipart.NewReader(r, boundary)
		out := []answerPart{}
		for {
			p, err := mr.NextPart()
			if err == io.EOF {
				return out
			}
			if err != nil {
				t.Fatalf("reading the answer: %v", err)
			}
			pt, pp, _ := mime.ParseMediaType(p.Header.Get("Content-Type"))
			if pt == "multipart/mixed" {
				out = append(out, answerPart{changeSet: read(p, pp["boundary"])})
				continue
			}
			resp, err := http.ReadResponse(bufio.NewReader(p), nil)
			if err != nil {
				t.Fatalf("reading a part: %v", err)
			}
			b, _ := io.ReadAll(resp.Body)
			out = append(out, answerPart{contentID: p.Header.Get("Content-ID"), status: resp.StatusCode, body: string(b)})
		}
	}
	return read(bytes.NewReader(body), params["boundary"])
}

// batchBody writes a $batch: each item is one request line plus JSON body
// ("POST contacts {...}"), or a change set of them (a []string).
func batchBody(items ...any) string {
	var b strings.Builder
	cid := 0
	op := func(s string, inChangeSet bool, boundary string) {
		b.WriteString("--" + boundary + "\r\nContent-Type: application/http\r\nContent-Transfer-Encoding: binary\r\n")
		if inChangeSet {
			cid++
			fmt.Fprintf(&b, "Content-ID: %d\r\n", cid)
		}
		f := strings.SplitN(s, " ", 3)
		fmt.Fprintf(&b, "\r\n%s /api/data/v9.2/%s HTTP/1.1\r\n", f[0], f[1])
		if len(f) == 3 {
			extra, body, _ := strings.Cut(f[2], "{")
			for _, h := range strings.Split(strings.TrimSpace(extra), ";") {
				if h != "" {
					b.WriteString(strings.Replace(h, "=", ": ", 1) + "\r\n")
				}
			}
			b.WriteString("Content-Type: application/json; type=entry\r\n\r\n{" + body + "\r\n")
		} else {
			b.WriteString("\r\n")
		}
	}
	for _, it := range items {
		switch x := it.(type) {
		case string:
			op(x, false, "batch_T")
		case []string:
			b.WriteString("--batch_T\r\nContent-Type: multipart/mixed; boundary=changeset_T\r\n\r\n")
			for _, s := range x {
				op(s, true, "changeset_T")
			}
			b.WriteString("--changeset_T--\r\n")
		}
	}
	b.WriteString("--batch_T--\r\n")
	return b.String()
}

// TestBatchFailureSemantics holds the sandbox's $batch to what Microsoft
// documents ("Execute batch operations using the Web API", Handling
// errors) and what Dataverse answers for a failed change set (the failing
// request's answer alone, with its Content-ID, in the change set's
// multipart; MicrosoftDocs/powerapps-docs issue 2843).
func TestBatchFailureSemantics(t *testing.T) {
	t.Parallel()
	const (
		good  = `POST contacts {"lastname":"Good"}`
		good2 = `POST contacts {"lastname":"Also good"}`
		bad   = `POST contacts {"lastname":"Bad","gendercode":99}`
	)
	tests := []struct {
		name       string
		prefer     string
		items      []any
		wantStatus int
		wantParts  string // answerPart.String of the parts
		wantRows   int    // contacts created
	}{
		{name: "failed change set stops the batch", items: []any{[]string{good, bad}, good2},
			wantStatus: 400, wantParts: "[changeset[400(id 2)]]", wantRows: 0},
		{name: "failed change set with continue-on-error", prefer: "odata.continue-on-error", items: []any{[]string{good, bad}, good2},
			wantStatus: 200, wantParts: "[changeset[400(id 2)] 204]", wantRows: 1},
		{name: "continue-on-error does not apply inside a change set", prefer: "odata.continue-on-error", items: []any{[]string{bad, good}},
			wantStatus: 200, wantParts: "[changeset[400(id 1)]]", wantRows: 0},
		{name: "committed change set then a failed request", items: []any{[]string{good, good2}, bad, good},
			wantStatus: 400, wantParts: "[changeset[204(id 1) 204(id 2)] 400]", wantRows: 2},
		{name: "single requests stop at the first failure", items: []any{good, bad, good2},
			wantStatus: 400, wantParts: "[204 400]", wantRows: 1},
		{name: "single requests with continue-on-error", prefer: "odata.continue-on-error", items: []any{good, bad, good2},
			wantStatus: 200, wantParts: "[204 400 204]", wantRows: 2},
		{name: "a 404 stops the batch with its status", items: []any{good, "GET contacts(00000000-0000-0000-0000-00000000abcd)", good2},
			wantStatus: 404, wantParts: "[204 404]", wantRows: 1},
		{name: "no failure", items: []any{good, []string{good2}},
			wantStatus: 200, wantParts: "[204 changeset[204(id 1)]]", wantRows: 2},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			s, hs := newServer(t, Options{})
			hdr := map[string]string{"Content-Type": "multipart/mixed; boundary=batch_T"}
			if tt.prefer != "" {
				hdr["Prefer"] = tt.prefer
			}
			resp, b := do(t, "POST", hs.URL+APIPath+"$batch", hdr, batchBody(tt.items...))
			parts := readAnswer(t, resp.Header.Get("Content-Type"), b)
			if resp.StatusCode != tt.wantStatus || fmt.Sprint(parts) != tt.wantParts {
				t.Fatalf("answer %d %v, want %d %s\n%s", resp.StatusCode, parts, tt.wantStatus, tt.wantParts, b)
			}
			if n := s.Count("contact"); n != tt.wantRows {
				t.Fatalf("%d contacts, want %d", n, tt.wantRows)
			}
			for _, p := range flatten(parts) {
				if p.status >= 400 {
					errorCode(t, []byte(p.body))
				}
			}
		})
	}
}

func flatten(ps []answerPart) []answerPart {
	var out []answerPart
	for _, p := range ps {
		if p.changeSet != nil {
			out = append(out, flatten(p.changeSet)...)
			continue
		}
		out = append(out, p)
	}
	return out
}

// TestBatchVersionMismatchInChangeSet: an update whose If-Match no longer
// matches fails its change set with 412 and the documented message.
func TestBatchVersionMismatchInChangeSet(t *testing.T) {
	t.Parallel()
	_, hs := newServer(t, Options{})
	resp, _ := do(t, "POST", hs.URL+APIPath+"contacts", map[string]string{"Content-Type": "application/json"}, `{"lastname":"Lee"}`)
	loc := resp.Header.Get("OData-EntityId")
	id := loc[strings.LastIndex(loc, "(")+1 : len(loc)-1]
	body := batchBody([]string{`PATCH contacts(` + id + `) If-Match=W/"999999";{"lastname":"Li"}`})
	resp, b := do(t, "POST", hs.URL+APIPath+"$batch", map[string]string{"Content-Type": "multipart/mixed; boundary=batch_T"}, body)
	parts := readAnswer(t, resp.Header.Get("Content-Type"), b)
	if resp.StatusCode != 412 || fmt.Sprint(parts) != "[changeset[412(id 1)]]" {
		t.Fatalf("answer %d %v: %s", resp.StatusCode, parts, b)
	}
	if !strings.Contains(parts[0].changeSet[0].body, "The version of the existing record doesn't match the RowVersion property provided.") {
		t.Fatalf("412 body %s", parts[0].changeSet[0].body)
	}
}

// TestErrorAnnotations: the documented error annotations are added when
// the request prefers them, to a plain request's error and to a batch
// part's, and only those named.
func TestErrorAnnotations(t *testing.T) {
	t.Parallel()
	_, hs := newServer(t, Options{})
	const bad = `{"lastname":"Bad","gendercode":99}`
	tests := []struct {
		name      string
		prefer    string
		wantHelp  bool
		wantInner bool
	}{
		{name: "none asked", prefer: "", wantHelp: false, wantInner: false},
		{name: "all", prefer: `odata.include-annotations="*"`, wantHelp: true, wantInner: true},
		{name: "a quoted list naming one", prefer: `odata.include-annotations="OData.Community.Display.V1.FormattedValue,Microsoft.PowerApps.CDS.HelpLink"`, wantHelp: true},
		{name: "a prefix wildcard", prefer: `return=representation,odata.include-annotations="Microsoft.PowerApps.CDS.*"`, wantHelp: true, wantInner: true},
	}
	check := func(t *testing.T, body string, wantHelp, wantInner bool) {
		t.Helper()
		var env struct {
			Error map[string]any `json:"error"`
		}
		if err := json.Unmarshal([]byte(body), &env); err != nil {
			t.Fatalf("error body %s: %v", body, err)
		}
		help, _ := env.Error["@Microsoft.PowerApps.CDS.HelpLink"].(string)
		_, inner := env.Error["@Microsoft.PowerApps.CDS.InnerError.Message"]
		if (help != "") != wantHelp || inner != wantInner {
			t.Fatalf("annotations in %s: help %q inner %v; want %v %v", body, help, inner, wantHelp, wantInner)
		}
		if wantHelp && !strings.Contains(help, "error=Microsoft.Crm.CrmException%3a"+strings.TrimPrefix(env.Error["code"].(string), "0x")) {
			t.Fatalf("help link %s does not name the code", help)
		}
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			hdr := map[string]string{"Content-Type": "application/json"}
			if tt.prefer != "" {
				hdr["Prefer"] = tt.prefer
			}
			resp, b := do(t, "POST", hs.URL+APIPath+"contacts", hdr, bad)
			if resp.StatusCode != 400 {
				t.Fatalf("status %d", resp.StatusCode)
			}
			check(t, string(b), tt.wantHelp, tt.wantInner)
			hdr["Content-Type"] = "multipart/mixed; boundary=batch_T"
			resp, b = do(t, "POST", hs.URL+APIPath+"$batch", hdr, batchBody([]string{"POST contacts " + bad}))
			parts := readAnswer(t, resp.Header.Get("Content-Type"), b)
			if len(parts) != 1 || len(parts[0].changeSet) != 1 {
				t.Fatalf("parts %v", parts)
			}
			check(t, parts[0].changeSet[0].body, tt.wantHelp, tt.wantInner)
		})
	}
}
