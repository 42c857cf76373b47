package agent

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"math"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"gorm.io/gorm"
	"gorm.io/gorm/clause"

	"github.com/fhirsync/fhirsync/logs"
	"github.com/fhirsync/fhirsync/maps"
	"github.com/fhirsync/fhirsync/queues"
	"github.com/fhirsync/fhirsync/storage"
)

// Device streams (docs/device-streams.md). A change to an Observation
// whose entity map has a stream section is a reading: it is parsed, handed
// to the streamer and settled once the streamer has folded it into its
// window's state in the database — many readings per transaction, with
// their messages completed in that same transaction when the queue lives
// in the agent's database. No decision is written per reading. When a
// window ends, one replica claims it and sends its aggregate as a
// synthetic Observation through the entity map, like any other record,
// and the window's one decision carries its counts.

// streamReading is one device reading as the window state needs it.
type streamReading struct {
	mapName string
	key     string // subject + "|" + code
	subject string // Patient/123
	code    string // system|code
	value   float64
	text    string // the value's exact decimal text
	unit    string
	at      time.Time // effective time (else issued, else last updated)
	id      string
	hash    int64 // of the Observation's id and version: a redelivery has the same
	window  time.Duration
	repeats bool // the map's dropRepeats
}

// errNotReading says why a resource cannot be taken as a stream reading.
type errNotReading struct{ why string }

func (e *errNotReading) Error() string { return e.why }

// readingOf extracts a reading from an Observation, or says what it lacks.
func readingOf(em *maps.EntityMap, res map[string]any, version string) (streamReading, error) {
	r := streamReading{mapName: em.Name, window: em.Stream.Window.D(), repeats: em.Stream.DropRepeats}
	r.id, _ = res["id"].(string)
	if r.id == "" {
		return r, &errNotReading{"the Observation has no id"}
	}
	subj, _ := res["subject"].(map[string]any)
	r.subject, _ = subj["reference"].(string)
	if r.subject == "" {
		return r, &errNotReading{"the Observation has no subject.reference (the patient of the reading)"}
	}
	code, _ := res["code"].(map[string]any)
	codings, _ := code["coding"].([]any)
	for _, c := range codings {
		cm, _ := c.(map[string]any)
		sys, _ := cm["system"].(string)
		cd, _ := cm["code"].(string)
		if cd != "" {
			r.code = sys + "|" + cd
			break
		}
	}
	if r.code == "" {
		return r, &errNotReading{"the Observation has no code.coding with a code"}
	}
	q, _ := res["valueQuantity"].(map[string]any)
	if q == nil {
		return r, &errNotReading{"the Observation has no valueQuantity (a stream aggregates numeric readings)"}
	}
	switch v := q["value"].(type) {
	case json.Number:
		r.text = v.String()
	case float64:
		r.text = strconv.FormatFloat(v, 'f', -1, 64)
	case string:
		r.text = v
	}
	f, err := strconv.ParseFloat(r.text, 64)
	if r.text == "" || err != nil || math.IsNaN(f) || math.IsInf(f, 0) {
		return r, &errNotReading{"valueQuantity.value is missing or not a finite number"}
	}
	r.value = f
	r.unit, _ = q["code"].(string)
	if r.unit == "" {
		r.unit, _ = q["unit"].(string)
	}
	r.at = readingTime(res)
	if version == "" {
		if meta, _ := res["meta"].(map[string]any); meta != nil {
			version, _ = meta["versionId"].(string)
		}
	}
	sum := sha256.Sum256([]byte(em.Name + "\x00" + r.id + "\x00" + version))
	r.hash = int64(binary.BigEndian.Uint64(sum[:8]))
	r.key = r.subject + "|" + r.code
	return r, nil
}

// readingTime is when the reading was taken: effectiveDateTime,
// effectiveInstant, the end (else start) of effectivePeriod, issued, or
// meta.lastUpdated; zero when none parses.
func readingTime(res map[string]any) time.Time {
	var cands []any
	cands = append(cands, res["effectiveDateTime"], res["effectiveInstant"])
	if p, _ := res["effectivePeriod"].(map[string]any); p != nil {
		cands = append(cands, p["end"], p["start"])
	}
	cands = append(cands, res["issued"])
	if meta, _ := res["meta"].(map[string]any); meta != nil {
		cands = append(cands, meta["lastUpdated"])
	}
	for _, c := range cands {
		if s, _ := c.(string); s != "" {
			if t, err := time.Parse(time.RFC3339Nano, s); err == nil {
				return t.UTC()
			}
		}
	}
	return time.Time{}
}

