package agent

import (
	"context"
	"encoding/json"
	"errors"
	"log/slog"
	"strings"
	"testing"
	"time"

	"gorm.io/gorm"

	"github.com/fhirsync/fhirsync/logs"
	"github.com/fhirsync/fhirsync/maps"
	"github.com/fhirsync/fhirsync/storage/storagetest"
)

// streamTestMap is an Observation map with a 60 s mean window that drops
// repeated values.
func streamTestMap(repeats bool) *maps.EntityMap {
	return &maps.EntityMap{Name: "device-vitals", FHIRType: "Observation",
		Stream: &maps.Stream{Window: maps.Duration(time.Minute), Aggregate: maps.AggregateMean, DropRepeats: repeats}}
}

// observation is a device reading of heart rate for a patient.
func observation(id, version, patient, value string, at time.Time) map[string]any {
	return map[string]any{"resourceType": "Observation", "id": id, "meta": map[string]any{"versionId": version},
		"status": "final", "subject": map[string]any{"reference": "Patient/" + patient},
		"code":              map[string]any{"coding": []any{map[string]any{"system": "http://loinc.org", "code": "8867-4"}}},
		"effectiveDateTime": at.UTC().Format(time.RFC3339Nano),
		"valueQuantity":     map[string]any{"value": json.Number(value), "unit": "beats/minute", "system": "http://unitsofmeasure.org", "code": "/min"}}
}

func mustReading(t *testing.T, em *maps.EntityMap, res map[string]any) streamReading {
	t.Helper()
	r, err := readingOf(em, res, "")
	if err != nil {
		t.Fatal(err)
	}
	return r
}

// foldAll folds readings as one batch through s and reports what became
// of each.
func foldAll(t *testing.T, s *streamer, rs ...streamReading) []logs.ReasonCode {
	t.Helper()
	batch := make([]*streamReq, len(rs))
	for i, r := range rs {
		batch[i] = &streamReq{r: r}
	}
	if err := s.fold(context.Background(), batch); err != nil {
		t.Fatal(err)
	}
	out := make([]logs.ReasonCode, len(batch))
	for i, r := range batch {
		out[i] = r.reason
	}
	return out
}

func windows(t *testing.T, db *gorm.DB) []streamWindow {
	t.Helper()
	var ws []streamWindow
	if err := db.Order("stream_key, window_start").Find(&ws).Error; err != nil {
		t.Fatal(err)
	}
	return ws
}

func TestReadingOfRefusesWhatCannotBeAggregated(t *testing.T) {
	t.Parallel()
	em := streamTestMap(false)
	at := time.Date(2026, 12, 6, 7, 0, 0, 0, time.UTC)
	tests := []struct {
		name    string
		edit    func(map[string]any)
		wantErr string
	}{
		{"a reading", func(map[string]any) {}, ""},
		{"no subject", func(o map[string]any) { delete(o, "subject") }, "no subject.reference"},
		{"no code", func(o map[string]any) { o["code"] = map[string]any{"text": "pulse"} }, "no code.coding with a code"},
		{"a string value", func(o map[string]any) { delete(o, "valueQuantity"); o["valueString"] = "fast" }, "no valueQuantity"},
		{"no number", func(o map[string]any) { o["valueQuantity"] = map[string]any{"unit": "/min"} }, "not a finite number"},
		{"not a number", func(o map[string]any) { o["valueQuantity"] = map[string]any{"value": json.Number("7e400")} }, "not a finite number"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			o := observation("o1", "1", "p1", "72", at)
			tt.edit(o)
			r, err := readingOf(em, o, "")
			if tt.wantErr == "" {
				if err != nil || r.value != 72 || r.key != "Patient/p1|http://loinc.org|8867-4" || !r.at.Equal(at) || r.unit != "/min" {
					t.Fatalf("reading = %+v, %v", r, err)
				}
				return
			}
			var nr *errNotReading
			if !errors.As(err, &nr) || !strings.Contains(err.Error(), tt.wantErr) {
				t.Fatalf("err = %v, want %q", err, tt.wantErr)
			}
		})
	}
}

