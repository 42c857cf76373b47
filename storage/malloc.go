package storage

/*
#include <malloc.h>

// set_trim_threshold sets how much freed memory the C allocator keeps
// before it gives memory back to the system; 0 where it cannot be set.
static int set_trim_threshold(int bytes) {
#ifdef M_TRIM_THRESHOLD
	return mallopt(M_TRIM_THRESHOLD, bytes);
#else
	return 0;
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

func init() {
	// An operator's own malloc settings win.
	if os.Getenv("MALLOC_TRIM_THRESHOLD_") != "" || strings.Contains(os.Getenv("GLIBC_TUNABLES"), "trim_threshold") {
		return
	}
	setTrimThreshold(trimThreshold)
}

// setTrimThreshold sets the C allocator's trim threshold; false where
// the C library has no such setting.
func setTrimThreshold(bytes int) bool { return C.set_trim_threshold(C.int(bytes)) == 1 }
