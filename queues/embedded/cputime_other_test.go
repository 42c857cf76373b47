//go:build !unix

package embedded_test

import "time"

// processCPU is zero where getrusage is not available.
func processCPU() time.Duration { return 0 }
