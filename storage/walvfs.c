// A VFS over SQLite's default one that gathers the writes SQLite makes to a
// WAL file and hands them to the operating system in calls of up to
// BUFFER_MAX bytes, at the latest before anything could read them. walvfs.go says why.
//
// SQLite appends a transaction to the WAL as frames, each written in two
// calls: a 24-byte frame header, then the page. Files other than WAL files
// are opened by the default VFS itself, untouched. A WAL file's writes are
// kept in a buffer while each one continues the last; the buffer is
// written out (one call) when
//
//   - the page of a commit frame has been written: SQLite publishes the
//     frames to readers (in the WAL index, shared memory) only after that,
//     so a reader in this process or another never finds a frame that is
//     not in the file yet;
//   - SQLite syncs, truncates, reads, sizes or closes the file, or asks it
//     anything through xFileControl;
//   - a write does not continue the buffer, or would overflow it.
//
// So the file's contents at every point another connection or a recovery
// can see them are what SQLite's own writes would have made them, and a
// process that dies with writes in the buffer dies, as far as the file
// tells, in the middle of writing an uncommitted transaction's frames —
// which SQLite's recovery already discards.
//
// The declarations below are SQLite's OS interface as its documentation
// gives it (https://sqlite.org/c3ref/vfs.html, c3ref/io_methods.html,
// c3ref/file.html): the program's SQLite is the one compiled into
// github.com/mattn/go-sqlite3, whose header is not on this package's
// include path. Its functions are referenced weakly: the cgo tool links
// this package's C code on its own once, without SQLite.

#include <stdlib.h>
#include <string.h>
#include <stdint.h>

#include "walvfs.h"

typedef int64_t sqlite3_int64;
typedef struct sqlite3_file sqlite3_file;
typedef struct sqlite3_io_methods sqlite3_io_methods;
typedef struct sqlite3_vfs sqlite3_vfs;
typedef void (*sqlite3_syscall_ptr)(void);

struct sqlite3_file {
	const sqlite3_io_methods *pMethods;
};

struct sqlite3_io_methods {
	int iVersion;
	int (*xClose)(sqlite3_file *);
	int (*xRead)(sqlite3_file *, void *, int, sqlite3_int64);
	int (*xWrite)(sqlite3_file *, const void *, int, sqlite3_int64);
	int (*xTruncate)(sqlite3_file *, sqlite3_int64);
	int (*xSync)(sqlite3_file *, int);
	int (*xFileSize)(sqlite3_file *, sqlite3_int64 *);
	int (*xLock)(sqlite3_file *, int);
	int (*xUnlock)(sqlite3_file *, int);
	int (*xCheckReservedLock)(sqlite3_file *, int *);
	int (*xFileControl)(sqlite3_file *, int, void *);
	int (*xSectorSize)(sqlite3_file *);
	int (*xDeviceCharacteristics)(sqlite3_file *);
	int (*xShmMap)(sqlite3_file *, int, int, int, void volatile **);
	int (*xShmLock)(sqlite3_file *, int, int, int);
	void (*xShmBarrier)(sqlite3_file *);
	int (*xShmUnmap)(sqlite3_file *, int);
	int (*xFetch)(sqlite3_file *, sqlite3_int64, int, void **);
	int (*xUnfetch)(sqlite3_file *, sqlite3_int64, void *);
};

struct sqlite3_vfs {
	int iVersion;
	int szOsFile;
	int mxPathname;
	sqlite3_vfs *pNext;
	const char *zName;
	void *pAppData;
	int (*xOpen)(sqlite3_vfs *, const char *, sqlite3_file *, int, int *);
	int (*xDelete)(sqlite3_vfs *, const char *, int);
	int (*xAccess)(sqlite3_vfs *, const char *, int, int *);
	int (*xFullPathname)(sqlite3_vfs *, const char *, int, char *);
	void *(*xDlOpen)(sqlite3_vfs *, const char *);
	void (*xDlError)(sqlite3_vfs *, int, char *);
	void (*(*xDlSym)(sqlite3_vfs *, void *, const char *))(void);
	void (*xDlClose)(sqlite3_vfs *, void *);
	int (*xRandomness)(sqlite3_vfs *, int, char *);
	int (*xSleep)(sqlite3_vfs *, int);
	int (*xCurrentTime)(sqlite3_vfs *, double *);
	int (*xGetLastError)(sqlite3_vfs *, int, char *);
	int (*xCurrentTimeInt64)(sqlite3_vfs *, sqlite3_int64 *);
	int (*xSetSystemCall)(sqlite3_vfs *, const char *, sqlite3_syscall_ptr);
	sqlite3_syscall_ptr (*xGetSystemCall)(sqlite3_vfs *, const char *);
	const char *(*xNextSystemCall)(sqlite3_vfs *, const char *);
};

