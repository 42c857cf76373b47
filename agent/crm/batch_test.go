package crm

import (
	"bufio"
	"bytes"
	"context"
	"io"
	"net/http"
	"reflect"
	"strings"
	"testing"

	"github.com/fhirsync/fhirsync/sandbox/crmserver"
)

// TestBatchFailureAttribution runs failing batches against the sandbox CRM
// and checks that each failure names its request (position, Content-ID)
// and keeps the CRM's status, code and message, and that the other
// requests say what happened to them.
func TestBatchFailureAttribution(t *testing.T) {
	t.Parallel()
	good := func(name string) Op { op, _ := CreateOp("contacts", Record{"lastname": name}); return op }
	bad := func() Op { op, _ := CreateOp("contacts", Record{"lastname": "Bad", "gendercode": 99}); return op }
	type want struct {
		status     int
		class      Class
		request    int
		contentID  string
		rolledBack bool
		skipped    bool
	}
	ok := want{status: 204}
	tests := []struct {
		name     string
		batch    Batch
		want     []want
		wantRows int
	}{
		{name: "failed change set, batch stops", batch: Batch{Items: []BatchItem{{ChangeSet: []Op{good("A"), bad(), good("B")}}, single(good("C"))}},
			want: []want{
				{class: ClassRejected, request: 2, contentID: "2", rolledBack: true},
				{status: 400, class: ClassRejected, request: 2, contentID: "2", rolledBack: true},
				{class: ClassRejected, request: 2, contentID: "2", rolledBack: true},
				{skipped: true},
			}},
		{name: "failed change set, continue on error", batch: Batch{ContinueOnError: true, Items: []BatchItem{single(good("A")), {ChangeSet: []Op{bad(), good("B")}}, single(good("C"))}},
			want: []want{
				ok,
				{status: 400, class: ClassRejected, request: 2, contentID: "1", rolledBack: true},
				{class: ClassRejected, request: 2, contentID: "1", rolledBack: true},
				ok,
			}, wantRows: 2},
		{name: "single request fails, batch stops", batch: Batch{Items: []BatchItem{single(good("A")), single(bad()), single(good("B"))}},
			want: []want{ok, {status: 400, class: ClassRejected, request: 2}, {skipped: true}}, wantRows: 1},
		{name: "update of a missing row", batch: Batch{ContinueOnError: true, Items: []BatchItem{single(DeleteOp(ByID("contacts", "00000000-0000-0000-0000-00000000abcd"), "")), single(good("A"))}},
			want: []want{{status: 404, class: ClassNotFound, request: 1}, ok}, wantRows: 1},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			srv, c := sandbox(t, crmserver.Options{}, Config{})
			res, err := c.ExecuteBatch(context.Background(), tt.batch)
			if err != nil {
				t.Fatalf("the batch as a whole failed: %v", err)
			}
			if len(res) != len(tt.want) {
				t.Fatalf("%d results, want %d", len(res), len(tt.want))
			}
			for i, w := range tt.want {
				r := res[i]
				if r.Skipped != w.skipped || r.RolledBack != w.rolledBack || (w.status != 0 && r.Status != w.status) {
					t.Errorf("request %d: status %d skipped %v rolled back %v; want %+v", i+1, r.Status, r.Skipped, r.RolledBack, w)
					continue
				}
				if w.class == "" {
					if r.Err != nil {
						t.Errorf("request %d: unexpected error %v", i+1, r.Err)
					}
					continue
				}
				e := r.Err
				if e == nil || e.Class != w.class || e.Request != w.request || e.ContentID != w.contentID || e.Code == "" || e.Message == "" {
					t.Errorf("request %d: error %+v; want class %s naming request %d (Content-ID %q) with the CRM's code and message", i+1, e, w.class, w.request, w.contentID)
					continue
				}
				if e.RolledBack != (w.rolledBack && w.status == 0) {
					t.Errorf("request %d: RolledBack on its error = %v", i+1, e.RolledBack)
				}
				if s := e.Error(); strings.Contains(s, "invalid_response") || !strings.Contains(s, "batch request") {
					t.Errorf("request %d: error text %q", i+1, s)
				}
			}
			if n := srv.Count("contact"); n != tt.wantRows {
				t.Errorf("%d contacts written, want %d", n, tt.wantRows)
			}
		})
	}
}

