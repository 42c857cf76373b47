package embedded

// The queue's SQL, all in one place. Every statement is written for both
// SQLite and PostgreSQL (gorm rewrites ? placeholders and expands IN ?
// slices); the one difference is row locking on PostgreSQL, where competing
// receivers skip rows another transaction is locking. The statements run
// for every message (anyReady, deleteLocked) go to the driver directly on
// SQLite (storage.Direct), without gorm's statement building. On SQLite, write
// transactions are serialised by the database (BEGIN IMMEDIATE).
//
// Row life cycle: an active row is available when visible_at has passed.
// Receiving sets lock_token and moves visible_at to the lock's expiry, so
// a lapsed lock makes the row available again with no sweeper. A
// settlement succeeds only while its token is current and visible_at is
// still in the future. Dead letters stay in the same table with
// state = 'dead'.

import (
	"cmp"
	"context"
	"database/sql"
	"encoding/json"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"time"

	"gorm.io/gorm"

	"github.com/fhirsync/fhirsync/queues"
	"github.com/fhirsync/fhirsync/storage"
)

func (q *Queue) register(ctx context.Context) error {
	return q.db.WithContext(ctx).Exec(`INSERT INTO queue_names (name, created_at) VALUES (?, ?) ON CONFLICT (name) DO NOTHING`,
		q.name, now()).Error
}

// readyWhere selects the rows of queue m that may be delivered now: active,
// visible, and — for a session key — the key's oldest active row. A key's
// head row blocks the rest of the key while it is locked, scheduled or
// abandoned with a delay, which keeps per-key order strict and makes the
// rule independent of clocks: two receivers can only race for the head,
// and the row lock decides that race.
const readyWhere = `m.queue = ? AND m.state = 'active' AND m.visible_at <= ?
	AND (m.session_key = '' OR NOT EXISTS (
		SELECT 1 FROM queue_messages e
		WHERE e.queue = m.queue AND e.session_key = m.session_key AND e.state = 'active' AND e.seq < m.seq))`

// pickSQL selects, oldest first, up to a number of rows ready now.
const pickSQL = `SELECT m.seq FROM queue_messages m WHERE ` + readyWhere + ` ORDER BY m.seq LIMIT ?`

func (q *Queue) anyReady(db *gorm.DB, t time.Time) (bool, error) {
	if q.dialect == storage.SQLite {
		return storage.Direct(db).Exists(`SELECT 1 FROM queue_messages m WHERE `+readyWhere+` LIMIT 1`, q.name, t)
	}
	var n []int
	if err := db.Raw(`SELECT 1 FROM queue_messages m WHERE `+readyWhere+` LIMIT 1`, q.name, t).Scan(&n).Error; err != nil {
		return false, err
	}
	return len(n) > 0, nil
}

