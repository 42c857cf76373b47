package crm

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"mime"
	"mime/multipart"
	"net/http"
	"net/textproto"
	"strconv"
	"strings"
	"time"

	"github.com/google/uuid"

	fsmaps "github.com/fhirsync/fhirsync/maps"
)

// Op is one request inside a $batch.
type Op struct {
	Method string
	// Path is relative to the service root, e.g. "contacts(<id>)", or a
	// "$<Content-ID>" reference to an earlier op of the same change set.
	Path   string
	Header http.Header
	Body   []byte
	// ContentID names the op inside a change set; assigned when empty.
	ContentID string

	// write is what CreateOp or UpsertOp built the op from, for a
	// Coalescer that sends it inside a bulk message (bulk.go).
	write *opWrite
}

// opWrite is the row write an op carries: a create in set, or an upsert
// of target with options.
type opWrite struct {
	set    string
	target Target
	upsert bool
	opts   UpsertOptions
	rec    Record
}

// CreateOp builds a create request.
func CreateOp(set string, rec Record) (Op, error) {
	b, err := fsmaps.EncodeJSON(map[string]any(rec))
	if err != nil {
		return Op{}, fmt.Errorf("encoding create for %s: %w", set, err)
	}
	return Op{Method: http.MethodPost, Path: set, Body: b, write: &opWrite{set: set, rec: rec}}, nil
}

// UpsertOp builds an upsert request (PATCH with return=representation); c
// may be nil, as the op's path is relative to the service root.
func UpsertOp(c *Client, t Target, rec Record, o UpsertOptions) (Op, error) {
	b, err := fsmaps.EncodeJSON(map[string]any(rec))
	if err != nil {
		return Op{}, fmt.Errorf("encoding upsert for %s: %w", t, err)
	}
	if c == nil {
		c = &Client{}
	}
	cl := upsertCall(c, t, b, o)
	return Op{Method: cl.method, Path: strings.TrimPrefix(cl.url, c.root), Header: cl.header, Body: b,
		write: &opWrite{set: t.Set, target: t, upsert: true, opts: o, rec: rec}}, nil
}

// DeleteOp builds a delete request.
func DeleteOp(t Target, etag string) Op {
	h := http.Header{}
	if etag != "" {
		h.Set("If-Match", etag)
	}
	return Op{Method: http.MethodDelete, Path: t.path(), Header: h}
}

// BatchItem is a single op or an atomic change set.
type BatchItem struct {
	Op        *Op
	ChangeSet []Op
}

// Batch is one $batch request.
type Batch struct {
	Items []BatchItem
	// ContinueOnError sends Prefer: odata.continue-on-error so the server
	// carries on after a failed item.
	ContinueOnError bool
}

func (b Batch) size() int {
	n := 0
	for _, it := range b.Items {
		if it.Op != nil {
			n++
		}
		n += len(it.ChangeSet)
	}
	return n
}

// OpResult is the outcome of one op, in the order the ops were given.
type OpResult struct {
	Status int
	Header http.Header
	Body   []byte
	// Err is the classified error of a failed op, naming the op's position
	// in the batch (Error.Request) and its Content-ID. For the other ops of
	// a failed change set it is the failing op's error with RolledBack set:
	// they were rolled back, not refused.
	Err *Error
	// Skipped ops were never executed (the batch stopped early); they are
	// safe to send again.
	Skipped bool
	// RolledBack is set on every op of a failed change set.
	RolledBack bool
}

// ExecuteBatch sends a $batch of up to 1,000 requests. The returned error
// is about the batch as a whole; per-op failures are in the results.
//
// Dataverse answers a batch that stopped at a failed request (no
// Prefer: odata.continue-on-error) with an error status and a multipart
// body holding the answers up to and including the failed one; a failed
// change set is answered with the failing request's answer alone, under
// its Content-ID. Both are decoded into per-op results, not returned as
// an error of the whole batch.
func (c *Client) ExecuteBatch(ctx context.Context, b Batch) ([]OpResult, error) {
	return c.executeBatch(ctx, b, false)
}

