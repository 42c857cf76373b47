package main

import (
	"bufio"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"io"
	"math/big"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// TestSlowClientsCutOff: a client trickling its headers, or its body, is
// disconnected after the server's timeouts instead of holding the
// connection.
func TestSlowClientsCutOff(t *testing.T) {
	t.Parallel()
	bodyErr := make(chan error, 1)
	srv := newHTTPServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_, err := io.ReadAll(r.Body)
		bodyErr <- err
	}), serverTimeouts{Header: 300 * time.Millisecond, Read: 600 * time.Millisecond, Write: time.Second, Idle: time.Second})
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go func() { _ = srv.Serve(ln) }()
	t.Cleanup(func() { _ = srv.Close() })

	// trickle writes s a byte every 100ms until the connection fails, and
	// reports how long the server kept it.
	trickle := func(conn net.Conn, s string) time.Duration {
		start := time.Now()
		for i := 0; ; i++ {
			if time.Since(start) > 5*time.Second {
				t.Fatal("the server kept a slow client for 5s")
			}
			if _, err := conn.Write([]byte{s[i%len(s)]}); err != nil {
				return time.Since(start)
			}
			// A closed connection shows on the next read.
			_ = conn.SetReadDeadline(time.Now().Add(100 * time.Millisecond))
			if _, err := conn.Read(make([]byte, 1)); err != nil && !errors.Is(err, os.ErrDeadlineExceeded) {
				return time.Since(start)
			}
		}
	}

	t.Run("headers", func(t *testing.T) {
		conn, err := net.Dial("tcp", ln.Addr().String())
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close()
		if _, err := conn.Write([]byte("GET / HTTP/1.1\r\nHost: x\r\n")); err != nil {
			t.Fatal(err)
		}
		if held := trickle(conn, "X-Slow: aaaa\r\n"); held > 2*time.Second {
			t.Errorf("a slow header was held for %v, want about 300ms", held)
		}
	})
	t.Run("body", func(t *testing.T) {
		conn, err := net.Dial("tcp", ln.Addr().String())
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close()
		if _, err := conn.Write([]byte("POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\n")); err != nil {
			t.Fatal(err)
		}
		trickle(conn, "a")
		select {
		case err := <-bodyErr:
			if err == nil {
				t.Error("the handler read a slow body to the end")
			}
		case <-time.After(3 * time.Second):
			t.Error("the handler's read of a slow body did not time out")
		}
	})
}

// writeTestCert writes a self-signed certificate for 127.0.0.1 and its key
// as PEM files in dir.
func writeTestCert(t *testing.T, dir string) (certFile, keyFile string) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "fhirsync test"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		IPAddresses: []net.IP{net.IPv4(127, 0, 0, 1)}, KeyUsage: x509.KeyUsageDigitalSignature,
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	kb, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	certFile, keyFile = filepath.Join(dir, "cert.pem"), filepath.Join(dir, "key.pem")
	if err := os.WriteFile(certFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(keyFile, pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: kb}), 0o600); err != nil {
		t.Fatal(err)
	}
	return certFile, keyFile
}

// TestServeTLSAndSeparateMetrics: with the TLS files, listen speaks HTTPS
// only; with metrics_listen, /metrics is served there and not on listen.
func TestServeTLSAndSeparateMetrics(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	certFile, keyFile := writeTestCert(t, dir)
	env := map[string]string{"FHIRSYNC_DATA_DIR": dir, "FHIRSYNC_LISTEN": freePort(t), "FHIRSYNC_METRICS_LISTEN": freePort(t),
		"FHIRSYNC_TLS_CERT_FILE": certFile, "FHIRSYNC_TLS_KEY_FILE": keyFile}
	ctx, cancel := context.WithCancel(context.Background())
	var stderr syncBuffer
	done := make(chan error, 1)
	go func() { done <- run(ctx, []string{"serve"}, envFrom(env), io.Discard, &stderr) }()
	defer func() {
		cancel()
		select {
		case <-done:
		case <-time.After(30 * time.Second):
			t.Error("serve did not stop")
		}
	}()

	metrics := "http://" + env["FHIRSYNC_METRICS_LISTEN"]
	waitFor(t, metrics+"/metrics", done, &stderr)
	if code, body := get(t, metrics+"/metrics"); code != http.StatusOK || !strings.Contains(body, "fhirsync_build_info") {
		t.Errorf("GET metrics_listen /metrics = %d %.100q", code, body)
	}
	if code, _ := get(t, metrics+"/healthz"); code != http.StatusNotFound {
		t.Errorf("metrics_listen serves /healthz: %d", code)
	}

	pool := x509.NewCertPool()
	pem, _ := os.ReadFile(certFile)
	pool.AppendCertsFromPEM(pem)
	c := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool}}}
	base := "https://" + env["FHIRSYNC_LISTEN"]
	for path, want := range map[string]int{"/healthz": http.StatusOK, "/metrics": http.StatusNotFound} {
		resp, err := c.Get(base + path)
		if err != nil {
			t.Fatalf("GET %s over TLS: %v", path, err)
		}
		resp.Body.Close()
		if resp.StatusCode != want {
			t.Errorf("GET %s over TLS = %d, want %d", path, resp.StatusCode, want)
		}
	}
	// Plain HTTP on the TLS port gets no page.
	conn, err := net.Dial("tcp", env["FHIRSYNC_LISTEN"])
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	_, _ = conn.Write([]byte("GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n"))
	resp, err := http.ReadResponse(bufio.NewReader(conn), nil)
	if err == nil {
		resp.Body.Close()
		if resp.StatusCode == http.StatusOK {
			t.Error("plain HTTP is answered 200 on the TLS listener")
		}
	}
	if !strings.Contains(stderr.String(), "tls=true") {
		t.Errorf("the start line does not say TLS is on:\n%s", stderr.String())
	}
}

