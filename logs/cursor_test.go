package logs

import (
	"testing"
	"time"
)

func FuzzDecodeCursor(f *testing.F) {
	f.Add(cursor{at: time.Date(2026, 3, 1, 12, 0, 0, 123456000, time.UTC), id: 42}.encode())
	f.Add("")
	f.Add("djE6MTIzOjA")
	f.Add("!!!")
	f.Fuzz(func(t *testing.T, s string) {
		c, err := decodeCursor(s)
		if err != nil {
			if err != ErrBadCursor {
				t.Fatalf("decodeCursor(%q) err = %v, want ErrBadCursor", s, err)
			}
			return
		}
		if c.id <= 0 {
			t.Fatalf("decodeCursor(%q) accepted id %d", s, c.id)
		}
		again, err := decodeCursor(c.encode())
		if err != nil || again != c {
			t.Fatalf("cursor %+v does not round-trip: %+v, %v", c, again, err)
		}
	})
}
