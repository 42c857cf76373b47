package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/fhirsync/fhirsync/logs"
)

const logsUsage = `Usage: fhirsync logs <subcommand> [flags]

Read the sync log: one decision per message, with a reason code.

Subcommands:
  reasons     list every reason code with its meaning and suggested action
  search      list decisions, newest first (a record's timeline with --record or --key)
  show ID     print one decision in full
  export      write decisions as CSV or NDJSON for auditors
  audit       list or export the audit trail
  retention   print the retention and capture policy; --run prunes now

Run ` + "`fhirsync logs <subcommand> --help`" + ` for its flags.
`

func runLogs(ctx context.Context, e *env, args []string) error {
	if len(args) == 0 {
		fmt.Fprint(e.stderr, logsUsage)
		return usageErrorf("logs needs a subcommand")
	}
	sub, rest := args[0], args[1:]
	defer e.close()
	switch sub {
	case "-h", "-help", "--help", "help":
		fmt.Fprint(e.stdout, logsUsage)
		return nil
	case "reasons":
		return runLogsReasons(e, rest)
	case "search":
		return runLogsSearch(ctx, e, rest)
	case "show":
		return runLogsShow(ctx, e, rest)
	case "export":
		return runLogsExport(ctx, e, rest)
	case "audit":
		return runLogsAudit(ctx, e, rest)
	case "retention":
		return runLogsRetention(ctx, e, rest)
	}
	return usageErrorf("unknown logs subcommand %q (see fhirsync logs --help)", sub)
}

// openLogs opens the database and the sync log on it, configured by the
// logs section of the configuration.
func (e *env) openLogs(ctx context.Context) (*logs.Store, error) {
	db, err := e.openDB(ctx)
	if err != nil {
		return nil, err
	}
	lc := e.cfg.Logs
	lc.Logger = e.logger()
	return logs.New(db, lc, nil)
}

func runLogsReasons(e *env, args []string) error {
	fs := e.newFlagSet("logs reasons", "logs reasons [--json]", "List every reason code a decision can carry, with the outcomes it goes with, its meaning and the suggested action.")
	asJSON := fs.Bool("json", false, "print JSON")
	if done, err := parseFlags(fs, args); done {
		return err
	}
	if fs.NArg() > 0 {
		return usageErrorf("logs reasons takes no arguments")
	}
	if *asJSON {
		return writeJSON(e.stdout, logs.Reasons())
	}
	for _, r := range logs.Reasons() {
		outs := make([]string, len(r.Outcomes))
		for i, o := range r.Outcomes {
			outs[i] = string(o)
		}
		fmt.Fprintf(e.stdout, "%s (%s)\n    %s\n    Action: %s\n", r.Code, strings.Join(outs, ", "), r.Meaning, r.Action)
	}
	return nil
}

// filterFlags declares the decision filter flags on fs; the returned
// function builds the filter after parsing.
func filterFlags(fs *flag.FlagSet) func() (logs.Filter, error) {
	record := fs.String("record", "", "record `id` (source or target): the record's timeline")
	typ := fs.String("type", "", "record `type`, narrows --record (e.g. Patient, contact)")
	key := fs.String("key", "", "business key `name=value` (e.g. mrn=12345): the record's timeline")
	entityMap := fs.String("map", "", "entity map `name`")
	outcome := fs.String("outcome", "", "outcome: sent, skipped, held, failed or dead_lettered")
	reason := fs.String("reason", "", "reason `code` (see fhirsync logs reasons)")
	direction := fs.String("direction", "", "fhir_to_crm or crm_to_fhir")
	messageID := fs.String("message-id", "", "queue message `id`")
	since := fs.Duration("since", 0, "only decisions newer than this `duration` (e.g. 24h)")
	from := fs.String("from", "", "only decisions at or after this RFC 3339 `time`")
	to := fs.String("to", "", "only decisions before this RFC 3339 `time`")
	return func() (logs.Filter, error) {
		f := logs.Filter{
			Record: *record, RecordType: *typ, EntityMap: *entityMap, MessageID: *messageID,
			Outcome: logs.Outcome(*outcome), Reason: logs.ReasonCode(*reason), Direction: logs.Direction(*direction),
		}
		if *key != "" {
			name, value, ok := strings.Cut(*key, "=")
			if !ok || name == "" || value == "" {
				return f, usageErrorf("--key must be name=value")
			}
			f.BusinessKey = logs.BusinessKey{Name: name, Value: value}
		}
		if *since < 0 {
			return f, usageErrorf("--since must be positive")
		}
		if *since > 0 {
			if *from != "" {
				return f, usageErrorf("use --since or --from, not both")
			}
			f.From = time.Now().Add(-*since)
		}
		for _, t := range []struct {
			flag, value string
			dst         *time.Time
		}{{"from", *from, &f.From}, {"to", *to, &f.To}} {
			if t.value == "" {
				continue
			}
			v, err := time.Parse(time.RFC3339, t.value)
			if err != nil {
				return f, usageErrorf("--%s %q is not an RFC 3339 time (e.g. 2026-03-01T12:00:00Z)", t.flag, t.value)
			}
			*t.dst = v
		}
		return f, nil
	}
}

