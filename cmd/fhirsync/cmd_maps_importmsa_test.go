package main

import (
	"bytes"
	"context"
	"strings"
	"testing"

	"github.com/fhirsync/fhirsync/maps"
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