// TestStreamFoldKeepsOneWindowPerKey folds readings of two patients into
// their windows: statistics over the readings kept, a redelivered reading
// (same id and version) and a repeated value dropped as duplicates, and a
// new version of a reading counted as a new reading.
func TestStreamFoldKeepsOneWindowPerKey(t *testing.T) {
	t.Parallel()
	storagetest.Each(t, func(t *testing.T, db *gorm.DB) {
		now := time.Date(2026, 12, 6, 7, 0, 30, 0, time.UTC)
		s := newStreamer(StreamConfig{}, db, "r1", nil, slog.New(slog.DiscardHandler), func() time.Time { return now })
		em := streamTestMap(true)
		at := now.Add(-20 * time.Second)
		got := foldAll(t, s,
			mustReading(t, em, observation("a1", "1", "p1", "70", at)),
			mustReading(t, em, observation("a2", "1", "p1", "80", at.Add(time.Second))),
			mustReading(t, em, observation("a2", "1", "p1", "80", at.Add(time.Second))),   // the same reading again
			mustReading(t, em, observation("a3", "1", "p1", "80", at.Add(2*time.Second))), // repeats the value
			mustReading(t, em, observation("a4", "1", "p1", "90.5", at.Add(3*time.Second))),
			mustReading(t, em, observation("b1", "1", "p2", "60", at)),
		)
		want := []logs.ReasonCode{"aggregated", "aggregated", "duplicate_reading", "duplicate_reading", "aggregated", "aggregated"}
		if strings.Join(reasonStrings(got), ",") != strings.Join(reasonStrings(want), ",") {
			t.Errorf("fates = %v, want %v", got, want)
		}
		// Later, a redelivery of a1 and a second version of a1.
		got = foldAll(t, s,
			mustReading(t, em, observation("a1", "1", "p1", "70", at)),
			mustReading(t, em, observation("a1", "2", "p1", "71", at.Add(4*time.Second))),
		)
		if got[0] != logs.ReasonDuplicateReading || got[1] != logs.ReasonAggregated {
			t.Errorf("fates = %v, want duplicate_reading, aggregated", got)
		}
		ws := windows(t, db)
		if len(ws) != 2 {
			t.Fatalf("%d windows, want 2 (one per key): %+v", len(ws), ws)
		}
		w := ws[0]
		if w.StreamKey != "Patient/p1|http://loinc.org|8867-4" || w.WindowStart != windowStart(now, time.Minute) || w.WindowEnd != w.WindowStart+60 {
			t.Errorf("window = %+v", w)
		}
		if w.Kept != 4 || w.Duplicates != 3 || *w.MinValue != 70 || *w.MaxValue != 90.5 || w.SumValue != 70+80+90.5+71 {
			t.Errorf("statistics: kept %d, duplicates %d, min %v, max %v, sum %v", w.Kept, w.Duplicates, *w.MinValue, *w.MaxValue, w.SumValue)
		}
		if w.LatestID != "a1" || w.LatestValue != "71" {
			t.Errorf("latest = %s %s, want a1 71 (the latest effective time)", w.LatestID, w.LatestValue)
		}
		if ws[1].Kept != 1 || ws[1].LatestValue != "60" {
			t.Errorf("second key = %+v", ws[1])
		}
	})
}

func reasonStrings(rs []logs.ReasonCode) []string {
	out := make([]string, len(rs))
	for i, r := range rs {
		out[i] = string(r)
	}
	return out
}

