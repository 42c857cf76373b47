package main

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/fhirsync/fhirsync/logs"
	"github.com/fhirsync/fhirsync/queues"
	"github.com/fhirsync/fhirsync/queues/embedded"
	"github.com/fhirsync/fhirsync/storage"
	"github.com/fhirsync/fhirsync/storage/storagetest"
)

// deadLetterNotices puts notices for ids on queue name and dead-letters
// them with reason.
func (s *syncSetup) deadLetterNotices(t *testing.T, name, reason string, side queues.Side, typ string, ids ...string) {
	t.Helper()
	ctx := context.Background()
	q, err := embedded.New(s.db, name, embedded.Options{})
	if err != nil {
		t.Fatal(err)
	}
	for _, id := range ids {
		msg, err := queues.Notice{V: queues.NoticeVersion, Side: side, Type: typ, ID: id, Version: "1",
			Event: queues.EventUpdated, Origin: "history-poll"}.Message()
		if err != nil {
			t.Fatal(err)
		}
		if err := q.Send(ctx, msg); err != nil {
			t.Fatal(err)
		}
	}
	for n := 0; n < len(ids); {
		ms, err := q.Receive(ctx, len(ids), time.Second)
		if err != nil || len(ms) == 0 {
			t.Fatalf("receiving to dead-letter: %v (%d of %d)", err, n, len(ids))
		}
		for _, m := range ms {
			if err := q.DeadLetter(ctx, m, reason, "test"); err != nil {
				t.Fatal(err)
			}
			n++
		}
	}
}

