package logs_test

import (
	"context"
	"testing"
	"time"

	"gorm.io/gorm"

	"github.com/fhirsync/fhirsync/logs"
	"github.com/fhirsync/fhirsync/storage/storagetest"
)

// TestStreamWindowReadingsRoundTrip writes the one decision of a device
// stream window and reads its counts back; a decision without readings
// stays without.
func TestStreamWindowReadingsRoundTrip(t *testing.T) {
	t.Parallel()
	storagetest.Each(t, func(t *testing.T, db *gorm.DB) {
		s, _ := newStore(t, db, nil)
		start := time.Date(2026, 12, 6, 7, 0, 0, 0, time.UTC)
		d := &logs.Decision{Time: start.Add(5 * time.Minute), Direction: logs.FHIRToCRM, EntityMap: "device-vitals",
			Outcome: logs.OutcomeSkipped, Reason: logs.ReasonWithinRange,
			Readings: &logs.Readings{Subject: "Patient/p1", Code: "http://loinc.org|8867-4", Start: start, End: start.Add(5 * time.Minute),
				Counts: map[logs.ReasonCode]int{logs.ReasonWithinRange: 297, logs.ReasonDuplicateReading: 3}}}
		plain := &logs.Decision{Time: start, Direction: logs.FHIRToCRM, Outcome: logs.OutcomeSent, Reason: logs.ReasonCreated}
		if err := s.WriteBatch(context.Background(), []*logs.Decision{d, plain}); err != nil {
			t.Fatal(err)
		}
		got, err := s.Get(context.Background(), d.ID)
		if err != nil {
			t.Fatal(err)
		}
		if got.Readings == nil || got.Readings.Total() != 300 || got.Readings.Counts[logs.ReasonDuplicateReading] != 3 ||
			got.Readings.Subject != "Patient/p1" || !got.Readings.End.Equal(start.Add(5*time.Minute)) {
			t.Errorf("readings = %+v", got.Readings)
		}
		if got, err := s.Get(context.Background(), plain.ID); err != nil || got.Readings != nil {
			t.Errorf("plain decision readings = %+v, %v", got.Readings, err)
		}
	})
}
