package sbtest_test

import (
	"net"
	"strings"
	"testing"
	"time"

	"github.com/fhirsync/fhirsync/queues/servicebus/sbtest"
)

// TestStartAndStop checks the helper's own promises: the fake listens on a
// loopback port, answers commands, and is gone after the test's cleanup.
func TestStartAndStop(t *testing.T) {
	var addr string
	t.Run("running", func(t *testing.T) {
		srv := sbtest.Start(t, sbtest.QueueConfig{Name: "q"})
		addr = srv.Addr
		if !strings.HasPrefix(addr, "127.0.0.1:") {
			t.Fatalf("Addr = %q, want a loopback address", addr)
		}
		want := "Endpoint=sb://" + addr + ";SharedAccessKeyName=t;SharedAccessKey=t;UseDevelopmentEmulator=true"
		if got := srv.ConnectionString(); got != want {
			t.Fatalf("ConnectionString = %q, want %q", got, want)
		}
		srv.CreateQueue(t, sbtest.QueueConfig{Name: "extra", Sessions: true, DuplicateWindow: -1})
		c, err := net.DialTimeout("tcp", addr, 5*time.Second)
		if err != nil {
			t.Fatalf("dialing the fake: %v", err)
		}
		defer c.Close()
		if n := srv.DropConnections(t); n != 0 {
			// A raw TCP connection that never spoke AMQP has no
			// connection object yet.
			t.Logf("dropped %d connections", n)
		}
		if got := srv.Tokens(); len(got) != 0 {
			t.Fatalf("Tokens() = %v before any client authenticated", got)
		}
	})
	if addr == "" {
		return // skipped: the fake cannot run here
	}
	c, err := net.DialTimeout("tcp", addr, time.Second)
	if err == nil {
		c.Close()
		t.Fatalf("the fake still accepts connections on %s after cleanup", addr)
	}
}
