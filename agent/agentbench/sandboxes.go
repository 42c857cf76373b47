package agentbench

import (
	"bufio"
	"bytes"
	"context"
	"encoding/gob"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"time"

	"github.com/fhirsync/fhirsync/agent/crm"
	"github.com/fhirsync/fhirsync/maps"
	"github.com/fhirsync/fhirsync/maps/starter"
	"github.com/fhirsync/fhirsync/queues"
	"github.com/fhirsync/fhirsync/sandbox/crmserver"
	"github.com/fhirsync/fhirsync/sandbox/fhirserver"
)

// sandboxes are the two endpoints the agent syncs between, as the bench
// drives and observes them.
type sandboxes interface {
	fhirURL() string
	crmURL() string
	crmStats(ctx context.Context) (crmserver.Stats, error)
	setLimits(ctx context.Context, l crmserver.Limits) error
	// setDOPHint sets the CRM's x-ms-dop-hint (crmserver.Server.SetDOPHint).
	setDOPHint(ctx context.Context, n int) error
	// accounts is the CRM's accounting per user (crmserver.Server.Accounts).
	accounts(ctx context.Context) (map[string]crmserver.Account, error)
	count(ctx context.Context, entity string) (int, error)
	// writes returns when the agent's writes reached each target since the
	// last resetWrites, by FHIR id, and stops noting them; resetWrites
	// starts afresh (see targetWrites).
	writes(ctx context.Context) (fhirSide, crmSide map[string]time.Time, err error)
	resetWrites(ctx context.Context) error
	// peakRSS is the sandboxes' own peak resident set when they run in a
	// process of their own, else 0; cpuSeconds likewise their CPU time.
	peakRSS(ctx context.Context) int64
	cpuSeconds(ctx context.Context) (float64, error)
	// editContacts makes a batch of the coordinator's contact updates. A
	// sandbox process makes them itself, so that the coordinator's work
	// (building, encoding and sending the $batch, reading its answer) is
	// not counted in the agent process's CPU time and memory.
	editContacts(ctx context.Context, ed contactEdits) error
	close() error
}

// sender posts the CRM's RemoteExecutionContext messages.
type sender interface {
	Send(ctx context.Context, msgs ...queues.Message) error
}

// local is both sandboxes served over loopback HTTP from this process.
type local struct {
	fhirSrv  *fhirserver.Server
	crmSrv   *crmserver.Server
	fhirHTTP *httptest.Server
	crmHTTP  *httptest.Server
	tw       *targetWrites
	// human is the coordinator's CRM client.
	human *crm.Client
}

// startLocal starts the sandboxes in this process. The CRM's service
// endpoint posts to endpoint, with a step registered for each entity the
// starter maps cover, asynchronously (as Dataverse posts an asynchronous
// step); the sandbox FHIR server keeps its SQLite file in dir ("" keeps it
// in memory).
func startLocal(dir, runID string, endpoint sender) (*local, error) {
	fhirPath := ""
	if dir != "" {
		fhirPath = filepath.Join(dir, runID+"-sandbox-fhir.db")
	}
	fs, err := fhirserver.New(fhirserver.Options{Path: fhirPath})
	if err != nil {
		return nil, fmt.Errorf("starting the sandbox FHIR server: %w", err)
	}
	doc, _, err := maps.Import(starter.YAML(), maps.CompileOptions{})
	if err != nil {
		_ = fs.Close()
		return nil, fmt.Errorf("importing the starter maps: %w", err)
	}
	tokens := map[string]string{humanToken: humanUser}
	for i := range maxAgentUsers {
		tokens[agentToken(i)] = agentUser(i)
	}
	tw := newTargetWrites()
	cs, err := crmserver.New(crmserver.Options{Tokens: tokens,
		Endpoint: endpoint, EndpointEntities: doc.CRMEntities(), EndpointAsync: true, OnWrite: tw.crmWrite})
	if err != nil {
		_ = fs.Close()
		return nil, fmt.Errorf("starting the sandbox CRM: %w", err)
	}
	l := &local{fhirSrv: fs, crmSrv: cs, tw: tw}
	l.fhirHTTP = httptest.NewServer(l.tw.fhirHandler(fs))
	l.crmHTTP = httptest.NewServer(cs)
	if l.human, err = coordinator(l.crmHTTP.URL); err != nil {
		_ = l.close()
		return nil, err
	}
	return l, nil
}