// lockBatch locks up to limit ready rows for this receiver, oldest first,
// with one statement per round. A row already delivered MaxDeliveryCount
// times is dead-lettered by the same statement instead of being locked;
// another round then fills the batch. It reports how many it dead-lettered.
func (q *Queue) lockBatch(db *gorm.DB, limit int, t time.Time, token string) ([]*queues.Received, int, error) {
	until := t.Add(q.opts.LockDuration)
	maxDC := q.opts.MaxDeliveryCount
	desc := fmt.Sprintf("delivered %d times without being settled", maxDC)
	pick := pickSQL
	if q.dialect == storage.Postgres {
		pick += ` FOR UPDATE SKIP LOCKED`
	}
	// The pick is a materialised CTE so it runs exactly once: a LIMIT
	// subquery under IN may be re-run by the planner and lock more rows
	// than it returns. SET expressions all see the row as it was before.
	query := `WITH picked AS MATERIALIZED (` + pick + `)
		UPDATE queue_messages SET
		state = CASE WHEN delivery_count >= ? THEN 'dead' ELSE 'active' END,
		lock_token = CASE WHEN delivery_count >= ? THEN NULL ELSE CAST(? AS TEXT) || '.' || CAST(seq AS TEXT) END,
		visible_at = CASE WHEN delivery_count >= ? THEN visible_at ELSE ? END,
		delivery_count = CASE WHEN delivery_count >= ? THEN delivery_count ELSE delivery_count + 1 END,
		dead_reason = CASE WHEN delivery_count >= ? THEN CAST(? AS TEXT) ELSE dead_reason END,
		dead_description = CASE WHEN delivery_count >= ? THEN CAST(? AS TEXT) ELSE dead_description END,
		dead_at = CASE WHEN delivery_count >= ? THEN ? ELSE dead_at END
		WHERE seq IN (SELECT seq FROM picked)
		RETURNING seq, message_id, session_key, body, properties, enqueued_at, delivery_count, state`
	var out []*queues.Received
	deadTotal := 0
	for len(out) < limit {
		args := []any{q.name, t, limit - len(out), maxDC, maxDC, token, maxDC, until, maxDC, maxDC,
			queues.ReasonMaxDeliveryCountExceeded, maxDC, desc, maxDC, t}
		rows, err := storage.Query(db, query, args...)
		if err != nil {
			return nil, 0, fmt.Errorf("locking ready messages: %w", err)
		}
		got, dead := 0, 0
		for rows.Next() {
			var (
				m     queues.Received
				props sql.NullString
				state string
			)
			err := rows.Scan(&m.SequenceNumber, &m.ID, &m.SessionKey, &m.Body, &props, &m.EnqueuedAt, &m.DeliveryCount, &state)
			if err == nil {
				m.Properties, err = decodeProps(props)
			}
			if err != nil {
				rows.Close()
				return nil, 0, fmt.Errorf("reading locked message: %w", err)
			}
			got++
			if state == "dead" {
				dead++
				continue
			}
			m.LockToken = token + "." + strconv.FormatInt(m.SequenceNumber, 10)
			m.EnqueuedAt = m.EnqueuedAt.UTC()
			m.LockedUntil = until
			out = append(out, &m)
		}
		err = rows.Err()
		rows.Close()
		if err != nil {
			return nil, 0, fmt.Errorf("locking ready messages: %w", err)
		}
		deadTotal += dead
		if got == 0 || dead == 0 {
			break // nothing more is ready, or the batch got all there was
		}
	}
	slices.SortFunc(out, func(a, b *queues.Received) int { return cmp.Compare(a.SequenceNumber, b.SequenceNumber) })
	return out, deadTotal, nil
}

// lockedWhere matches m's row only while m's lock is current.
const lockedWhere = `seq = ? AND queue = ? AND lock_token = ? AND state = 'active' AND visible_at > ?`

func (q *Queue) deleteLocked(tx *gorm.DB, m *queues.Received, t time.Time) (int64, error) {
	return storage.Exec(tx, `DELETE FROM queue_messages WHERE `+lockedWhere, m.SequenceNumber, q.name, m.LockToken, t)
}

// deleteLockedMany deletes the rows of ms whose locks are current and
// reports which sequence numbers it deleted. A lock token names its row, so
// matching seq and token as two sets cannot pair one row with another's
// token.
func (q *Queue) deleteLockedMany(tx *gorm.DB, ms []*queues.Received, t time.Time) (map[int64]bool, error) {
	done := make(map[int64]bool, len(ms))
	if q.dialect == storage.SQLite {
		// One statement per message, the same text each time, so it stays
		// prepared; a statement of a new size would be prepared again.
		for _, m := range ms {
			n, err := q.deleteLocked(tx, m, t)
			if err != nil {
				return nil, err
			}
			if n > 0 {
				done[m.SequenceNumber] = true
			}
		}
		return done, nil
	}
	for start := 0; start < len(ms); start += MaxBatch {
		chunk := ms[start:min(len(ms), start+MaxBatch)]
		seqs := make([]int64, len(chunk))
		tokens := make([]string, len(chunk))
		for i, m := range chunk {
			seqs[i], tokens[i] = m.SequenceNumber, m.LockToken
		}
		rows, err := tx.Raw(`DELETE FROM queue_messages
			WHERE queue = ? AND seq IN ? AND lock_token IN ? AND state = 'active' AND visible_at > ?
			RETURNING seq`, q.name, seqs, tokens, t).Rows()
		if err != nil {
			return nil, err
		}
		for rows.Next() {
			var seq int64
			if err := rows.Scan(&seq); err != nil {
				rows.Close()
				return nil, err
			}
			done[seq] = true
		}
		err = rows.Err()
		rows.Close()
		if err != nil {
			return nil, err
		}
	}
	return done, nil
}

