package main

import (
	"bytes"
	"context"
	"errors"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
)

func TestHealthcheck(t *testing.T) {
	t.Parallel()
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch r.URL.Path {
		case "/readyz":
			_, _ = w.Write([]byte("ready\n"))
		case "/down":
			w.WriteHeader(http.StatusServiceUnavailable)
			_, _ = w.Write([]byte("not ready: schema version 3, want 4\n"))
		case "/moved":
			http.Redirect(w, r, "/readyz", http.StatusFound)
		default:
			http.NotFound(w, r)
		}
	}))
	t.Cleanup(srv.Close)
	closed := httptest.NewServer(http.NotFoundHandler())
	closedURL := closed.URL
	closed.Close()

	tests := []struct {
		name    string
		args    []string
		env     map[string]string
		wantOut string
		wantErr string
		usage   bool
	}{
		{name: "ready", args: []string{"--url", srv.URL + "/readyz"}, wantOut: "answered 200: ready"},
		{name: "port from FHIRSYNC_LISTEN", env: map[string]string{"FHIRSYNC_LISTEN": "0.0.0.0:" + srv.URL[strings.LastIndex(srv.URL, ":")+1:]}, wantOut: "/readyz answered 200: ready"},
		{name: "not ready", args: []string{"--url", srv.URL + "/down"}, wantErr: "answered 503: not ready: schema version 3, want 4"},
		{name: "redirect is not followed", args: []string{"--url", srv.URL + "/moved"}, wantErr: "answered 302"},
		{name: "nothing listening", args: []string{"--url", closedURL + "/readyz"}, wantErr: "connect"},
		{name: "not an http URL", args: []string{"--url", "file:///etc/passwd"}, wantErr: "is not an http or https URL", usage: true},
		{name: "argument", args: []string{"extra"}, wantErr: "takes no arguments", usage: true},
		{name: "zero timeout", args: []string{"--timeout", "0s"}, wantErr: "--timeout must be positive", usage: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			var stdout, stderr bytes.Buffer
			err := run(context.Background(), append([]string{"healthcheck"}, tt.args...), envFrom(tt.env), &stdout, &stderr)
			if tt.wantErr == "" {
				if err != nil {
					t.Fatalf("healthcheck: %v", err)
				}
				if !strings.Contains(stdout.String(), tt.wantOut) {
					t.Fatalf("stdout = %q, want it to contain %q", stdout.String(), tt.wantOut)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
				t.Fatalf("err = %v, want one containing %q", err, tt.wantErr)
			}
			var ue *usageError
			if isUsage := errors.As(err, &ue); isUsage != tt.usage {
				t.Fatalf("usage error = %v, want %v (%v)", isUsage, tt.usage, err)
			}
		})
	}
}

func TestDefaultHealthURL(t *testing.T) {
	t.Parallel()
	for listen, want := range map[string]string{
		"":              "http://127.0.0.1:8080/readyz",
		"0.0.0.0:9000":  "http://127.0.0.1:9000/readyz",
		"[::]:8443":     "http://127.0.0.1:8443/readyz",
		":7000":         "http://127.0.0.1:7000/readyz",
		"not-an-addr":   "http://127.0.0.1:8080/readyz",
		"10.0.0.5:8081": "http://127.0.0.1:8081/readyz",
	} {
		if got := defaultHealthURL(listen); got != want {
			t.Errorf("defaultHealthURL(%q) = %q, want %q", listen, got, want)
		}
	}
}
