package logs_test

import (
	"bytes"
	"context"
	"errors"
	"strings"
	"testing"

	"gorm.io/gorm"

	"github.com/fhirsync/fhirsync/logs"
	"github.com/fhirsync/fhirsync/storage/storagetest"
)

type user struct {
	name string
	phi  bool
}

func (u user) Subject() string  { return u.name }
func (u user) CanViewPHI() bool { return u.phi }

func captureOn(keyID, key string, old map[string]string) func(*logs.Config) {
	return func(c *logs.Config) {
		c.Capture = logs.CaptureConfig{Enabled: true, KeyID: keyID, Key: key, OldKeys: old}
	}
}

var (
	sourceJSON = []byte(`{"resourceType":"Patient","id":"p1","name":[{"family":"Capturedfamily"}]}`)
	targetJSON = []byte(`{"contactid":"c1","lastname":"Capturedfamily"}`)
)

func TestCaptureRoundTripIsAudited(t *testing.T) {
	t.Parallel()
	storagetest.Each(t, func(t *testing.T, db *gorm.DB) {
		ctx := context.Background()
		s, _ := newStore(t, db, captureOn("k1", keyA, nil))
		d := decision(t0, func(d *logs.Decision) {
			d.Snapshots = &logs.Snapshots{Source: sourceJSON, Target: targetJSON}
		})
		plain := decision(t0, nil)
		write(t, s, d, plain)

		if dump := dumpDatabase(t, db); strings.Contains(dump, "Capturedfamily") {
			t.Fatal("a captured value is stored in clear")
		}
		if got, _ := s.Get(ctx, d.ID); !got.Captured {
			t.Error("Get does not report the capture")
		}
		if got, _ := s.Get(ctx, plain.ID); got.Captured {
			t.Error("Get reports a capture for a decision without snapshots")
		}

		c, err := s.ReadCapture(ctx, user{"alice", true}, d.ID)
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(c.Snapshots.Source, sourceJSON) || !bytes.Equal(c.Snapshots.Target, targetJSON) || c.KeyID != "k1" {
			t.Fatalf("capture = %+v", c)
		}
		if _, err := s.ReadCapture(ctx, user{"bob", false}, d.ID); !errors.Is(err, logs.ErrForbidden) {
			t.Fatalf("read without PHI permission: err = %v, want ErrForbidden", err)
		}
		if _, err := s.ReadCapture(ctx, nil, d.ID); !errors.Is(err, logs.ErrForbidden) {
			t.Fatalf("read without a caller: err = %v, want ErrForbidden", err)
		}
		if _, err := s.ReadCapture(ctx, user{"alice", true}, plain.ID); !errors.Is(err, logs.ErrNotFound) {
			t.Fatalf("read of a decision without capture: err = %v, want ErrNotFound", err)
		}

		page, err := s.Audit(ctx, logs.AuditFilter{ObjectType: "decision"}, "", 10)
		if err != nil {
			t.Fatal(err)
		}
		var got []string
		for _, e := range page.Entries {
			got = append(got, e.Actor+" "+e.Action+" "+e.ObjectID)
			if e.At.IsZero() {
				t.Error("audit entry without a time")
			}
		}
		want := []string{"bob capture.view_denied " + itoa(d.ID), "alice capture.view " + itoa(d.ID)}
		if strings.Join(got, "\n") != strings.Join(want, "\n") {
			t.Fatalf("audit trail =\n%s\nwant\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
		}
	})
}

func TestCaptureKeysAndTampering(t *testing.T) {
	t.Parallel()
	storagetest.Each(t, func(t *testing.T, db *gorm.DB) {
		ctx := context.Background()
		alice := user{"alice", true}
		writer, _ := newStore(t, db, captureOn("k1", keyA, nil))
		a := decision(t0, func(d *logs.Decision) { d.Snapshots = &logs.Snapshots{Source: sourceJSON, Target: targetJSON} })
		b := decision(t0, func(d *logs.Decision) { d.Snapshots = &logs.Snapshots{Source: []byte(`{"other":1}`)} })
		write(t, writer, a, b)

		tests := []struct {
			name    string
			sealID  string
			key     string
			old     map[string]string
			wantErr error
		}{
			{"rotated: new sealing key, old key kept for reading", "k2", keyB, map[string]string{"k1": keyA}, nil},
			{"key id not configured", "k2", keyB, nil, logs.ErrUnknownKey},
			{"wrong key under the same id", "k1", keyB, nil, logs.ErrWrongKey},
			{"wrong old key under the same id", "k2", keyA, map[string]string{"k1": keyB}, logs.ErrWrongKey},
		}
		for _, tt := range tests {
			t.Run(tt.name, func(t *testing.T) {
				r, _ := newStore(t, db, captureOn(tt.sealID, tt.key, tt.old))
				c, err := r.ReadCapture(ctx, alice, a.ID)
				if !errors.Is(err, tt.wantErr) {
					t.Fatalf("err = %v, want %v", err, tt.wantErr)
				}
				if tt.wantErr == nil && !bytes.Equal(c.Snapshots.Source, sourceJSON) {
					t.Fatalf("source = %q", c.Snapshots.Source)
				}
				if err != nil && !strings.Contains(err.Error(), "k1") {
					t.Errorf("error %q does not name the key id", err)
				}
			})
		}

		// A flipped byte in the stored ciphertext.
		var sealed []byte
		if err := db.Raw("SELECT source_sealed FROM sync_decision_captures WHERE decision_id = ?", a.ID).Row().Scan(&sealed); err != nil {
			t.Fatal(err)
		}
		tampered := bytes.Clone(sealed)
		tampered[len(tampered)-5] ^= 0x01
		if err := db.Exec("UPDATE sync_decision_captures SET source_sealed = ? WHERE decision_id = ?", tampered, a.ID).Error; err != nil {
			t.Fatal(err)
		}
		if _, err := writer.ReadCapture(ctx, alice, a.ID); !errors.Is(err, logs.ErrTampered) {
			t.Fatalf("flipped byte: err = %v, want ErrTampered", err)
		}
		// Intact ciphertext moved from decision a to decision b.
		if err := db.Exec("UPDATE sync_decision_captures SET source_sealed = ? WHERE decision_id = ?", sealed, b.ID).Error; err != nil {
			t.Fatal(err)
		}
		if _, err := writer.ReadCapture(ctx, alice, b.ID); !errors.Is(err, logs.ErrTampered) {
			t.Fatalf("moved ciphertext: err = %v, want ErrTampered", err)
		}
		// Truncated to less than a nonce.
		if err := db.Exec("UPDATE sync_decision_captures SET source_sealed = ? WHERE decision_id = ?", sealed[:5], b.ID).Error; err != nil {
			t.Fatal(err)
		}
		if _, err := writer.ReadCapture(ctx, alice, b.ID); !errors.Is(err, logs.ErrTampered) {
			t.Fatalf("truncated ciphertext: err = %v, want ErrTampered", err)
		}
		page, err := writer.Audit(ctx, logs.AuditFilter{Action: logs.AuditViewCapture}, "", 100)
		if err != nil {
			t.Fatal(err)
		}
		if len(page.Entries) != 7 || !strings.HasPrefix(page.Entries[0].After, "refused") {
			t.Fatalf("audit entries = %+v, want 7 with refusals recorded", page.Entries)
		}
	})
}

func TestCaptureOffDropsSnapshots(t *testing.T) {
	t.Parallel()
	storagetest.Each(t, func(t *testing.T, db *gorm.DB) {
		// Keys configured but capture not enabled: nothing is sealed.
		s, _ := newStore(t, db, func(c *logs.Config) {
			c.Capture = logs.CaptureConfig{KeyID: "k1", Key: keyA}
		})
		write(t, s, decision(t0, func(d *logs.Decision) { d.Snapshots = &logs.Snapshots{Source: sourceJSON} }))
		if n := count(t, db, "sync_decision_captures"); n != 0 {
			t.Fatalf("%d captures stored with capture off", n)
		}
	})
}

func TestConfigValidateReportsEveryProblem(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name    string
		cfg     logs.Config
		wantErr []string
	}{
		{name: "zero value is valid", cfg: logs.Config{}},
		{name: "capture with rotation", cfg: logs.Config{Capture: logs.CaptureConfig{Enabled: true, KeyID: "k2", Key: keyB, OldKeys: map[string]string{"k1": keyA}}}},
		{name: "many problems", cfg: logs.Config{
			KeySecret: "c2hvcnQ=",
			Retention: logs.RetentionConfig{MaxAge: 1, Schedule: "every tuesday", BatchSize: -1},
			Capture:   logs.CaptureConfig{Enabled: true, KeyID: "k9", Key: "dG9vIHNob3J0", OldKeys: map[string]string{"k1": "dG9vIHNob3J0", "k9": keyA}},
		}, wantErr: []string{"key_secret", "max_age", "schedule", "batch_size", "old_keys.k1", "logs.capture.key must", "old_keys.k9 repeats"}},
		{name: "key without id", cfg: logs.Config{Capture: logs.CaptureConfig{Key: keyA}}, wantErr: []string{"key_id is required"}},
		{name: "capture outlives decisions", cfg: logs.Config{
			Retention: logs.RetentionConfig{MaxAge: 48 * 3600e9},
			Capture:   logs.CaptureConfig{MaxAge: 72 * 3600e9},
		}, wantErr: []string{"exceeds logs.retention.max_age"}},
		{name: "capture on without key", cfg: logs.Config{Capture: logs.CaptureConfig{Enabled: true}}, wantErr: []string{"required when capture is enabled"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			err := tt.cfg.Validate()
			if len(tt.wantErr) == 0 {
				if err != nil {
					t.Fatalf("Validate = %v", err)
				}
				return
			}
			if err == nil {
				t.Fatal("Validate accepted the configuration")
			}
			for _, w := range tt.wantErr {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q does not mention %q", err, w)
				}
			}
			if strings.Contains(err.Error(), "dG9vIHNob3J0") {
				t.Error("error echoes a key")
			}
		})
	}
}
