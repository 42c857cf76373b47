package logs_test

import (
	"context"
	"encoding/base64"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"gorm.io/gorm"

	"github.com/fhirsync/fhirsync/logs"
	"github.com/fhirsync/fhirsync/storage"
)

var (
	testSecret = base64.StdEncoding.EncodeToString([]byte("business-key-secret-for-tests"))
	keyA       = base64.StdEncoding.EncodeToString([]byte("0123456789abcdef0123456789abcdef"))
	keyB       = base64.StdEncoding.EncodeToString([]byte("fedcba9876543210fedcba9876543210"))
	t0         = time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)
)

// newStore opens the sync log on db with business keys on; edit adjusts
// the configuration.
func newStore(t *testing.T, db *gorm.DB, edit func(*logs.Config)) (*logs.Store, *prometheus.Registry) {
	t.Helper()
	cfg := logs.Config{KeySecret: testSecret, Holder: "test-" + t.Name()}
	if edit != nil {
		edit(&cfg)
	}
	reg := prometheus.NewRegistry()
	s, err := logs.New(db, cfg, reg)
	if err != nil {
		t.Fatalf("logs.New: %v", err)
	}
	return s, reg
}

// decision builds a valid decision; edit adjusts it.
func decision(at time.Time, edit func(*logs.Decision)) *logs.Decision {
	d := &logs.Decision{
		Time:          at,
		CorrelationID: "corr-1",
		MessageID:     fmt.Sprintf("msg-%d", at.UnixNano()),
		Direction:     logs.FHIRToCRM,
		EntityMap:     "patient-contact",
		MapVersion:    3,
		Source:        logs.Ref{Type: "Patient", ID: "p1", Version: "7"},
		Target:        logs.Ref{Type: "contact", ID: "c1", Version: `W/"1001"`},
		Outcome:       logs.OutcomeSent,
		Reason:        logs.ReasonUpdated,
		Message:       "Patient/p1 updated contact c1.",
		ChangedFields: []string{"firstname", "birthdate"},
		Duration:      1500 * time.Microsecond,
	}
	if edit != nil {
		edit(d)
	}
	return d
}

func write(t *testing.T, s *logs.Store, ds ...*logs.Decision) {
	t.Helper()
	if err := s.WriteBatch(context.Background(), ds); err != nil {
		t.Fatalf("WriteBatch: %v", err)
	}
}

func ids(ds []logs.Decision) []int64 {
	out := make([]int64, len(ds))
	for i, d := range ds {
		out[i] = d.ID
	}
	return out
}

func count(t *testing.T, db *gorm.DB, table string) int64 {
	t.Helper()
	var n int64
	if err := db.Raw("SELECT COUNT(*) FROM " + table).Scan(&n).Error; err != nil {
		t.Fatalf("counting %s: %v", table, err)
	}
	return n
}

// dumpDatabase renders every column of every row of every table as text.
func dumpDatabase(t *testing.T, db *gorm.DB) string {
	t.Helper()
	var tables []string
	q := `SELECT name FROM sqlite_master WHERE type = 'table'`
	if storage.DialectOf(db) == storage.Postgres {
		q = `SELECT table_name FROM information_schema.tables WHERE table_schema = current_schema()`
	}
	if err := db.Raw(q).Scan(&tables).Error; err != nil {
		t.Fatalf("listing tables: %v", err)
	}
	if len(tables) < 4 {
		t.Fatalf("found only tables %v", tables)
	}
	var b strings.Builder
	for _, table := range tables {
		rows, err := db.Raw(`SELECT * FROM "` + table + `"`).Rows()
		if err != nil {
			t.Fatalf("reading %s: %v", table, err)
		}
		cols, _ := rows.Columns()
		for rows.Next() {
			vals := make([]any, len(cols))
			ptrs := make([]any, len(cols))
			for i := range vals {
				ptrs[i] = &vals[i]
			}
			if err := rows.Scan(ptrs...); err != nil {
				t.Fatalf("scanning %s: %v", table, err)
			}
			b.WriteString(table)
			for i, v := range vals {
				if raw, ok := v.([]byte); ok {
					v = string(raw)
				}
				fmt.Fprintf(&b, "|%s=%v", cols[i], v)
			}
			b.WriteString("\n")
		}
		if err := rows.Err(); err != nil {
			t.Fatalf("reading %s: %v", table, err)
		}
		rows.Close()
	}
	return b.String()
}

func itoa(n int64) string { return fmt.Sprint(n) }

// metric finds the retention deleted counter for kind in reg.
func metric(t *testing.T, reg *prometheus.Registry, kind string) prometheus.Collector {
	t.Helper()
	return counterValue{t: t, reg: reg, name: "fhirsync_logs_retention_deleted_total", label: "kind", value: kind}
}

func runs(t *testing.T, reg *prometheus.Registry, result string) float64 {
	t.Helper()
	return testutil.ToFloat64(counterValue{t: t, reg: reg, name: "fhirsync_logs_retention_runs_total", label: "result", value: result})
}

// counterValue exposes one labelled counter of a registry as a collector
// for testutil.ToFloat64.
type counterValue struct {
	t                  *testing.T
	reg                *prometheus.Registry
	name, label, value string
}

func (c counterValue) Describe(ch chan<- *prometheus.Desc) {}

func (c counterValue) Collect(ch chan<- prometheus.Metric) {
	mfs, err := c.reg.Gather()
	if err != nil {
		c.t.Fatalf("gathering metrics: %v", err)
	}
	for _, mf := range mfs {
		if mf.GetName() != c.name {
			continue
		}
		for _, m := range mf.GetMetric() {
			for _, lp := range m.GetLabel() {
				if lp.GetName() == c.label && lp.GetValue() == c.value {
					ch <- prometheus.MustNewConstMetric(prometheus.NewDesc(c.name, "", nil, nil), prometheus.CounterValue, m.GetCounter().GetValue())
					return
				}
			}
		}
	}
	c.t.Fatalf("metric %s{%s=%q} not registered", c.name, c.label, c.value)
}