// streamWindow is a row of stream_windows: one key's window. Statistics
// cover the readings kept (not dropped as duplicates).
type streamWindow struct {
	EntityMap    string `gorm:"primaryKey"`
	StreamKey    string `gorm:"primaryKey"`
	WindowStart  int64  `gorm:"primaryKey;autoIncrement:false"`
	WindowEnd    int64
	State        string
	Subject      string
	Code         string
	Unit         string
	Kept         int64
	Duplicates   int64
	SumValue     float64
	MinValue     *float64
	MaxValue     *float64
	LatestValue  string
	LatestAtUS   int64 `gorm:"column:latest_at_us"`
	LatestID     string
	LastValue    string
	ClaimedBy    string
	ClaimedUntil int64
	Attempts     int
}

func (streamWindow) TableName() string { return "stream_windows" }

// Window states.
const (
	windowOpen    = "open"    // taking readings
	windowClosing = "closing" // claimed by a replica sending its aggregate
	windowClosed  = "closed"  // decided; kept one window length for the repeat check
)

// StreamConfig tunes the windows of stream maps (docs/device-streams.md).
// Zero values take the defaults noted.
type StreamConfig struct {
	// MaxBatch is the most readings one transaction takes (512); Wait how
	// long the first waits for others (5ms).
	MaxBatch int
	Wait     time.Duration
	// CloseEvery is how often ended windows are looked for (1s).
	CloseEvery time.Duration
	// ClaimFor is how long a replica's claim on a closing window holds
	// before another may take it over (2m).
	ClaimFor time.Duration
	// SeenFor is how long a reading's id and version are remembered to
	// drop its redelivery (15m: longer than Service Bus's longest lock and
	// a history poll's overlap).
	SeenFor time.Duration
	// Closers is how many windows are sent at once (32), so that their
	// CRM writes share $batch requests.
	Closers int
	// ReadOneByOne reads each reading's Observation with a read of its
	// own instead of searching for concurrent readings' by _id together.
	ReadOneByOne bool
}

func (c StreamConfig) withDefaults() StreamConfig {
	if c.MaxBatch <= 0 {
		c.MaxBatch = 512
	}
	if c.Wait <= 0 {
		c.Wait = 5 * time.Millisecond
	}
	if c.CloseEvery <= 0 {
		c.CloseEvery = time.Second
	}
	if c.ClaimFor <= 0 {
		c.ClaimFor = 2 * time.Minute
	}
	if c.SeenFor <= 0 {
		c.SeenFor = 15 * time.Minute
	}
	if c.Closers <= 0 {
		c.Closers = 32
	}
	return c
}

// streamer keeps the windows of stream maps.
type streamer struct {
	cfg   StreamConfig
	db    *gorm.DB
	owner string // this replica, for claims
	reqs  chan *streamReq
	now   func() time.Time
	log   *slog.Logger
	// readings counts readings by entity map and what became of them.
	readings *prometheus.CounterVec
	// reader reads readings' Observations many at a time; nil: one read
	// each through the flow's source.
	reader *readingReader
}

// readReading reads a reading's Observation.
func (s *streamer) readReading(ctx context.Context, f *flow, mp *maps.Mapping, id string) (record, error) {
	if s.reader == nil {
		return f.source.read(ctx, mp, id)
	}
	res, err := s.reader.read(ctx, id)
	if err != nil {
		return record{}, err
	}
	return record{Type: "Observation", ID: res.ID(), Version: res.VersionID(), Data: res}, nil
}

type streamReq struct {
	r    streamReading
	m    *queues.Received
	q    txQueue // complete m in the transaction; nil: the caller settles
	done chan streamDone
	// Set by fold.
	settled, lockLost bool
	reason            logs.ReasonCode // aggregated (kept) or duplicate_reading
}

type streamDone struct {
	err               error
	settled, lockLost bool
}

func newStreamer(cfg StreamConfig, db *gorm.DB, owner string, reg prometheus.Registerer, log *slog.Logger, now func() time.Time) *streamer {
	s := &streamer{cfg: cfg.withDefaults(), db: db, owner: owner, reqs: make(chan *streamReq), now: now, log: log,
		readings: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "fhirsync_stream_readings_total",
			Help: "Device readings of stream maps by entity map and what became of them (aggregated, within_range, rate_limited, duplicate_reading).",
		}, []string{"entity_map", "reason"})}
	if reg != nil {
		if err := reg.Register(s.readings); err != nil {
			var are prometheus.AlreadyRegisteredError
			if errors.As(err, &are) {
				s.readings = are.ExistingCollector.(*prometheus.CounterVec)
			}
		}
	}
	return s
}

