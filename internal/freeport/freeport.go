// Package freeport finds a loopback TCP port for a process under test to
// listen on after the test chose it.
//
// Reserving a port with "127.0.0.1:0" and releasing it for another process
// to bind races with the system itself: such a port comes from Linux's
// ephemeral range (32768–60999 by default), and the system may hand it out
// again, before the other process binds it, as the local port of some
// other connection or listener — "address already in use", seen once in
// CI. The ports given here are drawn below that range, where the system
// hands out none on its own.
package freeport

import (
	"fmt"
	"math/rand/v2"
	"net"
)

// Range is where the ports are drawn from: [Low, High].
const (
	Low  = 20000
	High = 31999
)

// Loopback returns a port of 127.0.0.1 in [Low, High] that was free when
// it was checked, trying up to 100 ports drawn at random.
func Loopback() (int, error) {
	for range 100 {
		port := Low + rand.IntN(High-Low+1)
		l, err := net.Listen("tcp", fmt.Sprintf("127.0.0.1:%d", port))
		if err != nil {
			continue
		}
		l.Close()
		return port, nil
	}
	return 0, fmt.Errorf("no free loopback port between %d and %d in 100 tries", Low, High)
}