func (q *Queue) unlock(tx *gorm.DB, m *queues.Received, t, visibleAt time.Time) (int64, error) {
	res := tx.Exec(`UPDATE queue_messages SET lock_token = NULL, visible_at = ? WHERE `+lockedWhere,
		visibleAt, m.SequenceNumber, q.name, m.LockToken, t)
	return res.RowsAffected, res.Error
}

func (q *Queue) extendLock(tx *gorm.DB, m *queues.Received, t, until time.Time) (int64, error) {
	res := tx.Exec(`UPDATE queue_messages SET visible_at = ? WHERE `+lockedWhere,
		until, m.SequenceNumber, q.name, m.LockToken, t)
	return res.RowsAffected, res.Error
}

func (q *Queue) deadLetterLocked(tx *gorm.DB, m *queues.Received, t time.Time, reason, description string) (int64, error) {
	res := tx.Exec(`UPDATE queue_messages SET state = 'dead', lock_token = NULL, dead_reason = ?, dead_description = ?, dead_at = ?
		WHERE `+lockedWhere, reason, description, t, m.SequenceNumber, q.name, m.LockToken, t)
	return res.RowsAffected, res.Error
}

// newRow is a message about to be inserted.
type newRow struct {
	id, sessionKey string
	body           []byte
	props          map[string]string
	visibleAt      time.Time
	redriveCount   int
}

// sendChunk is how many messages one insert statement carries.
const sendChunk = 200

// insertMessages records the batch's MessageIDs for duplicate detection and
// inserts the messages that are not duplicates, in batch order. On
// PostgreSQL each chunk of sendChunk messages is one statement.
func (q *Queue) insertMessages(tx *gorm.DB, batch []queues.Message, t time.Time) error {
	var uniq []queues.Message
	var ids []string
	first := map[string]bool{}
	for _, m := range batch {
		if !first[m.ID] { // a second copy in the same batch is a duplicate too
			first[m.ID] = true
			uniq = append(uniq, m)
			ids = append(ids, m.ID)
		}
	}
	if q.dialect == storage.Postgres {
		for start := 0; start < len(uniq); start += sendChunk {
			if err := q.insertFreshPostgres(tx, uniq[start:min(len(uniq), start+sendChunk)], t); err != nil {
				return fmt.Errorf("inserting messages: %w", err)
			}
		}
		return nil
	}
	fresh := make(map[string]bool, len(ids))
	const idsPerStatement = 300
	expires := t.Add(q.opts.DuplicateWindow)
	for start := 0; start < len(ids); start += idsPerStatement {
		chunk := ids[start:min(len(ids), start+idsPerStatement)]
		var sb strings.Builder
		args := make([]any, 0, 3*len(chunk)+1)
		sb.WriteString(`INSERT INTO queue_message_ids (queue, message_id, expires_at) VALUES `)
		for i, id := range chunk {
			if i > 0 {
				sb.WriteString(", ")
			}
			sb.WriteString("(?, ?, ?)")
			args = append(args, q.name, id, expires)
		}
		// An expired entry is taken over; a live one makes the send a duplicate.
		sb.WriteString(` ON CONFLICT (queue, message_id) DO UPDATE SET expires_at = excluded.expires_at
			WHERE queue_message_ids.expires_at <= ? RETURNING message_id`)
		args = append(args, t)
		rows, err := storage.Direct(tx).Query(sb.String(), args...)
		if err != nil {
			return fmt.Errorf("recording message ids: %w", err)
		}
		for rows.Next() {
			var id string
			if err := rows.Scan(&id); err != nil {
				rows.Close()
				return err
			}
			fresh[id] = true
		}
		err = rows.Err()
		rows.Close()
		if err != nil {
			return fmt.Errorf("recording message ids: %w", err)
		}
	}
	var out []newRow
	for _, m := range uniq {
		if fresh[m.ID] {
			out = append(out, newRow{id: m.ID, sessionKey: m.SessionKey, body: m.Body, props: m.Properties, visibleAt: visibleAt(m, t)})
		}
	}
	return q.insertRows(tx, out, t)
}

func visibleAt(m queues.Message, t time.Time) time.Time {
	if m.VisibleAt.IsZero() {
		return t
	}
	return m.VisibleAt.UTC().Truncate(time.Microsecond)
}

