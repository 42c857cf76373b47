package embedded_test

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"gorm.io/gorm"

	"github.com/fhirsync/fhirsync/queues"
	"github.com/fhirsync/fhirsync/queues/embedded"
	"github.com/fhirsync/fhirsync/storage"
	"github.com/fhirsync/fhirsync/storage/storagetest"
)

// The crash test re-runs this test binary as a consumer process; these
// variables tell TestMain to be that process instead of running tests.
const (
	envCrashChild = "FHIRSYNC_EMBEDDED_CRASH_CHILD" // "work" or "drain"
	envCrashDB    = "FHIRSYNC_EMBEDDED_CRASH_DB"
	envCrashAcks  = "FHIRSYNC_EMBEDDED_CRASH_ACKS"
	crashQueue    = "crash"
)

func TestMain(m *testing.M) {
	if mode := os.Getenv(envCrashChild); mode != "" {
		if err := crashChild(mode); err != nil {
			fmt.Fprintln(os.Stderr, "crash child:", err)
			os.Exit(1)
		}
		os.Exit(0)
	}
	os.Exit(m.Run())
}

// crashChild consumes the crash queue until killed ("work") or until it is
// empty ("drain"). Each message is processed by inserting a row into
// crash_processed in the same transaction that completes it, so a kill
// either keeps both or neither. In work mode it also sends messages of its
// own and appends their IDs to the acknowledgement file only after Send
// returned: every acknowledged message must survive.
func crashChild(mode string) error {
	ctx := context.Background()
	db, err := storage.Open(ctx, os.Getenv(envCrashDB), storage.Options{MaxOpenConns: 4})
	if err != nil {
		return err
	}
	q, err := embedded.New(db, crashQueue, crashOptions)
	if err != nil {
		return err
	}
	acks, err := os.OpenFile(os.Getenv(envCrashAcks), os.O_APPEND|os.O_CREATE|os.O_WRONLY, 0o600)
	if err != nil {
		return err
	}
	pid := os.Getpid()
	for n := 0; ; n++ {
		if mode == "work" && n%4 == 0 {
			var own []queues.Message
			var lines strings.Builder
			for j := range 3 {
				id := fmt.Sprintf("c%d-%d-%d", pid, n, j)
				own = append(own, queues.Message{ID: id, Body: []byte(id)})
				lines.WriteString(id + "\n")
			}
			if err := q.Send(ctx, own...); err != nil {
				return err
			}
			if _, err := acks.WriteString(lines.String()); err != nil {
				return err
			}
		}
		ms, err := q.Receive(ctx, 1+rand.IntN(8), 300*time.Millisecond)
		if err != nil {
			return err
		}
		if len(ms) == 0 {
			d, err := q.Depth(ctx)
			if err != nil {
				return err
			}
			if mode == "drain" && d.Active == 0 && d.Scheduled == 0 {
				return nil
			}
			continue
		}
		if err := crashProcess(db, q, ms); err != nil {
			return err
		}
	}
}

var crashOptions = embedded.Options{LockDuration: time.Second, MaxDeliveryCount: 1000, PollInterval: 20 * time.Millisecond}

func crashProcess(db *gorm.DB, q *embedded.Queue, ms []*queues.Received) error {
	record := func(tx *gorm.DB, m *queues.Received) error {
		return tx.Exec(`INSERT INTO crash_processed (message_id, session_key) VALUES (?, ?)`, m.ID, m.SessionKey).Error
	}
	if rand.IntN(2) == 0 {
		// The whole batch in one transaction.
		err := db.Transaction(func(tx *gorm.DB) error {
			for _, m := range ms {
				if err := record(tx, m); err != nil {
					return err
				}
			}
			return q.CompleteTx(tx, ms...)
		})
		if errors.Is(err, queues.ErrLockLost) {
			return nil // rolled back; the messages come again
		}
		return err
	}
	for _, m := range ms {
		if m.DeliveryCount == 1 && rand.IntN(10) == 0 {
			if err := q.Abandon(context.Background(), m, 0); err != nil && !errors.Is(err, queues.ErrLockLost) {
				return err
			}
			continue
		}
		err := db.Transaction(func(tx *gorm.DB) error {
			if err := record(tx, m); err != nil {
				return err
			}
			return q.CompleteTx(tx, m)
		})
		if err != nil && !errors.Is(err, queues.ErrLockLost) {
			return err
		}
	}
	return nil
}