#define SQLITE_OK 0
#define SQLITE_IOERR_NOMEM (10 | (12 << 8))
#define SQLITE_OPEN_WAL 0x00080000

// The size of a WAL frame header, and where in it the commit mark is: the
// database's size in pages after the commit, zero in other frames
// (https://sqlite.org/fileformat2.html#walformat).
#define FRAME_HEADER 24
#define COMMIT_MARK 4

extern sqlite3_vfs *sqlite3_vfs_find(const char *) __attribute__((weak));
extern int sqlite3_vfs_register(sqlite3_vfs *, int) __attribute__((weak));

// BUFFER_MAX is the most a WAL file's buffer holds before it is written
// out: 30 frames of 4 KiB pages. SQLite's default VFS takes at most
// 128 KiB less a byte in one write (unix seekAndWriteFd masks the length
// with 0x1ffff), so that is the bound.
#define BUFFER_MAX (124 << 10)

typedef struct {
	sqlite3_file base;  // methods: wal_methods
	sqlite3_file *real; // the default VFS's file, right after this struct
	char *buf;          // allocated at the first write; NULL for readers
	int len;            // bytes in buf, for the file's [start, start+len)
	sqlite3_int64 start;
	int commit_header; // the last write was a commit frame's header
} wal_file;

static sqlite3_vfs *base_vfs;
static sqlite3_vfs wal_vfs;
static sqlite3_io_methods wal_methods;

static int64_t stat_writes, stat_calls;

// flush writes the buffer out. The buffer is emptied whatever the outcome:
// a failed write fails SQLite's transaction, which does not reuse what it
// wrote.
static int flush(wal_file *f) {
	if (f->len == 0) {
		return SQLITE_OK;
	}
	int n = f->len;
	f->len = 0;
	__atomic_add_fetch(&stat_calls, 1, __ATOMIC_RELAXED);
	return f->real->pMethods->xWrite(f->real, f->buf, n, f->start);
}

static int wal_write(sqlite3_file *pf, const void *p, int n, sqlite3_int64 off) {
	wal_file *f = (wal_file *)pf;
	__atomic_add_fetch(&stat_writes, 1, __ATOMIC_RELAXED);
	// After a commit frame's header SQLite writes its page: the
	// transaction's last frame, written out before the write returns.
	int commit_page = f->commit_header;
	f->commit_header = 0;
	if (f->len > 0 && (off != f->start + f->len || f->len + n > BUFFER_MAX)) {
		int rc = flush(f);
		if (rc != SQLITE_OK) {
			return rc;
		}
	}
	if (n > BUFFER_MAX) {
		__atomic_add_fetch(&stat_calls, 1, __ATOMIC_RELAXED);
		return f->real->pMethods->xWrite(f->real, p, n, off);
	}
	if (f->buf == NULL) {
		f->buf = malloc(BUFFER_MAX);
		if (f->buf == NULL) {
			return SQLITE_IOERR_NOMEM;
		}
	}
	if (f->len == 0) {
		f->start = off;
	}
	memcpy(f->buf + f->len, p, n);
	f->len += n;
	if (commit_page) {
		return flush(f);
	}
	if (n == FRAME_HEADER) {
		const unsigned char *h = p;
		f->commit_header = (h[COMMIT_MARK] | h[COMMIT_MARK + 1] | h[COMMIT_MARK + 2] | h[COMMIT_MARK + 3]) != 0;
	}
	return SQLITE_OK;
}

static int wal_close(sqlite3_file *pf) {
	wal_file *f = (wal_file *)pf;
	int rc = flush(f);
	int rc2 = f->real->pMethods->xClose(f->real);
	free(f->buf);
	f->buf = NULL;
	return rc != SQLITE_OK ? rc : rc2;
}

static int wal_read(sqlite3_file *pf, void *p, int n, sqlite3_int64 off) {
	wal_file *f = (wal_file *)pf;
	int rc = flush(f);
	return rc != SQLITE_OK ? rc : f->real->pMethods->xRead(f->real, p, n, off);
}

static int wal_truncate(sqlite3_file *pf, sqlite3_int64 size) {
	wal_file *f = (wal_file *)pf;
	int rc = flush(f);
	return rc != SQLITE_OK ? rc : f->real->pMethods->xTruncate(f->real, size);
}

