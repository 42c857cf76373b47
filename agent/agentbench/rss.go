package agentbench

import (
	"bufio"
	"os"
	"runtime"
	"runtime/metrics"
	"strconv"
	"strings"
	"syscall"

	"github.com/fhirsync/fhirsync/internal/proccpu"
)

// machineCPU reads the machine-wide CPU counters of /proc/stat: the time
// the host's hypervisor took from this machine (steal) and all time. ok is
// false where there is no /proc/stat.
func machineCPU() (steal, total uint64, ok bool) {
	b, err := os.ReadFile("/proc/stat")
	if err != nil {
		return 0, 0, false
	}
	line, _, _ := strings.Cut(string(b), "\n")
	fs := strings.Fields(line)
	if len(fs) < 9 || fs[0] != "cpu" {
		return 0, 0, false
	}
	for i, f := range fs[1:] {
		n, err := strconv.ParseUint(f, 10, 64)
		if err != nil {
			return 0, 0, false
		}
		if i == 7 {
			steal = n
		}
		// guest time (fields 9 and 10) is already counted in user time.
		if i < 8 {
			total += n
		}
	}
	return steal, total, true
}

// cpuSeconds is the user and system CPU time this process has used.
func cpuSeconds() float64 { return proccpu.Used().Seconds() }

// heap is what runtime/metrics counts of this process's Go heap: bytes
// allocated and collections run since it started.
type heap struct{ allocBytes, cycles uint64 }

func heapCounts() heap {
	s := []metrics.Sample{{Name: "/gc/heap/allocs:bytes"}, {Name: "/gc/cycles/total:gc-cycles"}}
	metrics.Read(s)
	return heap{allocBytes: s[0].Value.Uint64(), cycles: s[1].Value.Uint64()}
}

// ioCounts is the process's line of /proc/self/io: bytes passed to read
// and write calls and the number of calls.
type ioCounts struct{ rchar, wchar, syscr, syscw uint64 }

// processIO reads /proc/self/io; false where there is none.
func processIO() (ioCounts, bool) {
	return parseProcIO(os.ReadFile("/proc/self/io"))
}

func parseProcIO(b []byte, err error) (ioCounts, bool) {
	if err != nil {
		return ioCounts{}, false
	}
	var c ioCounts
	fields := map[string]*uint64{"rchar": &c.rchar, "wchar": &c.wchar, "syscr": &c.syscr, "syscw": &c.syscw}
	found := 0
	for _, line := range strings.Split(string(b), "\n") {
		name, v, ok := strings.Cut(line, ":")
		p := fields[name]
		if !ok || p == nil {
			continue
		}
		n, err := strconv.ParseUint(strings.TrimSpace(v), 10, 64)
		if err != nil {
			return ioCounts{}, false
		}
		*p = n
		found++
	}
	return c, found == len(fields)
}

// peakRSS is the process's peak resident set size in bytes: VmHWM from
// /proc/self/status where there is one, else getrusage's ru_maxrss.
func peakRSS() int64 {
	if f, err := os.Open("/proc/self/status"); err == nil {
		defer f.Close()
		sc := bufio.NewScanner(f)
		for sc.Scan() {
			if rest, ok := strings.CutPrefix(sc.Text(), "VmHWM:"); ok {
				fs := strings.Fields(rest)
				if len(fs) == 2 && fs[1] == "kB" {
					if kb, err := strconv.ParseInt(fs[0], 10, 64); err == nil {
						return kb << 10
					}
				}
			}
		}
	}
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	if runtime.GOOS == "darwin" {
		return int64(ru.Maxrss) // bytes
	}
	return int64(ru.Maxrss) << 10 // kilobytes elsewhere
}
