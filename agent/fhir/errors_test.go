package fhir

import (
	"context"
	"errors"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/Azure/azure-sdk-for-go/sdk/azcore"
	"github.com/Azure/azure-sdk-for-go/sdk/azcore/policy"
)

// stub answers every request with a fixed status, content type and body.
func stub(t *testing.T, status int, ctype, body string, hdr map[string]string) *Client {
	t.Helper()
	hs := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		for k, v := range hdr {
			w.Header().Set(k, v)
		}
		if ctype != "" {
			w.Header().Set("Content-Type", ctype)
		}
		w.WriteHeader(status)
		_, _ = w.Write([]byte(body))
	}))
	t.Cleanup(hs.Close)
	c, err := New(Config{BaseURL: hs.URL, Timeout: 5 * time.Second, MaxResponseBytes: 1 << 16})
	if err != nil {
		t.Fatal(err)
	}
	return c
}

const (
	fhirJSON  = "application/fhir+json"
	oo        = `{"resourceType":"OperationOutcome","issue":[{"severity":"error","code":"invalid","diagnostics":"birthDate 1980-02-29 of Alex Testperson is invalid"}]}`
	okPatient = `{"resourceType":"Patient","id":"p1","meta":{"versionId":"1"}}`
)

// TestResponsesAreClassified: every kind of answer a server can give ends
// in a success or an *Error of the right class, never a panic.
func TestResponsesAreClassified(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name       string
		status     int
		ctype      string
		body       string
		hdr        map[string]string
		op         string // read (default), search, delete
		wantErr    bool
		class      Class
		retryable  bool
		retryAfter time.Duration
		outcome    bool // Outcome text expected
	}{
		{name: "a Patient", status: 200, ctype: fhirJSON, body: okPatient},
		{name: "application/json is accepted", status: 200, ctype: "application/json; charset=utf-8", body: okPatient},
		{name: "HTML error page with 200", status: 200, ctype: "text/html", body: "<html><body>Sign in</body></html>", wantErr: true, class: ClassInvalidResponse},
		{name: "HTML labelled as JSON", status: 200, ctype: fhirJSON, body: "<html>oops</html>", wantErr: true, class: ClassInvalidResponse},
		{name: "truncated JSON", status: 200, ctype: fhirJSON, body: `{"resourceType":"Patient","id":"p1","na`, wantErr: true, class: ClassInvalidResponse},
		{name: "trailing garbage", status: 200, ctype: fhirJSON, body: okPatient + `}{`, wantErr: true, class: ClassInvalidResponse},
		{name: "wrong content type", status: 200, ctype: "text/plain", body: okPatient, wantErr: true, class: ClassInvalidResponse},
		{name: "no content type", status: 200, ctype: "", body: okPatient, wantErr: true, class: ClassInvalidResponse},
		{name: "200 with an OperationOutcome", status: 200, ctype: fhirJSON, body: oo, wantErr: true, class: ClassInvalidResponse, outcome: true},
		{name: "200 with another resource type", status: 200, ctype: fhirJSON, body: `{"resourceType":"Observation","id":"p1"}`, wantErr: true, class: ClassInvalidResponse},
		{name: "200 with a JSON array", status: 200, ctype: fhirJSON, body: `[{"resourceType":"Patient"}]`, wantErr: true, class: ClassInvalidResponse},
		{name: "200 with null", status: 200, ctype: fhirJSON, body: `null`, wantErr: true, class: ClassInvalidResponse},
		{name: "200 without resourceType", status: 200, ctype: fhirJSON, body: `{"id":"p1"}`, wantErr: true, class: ClassInvalidResponse},
		{name: "200 with an empty body", status: 200, ctype: fhirJSON, body: "", wantErr: true, class: ClassInvalidResponse},
		{name: "body over the limit", status: 200, ctype: fhirJSON, body: `{"resourceType":"Patient","text":"` + strings.Repeat("x", 1<<16) + `"}`, wantErr: true, class: ClassInvalidResponse},
		{name: "search answered with a Patient", op: "search", status: 200, ctype: fhirJSON, body: okPatient, wantErr: true, class: ClassInvalidResponse},
		{name: "search with entry not an array", op: "search", status: 200, ctype: fhirJSON, body: `{"resourceType":"Bundle","type":"searchset","entry":{}}`, wantErr: true, class: ClassInvalidResponse},
		{name: "search with a non-resource entry", op: "search", status: 200, ctype: fhirJSON, body: `{"resourceType":"Bundle","type":"searchset","entry":[{"resource":"x"}]}`, wantErr: true, class: ClassInvalidResponse},
		{name: "search with link not an array", op: "search", status: 200, ctype: fhirJSON, body: `{"resourceType":"Bundle","type":"searchset","link":"x"}`, wantErr: true, class: ClassInvalidResponse},
		{name: "delete with 204", op: "delete", status: 204},
		{name: "delete with an OperationOutcome", op: "delete", status: 200, ctype: fhirJSON, body: `{"resourceType":"OperationOutcome","issue":[{"severity":"information","code":"informational"}]}`},
		{name: "400 with an OperationOutcome", status: 400, ctype: fhirJSON, body: oo, wantErr: true, class: ClassRejected, outcome: true},
		{name: "422", status: 422, ctype: fhirJSON, body: oo, wantErr: true, class: ClassRejected, outcome: true},
		{name: "401", status: 401, wantErr: true, class: ClassUnauthorized},
		{name: "403 with HTML", status: 403, ctype: "text/html", body: "<h1>Forbidden</h1>", wantErr: true, class: ClassUnauthorized},
		{name: "404", status: 404, ctype: fhirJSON, body: oo, wantErr: true, class: ClassNotFound, outcome: true},
		{name: "410", status: 410, wantErr: true, class: ClassGone},
		{name: "409", status: 409, wantErr: true, class: ClassConflict},
		{name: "412", status: 412, ctype: fhirJSON, body: oo, wantErr: true, class: ClassConflict, outcome: true},
		{name: "429 with Retry-After seconds", status: 429, hdr: map[string]string{"Retry-After": "7"}, wantErr: true, class: ClassThrottled, retryable: true, retryAfter: 7 * time.Second},
		{name: "429 with a garbage Retry-After", status: 429, hdr: map[string]string{"Retry-After": "soon"}, wantErr: true, class: ClassThrottled, retryable: true},
		{name: "503 with Retry-After", status: 503, hdr: map[string]string{"Retry-After": "2"}, wantErr: true, class: ClassUnavailable, retryable: true, retryAfter: 2 * time.Second},
		{name: "502 HTML from a gateway", status: 502, ctype: "text/html", body: "<html>Bad Gateway</html>", wantErr: true, class: ClassUnavailable, retryable: true},
		{name: "500", status: 500, ctype: fhirJSON, body: oo, wantErr: true, class: ClassUnavailable, retryable: true, outcome: true},
		{name: "408", status: 408, wantErr: true, class: ClassUnavailable, retryable: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			c := stub(t, tt.status, tt.ctype, tt.body, tt.hdr)
			ctx := context.Background()
			var err error
			switch tt.op {
			case "search":
				_, err = c.Search(ctx, "Patient", nil)
			case "delete":
				err = c.Delete(ctx, "Patient", "p1")
			default:
				var r Resource
				r, err = c.Read(ctx, "Patient", "p1")
				if err == nil && r.ID() != "p1" {
					t.Fatalf("read returned %v", r)
				}
			}
			if (err != nil) != tt.wantErr {
				t.Fatalf("err = %v, wantErr %v", err, tt.wantErr)
			}
			if err == nil {
				return
			}
			fe := wantClass(t, err, tt.class)
			if fe.Retryable != tt.retryable || fe.RetryAfter != tt.retryAfter {
				t.Errorf("retryable %v after %v, want %v after %v", fe.Retryable, fe.RetryAfter, tt.retryable, tt.retryAfter)
			}
			if (fe.Outcome != "") != tt.outcome {
				t.Errorf("outcome %q, want present=%v", fe.Outcome, tt.outcome)
			}
			if strings.Contains(err.Error(), "Testperson") || strings.Contains(err.Error(), "1980") {
				t.Errorf("Error() carries outcome text (may be PHI): %s", err)
			}
		})
	}
}

