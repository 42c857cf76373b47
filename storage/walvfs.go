package storage

/*
#include "walvfs.h"
*/
import "C"

import (
	"fmt"
	"sync"
)

// walVFS is the SQLite VFS every SQLite database of the project is opened
// with: SQLite's default VFS, except that a WAL file's writes are gathered
// and handed to the operating system in calls of up to 124 KiB (30 pages)
// instead of two calls per page (walvfs.c).
//
// A group commit of the agent's decisions dirties pages spread over about
// ten B-trees, a dozen pages a message, and SQLite writes each page to the
// WAL as a 24-byte frame header and the page, one system call each: about
// twelve of the twenty write calls a FHIR→CRM record cost the agent's
// process (fhirsync bench, agent_io), at several microseconds each on a
// virtual machine. Gathered, a group commit of sixty messages takes about
// twenty calls instead of over a thousand.
// What other connections and processes can see of the file, and what a
// crash leaves of it, is unchanged: the gathered writes reach the file
// before SQLite syncs it and before it publishes a commit to readers
// (walvfs.c says how).
//
// No library offers it: mattn/go-sqlite3 has no VFS API, and
// github.com/psanford/sqlite3vfs, which lets a VFS for it be written in
// Go, has every file call go through Go and no shared-memory methods, so
// no WAL mode. So it is written here, in C, over the default VFS, which
// does all the actual I/O.
const walVFS = C.FHIRSYNC_WALVFS_NAME

var (
	walVFSOnce sync.Once
	walVFSErr  error
)

// WALVFS registers the VFS that gathers a WAL file's writes (see walVFS)
// and returns its name, for a SQLite database opened outside Open (the
// sandbox FHIR server's store): vfs=NAME in its DSN.
func WALVFS() (string, error) {
	return walVFS, registerWALVFS()
}

// registerWALVFS makes walVFS known to SQLite, once.
func registerWALVFS() error {
	walVFSOnce.Do(func() {
		switch rc := C.fhirsync_walvfs_register(); rc {
		case 0:
		case -1:
			walVFSErr = fmt.Errorf("registering the SQLite VFS %s: SQLite is not linked into this program or has no default VFS", walVFS)
		default:
			walVFSErr = fmt.Errorf("registering the SQLite VFS %s: SQLite error %d", walVFS, int(rc))
		}
	})
	return walVFSErr
}

// walWrites reports the writes SQLite made to WAL files through walVFS
// since the program started, and the write calls that carried them to the
// operating system.
func walWrites() (writes, calls int64) {
	var w, c C.int64_t
	C.fhirsync_walvfs_stats(&w, &c)
	return int64(w), int64(c)
}
