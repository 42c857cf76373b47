package agent_test

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/fhirsync/fhirsync/agent"
	"github.com/fhirsync/fhirsync/agent/internal/agenttest"
	"github.com/fhirsync/fhirsync/sandbox/synth"
	"github.com/fhirsync/fhirsync/storage/storagetest"
)

// backfillCrashPatients is the size of the backfill crash test.
const backfillCrashPatients = 3000

// backfillCommand is `fhirsync backfill` of the patients as a child
// process with the fleet's configuration.
func (f *fleet) backfillCommand(t *testing.T, env map[string]string, stdout, stderr *bytes.Buffer) *exec.Cmd {
	cmd := exec.Command(f.bin, "backfill", "--map", "patient-contact", "--side", "fhir",
		"--batch", "50", "--max-queued", "200", "--progress", "1s")
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "FHIRSYNC_") {
			cmd.Env = append(cmd.Env, kv)
		}
	}
	for k, v := range env {
		cmd.Env = append(cmd.Env, k+"="+v)
	}
	cmd.Stdout, cmd.Stderr = stdout, stderr
	return cmd
}

// patientRun is the stored run of the patients' backfill, if any.
func (f *fleet) patientRun(t *testing.T) (agent.BackfillRun, bool) {
	t.Helper()
	runs, err := agent.BackfillRuns(context.Background(), f.db, 10)
	if err != nil {
		t.Fatal(err)
	}
	for _, r := range runs {
		if r.Map == "patient-contact" && r.Side == "fhir" {
			return r, true
		}
	}
	return agent.BackfillRun{}, false
}

// TestBackfillResumesAfterSIGKILL runs `fhirsync backfill` of a few
// thousand patients beside `fhirsync serve`, kills the backfill with
// SIGKILL half way, and runs it again: it resumes from its checkpoint, and
// in the end the CRM holds exactly one contact per patient and every
// patient's notice ended in a sent (or unchanged) decision.
func TestBackfillResumesAfterSIGKILL(t *testing.T) {
	if testing.Short() {
		t.Skip("the backfill crash test syncs 3,000 records; skipped with -short")
	}
	t.Parallel()
	for _, d := range storagetest.Dialects {
		t.Run(string(d), func(t *testing.T) {
			t.Parallel()
			start := time.Now()
			f := newFleet(t, d, backfillCrashPatients)
			env := f.env(t, "FHIRSYNC_AGENT_WORKERS", "8")
			p := agenttest.Start(t, f.bin, env)
			g := synth.New(11)
			for typ, want := range map[string]int{"Organization": g.Organizations, "Practitioner": g.Practitioners} {
				if n := f.enqueueHistory(t, typ); n != want {
					t.Fatalf("the %s history gave %d notices, want %d", typ, n, want)
				}
				f.drained(t, 3*time.Minute)
			}

			var out1, err1 bytes.Buffer
			bf := f.backfillCommand(t, env, &out1, &err1)
			if err := bf.Start(); err != nil {
				t.Fatal(err)
			}
			exited := make(chan error, 1)
			go func() { exited <- bf.Wait() }()
			deadline := time.Now().Add(5 * time.Minute)
			var at agent.BackfillRun
			for {
				select {
				case err := <-exited:
					t.Fatalf("the backfill ended (%v) before it was half way; stdout:\n%s\nstderr:\n%s", err, out1.String(), err1.String())
				default:
				}
				if r, ok := f.patientRun(t); ok && r.Done >= backfillCrashPatients/2 {
					at = r
					break
				}
				if time.Now().After(deadline) {
					t.Fatalf("the backfill did not get half way within 5m; stderr:\n%s", err1.String())
				}
				time.Sleep(10 * time.Millisecond)
			}
			_ = bf.Process.Signal(syscall.SIGKILL)
			<-exited
			killed, _ := f.patientRun(t)
			t.Logf("%s: backfill killed at %d of %d enqueued (checkpoint read just before: %d) after %s",
				d, killed.Done, backfillCrashPatients, at.Done, time.Since(start).Round(time.Millisecond))
			if killed.State != agent.BackfillRunning || killed.Done >= backfillCrashPatients || killed.Total != backfillCrashPatients {
				t.Fatalf("the run after SIGKILL = %+v, want it still running short of the end, with the search's total", killed)
			}

			var out2, err2 bytes.Buffer
			resumed := time.Now()
			bf = f.backfillCommand(t, env, &out2, &err2)
			if err := bf.Run(); err != nil {
				t.Fatalf("the restarted backfill failed: %v\nstdout:\n%s\nstderr:\n%s", err, out2.String(), err2.String())
			}
			want := fmt.Sprintf("backfill of patient-contact: %d FHIR notices (fhir-changes), 0 CRM notices (crm-changes) enqueued, resumed from a checkpoint", backfillCrashPatients)
			if !strings.Contains(out2.String(), want) {
				t.Fatalf("the restarted backfill printed:\n%s\nwant %q", out2.String(), want)
			}
			if !strings.Contains(err2.String(), "backfill patient-contact fhir: ") || !strings.Contains(err2.String(), fmt.Sprintf(" of %d (", backfillCrashPatients)) {
				t.Errorf("the restarted backfill printed no progress with the total; stderr:\n%s", err2.String())
			}
			for i := range 20 {
				if id := synth.PatientID(i); strings.Contains(err1.String()+err2.String(), id) {
					t.Errorf("the progress output names record %s", id)
				}
			}
			final, _ := f.patientRun(t)
			if final.State != agent.BackfillDone || final.Done != backfillCrashPatients || final.Resumes != 1 || final.ID != killed.ID {
				t.Errorf("the run after the restart = %+v, want run %s done with %d after one resume", final, killed.ID, backfillCrashPatients)
			}
			t.Logf("%s: the resumed backfill finished in %s", d, time.Since(resumed).Round(time.Millisecond))

			f.drained(t, 5*time.Minute)
			if err := p.Stop(30 * time.Second); err != nil {
				t.Errorf("stopping: %v\n%s", err, p.Output())
			}
			f.checkContacts(t)
			out := f.checkDecisions(t)
			t.Logf("%s: decisions by outcome %v; total %s", d, out, time.Since(start).Round(time.Millisecond))
		})
	}
}