func TestReplayCommand(t *testing.T) {
	t.Parallel()
	for _, d := range storagetest.Dialects {
		t.Run(string(d), func(t *testing.T) {
			t.Parallel()
			s := newSyncSetup(t, d, 1, 1)
			ctx := context.Background()
			st, err := logs.New(s.db, logs.Config{}, nil)
			if err != nil {
				t.Fatal(err)
			}
			now := time.Now().UTC()
			if err := st.WriteBatch(ctx, []*logs.Decision{
				{Time: now.Add(-time.Hour), Direction: logs.FHIRToCRM, EntityMap: "patient-contact", Source: logs.Ref{Type: "Patient", ID: "p1"},
					Outcome: logs.OutcomeFailed, Reason: logs.ReasonThrottled, Message: "Throttled."},
				{Time: now.Add(-2 * time.Hour), Direction: logs.FHIRToCRM, EntityMap: "patient-contact", Source: logs.Ref{Type: "Patient", ID: "p1"},
					Outcome: logs.OutcomeFailed, Reason: logs.ReasonThrottled, Message: "Throttled."},
				{Time: now.Add(-72 * time.Hour), Direction: logs.FHIRToCRM, EntityMap: "patient-contact", Source: logs.Ref{Type: "Patient", ID: "p9"},
					Outcome: logs.OutcomeFailed, Reason: logs.ReasonThrottled, Message: "Throttled."},
			}); err != nil {
				t.Fatal(err)
			}
			s.deadLetterNotices(t, "crm-changes", "unavailable", queues.SideCRM, "contact", "c1", "c2")
			s.deadLetterNotices(t, "fhir-changes", "throttled", queues.SideFHIR, "Patient", "p5")

			steps := []struct {
				name               string
				args               []string
				wantOut            []string
				wantFHIR, wantCRM  int64 // active messages afterwards
				wantDeadFHIR, wDCR int64
			}{
				{name: "one record, dry run", args: []string{"replay", "--record", "fhir:Patient/p7", "--dry-run"},
					wantOut: []string{"would replay 1 records", "fhir:Patient/p7", "maps patient-contact", "decided by the record"}, wantDeadFHIR: 1, wDCR: 2},
				{name: "one record", args: []string{"replay", "--record", "fhir:Patient/p7"},
					wantOut: []string{"replayed 1 of 1 records"}, wantFHIR: 1, wantDeadFHIR: 1, wDCR: 2},
				{name: "log query, dry run", args: []string{"replay", "--outcome", "failed", "--reason", "throttled", "--map", "patient-contact", "--since", "24h", "--dry-run"},
					wantOut: []string{"would replay 1 records", "fhir:Patient/p1", "last failed throttled"}, wantFHIR: 1, wantDeadFHIR: 1, wDCR: 2},
				{name: "log query", args: []string{"replay", "--reason", "throttled", "--since", "7d"},
					wantOut: []string{"replayed 2 of 2 records", "fhir:Patient/p1", "fhir:Patient/p9"}, wantFHIR: 3, wantDeadFHIR: 1, wDCR: 2},
				{name: "dead letters of one queue, dry run", args: []string{"replay", "--dead-letters", "--queue", "crm-changes", "--dry-run"},
					wantOut: []string{"would redrive 2 dead letters", "crm-changes seq", "crm:contact/c1", "unavailable"}, wantFHIR: 3, wantDeadFHIR: 1, wDCR: 2},
				{name: "dead letters of one queue", args: []string{"replay", "--dead-letters", "--queue", "crm-changes"},
					wantOut: []string{"redrove 2 of 2 dead letters"}, wantFHIR: 3, wantCRM: 2, wantDeadFHIR: 1},
				{name: "dead letters by reason", args: []string{"replay", "--dead-letters", "--reason", "throttled"},
					wantOut: []string{"redrove 1 of 1 dead letters", "fhir:Patient/p5"}, wantFHIR: 4, wantCRM: 2},
			}
			for _, st := range steps {
				out, errOut, code := s.run(t, st.args...)
				if code != 0 {
					t.Fatalf("%s: exit %d: %s", st.name, code, errOut)
				}
				for _, w := range st.wantOut {
					if !strings.Contains(out, w) {
						t.Fatalf("%s: output lacks %q:\n%s", st.name, w, out)
					}
				}
				f, c := s.depth(t, "fhir-changes"), s.depth(t, "crm-changes")
				if f.Active != st.wantFHIR || c.Active != st.wantCRM || f.DeadLetter != st.wantDeadFHIR || c.DeadLetter != st.wDCR {
					t.Fatalf("%s: fhir %+v crm %+v; want active %d/%d dead %d/%d", st.name, f, c, st.wantFHIR, st.wantCRM, st.wantDeadFHIR, st.wDCR)
				}
			}
			recs, dls := s.audit(t, "replay.records"), s.audit(t, "replay.deadletters")
			if len(recs) != 2 || len(dls) != 2 || !strings.HasPrefix(recs[0].Actor, "cli:") {
				t.Fatalf("audit: records %+v, dead letters %+v", recs, dls)
			}
		})
	}
}

func TestReplayCommandRedriveLimit(t *testing.T) {
	t.Parallel()
	s := newSyncSetup(t, storage.SQLite, 1, 1)
	s.deadLetterNotices(t, "fhir-changes", "throttled", queues.SideFHIR, "Patient", "p1")
	q, err := embedded.New(s.db, "fhir-changes", embedded.Options{})
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	for round := 1; round <= 2; round++ {
		out, errOut, code := s.run(t, "replay", "--dead-letters", "--max-redrives", "1")
		if code != 0 {
			t.Fatalf("round %d: exit %d: %s", round, code, errOut)
		}
		if round == 1 && !strings.Contains(out, "redrove 1 of 1") {
			t.Fatalf("round 1 output:\n%s", out)
		}
		if round == 2 && !strings.Contains(out, "held back 1 dead letters already redriven 1 times") {
			t.Fatalf("round 2 output:\n%s", out)
		}
		// The agent fails it again.
		ms, err := q.Receive(ctx, 1, 200*time.Millisecond)
		if err != nil {
			t.Fatal(err)
		}
		if round == 1 && len(ms) != 1 {
			t.Fatalf("round 1: %d messages back on the queue, want 1", len(ms))
		}
		if round == 2 && len(ms) != 0 {
			t.Fatal("round 2: the message was redriven past the limit")
		}
		for _, m := range ms {
			if err := q.DeadLetter(ctx, m, "throttled", "again"); err != nil {
				t.Fatal(err)
			}
		}
	}
}