// TestCrashLosesNothing kills consumer processes with SIGKILL at random
// moments, then drains the queue, and checks that every message sent (by
// the test, or by a child that saw its Send succeed) was processed exactly
// once, and that each session key's messages were processed in order.
func TestCrashLosesNothing(t *testing.T) {
	if testing.Short() {
		t.Skip("the crash test starts about 40 processes; skipped with -short")
	}
	t.Parallel()
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	for _, d := range storagetest.Dialects {
		t.Run(string(d), func(t *testing.T) {
			t.Parallel()
			ctx := context.Background()
			url := storagetest.URL(t, d)
			db, err := storage.Open(ctx, url, storage.Options{})
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { _ = storage.Close(db) })
			if _, err := storage.Migrate(ctx, db); err != nil {
				t.Fatal(err)
			}
			idCol := "n INTEGER PRIMARY KEY AUTOINCREMENT"
			if d == storage.Postgres {
				idCol = "n BIGSERIAL PRIMARY KEY"
			}
			if err := db.Exec(`CREATE TABLE crash_processed (` + idCol + `, message_id TEXT NOT NULL, session_key TEXT NOT NULL)`).Error; err != nil {
				t.Fatal(err)
			}
			q, err := embedded.New(db, crashQueue, crashOptions)
			if err != nil {
				t.Fatal(err)
			}
			const n, keys = 3000, 20
			sent := map[string]bool{}
			var batch []queues.Message
			for i := range n {
				m := queues.Message{ID: fmt.Sprintf("p%04d", i), Body: []byte("x")}
				if i%2 == 0 {
					m.SessionKey = fmt.Sprintf("key%02d", i%keys)
				}
				batch = append(batch, m)
				sent[m.ID] = true
				if len(batch) == 100 {
					if err := q.Send(ctx, batch...); err != nil {
						t.Fatal(err)
					}
					batch = nil
				}
			}
			acks := t.TempDir() + "/acks"
			child := func(ctx context.Context, mode string) *exec.Cmd {
				cmd := exec.CommandContext(ctx, exe, "-test.run=^$")
				cmd.Env = append(os.Environ(), envCrashChild+"="+mode, envCrashDB+"="+url, envCrashAcks+"="+acks)
				return cmd
			}

			const kills = 20
			for i := range kills {
				cmd := child(ctx, "work")
				var stderr bytes.Buffer
				cmd.Stderr = &stderr
				if err := cmd.Start(); err != nil {
					t.Fatal(err)
				}
				exited := make(chan error, 1)
				go func() { exited <- cmd.Wait() }()
				select {
				case err := <-exited:
					t.Fatalf("child %d exited before it was killed: %v\n%s", i, err, stderr.String())
				case <-time.After(time.Duration(100+rand.IntN(600)) * time.Millisecond):
				}
				if err := cmd.Process.Kill(); err != nil {
					t.Fatal(err)
				}
				if err := <-exited; err == nil || !strings.Contains(err.Error(), "killed") {
					t.Fatalf("child %d: wait = %v, want killed\n%s", i, err, stderr.String())
				}
			}
			var afterKills int64
			db.Raw(`SELECT COUNT(*) FROM crash_processed`).Scan(&afterKills)
			t.Logf("%d kills; %d messages processed while being killed", kills, afterKills)
			if afterKills == 0 {
				t.Fatal("no child processed anything before being killed; the test proves nothing")
			}

			drainCtx, cancel := context.WithTimeout(ctx, 60*time.Second)
			defer cancel()
			drain := child(drainCtx, "drain")
			if out, err := drain.CombinedOutput(); err != nil {
				t.Fatalf("draining child: %v\n%s", err, out)
			}

			checkCrashResult(t, db, sent, acks)
		})
	}
}

func checkCrashResult(t *testing.T, db *gorm.DB, sent map[string]bool, acksPath string) {
	t.Helper()
	f, err := os.Open(acksPath)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	acked := 0
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		sent[sc.Text()] = true
		acked++
	}
	type row struct {
		MessageID  string
		SessionKey string
	}
	var processed []row
	if err := db.Raw(`SELECT message_id, session_key FROM crash_processed ORDER BY n`).Scan(&processed).Error; err != nil {
		t.Fatal(err)
	}
	var left []string
	if err := db.Raw(`SELECT message_id FROM queue_messages WHERE queue = ?`, crashQueue).Scan(&left).Error; err != nil {
		t.Fatal(err)
	}
	count := map[string]int{}
	lastIndex := map[string]int{}
	unacked := 0
	for _, p := range processed {
		count[p.MessageID]++
		if !sent[p.MessageID] {
			if !strings.HasPrefix(p.MessageID, "c") {
				t.Errorf("processed %s, which nobody sent", p.MessageID)
			}
			unacked++ // a child was killed between Send and its acknowledgement
		}
		if p.SessionKey != "" {
			idx, _ := strconv.Atoi(strings.TrimPrefix(p.MessageID, "p"))
			if last, ok := lastIndex[p.SessionKey]; ok && idx <= last {
				t.Errorf("key %s: %s processed after p%04d", p.SessionKey, p.MessageID, last)
			}
			lastIndex[p.SessionKey] = idx
		}
	}
	for id, c := range count {
		if c > 1 {
			t.Errorf("%s processed %d times", id, c)
		}
	}
	for _, id := range left {
		t.Errorf("%s still in the queue after draining", id)
	}
	lost := 0
	for id := range sent {
		if count[id] == 0 && !slices.Contains(left, id) {
			lost++
			if lost <= 10 {
				t.Errorf("%s was sent and acknowledged but is neither processed nor queued", id)
			}
		}
	}
	if lost > 0 {
		t.Errorf("%d messages lost", lost)
	}
	t.Logf("%d processed exactly once (%d sent by children and acknowledged, %d sent by children just before a kill)",
		len(count), acked, unacked)
}