func (l *local) fhirURL() string { return l.fhirHTTP.URL }
func (l *local) crmURL() string  { return l.crmHTTP.URL }

func (l *local) crmStats(context.Context) (crmserver.Stats, error) { return l.crmSrv.Stats(), nil }

func (l *local) setLimits(_ context.Context, lim crmserver.Limits) error {
	l.crmSrv.SetLimits(lim)
	return nil
}

func (l *local) setDOPHint(_ context.Context, n int) error {
	l.crmSrv.SetDOPHint(n)
	return nil
}

func (l *local) accounts(context.Context) (map[string]crmserver.Account, error) {
	return l.crmSrv.Accounts(), nil
}

func (l *local) count(_ context.Context, entity string) (int, error) {
	return l.crmSrv.Count(entity), nil
}

func (l *local) writes(context.Context) (map[string]time.Time, map[string]time.Time, error) {
	f, c := l.tw.take()
	return f, c, nil
}

func (l *local) resetWrites(context.Context) error {
	l.tw.reset()
	return nil
}

func (l *local) peakRSS(context.Context) int64 { return 0 }

func (l *local) cpuSeconds(context.Context) (float64, error) { return 0, nil }

func (l *local) editContacts(ctx context.Context, ed contactEdits) error {
	return editContacts(ctx, l.human, ed)
}

// close stops the CRM's endpoint worker (posting what is pending) before
// the servers.
func (l *local) close() error {
	_ = l.crmSrv.Close()
	l.crmHTTP.Close()
	l.fhirHTTP.Close()
	return l.fhirSrv.Close()
}

// The sandboxes in a process of their own: the bench starts
// `fhirsync bench --serve-sandboxes`, which serves them and a small control
// API, and prints where on its first line of output. The CRM's service
// endpoint posts over HTTP to a receiver in the bench process, which puts
// each message on the agent's crm-changes queue. The agent's process then
// holds the agent alone, so its peak RSS is the agent's.

// addresses is the line a sandbox process prints when it is serving.
type addresses struct {
	FHIR    string `json:"fhir"`
	CRM     string `json:"crm"`
	Control string `json:"control"`
}

// ServeSandboxes runs both sandboxes for a bench in another process: dir
// holds the sandbox FHIR server's file, endpoint is the bench's receiver for
// the CRM's messages. It prints the addresses as one JSON line on out and
// serves until ctx ends or in reaches end of file (the bench closed it or
// exited).
func ServeSandboxes(ctx context.Context, dir, endpoint string, in io.Reader, out io.Writer) error {
	l, err := startLocal(dir, "child", &httpSender{url: endpoint, client: &http.Client{Timeout: time.Minute}})
	if err != nil {
		return err
	}
	defer l.close()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return err
	}
	ctl := &http.Server{Handler: l.control(), ReadHeaderTimeout: 10 * time.Second}
	go func() { _ = ctl.Serve(ln) }()
	defer ctl.Close()
	line, err := json.Marshal(addresses{FHIR: l.fhirURL(), CRM: l.crmURL(), Control: "http://" + ln.Addr().String()})
	if err != nil {
		return err
	}
	if _, err := fmt.Fprintf(out, "%s\n", line); err != nil {
		return err
	}
	eof := make(chan struct{})
	go func() { _, _ = io.Copy(io.Discard, in); close(eof) }()
	select {
	case <-ctx.Done():
	case <-eof:
	}
	return nil
}

// controlStats is what the control API reports.
type controlStats struct {
	Stats        crmserver.Stats `json:"stats"`
	PeakRSSBytes int64           `json:"peak_rss_bytes"`
	CPUSeconds   float64         `json:"cpu_seconds"`
}

type controlWrites struct {
	FHIR map[string]time.Time `json:"fhir"`
	CRM  map[string]time.Time `json:"crm"`
}