func TestReplayCommandUsage(t *testing.T) {
	t.Parallel()
	s := newSyncSetup(t, storage.SQLite, 1, 1)
	tests := []struct {
		name       string
		args       []string
		wantStderr string
	}{
		{name: "nothing to replay", args: []string{"replay"}, wantStderr: "replay needs"},
		{name: "two modes", args: []string{"replay", "--record", "fhir:Patient/1", "--dead-letters"}, wantStderr: "not several"},
		{name: "bad record", args: []string{"replay", "--record", "Patient/1"}, wantStderr: "invalid record reference"},
		{name: "queue without dead letters", args: []string{"replay", "--record", "fhir:Patient/1", "--queue", "fhir-changes"}, wantStderr: "--queue"},
		{name: "unknown queue", args: []string{"replay", "--dead-letters", "--queue", "elsewhere"}, wantStderr: "elsewhere"},
		{name: "bad since", args: []string{"replay", "--reason", "throttled", "--since", "yesterday"}, wantStderr: "--since"},
		{name: "unknown outcome", args: []string{"replay", "--outcome", "maybe"}, wantStderr: "unknown outcome"},
		{name: "bad max redrives", args: []string{"replay", "--dead-letters", "--max-redrives", "0"}, wantStderr: "--max-redrives"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, errOut, code := s.run(t, tt.args...)
			if code != 2 || !strings.Contains(errOut, tt.wantStderr) {
				t.Fatalf("exit %d, stderr %q; want 2 and %q", code, errOut, tt.wantStderr)
			}
		})
	}
}

// TestReplayCommandNeedsTheConfiguredDatabase runs replay where there is
// no database: it must say what to configure and create nothing (it used
// to create ./data and an empty database, then report nothing to do).
func TestReplayCommandNeedsTheConfiguredDatabase(t *testing.T) {
	dir := t.TempDir()
	t.Chdir(dir)
	getenv := func(string) string { return "" }
	tests := []struct {
		name string
		args []string
	}{
		{name: "record", args: []string{"replay", "--record", "fhir:Patient/1"}},
		{name: "dead letters, dry run", args: []string{"replay", "--dead-letters", "--dry-run"}},
		{name: "log query", args: []string{"replay", "--reason", "throttled"}},
	}
	for _, tt := range tests {
		var out, errb bytes.Buffer
		err := run(context.Background(), tt.args, getenv, &out, &errb)
		code := exitCode(err, &errb)
		if code == 0 || !strings.Contains(errb.String(), "no database at data/fhirsync.db") ||
			!strings.Contains(errb.String(), "--config") {
			t.Fatalf("%s: exit %d, stderr %q; want a failure naming the missing database and --config", tt.name, code, errb.String())
		}
		entries, err := os.ReadDir(dir)
		if err != nil {
			t.Fatal(err)
		}
		if len(entries) != 0 {
			t.Fatalf("%s: replay created %v in the current directory", tt.name, entries)
		}
	}

	// A database that exists but has no fhirsync schema is refused too,
	// and left as it was.
	path := filepath.Join(dir, "other.db")
	if err := os.WriteFile(path, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	env := map[string]string{"FHIRSYNC_DATABASE_URL": "sqlite:" + path}
	var out, errb bytes.Buffer
	err := run(context.Background(), []string{"replay", "--record", "fhir:Patient/1"}, func(k string) string { return env[k] }, &out, &errb)
	if code := exitCode(err, &errb); code == 0 || !strings.Contains(errb.String(), "not ready for a replay") {
		t.Fatalf("empty database: exit %d, stderr %q", code, errb.String())
	}
}
