package main

import (
	"bytes"
	"context"
	"encoding/csv"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/fhirsync/fhirsync/logs"
	"github.com/fhirsync/fhirsync/storage"
	"github.com/fhirsync/fhirsync/storage/storagetest"
)

// testLogsSecret is the business key secret of the seeded log.
const testLogsSecret = "Y2xpLXRlc3QtYnVzaW5lc3Mta2V5LXNlY3JldA=="

// seedLogs writes three decisions and one audit entry into the database at
// url and returns the decisions.
func seedLogs(t *testing.T, url string) []*logs.Decision {
	t.Helper()
	ctx := context.Background()
	db, err := storage.Open(ctx, url, storage.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer storage.Close(db)
	if _, err := storage.Migrate(ctx, db); err != nil {
		t.Fatal(err)
	}
	s, err := logs.New(db, logs.Config{KeySecret: testLogsSecret}, nil)
	if err != nil {
		t.Fatal(err)
	}
	now := time.Now().UTC()
	ds := []*logs.Decision{
		{Time: now.Add(-2 * time.Minute), Direction: logs.FHIRToCRM, EntityMap: "patient-contact", MapVersion: 2,
			Source: logs.Ref{Type: "Patient", ID: "p1", Version: "1"}, Target: logs.Ref{Type: "contact", ID: "c1"},
			Outcome: logs.OutcomeSent, Reason: logs.ReasonCreated, Message: "Created contact c1.", ChangedFields: []string{"lastname"},
			BusinessKeys: []logs.BusinessKey{{Name: "mrn", Value: "MRN-CLI-1"}}},
		{Time: now.Add(-time.Minute), Direction: logs.FHIRToCRM, EntityMap: "patient-contact", MapVersion: 2,
			Source: logs.Ref{Type: "Patient", ID: "p1", Version: "2"}, Target: logs.Ref{Type: "contact", ID: "c1"},
			Outcome: logs.OutcomeFailed, Reason: logs.ReasonThrottled, Message: "Failed writing: http_429.",
			Attempts: []logs.Attempt{{At: now, ErrorClass: "http_429", Retryable: true,
				TargetError: &logs.TargetError{Status: 429, Code: "0x80072322", Message: "Number of requests exceeded the limit of … over time window of … seconds."}}}},
		{Time: now, Direction: logs.CRMToFHIR, Source: logs.Ref{Type: "account", ID: "a9"},
			Outcome: logs.OutcomeSkipped, Reason: logs.ReasonNoEntityMap, Message: "No published entity map covers crm account."},
	}
	if err := s.WriteBatch(ctx, ds); err != nil {
		t.Fatal(err)
	}
	if err := s.AppendAudit(ctx, logs.AuditEntry{Actor: "alice", Action: "map.publish", ObjectType: "entity_map", ObjectID: "patient-contact", After: "version 2"}); err != nil {
		t.Fatal(err)
	}
	return ds
}

func TestLogsCommand(t *testing.T) {
	t.Parallel()
	for _, d := range storagetest.Dialects {
		t.Run(string(d), func(t *testing.T) {
			t.Parallel()
			url := storagetest.URL(t, d)
			ds := seedLogs(t, url)
			dataDir := t.TempDir()
			env := envFrom(map[string]string{"FHIRSYNC_DATA_DIR": dataDir, "FHIRSYNC_DATABASE_URL": url, "FHIRSYNC_LOGS_KEY_SECRET": testLogsSecret})
			noSecret := envFrom(map[string]string{"FHIRSYNC_DATA_DIR": dataDir, "FHIRSYNC_DATABASE_URL": url})
			out := filepath.Join(t.TempDir(), "export.csv")
			tests := []struct {
				name     string
				args     []string
				noSecret bool
				wantCode int
				want     []string
				notWant  []string
			}{
				{name: "reasons", args: []string{"logs", "reasons"},
					want: []string{"attempts_exhausted (dead_lettered)", "unauthorized (failed, dead_lettered)", "Action: "}},
				{name: "reasons as json", args: []string{"logs", "reasons", "--json"}, want: []string{`"code": "own_write_echo"`}},
				{name: "record timeline", args: []string{"logs", "search", "--record", "c1"},
					want: []string{"Patient/p1/_history/2", "throttled", "created", "patient-contact@v2"}, notWant: []string{"no_entity_map"}},
				{name: "filter by outcome and direction", args: []string{"logs", "search", "--outcome", "skipped", "--direction", "crm_to_fhir", "--since", "1h"},
					want: []string{"account/a9", "no_entity_map"}, notWant: []string{"contact/c1"}},
				{name: "paging prints the cursor", args: []string{"logs", "search", "--limit", "1"}, want: []string{"--after "}},
				{name: "show", args: []string{"logs", "show", strconv.FormatInt(ds[1].ID, 10)},
					want: []string{"throttled", "asked fhirsync to slow down", "http_429 retryable=true", "patient-contact (version 2)",
						"0x80072322 HTTP 429 Number of requests exceeded the limit of … over time window"}},
				{name: "show missing", args: []string{"logs", "show", "99999"}, wantCode: 1, want: []string{"not found"}},
				{name: "show needs an id", args: []string{"logs", "show"}, wantCode: 2},
				{name: "bad outcome", args: []string{"logs", "search", "--outcome", "lost"}, wantCode: 2, want: []string{"unknown outcome"}},
				{name: "bad time", args: []string{"logs", "search", "--from", "yesterday"}, wantCode: 2, want: []string{"RFC 3339"}},
				{name: "timeline by business key", args: []string{"logs", "search", "--key", "mrn=MRN-CLI-1"},
					want: []string{"created", "Patient/p1/_history/1"}, notWant: []string{"throttled", "MRN-CLI-1"}},
				{name: "show names the business key, not its value", args: []string{"logs", "show", strconv.FormatInt(ds[0].ID, 10)},
					want: []string{"business keys:", "mrn"}, notWant: []string{"MRN-CLI-1"}},
				{name: "business keys need a secret", args: []string{"logs", "search", "--key", "mrn=1"}, noSecret: true, wantCode: 1, want: []string{"key_secret"}},
				{name: "bad key syntax", args: []string{"logs", "search", "--key", "mrn"}, wantCode: 2, want: []string{"name=value"}},
				{name: "export ndjson", args: []string{"logs", "export", "--format", "ndjson", "--map", "patient-contact"},
					want: []string{`"reason":"throttled"`, `"reason":"created"`}, notWant: []string{"no_entity_map"}},
				{name: "export needs a format", args: []string{"logs", "export"}, wantCode: 2},
				{name: "export csv to file", args: []string{"logs", "export", "--format", "csv", "--output", out}, want: []string{"exported 3 decisions"}},
				{name: "audit", args: []string{"logs", "audit"}, want: []string{"alice", "map.publish", "entity_map/patient-contact"}},
				{name: "audit export", args: []string{"logs", "audit", "--format", "ndjson", "--actor", "alice"}, want: []string{`"after":"version 2"`}},
				{name: "retention", args: []string{"logs", "retention", "--run"}, want: []string{"90 days", "@hourly", "payload capture:     off", "deleted 0 decisions"}},
				{name: "unknown subcommand", args: []string{"logs", "tail"}, wantCode: 2},
			}
			for _, tt := range tests {
				var stdout, stderr bytes.Buffer
				getenv := env
				if tt.noSecret {
					getenv = noSecret
				}
				code := exitCode(run(context.Background(), tt.args, getenv, &stdout, &stderr), &stderr)
				all := stdout.String() + stderr.String()
				if code != tt.wantCode {
					t.Errorf("%s: exit %d, want %d\n%s", tt.name, code, tt.wantCode, all)
					continue
				}
				for _, w := range tt.want {
					if !strings.Contains(all, w) {
						t.Errorf("%s: output lacks %q:\n%s", tt.name, w, all)
					}
				}
				for _, w := range tt.notWant {
					if strings.Contains(all, w) {
						t.Errorf("%s: output has %q:\n%s", tt.name, w, all)
					}
				}
			}
			f, err := os.Open(out)
			if err != nil {
				t.Fatal(err)
			}
			defer f.Close()
			recs, err := csv.NewReader(f).ReadAll()
			if err != nil || len(recs) != 4 || recs[0][0] != "id" {
				t.Fatalf("exported csv = %q, %v", recs, err)
			}
		})
	}
}