func (c *Client) executeBatch(ctx context.Context, b Batch, noRetry bool) ([]OpResult, error) {
	n := b.size()
	op := fmt.Sprintf("sending a batch of %d requests", n)
	if n == 0 {
		return nil, nil
	}
	if n > MaxBatchSize {
		return nil, &Error{Op: op, Class: ClassRejected, Err: fmt.Errorf("a batch carries at most %d requests", MaxBatchSize)}
	}
	body, ctype := c.encodeBatch(&b)
	h := http.Header{}
	h.Set("Content-Type", ctype)
	h.Set("Accept", "application/json")
	if b.ContinueOnError {
		h.Set("Prefer", "odata.continue-on-error")
	}
	res, err := c.send(ctx, op, call{method: http.MethodPost, url: c.root + "$batch", header: h, body: body, noRetry: noRetry, batch: true})
	if err != nil {
		return nil, err
	}
	parts, err := decodeBatch(op, res)
	if err != nil {
		return nil, err
	}
	c.noteBatchBypassRefusal(parts)
	return matchBatch(op, b, res.status, parts)
}

func (c *Client) encodeBatch(b *Batch) ([]byte, string) {
	var buf bytes.Buffer
	mw := multipart.NewWriter(&buf)
	_ = mw.SetBoundary("batch_" + uuid.NewString())
	next := 1
	for i := range b.Items {
		it := &b.Items[i]
		if it.Op != nil {
			writeOp(c, mw, *it.Op)
			continue
		}
		var cs bytes.Buffer
		cw := multipart.NewWriter(&cs)
		_ = cw.SetBoundary("changeset_" + uuid.NewString())
		for j := range it.ChangeSet {
			if it.ChangeSet[j].ContentID == "" {
				it.ChangeSet[j].ContentID = strconv.Itoa(next)
			}
			next++
			writeOp(c, cw, it.ChangeSet[j])
		}
		_ = cw.Close()
		h := textproto.MIMEHeader{}
		h.Set("Content-Type", "multipart/mixed; boundary="+cw.Boundary())
		pw, _ := mw.CreatePart(h)
		_, _ = pw.Write(cs.Bytes())
	}
	_ = mw.Close()
	return buf.Bytes(), "multipart/mixed; boundary=" + mw.Boundary()
}

func writeOp(c *Client, mw *multipart.Writer, op Op) {
	h := textproto.MIMEHeader{}
	h.Set("Content-Type", "application/http")
	h.Set("Content-Transfer-Encoding", "binary")
	if op.ContentID != "" {
		h.Set("Content-ID", op.ContentID)
	}
	pw, _ := mw.CreatePart(h)
	target := op.Path
	if !strings.HasPrefix(target, "$") {
		target = c.root + target
	}
	var b bytes.Buffer
	fmt.Fprintf(&b, "%s %s HTTP/1.1\r\n", op.Method, target)
	for k, vs := range op.Header {
		for _, v := range vs {
			fmt.Fprintf(&b, "%s: %s\r\n", k, v)
		}
	}
	if v := c.bypassHeader(op.Method, op.Path, op.Header); v != "" && op.Header.Get(HeaderBypassStepIDs) == "" {
		fmt.Fprintf(&b, "%s: %s\r\n", HeaderBypassStepIDs, v)
	}
	if op.Body != nil {
		b.WriteString("Content-Type: application/json; type=entry\r\n")
	}
	b.WriteString("\r\n")
	b.Write(op.Body)
	b.WriteString("\r\n")
	_, _ = pw.Write(b.Bytes())
}

// batchPart is one decoded response part: a single response, or the
// responses of a change set.
type batchPart struct {
	single    *OpResult
	contentID string
	changeSet []batchPart
}

// isMultipartAnswer reports whether an answer is a multipart batch
// response: by its Content-Type, or, where that header is missing, by a
// body that opens with a boundary delimiter line.
func isMultipartAnswer(h http.Header, body []byte) bool {
	return batchBoundary(h, body) != ""
}

