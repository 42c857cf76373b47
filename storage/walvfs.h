// walvfs.h declares the SQLite VFS that gathers a WAL file's writes (see
// walvfs.go for why, walvfs.c for how).
#ifndef FHIRSYNC_WALVFS_H
#define FHIRSYNC_WALVFS_H

#include <stdint.h>

// FHIRSYNC_WALVFS_NAME is the name the VFS is registered under: a
// database opened with vfs=FHIRSYNC_WALVFS_NAME uses it.
#define FHIRSYNC_WALVFS_NAME "fhirsync-walbuf"

// fhirsync_walvfs_register registers the VFS over SQLite's default one;
// call it once. It returns 0 on success, -1 when SQLite's functions are
// not linked into the program or it has no default VFS, or SQLite's error
// code.
int fhirsync_walvfs_register(void);

// fhirsync_walvfs_stats reports, since the program started, the writes
// SQLite made to WAL files through the VFS and the write calls the VFS
// made to the operating system for them.
void fhirsync_walvfs_stats(int64_t *writes, int64_t *calls);

#endif