// take hands r to the window writer and waits until it is part of its
// window's state in the database.
func (s *streamer) take(ctx context.Context, r streamReading, m *queues.Received, q txQueue) streamDone {
	req := &streamReq{r: r, m: m, q: q, done: make(chan streamDone, 1)}
	select {
	case s.reqs <- req:
	case <-ctx.Done():
		return streamDone{err: ctx.Err()}
	}
	select {
	case d := <-req.done:
		return d
	case <-ctx.Done():
		return streamDone{err: ctx.Err()}
	}
}

// runWriter folds readings into windows until ctx ends.
func (s *streamer) runWriter(ctx context.Context) {
	for {
		var first *streamReq
		select {
		case <-ctx.Done():
			return
		case first = <-s.reqs:
		}
		batch := []*streamReq{first}
		timer := time.NewTimer(s.cfg.Wait)
	gather:
		for len(batch) < s.cfg.MaxBatch {
			select {
			case r := <-s.reqs:
				batch = append(batch, r)
			case <-timer.C:
				break gather
			}
		}
		timer.Stop()
		err := s.fold(context.WithoutCancel(ctx), batch)
		for _, r := range batch {
			r.done <- streamDone{err: err, settled: err == nil && r.settled, lockLost: r.lockLost}
		}
	}
}

// windowStart is the start, in Unix seconds, of the window of length w
// that holds t.
func windowStart(t time.Time, w time.Duration) int64 {
	secs := int64(w / time.Second)
	u := t.Unix()
	return u - ((u%secs)+secs)%secs
}

// fold takes a batch of readings into their windows in one transaction:
// the readings already taken are dropped as duplicates, the others update
// their key's open window, and the messages of a queue in this database
// are completed in the same transaction.
func (s *streamer) fold(ctx context.Context, batch []*streamReq) error {
	now := s.now()
	for _, r := range batch {
		r.settled, r.lockLost, r.reason = false, false, ""
	}
	err := s.db.WithContext(ctx).Transaction(func(tx *gorm.DB) error {
		fresh, err := markSeen(tx, batch, now)
		if err != nil {
			return fmt.Errorf("recording the readings taken: %w", err)
		}
		ws, err := lockWindows(tx, batch, now)
		if err != nil {
			return err
		}
		touched := map[*streamWindow]bool{}
		for _, r := range batch {
			w := ws.current(r, now)
			touched[w] = true
			prev := ws.previousValue(r, w)
			switch {
			case !fresh[r]:
				w.Duplicates++
				r.reason = logs.ReasonDuplicateReading
			case r.r.repeats && prev == r.r.text+" "+r.r.unit:
				w.Duplicates++
				r.reason = logs.ReasonDuplicateReading
			default:
				w.add(r, now)
				r.reason = logs.ReasonAggregated
			}
		}
		rows := make([]streamWindow, 0, len(touched))
		for w := range touched {
			rows = append(rows, *w)
		}
		slices.SortFunc(rows, func(a, b streamWindow) int {
			return strings.Compare(a.EntityMap+"\x00"+a.StreamKey, b.EntityMap+"\x00"+b.StreamKey)
		})
		if err := saveWindows(tx, rows); err != nil {
			return fmt.Errorf("writing the stream windows: %w", err)
		}
		byQueue := map[txQueue][]*streamReq{}
		for _, r := range batch {
			if r.q != nil {
				byQueue[r.q] = append(byQueue[r.q], r)
			}
		}
		for q, rs := range byQueue {
			ms := make([]*queues.Received, len(rs))
			for i, r := range rs {
				ms[i] = r.m
			}
			lost, err := q.CompleteHeld(tx, ms...)
			if err != nil {
				return fmt.Errorf("completing the readings' messages: %w", err)
			}
			for _, r := range rs {
				r.settled = true
				r.lockLost = slices.Contains(lost, r.m.SequenceNumber)
			}
		}
		return nil
	})
	if err != nil {
		for _, r := range batch {
			r.settled, r.lockLost = false, false
		}
		return err
	}
	for _, r := range batch {
		if r.reason == logs.ReasonDuplicateReading {
			s.readings.WithLabelValues(r.r.mapName, string(logs.ReasonDuplicateReading)).Inc()
		}
	}
	return nil
}

