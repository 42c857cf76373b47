package main

import (
	"bytes"
	"context"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/fhirsync/fhirsync/maps"
	"github.com/fhirsync/fhirsync/sandbox/crmserver"
)

func TestMapsImportMSA(t *testing.T) {
	t.Parallel()
	const dir = "../../maps/msaimport/testdata/msa/"
	tests := []struct {
		name    string
		args    []string
		wantErr string
	}{
		{name: "fixtures", args: []string{"--entity-maps", dir + "entity-maps.csv", "--attribute-maps", dir + "attribute-maps.csv"}},
		{name: "missing file", args: []string{"--entity-maps", dir + "nope.csv", "--attribute-maps", dir + "attribute-maps.csv"}, wantErr: "nope.csv"},
		{name: "wrong export", args: []string{"--entity-maps", dir + "attribute-maps.csv", "--attribute-maps", dir + "attribute-maps.csv"}, wantErr: "no column"},
		{name: "no flags", args: nil, wantErr: "needs --entity-maps"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			var stdout, stderr bytes.Buffer
			err := run(context.Background(), append([]string{"maps", "import-msa"}, tc.args...), envFrom(nil), &stdout, &stderr)
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("err = %v, want one mentioning %q", err, tc.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatalf("import-msa: %v\n%s", err, stderr.String())
			}
			if _, _, err := maps.Import(stdout.Bytes(), maps.CompileOptions{}); err != nil {
				t.Fatalf("the written map set does not validate: %v", err)
			}
			if !strings.Contains(stderr.String(), "not translated\n") || !strings.Contains(stderr.String(), "recursive descent") {
				t.Errorf("the report lacks the counts or the reasons:\n%s", stderr.String())
			}
		})
	}
}

// TestMapsImportMSAWithMetadata converts the fixtures against the sandbox
// CRM's EntityDefinitions, writes the set with --out, and checks that it
// validates against that metadata, as maps validate --crm-metadata would.
func TestMapsImportMSAWithMetadata(t *testing.T) {
	t.Parallel()
	cs, err := crmserver.New(crmserver.Options{})
	if err != nil {
		t.Fatal(err)
	}
	hs := httptest.NewServer(cs)
	t.Cleanup(hs.Close)
	res, err := http.Get(hs.URL + crmserver.APIPath + "EntityDefinitions?$expand=Attributes,Keys")
	if err != nil {
		t.Fatal(err)
	}
	body, err := io.ReadAll(res.Body)
	res.Body.Close()
	if err != nil || res.StatusCode != http.StatusOK {
		t.Fatalf("EntityDefinitions: %d %v", res.StatusCode, err)
	}
	dir := t.TempDir()
	mdFile, outFile := filepath.Join(dir, "metadata.json"), filepath.Join(dir, "imported.yaml")
	if err := os.WriteFile(mdFile, body, 0o600); err != nil {
		t.Fatal(err)
	}
	const fixtures = "../../maps/msaimport/testdata/msa/"
	var stdout, stderr bytes.Buffer
	err = run(context.Background(), []string{"maps", "import-msa", "--crm-metadata", mdFile, "--out", outFile,
		"--entity-maps", fixtures + "entity-maps.csv", "--attribute-maps", fixtures + "attribute-maps.csv"}, envFrom(nil), &stdout, &stderr)
	if err != nil {
		t.Fatalf("import-msa: %v\n%s", err, stderr.String())
	}
	if stdout.Len() != 0 {
		t.Errorf("with --out, standard output holds %q", stdout.String())
	}
	stdout.Reset()
	if err := run(context.Background(), []string{"maps", "validate", "--crm-metadata", mdFile, outFile}, envFrom(nil), &stdout, &stderr); err != nil {
		t.Fatalf("maps validate of the imported set: %v\n%s", err, stdout.String())
	}
	// The care team member lookups convert as one lookup by type, and the
	// one that cannot join them is listed.
	if !strings.Contains(stderr.String(), `carried over together as the lookup by type "member"`) ||
		!strings.Contains(stderr.String(), "not-translated: entity map care-team / expansion careteamparticipant / attribute msemr_memberrelatedperson") {
		t.Errorf("the report does not account for the care team member lookups:\n%s", stderr.String())
	}
}
