//go:build unix

package proccpu

import (
	"syscall"
	"time"
)

// Used is the user and system CPU time this process has used, or zero if
// getrusage fails.
func Used() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}
