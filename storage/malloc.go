package storage

/*
#include <malloc.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

// set_trim_threshold sets how much freed memory the C allocator keeps
// before it gives memory back to the system; 0 where it cannot be set.
static int set_trim_threshold(int bytes) {
#ifdef M_TRIM_THRESHOLD
	return mallopt(M_TRIM_THRESHOLD, bytes);
#else
	return 0;
#endif
}

// ARENA_MAX is arenaMax below (see there why).
#define ARENA_MAX 2

// set_arena_max bounds the C allocator's arenas; 0 where it cannot be set.
static int set_arena_max(int n) {
#ifdef M_ARENA_MAX
	return mallopt(M_ARENA_MAX, n);
#else
	return 0;
#endif
}

// bound_arenas runs when the program is loaded, before the Go runtime
// starts its threads: a bound set later leaves every arena made by then.
// An operator's own setting (MALLOC_ARENA_MAX, GLIBC_TUNABLES) wins.
__attribute__((constructor)) static void bound_arenas(void) {
	const char *t = getenv("GLIBC_TUNABLES");
	if (getenv("MALLOC_ARENA_MAX") != NULL || (t != NULL && strstr(t, "arena_max") != NULL)) {
		return;
	}
	set_arena_max(ARENA_MAX);
}

// count_arenas is the number of arenas the C allocator has made, from
// malloc_info; -1 where it cannot tell.
static int count_arenas(void) {
#ifdef __GLIBC__
	char *buf = NULL;
	size_t len = 0;
	FILE *f = open_memstream(&buf, &len);
	if (f == NULL) {
		return -1;
	}
	if (malloc_info(0, f) != 0) {
		fclose(f);
		free(buf);
		return -1;
	}
	fclose(f);
	int n = 0;
	for (char *p = buf; (p = strstr(p, "<heap nr=")) != NULL; p++) {
		n++;
	}
	free(buf);
	return n;
#else
	return -1;
#endif
}
*/
import "C"

import (
	"os"
	"strings"
)

// trimThreshold is how much freed memory SQLite's allocator (the C
// library's malloc) keeps for reuse instead of handing it back to the
// system.
//
// SQLite empties a connection's page cache whenever another connection
// has written, so under steady writes every read refills its connection's
// cache: it frees the old pages and allocates new ones. glibc's default
// gives freed memory back once 128 KiB sit unused at the top of a heap
// (and each thread that calls into SQLite may get a heap of its own), so
// the pages went back to the system and came back as fresh zeroed pages
// moments later, one page fault at a time: about 9 % of the agent's CPU in
// a sync run, most of it in the kernel. Keeping up to 64 MiB free ends
// that churn; SQLite's caches are bounded (cache_size) and the memory is
// reused, not grown.
const trimThreshold = 64 << 20

// arenaMax bounds the C allocator's arenas. glibc gives a thread that
// finds the arenas busy an arena of its own, up to eight per core, and
// each keeps its freed memory (up to trimThreshold) apart from the others.
// SQLite runs on whichever threads the Go scheduler gives its callers, so
// under load most of the process's threads come to hold an arena with
// page caches' worth of free memory in it: in `fhirsync bench` the
// agent's peak RSS was 184 MB with glibc's default and 152–155 MB with
// two arenas, with no more CPU per record. Two arenas leave SQLite's
// callers (one writer, the readers) little to wait for on two cores. The
// C constructor bound_arenas sets it when the program is loaded.
const arenaMax = C.ARENA_MAX

func init() {
	// An operator's own malloc settings win.
	if os.Getenv("MALLOC_TRIM_THRESHOLD_") != "" || strings.Contains(os.Getenv("GLIBC_TUNABLES"), "trim_threshold") {
		return
	}
	setTrimThreshold(trimThreshold)
}

// arenas is how many arenas the C allocator has made; -1 where it cannot
// tell.
func arenas() int { return int(C.count_arenas()) }

// setTrimThreshold sets the C allocator's trim threshold; false where
// the C library has no such setting.
func setTrimThreshold(bytes int) bool { return C.set_trim_threshold(C.int(bytes)) == 1 }
