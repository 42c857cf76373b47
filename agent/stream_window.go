package agent

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"strconv"
	"strings"
	"time"

	"github.com/fhirsync/fhirsync/logs"
	"github.com/fhirsync/fhirsync/maps"
	"github.com/fhirsync/fhirsync/maps/path"
	"github.com/fhirsync/fhirsync/queues"
)

// streamMap returns the entity map of a change when it is a stream map:
// the change's only open map has a stream section.
func (p *pipeline) streamMap(open []*maps.Mapping, n queues.Notice) *maps.Mapping {
	if p.streams == nil || n.Side != queues.SideFHIR || len(open) != 1 || open[0].Def().Stream == nil {
		return nil
	}
	return open[0]
}

// readingStep is the step of a change to a stream map's Observation: a
// reading to hand to the streamer, or the decision of one that cannot be
// taken (nothing is lost: it is dead-lettered, to be redriven once the
// reading or the map is fixed).
func (p *pipeline) readingStep(mp *maps.Mapping, n queues.Notice, src record, gone bool) *step {
	em := mp.Def()
	if gone || n.Event == queues.EventDeleted {
		return stop(logs.OutcomeSkipped, logs.ReasonDeleteIgnored, fmt.Sprintf("Entity map %s sends window aggregates of device readings; deleting a reading does not change an aggregate.", em.Name))
	}
	r, err := readingOf(em, src.Data, src.Version)
	if err != nil {
		return &step{outcome: logs.OutcomeDeadLettered, reason: logs.ReasonMappingError, subject: "stream",
			message: fmt.Sprintf("The reading cannot join a window of stream map %s: %s.", em.Name, err), err: Permanent(err)}
	}
	return &step{reading: &r}
}

// settleReading hands a reading to the streamer and settles its message
// once the reading is part of its window in the database. The message
// parks while it waits when it can (its queue completes it in the fold's
// transaction): the worker goes on to the next message, so a fold takes
// the readings of many more messages than there are workers, and the
// cost of its transaction is shared among them.
func (p *pipeline) settleReading(ctx context.Context, m *queues.Received, r streamReading, q txQueue) settlement {
	if spot := spotOf(ctx); p.parking != nil && p.parking.reserve(spot) {
		spot.park()
	} // else the lot is full or the message cannot park: wait in the worker
	done := p.streams.take(ctx, r, m, q)
	if done.err != nil {
		p.plog.Warn("taking a stream reading failed; the message will be retried", "message_id", m.ID, "entity_map", r.mapName, "error", done.err)
		return settlement{kind: settleAbandon, delay: p.backoff.Delay(m.DeliveryCount, done.err)}
	}
	if done.settled {
		if done.lockLost {
			p.plog.Warn("the message's lock expired before it was completed; its redelivery is dropped as a duplicate reading", "message_id", m.ID)
		}
		return settlement{kind: settleNone}
	}
	return settlement{kind: settleComplete}
}

// windowID is the id of a window's synthetic Observation: stable for the
// window and key, so a window sent again updates the same CRM record, and
// free of the patient's reference.
func windowID(w streamWindow) string {
	sum := sha256.Sum256([]byte(w.EntityMap + "\x00" + w.StreamKey + "\x00" + strconv.FormatInt(w.WindowStart, 10)))
	return "w" + hex.EncodeToString(sum[:16])
}

