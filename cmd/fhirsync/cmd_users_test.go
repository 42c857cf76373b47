package main

import (
	"bytes"
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/fhirsync/fhirsync/logs"
	"github.com/fhirsync/fhirsync/storage"
)

func TestUsersCommand(t *testing.T) {
	t.Parallel()
	dataDir := t.TempDir()
	getenv := envFrom(map[string]string{"FHIRSYNC_DATA_DIR": dataDir})
	pwFile := filepath.Join(t.TempDir(), "pw")
	if err := os.WriteFile(pwFile, []byte("a chosen password\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	steps := []struct {
		name      string
		args      []string
		wantOut   string
		wantErr   string
		wantUsage bool
	}{
		{name: "create with one-time password", args: []string{"create", "--email", "Ann@Example.org", "--role", "admin"},
			wantOut: "one-time password: "},
		{name: "create from a password file", args: []string{"create", "--email", "bo@example.org", "--role", "auditor", "--phi", "--password-file", pwFile},
			wantOut: "created bo@example.org (auditor"},
		{name: "duplicate email", args: []string{"create", "--email", "ann@example.org", "--role", "viewer"}, wantErr: "already used"},
		{name: "unknown role", args: []string{"create", "--email", "c@example.org", "--role", "root"}, wantUsage: true},
		{name: "missing email", args: []string{"create", "--role", "viewer"}, wantUsage: true},
		{name: "list", args: []string{"list"}, wantOut: "2 bo@example.org auditor true active password never"},
		{name: "last admin stays", args: []string{"set-role", "ann@example.org", "viewer"}, wantErr: "last enabled admin"},
		{name: "set role", args: []string{"set-role", "bo@example.org", "admin"}, wantOut: "bo@example.org is now admin"},
		{name: "set phi", args: []string{"set-phi", "bo@example.org", "false"}, wantOut: "PHI permission: false"},
		{name: "disable", args: []string{"disable", "ann@example.org"}, wantOut: "ann@example.org disabled"},
		{name: "unknown user", args: []string{"disable", "nobody@example.org"}, wantErr: "user not found"},
		{name: "reset password", args: []string{"reset-password", "bo@example.org"}, wantOut: "one-time password: "},
		{name: "unknown command", args: []string{"delete", "bo@example.org"}, wantUsage: true},
	}
	for _, s := range steps {
		var out bytes.Buffer
		err := run(context.Background(), append([]string{"users"}, s.args...), getenv, &out, &out)
		var ue *usageError
		switch {
		case s.wantUsage:
			if !errors.As(err, &ue) {
				t.Errorf("%s: err = %v, want a usage error", s.name, err)
			}
		case s.wantErr != "":
			if err == nil || !strings.Contains(err.Error(), s.wantErr) {
				t.Errorf("%s: err = %v, want %q", s.name, err, s.wantErr)
			}
		default:
			if err != nil || !strings.Contains(squeeze(out.String()), s.wantOut) {
				t.Errorf("%s: err = %v, output %q; want %q", s.name, err, out.String(), s.wantOut)
			}
		}
	}

	var out bytes.Buffer
	if err := run(context.Background(), []string{"users", "list"}, getenv, &out, &out); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(squeeze(out.String()), "ann@example.org admin false disabled") {
		t.Errorf("list after the changes:\n%s", out.String())
	}

	// The command line's changes are in the audit trail, under "cli".
	db, err := storage.Open(context.Background(), "", storage.Options{DataDir: dataDir})
	if err != nil {
		t.Fatal(err)
	}
	defer storage.Close(db)
	trail, err := logs.New(db, logs.Config{}, nil)
	if err != nil {
		t.Fatal(err)
	}
	page, err := trail.Audit(context.Background(), logs.AuditFilter{Actor: "cli"}, "", 100)
	if err != nil {
		t.Fatal(err)
	}
	var actions []string
	for _, e := range page.Entries {
		actions = append(actions, e.Action)
	}
	if got := strings.Join(actions, " "); got != "user.password user.disable user.phi user.role user.create user.create" {
		t.Errorf("audit trail of the cli: %s", got)
	}
}

// squeeze collapses runs of spaces, so table columns compare as words.
func squeeze(s string) string {
	lines := strings.Split(s, "\n")
	for i, l := range lines {
		lines[i] = strings.Join(strings.Fields(l), " ")
	}
	return strings.Join(lines, "\n")
}