func (l *local) control() http.Handler {
	mux := http.NewServeMux()
	reply := func(w http.ResponseWriter, v any) {
		w.Header().Set("Content-Type", "application/json")
		_ = json.NewEncoder(w).Encode(v)
	}
	mux.HandleFunc("GET /stats", func(w http.ResponseWriter, r *http.Request) {
		reply(w, controlStats{Stats: l.crmSrv.Stats(), PeakRSSBytes: peakRSS(), CPUSeconds: cpuSeconds()})
	})
	mux.HandleFunc("POST /limits", func(w http.ResponseWriter, r *http.Request) {
		var lim crmserver.Limits
		if err := json.NewDecoder(r.Body).Decode(&lim); err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		l.crmSrv.SetLimits(lim)
		w.WriteHeader(http.StatusNoContent)
	})
	mux.HandleFunc("POST /dop-hint", func(w http.ResponseWriter, r *http.Request) {
		var n int
		if err := json.NewDecoder(r.Body).Decode(&n); err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		l.crmSrv.SetDOPHint(n)
		w.WriteHeader(http.StatusNoContent)
	})
	mux.HandleFunc("GET /accounts", func(w http.ResponseWriter, r *http.Request) {
		reply(w, l.crmSrv.Accounts())
	})
	mux.HandleFunc("GET /count", func(w http.ResponseWriter, r *http.Request) {
		reply(w, l.crmSrv.Count(r.URL.Query().Get("entity")))
	})
	mux.HandleFunc("POST /writes/take", func(w http.ResponseWriter, r *http.Request) {
		f, c := l.tw.take()
		reply(w, controlWrites{FHIR: f, CRM: c})
	})
	mux.HandleFunc("POST /contacts/edit", func(w http.ResponseWriter, r *http.Request) {
		var ed contactEdits
		if err := json.NewDecoder(r.Body).Decode(&ed); err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		if err := l.editContacts(r.Context(), ed); err != nil {
			http.Error(w, err.Error(), http.StatusInternalServerError)
			return
		}
		w.WriteHeader(http.StatusNoContent)
	})
	mux.HandleFunc("POST /writes/reset", func(w http.ResponseWriter, r *http.Request) {
		l.tw.reset()
		w.WriteHeader(http.StatusNoContent)
	})
	return mux
}

// httpSender posts message batches to the bench's receiver, gob-encoded
// (the bodies go as bytes, not as base64 inside JSON).
type httpSender struct {
	url    string
	client *http.Client
}

func (s *httpSender) Send(ctx context.Context, msgs ...queues.Message) error {
	var body bytes.Buffer
	if err := gob.NewEncoder(&body).Encode(msgs); err != nil {
		return err
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, s.url, &body)
	if err != nil {
		return err
	}
	req.Header.Set("Content-Type", "application/octet-stream")
	resp, err := s.client.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	_, _ = io.Copy(io.Discard, resp.Body)
	if resp.StatusCode != http.StatusNoContent {
		return fmt.Errorf("the bench refused %d messages: %s", len(msgs), resp.Status)
	}
	return nil
}

// receiver is the bench's end of httpSender: it puts the messages on q.
func receiver(q sender) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		var msgs []queues.Message
		if err := gob.NewDecoder(r.Body).Decode(&msgs); err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		if err := q.Send(r.Context(), msgs...); err != nil {
			http.Error(w, err.Error(), http.StatusServiceUnavailable)
			return
		}
		w.WriteHeader(http.StatusNoContent)
	})
}

// remote is the sandboxes in a child process.
type remote struct {
	addr   addresses
	cmd    *exec.Cmd
	stdin  io.Closer
	recv   *httptest.Server
	client *http.Client
}

