package logs

import (
	"context"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/fhirsync/fhirsync/storage"
)

// Series is the dashboard's view of the decisions in [From, To): per time
// bucket and per entity map, counts by outcome and latency percentiles.
// It is aggregated in the database (GROUP BY over the covering index
// sync_decisions_dashboard), so its cost grows with the number of
// decisions in the range, never with their width, and only a few hundred
// groups come back.
type Series struct {
	From   time.Time     `json:"from"`
	To     time.Time     `json:"to"`
	Bucket time.Duration `json:"bucket_ns"`
	// Total sums every decision in the range.
	Total Stats `json:"total"`
	// Buckets covers the range without gaps, oldest first; Start is
	// aligned to a multiple of Bucket since the Unix epoch, so the first
	// and last may be partly outside the range.
	Buckets []BucketStats `json:"buckets"`
	// Maps has one entry per entity map with decisions in the range, by
	// name; decisions without a map are under "".
	Maps []MapStats `json:"maps"`
}

// Stats are the counts and latencies of a set of decisions.
type Stats struct {
	Decisions int64             `json:"decisions"`
	ByOutcome map[Outcome]int64 `json:"by_outcome"`
	// Errors counts failed and dead-lettered decisions.
	Errors int64 `json:"errors"`
	// ErrorRate is Errors / Decisions, 0 without decisions.
	ErrorRate float64 `json:"error_rate"`
	// Latency are the percentiles of the time from the source change to
	// the target write, over sent decisions whose notice said when the
	// source changed (Timed of them); zero when none did.
	Timed   int64     `json:"timed"`
	Latency Quantiles `json:"latency"`

	hist []int64 // decisions per latency bin
}

// Quantiles are latency percentiles, estimated from a histogram with bins
// 1, 2 and 5 per decade from 1 ms to 1 h (linear within a bin): an
// estimate is never off by more than its bin's width.
type Quantiles struct {
	P50 time.Duration `json:"p50_ns"`
	P95 time.Duration `json:"p95_ns"`
	P99 time.Duration `json:"p99_ns"`
}

// BucketStats are the Stats of one time bucket [Start, Start+Bucket).
type BucketStats struct {
	Start time.Time `json:"start"`
	Stats
}

// MapStats are the Stats of one entity map.
type MapStats struct {
	Map string `json:"map"`
	Stats
}

// latencyBins are the upper bounds (exclusive) of the latency histogram's
// bins, in microseconds; a last bin holds everything from an hour up.
var latencyBins = func() []int64 {
	var out []int64
	for decade := int64(1000); decade < 3_600_000_000; decade *= 10 {
		for _, m := range []int64{1, 2, 5} {
			if v := m * decade; v <= 3_600_000_000 {
				out = append(out, v)
			}
		}
	}
	return append(out, 3_600_000_000)
}()

// binSQL maps latency_us to its bin: -1 for NULL (not timed).
var binSQL = func() string {
	var b strings.Builder
	b.WriteString("CASE WHEN latency_us IS NULL THEN -1")
	for i, hi := range latencyBins {
		b.WriteString(" WHEN latency_us < " + strconv.FormatInt(hi, 10) + " THEN " + strconv.Itoa(i))
	}
	b.WriteString(" ELSE " + strconv.Itoa(len(latencyBins)) + " END")
	return b.String()
}()

// MaxSeriesBuckets bounds the buckets one Series may have.
const MaxSeriesBuckets = 2000

