package logs

import "time"

// SetClock replaces the store's clock in tests.
func SetClock(s *Store, now func() time.Time) { s.now = now }