// batchBoundary is the boundary of a batch answer: the Content-Type's, or
// the one the body's first delimiter line names when the answer carries no
// multipart Content-Type (Microsoft's documentation prints batch answers
// without it).
func batchBoundary(h http.Header, body []byte) string {
	ct := h.Get("Content-Type")
	if mt, params, err := mime.ParseMediaType(ct); err == nil && mt == "multipart/mixed" {
		return params["boundary"]
	}
	if ct != "" && ct != "text/plain" && !strings.HasPrefix(ct, "multipart/") {
		return ""
	}
	rest := bytes.TrimLeft(body, "\r\n\t ")
	line, _, _ := bytes.Cut(rest, []byte("\n"))
	line = bytes.TrimRight(line, "\r\t ")
	if !bytes.HasPrefix(line, []byte("--")) || len(line) < 3 || len(line) > 72 {
		return ""
	}
	b := strings.TrimSuffix(string(line[2:]), "--")
	if strings.ContainsAny(b, " \t") {
		return ""
	}
	return b
}

func decodeBatch(op string, res result) ([]batchPart, error) {
	boundary := batchBoundary(res.header, res.body)
	if boundary == "" {
		return nil, invalidResponse(op, res.status, "batch answer is not multipart/mixed (%s)", describeBody(res.header, res.body))
	}
	parts, err := readParts(multipart.NewReader(bytes.NewReader(res.body), boundary), 0)
	if err != nil {
		return nil, invalidResponse(op, res.status, "decoding the batch answer: %v", err)
	}
	return parts, nil
}

func readParts(mr *multipart.Reader, depth int) ([]batchPart, error) {
	var out []batchPart
	for {
		p, err := mr.NextPart()
		if err == io.EOF {
			return out, nil
		}
		if err != nil {
			return nil, err
		}
		mt, params, err := mime.ParseMediaType(p.Header.Get("Content-Type"))
		if err != nil {
			return nil, errors.New("part without a valid Content-Type")
		}
		switch {
		case mt == "multipart/mixed" && depth == 0:
			if params["boundary"] == "" {
				return nil, errors.New("change set part without a boundary")
			}
			inner, err := readParts(multipart.NewReader(p, params["boundary"]), 1)
			if err != nil {
				return nil, err
			}
			out = append(out, batchPart{changeSet: inner})
		case mt == "application/http":
			raw, err := answerBuffers.ReadAll(p)
			if err != nil {
				return nil, fmt.Errorf("reading a response part: %w", err)
			}
			if !bytes.Contains(raw, []byte("\n\n")) && !bytes.Contains(raw, []byte("\n\r\n")) {
				// A bodiless answer whose blank line after the headers
				// went into the boundary's line break, as some of
				// Microsoft's printed batch answers show it.
				raw = append(raw, "\r\n"...)
			}
			body, resp, err := partResponse(raw)
			if err != nil {
				return nil, err
			}
			r := &OpResult{Status: resp.StatusCode, Header: resp.Header, Body: body}
			if resp.StatusCode < 200 || resp.StatusCode > 299 {
				r.Err = errorFromResponse("", resp.StatusCode, resp.Header, body)
			}
			out = append(out, batchPart{single: r, contentID: p.Header.Get("Content-ID")})
		default:
			return nil, fmt.Errorf("unexpected part type %q", mt)
		}
	}
}

// partResponse reads the HTTP response a batch answer part holds. The
// part is already in memory: its body is a slice of raw (not a copy) when
// the response is not chunked and holds at least its Content-Length.
func partResponse(raw []byte) ([]byte, *http.Response, error) {
	src := bytes.NewReader(raw)
	br := bufio.NewReaderSize(src, min(len(raw), 4096))
	resp, err := http.ReadResponse(br, nil)
	if err != nil {
		return nil, nil, fmt.Errorf("malformed response part: %w", err)
	}
	defer resp.Body.Close()
	if len(resp.TransferEncoding) == 0 && resp.Body != http.NoBody {
		rest := raw[len(raw)-src.Len()-br.Buffered():]
		switch {
		case resp.ContentLength < 0:
			return rest, resp, nil
		case int64(len(rest)) >= resp.ContentLength:
			return rest[:resp.ContentLength], resp, nil
		}
	}
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		return nil, nil, fmt.Errorf("malformed response part body: %w", err)
	}
	return body, resp, nil
}