func TestTransportConfig(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	certFile, keyFile := writeTestCert(t, dir)
	tests := []struct {
		name         string
		env          map[string]string
		wantErr      []string
		wantWarnings []string // substrings, each in one warning
		noWarnings   bool
	}{
		{name: "loopback defaults", noWarnings: true},
		{name: "every interface over plain HTTP", env: map[string]string{"FHIRSYNC_LISTEN": "0.0.0.0:8080"},
			wantWarnings: []string{"beyond loopback over plain HTTP", "/metrics is served without authentication"}},
		{name: "a LAN address over plain HTTP", env: map[string]string{"FHIRSYNC_LISTEN": "10.1.2.3:8080", "FHIRSYNC_METRICS_LISTEN": "127.0.0.1:9090"},
			wantWarnings: []string{"beyond loopback over plain HTTP"}},
		{name: "behind an HTTPS proxy", env: map[string]string{"FHIRSYNC_LISTEN": ":8080", "FHIRSYNC_ADMIN_PUBLIC_URL": "https://sync.example.org",
			"FHIRSYNC_METRICS_LISTEN": "127.0.0.1:9090"}, noWarnings: true},
		{name: "TLS on every interface", env: map[string]string{"FHIRSYNC_LISTEN": ":8443", "FHIRSYNC_TLS_CERT_FILE": certFile,
			"FHIRSYNC_TLS_KEY_FILE": keyFile, "FHIRSYNC_METRICS_LISTEN": "127.0.0.1:9090"}, noWarnings: true},
		{name: "certificate without key", env: map[string]string{"FHIRSYNC_TLS_CERT_FILE": certFile},
			wantErr: []string{"tls_cert_file, tls_key_file: set both or neither"}},
		{name: "missing certificate file", env: map[string]string{"FHIRSYNC_TLS_CERT_FILE": filepath.Join(dir, "none.pem"), "FHIRSYNC_TLS_KEY_FILE": keyFile},
			wantErr: []string{"tls_cert_file, tls_key_file:"}},
		{name: "metrics address not host:port", env: map[string]string{"FHIRSYNC_METRICS_LISTEN": "9090"},
			wantErr: []string{"metrics_listen: \"9090\" is not host:port"}},
		{name: "metrics on the listen address", env: map[string]string{"FHIRSYNC_METRICS_LISTEN": "127.0.0.1:8080"},
			wantErr: []string{"metrics_listen: must differ from listen"}},
		{name: "rest hook without authorization", env: map[string]string{"FHIRSYNC_FEEDS_REST_HOOK_PATH": "/hooks/fhir"},
			wantErr: []string{"feeds.rest_hook.authorization: required with feeds.rest_hook.path"}},
		{name: "rest hook with authorization", env: map[string]string{"FHIRSYNC_FEEDS_REST_HOOK_PATH": "/hooks/fhir",
			"FHIRSYNC_FEEDS_REST_HOOK_AUTHORIZATION": "Bearer s3cret-value-for-hooks"}, noWarnings: true},
		{name: "rest hook explicitly anonymous", env: map[string]string{"FHIRSYNC_FEEDS_REST_HOOK_PATH": "/hooks/fhir",
			"FHIRSYNC_FEEDS_REST_HOOK_ALLOW_ANONYMOUS": "true"}, wantWarnings: []string{"accepts anonymous notifications"}},
		{name: "Service Bus FHIR queue without fhir_account", env: map[string]string{"FHIRSYNC_QUEUE_KIND": "servicebus",
			"FHIRSYNC_QUEUE_SERVICE_BUS_CONNECTION_STRING": "Endpoint=sb://x.servicebus.windows.net/;SharedAccessKeyName=k;SharedAccessKey=v",
			"FHIRSYNC_FHIR_BASE_URL":                       "https://fhir.example.org",
			"FHIRSYNC_CRM_BASE_URL":                        "https://org.crm.dynamics.com"},
			wantWarnings: []string{"agent.fhir_account is not set"}},
		{name: "Service Bus FHIR queue with fhir_account", env: map[string]string{"FHIRSYNC_QUEUE_KIND": "servicebus",
			"FHIRSYNC_QUEUE_SERVICE_BUS_CONNECTION_STRING": "Endpoint=sb://x.servicebus.windows.net/;SharedAccessKeyName=k;SharedAccessKey=v",
			"FHIRSYNC_FHIR_BASE_URL":                       "https://fhir.example.org", "FHIRSYNC_CRM_BASE_URL": "https://org.crm.dynamics.com",
			"FHIRSYNC_AGENT_FHIR_ACCOUNT": "contoso-fhir"}, noWarnings: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			cfg, err := loadConfig("", envFrom(tt.env))
			if len(tt.wantErr) > 0 {
				if err == nil {
					t.Fatalf("loaded, want errors %q", tt.wantErr)
				}
				for _, w := range tt.wantErr {
					if !strings.Contains(err.Error(), w) {
						t.Errorf("error does not mention %q:\n%v", w, err)
					}
				}
				return
			}
			if err != nil {
				t.Fatalf("unexpected error: %v", err)
			}
			ws := securityWarnings(&cfg)
			if tt.noWarnings && len(ws) > 0 {
				t.Errorf("unexpected warnings: %q", ws)
			}
			for _, w := range tt.wantWarnings {
				if !strings.Contains(strings.Join(ws, "\n"), w) {
					t.Errorf("no warning mentions %q: %q", w, ws)
				}
			}
		})
	}
}
