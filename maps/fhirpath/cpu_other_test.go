//go:build !unix

package fhirpath

import "time"

// processCPU is unavailable here; benchmarks report wall-clock rates only.
func processCPU() time.Duration { return 0 }