// TestBatchAnswerShapes decodes failed change sets in the shapes a server
// may answer them: the OData specification's single response, Dataverse's
// change set holding only the failing response, with the batch's own
// status 200 or the failure's.
func TestBatchAnswerShapes(t *testing.T) {
	t.Parallel()
	const failing = "Content-Type: application/http\r\nContent-Transfer-Encoding: binary\r\nContent-ID: 2\r\n\r\n" +
		"HTTP/1.1 412 Precondition Failed\r\nContent-Type: application/json; odata.metadata=minimal\r\n\r\n" +
		`{"error":{"code":"0x80060882","message":"The version of the existing record doesn't match the RowVersion property provided."}}` + "\r\n"
	odata := "--b\r\n" + failing + "--b--\r\n"
	dataverse := "--b\r\nContent-Type: multipart/mixed; boundary=cs\r\n\r\n--cs\r\n" + failing + "--cs--\r\n--b--\r\n"
	tests := []struct {
		name   string
		status int
		ctype  string
		body   string
	}{
		{name: "single part, batch 200", status: 200, ctype: "multipart/mixed; boundary=b", body: odata},
		{name: "single part, batch 412", status: 412, ctype: "multipart/mixed; boundary=b", body: odata},
		{name: "change set of one, batch 412", status: 412, ctype: "multipart/mixed; boundary=b", body: dataverse},
		{name: "change set of one, no content type", status: 400, body: dataverse},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			h := http.Header{}
			if tt.ctype != "" {
				h.Set("Content-Type", tt.ctype)
			}
			parts, err := decodeBatch("test", result{status: tt.status, header: h, body: []byte(tt.body)})
			if err != nil {
				t.Fatal(err)
			}
			a, b := Op{Method: "PATCH", Path: "contacts(1)", ContentID: "1"}, Op{Method: "PATCH", Path: "contacts(2)", ContentID: "2"}
			later := Op{Method: "POST", Path: "contacts"}
			res, err := matchBatch("test", Batch{Items: []BatchItem{{ChangeSet: []Op{a, b}}, {Op: &later}}}, tt.status, parts)
			if err != nil {
				t.Fatal(err)
			}
			e := res[1].Err
			if e == nil || e.Class != ClassConflict || e.Status != 412 || e.Code != "0x80060882" || e.Request != 2 || e.ContentID != "2" || res[1].Status != 412 {
				t.Fatalf("failing request: %+v / %+v", res[1], e)
			}
			if !res[0].RolledBack || res[0].Err == nil || !res[0].Err.RolledBack || res[0].Err.Request != 2 {
				t.Fatalf("rolled-back request: %+v / %+v", res[0], res[0].Err)
			}
			if !res[2].Skipped {
				t.Fatalf("later request: %+v, want skipped", res[2])
			}
		})
	}
	// an error status on a batch where nothing failed is not a Dataverse answer
	ok := "--b\r\nContent-Type: application/http\r\n\r\nHTTP/1.1 204 No Content\r\n\r\n\r\n--b--\r\n"
	parts, err := decodeBatch("test", result{status: 400, header: http.Header{"Content-Type": {"multipart/mixed; boundary=b"}}, body: []byte(ok)})
	if err != nil {
		t.Fatal(err)
	}
	op := Op{Method: "POST", Path: "contacts"}
	if _, err := matchBatch("test", Batch{Items: []BatchItem{{Op: &op}}}, 400, parts); err == nil {
		t.Fatal("a 400 batch answer without a failed request was accepted")
	} else {
		wantClass(t, err, ClassInvalidResponse)
	}
}