// insertFreshPostgres is insertMessages for one chunk of distinct IDs on
// PostgreSQL, as one statement: the CTE records the IDs (taking over
// expired ones) and only the rows it returns are inserted.
func (q *Queue) insertFreshPostgres(db *gorm.DB, msgs []queues.Message, t time.Time) error {
	var sb strings.Builder
	args := make([]any, 0, 6*len(msgs)+6)
	sb.WriteString(`WITH v (message_id, session_key, body, properties, visible_at, ord) AS (VALUES `)
	for i, m := range msgs {
		if i > 0 {
			sb.WriteString(", ")
		}
		// "CAST( ?" keeps a space after the parenthesis: gorm expands a
		// slice argument (the body) that directly follows "(".
		sb.WriteString(`(CAST( ? AS TEXT), CAST( ? AS TEXT), CAST( ? AS BYTEA), CAST( ? AS TEXT), CAST( ? AS TIMESTAMPTZ), CAST( ? AS INTEGER))`)
		props, err := encodeProps(m.Properties)
		if err != nil {
			return err
		}
		body := m.Body
		if body == nil {
			body = []byte{}
		}
		args = append(args, m.ID, m.SessionKey, body, props, visibleAt(m, t), i)
	}
	sb.WriteString(`),
	fresh AS (
		INSERT INTO queue_message_ids (queue, message_id, expires_at) SELECT ?, message_id, ? FROM v
		ORDER BY message_id -- one lock order, so concurrent senders of the same IDs cannot deadlock
		ON CONFLICT (queue, message_id) DO UPDATE SET expires_at = excluded.expires_at
		WHERE queue_message_ids.expires_at <= ?
		RETURNING message_id)
	INSERT INTO queue_messages (queue, message_id, session_key, body, properties, enqueued_at, visible_at)
	SELECT ?, v.message_id, v.session_key, v.body, v.properties, ?, v.visible_at
	FROM v JOIN fresh ON fresh.message_id = v.message_id ORDER BY v.ord`)
	args = append(args, q.name, t.Add(q.opts.DuplicateWindow), t, q.name, t)
	return db.Exec(sb.String(), args...).Error
}

func (q *Queue) insertRows(tx *gorm.DB, rows []newRow, t time.Time) error {
	const rowsPerStatement = 200
	for start := 0; start < len(rows); start += rowsPerStatement {
		chunk := rows[start:min(len(rows), start+rowsPerStatement)]
		var sb strings.Builder
		args := make([]any, 0, 8*len(chunk))
		sb.WriteString(`INSERT INTO queue_messages
			(queue, message_id, session_key, body, properties, enqueued_at, visible_at, redrive_count) VALUES `)
		for i, r := range chunk {
			if i > 0 {
				sb.WriteString(", ")
			}
			sb.WriteString("(?, ?, ?, ?, ?, ?, ?, ?)")
			props, err := encodeProps(r.props)
			if err != nil {
				return err
			}
			body := r.body
			if body == nil {
				body = []byte{}
			}
			args = append(args, q.name, r.id, r.sessionKey, body, props, t, r.visibleAt, r.redriveCount)
		}
		if _, err := storage.Exec(tx, sb.String(), args...); err != nil {
			return fmt.Errorf("inserting messages: %w", err)
		}
	}
	return nil
}

func (q *Queue) pruneIDs(tx *gorm.DB, t time.Time) error {
	return tx.Exec(`DELETE FROM queue_message_ids WHERE queue = ? AND expires_at <= ?`, q.name, t).Error
}

const deadColumns = `seq, message_id, session_key, body, properties, enqueued_at, delivery_count, redrive_count,
	COALESCE(dead_reason, ''), COALESCE(dead_description, '')`

func scanDead(rows *sql.Rows) (queues.DeadLetter, error) {
	var d queues.DeadLetter
	var props sql.NullString
	err := rows.Scan(&d.SequenceNumber, &d.ID, &d.SessionKey, &d.Body, &props, &d.EnqueuedAt,
		&d.DeliveryCount, &d.RedriveCount, &d.Reason, &d.Description)
	if err != nil {
		return d, err
	}
	d.EnqueuedAt = d.EnqueuedAt.UTC()
	d.Properties, err = decodeProps(props)
	return d, err
}

