package agent

import (
	"context"
	"net/url"
	"strconv"
	"strings"
	"time"

	"github.com/fhirsync/fhirsync/agent/fhir"
)

// readingReader reads the Observations of concurrent stream readings
// together: one search by _id (FHIR R4 search, "_id": a token parameter
// whose comma-separated values are ORed,
// https://hl7.org/fhir/R4/search.html#id and #combining) for up to max
// ids gathered for at most wait, instead of one read each. Ids the
// search does not return are gone.
type readingReader struct {
	search func(ctx context.Context, typ string, q url.Values) (*fhir.Page, error)
	reqs   chan readReq
	max    int
	wait   time.Duration
}

type readReq struct {
	id   string
	done chan readResult
}

type readResult struct {
	res fhir.Resource
	err error
}

func newReadingReader(search func(ctx context.Context, typ string, q url.Values) (*fhir.Page, error)) *readingReader {
	// 100 ids of up to 64 characters keep the URL under 8 KB.
	return &readingReader{search: search, reqs: make(chan readReq), max: 100, wait: 2 * time.Millisecond}
}

// read returns the current Observation id, or errGone.
func (r *readingReader) read(ctx context.Context, id string) (fhir.Resource, error) {
	req := readReq{id: id, done: make(chan readResult, 1)}
	select {
	case r.reqs <- req:
	case <-ctx.Done():
		return nil, ctx.Err()
	}
	select {
	case res := <-req.done:
		return res.res, res.err
	case <-ctx.Done():
		return nil, ctx.Err()
	}
}

// run gathers reads until ctx ends; each batch is searched on its own
// goroutine, so batches overlap.
func (r *readingReader) run(ctx context.Context) {
	for {
		batch, ok := gatherBatch(ctx, r.reqs, r.max, r.wait)
		if !ok {
			return
		}
		go r.flush(context.WithoutCancel(ctx), batch)
	}
}

func (r *readingReader) flush(ctx context.Context, batch []readReq) {
	ids := make([]string, 0, len(batch))
	seen := map[string]bool{}
	for _, q := range batch {
		if !seen[q.id] {
			seen[q.id] = true
			ids = append(ids, q.id)
		}
	}
	page, err := r.search(ctx, "Observation", url.Values{"_id": {strings.Join(ids, ",")}, "_count": {strconv.Itoa(len(ids))}})
	byID := map[string]fhir.Resource{}
	if err == nil {
		for _, e := range page.Entries {
			if e.Resource != nil && (e.SearchMode == "" || e.SearchMode == "match") {
				byID[e.Resource.ID()] = e.Resource
			}
		}
	}
	for _, q := range batch {
		switch res, ok := byID[q.id]; {
		case err != nil:
			q.done <- readResult{err: classify(err)}
		case !ok:
			q.done <- readResult{err: errGone}
		default:
			q.done <- readResult{res: res}
		}
	}
}