// markSeen records the readings' ids and versions and reports which were
// not recorded before (and not earlier in the batch).
func markSeen(tx *gorm.DB, batch []*streamReq, now time.Time) (map[*streamReq]bool, error) {
	type seenKey struct {
		m string
		h int64
	}
	first := map[seenKey]*streamReq{}
	var order []seenKey
	for _, r := range batch {
		k := seenKey{r.r.mapName, r.r.hash}
		if _, dup := first[k]; !dup {
			first[k] = r
			order = append(order, k)
		}
	}
	fresh := map[*streamReq]bool{}
	const perStatement = 300
	for len(order) > 0 {
		n := min(len(order), perStatement)
		args := make([]any, 0, 3*n)
		for _, k := range order[:n] {
			args = append(args, k.m, k.h, now.Unix())
		}
		var rows []seenRow
		q := `INSERT INTO stream_seen (entity_map, reading, taken_at) VALUES ` + placeholders3(n) +
			` ON CONFLICT (entity_map, reading) DO NOTHING RETURNING entity_map, reading`
		if err := scanSeen(tx, q, args, &rows); err != nil {
			return nil, err
		}
		for _, row := range rows {
			if r := first[seenKey{row.EntityMap, row.Reading}]; r != nil {
				fresh[r] = true
			}
		}
		order = order[n:]
	}
	return fresh, nil
}

// seenRow is a reading markSeen recorded.
type seenRow struct {
	EntityMap string
	Reading   int64
}

// scanSeen runs markSeen's insert, without gorm on SQLite (it runs holding
// the database's one writer).
func scanSeen(tx *gorm.DB, q string, args []any, out *[]seenRow) error {
	rs, err := storage.Query(tx, q, args...)
	if err != nil {
		return err
	}
	defer rs.Close()
	for rs.Next() {
		var r seenRow
		if err := rs.Scan(&r.EntityMap, &r.Reading); err != nil {
			return err
		}
		*out = append(*out, r)
	}
	return rs.Err()
}

func placeholders3(n int) string {
	return strings.TrimSuffix(strings.Repeat("(?, ?, ?), ", n), ", ")
}

// windowSet is the windows of the keys of a batch, as locked for it.
type windowSet struct {
	byKey map[string][]*streamWindow // map + "\x00" + key → windows, oldest first
}

// lockWindows makes sure each key of the batch has a row for its current
// window, then reads (on PostgreSQL: locks, in key order) the current and
// previous windows of every key.
func lockWindows(tx *gorm.DB, batch []*streamReq, now time.Time) (*windowSet, error) {
	type keyOf struct{ m, k string }
	seeds := map[keyOf]streamWindow{}
	keysByMap := map[string][]string{}
	since := map[string]int64{}
	for _, r := range batch {
		k := keyOf{r.r.mapName, r.r.key}
		if _, ok := seeds[k]; ok {
			continue
		}
		start := windowStart(now, r.r.window)
		seeds[k] = streamWindow{EntityMap: r.r.mapName, StreamKey: r.r.key, WindowStart: start, WindowEnd: start + int64(r.r.window/time.Second),
			State: windowOpen, Subject: r.r.subject, Code: r.r.code, Unit: r.r.unit}
		keysByMap[r.r.mapName] = append(keysByMap[r.r.mapName], r.r.key)
		since[r.r.mapName] = start - int64(r.r.window/time.Second)
	}
	rows := make([]streamWindow, 0, len(seeds))
	for _, w := range seeds {
		rows = append(rows, w)
	}
	slices.SortFunc(rows, func(a, b streamWindow) int {
		return strings.Compare(a.EntityMap+"\x00"+a.StreamKey, b.EntityMap+"\x00"+b.StreamKey)
	})
	// On PostgreSQL replicas fold at the same time: the rows must exist
	// before they are locked, or two replicas would both insert a new
	// window and one overwrite the other's counts. SQLite runs one write
	// transaction at a time, so the upsert below suffices there.
	if storage.DialectOf(tx) == storage.Postgres {
		if err := tx.Clauses(clause.OnConflict{DoNothing: true}).CreateInBatches(rows, 200).Error; err != nil {
			return nil, fmt.Errorf("opening stream windows: %w", err)
		}
	}
	ws := &windowSet{byKey: map[string][]*streamWindow{}}
	for m, keys := range keysByMap {
		slices.Sort(keys)
		for len(keys) > 0 {
			n := min(len(keys), 500)
			got, err := readWindows(tx, m, keys[:n], since[m])
			if err != nil {
				return nil, fmt.Errorf("reading stream windows: %w", err)
			}
			for i := range got {
				w := &got[i]
				k := w.EntityMap + "\x00" + w.StreamKey
				ws.byKey[k] = append(ws.byKey[k], w)
			}
			keys = keys[n:]
		}
	}
	return ws, nil
}

