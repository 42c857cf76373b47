package sbtest

import (
	"bufio"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/fhirsync/fhirsync/internal/freeport"
)

// Python is the interpreter that can import Debian's python3-qpid-proton.
const Python = "/usr/bin/python3"

// QueueConfig describes one queue on the fake. Zero fields take the Service
// Bus defaults: 60 s lock, 10 deliveries, a 10 minute duplicate-detection
// window, no sessions.
type QueueConfig struct {
	Name             string
	LockDuration     time.Duration
	MaxDeliveryCount int
	// DuplicateWindow is the duplicate-detection window; negative turns
	// duplicate detection off.
	DuplicateWindow time.Duration
	Sessions        bool
}

func (q QueueConfig) wire() map[string]any {
	lock := q.LockDuration
	if lock == 0 {
		lock = 60 * time.Second
	}
	maxDel := q.MaxDeliveryCount
	if maxDel == 0 {
		maxDel = 10
	}
	dup := q.DuplicateWindow
	switch {
	case dup == 0:
		dup = 10 * time.Minute
	case dup < 0:
		dup = 0
	}
	return map[string]any{
		"name":                q.Name,
		"lock_duration_ms":    lock.Milliseconds(),
		"max_delivery_count":  maxDel,
		"duplicate_window_ms": dup.Milliseconds(),
		"sessions":            q.Sessions,
	}
}

// Event is one line the fake reports on its standard output.
type Event struct {
	// Event names what happened: listening, created, dropped, token, error.
	Event string `json:"event"`
	// Queue is the queue a created event is about.
	Queue string `json:"queue,omitempty"`
	// Connections is how many connections a dropped event closed.
	Connections int `json:"connections,omitempty"`
	// Type, Audience and Token describe a put-token request: the token
	// type (jwt or servicebus.windows.net:sastoken), the entity audience
	// and the token itself.
	Type     string `json:"type,omitempty"`
	Audience string `json:"audience,omitempty"`
	Token    string `json:"token,omitempty"`
	// Message explains an error event.
	Message string `json:"message,omitempty"`
}

// Server is a running fake Service Bus.
type Server struct {
	// Addr is host:port of the AMQP listener.
	Addr string

	cmd   *exec.Cmd
	stdin io.WriteCloser

	mu     sync.Mutex
	events []Event
	notify chan struct{}
	stderr strings.Builder
}

// Available reports why the fake cannot run here, or "" when it can.
func Available() string {
	if _, err := os.Stat(Python); err != nil {
		return Python + " is missing (install Debian's python3 and python3-qpid-proton)"
	}
	out, err := exec.Command(Python, "-c", "import proton").CombinedOutput()
	if err != nil {
		return fmt.Sprintf("%s cannot import proton (apt-get install python3-qpid-proton): %v: %s",
			Python, err, strings.TrimSpace(string(out)))
	}
	return ""
}

// Require skips the test when the fake cannot run, or fails it when
// FHIRSYNC_CI=1 (CI must install python3-qpid-proton).
func Require(t testing.TB) {
	t.Helper()
	if why := Available(); why != "" {
		if os.Getenv("FHIRSYNC_CI") == "1" {
			t.Fatalf("fake Service Bus unavailable in CI: %s", why)
		}
		t.Skipf("skipping: fake Service Bus unavailable: %s", why)
	}
}

// Start launches the fake on a free loopback port with the given queues and
// stops it (by PID) when the test ends.
func Start(t testing.TB, queues ...QueueConfig) *Server {
	t.Helper()
	Require(t)

	script, err := scriptPath()
	if err != nil {
		t.Fatalf("locating fakesb.py: %v", err)
	}
	cfg := map[string]any{"queues": wireAll(queues)}
	cfgFile := filepath.Join(t.TempDir(), "queues.json")
	b, _ := json.Marshal(cfg)
	if err := os.WriteFile(cfgFile, b, 0o600); err != nil {
		t.Fatalf("writing fake config: %v", err)
	}

	var lastErr error
	for attempt := 0; attempt < 3; attempt++ {
		port, err := freeport.Loopback()
		if err != nil {
			t.Fatalf("finding a free port: %v", err)
		}
		s, err := launch(script, cfgFile, port)
		if err == nil {
			t.Cleanup(func() {
				s.stop()
				if t.Failed() {
					t.Logf("fake Service Bus stderr:\n%s", s.Stderr())
				}
			})
			return s
		}
		lastErr = err
	}
	t.Fatalf("starting fake Service Bus: %v", lastErr)
	return nil
}

func wireAll(queues []QueueConfig) []map[string]any {
	out := make([]map[string]any, 0, len(queues))
	for _, q := range queues {
		out = append(out, q.wire())
	}
	return out
}

