package logs_test

import (
	"bytes"
	"context"
	"fmt"
	"log/slog"
	"strings"
	"testing"
	"time"

	"gorm.io/gorm"

	"github.com/fhirsync/fhirsync/logs"
	"github.com/fhirsync/fhirsync/storage/storagetest"
)

// syntheticPatient carries canary strings where PHI would be.
type syntheticPatient struct {
	id, given, family, mrn, birthDate, phone string
}

func (p syntheticPatient) canaries() []string {
	return []string{p.given, p.family, p.mrn, p.birthDate, p.phone}
}

func (p syntheticPatient) resource() []byte {
	return fmt.Appendf(nil, `{"resourceType":"Patient","id":%q,"name":[{"given":[%q],"family":%q}],`+
		`"identifier":[{"system":"urn:mrn","value":%q}],"birthDate":%q,"telecom":[{"system":"phone","value":%q}]}`,
		p.id, p.given, p.family, p.mrn, p.birthDate, p.phone)
}

// TestNoPHIWithCaptureOff writes the decisions the agent would write for
// synthetic patients (with their resources offered as snapshots and their
// MRNs as business keys), runs every read path that logs, and then
// searches every column of every table and the process log output for the
// canaries.
func TestNoPHIWithCaptureOff(t *testing.T) {
	t.Parallel()
	for _, capture := range []bool{false, true} {
		t.Run(fmt.Sprintf("capture=%v", capture), func(t *testing.T) {
			storagetest.Each(t, func(t *testing.T, db *gorm.DB) {
				ctx := context.Background()
				var logBuf bytes.Buffer
				logger := slog.New(slog.NewTextHandler(&logBuf, &slog.HandlerOptions{Level: slog.LevelDebug}))
				s, _ := newStore(t, db, func(c *logs.Config) {
					c.Logger = logger
					c.Capture = logs.CaptureConfig{Enabled: capture, KeyID: "k1", Key: keyA}
				})
				var patients []syntheticPatient
				var canaries []string
				for i := range 20 {
					p := syntheticPatient{
						id:        fmt.Sprintf("pat-%d", i),
						given:     fmt.Sprintf("Canarygiven%dQx", i),
						family:    fmt.Sprintf("Canaryfamily%dQx", i),
						mrn:       fmt.Sprintf("CANARYMRN%07dQX", i),
						birthDate: fmt.Sprintf("1901-02-%02d", i+1),
						phone:     fmt.Sprintf("+1-555-0199-%03d", i),
					}
					patients = append(patients, p)
					canaries = append(canaries, p.canaries()...)
				}
				var batch []*logs.Decision
				for i, p := range patients {
					batch = append(batch, decision(time.Now(), func(d *logs.Decision) {
						d.Source = logs.Ref{Type: "Patient", ID: p.id, Version: "1"}
						d.Target = logs.Ref{Type: "contact", ID: fmt.Sprintf("contact-%d", i)}
						d.BusinessKeys = []logs.BusinessKey{{Name: "mrn", Value: p.mrn}, {Name: "crm_number", Value: "CN-" + p.mrn}}
						d.Snapshots = &logs.Snapshots{Source: p.resource(), Target: fmt.Appendf(nil, `{"firstname":%q,"lastname":%q}`, p.given, p.family)}
						d.Message = fmt.Sprintf("Patient/%s updated contact contact-%d.", p.id, i)
						d.ChangedFields = []string{"firstname", "lastname", "birthdate", "mobilephone"}
						if i%4 == 0 {
							d.Outcome, d.Reason, d.ReasonSubject = logs.OutcomeFailed, logs.ReasonMappingError, "birthDate"
							d.Message = fmt.Sprintf("Attribute map birthDate failed on Patient/%s.", p.id)
						}
					}))
				}
				write(t, s, batch...)
				// A refused decision whose key holds a canary, and a key search.
				bad := decision(t0, func(d *logs.Decision) {
					d.Reason = "bogus"
					d.BusinessKeys = []logs.BusinessKey{{Name: "mrn", Value: patients[0].mrn}}
				})
				err := s.Write(ctx, bad)
				if err == nil {
					t.Fatal("refused decision was written")
				}
				logger.Error("writing decision failed", "error", err)
				page, err := s.Search(ctx, logs.Filter{BusinessKey: logs.BusinessKey{Name: "mrn", Value: patients[3].mrn}}, "", 10)
				if err != nil || len(page.Decisions) != 1 || page.Decisions[0].Source.ID != "pat-3" {
					t.Fatalf("search by canary MRN = %+v, %v", page, err)
				}
				var export bytes.Buffer
				if _, err := s.Export(ctx, &export, logs.NDJSON, logs.Filter{}); err != nil {
					t.Fatal(err)
				}
				if _, err := s.Prune(ctx); err != nil {
					t.Fatal(err)
				}
				if capture {
					c, err := s.ReadCapture(ctx, user{"alice", true}, batch[1].ID)
					if err != nil {
						t.Fatal(err)
					}
					// The canaries did reach the store, sealed.
					if !bytes.Contains(c.Snapshots.Source, []byte(patients[1].family)) {
						t.Fatal("capture does not hold the patient resource")
					}
				}

				dump := dumpDatabase(t, db)
				// The dump and the log are read: record references are there.
				if !strings.Contains(dump, "pat-19") || !strings.Contains(dump, "contact-7") {
					t.Fatal("database dump lacks the record references; the dump is not reading the tables")
				}
				if !strings.Contains(logBuf.String(), "bogus") {
					t.Fatalf("process log lacks the refusal; log capture is not working:\n%s", logBuf.String())
				}
				for _, c := range canaries {
					if strings.Contains(dump, c) {
						t.Errorf("canary %s found in the database", c)
					}
					if strings.Contains(logBuf.String(), c) {
						t.Errorf("canary %s found in the process log", c)
					}
					if strings.Contains(export.String(), c) {
						t.Errorf("canary %s found in the export", c)
					}
				}
				if capture && count(t, db, "sync_decision_captures") != int64(len(patients)) {
					t.Errorf("capture on stored %d captures, want %d", count(t, db, "sync_decision_captures"), len(patients))
				}
				if !capture && count(t, db, "sync_decision_captures") != 0 {
					t.Error("capture off stored captures")
				}
			})
		})
	}
}