// Series aggregates the decisions in [from, to) per bucket of the given
// width (at least a minute) and per entity map.
func (s *Store) Series(ctx context.Context, from, to time.Time, bucket time.Duration) (Series, error) {
	from, to = from.UTC(), to.UTC()
	secs := int64(bucket / time.Second)
	switch {
	case !from.Before(to):
		return Series{}, fmt.Errorf("%w: the range ends before it starts", ErrBadFilter)
	case bucket < time.Minute || bucket%time.Second != 0:
		return Series{}, fmt.Errorf("%w: bucket %s is shorter than a minute or not whole seconds", ErrBadFilter, bucket)
	case to.Sub(from)/bucket > MaxSeriesBuckets:
		return Series{}, fmt.Errorf("%w: more than %d buckets of %s in the range", ErrBadFilter, MaxSeriesBuckets, bucket)
	}
	slot := "CAST(strftime('%s', decided_at) AS INTEGER) / ?"
	if storage.DialectOf(s.db) == storage.Postgres {
		slot = "CAST(floor(extract(epoch FROM decided_at) / ?) AS BIGINT)"
	}
	var groups []struct {
		Slot      int64
		EntityMap string
		Outcome   string
		Bin       int
		N         int64
	}
	err := s.db.WithContext(ctx).Raw(`SELECT `+slot+` AS slot, entity_map, outcome, `+binSQL+` AS bin, COUNT(*) AS n
		FROM sync_decisions WHERE decided_at >= ? AND decided_at < ?
		GROUP BY 1, 2, 3, 4`, secs, from, to).Scan(&groups).Error
	if err != nil {
		return Series{}, fmt.Errorf("aggregating decisions for the dashboard: %w", err)
	}
	out := Series{From: from, To: to, Bucket: bucket, Total: newStats()}
	first, last := from.Unix()/secs, (to.Unix()-1)/secs
	for sl := first; sl <= last; sl++ {
		out.Buckets = append(out.Buckets, BucketStats{Start: time.Unix(sl*secs, 0).UTC(), Stats: newStats()})
	}
	maps := map[string]*MapStats{}
	for _, g := range groups {
		o := Outcome(g.Outcome)
		out.Total.add(o, g.Bin, g.N)
		if i := g.Slot - first; i >= 0 && i < int64(len(out.Buckets)) {
			out.Buckets[i].add(o, g.Bin, g.N)
		}
		m := maps[g.EntityMap]
		if m == nil {
			m = &MapStats{Map: g.EntityMap, Stats: newStats()}
			maps[g.EntityMap] = m
		}
		m.add(o, g.Bin, g.N)
	}
	out.Total.finish()
	for i := range out.Buckets {
		out.Buckets[i].finish()
	}
	for _, m := range maps {
		m.finish()
		out.Maps = append(out.Maps, *m)
	}
	slices.SortFunc(out.Maps, func(a, b MapStats) int { return strings.Compare(a.Map, b.Map) })
	if out.Maps == nil {
		out.Maps = []MapStats{}
	}
	return out, nil
}

func newStats() Stats {
	return Stats{ByOutcome: map[Outcome]int64{}, hist: make([]int64, len(latencyBins)+1)}
}

func (st *Stats) add(o Outcome, bin int, n int64) {
	st.Decisions += n
	st.ByOutcome[o] += n
	if o == OutcomeFailed || o == OutcomeDeadLettered {
		st.Errors += n
	}
	if bin >= 0 && bin < len(st.hist) {
		st.hist[bin] += n
		st.Timed += n
	}
}

func (st *Stats) finish() {
	if st.Decisions > 0 {
		st.ErrorRate = float64(st.Errors) / float64(st.Decisions)
	}
	st.Latency = Quantiles{P50: quantile(st.hist, 0.50), P95: quantile(st.hist, 0.95), P99: quantile(st.hist, 0.99)}
}

// quantile estimates the q-quantile of the histogram hist (counts per
// latencyBins bin), interpolating linearly within the bin it falls in.
func quantile(hist []int64, q float64) time.Duration {
	var total int64
	for _, n := range hist {
		total += n
	}
	if total == 0 {
		return 0
	}
	rank := q * float64(total)
	var seen int64
	for i, n := range hist {
		if n == 0 || float64(seen+n) < rank {
			seen += n
			continue
		}
		lo := int64(0)
		if i > 0 {
			lo = latencyBins[i-1]
		}
		if i == len(latencyBins) {
			return time.Duration(lo) * time.Microsecond
		}
		hi := latencyBins[i]
		frac := (rank - float64(seen)) / float64(n)
		return time.Duration(float64(lo)+frac*float64(hi-lo)) * time.Microsecond
	}
	return time.Duration(latencyBins[len(latencyBins)-1]) * time.Microsecond
}