// filterError turns a bad filter value into a usage error.
func filterError(err error) error {
	if errors.Is(err, logs.ErrBadFilter) || errors.Is(err, logs.ErrBadCursor) {
		return usageErrorf("%v", err)
	}
	return err
}

func runLogsSearch(ctx context.Context, e *env, args []string) error {
	fs := e.newFlagSet("logs search", "logs search [filters] [--limit N] [--after CURSOR] [--json]",
		"List decisions matching the filters, newest first. The cursor for the next page is printed last.")
	filter := filterFlags(fs)
	limit := fs.Int("limit", 50, "decisions per page (1-1000)")
	after := fs.String("after", "", "continue after this page `cursor`")
	asJSON := fs.Bool("json", false, "print the page as JSON")
	if done, err := parseFlags(fs, args); done {
		return err
	}
	if fs.NArg() > 0 {
		return usageErrorf("logs search takes flags only, got %q", fs.Arg(0))
	}
	f, err := filter()
	if err != nil {
		return err
	}
	store, err := e.openLogs(ctx)
	if err != nil {
		return err
	}
	page, err := store.Search(ctx, f, *after, *limit)
	if err != nil {
		return filterError(err)
	}
	if *asJSON {
		return writeJSON(e.stdout, page)
	}
	tw := tabwriter.NewWriter(e.stdout, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "ID\tTIME\tDIRECTION\tMAP\tSOURCE\tTARGET\tOUTCOME\tREASON\tMESSAGE")
	for _, d := range page.Decisions {
		m := d.EntityMap
		if m != "" {
			m += "@v" + strconv.Itoa(d.MapVersion)
		}
		fmt.Fprintf(tw, "%d\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n", d.ID, d.Time.Format(time.RFC3339), d.Direction,
			dash(m), refText(d.Source), refText(d.Target), d.Outcome, d.Reason, oneLine(d.Message))
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	if page.Next != "" {
		fmt.Fprintf(e.stdout, "\nmore: fhirsync logs search ... --after %s\n", page.Next)
	}
	return nil
}

func runLogsShow(ctx context.Context, e *env, args []string) error {
	fs := e.newFlagSet("logs show", "logs show [--json] ID", "Print one decision in full, with its reason's meaning and suggested action.")
	asJSON := fs.Bool("json", false, "print JSON")
	if done, err := parseFlags(fs, args); done {
		return err
	}
	if fs.NArg() != 1 {
		return usageErrorf("logs show needs exactly one decision id")
	}
	id, err := strconv.ParseInt(fs.Arg(0), 10, 64)
	if err != nil || id <= 0 {
		return usageErrorf("decision id %q is not a positive number", fs.Arg(0))
	}
	store, err := e.openLogs(ctx)
	if err != nil {
		return err
	}
	d, err := store.Get(ctx, id)
	if err != nil {
		return err
	}
	if *asJSON {
		return writeJSON(e.stdout, d)
	}
	tw := tabwriter.NewWriter(e.stdout, 0, 0, 2, ' ', 0)
	row := func(k, v string) { fmt.Fprintf(tw, "%s:\t%s\n", k, v) }
	row("decision", strconv.FormatInt(d.ID, 10))
	row("time", d.Time.Format(time.RFC3339Nano))
	row("outcome", string(d.Outcome))
	row("reason", string(d.Reason))
	if r, ok := logs.LookupReason(d.Reason); ok {
		row("meaning", r.Meaning)
		row("action", r.Action)
	}
	if d.ReasonSubject != "" {
		row("subject", d.ReasonSubject)
	}
	row("message", dash(d.Message))
	row("direction", string(d.Direction))
	m := dash(d.EntityMap)
	if d.EntityMap != "" {
		m += " (version " + strconv.Itoa(d.MapVersion) + ")"
	}
	row("entity map", m)
	row("source", refText(d.Source))
	row("target", refText(d.Target))
	names := make([]string, len(d.BusinessKeys))
	for i, k := range d.BusinessKeys {
		names[i] = k.Name
	}
	row("business keys", dash(strings.Join(names, ", ")))
	row("changed fields", dash(strings.Join(d.ChangedFields, ", ")))
	row("correlation id", dash(d.CorrelationID))
	row("message id", dash(d.MessageID))
	row("duration", d.Duration.String())
	row("payload capture", map[bool]string{true: "stored (encrypted; PHI permission needed to view)", false: "none"}[d.Captured])
	for i, a := range d.Attempts {
		class := a.ErrorClass
		if class == "" {
			class = "ok"
		}
		row(fmt.Sprintf("attempt %d", i+1), fmt.Sprintf("%s %s retryable=%t", a.At.Format(time.RFC3339), class, a.Retryable))
	}
	if te := d.LastError(); te != nil {
		// The message with the values it quotes elided; the whole one is
		// in the payload capture, for the PHI permission.
		row("target's answer", strings.TrimSpace(fmt.Sprintf("%s HTTP %d %s", te.Code, te.Status, te.Message)))
	}
	return tw.Flush()
}

func runLogsExport(ctx context.Context, e *env, args []string) error {
	fs := e.newFlagSet("logs export", "logs export --format csv|ndjson [filters] [--output FILE]",
		"Write every decision matching the filters, newest first. Business keys appear by name only; payload captures never.")
	filter := filterFlags(fs)
	format := fs.String("format", "", "csv or ndjson (required)")
	output := fs.String("output", "", "write to this `file` instead of standard output")
	if done, err := parseFlags(fs, args); done {
		return err
	}
	if fs.NArg() > 0 {
		return usageErrorf("logs export takes flags only, got %q", fs.Arg(0))
	}
	ft, err := logs.ParseFormat(*format)
	if err != nil {
		return usageErrorf("--format must be csv or ndjson")
	}
	f, err := filter()
	if err != nil {
		return err
	}
	store, err := e.openLogs(ctx)
	if err != nil {
		return err
	}
	return withOutput(e, *output, func(w io.Writer) error {
		n, err := store.Export(ctx, w, ft, f)
		if err != nil {
			return filterError(err)
		}
		if *output != "" {
			fmt.Fprintf(e.stderr, "exported %d decisions to %s\n", n, *output)
		}
		return nil
	})
}

func runLogsAudit(ctx context.Context, e *env, args []string) error {
	fs := e.newFlagSet("logs audit", "logs audit [--actor A] [--action A] [--object-type T] [--object-id ID] [--format csv|ndjson] [--output FILE]",
		"List the audit trail, newest first: who did what to which object, and when. With --format, export every matching entry.")
	actor := fs.String("actor", "", "only entries by this `user`")
	action := fs.String("action", "", "only this `action` (e.g. capture.view, map.publish)")
	objType := fs.String("object-type", "", "only objects of this `type`")
	objID := fs.String("object-id", "", "only this object `id`")
	since := fs.Duration("since", 0, "only entries newer than this `duration`")
	limit := fs.Int("limit", 50, "entries to list (1-1000) without --format")
	format := fs.String("format", "", "export as csv or ndjson")
	output := fs.String("output", "", "write the export to this `file`")
	if done, err := parseFlags(fs, args); done {
		return err
	}
	if fs.NArg() > 0 {
		return usageErrorf("logs audit takes flags only, got %q", fs.Arg(0))
	}
	f := logs.AuditFilter{Actor: *actor, Action: *action, ObjectType: *objType, ObjectID: *objID}
	if *since > 0 {
		f.From = time.Now().Add(-*since)
	}
	store, err := e.openLogs(ctx)
	if err != nil {
		return err
	}
	if *format != "" {
		ft, err := logs.ParseFormat(*format)
		if err != nil {
			return usageErrorf("--format must be csv or ndjson")
		}
		return withOutput(e, *output, func(w io.Writer) error {
			_, err := store.ExportAudit(ctx, w, ft, f)
			return err
		})
	}
	page, err := store.Audit(ctx, f, "", *limit)
	if err != nil {
		return filterError(err)
	}
	tw := tabwriter.NewWriter(e.stdout, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "ID\tTIME\tACTOR\tACTION\tOBJECT\tBEFORE\tAFTER")
	for _, a := range page.Entries {
		fmt.Fprintf(tw, "%d\t%s\t%s\t%s\t%s\t%s\t%s\n", a.ID, a.At.Format(time.RFC3339), a.Actor, a.Action,
			dash(strings.Trim(a.ObjectType+"/"+a.ObjectID, "/")), dash(oneLine(a.Before)), dash(oneLine(a.After)))
	}
	return tw.Flush()
}

func runLogsRetention(ctx context.Context, e *env, args []string) error {
	fs := e.newFlagSet("logs retention", "logs retention [--run] [--json]",
		"Print the retention and payload capture policy. With --run, delete what has expired now, in bounded batches.")
	runNow := fs.Bool("run", false, "prune expired decisions, captures and settled held conflicts now")
	asJSON := fs.Bool("json", false, "print JSON")
	if done, err := parseFlags(fs, args); done {
		return err
	}
	if fs.NArg() > 0 {
		return usageErrorf("logs retention takes no arguments")
	}
	store, err := e.openLogs(ctx)
	if err != nil {
		return err
	}
	p := store.Policy()
	if *runNow {
		res, err := store.Prune(ctx)
		if err != nil {
			return err
		}
		fmt.Fprintf(e.stderr, "deleted %d decisions, %d payload captures and %d settled held conflicts in %d batches\n",
			res.Decisions, res.Captures, res.Conflicts, res.Batches)
	}
	if *asJSON {
		return writeJSON(e.stdout, p)
	}
	tw := tabwriter.NewWriter(e.stdout, 0, 0, 2, ' ', 0)
	fmt.Fprintf(tw, "decisions kept for:\t%s\n", days(p.MaxAge))
	fmt.Fprintf(tw, "schedule (UTC):\t%s\n", p.Schedule)
	fmt.Fprintf(tw, "batch size:\t%d\n", p.BatchSize)
	capture := "off"
	if p.CaptureEnabled {
		capture = "on, kept for " + days(p.CaptureMaxAge)
	}
	fmt.Fprintf(tw, "payload capture:\t%s\n", capture)
	keys := "not recorded (logs.key_secret is not set)"
	if p.BusinessKeys {
		keys = "recorded as keyed hashes"
	}
	fmt.Fprintf(tw, "business keys:\t%s\n", keys)
	return tw.Flush()
}

func withOutput(e *env, path string, fn func(io.Writer) error) error {
	if path == "" {
		return fn(e.stdout)
	}
	f, err := os.OpenFile(path, os.O_CREATE|os.O_WRONLY|os.O_TRUNC, 0o600)
	if err != nil {
		return fmt.Errorf("creating export file: %w", err)
	}
	if err := fn(f); err != nil {
		_ = f.Close()
		return err
	}
	return f.Close()
}

func writeJSON(w io.Writer, v any) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}

func refText(r logs.Ref) string {
	if r.Type == "" && r.ID == "" {
		return "-"
	}
	return r.String()
}

func dash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

func days(d time.Duration) string {
	if d%(24*time.Hour) == 0 {
		return fmt.Sprintf("%d days", d/(24*time.Hour))
	}
	return d.String()
}