func (q *Queue) selectDead(db *gorm.DB, after int64, limit int) ([]queues.DeadLetter, error) {
	rows, err := db.Raw(`SELECT `+deadColumns+` FROM queue_messages
		WHERE queue = ? AND state = 'dead' AND seq > ? ORDER BY seq LIMIT ?`, q.name, after, limit).Rows()
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	var out []queues.DeadLetter
	for rows.Next() {
		d, err := scanDead(rows)
		if err != nil {
			return nil, err
		}
		out = append(out, d)
	}
	return out, rows.Err()
}

type redriveResult struct {
	moved         int
	held, missing []int64
}

func (q *Queue) redrive(tx *gorm.DB, seqs []int64, maxRedrives int, t time.Time) (redriveResult, error) {
	var res redriveResult
	query := `SELECT ` + deadColumns + ` FROM queue_messages WHERE queue = ? AND state = 'dead' AND seq IN ? ORDER BY seq`
	if q.dialect == storage.Postgres {
		query += ` FOR UPDATE`
	}
	rows, err := tx.Raw(query, q.name, seqs).Rows()
	if err != nil {
		return res, err
	}
	var found []queues.DeadLetter
	for rows.Next() {
		d, err := scanDead(rows)
		if err != nil {
			rows.Close()
			return res, err
		}
		found = append(found, d)
	}
	err = rows.Err()
	rows.Close()
	if err != nil {
		return res, err
	}
	present := map[int64]bool{}
	var back []newRow
	var remove []int64
	for _, d := range found {
		present[d.SequenceNumber] = true
		if d.RedriveCount >= maxRedrives {
			res.held = append(res.held, d.SequenceNumber)
			continue
		}
		props := make(map[string]string, len(d.Properties)+1)
		for k, v := range d.Properties {
			props[k] = v
		}
		props[queues.PropRedriveCount] = strconv.Itoa(d.RedriveCount + 1)
		back = append(back, newRow{id: d.ID, sessionKey: d.SessionKey, body: d.Body, props: props,
			visibleAt: t, redriveCount: d.RedriveCount + 1})
		remove = append(remove, d.SequenceNumber)
	}
	for _, s := range seqs {
		if !present[s] {
			res.missing = append(res.missing, s)
			present[s] = true // report each once
		}
	}
	if len(remove) == 0 {
		return res, nil
	}
	if err := tx.Exec(`DELETE FROM queue_messages WHERE seq IN ?`, remove).Error; err != nil {
		return res, err
	}
	if err := q.insertRows(tx, back, t); err != nil {
		return res, err
	}
	res.moved = len(back)
	return res, nil
}

// depthSQL counts a queue's messages by state. On SQLite it reads the
// order index alone (migration 0032 put visible_at, session_key and
// lock_token in it), not every message's row.
const depthSQL = `SELECT
		COALESCE(SUM(CASE WHEN state = 'active' AND (visible_at <= ? OR lock_token IS NOT NULL) THEN 1 ELSE 0 END), 0),
		COALESCE(SUM(CASE WHEN state = 'active' AND visible_at > ? AND lock_token IS NULL THEN 1 ELSE 0 END), 0),
		COALESCE(SUM(CASE WHEN state = 'dead' THEN 1 ELSE 0 END), 0)
		FROM queue_messages WHERE queue = ?`

func (q *Queue) depth(db *gorm.DB, t time.Time) (queues.Depth, error) {
	var d queues.Depth
	row := db.Raw(depthSQL, t, t, q.name).Row()
	err := row.Scan(&d.Active, &d.Scheduled, &d.DeadLetter)
	return d, err
}

func encodeProps(p map[string]string) (*string, error) {
	if len(p) == 0 {
		return nil, nil
	}
	b, err := json.Marshal(p)
	if err != nil {
		return nil, fmt.Errorf("encoding properties: %w", err)
	}
	s := string(b)
	return &s, nil
}

func decodeProps(s sql.NullString) (map[string]string, error) {
	if !s.Valid || s.String == "" {
		return nil, nil
	}
	var p map[string]string
	if err := json.Unmarshal([]byte(s.String), &p); err != nil {
		return nil, fmt.Errorf("decoding properties: %w", err)
	}
	return p, nil
}
