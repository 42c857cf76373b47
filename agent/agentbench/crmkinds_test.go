package agentbench

import (
	"bufio"
	"io"
	"net/http"
	"strings"
	"testing"
)

// A $batch body as the Web API takes it ("Execute batch operations using
// the Web API": a change set of requests, each an HTTP request line in its
// own MIME part): each inner request line is counted as an operation of
// its kind, and nothing else in the body is.
func TestKindCounterCountsBatchOperations(t *testing.T) {
	body := strings.Join([]string{
		"--batch_1",
		"Content-Type: multipart/mixed; boundary=changeset_1",
		"",
		"--changeset_1",
		"Content-Type: application/http",
		"Content-Transfer-Encoding: binary",
		"Content-ID: 1",
		"",
		"PATCH https://org.example/api/data/v9.2/contacts(msemr_azurefhirid='p1') HTTP/1.1",
		"Content-Type: application/json",
		"",
		`{"firstname":"GET x HTTP/1.1"}`,
		"--changeset_1",
		"Content-Type: application/http",
		"",
		"POST https://org.example/api/data/v9.2/msemr_medicalidentifiers HTTP/1.1",
		"",
		"{}",
		"--changeset_1--",
		"--batch_1",
		"Content-Type: application/http",
		"",
		// A grouped query longer than the counter's buffer.
		"GET https://org.example/api/data/v9.2/contacts?$filter=Microsoft.Dynamics.CRM.In(PropertyName='contactid',PropertyValues=['a'" +
			strings.Repeat(",'4b1a0000-0000-0000-0000-000000000001'", 120) + "]) HTTP/1.1",
		"",
		"--batch_1--",
		"",
	}, "\r\n")
	var got []string
	innerRequests(bufio.NewReader(strings.NewReader(body)), nil, func(method, target string) { got = append(got, opKind(method, target)) })
	want := []string{"upsert or update, contacts", "create, msemr_medicalidentifiers", "In query, contacts"}
	if strings.Join(got, "|") != strings.Join(want, "|") {
		t.Fatalf("operations %q, want %q", got, want)
	}

	// The end of a line longer than the reader's buffer is not a line of
	// its own, even when it reads like a request line; a request line
	// longer than the buffer is one.
	var longs []string
	longQuery := "GET contacts?$filter=" + strings.Repeat("x", 40) + " HTTP/1.1\r\n"
	innerRequests(bufio.NewReaderSize(strings.NewReader(strings.Repeat("x", 32)+"GET contacts HTTP/1.1\r\nGET accounts HTTP/1.1\r\n"+longQuery), 32),
		nil, func(method, target string) { longs = append(longs, method+" "+target) })
	if want := "GET accounts|GET contacts?$filter=" + strings.Repeat("x", 40); strings.Join(longs, "|") != want {
		t.Errorf("lines read %q, want %q", longs, want)
	}

	// A line longer than the counter's buffer, which it skips whole,
	// ending in what would be a request line if it stood alone.
	long := strings.Repeat("x", 9000) + " GET contacts HTTP/1.1"
	body = strings.Replace(body, "{}", long, 1)
	// The next transport gets the whole body, read through the body the
	// request was made with (GetBody) or, when it has none, through the
	// copy the counter read it into.
	k := newKindCounter(roundTripFunc(func(r *http.Request) (*http.Response, error) {
		sent, err := io.ReadAll(r.Body)
		if err != nil || string(sent) != body {
			t.Errorf("the request sent %d bytes of its %d (%v)", len(sent), len(body), err)
		}
		return &http.Response{StatusCode: 200}, nil
	}))
	for i, getBody := range []bool{true, false} {
		req, _ := http.NewRequest(http.MethodPost, "https://org.example/api/data/v9.2/$batch", strings.NewReader(body))
		if !getBody {
			req.GetBody = nil
		}
		if _, err := k.RoundTrip(req); err != nil {
			t.Fatal(err)
		}
		n := k.snapshot()
		c := int64(i + 1)
		if n["request: $batch"] != c || n["op: upsert or update, contacts"] != c || n["op: create, msemr_medicalidentifiers"] != c || n["op: In query, contacts"] != c || len(n) != 4 {
			t.Fatalf("with GetBody %t: counts %v", getBody, n)
		}
	}
}