// FuzzDecodeBatchResponse feeds the batch decoder arbitrary answers,
// seeded with every multipart answer of the conformance corpus: decoding
// never panics, and whatever it accepts pairs with a batch of its size or
// is refused as invalid_response.
func FuzzDecodeBatchResponse(f *testing.F) {
	seeds := webapiAnswers(f, "batch-")
	if len(seeds) == 0 {
		f.Fatal("no batch answers in the corpus")
	}
	for _, s := range seeds {
		raw := readCorpusFile(f, s)
		a, err := readPrinted(raw)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(a.status, a.header.Get("Content-Type"), a.body)
	}
	f.Fuzz(func(t *testing.T, status int, ctype string, body []byte) {
		h := http.Header{}
		if ctype != "" {
			h.Set("Content-Type", ctype)
		}
		parts, err := decodeBatch("fuzz", result{status: status, header: h, body: body})
		if err != nil {
			if e, ok := AsError(err); !ok || e.Class != ClassInvalidResponse {
				t.Fatalf("decoding error %v is not invalid_response", err)
			}
			return
		}
		n := 0
		for _, p := range parts {
			n += max(1, len(p.changeSet))
		}
		var b Batch
		for range min(n, 50) {
			op := Op{Method: "POST", Path: "contacts"}
			b.Items = append(b.Items, BatchItem{Op: &op})
		}
		res, err := matchBatch("fuzz", b, status, parts)
		if err != nil {
			if e, ok := AsError(err); !ok || e.Class != ClassInvalidResponse {
				t.Fatalf("matching error %v is not invalid_response", err)
			}
			return
		}
		if len(res) != b.size() {
			t.Fatalf("%d results for %d requests", len(res), b.size())
		}
		for i, r := range res {
			if r.Err != nil && r.Err.Request != i+1 && !r.RolledBack {
				t.Fatalf("result %d names request %d", i+1, r.Err.Request)
			}
			if r.Err == nil && !r.Skipped && (r.Status < 200 || r.Status > 299) {
				t.Fatalf("result %d: status %d without an error", i+1, r.Status)
			}
		}
	})
}

// TestInnerThrottleLooksPastTextInABody: the status line of a throttled
// part is found even when an earlier part's body quotes the same text.
func TestInnerThrottleLooksPastTextInABody(t *testing.T) {
	body := []byte("--batchresponse_1\r\nContent-Type: application/http\r\n\r\n" +
		"HTTP/1.1 400 Bad Request\r\nContent-Type: application/json\r\n\r\n" +
		`{"error":{"message":"upstream said HTTP/1.1 429 earlier"}}` + "\r\n" +
		"--batchresponse_1\r\nContent-Type: application/http\r\n\r\n" +
		"HTTP/1.1 429 Too Many Requests\r\nRetry-After: 7\r\n\r\n\r\n--batchresponse_1--\r\n")
	h, ok := innerThrottle(body)
	if !ok || h.Get("Retry-After") != "7" {
		t.Fatalf("innerThrottle = %v, %v; want the second part's Retry-After 7", h, ok)
	}
	if _, ok := innerThrottle([]byte(`{"error":{"message":"quoted HTTP/1.1 429"}}`)); ok {
		t.Fatal("text inside a body was taken for a throttled part")
	}
}

// FuzzPartResponseMatchesReadingIt: a batch part's response as
// partResponse reads it (its body a slice of the part) has the status,
// headers and body that reading the part through net/http and io.ReadAll
// gives, and fails where that fails. Seeds: testdata/fuzz.
func FuzzPartResponseMatchesReadingIt(f *testing.F) {
	f.Fuzz(func(t *testing.T, raw []byte) {
		body, resp, err := partResponse(raw)
		want, werr := http.ReadResponse(bufio.NewReader(bytes.NewReader(raw)), nil)
		var wantBody []byte
		if werr == nil {
			wantBody, werr = io.ReadAll(want.Body)
			want.Body.Close()
		}
		if (err != nil) != (werr != nil) {
			t.Fatalf("error %v, reading it through net/http: %v", err, werr)
		}
		if err != nil {
			return
		}
		if resp.StatusCode != want.StatusCode || !reflect.DeepEqual(resp.Header, want.Header) || !bytes.Equal(body, wantBody) {
			t.Fatalf("read %d %v %q, want %d %v %q", resp.StatusCode, resp.Header, body, want.StatusCode, want.Header, wantBody)
		}
	})
}
