package main

import (
	"bytes"
	"io"
	"os"
	"path/filepath"
	"testing"
)

// TestPasswordDeliveryOffTerminal: output that is not a terminal (a
// buffer, a file, the null device) gets the one-time password in a file
// under the data directory, never printed.
func TestPasswordDeliveryOffTerminal(t *testing.T) {
	t.Parallel()
	devNull, err := os.OpenFile(os.DevNull, os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer devNull.Close()
	regular, err := os.Create(filepath.Join(t.TempDir(), "out"))
	if err != nil {
		t.Fatal(err)
	}
	defer regular.Close()
	for name, w := range map[string]io.Writer{"buffer": &bytes.Buffer{}, "null device": devNull, "regular file": regular} {
		d := passwordDelivery(w, "/srv/fhirsync")
		if d.Terminal != nil || d.File != filepath.Join("/srv/fhirsync", "admin-one-time-password") {
			t.Errorf("%s: delivery %+v, want the file in the data directory", name, d)
		}
	}
}
