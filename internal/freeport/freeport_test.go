package freeport

import (
	"fmt"
	"net"
	"testing"
)

func TestLoopbackIsBelowTheEphemeralRangeAndFree(t *testing.T) {
	t.Parallel()
	for range 20 {
		port, err := Loopback()
		if err != nil {
			t.Fatal(err)
		}
		if port < Low || port > High {
			t.Fatalf("port %d outside [%d, %d]", port, Low, High)
		}
		l, err := net.Listen("tcp", fmt.Sprintf("127.0.0.1:%d", port))
		if err != nil {
			t.Fatalf("port %d given as free: %v", port, err)
		}
		l.Close()
	}
}
