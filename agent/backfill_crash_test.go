package agent_test

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime/debug"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/fhirsync/fhirsync/agent"
	"github.com/fhirsync/fhirsync/agent/internal/agenttest"
	"github.com/fhirsync/fhirsync/sandbox/crmserver"
	"github.com/fhirsync/fhirsync/sandbox/synth"
	"github.com/fhirsync/fhirsync/storage/storagetest"
)

// backfillCrashPatients is the size of the backfill crash test in CI.
// FHIRSYNC_BACKFILL_CRASH_RECORDS runs it at another size (docs/benchmarks.md:
// the million-record backfill), and FHIRSYNC_BACKFILL_CRASH_LIMITS=dataverse
// turns on the sandbox CRM's documented service-protection limits.
const backfillCrashPatients = 3000

// backfillCrashMemoryLimit is the test process's soft memory limit
// (runtime/debug.SetMemoryLimit) in runs of another size or with limits,
// unless GOMEMLIMIT sets one.
const backfillCrashMemoryLimit = 6 << 30

// The further application users of the agent in runs with several
// (FHIRSYNC_BACKFILL_CRASH_USERS).
const (
	agentUser2 = "00000000-0000-0000-0000-0000000a6e18"
	agentUser3 = "00000000-0000-0000-0000-0000000a6e19"
)

// backfillCrashUsers is how many application users the agent signs in to
// the CRM as: FHIRSYNC_BACKFILL_CRASH_USERS (1 to 3, default 1).
func backfillCrashUsers(t *testing.T) []string {
	all := []string{agentUser, agentUser2, agentUser3}
	v := os.Getenv("FHIRSYNC_BACKFILL_CRASH_USERS")
	if v == "" {
		return all[:1]
	}
	n, err := strconv.Atoi(v)
	if err != nil || n < 1 || n > len(all) {
		t.Fatalf("FHIRSYNC_BACKFILL_CRASH_USERS=%q: want 1, 2 or 3", v)
	}
	return all[:n]
}

// usersEnv configures a `fhirsync serve` or `fhirsync backfill` child to
// sign in as users (crm.users) instead of the one agent user.
func usersEnv(t *testing.T, env map[string]string, users []string) {
	if len(users) < 2 {
		return
	}
	delete(env, "FHIRSYNC_CRM_AUTH_METHOD")
	delete(env, "FHIRSYNC_CRM_AUTH_TOKEN")
	delete(env, "FHIRSYNC_AGENT_CRM_USER_ID")
	dir := t.TempDir()
	for i, u := range users {
		tok := "agent-token"
		if i > 0 {
			tok += "-" + strconv.Itoa(i+1)
		}
		file := filepath.Join(dir, "token"+strconv.Itoa(i))
		if err := os.WriteFile(file, []byte(tok), 0o600); err != nil {
			t.Fatal(err)
		}
		k := "FHIRSYNC_CRM_USERS_" + strconv.Itoa(i) + "_"
		env[k+"METHOD"], env[k+"TOKEN_FILE"], env[k+"USER_ID"] = "bearer", file, u
	}
}

// accounts sums the sandbox CRM's accounting of users.
func accounts(srv *crmserver.Server, users []string) crmserver.Account {
	var sum crmserver.Account
	all := srv.Accounts()
	for _, u := range users {
		a := all[u]
		sum.Requests += a.Requests
		sum.Operations += a.Operations
		sum.ExecutionTime += a.ExecutionTime
		sum.Throttled += a.Throttled
	}
	return sum
}

// backfillCrashSize reads the test's size and limits from the environment.
func backfillCrashSize(t *testing.T) (records int, limits bool, large bool) {
	records = backfillCrashPatients
	if v := os.Getenv("FHIRSYNC_BACKFILL_CRASH_RECORDS"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < 100 {
			t.Fatalf("FHIRSYNC_BACKFILL_CRASH_RECORDS=%q: want a number of at least 100", v)
		}
		records, large = n, true
	}
	switch v := os.Getenv("FHIRSYNC_BACKFILL_CRASH_LIMITS"); v {
	case "":
	case "dataverse":
		limits, large = true, true
	default:
		t.Fatalf("FHIRSYNC_BACKFILL_CRASH_LIMITS=%q: want dataverse or nothing", v)
	}
	return records, limits, large
}