// matchBatch pairs response parts with the ops, in order, and names each
// failure's request. status is the batch answer's own status: an error
// status says the batch stopped at a failed request.
func matchBatch(op string, b Batch, status int, parts []batchPart) ([]OpResult, error) {
	var out []OpResult
	pi := 0
	pos := 0 // 1-based position of the last op placed
	failed := false
	for _, it := range b.Items {
		if pi >= len(parts) {
			// the server stops only after a failure; everything left was
			// not executed
			if !failed {
				return nil, invalidResponse(op, status, "batch answer has %d parts for %d items", len(parts), len(b.Items))
			}
			for range max(len(it.ChangeSet), btoi(it.Op != nil)) {
				pos++
				out = append(out, OpResult{Skipped: true})
			}
			continue
		}
		p := parts[pi]
		pi++
		if it.Op != nil {
			if p.single == nil {
				return nil, invalidResponse(op, status, "batch answer has a change set where a single response was expected")
			}
			pos++
			r := *p.single
			if r.Err != nil {
				r.Err.Op, r.Err.Request, r.Err.ContentID = op, pos, firstNonEmpty(p.contentID, it.Op.ContentID)
				failed = true
			}
			out = append(out, r)
			continue
		}
		first := pos + 1
		pos += len(it.ChangeSet)
		// A failed change set is answered with the failing request's answer
		// alone: as a single part (OData) or as a change set holding only it
		// (Dataverse).
		fail := p.single
		failID := p.contentID
		if fail == nil {
			for _, cp := range p.changeSet {
				if cp.single != nil && cp.single.Err != nil {
					fail, failID = cp.single, cp.contentID
					break
				}
			}
		}
		if fail != nil {
			if fail.Err == nil {
				return nil, invalidResponse(op, status, "change set answered with a single non-error response")
			}
			failed = true
			at := -1
			for j, o := range it.ChangeSet {
				if failID != "" && o.ContentID == failID {
					at = j
				}
			}
			if at < 0 && len(it.ChangeSet) == 1 {
				at = 0
			}
			e := fail.Err
			e.Op = op
			if at >= 0 {
				e.Request, e.ContentID = first+at, it.ChangeSet[at].ContentID
			} else {
				e.ContentID = failID
			}
			for j := range it.ChangeSet {
				r := OpResult{RolledBack: true}
				if j == at {
					r.Status, r.Header, r.Body, r.Err = fail.Status, fail.Header, fail.Body, e
				} else {
					rb := *e
					rb.RolledBack = true
					r.Err = &rb
				}
				out = append(out, r)
			}
			continue
		}
		if len(p.changeSet) != len(it.ChangeSet) {
			return nil, invalidResponse(op, status, "change set of %d requests answered with %d responses", len(it.ChangeSet), len(p.changeSet))
		}
		for _, cp := range p.changeSet {
			if cp.single == nil {
				return nil, invalidResponse(op, status, "nested change set in the answer")
			}
			out = append(out, *cp.single)
		}
	}
	if pi < len(parts) {
		return nil, invalidResponse(op, status, "batch answer has %d parts for %d items", len(parts), len(b.Items))
	}
	if (status < 200 || status > 299) && !failed {
		return nil, invalidResponse(op, status, "batch answered with status %d but no request in it failed", status)
	}
	return out, nil
}

func firstNonEmpty(a, b string) string {
	if a != "" {
		return a
	}
	return b
}

func btoi(b bool) int {
	if b {
		return 1
	}
	return 0
}

// UpsertItem is one row for UpsertMany.
type UpsertItem struct {
	Target  Target
	Record  Record
	Options UpsertOptions
}

// UpsertOutcome is the result of one UpsertItem.
type UpsertOutcome struct {
	Result UpsertResult
	Err    error
}

