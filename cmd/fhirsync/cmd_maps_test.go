package main

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/fhirsync/fhirsync/maps/starter"
	"github.com/fhirsync/fhirsync/storage/storagetest"
)

func TestMapsCommand(t *testing.T) {
	t.Parallel()
	for _, d := range storagetest.Dialects {
		t.Run(string(d), func(t *testing.T) {
			t.Parallel()
			dir := t.TempDir()
			good := filepath.Join(dir, "starter.yaml")
			if err := os.WriteFile(good, starter.YAML(), 0o600); err != nil {
				t.Fatal(err)
			}
			bad := filepath.Join(dir, "bad.yaml")
			broken := strings.Replace(string(starter.YAML()), "fhirType: Patient", "fhirType: Patientt", 1)
			if err := os.WriteFile(bad, []byte(broken), 0o600); err != nil {
				t.Fatal(err)
			}
			env := envFrom(map[string]string{"FHIRSYNC_DATA_DIR": dir, "FHIRSYNC_DATABASE_URL": storagetest.URL(t, d)})
			call := func(args ...string) (string, int) {
				t.Helper()
				var stdout, stderr bytes.Buffer
				err := run(context.Background(), append([]string{"maps"}, args...), env, &stdout, &stderr)
				return stdout.String() + stderr.String(), exitCode(err, &stderr)
			}

			if out, code := call("validate", good); code != 0 || !strings.Contains(out, "valid (30 entity maps") {
				t.Fatalf("validate starter: exit %d\n%s", code, out)
			}
			if out, code := call("validate", bad); code == 0 || !strings.Contains(out, "Patientt") {
				t.Fatalf("validate a map with an unknown resource type: exit %d, want failure naming it\n%s", code, out)
			}
			if out, code := call("import", "--publish", "--note", "first", good); code != 0 ||
				!strings.Contains(out, "stored draft version 1") || !strings.Contains(out, "published version 1") {
				t.Fatalf("import --publish: exit %d\n%s", code, out)
			}
			if out, code := call("import", bad); code == 0 {
				t.Fatalf("importing a bad map set succeeded:\n%s", out)
			}
			if out, code := call("list"); code != 0 || !strings.Contains(out, "1") {
				t.Fatalf("list: exit %d\n%s", code, out)
			}
			exported := filepath.Join(dir, "export.yaml")
			if out, code := call("export", "--out", exported); code != 0 {
				t.Fatalf("export: exit %d\n%s", code, out)
			}
			got, err := os.ReadFile(exported)
			if err != nil {
				t.Fatal(err)
			}
			if out, code := call("validate", exported); code != 0 {
				t.Fatalf("the exported set does not validate: exit %d\n%s\n%s", code, out, got)
			}
			if out, code := call("test", good); code != 0 || !strings.Contains(out, " 0 failed") {
				t.Fatalf("test starter samples: exit %d\n%s", code, out)
			}
		})
	}
}