// backfillCommand is `fhirsync backfill` of the patients as a child
// process with the fleet's configuration.
func (f *fleet) backfillCommand(t *testing.T, env map[string]string, stdout, stderr *bytes.Buffer, large bool) *exec.Cmd {
	args := []string{"backfill", "--map", "patient-contact", "--side", "fhir", "--batch", "50", "--max-queued", "200", "--progress", "1s"}
	if large {
		// The defaults, as an operator runs it.
		args = []string{"backfill", "--map", "patient-contact", "--side", "fhir", "--progress", "30s"}
	}
	cmd := exec.Command(f.bin, args...)
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
	records, limits, large := backfillCrashSize(t)
	users := backfillCrashUsers(t)
	if large && os.Getenv("GOMEMLIMIT") == "" {
		// The sandbox CRM holds every row in this process; the soft limit
		// has the collector work harder as the heap nears it instead of
		// letting it grow to twice the live rows (GOGC=100).
		prev := debug.SetMemoryLimit(backfillCrashMemoryLimit)
		t.Cleanup(func() { debug.SetMemoryLimit(prev) })
	}
	for _, d := range storagetest.Dialects {
		t.Run(string(d), func(t *testing.T) {
			t.Parallel()
			start := time.Now()
			f := newFleetWith(t, d, records, fleetOptions{fhirOnDisk: large})
			if limits {
				// The agent's user only: the test's own reads stay free.
				l := crmserver.DataverseLimits()
				l.Exempt = []string{humanUser}
				f.crmSrv.SetLimits(l)
			}
			env := f.env(t, "FHIRSYNC_AGENT_WORKERS", "8")
			usersEnv(t, env, users)
			p := agenttest.Start(t, f.bin, env)
			g := synth.New(11)
			for typ, want := range map[string]int{"Organization": g.Organizations, "Practitioner": g.Practitioners} {
				if n := f.enqueueHistory(t, typ); n != want {
					t.Fatalf("the %s history gave %d notices, want %d", typ, n, want)
				}
				f.drained(t, 3*time.Minute)
			}

			before := accounts(f.crmSrv, users)
			var out1, err1 bytes.Buffer
			backfillStart := time.Now()
			bf := f.backfillCommand(t, env, &out1, &err1, large)
			if err := bf.Start(); err != nil {
				t.Fatal(err)
			}
			exited := make(chan error, 1)
			go func() { exited <- bf.Wait() }()
			deadline := time.Now().Add(5 * time.Minute)
			if large {
				deadline = time.Now().Add(24 * time.Hour)
			}
			var at agent.BackfillRun
			for {
				select {
				case err := <-exited:
					t.Fatalf("the backfill ended (%v) before it was half way; stdout:\n%s\nstderr:\n%s", err, out1.String(), err1.String())
				default:
				}
				if r, ok := f.patientRun(t); ok && r.Done >= int64(records)/2 {
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
			walkCPU := processCPU(bf)
			killed, _ := f.patientRun(t)
			t.Logf("%s: backfill killed at %d of %d enqueued (checkpoint read just before: %d) after %s",
				d, killed.Done, records, at.Done, time.Since(start).Round(time.Millisecond))
			if killed.State != agent.BackfillRunning || killed.Done >= int64(records) || killed.Total != int64(records) {
				t.Fatalf("the run after SIGKILL = %+v, want it still running short of the end, with the search's total", killed)
			}

			var out2, err2 bytes.Buffer
			resumed := time.Now()
			bf = f.backfillCommand(t, env, &out2, &err2, large)
			if err := bf.Run(); err != nil {
				t.Fatalf("the restarted backfill failed: %v\nstdout:\n%s\nstderr:\n%s", err, out2.String(), err2.String())
			}
			walkCPU += processCPU(bf)
			want := fmt.Sprintf("backfill of patient-contact: %d FHIR notices (fhir-changes), 0 CRM notices (crm-changes) enqueued, resumed from a checkpoint", records)
			if !strings.Contains(out2.String(), want) {
				t.Fatalf("the restarted backfill printed:\n%s\nwant %q", out2.String(), want)
			}
			if !strings.Contains(err2.String(), "backfill patient-contact fhir: ") || !strings.Contains(err2.String(), fmt.Sprintf(" of %d (", records)) {
				t.Errorf("the restarted backfill printed no progress with the total; stderr:\n%s", err2.String())
			}
			for i := range 20 {
				if id := synth.PatientID(i); strings.Contains(err1.String()+err2.String(), id) {
					t.Errorf("the progress output names record %s", id)
				}
			}
			final, _ := f.patientRun(t)
			if final.State != agent.BackfillDone || final.Done != int64(records) || final.Resumes != 1 || final.ID != killed.ID {
				t.Errorf("the run after the restart = %+v, want run %s done with %d after one resume", final, killed.ID, records)
			}
			t.Logf("%s: the resumed backfill finished in %s", d, time.Since(resumed).Round(time.Millisecond))

			if large {
				f.drained(t, 24*time.Hour)
			} else {
				f.drained(t, 5*time.Minute)
			}
			synced := time.Since(backfillStart)
			after := accounts(f.crmSrv, users)
			req, ops := after.Requests-before.Requests, after.Operations-before.Operations
			t.Logf("%s: %d patients backfilled and synced in %s (%.0f records/s), kill included, CRM limits on: %v, %d application user(s); agent CRM requests %d (%.3f per record), operations %d, execution time %s, 429s %d; the backfill waited %s for the queue; the two backfill processes used %s of CPU (%.1f µs per record)",
				d, records, synced.Round(time.Second), float64(records)/synced.Seconds(), limits, len(users), req, float64(req)/float64(records), ops,
				(after.ExecutionTime - before.ExecutionTime).Round(time.Second), after.Throttled-before.Throttled, final.Throttled.Round(time.Second),
				walkCPU.Round(time.Millisecond), float64(walkCPU.Microseconds())/float64(records))
			var self syscall.Rusage
			_ = syscall.Getrusage(syscall.RUSAGE_SELF, &self)
			t.Logf("%s: fhirsync serve: peak RSS %s, CPU %s; this test process with the sandboxes: peak RSS %s, CPU %s",
				d, peakRSS(p.Pid()), procCPU(p.Pid()), peakRSS(os.Getpid()),
				(time.Duration(self.Utime.Nano() + self.Stime.Nano())).Round(time.Second))
			if err := p.Stop(30 * time.Second); err != nil {
				t.Errorf("stopping: %v\n%s", err, p.Output())
			}
			f.checkContacts(t)
			out := f.checkDecisions(t)
			t.Logf("%s: decisions by outcome %v; total %s; this test process's peak RSS with the checks %s", d, out, time.Since(start).Round(time.Millisecond), peakRSS(os.Getpid()))
		})
	}
}

// processCPU is the user and system CPU time of an ended child process
// (getrusage of the child).
func processCPU(cmd *exec.Cmd) time.Duration {
	if cmd.ProcessState == nil {
		return 0
	}
	return cmd.ProcessState.UserTime() + cmd.ProcessState.SystemTime()
}

// peakRSS is a live process's peak resident set size (VmHWM), or "?"
// where /proc cannot tell.
func peakRSS(pid int) string {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/status")
	if err != nil {
		return "?"
	}
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, "VmHWM:"); ok {
			return strings.Join(strings.Fields(v), " ")
		}
	}
	return "?"
}

// procCPU is a live process's user and system CPU time so far (from
// /proc/<pid>/stat, in clock ticks of 1/100 s), or "?".
func procCPU(pid int) string {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return "?"
	}
	// The fields after the command name, which is in parentheses.
	f := strings.Fields(string(b[bytes.LastIndexByte(b, ')')+1:]))
	if len(f) < 13 {
		return "?"
	}
	u, err1 := strconv.ParseInt(f[11], 10, 64)
	st, err2 := strconv.ParseInt(f[12], 10, 64)
	if err1 != nil || err2 != nil {
		return "?"
	}
	return (time.Duration(u+st) * 10 * time.Millisecond).Round(time.Second).String()
}
