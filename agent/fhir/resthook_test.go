package fhir

import (
	"errors"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
)

func TestRestHook(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name     string
		method   string
		path     string
		ctype    string
		auth     string
		body     string
		status   int
		want     string // notices
		wantPing bool
	}{
		{name: "id-only to endpoint/Type/id", method: "POST", path: "/hook/Patient/p1", status: 200, want: "Patient/p1@:changed"},
		{name: "empty ping", method: "POST", path: "/hook", status: 200, wantPing: true},
		{name: "full resource PUT to endpoint/Type/id", method: "PUT", path: "/hook/Patient/p1", ctype: fhirJSON,
			body: `{"resourceType":"Patient","id":"p1","meta":{"versionId":"4","lastUpdated":"2026-01-01T00:00:00Z"}}`, status: 200, want: "Patient/p1@4:changed"},
		{name: "full resource POST to the endpoint", method: "POST", path: "/hook", ctype: "application/json",
			body: `{"resourceType":"Observation","id":"o1","meta":{"versionId":"2"}}`, status: 200, want: "Observation/o1@2:changed"},
		{name: "Bundle of changes with a deletion", method: "POST", path: "/hook", ctype: fhirJSON,
			body: `{"resourceType":"Bundle","type":"history","entry":[
				{"fullUrl":"http://s/Parameters/x","resource":{"resourceType":"Parameters","id":"x"}},
				{"fullUrl":"http://s/Patient/p1/_history/3","resource":{"resourceType":"Patient","id":"p1","meta":{"versionId":"3"}}},
				{"fullUrl":"http://s/Patient/p2","request":{"method":"DELETE","url":"Patient/p2"},"response":{"status":"204","etag":"W/\"5\""}}]}`,
			status: 200, want: "Patient/p1@3:changed Patient/p2@5:deleted"},
		{name: "Subscription body is a ping", method: "POST", path: "/hook", ctype: fhirJSON,
			body: `{"resourceType":"Subscription","id":"s1","status":"active"}`, status: 200, wantPing: true},
		{name: "path and body disagree", method: "PUT", path: "/hook/Patient/p1", ctype: fhirJSON,
			body: `{"resourceType":"Patient","id":"p2"}`, status: 400},
		{name: "resource without id", method: "POST", path: "/hook", ctype: fhirJSON, body: `{"resourceType":"Patient"}`, status: 400},
		{name: "garbage", method: "POST", path: "/hook", ctype: fhirJSON, body: `{"resourceType":"Pat`, status: 400},
		{name: "HTML", method: "POST", path: "/hook", ctype: "text/html", body: `<html></html>`, status: 415},
		{name: "OperationOutcome", method: "POST", path: "/hook", ctype: fhirJSON, body: `{"resourceType":"OperationOutcome","issue":[]}`, status: 400},
		{name: "GET", method: "GET", path: "/hook", status: 405},
		{name: "too large", method: "POST", path: "/hook", ctype: fhirJSON, body: `{"resourceType":"Patient","id":"p1","x":"` + strings.Repeat("a", 2048) + `"}`, status: 413},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			q := &fakeQueue{}
			var pinged atomic.Bool
			h, err := NewRestHook(RestHookConfig{Queue: q, Ping: func() { pinged.Store(true) }, MaxBodyBytes: 1024})
			if err != nil {
				t.Fatal(err)
			}
			req := httptest.NewRequest(tt.method, tt.path, strings.NewReader(tt.body))
			if tt.ctype != "" {
				req.Header.Set("Content-Type", tt.ctype)
			}
			rec := httptest.NewRecorder()
			h.ServeHTTP(rec, req)
			if rec.Code != tt.status {
				t.Fatalf("status %d (%s), want %d", rec.Code, rec.Body, tt.status)
			}
			if got := summary(q.notices(t)); got != tt.want {
				t.Errorf("notices %q, want %q", got, tt.want)
			}
			if pinged.Load() != tt.wantPing {
				t.Errorf("ping = %v, want %v", pinged.Load(), tt.wantPing)
			}
			for _, n := range q.notices(t) {
				if n.Origin != "rest-hook" || n.ChangedAt.IsZero() {
					t.Errorf("notice %+v lacks origin or time", n)
				}
			}
		})
	}
}

func TestRestHookAuthAndQueueFailure(t *testing.T) {
	t.Parallel()
	q := &fakeQueue{}
	h, err := NewRestHook(RestHookConfig{Queue: q, Authorization: "Bearer hook-secret"})
	if err != nil {
		t.Fatal(err)
	}
	send := func(auth string) int {
		req := httptest.NewRequest("POST", "/Patient/p1", nil)
		if auth != "" {
			req.Header.Set("Authorization", auth)
		}
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, req)
		return rec.Code
	}
	if c := send(""); c != http.StatusUnauthorized {
		t.Errorf("without the header: %d", c)
	}
	if c := send("Bearer wrong"); c != http.StatusUnauthorized {
		t.Errorf("wrong header: %d", c)
	}
	if c := send("Bearer hook-secret"); c != http.StatusOK || len(q.notices(t)) != 1 {
		t.Errorf("right header: %d, %d notices", c, len(q.notices(t)))
	}
	q.fail = errors.New("down")
	if c := send("Bearer hook-secret"); c != http.StatusServiceUnavailable {
		t.Errorf("queue down: %d, want 503 so the server retries", c)
	}
	if _, err := NewRestHook(RestHookConfig{}); err == nil {
		t.Error("NewRestHook without a queue succeeded")
	}
}