// windowColumns are stream_windows' columns in streamWindow's field order.
const windowColumns = `entity_map, stream_key, window_start, window_end, state, subject, code, unit, kept, duplicates,
	sum_value, min_value, max_value, latest_value, latest_at_us, latest_id, last_value, claimed_by, claimed_until, attempts`

// readWindows is lockWindows' read of the windows of keys since since,
// locked on PostgreSQL. It scans the rows itself rather than through
// gorm's reflection: on SQLite the fold runs it holding the database's one
// writer, so its cost is every other writer's wait.
func readWindows(tx *gorm.DB, m string, keys []string, since int64) ([]streamWindow, error) {
	args := make([]any, 0, len(keys)+2)
	args = append(args, m)
	for _, k := range keys {
		args = append(args, k)
	}
	args = append(args, since)
	q := `SELECT ` + windowColumns + ` FROM stream_windows WHERE entity_map = ? AND stream_key IN (` +
		strings.TrimSuffix(strings.Repeat("?, ", len(keys)), ", ") + `) AND window_start >= ? ORDER BY stream_key, window_start`
	if storage.DialectOf(tx) == storage.Postgres {
		q += ` FOR UPDATE`
	}
	rs, err := storage.Query(tx, q, args...)
	if err != nil {
		return nil, err
	}
	defer rs.Close()
	var out []streamWindow
	for rs.Next() {
		var w streamWindow
		if err := rs.Scan(&w.EntityMap, &w.StreamKey, &w.WindowStart, &w.WindowEnd, &w.State, &w.Subject, &w.Code, &w.Unit,
			&w.Kept, &w.Duplicates, &w.SumValue, &w.MinValue, &w.MaxValue, &w.LatestValue, &w.LatestAtUS, &w.LatestID,
			&w.LastValue, &w.ClaimedBy, &w.ClaimedUntil, &w.Attempts); err != nil {
			return nil, err
		}
		out = append(out, w)
	}
	return out, rs.Err()
}

// windowsPerStatement bounds the rows of one upsert: 20 parameters each,
// well within SQLite's 32,766 and PostgreSQL's 65,535.
const windowsPerStatement = 200

// saveWindows writes the fold's windows: a new one is inserted, an
// existing one gets its statistics (a window's key, bounds, state and
// claim are not the fold's to change).
func saveWindows(tx *gorm.DB, rows []streamWindow) error {
	if storage.DialectOf(tx) != storage.SQLite {
		return tx.Clauses(clause.OnConflict{
			Columns:   []clause.Column{{Name: "entity_map"}, {Name: "stream_key"}, {Name: "window_start"}},
			DoUpdates: clause.AssignmentColumns([]string{"unit", "kept", "duplicates", "sum_value", "min_value", "max_value", "latest_value", "latest_at_us", "latest_id", "last_value"}),
		}).CreateInBatches(rows, windowsPerStatement).Error
	}
	for len(rows) > 0 {
		n := min(len(rows), windowsPerStatement)
		args := make([]any, 0, 20*n)
		for i := range rows[:n] {
			w := &rows[i]
			args = append(args, w.EntityMap, w.StreamKey, w.WindowStart, w.WindowEnd, w.State, w.Subject, w.Code, w.Unit,
				w.Kept, w.Duplicates, w.SumValue, w.MinValue, w.MaxValue, w.LatestValue, w.LatestAtUS, w.LatestID,
				w.LastValue, w.ClaimedBy, w.ClaimedUntil, w.Attempts)
		}
		q := `INSERT INTO stream_windows (` + windowColumns + `) VALUES ` +
			strings.TrimSuffix(strings.Repeat("(?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?), ", n), ", ") +
			` ON CONFLICT (entity_map, stream_key, window_start) DO UPDATE SET unit = excluded.unit, kept = excluded.kept,
			duplicates = excluded.duplicates, sum_value = excluded.sum_value, min_value = excluded.min_value,
			max_value = excluded.max_value, latest_value = excluded.latest_value, latest_at_us = excluded.latest_at_us,
			latest_id = excluded.latest_id, last_value = excluded.last_value`
		if _, err := storage.Direct(tx).Exec(q, args...); err != nil {
			return err
		}
		rows = rows[n:]
	}
	return nil
}