// TestStreamStateSurvivesARestart folds half a window's readings with one
// streamer, stops it and folds the rest with a new one on the same
// database (a restart, or another replica): one window, every reading
// counted once, the repeat check carried over.
func TestStreamStateSurvivesARestart(t *testing.T) {
	t.Parallel()
	storagetest.Each(t, func(t *testing.T, db *gorm.DB) {
		now := time.Date(2026, 12, 6, 7, 0, 10, 0, time.UTC)
		clock := func() time.Time { return now }
		em := streamTestMap(true)
		first := newStreamer(StreamConfig{}, db, "r1", nil, slog.New(slog.DiscardHandler), clock)
		foldAll(t, first, mustReading(t, em, observation("a1", "1", "p1", "70", now)), mustReading(t, em, observation("a2", "1", "p1", "75", now)))
		now = now.Add(20 * time.Second)
		second := newStreamer(StreamConfig{}, db, "r2", nil, slog.New(slog.DiscardHandler), clock)
		got := foldAll(t, second,
			mustReading(t, em, observation("a2", "1", "p1", "75", now)), // delivered again after the restart
			mustReading(t, em, observation("a3", "1", "p1", "75", now)), // repeats a2's value
			mustReading(t, em, observation("a4", "1", "p1", "90", now)))
		if got[0] != logs.ReasonDuplicateReading || got[1] != logs.ReasonDuplicateReading || got[2] != logs.ReasonAggregated {
			t.Errorf("fates after the restart = %v", got)
		}
		ws := windows(t, db)
		if len(ws) != 1 || ws[0].Kept != 3 || ws[0].Duplicates != 2 || ws[0].SumValue != 235 {
			t.Fatalf("windows = %+v, want one with 3 kept (70, 75, 90) and 2 duplicates", ws)
		}
		// The next window starts with the key's previous value known.
		now = now.Add(time.Minute)
		if got := foldAll(t, second, mustReading(t, em, observation("a5", "1", "p1", "90", now))); got[0] != logs.ReasonDuplicateReading {
			t.Errorf("a repeat across the window boundary = %v, want duplicate_reading", got[0])
		}
	})
}

// TestStreamWindowIsClaimedOnce lets two replicas look for ended windows
// at once: each window is sent by exactly one of them, and a claim that
// lapsed is taken over.
func TestStreamWindowIsClaimedOnce(t *testing.T) {
	t.Parallel()
	storagetest.Each(t, func(t *testing.T, db *gorm.DB) {
		now := time.Date(2026, 12, 6, 7, 0, 10, 0, time.UTC)
		clock := func() time.Time { return now }
		em := streamTestMap(false)
		a := newStreamer(StreamConfig{ClaimFor: time.Minute}, db, "a", nil, slog.New(slog.DiscardHandler), clock)
		b := newStreamer(StreamConfig{ClaimFor: time.Minute}, db, "b", nil, slog.New(slog.DiscardHandler), clock)
		for i, p := range []string{"p1", "p2", "p3", "p4"} {
			foldAll(t, a, mustReading(t, em, observation("o"+p, "1", p, "7"+string(rune('0'+i)), now)))
		}
		now = now.Add(time.Minute) // the windows ended
		sent := make(chan string, 16)
		send := func(_ context.Context, w streamWindow) { sent <- w.ClaimedBy + " " + w.StreamKey }
		errs := make(chan error, 2)
		go func() { errs <- a.closeDue(context.Background(), send) }()
		go func() { errs <- b.closeDue(context.Background(), send) }()
		for range 2 {
			if err := <-errs; err != nil {
				t.Fatal(err)
			}
		}
		close(sent)
		seen := map[string]int{}
		for s := range sent {
			_, key, _ := strings.Cut(s, " ")
			seen[key]++
		}
		if len(seen) != 4 {
			t.Fatalf("windows sent = %v, want each of 4 keys", seen)
		}
		for k, n := range seen {
			if n != 1 {
				t.Errorf("%s sent %d times", k, n)
			}
		}
		// Unsettled claims lapse: after ClaimFor another replica takes them.
		again := make(chan string, 16)
		if err := b.closeDue(context.Background(), func(_ context.Context, w streamWindow) { again <- w.StreamKey }); err != nil || len(again) != 0 {
			t.Fatalf("windows claimed again while claims hold: %d, %v", len(again), err)
		}
		now = now.Add(2 * time.Minute)
		if err := b.closeDue(context.Background(), func(_ context.Context, w streamWindow) {
			if w.Attempts != 2 {
				t.Errorf("attempts = %d, want 2", w.Attempts)
			}
			again <- w.StreamKey
		}); err != nil || len(again) != 4 {
			t.Fatalf("lapsed claims taken over: %d, %v", len(again), err)
		}
	})
}

// latestSource serves one Observation as the window's latest reading.
type latestSource struct{ res map[string]any }