func TestRetryAfterHTTPDate(t *testing.T) {
	t.Parallel()
	now := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	if got := parseRetryAfter(now.Add(90*time.Second).Format(http.TimeFormat), now); got != 90*time.Second {
		t.Errorf("HTTP-date Retry-After = %v, want 90s", got)
	}
	if got := parseRetryAfter(now.Add(-time.Hour).Format(http.TimeFormat), now); got != 0 {
		t.Errorf("past Retry-After = %v, want 0", got)
	}
}

func TestNetworkFailuresAreRetryable(t *testing.T) {
	t.Parallel()
	slow := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		select {
		case <-r.Context().Done():
		case <-time.After(5 * time.Second):
		}
	}))
	t.Cleanup(slow.Close)
	// A port nothing listens on: one the system just gave out and took
	// back. The slow server starts first, so it cannot be given this port
	// after it was closed (it once was, and "connection refused" was
	// answered 200 five seconds later).
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()

	tests := []struct {
		name string
		cfg  Config
	}{
		{"connection refused", Config{BaseURL: "http://" + addr}},
		{"timeout", Config{BaseURL: slow.URL, Timeout: 100 * time.Millisecond}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			c, err := New(tt.cfg)
			if err != nil {
				t.Fatal(err)
			}
			_, err = c.Read(context.Background(), "Patient", "p1")
			fe := wantClass(t, err, ClassUnavailable)
			if !fe.Retryable || fe.Status != 0 {
				t.Errorf("retryable %v status %d, want retryable with no status", fe.Retryable, fe.Status)
			}
		})
	}
}