func launch(script, cfgFile string, port int) (*Server, error) {
	s := &Server{Addr: fmt.Sprintf("127.0.0.1:%d", port), notify: make(chan struct{}, 1)}
	cmd := exec.Command(Python, script, "--port", fmt.Sprint(port), "--config", cfgFile)
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		return nil, err
	}
	s.stdin, err = cmd.StdinPipe()
	if err != nil {
		return nil, err
	}
	cmd.Stderr = &lockedWriter{s: s}
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	s.cmd = cmd
	go s.read(stdout)

	if _, err := s.wait("listening", 10*time.Second); err != nil {
		s.stop()
		return nil, err
	}
	// The listener is bound before the event is printed; confirm it accepts.
	conn, err := net.DialTimeout("tcp", s.Addr, 5*time.Second)
	if err != nil {
		s.stop()
		return nil, fmt.Errorf("fake announced %s but does not accept: %w", s.Addr, err)
	}
	_ = conn.Close()
	return s, nil
}

type lockedWriter struct{ s *Server }

func (w *lockedWriter) Write(p []byte) (int, error) {
	w.s.mu.Lock()
	defer w.s.mu.Unlock()
	if w.s.stderr.Len() < 64<<10 {
		w.s.stderr.Write(p)
	}
	return len(p), nil
}

func (s *Server) read(r io.Reader) {
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		var ev Event
		if err := json.Unmarshal(sc.Bytes(), &ev); err != nil {
			continue
		}
		s.mu.Lock()
		s.events = append(s.events, ev)
		s.mu.Unlock()
		select {
		case s.notify <- struct{}{}:
		default:
		}
	}
	close(s.notify)
}

// wait returns the first event named name that arrived after the events
// already consumed by earlier waits.
func (s *Server) wait(name string, timeout time.Duration) (Event, error) {
	return s.waitFor(name, func(Event) bool { return true }, timeout)
}

// waitFor is wait for the first event named name that match accepts.
func (s *Server) waitFor(name string, match func(Event) bool, timeout time.Duration) (Event, error) {
	deadline := time.After(timeout)
	for {
		s.mu.Lock()
		for i, ev := range s.events {
			if ev.Event == name && match(ev) {
				s.events = append(s.events[:i:i], s.events[i+1:]...)
				s.mu.Unlock()
				return ev, nil
			}
		}
		stderr := s.stderr.String()
		s.mu.Unlock()
		select {
		case _, ok := <-s.notify:
			if !ok {
				return Event{}, fmt.Errorf("fake exited before %q; stderr: %s", name, stderr)
			}
		case <-deadline:
			return Event{}, fmt.Errorf("fake did not report %q within %s; stderr: %s", name, timeout, stderr)
		}
	}
}

func (s *Server) send(cmd map[string]any) error {
	b, _ := json.Marshal(cmd)
	_, err := s.stdin.Write(append(b, '\n'))
	return err
}

// ConnectionString is the emulator-style connection string for the fake:
// plain TCP, SAS key name and key are not checked.
func (s *Server) ConnectionString() string {
	return "Endpoint=sb://" + s.Addr + ";SharedAccessKeyName=t;SharedAccessKey=t;UseDevelopmentEmulator=true"
}

// CreateQueue adds a queue to the running fake.
func (s *Server) CreateQueue(t testing.TB, q QueueConfig) {
	t.Helper()
	if err := s.send(map[string]any{"op": "create", "queue": q.wire()}); err != nil {
		t.Fatalf("creating queue %s: %v", q.Name, err)
	}
	if _, err := s.waitFor("created", func(ev Event) bool { return ev.Queue == q.Name }, 10*time.Second); err != nil {
		t.Fatalf("creating queue %s: %v", q.Name, err)
	}
}

// DropConnections closes every client connection at the socket, without an
// AMQP close, and returns how many were open.
func (s *Server) DropConnections(t testing.TB) int {
	t.Helper()
	if err := s.send(map[string]any{"op": "drop"}); err != nil {
		t.Fatalf("dropping connections: %v", err)
	}
	ev, err := s.wait("dropped", 10*time.Second)
	if err != nil {
		t.Fatalf("dropping connections: %v", err)
	}
	return ev.Connections
}

// Tokens returns the put-token requests the fake has seen so far, oldest
// first.
func (s *Server) Tokens() []Event {
	s.mu.Lock()
	defer s.mu.Unlock()
	var out []Event
	for _, ev := range s.events {
		if ev.Event == "token" {
			out = append(out, ev)
		}
	}
	return out
}

// Stderr returns what the fake wrote to its standard error so far.
func (s *Server) Stderr() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.stderr.String()
}

// stop kills the fake's process group by PID and reaps it.
func (s *Server) stop() {
	if s.cmd == nil || s.cmd.Process == nil {
		return
	}
	_ = s.stdin.Close()
	pid := s.cmd.Process.Pid
	_ = syscall.Kill(-pid, syscall.SIGKILL)
	_ = s.cmd.Process.Kill()
	_ = s.cmd.Wait()
	s.cmd = nil
}

// scriptPath finds fakesb.py next to this package's source.
func scriptPath() (string, error) {
	_, file, _, ok := runtime.Caller(0)
	if !ok {
		return "", fmt.Errorf("no caller information")
	}
	p := filepath.Join(filepath.Dir(file), "..", "fakesb", "fakesb.py")
	if _, err := os.Stat(p); err != nil {
		return "", err
	}
	return p, nil
}
