package agentbench

import (
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
		"GET https://org.example/api/data/v9.2/contacts?$filter=Microsoft.Dynamics.CRM.In(PropertyName='contactid',PropertyValues=['a']) HTTP/1.1",
		"",
		"--batch_1--",
		"",
	}, "\r\n")
	var got []string
	innerRequests([]byte(body), func(method, target string) { got = append(got, opKind(method, target)) })
	want := []string{"upsert or update, contacts", "create, msemr_medicalidentifiers", "In query, contacts"}
	if strings.Join(got, "|") != strings.Join(want, "|") {
		t.Fatalf("operations %q, want %q", got, want)
	}

	k := newKindCounter(roundTripFunc(func(*http.Request) (*http.Response, error) { return &http.Response{StatusCode: 200}, nil }))
	req, _ := http.NewRequest(http.MethodPost, "https://org.example/api/data/v9.2/$batch", strings.NewReader(body))
	if _, err := k.RoundTrip(req); err != nil {
		t.Fatal(err)
	}
	n := k.snapshot()
	if n["request: $batch"] != 1 || n["op: upsert or update, contacts"] != 1 || n["op: create, msemr_medicalidentifiers"] != 1 || n["op: In query, contacts"] != 1 || len(n) != 4 {
		t.Fatalf("counts %v", n)
	}
}
