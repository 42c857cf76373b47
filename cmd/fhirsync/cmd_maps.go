package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"strconv"
	"text/tabwriter"

	"github.com/fhirsync/fhirsync/maps"
	"github.com/fhirsync/fhirsync/maps/starter"
)

const mapsSynopsis = `maps <import|export|validate|test|publish|list|import-msa> [flags] [args]`

const mapsAbout = `Manage the map sets that decide what travels between FHIR and the CRM.

  import FILE        validate FILE and store it as a new draft version (--publish to make it current)
  export             write the current published map set (or --version N) as YAML
  validate FILE      check FILE and report every problem with its location; stores nothing
  test FILE|NAME     run the sample cases of a YAML file, of the built-in "starter" set,
                     or of the entity map NAME in the current published set
  publish VERSION    publish a draft, or publish an earlier version again (rollback)
  list               list stored versions, newest first
  import-msa         convert the retired FHIR Sync Agent's exported maps into a map set`

func runMaps(ctx context.Context, e *env, args []string) error {
	if len(args) == 0 {
		return usageErrorf("maps needs a subcommand: import, export, validate, test, publish, list or import-msa (see fhirsync maps --help)")
	}
	sub, rest := args[0], args[1:]
	switch sub {
	case "import":
		return runMapsImport(ctx, e, rest)
	case "export":
		return runMapsExport(ctx, e, rest)
	case "validate":
		return runMapsValidate(ctx, e, rest)
	case "test":
		return runMapsTest(ctx, e, rest)
	case "publish":
		return runMapsPublish(ctx, e, rest)
	case "list":
		return runMapsList(ctx, e, rest)
	case "import-msa":
		return runMapsImportMSA(ctx, e, rest)
	case "-h", "--help", "-help", "help":
		fs := e.newFlagSet("maps", mapsSynopsis, mapsAbout)
		fs.Usage()
		return nil
	}
	return usageErrorf("unknown maps subcommand %q (see fhirsync maps --help)", sub)
}

// crmMetadataFlag adds --crm-metadata and returns a loader for it.
func crmMetadataFlag(fs *flag.FlagSet) func() (*maps.CRMMetadata, error) {
	p := fs.String("crm-metadata", "", "Dataverse EntityDefinitions JSON `file` to check CRM entities and attributes against")
	return func() (*maps.CRMMetadata, error) {
		if *p == "" {
			return nil, nil
		}
		raw, err := os.ReadFile(*p)
		if err != nil {
			return nil, fmt.Errorf("reading CRM metadata: %w", err)
		}
		return maps.ParseCRMMetadata(raw)
	}
}

func defaultUser(e *env) string {
	if u := e.getenv("USER"); u != "" {
		return u
	}
	return "cli"
}

func (e *env) mapStore(ctx context.Context, md *maps.CRMMetadata) (*maps.Store, error) {
	db, err := e.openDB(ctx)
	if err != nil {
		return nil, err
	}
	return maps.New(db, maps.Options{CRM: md, Logger: e.logger()})
}

// reportProblems prints a validation error's problems one per line and
// returns a short error for the exit status.
func reportProblems(w io.Writer, file string, err error) error {
	var ve *maps.ValidationError
	if !errors.As(err, &ve) {
		return err
	}
	for _, p := range ve.Problems {
		fmt.Fprintf(w, "%s: %s\n", file, p)
	}
	return fmt.Errorf("%s: %d problem(s) in the map set", file, len(ve.Problems))
}

func oneFile(fs *flag.FlagSet, what string) (string, error) {
	if fs.NArg() != 1 {
		return "", usageErrorf("%s takes one FILE argument", what)
	}
	return fs.Arg(0), nil
}

func runMapsImport(ctx context.Context, e *env, args []string) error {
	fs := e.newFlagSet("maps import", "maps import [--publish] [--note TEXT] FILE", "Validate FILE and store it as a new draft version.")
	md := crmMetadataFlag(fs)
	publish := fs.Bool("publish", false, "publish the new version at once")
	note := fs.String("note", "", "a note describing the version")
	by := fs.String("by", defaultUser(e), "who made the change (recorded with the version)")
	if done, err := parseFlags(fs, args); done {
		return err
	}
	file, doc, meta, err := importFile(e, fs, "maps import", md)
	if err != nil {
		return err
	}
	st, err := e.mapStore(ctx, meta)
	if err != nil {
		return err
	}
	v, err := st.CreateDraft(ctx, doc, *by, *note)
	if err != nil {
		return reportProblems(e.stdout, file, err)
	}
	fmt.Fprintf(e.stdout, "stored draft version %d (%d entity maps)\n", v.Number, len(doc.EntityMaps))
	if *publish {
		if _, err := st.Publish(ctx, v.Number, *by, *note); err != nil {
			return err
		}
		fmt.Fprintf(e.stdout, "published version %d\n", v.Number)
	}
	return nil
}