func (s latestSource) read(_ context.Context, _ *maps.Mapping, id string) (record, error) {
	if s.res == nil || s.res["id"] != id {
		return record{}, errGone
	}
	return record{Type: "Observation", ID: id, Data: s.res}, nil
}

// TestWindowRecordCarriesTheStatistics builds a window's synthetic
// Observation from folded readings: the chosen aggregate as the value,
// latest, min, max, mean and count as extensions, the window as the
// effective period, the latest reading's other elements kept.
func TestWindowRecordCarriesTheStatistics(t *testing.T) {
	t.Parallel()
	storagetest.Each(t, func(t *testing.T, db *gorm.DB) {
		now := time.Date(2026, 12, 6, 7, 0, 10, 0, time.UTC)
		s := newStreamer(StreamConfig{}, db, "r1", nil, slog.New(slog.DiscardHandler), func() time.Time { return now })
		em := streamTestMap(false)
		last := observation("a4", "1", "p1", "65", now.Add(3*time.Second))
		last["device"] = map[string]any{"reference": "Device/monitor-1"}
		foldAll(t, s,
			mustReading(t, em, observation("a1", "1", "p1", "70", now)),
			mustReading(t, em, observation("a2", "1", "p1", "91.5", now.Add(time.Second))),
			mustReading(t, em, observation("a3", "1", "p1", "60", now.Add(2*time.Second))),
			mustReading(t, em, last))
		w := windows(t, db)[0]
		set, err := maps.Compile(&maps.Document{Format: maps.FormatVersion, EntityMaps: []maps.EntityMap{{Name: "device-vitals", FHIRType: "Observation",
			CRMEntity: "msemr_observation", CRMEntitySet: "msemr_observations", FHIRToCRM: maps.Flow{Enabled: true, Operations: []maps.Operation{maps.OpCreate}},
			Correlation: maps.Correlation{CRMAttribute: "msemr_azurefhirid", FHIRIdentifierSystem: "urn:x"},
			Stream:      &maps.Stream{Window: maps.Duration(time.Minute), Aggregate: maps.AggregateMean}}}}, maps.CompileOptions{})
		if err != nil {
			t.Fatal(err)
		}
		mp, _ := set.Map("device-vitals")
		p := &pipeline{plog: slog.New(slog.DiscardHandler)}
		for _, src := range []latestSource{{last}, {nil}} {
			rec := p.windowRecord(context.Background(), &flow{source: src}, mp, w)
			d := rec.Data
			if rec.ID != windowID(w) || d["id"] != rec.ID || !strings.HasPrefix(rec.ID, "w") || len(rec.ID) != 33 {
				t.Errorf("id = %q", rec.ID)
			}
			q := d["valueQuantity"].(map[string]any)
			if q["value"] != json.Number("71.625") {
				t.Errorf("value = %v, want the mean 71.625", q["value"])
			}
			ext := map[string]any{}
			for _, e := range d["extension"].([]any) {
				em := e.(map[string]any)
				for k, v := range em {
					if k != "url" {
						ext[em["url"].(string)] = v
					}
				}
			}
			want := map[string]any{"urn:fhirsync:stream:latest": json.Number("65"), "urn:fhirsync:stream:min": json.Number("60"),
				"urn:fhirsync:stream:max": json.Number("91.5"), "urn:fhirsync:stream:mean": json.Number("71.625"), "urn:fhirsync:stream:count": json.Number("4")}
			for k, v := range want {
				if ext[k] != v {
					t.Errorf("%s = %v, want %v", k, ext[k], v)
				}
			}
			p := d["effectivePeriod"].(map[string]any)
			if p["start"] != "2026-12-06T07:00:00Z" || p["end"] != "2026-12-06T07:01:00Z" || d["effectiveDateTime"] != nil {
				t.Errorf("effective = %v / %v", p, d["effectiveDateTime"])
			}
			if d["subject"].(map[string]any)["reference"] != "Patient/p1" {
				t.Errorf("subject = %v", d["subject"])
			}
			if src.res != nil && d["device"] == nil {
				t.Error("the latest reading's device was not kept")
			}
		}
	})
}
