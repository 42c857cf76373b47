package main

import (
	"io"
	"os"
	"path/filepath"

	"github.com/fhirsync/fhirsync/admin"
)

// passwordDelivery decides where a first admin's one-time password goes:
// printed to stdout when it is an interactive terminal, otherwise into a
// 0600 file in the data directory (named in the log, never the password).
func passwordDelivery(stdout io.Writer, dataDir string) admin.PasswordDelivery {
	if isTerminal(stdout) {
		return admin.PasswordDelivery{Terminal: stdout}
	}
	return admin.PasswordDelivery{File: filepath.Join(dataDir, "admin-one-time-password")}
}

// isTerminal reports whether w is a character device other than the null
// device — a terminal, in practice. Redirected output, pipes, files and
// container log collectors are not.
func isTerminal(w io.Writer) bool {
	f, ok := w.(*os.File)
	if !ok {
		return false
	}
	fi, err := f.Stat()
	if err != nil || fi.Mode()&os.ModeCharDevice == 0 {
		return false
	}
	null, err := os.Stat(os.DevNull)
	return err != nil || !os.SameFile(fi, null)
}