// current is the window r joins: its key's window holding now, or, when
// that one is already being closed (another replica's clock ran ahead),
// the next.
func (ws *windowSet) current(r *streamReq, now time.Time) *streamWindow {
	k := r.r.mapName + "\x00" + r.r.key
	list := ws.byKey[k]
	start := windowStart(now, r.r.window)
	secs := int64(r.r.window / time.Second)
	for {
		for _, w := range list {
			if w.WindowStart == start && w.State == windowOpen {
				return w
			}
		}
		taken := false
		for _, w := range list {
			if w.WindowStart == start {
				taken = true
			}
		}
		if !taken {
			w := &streamWindow{EntityMap: r.r.mapName, StreamKey: r.r.key, WindowStart: start, WindowEnd: start + secs,
				State: windowOpen, Subject: r.r.subject, Code: r.r.code, Unit: r.r.unit}
			ws.byKey[k] = append(list, w)
			return w
		}
		start += secs
	}
}

// previousValue is the value and unit of the key's reading before r: the
// last one w kept or dropped, else the latest window's before it.
func (ws *windowSet) previousValue(r *streamReq, w *streamWindow) string {
	if w.LastValue != "" {
		return w.LastValue
	}
	var best *streamWindow
	for _, o := range ws.byKey[r.r.mapName+"\x00"+r.r.key] {
		if o.WindowStart < w.WindowStart && o.LastValue != "" && (best == nil || o.WindowStart > best.WindowStart) {
			best = o
		}
	}
	if best == nil {
		return ""
	}
	return best.LastValue
}

// add folds a kept reading into w's statistics.
func (w *streamWindow) add(r *streamReq, now time.Time) {
	v := r.r.value
	w.Kept++
	w.SumValue += v
	if w.MinValue == nil || v < *w.MinValue {
		w.MinValue = &v
	}
	if w.MaxValue == nil || v > *w.MaxValue {
		x := v
		w.MaxValue = &x
	}
	at := r.r.at
	if at.IsZero() {
		at = now
	}
	if us := at.UnixMicro(); w.LatestID == "" || us >= w.LatestAtUS {
		w.LatestAtUS, w.LatestValue, w.LatestID = us, r.r.text, r.r.id
	}
	if w.Unit == "" {
		w.Unit = r.r.unit
	}
	w.LastValue = r.r.text + " " + r.r.unit
}

