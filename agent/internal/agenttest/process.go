// Package agenttest runs fhirsync processes for the agent's end-to-end
// tests: it builds the fhirsync binary and starts, kills and stops
// `fhirsync serve` children whose state lives in a database the test owns.
// It does not start endpoints or queues; tests hold those in-process.
package agenttest

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// Build compiles cmd/fhirsync of the module under test into dir and
// returns the binary's path.
func Build(t testing.TB, dir string) string {
	t.Helper()
	out, err := exec.Command("go", "env", "GOMOD").Output()
	if err != nil {
		t.Fatalf("finding the module root: %v", err)
	}
	gomod := strings.TrimSpace(string(out))
	if gomod == "" || gomod == os.DevNull {
		t.Fatal("finding the module root: not inside a Go module")
	}
	bin := filepath.Join(dir, "fhirsync")
	cmd := exec.Command("go", "build", "-o", bin, "./cmd/fhirsync")
	cmd.Dir = filepath.Dir(gomod)
	if b, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("building fhirsync: %v\n%s", err, b)
	}
	return bin
}

// FreeAddr returns a loopback address with a port that was free a moment
// ago.
func FreeAddr(t testing.TB) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	_ = ln.Close()
	return addr
}

// Process is one running `fhirsync serve`.
type Process struct {
	Addr string
	cmd  *exec.Cmd
	out  *lockedBuffer
	done chan struct{}
	err  error
}

// Start runs `fhirsync serve` with env (FHIRSYNC_… variables; FHIRSYNC_LISTEN
// is set to a free address) and waits until it answers /healthz. The
// parent's own FHIRSYNC_… variables are not passed on.
func Start(t testing.TB, bin string, env map[string]string) *Process {
	t.Helper()
	p := &Process{Addr: FreeAddr(t), out: &lockedBuffer{}, done: make(chan struct{})}
	cmd := exec.Command(bin, "serve")
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "FHIRSYNC_") {
			cmd.Env = append(cmd.Env, kv)
		}
	}
	for k, v := range env {
		cmd.Env = append(cmd.Env, k+"="+v)
	}
	cmd.Env = append(cmd.Env, "FHIRSYNC_LISTEN="+p.Addr)
	cmd.Stdout, cmd.Stderr = p.out, p.out
	if err := cmd.Start(); err != nil {
		t.Fatalf("starting fhirsync serve: %v", err)
	}
	p.cmd = cmd
	go func() { p.err = cmd.Wait(); close(p.done) }()
	t.Cleanup(func() { p.Kill() })

	deadline := time.Now().Add(60 * time.Second)
	client := &http.Client{Timeout: time.Second}
	for {
		select {
		case <-p.done:
			t.Fatalf("fhirsync serve exited before it was ready (%v); its output:\n%s", p.err, p.Output())
		default:
		}
		if resp, err := client.Get("http://" + p.Addr + "/healthz"); err == nil {
			_ = resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return p
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("fhirsync serve did not answer /healthz within 60s; its output:\n%s", p.Output())
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// Pid is the process id.
func (p *Process) Pid() int { return p.cmd.Process.Pid }

// Exited reports whether the process has ended, and how.
func (p *Process) Exited() (bool, error) {
	select {
	case <-p.done:
		return true, p.err
	default:
		return false, nil
	}
}

// Kill ends the process with SIGKILL, as a crash would, and reaps it.
func (p *Process) Kill() {
	_ = p.cmd.Process.Signal(syscall.SIGKILL)
	<-p.done
}

// Stop asks the process to shut down (SIGTERM) and waits up to d, then
// kills it. It returns the exit error of a process that ended on its own
// terms with a failure.
func (p *Process) Stop(d time.Duration) error {
	_ = p.cmd.Process.Signal(syscall.SIGTERM)
	ctx, cancel := context.WithTimeout(context.Background(), d)
	defer cancel()
	select {
	case <-p.done:
		var ee *exec.ExitError
		if errors.As(p.err, &ee) && ee.Exited() {
			return fmt.Errorf("fhirsync serve exited with %v", p.err)
		}
		return nil
	case <-ctx.Done():
		p.Kill()
		return fmt.Errorf("fhirsync serve did not stop within %s", d)
	}
}

// Output is what the process wrote so far (its operational log).
func (p *Process) Output() string { return p.out.String() }

type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	// Keep the tail only: a long run logs a lot.
	if l.b.Len() > 1<<20 {
		rest := l.b.Bytes()[l.b.Len()-(256<<10):]
		keep := append([]byte(nil), rest...)
		l.b.Reset()
		l.b.Write(keep)
	}
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}
