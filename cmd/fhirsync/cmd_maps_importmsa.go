package main

import (
	"context"
	"errors"
	"fmt"
	"os"

	"github.com/fhirsync/fhirsync/maps"
	"github.com/fhirsync/fhirsync/maps/msaimport"
)

// runMapsImportMSA converts the retired FHIR Sync Agent's map exports into
// a fhirsync map set (docs/import-msa.md). It stores nothing: the result is
// reviewed, then imported with maps import.
func runMapsImportMSA(_ context.Context, e *env, args []string) error {
	fs := e.newFlagSet("maps import-msa", "maps import-msa --entity-maps FILE --attribute-maps FILE [--crm-metadata FILE] [--out FILE]",
		`Convert the retired FHIR Sync Agent's maps, as its administration app exported them
(Export to Excel of the Entity Maps and Attribute Maps views, .xlsx or saved as CSV), into a
fhirsync map set. JSONPath selects are translated to the path language or FHIRPath where
they can be; every attribute map that could not be carried over is listed with the reason.
The map set is written as YAML to standard output (or --out) and the report to standard
error. The exit status is 1 only when an input cannot be read.`)
	entities := fs.String("entity-maps", "", "the entity maps export, .xlsx or CSV `file`")
	attributes := fs.String("attribute-maps", "", "the attribute maps export, .xlsx or CSV `file`")
	out := fs.String("out", "", "write the map set to `file` instead of standard output")
	md := crmMetadataFlag(fs)
	if done, err := parseFlags(fs, args); done {
		return err
	}
	if fs.NArg() != 0 || *entities == "" || *attributes == "" {
		return usageErrorf("maps import-msa needs --entity-maps FILE and --attribute-maps FILE and takes no arguments")
	}
	meta, err := md()
	if err != nil {
		return err
	}
	rawE, err := os.ReadFile(*entities)
	if err != nil {
		return err
	}
	rawA, err := os.ReadFile(*attributes)
	if err != nil {
		return err
	}
	ems, err := msaimport.ReadEntityMaps(rawE)
	if err != nil {
		return fmt.Errorf("%s: %w", *entities, err)
	}
	ams, err := msaimport.ReadAttributeMaps(rawA)
	if err != nil {
		return fmt.Errorf("%s: %w", *attributes, err)
	}
	doc, report, err := msaimport.Convert(ems, ams, msaimport.Options{CRM: meta})
	if err != nil {
		var ve *maps.ValidationError
		if errors.As(err, &ve) {
			return reportProblems(e.stderr, "converted map set", err)
		}
		return err
	}
	raw, err := maps.Export(doc)
	if err != nil {
		return err
	}
	if err := report.Write(e.stderr); err != nil {
		return err
	}
	if *out != "" {
		return os.WriteFile(*out, raw, 0o600) // files the process writes are private
	}
	_, err = e.stdout.Write(raw)
	return err
}
