// Package sbtest runs the fake Service Bus (queues/servicebus/fakesb) for
// tests: Start launches fakesb.py with Debian's /usr/bin/python3 (which can
// import python3-qpid-proton) on a free loopback port, waits until it
// accepts connections, and kills it by PID when the test ends. The Server it
// returns gives the emulator-style connection string, creates queues with
// chosen lock duration, maximum delivery count, duplicate window and
// sessions, drops every client connection at the socket, and lists the
// put-token requests it saw.
//
// When the interpreter or proton is missing, Start skips the test with a
// message naming what to install, and fails it when FHIRSYNC_CI=1.
//
// It owns no assertions about Service Bus behaviour; those live in the
// tests of queues/servicebus.
package sbtest
