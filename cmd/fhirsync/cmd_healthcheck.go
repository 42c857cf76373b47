package main

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"strings"
	"time"
)

// runHealthcheck asks a running fhirsync whether it is ready. It exists
// for container health checks: minimal images have no curl or wget, so the
// binary checks itself.
func runHealthcheck(ctx context.Context, e *env, args []string) error {
	fs := e.newFlagSet("healthcheck", "healthcheck [--url URL] [--timeout D] [--insecure]", `
Send one GET to a running fhirsync's readiness endpoint and exit 0 when it
answers 200, 1 otherwise, printing one line either way. Meant for container
HEALTHCHECK instructions and service managers on images without curl.

Without --url the address is http://127.0.0.1:PORT/readyz, PORT taken from
FHIRSYNC_LISTEN (8080 when unset). The configuration file is not read.`)
	rawURL := fs.String("url", "", "URL to check (default http://127.0.0.1:PORT/readyz, PORT from FHIRSYNC_LISTEN or 8080)")
	timeout := fs.Duration("timeout", 5*time.Second, "give up after this long")
	insecure := fs.Bool("insecure", false, "with an https URL, do not verify the server's certificate (a loopback check of a listener whose certificate names another host)")
	if done, err := parseFlags(fs, args); done {
		return err
	}
	if fs.NArg() > 0 {
		return usageErrorf("healthcheck takes no arguments (see fhirsync healthcheck --help)")
	}
	if *timeout <= 0 {
		return usageErrorf("healthcheck: --timeout must be positive")
	}
	target := *rawURL
	if target == "" {
		target = defaultHealthURL(e.getenv("FHIRSYNC_LISTEN"))
	}
	u, err := url.Parse(target)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return usageErrorf("healthcheck: --url %q is not an http or https URL", target)
	}
	return checkHealth(ctx, e.stdout, u.String(), *timeout, *insecure)
}

// defaultHealthURL is the loopback readiness URL for a listen address; a
// listener on all interfaces is also reachable on loopback.
func defaultHealthURL(listen string) string {
	port := "8080"
	if _, p, err := net.SplitHostPort(listen); err == nil && p != "" {
		port = p
	}
	return "http://" + net.JoinHostPort("127.0.0.1", port) + "/readyz"
}

// checkHealth performs the request. Redirects are not followed: a
// readiness endpoint that redirects is not answering for itself.
func checkHealth(ctx context.Context, w io.Writer, target string, timeout time.Duration, insecure bool) error {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	tr := http.DefaultTransport.(*http.Transport).Clone()
	tr.Proxy = nil // a proxy from the environment must not answer for this process
	if insecure {
		tr.TLSClientConfig = &tls.Config{InsecureSkipVerify: true} //nolint:gosec // opted in for loopback checks
	}
	client := &http.Client{Transport: tr, CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
	defer client.CloseIdleConnections()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, target, nil)
	if err != nil {
		return fmt.Errorf("healthcheck: %w", err)
	}
	resp, err := client.Do(req)
	if err != nil {
		if errors.Is(err, context.DeadlineExceeded) {
			return fmt.Errorf("healthcheck: %s did not answer within %s", target, timeout)
		}
		return fmt.Errorf("healthcheck: %w", err) // names the method and URL
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(io.LimitReader(resp.Body, 512))
	line := oneLine(strings.ToValidUTF8(string(body), "?"))
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("healthcheck: %s answered %d: %s", target, resp.StatusCode, line)
	}
	fmt.Fprintf(w, "%s answered 200: %s\n", target, line)
	return nil
}