func runMapsExport(ctx context.Context, e *env, args []string) error {
	fs := e.newFlagSet("maps export", "maps export [--version N] [--out FILE]", "Write a stored map set as YAML (default: the current published one).")
	version := fs.Int("version", 0, "the version `number` to export (default: current)")
	out := fs.String("out", "", "write to `file` instead of standard output")
	if done, err := parseFlags(fs, args); done {
		return err
	}
	if fs.NArg() != 0 {
		return usageErrorf("maps export takes no arguments")
	}
	st, err := e.mapStore(ctx, nil)
	if err != nil {
		return err
	}
	var doc *maps.Document
	if *version > 0 {
		doc, _, err = st.Version(ctx, *version)
	} else {
		var set *maps.Set
		if set, err = st.Current(ctx); err == nil {
			doc = set.Document()
		} else {
			err = e.nothingPublished(err)
		}
	}
	if err != nil {
		return err
	}
	raw, err := maps.Export(doc)
	if err != nil {
		return err
	}
	if *out != "" {
		return os.WriteFile(*out, raw, 0o600) // files the process writes are private
	}
	_, err = e.stdout.Write(raw)
	return err
}

// nothingPublished turns the error of reading the current map set of a
// database where none is published yet into what to do about it: a new
// database holds no maps until a map set is imported and published.
func (e *env) nothingPublished(err error) error {
	if !errors.Is(err, maps.ErrNotFound) {
		return err
	}
	config := ""
	if e.configPath != "" {
		config = " --config " + e.configPath
	}
	return fmt.Errorf("no map set is published in %s yet; import and publish one first, "+
		"e.g. the starter maps from the source tree: fhirsync%s maps import --publish maps/starter/starter.yaml (%w)",
		e.describeDB(), config, err)
}

// importFile reads the command's FILE argument and the --crm-metadata
// snapshot and validates the map set, printing every problem it finds.
func importFile(e *env, fs *flag.FlagSet, cmd string, md func() (*maps.CRMMetadata, error)) (string, *maps.Document, *maps.CRMMetadata, error) {
	file, err := oneFile(fs, cmd)
	if err != nil {
		return "", nil, nil, err
	}
	raw, err := os.ReadFile(file)
	if err != nil {
		return "", nil, nil, err
	}
	meta, err := md()
	if err != nil {
		return "", nil, nil, err
	}
	doc, _, err := maps.Import(raw, maps.CompileOptions{CRM: meta})
	if err != nil {
		return "", nil, nil, reportProblems(e.stdout, file, err)
	}
	return file, doc, meta, nil
}

func runMapsValidate(_ context.Context, e *env, args []string) error {
	fs := e.newFlagSet("maps validate", "maps validate [--crm-metadata FILE] FILE", "Check a YAML map set and report every problem with its location. Nothing is stored.")
	md := crmMetadataFlag(fs)
	if done, err := parseFlags(fs, args); done {
		return err
	}
	file, doc, _, err := importFile(e, fs, "maps validate", md)
	if err != nil {
		return err
	}
	fmt.Fprintf(e.stdout, "%s: valid (%d entity maps, %d value maps)\n", file, len(doc.EntityMaps), len(doc.ValueMaps))
	return nil
}

