package logs_test

import (
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"gorm.io/gorm"

	"github.com/fhirsync/fhirsync/logs"
	"github.com/fhirsync/fhirsync/storage/storagetest"
)

// designCodes is the closed set of DESIGN.md §4, by outcome group.
// The conflict codes are those of docs/conflicts.md.
var designCodes = map[string][]logs.ReasonCode{
	"sent": {"created", "updated", "deleted", "conflict_resolved", "deactivated",
		// Signals to care coordinators (docs/signals.md).
		"signal_opened", "signal_updated", "signal_closed"},
	"skipped": {"no_entity_map", "map_disabled", "direction_off", "operation_off", "record_gate_off",
		"filtered", "own_write_echo", "stale_version", "unchanged", "source_gone",
		"conflict_deferred", "delete_ignored", "delete_overruled", "child_row",
		// Device streams (docs/device-streams.md).
		"aggregated", "within_range", "duplicate_reading", "rate_limited",
		"below_signal_threshold"},
	"held": {"conflict_held", "delete_held"},
	"failed": {"invalid_message", "mapping_error", "missing_reference", "target_rejected", "target_conflict",
		"unauthorized", "throttled", "unavailable", "attempts_exhausted"},
}

func TestRegistryIsTheDesignSet(t *testing.T) {
	t.Parallel()
	var want []logs.ReasonCode
	for _, cs := range designCodes {
		want = append(want, cs...)
	}
	var got []logs.ReasonCode
	for _, r := range logs.Reasons() {
		got = append(got, r.Code)
		if r.Meaning == "" || r.Action == "" || len(r.Outcomes) == 0 {
			t.Errorf("reason %s lacks a meaning, an action or outcomes", r.Code)
		}
		lr, ok := logs.LookupReason(r.Code)
		if !ok || lr.Code != r.Code {
			t.Errorf("LookupReason(%s) = %v, %v", r.Code, lr, ok)
		}
	}
	slices.Sort(want)
	slices.Sort(got)
	if !slices.Equal(got, want) {
		t.Fatalf("registry codes = %v\nwant %v", got, want)
	}
	for _, c := range designCodes["sent"] {
		if r, _ := logs.LookupReason(c); !slices.Equal(r.Outcomes, []logs.Outcome{logs.OutcomeSent}) {
			t.Errorf("%s outcomes = %v, want [sent]", c, r.Outcomes)
		}
	}
	for _, c := range designCodes["skipped"] {
		if r, _ := logs.LookupReason(c); !slices.Equal(r.Outcomes, []logs.Outcome{logs.OutcomeSkipped}) {
			t.Errorf("%s outcomes = %v, want [skipped]", c, r.Outcomes)
		}
	}
	for _, c := range designCodes["held"] {
		if r, _ := logs.LookupReason(c); !slices.Equal(r.Outcomes, []logs.Outcome{logs.OutcomeHeld}) {
			t.Errorf("%s outcomes = %v, want [held]", c, r.Outcomes)
		}
	}
	if got, want := logs.Outcomes(), []logs.Outcome{"sent", "skipped", "held", "failed", "dead_lettered"}; !slices.Equal(got, want) {
		t.Errorf("Outcomes() = %v, want %v", got, want)
	}
	if r, _ := logs.LookupReason(logs.ReasonUnauthorized); r.Allows(logs.OutcomeSent) {
		t.Error("unauthorized is allowed as a success")
	}
	if _, ok := logs.LookupReason("made_up"); ok {
		t.Error("LookupReason accepted an unregistered code")
	}
	rs := logs.Reasons()
	rs[0].Outcomes[0] = logs.OutcomeFailed
	if r, _ := logs.LookupReason(rs[0].Code); r.Outcomes[0] != logs.OutcomeSent {
		t.Error("Reasons returned the registry's own slices; callers could change it")
	}
}

// TestSchemaCheckMatchesRegistry inserts every outcome × reason pair past
// the Go validation: the database must accept exactly what the registry
// allows.
func TestSchemaCheckMatchesRegistry(t *testing.T) {
	t.Parallel()
	storagetest.Each(t, func(t *testing.T, db *gorm.DB) {
		codes := []logs.ReasonCode{"made_up", ""}
		for _, r := range logs.Reasons() {
			codes = append(codes, r.Code)
		}
		outcomes := append(logs.Outcomes(), "retried")
		for _, o := range outcomes {
			for _, c := range codes {
				r, ok := logs.LookupReason(c)
				want := ok && r.Allows(o)
				err := db.Exec(`INSERT INTO sync_decisions (decided_at, direction, outcome, reason) VALUES (?, 'fhir_to_crm', ?, ?)`,
					t0, string(o), string(c)).Error
				if (err == nil) != want {
					t.Errorf("insert outcome=%s reason=%q: err = %v, want accepted=%v", o, c, err, want)
				}
			}
		}
		err := db.Exec(`INSERT INTO sync_decisions (decided_at, direction, outcome, reason) VALUES (?, 'sideways', 'sent', 'created')`, t0).Error
		if err == nil {
			t.Error("schema accepted an unknown direction")
		}
	})
}

// TestDocsListEveryReasonCode keeps docs/sync-log.md's outcome table in
// step with the registry.
func TestDocsListEveryReasonCode(t *testing.T) {
	t.Parallel()
	doc, err := os.ReadFile(filepath.Join("..", "docs", "sync-log.md"))
	if err != nil {
		t.Fatal(err)
	}
	for _, o := range logs.Outcomes() {
		if !strings.Contains(string(doc), "| `"+string(o)+"` |") {
			t.Errorf("docs/sync-log.md has no row for outcome %s", o)
		}
	}
	for _, r := range logs.Reasons() {
		if !strings.Contains(string(doc), "`"+string(r.Code)+"`") {
			t.Errorf("docs/sync-log.md does not list reason code %s", r.Code)
		}
	}
}
