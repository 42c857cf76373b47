package agent

import (
	"bytes"
	"context"
	"time"

	"github.com/fhirsync/fhirsync/agent/crm"
	"github.com/fhirsync/fhirsync/queues"
)

// The bulk lane. A backfill or reconcile puts thousands of notices on a
// queue at once and nobody waits for any one of them; the live stream's
// notices each have someone waiting. So the two travel apart: notices of a
// backfill or reconcile are processed by workers of their own
// (Config.BackfillWorkers, many), and their CRM requests share $batch
// requests of their own, large and slow to fill (Config.BackfillBatchMax,
// BackfillBatchWait). With hundreds of records in flight, the target reads
// of all of them become one Microsoft.Dynamics.CRM.In query per table —
// the page's target state read at once, which also seeds the lookup cache —
// and their writes go out in $batch requests of up to 1,000 operations:
// a few CRM requests per thousand records instead of one per few records.
// The live stream keeps its small, quick batches.

// Bulk-lane defaults.
const (
	// DefaultBackfillWorkers is how many notices of a backfill or
	// reconcile are processed at once per queue. Each holds its decoded
	// resource while it waits for its batch: at 1,024 the backfill was the
	// agent's peak of memory (176–180 MB RSS in `fhirsync bench --records
	// 20000` against 140–142 MB at 512), for the same records/s and 0.005–
	// 0.007 CRM requests per record either way.
	DefaultBackfillWorkers = 512
	// DefaultBackfillBatchMax is how many CRM operations of the bulk lane
	// share one $batch: Dataverse's maximum.
	DefaultBackfillBatchMax = crm.MaxBatchSize
	// DefaultBackfillBatchWait is how long the first operation of a bulk
	// $batch waits for company (a tenth of it without any arrival sends
	// it anyway).
	DefaultBackfillBatchWait = 2 * time.Second
)

// bulkOrigins are the origins of notices that travel in the bulk lane.
var bulkOrigins = [][]byte{[]byte(`"origin":"` + OriginBackfill + `"`), []byte(`"origin":"` + OriginReconcile + `"`)}

// isBulkMessage reports whether m is a notice of a backfill or reconcile.
// It looks for the origin member as EncodeNotice writes it rather than
// decoding the message a second time: it only chooses the lane, and the
// message is decoded and checked in full by the pipeline.
func isBulkMessage(m *queues.Received) bool {
	for _, o := range bulkOrigins {
		if bytes.Contains(m.Body, o) {
			return true
		}
	}
	return false
}

type bulkLaneKey struct{}

// withBulkLane marks ctx as processing a notice of the bulk lane.
func withBulkLane(ctx context.Context) context.Context {
	return context.WithValue(ctx, bulkLaneKey{}, true)
}

// inBulkLane reports whether ctx processes a notice of the bulk lane.
func inBulkLane(ctx context.Context) bool {
	b, _ := ctx.Value(bulkLaneKey{}).(bool)
	return b
}

// laneAPI is a CRM client that sends the requests of the bulk lane through
// the bulk coalescer and all others through the live one.
//
// The bulk workers are deliberately not a crm.Callers set of the bulk
// coalescer: they are many more than the notices a short backfill, the
// tail of a long one or a low --max-queued keeps in flight, so "all of
// them wait" would rarely come and each batch would wait its full
// BackfillBatchWait. Their calls count as callers of no set of the bulk
// coalescer (a set of the live one does not count there), and a bulk
// batch goes when it is full, when its wait is over or after a tenth of
// the wait without an arrival.
type laneAPI struct {
	live, bulk *crm.Coalescer
}

func newLaneAPI(live, bulk *crm.Coalescer) laneAPI {
	return laneAPI{live: live, bulk: bulk}
}

func (l laneAPI) pick(ctx context.Context) (*crm.Coalescer, context.Context) {
	if inBulkLane(ctx) {
		return l.bulk, ctx
	}
	return l.live, ctx
}

func (l laneAPI) Retrieve(ctx context.Context, t crm.Target, sel ...string) (crm.Record, error) {
	k, ctx := l.pick(ctx)
	return k.Retrieve(ctx, t, sel...)
}

func (l laneAPI) RetrieveMultiple(ctx context.Context, set string, q crm.Query, fn func(crm.Record) error) error {
	k, ctx := l.pick(ctx)
	return k.RetrieveMultiple(ctx, set, q, fn)
}

func (l laneAPI) Upsert(ctx context.Context, t crm.Target, rec crm.Record, o crm.UpsertOptions) (crm.UpsertResult, error) {
	k, ctx := l.pick(ctx)
	return k.Upsert(ctx, t, rec, o)
}

func (l laneAPI) Create(ctx context.Context, set string, rec crm.Record) (string, error) {
	k, ctx := l.pick(ctx)
	return k.Create(ctx, set, rec)
}

func (l laneAPI) Delete(ctx context.Context, t crm.Target, etag string) error {
	k, ctx := l.pick(ctx)
	return k.Delete(ctx, t, etag)
}

// Apply sends one record's writes as an atomic change set (changeSets).
func (l laneAPI) Apply(ctx context.Context, ops []crm.Op) ([]crm.OpResult, error) {
	k, ctx := l.pick(ctx)
	return k.Apply(ctx, ops)
}
