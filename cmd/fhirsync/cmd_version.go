package main

import (
	"context"
	"fmt"
	"runtime"
	"runtime/debug"

	"github.com/fhirsync/fhirsync/storage"
)

// version is set at build time with -ldflags "-X main.version=v1.2.3".
var version = "dev"

func buildVersion() string {
	if version != "dev" {
		return version
	}
	if bi, ok := debug.ReadBuildInfo(); ok && bi.Main.Version != "" && bi.Main.Version != "(devel)" {
		return bi.Main.Version
	}
	return version
}

func runVersion(ctx context.Context, e *env, args []string) error {
	fs := e.newFlagSet("version", "version", "Print the fhirsync version, the Go version and the schema version this binary migrates to.")
	if done, err := parseFlags(fs, args); done {
		return err
	}
	if fs.NArg() > 0 {
		return usageErrorf("version takes no arguments")
	}
	fmt.Fprintf(e.stdout, "fhirsync %s (%s, schema %d)\n", buildVersion(), runtime.Version(), storage.LatestVersion())
	return nil
}