// startRemote starts command (a `fhirsync bench --serve-sandboxes` with its
// arguments; the bench adds --sandbox-dir and --endpoint) and waits for its
// addresses. The CRM's messages arrive on q.
func startRemote(ctx context.Context, command []string, dir string, q sender) (*remote, error) {
	recv := httptest.NewServer(receiver(q))
	args := append(append([]string(nil), command[1:]...), "--sandbox-dir", dir, "--endpoint", recv.URL)
	cmd := exec.Command(command[0], args...)
	cmd.Stderr = os.Stderr
	stdin, err := cmd.StdinPipe()
	if err != nil {
		recv.Close()
		return nil, err
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		recv.Close()
		return nil, err
	}
	if err := cmd.Start(); err != nil {
		recv.Close()
		return nil, fmt.Errorf("starting the sandbox process: %w", err)
	}
	r := &remote{cmd: cmd, stdin: stdin, recv: recv, client: &http.Client{Timeout: time.Minute}}
	lines := make(chan []byte, 1)
	go func() {
		sc := bufio.NewScanner(stdout)
		if sc.Scan() {
			lines <- append([]byte(nil), sc.Bytes()...)
		}
		close(lines)
		_, _ = io.Copy(io.Discard, stdout)
	}()
	select {
	case line, ok := <-lines:
		if ok && json.Unmarshal(line, &r.addr) == nil && r.addr.FHIR != "" && r.addr.CRM != "" && r.addr.Control != "" {
			return r, nil
		}
		_ = r.close()
		return nil, errors.New("the sandbox process did not print its addresses")
	case <-time.After(time.Minute):
	case <-ctx.Done():
	}
	_ = r.close()
	return nil, errors.New("the sandbox process did not start within a minute")
}

func (r *remote) fhirURL() string { return r.addr.FHIR }
func (r *remote) crmURL() string  { return r.addr.CRM }

func (r *remote) call(ctx context.Context, method, path string, in, out any) error {
	var body io.Reader
	if in != nil {
		b, err := json.Marshal(in)
		if err != nil {
			return err
		}
		body = bytes.NewReader(b)
	}
	req, err := http.NewRequestWithContext(ctx, method, r.addr.Control+path, body)
	if err != nil {
		return err
	}
	resp, err := r.client.Do(req)
	if err != nil {
		return fmt.Errorf("sandbox control %s: %w", path, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode >= 300 {
		return fmt.Errorf("sandbox control %s: %s", path, resp.Status)
	}
	if out != nil {
		return json.NewDecoder(resp.Body).Decode(out)
	}
	return nil
}

func (r *remote) crmStats(ctx context.Context) (crmserver.Stats, error) {
	var s controlStats
	err := r.call(ctx, http.MethodGet, "/stats", nil, &s)
	return s.Stats, err
}

func (r *remote) setLimits(ctx context.Context, l crmserver.Limits) error {
	return r.call(ctx, http.MethodPost, "/limits", l, nil)
}

func (r *remote) setDOPHint(ctx context.Context, n int) error {
	return r.call(ctx, http.MethodPost, "/dop-hint", n, nil)
}

func (r *remote) accounts(ctx context.Context) (map[string]crmserver.Account, error) {
	var a map[string]crmserver.Account
	err := r.call(ctx, http.MethodGet, "/accounts", nil, &a)
	return a, err
}

func (r *remote) count(ctx context.Context, entity string) (int, error) {
	var n int
	err := r.call(ctx, http.MethodGet, "/count?entity="+entity, nil, &n)
	return n, err
}

func (r *remote) writes(ctx context.Context) (map[string]time.Time, map[string]time.Time, error) {
	var w controlWrites
	err := r.call(ctx, http.MethodPost, "/writes/take", nil, &w)
	return w.FHIR, w.CRM, err
}

func (r *remote) resetWrites(ctx context.Context) error {
	return r.call(ctx, http.MethodPost, "/writes/reset", nil, nil)
}

func (r *remote) peakRSS(ctx context.Context) int64 {
	var s controlStats
	if err := r.call(ctx, http.MethodGet, "/stats", nil, &s); err != nil {
		return 0
	}
	return s.PeakRSSBytes
}

func (r *remote) cpuSeconds(ctx context.Context) (float64, error) {
	var s controlStats
	err := r.call(ctx, http.MethodGet, "/stats", nil, &s)
	return s.CPUSeconds, err
}

func (r *remote) editContacts(ctx context.Context, ed contactEdits) error {
	return r.call(ctx, http.MethodPost, "/contacts/edit", ed, nil)
}

// close ends the sandbox process (closing its input tells it to stop) and
// the receiver.
func (r *remote) close() error {
	_ = r.stdin.Close()
	done := make(chan error, 1)
	go func() { done <- r.cmd.Wait() }()
	var err error
	select {
	case err = <-done:
	case <-time.After(30 * time.Second):
		_ = r.cmd.Process.Kill()
		err = <-done
	}
	r.recv.Close()
	return err
}