static int wal_sync(sqlite3_file *pf, int flags) {
	wal_file *f = (wal_file *)pf;
	int rc = flush(f);
	return rc != SQLITE_OK ? rc : f->real->pMethods->xSync(f->real, flags);
}

static int wal_file_size(sqlite3_file *pf, sqlite3_int64 *size) {
	wal_file *f = (wal_file *)pf;
	int rc = flush(f);
	return rc != SQLITE_OK ? rc : f->real->pMethods->xFileSize(f->real, size);
}

static int wal_file_control(sqlite3_file *pf, int op, void *arg) {
	wal_file *f = (wal_file *)pf;
	int rc = flush(f);
	return rc != SQLITE_OK ? rc : f->real->pMethods->xFileControl(f->real, op, arg);
}

// The rest pass through. A WAL file takes no locks of its own and has no
// shared memory (the database file has), but SQLite may ask.
static int wal_lock(sqlite3_file *pf, int l) {
	sqlite3_file *r = ((wal_file *)pf)->real;
	return r->pMethods->xLock(r, l);
}

static int wal_unlock(sqlite3_file *pf, int l) {
	sqlite3_file *r = ((wal_file *)pf)->real;
	return r->pMethods->xUnlock(r, l);
}

static int wal_check_reserved_lock(sqlite3_file *pf, int *out) {
	sqlite3_file *r = ((wal_file *)pf)->real;
	return r->pMethods->xCheckReservedLock(r, out);
}

static int wal_sector_size(sqlite3_file *pf) {
	sqlite3_file *r = ((wal_file *)pf)->real;
	return r->pMethods->xSectorSize(r);
}

static int wal_device_characteristics(sqlite3_file *pf) {
	sqlite3_file *r = ((wal_file *)pf)->real;
	return r->pMethods->xDeviceCharacteristics(r);
}

static int wal_open(sqlite3_vfs *vfs, const char *name, sqlite3_file *pf, int flags, int *out_flags) {
	(void)vfs;
	if ((flags & SQLITE_OPEN_WAL) == 0) {
		// The default VFS's own file, in the space SQLite allocated
		// (szOsFile covers it).
		return base_vfs->xOpen(base_vfs, name, pf, flags, out_flags);
	}
	wal_file *f = (wal_file *)pf;
	memset(f, 0, sizeof(*f));
	f->real = (sqlite3_file *)(f + 1);
	int rc = base_vfs->xOpen(base_vfs, name, f->real, flags, out_flags);
	if (rc != SQLITE_OK) {
		if (f->real->pMethods != NULL) {
			f->real->pMethods->xClose(f->real);
		}
		f->base.pMethods = NULL;
		return rc;
	}
	f->base.pMethods = &wal_methods;
	return SQLITE_OK;
}

int fhirsync_walvfs_register(void) {
	if (sqlite3_vfs_find == NULL || sqlite3_vfs_register == NULL) {
		return -1;
	}
	base_vfs = sqlite3_vfs_find(NULL);
	if (base_vfs == NULL) {
		return -1;
	}
	// The default VFS's methods serve everything but opening; they read
	// only fields copied here (mxPathname, pAppData).
	wal_vfs = *base_vfs;
	wal_vfs.pNext = NULL;
	wal_vfs.zName = FHIRSYNC_WALVFS_NAME;
	wal_vfs.szOsFile = (int)sizeof(wal_file) + base_vfs->szOsFile;
	wal_vfs.xOpen = wal_open;

	memset(&wal_methods, 0, sizeof(wal_methods));
	wal_methods.iVersion = 1;
	wal_methods.xClose = wal_close;
	wal_methods.xRead = wal_read;
	wal_methods.xWrite = wal_write;
	wal_methods.xTruncate = wal_truncate;
	wal_methods.xSync = wal_sync;
	wal_methods.xFileSize = wal_file_size;
	wal_methods.xLock = wal_lock;
	wal_methods.xUnlock = wal_unlock;
	wal_methods.xCheckReservedLock = wal_check_reserved_lock;
	wal_methods.xFileControl = wal_file_control;
	wal_methods.xSectorSize = wal_sector_size;
	wal_methods.xDeviceCharacteristics = wal_device_characteristics;
	return sqlite3_vfs_register(&wal_vfs, 0);
}

void fhirsync_walvfs_stats(int64_t *writes, int64_t *calls) {
	*writes = __atomic_load_n(&stat_writes, __ATOMIC_RELAXED);
	*calls = __atomic_load_n(&stat_calls, __ATOMIC_RELAXED);
}