// closeWindow decides an ended window: it sends its aggregate through the
// entity map unless the window holds only duplicates, lies within the
// threshold range or meets the patient's rate limit, and records the
// window's one decision with its counts. A retryable failure gives the
// window back to be tried again (up to the agent's MaxAttempts).
func (p *pipeline) closeWindow(ctx context.Context, w streamWindow) {
	start := p.now()
	id := windowID(w)
	d := &logs.Decision{MessageID: "stream:" + id, CorrelationID: "stream:" + id, Direction: logs.FHIRToCRM, EntityMap: w.EntityMap,
		Source: logs.Ref{Type: "Observation", ID: id}}
	rd := &logs.Readings{Subject: w.Subject, Code: w.Code, Start: time.Unix(w.WindowStart, 0).UTC(), End: time.Unix(w.WindowEnd, 0).UTC(),
		Counts: map[logs.ReasonCode]int{}}
	if w.Duplicates > 0 {
		rd.Counts[logs.ReasonDuplicateReading] = int(w.Duplicates)
	}
	d.Readings = rd
	u := &unit{d: d}
	st := p.windowStep(ctx, w, u)
	if st.outcome == logs.OutcomeFailed {
		if w.Attempts < p.maxAttempts {
			delay := p.backoff.Delay(w.Attempts, st.err)
			p.plog.Warn("sending a stream window failed; it will be tried again", "entity_map", w.EntityMap, "window", id,
				"attempt", w.Attempts, "reason", string(st.reason), "error_class", errorClass(st.err))
			if err := p.streams.release(ctx, w, delay); err != nil {
				p.plog.Warn("releasing a stream window failed; its claim lapses on its own", "window", id, "error", err)
			}
			return
		}
		st.message = fmt.Sprintf("Gave up after %d attempts; the last one failed with %s (%s).", w.Attempts, st.reason, errorClass(st.err))
		st.outcome, st.reason = logs.OutcomeDeadLettered, logs.ReasonAttemptsExhausted
	}
	if w.Kept > 0 {
		fate := st.reason
		switch st.reason {
		case logs.ReasonCreated, logs.ReasonUpdated, logs.ReasonUnchanged:
			fate = logs.ReasonAggregated
		}
		rd.Counts[fate] += int(w.Kept)
	}
	d.Outcome, d.Reason, d.ReasonSubject = st.outcome, st.reason, st.subject
	d.Message = strings.TrimSpace(st.message + " " + windowSentence(w))
	attempt := logs.Attempt{At: p.now().UTC()}
	if st.err != nil {
		attempt.ErrorClass, attempt.Retryable = errorClass(st.err), !IsPermanent(st.err)
		attempt.TargetError = p.targetError(ctx, d, st.err)
	}
	d.Attempts = []logs.Attempt{attempt}
	d.Duration = p.now().Sub(start)
	u.effects = append(u.effects, closedEffect(w))
	if err := p.commit(ctx, u); err != nil {
		p.plog.Error("recording a stream window's decision failed; the window will be tried again", "window", id, "error", err)
		return
	}
	p.metrics.observe(d)
	for reason, c := range rd.Counts {
		if reason != logs.ReasonDuplicateReading { // counted as they came
			p.streams.readings.WithLabelValues(w.EntityMap, string(reason)).Add(float64(c))
		}
	}
}

// windowSentence says what the window held, in counts only.
func windowSentence(w streamWindow) string {
	return fmt.Sprintf("Window %s–%s: %d reading(s) kept, %d dropped as duplicates.",
		time.Unix(w.WindowStart, 0).UTC().Format("2006-01-02 15:04:05"), time.Unix(w.WindowEnd, 0).UTC().Format("15:04:05"), w.Kept, w.Duplicates)
}

// windowStep decides and, when it is to be sent, sends a window.
func (p *pipeline) windowStep(ctx context.Context, w streamWindow, u *unit) *step {
	d := u.d
	set, err := p.maps(ctx)
	if err != nil {
		return &step{outcome: logs.OutcomeFailed, reason: "unavailable", message: "The published map set could not be loaded.", err: err}
	}
	d.MapVersion = set.Version()
	var mp *maps.Mapping
	for _, c := range set.candidates(queues.SideFHIR, "Observation") {
		if c.Name() == w.EntityMap {
			mp = c
		}
	}
	if mp == nil || mp.Def().Stream == nil {
		return stop(logs.OutcomeSkipped, logs.ReasonNoEntityMap, fmt.Sprintf("No published stream map %s covers the window any more; its aggregate was not sent.", w.EntityMap))
	}
	f := p.flows[queues.SideFHIR]
	open, closed, _ := gates([]*maps.Mapping{mp}, queues.SideFHIR, f.dir)
	if len(open) == 0 {
		return closed
	}
	em := mp.Def()
	s := em.Stream
	if w.Kept == 0 {
		return stop(logs.OutcomeSkipped, logs.ReasonDuplicateReading, "Every reading of the window was a duplicate; there is no aggregate to send.")
	}
	if t := s.Threshold; t != nil && w.MinValue != nil && w.MaxValue != nil && !t.Outside(*w.MinValue) && !t.Outside(*w.MaxValue) {
		return stop(logs.OutcomeSkipped, logs.ReasonWithinRange, "Every reading of the window lay inside the stream's threshold range; no aggregate was sent.")
	}
	if rl := s.RateLimit; rl != nil && w.Attempts <= 1 {
		// A window tried again already took its send from the budget.
		ok, err := p.streams.spend(ctx, em.Name, w.Subject, rl, p.now())
		if err != nil {
			return p.failure("reading the patient's rate budget", err)
		}
		if !ok {
			return stop(logs.OutcomeSkipped, logs.ReasonRateLimited, fmt.Sprintf("The patient's aggregates reached the stream's limit of %d per %s; this window's was not sent.", rl.Sends, rl.Per.D()))
		}
	}
	src := p.windowRecord(ctx, f, mp, w)
	d.Source = logs.Ref{Type: "Observation", ID: src.ID}
	n := queues.Notice{V: queues.NoticeVersion, Side: queues.SideFHIR, Type: "Observation", ID: src.ID, Event: queues.EventChanged,
		Origin: "stream", ChangedAt: time.Unix(w.WindowEnd, 0)}
	st, _ := p.sync(ctx, f, mp, n, src, false, p.cachedLink(ctx, f, em, src.ID), nil, u)
	return st
}