// runCloser sends the windows that ended, and prunes what is no longer
// needed, until ctx ends.
func (s *streamer) runCloser(ctx context.Context, send func(ctx context.Context, w streamWindow)) {
	t := time.NewTicker(s.cfg.CloseEvery)
	defer t.Stop()
	var pruned time.Time
	for {
		if err := s.closeDue(ctx, send); err != nil && ctx.Err() == nil {
			s.log.Warn("closing stream windows failed; trying again", "error", err)
		}
		if now := s.now(); now.Sub(pruned) > 30*time.Second {
			pruned = now
			if err := s.prune(ctx, now); err != nil && ctx.Err() == nil {
				s.log.Warn("pruning stream state failed", "error", err)
			}
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

// closeDue claims the windows that ended (and those whose claim by a
// replica lapsed) and sends each, several at once.
func (s *streamer) closeDue(ctx context.Context, send func(ctx context.Context, w streamWindow)) error {
	for {
		now := s.now()
		var due []streamWindow
		if err := s.db.WithContext(ctx).Select("entity_map", "stream_key", "window_start").
			Where("(state = ? AND window_end <= ?) OR (state = ? AND claimed_until < ?)", windowOpen, now.Unix(), windowClosing, now.UnixMilli()).
			Order("window_end").Limit(1024).Find(&due).Error; err != nil {
			return err
		}
		if len(due) == 0 {
			return nil
		}
		sem := make(chan struct{}, s.cfg.Closers)
		var wg sync.WaitGroup
		claimed := 0
		for _, d := range due {
			w, ok, err := s.claim(ctx, d, now)
			if err != nil {
				wg.Wait()
				return err
			}
			if !ok {
				continue
			}
			claimed++
			sem <- struct{}{}
			wg.Go(func() {
				defer func() { <-sem }()
				send(ctx, w)
			})
		}
		wg.Wait()
		if claimed == 0 || len(due) < 1024 || ctx.Err() != nil {
			return ctx.Err()
		}
	}
}

// claim takes w for this replica unless another holds it, and returns
// the whole row.
func (s *streamer) claim(ctx context.Context, w streamWindow, now time.Time) (streamWindow, bool, error) {
	res := s.db.WithContext(ctx).Model(&streamWindow{}).
		Where("entity_map = ? AND stream_key = ? AND window_start = ? AND (state = ? OR (state = ? AND claimed_until < ?))",
			w.EntityMap, w.StreamKey, w.WindowStart, windowOpen, windowClosing, now.UnixMilli()).
		Updates(map[string]any{"state": windowClosing, "claimed_by": s.owner,
			"claimed_until": now.Add(s.cfg.ClaimFor).UnixMilli(), "attempts": gorm.Expr("attempts + 1")})
	if res.Error != nil || res.RowsAffected != 1 {
		return w, false, res.Error
	}
	var full streamWindow
	err := s.db.WithContext(ctx).Where("entity_map = ? AND stream_key = ? AND window_start = ?", w.EntityMap, w.StreamKey, w.WindowStart).Take(&full).Error
	return full, err == nil, err
}

// release gives a claimed window back to be tried again after delay.
func (s *streamer) release(ctx context.Context, w streamWindow, delay time.Duration) error {
	return s.db.WithContext(ctx).Model(&streamWindow{}).
		Where("entity_map = ? AND stream_key = ? AND window_start = ? AND claimed_by = ?", w.EntityMap, w.StreamKey, w.WindowStart, s.owner).
		Update("claimed_until", s.now().Add(delay).UnixMilli()).Error
}

// closed marks w decided, in the transaction that records its decision.
func closedEffect(w streamWindow) func(tx *gorm.DB) error {
	return func(tx *gorm.DB) error {
		return tx.Model(&streamWindow{}).
			Where("entity_map = ? AND stream_key = ? AND window_start = ?", w.EntityMap, w.StreamKey, w.WindowStart).
			Updates(map[string]any{"state": windowClosed, "claimed_until": 0}).Error
	}
}

// spend takes one send from the patient's budget for the period holding
// now; false when the budget is used up.
func (s *streamer) spend(ctx context.Context, mapName, subject string, rl *maps.RateLimit, now time.Time) (bool, error) {
	period := windowStart(now, rl.Per.D())
	var ok bool
	err := s.db.WithContext(ctx).Transaction(func(tx *gorm.DB) error {
		if err := tx.Exec(`INSERT INTO stream_rate (entity_map, subject, period_start, sent) VALUES (?, ?, ?, 0) ON CONFLICT (entity_map, subject, period_start) DO NOTHING`,
			mapName, subject, period).Error; err != nil {
			return err
		}
		res := tx.Exec(`UPDATE stream_rate SET sent = sent + 1 WHERE entity_map = ? AND subject = ? AND period_start = ? AND sent < ?`,
			mapName, subject, period, rl.Sends)
		ok = res.RowsAffected == 1
		return res.Error
	})
	return ok, err
}

// prune deletes closed windows once the next one has ended (they serve
// the repeat check until then), readings taken longer ago than SeenFor,
// and rate budgets of periods over a week old.
func (s *streamer) prune(ctx context.Context, now time.Time) error {
	db := s.db.WithContext(ctx)
	return errors.Join(
		db.Exec(`DELETE FROM stream_windows WHERE state = ? AND window_end + (window_end - window_start) < ?`, windowClosed, now.Unix()).Error,
		db.Exec(`DELETE FROM stream_seen WHERE taken_at < ?`, now.Add(-s.cfg.SeenFor).Unix()).Error,
		db.Exec(`DELETE FROM stream_rate WHERE period_start < ?`, now.Add(-8*24*time.Hour).Unix()).Error,
	)
}

// replicaName names this agent in the claims it puts on windows: the
// host and process, and a random part for agents sharing a process.
func replicaName() string {
	var b [4]byte
	_, _ = rand.Read(b[:])
	return defaultHolder() + ":" + hex.EncodeToString(b[:])
}