// UpsertMany upserts rows through $batch requests (each row on its own, so
// one failure does not roll back the others), sized adaptively: a
// throttled batch halves the size and waits the server's Retry-After;
// successful batches grow it back towards Config.BatchSize. Rows a batch
// did not execute are sent again. The returned error is about the whole
// call (context cancelled, throttled beyond MaxRetryWait); per-row errors
// are in the outcomes.
func (c *Client) UpsertMany(ctx context.Context, items []UpsertItem) ([]UpsertOutcome, error) {
	out := make([]UpsertOutcome, len(items))
	pending := make([]int, len(items))
	for i := range items {
		pending[i] = i
	}
	throttles := 0
	for len(pending) > 0 {
		size := int(c.batchSize.Load())
		chunk := pending[:min(size, len(pending))]
		b := Batch{ContinueOnError: true}
		for _, idx := range chunk {
			op, err := UpsertOp(c, items[idx].Target, items[idx].Record, items[idx].Options)
			if err != nil {
				out[idx].Err = err
				continue
			}
			b.Items = append(b.Items, BatchItem{Op: &op})
		}
		var sent []int
		for _, idx := range chunk {
			if out[idx].Err == nil {
				sent = append(sent, idx)
			}
		}
		pending = pending[len(chunk):]
		if len(sent) == 0 {
			continue
		}
		results, err := c.executeBatch(ctx, b, true)
		if err != nil {
			e, ok := AsError(err)
			if !ok || e.Class != ClassThrottled {
				return out, err
			}
			throttles++
			if throttles > max(c.retries, 1)*4 {
				return out, err
			}
			c.shrink()
			if err := c.sleep(ctx, e.RetryAfter); err != nil {
				return out, err
			}
			pending = append(sent, pending...)
			continue
		}
		var again []int
		var wait time.Duration
		for k, idx := range sent {
			r := results[k]
			switch {
			case r.Skipped:
				again = append(again, idx)
			case r.Err != nil && r.Err.Class == ClassThrottled:
				again = append(again, idx)
				wait = max(wait, r.Err.RetryAfter)
			case r.Err != nil:
				r.Err.Op = "upserting " + items[idx].Target.String()
				out[idx].Err = r.Err
			default:
				res, err := upsertResult("upserting "+items[idx].Target.String(),
					result{status: r.Status, header: r.Header, body: r.Body})
				if err == nil && res.ID == "" {
					res.ID = idOf(items[idx].Target, res.Record)
				}
				out[idx] = UpsertOutcome{Result: res, Err: err}
			}
		}
		if len(again) > 0 {
			throttles++
			c.shrink()
			if err := c.sleep(ctx, wait); err != nil {
				return out, err
			}
			pending = append(again, pending...)
		} else {
			c.grow()
		}
	}
	return out, nil
}

func (c *Client) shrink() {
	for {
		cur := c.batchSize.Load()
		if c.batchSize.CompareAndSwap(cur, max(1, cur/2)) {
			return
		}
	}
}

func (c *Client) grow() {
	for {
		cur := c.batchSize.Load()
		next := min(int64(c.batchMax), cur+max(1, cur/4))
		if c.batchSize.CompareAndSwap(cur, next) {
			return
		}
	}
}

// BatchSize reports the current adaptive batch size.
func (c *Client) BatchSize() int { return int(c.batchSize.Load()) }

func (c *Client) sleep(ctx context.Context, d time.Duration) error {
	if d <= 0 {
		d = backoff(0)
	}
	if d > c.retryWait {
		return &Error{Op: "waiting for service protection", Class: ClassThrottled, Retryable: true, RetryAfter: d,
			Err: fmt.Errorf("Retry-After %s exceeds the %s the client will wait", d, c.retryWait)}
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-t.C:
		return nil
	}
}

// innerThrottle finds a 429 answered for a request inside a $batch answer
// and returns that part's headers (Retry-After): Dataverse may throttle a
// request of a batch that was itself admitted, and the user is to pause
// as for a 429 of its own.
func innerThrottle(body []byte) (http.Header, bool) {
	status := []byte("HTTP/1.1 429")
	i := 0
	for {
		j := bytes.Index(body[i:], status)
		if j < 0 {
			return nil, false
		}
		i += j
		if i == 0 || body[i-1] == '\n' {
			break // a part's status line, not the text inside a body
		}
		i += len(status)
	}
	resp, err := http.ReadResponse(bufio.NewReader(bytes.NewReader(body[i:])), nil)
	if err != nil {
		return http.Header{}, true
	}
	resp.Body.Close()
	return resp.Header, true
}