func runMapsTest(ctx context.Context, e *env, args []string) error {
	fs := e.newFlagSet("maps test", "maps test [-v] FILE|starter|NAME", `Run sample cases: those of a YAML map set FILE, of the built-in starter set,
or of the entity map NAME in the current published set.`)
	verbose := fs.Bool("v", false, "list passing samples too")
	if done, err := parseFlags(fs, args); done {
		return err
	}
	if fs.NArg() != 1 {
		return usageErrorf("maps test takes one FILE or NAME argument")
	}
	arg := fs.Arg(0)
	var (
		set  *maps.Set
		only string
	)
	switch raw, err := os.ReadFile(arg); {
	case err == nil:
		if _, set, err = maps.Import(raw, maps.CompileOptions{}); err != nil {
			return reportProblems(e.stdout, arg, err)
		}
	case arg == "starter":
		if _, set, err = maps.Import(starter.YAML(), maps.CompileOptions{}); err != nil {
			return err
		}
	case errors.Is(err, os.ErrNotExist):
		st, err := e.mapStore(ctx, nil)
		if err != nil {
			return err
		}
		if set, err = st.Current(ctx); err != nil {
			return e.nothingPublished(err)
		}
		if _, ok := set.Map(arg); !ok {
			return usageErrorf("%q is neither a file nor an entity map of the current map set (version %d)", arg, set.Version())
		}
		only = arg
	default:
		return err
	}
	var results []maps.SampleResult
	if only != "" {
		m, _ := set.Map(only)
		for _, s := range m.Def().Samples {
			results = append(results, maps.RunSample(ctx, m, s))
		}
	} else {
		results = maps.RunSamples(ctx, set)
	}
	failed := 0
	for _, r := range results {
		name := r.Map + " / " + r.Sample
		switch {
		case r.ParseError != nil:
			failed++
			fmt.Fprintf(e.stdout, "ERROR %s: sample does not parse: %v\n", name, r.ParseError)
		case r.EvalError != nil:
			failed++
			fmt.Fprintf(e.stdout, "ERROR %s: evaluation failed: %v\n", name, r.EvalError)
		case len(r.Mismatches) > 0:
			failed++
			fmt.Fprintf(e.stdout, "FAIL  %s\n", name)
			for _, m := range r.Mismatches {
				fmt.Fprintf(e.stdout, "        %s\n", m)
			}
		case *verbose:
			fmt.Fprintf(e.stdout, "ok    %s (%s)\n", name, r.Decision)
		}
	}
	fmt.Fprintf(e.stdout, "%d samples, %d passed, %d failed\n", len(results), len(results)-failed, failed)
	if failed > 0 {
		return fmt.Errorf("%d of %d samples failed", failed, len(results))
	}
	if len(results) == 0 {
		return errors.New("no samples to run")
	}
	return nil
}

func runMapsPublish(ctx context.Context, e *env, args []string) error {
	fs := e.newFlagSet("maps publish", "maps publish [--note TEXT] VERSION", `Publish a draft version, making it current for every agent without a restart.
Publishing an earlier published version again is a rollback.`)
	note := fs.String("note", "", "a note recorded with the publication")
	by := fs.String("by", defaultUser(e), "who published (recorded with the publication)")
	if done, err := parseFlags(fs, args); done {
		return err
	}
	if fs.NArg() != 1 {
		return usageErrorf("maps publish takes one VERSION argument")
	}
	n, err := strconv.Atoi(fs.Arg(0))
	if err != nil || n <= 0 {
		return usageErrorf("VERSION must be a positive number, got %q", fs.Arg(0))
	}
	st, err := e.mapStore(ctx, nil)
	if err != nil {
		return err
	}
	if _, err := st.Publish(ctx, n, *by, *note); err != nil {
		return err
	}
	fmt.Fprintf(e.stdout, "published version %d\n", n)
	return nil
}

func runMapsList(ctx context.Context, e *env, args []string) error {
	fs := e.newFlagSet("maps list", "maps list", "List stored map set versions, newest first.")
	if done, err := parseFlags(fs, args); done {
		return err
	}
	if fs.NArg() != 0 {
		return usageErrorf("maps list takes no arguments")
	}
	st, err := e.mapStore(ctx, nil)
	if err != nil {
		return err
	}
	vs, err := st.Versions(ctx)
	if err != nil {
		return err
	}
	tw := tabwriter.NewWriter(e.stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "VERSION\tSTATUS\tCURRENT\tCREATED\tPUBLISHED\tNOTE")
	for _, v := range vs {
		cur, pub := "", ""
		if v.Current {
			cur = "*"
		}
		if v.PublishedAt != nil {
			pub = v.PublishedAt.Format("2006-01-02 15:04:05Z") + " " + v.PublishedBy
		}
		fmt.Fprintf(tw, "%d\t%s\t%s\t%s %s\t%s\t%s\n", v.Number, v.Status, cur, v.CreatedAt.Format("2006-01-02 15:04:05Z"), v.CreatedBy, pub, v.Note)
	}
	return tw.Flush()
}
