package logs

import (
	"bufio"
	"context"
	"encoding/csv"
	"encoding/json"
	"fmt"
	"io"
	"strconv"
	"strings"
	"time"
)

// Format is an export file format.
type Format string

const (
	// CSV is comma-separated values with a header row; lists are joined
	// with ";".
	CSV Format = "csv"
	// NDJSON is one JSON object per line.
	NDJSON Format = "ndjson"
)

// ParseFormat accepts "csv" or "ndjson".
func ParseFormat(s string) (Format, error) {
	switch f := Format(strings.ToLower(s)); f {
	case CSV, NDJSON:
		return f, nil
	}
	return "", fmt.Errorf("%w: export format %q is not csv or ndjson", ErrBadFilter, short(s))
}

// decisionColumns is the CSV header of a decision export.
var decisionColumns = []string{
	"id", "time", "correlation_id", "message_id", "direction", "entity_map", "map_version",
	"source_type", "source_id", "source_version", "target_type", "target_id", "target_version",
	"business_keys", "outcome", "reason", "reason_subject", "message", "changed_fields",
	"attempts", "duration_ms", "conflicts",
}

func decisionRecord(d Decision) []string {
	keys := make([]string, len(d.BusinessKeys))
	for i, k := range d.BusinessKeys {
		keys[i] = k.Name
	}
	att := make([]string, len(d.Attempts))
	for i, a := range d.Attempts {
		att[i] = a.At.Format(time.RFC3339Nano) + " " + a.ErrorClass + " retryable=" + strconv.FormatBool(a.Retryable)
		if a.TargetError != nil && a.Code != "" {
			att[i] += " code=" + a.Code // the message may hold ";" and stays in the NDJSON export
		}
	}
	return []string{
		strconv.FormatInt(d.ID, 10), d.Time.Format(time.RFC3339Nano), d.CorrelationID, d.MessageID,
		string(d.Direction), d.EntityMap, strconv.Itoa(d.MapVersion),
		d.Source.Type, d.Source.ID, d.Source.Version, d.Target.Type, d.Target.ID, d.Target.Version,
		strings.Join(keys, ";"), string(d.Outcome), string(d.Reason), d.ReasonSubject, d.Message,
		strings.Join(d.ChangedFields, ";"), strings.Join(att, ";"),
		strconv.FormatFloat(float64(d.Duration)/float64(time.Millisecond), 'f', 3, 64),
		conflictsCell(d.Conflicts),
	}
}

// conflictsCell renders conflicts as "attribute:policy:settled" joined by
// ";", where settled is "overwritten=<side>", "held" or "deferred", with
// ",tie" added for a tie. The whole record is named "*".
func conflictsCell(cs []Conflict) string {
	parts := make([]string, len(cs))
	for i, c := range cs {
		attr := c.Attribute
		if attr == "" {
			attr = "*"
		}
		var settled []string
		switch {
		case c.Overwritten != "":
			settled = append(settled, "overwritten="+c.Overwritten)
		case c.Held:
			settled = append(settled, "held")
		case c.Deferred:
			settled = append(settled, "deferred")
		}
		if c.Tie {
			settled = append(settled, "tie")
		}
		parts[i] = attr + ":" + c.Policy + ":" + strings.Join(settled, ",")
	}
	return strings.Join(parts, ";")
}

// Export writes every decision matching f to w, newest first, and returns
// how many it wrote. Business keys appear by name only; captures never.
func (s *Store) Export(ctx context.Context, w io.Writer, format Format, f Filter) (int, error) {
	n := 0
	switch format {
	case CSV:
		cw := csv.NewWriter(w)
		if err := cw.Write(decisionColumns); err != nil {
			return 0, fmt.Errorf("exporting decisions: %w", err)
		}
		err := s.forEach(ctx, f, func(d Decision) error {
			n++
			return cw.Write(csvSafe(decisionRecord(d)))
		})
		cw.Flush()
		if err == nil {
			err = cw.Error()
		}
		if err != nil {
			return n, fmt.Errorf("exporting decisions as csv: %w", err)
		}
	case NDJSON:
		bw := bufio.NewWriter(w)
		enc := json.NewEncoder(bw)
		err := s.forEach(ctx, f, func(d Decision) error {
			n++
			return enc.Encode(d)
		})
		if err == nil {
			err = bw.Flush()
		}
		if err != nil {
			return n, fmt.Errorf("exporting decisions as ndjson: %w", err)
		}
	default:
		return 0, fmt.Errorf("%w: export format %q is not csv or ndjson", ErrBadFilter, short(string(format)))
	}
	return n, nil
}

var auditColumns = []string{"id", "at", "actor", "action", "object_type", "object_id", "before", "after"}

// ExportAudit writes every audit entry matching f to w, newest first, and
// returns how many it wrote.
func (s *Store) ExportAudit(ctx context.Context, w io.Writer, format Format, f AuditFilter) (int, error) {
	n := 0
	switch format {
	case CSV:
		cw := csv.NewWriter(w)
		if err := cw.Write(auditColumns); err != nil {
			return 0, fmt.Errorf("exporting the audit trail: %w", err)
		}
		err := s.forEachAudit(ctx, f, func(e AuditEntry) error {
			n++
			return cw.Write(csvSafe([]string{strconv.FormatInt(e.ID, 10), e.At.Format(time.RFC3339Nano),
				e.Actor, e.Action, e.ObjectType, e.ObjectID, e.Before, e.After}))
		})
		cw.Flush()
		if err == nil {
			err = cw.Error()
		}
		if err != nil {
			return n, fmt.Errorf("exporting the audit trail as csv: %w", err)
		}
	case NDJSON:
		bw := bufio.NewWriter(w)
		enc := json.NewEncoder(bw)
		err := s.forEachAudit(ctx, f, func(e AuditEntry) error {
			n++
			return enc.Encode(e)
		})
		if err == nil {
			err = bw.Flush()
		}
		if err != nil {
			return n, fmt.Errorf("exporting the audit trail as ndjson: %w", err)
		}
	default:
		return 0, fmt.Errorf("%w: export format %q is not csv or ndjson", ErrBadFilter, short(string(format)))
	}
	return n, nil
}

// csvSafe defuses cells a spreadsheet would run as a formula.
func csvSafe(rec []string) []string {
	for i, v := range rec {
		if v != "" && strings.ContainsRune("=+-@\t\r", rune(v[0])) {
			rec[i] = "'" + v
		}
	}
	return rec
}