func TestCallerCancellationIsNotAnEndpointFailure(t *testing.T) {
	t.Parallel()
	c := stub(t, 200, fhirJSON, okPatient, nil)
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	_, err := c.Read(ctx, "Patient", "p1")
	var fe *Error
	if !errors.Is(err, context.Canceled) || errors.As(err, &fe) {
		t.Fatalf("err = %v, want context.Canceled and no *Error", err)
	}
}

func TestNextLinkToAnotherServerIsRefused(t *testing.T) {
	t.Parallel()
	c := stub(t, 200, fhirJSON, `{"resourceType":"Bundle","type":"searchset","link":[{"relation":"next","url":"http://evil.example/Patient?page=2"}]}`, nil)
	p, err := c.Search(context.Background(), "Patient", nil)
	if err != nil {
		t.Fatal(err)
	}
	_, err = c.NextPage(context.Background(), p)
	wantClass(t, err, ClassInvalidResponse)
	last := &Page{}
	if _, err := c.NextPage(context.Background(), last); !errors.Is(err, ErrNoNextPage) {
		t.Errorf("NextPage on the last page: %v, want ErrNoNextPage", err)
	}
}

func TestNewValidates(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name    string
		cfg     Config
		wantErr bool
	}{
		{"http base", Config{BaseURL: "http://127.0.0.1:8080/fhir"}, false},
		{"https base", Config{BaseURL: "https://ws-fhir.fhir.azurehealthcareapis.com"}, false},
		{"empty", Config{}, true},
		{"relative", Config{BaseURL: "/fhir"}, true},
		{"ftp", Config{BaseURL: "ftp://x"}, true},
		{"two auths", Config{BaseURL: "http://x", BearerToken: "t", Credential: &fakeCred{}}, true},
		{"negative timeout", Config{BaseURL: "http://x", Timeout: -1}, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			_, err := New(tt.cfg)
			if (err != nil) != tt.wantErr {
				t.Errorf("err = %v, wantErr %v", err, tt.wantErr)
			}
		})
	}
}

type fakeCred struct {
	calls  atomic.Int32
	scopes atomic.Value
	err    error
}

func (f *fakeCred) GetToken(_ context.Context, o policy.TokenRequestOptions) (azcore.AccessToken, error) {
	f.calls.Add(1)
	f.scopes.Store(strings.Join(o.Scopes, " "))
	if f.err != nil {
		return azcore.AccessToken{}, f.err
	}
	return azcore.AccessToken{Token: "tok-from-cred", ExpiresOn: time.Now().Add(time.Hour)}, nil
}

func TestAuth(t *testing.T) {
	t.Parallel()
	var gotAuth atomic.Value
	hs := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		gotAuth.Store(r.Header.Get("Authorization"))
		w.Header().Set("Content-Type", fhirJSON)
		_, _ = w.Write([]byte(okPatient))
	}))
	t.Cleanup(hs.Close)
	ctx := context.Background()

	t.Run("none", func(t *testing.T) {
		c, _ := New(Config{BaseURL: hs.URL})
		if _, err := c.Read(ctx, "Patient", "p1"); err != nil {
			t.Fatal(err)
		}
		if got := gotAuth.Load(); got != "" {
			t.Errorf("Authorization = %q, want none", got)
		}
	})
	t.Run("static bearer", func(t *testing.T) {
		c, _ := New(Config{BaseURL: hs.URL, BearerToken: "s3cret"})
		if _, err := c.Read(ctx, "Patient", "p1"); err != nil {
			t.Fatal(err)
		}
		if got := gotAuth.Load(); got != "Bearer s3cret" {
			t.Errorf("Authorization = %q", got)
		}
	})
	t.Run("credential with the service scope, cached", func(t *testing.T) {
		cred := &fakeCred{}
		c, _ := New(Config{BaseURL: hs.URL + "/fhir", Credential: cred})
		for range 3 {
			if _, err := c.Read(ctx, "Patient", "p1"); err != nil {
				t.Fatal(err)
			}
		}
		if got := gotAuth.Load(); got != "Bearer tok-from-cred" {
			t.Errorf("Authorization = %q", got)
		}
		if n := cred.calls.Load(); n != 1 {
			t.Errorf("GetToken called %d times for 3 requests, want 1", n)
		}
		host := strings.Split(strings.TrimPrefix(hs.URL, "http://"), ":")[0]
		if got := cred.scopes.Load(); got != "https://"+host+"/.default" {
			t.Errorf("scope = %v", got)
		}
	})
	t.Run("credential failure is unauthorized", func(t *testing.T) {
		c, _ := New(Config{BaseURL: hs.URL, Credential: &fakeCred{err: errors.New("no identity")}})
		_, err := c.Read(ctx, "Patient", "p1")
		fe := wantClass(t, err, ClassUnauthorized)
		if fe.Retryable {
			t.Error("token failure should not be retryable")
		}
	})
}
