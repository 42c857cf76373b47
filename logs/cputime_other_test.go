//go:build !unix

package logs

import "time"

// processCPU is unknown here; benchmarks then omit the CPU metric.
func processCPU() time.Duration { return 0 }