// windowRecord builds the window's synthetic Observation: the latest
// reading as read again from the FHIR server (so everything the entity
// map reads — status, category, subject, code, device — is there), with
// the window's id, the aggregate as valueQuantity.value, the window as
// effectivePeriod, and the statistics as extensions (maps.StreamExtension).
func (p *pipeline) windowRecord(ctx context.Context, f *flow, mp *maps.Mapping, w streamWindow) record {
	em := mp.Def()
	var data map[string]any
	if latest, err := f.source.read(ctx, mp, w.LatestID); err == nil {
		data, _ = path.DeepCopy(latest.Data).(map[string]any)
	} else if !errors.Is(err, errGone) {
		p.plog.Warn("reading a window's latest reading failed; its aggregate carries the window's key only", "entity_map", em.Name, "error_class", errorClass(err))
	}
	if data == nil {
		system, code, _ := strings.Cut(w.Code, "|")
		data = map[string]any{"resourceType": "Observation", "status": "final",
			"subject": map[string]any{"reference": w.Subject},
			"code":    map[string]any{"coding": []any{map[string]any{"system": system, "code": code}}}}
	}
	id := windowID(w)
	for _, k := range []string{"meta", "text", "identifier", "effectiveDateTime", "effectiveInstant", "effectiveTiming", "issued"} {
		delete(data, k)
	}
	data["id"] = id
	mean := w.SumValue / float64(w.Kept)
	stats := map[maps.Aggregate]string{
		maps.AggregateLatest: w.LatestValue,
		maps.AggregateMin:    number(*w.MinValue),
		maps.AggregateMax:    number(*w.MaxValue),
		maps.AggregateMean:   number(math.Round(mean*1e6) / 1e6),
	}
	q, _ := data["valueQuantity"].(map[string]any)
	if q == nil {
		q = map[string]any{}
		if w.Unit != "" {
			q["unit"] = w.Unit
		}
	}
	q["value"] = json.Number(stats[em.Stream.Aggregate.OrDefault()])
	data["valueQuantity"] = q
	data["effectivePeriod"] = map[string]any{"start": time.Unix(w.WindowStart, 0).UTC().Format(time.RFC3339), "end": time.Unix(w.WindowEnd, 0).UTC().Format(time.RFC3339)}
	var ext []any
	if old, ok := data["extension"].([]any); ok {
		for _, e := range old {
			if em, _ := e.(map[string]any); em != nil {
				if u, _ := em["url"].(string); strings.HasPrefix(u, maps.StreamExtension("")) {
					continue
				}
			}
			ext = append(ext, e)
		}
	}
	for _, a := range []maps.Aggregate{maps.AggregateLatest, maps.AggregateMin, maps.AggregateMax, maps.AggregateMean} {
		ext = append(ext, map[string]any{"url": maps.StreamExtension(string(a)), "valueDecimal": json.Number(stats[a])})
	}
	ext = append(ext, map[string]any{"url": maps.StreamExtension("count"), "valueInteger": json.Number(strconv.FormatInt(w.Kept, 10))})
	data["extension"] = ext
	return record{Type: "Observation", ID: id, Data: data}
}

// number renders a statistic as FHIR decimal text.
func number(v float64) string { return strconv.FormatFloat(v, 'f', -1, 64) }
