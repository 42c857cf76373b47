// Package proccpu reads how much CPU time this process has used, for
// benchmarks that report CPU per operation beside wall-clock time.
package proccpu
