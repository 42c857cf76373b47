package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"strings"
	"sync"
	"time"
)

// serverTimeouts bound how long one connection may hold the server: a
// client sending its headers or body a byte at a time is cut off instead
// of holding a connection (and a goroutine) open.
type serverTimeouts struct {
	// Header bounds reading the request headers.
	Header time.Duration
	// Read bounds reading the whole request, body included (a 4 MiB map
	// upload over a slow link fits).
	Read time.Duration
	// Write bounds the answer from the end of the headers. The long
	// exports extend their own deadline (admin's streaming routes).
	Write time.Duration
	// Idle bounds a kept-alive connection between requests.
	Idle time.Duration
}

// defaultTimeouts are the timeouts of every server the process starts.
var defaultTimeouts = serverTimeouts{Header: 10 * time.Second, Read: time.Minute, Write: 2 * time.Minute, Idle: 2 * time.Minute}

// newHTTPServer is an http.Server for h with the timeouts t.
func newHTTPServer(h http.Handler, t serverTimeouts) *http.Server {
	return &http.Server{Handler: h, ReadHeaderTimeout: t.Header, ReadTimeout: t.Read, WriteTimeout: t.Write, IdleTimeout: t.Idle}
}

// listener is one HTTP server of serve on its socket.
type listener struct {
	name     string // listen or metrics_listen, for errors
	ln       net.Listener
	srv      *http.Server
	certFile string // with keyFile, serve TLS
	keyFile  string
}

// listeners are serve's HTTP servers: the admin app's on listen and, when
// metrics_listen is set, the metrics endpoint's on its own address.
type listeners []listener

// openListeners opens listen (and metrics_listen) for app and metrics.
// metrics is served on metrics_listen only; with it unset, app serves
// /metrics itself.
func openListeners(cfg *Config, app, metrics http.Handler) (listeners, error) {
	var ls listeners
	open := func(name, addr string, h http.Handler) error {
		ln, err := net.Listen("tcp", addr)
		if err != nil {
			return fmt.Errorf("listening on %s (%s): %w", addr, name, err)
		}
		ls = append(ls, listener{name: name, ln: ln, srv: newHTTPServer(h, defaultTimeouts)})
		return nil
	}
	if err := open("listen", cfg.Listen, app); err != nil {
		return nil, err
	}
	ls[0].certFile, ls[0].keyFile = cfg.TLSCertFile, cfg.TLSKeyFile
	if cfg.MetricsListen != "" {
		mux := http.NewServeMux()
		mux.Handle("GET /metrics", metrics)
		if err := open("metrics_listen", cfg.MetricsListen, mux); err != nil {
			ls.close()
			return nil, err
		}
	}
	return ls, nil
}

// serve runs every server in wg; a server that stops on its own reports
// to errc (which must have room for one error per server).
func (ls listeners) serve(wg *sync.WaitGroup, errc chan<- error) {
	for _, l := range ls {
		wg.Go(func() {
			var err error
			if l.certFile != "" {
				err = l.srv.ServeTLS(l.ln, l.certFile, l.keyFile)
			} else {
				err = l.srv.Serve(l.ln)
			}
			if err != nil && !errors.Is(err, http.ErrServerClosed) {
				errc <- fmt.Errorf("serving %s (%s): %w", l.ln.Addr(), l.name, err)
			}
		})
	}
}

// shutdown drains every server within ctx, closing those that do not.
func (ls listeners) shutdown(ctx context.Context, log *slog.Logger) {
	for _, l := range ls {
		if err := l.srv.Shutdown(ctx); err != nil {
			log.Warn("listener did not drain in time", "listener", l.name, "error", err)
			_ = l.srv.Close()
		}
	}
}

func (ls listeners) close() {
	for _, l := range ls {
		_ = l.ln.Close()
	}
}

// securityWarnings are the start-up warnings about how the process is
// reached: plain HTTP beyond loopback (passwords and session cookies in
// clear, cookies without Secure), a public /metrics, anonymous webhooks,
// and FHIR events accepted from any FHIR service.
func securityWarnings(cfg *Config) []string {
	var ws []string
	tlsOn := cfg.TLSCertFile != ""
	httpsURL := strings.HasPrefix(cfg.Admin.PublicURL, "https://")
	if !loopbackAddr(cfg.Listen) && !tlsOn && !httpsURL {
		ws = append(ws, fmt.Sprintf("listening on %s beyond loopback over plain HTTP: sign-in passwords and session cookies cross the network in clear "+
			"and cookies are not Secure; set tls_cert_file and tls_key_file, or put an HTTPS proxy in front and set admin.public_url to its https:// address", cfg.Listen))
	}
	if cfg.MetricsListen == "" && !loopbackAddr(cfg.Listen) {
		ws = append(ws, fmt.Sprintf("/metrics is served without authentication on %s; set metrics_listen to a private address to move it there", cfg.Listen))
	}
	if rh := cfg.Feeds.RestHook; rh.Path != "" && rh.Authorization == "" {
		ws = append(ws, fmt.Sprintf("feeds.rest_hook.path %s accepts anonymous notifications (allow_anonymous is set): anyone who reaches it can queue work", rh.Path))
	}
	// AHDS FHIR events reach the agent through Event Grid on a Service Bus
	// fhir_changes queue; the embedded queue is fed by this process alone.
	// The agent refuses every event while the account is unset, and a
	// Service Bus queue may carry only the poller's notices, so starting
	// is allowed and the warning says what the refusals will be.
	if cfg.Queue.Kind == "servicebus" && cfg.FHIR.BaseURL != "" && cfg.CRM.BaseURL != "" && cfg.Agent.FHIRAccount == "" {
		ws = append(ws, "agent.fhir_account is not set: FHIR events on the Service Bus queue "+cfg.Queue.FHIRChanges+
			" are refused as invalid messages; set it to your FHIR service's name (the events' data.resourceFhirAccount)")
	}
	return ws
}

// loopbackAddr reports whether the host of addr (host:port) is a loopback
// address or localhost; an empty host listens on every interface.
func loopbackAddr(addr string) bool {
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		return false
	}
	if strings.EqualFold(host, "localhost") {
		return true
	}
	ip, err := netip.ParseAddr(host)
	return err == nil && ip.IsLoopback()
}
