package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"strings"
)

// command is one subcommand of the binary.
type command struct {
	name    string
	summary string
	run     func(ctx context.Context, e *env, args []string) error
}

// commands lists every subcommand; `help` prints them in this order.
func commands() []command {
	return []command{
		{"demo", "run everything on one machine with sandbox endpoints and synthetic data", runDemo},
		{"serve", "run the sync agent, the admin app and the operational endpoints", runServe},
		{"migrate", "apply pending database migrations and exit", runMigrate},
		{"doctor", "check the database, queues, CRM, FHIR server and maps of a configuration", runDoctor},
		{"maps", "import, export, validate, test and publish entity maps", runMaps},
		{"logs", "search, show and export sync decisions; list reason codes", runLogs},
		{"replay", "send records, logged decisions' records or dead letters through the agent again", runReplay},
		{"backfill", "enqueue a change notice for every record of an entity map", runBackfill},
		{"users", "create, list and change admin app accounts", runUsers},
		{"sandbox", "run the sandbox FHIR server and CRM on their own", runSandbox},
		{"bench", "measure sync throughput, latency, memory and throttling with sandbox endpoints", runBench},
		{"healthcheck", "exit 0 when a running fhirsync answers /readyz with 200 (for container health checks)", runHealthcheck},
		{"version", "print the version", runVersion},
	}
}

// usageError is bad command-line input; it exits with status 2.
type usageError struct{ msg string }

func (e *usageError) Error() string { return e.msg }

func usageErrorf(format string, args ...any) error {
	return &usageError{fmt.Sprintf(format, args...)}
}

// run is the whole program: it parses args and runs one command.
func run(ctx context.Context, args []string, getenv func(string) string, stdout, stderr io.Writer) error {
	e := &env{stdout: stdout, stderr: stderr, getenv: getenv}
	global := flag.NewFlagSet("fhirsync", flag.ContinueOnError)
	global.SetOutput(io.Discard)
	e.globalFlags(global)
	if err := global.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			printHelp(stdout)
			return nil
		}
		return usageErrorf("%v (see fhirsync help)", err)
	}
	rest := global.Args()
	if len(rest) == 0 {
		printHelp(stderr)
		return usageErrorf("no command given")
	}
	name, rest := rest[0], rest[1:]
	if name == "help" {
		if len(rest) == 1 {
			return run(ctx, []string{rest[0], "--help"}, getenv, stdout, stderr)
		}
		printHelp(stdout)
		return nil
	}
	for _, c := range commands() {
		if c.name == name {
			return c.run(ctx, e, rest)
		}
	}
	return usageErrorf("unknown command %q (see fhirsync help)", name)
}

func printHelp(w io.Writer) {
	fmt.Fprintln(w, "fhirsync keeps a FHIR R4 server and a Dataverse-style CRM in step.")
	fmt.Fprintln(w, "\nUsage: fhirsync [--config FILE] [--log-format text|json] <command> [flags]")
	fmt.Fprintln(w, "\nCommands:")
	cs := commands()
	width := 0
	for _, c := range cs {
		width = max(width, len(c.name))
	}
	for _, c := range cs {
		fmt.Fprintf(w, "  %-*s  %s\n", width, c.name, c.summary)
	}
	fmt.Fprintln(w, "\nRun `fhirsync <command> --help` for a command's flags.")
}

// newFlagSet builds a subcommand's flag set with the global flags included
// and a usage text that starts with the command's synopsis.
func (e *env) newFlagSet(name, synopsis, about string) *flag.FlagSet {
	fs := flag.NewFlagSet("fhirsync "+name, flag.ContinueOnError)
	fs.SetOutput(e.stdout)
	e.globalFlags(fs)
	fs.Usage = func() {
		fmt.Fprintf(e.stdout, "Usage: fhirsync %s\n\n%s\n\nFlags:\n", synopsis, strings.TrimSpace(about))
		out := fs.Output()
		fs.SetOutput(e.stdout)
		fs.PrintDefaults()
		fs.SetOutput(out)
	}
	return fs
}

// parseFlags parses args; --help prints usage and ends the command
// successfully.
func parseFlags(fs *flag.FlagSet, args []string) (done bool, err error) {
	// Parse prints usage itself on -help and on errors; keep it quiet and
	// print once, here, only for -help.
	usage := fs.Usage
	fs.Usage = func() {}
	fs.SetOutput(io.Discard)
	err = fs.Parse(args)
	fs.Usage = usage
	if errors.Is(err, flag.ErrHelp) {
		fs.Usage()
		return true, nil
	}
	if err != nil {
		return true, usageErrorf("%s: %v (see %s --help)", fs.Name(), err, fs.Name())
	}
	return false, nil
}

// exitCode turns run's error into a process status, printing it once.
func exitCode(err error, stderr io.Writer) int {
	if err == nil {
		return 0
	}
	var ue *usageError
	var ce *ConfigError
	switch {
	case errors.As(err, &ce):
		fmt.Fprintln(stderr, "fhirsync: "+ce.Error())
		return 2
	case errors.As(err, &ue):
		fmt.Fprintln(stderr, "fhirsync: "+ue.Error())
		return 2
	case errors.Is(err, context.Canceled):
		return 130
	}
	fmt.Fprintln(stderr, "fhirsync: "+oneLine(err.Error()))
	return 1
}

func oneLine(s string) string {
	return strings.Join(strings.Fields(s), " ")
}
